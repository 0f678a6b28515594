//! `systemd/epochwal.service` under a real systemd (PID 1 of a booted
//! systemd-nspawn container, see tests/common/systemd.rs), installed as the
//! README says: start → READY → STATUS, SIGKILL → automatic restart, stop →
//! final checkpoint, reload with a bad and with a good file, the watchdog on
//! a stopped process, and the start limit.
//!
//! The tests share one container and run one at a time; each begins from a
//! stopped unit with an empty state directory and a reset start counter.
//! Without root they are skipped with a notice; with `CI` set they fail
//! instead when the container cannot boot.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::field;
use common::systemd::{session, Systemd};

const UNIT: &str = "epochwal.service";
const CONFIG: &str = "/etc/epochwal/epochwal.toml";
const STATE: &str = "/var/lib/epochwal";
const DROP_IN: &str = "/etc/systemd/system/epochwal.service.d/test.conf";
const LONG: Duration = Duration::from_secs(60);

/// A small model that trains fast and checkpoints every second.
fn config(every_seconds: u64, batch_size: u64) -> String {
    format!(
        r#"data_dir = "unused: the unit passes --data-dir"
epochs = 0
seed = 1
batch_size = {batch_size}
[dataset]
kind = "synthetic"
n = 1024
input_dim = 16
output_dim = 4
[model]
hidden = [64]
[checkpoint]
every_epochs = 0
every_seconds = {every_seconds}
segment_bytes = 1048576
keep_records = 5
"#
    )
}

/// Stops the unit, forgets its failures and start count, empties its state,
/// installs the binary, the shipped unit, `drop_in` (if any) and `config`.
fn fresh(s: &mut Systemd, drop_in: Option<&str>, config: &str) {
    s.sh(&format!(
        "systemctl stop {UNIT}; systemctl reset-failed {UNIT}"
    ));
    s.ok(&format!(
        "rm -rf /var/lib/private/epochwal {STATE} /etc/systemd/system/epochwal.service.d"
    ));
    s.install_binary();
    s.copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/epochwal.service"),
        "/etc/systemd/system/epochwal.service",
    );
    if let Some(body) = drop_in {
        s.write(DROP_IN, body);
    }
    s.write(CONFIG, config);
    s.ok(&format!(
        "systemctl daemon-reload && systemctl reset-failed {UNIT} 2>/dev/null; true"
    ));
}

/// Waits until STATUS names a durable sequence; returns it.
fn durable_seq_in_status(s: &Systemd) -> u64 {
    s.wait_for("STATUS with a durable sequence", LONG, |s| {
        let status = s.prop(UNIT, "StatusText");
        status
            .split("last durable seq ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
    })
}

/// Sequences of the records in the log, newest last (read by `epochwal
/// tail` inside the container, next to the running daemon).
fn log_seqs(s: &Systemd) -> Vec<u64> {
    s.ok(&format!("epochwal tail -n 100 {STATE}"))
        .lines()
        .filter_map(|l| l.strip_prefix("seq="))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

fn main_pid(s: &Systemd) -> u64 {
    s.prop(UNIT, "MainPID").parse().unwrap()
}

#[test]
fn start_sends_ready_then_a_status_naming_a_durable_sequence() {
    let Some(mut s) = session("start_sends_ready_then_a_status_naming_a_durable_sequence") else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    let cursor = s.cursor();
    // Type=notify: `systemctl start` returns once READY=1 arrived.
    s.ok(&format!("systemctl start {UNIT}"));
    assert_eq!(s.prop(UNIT, "ActiveState"), "active");
    s.wait_journal(UNIT, &cursor, &["no checkpoint found: fresh run"], LONG);
    let seq = durable_seq_in_status(&s);
    assert!(seq >= 1);
    assert!(
        log_seqs(&s).contains(&seq),
        "STATUS names seq {seq}, which must be in the log"
    );
    // Files are private to the service.
    assert_eq!(s.ok("stat -c %a /var/lib/private/epochwal").trim(), "700");
    assert_eq!(
        s.ok(&format!("stat -c %a {STATE}/RUNNING.toml")).trim(),
        "600"
    );
    s.ok(&format!("systemctl stop {UNIT}"));
    // Started again, it resumes from the log.
    let cursor = s.cursor();
    s.ok(&format!("systemctl start {UNIT}"));
    let recovered = s.wait_journal(UNIT, &cursor, &["recovered", "seq="], LONG);
    assert!(field(&recovered, "seq").unwrap() >= seq, "{recovered}");
    s.ok(&format!("systemctl stop {UNIT}"));
}

#[test]
fn sigkill_is_followed_by_a_restart_that_recovers_the_last_durable_sequence() {
    let Some(mut s) =
        session("sigkill_is_followed_by_a_restart_that_recovers_the_last_durable_sequence")
    else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    let cursor = s.cursor();
    s.ok(&format!("systemctl start {UNIT}"));
    let status_seq = durable_seq_in_status(&s);
    let pid = main_pid(&s);
    s.ok(&format!("kill -KILL {pid}"));
    // RestartSec=5s, then READY again from a new process.
    let new_pid = s.wait_for("the automatic restart", LONG, |s| {
        let p = main_pid(s);
        (s.prop(UNIT, "NRestarts") == "1"
            && s.prop(UNIT, "ActiveState") == "active"
            && p != 0
            && p != pid)
            .then_some(p)
    });
    assert_ne!(new_pid, pid);
    let recovered = s.wait_journal(UNIT, &cursor, &["recovered", "seq="], LONG);
    let lines = s.journal(UNIT, &cursor);
    // The killed process may have made more records durable after the STATUS
    // we read: the restart resumes from the newest one it logged.
    let split = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("model built"))
        .map(|(i, _)| i)
        .nth(1)
        .unwrap_or_else(|| panic!("two starts in the journal: {lines:?}"));
    // Routine checkpoint lines are DEBUG; the STATUS read before the kill
    // names a durable sequence, and any INFO checkpoint line a later one.
    let last_durable = lines[..split]
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .filter_map(|l| field(l, "seq"))
        .max()
        .unwrap_or(0)
        .max(status_seq);
    assert!(last_durable >= 1, "{lines:?}");
    let seq = field(&recovered, "seq").unwrap();
    assert!(
        seq >= last_durable,
        "recovered {seq}, but {last_durable} was durable: {lines:?}"
    );
    s.ok(&format!("systemctl stop {UNIT}"));
}

#[test]
fn stop_writes_a_final_checkpoint_and_ends_with_result_success() {
    let Some(mut s) = session("stop_writes_a_final_checkpoint_and_ends_with_result_success") else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    s.ok(&format!("systemctl start {UNIT}"));
    durable_seq_in_status(&s);
    let cursor = s.cursor();
    s.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(s.prop(UNIT, "ActiveState"), "inactive");
    assert_eq!(s.prop(UNIT, "Result"), "success");
    let exit = s.wait_journal(UNIT, &cursor, &["exiting cleanly"], LONG);
    let last = field(&exit, "last_durable_seq").unwrap();
    let lines = s.journal(UNIT, &cursor);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("checkpoint durable") && l.contains("reason=\"shutdown\"")),
        "a final checkpoint was written: {lines:?}"
    );
    assert_eq!(
        log_seqs(&s).last(),
        Some(&last),
        "the final record is the newest"
    );
    s.ok(&format!("epochwal verify {STATE}"));
}

