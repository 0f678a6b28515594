//! SIGKILL at random moments, many times: no durable checkpoint is lost, no
//! damaged record is used, and the end result is bit-identical to a run that
//! was never interrupted.
//!
//! The number of kills is `EPOCHWAL_KILLS` (default 30); the soak command in
//! README runs the same loop for as long as asked.

mod common;

use std::time::Duration;

use common::daemon::*;

const LONG: Duration = Duration::from_secs(120);

/// A tiny deterministic generator, so a failing run can be replayed from the
/// printed seed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_durable_and_ends_bit_identical() {
    let kills: u64 = std::env::var("EPOCHWAL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("EPOCHWAL_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("kill loop: {kills} kills, EPOCHWAL_KILL_SEED={seed}");
    let mut rng = XorShift(seed);

    let tmp = tempfile::tempdir().unwrap();
    // Records of ~260 KiB in 64 KiB segments: every checkpoint rotates to a
    // new segment, and retention deletes old ones, so kills land during
    // serialization, msync, segment creation and deletion alike.
    let body = |d: &std::path::Path| {
        synthetic_config(
            d,
            40,
            "every_steps = 6\nevery_epochs = 1\nsegment_bytes = 65536\nkeep_records = 3",
        )
    };
    let reference = reference_run(tmp.path(), body);
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &body(&data));

    let mut last_durable = 0u64;
    let mut kills_done = 0;
    let mut resumes = 0;
    while kills_done < kills {
        let d = Daemon::spawn(&cfg, &[], &[]);
        d.wait_for("training started", LONG)
            .unwrap_or_else(|| panic!("seed {seed}: no start:\n{}", d.lines().join("\n")));
        let lines = d.lines();
        if let Some(rec) = lines.iter().find(|l| l.contains(" recovered ")) {
            let seq = field(rec, "seq").unwrap();
            assert!(
                seq >= last_durable,
                "seed {seed}: recovered seq {seq} but {last_durable} was reported durable"
            );
            resumes += 1;
        } else {
            assert_eq!(last_durable, 0, "seed {seed}: a durable record was lost");
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 120_000));
        d.signal(libc::SIGKILL);
        let (status, lines) = d.wait(LONG);
        if status.code() == Some(0) {
            // The run finished before the kill landed.
            break;
        }
        kills_done += 1;
        if let Some(max) = durable_seqs(&lines).into_iter().max() {
            last_durable = last_durable.max(max);
        }
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "seed {seed}: {}",
            lines.join("\n")
        );
    }
    println!("kill loop: {kills_done} kills, {resumes} resumes, last durable seq {last_durable}");
    assert!(
        kills_done >= kills.min(10),
        "seed {seed}: the run finished too early to test kills"
    );

    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "seed {seed}: {}", lines.join("\n"));
    let (seq, state) = newest_state(&data).unwrap();
    assert!(seq >= last_durable);
    assert_same_training_state(&reference, &state);
    // Every record still in the log validates.
    let reader = epochwal::wal::LogReader::open(&data).unwrap();
    let scan = reader.scan().unwrap();
    for seg in &scan.segments {
        for r in &seg.records {
            reader.load(&seg.path, r).unwrap();
        }
    }
}
