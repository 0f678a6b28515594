//! The checkpoint log, behaviour by behaviour: round trip, rotation,
//! retention, concurrent readers, the writer lock, read-only directories, and
//! recovery from each kind of damage (one test per kind). The exhaustive
//! versions of the damage cases are in corruption_sweep.rs.

mod common;
mod walkit;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use epochwal::wal::format::{self, PAGE, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use epochwal::wal::{recover, Log, LogOptions, LogReader, Retention, ValidationFigures, WalError};
use walkit::*;

const TB: usize = 16 << 10;

/// A log with three records (sequences 1..=3, epochs 1..=3) in one segment.
fn one_segment_log() -> (tempfile::TempDir, Vec<Written>) {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(256 << 10), TB, 1..=3);
    assert_eq!(segment_names(dir.path()), vec![seg(1)]);
    (dir, w)
}

/// A log with two records per segment in segments 1..=3 (sequences 1..=6).
fn three_segment_log() -> (tempfile::TempDir, Vec<Written>) {
    let dir = tempfile::tempdir().unwrap();
    // a 16 KiB state spans 6 pages; a 52 KiB segment holds two of them.
    let w = append_epochs(dir.path(), opts(13 * PAGE), TB, 1..=6);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
    let per_seg: Vec<u64> = w
        .iter()
        .map(|w| format::parse_segment_file_name(&w.segment).unwrap())
        .collect();
    assert_eq!(per_seg, vec![1, 1, 2, 2, 3, 3]);
    (dir, w)
}

fn assert_appends_after_recovery(dir: &Path, written: &[Written], expect_seq: u64) {
    let before = segment_names(dir);
    let (mut log, _) = Log::open(dir, opts(256 << 10)).unwrap();
    let d = log.append(&common::sample_state(TB, 99)).unwrap();
    drop(log);
    assert_eq!(d.header.sequence, expect_seq, "sequence of the new record");
    let name = d.path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        !before.contains(&name),
        "the writer appended into existing segment {name}"
    );
    let mut all: Vec<Written> = written
        .iter()
        .filter(|w| w.header.sequence != d.header.sequence)
        .cloned()
        .collect();
    all.push(written_from_disk(dir, &name, &d.header));
    let (seq, r) = recovered(dir, &all);
    assert_eq!(seq, Some(expect_seq), "{:?}", reasons(&r));
}

// ---------------------------------------------------------------- round trip

#[test]
fn a_64_mib_state_round_trips_bit_exact_and_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::sample_state(64 << 20, 7);
    assert!(state.tensor_bytes() >= (64 << 20) - 16);
    {
        let (mut log, r) = Log::open(dir.path(), LogOptions::default()).unwrap();
        assert!(r.record.is_none());
        let d = log.append(&state).unwrap();
        assert_eq!(d.header.sequence, 1);
        assert!(d.header.payload_len >= 64 << 20);
    }
    let r = recover(dir.path()).unwrap();
    assert!(r.skipped.is_empty(), "{:?}", reasons(&r));
    let m = r.record.unwrap();
    assert_eq!(m.header().sequence, 1);
    assert_eq!(m.header().epoch, 7);
    let a = m.state();
    assert_eq!(
        a.model.tensors[0].values(),
        &state.model.tensors[0].data[..]
    );
    assert_eq!(
        a.optimizer.params[0].exp_avg(),
        &state.optimizer.params[0].exp_avg[..]
    );
    assert_eq!(
        a.optimizer.params[0].exp_avg_sq(),
        &state.optimizer.params[0].exp_avg_sq[..]
    );
    // zero-copy: the slice points into the mapped payload
    let p = m.payload().as_ptr_range();
    let v = a.model.tensors[0].values().as_ptr_range();
    assert!(p.start as usize <= v.start as usize && v.end as usize <= p.end as usize);
    assert_eq!(m.to_owned_state().unwrap(), state);
}

// ------------------------------------------------------------------ rotation

