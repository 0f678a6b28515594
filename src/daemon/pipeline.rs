//! The training thread and the persisting thread, and what they share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, info, warn};

use super::observing::Observers;
use super::replication::Replication;
use super::Notify;
use crate::config::{CheckpointConfig, OnNonFinite};
use crate::train::{SavedNumbers, Snapshot, Trainer, Validation};
use crate::wal::{Log, PendingAppend, ValidationFigures, WalError};

/// `u64::MAX` stands for "none" in the atomics below.
const NONE: u64 = u64::MAX;

/// State shared by the three threads.
pub(crate) struct Control {
    stop: AtomicBool,
    checkpoint_now: AtomicBool,
    /// Grows with every training step and every durable checkpoint; the
    /// watchdog pings systemd only while it moves.
    pub heartbeat: AtomicU64,
    /// Sequence of the newest durable record (0 = none yet).
    pub last_durable_seq: AtomicU64,
    /// Global step of the newest durable record (`NONE` = none).
    last_durable_step: AtomicU64,
    checkpoint: Mutex<CheckpointConfig>,
    /// True while a checkpoint is being persisted.
    busy: Mutex<bool>,
    idle: Condvar,
    /// Set when persisting failed in a way that closes the log.
    fatal: Mutex<Option<String>>,
    /// Checkpoints that failed for lack of space since the last durable one.
    failed_since_durable: AtomicU64,
    /// Held while reading `stop` and sending the STATUS that depends on it,
    /// and while requesting a stop and announcing it, so that no "training"
    /// status can follow STOPPING=1.
    status: Mutex<()>,
    /// The newest losses, for the STATUS line.
    figures: Mutex<Figures>,
    /// Nanoseconds the training thread waited, in the step after a
    /// checkpoint, for the persisting thread to finish copying the
    /// snapshot; added to that checkpoint's reported pause.
    snapshot_wait_ns: AtomicU64,
}

/// The newest losses the training thread reported.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    epoch: u64,
    /// Mean training loss of the last completed epoch.
    loss: Option<f64>,
    validation: Option<Validation>,
    /// Lowest validation loss of this run so far, and its epoch.
    best: Option<(f32, u64)>,
}

impl Figures {
    /// `epoch 12, loss 0.4123, val_loss 0.4521 (best 0.4011 at epoch 9)`;
    /// before the first epoch of this run ends, `epoch E, step S` of the
    /// given record.
    fn describe_or(&self, epoch: u64, step: u64) -> String {
        if self.loss.is_none() && self.validation.is_none() {
            return format!("epoch {epoch}, step {step}");
        }
        let mut s = format!("epoch {}", self.epoch);
        if let Some(l) = self.loss {
            s.push_str(&format!(", loss {l:.4}"));
        }
        if let Some(v) = self.validation {
            s.push_str(&format!(", val_loss {:.4}", v.loss));
            if let Some(a) = v.accuracy {
                s.push_str(&format!(", val_acc {:.1}%", 100.0 * a));
            }
        }
        if let Some((b, e)) = self.best {
            s.push_str(&format!(" (best val_loss {b:.4} at epoch {e})"));
        }
        s
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    /// `durable` is the (sequence, global step) of the recovered record.
    pub(crate) fn new(checkpoint: CheckpointConfig, durable: Option<(u64, u64)>) -> Control {
        Control {
            stop: AtomicBool::new(false),
            checkpoint_now: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            last_durable_seq: AtomicU64::new(durable.map_or(0, |d| d.0)),
            last_durable_step: AtomicU64::new(durable.map_or(NONE, |d| d.1)),
            checkpoint: Mutex::new(checkpoint),
            busy: Mutex::new(false),
            idle: Condvar::new(),
            fatal: Mutex::new(None),
            failed_since_durable: AtomicU64::new(0),
            status: Mutex::new(()),
            figures: Mutex::new(Figures::default()),
            snapshot_wait_ns: AtomicU64::new(0),
        }
    }

    /// True while a checkpoint is being persisted.
    fn busy(&self) -> bool {
        *lock(&self.busy)
    }

    /// Requests a stop and runs `announce` (STOPPING=1) before any status
    /// sent after it can be computed.
    pub(crate) fn request_stop(&self, announce: impl FnOnce()) {
        let _status = lock(&self.status);
        self.stop.store(true, Ordering::SeqCst);
        announce();
    }

    /// "stopping" once a stop was requested, else "training"; the caller
    /// holds `status` until its message is sent.
    fn activity(&self) -> &'static str {
        if self.stop.load(Ordering::SeqCst) {
            "stopping"
        } else {
            "training"
        }
    }

