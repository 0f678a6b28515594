//! `epochwal tail`: the real binary against real log directories.

mod common;

use common::follow::{Follower, LINE_TIMEOUT};

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use epochwal::wal::{Log, LogOptions, Retention};

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 64 << 10,
        ..Default::default()
    }
}

fn write_log(dir: &Path, epochs: std::ops::RangeInclusive<u64>, opts: LogOptions) {
    let (mut log, _) = Log::open(dir, opts).unwrap();
    for e in epochs {
        log.append(&common::sample_state(20_000, e)).unwrap();
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prints_the_last_n_records() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=12, small_segments());

    let out = Command::new(BIN)
        .arg("tail")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "default is 10 lines:\n{text}");
    assert!(
        lines[0].starts_with("seq=3 epoch=3 step=30 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[9].starts_with("seq=12 epoch=12 step=120 "),
        "{}",
        lines[9]
    );
    assert!(
        lines[9].contains("time=2023-11-14T22:13:20.000Z"),
        "{}",
        lines[9]
    );
    assert!(
        lines[9].contains("segment=0000000000000000"),
        "{}",
        lines[9]
    );

    let out = Command::new(BIN)
        .args(["tail", "-n", "3"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let seqs: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(seqs, ["seq=10", "seq=11", "seq=12"]);
}

#[test]
fn json_lines_have_every_field() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=4, small_segments());
    let out = Command::new(BIN)
        .args(["tail", "--json", "-n", "2"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let v = &lines[1];
    for field in [
        "sequence",
        "epoch",
        "step",
        "loss",
        "payload_bytes",
        "unix_ns",
        "time",
        "segment",
        "offset",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["sequence"], 4);
    assert_eq!(v["epoch"], 4);
    assert_eq!(v["step"], 40);
    assert_eq!(v["loss"].as_f64(), Some(f64::from(1.0f32 / 5.0)));
    assert_eq!(v["unix_ns"], 1_700_000_000_000_000_004u64);
    assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
    assert!(v["payload_bytes"].as_u64().unwrap() > 20_000);
    assert!(v["segment"].as_str().unwrap().ends_with(".wal"));
    assert_eq!(v["offset"].as_u64().unwrap() % 4096, 0);
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("tail")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("no epochwal log in"),
        "{err}"
    );
}

#[test]
fn follows_appends_rotation_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_bytes: 64 << 10,
        retention: Retention {
            keep_records: 3,
            ..Default::default()
        },
    };
    write_log(dir.path(), 1..=3, opts);
    let tail = Follower::spawn(dir.path(), &["--json", "-n", "2"]);
    tail.expect_sequences([2, 3]);

    let (mut log, _) = Log::open(dir.path(), opts).unwrap();
    let mut slowest = Duration::ZERO;
    for e in 4..=12 {
        let durable = log.append(&common::sample_state(20_000, e)).unwrap();
        let t = Instant::now();
        let v = tail.next_json();
        slowest = slowest.max(t.elapsed());
        assert_eq!(v["sequence"], e);
        assert_eq!(
            v["segment"].as_str().unwrap(),
            durable.path.file_name().unwrap().to_str().unwrap()
        );
    }
    eprintln!("slowest tail -f latency: {slowest:?}");
    // Several segments were created and old ones deleted along the way.
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("wal".as_ref()))
        .count();
    assert!(
        segments <= 3,
        "retention deleted segments ({segments} left)"
    );
    tail.assert_quiet(Duration::from_millis(1500));
}

#[test]
fn follows_across_a_writer_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=2, small_segments());
    let tail = Follower::spawn(dir.path(), &["--json"]);
    tail.expect_sequences([1, 2]);
    for round in 0..3u64 {
        let (mut log, rec) = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(rec.record.unwrap().header().sequence, 2 + 2 * round);
        for i in 1..=2 {
            let e = 2 + 2 * round + i;
            log.append(&common::sample_state(20_000, e)).unwrap();
            tail.expect_sequences([e]);
        }
        drop(log);
    }
}

#[test]
fn follows_a_directory_that_does_not_exist_yet() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("later");
    let tail = Follower::spawn(&dir, &["--json"]);
    tail.assert_quiet(Duration::from_millis(600));
    let (mut log, _) = Log::open(&dir, small_segments()).unwrap();
    for e in 1..=3 {
        log.append(&common::sample_state(20_000, e)).unwrap();
        tail.expect_sequences([e]);
    }
}

