//! The bytes on disk: segment header, record header, checksums, names.
//!
//! This module is the only place that knows the byte layout; FORMAT.md
//! describes the same layout for people. Decoding never trusts a field before
//! the header checksum has been verified, and every length it returns has been
//! bounded by the caller against the real file size.

use xxhash_rust::xxh3::xxh3_64;

/// Every record header and every payload starts on a multiple of this.
/// It is a format constant (not the machine's page size) so that a log is
/// portable between machines.
pub const PAGE: u64 = 4096;

/// Version of the segment and record framing described in FORMAT.md.
pub const FORMAT_VERSION: u32 = 1;

/// Magic at offset 0 of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"EPWALSEG";
/// Magic at offset 0 of every record header.
pub const RECORD_MAGIC: [u8; 8] = *b"EPWALREC";

/// Bytes of the segment header that carry data (the rest of its page is zero).
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of a record header that carry data (the rest of its page is zero).
pub const RECORD_HEADER_LEN: usize = 128;

/// The largest payload the format accepts: 1 TiB. rkyv is built with 64-bit
/// relative pointers, so the archive itself has no smaller limit; this bound
/// keeps a damaged length field from ever asking for an absurd mapping.
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 40;

/// Suffix of segment files: `00000000000000000007.wal`.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Name of the commit file the writer replaces after every durable append.
pub const COMMIT_FILE: &str = "COMMIT";
/// Name of the writer's lock file.
pub const LOCK_FILE: &str = "LOCK";
/// The configuration a running daemon uses, written by `epochwal run` for
/// `epochwal check-config --running`; not part of the log.
pub const RUNNING_CONFIG_FILE: &str = "RUNNING.toml";
/// Name of the file in which replication (`src/replicate`) reports the newest
/// record the remote copy holds. The log itself never reads it.
pub const REMOTE_FILE: &str = "REMOTE";
/// Name of the file in which replication remembers the multipart upload in
/// progress (object key and upload id), so that the next start can abort
/// one a kill left unfinished. The log itself never reads it.
pub const UPLOAD_FILE: &str = "UPLOAD";
/// Prefix of the temporary file a restore downloads a record object into
/// before it validates it (`src/replicate`); a writer that opens the
/// directory removes leftovers of a killed restore, under its LOCK.
pub const DOWNLOAD_PREFIX: &str = ".epochwal-download-";

/// What the `COMMIT` file says: the newest record the writer reported
/// durable, `sequence=S epoch=E step=T segment=NAME offset=O\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitNote {
    /// The record's sequence number.
    pub sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// The number of the segment it was written to.
    pub segment_no: u64,
    /// Its offset in that segment.
    pub offset: u64,
}

impl CommitNote {
    /// Parses a `COMMIT` line; `None` for anything else (the file is not
    /// fsynced, so after a power cut it may be empty or torn).
    pub fn parse(text: &str) -> Option<CommitNote> {
        let line = text.strip_suffix('\n')?;
        let mut fields = line.split(' ');
        let mut next = |key: &str| fields.next()?.strip_prefix(key)?.strip_prefix('=');
        let sequence = next("sequence")?.parse().ok()?;
        let epoch = next("epoch")?.parse().ok()?;
        let _step: u64 = next("step")?.parse().ok()?;
        let segment_no = parse_segment_file_name(next("segment")?)?;
        let offset = next("offset")?.parse().ok()?;
        Some(CommitNote {
            sequence,
            epoch,
            segment_no,
            offset,
        })
    }

    /// Reads `dir/COMMIT`; `None` if it is absent, unreadable or not a
    /// `COMMIT` line.
    pub fn read(dir: &std::path::Path) -> Option<CommitNote> {
        let text = std::fs::read_to_string(dir.join(COMMIT_FILE)).ok()?;
        CommitNote::parse(&text)
    }

    /// A description of the loss when the record this note names is newer
    /// than `newest` (the newest intact record's sequence; `None`: there is
    /// none) and than every record header found (`highest_header`: a header
    /// still there is reported for what is wrong with its record, damage or
    /// a read error), while its segment is still in `dir` (retention never
    /// deletes the segment of the newest record). `None` otherwise.
    pub fn lost(
        &self,
        dir: &std::path::Path,
        newest: Option<u64>,
        highest_header: u64,
    ) -> Option<String> {
        if newest.is_some_and(|n| n >= self.sequence) || highest_header >= self.sequence {
            return None;
        }
        let name = segment_file_name(self.segment_no);
        if !dir.join(&name).exists() {
            return None;
        }
        Some(format!(
            "{COMMIT_FILE} says record {} (epoch {}) at offset {} of {name} was durable, but {}: \
             the record was damaged or lost after it reached the disk (a crash cannot do that)",
            self.sequence,
            self.epoch,
            self.offset,
            match newest {
                Some(n) => format!("the newest intact record is {n}"),
                None => "no record is intact".to_string(),
            }
        ))
    }
}