    pub(crate) fn request_checkpoint(&self) {
        self.checkpoint_now.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_checkpoint_config(&self, c: CheckpointConfig) {
        *lock(&self.checkpoint) = c;
    }

    /// Blocks until no checkpoint is being persisted. Errors if persisting
    /// failed fatally.
    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        let mut busy = lock(&self.busy);
        while *busy {
            busy = self.idle.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        drop(busy);
        match lock(&self.fatal).clone() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn set_busy(&self, value: bool) {
        *lock(&self.busy) = value;
        if !value {
            self.idle.notify_all();
        }
    }

    fn durable_step(&self) -> Option<u64> {
        match self.last_durable_step.load(Ordering::SeqCst) {
            NONE => None,
            s => Some(s),
        }
    }
}

/// How the training thread ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stopped by a signal after a final durable checkpoint.
    Stopped { seq: u64 },
    /// Reached the configured number of epochs.
    Completed { seq: u64 },
    /// Could not go on.
    Failed(String),
    /// The loss or a parameter became NaN or infinite (`on_nonfinite =
    /// "stop"`); no record of that state was written.
    Diverged(String),
}

/// What the supervisor holds on to.
pub(crate) struct Handles {
    pub done: tokio::sync::oneshot::Receiver<Outcome>,
}

struct Job {
    /// Begun without its payload: the persisting thread fills it from
    /// `snapshot` (the copy is not made on the training thread).
    pending: PendingAppend,
    snapshot: Snapshot,
    pause: Duration,
    reason: &'static str,
    /// No checkpoint follows (shutdown or the last epoch): nothing to prepare.
    last: bool,
}

/// Starts the persisting and training threads.
#[allow(clippy::too_many_arguments)] // each is a distinct piece of the run
pub(crate) fn spawn(
    trainer: Trainer,
    log: Arc<Mutex<Log>>,
    control: Arc<Control>,
    target_epochs: u64,
    on_nonfinite: OnNonFinite,
    notify: Notify,
    replication: Option<Arc<Replication>>,
    observe: Arc<Observers>,
) -> anyhow::Result<Handles> {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let remote = replication.clone();
    {
        let log = Arc::clone(&log);
        let control = Arc::clone(&control);
        let notify = notify.clone();
        let observe = Arc::clone(&observe);
        std::thread::Builder::new()
            .name("persist".into())
            .spawn(move || persist_loop(jobs_rx, &log, &control, &notify, replication, &observe))?;
    }
    std::thread::Builder::new()
        .name("train".into())
        .spawn(move || {
            let mut t = TrainLoop {
                trainer,
                log,
                control,
                jobs: jobs_tx,
                notify,
                target_epochs,
                started: Instant::now(),
                on_nonfinite,
                saved: SavedNumbers::default(),
                nonfinite_warned: None,
                nonfinite_suppressed: 0,
                remote,
                observe,
            };
            let outcome = t.run();
            let _ = done_tx.send(outcome);
        })?;
    Ok(Handles { done: done_rx })
}

fn persist_loop(
    jobs: mpsc::Receiver<Job>,
    log: &Mutex<Log>,
    control: &Control,
    notify: &Notify,
    replication: Option<Arc<Replication>>,
    observe: &Observers,
) {
    // The first checkpoint's staging buffer is populated here, while the
    // training thread starts, so that its pause is as short as any other.
    if let Err(e) = lock(log).prepare_next_append() {
        warn!(error = %e, "preparing space for the first checkpoint failed");
    }
    for job in jobs {
        let header = *job.pending.header();
        let mut pending = job.pending;
        // The copy of the state into the staging buffer, here rather than in
        // the training pause; the trainer's next write waits for the drop.
        let filled = pending.fill(&job.snapshot);
        drop(job.snapshot);
        let result = filled.and_then(|()| pending.persist());
        // What the training thread paid for this checkpoint: the pause, and
        // the wait of the step after it for the copy (that step's optimizer
        // update comes long after the fill in all but the smallest models,
        // so this is usually zero, and it has happened by now).
        let pause =
            job.pause + Duration::from_nanos(control.snapshot_wait_ns.swap(0, Ordering::SeqCst));
        let (retention, retained) = {
            let mut log = lock(log);
            let retention = log.finish(&result);
            let retained = log.retained();
            if result.is_ok() && !job.last && !control.stop.load(Ordering::SeqCst) {
                if let Err(e) = log.prepare_next_append() {
                    // Not fatal: the next begin_append rotates (and reports a
                    // full disk) itself.
                    warn!(error = %e, "preparing space for the next checkpoint failed");
                }
            }
            (retention, retained)
        };
        match &result {
            Ok(d) => {
                let failed = control.failed_since_durable.swap(0, Ordering::SeqCst);
                if failed > 0 {
                    info!(
                        seq = d.header.sequence,
                        failed_attempts = failed,
                        "checkpoints succeed again"
                    );
                }
                control
                    .last_durable_seq
                    .store(d.header.sequence, Ordering::SeqCst);
                control
                    .last_durable_step
                    .store(d.header.step, Ordering::SeqCst);
                control.heartbeat.fetch_add(1, Ordering::Relaxed);
                // Queued for upload (never blocks); the lag shown includes it.
                let remote = replication.as_ref().map(|r| {
                    r.offer(d);
                    r.progress()
                });
                observe.durable(d, pause, retained, remote.as_ref());
                // Routine checkpoints are summed up by the epoch line; the
                // ones an operator asked for are worth a line of their own.
                let level_info = matches!(job.reason, "signal" | "shutdown");
                macro_rules! durable_line {
                    ($level:ident) => {
                        $level!(
                            seq = d.header.sequence,
                            epoch = d.header.epoch,
                            step = d.header.step,
                            bytes = d.bytes,
                            pause_ms = (pause.as_secs_f64() * 1e6).round() / 1e3,
                            persist_ms = (d.sync_time.as_secs_f64() * 1e6).round() / 1e3,
                            reason = job.reason,
                            val_loss = d.header.validation.map(|v| f64::from(v.loss)),
                            segment = %d.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                            remote_seq = remote.as_ref().map(|p| p.remote_seq),
                            remote_lag_records = remote.as_ref().map(|p| p.lag_records()),
                            remote_lag_s = remote.as_ref().map(|p| (p.lag_seconds() * 1e3).round() / 1e3),
                            "checkpoint durable"
                        )
                    };
                }
                if crate::observe::journal::active() {
                    // Every checkpoint, with its fields, for journalctl.
                    super::observing::journal_durable(d, pause, job.reason, remote.as_ref());
                } else if level_info {
                    durable_line!(info);
                } else {
                    durable_line!(debug);
                }
                // Once a stop is requested the status stays "stopping" until
                // the supervisor says "stopped": a checkpoint that becomes
                // durable meanwhile must not make it read "training" again.
                let _status = lock(&control.status);
                let figures = *lock(&control.figures);
                let base = format!(
                    "{}: {}, last durable seq {}",
                    control.activity(),
                    figures.describe_or(d.header.epoch, d.header.step),
                    d.header.sequence
                );
                let status = match &replication {
                    Some(r) => r.status(&base),
                    None => base,
                };
                notify.send(&format!("STATUS={status}"));
            }
            Err(e) => {
                error!(seq = header.sequence, error = %e, "persisting the checkpoint failed; the log is closed for appends");
                notify.send(&format!("STATUS=failed: {e}"));
                *lock(&control.fatal) = Some(e.to_string());
            }
        }
        match retention {
            Ok(r) if !r.deleted.is_empty() => debug!(
                deleted = r.deleted.len(),
                freed_bytes = r.freed_bytes,
                "retention removed old segments"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "retention failed; old segments stay until the next checkpoint")
            }
        }
        control.set_busy(false);
    }
}

