//! `epochwal export -o` never clobbers what is not a regular file: devices,
//! named pipes and symbolic links are refused and left as they were; `-o -`
//! streams to standard output; errors name the target, not the temporary
//! file. The real binary on real files (device nodes made in a temporary
//! directory, never a real device).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use epochwal::wal::{Log, LogOptions};
use safetensors::SafeTensors;

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");

fn write_log(dir: &Path) {
    let (mut log, _) = Log::open(dir, LogOptions::default()).unwrap();
    for e in 1..=3 {
        log.append(&common::sample_state(4096, e)).unwrap();
    }
}

fn export(dir: &Path, output: &Path) -> Output {
    Command::new(BIN)
        .arg("export")
        .arg(dir)
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Only our own file names in `dir`: no temporary export left behind.
fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().contains(".tmp-"),
            "temporary file left: {name:?}"
        );
    }
}

fn assert_refused(out: &Output, target: &Path, kind: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(target.to_str().unwrap()),
        "names the target: {err}"
    );
    assert!(err.contains(kind), "says what it is ({kind}): {err}");
    assert!(!err.contains(".tmp-"), "no temporary name: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn export_refuses_a_character_device_and_leaves_it_a_device() {
    if !is_root() {
        println!("skipped: mknod of a character device needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let null = tmp.path().join("null");
    let c = std::ffi::CString::new(null.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod reads the NUL-terminated path; 1:3 is the null device's
    // number, made here in a temporary directory (never the real /dev/null).
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    let out = export(&log, &null);
    assert_refused(&out, &null, "character device");
    let m = std::fs::symlink_metadata(&null).unwrap();
    assert!(m.file_type().is_char_device(), "still a character device");
    assert_no_temporaries(tmp.path());
}

#[test]
fn export_refuses_a_named_pipe_and_leaves_it_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let fifo = tmp.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let out = export(&log, &fifo);
    assert_refused(&out, &fifo, "named pipe");
    let m = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(m.file_type().is_fifo(), "still a named pipe");
    assert_no_temporaries(tmp.path());
}

#[test]
fn export_refuses_a_symbolic_link_and_leaves_link_and_target_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let target = tmp.path().join("precious.bin");
    std::fs::write(&target, b"keep me").unwrap();
    let link = tmp.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = export(&log, &link);
    assert_refused(&out, &link, "symbolic link");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert_no_temporaries(tmp.path());
}

#[test]
fn export_replaces_a_regular_file_and_creates_a_new_path() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let old = tmp.path().join("old.safetensors");
    std::fs::write(&old, b"old contents").unwrap();
    for target in [old, tmp.path().join("new.safetensors")] {
        let out = export(&log, &target);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&target).unwrap();
        SafeTensors::deserialize(&bytes).expect("a safetensors file");
    }
}

#[test]
fn export_to_dash_streams_the_file_to_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let out = Command::new(BIN)
        .args(["export", log.to_str().unwrap(), "-o", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!tmp.path().join("-").exists(), "no file named -");
    let file = tmp.path().join("f.safetensors");
    assert!(export(&log, &file).status.success());
    let file_bytes = std::fs::read(&file).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&out.stdout).expect("stdout holds a safetensors file"),
        SafeTensors::deserialize(&file_bytes).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut names_b = b.names();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in names {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!(x.shape(), y.shape());
        assert_eq!(x.data(), y.data(), "{n}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard output"), "{err}");
}

#[test]
fn a_failed_export_names_the_target_not_the_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let target = tmp.path().join("out.safetensors");
    // A file size limit of 1 KiB makes writing the ~4 KiB export fail with
    // EFBIG, as a full disk would.
    let mut cmd = Command::new(BIN);
    cmd.arg("export").arg(&log).arg("-o").arg(&target);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(target.to_str().unwrap()),
        "names the target: {err}"
    );
    assert!(
        !err.contains(".tmp-"),
        "does not name the temporary file: {err}"
    );
    assert!(!target.exists());
    assert_no_temporaries(tmp.path());
}
