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
    block_on, check_against_pointer, list_newest_log, newest_listed, newest_valid, restore_into,
    Cause, Head, ListedLog, PointerState, Remote, RemoteObject, RemoteUrl, Restored, SetHead,
};
use crate::wal::LogOptions;

/// True when a tool's `DIR` argument is a URL of a remote copy.
pub fn is_url(p: &Path) -> bool {
    p.to_str().is_some_and(RemoteUrl::looks_like_url)
}

/// Opens the remote named by a tool's argument; a malformed URL is a usage
/// error, a malformed environment (an endpoint variable) an error naming
/// the variable. Plain http follows `AWS_ALLOW_HTTP`.
pub(crate) fn open(url: &Path) -> anyhow::Result<Remote> {
    let text = url.to_str().unwrap_or_default();
    Remote::open(text, None).map_err(|e| match e.cause {
        Cause::Other => UsageError(e.to_string()).into(),
        _ => anyhow::Error::from(e),
    })
}

/// The log a tool reads on a remote copy.
pub(crate) struct Source {
    /// Its id.
    pub log_id: u128,
    /// The pointer, when it is there and valid.
    pub pointer: Option<PointerState>,
    /// Why there is no valid pointer (missing, or damaged and why).
    pub problem: Option<String>,
    /// The listing the log was chosen from (no valid pointer).
    pub listed: Option<ListedLog>,
}

/// Reads the pointer; when it is missing or damaged but record objects
/// exist, the newest log a listing of the prefix finds (with a warning on
/// stderr: a lost pointer never makes a remote look empty). An error when
/// the bucket does not exist, or when there is neither a pointer nor a
/// record object ("nothing has been replicated there yet").
pub(crate) fn source(remote: &Remote) -> anyhow::Result<Source> {
    let head = block_on(remote.read_head())??;
    let problem = match head {
        Head::Valid(p) => {
            return Ok(Source {
                log_id: p.pointer.log_id().map_err(anyhow::Error::msg)?,
                pointer: Some(p),
                problem: None,
                listed: None,
            })
        }
        Head::Missing => "missing".to_string(),
        Head::Damaged { detail, .. } => format!("DAMAGED ({detail})"),
    };
    let listed = block_on(async {
        // A missing bucket is said as such, not as an empty remote.
        remote.check_bucket().await?;
        list_newest_log(remote, None).await
    })??;
    let Some(listed) = listed else {
        // A multi-rank job's URL holds `SET` and one prefix per rank
        // (FORMAT.md §7.10), not a log: say so, and where the logs are.
        if let Ok(Ok(found)) = block_on(crate::replicate::read_set(remote)) {
            let what = match found {
                SetHead::Valid(set, _) => Some(format!(
                    "its set pointer names step {} of a job of {} ranks (job id {:?})",
                    set.step, set.world_size, set.job_id
                )),
                SetHead::Damaged(detail, _) => {
                    Some(format!("its set pointer is damaged ({detail})"))
                }
                SetHead::Missing => None,
            };
            if let Some(what) = what {
                return Err(UsageError(format!(
                    "{url}: is the URL of a multi-rank job, not of one log: {what}. The tools read \
                     one rank's log at a time ({url}/{rank0}, {url}/rank-00001, ...); \
                     `epochwal pull {url} DIR` restores every rank's record of that step \
                     into DIR/rank-NNNNN, and `epochwal tail|inspect|verify DIR` then shows \
                     the set",
                    url = remote.url().trim_end_matches('/'),
                    rank0 = crate::replicate::rank_dir(0),
                ))
                .into());
            }
        }
        anyhow::bail!(
            "{}: the pointer object (HEAD) is {problem} and there is no record object: nothing \
             has been replicated there yet",
            remote.url()
        );
    };
    eprintln!(
        "epochwal: warning: the pointer {} is {problem}; reading log {:032x} from a listing of \
         the prefix ({} record object(s), newest sequence {}){}",
        remote.pointer_url(),
        listed.log_id,
        listed.records.len(),
        listed.highest_sequence(),
        if listed.others.is_empty() {
            String::new()
        } else {
            format!("; other logs there: {}", listed.others.join(", "))
        }
    );
    Ok(Source {
        log_id: listed.log_id,
        pointer: None,
        problem: Some(problem),
        listed: Some(listed),
    })
}