struct TrainLoop {
    trainer: Trainer,
    log: Arc<Mutex<Log>>,
    control: Arc<Control>,
    jobs: mpsc::Sender<Job>,
    notify: Notify,
    target_epochs: u64,
    started: Instant,
    on_nonfinite: OnNonFinite,
    /// The numbers before the current step, kept with `on_nonfinite = "skip"`.
    saved: SavedNumbers,
    /// When the last non-finite warning was logged.
    nonfinite_warned: Option<Instant>,
    /// Non-finite steps not warned about since then.
    nonfinite_suppressed: u64,
    /// The uploader, for the remote lag in the epoch line.
    remote: Option<Arc<Replication>>,
    /// Metrics and event files.
    observe: Arc<Observers>,
}

/// Shortest interval between two warnings about non-finite steps.
const NONFINITE_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The once-per-epoch progress line, at most about one per second.
struct Progress {
    /// When the last line was written (None: not yet in this run).
    last_line: Option<Instant>,
    /// Epochs finished since the last line, and checkpoints begun in them.
    epochs_since: u64,
    checkpoints_since: u64,
    /// Sum and count of the batch losses of the epoch under way.
    loss_sum: f64,
    loss_count: u64,
    epoch_started: Instant,
    best: Option<(f32, u64)>,
}

