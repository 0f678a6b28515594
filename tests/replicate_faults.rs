//! Replication faults with the real S3 server and the real binary: wrong
//! credentials, a missing bucket, an unreachable endpoint (refused by
//! default, trained through with `required = false` when there is a local
//! checkpoint to resume, refused on an empty directory), the server stopped in
//! the middle of a run and started again, SIGTERM while the remote is down,
//! a run that ends on its own with the remote down (the wait for the last
//! upload is bounded), and two writers on one prefix.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{durable_seqs, field, synthetic_config, write_config, Daemon};
use common::s3::{epochwal, spawn_daemon, S3Server};

const CHECKPOINT: &str = "every_epochs = 1\nsegment_bytes = 1048576\nkeep_records = 10";

fn config(url: &str, data: &Path, epochs: u64, extra: &str) -> String {
    format!(
        "{}[replicate]\nurl = \"{url}\"\nallow_http = true\n{extra}\n",
        synthetic_config(data, epochs, CHECKPOINT)
    )
}

fn env_with(server: &S3Server, key: &str, value: &str) -> Vec<(String, String)> {
    let mut env = server.env();
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
    env
}

fn spawn_env(cfg: &Path, env: &[(String, String)]) -> Daemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::spawn(cfg, &[], &pairs)
}

/// Runs to exit; returns exit code and the log.
fn run(cfg: &Path, env: &[(String, String)]) -> (Option<i32>, String) {
    let (status, lines) = spawn_env(cfg, env).wait(Duration::from_secs(120));
    (status.code(), lines.join("\n"))
}

#[test]
fn wrong_credentials_at_start_refuse_with_the_url_and_cause() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = server.url("creds");
    let cfg = write_config(tmp.path(), "c.toml", &config(&url, &data, 2, ""));
    let (code, log) = run(&cfg, &env_with(&server, "AWS_SECRET_ACCESS_KEY", "wrong"));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&url), "{log}");
    assert!(log.contains("access denied"), "{log}");
    assert!(log.contains("required = true"), "{log}");
    assert!(!log.contains("training started"), "{log}");
}

#[test]
fn missing_bucket_at_start_is_named() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = "s3://no-such-bucket/x";
    let cfg = write_config(tmp.path(), "c.toml", &config(url, &data, 2, ""));
    let (code, log) = run(&cfg, &server.env());
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(url), "{log}");
    assert!(log.contains("the bucket does not exist"), "{log}");
}

#[test]
fn unreachable_endpoint_refuses_by_default_and_trains_locally_when_not_required() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = env_with(
        &server,
        "AWS_ENDPOINT_URL",
        &format!("http://127.0.0.1:{dead}"),
    );
    let url = server.url("down");
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &config(&url, &data, 2, ""));
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&url) && log.contains("cannot reach the endpoint"),
        "{log}"
    );
    assert!(!data.join("00000000000000000001.wal").exists());

    let cfg = write_config(
        tmp.path(),
        "lenient.toml",
        &config(&url, &data, 2, "required = false\nretry_max_seconds = 1")
            .replace("epochs = 2", "epochs = 2\nshutdown_grace_seconds = 3"),
    );
    // An empty directory: a fresh run could fork a run the remote holds,
    // so even required = false does not start one.
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("holds no checkpoint"), "{log}");
    assert!(!data.join("00000000000000000001.wal").exists());
    // With a local checkpoint (an epoch trained without [replicate]) it
    // trains on locally.
    let local = write_config(
        tmp.path(),
        "local.toml",
        &synthetic_config(&data, 1, CHECKPOINT),
    );
    let (code, log) = run(&local, &[]);
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("REPLICATION UNAVAILABLE"), "{log}");
    assert!(log.contains("did NOT reach the remote"), "{log}");
    let rec = epochwal::wal::recover(&data).unwrap();
    assert_eq!(rec.record.unwrap().header().epoch, 2);
}