#[test]
fn small_records_share_a_segment_and_a_large_record_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let seg_bytes = 64 << 10;
    let (mut log, _) = Log::open(dir.path(), opts(seg_bytes)).unwrap();
    let small = |e| common::sample_state(4 << 10, e);
    let d1 = log.append(&small(1)).unwrap();
    let per_segment = (seg_bytes - PAGE) / d1.bytes;
    assert!(
        per_segment >= 2,
        "test needs several small records per segment"
    );
    let mut ds = vec![d1];
    for e in 2..=per_segment + 1 {
        ds.push(log.append(&small(e)).unwrap());
    }
    // the first `per_segment` records fill segment 1, the next opens segment 2
    for (i, d) in ds.iter().enumerate() {
        let expect = if (i as u64) < per_segment { 1 } else { 2 };
        assert_eq!(d.header.segment_no, expect, "record {}", i + 1);
        assert_eq!(d.new_segment, i == 0 || i as u64 == per_segment);
        assert_eq!(d.header.offset % PAGE, 0);
    }
    // a record larger than segment_bytes: a segment of its own, sized to fit
    let big = log.append(&common::sample_state(100 << 10, 50)).unwrap();
    assert!(big.bytes > seg_bytes);
    assert_eq!(big.header.segment_no, 3);
    assert_eq!(big.header.offset, PAGE);
    // the next small one cannot go behind it
    let after = log.append(&small(51)).unwrap();
    assert_eq!(after.header.segment_no, 4);
    drop(log);

    assert_eq!(
        segment_names(dir.path()),
        vec![seg(1), seg(2), seg(3), seg(4)]
    );
    let len = |n| fs::metadata(dir.path().join(seg(n))).unwrap().len();
    assert_eq!(len(1), seg_bytes);
    assert_eq!(len(2), seg_bytes);
    assert_eq!(len(3), PAGE + big.bytes);
    assert_eq!(len(4), seg_bytes);
    let scan = LogReader::open(dir.path()).unwrap().scan().unwrap();
    let counts: Vec<usize> = scan.segments.iter().map(|s| s.records.len()).collect();
    assert_eq!(counts, vec![per_segment as usize, 1, 1, 1]);
    assert!(scan.segments.iter().all(|s| s.problems.is_empty()));
    let seqs: Vec<u64> = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.sequence))
        .collect();
    assert_eq!(seqs, (1..=per_segment + 3).collect::<Vec<_>>());
}

#[test]
fn a_reopened_writer_always_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    append_epochs(dir.path(), opts(1 << 20), TB, 1..=2);
    append_epochs(dir.path(), opts(1 << 20), TB, 3..=3);
    append_epochs(dir.path(), opts(1 << 20), TB, 4..=5);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
    assert_eq!(recovered_seq(dir.path()), Some(5));
}

// ----------------------------------------------------------------- retention

/// Appends epochs 1..=10, each record in a segment of its own; returns the
/// segment numbers left.
fn retained(retention: Retention) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 3 * PAGE, // every 16 KiB record needs its own segment
        retention,
    };
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    for e in 1..=10 {
        let d = log.append(&common::sample_state(TB, e)).unwrap();
        assert_eq!(d.header.segment_no, e);
    }
    drop(log);
    assert_eq!(
        recovered_seq(dir.path()),
        Some(10),
        "the newest record survives retention"
    );
    segment_names(dir.path())
        .iter()
        .map(|n| format::parse_segment_file_name(n).unwrap())
        .collect()
}

fn seg_size() -> u64 {
    // header page + record header page + payload pages of a 16 KiB state
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(3 * PAGE), TB, [1]);
    PAGE + format::record_span(w[0].header.payload_len)
}

#[test]
fn retention_keep_records_keeps_the_newest_n_segments() {
    assert_eq!(
        retained(Retention {
            keep_records: 3,
            ..Default::default()
        }),
        vec![8, 9, 10]
    );
}

#[test]
fn retention_keep_bytes_keeps_the_newest_segments_within_budget() {
    let s = seg_size();
    assert_eq!(
        retained(Retention {
            keep_bytes: 2 * s + s / 2,
            ..Default::default()
        }),
        vec![9, 10]
    );
}

#[test]
fn retention_keep_every_epochs_keeps_milestones_besides_the_newest() {
    assert_eq!(
        retained(Retention {
            keep_records: 2,
            keep_every_epochs: 4,
            ..Default::default()
        }),
        vec![4, 8, 9, 10]
    );
}

