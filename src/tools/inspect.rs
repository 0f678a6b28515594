//! `epochwal inspect DIR [--seq N | --epoch E | --best] [--json]`: one record in
//! detail, read zero-copy from a read-only mapping (statistics are computed
//! over the `&[f32]` views of the archive; nothing is deserialized).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::{file_name, format_unix_ns, human_bytes, select_source, Selection, TensorStats};
use crate::state::DTYPE_F32;
use crate::wal::{MappedRecord, RecordHeader};

/// Arguments of `epochwal inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The log directory, or the URL of a remote copy
    /// (`s3://bucket/prefix`, `file:///path`).
    pub dir: PathBuf,
    /// The record with this sequence number (default: the newest valid one).
    #[arg(long, value_name = "N", conflicts_with_all = ["epoch", "best"])]
    pub seq: Option<u64>,
    /// The newest valid record of this epoch.
    #[arg(long, value_name = "E", conflicts_with = "best")]
    pub epoch: Option<u64>,
    /// Show the record with the lowest validation loss (ties: the older).
    #[arg(long)]
    pub best: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn stats_json(s: &TensorStats) -> serde_json::Value {
    json!({
        "min": s.min,
        "max": s.max,
        "mean": s.mean,
        "l2_norm": s.l2_norm,
        "non_finite": s.non_finite,
    })
}

