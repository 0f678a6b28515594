//! The checkpoint log: rkyv training-state records in preallocated,
//! rotating segment files, written with `pwrite` and read zero-copy through
//! read-only mappings.
//!
//! Why it looks the way it does (FORMAT.md has the bytes):
//! - every record is a *full* training state, so recovery needs only the
//!   newest record that validates and never replays anything;
//! - a record is framed by a header page written *after* its payload is
//!   durable (two barriers), so a crash mid-append leaves a zero header page
//!   that reads as "end of segment", and a header on disk vouches for a payload
//!   that already reached the disk; the payload checksum and rkyv validation
//!   catch everything else;
//! - segments are preallocated with fallocate before the first record, so a
//!   full disk is an error at rotation, not in the middle of an append;
//! - the pause of an append is a copy into a staging buffer that stays
//!   populated; the file is written from it with `pwrite` on the persisting
//!   thread, never through a shared writable mapping (`staging.rs` says why);
//! - a writer never appends to a segment it did not create in this process,
//!   so it never appends behind garbage left by a crash.
//!
//! The API a user meets: [`Log::open`] (takes the lock, recovers),
//! [`Log::append`] (or [`Log::begin_append`] + [`PendingAppend::persist`] +
//! [`Log::finish`] to persist on another thread), [`recover`] and
//! [`LogReader`] for read-only access.

mod error;
pub mod format;
mod reader;
mod staging;
mod stream;
mod sys;
mod writer;

pub use error::{errno_name, WalError};
pub use format::{RecordHeader, SegmentHeader, ValidationFigures};
pub use reader::{
    load_record_copy, recover, recover_settled, validate_payload, LogReader, LogScan, MappedRecord,
    ReadFailure, Recovery, SegmentScan, Skip,
};
pub use sys::{create_private_dir, write_private};
pub use writer::{
    archived_len, segment_bytes_for, Durable, Log, LogOptions, PendingAppend, Retention,
    RetentionReport, AUTO_MAX_SEGMENT_BYTES, AUTO_RECORDS_PER_SEGMENT, AUTO_SEGMENT_BYTES,
};

/// Result type of this module.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
