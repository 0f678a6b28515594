//! Reading the log: directory listing, header scans, validated zero-copy
//! records, and recovery.
//!
//! This is the one record decoder: the writer's recovery, `tail`, `inspect`,
//! `verify` and `export` all go through [`scan_segment`] and
//! [`LogReader::load`]. Readers never take the writer's lock and never
//! create or modify a file, so they work on a read-only directory and next
//! to a running writer.
//!
//! Headers are read with `pread`, bounded by the file's real size, so a short
//! or truncated file gives a clean error rather than a SIGBUS; a payload is
//! read once with `pread` into private memory (an unreadable sector is then
//! an error naming the record, not a SIGBUS), and checksummed, validated and
//! used from there: the bytes checked are the bytes used.
//!
//! An I/O error is never taken for damage: damage is bytes that were read
//! and found wrong, while a failed read says nothing about the bytes. A
//! header that cannot be read makes recovery fail (it cannot know what lies
//! behind it); a payload that cannot be read makes recovery pass over that
//! record, since its header already says what it was.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use super::format::{
    self, page_align, parse_segment_file_name, ChecksumStream, HeaderError, RecordHeader,
    SegmentHeader, PAGE, RECORD_HEADER_LEN,
};
use super::sys::{self, next_data, read_at_most};
use super::{Result, WalError};
use crate::state::{self, ArchivedTrainState, Decoded, TrainState, Upgraded};

/// Something recovery or a scan passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The file concerned.
    pub file: PathBuf,
    /// Byte offset in the file (0 for whole-file problems).
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// The bytes could not be read (an I/O error), as opposed to read and
    /// found wrong.
    pub unreadable: bool,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

fn skip(file: &Path, offset: u64, reason: impl Into<String>) -> Skip {
    Skip {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
        unreadable: false,
    }
}

/// A read that failed while scanning a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFailure {
    /// Where in the file.
    pub offset: u64,
    /// What was being read.
    pub what: &'static str,
    /// The errno, if the error carried one.
    pub errno: Option<i32>,
    /// The error as the system described it.
    pub message: String,
}

impl ReadFailure {
    fn new(offset: u64, what: &'static str, e: &std::io::Error) -> ReadFailure {
        ReadFailure {
            offset,
            what,
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    /// The failure as an error naming `path`.
    pub fn to_error(&self, path: &Path) -> WalError {
        let source = match self.errno {
            Some(n) => std::io::Error::from_raw_os_error(n),
            None => std::io::Error::other(self.message.clone()),
        };
        WalError::unreadable(path, self.offset, self.what, source)
    }
}

/// The result of reading one segment's headers (payloads not checked).
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Path of the segment file.
    pub path: PathBuf,
    /// The number in the file name.
    pub segment_no: u64,
    /// The decoded segment header, if it is intact.
    pub header: Option<SegmentHeader>,
    /// The log the segment belongs to: its header's id, or, when the header
    /// is damaged, the id of the first record header walked in it (`None`:
    /// neither).
    pub log_id: Option<u128>,
    /// The file's size when it was scanned.
    pub file_len: u64,
    /// Record headers that decoded, in file order, including those found
    /// past a damaged or zeroed header by scanning the following pages.
    pub records: Vec<RecordHeader>,
    /// Damage found in this segment (and the read failure, if any).
    pub problems: Vec<Skip>,
    /// Where the next record header would go: just past the last record
    /// found (4096 if none), bounded by the file.
    pub end_offset: u64,
    /// A read of the segment failed: what lies at and after that offset is
    /// unknown. The scan stopped there.
    pub read_failure: Option<ReadFailure>,
    /// The highest sequence number of any record header of this segment
    /// whose checksum matched, taken or rejected (0 if none). The writer
    /// never gives a number that exists anywhere in the directory.
    pub highest_sequence: u64,
}

/// All segments of a directory, header-level.
#[derive(Debug, Clone)]
pub struct LogScan {
    /// The log directory.
    pub dir: PathBuf,
    /// Segments in ascending number order.
    pub segments: Vec<SegmentScan>,
    /// Files in the directory that are not segments (and not the lock or
    /// commit file), with what they look like.
    pub others: Vec<Skip>,
}

impl LogScan {
    /// True if the walk of the newest segment met a damaged or zeroed
    /// record header where a record should start. A scan is not a snapshot:
    /// next to a running writer that is a header page being written right
    /// now (at the end of the walk), or one the walk passed before the
    /// writer wrote it while it found the writer's next record further on.
    /// Only the newest segment can hold such a page: a segment that exists
    /// when the directory is listed is never written before the one
    /// before it is finished.
    pub fn newest_segment_unsettled(&self) -> bool {
        self.segments
            .last()
            .is_some_and(|seg| seg.first_bad_record_header().is_some())
    }
}

impl LogReader {
    /// [`LogReader::scan`], but when [`LogScan::newest_segment_unsettled`]
    /// it waits `settle` and scans again, so that a record a running writer
    /// was writing is not reported as damage. The second scan is returned
    /// whatever it finds.
    pub fn scan_settled(&self, settle: std::time::Duration) -> Result<LogScan> {
        let scan = self.scan()?;
        if settle.is_zero() || !scan.newest_segment_unsettled() {
            return Ok(scan);
        }
        std::thread::sleep(settle);
        self.scan()
    }
}

/// A record whose checksum and rkyv validation passed. Its payload was read
/// once from the file into private read-only memory; the checksum and the
/// validation were computed over exactly these bytes, and nothing reads the
/// file again.
pub struct MappedRecord {
    path: PathBuf,
    header: RecordHeader,
    /// The payload as it was read and checksummed, in private read-only
    /// memory (page-aligned, as rkyv requires).
    map: Mmap,
    /// The state upgraded to the current schema, for a record written with
    /// an older one (`None`: the mapping holds the current schema).
    upgraded: Option<Upgraded>,
}

impl std::fmt::Debug for MappedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRecord")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl MappedRecord {
    /// The record's header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// The segment file the record lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw rkyv payload.
    pub fn payload(&self) -> &[u8] {
        &self.map[..]
    }

