//! The upgrade rule (FORMAT.md, "Versioning"): a log written by an older
//! binary stays resumable by this one, bit for bit, and a record of a schema
//! version this binary does not know stops recovery with an error naming
//! both versions instead of being taken for damage.
//!
//! The fixtures under `tests/fixtures/log-schema-vN/` were written by the
//! binaries of each schema version (their `config.toml` says how) and are
//! never regenerated.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{assert_same_training_state, binary, newest_state, Daemon};
use epochwal::state::{TrainState, SCHEMA_VERSION};
use epochwal::wal::format::{RecordHeader, RECORD_HEADER_LEN};
use epochwal::wal::{recover, LogReader};

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("log-schema-v{version}"))
}

/// Copies a fixture log into a fresh directory (tests never write to the
/// committed files).
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn run_to(config: &Path, data: &Path, epochs: u64) -> Vec<String> {
    let d = Daemon::spawn(
        config,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            &epochs.to_string(),
        ],
        &[],
    );
    let (status, lines) = d.wait(Duration::from_secs(120));
    assert!(status.success(), "run failed:\n{}", lines.join("\n"));
    lines
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every released schema version with a fixture under tests/fixtures.
const VERSIONS: [u32; 3] = [1, 2, 3];

#[test]
fn the_newest_fixture_is_of_the_current_schema() {
    assert_eq!(*VERSIONS.last().unwrap(), SCHEMA_VERSION);
}

/// The fixture's records decode, through the version dispatch, to exactly
/// the tensors the binary of that version itself exported from them.
#[test]
fn fixtures_decode_to_what_their_binaries_exported() {
    for v in VERSIONS {
        decodes_to_what_its_binary_exported(v);
    }
}

fn decodes_to_what_its_binary_exported(version: u32) {
    let dir = fixture(version);
    let reader = LogReader::open(dir.join("log")).unwrap();
    let scan = reader.scan().unwrap();
    let (path, header) = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(move |r| (s.path.clone(), *r)))
        .find(|(_, r)| r.epoch == 3)
        .expect("fixture has a record of epoch 3");
    assert_eq!(header.schema_version, version);
    let rec = reader.load(&path, &header).unwrap();
    assert_eq!(rec.schema_version(), version);
    let state: TrainState = rec.to_owned_state().unwrap();
    assert_eq!(state.schema_version, SCHEMA_VERSION);
    assert_eq!(state.epoch, 3);

    let bytes = std::fs::read(dir.join("epoch3.safetensors")).unwrap();
    let exported = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        let t = exported
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(state.model.tensors.len(), 2);
    for t in &state.model.tensors {
        assert_eq!(bits(&t.data), bits(&f32s(&t.name)), "{}", t.name);
    }
    for p in &state.optimizer.params {
        let key = |k: &str| format!("optimizer.state.{}.{k}", p.name);
        assert_eq!(bits(&p.exp_avg), bits(&f32s(&key("exp_avg"))), "{}", p.name);
        assert_eq!(
            bits(&p.exp_avg_sq),
            bits(&f32s(&key("exp_avg_sq"))),
            "{}",
            p.name
        );
        assert_eq!(p.step as f32, f32s(&key("step"))[0], "{}", p.name);
    }
}

/// Today's binary resumes a log an older binary wrote and continues it: it
/// reaches the state that binary reached by continuing the same log (bit
/// for bit, as long as the training arithmetic is unchanged).
#[test]
fn resumes_every_fixture_log_and_continues_it() {
    for v in VERSIONS {
        resumes_and_continues(v);
    }
}

