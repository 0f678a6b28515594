//! The Python reader (`python/`, written from FORMAT.md) against logs the
//! daemon writes, clean and damaged: it picks the same record as `verify`
//! (and recovery), with the same tensor bytes, viewing the mapping.
//!
//! Needs `python3` with numpy. The package is imported from this tree's
//! `python/` (PYTHONPATH), never from an installed copy that may be older.
//! Without numpy the test is skipped, except when `CI` is set: then it fails.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::{write_config, Daemon};
use common::general_state;
use sha2::Digest;

/// `python3` importing the reader from this source tree.
fn python3() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env(
        "PYTHONPATH",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python"),
    );
    cmd
}

fn reader_available() -> bool {
    let ok = python3()
        .args(["-c", "import numpy, epochwal"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI is set but python3 cannot import numpy and the reader in python/ (pip install numpy)");
    }
    ok
}

fn python_choice(dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reader_choice.py");
    let out = python3().arg(script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "reader failed on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts that the Python reader and `verify` (recovery) agree on `dir`.
fn assert_same_choice(dir: &Path, case: &str) {
    let py = python_choice(dir);
    let report = epochwal::tools::verify_log(dir).unwrap();
    match report.recovery {
        None => assert!(py.is_null(), "{case}: python chose {py}, verify none"),
        Some(c) => {
            assert_eq!(py["sequence"], c.sequence, "{case}: {py}");
            assert_eq!(py["epoch"], c.epoch, "{case}");
            assert_eq!(py["step"], c.step, "{case}");
            assert_eq!(py["zero_copy"], true, "{case}");
            let r = epochwal::wal::recover(dir).unwrap();
            let st = r.record.unwrap().to_owned_state().unwrap();
            let general = st.kind == epochwal::state::KIND_GENERAL;
            assert_eq!(
                py["kind"],
                if general { "general" } else { "trainer" },
                "{case}"
            );
            for t in &st.general.tensors {
                let bytes = sha2::Sha256::digest(t.data.as_slice());
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(py["tensors"][&t.name], hex, "{case}: {}", t.name);
                assert_eq!(
                    py["dtypes"][&t.name],
                    t.dtype.as_str(),
                    "{case}: {}",
                    t.name
                );
                assert_eq!(py["shapes"][&t.name], serde_json::json!(t.shape), "{case}");
            }
            if general {
                let meta: serde_json::Value = serde_json::from_str(&st.general.meta).unwrap();
                assert_eq!(py["meta"], meta, "{case}");
                assert_eq!(
                    py["tensors"].as_object().unwrap().len(),
                    st.general.tensors.len(),
                    "{case}"
                );
            }
            for t in &st.model.tensors {
                assert_eq!(py["tensors"][&t.name], sha(&t.data), "{case}: {}", t.name);
            }
            for (i, p) in st.optimizer.params.iter().enumerate() {
                let m = &py["moments"][i];
                assert_eq!(m[0], p.name.as_str(), "{case}");
                assert_eq!(m[1], p.step, "{case}");
                assert_eq!(m[2], sha(&p.exp_avg), "{case}");
                assert_eq!(m[3], sha(&p.exp_avg_sq), "{case}");
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn python_reader_picks_what_verify_picks_on_clean_and_damaged_logs() {
    if !reader_available() {
        eprintln!("skipped: python3 cannot import numpy and epochwal (pip install ./python)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("log");
    // Long names (out-of-line strings), several tensors, input scaling.
    let body = format!(
        r#"data_dir = "{}"
epochs = 6
seed = 3
[dataset]
kind = "diabetes"
[model]
hidden = [24, 8]
names = "sequential"
[checkpoint]
every_epochs = 1
segment_bytes = 65536
keep_records = 0
"#,
        data.display()
    );
    let cfg = write_config(tmp.path(), "run.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    assert_same_choice(&data, "clean");
    for v in [1, 2, 3] {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/log-schema-v{v}/reference"));
        assert_same_choice(&fixture, &format!("fixture v{v}"));
    }

    let newest = epochwal::wal::recover(&data).unwrap().record.unwrap();
    let (seg, off, len) = (
        newest.path().to_path_buf(),
        newest.header().offset,
        newest.header().payload_len,
    );
    drop(newest);
    let damage = |name: &str, edit: &dyn Fn(&Path)| {
        let dir = tmp.path().join(name);
        copy_dir(&data, &dir);
        edit(&dir.join(seg.file_name().unwrap()));
        assert_same_choice(&dir, name);
    };
    let write_at = |p: &Path, at: u64, bytes: &[u8]| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(bytes, at).unwrap();
    };
    let flip = |p: &Path, at: u64| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    };
    damage("payload bit flip", &|p| flip(p, off + 4096 + len / 2));
    damage("header bit flip", &|p| flip(p, off + 50));
    damage("zeroed header", &|p| write_at(p, off, &[0u8; 128]));
    damage("truncated", &|p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(off + 4096 + len / 3)
            .unwrap()
    });
    damage("segment header", &|p| flip(p, 20));
    // A checksum-correct payload that fails validation: a pointer moved,
    // with the checksum fixed up.
    damage("bad pointer, good checksum", &|p| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let mut payload = vec![0u8; len as usize];
        f.read_exact_at(&mut payload, off + 4096).unwrap();
        // The root's model.tensors Vec offset (FORMAT.md §4.3: root at the
        // end, model at +32, tensors at +24 in it).
        let root = payload.len() - 392;
        let at = root + 32 + 24;
        let v = i64::from_le_bytes(payload[at..at + 8].try_into().unwrap());
        payload[at..at + 8].copy_from_slice(&(v + 8).to_le_bytes());
        f.write_all_at(&payload, off + 4096).unwrap();
        let mut page = vec![0u8; 128];
        f.read_exact_at(&mut page, off).unwrap();
        let mut h = epochwal::wal::RecordHeader::decode(&page).unwrap();
        h.payload_checksum = epochwal::wal::format::checksum(&payload);
        h.encode(&mut page);
        f.write_all_at(&page, off).unwrap();
    });
    // A middle record's header zeroed or damaged: the records after it are
    // found by searching the following pages (FORMAT.md §5 step 3). Four
    // records in one segment, written by the library.
    for (case, zero) in [
        ("zeroed middle header", true),
        ("damaged middle header", false),
    ] {
        let dir = tmp.path().join(case);
        let (mut log, _) = epochwal::wal::Log::open(
            &dir,
            epochwal::wal::LogOptions {
                segment_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let mut offsets = Vec::new();
        for e in 1..=4 {
            offsets.push(
                log.append(&common::sample_state(16 << 10, e))
                    .unwrap()
                    .header
                    .offset,
            );
        }
        drop(log);
        let p = dir.join(epochwal::wal::format::segment_file_name(1));
        if zero {
            write_at(&p, offsets[1], &[0u8; 4096]);
        } else {
            flip(&p, offsets[1] + 50);
        }
        assert_same_choice(&dir, case);
        assert_eq!(python_choice(&dir)["sequence"], 4, "{case}");
    }
    let all_gone = tmp.path().join("empty");
    std::fs::create_dir_all(&all_gone).unwrap();
    assert_same_choice(&all_gone, "empty directory");
}

/// General records (schema 3, any dtype, a JSON document), written by the
/// library as the Python package writes them: the reader picks the record
/// `verify` picks, with the same bytes, dtypes, shapes and document, clean
/// and damaged.
#[test]
fn python_reader_reads_general_records_as_verify_does() {
    if !reader_available() {
        eprintln!("skipped: python3 cannot import numpy and epochwal (pip install ./python)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("general");
    let (mut log, _) = epochwal::wal::Log::open(
        &dir,
        epochwal::wal::LogOptions {
            segment_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let mut last = None;
    for e in 1..=3 {
        last = Some(log.append(&general_state(e)).unwrap());
    }
    drop(log);
    assert_same_choice(&dir, "general clean");
    assert_eq!(python_choice(&dir)["sequence"], 3);
    let last = last.unwrap();
    let (off, len) = (last.header.offset, last.header.payload_len);
    let flipped = tmp.path().join("general flipped");
    copy_dir(&dir, &flipped);
    let p = flipped.join(last.path.file_name().unwrap());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off + 4096 + len / 2).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], off + 4096 + len / 2)
        .unwrap();
    assert_same_choice(&flipped, "general payload bit flip");
    assert_eq!(python_choice(&flipped)["sequence"], 2);
}
