//! `epochwal export` and `read_import`: the real binary, real
//! files, read back with the safetensors crate (and with Python's
//! safetensors + numpy when they are installed).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use epochwal::state::{AdamParamState, Tensor, TrainState};
use epochwal::tools::{read_import, ParamKey};
use epochwal::wal::{Log, LogOptions, LogReader};
use safetensors::{Dtype, SafeTensors};

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");

/// An MLP 3-4-2 under PyTorch names, values depending on `epoch`.
fn mlp_state(epoch: u64) -> TrainState {
    let mut s = common::sample_state(64, epoch);
    s.model.description = "mlp 3-4-2 relu mse".into();
    let shapes: [(&str, Vec<u64>); 4] = [
        ("layers.0.weight", vec![4, 3]),
        ("layers.0.bias", vec![4]),
        ("layers.2.weight", vec![2, 4]),
        ("layers.2.bias", vec![2]),
    ];
    s.model.tensors = shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n = shape.iter().product::<u64>() as usize;
            Tensor {
                name: name.to_string(),
                shape: shape.clone(),
                data: (0..n)
                    .map(|i| ((i * 7 + k * 13) as f32).sin() / (epoch as f32 + 0.5))
                    .collect(),
            }
        })
        .collect();
    s.optimizer.params = s
        .model
        .tensors
        .iter()
        .map(|t| AdamParamState {
            name: t.name.clone(),
            step: epoch * 10 + 1,
            exp_avg: t.data.iter().map(|x| x * 0.01).collect(),
            exp_avg_sq: t.data.iter().map(|x| x * x * 1e-3).collect(),
        })
        .collect();
    s
}

fn write_log(dir: &Path, epochs: &[u64]) {
    let (mut log, _) = Log::open(dir, LogOptions::default()).unwrap();
    for &e in epochs {
        log.append(&mlp_state(e)).unwrap();
    }
}

fn export(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("export")
        .arg(dir)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// The record with `seq`, read back as an owned state (test-side only).
fn record(dir: &Path, seq: u64) -> TrainState {
    let r = LogReader::open(dir).unwrap();
    let scan = r.scan().unwrap();
    let (path, h) = scan
        .segments
        .iter()
        .find_map(|s| {
            s.records
                .iter()
                .find(|h| h.sequence == seq)
                .map(|h| (s.path.clone(), *h))
        })
        .unwrap();
    r.load(&path, &h).unwrap().to_owned_state().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn model_tensors_round_trip_bit_for_bit_with_metadata() {
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1, 2, 3]);
    let outdir = tempfile::tempdir().unwrap();
    let file = outdir.path().join("model.safetensors");
    let out = export(log.path(), &file, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dir_entries(outdir.path()),
        ["model.safetensors"],
        "no temp file left"
    );

    let want = record(log.path(), 3);
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 4, "only the model without --with-optimizer");
    for t in &want.model.tensors {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32);
        let shape: Vec<u64> = v.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape, "{}", t.name);
        assert_eq!(bits(&f32s(v.data())), bits(&t.data), "{}", t.name);
    }

    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let expect = [
        ("format", "pt"),
        ("epoch", "3"),
        ("global_step", "30"),
        ("step_in_epoch", "0"),
        ("sequence", "3"),
        ("lr", "0.001"),
        ("betas", "0.9,0.999"),
        ("eps", "0.00000001"),
        ("weight_decay", "0"),
        ("fingerprint", "000000000000feed"),
        ("description", "mlp 3-4-2 relu mse"),
    ];
    for (k, v) in expect {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "metadata {k}");
    }
    for k in ["source_log_dir", "source_segment", "source_offset"] {
        assert!(!meta.contains_key(k), "no paths in the export: {k}");
    }
}