/// Shortest interval between two progress lines.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What became of the checkpoint trigger at the end of an epoch, for the
/// epoch line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckpointNote {
    None,
    Begun(u64),
    /// Due, but the previous one was still being persisted: taken at the
    /// next epoch end (or step, for step and timer triggers) when it is done.
    Coalesced,
    /// Due, but `min_seconds_between` had not passed.
    Throttled,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last_line: None,
            epochs_since: 0,
            checkpoints_since: 0,
            loss_sum: 0.0,
            loss_count: 0,
            epoch_started: Instant::now(),
            best: None,
        }
    }

    fn step(&mut self, loss: f32) {
        if loss.is_finite() {
            self.loss_sum += f64::from(loss);
            self.loss_count += 1;
        }
    }

    /// Called at the end of every epoch; writes the line when due (always
    /// for the first and the last epoch of a run). Returns the epoch's mean
    /// training loss.
    #[allow(clippy::too_many_arguments)]
    fn epoch_done(
        &mut self,
        epoch: u64,
        target: u64,
        validation: Option<Validation>,
        note: CheckpointNote,
        durable_seq: u64,
        remote: Option<&Replication>,
        control: &Control,
    ) -> Option<f64> {
        let now = Instant::now();
        let epoch_time = now.duration_since(self.epoch_started);
        self.epoch_started = now;
        let loss = (self.loss_count > 0).then(|| self.loss_sum / self.loss_count as f64);
        (self.loss_sum, self.loss_count) = (0.0, 0);
        if let Some(v) = validation.filter(|v| v.loss.is_finite()) {
            if self.best.is_none_or(|(b, _)| v.loss < b) {
                self.best = Some((v.loss, epoch));
            }
        }
        *lock(&control.figures) = Figures {
            epoch,
            loss,
            validation,
            best: self.best,
        };
        self.epochs_since += 1;
        if matches!(note, CheckpointNote::Begun(_)) {
            self.checkpoints_since += 1;
        }
        let last = target > 0 && epoch >= target;
        let due = self
            .last_line
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL);
        if !(due || last) {
            return loss;
        }
        let mut line = if target > 0 {
            format!("epoch {epoch}/{target}")
        } else {
            format!("epoch {epoch}")
        };
        match loss {
            Some(l) => line.push_str(&format!("  loss {l:.4}")),
            None => line.push_str("  loss -"),
        }
        if let Some(v) = validation {
            line.push_str(&format!("  val_loss {:.4}", v.loss));
            if let Some(a) = v.accuracy {
                line.push_str(&format!("  val_acc {:.1}%", 100.0 * a));
            }
            if self.best.is_some_and(|(_, e)| e == epoch) {
                line.push_str(" (best)");
            }
        }
        line.push_str(&format!("  {}", human_duration(epoch_time)));
        line.push_str(&match note {
            CheckpointNote::Begun(seq) => format!("  checkpoint seq {seq}"),
            CheckpointNote::Coalesced => "  checkpoint deferred: previous one still writing".into(),
            CheckpointNote::Throttled => "  checkpoint skipped: min_seconds_between".into(),
            CheckpointNote::None => String::new(),
        });
        line.push_str(&format!(" (durable: {})", durable_seq));
        if let Some(r) = remote {
            // Only when a line is written: a fast loop ends epochs far more
            // often than that.
            line.push_str(&format!("  {}", r.progress().status_text()));
        }
        if self.epochs_since > 1 {
            line.push_str(&format!(
                "  [{} epochs since the last line, {} checkpoints]",
                self.epochs_since, self.checkpoints_since
            ));
        }
        if crate::observe::journal::active() {
            info!(
                target: crate::observe::journal::TARGET,
                epoch,
                loss,
                val_loss = validation.map(|v| f64::from(v.loss)),
                val_accuracy = validation.and_then(|v| v.accuracy).map(f64::from),
                durable_seq,
                "{line}"
            );
        } else {
            info!("{line}");
        }
        self.last_line = Some(now);
        self.epochs_since = 0;
        self.checkpoints_since = 0;
        loss
    }
}

