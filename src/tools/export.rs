//! `epochwal export DIR [--seq N | --epoch E | --best] -o FILE.safetensors
//! [--with-optimizer [--optimizer-layout torch|names]] [--with-input-norm]`:
//! one record as a safetensors file PyTorch loads directly.
//! `--init-from` reads such files back (`super::import`).
//!
//! # Names in the exported file
//!
//! Every tensor is dtype `F32`, little-endian, row-major, with the shape it
//! has in the record.
//!
//! | tensor name                           | shape             | what |
//! |---------------------------------------|-------------------|------|
//! | `<param>` (e.g. `0.weight`)           | as in the model   | the parameter, under its PyTorch `state_dict` name |
//! | `optimizer.state.<i>.exp_avg`         | same as param `i` | Adam first moment of the `i`-th parameter in `state_dict` order (`--with-optimizer`, torch layout, the default) |
//! | `optimizer.state.<i>.exp_avg_sq`      | same as param `i` | Adam second moment |
//! | `optimizer.state.<i>.step`            | `[]` (0-dim)      | Adam step count as F32, like torch's `step` tensor |
//! | `optimizer.state.<param>.…`           | as above          | the same, keyed by name (`--optimizer-layout names`) |
//! | `input_norm.mean`, `input_norm.std`   | `[input_dim]`     | the standardisation of the inputs (`--with-input-norm`, when the record has one): the model expects `(x - mean) / std` |
//! | `target_norm.mean`, `target_norm.std` | `[output_dim]`    | the standardisation of regression targets: the model predicts `(y - mean) / std` |
//!
//! Without the `--with-*` flags the file holds the model's keys only, so
//! `model.load_state_dict(safetensors.torch.load_file(FILE), strict=True)`
//! works as is. The torch layout is the default because it is what
//! `optimizer.load_state_dict` takes: torch keys the state by the
//! parameter's position, and with `param_groups` below nothing needs
//! re-keying (README, "PyTorch").
//!
//! Metadata (the safetensors `__metadata__` string map): `format` (`pt`),
//! `epoch`, `global_step`, `step_in_epoch`, `sequence`, `loss`, `val_loss` and
//! `val_accuracy` (empty when the record has none), `lr`, `betas`
//! (`"<beta1>,<beta2>"`), `eps`, `weight_decay`, `fingerprint` (16 hex
//! digits), `description`, `schema_version`, `input_norm` (`standardized` or
//! `none`), `import_sha256` (when the run was imported); with
//! `--with-optimizer`, `optimizer.param_groups`: torch's `param_groups` as
//! JSON with numeric hyperparameters. Numbers are written with Rust's
//! shortest round-trip formatting.
//!
//! # General records (the Python package's, FORMAT.md §4.5)
//!
//! Each `model.<key>` tensor is exported as `<key>` with its own dtype
//! (`BF16`, `I64`, `BOOL`, ...), so `load_state_dict(load_file(FILE),
//! strict=True)` takes the file unchanged; with `--with-optimizer` the
//! `optimizer.state.<i>.<key>` tensors follow under their names (the
//! torch layout; `--optimizer-layout names` is refused), and the
//! metadata `optimizer.param_groups` holds the record's `param_groups`
//! (tuples as lists), which `optimizer.load_state_dict` takes. An optimizer
//! whose state holds values that are not tensors (a counter, a list of
//! tensors) or whose `param_groups` hold a tensor or a non-finite float is
//! refused with `--with-optimizer`, naming each such value: the file would
//! not restore it (`Checkpointer.load_latest` does). Metadata
//! also has `kind` (`general`), `epoch`, `global_step`, `step_in_epoch`,
//! `sequence`, `loss`, `val_loss`, `schema_version`.
//!
//! The same record always gives the same bytes: no paths or times of the
//! export are written, tensors are sorted by name and the header's keys
//! (metadata included) are written in sorted order.
//!
//! The file is written atomically: to `FILE.tmp-<pid>` in the same
//! directory, fsynced, renamed onto `FILE`, then the directory is fsynced. An
//! interrupted export leaves either the old `FILE` or the new one, never a
//! torn file under that name. `FILE` must be a new path or a regular file:
//! a device, a named pipe, a socket, a directory or a symbolic link is
//! refused (the rename would replace it, turning `/dev/null` into a file);
//! `-o -` writes the file to standard output instead, for pipes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{f32_bytes, select_source, Selection};

