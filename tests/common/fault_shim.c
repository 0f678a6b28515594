/*
 * Fault injection for the tests: an LD_PRELOAD library that makes chosen
 * calls fail the way a failing disk or a full file system makes them fail.
 * tests/common/faults.rs compiles it with gcc.
 *
 * Rules come from the environment variable EPOCHWAL_FAULTS, or at run time
 * from epochwal_faults_set() (found with dlsym by a test running in-process).
 * Rules are separated by ';', fields by ',':
 *
 *     OP,SUBSTRING,ACTION[,skip=N][,count=N][,range=START-END]
 *
 *   OP         pread (pread, pread64), msync, fsync (a regular file),
 *              fsyncdir (fsync of a directory), fdatasync, fallocate
 *              (fallocate, fallocate64, posix_fallocate), rename (rename,
 *              renameat, renameat2; matched on the new name), unlink,
 *              statfs (statfs, fstatfs; the result is rewritten),
 *              open (open, open64, openat, openat64; matched on the path
 *              as given), mmap (mmap, mmap64; matched on the path of the
 *              descriptor, or "anonymous" for an anonymous mapping)
 *   SUBSTRING  must occur in the file's path (for msync: the mapped file,
 *              found in /proc/self/maps); "*" matches everything
 *   ACTION     an errno name (EIO, ENOSPC, EDQUOT, EEXIST, EACCES, EMFILE,
 *              ENOMEM); or PLANT (rename only: create the destination with
 *              the bytes "planted by another writer\n" just before the real
 *              call, as a concurrent writer would); or a file system magic
 *              number in hex, 0x..., for statfs; or FLIP (mmap only: the
 *              mapping is a private copy in which one byte differs from
 *              the file, bit 0 flipped, in the middle of the mapped part of
 *              the range, or of the whole mapping without a range: what a
 *              medium that returns other bytes on a second read gives);
 *              or HOLD (pread only: the call waits, then reads for real,
 *              until the file named by EPOCHWAL_FAULTS_RELEASE exists, at
 *              most 300 s: a reader stopped in the middle of a walk while
 *              the test changes the file under it, as a writer would)
 *   skip=N     let the first N matching calls through (default 0)
 *   count=N    then act on N calls (default 1; 0 = every later call)
 *   range=A-B  pread, msync and mmap only: match only calls whose byte
 *              range in the file (for an anonymous mmap: [0, length))
 *              overlaps [A, B)
 *
 * Every injected fault is reported on stderr as one line starting with
 * "epochwal-fault: ", so a test can check that its fault really happened.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <unistd.h>

enum op { OP_PREAD, OP_MSYNC, OP_FSYNC, OP_FSYNCDIR, OP_FDATASYNC, OP_FALLOCATE, OP_RENAME, OP_UNLINK, OP_STATFS, OP_OPEN, OP_MMAP, OP_NONE };

struct rule {
    enum op op;
    char sub[512];
    int err;          /* errno to return; 0 with plant or magic */
    int plant;
    int flip;
    int hold;
    long magic;
    long skip;
    long count;
    long long lo, hi; /* byte range; hi < 0 means any */
    long seen;
    long fired;
};