#[test]
fn with_optimizer_names_layout_adds_adam_state_under_parameter_names() {
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1, 2, 2, 3]);
    let outdir = tempfile::tempdir().unwrap();
    let file = outdir.path().join("full.safetensors");
    let out = export(
        log.path(),
        &file,
        &[
            "--epoch",
            "2",
            "--with-optimizer",
            "--optimizer-layout",
            "names",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = record(log.path(), 3); // the newest record of epoch 2

    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 4 * 4);
    for (t, p) in want.model.tensors.iter().zip(&want.optimizer.params) {
        let prefix = format!("optimizer.state.{}", t.name);
        for (suffix, data) in [(".exp_avg", &p.exp_avg), (".exp_avg_sq", &p.exp_avg_sq)] {
            let v = st.tensor(&format!("{prefix}{suffix}")).unwrap();
            assert_eq!(v.dtype(), Dtype::F32);
            let shape: Vec<u64> = v.shape().iter().map(|&d| d as u64).collect();
            assert_eq!(shape, t.shape);
            assert_eq!(bits(&f32s(v.data())), bits(data));
        }
        let step = st.tensor(&format!("{prefix}.step")).unwrap();
        assert_eq!(step.dtype(), Dtype::F32);
        assert!(step.shape().is_empty(), "0-dim like torch's step");
        assert_eq!(f32s(step.data()), [21.0]);
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["sequence"], "3");
    assert_eq!(meta["epoch"], "2");
    assert!(!meta.contains_key("optimizer.param_groups"));

    // The loader returns the weights apart, in file order, bit-equal, and
    // the Adam state keyed by name.
    let import = read_import(&file).unwrap();
    for (t, p) in want.model.tensors.iter().zip(&want.optimizer.params) {
        let e = &import.adam[&ParamKey::Name(t.name.clone())];
        assert_eq!(e.step, p.step);
        assert_eq!(e.exp_avg.0, t.shape);
        assert_eq!(bits(&e.exp_avg.1), bits(&p.exp_avg));
        assert_eq!(bits(&e.exp_avg_sq.1), bits(&p.exp_avg_sq));
    }
    let weights = import.weights;
    let got: HashMap<_, _> = weights
        .iter()
        .map(|(n, s, v)| (n.as_str(), (s.clone(), bits(v))))
        .collect();
    assert_eq!(got.len(), 4);
    for t in &want.model.tensors {
        assert_eq!(got[t.name.as_str()], (t.shape.clone(), bits(&t.data)));
    }
}

