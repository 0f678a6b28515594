//! Records larger than rkyv's 32-bit pointer range (2 GiB) and a segment
//! truncated under the writer's mapping.

mod common;

use epochwal::wal::{recover, Log, LogOptions, WalError};

#[test]
fn a_record_larger_than_two_gib_round_trips() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = common::sample_state((2 << 30) + (64 << 20), 3);
    {
        let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
        let d = log.append(&state).unwrap();
        assert!(d.header.payload_len > 2 << 30);
        assert!(d.new_segment);
    }
    let r = recover(dir.path()).unwrap();
    let m = r.record.expect("the large record is recovered");
    let archived = m.state();
    assert_eq!(archived.epoch.to_native(), 3);
    for (a, t) in archived
        .optimizer
        .params
        .iter()
        .zip(&state.optimizer.params)
    {
        assert!(a.exp_avg_sq() == &t.exp_avg_sq[..]);
        assert!(a.exp_avg() == &t.exp_avg[..]);
    }
    assert!(archived.model.tensors[0].values() == &state.model.tensors[0].data[..]);
}

#[test]
fn appending_to_a_segment_truncated_under_the_mapping_is_an_error_not_a_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(
        dir.path(),
        LogOptions {
            segment_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    log.append(&common::sample_state(20_000, 1)).unwrap();
    let seg = dir.path().join("00000000000000000001.wal");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let err = log.append(&common::sample_state(20_000, 2)).unwrap_err();
    assert!(matches!(err, WalError::SizeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000001.wal") && msg.contains("truncated"),
        "{msg}"
    );
    drop(log);
    // Recovery reports the short segment instead of touching it.
    let r = recover(dir.path()).unwrap();
    assert!(r.record.is_none());
    assert!(
        r.skipped.iter().any(|s| s.reason.contains("truncated")),
        "{:?}",
        r.skipped
    );
}