#[test]
fn reload_with_a_bad_file_fails_and_the_daemon_keeps_its_settings() {
    let Some(mut s) = session("reload_with_a_bad_file_fails_and_the_daemon_keeps_its_settings")
    else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    s.ok(&format!("systemctl start {UNIT}"));
    durable_seq_in_status(&s);
    let pid = main_pid(&s);
    let running_before = s.ok(&format!("cat {STATE}/RUNNING.toml"));
    s.write(
        CONFIG,
        &config(1, 32).replace("every_seconds = 1", "every_secondz = 3"),
    );
    let cursor = s.cursor();
    let out = s.sh(&format!("systemctl reload {UNIT}"));
    assert!(!out.status.success(), "a bad file must fail the reload");
    let why = s.wait_journal(UNIT, &cursor, &["every_secondz"], LONG);
    assert!(why.contains(CONFIG), "the error names the file: {why}");
    // Not signalled: same process, no SIGHUP handled, settings unchanged.
    assert_eq!(s.prop(UNIT, "ActiveState"), "active");
    assert_eq!(main_pid(&s), pid);
    let lines = s.journal(UNIT, &cursor);
    assert!(!lines.iter().any(|l| l.contains("SIGHUP")), "{lines:?}");
    assert_eq!(s.ok(&format!("cat {STATE}/RUNNING.toml")), running_before);
    // And it goes on checkpointing.
    let before = durable_seq_in_status(&s);
    s.wait_for("another checkpoint", LONG, |s| {
        (durable_seq_in_status(s) > before).then_some(())
    });
    s.ok(&format!("systemctl stop {UNIT}"));
}

