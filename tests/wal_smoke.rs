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
