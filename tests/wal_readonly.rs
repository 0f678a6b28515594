//! Readers on a read-only directory. In a binary of its own: as root it
//! starts a child process (as `nobody`), and a fork in a process whose other
//! threads hold the writer lock of their own logs would briefly keep those
//! locks held in the child.

mod common;
mod walkit;

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use epochwal::wal::format::PAGE;
use epochwal::wal::{Log, LogReader, WalError};
use walkit::*;

const TB: usize = 16 << 10;

fn three_segment_log() -> (tempfile::TempDir, Vec<Written>) {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(13 * PAGE), TB, 1..=6);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
    (dir, w)
}

// ----------------------------------------------------------------- read-only

fn listing(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().into_string().unwrap(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn readers_on_a_read_only_directory_work_and_create_nothing() {
    let (src, w) = three_segment_log();
    let ro = copy_dir(src.path());
    let d = ro.path();
    use std::os::unix::fs::PermissionsExt;
    let dir_mtime = fs::metadata(d).unwrap().modified().unwrap();
    for name in fs::read_dir(d).unwrap() {
        let p = name.unwrap().path();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    let before = listing(d);

    assert_eq!(recovered(d, &w).0, Some(6));
    let reader = LogReader::open(d).unwrap();
    let scan = reader.scan().unwrap();
    for s in &scan.segments {
        for h in &s.records {
            reader.load(&s.path, h).unwrap();
        }
    }
    assert_eq!(listing(d), before, "a reader changed the directory");
    assert_eq!(fs::metadata(d).unwrap().modified().unwrap(), dir_mtime);

    // The writer must refuse. Root ignores permission bits, so as root the
    // refusal is checked in a child process running as `nobody`.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        match Log::open(d, opts(1 << 20)) {
            Err(WalError::ReadOnly { .. }) => {}
            other => panic!("expected ReadOnly, got {other:?}"),
        }
    } else {
        // the temp dir's parent must be traversable by nobody
        fs::set_permissions(d.parent().unwrap(), fs::Permissions::from_mode(0o1777)).ok();
        // The child is this test binary, copied where nobody can reach it
        // (a checkout under a 0700 directory hides target/ from nobody).
        let probe = common::ExeForNobody::copy(&std::env::current_exe().unwrap());
        let blocked = common::first_closed_ancestor(d);
        match (probe, blocked) {
            (Err(why), _) => println!("skipped: the write refusal as nobody: {why}"),
            (_, Some(closed)) => println!(
                "skipped: the write refusal as nobody: nobody cannot enter {}",
                closed.display()
            ),
            (Ok(probe), None) => {
                use std::os::unix::process::CommandExt;
                let out = std::process::Command::new(&probe.path)
                    .args([
                        "--exact",
                        "read_only_child_probe",
                        "--nocapture",
                        "--include-ignored",
                    ])
                    .env("EPOCHWAL_TEST_RO_DIR", d)
                    .uid(common::NOBODY)
                    .gid(common::NOBODY)
                    .output()
                    .expect("start the probe as nobody");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    stdout.contains("RO-PROBE: ReadOnly"),
                    "child as nobody: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        assert_eq!(
            listing(d),
            before,
            "the refused writer changed the directory"
        );
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run only as the child of the test above (as an unprivileged user).
#[test]
#[ignore]
fn read_only_child_probe() {
    let Ok(d) = std::env::var("EPOCHWAL_TEST_RO_DIR") else {
        return;
    };
    match Log::open(&d, opts(1 << 20)) {
        Err(WalError::ReadOnly { .. }) => println!("RO-PROBE: ReadOnly"),
        Err(e) => println!("RO-PROBE: other error {e:?}"),
        Ok(_) => println!("RO-PROBE: opened for writing"),
    }
}
