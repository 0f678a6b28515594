//! A pass-through FUSE file system whose reads fail with EIO in chosen byte
//! ranges of chosen files: a bad sector, as a real disk has one. Reading
//! such a range with `read`/`pread` gives EIO; touching it through a memory
//! mapping raises SIGBUS, exactly as a media error under a mapping does.
//! Everything else (create, write, fallocate, fsync, rename with
//! RENAME_NOREPLACE, unlink, shared writable mappings) passes through to a
//! real directory, so a writer can run on it too.
//!
//! Mounted with `max_read=4096`, so that every read request is one page and
//! a bad page fails alone, not the readahead window around it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

/// A byte range of a file (by name) whose reads fail.
#[derive(Debug, Clone)]
pub struct BadRange {
    pub file_name: String,
    pub start: u64,
    pub end: u64,
}

/// A page that reads back differently the second time, as a failing
/// medium's can: once a read of `file_name` in `[after, until)` has been
/// served (the first read of `[start, end)` is long done by then), the page
/// cache's copy of `[start, end)` is replaced by what the medium now
/// returns: the bytes xored with `0x40` (`eio == false`), or nothing, every
/// later read failing with EIO (`eio == true`).
#[derive(Debug, Clone)]
pub struct SecondRead {
    pub file_name: String,
    pub start: u64,
    pub end: u64,
    pub after: u64,
    pub until: u64,
    pub eio: bool,
}

/// What the tests can change and observe while the file system runs.
#[derive(Default)]
pub struct Control {
    pub bad: Mutex<Vec<BadRange>>,
    /// Reads refused with EIO so far.
    pub eio_reads: AtomicU64,
    /// At most one page whose second read differs from its first.
    pub second_read: Mutex<Option<SecondRead>>,
    /// Set once the [`SecondRead`] took effect.
    pub second_read_done: std::sync::atomic::AtomicBool,
    /// Reads served (or refused) per (file name, page offset).
    pub page_reads: Mutex<HashMap<(String, u64), u64>>,
    /// Ranges whose reads return the bytes xored with 0x40.
    flipped: Mutex<Vec<BadRange>>,
    notifier: Mutex<Option<fuser::Notifier>>,
}

impl Control {
    /// How many times the page at `offset` of `file_name` was read.
    pub fn reads_of(&self, file_name: &str, offset: u64) -> u64 {
        let page = offset / 4096 * 4096;
        self.page_reads
            .lock()
            .unwrap()
            .get(&(file_name.to_string(), page))
            .copied()
            .unwrap_or(0)
    }
}

struct BadFs {
    root: PathBuf,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, File>,
    next_fh: u64,
    control: Arc<Control>,
}