#define MAX_RULES 16
static struct rule rules[MAX_RULES];
static int nrules;
static long total_fired;
static int loaded;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static const struct { const char *name; int value; } errnos[] = {
    {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EEXIST", EEXIST},
    {"EACCES", EACCES}, {"EMFILE", EMFILE}, {"ENOMEM", ENOMEM}, {"EROFS", EROFS},
};

static enum op parse_op(const char *s) {
    if (!strcmp(s, "pread")) return OP_PREAD;
    if (!strcmp(s, "msync")) return OP_MSYNC;
    if (!strcmp(s, "fsync")) return OP_FSYNC;
    if (!strcmp(s, "fsyncdir")) return OP_FSYNCDIR;
    if (!strcmp(s, "fdatasync")) return OP_FDATASYNC;
    if (!strcmp(s, "fallocate")) return OP_FALLOCATE;
    if (!strcmp(s, "rename")) return OP_RENAME;
    if (!strcmp(s, "unlink")) return OP_UNLINK;
    if (!strcmp(s, "statfs")) return OP_STATFS;
    if (!strcmp(s, "open")) return OP_OPEN;
    if (!strcmp(s, "mmap")) return OP_MMAP;
    return OP_NONE;
}

static void say(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t ignored = write(2, buf, n);
    (void)ignored;
}

/* Replaces the rules; returns the number parsed or -1 on a bad spec. */
static int parse_rules(const char *spec) {
    nrules = 0;
    if (!spec) return 0;
    char *copy = strdup(spec);
    char *save_rule = NULL;
    for (char *r = strtok_r(copy, ";", &save_rule); r; r = strtok_r(NULL, ";", &save_rule)) {
        if (nrules == MAX_RULES) break;
        struct rule *x = &rules[nrules];
        memset(x, 0, sizeof *x);
        x->count = 1;
        x->hi = -1;
        char *save_f = NULL;
        int field = 0;
        for (char *f = strtok_r(r, ",", &save_f); f; f = strtok_r(NULL, ",", &save_f), field++) {
            if (field == 0) {
                x->op = parse_op(f);
            } else if (field == 1) {
                snprintf(x->sub, sizeof x->sub, "%s", f);
            } else if (field == 2) {
                if (!strcmp(f, "PLANT")) {
                    x->plant = 1;
                } else if (!strcmp(f, "FLIP")) {
                    x->flip = 1;
                } else if (!strcmp(f, "HOLD")) {
                    x->hold = 1;
                } else if (!strncmp(f, "0x", 2)) {
                    x->magic = strtol(f, NULL, 16);
                } else {
                    for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
                        if (!strcmp(f, errnos[i].name)) x->err = errnos[i].value;
                }
            } else if (!strncmp(f, "skip=", 5)) {
                x->skip = atol(f + 5);
            } else if (!strncmp(f, "count=", 6)) {
                x->count = atol(f + 6);
            } else if (!strncmp(f, "range=", 6)) {
                char *dash = strchr(f + 6, '-');
                if (dash) {
                    x->lo = atoll(f + 6);
                    x->hi = atoll(dash + 1);
                }
            }
        }
        if (x->op == OP_NONE || (!x->err && !x->plant && !x->magic && !x->flip && !x->hold)) {
            say("epochwal-fault: bad rule in spec: %s", spec);
            free(copy);
            nrules = 0;
            return -1;
        }
        nrules++;
    }
    free(copy);
    return nrules;
}

static void load(void) {
    if (!loaded) {
        loaded = 1;
        parse_rules(getenv("EPOCHWAL_FAULTS"));
    }
}

/* In-process control for tests: replace every rule. */
int epochwal_faults_set(const char *spec) {
    pthread_mutex_lock(&mu);
    loaded = 1;
    int n = parse_rules(spec);
    pthread_mutex_unlock(&mu);
    return n;
}

/* How many faults were injected since the process started. */
long epochwal_faults_fired(void) {
    pthread_mutex_lock(&mu);
    long n = total_fired;
    pthread_mutex_unlock(&mu);
    return n;
}

static void fd_path(int fd, char *out, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    out[n > 0 ? n : 0] = 0;
}

/* The file mapped at addr, and the file offset of addr. */
static int map_path(const void *addr, char *out, size_t len, long long *file_off) {
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) return 0;
    char line[1024];
    uintptr_t a = (uintptr_t)addr;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end, off;
        char perms[8];
        int consumed = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s%n", &start, &end, perms, &off, &consumed) < 4) continue;
        if (a < start || a >= end) continue;
        char *p = line + consumed;
        while (*p == ' ') p++;
        p[strcspn(p, "\n")] = 0;
        snprintf(out, len, "%s", p);
        *file_off = (long long)(off + (a - start));
        found = 1;
        break;
    }
    fclose(f);
    return found;
}

