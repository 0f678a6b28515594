//! `tail`, `inspect` and `verify` given a job directory (one log per rank,
//! FORMAT.md §8): each rank's newest intact record, and the common step the
//! job would resume from. `verify` also checks every rank's log as it checks
//! one log, and fails when a rank's log is damaged (naming the damage that
//! lies beyond the common step) or when the ranks hold no common step.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::job::{self, Decision, RankListing};

/// Every rank's listing, by rank; the job's world size (the newest record's,
/// else the number of rank directories).
fn listings(dir: &Path) -> anyhow::Result<(Vec<RankListing>, u32)> {
    let ranks =
        job::rank_dirs(dir).with_context(|| format!("{}: cannot list the job", dir.display()))?;
    let mut out = Vec::new();
    for (rank, path) in &ranks {
        out.push(job::list_rank(path, *rank).map_err(anyhow::Error::msg)?);
    }
    let world_size = out
        .iter()
        .filter_map(|l| l.newest())
        .map(|r| r.world_size)
        .max()
        .unwrap_or(ranks.len() as u32)
        .max(ranks.len() as u32);
    // A rank directory missing from the middle counts as an empty log, so
    // that the error names it.
    let mut dense = Vec::new();
    for r in 0..world_size {
        match out.iter().find(|l| l.rank == r) {
            Some(l) => dense.push(l.clone()),
            None => dense.push(RankListing {
                rank: r,
                dir: dir.join(job::rank_dir_name(r)),
                ..RankListing::default()
            }),
        }
    }
    Ok((dense, world_size))
}

/// The job's decision, as text for operators.
fn decision_text(listings: &[RankListing], world_size: u32) -> (Option<u64>, String) {
    match job::choose(listings, world_size) {
        Ok(Decision::Resume(c)) => {
            let seqs: Vec<String> = c
                .records
                .iter()
                .map(|r| format!("rank {} seq {}", r.rank, r.seq))
                .collect();
            (
                Some(c.step),
                format!("common step {} ({})", c.step, seqs.join(", ")),
            )
        }
        Ok(Decision::Fresh { .. }) => (
            None,
            "no common step: the job would start from the beginning".into(),
        ),
        Err(e) => (None, format!("no common step: {e}")),
    }
}

fn rank_json(l: &RankListing) -> serde_json::Value {
    json!({
        "rank": l.rank,
        "dir": l.dir.display().to_string(),
        "newest": l.newest().map(|r| json!({
            "sequence": r.seq, "epoch": r.epoch, "step": r.step, "job_id": r.job_id,
            "world_size": r.world_size, "generation": r.branch.generation,
            "segment": r.segment.display().to_string(),
        })),
        "records": l.records.len(),
        "damaged": l.damaged.iter().map(|d| json!({
            "sequence": d.seq, "step": d.step, "segment": d.segment.display().to_string(),
            "offset": d.offset, "reason": d.cause,
        })).collect::<Vec<_>>(),
    })
}

/// `tail` and `inspect` on a job directory: each rank's newest record and
/// the common step. Exit 0.
pub fn show(dir: &Path, json_out: bool) -> anyhow::Result<i32> {
    let (listings, world_size) = listings(dir)?;
    let (common, text) = decision_text(&listings, world_size);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if json_out {
        let doc = json!({
            "job": dir.display().to_string(),
            "world_size": world_size,
            "ranks": listings.iter().map(rank_json).collect::<Vec<_>>(),
            "common_step": common,
            "decision": text,
        });
        writeln!(out, "{doc}").context("writing to stdout")?;
    } else {
        writeln!(out, "job {} ({world_size} ranks)", dir.display()).context("writing to stdout")?;
        let (lines, _) = job::summary(&listings);
        for l in lines {
            writeln!(out, "  {l}").context("writing to stdout")?;
        }
        writeln!(out, "  {text}").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(0)
}

/// `verify` on a job directory: every rank's log checked as `verify` checks
/// one, each rank's newest record, the common step. Exit 0 when every log is
/// clean and the ranks hold a common step (or no record at all), 1 on damage
/// or without a common step, 3 on I/O errors.
pub fn verify(dir: &Path, json_out: bool) -> anyhow::Result<i32> {
    let (listings, world_size) = listings(dir)?;
    let (common, text) = decision_text(&listings, world_size);
    let mut code = 0;
    let mut reports = Vec::new();
    for l in &listings {
        if !l.dir.exists() {
            code = code.max(1);
            reports.push(None);
            continue;
        }
        let report = super::verify_log(&l.dir)?;
        if !report.io_errors.is_empty() {
            code = 3;
        } else if !report.clean {
            code = code.max(1);
        }
        reports.push(Some(report));
    }
    let any_record = listings
        .iter()
        .any(|l| !l.records.is_empty() || !l.damaged.is_empty());
    if common.is_none() && any_record {
        code = code.max(1);
    }
    // Damage beyond the common step: records newer than it that are damaged.
    let beyond: Vec<String> = listings
        .iter()
        .flat_map(|l| {
            l.damaged
                .iter()
                .filter(|d| common.is_none_or(|c| d.step > c))
                .map(move |d| {
                    format!(
                        "rank {}: record {} (step {}) in {} at offset {}: {}",
                        l.rank,
                        d.seq,
                        d.step,
                        d.segment.display(),
                        d.offset,
                        d.cause
                    )
                })
        })
        .collect();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if json_out {
        let doc = json!({
            "job": dir.display().to_string(),
            "world_size": world_size,
            "clean": code == 0,
            "ranks": listings.iter().zip(&reports).map(|(l, r)| {
                let mut v = rank_json(l);
                v["verify"] = match r {
                    Some(r) => serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
                    None => serde_json::Value::Null,
                };
                v
            }).collect::<Vec<_>>(),
            "common_step": common,
            "decision": text,
            "damaged_beyond_common_step": beyond,
        });
        serde_json::to_writer_pretty(&mut out, &doc).context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
    } else {
        writeln!(out, "job {} ({world_size} ranks)", dir.display()).context("writing to stdout")?;
        let (lines, _) = job::summary(&listings);
        for ((l, line), r) in listings.iter().zip(lines).zip(&reports) {
            let state = match r {
                None => "no log directory".to_string(),
                Some(r) if !r.io_errors.is_empty() => {
                    format!("{} I/O error(s)", r.io_errors.len())
                }
                Some(r) if r.clean => format!("clean, {} record(s)", r.records_good),
                Some(r) => format!(
                    "DAMAGED: {} damaged record(s), {} finding(s)",
                    r.records_damaged,
                    r.damage.len()
                ),
            };
            writeln!(out, "  {line}  [{state}]").context("writing to stdout")?;
            if let Some(r) = r {
                for d in r.damage.iter().chain(&r.io_errors) {
                    writeln!(out, "    rank {}: {d}", l.rank).context("writing to stdout")?;
                }
            }
        }
        writeln!(out, "  {text}").context("writing to stdout")?;
        for b in &beyond {
            writeln!(out, "  damaged beyond the common step: {b}").context("writing to stdout")?;
        }
        writeln!(
            out,
            "{}",
            match code {
                0 => "job clean",
                3 => "job: I/O errors (see above)",
                _ => "job DAMAGED",
            }
        )
        .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(code)
}