#[test]
fn export_replaces_an_existing_file_and_rejects_unknown_records() {
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1, 2]);
    let outdir = tempfile::tempdir().unwrap();
    let file = outdir.path().join("m.safetensors");
    std::fs::write(&file, b"old").unwrap();
    let out = export(log.path(), &file, &["--seq", "1"]);
    assert!(out.status.success());
    let bytes = std::fs::read(&file).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["sequence"], "1");

    let other = outdir.path().join("x.safetensors");
    let out = export(log.path(), &other, &["--seq", "99"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no record with sequence 99"), "{err}");
    assert_eq!(
        dir_entries(outdir.path()),
        ["m.safetensors"],
        "nothing written"
    );

    let out = export(
        log.path(),
        &outdir.path().join("no/such/dir/x.safetensors"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = export(&log.path().join("missing"), &other, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing log is an error, not a usage error"
    );
}

#[test]
fn loader_rejects_other_dtypes_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let f64_file = dir.path().join("f64.safetensors");
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F64, vec![2], &data).unwrap();
    safetensors::serialize_to_file([("fc.weight", view)], None, &f64_file).unwrap();
    let err = read_import(&f64_file).unwrap_err().to_string();
    assert!(
        err.contains("f64.safetensors") && err.contains("F64"),
        "{err}"
    );

    let missing = dir.path().join("missing.safetensors");
    let err = format!("{:#}", read_import(&missing).unwrap_err());
    assert!(err.contains("missing.safetensors"), "{err}");

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let err = read_import(&junk).unwrap_err().to_string();
    assert!(
        err.contains("junk.safetensors") && err.contains("not a valid"),
        "{err}"
    );
}

fn python_available() -> bool {
    Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_safetensors_reads_the_export() {
    if !python_available() {
        // CI installs them (.ci/run), so there the check must not be skipped.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import safetensors and numpy"
        );
        eprintln!(
            "NOTICE: python3 with safetensors and numpy not found; skipping the Python check \
             (pip install safetensors numpy)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_export.py");
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1, 2]);
    let outdir = tempfile::tempdir().unwrap();
    let file = outdir.path().join("model.safetensors");
    let out = export(log.path(), &file, &["--with-optimizer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Expected values written by this test: bit-exact comparison.
    let want = record(log.path(), 2);
    let expected = serde_json::json!({
        "tensors": want.model.tensors.iter().map(|t| serde_json::json!({
            "name": t.name, "shape": t.shape, "values": t.data,
        })).collect::<Vec<_>>(),
        "metadata": {"epoch": "2", "sequence": "2", "format": "pt"},
    });
    let expected_path = outdir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let run = |exp: &Path| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(&file)
            .arg(exp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check_export.py failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&expected_path);

    // Expected statistics from `epochwal inspect --json`.
    let inspect = Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(log.path())
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let inspect_path = outdir.path().join("inspect.json");
    std::fs::write(&inspect_path, &inspect.stdout).unwrap();
    run(&inspect_path);
}

/// The default optimizer layout is torch's: `optimizer.state.<i>.*` with
/// the structure `torch.optim.Adam.state_dict()` has (pinned in
/// tests/fixtures/torch-adam-state-dict.json), and `param_groups` in the
/// metadata equal to torch's, numbers as numbers.
#[test]
fn torch_layout_has_the_structure_of_torch_adam_state_dict() {
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1]);
    let file = log.path().join("opt.safetensors");
    let out = export(log.path(), &file, &["--with-optimizer"]);
    assert!(out.status.success());
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch-adam-state-dict.json"),
        )
        .unwrap(),
    )
    .unwrap();

    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut state = serde_json::Map::new();
    for (name, view) in st.tensors() {
        let Some(rest) = name.strip_prefix("optimizer.state.") else {
            continue;
        };
        let (index, field) = rest.split_once('.').unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        let entry = state
            .entry(index.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[field] = serde_json::json!(["float32", view.shape()]);
    }
    assert_eq!(serde_json::Value::Object(state), fixture["state"]);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let groups: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["optimizer.param_groups"]).unwrap();
    let want = &fixture["param_groups"];
    assert_eq!(groups.as_array().unwrap().len(), 1);
    let (got, want) = (&groups[0], &want[0]);
    let mut got_keys: Vec<&String> = got.as_object().unwrap().keys().collect();
    let mut want_keys: Vec<&String> = want.as_object().unwrap().keys().collect();
    got_keys.sort();
    want_keys.sort();
    assert_eq!(got_keys, want_keys);
    for k in want_keys {
        let (g, w) = (&got[k], &want[k]);
        if w.is_number() {
            assert_eq!(g.as_f64(), w.as_f64(), "{k}");
        } else {
            assert_eq!(g, w, "{k}");
        }
    }
}

/// The same record always gives the same bytes, wherever the log lives and
/// whenever the export runs.
#[test]
fn exports_are_reproducible() {
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1, 2]);
    let elsewhere = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(log.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), elsewhere.path().join(e.file_name())).unwrap();
    }
    let outdir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, dir) in [
        log.path(),
        elsewhere.path(),
        log.path(),
        log.path(),
        log.path(),
    ]
    .iter()
    .enumerate()
    {
        let f = outdir.path().join(format!("{i}.safetensors"));
        let out = export(dir, &f, &["--seq", "1", "--with-optimizer"]);
        assert!(out.status.success());
        files.push(std::fs::read(&f).unwrap());
    }
    for f in &files[1..] {
        assert!(f == &files[0], "exports differ");
    }
}

