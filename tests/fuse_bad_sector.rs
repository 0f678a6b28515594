//! A bad sector inside the newest record's payload, for real: the log lives
//! on a FUSE pass-through file system (tests/badfs) that answers reads of
//! one page with EIO, so a mapping that touches it raises SIGBUS as it would
//! over a failing disk. Recovery, `verify`, `inspect` and `export` must name
//! the record and fall back to the one before it; no SIGBUS may reach the
//! user. Needs /dev/fuse and root (the tests run as root in CI).

mod badfs;
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::*;
use epochwal::wal::format::PAGE;
use epochwal::wal::LogReader;

/// A log of three records (epochs 1..=3) written by the daemon into
/// `backing`, then the FUSE view of it with a bad page in record 3's payload.
fn log_with_a_bad_sector(tmp: &Path) -> (badfs::Mounted, u64) {
    let backing = tmp.join("backing");
    let cfg = write_config(
        tmp,
        "w.toml",
        &synthetic_config(&backing, 3, "every_epochs = 1"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    let scan = LogReader::open(&backing).unwrap().scan().unwrap();
    let seg = &scan.segments[0];
    assert_eq!(seg.records.len(), 3);
    let third = seg.records[2];
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = badfs::mount(&backing, &mnt).unwrap_or_else(|e| {
        panic!(
            "mounting the FUSE test file system failed ({e}); this test needs /dev/fuse and root"
        )
    });
    let at = third.payload_offset() + 3 * PAGE;
    mounted.control.bad.lock().unwrap().push(badfs::BadRange {
        file_name: seg.path.file_name().unwrap().to_str().unwrap().into(),
        start: at,
        end: at + PAGE,
    });
    (mounted, third.offset)
}

fn tool(args: &[&str], dir: &Path) -> Output {
    Command::new(binary())
        .args(&args[..1])
        .arg(dir)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn assert_no_signal(out: &Output, what: &str) {
    assert_eq!(
        out.status.signal(),
        None,
        "{what} was killed by signal {:?} (7 = SIGBUS)\n{}",
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_sector_in_the_newest_payload_is_named_and_passed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (fs, third_offset) = log_with_a_bad_sector(tmp.path());
    let mnt = fs.mountpoint.clone();

    // verify: an I/O error naming record 3; recovery would use record 2.
    let out = tool(&["verify", "--json"], &mnt);
    assert_no_signal(&out, "verify");
    assert!(
        fs.control
            .eio_reads
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert_eq!(v["records_good"], 2, "{v}");
    assert_eq!(v["records_unreadable"], 1, "{v}");
    let io = &v["io_errors"][0];
    assert_eq!(io["offset"], third_offset, "{v}");
    assert!(
        io["reason"]
            .as_str()
            .unwrap()
            .contains("record 3 (epoch 3) cannot be read"),
        "{v}"
    );
    assert!(io["reason"].as_str().unwrap().contains("EIO"), "{v}");
    assert_eq!(v["recovery"]["sequence"], 2, "{v}");

    // inspect: the newest readable record, with a note naming record 3.
    let out = tool(&["inspect", "--json"], &mnt);
    assert_no_signal(&out, "inspect");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sequence"], 2, "{v}");
    assert!(
        stderr.contains("record 3 (epoch 3) cannot be read"),
        "{stderr}"
    );
    // Asked for record 3 by name: an error naming it.
    let out = tool(&["inspect", "--seq", "3"], &mnt);
    assert_no_signal(&out, "inspect --seq 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("record with sequence 3 (epoch 3)") && stderr.contains("cannot be read"),
        "{stderr}"
    );

    // export: record 2; record 3 by name is an error naming it.
    let file = tmp.path().join("w.safetensors");
    let out = tool(&["export", "-o", file.to_str().unwrap()], &mnt);
    assert_no_signal(&out, "export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(file.exists());
    let out = tool(
        &["export", "--seq", "3", "-o", file.to_str().unwrap()],
        &mnt,
    );
    assert_no_signal(&out, "export --seq 3");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be read"));
}

/// The daemon on the failing disk: recovery passes over the unreadable
/// record with a report, resumes from record 2 and writes on through the
/// same file system; the sequence goes on after 3.
#[test]
fn the_daemon_resumes_from_the_record_before_a_bad_sector() {
    let tmp = tempfile::tempdir().unwrap();
    let (fs, _) = log_with_a_bad_sector(tmp.path());
    let cfg = write_config(
        tmp.path(),
        "r.toml",
        &synthetic_config(&fs.mountpoint, 4, "every_epochs = 1"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    let all = lines.join("\n");
    assert_eq!(status.signal(), None, "SIGBUS reached the daemon: {all}");
    assert!(status.success(), "{all}");
    assert!(all.contains("record 3 (epoch 3) cannot be read"), "{all}");
    assert!(all.contains("recovered") && all.contains("seq=2"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4, 5]);
    let out = tool(&["verify", "--json"], &fs.mountpoint);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recovery"]["sequence"], 5, "{v}");
}

// ------------------------- the bytes checksummed are the bytes trained on

/// A run whose records are large enough (about 3.4 MiB) that the loader
/// reads a payload in several calls: the page changed below is read long
/// before the read that makes the change.
fn wide_config(data: &Path, epochs: u64) -> String {
    synthetic_config(data, epochs, "every_epochs = 1")
        .replace("hidden = [128, 128]", "hidden = [512, 512]")
}

/// Three epochs of the wide run on the FUSE file system, the newest record's
/// payload page 3 armed to read back differently (flipped bytes, or EIO)
/// once the payload has been read 2 MiB past it.
fn wide_log_whose_second_read_differs(tmp: &Path, eio: bool) -> (badfs::Mounted, String, u64) {
    let backing = tmp.join("backing");
    let cfg = write_config(tmp, "w.toml", &wide_config(&backing, 3));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    let scan = LogReader::open(&backing).unwrap().scan().unwrap();
    let seg = scan.segments.last().unwrap();
    let third = *seg.records.last().unwrap();
    assert_eq!(third.sequence, 3);
    assert!(third.payload_len > 3 << 20, "{}", third.payload_len);
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = badfs::mount(&backing, &mnt).unwrap_or_else(|e| {
        panic!(
            "mounting the FUSE test file system failed ({e}); this test needs /dev/fuse and root"
        )
    });
    let name = seg.path.file_name().unwrap().to_str().unwrap().to_string();
    let at = third.payload_offset() + 3 * PAGE;
    *mounted.control.second_read.lock().unwrap() = Some(badfs::SecondRead {
        file_name: name.clone(),
        start: at,
        end: at + PAGE,
        after: at + (2 << 20),
        // Within the payload: a header scan reads the page after it.
        until: third.payload_offset() + third.payload_len,
        eio,
    });
    (mounted, name, at)
}

/// The medium returns other bytes for a page on its second read (the page
/// was evicted between two reads): recovery must train on exactly the bytes
/// it checksummed. Before, it checksummed a `pread` of the payload and then
/// trained on a mapping of it, so the changed page went into every later
/// record under a valid checksum.
#[test]
fn recovery_trains_on_the_bytes_it_checksummed_when_a_reread_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference_run(tmp.path(), |d| wide_config(d, 4));
    let (fs, name, at) = wide_log_whose_second_read_differs(tmp.path(), false);
    let cfg = write_config(tmp.path(), "r.toml", &wide_config(&fs.mountpoint, 4));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert!(
        fs.control
            .second_read_done
            .load(std::sync::atomic::Ordering::SeqCst),
        "the page was never made to read back differently"
    );
    assert!(fs.control.reads_of(&name, at) >= 1);
    assert!(all.contains("recovered") && all.contains("seq=3"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4]);
    drop(fs);
    let (_, resumed) = newest_state(&tmp.path().join("backing")).unwrap();
    assert_same_training_state(&resumed, &reference);
}

/// The same with EIO on the second read: before, a SIGBUS killed the daemon
/// (the mapping touched the page that now failed).
#[test]
fn an_eio_on_a_reread_of_a_checked_payload_is_no_sigbus() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference_run(tmp.path(), |d| wide_config(d, 4));
    let (fs, _, _) = wide_log_whose_second_read_differs(tmp.path(), true);
    let cfg = write_config(tmp.path(), "r.toml", &wide_config(&fs.mountpoint, 4));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    let all = lines.join("\n");
    assert_eq!(status.signal(), None, "SIGBUS reached the daemon: {all}");
    assert!(status.success(), "{all}");
    assert!(
        fs.control
            .second_read_done
            .load(std::sync::atomic::Ordering::SeqCst),
        "the page was never made unreadable"
    );
    assert!(all.contains("recovered") && all.contains("seq=3"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4]);
    drop(fs);
    let (_, resumed) = newest_state(&tmp.path().join("backing")).unwrap();
    assert_same_training_state(&resumed, &reference);
}
