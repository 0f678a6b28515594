//! Corruption sweeps: direct mutations of a valid, synced log, each asserting
//! exactly which record `recover` returns and what it (or a scan) reports.
//!
//! The fixture: segment 1 holds records 1..=3, segment 2 holds records
//! 4..=6 (8 KiB states: one header page + three payload pages each, 64 KiB
//! segments). Mutations are made in place and undone after each case.

mod common;
mod walkit;

use std::fs;
use std::path::{Path, PathBuf};

use epochwal::wal::format::{self, PAGE, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use epochwal::wal::{recover, LogReader};
use walkit::*;

const TB: usize = 8 << 10;

struct Fx {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    w: Vec<Written>,
    orig: Vec<Vec<u8>>, // orig[0] = segment 1, orig[1] = segment 2
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let w = append_epochs(dir.path(), opts(64 << 10), TB, 1..=6);
        assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2)]);
        let nos: Vec<u64> = w.iter().map(|w| w.header.segment_no).collect();
        assert_eq!(nos, vec![1, 1, 1, 2, 2, 2]);
        // 1 header page + 3 payload pages
        assert_eq!(format::record_span(w[0].header.payload_len), 4 * PAGE);
        let orig = vec![
            fs::read(dir.path().join(seg(1))).unwrap(),
            fs::read(dir.path().join(seg(2))).unwrap(),
        ];
        Fx {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            w,
            orig,
        }
    }
    fn seg_path(&self, n: u64) -> PathBuf {
        self.dir.join(seg(n))
    }
    fn restore(&self) {
        for n in 1..=2u64 {
            let p = self.seg_path(n);
            let cur = fs::read(&p).unwrap_or_default();
            if cur != self.orig[n as usize - 1] {
                fs::write(&p, &self.orig[n as usize - 1]).unwrap();
            }
        }
    }
    /// Recovers and checks the sequence (and payload bytes) and that some
    /// skip reason contains `reason` (empty: nothing may be skipped).
    fn expect(&self, case: &str, seq: Option<u64>, reason: &str) {
        let (got, r) = recovered(&self.dir, &self.w);
        assert_eq!(got, seq, "{case}: skipped {:?}", reasons(&r));
        // `epochwal verify` agrees on the choice and reports the same thing.
        let v = epochwal::tools::verify_log(&self.dir).unwrap();
        assert_eq!(
            v.recovery.as_ref().map(|c| c.sequence),
            seq,
            "{case}: verify"
        );
        let said: Vec<&str> = v
            .damage
            .iter()
            .chain(&v.warnings)
            .chain(&v.notes)
            .map(|i| i.reason.as_str())
            .collect();
        if !reason.is_empty() {
            // Recovery says "record N: why", verify "record N (epoch E): why".
            let why = match reason.split_once(": ") {
                Some((head, rest)) if head.starts_with("record ") => rest,
                _ => reason,
            };
            assert!(
                said.iter().any(|s| s.contains(why)),
                "{case}: verify does not mention {why:?}: {said:?}"
            );
        }
        if reason.is_empty() {
            assert!(
                r.skipped.is_empty(),
                "{case}: unexpected skips {:?}",
                reasons(&r)
            );
        } else {
            assert!(
                any_reason(&r, reason),
                "{case}: no skip mentions {reason:?}: {:?}",
                reasons(&r)
            );
        }
    }
    fn hdr(&self, seq: u64) -> u64 {
        self.w[seq as usize - 1].header.offset
    }
    fn payload(&self, seq: u64) -> (u64, u64) {
        let h = &self.w[seq as usize - 1].header;
        (h.payload_offset(), h.payload_len)
    }
}