#[test]
fn reload_with_a_good_file_applies_checkpoint_and_warns_about_restart_only_keys() {
    let Some(mut s) =
        session("reload_with_a_good_file_applies_checkpoint_and_warns_about_restart_only_keys")
    else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    s.ok(&format!("systemctl start {UNIT}"));
    durable_seq_in_status(&s);
    let pid = main_pid(&s);
    s.write(CONFIG, &config(2, 64));
    let cursor = s.cursor();
    s.ok(&format!("systemctl reload {UNIT}"));
    // check-config (ExecReload=) warns first, then the daemon applies
    // [checkpoint] and warns about the rest itself.
    let check = s.wait_journal(
        UNIT,
        &cursor,
        &["WARN", "batch_size 32 -> 64", CONFIG],
        LONG,
    );
    assert!(check.contains("restart"), "{check}");
    let applied = s.wait_journal(UNIT, &cursor, &["SIGHUP: reloaded"], LONG);
    assert!(
        applied.contains("checkpoint.every_seconds 1 -> 2"),
        "{applied}"
    );
    let warned = s.wait_journal(
        UNIT,
        &cursor,
        &["SIGHUP", "WARN", "batch_size 32 -> 64"],
        LONG,
    );
    assert!(warned.contains("restart"), "{warned}");
    assert_eq!(main_pid(&s), pid);
    let running = s.ok(&format!("cat {STATE}/RUNNING.toml"));
    assert!(running.contains("every_seconds = 2"), "{running}");
    assert!(running.contains("batch_size = 32"), "{running}");
    // A second check names the key still waiting for a restart.
    let again = s.sh(&format!(
        "epochwal check-config --running --data-dir {STATE} {CONFIG}"
    ));
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("batch_size 32 -> 64"), "{stderr}");
    assert!(!stderr.contains("every_seconds"), "{stderr}");
    s.ok(&format!("systemctl stop {UNIT}"));
}

#[test]
fn a_stopped_daemon_is_restarted_by_the_watchdog_and_resumes() {
    let Some(mut s) = session("a_stopped_daemon_is_restarted_by_the_watchdog_and_resumes") else {
        return;
    };
    // The shipped 60 s watchdog and 5 s restart delay, shortened so the test
    // waits seconds.
    fresh(
        &mut s,
        Some("[Service]\nWatchdogSec=2s\nRestartSec=1s\n"),
        &config(1, 32),
    );
    s.ok(&format!("systemctl start {UNIT}"));
    durable_seq_in_status(&s);
    let pid = main_pid(&s);
    let cursor = s.cursor();
    s.ok(&format!("kill -STOP {pid}"));
    s.wait_journal(UNIT, &cursor, &["Watchdog timeout"], LONG);
    s.wait_for("the restart after the watchdog", LONG, |s| {
        let p = main_pid(s);
        (s.prop(UNIT, "NRestarts") == "1"
            && s.prop(UNIT, "ActiveState") == "active"
            && p != 0
            && p != pid)
            .then_some(())
    });
    s.wait_journal(UNIT, &cursor, &["recovered", "seq="], LONG);
    s.ok(&format!("systemctl stop {UNIT}"));
}

#[test]
fn seven_starts_in_a_row_are_not_refused() {
    let Some(mut s) = session("seven_starts_in_a_row_are_not_refused") else {
        return;
    };
    fresh(&mut s, None, &config(1, 32));
    for i in 1..=7 {
        let out = s.sh(&format!("systemctl restart {UNIT}"));
        assert!(
            out.status.success(),
            "start {i} was refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(s.prop(UNIT, "ActiveState"), "active", "start {i}");
    }
    s.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(s.prop(UNIT, "Result"), "success");
}

#[test]
fn a_crash_loop_stops_at_the_start_limit() {
    let Some(mut s) = session("a_crash_loop_stops_at_the_start_limit") else {
        return;
    };
    // A file the daemon refuses makes every start fail at once. The shipped
    // RestartSec=5s is shortened so that the limit is reached in seconds; the
    // limit itself is the shipped one.
    fresh(
        &mut s,
        Some("[Service]\nRestartSec=100ms\n"),
        &config(1, 32).replace("batch_size = 32", "batch_size = 0"),
    );
    let burst: u64 = s.prop(UNIT, "StartLimitBurst").parse().unwrap();
    assert!(
        burst > 7,
        "the limit leaves room for an operator's restarts"
    );
    let cursor = s.cursor();
    let out = s.sh(&format!("systemctl start {UNIT}"));
    assert!(!out.status.success());
    // Between attempts the unit is "activating" (auto-restart); it is
    // "failed" once systemd gives up.
    s.wait_for("the start limit", LONG, |s| {
        (s.prop(UNIT, "ActiveState") == "failed").then_some(())
    });
    s.wait_journal(UNIT, &cursor, &["Start request repeated too quickly"], LONG);
    // The first start and `burst - 1` restarts ran; restart number `burst`
    // was scheduled and refused.
    let restarts: u64 = s.prop(UNIT, "NRestarts").parse().unwrap();
    assert_eq!(restarts, burst, "every start up to the limit was tried");
    let failures = s
        .journal(UNIT, &cursor)
        .iter()
        .filter(|l| l.contains("`batch_size` must be at least 1"))
        .count() as u64;
    assert_eq!(failures, burst, "each start failed on the file");
    // After reset-failed and a good file, it starts again.
    s.write(CONFIG, &config(1, 32));
    s.ok(&format!(
        "systemctl reset-failed {UNIT} && systemctl start {UNIT}"
    ));
    assert_eq!(s.prop(UNIT, "ActiveState"), "active");
    s.ok(&format!("systemctl stop {UNIT}"));
}
