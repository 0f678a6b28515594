//! The single writer: lock, segment creation and rotation, appends,
//! durability, the commit file, retention.
//!
//! An append has two halves so that training can go on while the disk works:
//! [`Log::begin_append`] serializes the state with rkyv into a staging
//! buffer that stays populated from one record to the next (the only part
//! the training thread waits for), and [`PendingAppend::persist`] makes it
//! durable (payload written with `pwrite` and checksummed chunk by chunk,
//! `fdatasync`, then the header page, then a second `fdatasync`).
//! [`Log::finish`] records the result and applies retention. At most one
//! append is in flight. `staging.rs` says why the writer does not store
//! through a mapping.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rkyv::rancor;
use rkyv::ser::{Positional, Writer};

use super::error::no_space_cause;
use super::format::{
    self, page_align, record_span, segment_file_name, RecordHeader, SegmentHeader,
    ValidationFigures, MAX_PAYLOAD_BYTES, MAX_SEGMENT_NO, PAGE,
};
use super::reader::{list_dir, recover_for_writer, scan_segment, Recovery, SegmentScan, Skip};
use super::staging::{self, Staging, StagingSlot};
use super::sys;
use super::{Result, WalError};
use crate::state::{TrainState, SCHEMA_VERSION};

/// Smallest segment the writer creates: a segment header page plus one
/// record header page and one payload page.
pub const MIN_SEGMENT_BYTES: u64 = 3 * PAGE;

/// `LogOptions::segment_bytes` value that sizes each new segment to the
/// records instead of to a fixed size (see [`segment_bytes_for`]).
pub const AUTO_SEGMENT_BYTES: u64 = 0;

/// Records an automatically sized segment holds. Retention deletes whole
/// segments, so this bounds how many records it keeps beyond what it is
/// asked for (`AUTO_RECORDS_PER_SEGMENT - 1`), while amortizing the cost of
/// creating a segment (preallocation and two fsyncs) over that many records.
pub const AUTO_RECORDS_PER_SEGMENT: u64 = 4;

/// Largest automatically sized segment, unless one record alone is larger:
/// records of more than a quarter of this get fewer per segment (at least
/// one), so the preallocated but unused tail of a segment stays small.
pub const AUTO_MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Size of a new segment that must hold a record spanning `span` bytes
/// (header page + payload pages), under the configured `segment_bytes`.
///
/// - [`AUTO_SEGMENT_BYTES`]: the segment header page plus room for
///   [`AUTO_RECORDS_PER_SEGMENT`] records of this span, or as many as fit in
///   [`AUTO_MAX_SEGMENT_BYTES`] (at least one).
/// - any other value: that size rounded up to a page (at least
///   [`MIN_SEGMENT_BYTES`]); a record larger than it gets a segment sized to
///   fit it alone.
pub fn segment_bytes_for(segment_bytes: u64, span: u64) -> u64 {
    let configured = if segment_bytes == AUTO_SEGMENT_BYTES {
        let fit = AUTO_MAX_SEGMENT_BYTES.saturating_sub(PAGE) / span.max(PAGE);
        PAGE + fit.clamp(1, AUTO_RECORDS_PER_SEGMENT) * span
    } else {
        page_align(segment_bytes.max(MIN_SEGMENT_BYTES))
    };
    configured.max(PAGE + span)
}

/// How many records to keep. Zero means "no limit" for each field; the newest
/// durable record is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep (at least) the newest `keep_records` records.
    pub keep_records: u64,
    /// Keep the newest segments whose sizes add up to at most `keep_bytes`
    /// (the segment holding the newest record is kept even if larger).
    pub keep_bytes: u64,
    /// Additionally keep the newest record of every epoch that is a multiple
    /// of this.
    pub keep_every_epochs: u64,
    /// Additionally keep the `keep_best` records with the lowest validation
    /// loss in their headers (ties: the older one); 0 = off.
    pub keep_best: u64,
}

/// Settings of a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size new segments are preallocated to. A record larger than this gets a
    /// segment of its own, sized to fit. [`AUTO_SEGMENT_BYTES`] (0) sizes
    /// each segment to the records (see [`segment_bytes_for`]).
    pub segment_bytes: u64,
    /// What to delete after each durable append.
    pub retention: Retention,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            retention: Retention::default(),
        }
    }
}

