//! `[metrics]` under a real Prometheus (Debian's `prometheus` package): the
//! daemon's `/metrics` is scraped every second, and PromQL over Prometheus's
//! HTTP API returns the durable sequence, epoch, step and persist histogram
//! that the log (`epochwal tail --json`) and the daemon's checkpoint lines
//! hold. A daemon killed with SIGKILL shows as `up == 0`.
//!
//! Skipped with a message when prometheus is not installed, unless `CI` is
//! set (then it fails).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{binary, synthetic_config, write_config, Daemon};
use common::prometheus::Prometheus;
use common::{free_port, http};

/// Every metric the daemon exports (without the `epochwal_` prefix), with
/// its Prometheus type.
const METRICS: &[(&str, &str)] = &[
    ("epoch", "gauge"),
    ("global_step", "gauge"),
    ("train_loss", "gauge"),
    ("validation_loss", "gauge"),
    ("validation_loss_best", "gauge"),
    ("checkpoints_total", "counter"),
    ("checkpoint_written_bytes_total", "counter"),
    ("checkpoint_pause_seconds", "histogram"),
    ("checkpoint_persist_seconds", "histogram"),
    ("last_durable_sequence", "gauge"),
    ("last_durable_epoch", "gauge"),
    ("last_durable_step", "gauge"),
    ("last_durable_timestamp_seconds", "gauge"),
    ("last_durable_age_seconds", "gauge"),
    ("retained_records", "gauge"),
    ("retained_bytes", "gauge"),
    ("disk_free_bytes", "gauge"),
    ("remote_sequence", "gauge"),
    ("remote_lag_records", "gauge"),
    ("remote_lag_seconds", "gauge"),
    ("uploads_total", "counter"),
    ("upload_retries_total", "counter"),
    ("upload_errors_total", "counter"),
    ("nonfinite_steps_total", "counter"),
    ("nonfinite_stops_total", "counter"),
    ("recovered_sequence", "gauge"),
    ("start_time_seconds", "gauge"),
];

/// `epochwal tail --json` of every record.
fn tail_json(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(binary())
        .args(["tail", "--json", "-n", "100000"])
        .arg(dir)
        .output()
        .expect("run epochwal tail");
    assert!(out.status.success(), "tail failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("tail JSON line"))
        .collect()
}

/// `key=1.234` in a log line.
fn float_field(line: &str, key: &str) -> Option<f64> {
    let pat = format!(" {key}=");
    let rest = &line[line.find(&pat)? + pat.len()..];
    rest.split(' ').next()?.parse().ok()
}

#[test]
fn prometheus_scrapes_what_the_log_holds_and_sees_a_killed_daemon_down() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    // Checkpoints only on SIGUSR1, so the durable figures stand still
    // between requests while training goes on.
    let body = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        synthetic_config(&data, 0, "every_epochs = 0")
    );
    let config = write_config(tmp.path(), "run.toml", &body);
    let Some(prom) = Prometheus::start(&format!("127.0.0.1:{port}")) else {
        return;
    };
    let d = Daemon::spawn(&config, &[], &[]);
    d.wait_for("serving Prometheus metrics", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no metrics line:\n{}", d.lines().join("\n")));
    d.wait_for("training started", Duration::from_secs(60))
        .expect("training started");

    // The endpoint itself: the text format, every metric with its type.
    let (status, ctype, text) = http::get_with_type(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for (name, kind) in METRICS {
        assert!(
            text.contains(&format!("# TYPE epochwal_{name} {kind}\n")),
            "no {kind} epochwal_{name} in:\n{text}"
        );
    }
    assert_eq!(http::get(port, "/nothing").unwrap().0, 404);

    // Three checkpoints on request, each durable before the next.
    for i in 1..=3 {
        d.signal(libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while common::daemon::durable_seqs(&d.lines()).len() < i {
            assert!(
                Instant::now() < deadline,
                "checkpoint {i} not durable:\n{}",
                d.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let lines = d.lines();
    let durable: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .collect();
    let persist_sum: f64 = durable
        .iter()
        .map(|l| float_field(l, "persist_ms").expect("persist_ms") / 1e3)
        .sum();
    let rows = tail_json(&data);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let newest = rows.last().unwrap();
    let want_bytes: u64 = rows
        .iter()
        .map(|r| epochwal::wal::format::record_span(r["payload_bytes"].as_u64().unwrap()))
        .sum();

    // Prometheus catches up within a few scrapes.
    let want = [
        (
            "epochwal_last_durable_sequence",
            newest["sequence"].as_f64().unwrap(),
        ),
        (
            "epochwal_last_durable_epoch",
            newest["epoch"].as_f64().unwrap(),
        ),
        (
            "epochwal_last_durable_step",
            newest["step"].as_f64().unwrap(),
        ),
        ("epochwal_checkpoint_persist_seconds_count", 3.0),
        (
            "epochwal_checkpoint_persist_seconds_bucket{le=\"+Inf\"}",
            3.0,
        ),
        ("epochwal_checkpoints_total", 3.0),
        ("epochwal_checkpoint_written_bytes_total", want_bytes as f64),
        ("epochwal_retained_records", rows.len() as f64),
        ("up{job=\"epochwal\"}", 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Option<f64>> = want.iter().map(|(q, _)| prom.value(q)).collect();
        if want.iter().zip(&got).all(|((_, w), g)| *g == Some(*w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not show what the log holds after 60 s:\nwant {want:?}\ngot  {got:?}\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let sum = prom
        .value("epochwal_checkpoint_persist_seconds_sum")
        .unwrap();
    // The log lines round each persist time to a microsecond.
    assert!(
        (sum - persist_sum).abs() <= 3e-6 + 1e-9 * sum,
        "persist histogram sum {sum} s, log lines {persist_sum} s"
    );
    // The histogram's buckets answer a quantile query.
    let p50 = prom
        .value("histogram_quantile(0.5, epochwal_checkpoint_persist_seconds_bucket)")
        .expect("quantile");
    assert!(p50.is_finite() && p50 > 0.0, "median persist {p50}");
    // Training went on past the newest durable record.
    let epoch = prom.value("epochwal_epoch").unwrap();
    assert!(epoch >= newest["epoch"].as_f64().unwrap(), "epoch {epoch}");

    // Killed: the next scrapes fail and Prometheus says so.
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let up = prom.wait_value("up{job=\"epochwal\"}", Duration::from_secs(60), |v| {
        v == 0.0
    });
    assert_eq!(up, Some(0.0), "up never became 0:\n{}", prom.log());
}

#[test]
fn a_port_in_use_stops_the_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let body = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        synthetic_config(&data, 1, "every_epochs = 1")
    );
    let config = write_config(tmp.path(), "run.toml", &body);
    let (status, lines) = Daemon::spawn(&config, &[], &[]).wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(
        all.contains("metrics.listen") && all.contains(&port.to_string()),
        "{all}"
    );
    assert!(!data.exists(), "nothing may be created: {all}");
}
