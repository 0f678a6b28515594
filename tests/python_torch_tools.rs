//! The operator tools on general records, written by the Python package's
//! `Checkpointer` in a real `python3` with real torch
//! (`tests/python/torch_tools.py`): a model with a buffer of every CPU
//! dtype (float32/16/64, bfloat16, int64/32/16/8, uint8, bool), a batch
//! norm, and AdamW with two param_groups; loss, val_loss and metrics on
//! every record.
//!
//! - `tail` and `tail -f` (a live writer appends while it follows) show
//!   epoch, step, loss, val_loss and the metrics, and mark the best;
//! - `inspect` prints each tensor's dtype in its dtype column (text and
//!   JSON), the metrics and param_groups;
//! - `export` writes every tensor with its dtype, and README's block gives
//!   back the model (`load_state_dict(strict=True)`) and the AdamW state
//!   (`optimizer.load_state_dict`) bit for bit; an optimizer state the file
//!   cannot carry (an integer per parameter) is refused, naming it;
//! - `verify` checks general records: a flipped payload byte in the newest
//!   is reported and the previous record chosen;
//! - `tensorboard` writes a point per record with its loss and val_loss;
//! - replicated to a real s3s-fs: `tail`, `inspect`, `verify`, `export` on
//!   the URL, `tail -f URL`, `pull`, and `load_latest` on an empty directory restoring
//!   from the remote.
//!
//! Needs python3 with torch and the package installed, and safetensors and
//! tensorboard for the export and tensorboard checks (`.ci/run`); see
//! tests/common/torch.rs for the skip rule.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::follow::Follower;
use common::python::readme_block;
use common::s3::{epochwal_env, S3Server};
use common::torch::{available, command, imports, run_ok, run_ok_env, Said};

/// What the writer saved: per record its figures, and every tensor's dtype.
struct Reference {
    records: Vec<serde_json::Value>,
    dtypes: BTreeMap<String, String>,
}

fn reference(ref_base: &Path) -> Reference {
    let text = std::fs::read_to_string(ref_base.with_extension("json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Reference {
        records: v["records"].as_array().unwrap().clone(),
        dtypes: serde_json::from_value(v["dtypes"].clone()).unwrap(),
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `epochwal ARGS` (no AWS variables but `env`): exit code, stdout, stderr.
fn tool(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    epochwal_env(env, args)
}

/// `tool`, asserting exit 0; its stdout.
fn tool_ok(env: &[(String, String)], args: &[&str]) -> String {
    let (code, out, err) = tool(env, args);
    assert_eq!(code, 0, "epochwal {args:?}: exit {code}\n{out}\n{err}");
    out
}

/// Checks `tail` text lines against the records written: epoch, step,
/// loss, val_loss and every metric, and that exactly `best` is marked.
fn check_tail_text(out: &str, refs: &Reference, seqs: &[u64], best: u64) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), seqs.len(), "{out}");
    for (line, &seq) in lines.iter().zip(seqs) {
        let r = &refs.records[seq as usize - 1];
        let want = format!(
            "seq={seq} epoch={} step={} loss={:.6} val_loss={:.6} acc={} tokens={} ",
            r["epoch"],
            r["step"],
            r["loss"].as_f64().unwrap(),
            r["val_loss"].as_f64().unwrap(),
            r["metrics"]["acc"],
            r["metrics"]["tokens"],
        );
        assert!(line.starts_with(&want), "want {want:?}, got {line:?}");
        assert_eq!(line.ends_with(" best"), seq == best, "{line}");
    }
}

/// Checks `tail --json` lines: figures and the metrics object.
fn check_tail_json(out: &str, refs: &Reference, seqs: &[u64]) {
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), seqs.len(), "{out}");
    for (row, &seq) in rows.iter().zip(seqs) {
        let r = &refs.records[seq as usize - 1];
        assert_eq!(row["sequence"], seq, "{row}");
        assert_eq!(row["epoch"], r["epoch"], "{row}");
        assert_eq!(row["step"], r["step"], "{row}");
        assert_eq!(row["loss"].as_f64(), r["loss"].as_f64(), "{row}");
        assert_eq!(row["val_loss"].as_f64(), r["val_loss"].as_f64(), "{row}");
        assert_eq!(row["metrics"], r["metrics"], "{row}");
        assert_eq!(row["intact"], true, "{row}");
    }
}

