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