#[test]
fn retention_keep_best_pins_the_segments_of_the_lowest_validation_losses() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 3 * PAGE, // one record per segment
        retention: Retention {
            keep_records: 2,
            keep_best: 3,
            ..Default::default()
        },
    };
    // Validation loss of epoch e; epoch 7 has none (a mid-epoch record,
    // say) and epoch 8 a NaN: neither can be among the best.
    let loss = |e: u64| [5.0, 3.0, 8.0, 1.0, 9.0, 2.0, 0.0, f32::NAN, 4.0, 10.0][e as usize - 1];
    let append = |log: &mut Log, e: u64| {
        let state = common::sample_state(TB, e);
        let validation = (e != 7).then_some(ValidationFigures {
            loss: loss(e),
            accuracy: None,
        });
        let p = log.begin_append_with(&state, validation).unwrap();
        let d = p.persist();
        log.finish(&d).unwrap();
        d.unwrap()
    };
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    for e in 1..=6 {
        append(&mut log, e);
    }
    drop(log);
    // Reopened: the writer learns the losses from the headers alone.
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    for e in 7..=10 {
        let d = append(&mut log, e);
        assert_eq!(
            d.header.validation.map(|v| v.loss.to_bits()),
            (e != 7).then(|| loss(e).to_bits())
        );
    }
    drop(log);
    let scan = LogReader::open(dir.path()).unwrap().scan().unwrap();
    let epochs: Vec<u64> = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|h| h.epoch))
        .collect();
    // Best three: epochs 4 (1.0), 6 (2.0), 2 (3.0); newest two: 9, 10.
    assert_eq!(epochs, vec![2, 4, 6, 9, 10]);
}

#[test]
fn retention_never_deletes_the_newest_record_even_with_a_tiny_budget() {
    assert_eq!(
        retained(Retention {
            keep_records: 1,
            keep_bytes: 1,
            keep_every_epochs: 0,
            keep_best: 0,
        }),
        vec![10]
    );
}

#[test]
fn retention_zero_means_keep_everything() {
    assert_eq!(retained(Retention::default()), (1..=10).collect::<Vec<_>>());
}

#[test]
fn retention_deletes_whole_segments_only() {
    // 2 records per segment, keep 3 records: segment 1 (seq 1,2) goes,
    // segment 2 (seq 3,4) stays because seq 4 is among the newest 3.
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 13 * PAGE,
        retention: Retention {
            keep_records: 3,
            ..Default::default()
        },
    };
    let w = append_epochs(dir.path(), o, TB, 1..=6);
    assert_eq!(segment_names(dir.path()), vec![seg(2), seg(3)]);
    assert_eq!(recovered(dir.path(), &w).0, Some(6));
}

// ------------------------------------------------------ retention at open

/// Every 16 KiB record in a segment of its own, with `keep_records`.
fn own_segments(keep_records: u64) -> LogOptions {
    LogOptions {
        segment_bytes: 3 * PAGE,
        retention: Retention {
            keep_records,
            ..Default::default()
        },
    }
}

#[test]
fn opening_deletes_a_segment_the_previous_writer_rotated_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), own_segments(0)).unwrap();
    for e in 1..=2 {
        log.append(&common::sample_state(TB, e)).unwrap();
    }
    // The next record would not fit: segment 3 is created, empty.
    log.prepare_next_append().unwrap();
    drop(log);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);

    let (mut log, r) = Log::open(dir.path(), own_segments(0)).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 2);
    assert_eq!(
        segment_names(dir.path()),
        vec![seg(1), seg(2)],
        "the empty segment is gone before any new segment is needed"
    );
    let d = log.append(&common::sample_state(TB, 3)).unwrap();
    assert_eq!((d.header.sequence, d.header.segment_no), (3, 4));
    drop(log);
    assert_eq!(recovered_seq(dir.path()), Some(3));
}