/// Checks `inspect`'s text of the newest record (`seq`): the general
/// header, and a table row for every tensor the writer saved whose dtype
/// column holds the tensor's dtype.
fn check_inspect_text(out: &str, refs: &Reference, seq: u64) {
    let r = &refs.records[seq as usize - 1];
    assert!(
        out.contains(&format!("record        sequence {seq} in ")),
        "{out}"
    );
    assert!(out.contains("kind          general"), "{out}");
    assert!(
        out.contains(&format!("epoch         {} (step_in_epoch 0)", r["epoch"])),
        "{out}"
    );
    assert!(
        out.contains(&format!("global step   {}", r["step"])),
        "{out}"
    );
    assert!(
        out.contains(&format!("validation    loss {}", r["val_loss"])),
        "{out}"
    );
    let metrics_line = out
        .lines()
        .find(|l| l.starts_with("metrics "))
        .unwrap_or_else(|| panic!("no metrics line:\n{out}"));
    let metrics: serde_json::Value =
        serde_json::from_str(metrics_line["metrics".len()..].trim()).unwrap();
    assert_eq!(metrics, r["metrics"], "{out}");
    assert!(out.contains("param_groups  ["), "{out}");
    let mut lines = out.lines().skip_while(|l| !l.starts_with("tensor "));
    let head: Vec<&str> = lines
        .next()
        .expect("a tensor table")
        .split_whitespace()
        .collect();
    assert_eq!(
        head,
        ["tensor", "shape", "dtype", "bytes", "min", "max", "mean", "l2_norm"],
        "{out}"
    );
    // The shape column holds spaces ("[3, 5]"): the dtype is the third
    // cell from the end of the shape's "]".
    let rows: BTreeMap<&str, &str> = lines
        .map(|l| {
            let name = l.split_whitespace().next().unwrap();
            let after_shape = &l[l.find(']').unwrap() + 1..];
            (name, after_shape.split_whitespace().next().unwrap())
        })
        .collect();
    for (name, dtype) in &refs.dtypes {
        assert_eq!(
            rows.get(name.as_str()),
            Some(&dtype.as_str()),
            "dtype column of {name}:\n{out}"
        );
    }
    assert_eq!(rows.get("rng.torch"), Some(&"U8"), "{out}");
    // Every CPU dtype appears.
    for dtype in [
        "F32", "F16", "F64", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
    ] {
        assert!(rows.values().any(|d| *d == dtype), "no {dtype} row:\n{out}");
    }
}

/// Checks `inspect --json` dtypes against the writer's.
fn check_inspect_json(out: &str, refs: &Reference, seq: u64) {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    assert_eq!(v["kind"], "general");
    assert_eq!(v["sequence"], seq);
    let dtypes: BTreeMap<String, String> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, dtype) in &refs.dtypes {
        assert_eq!(dtypes.get(name), Some(dtype), "{name} in {out}");
    }
}

/// The dtypes and metadata of a safetensors file's header.
fn safetensors_header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

/// `export SOURCE` twice (model only, and with the optimizer) into `out`,
/// the files' dtypes checked against the writer's, then README's block
/// run in `out`: model and optimizer bit-equal to the writer's.
fn check_export(
    env: &[(String, String)],
    source: &str,
    out: &Path,
    ref_base: &Path,
    refs: &Reference,
) {
    std::fs::create_dir_all(out).unwrap();
    let model = out.join("model.safetensors");
    let full = out.join("full.safetensors");
    tool_ok(env, &["export", source, "-o", &s(&model)]);
    tool_ok(
        env,
        &["export", source, "-o", &s(&full), "--with-optimizer"],
    );
    let header = safetensors_header(&full);
    let model_only = safetensors_header(&model);
    for (name, dtype) in &refs.dtypes {
        let key = name.strip_prefix("model.").unwrap_or(name);
        assert_eq!(header[key]["dtype"], dtype.as_str(), "{key} in {header}");
        if name.starts_with("model.") {
            assert_eq!(model_only[key]["dtype"], dtype.as_str(), "{key}");
        } else {
            assert!(
                model_only.get(key).is_none(),
                "{key} in the model-only file"
            );
        }
    }
    let meta = &header["__metadata__"];
    assert_eq!(meta["kind"], "general", "{meta}");
    let newest = refs.records.last().unwrap();
    assert_eq!(meta["epoch"], newest["epoch"].to_string(), "{meta}");
    if !imports("safetensors", "README's export block") {
        return;
    }
    let snippet = out.join("readme_export.py");
    std::fs::write(&snippet, readme_block("readme-export-general")).unwrap();
    let o = run_ok(
        "torch_tools.py",
        &["check-export", &s(out), &s(ref_base), &s(&snippet)],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("export ok"));
}