/// Prefix of the optimizer-state tensor names.
pub const OPTIMIZER_PREFIX: &str = "optimizer.state.";
/// Suffix of the Adam first-moment tensor of a parameter.
pub const OPTIMIZER_SUFFIX_EXP_AVG: &str = ".exp_avg";
/// Suffix of the Adam second-moment tensor of a parameter.
pub const OPTIMIZER_SUFFIX_EXP_AVG_SQ: &str = ".exp_avg_sq";
/// Suffix of the (0-dim, F32) Adam step tensor of a parameter.
pub const OPTIMIZER_SUFFIX_STEP: &str = ".step";
/// Prefixes of the dataset-scaling tensors (not weights).
pub const NORM_PREFIXES: [&str; 2] = ["input_norm.", "target_norm."];
/// Metadata key of torch's `param_groups` (JSON).
pub const PARAM_GROUPS_KEY: &str = "optimizer.param_groups";

/// How the Adam state is keyed in an exported file.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptimizerLayout {
    /// `optimizer.state.<index>.*`, plus `param_groups` in the metadata:
    /// what `torch.optim.Adam.load_state_dict` takes.
    #[default]
    Torch,
    /// `optimizer.state.<param name>.*`.
    Names,
}

/// Arguments of `epochwal export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The log directory, or the URL of a remote copy
    /// (`s3://bucket/prefix`, `file:///path`).
    pub dir: PathBuf,
    /// Export the record with this sequence number (default: the newest
    /// valid record).
    #[arg(long, value_name = "N", conflicts_with_all = ["epoch", "best"])]
    pub seq: Option<u64>,
    /// Export the newest valid record of this epoch.
    #[arg(long, value_name = "E", conflicts_with = "best")]
    pub epoch: Option<u64>,
    /// Export the record with the lowest validation loss (ties: the older).
    #[arg(long)]
    pub best: bool,
    /// The .safetensors file to write: a new path, or a regular file that is
    /// replaced atomically; `-` writes to standard output. Devices, named
    /// pipes and symbolic links are refused.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    pub output: PathBuf,
    /// Also export the Adam state as `optimizer.state.<i>.exp_avg`,
    /// `.exp_avg_sq` and `.step` (see --optimizer-layout).
    #[arg(long)]
    pub with_optimizer: bool,
    /// How the Adam state is keyed: `torch` (by parameter index, with
    /// `param_groups` in the metadata; what `optimizer.load_state_dict`
    /// takes) or `names` (by parameter name).
    #[arg(long, value_enum, default_value_t = OptimizerLayout::Torch, requires = "with_optimizer")]
    pub optimizer_layout: OptimizerLayout,
    /// Also export the dataset's standardisation as `input_norm.mean`,
    /// `input_norm.std` (and `target_norm.*` for standardised targets).
    #[arg(long)]
    pub with_input_norm: bool,
}