/// The checksum used everywhere: XXH3-64 with seed 0.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// [`checksum`] of bytes that arrive in pieces (a payload read with
/// `pread`, chunk by chunk): the same value as `checksum` of the whole.
#[derive(Default)]
pub struct ChecksumStream(xxhash_rust::xxh3::Xxh3Default);

impl ChecksumStream {
    /// An empty stream.
    pub fn new() -> ChecksumStream {
        ChecksumStream::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// The largest segment number a writer creates: a file named with a larger
/// number (only a foreign or planted file can be) leaves no room to go on,
/// and the writer refuses to open the directory until it is moved away.
pub const MAX_SEGMENT_NO: u64 = (1 << 63) - 1;

/// Rounds `n` up to the next multiple of [`PAGE`].
pub fn page_align(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// File name of segment number `n`.
pub fn segment_file_name(n: u64) -> String {
    format!("{n:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name; `None` for anything else.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Space a record with `payload_len` bytes takes in a segment: one header
/// page plus the payload rounded up to whole pages.
pub fn record_span(payload_len: u64) -> u64 {
    PAGE + page_align(payload_len)
}

/// The first page of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Identity of the log this segment belongs to (random at creation).
    pub log_id: u128,
    /// The number in the file name.
    pub segment_no: u64,
    /// Size the file was preallocated to; the file must be exactly this long.
    pub segment_bytes: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_unix_ns: u64,
}

/// Why a header failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Every byte is zero: nothing was ever written here.
    Zeroed,
    /// The magic is not ours.
    BadMagic,
    /// The header checksum does not match its bytes.
    BadChecksum,
    /// A format version this build does not know.
    UnknownVersion(u32),
    /// A field is out of range although the checksum matched.
    Invalid(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Zeroed => write!(f, "zeroed (nothing written)"),
            HeaderError::BadMagic => write!(f, "bad magic (not an epochwal header)"),
            HeaderError::BadChecksum => write!(f, "header checksum mismatch"),
            HeaderError::UnknownVersion(v) => write!(
                f,
                "unknown format version {v} (this build reads version {FORMAT_VERSION})"
            ),
            HeaderError::Invalid(what) => write!(f, "invalid header field: {what}"),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn u128_at(b: &[u8], off: usize) -> u128 {
    u128::from_le_bytes(b[off..off + 16].try_into().expect("16 bytes"))
}

/// Checks magic, checksum and version of a header of `len` bytes whose
/// checksum sits in its last 8 bytes. The order matters: the checksum is
/// verified before any other field is believed.
fn check_frame(b: &[u8], len: usize, magic: &[u8; 8]) -> Result<(), HeaderError> {
    let b = &b[..len];
    if b.iter().all(|&x| x == 0) {
        return Err(HeaderError::Zeroed);
    }
    if &b[..8] != magic {
        return Err(HeaderError::BadMagic);
    }
    if checksum(&b[..len - 8]) != u64_at(b, len - 8) {
        return Err(HeaderError::BadChecksum);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnknownVersion(version));
    }
    if u32_at(b, 12) as usize != len {
        return Err(HeaderError::Invalid("header length"));
    }
    Ok(())
}

impl SegmentHeader {
    /// Encodes into the first [`SEGMENT_HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..SEGMENT_HEADER_LEN];
        b.fill(0);
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.log_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_no.to_le_bytes());
        b[40..48].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_unix_ns.to_le_bytes());
        let sum = checksum(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
    }

    /// Decodes from at least [`SEGMENT_HEADER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Invalid("segment header shorter than 64 bytes"));
        }
        check_frame(b, SEGMENT_HEADER_LEN, &SEGMENT_MAGIC)?;
        let h = SegmentHeader {
            log_id: u128_at(b, 16),
            segment_no: u64_at(b, 32),
            segment_bytes: u64_at(b, 40),
            created_unix_ns: u64_at(b, 48),
        };
        if h.segment_bytes < 2 * PAGE || h.segment_bytes % PAGE != 0 {
            return Err(HeaderError::Invalid("segment size"));
        }
        Ok(h)
    }
}

