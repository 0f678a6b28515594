//! Helpers for the log tests: directory snapshots, byte surgery on segment
//! files, a tiny deterministic PRNG, and recovery oracles.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use epochwal::wal::format::{self, RecordHeader, SegmentHeader, PAGE};
use epochwal::wal::{recover, Log, LogOptions, LogReader, Recovery};

pub const PAGE_US: usize = PAGE as usize;

/// xorshift64* — deterministic, seedable, good enough for picking cases.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The files of a directory (regular files only), by name.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            out.insert(
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Replaces the contents of `dir` with exactly `files`.
pub fn write_snapshot(dir: &Path, files: &Snapshot) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Names of segment files in `dir`, sorted.
pub fn segment_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| format::parse_segment_file_name(n).is_some())
        .collect();
    v.sort();
    v
}

pub fn seg(n: u64) -> String {
    format::segment_file_name(n)
}

pub fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        ..Default::default()
    }
}

/// One record as written: where it is and its exact payload bytes.
#[derive(Clone, Debug)]
pub struct Written {
    pub header: RecordHeader,
    pub segment: String,
    pub payload: Vec<u8>,
}

/// Reads back the payload bytes of a durable record straight from the file.
pub fn written_from_disk(dir: &Path, segment: &str, header: &RecordHeader) -> Written {
    let bytes = fs::read(dir.join(segment)).unwrap();
    let start = header.payload_offset() as usize;
    Written {
        header: *header,
        segment: segment.to_string(),
        payload: bytes[start..start + header.payload_len as usize].to_vec(),
    }
}

/// Opens a writer on `dir` and appends states of `tensor_bytes` for each
/// epoch in `epochs`; returns what was written.
pub fn append_epochs(
    dir: &Path,
    o: LogOptions,
    tensor_bytes: usize,
    epochs: impl IntoIterator<Item = u64>,
) -> Vec<Written> {
    let (mut log, _) = Log::open(dir, o).unwrap();
    let mut out = Vec::new();
    for e in epochs {
        let d = log
            .append(&crate::common::sample_state(tensor_bytes, e))
            .unwrap();
        let name = d.path.file_name().unwrap().to_str().unwrap().to_string();
        out.push(written_from_disk(dir, &name, &d.header));
    }
    out
}

/// Sequence of the record `recover` returns (None for an empty log), after
/// checking that its payload is byte-identical to one of `written`.
pub fn recovered(dir: &Path, written: &[Written]) -> (Option<u64>, Recovery) {
    let r = recover(dir).unwrap_or_else(|e| panic!("recover failed: {e}"));
    let seq = r.record.as_ref().map(|m| {
        let h = m.header();
        let w = written
            .iter()
            .find(|w| w.header.sequence == h.sequence)
            .unwrap_or_else(|| panic!("recovered sequence {} was never written", h.sequence));
        assert_eq!(h, &w.header, "header differs from the one written");
        assert!(
            m.payload() == &w.payload[..],
            "payload of sequence {} differs from the bytes written",
            h.sequence
        );
        h.sequence
    });
    (seq, r)
}

pub fn reasons(r: &Recovery) -> Vec<String> {
    r.skipped.iter().map(|s| s.to_string()).collect()
}

pub fn any_reason(r: &Recovery, needle: &str) -> bool {
    r.skipped.iter().any(|s| s.reason.contains(needle))
}

/// All problems a full header scan reports, as strings.
pub fn scan_problems(dir: &Path) -> Vec<String> {
    let scan = LogReader::open(dir).unwrap().scan().unwrap();
    let mut v: Vec<String> = scan
        .segments
        .iter()
        .flat_map(|s| s.problems.iter().map(|p| p.to_string()))
        .collect();
    v.extend(scan.others.iter().map(|p| p.to_string()));
    v
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

pub fn flip_bit(path: &Path, bit: u64) {
    let off = bit / 8;
    let mut b = read_at(path, off, 1);
    b[0] ^= 1 << (bit % 8);
    write_at(path, off, &b);
}

/// Decodes, edits and re-encodes (with a correct checksum) a record header.
pub fn rewrite_record_header(path: &Path, offset: u64, edit: impl FnOnce(&mut RecordHeader)) {
    let raw = read_at(path, offset, format::RECORD_HEADER_LEN);
    let mut h = RecordHeader::decode(&raw).unwrap();
    edit(&mut h);
    let mut out = vec![0u8; format::RECORD_HEADER_LEN];
    h.encode(&mut out);
    write_at(path, offset, &out);
}

/// Decodes, edits and re-encodes (with a correct checksum) a segment header.
pub fn rewrite_segment_header(path: &Path, edit: impl FnOnce(&mut SegmentHeader)) {
    let raw = read_at(path, 0, format::SEGMENT_HEADER_LEN);
    let mut h = SegmentHeader::decode(&raw).unwrap();
    edit(&mut h);
    let mut out = vec![0u8; format::SEGMENT_HEADER_LEN];
    h.encode(&mut out);
    write_at(path, 0, &out);
}

/// Sets the version field of a header (record at `offset`, or the segment
/// header at 0) and recomputes its checksum, as a future writer would.
pub fn set_version(path: &Path, offset: u64, header_len: usize, version: u32) {
    let mut raw = read_at(path, offset, header_len);
    raw[8..12].copy_from_slice(&version.to_le_bytes());
    let sum = format::checksum(&raw[..header_len - 8]);
    raw[header_len - 8..].copy_from_slice(&sum.to_le_bytes());
    write_at(path, offset, &raw);
}

/// Copies every file of `from` into a fresh temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for (name, bytes) in snapshot(from) {
        fs::write(to.path().join(name), bytes).unwrap();
    }
    to
}

pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Sequence of the record `recover` returns, without a payload oracle.
pub fn recovered_seq(dir: &Path) -> Option<u64> {
    recover(dir).unwrap().record.map(|m| m.header().sequence)
}
