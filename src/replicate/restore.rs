//! Restore: the newest remote record that validates, written into a local
//! log directory as a fresh segment.

use std::path::Path;

use super::layout::Pointer;
use super::remote::{Cause, FetchedRecord, PointerState, Remote, RemoteError};
use crate::wal::{self, Log, LogOptions, RecordHeader};

/// The newest remote record that validates, and what was passed over.
pub struct Found {
    /// The record, validated and mapped.
    pub fetched: FetchedRecord,
    /// The pointer as read.
    pub pointer: Pointer,
    /// Record objects that failed validation (newest first), each naming
    /// the object and the reason.
    pub skipped: Vec<RemoteError>,
}

/// Finds the newest complete remote record that validates: the one the
/// pointer names, else the next older record object of the same log, and
/// so on. `Ok(None)` when the remote holds no pointer (nothing replicated
/// yet). Damaged or missing objects are reported in [`Found::skipped`];
/// network and permission errors end the search.
pub async fn newest_valid(
    remote: &Remote,
    pointer: Option<PointerState>,
    tmp_dir: &Path,
) -> Result<Option<Found>, RemoteError> {
    let Some(state) = pointer else {
        return Ok(None);
    };
    let pointer = state.pointer;
    let mut skipped = Vec::new();
    let passable = |e: &RemoteError| matches!(e.cause, Cause::Damaged | Cause::NotFound);
    match remote
        .fetch_record(&remote.pointer_object(&pointer), tmp_dir)
        .await
    {
        Ok(fetched) => {
            return Ok(Some(Found {
                fetched,
                pointer,
                skipped,
            }))
        }
        Err(e) if passable(&e) => skipped.push(e),
        Err(e) => return Err(e),
    }
    let log_id = pointer.log_id().map_err(|detail| RemoteError {
        url: remote.url().to_string(),
        what: "reading the pointer".into(),
        cause: Cause::Damaged,
        detail,
    })?;
    let (records, _) = remote.list_records(log_id).await?;
    for obj in records
        .iter()
        .rev()
        .filter(|r| r.sequence < pointer.sequence)
    {
        match remote.fetch_record(&obj.path, tmp_dir).await {
            Ok(fetched) => {
                return Ok(Some(Found {
                    fetched,
                    pointer,
                    skipped,
                }))
            }
            Err(e) if passable(&e) => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError {
        url: remote.url().to_string(),
        what: "finding a record to restore".into(),
        cause: Cause::Damaged,
        detail: format!(
            "no record object validates ({} damaged or missing: {})",
            skipped.len(),
            skipped
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// What [`restore_into`] did.
pub enum Restored {
    /// A remote record was written into the directory.
    Record {
        /// Its header as restored (new segment and offset).
        header: RecordHeader,
        /// The object it came from.
        url: String,
        /// Newer record objects that were damaged and passed over.
        skipped: Vec<RemoteError>,
    },
    /// The remote holds nothing yet.
    RemoteEmpty,
    /// The directory already holds this log's newest remote record or a
    /// newer one (sequence given).
    UpToDate(u64),
}

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The directory holds another log than the remote.
    #[error("{dir}: holds log {local:032x}, but {url} holds log {remote}; refusing to mix two logs (restore into an empty directory, or use another prefix)")]
    OtherLog {
        /// The local directory.
        dir: String,
        /// Its log id.
        local: u128,
        /// The remote URL.
        url: String,
        /// The remote log id (hex).
        remote: String,
    },
    /// A remote error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A local error.
    #[error(transparent)]
    Local(#[from] wal::WalError),
}

/// Restores the newest valid remote record into `dir` (created if missing)
/// unless the directory already holds it or something newer of the same
/// log. Refuses a directory that holds another log, naming both ids.
pub async fn restore_into(
    remote: &Remote,
    pointer: Option<PointerState>,
    dir: &Path,
    options: LogOptions,
) -> Result<Restored, RestoreError> {
    let local = if dir.exists() {
        Some(wal::recover(dir)?)
    } else {
        None
    };
    let Some(state) = &pointer else {
        return Ok(Restored::RemoteEmpty);
    };
    let remote_id = state.pointer.log_id().map_err(|detail| RemoteError {
        url: remote.url().to_string(),
        what: "reading the pointer".into(),
        cause: Cause::Damaged,
        detail,
    })?;
    if let Some(local_id) = local.as_ref().and_then(|r| r.log_id) {
        if local_id != remote_id {
            return Err(RestoreError::OtherLog {
                dir: dir.display().to_string(),
                local: local_id,
                url: remote.url().to_string(),
                remote: state.pointer.log_id.clone(),
            });
        }
    }
    let local_next = local.as_ref().map_or(1, |r| r.next_sequence);
    if local_next > state.pointer.sequence {
        return Ok(Restored::UpToDate(local_next - 1));
    }
    std::fs::create_dir_all(dir).map_err(|e| wal::WalError::Io {
        path: dir.to_path_buf(),
        op: "creating the log directory",
        source: e,
    })?;
    let Some(found) = newest_valid(remote, pointer.clone(), dir).await? else {
        return Ok(Restored::RemoteEmpty);
    };
    let header = *found.fetched.record.header();
    if header.sequence < local_next {
        return Ok(Restored::UpToDate(local_next - 1));
    }
    let (mut log, _) = Log::open(dir, options)?;
    let durable = log.import(&header, found.fetched.record.payload())?;
    Ok(Restored::Record {
        header: durable.header,
        url: found.fetched.url,
        skipped: found.skipped,
    })
}
