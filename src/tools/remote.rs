//! The operator tools on a remote copy (`s3://bucket/prefix`, `gs://`,
//! `az://`, `file:///path`) and `epochwal pull`.
//!
//! A remote record is downloaded into an unnamed temporary file, mapped and
//! validated by the log's own decoder before anything reads it, exactly as a
//! local record. Credentials and endpoint come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a plain-http endpoint).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::{Selected, Selection, UsageError};
use crate::replicate::{
    block_on, check_against_pointer, newest_valid, restore_into, Cause, PointerState, Remote,
    RemoteObject, RemoteUrl, Restored,
};
use crate::wal::LogOptions;

/// True when a tool's `DIR` argument is a URL of a remote copy.
pub fn is_url(p: &Path) -> bool {
    p.to_str().is_some_and(RemoteUrl::looks_like_url)
}

/// Opens the remote named by a tool's argument; a malformed URL is a usage
/// error.
pub(crate) fn open(url: &Path) -> anyhow::Result<Remote> {
    let text = url.to_str().unwrap_or_default();
    Remote::open(text, false).map_err(|e| UsageError(e.to_string()).into())
}

/// Reads the pointer; a remote without one is an error that says so.
pub(crate) fn pointer(remote: &Remote) -> anyhow::Result<PointerState> {
    block_on(remote.read_pointer())??.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no pointer object (HEAD): nothing has been replicated there yet",
            remote.url()
        )
    })
}