/// `850 µs`, `12.3 ms`, `4.56 s` per epoch.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} µs/epoch", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms/epoch", s * 1e3)
    } else {
        format!("{s:.2} s/epoch")
    }
}

impl TrainLoop {
    /// Logs a non-finite step at most every [`NONFINITE_WARN_INTERVAL`],
    /// counting the ones in between.
    fn warn_nonfinite(&mut self, what: &str, epoch: u64, step: u64, bad: &str) {
        let due = self
            .nonfinite_warned
            .is_none_or(|t| t.elapsed() >= NONFINITE_WARN_INTERVAL);
        if !due {
            self.nonfinite_suppressed += 1;
            return;
        }
        warn!(
            epoch,
            step,
            value = bad,
            not_shown_since_last = self.nonfinite_suppressed,
            "{what} (warnings about non-finite steps are shown at most every 10 s)"
        );
        self.nonfinite_warned = Some(Instant::now());
        self.nonfinite_suppressed = 0;
    }

    /// After a step: applies `on_nonfinite`. `None` to go on, or the outcome
    /// that ends the run.
    fn guard(&mut self, out: &crate::train::StepOutcome, before: (u64, u64)) -> Option<Outcome> {
        if self.on_nonfinite == OnNonFinite::Continue && out.loss.is_finite() {
            return None;
        }
        // Weights only under "stop" (a third of the scan; a non-finite
        // moment is caught before the next checkpoint, see `diverged_before`),
        // everything under "skip" (the step that broke it is the one undone).
        let bad = if !out.loss.is_finite() {
            format!("loss = {}", out.loss)
        } else if self.on_nonfinite == OnNonFinite::Stop {
            self.trainer.first_non_finite_weight()?.to_string()
        } else {
            self.trainer.first_non_finite()?.to_string()
        };
        let (epoch, step_in_epoch) = before;
        match self.on_nonfinite {
            OnNonFinite::Stop => Some(self.diverged(&bad, out.global_step, epoch, step_in_epoch)),
            OnNonFinite::Skip => {
                self.observe.nonfinite(false);
                self.trainer.restore_numbers(&self.saved);
                self.warn_nonfinite(
                    "non-finite step dropped (on_nonfinite = \"skip\")",
                    epoch,
                    out.global_step,
                    &bad,
                );
                None
            }
            OnNonFinite::Continue => {
                self.observe.nonfinite(false);
                self.warn_nonfinite(
                    "loss is not finite (on_nonfinite = \"continue\")",
                    epoch,
                    out.global_step,
                    &bad,
                );
                None
            }
        }
    }

    /// Bytes the current state's record takes on disk (0 if unknown).
    fn last_span(&self) -> u64 {
        crate::wal::archived_len(self.trainer.state()).map_or(0, crate::wal::format::record_span)
    }

    /// The outcome of a run stopped by `on_nonfinite = "stop"`.
    fn diverged(&self, bad: &str, global_step: u64, epoch: u64, step_in_epoch: u64) -> Outcome {
        self.observe.nonfinite(true);
        // The in-flight checkpoint, if any, is of an earlier state that was
        // checked: let it become durable.
        let _ = self.control.wait_idle();
        let newest = match self.control.last_durable_seq.load(Ordering::SeqCst) {
            0 => "the log holds no record yet".to_string(),
            seq => format!("the newest durable record is still sequence {seq}"),
        };
        Outcome::Diverged(format!(
            "training diverged at global step {global_step} (epoch {epoch}, step {step_in_epoch} of the epoch): \
             {bad} is not finite; no record of this state was written and {newest}; \
             lower optimizer.lr, or set on_nonfinite = \"skip\" or \"continue\""
        ))
    }