    /// The schema version the record was written with (from its header).
    pub fn schema_version(&self) -> u32 {
        self.header.schema_version
    }

    /// The validated training state in the current schema: zero-copy for a
    /// record of the current schema, an upgraded copy for an older one.
    pub fn state(&self) -> &ArchivedTrainState {
        if let Some(up) = &self.upgraded {
            return up.state();
        }
        // SAFETY: `load_record_at` ran full bytecheck validation of exactly
        // these bytes (`validate_archive`) before constructing `self`; they
        // live in private anonymous memory made read-only before that
        // validation, which no file and no other process can change.
        unsafe { rkyv::access_unchecked::<ArchivedTrainState>(self.payload()) }
    }

    /// A fully owned copy of the state (allocates the whole record).
    pub fn to_owned_state(&self) -> Result<TrainState> {
        rkyv::deserialize::<TrainState, rkyv::rancor::Error>(self.state()).map_err(|e| {
            WalError::Damaged {
                path: self.path.clone(),
                offset: self.header.offset,
                reason: format!("deserializing the record failed: {e}"),
            }
        })
    }
}

/// Checks a payload against its header: checksum first, then validation
/// with the archived types of the header's schema version
/// ([`state::decode`]), then agreement with the header. Never reads a field
/// of an unvalidated archive.
pub fn validate_payload<'a>(
    payload: &'a [u8],
    header: &RecordHeader,
) -> std::result::Result<Decoded<'a>, String> {
    if payload.len() as u64 != header.payload_len {
        return Err(format!(
            "payload is {} bytes, header says {}",
            payload.len(),
            header.payload_len
        ));
    }
    check_payload_checksum(format::checksum(payload), header)?;
    validate_archive(payload, header)
}

fn check_payload_checksum(sum: u64, header: &RecordHeader) -> std::result::Result<(), String> {
    if sum != header.payload_checksum {
        return Err(format!(
            "payload checksum mismatch (stored {:016x}, computed {sum:016x})",
            header.payload_checksum
        ));
    }
    Ok(())
}

/// The checks of [`validate_payload`] after the checksum: validation with
/// the archived types of the header's schema version, agreement with the
/// header.
fn validate_archive<'a>(
    payload: &'a [u8],
    header: &RecordHeader,
) -> std::result::Result<Decoded<'a>, String> {
    let decoded = state::decode(header.schema_version, payload).map_err(|e| e.to_string())?;
    let state = decoded.state();
    if state.epoch.to_native() != header.epoch || state.global_step.to_native() != header.step {
        return Err("payload epoch/step disagree with the header".to_string());
    }
    Ok(decoded)
}

