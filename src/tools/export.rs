//! `epochwal export DIR [--seq N | --epoch E] -o FILE.safetensors
//! [--with-optimizer]`: one record as a safetensors file PyTorch loads
//! directly, and [`load_safetensors_weights`], its inverse for
//! `epochwal run --init-from FILE.safetensors`.
//!
//! # Names in the exported file
//!
//! Every tensor is dtype `F32`, little-endian, row-major, with the shape it
//! has in the record.
//!
//! | tensor name                                  | shape            | what |
//! |----------------------------------------------|------------------|------|
//! | `<param>` (e.g. `layers.0.weight`)           | as in the model  | the parameter, under its PyTorch `state_dict` name |
//! | `optimizer.state.<param>.exp_avg`            | same as `<param>`| Adam first moment (only with `--with-optimizer`) |
//! | `optimizer.state.<param>.exp_avg_sq`         | same as `<param>`| Adam second moment (only with `--with-optimizer`) |
//! | `optimizer.state.<param>.step`               | `[]` (0-dim)     | Adam step count as F32, like torch's `step` tensor (only with `--with-optimizer`) |
//!
//! So `model.load_state_dict(safetensors.torch.load_file(FILE))` works on a
//! file exported without `--with-optimizer` (with it, filter out the keys
//! starting with `optimizer.state.` first, or pass `strict=False`).
//!
//! Metadata (the safetensors `__metadata__` string map):
//! `format` (`pt`), `epoch`, `global_step`, `step_in_epoch`, `sequence`,
//! `loss`, `lr`, `betas` (`"<beta1>,<beta2>"`), `eps`, `weight_decay`,
//! `fingerprint` (16 hex digits), `description`, `schema_version`,
//! `source_log_dir`, `source_segment`, `source_offset`. Numbers are written
//! with Rust's shortest round-trip formatting.
//!
//! The file is written atomically: to `FILE.tmp-<pid>` in the same
//! directory, fsynced, renamed onto `FILE`, then the directory is fsynced. An
//! interrupted export leaves either the old `FILE` or the new one, never a
//! torn file under that name. `FILE` must be a new path or a regular file:
//! a device, a named pipe, a socket, a directory or a symbolic link is
//! refused (the rename would replace it, turning `/dev/null` into a file);
//! `-o -` writes the file to standard output instead, for pipes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{f32_bytes, open_reader, select_record, Selection};

/// Prefix of the optimizer-state tensor names.
pub const OPTIMIZER_PREFIX: &str = "optimizer.state.";
/// Suffix of the Adam first-moment tensor of a parameter.
pub const OPTIMIZER_SUFFIX_EXP_AVG: &str = ".exp_avg";
/// Suffix of the Adam second-moment tensor of a parameter.
pub const OPTIMIZER_SUFFIX_EXP_AVG_SQ: &str = ".exp_avg_sq";
/// Suffix of the (0-dim, F32) Adam step tensor of a parameter.
pub const OPTIMIZER_SUFFIX_STEP: &str = ".step";

/// Arguments of `epochwal export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The log directory.
    pub dir: PathBuf,
    /// Export the record with this sequence number (default: the newest
    /// valid record).
    #[arg(long, value_name = "N", conflicts_with = "epoch")]
    pub seq: Option<u64>,
    /// Export the newest valid record of this epoch.
    #[arg(long, value_name = "E")]
    pub epoch: Option<u64>,
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
    /// Also export the Adam state as `optimizer.state.<param>.exp_avg`,
    /// `.exp_avg_sq` and `.step`.
    #[arg(long)]
    pub with_optimizer: bool,
}

/// Runs `epochwal export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<i32> {
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            bail!("-o -: standard output is a terminal; redirect it to a file or a pipe");
        }
    } else {
        check_target(&args.output)?;
    }
    let reader = open_reader(&args.dir)?;
    let selected = select_record(&reader, Selection::from_flags(args.seq, args.epoch))?;
    for s in &selected.skipped {
        eprintln!("epochwal: note: passed over damaged item: {s}");
    }
    let rec = &selected.record;
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
        for (p, step) in opt.params.iter().zip(&steps) {
            let name = p.name.as_str();
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
                let full = format!("{OPTIMIZER_PREFIX}{name}{suffix}");
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
            let full = format!("{OPTIMIZER_PREFIX}{name}{OPTIMIZER_SUFFIX_STEP}");
            views.push((full, TensorView::new(Dtype::F32, Vec::new(), step)?));
        }
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

    let source_dir = std::fs::canonicalize(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let metadata: HashMap<String, String> = [
        ("format", "pt".to_string()),
        ("epoch", h.epoch.to_string()),
        ("global_step", st.global_step.to_native().to_string()),
        ("step_in_epoch", st.step_in_epoch.to_native().to_string()),
        ("sequence", h.sequence.to_string()),
        ("loss", h.loss.to_string()),
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
        ("source_log_dir", source_dir.display().to_string()),
        ("source_segment", rec.path().display().to_string()),
        ("source_offset", h.offset.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let n = views.len();
    if to_stdout {
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| anyhow::anyhow!("-o -: encoding safetensors: {e}"))?;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|_| out.flush())
            .context("-o -: writing to standard output")?;
    } else {
        write_atomically(&args.output, |tmp| {
            safetensors::serialize_to_file(views, Some(metadata), tmp)
                .map_err(|e| anyhow::anyhow!("{}: writing the export: {e}", args.output.display()))
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

/// Reads the model weights of a safetensors file (for example one written by
/// `epochwal export`) as `(name, shape, values)` in file order.
///
/// Tensors named `optimizer.state.*` (the Adam state `export
/// --with-optimizer` adds) are left out: they are not weights. Every other
/// tensor must be dtype `F32`; any other dtype, an unreadable file or a file
/// that is not valid safetensors is an error naming the file and the cause.
/// Names and shapes are not checked against any model here (the trainer's
/// `init_from` does that).
pub fn load_safetensors_weights(path: &Path) -> anyhow::Result<Vec<WeightTensor>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read the weights file", path.display()))?;
    let invalid = |e: safetensors::SafeTensorError| {
        anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let mut out = Vec::new();
    for name in meta.offset_keys() {
        let view = st.tensor(&name).map_err(invalid)?;
        if name.starts_with(OPTIMIZER_PREFIX) {
            continue;
        }
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} has dtype {:?}; only F32 weights can be loaded (convert with `tensor.float()` before saving)",
                path.display(),
                view.dtype()
            );
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        out.push((name.to_string(), shape, values));
    }
    Ok(out)
}