    /// Under "stop", the full scan (weights and moments) before a state is
    /// written; `Some` ends the run without writing it.
    fn diverged_before_checkpoint(&self) -> Option<Outcome> {
        if self.on_nonfinite != OnNonFinite::Stop {
            return None;
        }
        let bad = self.trainer.first_non_finite()?;
        let s = self.trainer.state();
        Some(self.diverged(&bad.to_string(), s.global_step, s.epoch, s.step_in_epoch))
    }

    fn run(&mut self) -> Outcome {
        // When the last checkpoint began, or the run (for every_seconds).
        let mut last_checkpoint = Instant::now();
        // When the last checkpoint of this run began (for
        // min_seconds_between: the first one is never held back).
        let mut last_begun: Option<Instant> = None;
        let mut progress = Progress::new();
        // A due checkpoint that could not start while the previous one was
        // in flight: (reason, only at an epoch end).
        let mut deferred: Option<&'static str> = None;
        loop {
            if self.control.stop.load(Ordering::SeqCst) {
                return self.final_checkpoint(true);
            }
            if self.target_epochs > 0 && self.trainer.state().epoch >= self.target_epochs {
                return self.final_checkpoint(false);
            }
            if self.on_nonfinite == OnNonFinite::Skip {
                self.trainer.save_numbers(&mut self.saved);
            }
            let before = {
                let s = self.trainer.state();
                (s.epoch, s.step_in_epoch)
            };
            let out = self.trainer.step();
            let waited = self.trainer.take_snapshot_wait();
            if !waited.is_zero() {
                self.control
                    .snapshot_wait_ns
                    .fetch_add(waited.as_nanos() as u64, Ordering::SeqCst);
            }
            self.control.heartbeat.fetch_add(1, Ordering::Relaxed);
            self.observe.step(out.epoch, out.global_step);
            if let Some(end) = self.guard(&out, before) {
                return end;
            }
            progress.step(out.loss);
            let validation = if out.epoch_completed {
                self.trainer.evaluate()
            } else {
                None
            };
            let cfg = *lock(&self.control.checkpoint);
            let (reason, forced) = if self.control.checkpoint_now.swap(false, Ordering::SeqCst) {
                (Some("signal"), true)
            } else if cfg.every_epochs > 0
                && out.epoch_completed
                && out.epoch % cfg.every_epochs == 0
            {
                (Some("epoch"), false)
            } else if cfg.every_steps > 0 && out.global_step % cfg.every_steps == 0 {
                (Some("steps"), false)
            } else if cfg.every_seconds > 0
                && last_checkpoint.elapsed() >= Duration::from_secs(cfg.every_seconds)
            {
                (Some("timer"), false)
            } else {
                // A deferred epoch checkpoint waits for an epoch end; the
                // others go at the first step the persister is free.
                match deferred {
                    Some("epoch") if !out.epoch_completed => (None, false),
                    d => (d, false),
                }
            };
            let mut note = CheckpointNote::None;
            if let Some(reason) = reason {
                let throttled = !forced
                    && cfg.min_seconds_between > 0.0
                    && last_begun
                        .is_some_and(|t| t.elapsed().as_secs_f64() < cfg.min_seconds_between);
                if throttled {
                    note = CheckpointNote::Throttled;
                    deferred = None;
                } else if !forced && cfg.min_seconds_between > 0.0 && self.control.busy() {
                    // Do not stall training for the previous persist.
                    note = CheckpointNote::Coalesced;
                    if deferred.is_none() {
                        debug!(
                            reason,
                            epoch = out.epoch,
                            step = out.global_step,
                            "checkpoint deferred: the previous one is still being persisted"
                        );
                    }
                    deferred = Some(reason);
                } else {
                    if let Some(end) = self.diverged_before_checkpoint() {
                        return end;
                    }
                    match self.checkpoint(reason) {
                        Ok(Some(seq)) => {
                            last_checkpoint = Instant::now();
                            last_begun = Some(last_checkpoint);
                            deferred = None;
                            note = CheckpointNote::Begun(seq);
                        }
                        Ok(None) => {}
                        Err(e) => return Outcome::Failed(e),
                    }
                }
            }
            if out.epoch_completed {
                let loss = progress.epoch_done(
                    out.epoch,
                    self.target_epochs,
                    validation,
                    note,
                    self.control.last_durable_seq.load(Ordering::SeqCst),
                    self.remote.as_deref(),
                    &self.control,
                );
                self.observe.epoch_done(
                    loss,
                    validation.map(|v| v.loss),
                    progress.best.map(|b| b.0),
                );
            }
        }
    }