/* Finds the rule that acts on this call, counting it; NULL if none. */
static struct rule *match(enum op op, const char *path, long long lo, long long hi) {
    struct rule *hit = NULL;
    pthread_mutex_lock(&mu);
    load();
    for (int i = 0; i < nrules && !hit; i++) {
        struct rule *r = &rules[i];
        if (r->op != op) continue;
        if (strcmp(r->sub, "*") && !strstr(path, r->sub)) continue;
        if (r->hi >= 0 && (hi <= r->lo || lo >= r->hi)) continue;
        r->seen++;
        if (r->seen <= r->skip) continue;
        if (r->count && r->fired >= r->count) continue;
        r->fired++;
        total_fired++;
        hit = r;
    }
    pthread_mutex_unlock(&mu);
    return hit;
}

static const char *errname(int e) {
    for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
        if (errnos[i].value == e) return errnos[i].name;
    return "?";
}

#define REAL(ret, name, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static ssize_t do_pread(const char *fn, int fd, size_t n, off_t off) {
    char path[4096];
    fd_path(fd, path, sizeof path);
    struct rule *r = match(OP_PREAD, path, off, off + (long long)n);
    if (r && r->hold) {
        const char *release = getenv("EPOCHWAL_FAULTS_RELEASE");
        say("epochwal-fault: HOLD %s in %s of %zu bytes at offset %lld until %s exists", path, fn, n,
            (long long)off, release ? release : "(EPOCHWAL_FAULTS_RELEASE unset)");
        for (int i = 0; release && i < 30000 && access(release, F_OK) != 0; i++) usleep(10000);
        return -2;
    }
    if (r) {
        say("epochwal-fault: %s %s in %s of %zu bytes at offset %lld", errname(r->err), path, fn, n, (long long)off);
        errno = r->err;
        return -1;
    }
    return -2;
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
    REAL(ssize_t, pread64, int, void *, size_t, off_t);
    ssize_t r = do_pread("pread64", fd, n, off);
    return r == -2 ? real_pread64(fd, buf, n, off) : r;
}

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    REAL(ssize_t, pread, int, void *, size_t, off_t);
    ssize_t r = do_pread("pread", fd, n, off);
    return r == -2 ? real_pread(fd, buf, n, off) : r;
}

int msync(void *addr, size_t len, int flags) {
    REAL(int, msync, void *, size_t, int);
    char path[4096] = "";
    long long off = 0;
    map_path(addr, path, sizeof path, &off);
    struct rule *r = match(OP_MSYNC, path, off, off + (long long)len);
    if (r) {
        say("epochwal-fault: %s %s in msync of %zu bytes at offset %lld", errname(r->err), path, len, off);
        errno = r->err;
        return -1;
    }
    return real_msync(addr, len, flags);
}

static int sync_fault(int fd, int data_only) {
    char path[4096];
    fd_path(fd, path, sizeof path);
    struct stat st;
    int is_dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    enum op op = data_only ? OP_FDATASYNC : (is_dir ? OP_FSYNCDIR : OP_FSYNC);
    struct rule *r = match(op, path, 0, 0);
    if (r) {
        say("epochwal-fault: %s %s in %s", errname(r->err), path,
            data_only ? "fdatasync" : (is_dir ? "fsync (directory)" : "fsync"));
        errno = r->err;
        return -1;
    }
    return 0;
}

int fsync(int fd) {
    REAL(int, fsync, int);
    return sync_fault(fd, 0) ? -1 : real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(int, fdatasync, int);
    return sync_fault(fd, 1) ? -1 : real_fdatasync(fd);
}