fn resumes_and_continues(version: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(version);
    let config = dir.join("config.toml");
    let data = tmp.path().join("log");
    copy_log(&dir.join("log"), &data);
    let (before_seq, before) = newest_state(&data).unwrap();
    assert_eq!(before.epoch, 3);

    let lines = run_to(&config, &data, 6);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("recovered seq=3 epoch=3") && l.contains("skipped=0")),
        "did not recover the fixture's newest record:\n{}",
        lines.join("\n")
    );
    let (seq, resumed) = newest_state(&data).unwrap();
    assert_eq!(seq, before_seq + 3, "three new records after the old ones");
    assert_eq!(resumed.epoch, 6);
    assert_eq!(resumed.data.seed, before.data.seed);
    assert_eq!(resumed.data.dataset_len, before.data.dataset_len);
    assert_eq!(resumed.global_step, 2 * before.global_step);
    assert!(resumed.train_time_ms >= before.train_time_ms);
    // The new records are of today's schema; the old ones still read.
    let r = recover(&data).unwrap();
    let rec = r.record.unwrap();
    assert_eq!(rec.header().schema_version, SCHEMA_VERSION);

    let (_, reference) = newest_state(&dir.join("reference")).unwrap();
    assert_eq!(reference.epoch, 6);
    // Whether today's arithmetic is the schema-1 binary's: a fresh run must
    // reproduce the fixture's epoch-3 record exactly.
    let fresh = tmp.path().join("fresh");
    run_to(&config, &fresh, 3);
    let (_, fresh_state) = newest_state(&fresh).unwrap();
    let same_arithmetic = fresh_state
        .model
        .tensors
        .iter()
        .zip(&before.model.tensors)
        .all(|(a, b)| bits(&a.data) == bits(&b.data));
    if same_arithmetic {
        assert_same_training_state(&resumed, &reference);
    } else {
        // The trainer's arithmetic changed since schema 1 (a different
        // summation order, say): the continuation cannot be bitwise the
        // old binary's, but it must be the same run to rounding.
        eprintln!(
            "note: training arithmetic differs from schema {version}'s; comparing to rounding"
        );
        for (a, b) in resumed.model.tensors.iter().zip(&reference.model.tensors) {
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                    "{}: {x} vs {y}",
                    a.name
                );
            }
        }
    }
}

/// `verify` and `inspect` read every fixture as it is.
#[test]
fn verify_and_inspect_read_every_fixture() {
    for v in VERSIONS {
        verify_and_inspect(v);
    }
}

fn verify_and_inspect(version: u32) {
    let dir = fixture(version).join("log");
    let out = Command::new(binary())
        .args(["verify", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("result       clean"), "{text}");
    let out = Command::new(binary())
        .args(["inspect", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], version);
    assert_eq!(v["epoch"], 3);
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

/// Rewrites the header of the newest record of `dir` to claim `version`
/// (with a correct header checksum): what a newer binary would have written.
fn claim_version(dir: &Path, version: u32) -> (PathBuf, RecordHeader) {
    let r = recover(dir).unwrap();
    let rec = r.record.unwrap();
    let path = rec.path().to_path_buf();
    let mut h = *rec.header();
    drop(rec);
    h.schema_version = version;
    let mut page = vec![0u8; RECORD_HEADER_LEN];
    h.encode(&mut page);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&page, h.offset).unwrap();
    (path, h)
}

/// A record of a newer schema is not damage: `run` refuses to start (it
/// would otherwise roll the run back to an older record), naming the file,
/// the record's version and the version it reads; `verify` says the same.
#[test]
fn refuses_a_record_of_a_newer_schema_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("log");
    copy_log(&fixture(1).join("log"), &data);
    let newer = SCHEMA_VERSION + 1;
    let (path, h) = claim_version(&data, newer);
    let before = std::fs::read(&path).unwrap();

    let d = Daemon::spawn(
        &fixture(1).join("config.toml"),
        &["--data-dir", data.to_str().unwrap(), "--epochs", "6"],
        &[],
    );
    let (status, lines) = d.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(all.contains(&path.display().to_string()), "{all}");
    assert!(
        all.contains(&format!("schema version {newer}, newer than this epochwal")),
        "{all}"
    );
    assert!(
        all.contains(&format!("reads (schema version {SCHEMA_VERSION})"))
            || all.contains(&format!("to {SCHEMA_VERSION})")),
        "{all}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    assert_eq!(
        segments(&data),
        segments(&fixture(1).join("log")),
        "no segment was created"
    );

    let out = Command::new(binary())
        .args(["verify", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("UNREADABLE   {}", path.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "record {}: record has schema version {newer}",
            h.sequence
        )),
        "{text}"
    );
    assert!(text.contains("recovery     refused:"), "{text}");
    assert!(!text.contains("DAMAGE"), "not damage:\n{text}");
}