#[test]
fn follows_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let tail = Follower::spawn(dir.path(), &["--json", "-n", "5"]);
    tail.assert_quiet(Duration::from_millis(500));
    let (mut log, _) = Log::open(dir.path(), small_segments()).unwrap();
    for e in 1..=3 {
        log.append(&common::sample_state(20_000, e)).unwrap();
        tail.expect_sequences([e]);
    }
}

#[test]
fn follow_text_lines_name_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=1, small_segments());
    let tail = Follower::spawn(dir.path(), &[]);
    let line = tail.lines.recv_timeout(LINE_TIMEOUT).unwrap();
    assert!(
        line.starts_with("seq=1 epoch=1 step=10 loss=0.500000 size="),
        "{line}"
    );
    assert!(line.ends_with("segment=00000000000000000001.wal"), "{line}");
}

#[test]
fn exits_quietly_when_the_pipe_closes() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=3, small_segments());
    let mut child = Command::new(BIN)
        .args(["tail", "-f", "-n", "1"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line (like `head -n 1`), then close the pipe.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("seq=3 "), "{line}");
    drop(stdout);
    // More records make the next write fail with EPIPE (if the follower has
    // not noticed the closed pipe already).
    let (mut log, _) = Log::open(dir.path(), small_segments()).unwrap();
    for e in 4..=6 {
        log.append(&common::sample_state(20_000, e)).unwrap();
    }
    let status = wait_exit(&mut child, LINE_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.is_empty(), "stderr should be silent: {err}");
}

#[test]
fn exits_zero_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=1, small_segments());
    let mut tail = Follower::spawn(dir.path(), &["--json"]);
    tail.expect_sequences([1]);
    // SAFETY: sending a signal to our own child process by its pid.
    let rc = unsafe { libc::kill(tail.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = wait_exit(&mut tail.child, LINE_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn works_on_a_read_only_directory_without_creating_files() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=3, small_segments());
    let before: Vec<_> = list(dir.path());
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(dir.path(), perms.clone()).unwrap();
    let out = Command::new(BIN)
        .args(["tail", "-n", "1"])
        .arg(dir.path())
        .output()
        .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("seq=3 "));
    assert_eq!(before, list(dir.path()));
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// CPU time (user + system, in clock ticks) of a process, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_follower_does_not_spin() {
    // The follower's own reads of the segments must not wake it up again
    // (inotify reports opens in a watched directory).
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=6, small_segments());
    let tail = Follower::spawn(dir.path(), &["--json", "-n", "1"]);
    tail.expect_sequences([6]);
    let before = cpu_ticks(tail.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(tail.child.id()) - before;
    assert!(
        used < 40,
        "tail -f used {used} ticks of CPU in 2 s while idle"
    );
}

#[test]
fn a_log_directory_the_user_may_not_read_is_reported_once_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, 1..=1, small_segments());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    // Root reads everything: ask as nobody, through a copy of the binary that
    // nobody can reach wherever the checkout lives.
    let exe = if as_root {
        match common::ExeForNobody::copy(Path::new(BIN)) {
            Ok(exe) => Some(exe),
            Err(why) => {
                println!("skipped: cannot run the binary as nobody: {why}");
                return;
            }
        }
    } else {
        None
    };
    if let Some(closed) = common::first_closed_ancestor(&dir).filter(|_| as_root) {
        println!(
            "skipped: nobody cannot enter {}, above the log directory",
            closed.display()
        );
        return;
    }
    let mut cmd = Command::new(exe.as_ref().map_or(Path::new(BIN), |e| &e.path));
    cmd.arg("tail").arg(&dir);
    if as_root {
        cmd.uid(common::NOBODY).gid(common::NOBODY);
    } else {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.output().unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(dir.to_str().unwrap()),
        "names the directory: {err}"
    );
    assert_eq!(
        err.matches("Permission denied").count(),
        1,
        "said once: {err}"
    );
}