/// `epochwal tensorboard SOURCE -o OUT`, read back with TensorBoard's own
/// reader (`tb_events.py`): one point per record at its step, with the
/// record's loss and val_loss (float32, as event files hold them).
fn check_tensorboard(env: &[(String, String)], source: &str, out: &Path, refs: &Reference) {
    if !imports("tensorboard", "the tensorboard check") {
        return;
    }
    tool_ok(env, &["tensorboard", source, "-o", &s(out)]);
    let o = command("tb_events.py").arg(out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let points: Vec<(u64, f64, f64)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["events"].as_array().unwrap().clone())
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["values"]["loss/train"].as_f64().unwrap(),
                e["values"]["loss/validation"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, f64, f64)> = refs
        .records
        .iter()
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["loss"].as_f64().unwrap(),
                r["val_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(points, want, "{v}");
}

#[test]
fn tail_inspect_export_and_verify_read_general_records() {
    if !available("tail_inspect_export_and_verify_read_general_records") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let ref_base = tmp.path().join("ref");
    run_ok("torch_tools.py", &["write", &s(&log), &s(&ref_base), "5"]);
    let refs = reference(&ref_base);
    let dir = s(&log);

    // tail: val_loss 0.75, 0.25, 0.5, 0.125, 0.625: record 4 is the best.
    check_tail_text(&tool_ok(&[], &["tail", &dir]), &refs, &[1, 2, 3, 4, 5], 4);
    check_tail_json(
        &tool_ok(&[], &["tail", &dir, "--json", "-n", "3"]),
        &refs,
        &[3, 4, 5],
    );

    check_inspect_text(&tool_ok(&[], &["inspect", &dir]), &refs, 5);
    check_inspect_json(&tool_ok(&[], &["inspect", &dir, "--json"]), &refs, 5);
    let best = tool_ok(&[], &["inspect", &dir, "--best", "--json"]);
    let best: serde_json::Value = serde_json::from_str(&best).unwrap();
    assert_eq!(best["sequence"], 4, "{best}");

    check_export(&[], &dir, &tmp.path().join("export"), &ref_base, &refs);
    // The package keys the optimizer state by index, as torch does: the
    // names layout (the trainer's) is refused rather than ignored.
    let names = tmp.path().join("names.safetensors");
    let (code, out, err) = tool(
        &[],
        &[
            "export",
            &dir,
            "-o",
            &s(&names),
            "--with-optimizer",
            "--optimizer-layout",
            "names",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("--optimizer-layout names"), "{err}");
    assert!(!names.exists());
    check_tensorboard(&[], &dir, &tmp.path().join("tb"), &refs);

    let clean = tool_ok(&[], &["verify", &dir]);
    assert!(clean.contains("records      5 good, 0 damaged"), "{clean}");
    assert!(
        clean.contains("recovery     would resume from sequence 5 (epoch 5, step 50"),
        "{clean}"
    );
    assert!(clean.contains("result       clean"), "{clean}");

    // A payload byte of the newest record flipped.
    let newest: serde_json::Value =
        serde_json::from_str(&tool_ok(&[], &["inspect", &dir, "--json"])).unwrap();
    let segment = newest["segment_path"].as_str().unwrap().to_string();
    let at = newest["offset"].as_u64().unwrap() + 4096 + 1000;
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (code, out, err) = tool(&[], &["verify", &dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("records      4 good, 1 damaged"), "{out}");
    let damage: Vec<&str> = out.lines().filter(|l| l.starts_with("DAMAGE")).collect();
    assert_eq!(damage.len(), 1, "{out}");
    assert!(
        damage[0].contains(&segment)
            && damage[0].contains("record 5")
            && damage[0].contains("checksum"),
        "{out}"
    );
    assert!(
        out.contains("recovery     would resume from sequence 4 (epoch 4, step 40"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&tool(&[], &["verify", &dir, "--json"]).1).unwrap();
    assert_eq!(json["recovery"]["sequence"], 4, "{json}");
    // The other readers pass over it too.
    let inspect: serde_json::Value =
        serde_json::from_str(&tool_ok(&[], &["inspect", &dir, "--json"])).unwrap();
    assert_eq!(inspect["sequence"], 4);
    let tail = tool_ok(&[], &["tail", &dir, "-n", "1"]);
    assert!(
        tail.starts_with("seq=5 ") && tail.contains("DAMAGED: ") && tail.contains("checksum"),
        "{tail}"
    );
}

/// An optimizer whose state holds an integer per parameter: `export
/// --with-optimizer` refuses, naming the values, and writes nothing; the
/// model alone is exported.
#[test]
fn export_refuses_an_optimizer_state_it_cannot_carry() {
    if !available("export_refuses_an_optimizer_state_it_cannot_carry") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    run_ok("torch_tools.py", &["write-counting", &s(&log)]);
    let full = tmp.path().join("full.safetensors");
    let (code, out, err) = tool(
        &[],
        &["export", &s(&log), "-o", &s(&full), "--with-optimizer"],
    );
    assert_eq!(code, 1, "{out}{err}");
    for needle in [
        "record 1",
        "optimizer.state.0.calls (1)",
        "optimizer.state.5.calls (1)",
        "without --with-optimizer",
        "load_latest",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(!err.contains("momentum_buffer"), "{err}");
    assert!(!full.exists(), "nothing written");
    let model = tmp.path().join("model.safetensors");
    tool_ok(&[], &["export", &s(&log), "-o", &s(&model)]);
    assert!(safetensors_header(&model).get("a.weight").is_some());
}

#[test]
fn tail_follow_shows_the_records_a_live_python_writer_appends() {
    if !available("tail_follow_shows_the_records_a_live_python_writer_appends") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let mut writer = command("torch_tools.py")
        .args(["live", &s(&log)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Said::of(writer.stdout.take().unwrap());
    let expect = |want: &str| assert_eq!(said.next(want), want);
    expect("durable 1");
    let text = Follower::spawn(&log, &[]);
    let json = Follower::spawn(&log, &["--json"]);
    let first = text.next_line();
    assert!(
        first.starts_with(
            "seq=1 epoch=1 step=10 loss=1.875000 val_loss=0.750000 acc=0.5625 tokens=1000 "
        ),
        "{first}"
    );
    assert_eq!(json.next_json()["metrics"]["acc"], 0.5625);
    writer.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    expect("durable 2");
    let second = text.next_line();
    assert!(
        second.starts_with(
            "seq=2 epoch=2 step=20 loss=1.750000 val_loss=0.250000 acc=0.625 tokens=2000 "
        ),
        "{second}"
    );
    let row = json.next_json();
    assert_eq!(row["sequence"], 2, "{row}");
    assert_eq!(
        row["metrics"],
        serde_json::json!({"acc": 0.625, "tokens": 2000}),
        "{row}"
    );
    drop(writer.stdin.take());
    assert!(writer.wait().unwrap().success());
}

#[test]
fn replicated_general_records_are_read_on_the_url_pulled_and_restored() {
    if !available("replicated_general_records_are_read_on_the_url_pulled_and_restored") {
        return;
    }
    let Some(server) = S3Server::start() else {
        return;
    };
    let env = server.env();
    let url = server.url("torch");
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let ref_base = tmp.path().join("ref");
    run_ok_env(
        "torch_tools.py",
        &["write", &s(&log), &s(&ref_base), "3", &url],
        &env,
    );
    let refs = reference(&ref_base);
    let keys = server.record_keys("torch");
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(server.pointer("torch").unwrap()["sequence"], 3);

    // Readers on the URL. val_loss 0.75, 0.25, 0.5: record 2 is the best.
    check_tail_text(&tool_ok(&env, &["tail", &url]), &refs, &[1, 2, 3], 2);
    check_tail_json(&tool_ok(&env, &["tail", &url, "--json"]), &refs, &[1, 2, 3]);
    check_inspect_text(&tool_ok(&env, &["inspect", &url]), &refs, 3);
    check_inspect_json(&tool_ok(&env, &["inspect", &url, "--json"]), &refs, 3);
    let verify = tool_ok(&env, &["verify", &url]);
    assert!(verify.contains("clean"), "{verify}");
    check_export(&env, &url, &tmp.path().join("export"), &ref_base, &refs);
    check_tensorboard(&env, &url, &tmp.path().join("tb"), &refs);
    // tail -f on the URL: the records so far, with their metrics.
    let follow = Follower::spawn_env(Path::new(&url), &["--json"], &env);
    let rows: Vec<String> = (0..3).map(|_| follow.next_line()).collect();
    check_tail_json(&rows.join("\n"), &refs, &[1, 2, 3]);
    drop(follow);

    // pull, then the package loads the pulled log bit for bit.
    let pulled = tmp.path().join("pulled");
    let (code, out, err) = tool(&env, &["pull", &url, &s(&pulled)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("restored record 3 (epoch 3, step 30)"),
        "{err}"
    );
    let verify = tool_ok(&[], &["verify", &s(&pulled)]);
    assert!(verify.contains("result       clean"), "{verify}");
    let o = run_ok("torch_tools.py", &["load", &s(&pulled), &s(&ref_base)]);
    let restored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(restored["epoch"], 3, "{restored}");
    assert_eq!(restored["metrics"], refs.records[2]["metrics"]);

    // A Checkpointer with replicate on an empty directory restores from
    // the remote first.
    let empty = tmp.path().join("new machine");
    let o = run_ok_env(
        "torch_tools.py",
        &["load", &s(&empty), &s(&ref_base), &url],
        &env,
    );
    let restored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(restored["epoch"], 3, "{restored}");
    assert_eq!(restored["val_loss"], 0.5, "{restored}");
    // Created private, as every log directory (a directory of the default
    // mode would be 0755 under the usual umask 022).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&empty), 0o700);
    for e in std::fs::read_dir(&empty).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}
