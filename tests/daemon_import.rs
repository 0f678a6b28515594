//! `epochwal run --init-from FILE`: the import is written as a durable
//! first record before any step, remembered by its SHA-256, and a restart
//! (with the same flag, or none) resumes from the log; another file is
//! refused naming both hashes. Adam's state comes in too, in either layout
//! `export` writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use epochwal::state::TrainState;
use epochwal::wal::LogReader;

const LONG: Duration = Duration::from_secs(300);

/// A synthetic run whose epochs take long enough (hundreds of steps) for a
/// kill to land inside the first one.
fn slow_config(data: &Path, epochs: u64, lr: f64) -> String {
    format!(
        r#"data_dir = "{}"
epochs = {epochs}
seed = 11
batch_size = 2
[dataset]
kind = "synthetic"
n = 16384
input_dim = 16
output_dim = 4
[model]
hidden = [32]
[optimizer]
lr = {lr}
[checkpoint]
every_epochs = 1
segment_bytes = 1048576
"#,
        data.display()
    )
}

fn export(log: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(binary())
        .args(["export", log.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A short source run and an export of its newest record with Adam's state.
fn source_file(tmp: &Path, layout: &str) -> (PathBuf, TrainState) {
    let source = tmp.join(format!("source-{layout}"));
    let cfg = write_config(tmp, "source.toml", &slow_config(&source, 1, 1e-3));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let file = tmp.join(format!("import-{layout}.safetensors"));
    export(
        &source,
        &file,
        &["--with-optimizer", "--optimizer-layout", layout],
    );
    (file, newest_state(&source).unwrap().1)
}

/// The record with sequence 1 of a log.
fn first_record(dir: &Path) -> TrainState {
    let r = LogReader::open(dir).unwrap();
    let scan = r.scan().unwrap();
    let seg = &scan.segments[0];
    let h = seg.records[0];
    assert_eq!(h.sequence, 1);
    r.load(&seg.path, &h).unwrap().to_owned_state().unwrap()
}

fn sha256_of(file: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(file).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn assert_imported(record: &TrainState, from: &TrainState) {
    assert_eq!((record.epoch, record.global_step), (0, 0));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (a, b) in record.model.tensors.iter().zip(&from.model.tensors) {
        assert_eq!(a.name, b.name);
        assert_eq!(bits(&a.data), bits(&b.data), "{}", a.name);
    }
    for (a, b) in record.optimizer.params.iter().zip(&from.optimizer.params) {
        assert_eq!(a.step, b.step, "{}", a.name);
        assert_eq!(bits(&a.exp_avg), bits(&b.exp_avg), "{}", a.name);
        assert_eq!(bits(&a.exp_avg_sq), bits(&b.exp_avg_sq), "{}", a.name);
    }
}

/// SIGKILL before the first epoch ends; then restarts with the same flag,
/// without it, and with another file.
#[test]
fn import_survives_sigkill_and_restarts_resume_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, source) = source_file(tmp.path(), "torch");
    let hash = sha256_of(&file);

    let data = tmp.path().join("run");
    let cfg = write_config(tmp.path(), "run.toml", &slow_config(&data, 2, 1e-3));
    let d = Daemon::spawn(&cfg, &["--init-from", file.to_str().unwrap()], &[]);
    let line = d
        .wait_for("reason=\"import\"", LONG)
        .unwrap_or_else(|| panic!("no import record:\n{}", d.lines().join("\n")));
    assert!(
        line.contains("checkpoint durable seq=1 epoch=0 step=0"),
        "{line}"
    );
    d.signal(libc::SIGKILL);
    let (status, lines) = d.wait(LONG);
    assert!(status.code().is_none(), "killed: {}", lines.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains("epoch=1 step=")),
        "the kill came after the first epoch; make the epochs longer:\n{}",
        lines.join("\n")
    );
    // Record 0 is durable and holds the import, weights and Adam state.
    let (seq, _) = newest_state(&data).unwrap();
    assert_eq!(seq, 1);
    let first = first_record(&data);
    assert_imported(&first, &source);
    assert_eq!(
        first
            .import
            .sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        hash
    );
    assert_eq!(first.import.source, file.display().to_string());

    // Three restarts from copies of the killed log.
    let copy = |name: &str| {
        let to = tmp.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&data).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let with_flag = copy("with-flag");
    let without_flag = copy("without-flag");
    let other_file = copy("other-file");

    let run = |dir: &Path, args: &[&str]| {
        let mut all = vec!["--data-dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        Daemon::spawn(&cfg, &all, &[]).wait(LONG)
    };
    let (status, lines) = run(&with_flag, &["--init-from", file.to_str().unwrap()]);
    assert!(status.success(), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(all.contains("already imported into this log"), "{all}");
    assert!(all.contains("recovered seq=1 epoch=0 step=0"), "{all}");

    let (status, lines) = run(&without_flag, &[]);
    assert!(status.success(), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(all.contains("recovered seq=1 epoch=0 step=0"), "{all}");
    assert!(!all.contains("fresh run"), "{all}");

    // Both continue the imported run exactly as an uninterrupted one does.
    let straight = tmp.path().join("straight");
    let (status, lines) = run(&straight, &["--init-from", file.to_str().unwrap()]);
    assert!(status.success(), "{}", lines.join("\n"));
    let (_, want) = newest_state(&straight).unwrap();
    assert_eq!(want.epoch, 2);
    for dir in [&with_flag, &without_flag] {
        let (_, got) = newest_state(dir).unwrap();
        assert_same_training_state(&got, &want);
        assert_eq!(got.import, want.import);
    }

    // Another file is refused, naming both hashes; nothing is written.
    let other = tmp.path().join("other.safetensors");
    export(&with_flag, &other, &["--seq", "2"]);
    let other_hash = sha256_of(&other);
    assert_ne!(other_hash, hash);
    let before = std::fs::read_dir(&other_file).unwrap().count();
    let (status, lines) = run(&other_file, &["--init-from", other.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    let all = lines.join("\n");
    assert!(all.contains(&hash) && all.contains(&other_hash), "{all}");
    assert!(all.contains("refusing --init-from"), "{all}");
    assert_eq!(std::fs::read_dir(&other_file).unwrap().count(), before);
}

/// Adam's step and moments come in from a file in torch's layout and in the
/// by-name layout; a file whose Adam state does not fit is refused.
#[test]
fn adam_state_comes_in_with_either_layout_and_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for layout in ["torch", "names"] {
        let (file, source) = source_file(tmp.path(), layout);
        let data = tmp.path().join(format!("run-{layout}"));
        let cfg = write_config(tmp.path(), "run.toml", &slow_config(&data, 1, 1e-3));
        let (status, lines) =
            Daemon::spawn(&cfg, &["--init-from", file.to_str().unwrap()], &[]).wait(LONG);
        assert!(status.success(), "{}", lines.join("\n"));
        assert!(lines.join("\n").contains("adam=true"), "{lines:?}");
        assert_imported(&first_record(&data), &source);
    }

    // Rewrites an export with one Adam tensor dropped or reshaped.
    let (file, _) = source_file(tmp.path(), "torch");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // `edit(name, shape)` gives the new shape, or None to drop the tensor.
    type Edit<'a> = &'a dyn Fn(&str, Vec<usize>) -> Option<Vec<usize>>;
    let rewrite = |name: &str, edit: Edit<'_>, nan: bool| {
        let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, v) in st.tensors() {
            if let Some(shape) = edit(&k, v.shape().to_vec()) {
                let n: usize = shape.iter().product::<usize>().max(1);
                let mut data = v.data().to_vec();
                data.resize(n * 4, 0);
                if nan && k == "optimizer.state.0.exp_avg" {
                    data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
                kept.push((k, shape, data));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
            .iter()
            .map(|(k, s, d)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .unwrap(),
                )
            })
            .collect();
        let out = tmp.path().join(name);
        safetensors::serialize_to_file(views, None, &out).unwrap();
        out
    };
    let missing = rewrite(
        "missing.safetensors",
        &|k, s| (!k.starts_with("optimizer.state.1.")).then_some(s),
        false,
    );
    let reshaped = rewrite(
        "reshaped.safetensors",
        &|k, s| {
            Some(if k == "optimizer.state.0.exp_avg" {
                vec![s.iter().product()]
            } else {
                s
            })
        },
        false,
    );
    let nan = rewrite("nan.safetensors", &|_, s| Some(s), true);
    for (f, want) in [
        (&missing, "no state for layers.0.bias"),
        (
            &reshaped,
            "Adam exp_avg of parameter 0 (layers.0.weight) has shape",
        ),
        (&nan, "the Adam exp_avg of parameter 0 holds NaN"),
    ] {
        let data = tmp.path().join("refused");
        let cfg = write_config(tmp.path(), "run.toml", &slow_config(&data, 1, 1e-3));
        let (status, lines) =
            Daemon::spawn(&cfg, &["--init-from", f.to_str().unwrap()], &[]).wait(LONG);
        assert_eq!(status.code(), Some(1));
        let all = lines.join("\n");
        assert!(all.contains(want), "{all}");
        assert!(
            !data.exists() || newest_state(&data).is_none(),
            "nothing recorded"
        );
    }
}
