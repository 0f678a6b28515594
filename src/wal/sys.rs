//! The few system calls std does not wrap: fallocate, flock, directory
//! fsync, renameat2, posix_fadvise, sync_file_range, SEEK_DATA/SEEK_HOLE,
//! statfs.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Mode of every file the log directory gets: a model is private data.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a log directory the writer creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Opens `path` with `options` (which may create it), and makes the file
/// mode exactly 0600 whatever the umask (`fchmod`: the umask can only take
/// bits away from the mode given at creation, never add the owner's).
pub fn open_private(options: &mut std::fs::OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = options.mode(PRIVATE_FILE_MODE).open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode != PRIVATE_FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    Ok(file)
}

/// Writes `bytes` into `path` (created or truncated) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = open_private(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        path,
    )?;
    file.write_all(bytes)
}

/// Creates `dir` and any missing parents with mode 0700, and makes the mode
/// of `dir` itself exactly 0700 whatever the umask.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Allocates real blocks for `[0, len)` so that later writes into them
/// can never fail for lack of space. `ftruncate` alone would create a sparse
/// file and defer the allocation to write-back, where a full disk would
/// surface late.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // valid for as long as `file` is borrowed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    // The file system cannot fallocate (e.g. some network file systems):
    // posix_fallocate writes zeros instead, which allocates just the same.
    // SAFETY: as above.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Takes an exclusive advisory lock without waiting. `Ok(false)` when another
/// process holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads its integer arguments.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Makes creations, renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads exactly `buf.len()` bytes at `offset`, or returns how many bytes the
/// file really had there (a short file is not an error at this level).
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Environment variable, for tests only, that makes the writer take the
/// system page size to be its value (to check, on a 4 KiB-page machine,
/// what happens on a 64 KiB-page kernel).
pub const TEST_PAGE_SIZE_VAR: &str = "EPOCHWAL_TEST_PAGE_SIZE";

/// The system page size: the unit in which the kernel faults and writes
/// back a mapping. `Err` names [`TEST_PAGE_SIZE_VAR`] when it is set to
/// something that is not a number.
pub fn system_page_size() -> Result<u64, String> {
    if let Some(v) = std::env::var_os(TEST_PAGE_SIZE_VAR) {
        return v
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| n.is_power_of_two())
            .ok_or_else(|| {
                format!(
                    "{TEST_PAGE_SIZE_VAR}={}: not a power of two (a page size in bytes)",
                    v.to_string_lossy()
                )
            });
    }
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(if n > 0 { n as u64 } else { 4096 })
}

/// Turns readahead off for reads through `file` (`POSIX_FADV_RANDOM`; this
/// descriptor only). Advice: a failure changes nothing but speed, so it is
/// ignored.
pub fn advise_random(file: &File) {
    // SAFETY: posix_fadvise only reads its integer arguments.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// Starts write-back of the dirty pages of `[offset, offset + len)` without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). It is only a
/// head start, never a barrier: it guarantees nothing about durability (no
/// metadata, no device flush) and does not consume a write-back error, which
/// the `fdatasync` that must follow still reports. `Ok(false)` where the
/// file system or kernel does not support it; then the barrier alone does
/// the work.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(false);
    };
    // SAFETY: sync_file_range only reads its integer arguments; the
    // descriptor is valid for as long as `file` is borrowed.
    let rc =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ESPIPE) | Some(libc::EOPNOTSUPP) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Renames `from` to `to` only if `to` does not exist (`EEXIST` otherwise),
/// atomically: two writers can never replace each other's files, whatever
/// they believe about the lock. Uses `renameat2(RENAME_NOREPLACE)`; where the
/// file system does not support it (`EINVAL`), `link` + `unlink`, which is
/// just as exclusive (link fails with `EEXIST`) but leaves both names for a
/// moment, so a crash in between leaves a `.tmp` that the writer deletes.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (c_path(from)?, c_path(to)?);
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(err);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Makes whatever the page cache holds of `path` durable (`fsync`), then
/// drops its clean cached pages (`POSIX_FADV_DONTNEED`), so that the next
/// read comes from the disk. After a failed write-back, ext4 and XFS keep
/// the unwritten bytes in a page marked clean: a later reader would see
/// them although the disk does not hold them, and fsync cannot tell (the
/// error was already reported to the process that saw it). Dropping the
/// page is what makes the next read tell the truth. Pages that another
/// process has mapped stay. On error, says which step failed.
pub fn sync_and_forget(path: &Path) -> Result<(), (&'static str, io::Error)> {
    let file = File::open(path).map_err(|e| ("opening for fsync", e))?;
    file.sync_all().map_err(|e| ("fsync", e))?;
    // SAFETY: posix_fadvise only reads its integer arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(("posix_fadvise(DONTNEED)", io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// The next region holding data at or after `from`, as `[start, end)`, by
/// `SEEK_DATA`/`SEEK_HOLE`; `None` if only holes follow. Preallocated but
/// never written blocks count as holes on ext4 and XFS, so a scan of a
/// segment's unused tail costs nothing there. File systems that cannot tell
/// report everything as data, which is only slower.
pub fn next_data(file: &File, from: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    if from >= len {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let Ok(off) = libc::off_t::try_from(from) else {
        return Ok(None);
    };
    // SAFETY: lseek only reads its integer arguments.
    let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if start < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((from, len))),
            _ => Err(err),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(((start as u64).min(len), (end as u64).min(len))))
}