/// The segment being appended to, shared between the training thread
/// (which reserves space in it) and the persisting thread (which writes and
/// syncs a record into it). The writer does not map it: records reach it
/// with `pwrite` from the staging buffer (see `staging.rs` for why).
struct Segment {
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT`, through which payloads are
    /// written when the file system takes it (see `staging.rs`); `None`
    /// when direct I/O is off ([`sys::DIRECT_IO_VAR`]) or refused.
    direct: Option<File>,
    /// Set when a direct write was refused (`EINVAL`): the rest of this
    /// segment's payloads go through the page cache.
    direct_refused: std::sync::atomic::AtomicBool,
    len: u64,
    segment_no: u64,
}

impl Segment {
    /// Errors if someone truncated the file: a record written past its end
    /// would extend it, and readers check segment sizes against headers.
    fn check_size(&self) -> Result<()> {
        let actual = self
            .file
            .metadata()
            .map_err(|e| WalError::io(&self.path, "stat", e))?
            .len();
        if actual != self.len {
            return Err(WalError::SizeMismatch {
                path: self.path.clone(),
                expected: self.len,
                actual,
            });
        }
        Ok(())
    }

    /// The first barrier's and the second's: `fdatasync`.
    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|source| WalError::SyncFailed {
                path: self.path.clone(),
                source,
            })
    }
}

/// Counts the bytes rkyv would write, so that space can be reserved in the
/// segment before serializing into it.
#[derive(Default)]
struct CountingWriter {
    pos: usize,
}

impl Positional for CountingWriter {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for CountingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), E> {
        self.pos += bytes.len();
        Ok(())
    }
}

/// Exact size of the rkyv archive of `state`.
pub fn archived_len(state: &TrainState) -> Result<u64> {
    let w = rkyv::api::high::to_bytes_in::<_, rancor::Error>(state, CountingWriter::default())
        .map_err(|e| WalError::Serialize {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    Ok(w.pos as u64)
}

/// What the writer knows about the records of one segment (for retention).
#[derive(Debug, Clone)]
struct SegmentInventory {
    segment_no: u64,
    path: PathBuf,
    bytes: u64,
    /// (sequence, epoch, finite validation loss) of each record, in order.
    records: Vec<(u64, u64, Option<f32>)>,
    /// Sequences of the records whose payloads recovery could not read (an
    /// I/O error, which may clear). They were durable, so retention keeps
    /// the segment for the life of this writer, and they do not count
    /// against `keep_records`.
    unreadable: Vec<u64>,
}

/// When retention runs.
#[derive(Debug, Clone, Copy)]
enum RetentionPoint {
    /// After a durable append, over the segments as they are.
    AfterAppend,
    /// At open, before the first new segment exists: count the record the
    /// next append will write (in a new segment), keep the segment of the
    /// record recovery chose, and delete segments newer than the newest
    /// record (rotated ahead by the previous writer, never written).
    AtOpen {
        recovered_segment: Option<u64>,
        /// Span of the recovered record: sizes the next segment under
        /// `segment_bytes = "auto"`.
        recovered_span: u64,
    },
}

/// Shared "this log is closed" flag: set by a failed sync on any thread.
type Poison = Arc<Mutex<Option<String>>>;

/// The writer of one log directory.
pub struct Log {
    dir: PathBuf,
    lock: File,
    lock_path: PathBuf,
    options: LogOptions,
    log_id: u128,
    next_sequence: u64,
    next_segment_no: u64,
    active: Option<Arc<Segment>>,
    /// Where the next record header goes in the active segment.
    write_offset: u64,
    inventory: Vec<SegmentInventory>,
    poison: Poison,
    in_flight: bool,
    /// Span of the last record begun, the best guess for the next one.
    last_span: u64,
    /// The buffer records are serialized into (held by the append in
    /// flight, if any).
    staging: StagingSlot,
    /// Whether payloads are written with `O_DIRECT` where the file system
    /// takes it ([`sys::DIRECT_IO_VAR`]).
    direct_io: bool,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("next_sequence", &self.next_sequence)
            .field("next_segment_no", &self.next_segment_no)
            .finish()
    }
}

/// A record serialized into the staging buffer but not yet written or
/// durable.
pub struct PendingAppend {
    segment: Arc<Segment>,
    header: RecordHeader,
    new_segment: bool,
    dir: PathBuf,
    poison: Poison,
    /// The serialized payload and its zero padding; given back to `slot`
    /// when the append is dropped, persisted or not.
    staging: Option<Staging>,
    slot: StagingSlot,
    /// How long serialization into the staging buffer took.
    pub serialize_time: Duration,
    /// For a copy of a record made elsewhere ([`Log::import`]): the payload
    /// checksum of the original. The copy's checksum is compared with it
    /// before the header is written, so a copy that differs never becomes a
    /// record.
    expect_checksum: Option<u64>,
    /// Begun with [`Log::begin_append_unfilled`] and not yet
    /// [`PendingAppend::fill`]ed: the staging buffer does not hold the
    /// payload.
    unfilled: bool,
}

/// Serializes `state` into the first `payload_len` bytes of `buffer` (tensors
/// with non-temporal stores, see `stream.rs`) and zeroes the padding after
/// them. An archive of another length than the one counted is an error that
/// names `segment`.
fn serialize_into(
    buffer: &mut Staging,
    state: &TrainState,
    payload_len: u64,
    segment: &Path,
) -> Result<()> {
    let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        state,
        super::stream::StreamWriter::new(buffer.bytes_mut(payload_len)),
    )
    .map(|w| w.pos() as u64);
    match written {
        Ok(n) if n == payload_len => {
            buffer.zero_padding(n);
            Ok(())
        }
        other => Err(WalError::Serialize {
            path: segment.to_path_buf(),
            reason: match other {
                Ok(n) => format!("archive is {n} bytes, {payload_len} were reserved"),
                Err(e) => e.to_string(),
            },
        }),
    }
}

/// A record that is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Durable {
    /// Its header as written.
    pub header: RecordHeader,
    /// The segment file.
    pub path: PathBuf,
    /// Bytes the record occupies in the segment (header page + payload pages).
    pub bytes: u64,
    /// Whether the record opened a new segment.
    pub new_segment: bool,
    /// Time spent writing and in fdatasync (both barriers).
    pub sync_time: Duration,
}

/// Segments deleted by retention after an append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Paths removed.
    pub deleted: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_log_id() -> u128 {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        if f.read_exact(&mut buf).is_ok() {
            return u128::from_le_bytes(buf);
        }
    }
    // No /dev/urandom (a very bare sandbox): time and pid still make two
    // logs' ids differ, which is all the id is for.
    (now_unix_ns() as u128) << 64 | std::process::id() as u128
}

/// Deletes `*.wal.tmp` files: segments whose creation a crash interrupted.
/// They never held a record (a segment gets its final name before its first
/// record), and they may hold a whole segment's worth of disk space.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, "listing", e))?;
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_stale = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|n| format::parse_segment_file_name(n).is_some());
        if is_stale {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| WalError::io(&path, "removing a stale temporary segment", e))?;
            tracing::info!(file = %path.display(), "removed the temporary file of an interrupted segment creation");
            removed = true;
        }
    }
    if removed {
        sys::sync_dir(dir).map_err(|e| WalError::io(dir, "fsync", e))?;
    }
    Ok(())
}

/// Removes what a restore killed while downloading a record object left
/// (`.epochwal-download-*`, up to a record in size). A restore downloads
/// only with the LOCK held, so with the LOCK in hand none is in progress.
fn remove_leftover_downloads(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, "listing", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(format::DOWNLOAD_PREFIX))
        {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| WalError::io(&path, "removing a leftover download", e))?;
            tracing::info!(file = %path.display(), "removed the leftover download of an interrupted restore");
        }
    }
    Ok(())
}

fn read_lock_holder(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Log {
    /// Opens (creating if needed) the log in `dir` for writing: takes the
    /// writer lock, recovers the newest intact record and prepares to append
    /// after it. Appends always go to a new segment, so nothing is ever
    /// written behind bytes a crash may have left.
    ///
    /// A directory holding segments of more than one log id is an error
    /// ([`WalError::SeveralLogs`]); [`Log::open_keeping`] names the one to
    /// continue.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Log, Recovery)> {
        Log::open_keeping(dir, options, None)
    }

    /// [`Log::open`], continuing the log `keep` when the directory holds
    /// segments of several logs: the segments of the others are passed over
    /// by recovery and never deleted by retention.
    pub fn open_keeping(
        dir: impl AsRef<Path>,
        options: LogOptions,
        keep: Option<u128>,
    ) -> Result<(Log, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        // Checked before anything is created: the format's promise that an
        // append never rewrites a byte of an earlier record holds only when
        // the kernel writes back 4 KiB at a time.
        let page_size = sys::system_page_size().map_err(WalError::Setting)?;
        let direct_io = sys::direct_io_setting().map_err(WalError::Setting)?;
        if page_size > PAGE {
            return Err(WalError::PageSize {
                path: dir,
                page_size,
            });
        }
        if !dir.exists() {
            sys::create_private_dir(&dir)
                .map_err(|e| WalError::io(&dir, "creating the log directory", e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sys::sync_dir(parent).map_err(|e| WalError::io(parent, "fsync", e))?;
            }
        }
        let lock_path = dir.join(format::LOCK_FILE);
        let lock = sys::open_private(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &lock_path,
        )
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => WalError::ReadOnly {
                path: dir.clone(),
                source,
            },
            _ => WalError::io(&lock_path, "opening the lock file", source),
        })?;
        if !sys::try_lock_exclusive(&lock).map_err(|e| WalError::io(&lock_path, "flock", e))? {
            return Err(WalError::Locked {
                path: dir.clone(),
                holder: read_lock_holder(&lock_path),
            });
        }
        // The pid is written over the old one and the file cut to its
        // length, never truncated to empty first: ext4 flushes a file that
        // was truncated to zero and written again when it is closed
        // (auto_da_alloc), a disk wait on every start for a note.
        let pid = format!("{}\n", std::process::id());
        lock.write_all_at(pid.as_bytes(), 0)
            .and_then(|_| lock.set_len(pid.len() as u64))
            .map_err(|e| WalError::io(&lock_path, "writing the lock file", e))?;

        match sys::risky_file_system(&dir) {
            Ok(Some((name, why))) => tracing::warn!(
                dir = %dir.display(),
                file_system = name,
                "the log directory is on {name}: {why}"
            ),
            Ok(None) => {}
            Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "statfs failed"),
        }

        remove_leftover_downloads(&dir)?;
        // Fsyncs and re-reads from the disk every segment it visits; a read
        // error is an error, never "no checkpoint".
        let mut recovery = recover_for_writer(&dir, keep)?;
        sys::sync_dir(&dir).map_err(|source| WalError::NotDurable {
            path: dir.clone(),
            what: "fsync of the log directory",
            source,
        })?;
        remove_stale_temporaries(&dir)?;
        let (segments, _) = list_dir(&dir)?;
        if let Some((n, path)) = segments.last().filter(|(n, _)| *n > MAX_SEGMENT_NO) {
            return Err(WalError::SegmentNumberTooHigh {
                path: path.clone(),
                number: *n,
                max: MAX_SEGMENT_NO,
            });
        }
        let mut log = Log {
            // Only reached when every segment file could be read: a new id
            // is never minted next to files that might hold the old one.
            log_id: recovery.log_id.unwrap_or_else(random_log_id),
            next_sequence: recovery.next_sequence,
            next_segment_no: recovery.next_segment_no,
            dir,
            lock,
            lock_path,
            options,
            active: None,
            write_offset: 0,
            inventory: Vec::new(),
            poison: Arc::new(Mutex::new(None)),
            in_flight: false,
            last_span: 0,
            staging: Arc::new(Mutex::new(None)),
            direct_io,
        };
        let scans = std::mem::take(&mut recovery.scans);
        let (highest, holder, logs) = log.take_inventory(&recovery.skipped, &scans)?;
        drop(scans);
        // Segments of two logs: which one is "the" log cannot be told from
        // the bytes (a planted or copied segment may be the newer one), and
        // continuing either would pass over, and in time delete, the other.
        let describe = |logs: &std::collections::BTreeMap<u128, Vec<u64>>| {
            logs.iter()
                .map(|(id, segs)| {
                    format!(
                        "log {id:032x} (segments {})",
                        segs.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match keep {
            None if logs.len() > 1 => {
                return Err(WalError::SeveralLogs {
                    path: log.dir.clone(),
                    logs: describe(&logs),
                })
            }
            Some(id) if !logs.is_empty() && !logs.contains_key(&id) => {
                return Err(WalError::NoSuchLog {
                    path: log.dir.clone(),
                    wanted: id,
                    present: describe(&logs),
                })
            }
            _ => {}
        }
        for seg in log.inventory.iter().filter(|s| !s.unreadable.is_empty()) {
            let sequences = seg
                .unreadable
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                file = %seg.path.display(),
                sequences = %sequences,
                "retention keeps this segment until this writer stops: it holds record(s) \
                 {sequences}, which were durable but could not be read (I/O error); a repaired \
                 disk may give them back. To clear: repair the disk or copy the log elsewhere and \
                 restart, or move the file out of the directory"
            );
        }
        if highest == u64::MAX {
            return Err(WalError::SequenceExhausted {
                path: holder,
                sequence: highest,
            });
        }
        // The next number follows every sequence present anywhere in the
        // directory: records hidden behind damage, rejected headers, older
        // segments. A number is never given to two records.
        log.next_sequence = log.next_sequence.max(highest + 1);
        // A record COMMIT says was durable, and whose header is gone, had
        // its number too (it may have been uploaded under it).
        log.next_sequence = log
            .next_sequence
            .max(recovery.lost_sequence.saturating_add(1));
        // Make room before the first new segment is needed: a restart on a
        // full disk must be able to checkpoint as the run before it could.
        let recovered_segment = recovery.record.as_ref().map(|r| r.header().segment_no);
        let recovered_span = recovery
            .record
            .as_ref()
            .map_or(PAGE, |r| record_span(r.header().payload_len));
        let report = log.apply_retention(RetentionPoint::AtOpen {
            recovered_segment,
            recovered_span,
        })?;
        if !report.deleted.is_empty() {
            tracing::info!(
                dir = %log.dir.display(),
                segments = report.deleted.len(),
                freed_bytes = report.freed_bytes,
                "retention at open deleted segments the next record makes unnecessary"
            );
        }
        Ok((log, recovery))
    }

    /// Header-only scan of all segments: ours are listed for retention; the
    /// highest sequence in any header (and the file holding it) is returned.
    /// Also returns the segment numbers of every log id present.
    /// `skipped` is what recovery passed over: its read errors pin segments.
    /// `scans` are the segments recovery scanned (this writer holds the
    /// lock, so they have not changed since); the others are scanned here.
    fn take_inventory(
        &mut self,
        skipped: &[Skip],
        scans: &[SegmentScan],
    ) -> Result<(u64, PathBuf, std::collections::BTreeMap<u128, Vec<u64>>)> {
        let (segments, _) = list_dir(&self.dir)?;
        let mut highest = (0, self.dir.clone());
        let mut logs = std::collections::BTreeMap::<u128, Vec<u64>>::new();
        for (n, path) in segments {
            let scan = match scans.iter().find(|s| s.segment_no == n && s.path == path) {
                Some(s) => s.clone(),
                None => scan_segment(&path, n),
            };
            if let Some(f) = &scan.read_failure {
                return Err(f.to_error(&path));
            }
            if scan.highest_sequence > highest.0 {
                highest = (scan.highest_sequence, path.clone());
            }
            if let Some(id) = scan.log_id {
                logs.entry(id).or_default().push(n);
            }
            // A damaged segment header hides nothing: its records were
            // walked, and their log id stands in for the header's.
            if scan.log_id != Some(self.log_id) {
                continue;
            }
            self.inventory.push(SegmentInventory {
                segment_no: n,
                bytes: scan.file_len,
                records: scan
                    .records
                    .iter()
                    .map(|r| (r.sequence, r.epoch, r.validation_loss()))
                    .collect(),
                unreadable: scan
                    .records
                    .iter()
                    .filter(|r| {
                        skipped
                            .iter()
                            .any(|s| s.unreadable && s.file == path && s.offset == r.offset)
                    })
                    .map(|r| r.sequence)
                    .collect(),
                path,
            });
        }
        Ok((highest.0, highest.1, logs))
    }

    /// Errors if the LOCK file this writer locked is no longer the one at
    /// `LOCK` (deleted, or replaced): a second writer could then take the
    /// lock on a new file and write next to this one.
    fn check_lock(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ours = self
            .lock
            .metadata()
            .map_err(|e| WalError::io(&self.lock_path, "fstat of the lock file", e))?;
        match std::fs::metadata(&self.lock_path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => Ok(()),
            Ok(_) => Err(WalError::Conflict {
                path: self.lock_path.clone(),
                what: "the LOCK file was deleted or replaced while this writer held it (it is another file now)".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WalError::Conflict {
                path: self.lock_path.clone(),
                what: "the LOCK file was deleted while this writer held it".into(),
            }),
            Err(e) => Err(WalError::io(&self.lock_path, "stat of the lock file", e)),
        }
    }

    /// Closes the log for appends with `e` as the reason, and returns it.
    fn poison_with(&self, e: WalError) -> WalError {
        if let Ok(mut p) = self.poison.lock() {
            p.get_or_insert_with(|| e.to_string());
        }
        e
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in force.
    pub fn options(&self) -> LogOptions {
        self.options
    }

    /// Changes segment size and retention for future appends (SIGHUP).
    pub fn set_options(&mut self, options: LogOptions) {
        self.options = options;
    }

    /// Sequence number the next record will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The reason appends are refused, if an earlier sync failed.
    pub fn poisoned(&self) -> Option<String> {
        self.poison.lock().ok().and_then(|p| p.clone())
    }

    /// Appends `state` and waits until it is durable; applies retention.
    pub fn append(&mut self, state: &TrainState) -> Result<Durable> {
        let pending = self.begin_append(state)?;
        let durable = pending.persist();
        self.finish(&durable)?;
        durable
    }

    /// Serializes `state` into the staging buffer (rotating first if
    /// it does not fit). The record is not durable until
    /// [`PendingAppend::persist`] returns, and is not visible to readers
    /// before that either (its header is written last).
    pub fn begin_append(&mut self, state: &TrainState) -> Result<PendingAppend> {
        self.begin_append_with(state, None)
    }

    /// [`Log::begin_append`] with the validation figures of the weights in
    /// `state`, written into the record header (for `tail` and for
    /// `keep_best` retention, which read headers only).
    pub fn begin_append_with(
        &mut self,
        state: &TrainState,
        validation: Option<ValidationFigures>,
    ) -> Result<PendingAppend> {
        self.begin(state, validation, true)
    }

    /// [`Log::begin_append_with`] without the copy of the state: everything
    /// that can refuse or fail (the log closed, no room, a new segment, the
    /// sequence number) happens here, on the caller's thread, but the state
    /// is serialized into the staging buffer later, by
    /// [`PendingAppend::fill`] on the thread that persists it. The caller
    /// must hand that thread a state that has not changed since (the
    /// trainer's [`crate::train::Snapshot`]), so the training pause is the
    /// size count alone.
    pub fn begin_append_unfilled(
        &mut self,
        state: &TrainState,
        validation: Option<ValidationFigures>,
    ) -> Result<PendingAppend> {
        self.begin(state, validation, false)
    }

    fn begin(
        &mut self,
        state: &TrainState,
        validation: Option<ValidationFigures>,
        fill: bool,
    ) -> Result<PendingAppend> {
        if let Some(reason) = self.poisoned() {
            return Err(WalError::Poisoned(reason));
        }
        if self.in_flight {
            return Err(WalError::AppendInFlight);
        }
        let started = Instant::now();
        self.check_lock().map_err(|e| self.poison_with(e))?;
        let payload_len = archived_len(state)?;
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(WalError::TooLarge {
                bytes: payload_len,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let span = record_span(payload_len);
        self.last_span = span;
        let fits = self
            .active
            .as_ref()
            .is_some_and(|seg| self.write_offset + span <= seg.len);
        let new_segment = !fits;
        if new_segment {
            self.rotate(span)?;
        }
        let segment = Arc::clone(self.active.as_ref().expect("rotate installs a segment"));
        segment.check_size()?;
        let offset = self.write_offset;
        debug_assert_eq!(offset % PAGE, 0, "records start on a fresh page");
        let mut buffer = staging::take(&self.staging, span - PAGE)
            .map_err(|e| WalError::io(&segment.path, "allocating the staging buffer", e))?;
        // Usually a no-op: `prepare_next_append` populated it off this thread.
        buffer.populate(span - PAGE);
        if fill {
            if let Err(e) = serialize_into(&mut buffer, state, payload_len, &segment.path) {
                staging::give_back(&self.staging, buffer);
                return Err(e);
            }
        }
        let header = RecordHeader {
            log_id: self.log_id,
            segment_no: segment.segment_no,
            sequence: self.next_sequence,
            epoch: state.epoch,
            step: state.global_step,
            offset,
            payload_len,
            payload_checksum: 0,
            unix_ns: state.wall_clock_unix_ns,
            loss: f64::from(state.last_loss),
            schema_version: SCHEMA_VERSION,
            validation,
        };
        // The sequence is consumed even if persisting fails, so a number is
        // never given to two different records.
        self.next_sequence += 1;
        self.write_offset = offset + span;
        self.in_flight = true;
        Ok(PendingAppend {
            segment,
            header,
            new_segment,
            dir: self.dir.clone(),
            poison: Arc::clone(&self.poison),
            staging: Some(buffer),
            slot: Arc::clone(&self.staging),
            serialize_time: started.elapsed(),
            expect_checksum: None,
            unfilled: !fill,
        })
    }

    /// Creates, preallocates, syncs and maps a new segment able to hold a
    /// record spanning `span` bytes.
    fn rotate(&mut self, span: u64) -> Result<()> {
        let bytes = segment_bytes_for(self.options.segment_bytes, span);
        let n = self.next_segment_no;
        let name = segment_file_name(n);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        if n > MAX_SEGMENT_NO {
            return Err(WalError::SegmentNumberTooHigh {
                path,
                number: n,
                max: MAX_SEGMENT_NO,
            });
        }
        self.check_lock().map_err(|e| self.poison_with(e))?;
        // A leftover `.tmp` of this number can only come from a writer that
        // died mid-creation (we hold the lock): it never held a record.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(WalError::io(&tmp, "removing a stale temporary segment", e))
            }
            _ => {}
        }
        let mut renamed = false;
        let created = (|| -> Result<File> {
            let mut file = sys::open_private(
                OpenOptions::new().read(true).write(true).create_new(true),
                &tmp,
            )
            .map_err(|e| WalError::io(&tmp, "creating segment", e))?;
            sys::preallocate(&file, bytes).map_err(|e| match no_space_cause(&e) {
                Some(cause) => WalError::NoSpace {
                    path: tmp.clone(),
                    bytes,
                    cause,
                },
                None => WalError::io(&tmp, "preallocating segment", e),
            })?;
            let mut page = vec![0u8; PAGE as usize];
            SegmentHeader {
                log_id: self.log_id,
                segment_no: n,
                segment_bytes: bytes,
                created_unix_ns: now_unix_ns(),
            }
            .encode(&mut page);
            file.write_all(&page)
                .map_err(|e| WalError::io(&tmp, "writing segment header", e))?;
            file.sync_all().map_err(|source| WalError::SyncFailed {
                path: tmp.clone(),
                source,
            })?;
            // Never replaces a file: the name may have been taken by a
            // second writer (one that got in after LOCK was deleted, or on a
            // file system where flock does not reach it).
            sys::rename_noreplace(&tmp, &path).map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    WalError::Conflict {
                        path: path.clone(),
                        what: "this segment appeared although this writer holds the lock and never created it".into(),
                    }
                } else {
                    WalError::io(&path, "renaming segment", e)
                }
            })?;
            renamed = true;
            sys::sync_dir(&self.dir).map_err(|source| WalError::SyncFailed {
                path: self.dir.clone(),
                source,
            })?;
            Ok(file)
        })();
        // The number is used up once the name exists, whatever happens next:
        // after a failed directory fsync the next rotation must not try the
        // same name again (it would find its own empty segment there).
        if renamed {
            self.next_segment_no = n + 1;
            if created.is_err() {
                // Left behind empty; retention deletes it like any segment
                // older than the newest record.
                self.inventory.push(SegmentInventory {
                    segment_no: n,
                    path: path.clone(),
                    bytes,
                    records: Vec::new(),
                    unreadable: Vec::new(),
                });
            }
        }
        let file = match created {
            Ok(f) => f,
            Err(e @ WalError::Conflict { .. }) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(self.poison_with(e));
            }
            Err(e) => {
                // Nothing of a half-made segment may stay behind: it would
                // hold the space the error is about.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let direct = if self.direct_io {
            sys::open_direct(&path)
        } else {
            None
        };
        self.active = Some(Arc::new(Segment {
            path: path.clone(),
            file,
            direct,
            direct_refused: std::sync::atomic::AtomicBool::new(false),
            len: bytes,
            segment_no: n,
        }));
        self.write_offset = PAGE;
        self.inventory.push(SegmentInventory {
            segment_no: n,
            path,
            bytes,
            records: Vec::new(),
            unreadable: Vec::new(),
        });
        Ok(())
    }

    /// Records the outcome of a persisted append and applies retention. Must
    /// be called once for every [`Log::begin_append`], whatever the outcome.
    pub fn finish(&mut self, outcome: &Result<Durable>) -> Result<RetentionReport> {
        self.in_flight = false;
        let durable = match outcome {
            Ok(d) => d,
            Err(_) => return Ok(RetentionReport::default()),
        };
        if let Some(seg) = self
            .inventory
            .iter_mut()
            .find(|s| s.segment_no == durable.header.segment_no)
        {
            seg.records.push((
                durable.header.sequence,
                durable.header.epoch,
                durable.header.validation_loss(),
            ));
        }
        self.apply_retention(RetentionPoint::AfterAppend)
    }

    /// Records and segment-file bytes in the directory as this writer
    /// knows them (after the last retention).
    pub fn retained(&self) -> (u64, u64) {
        self.inventory.iter().fold((0, 0), |(r, b), s| {
            (r + s.records.len() as u64, b + s.bytes)
        })
    }

    /// Undoes a run that never wrote a record: deletes this log's segments if
    /// none of them holds a record header, then `COMMIT` and `LOCK` (the
    /// lock stays held until the writer is dropped), and finally the
    /// directory itself if `remove_dir` and nothing else is left in it.
    /// Returns false, deleting nothing, if any segment holds a record. The
    /// writer refuses appends afterwards.
    pub fn discard_if_empty(&mut self, remove_dir: bool) -> Result<bool> {
        if self.in_flight || self.inventory.iter().any(|s| !s.records.is_empty()) {
            return Ok(false);
        }
        self.active = None;
        if let Ok(mut p) = self.poison.lock() {
            p.get_or_insert_with(|| "the empty log was discarded".to_string());
        }
        for seg in std::mem::take(&mut self.inventory) {
            match std::fs::remove_file(&seg.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(WalError::io(&seg.path, "deleting an empty segment", e))
                }
                _ => {}
            }
        }
        for name in [format::COMMIT_FILE, format::LOCK_FILE] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        if remove_dir {
            // Fails, harmlessly, if anything else is in the directory.
            let _ = std::fs::remove_dir(&self.dir);
        }
        Ok(true)
    }

    /// Creates the segment the first record of `state`'s size will go to, so
    /// that a full disk, a read-only or immutable directory or a segment size
    /// larger than the disk is found before training instead of at the first
    /// checkpoint. Returns the size of the segment. The staging buffer is
    /// left for [`Log::prepare_next_append`] to populate off the thread that
    /// is about to train.
    pub fn reserve_for(&mut self, state: &TrainState) -> Result<u64> {
        self.last_span = record_span(archived_len(state)?);
        self.make_room()?;
        Ok(self.active.as_ref().map_or(0, |s| s.len))
    }

    /// Records that the next record will be about the size of `state`'s,
    /// without creating anything: the next [`Log::prepare_next_append`]
    /// (on a thread that does not train) then creates its segment and
    /// populates the staging buffer, so that neither is on the way to the
    /// first training step. Returns the size of the segment that will be
    /// created. A restart uses this where a fresh run uses
    /// [`Log::reserve_for`]: its segment of this size was created before.
    /// If the first [`Log::begin_append`] comes before that preparation, it
    /// creates the segment itself.
    pub fn expect_record_of(&mut self, state: &TrainState) -> Result<u64> {
        self.last_span = record_span(archived_len(state)?);
        Ok(segment_bytes_for(
            self.options.segment_bytes,
            self.last_span,
        ))
    }

    /// Rotates now if a record as large as the last one would not fit.
    /// False when no append is expected (one in flight, none begun yet,
    /// or the log is closed).
    fn make_room(&mut self) -> Result<bool> {
        if self.in_flight || self.last_span == 0 || self.poisoned().is_some() {
            return Ok(false);
        }
        let fits = self
            .active
            .as_ref()
            .is_some_and(|seg| self.write_offset + self.last_span <= seg.len);
        if !fits {
            self.rotate(self.last_span)?;
        }
        Ok(true)
    }

    /// Gets the space for the next record ready, off the training thread:
    /// rotates now if a record as large as the last one would not fit, and
    /// populates the staging buffer for it (one store per page), so that
    /// the next [`Log::begin_append`] copies at memory speed instead of
    /// taking a page fault per page. Call it after [`Log::finish`] when more
    /// appends are expected, and once before the first (the buffer then
    /// stays populated for the life of the writer). Touching pages one by
    /// one, rather than `madvise(MADV_POPULATE_WRITE)`, keeps each fault on
    /// the per-VMA lock instead of holding the process's mmap lock for the
    /// whole range, which the training thread's own allocations would wait
    /// for.
    pub fn prepare_next_append(&mut self) -> Result<()> {
        if !self.make_room()? {
            return Ok(());
        }
        let span = self.last_span;
        let mut buffer = staging::take(&self.staging, span - PAGE)
            .map_err(|e| WalError::io(&self.dir, "allocating the staging buffer", e))?;
        buffer.populate(span - PAGE);
        staging::give_back(&self.staging, buffer);
        Ok(())
    }

    fn apply_retention(&mut self, point: RetentionPoint) -> Result<RetentionReport> {
        let Retention {
            keep_records,
            keep_bytes,
            keep_every_epochs,
            keep_best,
        } = self.options.retention;
        let active_no = self.active.as_ref().map(|s| s.segment_no);
        let mut keep = vec![false; self.inventory.len()];
        if keep_best > 0 {
            // The best records pin the segments that hold them.
            let mut scored: Vec<(f32, u64, usize)> = self
                .inventory
                .iter()
                .enumerate()
                .flat_map(|(i, seg)| {
                    seg.records
                        .iter()
                        .filter_map(move |&(seq, _, v)| v.map(|v| (v, seq, i)))
                })
                .collect();
            scored.sort_by(|a, b| format::best_first((a.0, a.1), (b.0, b.1)));
            for &(_, _, i) in scored.iter().take(keep_best as usize) {
                keep[i] = true;
            }
        }
        // Newest first: the count and byte budgets are spent from the end.
        // At open they start with the next record and the new segment it
        // will need, so only what that append's retention would delete goes.
        let (mut records_seen, mut bytes_seen) = match point {
            RetentionPoint::AfterAppend => (0u64, 0u64),
            RetentionPoint::AtOpen {
                recovered_segment,
                recovered_span,
            } => {
                let Some(recovered) = recovered_segment else {
                    // No intact record: keep everything for inspection.
                    return Ok(RetentionReport::default());
                };
                // The record recovery chose is the newest durable one, even if
                // a newer header (with a damaged payload) was walked.
                if let Some(i) = self
                    .inventory
                    .iter()
                    .position(|s| s.segment_no == recovered)
                {
                    keep[i] = true;
                }
                (
                    1,
                    segment_bytes_for(self.options.segment_bytes, recovered_span),
                )
            }
        };
        let mut newest_found = false;
        let mut epochs_kept = std::collections::HashSet::new();
        for (i, seg) in self.inventory.iter().enumerate().rev() {
            // A segment holding a record recovery could not read stays:
            // the record was durable, and the read error may clear.
            if Some(seg.segment_no) == active_no || !seg.unreadable.is_empty() {
                keep[i] = true;
            }
            bytes_seen += seg.bytes;
            let within_bytes = keep_bytes == 0 || bytes_seen <= keep_bytes;
            for &(seq, epoch, _) in seg.records.iter().rev() {
                if seg.unreadable.contains(&seq) {
                    continue;
                }
                records_seen += 1;
                let within_count = keep_records == 0 || records_seen <= keep_records;
                let newest = !newest_found;
                newest_found = true;
                let milestone = keep_every_epochs > 0
                    && epoch % keep_every_epochs == 0
                    && epochs_kept.insert(epoch);
                if newest || (within_count && within_bytes) || milestone {
                    keep[i] = true;
                }
            }
        }
        if !newest_found {
            return Ok(RetentionReport::default());
        }
        // Only segments older than the newest record may go: a segment newer
        // than it (an empty one) is where the next record will be written.
        // At open such a segment was rotated ahead by the previous writer and
        // never holds a durable record; this writer never appends to it.
        let newest_segment = self
            .inventory
            .iter()
            .rev()
            .find(|s| !s.records.is_empty())
            .map(|s| s.segment_no)
            .unwrap_or(0);
        let keep_newer = matches!(point, RetentionPoint::AfterAppend);
        let mut report = RetentionReport::default();
        let mut kept = Vec::with_capacity(self.inventory.len());
        for (seg, keep) in std::mem::take(&mut self.inventory).into_iter().zip(keep) {
            let newer = seg.segment_no > newest_segment;
            // After an append, a newer (empty) segment stays only if it is
            // where the next record goes; others were left by an earlier
            // writer that stopped before its first record.
            let spare = newer && keep_newer && Some(seg.segment_no) == active_no;
            if keep || seg.segment_no == newest_segment || spare {
                kept.push(seg);
                continue;
            }
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {
                    report.freed_bytes += seg.bytes;
                    report.deleted.push(seg.path.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    kept.push(seg);
                    self.inventory = kept;
                    return Err(WalError::io(&self.dir, "deleting an old segment", e));
                }
            }
        }
        self.inventory = kept;
        if !report.deleted.is_empty() {
            sys::sync_dir(&self.dir).map_err(|e| WalError::io(&self.dir, "fsync", e))?;
        }
        Ok(report)
    }
}

impl Log {
    /// The id of this log, or `None` while it holds no segment (an id is
    /// chosen when the first segment is created).
    pub fn log_id(&self) -> Option<u128> {
        (!self.inventory.is_empty()).then_some(self.log_id)
    }

    /// Writes a copy of a record that was made elsewhere — a restore from a
    /// remote copy — as the next record of this log, durable when this
    /// returns. The record keeps its log id, sequence, epoch, step, time,
    /// loss and exact payload bytes; only its place (segment number and
    /// offset, hence the header checksum) is new. It always goes into a new
    /// segment, like the first append of any writer.
    ///
    /// Refused when the log already belongs to another log id, or already
    /// holds a record header with this sequence or a newer one (sequences
    /// only grow). The caller validates the payload first. The bytes copied
    /// into the segment are checksummed while they are written back, and
    /// compared with `header`'s payload checksum *before* the record's header
    /// is written: a copy that differs from the original (the source changed
    /// between its check and the copy) fails with
    /// [`WalError::CopyDiffers`] and leaves no record, only payload bytes
    /// without a header, which recovery passes over.
    pub fn import(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<Durable> {
        let refused = |reason: String| WalError::ImportRefused {
            path: self.dir.clone(),
            reason,
        };
        if let Some(id) = self.log_id() {
            if id != header.log_id {
                return Err(refused(format!(
                    "the directory holds log {id:032x}; the record belongs to log {:032x}",
                    header.log_id
                )));
            }
        }
        if header.sequence < self.next_sequence {
            return Err(refused(format!(
                "the log already holds record headers up to sequence {}; cannot add sequence {}",
                self.next_sequence - 1,
                header.sequence
            )));
        }
        if payload.len() as u64 != header.payload_len || payload.is_empty() {
            return Err(refused(format!(
                "payload is {} bytes, its header says {}",
                payload.len(),
                header.payload_len
            )));
        }
        if let Some(reason) = self.poisoned() {
            return Err(WalError::Poisoned(reason));
        }
        if self.in_flight {
            return Err(WalError::AppendInFlight);
        }
        self.log_id = header.log_id;
        self.next_sequence = header.sequence;
        let span = record_span(header.payload_len);
        self.last_span = span;
        self.rotate(span)?;
        let segment = Arc::clone(self.active.as_ref().expect("rotate installs a segment"));
        let offset = self.write_offset;
        let mut buffer = staging::take(&self.staging, span - PAGE)
            .map_err(|e| WalError::io(&segment.path, "allocating the staging buffer", e))?;
        buffer
            .bytes_mut(header.payload_len)
            .copy_from_slice(payload);
        buffer.zero_padding(header.payload_len);
        let new_header = RecordHeader {
            segment_no: segment.segment_no,
            offset,
            payload_checksum: 0,
            ..*header
        };
        self.next_sequence += 1;
        self.write_offset = offset + span;
        self.in_flight = true;
        let pending = PendingAppend {
            segment,
            header: new_header,
            new_segment: true,
            dir: self.dir.clone(),
            poison: Arc::clone(&self.poison),
            staging: Some(buffer),
            slot: Arc::clone(&self.staging),
            serialize_time: Duration::ZERO,
            unfilled: false,
            expect_checksum: Some(header.payload_checksum),
        };
        let durable = pending.persist();
        self.finish(&durable)?;
        let durable = durable?;
        Ok(durable)
    }
}

impl PendingAppend {
    /// The header the record will have (its checksum is filled in by
    /// [`PendingAppend::persist`]).
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Serializes `state` into the staging buffer of an append begun with
    /// [`Log::begin_append_unfilled`]: the copy the training pause left out,
    /// made on the thread that persists. `state` must be the state that was
    /// passed to `begin_append_unfilled`, unchanged since (its archive must
    /// have the length counted then; another length is an error, and the
    /// append then writes nothing when persisted). Filling an append that is
    /// already full is an error.
    pub fn fill(&mut self, state: &TrainState) -> Result<()> {
        let path = &self.segment.path;
        if !self.unfilled {
            return Err(WalError::Serialize {
                path: path.clone(),
                reason: "the append already holds its payload".into(),
            });
        }
        let buffer = self
            .staging
            .as_mut()
            .expect("a pending append holds its buffer");
        serialize_into(buffer, state, self.header.payload_len, path)?;
        self.unfilled = false;
        Ok(())
    }

    /// Makes the record durable: write the payload from the staging buffer
    /// (checksumming each chunk as it goes and starting its write-back),
    /// `fdatasync` (first barrier), write the header page, `fdatasync`
    /// (second barrier), then replace the commit file for tailers.
    /// A write or sync failure closes the log for good (see
    /// [`WalError::SyncFailed`]); an append begun unfilled and never
    /// [`PendingAppend::fill`]ed writes nothing and leaves the log open.
    pub fn persist(mut self) -> Result<Durable> {
        let started = Instant::now();
        if self.unfilled {
            // Nothing was written: the log stays open, the sequence is
            // spent (FORMAT.md: sequences may have gaps).
            return Err(WalError::Serialize {
                path: self.segment.path.clone(),
                reason: "the append was begun without its payload and never filled".into(),
            });
        }
        let buffer = self
            .staging
            .take()
            .expect("a pending append holds its buffer");
        let result = self.write_and_sync(&buffer);
        staging::give_back(&self.slot, buffer);
        let sync_time = started.elapsed();
        let header = result.inspect_err(|e| {
            // A copy that differs from its original wrote no header and
            // leaves the log usable; any other failure closes it.
            if matches!(e, WalError::CopyDiffers { .. }) {
                return;
            }
            if let Ok(mut p) = self.poison.lock() {
                p.get_or_insert_with(|| e.to_string());
            }
        })?;
        write_commit_file(&self.dir, &header, &self.segment.path);
        Ok(Durable {
            header,
            path: self.segment.path.clone(),
            bytes: record_span(header.payload_len),
            new_segment: self.new_segment,
            sync_time,
        })
    }

    /// The two barriers of [`PendingAppend::persist`]; the header as
    /// written.
    fn write_and_sync(&mut self, buffer: &Staging) -> Result<RecordHeader> {
        let seg = &self.segment;
        let h = &mut self.header;
        let failed = |source| WalError::SyncFailed {
            path: seg.path.clone(),
            source,
        };
        seg.check_size()?;
        let padded = buffer.bytes(page_align(h.payload_len));
        let direct = seg.direct.as_ref().filter(|_| {
            !seg.direct_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        let (checksum, refused) =
            staging::write_payload(&seg.file, direct, h.payload_offset(), padded, h.payload_len)
                .map_err(failed)?;
        if refused {
            seg.direct_refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        h.payload_checksum = checksum;
        if let Some(expected) = self.expect_checksum {
            if expected != h.payload_checksum {
                // No header is written: these bytes never become a record.
                return Err(WalError::CopyDiffers {
                    path: seg.path.clone(),
                    offset: h.offset,
                    expected,
                    found: h.payload_checksum,
                });
            }
        }
        // First barrier: the payload is durable before its header exists.
        seg.sync()?;
        let mut page = vec![0u8; PAGE as usize];
        h.encode(&mut page);
        seg.file.write_all_at(&page, h.offset).map_err(failed)?;
        seg.sync()?;
        Ok(*h)
    }
}

impl Drop for PendingAppend {
    /// An append dropped without being persisted (its thread gave up) still
    /// hands the staging buffer back to the writer.
    fn drop(&mut self) {
        if let Some(buffer) = self.staging.take() {
            staging::give_back(&self.slot, buffer);
        }
    }
}

/// Replaces `COMMIT` with a line naming the newest durable record. It is a
/// notification for `tail -f` (inotify cannot see stores through a mapping),
/// not part of recovery, so it is not fsynced and its failure is only logged.
fn write_commit_file(dir: &Path, h: &RecordHeader, segment: &Path) {
    let tmp = dir.join(format!("{}.tmp", format::COMMIT_FILE));
    let line = format!(
        "sequence={} epoch={} step={} segment={} offset={}\n",
        h.sequence,
        h.epoch,
        h.step,
        segment.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        h.offset
    );
    let res = sys::write_private(&tmp, line.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, dir.join(format::COMMIT_FILE)));
    if let Err(e) = res {
        tracing::warn!(dir = %dir.display(), error = %e, "could not update the commit file (tail -f may lag)");
    }
}
