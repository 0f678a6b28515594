//! `epochwal tail` and the other tools on paths that are not logs: `-f`
//! waits only for a directory that can still appear and then prints every
//! record of it; impossible paths are usage errors at once; a missing or
//! empty directory is "no epochwal log" (exit 1); a damaged record is marked.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{synthetic_config, write_config, Daemon};
use epochwal::wal::{Log, LogOptions, LogReader};

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");
const LONG: Duration = Duration::from_secs(120);

fn tool(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Waits for a child to exit; kills it and fails after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn follow_exits_2(path: &Path, what: &str) {
    let mut child = Command::new(BIN)
        .arg("tail")
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{what}: {err}");
    assert!(
        err.contains("can never become a log directory"),
        "{what}: {err}"
    );
}

#[test]
fn tail_follow_exits_2_at_once_on_paths_that_can_never_be_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    follow_exits_2(&file, "a regular file");
    follow_exits_2(&file.join("sub").join("log"), "a path under a file");
    follow_exits_2(&tmp.path().join("a".repeat(300)), "a name that is too long");
    follow_exits_2(
        &tmp.path().join("missing").join("b".repeat(300)),
        "a too-long name under a missing directory",
    );
}

#[test]
fn tail_follow_prints_every_record_of_a_log_that_appears_after_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    // Two missing levels: the follower must wait, not fail.
    let data = tmp.path().join("later").join("data");
    let mut child = Command::new(BIN)
        .args(["tail", "-f", "-n", "3"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            sink.lock().unwrap().push(l);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "tail -f exited on a missing directory"
    );

    // 40 records, every one kept, written as fast as the daemon can.
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 40, "every_epochs = 1\nkeep_records = 0"),
    );
    let (status, dl) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", dl.join("\n"));
    let deadline = Instant::now() + LONG;
    while lines.lock().unwrap().len() < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill only reads its arguments; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    reader.join().unwrap();
    assert_eq!(status.code(), Some(0));
    let seqs: Vec<u64> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|f| f.strip_prefix("seq="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l}"))
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "every record, in order, once"
    );
}

#[test]
fn tools_on_a_missing_or_empty_directory_say_no_log_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"hello").unwrap();
    for dir in [&missing, &empty, &foreign] {
        let d = dir.to_str().unwrap();
        let out = tool(&["verify", d]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "verify {d}: {err}");
        assert!(err.contains(&format!("no epochwal log in {d}")), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("clean"));
    }
    for args in [
        vec!["tail"],
        vec!["inspect"],
        vec!["export", "-o", "/nonexistent-dir/x.safetensors"],
    ] {
        let mut a = args.clone();
        a.insert(1, missing.to_str().unwrap());
        let out = tool(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains("no epochwal log in"), "{a:?}: {err}");
    }
    // A file where a directory is expected is a usage error.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for cmd in ["verify", "tail", "inspect"] {
        let out = tool(&[cmd, file.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn tail_marks_a_damaged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    {
        let (mut log, _) = Log::open(&dir, LogOptions::default()).unwrap();
        for e in 1..=4 {
            log.append(&common::sample_state(8192, e)).unwrap();
        }
    }
    // Flip one payload byte of record 2.
    let scan = LogReader::open(&dir).unwrap().scan().unwrap();
    let (path, h) = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(move |r| (s.path.clone(), *r)))
        .find(|(_, r)| r.sequence == 2)
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(h.payload_offset() + 100) as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let out = tool(&["tail", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        let damaged = l.starts_with("seq=2 ");
        assert_eq!(l.contains("DAMAGED"), damaged, "{l}");
        if damaged {
            assert!(l.contains("checksum"), "{l}");
        }
    }
    let out = tool(&["tail", "--json", dir.to_str().unwrap()]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let intact: Vec<bool> = rows
        .iter()
        .map(|r| r["intact"].as_bool().unwrap())
        .collect();
    assert_eq!(intact, vec![true, false, true, true]);
    // --headers-only reads no payload and marks nothing.
    let out = tool(&["tail", "--headers-only", dir.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
}
