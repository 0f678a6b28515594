//! `epochwal verify`: the real binary against clean and damaged logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use epochwal::wal::{Log, LogOptions, LogReader, RecordHeader, Retention};

const BIN: &str = env!("CARGO_BIN_EXE_epochwal");

/// Two ~20 KB records per 64 KiB segment.
fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: 64 << 10,
        ..Default::default()
    }
}

fn write_log(dir: &Path, epochs: std::ops::RangeInclusive<u64>, opts: LogOptions) {
    let (mut log, _) = Log::open(dir, opts).unwrap();
    for e in epochs {
        log.append(&common::sample_state(20_000, e)).unwrap();
    }
}

/// (segment path, its record headers) in segment order.
fn layout(dir: &Path) -> Vec<(PathBuf, Vec<RecordHeader>)> {
    LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .into_iter()
        .map(|s| (s.path, s.records))
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn verify(dir: &Path, json: bool) -> Output {
    let mut c = Command::new(BIN);
    c.arg("verify").arg(dir);
    if json {
        c.arg("--json");
    }
    c.output().unwrap()
}

fn verify_json(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = verify(dir, true);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// The damage entries as (file, offset, reason).
fn damage(v: &serde_json::Value) -> Vec<(String, u64, String)> {
    v["damage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_string(),
                d["offset"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has_damage(v: &serde_json::Value, file: &Path, offset: u64, reason_part: &str) -> bool {
    damage(v)
        .iter()
        .any(|(f, o, r)| Path::new(f) == file && *o == offset && r.contains(reason_part))
}

#[test]
fn a_clean_log_passes() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=7, opts());
    let out = verify(dir.path(), false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("7 good, 0 damaged"), "{text}");
    assert!(text.contains("would resume from sequence 7"), "{text}");
    assert!(text.contains("result       clean"), "{text}");

    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(0));
    assert_eq!(v["clean"], true);
    assert_eq!(v["records_good"], 7);
    assert_eq!(v["segments"], 4);
    assert_eq!(v["recovery"]["sequence"], 7);
    assert!(v["damage"].as_array().unwrap().is_empty());
}

#[test]
fn an_empty_directory_is_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = verify(dir.path(), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no epochwal log in"));
}

#[test]
fn a_missing_directory_is_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-log");
    let out = verify(&missing, false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-log") && err.contains("no epochwal log in"),
        "{err}"
    );
}

#[test]
fn retention_gaps_are_warnings_and_stray_files_notes() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 64 << 10,
        retention: Retention {
            keep_records: 2,
            keep_every_epochs: 4,
            ..Default::default()
        },
    };
    write_log(dir.path(), 1..=12, o);
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{v:#}");
    assert!(
        !v["warnings"].as_array().unwrap().is_empty(),
        "segments deleted in the middle give a warning: {v:#}"
    );
    assert!(v["warnings"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("missing"));
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["file"].as_str().unwrap().ends_with("notes.txt")),
        "{v:#}"
    );
}

#[test]
fn every_injected_damage_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=8, opts());
    let segs = layout(dir.path());
    assert_eq!(segs.len(), 4);
    assert!(segs.iter().all(|(_, r)| r.len() == 2));

    // Segment 1: a flipped payload byte in its first record.
    let (s1, r1) = &segs[0];
    flip(s1, r1[0].payload_offset() + 1000);
    // Segment 2: a flipped byte in the header of its first record; the
    // second record lies beyond the damage.
    let (s2, r2) = &segs[1];
    flip(s2, r2[0].offset + 45);
    // Segment 3: truncated in the middle of its second record's payload.
    let (s3, r3) = &segs[2];
    let cut = r3[1].payload_offset() + 500;
    std::fs::OpenOptions::new()
        .write(true)
        .open(s3)
        .unwrap()
        .set_len(cut)
        .unwrap();
    // A garbage file with a segment name.
    let garbage = dir.path().join("00000000000000000009.wal");
    std::fs::write(&garbage, vec![0xa5u8; 3 * 4096]).unwrap();

    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["clean"], false);
    assert!(has_damage(&v, s1, r1[0].offset, "checksum"), "{v:#}");
    assert!(has_damage(&v, s2, r2[0].offset, "record header"), "{v:#}");
    assert!(has_damage(&v, s3, 0, "truncated"), "{v:#}");
    assert!(has_damage(&v, s3, r3[1].offset, "past the end"), "{v:#}");
    assert!(has_damage(&v, &garbage, 0, "segment header"), "{v:#}");
    // Sequence 4 lies behind the bad header, found by searching the pages
    // after it, and the damage says so.
    assert!(
        has_damage(
            &v,
            s2,
            r2[0].offset,
            "1 record(s) after it (sequences 4..=4)"
        ),
        "{v:#}"
    );
    // Good: 2 (seq 2), 4 (behind the damaged header), 5, 7, 8.
    assert_eq!(v["records_good"], 5, "{v:#}");
    assert_eq!(v["records_damaged"], 1, "{v:#}");
    // Recovery picks the newest intact record, in segment 4.
    assert_eq!(v["recovery"]["sequence"], 8);
    assert_eq!(
        Path::new(v["recovery"]["segment"].as_str().unwrap()),
        segs[3].0
    );

    // The text report names the same places.
    let out = verify(dir.path(), false);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    for (file, offset) in [
        (s1, r1[0].offset),
        (s2, r2[0].offset),
        (s3, r3[1].offset),
        (&garbage, 0),
    ] {
        let want = format!("DAMAGE       {} at offset {offset}:", file.display());
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    assert!(text.contains("would resume from sequence 8"), "{text}");
}

#[test]
fn a_damaged_newest_record_changes_the_recovery_choice() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=3, opts());
    let segs = layout(dir.path());
    let (s, r) = segs.last().unwrap();
    let last = r.last().unwrap();
    flip(s, last.payload_offset() + last.payload_len - 1);
    let (code, v) = verify_json(dir.path());
    assert_eq!(code, Some(1));
    assert!(has_damage(&v, s, last.offset, "checksum"), "{v:#}");
    assert_eq!(v["recovery"]["sequence"], 2);
}

#[test]
fn verify_runs_next_to_a_busy_writer() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 64 << 10,
        retention: Retention {
            keep_records: 3,
            ..Default::default()
        },
    };
    write_log(dir.path(), 1..=2, o);
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let (mut log, _) = Log::open(&path, o).unwrap();
        for e in 3..=60 {
            log.append(&common::sample_state(20_000, e)).unwrap();
        }
    });
    let mut runs = 0;
    while !writer.is_finished() || runs < 3 {
        let (code, v) = verify_json(dir.path());
        assert_eq!(code, Some(0), "{v:#}");
        // One snapshot: the record recovery would resume from is the newest
        // one counted, not one the writer appended after the count.
        assert_eq!(v["recovery"]["sequence"], v["last_sequence"], "{v:#}");
        runs += 1;
    }
    writer.join().unwrap();
    eprintln!("{runs} verify runs next to the writer");
}

/// `verify` next to a writer whose record its walk overtook (22's header
/// page passed before the writer wrote it, 23 found after it): a healthy
/// log, not damage.
#[test]
fn verify_is_clean_when_its_walk_overtakes_a_record_in_flight() {
    let (status, text) = common::overtake::run_tool(&["verify", "--json"]).finish();
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(status.code(), Some(0), "{v:#}");
    assert_eq!(v["records_good"], 23, "{v:#}");
    assert_eq!(v["recovery"]["sequence"], 23, "{v:#}");
}