/// Runs `epochwal export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<i32> {
    if !super::is_url(&args.dir) && crate::job::is_job_dir(&args.dir) {
        return Err(super::UsageError(format!(
            "{}: is a job directory (one log per rank); export one rank's log, e.g. `epochwal export {} -o rank0.safetensors`",
            args.dir.display(),
            args.dir.join(crate::job::rank_dir_name(0)).display()
        ))
        .into());
    }
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            bail!("-o -: standard output is a terminal; redirect it to a file or a pipe");
        }
    } else {
        check_target(&args.output)?;
    }
    let selected = select_source(
        &args.dir,
        Selection::from_flags(args.seq, args.epoch, args.best),
    )?;
    for s in &selected.skipped {
        eprintln!("epochwal: note: passed over damaged item: {s}");
    }
    let rec = &selected.record;
    if rec.state().is_general() {
        let (views, metadata) = general_views(args, rec)?;
        return write_export(args, rec, views, metadata);
    }
    let h = rec.header();
    let st = rec.state();
    let opt = &st.optimizer;

    // Step counts as 0-dim F32 tensors need bytes that outlive the views.
    let steps: Vec<[u8; 4]> = opt
        .params
        .iter()
        .map(|p| (p.step.to_native() as f32).to_le_bytes())
        .collect();

    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    let mut shapes: HashMap<&str, Vec<usize>> = HashMap::new();
    for t in st.model.tensors.iter() {
        let shape = usize_shape(&t.dims(), t.name.as_str())?;
        let view = TensorView::new(Dtype::F32, shape.clone(), f32_bytes(t.values())).with_context(
            || {
                format!(
                    "{}: tensor {} of record {}: values do not match the shape {:?}",
                    rec.path().display(),
                    t.name,
                    h.sequence,
                    t.dims()
                )
            },
        )?;
        shapes.insert(t.name.as_str(), shape);
        views.push((t.name.to_string(), view));
    }
    if args.with_optimizer {
        for (i, (p, step)) in opt.params.iter().zip(&steps).enumerate() {
            let name = p.name.as_str();
            let key = match args.optimizer_layout {
                OptimizerLayout::Torch => i.to_string(),
                OptimizerLayout::Names => name.to_string(),
            };
            // A moment has the shape of its parameter; one without a
            // parameter of that name (not written by epochwal) stays flat.
            let shape = shapes
                .get(name)
                .cloned()
                .unwrap_or_else(|| vec![p.exp_avg().len()]);
            for (suffix, values) in [
                (OPTIMIZER_SUFFIX_EXP_AVG, p.exp_avg()),
                (OPTIMIZER_SUFFIX_EXP_AVG_SQ, p.exp_avg_sq()),
            ] {
                let full = format!("{OPTIMIZER_PREFIX}{key}{suffix}");
                let view = TensorView::new(Dtype::F32, shape.clone(), f32_bytes(values))
                    .with_context(|| {
                        format!(
                            "{}: record {}: {full} has {} values, its parameter's shape is {shape:?}",
                            rec.path().display(),
                            h.sequence,
                            values.len()
                        )
                    })?;
                views.push((full, view));
            }
            let full = format!("{OPTIMIZER_PREFIX}{key}{OPTIMIZER_SUFFIX_STEP}");
            views.push((full, TensorView::new(Dtype::F32, Vec::new(), step)?));
        }
    }
    let sc = &st.scaling;
    let standardized = !sc.input_mean.is_empty() || !sc.target_mean.is_empty();
    if args.with_input_norm {
        for (name, values) in [
            ("input_norm.mean", &sc.input_mean),
            ("input_norm.std", &sc.input_std),
            ("target_norm.mean", &sc.target_mean),
            ("target_norm.std", &sc.target_std),
        ] {
            if values.is_empty() {
                continue;
            }
            let values = crate::state::as_f32_slice(values.as_slice());
            let view = TensorView::new(Dtype::F32, vec![values.len()], f32_bytes(values))?;
            views.push((name.to_string(), view));
        }
    } else if standardized {
        eprintln!(
            "epochwal: note: the model was trained on standardised data (input_norm.mean/std{}); \
             add --with-input-norm to export the scaling, and apply (x - mean) / std to raw inputs",
            if sc.target_mean.is_empty() {
                ""
            } else {
                ", target_norm.mean/std"
            }
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &views {
        if !seen.insert(name.as_str()) {
            bail!(
                "{}: record {} has two tensors named {name}; cannot export",
                rec.path().display(),
                h.sequence
            );
        }
    }

    let mut metadata: HashMap<String, String> = [
        ("format", "pt".to_string()),
        ("epoch", h.epoch.to_string()),
        ("global_step", st.global_step.to_native().to_string()),
        ("step_in_epoch", st.step_in_epoch.to_native().to_string()),
        ("sequence", h.sequence.to_string()),
        ("loss", h.loss.to_string()),
        (
            "val_loss",
            h.validation.map_or(String::new(), |v| v.loss.to_string()),
        ),
        (
            "val_accuracy",
            h.validation
                .and_then(|v| v.accuracy)
                .map_or(String::new(), |a| a.to_string()),
        ),
        ("lr", opt.lr.to_native().to_string()),
        (
            "betas",
            format!("{},{}", opt.beta1.to_native(), opt.beta2.to_native()),
        ),
        ("eps", opt.eps.to_native().to_string()),
        ("weight_decay", opt.weight_decay.to_native().to_string()),
        (
            "fingerprint",
            format!("{:016x}", st.model.fingerprint.to_native()),
        ),
        ("description", st.model.description.to_string()),
        ("schema_version", rec.schema_version().to_string()),
        (
            "input_norm",
            if sc.input_mean.is_empty() {
                "none"
            } else {
                "standardized"
            }
            .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if st.import.sha256 != [0; 32] {
        metadata.insert(
            "import_sha256".into(),
            super::import::hex(&st.import.sha256),
        );
    }
    if args.with_optimizer && args.optimizer_layout == OptimizerLayout::Torch {
        metadata.insert(PARAM_GROUPS_KEY.into(), param_groups_json(opt));
    }

    write_export(args, rec, views, metadata)
}

/// Tensors to export, by name.
type NamedViews<'a> = Vec<(String, TensorView<'a>)>;

/// The views of a general record (written by the Python package): the
/// model's `state_dict` tensors (`model.<key>`) under their keys, with their
/// own dtypes, and with `--with-optimizer` the optimizer's tensors
/// (`optimizer.state.<i>.<key>`, as the record names them) plus the
/// `param_groups` of its document, so that `optimizer.load_state_dict`
/// takes them (FORMAT.md §4.5).
fn general_views<'a>(
    args: &ExportArgs,
    rec: &'a crate::wal::MappedRecord,
) -> anyhow::Result<(NamedViews<'a>, HashMap<String, String>)> {
    let h = rec.header();
    let st = rec.state();
    if args.with_input_norm {
        eprintln!("epochwal: note: --with-input-norm: a record of the Python package has no input scaling");
    }
    if args.with_optimizer && args.optimizer_layout == OptimizerLayout::Names {
        bail!(
            "{}: record {} was written by the Python package, which keys the optimizer state \
             by parameter index as torch does (optimizer.state.<i>.<key>); \
             --optimizer-layout names applies to records of `epochwal run` only: leave it out",
            rec.path().display(),
            h.sequence
        );
    }
    let mut views = Vec::new();
    for t in st.general.tensors.iter() {
        let name = t.name.as_str();
        let key = if let Some(key) = name.strip_prefix("model.") {
            key.to_string()
        } else if args.with_optimizer && name.starts_with(OPTIMIZER_PREFIX) {
            name.to_string()
        } else {
            continue;
        };
        let dtype = safetensors_dtype(t.dtype.as_str()).with_context(|| {
            format!(
                "{}: record {}: tensor {name}",
                rec.path().display(),
                h.sequence
            )
        })?;
        let shape = usize_shape(&t.dims(), name)?;
        let view = TensorView::new(dtype, shape, t.bytes()).with_context(|| {
            format!(
                "{}: record {}: tensor {name} does not match its shape",
                rec.path().display(),
                h.sequence
            )
        })?;
        views.push((key, view));
    }
    let meta: serde_json::Value =
        serde_json::from_str(st.general.meta.as_str()).unwrap_or_default();
    let mut metadata: HashMap<String, String> = [
        ("format", "pt".to_string()),
        ("kind", "general".to_string()),
        ("epoch", h.epoch.to_string()),
        ("global_step", st.global_step.to_native().to_string()),
        ("step_in_epoch", st.step_in_epoch.to_native().to_string()),
        ("sequence", h.sequence.to_string()),
        ("loss", h.loss.to_string()),
        (
            "val_loss",
            h.validation.map_or(String::new(), |v| v.loss.to_string()),
        ),
        ("schema_version", rec.schema_version().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if args.with_optimizer {
        let groups = meta
            .pointer("/optimizer/param_groups")
            .map(plain_json)
            .with_context(|| {
                format!(
                    "{}: record {} holds no optimizer state to export",
                    rec.path().display(),
                    h.sequence
                )
            })?;
        let left = optimizer_leftovers(&meta["optimizer"]);
        if !left.is_empty() {
            bail!(
                "{}: record {}: the optimizer's state holds what a safetensors file cannot carry: \
                 {}; export without --with-optimizer for the model alone, and restore the \
                 optimizer with Checkpointer.load_latest, which restores all of it",
                rec.path().display(),
                h.sequence,
                left.join(", ")
            );
        }
        metadata.insert(PARAM_GROUPS_KEY.into(), groups.to_string());
    }
    Ok((views, metadata))
}

/// What an export of a general record's optimizer document (FORMAT.md
/// §4.5) would lose, by path: state values that are not tensors (an
/// integer counter, a list of tensors), and values in `param_groups` that
/// plain JSON cannot hold (a tensor, a non-finite float, a dict with
/// non-string keys). Empty when the file carries the optimizer exactly:
/// its state as `optimizer.state.<i>.<key>` tensors, its `param_groups`
/// as JSON (tuples as lists).
fn optimizer_leftovers(opt: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    fn marker(v: &Value) -> Option<&str> {
        match v {
            Value::Object(o) if o.len() == 1 => o.keys().next().map(String::as_str),
            _ => None,
        }
    }
    fn describe(v: &Value) -> String {
        let text = v.to_string();
        if text.len() > 40 {
            format!("{}...", text.chars().take(37).collect::<String>())
        } else {
            text
        }
    }
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        match (marker(v), v) {
            (Some("__tuple__"), Value::Object(o)) => walk(&o["__tuple__"], path, out),
            (Some("__tensor__" | "__ndarray__" | "__float__" | "__dict__"), _) => {
                out.push(format!("{path} ({})", describe(v)))
            }
            (_, Value::Array(a)) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}.{i}"), out);
                }
            }
            (_, Value::Object(o)) => {
                for (k, x) in o {
                    walk(x, &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    // The state is keyed by parameter index: {"__dict__": [[i, {...}], ...]}
    // ({} before the first step).
    let state: Vec<(String, &Value)> = match opt.get("state") {
        Some(v @ Value::Object(o)) if marker(v) == Some("__dict__") => o["__dict__"]
            .as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .filter_map(|p| Some((p.get(0)?.to_string(), p.get(1)?)))
                    .collect()
            })
            .unwrap_or_default(),
        Some(Value::Object(o)) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
        _ => Vec::new(),
    };
    for (i, per) in state {
        match per {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if marker(v) != Some("__tensor__") {
                        out.push(format!("optimizer.state.{i}.{k} ({})", describe(v)));
                    }
                }
            }
            other => out.push(format!("optimizer.state.{i} ({})", describe(other))),
        }
    }
    if let Some(groups) = opt.get("param_groups") {
        walk(groups, "optimizer.param_groups", &mut out);
    }
    out
}

