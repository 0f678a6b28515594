//! `[tensorboard]` and `epochwal tensorboard`, read back with TensorBoard's
//! own event reader (`tests/python/tb_events.py`, the `tensorboard`
//! package's `EventFileLoader`): the points are the log's records (steps and
//! values from `epochwal tail --json`), a run killed with SIGKILL and
//! resumed continues the same curves with no point twice or backwards and
//! none missing, and the command writes the same curves from the headers.
//!
//! Skipped with a message when python3 cannot import tensorboard, unless
//! `CI` is set (then it fails).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{binary, field, synthetic_config, write_config, Daemon};

fn tensorboard_available() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import tensorboard.backend.event_processing.event_file_loader",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but python3 cannot import tensorboard (pip install tensorboard)");
        }
        eprintln!("skipping: python3 cannot import tensorboard (pip install tensorboard)");
    }
    ok
}

/// One point as TensorBoard reads it.
#[derive(Debug, Clone)]
struct Point {
    step: u64,
    values: BTreeMap<String, f64>,
}

/// Every summary event of `dir`, per file in the order TensorBoard reads
/// the files.
fn read_events(dir: &Path) -> Vec<(String, Vec<Point>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tb_events.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run tb_events.py");
    assert!(
        out.status.success(),
        "tb_events.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let events = f["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| Point {
                    step: e["step"].as_u64().unwrap(),
                    values: e["values"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                        .collect(),
                })
                .collect();
            (f["name"].as_str().unwrap().to_string(), events)
        })
        .collect()
}

/// All points of `dir` in reading order, checked to rise strictly.
fn curve(dir: &Path) -> Vec<Point> {
    let points: Vec<Point> = read_events(dir).into_iter().flat_map(|f| f.1).collect();
    for w in points.windows(2) {
        assert!(
            w[1].step > w[0].step,
            "point at step {} follows step {} (twice or backwards): {:?}",
            w[1].step,
            w[0].step,
            points.iter().map(|p| p.step).collect::<Vec<_>>()
        );
    }
    points
}

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

/// Checks that each record of the log has its point, with the header's
/// figures (stored as float32 in the event file).
fn assert_points_match_log(points: &[Point], rows: &[serde_json::Value]) {
    let by_step: BTreeMap<u64, &Point> = points.iter().map(|p| (p.step, p)).collect();
    // Compared as float32, the type the files hold (serde_json's parsing
    // of a decimal may be one double ulp off).
    let f32_of = |v: &serde_json::Value| v.as_f64().map(|x| x as f32);
    let tag = |p: &Point, t: &str| p.values.get(t).map(|x| *x as f32);
    for r in rows {
        let step = r["step"].as_u64().unwrap();
        let p = by_step
            .get(&step)
            .unwrap_or_else(|| panic!("no point at step {step} (record {})", r["sequence"]));
        assert_eq!(tag(p, "loss/train"), f32_of(&r["loss"]), "loss at {step}");
        assert_eq!(tag(p, "epoch"), f32_of(&r["epoch"]), "epoch at {step}");
        assert_eq!(
            tag(p, "loss/validation"),
            f32_of(&r["val_loss"]),
            "validation loss at {step}"
        );
    }
}

fn config_with_tb(tmp: &Path, data: &Path, tb: &Path, epochs: u64) -> std::path::PathBuf {
    let body = format!(
        "{}keep_records = 0\n\n[tensorboard]\ndir = \"{}\"\n",
        synthetic_config(data, epochs, "every_epochs = 1"),
        tb.display()
    );
    write_config(tmp, &format!("run-{epochs}.toml"), &body)
}

/// Steps of the `checkpoint durable` lines.
fn durable_steps(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .filter_map(|l| field(l, "step"))
        .collect()
}

#[test]
fn a_run_writes_its_records_as_points_and_the_command_writes_the_same_curves() {
    if !tensorboard_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, tb) = (tmp.path().join("data"), tmp.path().join("tb"));
    let config = config_with_tb(tmp.path(), &data, &tb, 6);
    let (status, lines) = Daemon::spawn(&config, &[], &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    let rows = tail_json(&data);
    assert_eq!(rows.len(), 6, "{rows:?}");
    let points = curve(&tb);
    assert_eq!(points.len(), rows.len());
    assert_points_match_log(&points, &rows);
    // Live figures are there too.
    for tag in ["checkpoint/persist_seconds", "checkpoint/pause_seconds"] {
        assert!(
            points.iter().all(|p| p.values[tag] >= 0.0),
            "{tag}: {points:?}"
        );
    }
    assert!(points
        .iter()
        .all(|p| p.values.contains_key("loss/validation")));

    // The same curves from the headers alone.
    let out_dir = tmp.path().join("from-log");
    let out = Command::new(binary())
        .args(["tensorboard"])
        .arg(&data)
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let again = curve(&out_dir);
    assert_eq!(again.len(), points.len());
    for (a, b) in again.iter().zip(&points) {
        assert_eq!(a.step, b.step);
        for tag in ["loss/train", "loss/validation", "epoch"] {
            assert_eq!(a.values.get(tag), b.values.get(tag), "{tag} at {}", a.step);
        }
    }
    // Run again, it adds nothing (no point twice).
    let out = Command::new(binary())
        .args(["tensorboard"])
        .arg(&data)
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(curve(&out_dir).len(), points.len());
    // The log directory is no place for the output.
    let out = Command::new(binary())
        .args(["tensorboard"])
        .arg(&data)
        .arg("-o")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_killed_run_resumes_the_same_curves_without_a_point_twice_or_lost() {
    if !tensorboard_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, tb) = (tmp.path().join("data"), tmp.path().join("tb"));
    let mut all_durable = Vec::new();
    // Killed twice at moments that vary with the machine's speed, while
    // points are being written.
    for round in 0..2 {
        let config = config_with_tb(tmp.path(), &data, &tb, 0);
        let d = Daemon::spawn(&config, &[], &[]);
        let before = all_durable.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while durable_steps(&d.lines()).len() < 3 + 2 * round {
            assert!(Instant::now() < deadline, "{}", d.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(5));
        }
        d.signal(libc::SIGKILL);
        let (_, lines) = d.wait(Duration::from_secs(60));
        all_durable.extend(durable_steps(&lines));
        assert!(all_durable.len() > before);
    }
    // Then to the end.
    let config = config_with_tb(tmp.path(), &data, &tb, 40);
    let (status, lines) = Daemon::spawn(&config, &[], &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    all_durable.extend(durable_steps(&lines));

    let points = curve(&tb);
    let rows = tail_json(&data);
    assert_points_match_log(&points, &rows);
    // Every record of the three runs (keep_records = 0 keeps them all) has
    // exactly one point: a killed run may have made records durable whose
    // points it never wrote; the next start wrote them from the log.
    let want: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    let got: Vec<u64> = points.iter().map(|p| p.step).collect();
    assert_eq!(got, want, "points vs records");
    for s in &all_durable {
        assert!(want.contains(s), "durable step {s} not in the log");
    }
    assert_eq!(rows.last().unwrap()["epoch"], 40);
    // One file per start.
    assert_eq!(read_events(&tb).len(), 3);
}