/// [`super::select_record`] for a remote copy.
pub(crate) fn select(url: &Path, sel: Selection) -> anyhow::Result<Selected> {
    let remote = open(url)?;
    let tmp = std::env::temp_dir();
    let src = source(&remote)?;
    let log_id = src.log_id;
    block_on(async {
        match sel {
            Selection::Newest => {
                let found = match (src.pointer, &src.listed) {
                    (Some(state), _) => newest_valid(&remote, Some(state), &tmp)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("{}: no pointer", remote.url()))?,
                    (None, Some(listed)) => newest_listed(&remote, listed, &tmp).await?,
                    (None, None) => anyhow::bail!("{}: no pointer", remote.url()),
                };
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
    /// The log id the pointer names (or, without a valid pointer, the log
    /// a listing of the prefix found).
    pub log_id: String,
    /// Sequence the pointer names (null: no valid pointer).
    pub pointer_sequence: Option<u64>,
    /// Why there is no valid pointer: "missing" or "DAMAGED (why)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer_problem: Option<String>,
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
    let src = source(&remote)?;
    let state = src.pointer.clone();
    let p = state.as_ref().map(|s| &s.pointer);
    let log_id = src.log_id;
    let tmp = std::env::temp_dir();
    let report = block_on(async {
        let (records, others) = remote.list_records(log_id).await?;
        let mut report = RemoteReport {
            url: remote.url().to_string(),
            log_id: format!("{log_id:032x}"),
            pointer_sequence: p.map(|p| p.sequence),
            pointer_problem: src.problem.clone(),
            good: 0,
            payload_bytes: 0,
            damaged: Vec::new(),
            others: others.iter().map(|o| remote.object_url(o)).collect(),
            restore_sequence: None,
            clean: false,
        };
        if let Some(problem) = &src.problem {
            report.damaged.push(RemoteItem {
                object: remote.pointer_url(),
                reason: format!(
                    "the pointer object is {problem}; a restore uses the newest record object \
                     that validates"
                ),
            });
        }
        let pointed = p.map(|p| remote.pointer_object(p));
        if let Some(pointed) = &pointed {
            if !records.iter().any(|r| r.path == *pointed) {
                report.damaged.push(RemoteItem {
                    object: remote.object_url(pointed),
                    reason: "the pointer names this object, but it does not exist".into(),
                });
            }
        }
        for obj in &records {
            let fetched = remote.fetch_record(&obj.path, &tmp).await;
            let fetched = match p {
                Some(p) if pointed.as_ref() == Some(&obj.path) => {
                    fetched.and_then(|f| check_against_pointer(f, p))
                }
                _ => fetched,
            };
            match fetched {
                Ok(f) => {
                    report.good += 1;
                    report.payload_bytes += f.record.header().payload_len;
                    if p.is_none_or(|p| obj.sequence <= p.sequence) {
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
        report.clean = report.damaged.is_empty()
            && p.is_some_and(|p| report.restore_sequence == Some(p.sequence));
        Ok(report)
    })??;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
    } else {
        writeln!(out, "remote       {} (log {})", report.url, report.log_id)?;
        match (p, &report.pointer_problem) {
            (Some(p), _) => writeln!(
                out,
                "pointer      sequence {} (epoch {}, step {})",
                p.sequence, p.epoch, p.step
            )?,
            (None, Some(problem)) => writeln!(out, "pointer      {problem}")?,
            (None, None) => {}
        }
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
    /// Restore the record with this sequence instead of the newest (DIR
    /// must then hold no log).
    #[arg(long, value_name = "N", conflicts_with_all = ["epoch", "best"])]
    pub seq: Option<u64>,
    /// Restore the newest valid record of this epoch (DIR must hold no log).
    #[arg(long, value_name = "E", conflicts_with = "best")]
    pub epoch: Option<u64>,
    /// Restore the record with the lowest validation loss (DIR must hold
    /// no log).
    #[arg(long)]
    pub best: bool,
}

/// `pull --seq/--epoch/--best`: the chosen record into a directory that
/// holds no log (an older record made the newest of an existing log would
/// turn training back silently).
fn pull_chosen(args: &PullArgs, sel: Selection, options: LogOptions) -> anyhow::Result<i32> {
    if args.dir.exists() {
        let local = crate::wal::recover(&args.dir)?;
        if let Some(id) = local.log_id {
            anyhow::bail!(
                "{}: holds log {id:032x} already; pull --seq, --epoch or --best restores into an \
                 empty or new directory only (the chosen record would otherwise become the newest \
                 of that log)",
                args.dir.display()
            );
        }
    }
    let selected = select(&args.url, sel)?;
    for s in &selected.skipped {
        eprintln!("epochwal: warning: damaged remote record passed over: {s}");
    }
    let remote = open(&args.url)?;
    let mut header = *selected.record.header();
    let remote_sequence = header.sequence;
    // Numbered after every sequence the remote has used for this log
    // (FORMAT.md §7.7), so that no sequence names two records.
    let highest = block_on(async {
        let (records, _) = remote.list_records(header.log_id).await?;
        let from_pointer = match remote.read_head().await? {
            Head::Valid(p) if p.pointer.log_id().ok() == Some(header.log_id) => p.pointer.sequence,
            _ => 0,
        };
        Ok::<_, crate::replicate::RemoteError>(
            records
                .iter()
                .map(|r| r.sequence)
                .fold(from_pointer, u64::max),
        )
    })??;
    if remote_sequence < highest {
        header.sequence = highest + 1;
    }
    let (mut log, _) = crate::wal::Log::open(&args.dir, options)?;
    let durable = log.import(&header, selected.record.payload())?;
    eprintln!(
        "epochwal: restored record {remote_sequence} (epoch {}, step {}) from {} into {}{}",
        header.epoch,
        header.step,
        selected.record.path().display(),
        args.dir.display(),
        renumbered(durable.header.sequence, remote_sequence)
    );
    Ok(0)
}

fn renumbered(local: u64, remote: u64) -> String {
    if local == remote {
        String::new()
    } else {
        format!(
            " as sequence {local} (the remote has used sequences up to {}; the log numbers after them)",
            local - 1
        )
    }
}

/// `pull` of a multi-rank job's URL: rank r's record named by `P/SET`
/// into `DIR/rank-<r>` for every rank (FORMAT.md §7.10), each a directory
/// that holds no log.
fn pull_job(
    args: &PullArgs,
    set: &crate::replicate::SetPointer,
    options: LogOptions,
) -> anyhow::Result<i32> {
    let url = args.url.to_str().unwrap_or_default();
    for rank in 0..set.world_size {
        let dir = args.dir.join(crate::replicate::rank_dir(rank));
        let got = block_on(crate::replicate::restore_from_set(
            url,
            None,
            rank,
            set.world_size,
            &dir,
            options,
        ))?
        .map_err(anyhow::Error::msg)?;
        let Some(r) = got else {
            anyhow::bail!("{url}/SET: disappeared while rank {rank} was restored");
        };
        if r.set.step != set.step {
            anyhow::bail!(
                "{url}/SET: moved from step {} to step {} while the ranks were pulled (the job \
                 still runs): ranks below {rank} are of step {}; pull into an empty directory again",
                set.step,
                r.set.step,
                set.step
            );
        }
        eprintln!(
            "epochwal: rank {rank}: restored step {} (epoch {}) from {} into {}{}",
            r.set.step,
            r.durable.header.epoch,
            r.object_url,
            dir.display(),
            renumbered(
                r.durable.header.sequence,
                r.set.ranks[rank as usize].sequence
            )
        );
    }
    Ok(0)
}

/// `epochwal pull URL DIR`: restore without training.
pub(crate) fn pull(args: &PullArgs) -> anyhow::Result<i32> {
    let remote = open(&args.url)?;
    let mut options = LogOptions::default();
    if let Some(b) = args.segment_bytes {
        options.segment_bytes = b;
    }
    let sel = Selection::from_flags(args.seq, args.epoch, args.best);
    if sel != Selection::Newest {
        return pull_chosen(args, sel, options);
    }
    // A job's URL (`P/SET`, no `P/HEAD`): every rank, into DIR/rank-<r>.
    let job = block_on(async {
        match remote.probe().await? {
            Head::Missing => crate::replicate::read_set(&remote).await,
            _ => Ok(crate::replicate::SetHead::Missing),
        }
    })??;
    if let crate::replicate::SetHead::Valid(set, _) = job {
        return pull_job(args, &set, options);
    }
    let outcome = block_on(async {
        let head = remote.probe().await?;
        restore_into(&remote, head, &args.dir, options).await
    })??;
    match outcome {
        Restored::Record {
            header,
            remote_sequence,
            url,
            skipped,
            by_listing,
            dropped,
        } => {
            for s in &skipped {
                eprintln!(
                    "epochwal: warning: damaged remote record passed over: {}: {}",
                    s.url, s.detail
                );
            }
            if let Some((problem, others)) = by_listing {
                eprintln!(
                    "epochwal: WARNING: the pointer {} is {problem}: restored the newest record \
                     object that validates, found by listing the prefix{}",
                    remote.pointer_url(),
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (other logs there: {})", others.join(", "))
                    }
                );
            }
            if !dropped.is_empty() {
                eprintln!(
                    "epochwal: WARNING: {} held records the remote does not ({}): the remote's \
                     record is newer and is now the newest; those records are no longer the run's",
                    args.dir.display(),
                    dropped
                        .iter()
                        .map(|(s, e)| format!("seq {s} epoch {e}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            eprintln!(
                "epochwal: restored record {remote_sequence} (epoch {}, step {}) from {url} into {}{}",
                header.epoch,
                header.step,
                args.dir.display(),
                renumbered(header.sequence, remote_sequence)
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
                "{}: no pointer object (HEAD) and no record object: nothing has been replicated \
                 there yet",
                remote.url()
            )
        }
    }
}