/// Segment files of `dir` in ascending order, plus notes about other files.
/// Segment files (number, path) in ascending order, and notes about the rest.
pub(crate) type Listing = (Vec<(u64, PathBuf)>, Vec<Skip>);

pub(crate) fn list_dir(dir: &Path) -> Result<Listing> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            WalError::NotFound {
                path: dir.to_path_buf(),
                what: "no such log directory".into(),
            }
        } else {
            WalError::io(dir, "listing the log directory", e)
        }
    })?;
    let mut segments = Vec::new();
    let mut others = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, "listing the log directory", e))?;
        let name = entry.file_name();
        let path = entry.path();
        let Some(name) = name.to_str() else {
            others.push(skip(&path, 0, "not a segment (name is not UTF-8); ignored"));
            continue;
        };
        if let Some(n) = parse_segment_file_name(name) {
            segments.push((n, path));
        } else if name == format::LOCK_FILE
            || name == format::COMMIT_FILE
            || name == format!("{}.tmp", format::COMMIT_FILE)
            || name == format::RUNNING_CONFIG_FILE
            || name == format!("{}.tmp", format::RUNNING_CONFIG_FILE)
            || name == format::REMOTE_FILE
            || name == format!("{}.tmp", format::REMOTE_FILE)
        {
            continue;
        } else if name.ends_with(".tmp") {
            others.push(skip(
                &path,
                0,
                "leftover temporary file of an interrupted segment creation; ignored",
            ));
        } else {
            others.push(skip(&path, 0, "not a segment file name; ignored"));
        }
    }
    segments.sort();
    Ok((segments, others))
}