fn truncate(p: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The newest record of segment 2 that lies wholly inside `t` bytes (the
/// walk requires the whole page-aligned span), else record 3 of segment 1.
fn expected_after_truncation(fx: &Fx, t: u64) -> u64 {
    if t < SEGMENT_HEADER_LEN as u64 {
        return 3;
    }
    (4..=6)
        .rev()
        .find(|&s| fx.w[s as usize - 1].header.end_offset() <= t)
        .unwrap_or(3)
}

#[test]
fn truncating_the_newest_segment_at_every_header_offset_and_many_payload_offsets() {
    let fx = Fx::new();
    let p = fx.seg_path(2);
    let full = fx.orig[1].len() as u64;
    let mut offsets: Vec<u64> = (0..=SEGMENT_HEADER_LEN as u64 + 1).collect();
    offsets.extend([PAGE - 1, PAGE, PAGE + 1]);
    for s in 4..=6 {
        let o = fx.hdr(s);
        offsets.extend(o..=o + RECORD_HEADER_LEN as u64);
        offsets.extend([o + PAGE - 1, o + PAGE, o + PAGE + 1]);
        let (po, pl) = fx.payload(s);
        offsets.extend((po..po + pl).step_by(29));
        offsets.extend([
            po + pl - 1,
            po + pl,
            po + pl + 1,
            fx.w[s as usize - 1].header.end_offset(),
        ]);
    }
    offsets.extend([full - PAGE, full - 1]);
    offsets.sort();
    offsets.dedup();
    for &t in &offsets {
        truncate(&p, t);
        let expect = expected_after_truncation(&fx, t);
        let reason = if t == 0 {
            "empty file"
        } else if t < SEGMENT_HEADER_LEN as u64 {
            "shorter than a segment header"
        } else {
            "truncated or extended"
        };
        fx.expect(&format!("truncate segment 2 at {t}"), Some(expect), reason);
        // a record header cut inside the file's end is reported by the walk
        if let Some(s) = (4..=6).find(|&s| {
            let h = &fx.w[s as usize - 1].header;
            h.offset + PAGE <= t && t < h.end_offset()
        }) {
            let r = recover(&fx.dir).unwrap();
            assert!(
                any_reason(&r, "extends past the end of the segment"),
                "truncate at {t} (record {s}): {:?}",
                reasons(&r)
            );
        }
        fx.restore();
    }
    println!("sweep truncate-newest-segment: {} cases", offsets.len());
}

#[test]
fn truncating_an_older_segment_is_reported_by_a_scan_and_does_not_change_recovery() {
    let fx = Fx::new();
    let p = fx.seg_path(1);
    let full = fx.orig[0].len() as u64;
    let offsets: Vec<u64> = (0..full).step_by(211).collect();
    for &t in &offsets {
        truncate(&p, t);
        fx.expect(&format!("truncate segment 1 at {t}"), Some(6), "");
        let problems = scan_problems(&fx.dir);
        assert!(
            problems.iter().any(|s| s.contains(&seg(1))),
            "truncate segment 1 at {t}: scan reported nothing: {problems:?}"
        );
        fx.restore();
    }
    println!("sweep truncate-older-segment: {} cases", offsets.len());
}

#[test]
fn every_bit_flip_of_a_record_header_is_rejected_and_reported() {
    let fx = Fx::new();
    let p = fx.seg_path(2);
    let mut cases = 0;
    // newest record, a middle record, and the first record of the segment:
    // past a bad header the walk searches the following pages, so later
    // records of the segment are still found (FORMAT.md §5.3)
    for (target, expect) in [(6, 5), (5, 6), (4, 6)] {
        let o = fx.hdr(target);
        for bit in 0..RECORD_HEADER_LEN as u64 * 8 {
            flip_bit(&p, o * 8 + bit);
            let byte = bit / 8;
            let reason = if byte < 8 {
                "record header: bad magic"
            } else {
                "record header: header checksum mismatch"
            };
            fx.expect(
                &format!("flip bit {bit} of record {target}'s header"),
                Some(expect),
                reason,
            );
            flip_bit(&p, o * 8 + bit);
            cases += 1;
        }
    }
    println!("sweep record-header-bit-flips: {cases} cases");
}

#[test]
fn every_bit_flip_of_a_segment_header_is_rejected_and_reported() {
    let fx = Fx::new();
    let mut cases = 0;
    for bit in 0..SEGMENT_HEADER_LEN as u64 * 8 {
        // newest segment: the damaged header is reported, and hides
        // nothing: its records are walked all the same (FORMAT.md §5.2)
        flip_bit(&fx.seg_path(2), bit);
        let reason = if bit / 8 < 8 {
            "segment header: bad magic"
        } else {
            "segment header: header checksum mismatch"
        };
        fx.expect(
            &format!("flip bit {bit} of segment 2's header"),
            Some(6),
            reason,
        );
        flip_bit(&fx.seg_path(2), bit);
        // older segment: recovery unchanged, a scan reports it
        flip_bit(&fx.seg_path(1), bit);
        fx.expect(
            &format!("flip bit {bit} of segment 1's header"),
            Some(6),
            "",
        );
        let problems = scan_problems(&fx.dir);
        assert!(
            problems
                .iter()
                .any(|s| s.contains(&seg(1)) && s.contains("segment header")),
            "bit {bit}: {problems:?}"
        );
        flip_bit(&fx.seg_path(1), bit);
        cases += 2;
    }
    println!("sweep segment-header-bit-flips: {cases} cases");
}

#[test]
fn sampled_bit_flips_of_the_newest_payload_fall_back_to_the_previous_record() {
    let fx = Fx::new();
    let p = fx.seg_path(2);
    let (po, pl) = fx.payload(6);
    let mut rng = Rng::new(0xB17F_11F5);
    let n = 2000;
    for _ in 0..n {
        let bit = po * 8 + rng.below(pl * 8);
        flip_bit(&p, bit);
        fx.expect(
            &format!("flip payload bit {bit}"),
            Some(5),
            "record 6: payload checksum mismatch",
        );
        flip_bit(&p, bit);
    }
    // bits outside the record's bytes (the header page's unused tail, the
    // last payload page after the payload) change nothing
    let h = fx.w[5].header;
    let mut padding = 0;
    for _ in 0..200 {
        let bit = if rng.chance(1, 2) {
            (h.offset + RECORD_HEADER_LEN as u64) * 8
                + rng.below((PAGE - RECORD_HEADER_LEN as u64) * 8)
        } else {
            (po + pl) * 8 + rng.below((h.end_offset() - po - pl) * 8)
        };
        flip_bit(&p, bit);
        fx.expect(&format!("flip padding bit {bit}"), Some(6), "");
        flip_bit(&p, bit);
        padding += 1;
    }
    println!("sweep payload-bit-flips: {n} cases (+{padding} padding flips)");
}

#[test]
fn zeroing_each_page_gives_the_newest_record_still_intact() {
    let fx = Fx::new();
    let zero = vec![0u8; PAGE_US];
    let mut cases = 0;
    for segment in [2u64, 1] {
        let p = fx.seg_path(segment);
        let pages = fx.orig[segment as usize - 1].len() as u64 / PAGE;
        for page in 0..pages {
            let off = page * PAGE;
            write_at(&p, off, &zero);
            let recs: Vec<&Written> =
                fx.w.iter()
                    .filter(|w| w.header.segment_no == segment)
                    .collect();
            let (expect, reason) = if segment == 1 {
                (6, "") // recovery never reads segment 1
            } else if page == 0 {
                // a zeroed segment header hides none of its records
                (6, "segment header: zeroed")
            } else if let Some(r) = recs.iter().find(|r| r.header.offset == off) {
                // a zero header page hides that record only: the records
                // after it are found by searching the following pages, and
                // the zero page is then reported; a zeroed newest header
                // looks like the end of the segment
                match r.header.sequence {
                    6 => (5, ""),
                    _ => (6, "zeroed record header page where a record should start"),
                }
            } else if off >= fx.w[5].header.payload_offset() && off < fx.w[5].header.end_offset() {
                (5, "record 6: payload checksum mismatch")
            } else {
                (6, "") // payload of an older record, or the unused tail
            };
            let was_zero = fx.orig[segment as usize - 1][off as usize..(off + PAGE) as usize]
                .iter()
                .all(|&b| b == 0);
            fx.expect(
                &format!("zero page {page} of segment {segment} (was zero: {was_zero})"),
                Some(expect),
                reason,
            );
            fx.restore();
            cases += 1;
        }
    }
    println!("sweep zero-each-page: {cases} cases");
}

#[test]
fn garbage_after_the_last_record_is_reported_and_the_newest_record_kept() {
    let fx = Fx::new();
    let p = fx.seg_path(2);
    let next = fx.w[5].header.end_offset();
    let mut rng = Rng::new(77);
    let mut cases = 0;
    for _ in 0..50 {
        // a non-zero page where the next header would go
        let mut page = vec![0u8; PAGE_US];
        let n = 1 + rng.below(PAGE) as usize;
        rng.fill(&mut page[..n]);
        write_at(&p, next, &page);
        let reason = if page[..RECORD_HEADER_LEN].iter().all(|&b| b == 0) {
            ""
        } else {
            "record header: bad magic"
        };
        fx.expect("garbage header slot", Some(6), reason);
        fx.restore();
        // garbage further on, behind a zero header page: searched for a
        // header (FORMAT.md §5.3), but random bytes are none
        let later = next + PAGE * (1 + rng.below((fx.orig[1].len() as u64 - next) / PAGE - 1));
        write_at(&p, later, &page);
        fx.expect("garbage behind the zero header page", Some(6), "");
        fx.restore();
        cases += 2;
    }
    println!("sweep garbage-after-last-record: {cases} cases");
}

#[test]
fn bad_segment_files_are_skipped_with_a_reason() {
    let fx = Fx::new();
    let mut rng = Rng::new(4242);
    let mut cases = 0;
    // random bytes of various sizes under valid names, newer, between and older
    for &size in &[0usize, 1, 63, 64, 65, 4095, 4096, 8192, 20000, 65536] {
        for &n in &[0u64, 3, 10, 999] {
            let mut junk = vec![0u8; size];
            rng.fill(&mut junk);
            let path = fx.seg_path(n);
            fs::write(&path, &junk).unwrap();
            let reason = match size {
                0 => "empty file",
                s if s < SEGMENT_HEADER_LEN => "shorter than a segment header",
                _ => "segment header: bad magic",
            };
            let r = recover(&fx.dir).unwrap();
            // an older garbage segment is never visited by recovery, but a scan reports it
            if n > 2 {
                fx.expect(
                    &format!("{size} random bytes as segment {n}"),
                    Some(6),
                    reason,
                );
            } else {
                fx.expect(&format!("{size} random bytes as segment {n}"), Some(6), "");
                assert!(
                    scan_problems(&fx.dir).iter().any(|p| p.contains(reason)),
                    "{size} bytes as segment {n}"
                );
            }
            assert_eq!(r.next_segment_no, n.max(2) + 1);
            fs::remove_file(&path).unwrap();
            cases += 1;
        }
    }
    // a copy of segment 1 under every other free name: header/name mismatch
    for n in [0u64, 3, 4, 17] {
        fs::copy(fx.seg_path(1), fx.seg_path(n)).unwrap();
        let reason = format!("segment header says number 1, the file name says {n}");
        if n > 2 {
            fx.expect(&format!("copy of segment 1 as {n}"), Some(6), &reason);
        } else {
            fx.expect(&format!("copy of segment 1 as {n}"), Some(6), "");
            assert!(scan_problems(&fx.dir).iter().any(|p| p.contains(&reason)));
        }
        fs::remove_file(fx.seg_path(n)).unwrap();
        cases += 1;
    }
    // segment 2 under a wrong (newer) name: refused, recovery falls back
    fs::rename(fx.seg_path(2), fx.seg_path(5)).unwrap();
    fx.expect(
        "segment 2 renamed to 5",
        Some(3),
        "segment header says number 2, the file name says 5",
    );
    fs::rename(fx.seg_path(5), fx.seg_path(2)).unwrap();
    cases += 1;
    // the newest segment gone entirely (a missing tail segment)
    fs::rename(fx.seg_path(2), fx.dir.join("moved-away")).unwrap();
    fx.expect("segment 2 missing", Some(3), "not a segment file name");
    fs::rename(fx.dir.join("moved-away"), fx.seg_path(2)).unwrap();
    cases += 1;
    // the oldest segment gone: nothing to report, recovery unchanged
    fs::rename(fx.seg_path(1), fx.dir.join("x.tmp")).unwrap();
    fx.expect("segment 1 missing", Some(6), "leftover temporary file");
    fs::rename(fx.dir.join("x.tmp"), fx.seg_path(1)).unwrap();
    cases += 1;
    // unknown format version (checksum correct) in the segment header
    set_version(&fx.seg_path(2), 0, SEGMENT_HEADER_LEN, 2);
    fx.expect(
        "segment 2 version 2",
        Some(3),
        "segment header: unknown format version 2",
    );
    fx.restore();
    // a wrong segment size in an otherwise valid header
    rewrite_segment_header(&fx.seg_path(2), |h| h.segment_bytes += PAGE);
    fx.expect(
        "segment 2 header claims one page more",
        Some(6),
        "truncated or extended",
    );
    fx.restore();
    // segment 2's header names another log id: its records name the old id
    // and are refused, so it holds no record and does not decide the log
    // (FORMAT.md §5.2); segment 1 does, and segment 2 is reported as foreign
    rewrite_segment_header(&fx.seg_path(2), |h| h.log_id ^= 0xff);
    fx.expect(
        "segment 2 with another log id",
        Some(3),
        "record belongs to another log",
    );
    let r = recover(&fx.dir).unwrap();
    assert!(
        any_reason(&r, "segment belongs to another log"),
        "{:?}",
        reasons(&r)
    );
    fx.restore();
    // record header claiming a payload running past the segment
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.payload_len = 1 << 39);
    fx.expect(
        "record 6 with a huge payload length",
        Some(5),
        "extends past the end of the segment",
    );
    fx.restore();
    // record header at the wrong offset, wrong segment number, stale sequence
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.offset += PAGE);
    fx.expect(
        "record 6 claims another offset",
        Some(5),
        "record header says offset",
    );
    fx.restore();
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.segment_no = 1);
    fx.expect(
        "record 6 claims segment 1",
        Some(5),
        "record header names segment 1",
    );
    fx.restore();
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.sequence = 5);
    fx.expect(
        "record 6 repeats sequence 5",
        Some(5),
        "sequence 5 does not follow 5",
    );
    fx.restore();
    // header and payload disagree (valid checksums, epoch changed)
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.epoch += 1);
    fx.expect(
        "record 6 header epoch differs from payload",
        Some(5),
        "epoch/step disagree",
    );
    fx.restore();
    // header checksum right, payload checksum field wrong
    rewrite_record_header(&fx.seg_path(2), fx.hdr(6), |h| h.payload_checksum ^= 1);
    fx.expect(
        "record 6 wrong payload checksum field",
        Some(5),
        "payload checksum mismatch",
    );
    fx.restore();
    set_version(&fx.seg_path(2), fx.hdr(6), RECORD_HEADER_LEN, 7);
    fx.expect("record 6 version 7", Some(5), "unknown format version 7");
    fx.restore();
    cases += 11;
    // every segment replaced by garbage: an empty log, no error
    for n in 1..=2 {
        let mut junk = vec![0u8; 65536];
        rng.fill(&mut junk);
        fs::write(fx.seg_path(n), &junk).unwrap();
    }
    fx.expect("all segments garbage", None, "segment header: bad magic");
    fx.restore();
    cases += 1;
    let _ = LogReader::open(&fx.dir).unwrap().scan().unwrap();
    println!("sweep bad-segment-files: {cases} cases");
}

#[test]
fn a_missing_middle_segment_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let w = append_epochs(dir.path(), opts(64 << 10), TB, 1..=9);
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
    fs::remove_file(dir.path().join(seg(2))).unwrap();
    let (got, r) = recovered(dir.path(), &w);
    assert_eq!(got, Some(9));
    assert!(r.skipped.is_empty());
    // damage all of segment 3's records: recovery steps over the gap
    for s in 7..=9 {
        flip_bit(
            &dir.path().join(seg(3)),
            w[s - 1].header.payload_offset() * 8 + 9,
        );
    }
    let (got, r) = recovered(dir.path(), &w);
    assert_eq!(got, Some(3), "{:?}", reasons(&r));
    assert_eq!(r.skipped.len(), 3, "{:?}", reasons(&r));
    println!("sweep missing-middle-segment: 2 cases");
}
