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

struct Stats {
    kills: u64,
    resumes: u64,
    last_durable: u64,
}

/// One full run under fire: SIGKILL at random moments until `kills` kills
/// were made (or the run finished), then a run to completion whose final
/// state must equal `reference` bit for bit.
fn run_under_kills(
    cfg: &std::path::Path,
    data: &std::path::Path,
    reference: &epochwal::state::TrainState,
    kills: u64,
    rng: &mut XorShift,
    seed: u64,
) -> Stats {
    let mut stats = Stats {
        kills: 0,
        resumes: 0,
        last_durable: 0,
    };
    while stats.kills < kills {
        let d = Daemon::spawn(cfg, &[], &[]);
        d.wait_for("training started", LONG)
            .unwrap_or_else(|| panic!("seed {seed}: no start:\n{}", d.lines().join("\n")));
        let lines = d.lines();
        if let Some(rec) = lines.iter().find(|l| l.contains(" recovered ")) {
            let seq = field(rec, "seq").unwrap();
            assert!(
                seq >= stats.last_durable,
                "seed {seed}: recovered seq {seq} but {} was reported durable",
                stats.last_durable
            );
            stats.resumes += 1;
        } else {
            assert_eq!(
                stats.last_durable, 0,
                "seed {seed}: a durable record was lost"
            );
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 120_000));
        d.signal(libc::SIGKILL);
        let (status, lines) = d.wait(LONG);
        if let Some(max) = durable_seqs(&lines).into_iter().max() {
            stats.last_durable = stats.last_durable.max(max);
        }
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "seed {seed}: {}",
            lines.join("\n")
        );
        if status.code() == Some(0) {
            // The run finished before the kill landed.
            break;
        }
        stats.kills += 1;
    }
    let (status, lines) = Daemon::spawn(cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "seed {seed}: {}", lines.join("\n"));
    let (seq, state) = newest_state(data).unwrap();
    assert!(seq >= stats.last_durable);
    assert_same_training_state(reference, &state);
    // Every record still in the log validates.
    let reader = epochwal::wal::LogReader::open(data).unwrap();
    let scan = reader.scan().unwrap();
    for seg in &scan.segments {
        for r in &seg.records {
            reader.load(&seg.path, r).unwrap();
        }
    }
    stats
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `EPOCHWAL_KILLS` kills (default 30). With `EPOCHWAL_SOAK_SECONDS` set it
/// becomes the soak: whole runs under fire, one after another, until that
/// much time has passed, with a summary at the end.
#[test]
fn sigkill_at_random_moments_loses_nothing_durable_and_ends_bit_identical() {
    let kills = env_u64("EPOCHWAL_KILLS").unwrap_or(30);
    let soak = env_u64("EPOCHWAL_SOAK_SECONDS").map(Duration::from_secs);
    let seed = env_u64("EPOCHWAL_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("kill loop: {kills} kills per run, EPOCHWAL_KILL_SEED={seed}");
    let mut rng = XorShift(seed);

    let tmp = tempfile::tempdir().unwrap();
    // Records of ~260 KiB in 64 KiB segments: every checkpoint rotates to a
    // new segment, and retention deletes old ones, so kills land during
    // serialization, msync, segment creation and deletion alike.
    let body = |d: &std::path::Path| {
        synthetic_config(
            d,
            300,
            "every_steps = 6\nevery_epochs = 1\nsegment_bytes = 65536\nkeep_records = 3",
        )
    };
    let reference = reference_run(tmp.path(), body);
    let started = std::time::Instant::now();
    let (mut runs, mut total_kills, mut total_resumes) = (0u64, 0u64, 0u64);
    loop {
        let data = tmp.path().join(format!("data-{runs}"));
        let cfg = write_config(tmp.path(), "c.toml", &body(&data));
        let stats = run_under_kills(&cfg, &data, &reference, kills, &mut rng, seed);
        assert_eq!(
            stats.kills, kills,
            "seed {seed}: the run finished before {kills} kills"
        );
        runs += 1;
        total_kills += stats.kills;
        total_resumes += stats.resumes;
        std::fs::remove_dir_all(&data).unwrap();
        match soak {
            Some(limit) if started.elapsed() < limit => continue,
            _ => break,
        }
    }
    println!(
        "kill loop summary: {runs} runs, {total_kills} kills, {total_resumes} resumes, \
         0 durable records lost, 0 damaged records used, every run bit-identical to the reference, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