/// Reads the headers of one segment. Problems are reported in the result,
/// not as errors, so that one bad file never hides the others.
///
/// The walk goes from record to record (FORMAT.md §5.3). Where it finds no
/// record header where one could start (a damaged header, or a zero page),
/// it reads the first bytes of every later page that holds data: a header
/// that passes every check there is a record that the damage would
/// otherwise hide, and the walk goes on after it. A zero page followed by
/// no record is the normal end of a segment and is not reported.
pub fn scan_segment(path: &Path, segment_no: u64) -> SegmentScan {
    let mut scan = SegmentScan {
        path: path.to_path_buf(),
        segment_no,
        header: None,
        log_id: None,
        file_len: 0,
        records: Vec::new(),
        problems: Vec::new(),
        end_offset: 0,
        read_failure: None,
        highest_sequence: 0,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        // Gone since the listing: retention of a running writer (the caller
        // checks), not a read failure.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            scan.problems
                .push(skip(path, 0, format!("cannot open segment: {e}")));
            return scan;
        }
        Err(e) => {
            scan.fail(ReadFailure::new(0, "opening the segment", &e));
            return scan;
        }
    };
    // No readahead for this descriptor: the walk reads a few bytes per
    // page, and readahead would bring the pages after them into the cache,
    // where ext4's SEEK_DATA counts them as data even over an unwritten
    // (preallocated, never written) tail. The search past the last record
    // then read every page of that tail (12,354 reads for a 16 MiB record
    // in a 64 MiB segment) instead of skipping it.
    sys::advise_random(&file);
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            scan.fail(ReadFailure::new(0, "stat of the segment", &e));
            return scan;
        }
    };
    scan.file_len = len;
    let mut page = vec![0u8; RECORD_HEADER_LEN.max(format::SEGMENT_HEADER_LEN)];
    match read_at_most(&file, &mut page[..format::SEGMENT_HEADER_LEN], 0) {
        Ok(n) if n == format::SEGMENT_HEADER_LEN => {}
        Ok(n) => {
            let reason = if len == 0 {
                "empty file (no segment header)".to_string()
            } else {
                format!("file is {n} bytes, shorter than a segment header")
            };
            scan.problems.push(skip(path, 0, reason));
            return scan;
        }
        Err(e) => {
            scan.fail(ReadFailure::new(0, "reading the segment header", &e));
            return scan;
        }
    }
    // A damaged segment header (the bytes were read and found wrong) does not
    // hide the records after it: each record header carries the log id and
    // the segment number itself, so the walk below goes on without it
    // (FORMAT.md §5.2). A header of an unknown format version is not damage
    // but a newer format, whose records this build cannot know how to read.
    let header = match SegmentHeader::decode(&page) {
        Ok(h) => Some(h),
        Err(e @ HeaderError::UnknownVersion(_)) => {
            scan.problems
                .push(skip(path, 0, format!("segment header: {e}")));
            return scan;
        }
        Err(e) => {
            scan.problems.push(skip(
                path,
                0,
                format!("segment header: {e}; its record headers were walked all the same"),
            ));
            None
        }
    };
    if let Some(header) = header {
        if header.segment_no != segment_no {
            scan.problems.push(skip(
                path,
                0,
                format!(
                    "segment header says number {}, the file name says {segment_no}",
                    header.segment_no
                ),
            ));
            return scan;
        }
        if len != header.segment_bytes {
            scan.problems.push(skip(
                path,
                0,
                format!(
                    "segment is {len} bytes but its header says {}: truncated or extended",
                    header.segment_bytes
                ),
            ));
        }
    }
    scan.header = header;
    scan.log_id = header.map(|h| h.log_id);
    let limit = header.map_or(len, |h| len.min(h.segment_bytes));
    let mut offset = PAGE;
    let mut last_seq = 0;
    // Places where a record header should have started but none did: the
    // offset, what was there (None: a zero page), and the records found
    // before it (to count those found after it).
    let mut gaps: Vec<(u64, Option<String>, usize)> = Vec::new();
    // True while looking for a header past such a place, page by page.
    let mut searching = false;
    // End of the data region being searched (holes are skipped).
    let mut data_end = 0;
    while offset + PAGE <= limit {
        if searching && offset >= data_end {
            match next_data(&file, offset, limit) {
                Ok(Some((start, end))) => {
                    offset = offset.max(page_align(start));
                    data_end = end;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    scan.fail(ReadFailure::new(offset, "looking for data (SEEK_DATA)", &e));
                    break;
                }
            }
        }
        let buf = &mut page[..RECORD_HEADER_LEN];
        match read_at_most(&file, buf, offset) {
            Ok(n) if n == RECORD_HEADER_LEN => {}
            Ok(_) => break,
            Err(e) => {
                scan.fail(ReadFailure::new(offset, "reading a record header", &e));
                break;
            }
        }
        let rec = match RecordHeader::decode(buf) {
            Ok(r) => r,
            Err(e) => {
                if !searching {
                    let what = (e != HeaderError::Zeroed).then(|| format!("record header: {e}"));
                    gaps.push((offset, what, scan.records.len()));
                    searching = true;
                    data_end = 0;
                }
                offset += PAGE;
                continue;
            }
        };
        scan.highest_sequence = scan.highest_sequence.max(rec.sequence);
        let bad = if scan.log_id.is_some_and(|id| rec.log_id != id) {
            Some("record belongs to another log (log id differs from the segment's)".into())
        } else if rec.segment_no != segment_no {
            Some(format!(
                "record header names segment {}, found in segment {segment_no}",
                rec.segment_no
            ))
        } else if rec.offset != offset {
            Some(format!(
                "record header says offset {}, found at {offset}",
                rec.offset
            ))
        } else if rec.end_offset() > limit {
            Some(format!(
                "record of {} payload bytes extends past the end of the segment ({limit} bytes)",
                rec.payload_len
            ))
        } else if rec.sequence <= last_seq {
            Some(format!(
                "sequence {} does not follow {last_seq}",
                rec.sequence
            ))
        } else {
            None
        };
        if let Some(reason) = bad {
            if searching {
                // A whole header that passed its checksum, in the wrong
                // place or order: never a record, always worth a report.
                scan.problems.push(skip(path, offset, reason));
            } else {
                gaps.push((offset, Some(reason), scan.records.len()));
                searching = true;
                data_end = 0;
            }
            offset += PAGE;
            continue;
        }
        searching = false;
        last_seq = rec.sequence;
        offset = rec.end_offset();
        // Without a segment header, the first record decides the log id.
        scan.log_id.get_or_insert(rec.log_id);
        scan.records.push(rec);
    }
    scan.end_offset = scan
        .records
        .last()
        .map_or(PAGE, |r| r.end_offset())
        .min(limit);
    for (at, what, before) in gaps {
        let after = &scan.records[before..];
        let found = match (after.first(), after.last()) {
            (Some(first), Some(last)) => format!(
                "; {} record(s) after it (sequences {}..={}) were found by scanning the following pages",
                after.len(),
                first.sequence,
                last.sequence
            ),
            _ => String::new(),
        };
        match what {
            Some(what) => scan.problems.push(skip(path, at, format!("{what}{found}"))),
            // A zero page with nothing after it is where the segment ends.
            None if found.is_empty() => {}
            None => scan.problems.push(skip(
                path,
                at,
                format!("zeroed record header page where a record should start{found}"),
            )),
        }
    }
    scan
}

