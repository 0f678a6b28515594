//! The `train` section: what checkpointing every epoch costs a real
//! training run, at 1 and 2 training threads, measured side by side in one
//! run (for each run: both thread counts, each with checkpoints off, on, and
//! a restart from the log the "on" side wrote).
//!
//! Figures, per thread count (goals from issue 21):
//! - `overhead_per_epoch`: wall time with a checkpoint every epoch over
//!   without, the epoch about 2× the persist time (`epoch_over_persist`
//!   shows it: the examples per epoch, `n`, are sized after the warm-up
//!   run), 12 epochs a run, including the wait for the last checkpoint to
//!   be durable (`final_wait_ms`, once a run); goal ≤ 1.03. With it:
//!   `persister_cpu_ms`, the persisting thread's own CPU time per
//!   checkpoint, and `steal_ms_per_checkpoint`, the CPU time the hypervisor
//!   took from the machine per checkpoint (`/proc/stat`, runs with and
//!   without checkpoints compared), which no process figure shows.
//! - `train_thread_ratio`: the training loop's wall time (without the wait
//!   for the last persist) with over without; ≤ 1.02. `train_thread_cpu_ratio`
//!   is the same for the training thread's own CPU time.
//! - `extra_cpu_vs_copy_checksum`: the process CPU time (getrusage, all
//!   threads) a checkpoint adds, over the CPU time of a `memcpy` plus a
//!   checksum of the same record measured in the same run; ≤ 3.
//! - `first_pause_after_restart_vs_steady`: the pause of the first
//!   checkpoint after a restart over the median steady-state pause; ≤ 1.2.
//! - `restart_to_first_step_vs_read_checksum`: from the start of a
//!   restart (building the trainer, opening the log, restoring) to the end
//!   of its first training step, over a cold read plus checksum of the
//!   record it resumes from; ≤ 1.2.

use super::*;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// The synthetic run of the training-overhead figure. Its state is
/// `3 * params * 4` bytes; `EPOCHWAL_BENCH_TRAIN="n,input,hidden1:hidden2,output,batch,epochs"`
/// overrides it. Without the override, `n` (the examples per epoch) is
/// sized per thread count after the warm-up run so that an epoch takes
/// about twice the persist time, as issue 21's goals are stated.
struct TrainShape {
    n: usize,
    /// `n` was given (`EPOCHWAL_BENCH_TRAIN`) and is not sized.
    fixed: bool,
    input_dim: usize,
    hidden: Vec<usize>,
    output_dim: usize,
    batch: usize,
    epochs: u64,
}

impl TrainShape {
    fn from_env() -> TrainShape {
        let default = TrainShape {
            n: 1024,
            fixed: false,
            input_dim: 512,
            hidden: vec![2048, 512],
            output_dim: 8,
            batch: 32,
            epochs: 12,
        };
        let Ok(v) = std::env::var("EPOCHWAL_BENCH_TRAIN") else {
            return default;
        };
        let f: Vec<&str> = v.split(',').collect();
        let num = |i: usize| -> usize {
            f.get(i)
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| die(&format!("bad EPOCHWAL_BENCH_TRAIN {v:?}")))
        };
        TrainShape {
            n: num(0),
            fixed: true,
            input_dim: num(1),
            hidden: f
                .get(2)
                .map(|s| s.split(':').filter_map(|w| w.trim().parse().ok()).collect())
                .unwrap_or_default(),
            output_dim: num(3),
            batch: num(4),
            epochs: num(5) as u64,
        }
    }

    fn config(&self, threads: usize, n: usize) -> TrainConfig {
        let text = format!(
            "batch_size = {}\nseed = 1\nthreads = {threads}\nvalidation_fraction = 0.0\n[dataset]\nkind = \"synthetic\"\nn = {}\ninput_dim = {}\noutput_dim = {}\n[model]\nhidden = {:?}\n",
            self.batch, n, self.input_dim, self.output_dim, self.hidden
        );
        toml::from_str(&text).expect("train config")
    }
}

