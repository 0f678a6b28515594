mod common;
use epochwal::wal::{recover, Log, LogOptions};

#[test]
fn appended_records_are_recovered_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_bytes: 64 << 10,
        ..Default::default()
    };
    {
        let (mut log, rec) = Log::open(dir.path(), opts).unwrap();
        assert!(rec.record.is_none());
        for e in 1..=5 {
            let d = log.append(&common::sample_state(20_000, e)).unwrap();
            assert_eq!(d.header.sequence, e);
        }
    }
    let r = recover(dir.path()).unwrap();
    let m = r.record.unwrap();
    assert_eq!(m.header().sequence, 5);
    assert_eq!(m.to_owned_state().unwrap(), common::sample_state(20_000, 5));
    assert_eq!(
        m.state().model.tensors[0].values(),
        &common::sample_state(20_000, 5).model.tensors[0].data[..]
    );
    let (mut log, rec) = Log::open(dir.path(), opts).unwrap();
    assert_eq!(rec.record.unwrap().header().sequence, 5);
    assert_eq!(
        log.append(&common::sample_state(20_000, 6))
            .unwrap()
            .header
            .sequence,
        6
    );
}

/// The writer stores nothing through a shared writable mapping of a
/// segment: cleaning such pages during write-back write-protects them and
/// interrupts every core running the process (BENCHMARKS.md, issue 21). It
/// writes with `pwrite`; readers map segments read-only.
#[test]
fn the_writer_never_maps_a_segment_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(&common::sample_state(1 << 20, 1)).unwrap();
    log.prepare_next_append().unwrap();
    let pending = log.begin_append(&common::sample_state(1 << 20, 2)).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir_name = dir.path().to_str().unwrap();
    let writable: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains(dir_name))
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('w')))
        .collect();
    assert!(
        writable.is_empty(),
        "writable mappings of the log: {writable:?}"
    );
    let durable = pending.persist();
    log.finish(&durable).unwrap();
    assert_eq!(durable.unwrap().header.sequence, 2);
    let r = recover(dir.path()).unwrap();
    assert_eq!(
        r.record.unwrap().to_owned_state().unwrap(),
        common::sample_state(1 << 20, 2)
    );
}

/// The daemon's way: the place and the sequence are taken on the training
/// thread (`begin_append_unfilled`), the copy is made by the persisting
/// thread (`fill`). The record is the one `begin_append` writes.
#[test]
fn an_append_filled_on_another_thread_is_the_record_begin_append_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    let state = std::sync::Arc::new(common::sample_state(300_000, 7));
    let mut pending = log.begin_append_unfilled(&state, None).unwrap();
    let shared = std::sync::Arc::clone(&state);
    let durable = std::thread::spawn(move || {
        pending.fill(&shared).unwrap();
        // A second fill is refused: the buffer already holds the payload.
        let again = pending.fill(&shared).unwrap_err();
        assert!(again.to_string().contains("already holds"), "{again}");
        pending.persist().unwrap()
    })
    .join()
    .unwrap();
    log.finish(&Ok(durable.clone())).unwrap();
    let r = recover(dir.path()).unwrap().record.unwrap();
    assert_eq!(r.header().sequence, durable.header.sequence);
    assert_eq!(r.to_owned_state().unwrap(), *state);
    // The same state through begin_append: the same payload bytes.
    let other = tempfile::tempdir().unwrap();
    let (mut log2, _) = Log::open(other.path(), LogOptions::default()).unwrap();
    let d2 = log2.append(&state).unwrap();
    assert_eq!(d2.header.payload_len, durable.header.payload_len);
    assert_eq!(d2.header.payload_checksum, durable.header.payload_checksum);
}

/// An append begun unfilled and persisted without its payload, or filled
/// from a state that changed size since, writes nothing: recovery still
/// finds the record before it, and the log takes the next append.
#[test]
fn an_unfilled_or_misfilled_append_writes_nothing_and_leaves_the_log_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(&common::sample_state(20_000, 1)).unwrap();

    let pending = log
        .begin_append_unfilled(&common::sample_state(20_000, 2), None)
        .unwrap();
    let err = pending.persist().unwrap_err();
    assert!(err.to_string().contains("never filled"), "{err}");
    log.finish(&Err(err)).unwrap();
    assert_eq!(
        recover(dir.path()).unwrap().record.unwrap().header().epoch,
        1
    );

    let mut pending = log
        .begin_append_unfilled(&common::sample_state(20_000, 3), None)
        .unwrap();
    let err = pending.fill(&common::sample_state(40_000, 3)).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let err = pending.persist().unwrap_err();
    log.finish(&Err(err)).unwrap();
    assert_eq!(
        recover(dir.path()).unwrap().record.unwrap().header().epoch,
        1
    );

    let d = log.append(&common::sample_state(20_000, 4)).unwrap();
    assert!(log.poisoned().is_none());
    let r = recover(dir.path()).unwrap().record.unwrap();
    assert_eq!(
        (r.header().epoch, r.header().sequence),
        (4, d.header.sequence)
    );
}