impl SegmentScan {
    /// Offset of the first damaged or zeroed record header the walk met
    /// (past the segment header): in the newest segment, next to a running
    /// writer, possibly a record being written (see
    /// [`LogScan::newest_segment_unsettled`]).
    pub fn first_bad_record_header(&self) -> Option<u64> {
        self.problems
            .iter()
            .map(|p| p.offset)
            .filter(|&at| at >= PAGE)
            .min()
    }

    fn fail(&mut self, f: ReadFailure) {
        self.problems.push(Skip {
            file: self.path.clone(),
            offset: f.offset,
            reason: format!(
                "{} failed: {} ({})",
                f.what,
                f.errno.map_or_else(
                    || "no errno".to_string(),
                    |n| super::error::errno_name(&std::io::Error::from_raw_os_error(n))
                ),
                f.message
            ),
            unreadable: true,
        });
        self.read_failure = Some(f);
    }
}

/// Read-only access to a log directory.
#[derive(Debug, Clone)]
pub struct LogReader {
    dir: PathBuf,
}

impl LogReader {
    /// Opens `dir` for reading. Takes no lock and writes nothing.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogReader> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(LogReader { dir }),
            Ok(_) => Err(WalError::NotFound {
                path: dir,
                what: "not a directory".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WalError::NotFound {
                path: dir,
                what: "no such log directory".into(),
            }),
            Err(e) => Err(WalError::io(dir, "opening the log directory", e)),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every segment's headers (no payloads).
    pub fn scan(&self) -> Result<LogScan> {
        let (segments, others) = list_dir(&self.dir)?;
        Ok(LogScan {
            dir: self.dir.clone(),
            segments: segments.iter().map(|(n, p)| scan_segment(p, *n)).collect(),
            others,
        })
    }

    /// Maps one record read-only and validates it (checksum, rkyv, schema).
    pub fn load(&self, segment: &Path, header: &RecordHeader) -> Result<MappedRecord> {
        load_record(segment, header)
    }
}

/// Bytes read per `pread` when loading a payload: large enough that the
/// system call costs little, small enough that the chunk is still in the
/// L2 cache when it is hashed right after.
const LOAD_CHUNK: usize = 256 << 10;

/// Reads `[start, start + buf.len())` of `file` into `buf` with `pread` and
/// returns the checksum of exactly the bytes read, each chunk hashed right
/// after it arrives. A read error is returned with the first unreadable
/// offset; a short read (the file shrank) is damage.
fn read_and_checksum(
    file: &File,
    start: u64,
    buf: &mut [u8],
) -> std::result::Result<std::result::Result<u64, String>, (u64, std::io::Error)> {
    let len = buf.len() as u64;
    let mut sum = ChecksumStream::new();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(LOAD_CHUNK as u64) as usize;
        let at = start + done;
        let chunk = &mut buf[done as usize..done as usize + n];
        match read_at_most(file, chunk, at) {
            Ok(got) if got == n => sum.update(chunk),
            Ok(got) => {
                return Ok(Err(format!(
                    "the file ends at byte {} inside the payload (truncated)",
                    at + got as u64
                )))
            }
            Err(e) => {
                // Find the first unreadable page, so the report says where.
                let mut bad = at;
                let mut page = [0u8; PAGE as usize];
                while bad < at + n as u64 {
                    let m = (PAGE - bad % PAGE).min(at + n as u64 - bad) as usize;
                    if read_at_most(file, &mut page[..m], bad).is_err() {
                        break;
                    }
                    bad += m as u64;
                }
                return Err((bad.min(at + n as u64 - 1), e));
            }
        }
        done += n as u64;
    }
    Ok(Ok(sum.finish()))
}