const TTL: Duration = Duration::ZERO;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl BadFs {
    fn path(&self, ino: u64) -> Option<PathBuf> {
        self.paths.get(&ino).map(|rel| self.root.join(rel))
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.paths.get(&parent).map(|rel| rel.join(name))
    }

    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
        }
    }

    fn name_of(&self, ino: u64) -> Option<String> {
        self.paths
            .get(&ino)
            .and_then(|rel| rel.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// Makes the armed [`SecondRead`] take effect once a read of its file at
    /// or past its `after` offset has been served.
    fn second_read_now(&self, ino: u64, name: Option<&str>, start: u64, fh: u64) {
        let mut armed = self.control.second_read.lock().unwrap();
        let Some(sr) = armed.as_ref() else { return };
        if Some(sr.file_name.as_str()) != name || start < sr.after || start >= sr.until {
            return;
        }
        let sr = armed.take().unwrap();
        let range = BadRange {
            file_name: sr.file_name.clone(),
            start: sr.start,
            end: sr.end,
        };
        let notifier = self.control.notifier.lock().unwrap();
        let notifier = notifier.as_ref().expect("notifier installed at mount");
        let len = (sr.end - sr.start) as i64;
        if sr.eio {
            self.control.bad.lock().unwrap().push(range);
            notifier
                .inval_inode(ino, sr.start as i64, len)
                .expect("FUSE_NOTIFY_INVAL_INODE");
        } else {
            let mut bytes = vec![0u8; (sr.end - sr.start) as usize];
            let f = self.files.get(&fh).expect("open file");
            f.read_exact_at(&mut bytes, sr.start)
                .expect("read backing file");
            for b in &mut bytes {
                *b ^= 0x40;
            }
            self.control.flipped.lock().unwrap().push(range);
            notifier
                .store(ino, sr.start, &bytes)
                .expect("FUSE_NOTIFY_STORE");
        }
        self.control.second_read_done.store(true, Ordering::SeqCst);
    }

    fn is_bad(&self, ino: u64, start: u64, end: u64) -> bool {
        let Some(rel) = self.paths.get(&ino) else {
            return false;
        };
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        self.control
            .bad
            .lock()
            .unwrap()
            .iter()
            .any(|b| Some(&b.file_name) == name.as_ref() && start < b.end && end > b.start)
    }
}

impl Filesystem for BadFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match std::fs::symlink_metadata(self.root.join(&rel)) {
            Ok(m) => {
                let ino = self.ino_of(&rel);
                reply.entry(&TTL, &attr(ino, &m), 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.path(ino).map(std::fs::symlink_metadata) {
            Some(Ok(m)) => reply.attr(&TTL, &attr(ino, &m)),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(path) = self.path(ino) else {
            return reply.error(libc::ENOENT);
        };
        let res = (|| -> std::io::Result<std::fs::Metadata> {
            if let Some(size) = size {
                OpenOptions::new().write(true).open(&path)?.set_len(size)?;
            }
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            std::fs::symlink_metadata(&path)
        })();
        match res {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match std::fs::remove_file(self.root.join(&rel)) {
            Ok(()) => {
                self.forget_path(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(libc::ENOENT);
        };
        let c =
            |p: &Path| std::ffi::CString::new(self.root.join(p).as_os_str().as_bytes()).unwrap();
        let (f, t) = (c(&from), c(&to));
        // SAFETY: both strings are NUL-terminated and outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return reply.error(errno(&std::io::Error::last_os_error()));
        }
        self.forget_path(&to);
        if let Some(ino) = self.inos.remove(&from) {
            self.inos.insert(to.clone(), ino);
            self.paths.insert(ino, to);
        }
        reply.ok()
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let Some(path) = self.path(ino) else {
            return reply.error(libc::ENOENT);
        };
        let acc = flags & libc::O_ACCMODE;
        let res = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags(flags & libc::O_TRUNC)
            .open(&path);
        match res {
            Ok(f) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.files.insert(fh, f);
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        let path = self.root.join(&rel);
        let res = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(flags & (libc::O_EXCL | libc::O_TRUNC))
            .mode(mode & 0o7777)
            .open(&path)
            .and_then(|f| f.metadata().map(|m| (f, m)));
        match res {
            Ok((f, m)) => {
                let ino = self.ino_of(&rel);
                let fh = self.next_fh;
                self.next_fh += 1;
                self.files.insert(fh, f);
                reply.created(&TTL, &attr(ino, &m), 0, fh, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let start = offset as u64;
        let name = self.name_of(ino);
        if let Some(name) = &name {
            let mut counts = self.control.page_reads.lock().unwrap();
            let mut page = start / 4096 * 4096;
            while page < start + u64::from(size) {
                *counts.entry((name.clone(), page)).or_default() += 1;
                page += 4096;
            }
        }
        if self.is_bad(ino, start, start + u64::from(size)) {
            self.control.eio_reads.fetch_add(1, Ordering::SeqCst);
            return reply.error(libc::EIO);
        }
        let Some(f) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        for r in self.control.flipped.lock().unwrap().iter() {
            if Some(&r.file_name) == name.as_ref() {
                for (i, b) in buf[..done].iter_mut().enumerate() {
                    let at = start + i as u64;
                    if at >= r.start && at < r.end {
                        *b ^= 0x40;
                    }
                }
            }
        }
        reply.data(&buf[..done]);
        self.second_read_now(ino, name.as_deref(), start, fh);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        match f.write_all_at(data, offset as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _data: bool, reply: ReplyEmpty) {
        match self.files.get(&fh).map(File::sync_all) {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::EBADF),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        match self
            .path(ino)
            .map(|p| File::open(p).and_then(|f| f.sync_all()))
        {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(libc::ENOENT);
        };
        let entries = match std::fs::read_dir(self.root.join(&rel)) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut all: Vec<(u64, FileType, std::ffi::OsString)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in entries.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                _ => FileType::RegularFile,
            };
            let child = self.ino_of(&rel.join(e.file_name()));
            all.push((child, kind, e.file_name()));
        }
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        // SAFETY: fallocate only reads its integer arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, length) };
        if rc == 0 {
            reply.ok()
        } else {
            reply.error(errno(&std::io::Error::last_os_error()))
        }
    }
}

/// A mounted BadFs; unmounted on drop.
pub struct Mounted {
    pub mountpoint: PathBuf,
    pub control: Arc<Control>,
    _session: fuser::BackgroundSession,
}

/// Mounts a pass-through of `backing` at `mountpoint` (which must exist).
pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
    let control = Arc::new(Control::default());
    let mut fs = BadFs {
        root: backing.to_path_buf(),
        paths: HashMap::new(),
        inos: HashMap::new(),
        next_ino: 2,
        files: HashMap::new(),
        next_fh: 1,
        control: Arc::clone(&control),
    };
    fs.paths.insert(fuser::FUSE_ROOT_ID, PathBuf::new());
    fs.inos.insert(PathBuf::new(), fuser::FUSE_ROOT_ID);
    let options = [
        MountOption::FSName("epochwal-badfs".into()),
        MountOption::CUSTOM("max_read=4096".into()),
    ];
    let session = fuser::spawn_mount2(fs, mountpoint, &options)?;
    *control.notifier.lock().unwrap() = Some(session.notifier());
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        control,
        _session: session,
    })
}
