//! Multi-rank jobs on a remote: the `Writer` of rank r replicates to
//! `P/rank-<r>` of the job URL `P` and advances `P/SET`; an empty rank
//! directory is restored from the record `P/SET` names for that rank
//! (`epochwal::replicate::set`, FORMAT.md §7.10).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use epochwal::config::ReplicateConfig;
use epochwal::job::Start;
use epochwal::replicate::{rank_url, restore_from_set as restore, SetMember, SetRestored};
use epochwal::wal::LogOptions;

use crate::error;

/// Longest wait for the remote during a restore from the set pointer.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// Turns `cfg` (whose `url` is the job's) into rank `rank`'s: returns the
/// job URL, and `cfg.url` becomes `P/rank-<rank>`.
pub(crate) fn as_rank(cfg: &mut ReplicateConfig, rank: u32) -> String {
    let job = cfg.url.trim_end_matches('/').to_string();
    cfg.url = rank_url(&job, rank);
    job
}

/// Runs `restore` on a runtime of its own, with a time limit.
fn restore_blocking(
    job_url: &str,
    allow_http: Option<bool>,
    rank: u32,
    world_size: u32,
    dir: &Path,
    options: LogOptions,
) -> Result<Option<SetRestored>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the replication runtime: {e}"))?;
    rt.block_on(async {
        tokio::time::timeout(
            RESTORE_TIMEOUT,
            restore(job_url, allow_http, rank, world_size, dir, options),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "rank {rank}: restoring from {job_url}/SET: no answer within {} s",
                RESTORE_TIMEOUT.as_secs()
            ))
        })
    })
}

/// For the `Writer` of a rank: when `dir` holds no log, restores this
/// rank's record of the set pointer's step into it (before the rank's own
/// `HEAD`, which may be newer than the common step, is looked at).
pub(crate) fn restore_if_empty(
    job_url: &str,
    allow_http: Option<bool>,
    rank: u32,
    world_size: u32,
    dir: &Path,
    options: LogOptions,
) -> Result<Option<String>, String> {
    let local = epochwal::wal::recover(dir).map_err(|e| e.to_string())?;
    if local.log_id.is_some() {
        return Ok(None);
    }
    Ok(
        restore_blocking(job_url, allow_http, rank, world_size, dir, options)?.map(|r| {
            format!(
                "rank {rank}: restored step {} from {} as sequence {}",
                r.set.step, r.object_url, r.durable.header.sequence
            )
        }),
    )
}

/// The set member that advances `P/SET` after this rank's uploads.
pub(crate) fn member(
    job_url: &str,
    allow_http: Option<bool>,
    rank: u32,
    world_size: u32,
    job_id: &str,
    starts: Option<&str>,
) -> Result<SetMember, String> {
    let starts: Vec<Start> = match starts {
        None => Vec::new(),
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("job_starts: not a list of generation starts: {e}"))?,
    };
    SetMember::new(job_url, allow_http, rank, world_size, job_id, starts).map_err(|e| e.to_string())
}

/// Restores rank `rank`'s record named by the job's set pointer
/// (`<url>/SET`) into `dir`, a directory that holds no log (created if
/// missing), and returns what was restored, or `None` when the job URL
/// holds no set pointer and nothing of this rank. With `only_if_empty`, a
/// directory that already holds a log is left alone (`None`, nothing is
/// contacted) instead of being an error.
///
/// ```python
/// from epochwal import _native
/// got = _native.restore_from_set("s3://bucket/job", "J/rank-00001", rank=1, world_size=2)
/// if got is not None:
///     print(got["set_step"], got["sequence"], got["object"])
/// ```
///
/// Raises `EpochwalError` naming the object, the rank and the cause (no
/// set pointer although the rank has records, another world size, a
/// damaged or missing object, a directory that holds a log).
#[pyfunction]
#[pyo3(signature = (url, dir, *, rank, world_size, allow_http=None, only_if_empty=false))]
pub(crate) fn restore_from_set<'py>(
    py: Python<'py>,
    url: &str,
    dir: PathBuf,
    rank: u32,
    world_size: u32,
    allow_http: Option<bool>,
    only_if_empty: bool,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if world_size == 0 || rank >= world_size {
        return Err(error(format!(
            "rank {rank} must be below world_size {world_size} (and world_size at least 1)"
        )));
    }
    let got = py
        .allow_threads(|| {
            if only_if_empty && dir.exists() {
                let local = epochwal::wal::recover(&dir).map_err(|e| e.to_string())?;
                if local.log_id.is_some() {
                    return Ok(None);
                }
            }
            restore_blocking(
                url,
                allow_http,
                rank,
                world_size,
                &dir,
                LogOptions::default(),
            )
        })
        .map_err(error)?;
    let Some(r) = got else { return Ok(None) };
    let d = PyDict::new(py);
    d.set_item("set_step", r.set.step)?;
    d.set_item("step", r.durable.header.step)?;
    d.set_item("epoch", r.durable.header.epoch)?;
    d.set_item("sequence", r.durable.header.sequence)?;
    d.set_item("remote_sequence", r.set.ranks[rank as usize].sequence)?;
    d.set_item("object", r.object_url)?;
    d.set_item("job_id", r.set.job_id)?;
    Ok(Some(d))
}
