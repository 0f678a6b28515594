//! Property tests of the reader over arbitrary and mutated bytes.
//! Case count: proptest's default (256) or PROPTEST_CASES; see TESTING.md.

mod common;
mod walkit;

use std::sync::OnceLock;

use epochwal::wal::format::{
    self, RecordHeader, SegmentHeader, PAGE, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use epochwal::wal::{recover, validate_payload, LogReader};
use proptest::prelude::*;
use walkit::*;

/// A small log (segments 1..=3, two 4 KiB-state records each) as bytes.
struct Base {
    files: Snapshot,
    written: Vec<Written>,
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let written = append_epochs(dir.path(), opts(7 * PAGE), 4 << 10, 1..=6);
        assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2), seg(3)]);
        Base {
            files: snapshot(dir.path()),
            written,
        }
    })
}

fn valid_record_header() -> RecordHeader {
    base().written[3].header
}

fn valid_segment_header() -> SegmentHeader {
    SegmentHeader::decode(&base().files[&seg(2)]).unwrap()
}

/// Byte edits: (position as a fraction of the length, xor mask).
fn edits(max: usize) -> impl Strategy<Value = Vec<(f64, u8)>> {
    prop::collection::vec((0.0f64..1.0, 1u8..=255), 1..=max)
}

fn apply(bytes: &mut [u8], edits: &[(f64, u8)]) {
    if bytes.is_empty() {
        return;
    }
    for &(pos, mask) in edits {
        let i = ((pos * bytes.len() as f64) as usize).min(bytes.len() - 1);
        bytes[i] ^= mask;
    }
}

proptest! {
    #[test]
    fn record_header_decode_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(h) = RecordHeader::decode(&bytes) {
            let mut re = vec![0u8; RECORD_HEADER_LEN];
            h.encode(&mut re);
            prop_assert_eq!(&re[..], &bytes[..RECORD_HEADER_LEN]);
        }
    }

    #[test]
    fn segment_header_decode_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(h) = SegmentHeader::decode(&bytes) {
            let mut re = vec![0u8; SEGMENT_HEADER_LEN];
            h.encode(&mut re);
            prop_assert_eq!(&re[..], &bytes[..SEGMENT_HEADER_LEN]);
        }
    }

    #[test]
    fn a_mutated_record_header_is_always_rejected(e in edits(4)) {
        let mut b = vec![0u8; RECORD_HEADER_LEN];
        valid_record_header().encode(&mut b);
        let orig = b.clone();
        apply(&mut b, &e);
        prop_assume!(b != orig);
        prop_assert!(RecordHeader::decode(&b).is_err());
    }

    #[test]
    fn a_mutated_segment_header_is_always_rejected(e in edits(4)) {
        let mut b = vec![0u8; SEGMENT_HEADER_LEN];
        valid_segment_header().encode(&mut b);
        let orig = b.clone();
        apply(&mut b, &e);
        prop_assume!(b != orig);
        prop_assert!(SegmentHeader::decode(&b).is_err());
    }

    #[test]
    fn validate_payload_rejects_arbitrary_bytes_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        right_checksum in any::<bool>(),
    ) {
        let mut h = valid_record_header();
        h.payload_len = bytes.len() as u64;
        h.payload_checksum = if right_checksum { format::checksum(&bytes) } else { format::checksum(&bytes) ^ 1 };
        let r = validate_payload(&bytes, &h);
        if !right_checksum {
            prop_assert!(r.is_err());
        }
        // random bytes that pass the checksum must still fail rkyv validation
        prop_assert!(r.is_err());
    }

    #[test]
    fn validate_payload_never_accepts_a_mutated_payload_under_the_original_checksum(e in edits(8)) {
        let w = &base().written[3];
        let mut p = w.payload.clone();
        apply(&mut p, &e);
        prop_assume!(p != w.payload);
        let r = validate_payload(&p, &w.header);
        prop_assert!(r.is_err());
        prop_assert!(r.unwrap_err().contains("payload checksum mismatch"));
    }

    #[test]
    fn validate_payload_survives_mutations_that_fix_up_the_checksum(e in edits(8)) {
        // the checksum is recomputed so that rkyv validation sees the damage
        let w = &base().written[3];
        let mut p = w.payload.clone();
        apply(&mut p, &e);
        let mut h = w.header;
        h.payload_checksum = format::checksum(&p);
        // must not panic; if it validates, every field must be readable
        if let Ok(state) = validate_payload(&p, &h) {
            let owned: epochwal::state::TrainState =
                rkyv::deserialize::<_, rkyv::rancor::Error>(state.state()).unwrap();
            prop_assert_eq!(owned.epoch, h.epoch);
            for t in state.model.tensors.iter() {
                let _ = t.values().iter().sum::<f32>();
            }
        }
    }

    #[test]
    fn recover_on_mutated_segment_files_returns_only_records_actually_written(
        e in prop::collection::vec((0usize..3, 0.0f64..1.0, 1u8..=255, 1usize..64), 0..6),
        truncate in prop::option::of((0usize..3, 0.0f64..1.0)),
        extra in prop::option::of((0u64..6, prop::collection::vec(any::<u8>(), 0..9000))),
        remove in prop::option::of(0usize..3),
    ) {
        let b = base();
        let names = [seg(1), seg(2), seg(3)];
        let mut files = b.files.clone();
        for &(f, pos, mask, run) in &e {
            let bytes = files.get_mut(&names[f]).unwrap();
            let start = ((pos * bytes.len() as f64) as usize).min(bytes.len() - 1);
            let end = (start + run).min(bytes.len());
            for x in &mut bytes[start..end] { *x ^= mask; }
        }
        if let Some((f, pos)) = truncate {
            let bytes = files.get_mut(&names[f]).unwrap();
            let t = (pos * bytes.len() as f64) as usize;
            bytes.truncate(t);
        }
        let overwrote = extra.as_ref().is_some_and(|(n, _)| (1..=3).contains(n));
        if let Some((n, junk)) = extra {
            files.insert(seg(n), junk);
        }
        if let Some(f) = remove {
            files.remove(&names[f]);
        }
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &files);
        // `recovered` checks header and payload bytes against what was written
        let (got, r) = recovered(dir.path(), &b.written);
        if e.is_empty() && truncate.is_none() && remove.is_none() && !overwrote {
            prop_assert_eq!(got, Some(6), "{:?}", reasons(&r));
        }
        let reader = LogReader::open(dir.path()).unwrap();
        let scan = reader.scan().unwrap();
        for s in &scan.segments {
            for h in &s.records {
                if let Ok(m) = reader.load(&s.path, h) {
                    let w = b.written.iter().find(|w| w.header == *m.header());
                    prop_assert!(w.is_some_and(|w| w.payload == m.payload()));
                }
            }
        }
    }

    #[test]
    fn recover_on_arbitrary_segment_files_never_panics_or_invents_a_record(
        files in prop::collection::vec((0u64..5, prop::collection::vec(any::<u8>(), 0..12000)), 0..4),
        with_valid_header in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (n, mut bytes) in files {
            if with_valid_header && bytes.len() >= PAGE as usize {
                // a valid segment header over random contents
                let mut h = valid_segment_header();
                h.segment_no = n;
                h.segment_bytes = (bytes.len() as u64 / PAGE).max(2) * PAGE;
                h.encode(&mut bytes);
            }
            std::fs::write(dir.path().join(seg(n)), bytes).unwrap();
        }
        let r = recover(dir.path()).unwrap();
        prop_assert!(r.record.is_none());
        let _ = LogReader::open(dir.path()).unwrap().scan().unwrap();
    }
}