    /// Serializes the state into the log and hands it to the persisting
    /// thread; returns the record's sequence. `Ok(None)` when the log is
    /// full (the failure is reported and training goes on; the next trigger
    /// retries). The record header carries the validation figures when they
    /// were computed for exactly these weights.
    fn checkpoint(&mut self, reason: &'static str) -> Result<Option<u64>, String> {
        let t0 = Instant::now();
        self.control.wait_idle()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let base_ms = self.trainer.state().train_time_ms;
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        self.started = Instant::now();
        self.trainer.set_wall_clock(now, base_ms + elapsed_ms);
        let validation = self.trainer.validation().map(|v| ValidationFigures {
            loss: v.loss,
            accuracy: v.accuracy,
        });
        // The pause: the record's size is counted and its place taken; the
        // persisting thread copies the snapshot while training goes on.
        let snapshot = self.trainer.snapshot();
        let begun = lock(&self.log).begin_append_unfilled(&snapshot, validation);
        match begun {
            Ok(pending) => {
                let seq = pending.header().sequence;
                self.control.set_busy(true);
                let state = self.trainer.state();
                let job = Job {
                    pending,
                    snapshot,
                    pause: t0.elapsed(),
                    reason,
                    last: reason == "shutdown"
                        || (self.target_epochs > 0 && state.epoch >= self.target_epochs),
                };
                self.jobs
                    .send(job)
                    .map_err(|_| "the persisting thread is gone".to_string())?;
                Ok(Some(seq))
            }
            Err(e @ WalError::NoSpace { .. }) => {
                self.control
                    .failed_since_durable
                    .fetch_add(1, Ordering::SeqCst);
                let state = self.trainer.state();
                // A fixed segment much larger than a record is the first
                // thing to lower; "auto" sizes segments to the records.
                let hint = match lock(&self.control.checkpoint).segment_bytes {
                    crate::config::SegmentBytes::Bytes(n)
                        if n > 2 * crate::wal::AUTO_RECORDS_PER_SEGMENT * self.last_span() =>
                    {
                        "lower checkpoint.segment_bytes (\"auto\" sizes segments to the records) or free space"
                    }
                    _ => "free space or lower retention",
                };
                error!(epoch = state.epoch, step = state.global_step, error = %e, hint, "checkpoint failed; training goes on and the next trigger retries");
                let _status = lock(&self.control.status);
                self.notify.send(&format!(
                    "STATUS={}: epoch {}, step {}, last durable seq {}; checkpoint failed: no space left",
                    self.control.activity(),
                    state.epoch,
                    state.global_step,
                    self.control.last_durable_seq.load(Ordering::SeqCst)
                ));
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits for the in-flight checkpoint, writes a last one unless the
    /// current state is already durable, and waits for it too.
    fn final_checkpoint(&mut self, stopped: bool) -> Outcome {
        if let Err(e) = self.control.wait_idle() {
            return Outcome::Failed(e);
        }
        let step = self.trainer.state().global_step;
        if self.control.durable_step() != Some(step) {
            if let Some(end) = self.diverged_before_checkpoint() {
                return end;
            }
            match self.checkpoint("shutdown") {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Outcome::Failed(format!(
                        "the final checkpoint could not be written; the newest durable record is sequence {}",
                        self.control.last_durable_seq.load(Ordering::SeqCst)
                    ))
                }
                Err(e) => return Outcome::Failed(e),
            }
            if let Err(e) = self.control.wait_idle() {
                return Outcome::Failed(e);
            }
        } else {
            info!(
                step,
                "the current state is already durable; no final checkpoint needed"
            );
        }
        let seq = self.control.last_durable_seq.load(Ordering::SeqCst);
        if stopped {
            Outcome::Stopped { seq }
        } else {
            Outcome::Completed { seq }
        }
    }
}
