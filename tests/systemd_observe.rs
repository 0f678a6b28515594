//! Observing the shipped unit under a real systemd (the container of
//! tests/common/systemd.rs): with the metrics drop-in installed, checkpoint
//! entries carry journal fields (`journalctl -u epochwal EPOCHWAL_SEQ=2`
//! finds checkpoint 2, with the epoch, step, loss and persist time of the
//! record in the log), the other lines keep their text, and the sandboxed
//! daemon serves `/metrics` on loopback.
//!
//! Without root it is skipped with a notice; with `CI` set it fails instead
//! when the container cannot boot.

mod common;

use std::path::Path;
use std::time::Duration;

use common::systemd::session;

const UNIT: &str = "epochwal.service";
const STATE: &str = "/var/lib/epochwal";
const LONG: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"data_dir = "unused: the unit passes --data-dir"
epochs = 0
seed = 1
batch_size = 32
[dataset]
kind = "synthetic"
n = 1024
input_dim = 16
output_dim = 4
[model]
hidden = [64]
[checkpoint]
every_epochs = 0
every_seconds = 1
segment_bytes = 1048576
keep_records = 0
[metrics]
listen = "127.0.0.1:9464"
"#;

#[test]
fn checkpoints_carry_journal_fields_and_metrics_are_served_from_the_sandbox() {
    let Some(mut s) =
        session("checkpoints_carry_journal_fields_and_metrics_are_served_from_the_sandbox")
    else {
        return;
    };
    s.sh(&format!(
        "systemctl stop {UNIT}; systemctl reset-failed {UNIT}"
    ));
    s.ok(&format!(
        "rm -rf /var/lib/private/epochwal {STATE} /etc/systemd/system/epochwal.service.d"
    ));
    s.install_binary();
    let systemd = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    s.copy(
        &systemd.join("epochwal.service"),
        "/etc/systemd/system/epochwal.service",
    );
    s.copy(
        &systemd.join("epochwal.service.d/metrics.conf"),
        "/etc/systemd/system/epochwal.service.d/metrics.conf",
    );
    s.write("/etc/epochwal/epochwal.toml", CONFIG);
    s.ok("systemctl daemon-reload");
    let cursor = s.cursor();
    s.ok(&format!("systemctl start {UNIT}"));

    // Checkpoint 2 by its journal field.
    let invocation = s.prop(UNIT, "InvocationID");
    let entry: serde_json::Value = s.wait_for("a journal entry with EPOCHWAL_SEQ=2", LONG, |s| {
        // This start's entries only (the journal keeps earlier runs').
        let out = s.ok(&format!(
            "journalctl -u {UNIT} EPOCHWAL_SEQ=2 _SYSTEMD_INVOCATION_ID={invocation} -o json --no-pager -q"
        ));
        out.lines().next().and_then(|l| serde_json::from_str(l).ok())
    });
    let get = |k: &str| -> String {
        entry[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {entry}"))
            .to_string()
    };
    assert!(
        get("MESSAGE").starts_with("checkpoint durable seq=2 "),
        "{entry}"
    );
    assert_eq!(get("SYSLOG_IDENTIFIER"), "epochwal");
    assert_eq!(get("PRIORITY"), "6", "INFO");
    let persist: f64 = get("EPOCHWAL_PERSIST_SECONDS").parse().unwrap();
    assert!(persist > 0.0 && persist < 60.0, "{entry}");
    let loss: f64 = get("EPOCHWAL_LOSS").parse().unwrap();
    // The same record in the log.
    let rows: Vec<serde_json::Value> = s
        .ok(&format!("epochwal tail --json -n 1000 {STATE}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rec = rows
        .iter()
        .find(|r| r["sequence"] == 2)
        .unwrap_or_else(|| panic!("no record 2 in {rows:?}"));
    assert_eq!(get("EPOCHWAL_EPOCH"), rec["epoch"].to_string(), "{entry}");
    assert_eq!(get("EPOCHWAL_STEP"), rec["step"].to_string(), "{entry}");
    assert_eq!(loss as f32, rec["loss"].as_f64().unwrap() as f32, "{entry}");

    // Lines without fields keep their text.
    s.wait_journal(UNIT, &cursor, &["training started", "epoch="], LONG);

    // /metrics from inside the sandbox, over loopback.
    let body = s.wait_for("/metrics on 127.0.0.1:9464", LONG, |s| {
        let out = s.sh("exec 3<>/dev/tcp/127.0.0.1/9464 && \
             printf 'GET /metrics HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && cat <&3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("epochwal_last_durable_sequence")
            .then_some(text)
    });
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    let durable: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("epochwal_last_durable_sequence "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(durable >= 2, "{body}");
    s.ok(&format!("systemctl stop {UNIT}"));
    s.ok("rm -rf /etc/systemd/system/epochwal.service.d && systemctl daemon-reload");
}