/// The header page in front of every record's payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordHeader {
    /// Must equal the segment's log id.
    pub log_id: u128,
    /// Must equal the segment's number.
    pub segment_no: u64,
    /// Sequence number, strictly increasing across the whole log.
    pub sequence: u64,
    /// Epochs completed when the snapshot was taken.
    pub epoch: u64,
    /// Global optimizer step when the snapshot was taken.
    pub step: u64,
    /// Offset of this header in the segment (a multiple of [`PAGE`]).
    pub offset: u64,
    /// Length of the rkyv payload that starts at `offset + PAGE`.
    pub payload_len: u64,
    /// XXH3-64 of the payload bytes.
    pub payload_checksum: u64,
    /// Wall-clock time of the snapshot, ns since the Unix epoch.
    pub unix_ns: u64,
    /// Loss of the last mini-batch before the snapshot.
    pub loss: f64,
    /// Schema version of the payload (`crate::state::SCHEMA_VERSION` when
    /// written by this build). Stored as 0 for schema 1, so that binaries
    /// from before the field existed (which require those bytes to be zero)
    /// read schema-1 logs written after it; 0 decodes as 1.
    pub schema_version: u32,
    /// Validation figures of exactly the weights in the payload, when the
    /// trainer evaluated them (at the end of an epoch, with a validation
    /// split); `None` otherwise.
    pub validation: Option<ValidationFigures>,
}

/// What a record header says about the model's quality on held-out data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationFigures {
    /// Mean validation loss.
    pub loss: f32,
    /// Share of validation examples classified right (classification only).
    pub accuracy: Option<f32>,
}

impl ValidationFigures {
    /// Encodes into 8 bytes: loss, then accuracy (NaN for none), f32 LE.
    fn encode(v: Option<ValidationFigures>) -> [u8; 8] {
        let mut b = [0u8; 8];
        if let Some(v) = v {
            b[0..4].copy_from_slice(&v.loss.to_le_bytes());
            b[4..8].copy_from_slice(&v.accuracy.unwrap_or(f32::NAN).to_le_bytes());
        }
        b
    }

    /// All-zero bytes mean "no figures": no real pair encodes to them (an
    /// absent accuracy is NaN, and a cross-entropy loss of 0 means every
    /// example is right, so an accuracy of 0 never goes with it).
    fn decode(b: &[u8]) -> Option<ValidationFigures> {
        if b.iter().all(|&x| x == 0) {
            return None;
        }
        let loss = f32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let accuracy = f32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        Some(ValidationFigures {
            loss,
            accuracy: (!accuracy.is_nan()).then_some(accuracy),
        })
    }
}