/// A restart leaves its first segment to `prepare_next_append` (the
/// daemon's persisting thread): `expect_record_of` creates nothing, the
/// preparation creates the segment, and the next record goes into it; an
/// append that comes before any preparation creates the segment itself.
#[test]
fn a_restart_that_expects_a_record_creates_its_segment_when_preparing() {
    let dir = tempfile::tempdir().unwrap();
    append_epochs(dir.path(), own_segments(0), TB, 1..=2);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2)]);

    let (mut log, r) = Log::open(dir.path(), own_segments(0)).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 2);
    let state = common::sample_state(TB, 3);
    let bytes = log.expect_record_of(&state).unwrap();
    assert_eq!(
        segment_names(dir.path()),
        vec![seg(1), seg(2)],
        "nothing is created before the first step"
    );
    log.prepare_next_append().unwrap();
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
    assert_eq!(
        fs::metadata(path_of(dir.path(), &seg(3))).unwrap().len(),
        bytes,
        "the segment has the size expect_record_of announced"
    );
    let d = log.append(&state).unwrap();
    assert_eq!((d.header.sequence, d.header.segment_no), (3, 3));
    drop(log);

    let (mut log, _) = Log::open(dir.path(), own_segments(0)).unwrap();
    log.expect_record_of(&common::sample_state(TB, 4)).unwrap();
    let d = log.append(&common::sample_state(TB, 4)).unwrap();
    assert_eq!((d.header.sequence, d.header.segment_no), (4, 4));
    drop(log);
    assert_eq!(recovered_seq(dir.path()), Some(4));
}

#[test]
fn opening_applies_the_retention_the_next_record_would_apply() {
    let dir = tempfile::tempdir().unwrap();
    append_epochs(dir.path(), own_segments(3), TB, 1..=5);
    assert_eq!(segment_names(dir.path()), vec![seg(3), seg(4), seg(5)]);
    // keep_records = 3 counts the record the reopened writer will append.
    let (mut log, _) = Log::open(dir.path(), own_segments(3)).unwrap();
    assert_eq!(segment_names(dir.path()), vec![seg(4), seg(5)]);
    log.append(&common::sample_state(TB, 6)).unwrap();
    drop(log);
    assert_eq!(segment_names(dir.path()), vec![seg(4), seg(5), seg(6)]);
    // Reopening without appending deletes nothing more.
    drop(Log::open(dir.path(), own_segments(3)).unwrap());
    drop(Log::open(dir.path(), own_segments(3)).unwrap());
    assert_eq!(segment_names(dir.path()), vec![seg(5), seg(6)]);
    assert_eq!(recovered_seq(dir.path()), Some(6));
}

#[test]
fn opening_never_deletes_the_recovered_record_when_a_newer_payload_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), own_segments(2), TB, 1..=3);
    assert_eq!(segment_names(dir.path()), vec![seg(2), seg(3)]);
    // Record 3's header still walks, but its payload no longer validates.
    let newest = path_of(dir.path(), &seg(3));
    flip_bit(&newest, w[2].header.payload_offset() * 8 + 100);
    let (log, r) = Log::open(dir.path(), own_segments(1)).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 2);
    drop(log);
    assert_eq!(
        segment_names(dir.path()),
        vec![seg(2), seg(3)],
        "the segment of the record recovery chose is kept"
    );
    assert_eq!(recovered(dir.path(), &w).0, Some(2));
}

#[test]
fn opening_a_log_without_an_intact_record_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), own_segments(0), TB, 1..=2);
    for x in &w {
        flip_bit(
            &path_of(dir.path(), &x.segment),
            x.header.payload_offset() * 8 + 100,
        );
    }
    let (log, r) = Log::open(dir.path(), own_segments(1)).unwrap();
    assert!(r.record.is_none());
    drop(log);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2)]);
}

// ------------------------------------------------------ concurrent reader

