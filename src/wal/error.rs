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

    /// Not enough space (or quota, or file-size limit) to preallocate a new
    /// segment.
    #[error("{path}: no space left to preallocate a {bytes}-byte segment ({cause}); earlier records are intact, free some space (or lower retention) and the next checkpoint will retry")]
    NoSpace {
        path: PathBuf,
        bytes: u64,
        /// What ran out: "disk full", "disk quota exceeded", "file size limit".
        cause: &'static str,
    },

    /// Bytes the log needs could not be read: an I/O error, which says
    /// nothing about what the bytes hold, so it is never taken for damage or
    /// for an empty log.
    #[error("{path} at offset {offset}: {what} failed: {} ({source}); the bytes there could not be read, which is not the same as damaged, so recovery will not guess past them. A transient error clears on a restart; if it persists the medium is failing: copy the log elsewhere, or move {path} out of the directory to resume from the records before it", errno_name(source))]
    Unreadable {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// The pre-resume fsync failed: the bytes recovery would use may exist
    /// only in the page cache (after an earlier failed write-back).
    #[error("{path}: {what} before resuming failed: {} ({source}); a record is resumed from only once it is known to be on the disk, so the writer does not start. A restart retries; if it keeps failing the disk is failing", errno_name(source))]
    NotDurable {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// The directory holds a segment whose number leaves no room to go on.
    #[error("{path}: segment number {number} is above {max}, the largest a writer creates, so no segment can follow it; move {path} out of the directory (it was not written by this log's writer) and start again")]
    SegmentNumberTooHigh {
        path: PathBuf,
        number: u64,
        max: u64,
    },

    /// A record header carries a sequence number that leaves no room to go on.
    #[error("{path}: a record header carries sequence {sequence}, which leaves no room for another record (only a planted or foreign file can); move {path} out of the directory and start again")]
    SequenceExhausted { path: PathBuf, sequence: u64 },

    /// Another process writes to the directory although this writer holds
    /// the lock (the LOCK file was deleted or replaced, or the file system
    /// does not share flock between hosts).
    #[error("{path}: {what}; another process may be writing to this log, so this writer stops appending. Make sure a single epochwal writes to the directory (a deleted LOCK file, or a network file system where flock does not reach other hosts, lets two in), then restart")]
    Conflict { path: PathBuf, what: String },

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

    /// Serialization of a record failed.
    #[error("{path}: serializing the training state failed: {reason}")]
    Serialize { path: PathBuf, reason: String },

    /// No record was found where one was asked for.
    #[error("{path}: {what}")]
    NotFound { path: PathBuf, what: String },

    /// A record copied from elsewhere cannot join this log.
    #[error("{path}: {reason}")]
    ImportRefused { path: PathBuf, reason: String },

    /// A copy of a record made elsewhere ([`crate::wal::Log::import`])
    /// differs from the original: the bytes written into the segment do not
    /// have the original's payload checksum. No record was written.
    #[error("{path} at offset {offset}: the copied payload has checksum {found:016x}, the original's is {expected:016x}: the source changed between its check and the copy; no record was written")]
    CopyDiffers {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },

    /// The directory holds segments of more than one log, and no one said
    /// which to continue.
    #[error("{path}: the directory holds segments of more than one log: {logs}. A log directory holds one log, and continuing either could hide or delete the other; move the segments of the log that does not belong here out of the directory, or name the log to continue (`epochwal run --keep-log-id ID`: the other log's segments are then left as they are, never read or deleted)")]
    SeveralLogs { path: PathBuf, logs: String },

    /// The log named to keep has no segment in the directory.
    #[error("{path}: the log to keep, {wanted:032x}, has no segment here (the directory holds {present})")]
    NoSuchLog {
        path: PathBuf,
        wanted: u128,
        present: String,
    },

    /// The kernel's pages are larger than the format's 4 KiB pages.
    #[error("{path}: this kernel's page size is {page_size} bytes, but epochwal writes records on 4096-byte pages: writing back a record's header would also write back the last bytes of the record before it, which the format promises never to rewrite (FORMAT.md §1). Writing a log on such a kernel is not supported (reading one is: verify, inspect, export and tail work); run the writer on a kernel with 4 KiB pages")]
    PageSize { path: PathBuf, page_size: u64 },

    /// A setting from the environment is not valid.
    #[error("{0}")]
    Setting(String),

    /// An append was started while another was still pending.
    #[error("an append is already in flight; persist and finish it first")]
    AppendInFlight,
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> WalError {
        let path = path.into();
        if let Some(cause) = no_space_cause(&source) {
            return WalError::NoSpace {
                path,
                bytes: 0,
                cause,
            };
        }
        WalError::Io { path, op, source }
    }

    pub(crate) fn unreadable(
        path: impl Into<PathBuf>,
        offset: u64,
        what: &'static str,
        source: io::Error,
    ) -> WalError {
        WalError::Unreadable {
            path: path.into(),
            offset,
            what,
            source,
        }
    }
}

/// What ran out, if `e` says space ran out: a full disk, a quota (the same
/// situation for the log: nothing can be allocated) or RLIMIT_FSIZE.
pub(crate) fn no_space_cause(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::ENOSPC => Some("disk full"),
        libc::EDQUOT => Some("disk quota exceeded"),
        libc::EFBIG => Some("file size limit"),
        _ => None,
    }
}

/// The symbolic name of an I/O error's errno (`EIO`), for messages that an
/// operator greps for; "errno N" for the uncommon ones.
pub fn errno_name(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return "no errno".to_string();
    };
    let name = match n {
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOMEM => "ENOMEM",
        libc::EROFS => "EROFS",
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EBADMSG => "EBADMSG",
        libc::EUCLEAN => "EUCLEAN",
        libc::ENODATA => "ENODATA",
        libc::ESTALE => "ESTALE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EFBIG => "EFBIG",
        libc::EINVAL => "EINVAL",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}
