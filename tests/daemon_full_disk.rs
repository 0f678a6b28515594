//! A full disk, for real: the log lives on a 4 MiB tmpfs. Rotation fails
//! with a clear error, nothing earlier is damaged, the daemon keeps training,
//! reports the failure in its log and in sd_notify STATUS, and the next
//! trigger after space is freed succeeds. A daemon killed on a full disk
//! makes room when it opens the log again and goes on checkpointing.
//!
//! Mounting needs root (CI runs as root). Without it the test fails with a
//! message saying so, unless EPOCHWAL_SKIP_MOUNT_TESTS=1 is set.

mod common;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::Mount;

const LONG: Duration = Duration::from_secs(120);

/// Collects every datagram on `sock` from a background thread (the daemon
/// drops notifications when the queue is full, as it must never block).
fn collect(sock: UnixDatagram) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    });
    out
}

#[test]
fn a_full_disk_fails_rotation_cleanly_and_training_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_mount) = Mount::tmpfs(&mnt, "4m") else {
        if std::env::var_os("EPOCHWAL_SKIP_MOUNT_TESTS").is_some() {
            println!("skipped: cannot mount a tmpfs (needs root)");
            return;
        }
        panic!("cannot mount a size-limited tmpfs; run as root or set EPOCHWAL_SKIP_MOUNT_TESTS=1");
    };
    // 1 MiB of the 4 MiB is taken by a filler file we can delete later.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 1 << 20]).unwrap();
    let data = mnt.join("data");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let messages = collect(sock);
    // ~260 KiB records, three to a 1 MiB segment, nothing deleted.
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(
            &data,
            0,
            "every_steps = 4\nsegment_bytes = 1048576\nkeep_records = 0",
        ),
    );
    let d = Daemon::spawn(&cfg, &[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let failure = d
        .wait_for("checkpoint failed; training goes on", LONG)
        .unwrap_or_else(|| panic!("the disk never filled:\n{}", d.lines().join("\n")));
    assert!(failure.contains("no space left"), "{failure}");
    assert!(
        failure.contains(data.to_str().unwrap()),
        "the error names the file: {failure}"
    );
    let durable_before = durable_seqs(&d.lines());
    assert!(!durable_before.is_empty());

    // Training goes on: steps advance past the failure.
    let failed_step = field(&failure, "step").unwrap();
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        let lines = d.lines();
        let later = lines
            .iter()
            .filter(|l| l.contains("checkpoint failed"))
            .filter_map(|l| field(l, "step"))
            .any(|s| s > failed_step);
        if later {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(d.child.id() > 0);
    let status_msgs = messages.lock().unwrap().clone();
    assert!(
        status_msgs
            .iter()
            .any(|m| m.contains("checkpoint failed: no space left")),
        "STATUS reports the failure: {status_msgs:?}"
    );

    // Every record that was durable is intact (a `.tmp` may exist for a
    // moment while a rotation attempt fails; it is checked after exit).
    let reader = epochwal::wal::LogReader::open(&data).unwrap();
    let scan = reader.scan().unwrap();
    let mut seqs = Vec::new();
    for seg in &scan.segments {
        assert!(seg.problems.is_empty(), "{:?}", seg.problems);
        for r in &seg.records {
            reader.load(&seg.path, r).unwrap();
            seqs.push(r.sequence);
        }
    }
    for s in &durable_before {
        assert!(seqs.contains(s), "durable seq {s} missing from {seqs:?}");
    }

    // Free space: the next trigger retries and succeeds.
    let before = durable_seqs(&d.lines()).len();
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + LONG;
    while durable_seqs(&d.lines()).len() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        durable_seqs(&d.lines()).len() > before,
        "no checkpoint after space was freed"
    );
    let again = d
        .wait_for("checkpoints succeed again", LONG)
        .unwrap_or_else(|| {
            panic!(
                "no line says checkpoints work again:\n{}",
                d.lines().join("\n")
            )
        });
    assert!(
        field(&again, "failed_attempts").unwrap_or(0) >= 1,
        "{again}"
    );

    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    assert_eq!(status.signal(), None, "no SIGBUS or other signal");
    let all = lines.join("\n");
    match status.code() {
        Some(0) => {}
        // The disk may have filled again before the final checkpoint.
        Some(1) => assert!(
            all.contains("final checkpoint could not be written"),
            "{all}"
        ),
        other => panic!("exit {other:?}\n{all}"),
    }
    let newest_reported = durable_seqs(&lines).into_iter().max().unwrap();
    let (seq, _) = newest_state(&data).unwrap();
    assert_eq!(seq, newest_reported);
    let scan = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap();
    assert!(
        scan.others
            .iter()
            .all(|o| !o.file.to_string_lossy().ends_with(".tmp")),
        "no half-made segment is left behind: {:?}",
        scan.others
    );
}

/// Bytes the file system of `path` still has for an unprivileged writer.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes only into the zeroed struct we pass; `c` is a
    // valid NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c.as_ptr(), &mut st),
            0,
            "statvfs {}",
            path.display()
        );
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