/// The order of "best" records: lower validation loss first; between
/// equal losses the older record (lower sequence), which reached it first.
/// Used by `keep_best` retention and by `--best` in the tools.
pub fn best_first(a: (f32, u64), b: (f32, u64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

impl RecordHeader {
    /// The validation loss, when the record has a finite one (a record
    /// without one is never "best").
    pub fn validation_loss(&self) -> Option<f32> {
        self.validation.map(|v| v.loss).filter(|l| l.is_finite())
    }

    /// Offset of the payload in the segment.
    pub fn payload_offset(&self) -> u64 {
        self.offset + PAGE
    }

    /// Offset just past this record (where the next header may start).
    pub fn end_offset(&self) -> u64 {
        self.offset + record_span(self.payload_len)
    }

    /// Encodes into the first [`RECORD_HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..RECORD_HEADER_LEN];
        b.fill(0);
        b[0..8].copy_from_slice(&RECORD_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(RECORD_HEADER_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.log_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_no.to_le_bytes());
        b[40..48].copy_from_slice(&self.sequence.to_le_bytes());
        b[48..56].copy_from_slice(&self.epoch.to_le_bytes());
        b[56..64].copy_from_slice(&self.step.to_le_bytes());
        b[64..72].copy_from_slice(&self.offset.to_le_bytes());
        b[72..80].copy_from_slice(&self.payload_len.to_le_bytes());
        b[80..88].copy_from_slice(&self.payload_checksum.to_le_bytes());
        b[88..96].copy_from_slice(&self.unix_ns.to_le_bytes());
        b[96..104].copy_from_slice(&self.loss.to_le_bytes());
        let stored = if self.schema_version == 1 {
            0
        } else {
            self.schema_version
        };
        b[104..108].copy_from_slice(&stored.to_le_bytes());
        // 108..112 reserved, zero.
        b[112..120].copy_from_slice(&ValidationFigures::encode(self.validation));
        let sum = checksum(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
    }

    /// Decodes from at least [`RECORD_HEADER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<RecordHeader, HeaderError> {
        if b.len() < RECORD_HEADER_LEN {
            return Err(HeaderError::Invalid("record header shorter than 128 bytes"));
        }
        check_frame(b, RECORD_HEADER_LEN, &RECORD_MAGIC)?;
        if b[108..112].iter().any(|&x| x != 0) {
            return Err(HeaderError::Invalid("reserved bytes are not zero"));
        }
        let h = RecordHeader {
            log_id: u128_at(b, 16),
            segment_no: u64_at(b, 32),
            sequence: u64_at(b, 40),
            epoch: u64_at(b, 48),
            step: u64_at(b, 56),
            offset: u64_at(b, 64),
            payload_len: u64_at(b, 72),
            payload_checksum: u64_at(b, 80),
            unix_ns: u64_at(b, 88),
            loss: f64::from_le_bytes(b[96..104].try_into().expect("8 bytes")),
            schema_version: match u32_at(b, 104) {
                0 => 1,
                v => v,
            },
            validation: ValidationFigures::decode(&b[112..120]),
        };
        if h.offset % PAGE != 0 || h.offset < PAGE {
            return Err(HeaderError::Invalid("record offset"));
        }
        if h.payload_len == 0 || h.payload_len > MAX_PAYLOAD_BYTES {
            return Err(HeaderError::Invalid("payload length"));
        }
        if h.sequence == 0 {
            return Err(HeaderError::Invalid("sequence number 0"));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordHeader {
        RecordHeader {
            log_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            segment_no: 3,
            sequence: 42,
            epoch: 7,
            step: 700,
            offset: 3 * PAGE,
            payload_len: 12_345,
            payload_checksum: 0xdead_beef,
            unix_ns: 1_700_000_000_000_000_000,
            loss: 0.125,
            schema_version: 1,
            validation: Some(ValidationFigures {
                loss: 0.5,
                accuracy: Some(0.75),
            }),
        }
    }

    #[test]
    fn schema_version_1_is_stored_as_zero_and_others_as_themselves() {
        let mut page = vec![0u8; RECORD_HEADER_LEN];
        sample().encode(&mut page);
        assert_eq!(u32_at(&page, 104), 0);
        let v7 = RecordHeader {
            schema_version: 7,
            ..sample()
        };
        v7.encode(&mut page);
        assert_eq!(u32_at(&page, 104), 7);
        assert_eq!(RecordHeader::decode(&page).unwrap(), v7);
    }

    #[test]
    fn the_streamed_checksum_equals_the_one_shot_checksum() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut s = ChecksumStream::new();
        for chunk in bytes.chunks(4096 + 17) {
            s.update(chunk);
        }
        assert_eq!(s.finish(), checksum(&bytes));
    }

    #[test]
    fn record_header_round_trips() {
        for validation in [
            sample().validation,
            None,
            Some(ValidationFigures {
                loss: 2.0,
                accuracy: None,
            }),
            Some(ValidationFigures {
                loss: 0.0,
                accuracy: Some(1.0),
            }),
        ] {
            let h = RecordHeader {
                validation,
                ..sample()
            };
            let mut page = vec![0u8; PAGE as usize];
            h.encode(&mut page);
            assert_eq!(RecordHeader::decode(&page).unwrap(), h);
        }
        // A header without figures leaves bytes 104..120 zero, as format
        // version 1 always did.
        let mut page = vec![0u8; PAGE as usize];
        RecordHeader {
            validation: None,
            ..sample()
        }
        .encode(&mut page);
        assert!(page[104..120].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_bit_flip_of_a_record_header_is_rejected() {
        let mut page = vec![0u8; RECORD_HEADER_LEN];
        sample().encode(&mut page);
        for bit in 0..RECORD_HEADER_LEN * 8 {
            let mut b = page.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&b).is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn every_bit_flip_of_a_segment_header_is_rejected() {
        let h = SegmentHeader {
            log_id: 9,
            segment_no: 1,
            segment_bytes: 1 << 20,
            created_unix_ns: 5,
        };
        let mut page = vec![0u8; SEGMENT_HEADER_LEN];
        h.encode(&mut page);
        assert_eq!(SegmentHeader::decode(&page).unwrap(), h);
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut b = page.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&b).is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn zero_page_is_reported_as_zeroed() {
        let page = vec![0u8; PAGE as usize];
        assert_eq!(RecordHeader::decode(&page), Err(HeaderError::Zeroed));
        assert_eq!(SegmentHeader::decode(&page), Err(HeaderError::Zeroed));
    }

    #[test]
    fn segment_names_parse_only_in_canonical_form() {
        assert_eq!(parse_segment_file_name(&segment_file_name(7)), Some(7));
        assert_eq!(parse_segment_file_name("7.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.wal.tmp"),
            None
        );
    }
}
