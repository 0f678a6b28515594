//! Errors of the log. Every variant names the file it is about and the cause.

use std::io;
use std::path::PathBuf;

/// An error of the checkpoint log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A plain I/O error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// Another process holds the writer lock.
    #[error("{path}: the log is locked by another writer{}; only one writer per directory is allowed", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },

    /// The directory cannot be written (a writer was asked for).
    #[error("{path}: cannot open the log for writing: {source} (readers such as `epochwal tail` work on a read-only directory)")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Not enough space to preallocate a new segment.
    #[error("{path}: no space left to preallocate a {bytes}-byte segment; earlier records are intact, free some space (or lower retention) and the next checkpoint will retry")]
    NoSpace { path: PathBuf, bytes: u64 },

    /// msync/fdatasync failed: the data may be lost and the log refuses further
    /// appends (the kernel may have dropped the dirty pages, so a retry could
    /// report success for data that never reached the disk).
    #[error("{path}: flushing to disk failed: {source}; the log is closed for appends, restart to recover from what is durable")]
    SyncFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An earlier sync failure closed the log.
    #[error("the log is closed for appends after an earlier failure: {0}")]
    Poisoned(String),

    /// A segment file is not the size its header records.
    #[error("{path}: segment is {actual} bytes but its header says {expected}: it was truncated or extended by something other than epochwal")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// A record is damaged or cannot be read.
    #[error("{path} at offset {offset}: {reason}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A record of a schema version this build does not read (written by a
    /// newer binary, or too old). Not damage: recovery refuses to start
    /// rather than fall back to an older record.
    #[error("{path} at offset {offset}: record {sequence}: {}", crate::state::unsupported_message(*found))]
    UnsupportedSchema {
        path: PathBuf,
        offset: u64,
        sequence: u64,
        found: u32,
    },

    /// The state is too large for the format.
    #[error("record of {bytes} bytes exceeds the format limit of {limit} bytes")]
    TooLarge { bytes: u64, limit: u64 },

    /// Serialization into the mapping failed.
    #[error("{path}: serializing the training state failed: {reason}")]
    Serialize { path: PathBuf, reason: String },

    /// No record was found where one was asked for.
    #[error("{path}: {what}")]
    NotFound { path: PathBuf, what: String },

    /// An append was started while another was still pending.
    #[error("an append is already in flight; persist and finish it first")]
    AppendInFlight,
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> WalError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return WalError::NoSpace { path, bytes: 0 };
        }
        WalError::Io { path, op, source }
    }
}