#[test]
fn server_stopped_mid_run_uploads_retry_and_catch_up() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = server.url("flaky");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &config(&url, &data, 0, "retry_max_seconds = 1"),
    );
    let d = spawn_daemon(&server, &cfg, &[]);
    assert!(
        d.wait_for("replicated", Duration::from_secs(60)).is_some(),
        "{}",
        d.lines().join("\n")
    );
    server.stop();
    let stopped_at = durable_seqs(&d.lines()).last().copied().unwrap_or(0);
    assert!(
        d.wait_for("upload failed; will retry", Duration::from_secs(60))
            .is_some(),
        "{}",
        d.lines().join("\n")
    );
    // Training and local checkpoints go on while the remote is down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while durable_seqs(&d.lines()).last().copied().unwrap_or(0) < stopped_at + 5 {
        assert!(
            Instant::now() < deadline,
            "training stalled while the remote was down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let failures_before = d.lines().len();
    server.restart();
    let restarted_at = durable_seqs(&d.lines()).last().copied().unwrap();
    // Uploads catch up: a record at least as new as the last one durable
    // when the server came back reaches the remote.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = d.lines()[failures_before..]
            .iter()
            .filter(|l| l.contains(" replicated"))
            .filter_map(|l| field(l, "seq"))
            .any(|s| s >= restarted_at);
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "{}", d.lines().join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(
        all.contains("the final checkpoint reached the remote"),
        "{all}"
    );
    let last = *durable_seqs(&lines).last().unwrap();
    assert_eq!(server.pointer("flaky").unwrap()["sequence"], last);
    // Nothing was lost locally.
    let (code, out, _) = epochwal(&server, &["verify", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Skipped records were counted.
    let skipped = lines
        .iter()
        .filter(|l| l.contains(" replicated"))
        .filter_map(|l| field(l, "skipped_total"))
        .max()
        .unwrap_or(0);
    assert!(
        skipped > 0,
        "latest wins skips records while the remote was down"
    );
}

#[test]
fn sigterm_while_the_remote_is_down_keeps_the_local_checkpoint_and_says_so() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = server.url("term");
    let body = config(&url, &data, 0, "retry_max_seconds = 1")
        .replace("epochs = 0", "epochs = 0\nshutdown_grace_seconds = 3");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let d = spawn_daemon(&server, &cfg, &[]);
    assert!(d.wait_for("replicated", Duration::from_secs(60)).is_some());
    server.stop();
    d.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let (status, lines) = d.wait(Duration::from_secs(60));
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{all}");
    let last = *durable_seqs(&lines).last().unwrap();
    let note = lines
        .iter()
        .find(|l| l.contains("did NOT reach the remote"))
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(field(note, "seq"), Some(last), "{note}");
    // The final record is durable locally and the daemon resumes from it.
    let rec = epochwal::wal::recover(&data).unwrap();
    assert_eq!(rec.record.unwrap().header().sequence, last);
}

#[test]
fn run_that_ends_with_the_remote_down_waits_at_most_the_grace_period() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = server.url("ends");
    // 40 epochs of 256 steps: seconds of training, long after the server
    // is gone. Uploads to a dead server retry forever; only the grace
    // period ends the wait for the final record.
    let body = config(&url, &data, 40, "retry_max_seconds = 1")
        .replace("epochs = 40", "epochs = 40\nshutdown_grace_seconds = 2")
        .replace("n = 1024", "n = 8192");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let d = spawn_daemon(&server, &cfg, &[]);
    assert!(
        d.wait_for("training started", Duration::from_secs(60))
            .is_some(),
        "{}",
        d.lines().join("\n")
    );
    server.stop();
    let (status, lines) = d.wait(Duration::from_secs(300));
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    let last = *durable_seqs(&lines).last().unwrap();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("checkpoint durable"))
            .filter_map(|l| field(l, "epoch"))
            .max(),
        Some(40),
        "the run ended on its own: {all}"
    );
    // The wait is announced with its bound...
    let waiting = lines
        .iter()
        .find(|l| l.contains("waiting for the final checkpoint to reach the remote"))
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(field(waiting, "seq"), Some(last), "{waiting}");
    assert!(
        field(waiting, "wait_at_most_ms").unwrap() <= 2000,
        "{waiting}"
    );
    // ...ends at it, says the final record did not reach the remote...
    let note = lines
        .iter()
        .find(|l| l.contains("did NOT reach the remote"))
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(field(note, "seq"), Some(last), "{note}");
    let waited = field(note, "waited_ms").unwrap();
    assert!(
        (1000..=3000).contains(&waited),
        "waited {waited} ms for a 2 s grace period: {note}"
    );
    // ...and the process then exits cleanly.
    let at = lines.iter().position(|l| l == note).unwrap();
    assert!(
        lines[at..].iter().any(|l| l.contains("exiting cleanly")),
        "{all}"
    );
    let rec = epochwal::wal::recover(&data).unwrap();
    assert_eq!(rec.record.unwrap().header().sequence, last);
    if let Some(p) = server.pointer("ends") {
        assert!(p["sequence"].as_u64().unwrap() < last, "{p}");
    }
    // With the server back, the next start finds the run complete and
    // uploads the final record before it exits.
    server.restart();
    let (status, lines) = spawn_daemon(&server, &cfg, &[]).wait(Duration::from_secs(120));
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert!(all.contains("the run is already complete"), "{all}");
    let reached = lines
        .iter()
        .find(|l| l.contains("the final checkpoint reached the remote"))
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(field(reached, "seq"), Some(last), "{reached}");
    assert_eq!(server.pointer("ends").unwrap()["sequence"], last);
}

/// The pointer's sequence as the server stores it, if it is there and whole.
fn pointer_seq(server: &S3Server, prefix: &str) -> Option<u64> {
    let bytes = std::fs::read(server.object_file(&format!("{prefix}/HEAD"))).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["sequence"].as_u64()
}

