//! Multi-rank jobs (`epochwal.DistributedCheckpointer`): a rank's listing of
//! its log and the job-wide choice of the common step, exchanged as JSON so
//! that the ranks can gather listings with torch.distributed. The rule is
//! the main crate's `job` module (FORMAT.md §8); nothing is decided here.

use std::path::PathBuf;

use pyo3::prelude::*;

use epochwal::job::{self, RankListing};

use crate::error;

/// Lists rank `rank`'s log in `dir` (every record header, each record
/// validated) as JSON: `{"rank", "dir", "records": [...], "damaged": [...]}`.
/// A directory that does not exist holds nothing.
#[pyfunction]
pub fn rank_listing(py: Python<'_>, dir: PathBuf, rank: u32) -> PyResult<String> {
    let listing = py
        .allow_threads(|| job::list_rank(&dir, rank))
        .map_err(error)?;
    serde_json::to_string(&listing).map_err(|e| error(format!("listing {}: {e}", dir.display())))
}

/// Chooses the records a job of `world_size` ranks resumes from, given every
/// rank's `rank_listing` (index = rank). Returns the JSON of the decision:
/// `{"Resume": {"step", "records", "next", "notes"}}` or
/// `{"Fresh": {"next", "notes"}}`; raises an EpochwalError naming what each
/// rank holds when there is no common step or the world size changed.
#[pyfunction]
pub fn choose_common(listings: Vec<String>, world_size: u32) -> PyResult<String> {
    let parsed = listings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::from_str::<RankListing>(s)
                .map_err(|e| error(format!("the listing of rank {i} is malformed: {e}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let decision = job::choose(&parsed, world_size).map_err(error)?;
    serde_json::to_string(&decision).map_err(|e| error(format!("the decision: {e}")))
}