/// A file system on which preallocation does not make later stores through
/// a mapping safe, or where other hosts may write: name, and why.
pub fn risky_file_system(dir: &Path) -> io::Result<Option<(&'static str, &'static str)>> {
    let c = c_path(dir)?;
    // SAFETY: an all-zero statfs is a valid value of a plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated, `st` is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(classify_file_system(st.f_type as i64))
}

/// See [`risky_file_system`]; by `statfs`'s `f_type` magic number.
pub fn classify_file_system(magic: i64) -> Option<(&'static str, &'static str)> {
    const COW: &str = "copy-on-write: a write into a preallocated segment allocates new blocks, so a full disk can still fail an append and stop the writer; keep free space well beyond the segment size";
    const NET: &str = "a network file system: flock may not exclude a writer on another host, and write-back errors can surface late; prefer a local disk";
    match magic as u32 {
        0x9123_683e => Some(("btrfs", COW)),
        0x2fc1_2fc1 => Some(("ZFS", COW)),
        0x6969 => Some(("NFS", NET)),
        0xff53_4d42 | 0xfe53_4d42 => Some(("SMB/CIFS", NET)),
        _ => None,
    }
}

/// Environment variable that turns direct I/O for payload writes off
/// (`0`) or on (`1`, the default where the file system takes it).
pub const DIRECT_IO_VAR: &str = "EPOCHWAL_DIRECT_IO";

/// Whether payloads are written with `O_DIRECT` ([`DIRECT_IO_VAR`]). `Err`
/// names the variable when it holds anything but `0` or `1`.
pub fn direct_io_setting() -> Result<bool, String> {
    parse_direct_io(std::env::var_os(DIRECT_IO_VAR).as_deref())
}

fn parse_direct_io(v: Option<&std::ffi::OsStr>) -> Result<bool, String> {
    match v {
        None => Ok(true),
        Some(v) => match v.to_str() {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            _ => Err(format!(
                "{DIRECT_IO_VAR}={}: must be 0 (payloads through the page cache) or 1 (direct I/O, the default)",
                v.to_string_lossy()
            )),
        },
    }
}

/// `path` opened for writing with `O_DIRECT`, or `None` where the file
/// system refuses it (tmpfs on older kernels, FUSE, some network file
/// systems): those writes then go through the page cache.
pub fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// `write_all_at` that says, on error, how many bytes were written before it.
pub fn write_all_at_counted(
    file: &File,
    buf: &[u8],
    offset: u64,
) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err((
                    done,
                    io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer"),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_io_variable_takes_0_or_1_and_names_itself_otherwise() {
        use std::ffi::OsStr;
        assert_eq!(parse_direct_io(None), Ok(true));
        assert_eq!(parse_direct_io(Some(OsStr::new("1"))), Ok(true));
        assert_eq!(parse_direct_io(Some(OsStr::new("0"))), Ok(false));
        let e = parse_direct_io(Some(OsStr::new("yes"))).unwrap_err();
        assert!(e.starts_with("EPOCHWAL_DIRECT_IO=yes: "), "{e}");
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
    }

    #[test]
    fn copy_on_write_and_network_file_systems_are_named() {
        assert_eq!(classify_file_system(0x9123_683e).unwrap().0, "btrfs");
        assert_eq!(classify_file_system(0x2fc1_2fc1).unwrap().0, "ZFS");
        assert_eq!(classify_file_system(0x6969).unwrap().0, "NFS");
        // ext4, XFS, tmpfs: preallocation holds.
        assert_eq!(classify_file_system(0xef53), None);
        assert_eq!(classify_file_system(0x5846_5342), None);
        assert_eq!(classify_file_system(0x0102_1994), None);
    }

    #[test]
    fn start_writeback_cleans_dirty_pages_without_changing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        f.write_at(&[7u8; 1 << 16], 0).unwrap();
        // tmpfs and some others answer "unsupported"; then nothing happened.
        let started = start_writeback(&f, 4096, 8192).unwrap();
        if started {
            f.sync_data().unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 16]);
        assert!(
            start_writeback(&f, 0, 0).is_ok(),
            "len 0 means to the end of the file"
        );
    }

    #[test]
    fn next_data_finds_written_bytes_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("f")).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_at(b"x", 512 << 10).unwrap();
        let (start, end) = next_data(&f, 0, 1 << 20).unwrap().unwrap();
        assert!(start <= 512 << 10 && end > 512 << 10, "{start}..{end}");
        assert_eq!(next_data(&f, 1 << 20, 1 << 20).unwrap(), None);
    }
}