#[test]
fn second_writer_on_one_prefix_is_stopped_and_the_pointer_never_goes_back() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("two");
    let dirs = [tmp.path().join("a"), tmp.path().join("b")];
    let cfgs: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            write_config(
                tmp.path(),
                &format!("{i}.toml"),
                &config(&url, dir, 0, "retry_max_seconds = 1"),
            )
        })
        .collect();
    // A replicates; B starts on an empty directory with the same prefix,
    // restores A's newest record and goes on with the same log: two
    // writers of one log (a copy started elsewhere while A still runs).
    let a = spawn_daemon(&server, &cfgs[0], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a
        .lines()
        .iter()
        .filter(|l| l.contains(" replicated"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", a.lines().join("\n"));
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = spawn_daemon(&server, &cfgs[1], &[]);
    let daemons = [a, b];
    const STOPPED: &str = "another writer moved the pointer";
    // Watch the pointer until one of them notices the other.
    let mut highest = 0u64;
    let mut seen = 0usize;
    let stopped_line = |d: &Daemon| d.lines().iter().position(|l| l.contains(STOPPED));
    let deadline = Instant::now() + Duration::from_secs(120);
    let loser = loop {
        if let Some(seq) = pointer_seq(&server, "two") {
            assert!(
                seq >= highest,
                "the pointer went back from {highest} to {seq}"
            );
            highest = seq;
            seen += 1;
        }
        if let Some(i) = daemons.iter().position(|d| stopped_line(d).is_some()) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no writer noticed the other:\nA:\n{}\nB:\n{}",
            daemons[0].lines().join("\n"),
            daemons[1].lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let winner = 1 - loser;
    eprintln!(
        "writer {} stopped: {}",
        ["A (the first)", "B (the restored copy)"][loser],
        daemons[loser].lines()[stopped_line(&daemons[loser]).unwrap()]
    );
    let b_lines = daemons[1].lines();
    assert!(
        b_lines
            .iter()
            .any(|l| l.contains("restored from the remote copy")),
        "{}",
        b_lines.join("\n")
    );
    // The loser keeps training locally but uploads nothing more; the
    // winner keeps replicating; the pointer still never goes back.
    let at = stopped_line(&daemons[loser]).unwrap();
    let count = |d: &Daemon, what: &str, from: usize| {
        d.lines()[from..]
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    let winner_from = daemons[winner].lines().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&daemons[winner], " replicated", winner_from) < 2
        || count(&daemons[loser], "checkpoint durable", at) < 2
    {
        if let Some(seq) = pointer_seq(&server, "two") {
            assert!(
                seq >= highest,
                "the pointer went back from {highest} to {seq}"
            );
            highest = seq;
        }
        assert!(
            Instant::now() < deadline,
            "after the conflict:\nwinner:\n{}\nloser:\n{}",
            daemons[winner].lines().join("\n"),
            daemons[loser].lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for d in &daemons {
        d.signal(libc::SIGTERM);
    }
    let [a, b] = daemons;
    let ends = [
        a.wait(Duration::from_secs(60)),
        b.wait(Duration::from_secs(60)),
    ];
    let (loser_status, loser_lines) = &ends[loser];
    let (winner_status, winner_lines) = &ends[winner];
    assert!(loser_status.success(), "{}", loser_lines.join("\n"));
    assert!(winner_status.success(), "{}", winner_lines.join("\n"));
    let stop = &loser_lines[at];
    assert!(stop.contains("replication stopped"), "{stop}");
    assert!(stop.contains(&url), "the error names the pointer: {stop}");
    assert_eq!(
        loser_lines[at..]
            .iter()
            .filter(|l| l.contains(" replicated"))
            .count(),
        0,
        "{}",
        loser_lines.join("\n")
    );
    assert!(
        loser_lines
            .iter()
            .any(|l| l.contains("did NOT reach the remote")),
        "{}",
        loser_lines.join("\n")
    );
    assert!(
        !winner_lines.iter().any(|l| l.contains(STOPPED)),
        "{}",
        winner_lines.join("\n")
    );
    assert!(
        winner_lines
            .iter()
            .any(|l| l.contains("the final checkpoint reached the remote")),
        "{}",
        winner_lines.join("\n")
    );
    // The pointer ends on the winner's final record, and a restore gets it.
    let last = *durable_seqs(winner_lines).last().unwrap();
    assert_eq!(pointer_seq(&server, "two"), Some(last));
    assert!(seen > 0 && last >= highest);
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (_, restored) = common::daemon::newest_state(&pulled).unwrap();
    let (_, final_state) = common::daemon::newest_state(&dirs[winner]).unwrap();
    common::daemon::assert_same_training_state(&restored, &final_state);
}