/// [`super::select_record`] for a remote copy.
pub(crate) fn select(url: &Path, sel: Selection) -> anyhow::Result<Selected> {
    let remote = open(url)?;
    let tmp = std::env::temp_dir();
    let state = pointer(&remote)?;
    let log_id = state.pointer.log_id().map_err(anyhow::Error::msg)?;
    block_on(async {
        match sel {
            Selection::Newest => {
                let found = newest_valid(&remote, Some(state), &tmp)
                    .await?
                    .expect("a pointer was read");
                Ok(Selected {
                    record: found.fetched.record,
                    skipped: found.skipped.iter().map(|e| e.to_string()).collect(),
                })
            }
            Selection::Sequence(seq) => {
                let (records, _) = remote.list_records(log_id).await?;
                let Some(obj) = records.iter().find(|r| r.sequence == seq) else {
                    anyhow::bail!(
                        "{}: no record object with sequence {seq} (the remote holds {})",
                        remote.url(),
                        super::describe_seqs(records.iter().map(|r| r.sequence).collect())
                    );
                };
                let fetched = remote.fetch_record(&obj.path, &tmp).await?;
                Ok(Selected {
                    record: fetched.record,
                    skipped: Vec::new(),
                })
            }
            Selection::Best => {
                // Validation figures are in the record headers: read every
                // header (a range read each), then take the best that
                // validates.
                let (records, _) = remote.list_records(log_id).await?;
                let mut ranked = Vec::new();
                for obj in &records {
                    match remote.fetch_header(&obj.path).await {
                        Ok(h) => {
                            if let Some(l) = h.validation_loss() {
                                ranked.push((l, h.sequence, obj));
                            }
                        }
                        // Deleted by retention between the listing and the read.
                        Err(e) if e.cause == Cause::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                ranked.sort_by(|a, b| crate::wal::format::best_first((a.0, a.1), (b.0, b.1)));
                let objs = ranked.into_iter().map(|(_, _, o)| o);
                first_valid(&remote, objs, &tmp, "with validation figures (records get them at an epoch end when validation_fraction > 0)").await
            }
            Selection::Epoch(epoch) => {
                let (records, _) = remote.list_records(log_id).await?;
                let objs = records.iter().rev().filter(|r| r.epoch == epoch);
                first_valid(&remote, objs, &tmp, &format!("of epoch {epoch}")).await
            }
        }
    })?
}

/// The first of `objs` that validates, passing over damaged or vanished
/// ones; an error naming them (and `what` was asked for) if none does.
async fn first_valid<'a>(
    remote: &Remote,
    objs: impl Iterator<Item = &'a RemoteObject>,
    tmp: &Path,
    what: &str,
) -> anyhow::Result<Selected> {
    let mut skipped = Vec::new();
    for obj in objs {
        match remote.fetch_record(&obj.path, tmp).await {
            Ok(f) => {
                return Ok(Selected {
                    record: f.record,
                    skipped,
                })
            }
            Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => {
                skipped.push(e.to_string())
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "{}: no valid record object {what}{}",
        remote.url(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        }
    )
}

/// One damaged object.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteItem {
    /// The object's URL.
    pub object: String,
    /// Why it does not validate.
    pub reason: String,
}

/// What `verify URL` found.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteReport {
    /// The remote.
    pub url: String,
    /// The log id the pointer names.
    pub log_id: String,
    /// Sequence the pointer names.
    pub pointer_sequence: u64,
    /// Record objects that validate.
    pub good: u64,
    /// Payload bytes checked.
    pub payload_bytes: u64,
    /// Record objects that do not.
    pub damaged: Vec<RemoteItem>,
    /// Objects under the log's folder that are not record objects.
    pub others: Vec<String>,
    /// The record a restore would use (None: none validates).
    pub restore_sequence: Option<u64>,
    /// No damage anywhere, and the pointer's record validates.
    pub clean: bool,
}

/// `epochwal verify URL`: downloads and validates every record object of the
/// pointer's log, checks that the pointer names a valid one, and says which
/// record a restore would use. Exit 1 on damage.
pub(crate) fn verify(url: &Path, json: bool) -> anyhow::Result<i32> {
    let remote = open(url)?;
    let state = pointer(&remote)?;
    let p = &state.pointer;
    let log_id = p.log_id().map_err(anyhow::Error::msg)?;
    let tmp = std::env::temp_dir();
    let report = block_on(async {
        let (records, others) = remote.list_records(log_id).await?;
        let mut report = RemoteReport {
            url: remote.url().to_string(),
            log_id: p.log_id.clone(),
            pointer_sequence: p.sequence,
            good: 0,
            payload_bytes: 0,
            damaged: Vec::new(),
            others: others.iter().map(|o| remote.object_url(o)).collect(),
            restore_sequence: None,
            clean: false,
        };
        let pointed = remote.pointer_object(p);
        if !records.iter().any(|r| r.path == pointed) {
            report.damaged.push(RemoteItem {
                object: remote.object_url(&pointed),
                reason: "the pointer names this object, but it does not exist".into(),
            });
        }
        for obj in &records {
            let fetched = remote.fetch_record(&obj.path, &tmp).await;
            let fetched = if obj.path == pointed {
                fetched.and_then(|f| check_against_pointer(f, p))
            } else {
                fetched
            };
            match fetched {
                Ok(f) => {
                    report.good += 1;
                    report.payload_bytes += f.record.header().payload_len;
                    if obj.sequence <= p.sequence {
                        report.restore_sequence = report.restore_sequence.max(Some(obj.sequence));
                    }
                }
                Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => {
                    report.damaged.push(RemoteItem {
                        object: e.url.clone(),
                        reason: e.detail.clone(),
                    })
                }
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
        report.clean = report.damaged.is_empty() && report.restore_sequence == Some(p.sequence);
        Ok(report)
    })??;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
    } else {
        writeln!(out, "remote       {} (log {})", report.url, report.log_id)?;
        writeln!(
            out,
            "pointer      sequence {} (epoch {}, step {})",
            p.sequence, p.epoch, p.step
        )?;
        writeln!(
            out,
            "records      {} good, {} damaged ({} of payload checked)",
            report.good,
            report.damaged.len(),
            super::human_bytes(report.payload_bytes)
        )?;
        for d in &report.damaged {
            writeln!(out, "damaged      {}: {}", d.object, d.reason)?;
        }
        for o in &report.others {
            writeln!(out, "other        {o}: not a record object; ignored")?;
        }
        match report.restore_sequence {
            Some(s) => writeln!(out, "restore      would use sequence {s}")?,
            None => writeln!(out, "restore      no record object validates")?,
        }
        writeln!(
            out,
            "result       {}",
            if report.clean {
                "clean"
            } else {
                "DAMAGE FOUND"
            }
        )?;
    }
    out.flush().context("writing to stdout")?;
    Ok(if report.clean { 0 } else { 1 })
}

/// Arguments of `epochwal pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// The remote copy (`s3://bucket/prefix`, `file:///path`, ...).
    pub url: PathBuf,
    /// The local log directory to restore into (created if missing; must
    /// be empty or hold an older state of the same log).
    pub dir: PathBuf,
    /// Size of the segment created for the restored record (default 64 MiB;
    /// a larger record gets a segment that fits).
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
}

/// `epochwal pull URL DIR`: restore without training.
pub(crate) fn pull(args: &PullArgs) -> anyhow::Result<i32> {
    let remote = open(&args.url)?;
    let mut options = LogOptions::default();
    if let Some(b) = args.segment_bytes {
        options.segment_bytes = b;
    }
    let outcome = block_on(async {
        let state = remote.probe().await?;
        restore_into(&remote, state, &args.dir, options).await
    })??;
    match outcome {
        Restored::Record {
            header,
            remote_sequence,
            url,
            skipped,
        } => {
            for s in &skipped {
                eprintln!(
                    "epochwal: warning: damaged remote record passed over: {}: {}",
                    s.url, s.detail
                );
            }
            eprintln!(
                "epochwal: restored record {remote_sequence} (epoch {}, step {}) from {url} into {}{}",
                header.epoch,
                header.step,
                args.dir.display(),
                if header.sequence == remote_sequence {
                    String::new()
                } else {
                    format!(
                        " as sequence {} (the remote has used sequences up to {}; the log numbers after them)",
                        header.sequence,
                        header.sequence - 1
                    )
                }
            );
            Ok(0)
        }
        Restored::Renumbered {
            header,
            local_sequence,
            remote_highest,
            skipped,
        } => {
            for s in &skipped {
                eprintln!(
                    "epochwal: warning: damaged remote record passed over: {}: {}",
                    s.url, s.detail
                );
            }
            eprintln!(
                "epochwal: {} holds record {local_sequence} (epoch {}), as new as the best valid \
                 remote record, but the remote has used sequences up to {remote_highest}: copied \
                 it as sequence {}, so that the log numbers after them",
                args.dir.display(),
                header.epoch,
                header.sequence
            );
            Ok(0)
        }
        Restored::UpToDate(seq) => {
            eprintln!(
                "epochwal: {} already holds this log up to sequence {seq}; nothing to pull",
                args.dir.display()
            );
            Ok(0)
        }
        Restored::RemoteEmpty => {
            anyhow::bail!(
                "{}: no pointer object (HEAD): nothing has been replicated there yet",
                remote.url()
            )
        }
    }
}
