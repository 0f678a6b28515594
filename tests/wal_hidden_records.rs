//! Records behind a damaged or zeroed record header (FORMAT.md §5.3): they
//! are durable, page alignment makes them findable, and recovery, `verify`
//! and the writer's sequence numbers all see them.

mod common;
mod walkit;

use std::path::Path;
use std::process::Command;

use epochwal::wal::format::{PAGE, RECORD_HEADER_LEN};
use epochwal::wal::{recover, Log, LogReader, WalError};
use walkit::*;

const TB: usize = 16 << 10;

/// Four records (sequences 1..=4) in one segment.
fn four_records() -> (tempfile::TempDir, Vec<Written>, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(1 << 20), TB, 1..=4);
    assert_eq!(segment_names(dir.path()), vec![seg(1)]);
    let path = dir.path().join(seg(1));
    (dir, w, path)
}

fn verify_json(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_epochwal"))
        .arg("verify")
        .arg("--json")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

fn damage_text(v: &serde_json::Value) -> String {
    v["damage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{} at {}: {}", d["file"], d["offset"], d["reason"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Appends one record with a fresh writer and returns its sequence.
fn append_one(dir: &Path) -> u64 {
    // Another test of this process spawning `epochwal verify` holds a copy
    // of every descriptor between its fork and its exec, the LOCK of the
    // writer this test just dropped included: wait that moment out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = loop {
        match Log::open(dir, opts(1 << 20)) {
            Ok((log, _)) => break log,
            Err(WalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    log.append(&common::sample_state(TB, 50))
        .unwrap()
        .header
        .sequence
}

/// Every sequence number in the directory, in segment and file order.
fn all_sequences(dir: &Path) -> Vec<u64> {
    LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.sequence))
        .collect()
}

#[test]
fn a_zeroed_middle_header_hides_nothing() {
    let (dir, w, path) = four_records();
    let at = w[1].header.offset;
    write_at(&path, at, &vec![0u8; PAGE as usize]);

    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(4), "{:?}", reasons(&r));
    assert!(
        r.skipped.iter().any(|s| s.offset == at
            && s.reason.contains("zeroed record header")
            && s.reason.contains("2 record(s) after it (sequences 3..=4)")),
        "{:?}",
        reasons(&r)
    );
    assert_eq!(r.next_sequence, 5);

    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(1), "{v}");
    let text = damage_text(&v);
    assert!(
        text.contains(&format!("at {at}")) && text.contains("2 record(s) after it"),
        "{text}"
    );
    assert_eq!(v["records_good"], 3);
    assert_eq!(v["recovery"]["sequence"], 4);

    // The writer continues the sequence: 3 and 4 are never given again.
    assert_eq!(append_one(dir.path()), 5);
    assert_eq!(all_sequences(dir.path()), vec![1, 3, 4, 5]);
}

#[test]
fn a_damaged_middle_header_hides_nothing() {
    let (dir, w, path) = four_records();
    let at = w[1].header.offset;
    flip_bit(&path, at * 8 + 8 * 50);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(4), "{:?}", reasons(&r));
    assert!(
        r.skipped.iter().any(|s| s.offset == at
            && s.reason.contains("header checksum mismatch")
            && s.reason.contains("2 record(s) after it")),
        "{:?}",
        reasons(&r)
    );
    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(1), "{v}");
    assert!(damage_text(&v).contains("2 record(s) after it"), "{v}");
    assert_eq!(append_one(dir.path()), 5);
}

/// The rule when the records behind the damage are damaged too: the newest
/// intact record by file order, and numbers continue after the highest
/// header present, even one whose payload is bad.
#[test]
fn behind_a_damaged_header_recovery_still_takes_the_newest_intact_record() {
    let (dir, w, path) = four_records();
    write_at(&path, w[1].header.offset, &[0u8; RECORD_HEADER_LEN]);
    flip_bit(&path, (w[3].header.payload_offset() + 100) * 8);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(3), "{:?}", reasons(&r));
    assert!(any_reason(&r, "record 4: payload checksum mismatch"));
    assert_eq!(append_one(dir.path()), 5);
}

/// A header found past damage must still belong here: another log's header,
/// or one claiming another offset, is never a record.
#[test]
fn a_header_past_damage_that_does_not_belong_is_not_a_record() {
    let (dir, w, path) = four_records();
    write_at(&path, w[1].header.offset, &vec![0u8; PAGE as usize]);
    rewrite_record_header(&path, w[3].header.offset, |h| h.log_id ^= 1);
    rewrite_record_header(&path, w[2].header.offset, |h| h.offset += PAGE);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(1), "{:?}", reasons(&r));
    assert!(
        any_reason(&r, "record belongs to another log"),
        "{:?}",
        reasons(&r)
    );
    assert!(any_reason(&r, "says offset"), "{:?}", reasons(&r));
    // Their numbers are still never given again.
    assert_eq!(append_one(dir.path()), 5);
}

/// A zero page that ends a segment (the normal case) is not reported, and a
/// scan of a long empty tail finds nothing.
#[test]
fn the_zero_tail_of_a_segment_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(16 << 20), TB, 1..=2);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(r.skipped.is_empty(), "{:?}", reasons(&r));
    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{v}");
}

/// Sequence numbers of headers that recovery rejects (a record running past
/// the end of a truncated segment) are not given again either.
#[test]
fn a_rejected_headers_sequence_is_not_given_again() {
    let (dir, w, path) = four_records();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(w[3].header.payload_offset() + PAGE).unwrap();
    drop(f);
    let r = recover(dir.path()).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 3);
    assert_eq!(r.next_sequence, 5);
    assert_eq!(append_one(dir.path()), 5);
}