pub(crate) fn load_record(path: &Path, header: &RecordHeader) -> Result<MappedRecord> {
    load_record_at(path, header, header.payload_offset(), path)
}

/// Reads once and validates (checksum, rkyv, schema) a *copy* of a record
/// kept outside a segment, whose payload starts at `payload_offset` of
/// `file` — for example a record object downloaded from a remote copy
/// (header page at 0, payload at 4096). `name` is what the record reports as
/// its [`MappedRecord::path`] (the object's URL, say); `file` may be deleted
/// as soon as this returns: the record holds the bytes it checked.
pub fn load_record_copy(
    file: &Path,
    header: &RecordHeader,
    payload_offset: u64,
    name: &Path,
) -> Result<MappedRecord> {
    load_record_at(file, header, payload_offset, name)
}

fn load_record_at(
    path: &Path,
    header: &RecordHeader,
    start: u64,
    name: &Path,
) -> Result<MappedRecord> {
    let damaged = |reason: String| WalError::Damaged {
        path: name.to_path_buf(),
        offset: header.offset,
        reason,
    };
    if !state::is_supported(header.schema_version) {
        return Err(WalError::UnsupportedSchema {
            path: path.to_path_buf(),
            offset: header.offset,
            sequence: header.sequence,
            found: header.schema_version,
        });
    }
    let file = File::open(path)
        .map_err(|e| WalError::io(path, "opening the file to read a record's payload", e))?;
    let len = file
        .metadata()
        .map_err(|e| WalError::io(path, "stat of the file to read a record's payload", e))?
        .len();
    let end = start
        .checked_add(header.payload_len)
        .ok_or_else(|| damaged("payload length overflows".into()))?;
    if end > len {
        return Err(damaged(format!(
            "payload ends at byte {end} but the file has only {len} bytes (truncated)"
        )));
    }
    // The payload is read once, with `pread`, into private anonymous memory,
    // and the checksum, the validation and every later use see exactly
    // those bytes. Mapping the file instead would read the medium a second
    // time whenever the page cache dropped a page in between: a failing
    // medium may then return other bytes (trained on, and written into new
    // records under valid checksums) or fail the read (a SIGBUS). A sector
    // that cannot be read is an error naming this record.
    let map_len = usize::try_from(header.payload_len)
        .map_err(|_| damaged("record does not fit in the address space".into()))?;
    let mut buf = MmapOptions::new()
        .len(map_len)
        .map_anon()
        .map_err(|e| WalError::io(path, "allocating memory for a record's payload", e))?;
    let sum = read_and_checksum(&file, start, &mut buf)
        .map_err(|(at, e)| WalError::unreadable(path, at, "reading a record's payload", e))?
        .map_err(damaged)?;
    check_payload_checksum(sum, header).map_err(damaged)?;
    // Read-only from now on: the validated bytes cannot change.
    let map = buf
        .make_read_only()
        .map_err(|e| WalError::io(path, "protecting a record's payload", e))?;
    let upgraded = match validate_archive(&map, header).map_err(damaged)? {
        Decoded::Current(_) => None,
        Decoded::Upgraded(up) => Some(up),
    };
    Ok(MappedRecord {
        path: name.to_path_buf(),
        header: *header,
        map,
        upgraded,
    })
}