/// The safetensors dtype of a general tensor's dtype name (FORMAT.md §4.3
/// uses safetensors' names).
fn safetensors_dtype(name: &str) -> anyhow::Result<Dtype> {
    Ok(match name {
        "BOOL" => Dtype::BOOL,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "F8_E4M3" => Dtype::F8_E4M3,
        "F8_E5M2" => Dtype::F8_E5M2,
        "I16" => Dtype::I16,
        "U16" => Dtype::U16,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "I32" => Dtype::I32,
        "U32" => Dtype::U32,
        "F32" => Dtype::F32,
        "I64" => Dtype::I64,
        "U64" => Dtype::U64,
        "F64" => Dtype::F64,
        other => bail!("dtype {other} has no safetensors type"),
    })
}

/// A value of a general record's document in plain JSON: tuples
/// (`{"__tuple__": [...]}`, FORMAT.md §4.5) become lists, which torch's
/// optimizers unpack like tuples.
fn plain_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(a) => Value::Array(a.iter().map(plain_json).collect()),
        Value::Object(o) => match o.get("__tuple__") {
            Some(inner) if o.len() == 1 => plain_json(inner),
            _ => Value::Object(o.iter().map(|(k, v)| (k.clone(), plain_json(v))).collect()),
        },
        other => other.clone(),
    }
}