/// A CSV run with `names = "sequential"`: the export's model keys are those
/// of `nn.Sequential(Linear, ReLU, Linear)`, and `--with-input-norm` adds
/// the input standardisation the record keeps (the file's population mean
/// and std); with `standardize_inputs = false` there is none.
#[test]
fn sequential_names_and_input_norm_from_a_csv_run() {
    use common::daemon::{write_config, Daemon};
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("data.csv");
    let rows: Vec<(f64, f64, f64)> = (0..64)
        .map(|i| {
            let a = i as f64 * 0.5 + 3.0;
            let b = ((i * 7) % 11) as f64 * 10.0 - 20.0;
            (a, b, 2.0 * a - 0.1 * b)
        })
        .collect();
    let mut text = String::from("a,b,y\n");
    for (a, b, y) in &rows {
        text.push_str(&format!("{a},{b},{y}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let config = |data: &Path, standardize: bool| {
        format!(
            r#"data_dir = "{}"
epochs = 1
[dataset]
kind = "csv"
path = "{}"
targets = ["y"]
standardize_inputs = {standardize}
[model]
hidden = [4]
names = "sequential"
"#,
            data.display(),
            csv.display()
        )
    };
    let population = |col: &dyn Fn(&(f64, f64, f64)) -> f64| {
        let n = rows.len() as f64;
        let mean = rows.iter().map(col).sum::<f64>() / n;
        let var = rows.iter().map(|r| (col(r) - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, var.sqrt() as f32)
    };
    let (ma, sa) = population(&|r| r.0);
    let (mb, sb) = population(&|r| r.1);

    for standardize in [true, false] {
        let data = tmp.path().join(format!("log-{standardize}"));
        let cfg = write_config(tmp.path(), "csv.toml", &config(&data, standardize));
        let (status, lines) =
            Daemon::spawn(&cfg, &[], &[]).wait(std::time::Duration::from_secs(120));
        assert!(status.success(), "{}", lines.join("\n"));
        let file = tmp.path().join(format!("m-{standardize}.safetensors"));

        // Without the flag: model keys only, and a note when scaled.
        let out = export(&data, &file, &[]);
        assert!(out.status.success());
        let note = String::from_utf8_lossy(&out.stderr).contains("--with-input-norm");
        assert_eq!(note, standardize);
        let bytes = std::fs::read(&file).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["0.bias", "0.weight", "2.bias", "2.weight"]);
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let want = if standardize { "standardized" } else { "none" };
        assert_eq!(meta.metadata().as_ref().unwrap()["input_norm"], want);

        let out = export(&data, &file, &["--with-input-norm"]);
        assert!(out.status.success());
        let bytes = std::fs::read(&file).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        if standardize {
            let mean = f32s(st.tensor("input_norm.mean").unwrap().data());
            let std = f32s(st.tensor("input_norm.std").unwrap().data());
            assert_eq!(mean, [ma, mb]);
            assert_eq!(std, [sa, sb]);
        } else {
            assert!(st.tensor("input_norm.mean").is_err());
        }
        assert!(st.tensor("target_norm.mean").is_err(), "targets not scaled");
    }
}

/// The README's Python lines rebuild exactly the structure of torch's
/// `Adam.state_dict()` from an export (run with numpy; CI has no torch).
#[test]
fn readme_python_lines_rebuild_torch_adam_state_dict() {
    if !python_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import safetensors and numpy"
        );
        eprintln!("NOTICE: python3 with safetensors and numpy not found; skipping");
        return;
    }
    let log = tempfile::tempdir().unwrap();
    write_log(log.path(), &[1]);
    let file = log.path().join("opt.safetensors");
    assert!(export(log.path(), &file, &["--with-optimizer"])
        .status
        .success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/python/torch_layout.py"))
        .arg(&file)
        .arg(root.join("tests/fixtures/torch-adam-state-dict.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn export_of_a_job_directory_names_one_rank_to_export() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_log(&job.join("rank-00000"), &[1, 2]);
    write_log(&job.join("rank-00001"), &[1, 2]);
    let out = export(&job, &tmp.path().join("m.safetensors"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("is a job directory") && stderr.contains("rank-00000"),
        "names the job and a rank to export: {stderr}"
    );
    assert!(
        !stderr.contains("damaged"),
        "rank directories are not damage: {stderr}"
    );
    assert!(!tmp.path().join("m.safetensors").exists());
}
