//! `epochwal inspect`: the real binary against real log directories.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use epochwal::state::{AdamParamState, Tensor, TrainState};
use epochwal::wal::{Log, LogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");

/// A state with small, known tensors: a Linear(3, 2) as `layers.0`.
fn known_state(epoch: u64) -> TrainState {
    let mut s = common::sample_state(64, epoch);
    let e = epoch as f32;
    s.model.description = "mlp 3-2 relu mse".into();
    s.model.fingerprint = 0x0123_4567_89ab_cdef;
    s.model.tensors = vec![
        Tensor {
            name: "layers.0.weight".into(),
            shape: vec![2, 3],
            data: vec![1.0, -2.0, 3.0, 4.0, 5.0, -6.0 - e],
        },
        Tensor {
            name: "layers.0.bias".into(),
            shape: vec![2],
            data: vec![0.5, 1.5],
        },
    ];
    s.optimizer.params = s
        .model
        .tensors
        .iter()
        .map(|t| AdamParamState {
            name: t.name.clone(),
            step: epoch * 10,
            exp_avg: t.data.iter().map(|x| x * 0.1).collect(),
            exp_avg_sq: t.data.iter().map(|x| x * x).collect(),
        })
        .collect();
    s
}

fn write_log(dir: &Path, epochs: &[u64]) {
    let (mut log, _) = Log::open(dir, LogOptions::default()).unwrap();
    for &e in epochs {
        log.append(&known_state(e)).unwrap();
    }
}

fn inspect(dir: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("inspect")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn inspect_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = inspect(dir, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_shows_header_model_optimizer_and_tensor_stats() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &[1, 2, 3]);
    let v = inspect_json(dir.path(), &[]);
    assert_eq!(v["sequence"], 3);
    assert_eq!(v["epoch"], 3);
    assert_eq!(v["step"], 30);
    assert_eq!(v["global_step"], 30);
    assert_eq!(v["step_in_epoch"], 0);
    assert_eq!(v["loss"].as_f64(), Some(f64::from(1.0f32 / 4.0)));
    assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(v["segment"], "00000000000000000001.wal");
    assert_eq!(v["offset"].as_u64().unwrap() % 4096, 0);
    assert!(v["payload_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["payload_checksum"].as_str().unwrap().len(), 16);
    assert_eq!(v["model"]["description"], "mlp 3-2 relu mse");
    assert_eq!(v["model"]["fingerprint"], "0123456789abcdef");
    assert_eq!(v["optimizer"]["lr"], 1e-3);
    assert_eq!(v["optimizer"]["betas"], serde_json::json!([0.9, 0.999]));
    assert_eq!(v["optimizer"]["eps"], 1e-8);
    assert_eq!(v["optimizer"]["weight_decay"], 0.0);

    let t = &v["tensors"][0];
    assert_eq!(t["name"], "layers.0.weight");
    assert_eq!(t["shape"], serde_json::json!([2, 3]));
    assert_eq!(t["dtype"], "F32");
    assert_eq!(t["bytes"], 24);
    assert_eq!(t["min"], -9.0);
    assert_eq!(t["max"], 5.0);
    // (1 - 2 + 3 + 4 + 5 - 9) / 6 = 1/3
    assert!((t["mean"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let l2 = (1.0f64 + 4.0 + 9.0 + 16.0 + 25.0 + 81.0).sqrt();
    assert!((t["l2_norm"].as_f64().unwrap() - l2).abs() < 1e-12);
    let b = &v["tensors"][1];
    assert_eq!(b["name"], "layers.0.bias");
    assert_eq!(
        (b["min"].as_f64(), b["max"].as_f64()),
        (Some(0.5), Some(1.5))
    );
    assert_eq!(b["mean"], 1.0);

    let o = &v["optimizer_state"][0];
    assert_eq!(o["name"], "layers.0.weight");
    assert_eq!(o["step"], 30);
    assert_eq!(o["exp_avg_sq"]["max"], 81.0);
    assert_eq!(o["exp_avg_sq"]["min"], 1.0);
}

#[test]
fn text_output_has_the_table() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &[1]);
    let out = inspect(dir.path(), &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    for want in [
        "sequence 1",
        "mlp 3-2 relu mse",
        "0123456789abcdef",
        "lr=0.001 betas=(0.9, 0.999) eps=0.00000001 weight_decay=0",
        "layers.0.weight",
        "[2, 3]",
        "F32",
        "-7.000000e0",
        "layers.0.bias.exp_avg_sq",
        "2023-11-14T22:13:20.000Z",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn selects_by_sequence_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // Epoch 2 is written twice (e.g. a mid-epoch record, then the end).
    write_log(dir.path(), &[1, 2, 2, 3]);
    let v = inspect_json(dir.path(), &["--seq", "2"]);
    assert_eq!(
        (v["sequence"].as_u64(), v["epoch"].as_u64()),
        (Some(2), Some(2))
    );
    let v = inspect_json(dir.path(), &["--epoch", "2"]);
    assert_eq!(v["sequence"], 3, "the newest record of epoch 2");
    let v = inspect_json(dir.path(), &["--epoch", "1"]);
    assert_eq!(v["sequence"], 1);
    assert_eq!(v["tensors"][0]["min"], -7.0);
}

#[test]
fn selection_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &[1, 2]);
    let out = inspect(dir.path(), &["--seq", "99"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no record with sequence 99"), "{err}");
    assert!(err.contains("sequences 1-2"), "{err}");

    let out = inspect(dir.path(), &["--epoch", "7"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no record of epoch 7"), "{err}");

    let out = inspect(dir.path(), &["--seq", "1", "--epoch", "1"]);
    assert_eq!(out.status.code(), Some(2), "the flags are exclusive");

    let out = inspect(&dir.path().join("missing"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no epochwal log in"));

    let empty = tempfile::tempdir().unwrap();
    let out = inspect(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no intact record"));
}

#[test]
fn skips_a_damaged_newest_record_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &[1, 2]);
    let (seg, offset) = {
        let r = epochwal::wal::LogReader::open(dir.path()).unwrap();
        let scan = r.scan().unwrap();
        let s = scan.segments.last().unwrap();
        (s.path.clone(), s.records.last().unwrap().offset)
    };
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset as usize + 4096 + 100] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();

    let out = inspect(dir.path(), &["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sequence"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum"), "{err}");

    let out = inspect(dir.path(), &["--seq", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("damaged") && err.contains(&format!("offset {offset}")),
        "{err}"
    );
}

/// `inspect --seq N` next to a writer, of the record whose header page its
/// walk passed just before the writer wrote it: that record, not "absent".
#[test]
fn inspect_names_no_damage_in_a_log_whose_walk_overtook_a_record() {
    // The newest record, as `inspect` with no flag (and `export`) choose it:
    // the walk passes 22's header page before the writer writes it and
    // finds 23 further on; 22 is a record in flight, not damage.
    let (status, text, errors) =
        common::overtake::run_tool(&["inspect", "--json"]).finish_with_stderr();
    assert_eq!(status.code(), Some(0), "{text}\n{errors}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sequence"], common::overtake::IN_FLIGHT + 1, "{v:#}");
    assert!(
        !errors.contains("passed over"),
        "a healthy log was reported damaged:\n{errors}"
    );
}

#[test]
fn inspect_finds_a_record_that_its_walk_overtook() {
    let seq = common::overtake::IN_FLIGHT.to_string();
    let (status, text) = common::overtake::run_tool(&["inspect", "--json", "--seq", &seq]).finish();
    assert_eq!(status.code(), Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sequence"], common::overtake::IN_FLIGHT, "{v:#}");
}