fn foreign(path: &Path, segment_id: u128, log_id: u128) -> Skip {
    skip(
        path,
        0,
        format!("segment belongs to another log (id {segment_id:032x}, this log is {log_id:032x})"),
    )
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovery {
    /// The newest record whose header, checksum and rkyv validation pass.
    pub record: Option<MappedRecord>,
    /// Everything passed over on the way, newest first.
    pub skipped: Vec<Skip>,
    /// Whose log this is: the id of the newest segment holding a record
    /// header, or, when no segment holds one, of the newest valid segment.
    pub log_id: Option<u128>,
    /// One past the highest sequence number of any record header that
    /// passed its checksum in the segments visited (taken or rejected).
    pub next_sequence: u64,
    /// One past the highest segment number present in the directory.
    pub next_segment_no: u64,
    /// Segments whose headers were read (recovery stops at the first segment
    /// holding a good record, so this stays small for a long log).
    pub segments_scanned: usize,
    /// `COMMIT` names a record newer than the one chosen, in a segment that
    /// is still in the directory: a record that was durable has since been
    /// damaged or lost (a crash cannot do that, FORMAT.md §2). What to tell
    /// the operator; `None` when nothing is missing.
    pub lost_durable_record: Option<String>,
    /// The sequence `COMMIT` names when [`Recovery::lost_durable_record`]
    /// is set (0 otherwise): it was given to a record, so it is never
    /// given again.
    pub lost_sequence: u64,
    /// The header scans of the segments recovery visited, for the writer's
    /// inventory: scanning a segment again after its payload was read is
    /// slow (the readahead of that read leaves pages of the preallocated
    /// tail in the page cache, which `SEEK_DATA` then counts as data, so
    /// the search past the last record reads that tail page by page).
    pub(crate) scans: Vec<SegmentScan>,
    /// The walk of the newest segment met a bad header page past the
    /// segment header: next to a running writer, possibly a record being
    /// written (see [`LogScan::newest_segment_unsettled`]).
    pub(crate) newest_unsettled: bool,
}

/// Finds the newest intact record in `dir`. Reads segments newest first and
/// stops at the first that yields a record that validates, so its cost is
/// about the size of that record, not the size of the log.
///
/// A record header that cannot be read (an I/O error) is an error: what lies
/// behind it is unknown, and guessing could resume from an old record or,
/// with no header read at all, start a new log next to the old one. A
/// payload that cannot be read only makes recovery pass over that record,
/// with a [`Skip`] marked `unreadable`.
pub fn recover(dir: impl AsRef<Path>) -> Result<Recovery> {
    recover_with(dir.as_ref(), false, None)
}

/// [`recover`], for a reader next to a running writer: when the walk of the
/// newest segment met a bad header page (a record the writer was writing,
/// which the walk passed before finding the next one), it waits `settle`
/// and recovers again, so that the record in flight is not reported as
/// damage. The second result is returned whatever it finds.
pub fn recover_settled(dir: impl AsRef<Path>, settle: std::time::Duration) -> Result<Recovery> {
    let dir = dir.as_ref();
    let first = recover(dir)?;
    if settle.is_zero() || !first.newest_unsettled {
        return Ok(first);
    }
    drop(first);
    std::thread::sleep(settle);
    recover(dir)
}

/// [`recover`] for the writer, which resumes from what it finds and so must
/// trust only what is on the disk: before a segment is read it is fsynced
/// and its clean cached pages are dropped ([`sys::sync_and_forget`]), so
/// that bytes which only the page cache holds (after a failed write-back
/// that another process saw) are neither used nor taken for durable.
/// `keep`, when given, is the log to resume: segments of any other log id
/// are passed over (and reported), whichever is newer.
pub(crate) fn recover_for_writer(dir: &Path, keep: Option<u128>) -> Result<Recovery> {
    recover_with(dir, true, keep)
}

fn recover_with(dir: &Path, writer: bool, keep: Option<u128>) -> Result<Recovery> {
    // A reader running next to a writer can list a segment that retention
    // deletes before it is read (retention deletes only after a newer record
    // is durable, in a newer segment). The listing is then stale: start over
    // rather than fall back to older segments, which may be gone as well or
    // hold only records older than one already durable.
    let mut attempts = 0;
    loop {
        let (out, vanished) = recover_once(dir, writer, keep)?;
        attempts += 1;
        if !vanished || attempts >= 100 {
            return Ok(out);
        }
    }
}

/// One pass of [`recover`]; the flag says a listed segment disappeared.
fn recover_once(dir: &Path, writer: bool, keep: Option<u128>) -> Result<(Recovery, bool)> {
    // Read before the listing: a record `COMMIT` names was durable before
    // the listing, so a writer appending meanwhile cannot make it look lost.
    let commit = format::CommitNote::read(dir);
    let (segments, others) = list_dir(dir)?;
    let mut vanished = false;
    let mut out = Recovery {
        record: None,
        skipped: others,
        log_id: keep,
        lost_durable_record: None,
        lost_sequence: 0,
        next_sequence: 1,
        // Saturating: a file named with the largest number must not panic a
        // reader; the writer refuses to create a segment that already exists.
        next_segment_no: segments.last().map_or(1, |(n, _)| n.saturating_add(1)),
        segments_scanned: 0,
        scans: Vec::new(),
        newest_unsettled: false,
    };
    let mut newest_header_id = None;
    // Empty segments passed before the log's id was known.
    let mut undecided: Vec<(PathBuf, u128)> = Vec::new();
    'segments: for (n, path) in segments.iter().rev() {
        if writer {
            sys::sync_and_forget(path).map_err(|(what, source)| WalError::NotDurable {
                path: path.clone(),
                what,
                source,
            })?;
        }
        let scan = scan_segment(path, *n);
        if !scan.problems.is_empty() && !path.exists() {
            vanished = true;
            break 'segments;
        }
        if let Some(f) = &scan.read_failure {
            return Err(f.to_error(path));
        }
        out.segments_scanned += 1;
        if out.segments_scanned == 1 {
            out.newest_unsettled = scan.first_bad_record_header().is_some();
        }
        out.skipped.extend(scan.problems.iter().cloned());
        if writer {
            out.scans.push(scan.clone());
        }
        // A segment whose header is damaged still has an id when a record
        // header was walked in it (FORMAT.md §5.2).
        let Some(seg_id) = scan.log_id else { continue };
        newest_header_id.get_or_insert(seg_id);
        match out.log_id {
            // An empty segment (rotated ahead, or planted) does not decide
            // whose log this is; the newest segment holding a record does.
            None if scan.records.is_empty() => {
                undecided.push((path.clone(), seg_id));
                continue;
            }
            None => {
                out.log_id = Some(seg_id);
                for (p, id) in undecided.drain(..).filter(|(_, id)| *id != seg_id) {
                    out.skipped.push(foreign(&p, id, seg_id));
                }
            }
            Some(id) if id != seg_id => {
                out.skipped.push(foreign(path, seg_id, id));
                continue;
            }
            Some(_) => {}
        }
        out.next_sequence = out
            .next_sequence
            .max(scan.highest_sequence.saturating_add(1));
        for rec in scan.records.iter().rev() {
            match load_record(path, rec) {
                Ok(m) => {
                    if let Some(c) = commit {
                        out.lost_durable_record =
                            c.lost(dir, Some(m.header().sequence), out.next_sequence - 1);
                        if out.lost_durable_record.is_some() {
                            out.lost_sequence = c.sequence;
                        }
                    }
                    out.record = Some(m);
                    return Ok((out, vanished));
                }
                Err(_) if !path.exists() => {
                    vanished = true;
                    break 'segments;
                }
                // Not damage: a newer binary wrote it. Falling back to an
                // older record would silently roll the run back.
                Err(e @ WalError::UnsupportedSchema { .. }) => return Err(e),
                Err(WalError::Damaged { reason, .. }) => out.skipped.push(skip(
                    path,
                    rec.offset,
                    format!("record {}: {reason}", rec.sequence),
                )),
                Err(e @ WalError::Unreadable { .. }) => out.skipped.push(Skip {
                    unreadable: true,
                    ..skip(
                        path,
                        rec.offset,
                        format!(
                            "record {} (epoch {}) cannot be read: {e}",
                            rec.sequence, rec.epoch
                        ),
                    )
                }),
                // Opening the segment or allocating memory for the payload
                // failed (EMFILE, ENOMEM, EACCES, ...): not damage, and not
                // a verdict on the bytes. Passing over the record would
                // resume from an older one, or start a fresh run beside it.
                Err(e) => return Err(e),
            }
        }
    }
    // No record anywhere: the log is still the one its newest segment says.
    out.log_id = out.log_id.or(newest_header_id);
    if out.lost_durable_record.is_some() {
        out.lost_sequence = commit.map_or(0, |c| c.sequence);
    }
    if let Some(c) = commit.filter(|_| !vanished) {
        out.lost_durable_record = c.lost(dir, None, out.next_sequence - 1);
    }
    Ok((out, vanished))
}
