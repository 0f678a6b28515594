//! Replication: a copy of the log in object storage (S3, GCS, Azure Blob,
//! or a directory), so that checkpoints outlive the machine.
//!
//! Why it looks the way it does (FORMAT.md §7 has the names and bytes):
//! - an object store gives atomic whole-object PUTs, immutable objects, and
//!   listings that may lag; so every durable record becomes one object of its
//!   exact bytes (header page + payload), and the newest complete one is
//!   named by a small pointer object, written only after the record object
//!   is complete (a conditional put where the server honours one);
//! - remote bytes are no more trusted than a disk: a fetched record is
//!   validated by the log's own decoder (header checksum, payload checksum,
//!   rkyv validation, schema) before anything reads it;
//! - this module is a *reader* of the log (through [`crate::wal::LogReader`])
//!   plus one writer call for restores ([`crate::wal::Log::import`]); the log
//!   knows nothing of the network, and training never waits for it.
//!
//! The pieces: [`layout`] (names, pointer), [`remote`] (the client),
//! [`uploader`] (the background thread), [`restore`] (remote → local),
//! [`set`] (the set pointer of a multi-rank job).

pub mod layout;
pub mod remote;
pub mod restore;
pub mod set;
pub mod uploader;

pub use layout::Pointer;
pub use remote::{
    Cause, FetchedRecord, Head, PointerState, Remote, RemoteError, RemoteObject, RemoteUrl,
    Replacing,
};
pub use restore::{
    check_against_pointer, list_newest_log, newest_listed, newest_valid, restore_into, Found,
    ListedLog, RestoreError, Restored,
};
pub use set::{
    rank_dir, rank_url, read_set, restore_from_set, SetHead, SetMember, SetOutcome, SetPointer,
    SetRestored,
};
pub use uploader::{
    read_remote_file, write_remote_file, PointerAtStart, Progress, RemoteFile, Uploader,
    UploaderOptions,
};

/// Runs `fut` on a small single-threaded runtime (for the command-line
/// tools, which are otherwise synchronous).
pub fn block_on<F: std::future::Future>(fut: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(fut))
}