/// Encodes `views` with `metadata` and writes them to the export target.
fn write_export(
    args: &ExportArgs,
    rec: &crate::wal::MappedRecord,
    views: Vec<(String, TensorView<'_>)>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<i32> {
    let h = rec.header();
    let to_stdout = args.output.as_os_str() == "-";
    let n = views.len();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| anyhow::anyhow!("{}: encoding safetensors: {e}", args.output.display()))?;
    let bytes = with_sorted_header(bytes)?;
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|_| out.flush())
            .context("-o -: writing to standard output")?;
    } else {
        write_atomically(&args.output, |tmp| {
            std::fs::write(tmp, &bytes)
                .with_context(|| format!("{}: writing the export", args.output.display()))
        })?;
    }
    eprintln!(
        "epochwal: exported record {} (epoch {}, step {}) from {}: {n} tensors to {}",
        h.sequence,
        h.epoch,
        h.step,
        rec.path().display(),
        if to_stdout {
            "standard output".to_string()
        } else {
            args.output.display().to_string()
        }
    );
    Ok(0)
}

/// Refuses an export target that is not a regular file or a new path: the
/// atomic rename would replace a device, a pipe or a symbolic link with a
/// regular file (and a directory cannot be replaced).
fn check_target(dest: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(dest)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            bail!(
                "{}: is a symbolic link (to {to}); export writes only to a regular file or a new \
                 path and would replace the link: give the real path, or `-o -` to write to \
                 standard output",
                dest.display()
            )
        }
        Ok(m) => bail!(
            "{}: is {}; export writes only to a regular file or a new path (the atomic rename \
             would replace it): use `-o -` to write to standard output",
            dest.display(),
            super::describe_kind(&m)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("{}: cannot check the export target", dest.display()))
        }
    }
}