/// (segment file, number of records) of every segment, oldest first.
fn segments(data: &Path) -> Vec<(PathBuf, usize)> {
    let scan = epochwal::wal::LogReader::open(data)
        .unwrap()
        .scan()
        .unwrap();
    scan.segments
        .iter()
        .map(|s| (s.path.clone(), s.records.len()))
        .collect()
}

/// Waits for `n` durable checkpoints after `after` (a count of lines), and
/// fails on any failed checkpoint before them.
fn wait_for_checkpoints(d: &Daemon, after: usize, n: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let lines = d.lines();
        let new = &lines[after.min(lines.len())..];
        if let Some(failed) = new.iter().find(|l| l.contains("checkpoint failed")) {
            panic!("a checkpoint failed: {failed}\n{}", lines.join("\n"));
        }
        if durable_seqs(new).len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} checkpoints:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_restart_on_a_full_disk_keeps_checkpointing() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_mount) = Mount::tmpfs(&mnt, "4m") else {
        if std::env::var_os("EPOCHWAL_SKIP_MOUNT_TESTS").is_some() {
            println!("skipped: cannot mount a tmpfs (needs root)");
            return;
        }
        panic!("cannot mount a size-limited tmpfs; run as root or set EPOCHWAL_SKIP_MOUNT_TESTS=1");
    };
    let data = mnt.join("data");
    // Every ~260 KiB record gets a segment of its own (segment_bytes is
    // smaller than a record) and the writer rotates ahead after each one, so
    // an empty segment is waiting for the next record nearly all the time.
    // keep_records = 1: running needs room for two segments.
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(
            &data,
            0,
            "every_steps = 4\nsegment_bytes = 65536\nkeep_records = 1",
        ),
    );
    let run = |args: &[&str]| Daemon::spawn(&cfg, args, &[]);

    // One record, to learn the size of a segment.
    let d = run(&[]);
    wait_for_checkpoints(&d, 0, 1);
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    let seg_bytes = segments(&data)
        .iter()
        .map(|(p, _)| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();

    // Fill the disk so that the log has room for two and a half segments:
    // enough to run (one record, one segment rotated ahead), not for a
    // third segment.
    // The segments on disk: one, or two when the stop found the state
    // already durable and left the segment rotated ahead.
    let used: u64 = segments(&data)
        .iter()
        .map(|(p, _)| std::fs::metadata(p).unwrap().len())
        .sum();
    let filler_len = free_bytes(&mnt) - (5 * seg_bytes / 2 - used);
    std::fs::write(mnt.join("filler"), vec![1u8; filler_len as usize]).unwrap();

    // Running on the full disk works, because retention frees a segment
    // before the next is created. Kill it while a segment rotated ahead is
    // waiting, empty: a restart cannot use that segment, and without making
    // room first it could not create one either.
    let mut hit = None;
    let mut last_durable = 0;
    for attempt in 1..=20 {
        let d = run(&[]);
        wait_for_checkpoints(&d, 0, 3);
        let deadline = Instant::now() + LONG;
        loop {
            let segs = segments(&data);
            if segs.len() == 2 && segs[0].1 > 0 && segs[1].1 == 0 {
                d.signal(libc::SIGKILL);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never saw a segment rotated ahead: {segs:?}"
            );
        }
        let (status, lines) = d.wait(LONG);
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        last_durable = durable_seqs(&lines).into_iter().max().unwrap();
        let segs = segments(&data);
        if segs.len() == 2 && segs[1].1 == 0 {
            hit = Some((attempt, segs));
            break;
        }
    }
    let (attempts, segs) = hit.expect("no kill landed while an empty segment waited");
    println!("killed with an empty segment rotated ahead after {attempts} attempt(s): {segs:?}");
    assert!(
        free_bytes(&mnt) < seg_bytes,
        "the disk is full: {} bytes free, a segment needs {seg_bytes}",
        free_bytes(&mnt)
    );

    // The restart makes room at open and goes on checkpointing.
    let d = run(&[]);
    wait_for_checkpoints(&d, 0, 3);
    let lines = d.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("retention at open deleted") && l.contains("segments=1")),
        "{}",
        lines.join("\n")
    );
    let recovered = lines.iter().find(|l| l.contains("recovered")).unwrap();
    let resumed = field(recovered, "seq").unwrap();
    assert!(
        resumed >= last_durable,
        "{recovered}: {last_durable} was durable"
    );
    assert!(durable_seqs(&lines).iter().all(|&s| s > resumed));
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    let newest = durable_seqs(&lines).into_iter().max().unwrap();
    assert_eq!(newest_state(&data).unwrap().0, newest);
}