/// `EPOCHWAL_BENCH_COPY_IN_PAUSE=1`: the training thread copies the state
/// into the staging buffer in its pause (`begin_append`), as the daemon did
/// before it handed a snapshot to the persisting thread; for comparison.
fn copy_in_pause() -> bool {
    std::env::var("EPOCHWAL_BENCH_COPY_IN_PAUSE").is_ok_and(|v| v == "1")
}

/// `name:median` of each column of `rows`, comma-separated (ms).
fn named_medians<const N: usize>(names: [&str; N], rows: &[[f64; N]]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let column: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            format!("{name}:{}", fmt_ms(median(&column)))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Thread counts to measure: `EPOCHWAL_BENCH_TRAIN_THREADS` (comma list),
/// default 1 and 2.
fn thread_counts() -> Vec<usize> {
    std::env::var("EPOCHWAL_BENCH_TRAIN_THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2])
}

/// CPU time (user + system) of the calling thread so far.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is a valid value of a plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one checkpointed run measured.
#[derive(Default)]
struct OnRun {
    /// The training loop, from its first step until the last checkpoint is
    /// durable.
    total: Duration,
    /// CPU time of the training thread in the loop (until the last
    /// checkpoint was handed over).
    train_cpu: Duration,
    /// From the start (trainer built, log opened, record restored) to the
    /// end of the first step.
    to_first_step: Duration,
    /// From the start to the start of the first step (the restart without
    /// the first step's own training work).
    to_training: Duration,
    /// Training thread blocked in begin_append (the pause).
    pause: Vec<f64>,
    /// CPU time of the training thread in begin_append (the pause without
    /// time the thread was not running, which a loaded machine adds).
    pause_cpu: Vec<f64>,
    /// Phases of the start: trainer built, log opened (recovery), record
    /// restored, first segment reserved, first step.
    phases: [Duration; 5],
    /// After each pause, the time the next step waited for the persister
    /// to finish copying the snapshot (before its optimizer update).
    snapshot_wait: Vec<f64>,
    /// Of each pause, the time spent waiting for the log's lock (held by
    /// the persister thread while it prepares the next append).
    pause_lock_wait: Vec<f64>,
    /// Training thread blocked waiting for the previous persist.
    wait: Vec<f64>,
    /// persist + finish on the persister thread.
    persist: Vec<f64>,
    /// The persister thread's own CPU time per checkpoint, ms: in
    /// `persist`, in `finish` (retention) and in `prepare_next_append`.
    persister_cpu: Vec<[f64; 3]>,
    /// Waiting for the last checkpoint after the last step.
    final_wait: Duration,
    /// Epoch checkpoints deferred because the previous one was in flight.
    deferred: u64,
    /// The last durable record: (segment, payload offset, payload length).
    last: Option<(PathBuf, u64, u64)>,
}

/// Trains until epoch `epochs` with one checkpoint per epoch, exactly as the
/// daemon does: the trainer is built, the log opened and its newest record
/// (if any) restored; begin_append on the training thread; persist, finish
/// and prepare_next_append on a persister thread that also prepares the
/// first checkpoint when it starts; at most one append in flight (the
/// training thread waits for the previous one before the next
/// begin_append). The run ends when the last checkpoint is durable.
fn train_with_checkpoints(
    cfg: &TrainConfig,
    epochs: u64,
    log_dir: &Path,
    obs: Option<Arc<super::observe::Observed>>,
) -> OnRun {
    let in_pause = copy_in_pause();
    let begun = Instant::now();
    let mut phase = Instant::now();
    let mut phases = [Duration::ZERO; 5];
    let mut lap = |i: usize, phase: &mut Instant| {
        phases[i] = phase.elapsed();
        *phase = Instant::now();
    };
    // As the daemon starts: weights are drawn only if there is nothing to
    // restore.
    let mut trainer = Trainer::new_for_restore_within(cfg, &|_| Ok(())).expect("trainer");
    lap(0, &mut phase);
    let (mut log, recovery) = Log::open(
        log_dir,
        LogOptions {
            retention: Retention {
                keep_records: 2,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("open log");
    lap(1, &mut phase);
    match &recovery.record {
        Some(r) => trainer.restore(r.state()).expect("restore"),
        None => trainer.initialise_weights(),
    }
    let resumed = recovery.record.is_some();
    drop(recovery);
    lap(2, &mut phase);
    // As the daemon does: a fresh run creates its first segment before
    // training (a full disk stops it there); a restart leaves it to the
    // persister thread, which makes it while the first steps run.
    if resumed {
        log.expect_record_of(trainer.state())
            .expect("expect_record_of");
    } else {
        log.reserve_for(trainer.state()).expect("reserve_for");
    }
    lap(3, &mut phase);
    let run_start_training = begun.elapsed();
    let log = Arc::new(Mutex::new(log));
    let (job_tx, job_rx) = mpsc::sync_channel::<(PendingAppend, Snapshot)>(1);
    let (done_tx, done_rx) = mpsc::channel::<(f64, PathBuf, u64, u64, [f64; 3])>();
    let persister = {
        let log = Arc::clone(&log);
        let obs = obs.clone();
        std::thread::spawn(move || {
            log.lock()
                .unwrap()
                .prepare_next_append()
                .expect("prepare_next_append");
            for (mut pending, snapshot) in job_rx {
                let t = Instant::now();
                let c0 = thread_cpu();
                // As the daemon does: the copy is made here, from the
                // trainer's snapshot, while the training thread goes on.
                if !in_pause {
                    pending.fill(&snapshot).expect("fill");
                }
                drop(snapshot);
                let durable = pending.persist();
                let c1 = thread_cpu();
                let d = durable.as_ref().expect("persist");
                let last = (
                    d.path.clone(),
                    d.header.payload_offset(),
                    d.header.payload_len,
                );
                let (c2, c3) = {
                    let mut log = log.lock().unwrap();
                    log.finish(&durable).expect("finish");
                    let c2 = thread_cpu();
                    log.prepare_next_append().expect("prepare_next_append");
                    (c2, thread_cpu())
                };
                let cpu = [ms(c1 - c0), ms(c2 - c1), ms(c3 - c2)];
                if let (Some(o), Ok(d)) = (&obs, &durable) {
                    o.durable(d, t.elapsed());
                }
                if done_tx
                    .send((ms(t.elapsed()), last.0, last.1, last.2, cpu))
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut run = OnRun {
        phases,
        to_training: run_start_training,
        ..OnRun::default()
    };
    let mut in_flight = false;
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let done = |run: &mut OnRun, m: (f64, PathBuf, u64, u64, [f64; 3])| {
        run.persist.push(m.0);
        run.persister_cpu.push(m.4);
        run.last = Some((m.1, m.2, m.3));
    };
    let mut first = true;
    // A snapshot was handed over and the step after it not yet taken.
    let mut snapshot_pending = false;
    loop {
        let out = trainer.step();
        if std::mem::take(&mut snapshot_pending) {
            // The part of the pause the training thread still pays: waiting
            // in that step, before its optimizer update, for the copy.
            run.snapshot_wait.push(ms(trainer.take_snapshot_wait()));
        }
        if let Some(o) = &obs {
            o.step(out.epoch, out.global_step);
            if out.epoch_completed {
                o.epoch_done(out.loss);
            }
        }
        if first {
            run.to_first_step = begun.elapsed();
            run.phases[4] = phase.elapsed();
            first = false;
        }
        if out.epoch_completed {
            if in_flight {
                // As the daemon does with min_seconds_between > 0 (the
                // shipped config): a checkpoint that finds the previous one
                // still in flight is deferred to the next epoch end instead
                // of stalling training; the last epoch always checkpoints.
                match done_rx.try_recv() {
                    Ok(m) => done(&mut run, m),
                    Err(_) if out.epoch < epochs => {
                        run.deferred += 1;
                        continue;
                    }
                    Err(_) => {
                        let t = Instant::now();
                        done(&mut run, done_rx.recv().expect("persister died"));
                        run.wait.push(ms(t.elapsed()));
                    }
                }
            }
            let t = Instant::now();
            let c = thread_cpu();
            let snapshot = trainer.snapshot();
            let mut guard = log.lock().unwrap();
            run.pause_lock_wait.push(ms(t.elapsed()));
            let pending = if in_pause {
                guard.begin_append(&snapshot).expect("begin_append")
            } else {
                guard
                    .begin_append_unfilled(&snapshot, None)
                    .expect("begin_append_unfilled")
            };
            drop(guard);
            run.pause_cpu.push(ms(thread_cpu() - c));
            run.pause.push(ms(t.elapsed()));
            job_tx.send((pending, snapshot)).expect("persister died");
            snapshot_pending = true;
            in_flight = true;
            if out.epoch >= epochs {
                break;
            }
        }
    }
    run.train_cpu = thread_cpu() - cpu0;
    let t = Instant::now();
    if in_flight {
        done(&mut run, done_rx.recv().expect("persister died"));
    }
    run.final_wait = t.elapsed();
    run.total = start.elapsed();
    drop(job_tx);
    persister.join().unwrap();
    run
}

/// (wall time of the loop, CPU time of the training thread in it).
fn train_without_checkpoints(cfg: &TrainConfig, epochs: u64) -> (Duration, Duration) {
    let mut trainer = Trainer::new(cfg).expect("trainer");
    let start = Instant::now();
    let cpu0 = thread_cpu();
    while trainer.step().epoch < epochs {}
    black_box(trainer.state());
    (start.elapsed(), thread_cpu() - cpu0)
}

/// CPU time of a `memcpy` of `src` into a warm buffer plus the checksum of
/// the copy: the floor of what a checkpoint must cost.
fn copy_and_checksum(src: &[u8], dst: &mut [u8]) -> Duration {
    let cpu0 = thread_cpu();
    dst.copy_from_slice(black_box(src));
    black_box(format::checksum(dst));
    thread_cpu() - cpu0
}

/// Wall time of reading `[offset, offset + len)` of `path` from the disk
/// (fsync, page cache dropped, `pread` into a page-aligned buffer) and
/// checksumming it, as recovery does.
fn cold_read_and_checksum(path: &Path, offset: u64, len: u64) -> Duration {
    let file = File::open(path).expect("open segment");
    file.sync_all().expect("fsync");
    // SAFETY: posix_fadvise only reads its integer arguments.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + 4096];
    let skew = buf.as_ptr().align_offset(4096);
    let t = Instant::now();
    let mut hasher = format::ChecksumStream::new();
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(CHUNK);
        let b = &mut buf[skew..skew + n];
        file.read_exact_at(b, offset + done).expect("pread");
        hasher.update(b);
        done += n as u64;
    }
    black_box(hasher.finish());
    t.elapsed()
}

/// Everything measured at one thread count.
#[derive(Default)]
struct Side {
    off: Vec<f64>,
    on: Vec<f64>,
    /// The checkpointed run again with the observers' work (metrics, event
    /// files, a scraper).
    on_observed: Vec<f64>,
    on_thread: Vec<f64>,
    cpu_off: Vec<f64>,
    cpu_on: Vec<f64>,
    /// System-wide steal time (`/proc/stat`) during each run, ms.
    steal_off: Vec<f64>,
    steal_on: Vec<f64>,
    train_cpu_off: Vec<f64>,
    train_cpu_on: Vec<f64>,
    copy_checksum: Vec<f64>,
    pause: Vec<f64>,
    snapshot_wait: Vec<f64>,
    steady_pause: Vec<f64>,
    wait: Vec<f64>,
    persist: Vec<f64>,
    persister_cpu: Vec<[f64; 3]>,
    final_wait: Vec<f64>,
    deferred: u64,
    first_pause_after_restart: Vec<f64>,
    first_pause_lock_wait: Vec<f64>,
    steady_pause_cpu: Vec<f64>,
    first_pause_cpu_after_restart: Vec<f64>,
    phases: Vec<[f64; 5]>,
    to_first_step: Vec<f64>,
    to_training: Vec<f64>,
    read_checksum: Vec<f64>,
    loads: Vec<String>,
    /// Examples per epoch of the measured runs.
    n: usize,
}

pub(super) fn bench_train(opts: &Options, report: &mut Report, work: &Path) {
    let shape = TrainShape::from_env();
    let threads = thread_counts();
    let probe = Trainer::new(&shape.config(1, shape.n)).expect("trainer");
    let record = archive(probe.state());
    let state_bytes = record.len() as u64;
    let steps = probe.steps_per_epoch();
    note(&format!(
        "train: {} ; n={} batch={} steps/epoch={steps} epochs/run={} ; record {} bytes ({:.1} MiB) ; threads {:?}",
        probe.describe(),
        shape.n,
        shape.batch,
        shape.epochs,
        state_bytes,
        state_bytes as f64 / MIB as f64,
        threads
    ));
    drop(probe);
    let mut copy_dst = vec![1u8; record.len()];
    let runs = opts.runs.unwrap_or(5);
    let dir = work.join("train");
    fresh_dir(&dir);
    let mut sides: Vec<Side> = threads.iter().map(|_| Side::default()).collect();
    // Examples per epoch at each thread count: sized after the warm-up run
    // (run 0, discarded) unless given.
    let mut n_for: Vec<usize> = threads.iter().map(|_| shape.n).collect();
    for run in 0..=runs {
        for (ti, &t) in threads.iter().enumerate() {
            let cfg = shape.config(t, n_for[ti]);
            let side = &mut sides[ti];
            side.n = n_for[ti];
            // The warm-up's epoch (without checkpoints) and persist times.
            let mut warm_epoch_ms = None;
            let mut warm_persist_ms = None;
            // 0: off, 1: checkpoints, 2: checkpoints and observers; the
            // order rotates from run to run.
            let order: [u8; 3] = match run % 3 {
                0 => [0, 1, 2],
                1 => [2, 0, 1],
                _ => [1, 2, 0],
            };
            let load = load_average();
            for which in order {
                sync_all_fs();
                if which == 2 {
                    let log_dir = dir.join(format!("log-obs-{run}-{t}"));
                    let tb_dir = dir.join(format!("tb-{run}-{t}"));
                    let obs = super::observe::Observed::start(&tb_dir);
                    let r = train_with_checkpoints(
                        &cfg,
                        shape.epochs,
                        &log_dir,
                        Some(Arc::clone(&obs)),
                    );
                    obs.finish();
                    remove(&log_dir);
                    remove(&tb_dir);
                    if run > 0 {
                        side.on_observed.push(ms(r.total));
                    }
                } else if which == 1 {
                    let log_dir = dir.join(format!("log-{run}-{t}"));
                    let cpu0 = self_cpu();
                    let steal0 = steal_time();
                    let r = train_with_checkpoints(&cfg, shape.epochs, &log_dir, None);
                    let cpu = ms(self_cpu() - cpu0);
                    warm_persist_ms = Some(median(&r.persist));
                    let steal = steal0.zip(steal_time()).map(|(a, b)| ms(b - a));
                    // A restart from what the run left, two more epochs.
                    let (seg, off, len) = r.last.clone().expect("a durable record");
                    let read = cold_read_and_checksum(&seg, off, len);
                    sync_all_fs();
                    let again = train_with_checkpoints(&cfg, shape.epochs + 2, &log_dir, None);
                    remove(&log_dir);
                    if run > 0 {
                        side.on.push(ms(r.total));
                        side.on_thread.push(ms(r.total - r.final_wait));
                        side.final_wait.push(ms(r.final_wait));
                        side.deferred += r.deferred;
                        side.steady_pause.extend(r.pause.iter().skip(1));
                        side.pause.extend(r.pause);
                        side.snapshot_wait.extend(r.snapshot_wait);
                        side.wait.extend(r.wait);
                        side.persist.extend(r.persist);
                        side.persister_cpu.extend(r.persister_cpu);
                        side.cpu_on.push(cpu);
                        side.steal_on.extend(steal);
                        side.train_cpu_on.push(ms(r.train_cpu));
                        side.first_pause_after_restart.push(again.pause[0]);
                        side.first_pause_lock_wait.push(again.pause_lock_wait[0]);
                        side.steady_pause_cpu.extend(r.pause_cpu.iter().skip(1));
                        side.first_pause_cpu_after_restart.push(again.pause_cpu[0]);
                        side.phases.push(again.phases.map(ms));
                        side.to_first_step.push(ms(again.to_first_step));
                        side.to_training.push(ms(again.to_training));
                        side.read_checksum.push(ms(read));
                    }
                } else {
                    let cpu0 = self_cpu();
                    let steal0 = steal_time();
                    let (wall, train_cpu) = train_without_checkpoints(&cfg, shape.epochs);
                    let cpu = ms(self_cpu() - cpu0);
                    warm_epoch_ms = Some(ms(wall) / shape.epochs as f64);
                    let steal = steal0.zip(steal_time()).map(|(a, b)| ms(b - a));
                    if run > 0 {
                        side.off.push(ms(wall));
                        side.cpu_off.push(cpu);
                        side.steal_off.extend(steal);
                        side.train_cpu_off.push(ms(train_cpu));
                    }
                }
            }
            let c = copy_and_checksum(&record, &mut copy_dst);
            if run > 0 {
                side.copy_checksum.push(ms(c));
                side.loads.push(load);
            } else if !shape.fixed {
                if let (Some(epoch), Some(persist)) = (warm_epoch_ms, warm_persist_ms) {
                    // The epoch's time grows with its examples: scale them
                    // so that the epoch is about 2x the persist time (whole
                    // batches, at least one).
                    let batches = (shape.n as f64 / shape.batch as f64) * 2.0 * persist / epoch;
                    n_for[ti] = (batches.round() as usize).max(1) * shape.batch;
                    note(&format!(
                        "train: threads={t}: the warm-up's epoch took {epoch:.1} ms with n={} and its persist {persist:.1} ms; n={} for the measured runs (an epoch of about 2x the persist time)",
                        shape.n, n_for[ti]
                    ));
                }
            }
        }
    }
    remove(&dir);
    let size = size_label_f(state_bytes);
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
    for (ti, &t) in threads.iter().enumerate() {
        let s = &sides[ti];
        let label = format!("{size},threads={t}");
        let loads = s.loads.join(",").replace(' ', "/");
        let epoch_ms = median(&s.off) / shape.epochs as f64;
        let persist_ms = median(&s.persist);
        let extra: Vec<f64> = s
            .cpu_on
            .iter()
            .zip(&s.cpu_off)
            .map(|(a, b)| (a - b) / shape.epochs as f64)
            .collect();
        report.push(
            Line::new("overhead_per_epoch", &label, ratio(&s.on, &s.off))
                .goal("<=", 1.03)
                .kv("epochs", shape.epochs)
                .kv("n", s.n)
                .kv("epoch_ms", fmt_ms(epoch_ms))
                .kv("persist_ms", fmt_ms(persist_ms))
                .kv(
                    "epoch_over_persist",
                    format!("{:.1}", epoch_ms / persist_ms),
                )
                .ms_of("off_ms", &s.off)
                .ms_of("on_ms", &s.on)
                .ms_of("pause_ms", &s.pause)
                .ms_of("snapshot_wait_ms", &s.snapshot_wait)
                .ms_of("wait_prev_ms", &s.wait)
                .ms_of("final_wait_ms", &s.final_wait)
                .kv("deferred_checkpoints", s.deferred)
                .kv(
                    "persister_cpu_ms",
                    named_medians(["persist", "finish", "prepare"], &s.persister_cpu),
                )
                .kv(
                    "cpu_ratio",
                    format!("{:.3}", median(&ratio(&s.cpu_on, &s.cpu_off))),
                )
                // Time the hypervisor took from the machine's CPUs per
                // checkpoint (all CPUs; runs with and without checkpoints
                // compared): CPU the guest's threads lost to the host's
                // handling of the writes, which no process CPU figure shows.
                .kv(
                    "steal_ms_per_checkpoint",
                    if s.steal_on.len() == s.steal_off.len() && !s.steal_on.is_empty() {
                        fmt_ms(median(
                            &s.steal_on
                                .iter()
                                .zip(&s.steal_off)
                                .map(|(a, b)| (a - b) / shape.epochs as f64)
                                .collect::<Vec<_>>(),
                        ))
                    } else {
                        "NaN".to_string()
                    },
                )
                .kv(
                    "observe_ratio",
                    format!("{:.4}", median(&ratio(&s.on_observed, &s.on))),
                )
                .kv("load", &loads),
        );
        report.push(
            Line::new("observe_overhead", &label, ratio(&s.on_observed, &s.on))
                .goal("<=", 1.005)
                .kv("epochs", shape.epochs)
                .kv("scrapes_per_second", 10)
                .ms_of("on_ms", &s.on)
                .ms_of("on_observed_ms", &s.on_observed)
                .kv("load", &loads),
        );
        report.push(
            Line::new("train_thread_ratio", &label, ratio(&s.on_thread, &s.off))
                .goal("<=", 1.02)
                .kv(
                    "train_thread_cpu_ratio",
                    format!("{:.3}", median(&ratio(&s.train_cpu_on, &s.train_cpu_off))),
                )
                .ms_of("train_cpu_off_ms", &s.train_cpu_off)
                .ms_of("train_cpu_on_ms", &s.train_cpu_on)
                .kv("load", &loads),
        );
        report.push(
            Line::new(
                "extra_cpu_vs_copy_checksum",
                &label,
                ratio(&extra, &s.copy_checksum),
            )
            .goal("<=", 3.0)
            .kv("extra_cpu_ms_per_checkpoint", fmt_ms(median(&extra)))
            .ms_of("copy_checksum_cpu_ms", &s.copy_checksum)
            .ms_of("process_cpu_off_ms", &s.cpu_off)
            .ms_of("process_cpu_on_ms", &s.cpu_on)
            .kv("load", &loads),
        );
        let steady = median(&s.steady_pause);
        report.push(
            Line::new(
                "first_pause_after_restart_vs_steady",
                &label,
                s.first_pause_after_restart
                    .iter()
                    .map(|p| p / steady)
                    .collect(),
            )
            .goal("<=", 1.2)
            .ms_of("first_pause_ms", &s.first_pause_after_restart)
            .ms_of("first_pause_lock_wait_ms", &s.first_pause_lock_wait)
            .kv("steady_pause_ms", fmt_ms(steady))
            .kv("load", &loads),
        );
        // The same in CPU time of the training thread: a single pause on a
        // loaded machine is often stretched by a time slice of another
        // process, which a median of many steady pauses is not.
        let steady_cpu = median(&s.steady_pause_cpu);
        report.push(
            Line::new(
                "first_pause_cpu_after_restart_vs_steady",
                &label,
                s.first_pause_cpu_after_restart
                    .iter()
                    .map(|p| p / steady_cpu)
                    .collect(),
            )
            .goal("<=", 1.2)
            .ms_of("first_pause_cpu_ms", &s.first_pause_cpu_after_restart)
            .kv("steady_pause_cpu_ms", fmt_ms(steady_cpu))
            .kv("load", &loads),
        );
        report.push(
            Line::new(
                "restart_to_first_step_vs_read_checksum",
                &label,
                ratio(&s.to_first_step, &s.read_checksum),
            )
            .goal("<=", 1.2)
            .ms_of("to_first_step_ms", &s.to_first_step)
            .kv(
                "phases_ms",
                named_medians(
                    ["build", "open", "restore", "reserve", "first_step"],
                    &s.phases,
                ),
            )
            .ms_of("cold_read_checksum_ms", &s.read_checksum)
            .kv("load", &loads),
        );
        // The same up to the start of the first step: what the restart
        // itself costs, without the first step's training work (which a
        // larger model or batch makes as long as it likes).
        report.push(
            Line::new(
                "restart_to_training_vs_read_checksum",
                &label,
                ratio(&s.to_training, &s.read_checksum),
            )
            .ms_of("to_training_ms", &s.to_training)
            .ms_of("cold_read_checksum_ms", &s.read_checksum)
            .kv("load", &loads),
        );
    }
}