/// A follower whose walk passes the header page of a record before the
/// writer has put it there, and finds the next record after the writer
/// has finished that one too, must still print both (the CI failure that
/// printed 1–21, 23 and never 22).
#[test]
fn follow_prints_a_record_that_its_walk_overtook() {
    // Kept whole: it holds the temporary directory.
    let mut run = common::overtake::run_tool(&["tail", "-f", "-n", "100"]);
    let seq_of = |line: String| -> u64 {
        line.split_whitespace()
            .next()
            .and_then(|f| f.strip_prefix("seq="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line}"))
    };
    let last = common::overtake::IN_FLIGHT + 1;
    let mut seqs = Vec::new();
    while !seqs.contains(&last) {
        let line = run
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|_| panic!("no record {last} in time; printed {seqs:?}"));
        seqs.push(seq_of(line));
    }
    // A record printed late would come within a rescan or two.
    while let Ok(line) = run.lines.recv_timeout(Duration::from_secs(3)) {
        seqs.push(seq_of(line));
    }
    // SAFETY: kill only reads its arguments; the pid is our child's.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    assert_eq!(wait_exit(&mut run.child, LINE_TIMEOUT).code(), Some(0));
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every record, in order, once"
    );
}

/// The same race at the very first record the follower sees: the walk of
/// its first scan passes record 1's header page before the writer writes
/// it and finds record 2 further on. With no record before it to count
/// from, the follower printed 2 and never 1 (`python_cli` met this with a
/// log that appeared after the follower started).
#[test]
fn follow_prints_a_first_record_that_its_walk_overtook() {
    let mut run = common::overtake::run_tool_past(&["tail", "-f", "--json"], 1);
    let mut seqs = Vec::new();
    while !seqs.contains(&2) {
        let line = run
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|_| panic!("no record 2 in time; printed {seqs:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seqs.push(v["sequence"].as_u64().unwrap());
    }
    while let Ok(line) = run.lines.recv_timeout(Duration::from_secs(3)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seqs.push(v["sequence"].as_u64().unwrap());
    }
    // SAFETY: kill only reads its arguments; the pid is our child's.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    assert_eq!(wait_exit(&mut run.child, LINE_TIMEOUT).code(), Some(0));
    assert_eq!(seqs, vec![1, 2], "every record, in order, once");
}

/// A record that is really missing (its header page zeroed: damage, not a
/// write in flight) does not stop the follower: it prints the records
/// after it once a second scan finds the same gap.
#[test]
fn follow_prints_past_a_record_that_stays_missing() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    write_log(&staged, 1..=5, small_segments());
    let scan = epochwal::wal::LogReader::open(&staged)
        .unwrap()
        .scan()
        .unwrap();
    let (path, r3) = scan
        .segments
        .iter()
        .find_map(|s| {
            s.records
                .iter()
                .find(|r| r.sequence == 3)
                .map(|r| (s.path.clone(), *r))
        })
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0u8; 4096], r3.offset)
        .unwrap();
    // Followed from before it exists, so every record is printed.
    let log_dir = dir.path().join("log");
    let tail = Follower::spawn(&log_dir, &["--json"]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&staged, &log_dir).unwrap();
    tail.expect_sequences([1, 2, 4, 5]);
    tail.assert_quiet(Duration::from_millis(1500));
}

/// `tail` (no `-f`) next to a writer whose record its walk overtook: every
/// record, and no warning of damage that is not there.
#[test]
fn tail_shows_a_record_that_its_walk_overtook() {
    let (status, out) = common::overtake::run_tool(&["tail", "--json", "-n", "3"]).finish();
    assert_eq!(status.code(), Some(0));
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [21, 22, 23]);
}

/// On a job directory `tail` prints one line per rank; `-n` (records of one
/// log) has nothing to apply to there, and was silently ignored. It is a
/// usage error that names a rank's log to tail instead.
#[test]
fn tail_n_of_a_job_directory_names_one_rank_to_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_log(&job.join("rank-00000"), 1..=4, small_segments());
    write_log(&job.join("rank-00001"), 1..=4, small_segments());
    let out = Command::new(BIN)
        .args(["tail", "-n", "2"])
        .arg(&job)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("is a job directory")
            && stderr.contains("-n")
            && stderr.contains("rank-00000"),
        "names the flag and a rank's log: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without -n: the per-rank summary, as before.
    let out = Command::new(BIN).arg("tail").arg(&job).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rank") && text.contains("00001"), "{text}");
}