static int alloc_fault(int fd, const char *fn) {
    char path[4096];
    fd_path(fd, path, sizeof path);
    struct rule *r = match(OP_FALLOCATE, path, 0, 0);
    if (r) {
        say("epochwal-fault: %s %s in %s", errname(r->err), path, fn);
        return r->err;
    }
    return 0;
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    REAL(int, fallocate, int, int, off_t, off_t);
    int e = alloc_fault(fd, "fallocate");
    if (e) { errno = e; return -1; }
    return real_fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len) {
    REAL(int, fallocate64, int, int, off_t, off_t);
    int e = alloc_fault(fd, "fallocate64");
    if (e) { errno = e; return -1; }
    return real_fallocate64(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len) {
    REAL(int, posix_fallocate, int, off_t, off_t);
    int e = alloc_fault(fd, "posix_fallocate");
    return e ? e : real_posix_fallocate(fd, off, len);
}

int posix_fallocate64(int fd, off_t off, off_t len) {
    REAL(int, posix_fallocate64, int, off_t, off_t);
    int e = alloc_fault(fd, "posix_fallocate64");
    return e ? e : real_posix_fallocate64(fd, off, len);
}

/* The absolute form of a path relative to dirfd, for matching only. */
static void at_path(int dirfd, const char *p, char *out, size_t len) {
    if (p[0] == '/' || dirfd == AT_FDCWD) {
        snprintf(out, len, "%s", p);
        return;
    }
    char dir[4096];
    fd_path(dirfd, dir, sizeof dir);
    snprintf(out, len, "%s/%s", dir, p);
}

/* 0: go on with the real call; otherwise the errno to fail with. */
static int rename_fault(const char *fn, int newdirfd, const char *newpath) {
    char path[8192];
    at_path(newdirfd, newpath, path, sizeof path);
    struct rule *r = match(OP_RENAME, path, 0, 0);
    if (!r) return 0;
    if (r->plant) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            const char msg[] = "planted by another writer\n";
            ssize_t ignored = write(fd, msg, sizeof msg - 1);
            (void)ignored;
            close(fd);
        }
        say("epochwal-fault: PLANT %s before %s", path, fn);
        return 0;
    }
    say("epochwal-fault: %s %s in %s", errname(r->err), path, fn);
    return r->err;
}

int rename(const char *old, const char *new) {
    REAL(int, rename, const char *, const char *);
    int e = rename_fault("rename", AT_FDCWD, new);
    if (e) { errno = e; return -1; }
    return real_rename(old, new);
}

int renameat(int olddirfd, const char *old, int newdirfd, const char *new) {
    REAL(int, renameat, int, const char *, int, const char *);
    int e = rename_fault("renameat", newdirfd, new);
    if (e) { errno = e; return -1; }
    return real_renameat(olddirfd, old, newdirfd, new);
}

int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned int flags) {
    REAL(int, renameat2, int, const char *, int, const char *, unsigned int);
    int e = rename_fault("renameat2", newdirfd, new);
    if (e) { errno = e; return -1; }
    return real_renameat2(olddirfd, old, newdirfd, new, flags);
}

int unlink(const char *p) {
    REAL(int, unlink, const char *);
    struct rule *r = match(OP_UNLINK, p, 0, 0);
    if (r) {
        say("epochwal-fault: %s %s in unlink", errname(r->err), p);
        errno = r->err;
        return -1;
    }
    return real_unlink(p);
}

static void statfs_fault(const char *path, struct statfs *out) {
    struct rule *r = match(OP_STATFS, path, 0, 0);
    if (r && r->magic) {
        say("epochwal-fault: statfs of %s reports file system type 0x%lx", path, r->magic);
        out->f_type = r->magic;
    }
}

int statfs(const char *p, struct statfs *out) {
    REAL(int, statfs, const char *, struct statfs *);
    int rc = real_statfs(p, out);
    if (rc == 0) statfs_fault(p, out);
    return rc;
}

int fstatfs(int fd, struct statfs *out) {
    REAL(int, fstatfs, int, struct statfs *);
    int rc = real_fstatfs(fd, out);
    if (rc == 0) {
        char path[4096];
        fd_path(fd, path, sizeof path);
        statfs_fault(path, out);
    }
    return rc;
}