/// Runs `epochwal inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<i32> {
    if !super::is_url(&args.dir) && crate::job::is_job_dir(&args.dir) {
        if args.seq.is_some() || args.epoch.is_some() || args.best {
            return Err(super::UsageError(format!(
                "{}: is a job directory (one log per rank); --seq, --epoch and --best select a record of one rank's log, e.g. `epochwal inspect {} --seq N`",
                args.dir.display(),
                args.dir.join(crate::job::rank_dir_name(0)).display()
            ))
            .into());
        }
        return super::job::show(&args.dir, args.json);
    }
    let selected = select_source(
        &args.dir,
        Selection::from_flags(args.seq, args.epoch, args.best),
    )?;
    if !selected.skipped.is_empty() {
        eprintln!(
            "epochwal: note: passed over {} damaged or unreadable item(s) to reach this record (run `epochwal verify {}`):",
            selected.skipped.len(),
            args.dir.display()
        );
        for s in &selected.skipped {
            eprintln!("  {s}");
        }
    }
    let rec = &selected.record;
    if rec.state().is_general() {
        return inspect_general(rec, args.json);
    }
    let h = rec.header();
    let st = rec.state();
    let opt = &st.optimizer;

    let tensors: Vec<_> = st
        .model
        .tensors
        .iter()
        .map(|t| {
            let v = t.values();
            (t.name.as_str(), t.dims(), v.len(), TensorStats::of(v))
        })
        .collect();
    let moments: Vec<_> = opt
        .params
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.step.to_native(),
                p.exp_avg().len(),
                TensorStats::of(p.exp_avg()),
                TensorStats::of(p.exp_avg_sq()),
            )
        })
        .collect();

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let remote = super::is_url(&args.dir);
    if args.json {
        let doc = json!({
            "sequence": h.sequence,
            "epoch": h.epoch,
            "step": h.step,
            "global_step": st.global_step.to_native(),
            "step_in_epoch": st.step_in_epoch.to_native(),
            "loss": h.loss,
            "val_loss": h.validation.map(|v| v.loss),
            "val_accuracy": h.validation.and_then(|v| v.accuracy),
            "unix_ns": h.unix_ns,
            "time": format_unix_ns(h.unix_ns),
            "segment": file_name(rec.path()),
            "segment_path": rec.path().display().to_string(),
            // A remote record object starts with its header page: the
            // offset in the segment it was uploaded from means nothing here.
            "offset": (!remote).then_some(h.offset),
            "payload_bytes": h.payload_len,
            "payload_checksum": format!("{:016x}", h.payload_checksum),
            "schema_version": rec.schema_version(),
            "train_time_ms": st.train_time_ms.to_native(),
            "model": {
                "description": st.model.description.as_str(),
                "fingerprint": format!("{:016x}", st.model.fingerprint.to_native()),
            },
            "optimizer": {
                "kind": "Adam",
                "lr": opt.lr.to_native(),
                "betas": [opt.beta1.to_native(), opt.beta2.to_native()],
                "eps": opt.eps.to_native(),
                "weight_decay": opt.weight_decay.to_native(),
            },
            "data": {
                "seed": st.data.seed.to_native(),
                "dataset_len": st.data.dataset_len.to_native(),
            },
            "tensors": tensors.iter().map(|(name, shape, n, s)| {
                let mut v = json!({
                    "name": name,
                    "shape": shape,
                    "dtype": DTYPE_F32,
                    "bytes": n * 4,
                });
                if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), stats_json(s)) {
                    obj.extend(more);
                }
                v
            }).collect::<Vec<_>>(),
            "optimizer_state": moments.iter().map(|(name, step, n, a, b)| json!({
                "name": name,
                "step": step,
                "numel": n,
                "exp_avg": stats_json(a),
                "exp_avg_sq": stats_json(b),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        return Ok(0);
    }

    let w = &mut out;
    let mut text = || -> io::Result<()> {
        if remote {
            writeln!(
                w,
                "record        sequence {} in {}",
                h.sequence,
                rec.path().display()
            )?;
        } else {
            writeln!(
                w,
                "record        sequence {} in {} at offset {}",
                h.sequence,
                rec.path().display(),
                h.offset
            )?;
        }
        writeln!(
            w,
            "epoch         {} (step_in_epoch {})",
            h.epoch,
            st.step_in_epoch.to_native()
        )?;
        writeln!(w, "global step   {}", h.step)?;
        writeln!(w, "loss          {}", h.loss)?;
        match h.validation {
            Some(v) => match v.accuracy {
                Some(a) => writeln!(
                    w,
                    "validation    loss {}, accuracy {:.2}%",
                    v.loss,
                    100.0 * a
                )?,
                None => writeln!(w, "validation    loss {}", v.loss)?,
            },
            None => writeln!(
                w,
                "validation    none (mid-epoch record, or no validation split)"
            )?,
        }
        write_record_frame(w, h, rec)?;
        writeln!(w, "model         {}", st.model.description)?;
        writeln!(w, "fingerprint   {:016x}", st.model.fingerprint.to_native())?;
        writeln!(
            w,
            "optimizer     Adam lr={} betas=({}, {}) eps={} weight_decay={}",
            opt.lr.to_native(),
            opt.beta1.to_native(),
            opt.beta2.to_native(),
            opt.eps.to_native(),
            opt.weight_decay.to_native()
        )?;
        writeln!(
            w,
            "data          seed {}, {} examples",
            st.data.seed.to_native(),
            st.data.dataset_len.to_native()
        )?;
        writeln!(w, "train time    {} ms", st.train_time_ms.to_native())?;
        writeln!(w)?;

        let rows: Vec<[String; 8]> = tensors
            .iter()
            .map(|(name, shape, n, s)| {
                [
                    name.to_string(),
                    shape_text(shape),
                    DTYPE_F32.to_string(),
                    (n * 4).to_string(),
                    format!("{:.6e}", s.min),
                    format!("{:.6e}", s.max),
                    format!("{:.6e}", s.mean),
                    format!("{:.6e}", s.l2_norm),
                ]
            })
            .collect();
        write_table(
            w,
            &[
                "tensor", "shape", "dtype", "bytes", "min", "max", "mean", "l2_norm",
            ],
            &rows,
        )?;
        writeln!(w)?;
        let rows: Vec<[String; 8]> = moments
            .iter()
            .flat_map(|(name, step, n, a, b)| {
                [("exp_avg", a), ("exp_avg_sq", b)].map(|(which, s)| {
                    [
                        format!("{name}.{which}"),
                        step.to_string(),
                        (n * 4).to_string(),
                        format!("{:.6e}", s.min),
                        format!("{:.6e}", s.max),
                        format!("{:.6e}", s.mean),
                        format!("{:.6e}", s.l2_norm),
                        s.non_finite.to_string(),
                    ]
                })
            })
            .collect();
        write_table(
            w,
            &[
                "adam state",
                "step",
                "bytes",
                "min",
                "max",
                "mean",
                "l2_norm",
                "non_finite",
            ],
            &rows,
        )
    };
    text().context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(0)
}

/// `inspect` of a general record (the Python package's): header figures,
/// the job, every tensor with its dtype and statistics, the document.
fn inspect_general(rec: &MappedRecord, as_json: bool) -> anyhow::Result<i32> {
    let h = rec.header();
    let st = rec.state();
    let g = &st.general;
    let meta: serde_json::Value = serde_json::from_str(g.meta.as_str()).unwrap_or_default();
    let tensors: Vec<_> = g
        .tensors
        .iter()
        .map(|t| {
            let stats = super::general::values_f32(t).map(|v| TensorStats::of(&v));
            (
                t.name.as_str(),
                t.dtype.as_str(),
                t.dims(),
                t.bytes().len(),
                stats,
            )
        })
        .collect();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if as_json {
        let doc = json!({
            "kind": "general",
            "sequence": h.sequence,
            "epoch": h.epoch,
            "step": h.step,
            "global_step": st.global_step.to_native(),
            "step_in_epoch": st.step_in_epoch.to_native(),
            "loss": h.loss,
            "val_loss": h.validation.map(|v| v.loss),
            "unix_ns": h.unix_ns,
            "time": format_unix_ns(h.unix_ns),
            "segment": file_name(rec.path()),
            "segment_path": rec.path().display().to_string(),
            "offset": h.offset,
            "payload_bytes": h.payload_len,
            "payload_checksum": format!("{:016x}", h.payload_checksum),
            "schema_version": rec.schema_version(),
            "train_time_ms": st.train_time_ms.to_native(),
            "job": {
                "job_id": g.job_id.as_str(),
                "world_size": g.world_size.to_native(),
                "rank": g.rank.to_native(),
            },
            "tensors": tensors.iter().map(|(name, dtype, shape, bytes, s)| {
                let mut v = json!({"name": name, "shape": shape, "dtype": dtype, "bytes": bytes});
                if let (Some(obj), Some(serde_json::Value::Object(more))) =
                    (v.as_object_mut(), s.as_ref().map(stats_json))
                {
                    obj.extend(more);
                }
                v
            }).collect::<Vec<_>>(),
            "meta": meta,
        });
        writeln!(out, "{doc}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        return Ok(0);
    }
    let w = &mut out;
    let mut text = || -> io::Result<()> {
        writeln!(
            w,
            "record        sequence {} in {} at offset {}",
            h.sequence,
            rec.path().display(),
            h.offset
        )?;
        writeln!(
            w,
            "kind          general (named tensors and a JSON document)"
        )?;
        writeln!(
            w,
            "epoch         {} (step_in_epoch {})",
            h.epoch,
            st.step_in_epoch.to_native()
        )?;
        writeln!(w, "global step   {}", h.step)?;
        writeln!(w, "loss          {}", h.loss)?;
        match h.validation {
            Some(v) => writeln!(w, "validation    loss {}", v.loss)?,
            None => writeln!(w, "validation    none")?,
        }
        write_record_frame(w, h, rec)?;
        if g.world_size.to_native() > 0 {
            writeln!(
                w,
                "job           {} rank {} of {}",
                g.job_id.as_str(),
                g.rank.to_native(),
                g.world_size.to_native()
            )?;
        }
        if let Some(metrics) = meta.get("metrics").filter(|m| !m.is_null()) {
            writeln!(w, "metrics       {metrics}")?;
        }
        if let Some(groups) = meta.pointer("/optimizer/param_groups") {
            writeln!(w, "param_groups  {groups}")?;
        }
        writeln!(w, "train time    {} ms", st.train_time_ms.to_native())?;
        writeln!(w)?;
        let na = || "-".to_string();
        let rows: Vec<[String; 8]> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes, s)| {
                [
                    name.to_string(),
                    shape_text(shape),
                    dtype.to_string(),
                    bytes.to_string(),
                    s.as_ref().map_or_else(na, |s| format!("{:.6e}", s.min)),
                    s.as_ref().map_or_else(na, |s| format!("{:.6e}", s.max)),
                    s.as_ref().map_or_else(na, |s| format!("{:.6e}", s.mean)),
                    s.as_ref().map_or_else(na, |s| format!("{:.6e}", s.l2_norm)),
                ]
            })
            .collect();
        write_table(
            w,
            &[
                "tensor", "shape", "dtype", "bytes", "min", "max", "mean", "l2_norm",
            ],
            &rows,
        )
    };
    text().context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(0)
}

/// The lines every kind of record shares in `inspect`'s text: when it was
/// written, its payload's size and checksum, and its schema version.
fn write_record_frame(w: &mut impl Write, h: &RecordHeader, rec: &MappedRecord) -> io::Result<()> {
    writeln!(
        w,
        "time          {} ({} ns)",
        format_unix_ns(h.unix_ns),
        h.unix_ns
    )?;
    writeln!(
        w,
        "payload       {} bytes ({}), checksum xxh3-64 {:016x}",
        h.payload_len,
        human_bytes(h.payload_len),
        h.payload_checksum
    )?;
    writeln!(w, "schema        version {}", rec.schema_version())
}

/// Writes an aligned table: text columns left, number columns right.
fn write_table<const N: usize>(
    w: &mut impl Write,
    head: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut width = head.map(str::len);
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.len());
        }
    }
    let line = |w: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i == 0 {
                s.push_str(&format!("{cell:<width$}", width = width[i]));
            } else {
                s.push_str(&format!("{cell:>width$}", width = width[i]));
            }
        }
        writeln!(w, "{}", s.trim_end())
    };
    line(w, head)?;
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(w, &cells)?;
    }
    Ok(())
}