/// torch's `Adam.state_dict()["param_groups"]` for one group holding every
/// parameter, as JSON (keys sorted). The flags torch adds with their
/// defaults are included so that the dict equals what torch itself saves
/// for `Adam(model.parameters(), lr=..., betas=..., eps=..., weight_decay=...)`.
pub fn param_groups_json(opt: &crate::state::ArchivedAdamState) -> String {
    let group = serde_json::json!({
        "lr": opt.lr.to_native(),
        "betas": [opt.beta1.to_native(), opt.beta2.to_native()],
        "eps": opt.eps.to_native(),
        "weight_decay": opt.weight_decay.to_native(),
        "amsgrad": false,
        "maximize": false,
        "foreach": null,
        "capturable": false,
        "differentiable": false,
        "fused": null,
        "decoupled_weight_decay": false,
        "params": (0..opt.params.len()).collect::<Vec<_>>(),
    });
    serde_json::to_string(&[group]).expect("JSON of numbers")
}

/// Rewrites a safetensors file's JSON header with its keys (and the
/// metadata's keys) in sorted order: the crate writes the metadata from a
/// `HashMap`, whose order changes from run to run. The header keeps its
/// length (the same entries, reordered), so the data offsets stay valid.
fn with_sorted_header(mut bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = &bytes[8..8 + n];
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("re-reading the safetensors header")?;
    let mut sorted = String::from("{");
    for (i, (key, value)) in parsed.iter().enumerate() {
        if i > 0 {
            sorted.push(',');
        }
        sorted.push_str(&serde_json::to_string(key)?);
        sorted.push(':');
        let value = if key == "__metadata__" {
            let meta: BTreeMap<String, String> = serde_json::from_value(value.clone())?;
            serde_json::to_string(&meta)?
        } else {
            serde_json::to_string(value)?
        };
        sorted.push_str(&value);
    }
    sorted.push('}');
    anyhow::ensure!(
        sorted.len() <= n,
        "sorted safetensors header is longer than the original ({} > {n})",
        sorted.len()
    );
    let out = &mut bytes[8..8 + n];
    out[..sorted.len()].copy_from_slice(sorted.as_bytes());
    out[sorted.len()..].fill(b' ');
    Ok(bytes)
}

fn usize_shape(dims: &[u64], name: &str) -> anyhow::Result<Vec<usize>> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d).with_context(|| format!("tensor {name}: dimension {d} too large"))
        })
        .collect()
}

/// Writes `dest` through `write(tmp)` onto `dest.tmp-<pid>` in the same
/// directory, fsyncs it, renames it onto `dest` and fsyncs the directory.
/// The temporary file is removed if anything fails.
fn write_atomically(
    dest: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = dest
        .file_name()
        .with_context(|| format!("{}: not a file name", dest.display()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "{}: cannot write the export: directory {} does not exist",
            dest.display(),
            parent.display()
        );
    }
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let result = (|| -> anyhow::Result<()> {
        write(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: fsync of the new file", dest.display()))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("{}: cannot put the new file in place", dest.display()))?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("{}: fsync of the directory", parent.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One weight tensor read from a file: name, shape (outermost first), values
/// in row-major order.
pub type WeightTensor = (String, Vec<u64>, Vec<f32>);