int statfs64(const char *p, struct statfs64 *out) {
    REAL(int, statfs64, const char *, struct statfs64 *);
    int rc = real_statfs64(p, out);
    if (rc == 0) {
        struct rule *r = match(OP_STATFS, p, 0, 0);
        if (r && r->magic) {
            say("epochwal-fault: statfs of %s reports file system type 0x%lx", p, r->magic);
            out->f_type = r->magic;
        }
    }
    return rc;
}

int fstatfs64(int fd, struct statfs64 *out) {
    REAL(int, fstatfs64, int, struct statfs64 *);
    int rc = real_fstatfs64(fd, out);
    if (rc == 0) {
        char path[4096];
        fd_path(fd, path, sizeof path);
        struct rule *r = match(OP_STATFS, path, 0, 0);
        if (r && r->magic) {
            say("epochwal-fault: statfs of %s reports file system type 0x%lx", path, r->magic);
            out->f_type = r->magic;
        }
    }
    return rc;
}

/* A failed mapping (an errno: ENOMEM says nothing about the file's
   bytes), a file mapping that differs from the file by one byte (FLIP), or
   NULL to go on with the real call. */
static void *mmap_fault(const char *fn, void *(*real)(void *, size_t, int, int, int, off_t),
                        void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    int anon = fd < 0 || (flags & MAP_ANONYMOUS);
    char path[4096] = "anonymous";
    long long base = 0;
    if (!anon) {
        fd_path(fd, path, sizeof path);
        base = (long long)off;
    }
    struct rule *r = match(OP_MMAP, path, base, base + (long long)len);
    if (r && r->err) {
        say("epochwal-fault: %s %s in %s of %zu bytes at offset %lld", errname(r->err), path, fn, len, base);
        errno = r->err;
        return MAP_FAILED;
    }
    if (anon || !r || !r->flip) return NULL;
    long long lo = off, hi = off + (long long)len;
    if (r->hi >= 0) {
        if (r->lo > lo) lo = r->lo;
        if (r->hi < hi) hi = r->hi;
    }
    long long at = lo + (hi - lo) / 2;
    unsigned char *p = real(addr, len, prot | PROT_READ | PROT_WRITE,
                            (flags & ~MAP_SHARED) | MAP_PRIVATE, fd, off);
    if (p == MAP_FAILED) return p;
    p[at - off] ^= 0x01;
    mprotect(p, len, prot);
    say("epochwal-fault: FLIP %s in %s: byte at offset %lld differs from the file", path, fn, at);
    return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    REAL(void *, mmap, void *, size_t, int, int, int, off_t);
    void *p = mmap_fault("mmap", real_mmap, addr, len, prot, flags, fd, off);
    return p ? p : real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    REAL(void *, mmap64, void *, size_t, int, int, int, off_t);
    void *p = mmap_fault("mmap64", real_mmap64, addr, len, prot, flags, fd, off);
    return p ? p : real_mmap64(addr, len, prot, flags, fd, off);
}

/* open: a failure to get a descriptor (EMFILE, EACCES), which says nothing
 * about the bytes of the file. */
static int open_fault(const char *fn, const char *p) {
    struct rule *r = match(OP_OPEN, p, 0, 0);
    if (r) {
        say("epochwal-fault: %s %s in %s", errname(r->err), p, fn);
        errno = r->err;
        return -1;
    }
    return 0;
}

static mode_t open_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *p, int flags, ...) {
    REAL(int, open, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    if (open_fault("open", p)) return -1;
    return real_open(p, flags, mode);
}

int open64(const char *p, int flags, ...) {
    REAL(int, open64, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    if (open_fault("open64", p)) return -1;
    return real_open64(p, flags, mode);
}

int openat(int dirfd, const char *p, int flags, ...) {
    REAL(int, openat, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    if (open_fault("openat", p)) return -1;
    return real_openat(dirfd, p, flags, mode);
}

int openat64(int dirfd, const char *p, int flags, ...) {
    REAL(int, openat64, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    if (open_fault("openat64", p)) return -1;
    return real_openat64(dirfd, p, flags, mode);
}
