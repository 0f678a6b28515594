//! What a person watching `epochwal run` sees, and what the log keeps: the
//! rate-limited epoch line, the checkpoint rate of the shipped
//! configuration, validation figures in the records, and `keep_best`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::*;

const LONG: Duration = Duration::from_secs(180);

/// `config/epochwal.toml` as shipped, with its log in `data`, `epochs`
/// epochs, and the `[checkpoint]` lines of `extra_checkpoint` appended.
fn shipped_config(data: &Path, epochs: u64, extra_checkpoint: &str) -> String {
    let body =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/epochwal.toml"))
            .unwrap();
    assert!(body.contains("data_dir = \"epochwal-data\""));
    assert!(body.contains("epochs = 500"));
    let mut body = body
        .replace(
            "data_dir = \"epochwal-data\"",
            &format!("data_dir = \"{}\"", data.display()),
        )
        .replace("epochs = 500", &format!("epochs = {epochs}"));
    // Later keys of a TOML table would be duplicates: replace them in place.
    for line in extra_checkpoint.lines() {
        let key = line.split('=').next().unwrap().trim();
        let start = body
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("config/epochwal.toml has no {key}"));
        let end = body[start + 1..].find('\n').unwrap() + start + 1;
        body.replace_range(start + 1..end, line);
    }
    body
}

fn epoch_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains(" INFO ") && l.contains("epoch ") && l.contains("/epoch"))
        .collect()
}

fn run(bin_args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary()).args(bin_args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_fast_run_of_the_shipped_config_writes_about_one_line_and_ten_checkpoints_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let epochs = 4000;
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &shipped_config(&data, epochs, "keep_records = 0"),
    );
    let started = Instant::now();
    let (status, lines) = Daemon::spawn(&cfg, &[], &[("RUST_LOG", "info")]).wait(LONG);
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "{}", lines.join("\n"));
    let shown = epoch_lines(&lines);
    eprintln!(
        "{epochs} epochs in {seconds:.2} s, {} epoch lines, {} lines in all",
        shown.len(),
        lines.len()
    );
    // The first and the last epoch are always shown, the others at most
    // once a second.
    assert!(
        shown.len() as f64 <= seconds + 2.0,
        "{} epoch lines in {seconds:.2} s:\n{}",
        shown.len(),
        lines.join("\n")
    );
    assert!(shown[0].contains("epoch 1/4000"), "{}", shown[0]);
    // The first checkpoint of a run is never held back by
    // min_seconds_between: nothing is durable yet.
    assert!(shown[0].contains("checkpoint seq 1 "), "{}", shown[0]);
    let last = shown.last().unwrap();
    assert!(last.contains("epoch 4000/4000"), "{last}");
    assert!(
        last.contains("loss ") && last.contains("val_loss "),
        "{last}"
    );
    if shown.len() > 2 {
        assert!(
            shown[1].contains("epochs since the last line"),
            "skipped epochs are summed up: {}",
            shown[1]
        );
    }
    // Routine checkpoints are not logged one by one at INFO (the final one,
    // on shutdown, is).
    let durable: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .collect();
    assert!(
        durable.len() <= 1 && durable.iter().all(|l| l.contains("reason=\"shutdown\"")),
        "{}",
        lines.join("\n")
    );
    // min_seconds_between = 0.1: at most ~10 checkpoints a second (plus the
    // first and the final one).
    let scan = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap();
    let records = scan.segments.iter().map(|s| s.records.len()).sum::<usize>();
    eprintln!("{records} checkpoints");
    assert!(
        records as f64 <= 10.0 * seconds + 2.0,
        "{records} checkpoints in {seconds:.2} s"
    );
    // Every record written at an epoch end carries the validation loss of
    // its weights.
    for h in scan.segments.iter().flat_map(|s| s.records.iter()) {
        let v = h.validation.expect("validation figures");
        assert!(v.loss.is_finite() && v.accuracy.is_none(), "{h:?}");
    }
}

#[test]
fn the_best_k_records_survive_retention_after_200_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &shipped_config(
            &data,
            200,
            "min_seconds_between = 0\nsegment_bytes = 65536\nkeep_records = 3\nkeep_best = 3",
        ),
    );
    // A high learning rate makes the validation loss go up and down, so the
    // best records are not simply the newest.
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 0.001", "lr = 0.05");
    std::fs::write(&cfg, body).unwrap();
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    // Every checkpoint of the run, with its validation loss, from the log.
    let mut written: Vec<(f64, u64)> = lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .map(|l| {
            let seq = field(l, "seq").unwrap();
            let pat = " val_loss=";
            let at = l.find(pat).expect("val_loss field") + pat.len();
            let v: f64 = l[at..].split(' ').next().unwrap().parse().unwrap();
            (v, seq)
        })
        .collect();
    assert_eq!(written.len(), 200, "one checkpoint per epoch");
    written.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let best: Vec<u64> = written[..3].iter().map(|w| w.1).collect();
    let scan = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap();
    let present: Vec<u64> = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.sequence))
        .collect();
    for seq in &best {
        assert!(
            present.contains(seq),
            "best record {seq} was deleted; present: {present:?}"
        );
    }
    for seq in 198..=200 {
        assert!(
            present.contains(&seq),
            "newest record {seq} missing: {present:?}"
        );
    }
    assert!(
        present.len() < 40,
        "retention ran: {} records left",
        present.len()
    );
    assert!(
        best.iter().any(|&s| s < 150),
        "the best are not all recent: {best:?}"
    );

    // The tools agree on which record is best.
    let dir = data.to_str().unwrap();
    let (ok, out, err) = run(&["inspect", dir, "--best", "--json"]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["sequence"].as_u64(), Some(best[0]));
    assert!(doc["val_loss"].as_f64().is_some());
    let (ok, out, err) = run(&["tail", dir, "-n", "1000", "--json"]);
    assert!(ok, "{err}");
    let marked: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["best"] == serde_json::Value::Bool(true))
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(marked, vec![best[0]]);
    let (ok, out, _) = run(&["tail", dir, "-n", "1000"]);
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("seq={} ", best[0])))
        .unwrap();
    assert!(
        line.ends_with(" best") && line.contains(" val_loss="),
        "{line}"
    );
    let file = tmp.path().join("best.safetensors");
    let (ok, _, err) = run(&["export", dir, "--best", "-o", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["sequence"], best[0].to_string());
    assert!(!meta["val_loss"].is_empty());
}

#[test]
fn best_without_validation_figures_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &format!(
            "validation_fraction = 0.0\n{}",
            synthetic_config(&data, 2, "every_epochs = 1")
        ),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let (ok, _, err) = run(&["inspect", data.to_str().unwrap(), "--best"]);
    assert!(!ok);
    assert!(err.contains("no record has a validation loss"), "{err}");
}
