//! The writer under injected faults and a second writer: a failed directory
//! fsync after a segment rename, a segment name taken by someone else
//! between the writer's checks and its rename, a deleted LOCK file. Tests
//! that need the LD_PRELOAD shim inside the test process run in a child
//! copy of themselves (`faults::in_child`).

mod common;
mod walkit;

use common::faults;
use epochwal::wal::{recover, Log, LogOptions, WalError};
use walkit::*;

const TB: usize = 16 << 10;

/// Segments that hold one 16 KiB state each: every append rotates.
fn one_per_segment() -> LogOptions {
    opts(8 * 4096)
}

#[test]
fn a_failed_directory_fsync_after_a_rename_does_not_block_the_segment_number() {
    if !faults::in_child(
        "a_failed_directory_fsync_after_a_rename_does_not_block_the_segment_number",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), one_per_segment()).unwrap();
    log.append(&common::sample_state(TB, 1)).unwrap();
    faults::set(&format!("fsyncdir,{},EIO", dir.path().display()));
    let e = log.append(&common::sample_state(TB, 2)).unwrap_err();
    assert_eq!(faults::fired(), 1);
    assert!(matches!(e, WalError::SyncFailed { .. }), "{e}");
    // Segment 2 exists (renamed, empty); the next rotation skips its number
    // instead of failing on it for good.
    assert_eq!(segment_names(dir.path()), vec![seg(1), seg(2)]);
    faults::set("");
    for epoch in 3..=5 {
        let d = log
            .append(&common::sample_state(TB, epoch))
            .unwrap_or_else(|e| panic!("epoch {epoch}: {e}"));
        assert_eq!(d.header.epoch, epoch);
    }
    drop(log);
    assert_eq!(
        recover(dir.path())
            .unwrap()
            .record
            .unwrap()
            .header()
            .sequence,
        4
    );
    // Retention deletes the empty segment 2 like any older segment without
    // a record to keep.
    assert_eq!(
        segment_names(dir.path()),
        vec![seg(1), seg(3), seg(4), seg(5)]
    );
}

#[test]
fn a_segment_name_taken_before_the_rename_is_never_replaced() {
    if !faults::in_child("a_segment_name_taken_before_the_rename_is_never_replaced") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), one_per_segment()).unwrap();
    log.append(&common::sample_state(TB, 1)).unwrap();
    // Another writer creates segment 2 in the window between this writer's
    // checks and its rename.
    faults::set("rename,.wal,PLANT");
    let e = log.append(&common::sample_state(TB, 2)).unwrap_err();
    assert_eq!(faults::fired(), 1);
    assert!(matches!(e, WalError::Conflict { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&seg(2)) && msg.contains("another process"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(seg(2))).unwrap(),
        b"planted by another writer\n",
        "the other writer's file was replaced"
    );
    faults::set("");
    // The log is closed for appends: two writers must not go on.
    assert!(matches!(
        log.append(&common::sample_state(TB, 3)),
        Err(WalError::Poisoned(_))
    ));
    assert!(!dir.path().join(format!("{}.tmp", seg(2))).exists());
}

#[test]
fn a_deleted_lock_file_stops_the_writer_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = Log::open(dir.path(), one_per_segment()).unwrap();
    a.append(&common::sample_state(TB, 1)).unwrap();
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    // A second writer gets in on a new LOCK file...
    let (mut b, r) = Log::open(dir.path(), one_per_segment()).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 1);
    // ...and the first one notices before writing anything more.
    let e = a.append(&common::sample_state(TB, 2)).unwrap_err();
    assert!(matches!(e, WalError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("LOCK file was deleted"), "{e}");
    let d = b.append(&common::sample_state(TB, 2)).unwrap();
    assert_eq!(d.header.sequence, 2);
    assert!(a.append(&common::sample_state(TB, 3)).is_err());
    drop((a, b));
    let r = recover(dir.path()).unwrap();
    assert_eq!(r.record.unwrap().header().sequence, 2);
}

#[test]
fn a_replaced_lock_file_stops_the_writer_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = Log::open(dir.path(), one_per_segment()).unwrap();
    let lock = dir.path().join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, "1\n").unwrap();
    let e = a.append(&common::sample_state(TB, 1)).unwrap_err();
    assert!(
        e.to_string().contains("LOCK file was deleted or replaced"),
        "{e}"
    );
    assert_eq!(segment_names(dir.path()), Vec::<String>::new());
}