#[test]
fn readers_running_concurrently_with_the_writer_see_only_valid_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let durable = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    const N: u64 = 60;
    let writer = {
        let (path, durable, done) = (path.clone(), durable.clone(), done.clone());
        std::thread::spawn(move || {
            let o = LogOptions {
                segment_bytes: 13 * PAGE,
                retention: Retention {
                    keep_records: 2,
                    ..Default::default()
                },
            };
            let (mut log, _) = Log::open(&path, o).unwrap();
            for e in 1..=N {
                let d = log.append(&common::sample_state(TB, e)).unwrap();
                durable.store(d.header.sequence, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let reader = {
        let (path, durable, done) = (path.clone(), durable.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            let mut loads = 0u64;
            let mut iterations = 0u64;
            let mut rounds_after_done = 0;
            loop {
                // Read before the round, so that the round after the writer
                // finished sees its last record.
                let finished = done.load(Ordering::SeqCst);
                if finished && iterations >= 5 && (last == N || rounds_after_done >= 3) {
                    break;
                }
                if finished {
                    rounds_after_done += 1;
                }
                iterations += 1;
                let floor = durable.load(Ordering::SeqCst);
                let r = recover(&path).unwrap();
                match &r.record {
                    None => assert_eq!(
                        floor,
                        0,
                        "recover found nothing although seq {floor} was durable: {:?}",
                        reasons(&r)
                    ),
                    Some(m) => {
                        let h = m.header();
                        assert!(
                            h.sequence >= floor,
                            "recover returned {} after {floor} was durable: {:?}",
                            h.sequence,
                            reasons(&r)
                        );
                        assert!(
                            h.sequence >= last,
                            "sequence went backwards: {} after {last}",
                            h.sequence
                        );
                        last = h.sequence;
                        let expect = common::sample_state(TB, h.epoch);
                        assert_eq!(
                            m.state().model.tensors[0].values(),
                            &expect.model.tensors[0].data[..]
                        );
                    }
                }
                // a header scan plus loads of every record it lists
                let reader = LogReader::open(&path).unwrap();
                let scan = reader.scan().unwrap();
                for s in &scan.segments {
                    for h in &s.records {
                        // the segment may have been deleted by retention meanwhile
                        if let Ok(m) = reader.load(&s.path, h) {
                            assert_eq!(m.state().epoch.to_native(), h.epoch);
                            loads += 1;
                        }
                    }
                }
            }
            (iterations, loads, last)
        })
    };
    writer.join().unwrap();
    let (iterations, loads, last) = reader.join().unwrap();
    println!("concurrent reader: {iterations} recover+scan rounds, {loads} record loads");
    assert_eq!(last, N);
    assert!(iterations > 5);
}

#[test]
fn recover_keeps_finding_a_record_while_retention_deletes_segments() {
    // one record per segment and keep_records = 1: every append deletes the
    // segment a concurrent recover() may have just listed
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let durable = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    const N: u64 = 100;
    let writer = {
        let (path, durable, done) = (path.clone(), durable.clone(), done.clone());
        std::thread::spawn(move || {
            let o = LogOptions {
                segment_bytes: 3 * PAGE,
                retention: Retention {
                    keep_records: 1,
                    ..Default::default()
                },
            };
            let (mut log, _) = Log::open(&path, o).unwrap();
            for e in 1..=N {
                let d = log.append(&common::sample_state(4 << 10, e)).unwrap();
                durable.store(d.header.sequence, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rounds = 0u64;
    let mut failures = Vec::new();
    let mut last = 0;
    while !done.load(Ordering::SeqCst) {
        rounds += 1;
        let floor = durable.load(Ordering::SeqCst);
        let r = recover(&path).unwrap();
        match r.record.as_ref().map(|m| m.header().sequence) {
            Some(s) if s >= floor && s >= last => last = s,
            None if floor == 0 && last == 0 => {}
            got => failures.push(format!(
                "got {got:?} with seq {floor} durable (last seen {last}): {:?}",
                reasons(&r)
            )),
        }
    }
    writer.join().unwrap();
    println!("recover during retention: {rounds} rounds");
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed, e.g. {}",
        failures.len(),
        failures[0]
    );
}

// ---------------------------------------------------------------------- lock

#[test]
fn a_second_writer_is_refused_with_locked_naming_the_holder_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), opts(1 << 20)).unwrap();
    match Log::open(dir.path(), opts(1 << 20)) {
        Err(e @ WalError::Locked { .. }) => {
            let WalError::Locked { holder, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*holder, Some(std::process::id()));
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(log);
    Log::open(dir.path(), opts(1 << 20)).expect("the lock is released when the writer is dropped");
}

// ------------------------------------------------------------------- damage

#[test]
fn a_newest_record_truncated_inside_its_header_page_recovers_the_previous() {
    let (dir, w) = one_segment_log();
    let p = dir.path().join(seg(1));
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(w[2].header.offset + 64)
        .unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(any_reason(&r, "truncated or extended"), "{:?}", reasons(&r));
    // COMMIT names the damaged record: its number was given and is
    // never given again (FORMAT.md §5 step 7).
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn a_newest_record_truncated_inside_its_payload_recovers_the_previous() {
    let (dir, w) = one_segment_log();
    let p = dir.path().join(seg(1));
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(w[2].header.payload_offset() + 5000)
        .unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(any_reason(&r, "truncated or extended"), "{:?}", reasons(&r));
    assert!(
        any_reason(&r, "extends past the end of the segment"),
        "{:?}",
        reasons(&r)
    );
    // FORMAT.md §5.7: the next sequence is 1 + the highest sequence of any
    // header that passed its checksum, taken or rejected: record 3's header
    // is still there, so 3 is never given again.
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn a_flipped_bit_in_the_newest_record_header_recovers_the_previous() {
    let (dir, w) = one_segment_log();
    flip_bit(
        &dir.path().join(seg(1)),
        w[2].header.offset * 8 + 42 * 8 + 3,
    );
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(
        any_reason(&r, "record header: header checksum mismatch"),
        "{:?}",
        reasons(&r)
    );
    // COMMIT names the damaged record: its number was given and is
    // never given again (FORMAT.md §5 step 7).
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn a_flipped_bit_in_the_newest_payload_recovers_the_previous() {
    let (dir, w) = one_segment_log();
    flip_bit(
        &dir.path().join(seg(1)),
        (w[2].header.payload_offset() + 777) * 8 + 5,
    );
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(
        any_reason(&r, "record 3: payload checksum mismatch"),
        "{:?}",
        reasons(&r)
    );
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn a_zeroed_header_page_makes_that_record_invisible() {
    let (dir, w) = one_segment_log();
    write_at(
        &dir.path().join(seg(1)),
        w[2].header.offset,
        &[0u8; PAGE_US],
    );
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(
        r.skipped.is_empty(),
        "a zero header page is the end of the segment: {:?}",
        reasons(&r)
    );
    assert!(scan_problems(dir.path()).is_empty());
    // COMMIT names the damaged record: its number was given and is
    // never given again (FORMAT.md §5 step 7).
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn a_zeroed_payload_page_recovers_the_previous_and_names_the_checksum() {
    let (dir, w) = one_segment_log();
    write_at(
        &dir.path().join(seg(1)),
        w[2].header.payload_offset() + PAGE,
        &[0u8; PAGE_US],
    );
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(any_reason(&r, "checksum"), "{:?}", reasons(&r));
    assert_appends_after_recovery(dir.path(), &w, 4);
}

#[test]
fn an_empty_newest_segment_after_rotation_is_passed_over_silently() {
    let (dir, w) = three_segment_log();
    // a segment 4 with a valid header and no records, as rotation leaves it
    let mut page = read_at(&dir.path().join(seg(3)), 0, PAGE_US);
    let mut h = format::SegmentHeader::decode(&page).unwrap();
    h.segment_no = 4;
    h.encode(&mut page);
    let f = fs::File::create(dir.path().join(seg(4))).unwrap();
    f.set_len(h.segment_bytes).unwrap();
    write_at(&dir.path().join(seg(4)), 0, &page);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(r.skipped.is_empty(), "{:?}", reasons(&r));
    assert_eq!(r.next_segment_no, 5);
    assert_eq!(r.next_sequence, 7);
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn an_append_abandoned_before_persist_leaves_the_previous_record() {
    // the writer rotated and serialized into the mapping, then "crashed"
    let (dir, w) = three_segment_log();
    {
        let (mut log, _) = Log::open(dir.path(), opts(13 * PAGE)).unwrap();
        let pending = log.begin_append(&common::sample_state(TB, 7)).unwrap();
        assert_eq!(pending.header().segment_no, 4);
        std::mem::forget(pending);
    }
    assert_eq!(segment_names(dir.path()).len(), 4);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(r.skipped.is_empty(), "{:?}", reasons(&r));
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn a_leftover_segment_tmp_file_from_a_crashed_rotation_does_not_block_the_writer() {
    let (dir, w) = three_segment_log();
    // crash between creating the temporary segment and renaming it
    fs::write(dir.path().join(format!("{}.tmp", seg(4))), vec![0xAB; 5000]).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(
        any_reason(&r, "leftover temporary file"),
        "{:?}",
        reasons(&r)
    );
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn unrelated_files_are_reported_and_ignored() {
    let (dir, w) = three_segment_log();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("hs_err_pid123.log"), b"crash").unwrap();
    fs::write(dir.path().join("7.wal"), b"short name").unwrap();
    fs::create_dir(dir.path().join("subdir")).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    for name in ["notes.txt", "hs_err_pid123.log", "7.wal"] {
        assert!(
            r.skipped
                .iter()
                .any(|s| s.file.ends_with(name) && s.reason.contains("not a segment")),
            "{name}: {:?}",
            reasons(&r)
        );
    }
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn a_garbage_file_with_a_segment_name_newer_than_the_log_is_skipped() {
    let (dir, w) = three_segment_log();
    let mut rng = Rng::new(1);
    let mut junk = vec![0u8; 3 * PAGE_US];
    rng.fill(&mut junk);
    fs::write(dir.path().join(seg(9)), &junk).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(
        any_reason(&r, "segment header: bad magic"),
        "{:?}",
        reasons(&r)
    );
    assert_eq!(r.next_segment_no, 10, "the garbage number is never reused");
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn an_empty_file_with_a_segment_name_is_skipped() {
    let (dir, w) = three_segment_log();
    fs::write(dir.path().join(seg(4)), b"").unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(any_reason(&r, "empty file"), "{:?}", reasons(&r));
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn a_missing_middle_segment_does_not_affect_recovery() {
    let (dir, w) = three_segment_log();
    fs::remove_file(dir.path().join(seg(2))).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(r.skipped.is_empty(), "{:?}", reasons(&r));
    let scan = LogReader::open(dir.path()).unwrap().scan().unwrap();
    let nos: Vec<u64> = scan.segments.iter().map(|s| s.segment_no).collect();
    assert_eq!(nos, vec![1, 3]);
    // with the newest segment's records damaged, recovery falls back past the gap
    for o in [w[4].header.payload_offset(), w[5].header.payload_offset()] {
        flip_bit(&dir.path().join(seg(3)), o * 8 + 100);
    }
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2), "{:?}", reasons(&r));
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn an_unknown_record_format_version_is_refused() {
    let (dir, w) = one_segment_log();
    set_version(
        &dir.path().join(seg(1)),
        w[2].header.offset,
        RECORD_HEADER_LEN,
        2,
    );
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(
        any_reason(&r, "unknown format version 2"),
        "{:?}",
        reasons(&r)
    );
}

#[test]
fn a_segment_with_an_unknown_format_version_is_refused() {
    let (dir, w) = three_segment_log();
    set_version(&dir.path().join(seg(3)), 0, SEGMENT_HEADER_LEN, 2);
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(4));
    assert!(
        any_reason(&r, "segment header: unknown format version 2"),
        "{:?}",
        reasons(&r)
    );
    // COMMIT names the damaged record: its number was given and is
    // never given again (FORMAT.md §5 step 7).
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn a_segment_of_another_log_is_refused() {
    let (dir, w) = three_segment_log();
    let (other, _) = three_segment_log();
    fs::copy(other.path().join(seg(2)), dir.path().join(seg(2))).unwrap();
    // damage our newest segment's records so that recovery walks past it
    for o in [w[4].header.payload_offset(), w[5].header.payload_offset()] {
        flip_bit(&dir.path().join(seg(3)), o * 8 + 100);
    }
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2), "{:?}", reasons(&r));
    assert!(
        any_reason(&r, "segment belongs to another log"),
        "{:?}",
        reasons(&r)
    );
}

#[test]
fn a_record_header_of_another_log_is_refused() {
    let (dir, w) = one_segment_log();
    rewrite_record_header(&dir.path().join(seg(1)), w[2].header.offset, |h| {
        h.log_id ^= 1
    });
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(2));
    assert!(
        any_reason(&r, "record belongs to another log"),
        "{:?}",
        reasons(&r)
    );
}

#[test]
fn a_segment_whose_name_differs_from_its_header_is_refused() {
    let (dir, w) = three_segment_log();
    fs::rename(dir.path().join(seg(3)), dir.path().join(seg(5))).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(4));
    assert!(
        any_reason(&r, "segment header says number 3, the file name says 5"),
        "{:?}",
        reasons(&r)
    );
    assert_eq!(r.next_segment_no, 6);
    // the refused segment's headers are not walked (FORMAT.md §5.6)
    assert_appends_after_recovery(dir.path(), &w, 5);
}

#[test]
fn a_duplicated_segment_under_a_newer_name_is_refused() {
    let (dir, w) = three_segment_log();
    fs::copy(dir.path().join(seg(2)), dir.path().join(seg(4))).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(any_reason(&r, "the file name says 4"), "{:?}", reasons(&r));
    assert_appends_after_recovery(dir.path(), &w, 7);
}

#[test]
fn a_segment_named_with_the_largest_number_does_not_break_recovery() {
    let (dir, w) = three_segment_log();
    fs::write(dir.path().join(seg(u64::MAX)), b"junk").unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(seq, Some(6));
    assert!(
        any_reason(&r, "shorter than a segment header"),
        "{:?}",
        reasons(&r)
    );
    // the writer cannot number a new segment: it must say so, not overwrite
    match Log::open(dir.path(), opts(1 << 20))
        .and_then(|(mut l, _)| l.append(&common::sample_state(TB, 9)))
    {
        Ok(d) => panic!("appended into {:?}", d.path),
        Err(e) => println!("writer refused as expected: {e}"),
    }
    assert_eq!(fs::read(dir.path().join(seg(u64::MAX))).unwrap(), b"junk");
}

#[test]
fn an_empty_segment_of_another_log_does_not_hide_this_log() {
    let (dir, w) = three_segment_log();
    let mut page = vec![0u8; 3 * 4096];
    epochwal::wal::SegmentHeader {
        log_id: 0xdead_beef,
        segment_no: 9,
        segment_bytes: 3 * 4096,
        created_unix_ns: 1,
    }
    .encode(&mut page);
    fs::write(dir.path().join(seg(9)), &page).unwrap();
    let (seq, r) = recovered(dir.path(), &w);
    assert_eq!(
        seq,
        Some(w.last().unwrap().header.sequence),
        "{:?}",
        reasons(&r)
    );
}

/// A record that passes its checksum and rkyv validation but disagrees with
/// itself (FORMAT.md §5.4) is damage: recovery falls back to the record
/// before it and `verify` reports it, one case per rule.
#[test]
fn a_self_inconsistent_record_is_passed_over_and_reported_by_verify() {
    type Spoil = fn(&mut epochwal::state::TrainState);
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "shape",
            |s| s.model.tensors[0].shape = vec![3],
            "has shape [3] but",
        ),
        (
            "moments",
            |s| {
                s.optimizer.params[0].exp_avg.pop();
            },
            "Adam moments of fc.weight hold",
        ),
        (
            "duplicate",
            |s| {
                let t = s.model.tensors[0].clone();
                let p = s.optimizer.params[0].clone();
                s.model.tensors.push(t);
                s.optimizer.params.push(p);
            },
            "tensor name fc.weight appears twice",
        ),
        (
            "optimizer count",
            |s| s.optimizer.params.clear(),
            "optimizer has state for 0 parameters",
        ),
    ];
    for (what, spoil, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts(256 << 10)).unwrap();
        for e in 1..=2 {
            log.append(&common::sample_state(4096, e)).unwrap();
        }
        let mut bad = common::sample_state(4096, 3);
        spoil(&mut bad);
        log.append(&bad).unwrap();
        drop(log);

        let r = recover(dir.path()).unwrap();
        assert_eq!(r.record.unwrap().header().sequence, 2, "{what}");
        assert!(
            r.skipped
                .iter()
                .any(|s| s.reason.contains("record 3") && s.reason.contains(reason)),
            "{what}: {:?}",
            r.skipped
        );
        let report = epochwal::tools::verify_log(dir.path()).unwrap();
        assert!(!report.clean, "{what}");
        assert_eq!(report.records_damaged, 1, "{what}");
        assert!(report.damage[0].reason.contains(reason), "{what}");
        assert_eq!(report.recovery.unwrap().sequence, 2, "{what}");
    }
}
