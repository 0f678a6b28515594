//! Replication faults with the real S3 server and the real binary: wrong
//! credentials, a missing bucket, an unreachable endpoint (refused by
//! default, trained through with `required = false`), the server stopped in
//! the middle of a run and started again, and SIGTERM while the remote is
//! down.

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
        .filter_map(|l| field(l, "skipped"))
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
