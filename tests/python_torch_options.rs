//! The `Checkpointer`'s options, each from a real `python3` with real torch
//! (`tests/python/torch_tools.py options CASE`), checked on the log with
//! the real `epochwal tail`: `keep_records` removes old records,
//! `keep_best` keeps the records of the lowest `val_loss`,
//! `min_seconds_between` makes `save` return None and write nothing, and
//! the LOCK refuses a second process (another Checkpointer, `epochwal run`).
//! `replicate=` is in tests/python_torch_tools.rs.
//!
//! Needs python3 with torch and the package installed (`.ci/run`); see
//! tests/common/torch.rs for the skip rule.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::s3::epochwal_env;
use common::torch::{available, command, run_ok, Said};

/// `save`'s return values in a case.
fn options(case: &str, dir: &Path) -> Vec<Option<u64>> {
    let o = run_ok("torch_tools.py", &["options", case, dir.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    serde_json::from_value(v["returned"].clone()).unwrap()
}

/// (sequence, epoch, val_loss) of every record `epochwal tail` lists.
fn records(dir: &Path) -> Vec<(u64, u64, Option<f64>)> {
    let (code, out, err) = epochwal_env(
        &[],
        &["tail", dir.to_str().unwrap(), "--json", "-n", "1000"],
    );
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["intact"], true, "{v}");
            (
                v["sequence"].as_u64().unwrap(),
                v["epoch"].as_u64().unwrap(),
                v["val_loss"].as_f64(),
            )
        })
        .collect()
}

/// The sequences in each segment file, in segment order (an empty one is
/// the segment the writer rotated to ahead of the next record).
fn segments(dir: &Path) -> Vec<Vec<u64>> {
    let scan = epochwal::wal::LogReader::open(dir).unwrap().scan().unwrap();
    scan.segments
        .iter()
        .map(|s| s.records.iter().map(|r| r.sequence).collect())
        .collect()
}

#[test]
fn keep_records_removes_old_records() {
    if !available("keep_records_removes_old_records") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let returned = options("keep_records", &dir);
    assert_eq!(returned, (1..=6).map(Some).collect::<Vec<_>>());
    let kept: Vec<u64> = records(&dir).iter().map(|r| r.0).collect();
    assert_eq!(kept, [5, 6], "keep_records=2 after 6 saves");
    // One segment per record: the segments of records 1-4 are deleted.
    let mut segs = segments(&dir);
    segs.retain(|s| !s.is_empty());
    assert_eq!(segs, [vec![5], vec![6]]);
}

#[test]
fn keep_best_keeps_the_records_of_the_lowest_validation_loss() {
    if !available("keep_best_keeps_the_records_of_the_lowest_validation_loss") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let returned = options("keep_best", &dir);
    assert_eq!(returned, (1..=7).map(Some).collect::<Vec<_>>());
    // val_loss 0.75, 0.25, 0.5, 0.125, 0.625, 0.375, 0.875; keep_records=1,
    // keep_best=2: records 4 (0.125) and 2 (0.25), and the newest (7).
    let kept = records(&dir);
    assert_eq!(
        kept,
        [(2, 2, Some(0.25)), (4, 4, Some(0.125)), (7, 7, Some(0.875))],
        "{kept:?}"
    );
}

#[test]
fn min_seconds_between_skips_saves_and_writes_nothing() {
    if !available("min_seconds_between_skips_saves_and_writes_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    // min_seconds_between=3600: the first save is written, the next two
    // return None, force=True writes.
    let returned = options("min_seconds_between", &dir);
    assert_eq!(returned, [Some(1), None, None, Some(2)]);
    let kept: Vec<(u64, u64)> = records(&dir).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(kept, [(1, 1), (2, 4)], "only epochs 1 and 4 are in the log");
}

#[test]
fn a_second_process_is_refused_by_the_lock() {
    if !available("a_second_process_is_refused_by_the_lock") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let d = dir.to_str().unwrap();
    let mut holder = command("torch_tools.py")
        .args(["hold", d])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Said::of(holder.stdout.take().unwrap()).next("holding PID");
    let pid = said
        .strip_prefix("holding ")
        .unwrap_or_else(|| panic!("holder said {said:?}"))
        .trim()
        .to_string();
    assert_eq!(pid, holder.id().to_string());

    let o = run_ok("torch_tools.py", &["second", d]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let refused = v["refused"]
        .as_str()
        .unwrap_or_else(|| panic!("not refused: {v}"));
    assert!(
        refused.contains(d) && refused.contains(&pid) && refused.contains("lock"),
        "{refused}"
    );

    // The daemon follows the same LOCK rules.
    let cfg = common::daemon::write_config(
        tmp.path(),
        "run.toml",
        &common::daemon::synthetic_config(&dir, 1, "every_epochs = 1"),
    );
    let daemon = common::daemon::Daemon::spawn(&cfg, &[], &[]);
    let (status, lines) = daemon.wait(Duration::from_secs(60));
    let text = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains(&pid) && text.contains(d), "{text}");
    assert!(!text.contains("training started"), "{text}");

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    // Released: a new Checkpointer opens it.
    let o = run_ok("torch_tools.py", &["second", d]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["refused"].is_null(), "{v}");
}
