//! `epochwal run`: the long-running trainer daemon.
//!
//! Three threads, so that keeping the state safe costs training little:
//! - the **training thread** steps the model and, when a checkpoint is due,
//!   serializes the live state straight into the log's mapped tail (the only
//!   time training pauses);
//! - the **persisting thread** makes that record durable (msync, header,
//!   msync), applies retention and reports it, while training goes on;
//! - the **main thread** runs a small tokio runtime for signals, the systemd
//!   watchdog and shutdown.
//!
//! Back-pressure: at most one checkpoint is in flight. When the next one is
//! due before the previous is durable, the training thread waits for it; that
//! wait is counted in the reported pause.

mod pipeline;
pub mod sd_notify;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tracing::{error, info, warn};

use crate::config::{CheckpointConfig, Config};
use crate::train::Trainer;
use crate::wal::Log;
use pipeline::{Control, Outcome};
use sd_notify::Notifier;

/// Flags of `epochwal run`; they override the configuration file.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Configuration file (TOML). Without it the built-in defaults are used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the checkpoint log (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Epochs to train, 0 = until stopped (overrides `epochs`).
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Start a fresh run from the weights in this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub init_from: Option<PathBuf>,
}

/// sd_notify that does nothing when not run under systemd.
#[derive(Clone, Default)]
pub(crate) struct Notify(Option<Arc<Notifier>>);

impl Notify {
    fn from_env() -> Notify {
        match Notifier::from_env() {
            Ok(n) => Notify(n.map(Arc::new)),
            Err(e) => {
                warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not talking to systemd");
                Notify(None)
            }
        }
    }

    /// Sends one message; failures are logged, never fatal.
    pub(crate) fn send(&self, msg: &str) {
        if let Some(n) = &self.0 {
            if let Err(e) = n.notify(msg) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    tracing::debug!(message = msg, "sd_notify queue full; message dropped");
                    return;
                }
                warn!(error = %e, message = msg, "sd_notify failed");
            }
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            info!("no --config given: using the built-in defaults");
            Config::default()
        }
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    Ok(config)
}

/// Entry point of `epochwal run`; returns the exit code.
pub fn main(args: RunArgs) -> anyhow::Result<i32> {
    init_tracing();
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    // With RLIMIT_FSIZE in force, growing a file past it must surface as EFBIG
    // (reported like a full disk) instead of killing the daemon.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Signals are registered before the (possibly long) start-up, so that a
    // SIGTERM during recovery is honoured instead of killing the process.
    let signals = {
        let _guard = runtime.enter();
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .context("registering signal handlers")?
    };
    let notify = Notify::from_env();
    let (trainer, log, durable) = start(&config, &args)?;
    let state = trainer.state();
    let (epoch, step) = (state.epoch, state.global_step);
    if config.epochs > 0 && epoch >= config.epochs {
        info!(
            epoch,
            target = config.epochs,
            "the run is already complete; nothing to do"
        );
        notify.send("READY=1\nSTATUS=run complete");
        return Ok(0);
    }
    let control = Arc::new(Control::new(config.checkpoint, durable));
    let log = Arc::new(Mutex::new(log));
    let handles = pipeline::spawn(
        trainer,
        Arc::clone(&log),
        Arc::clone(&control),
        config.epochs,
        notify.clone(),
    )?;
    notify.send(&format!(
        "READY=1\nSTATUS=training: epoch {epoch}, step {step}, no checkpoint yet in this run"
    ));
    info!(
        epoch,
        step,
        target_epochs = config.epochs,
        "training started"
    );
    runtime.block_on(supervise(
        signals,
        control,
        log,
        handles,
        notify,
        config,
        args.config,
    ))
}

/// Recovers the log and builds the trainer from the newest good record (or
/// fresh, or from `--init-from`).
#[allow(clippy::type_complexity)]
fn start(config: &Config, args: &RunArgs) -> anyhow::Result<(Trainer, Log, Option<(u64, u64)>)> {
    let mut trainer = Trainer::new(&config.train_config())
        .with_context(|| "building the model and dataset from the configuration")?;
    info!(model = %trainer.describe(), fingerprint = format!("{:016x}", trainer.fingerprint()), "model built");
    let (log, recovery) = Log::open(&config.data_dir, config.log_options())?;
    for skip in &recovery.skipped {
        warn!(file = %skip.file.display(), offset = skip.offset, reason = %skip.reason, "recovery skipped");
    }
    let durable = recovery
        .record
        .as_ref()
        .map(|r| (r.header().sequence, r.header().step));
    match &recovery.record {
        Some(record) => {
            if let Some(path) = &args.init_from {
                bail!(
                    "{}: refusing --init-from {}: the log already holds record {} (epoch {}); \
                     use an empty --data-dir for a warm start",
                    config.data_dir.display(),
                    path.display(),
                    record.header().sequence,
                    record.header().epoch
                );
            }
            trainer.restore(record.state()).with_context(|| {
                format!(
                    "{}: cannot resume from record {} in {}",
                    config.data_dir.display(),
                    record.header().sequence,
                    record.path().display()
                )
            })?;
            let h = record.header();
            info!(
                seq = h.sequence,
                epoch = h.epoch,
                step = h.step,
                segment = %record.path().display(),
                skipped = recovery.skipped.len(),
                "recovered"
            );
        }
        None => {
            if let Some(path) = &args.init_from {
                let tensors = crate::tools::load_safetensors_weights(path)?;
                trainer
                    .init_from(&tensors)
                    .with_context(|| format!("{}: cannot initialise the model", path.display()))?;
                info!(file = %path.display(), tensors = tensors.len(), "fresh run, weights initialised from safetensors");
            } else {
                info!(dir = %config.data_dir.display(), "no checkpoint found: fresh run");
            }
        }
    }
    Ok((trainer, log, durable))
}

/// The main thread's loop: signals, watchdog, shutdown.
async fn supervise(
    mut signals: signal_hook_tokio::Signals,
    control: Arc<Control>,
    log: Arc<Mutex<Log>>,
    mut handles: pipeline::Handles,
    notify: Notify,
    config: Config,
    config_path: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let watchdog = sd_notify::watchdog_interval_from_env();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut last_heartbeat = u64::MAX;
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut checkpoint = config.checkpoint;
    loop {
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            done = &mut handles.done => {
                let outcome = done.unwrap_or(Outcome::Failed("the training thread vanished".into()));
                return finish(outcome, &notify);
            }
            sig = signals.next() => {
                let Some(sig) = sig else { continue };
                match sig {
                    SIGTERM | SIGINT => {
                        if deadline.is_some() {
                            error!(signal = sig, "second stop signal: exiting at once; the log keeps every record that was durable");
                            std::process::exit(128 + sig);
                        }
                        info!(signal = sig, "stop requested: finishing the current step and writing a final checkpoint");
                        control.request_stop();
                        notify.send("STOPPING=1\nSTATUS=stopping: writing the final checkpoint");
                        notify.send(&format!("EXTEND_TIMEOUT_USEC={}", grace.as_micros()));
                        deadline = Some(tokio::time::Instant::now() + grace);
                    }
                    SIGHUP => {
                        checkpoint = reload(config_path.as_deref(), checkpoint, &control, &log, &notify);
                    }
                    SIGUSR1 => {
                        info!("SIGUSR1: checkpoint requested");
                        control.request_checkpoint();
                    }
                    _ => {}
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let beat = control.heartbeat.load(Ordering::Relaxed);
                // While stopping, the final flush may outlast a watchdog
                // period without a visible step; the grace deadline bounds it.
                if beat != last_heartbeat || deadline.is_some() {
                    notify.send("WATCHDOG=1");
                    last_heartbeat = beat;
                } else {
                    warn!("no training progress since the last watchdog period; not pinging systemd");
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                error!(
                    grace_seconds = grace.as_secs(),
                    last_durable_seq = control.last_durable_seq.load(Ordering::Relaxed),
                    "the final checkpoint did not finish within shutdown_grace_seconds; exiting, the previous durable record stays the newest"
                );
                return Ok(1);
            }
        }
    }
}

fn finish(outcome: Outcome, notify: &Notify) -> anyhow::Result<i32> {
    match outcome {
        Outcome::Stopped { seq } | Outcome::Completed { seq } => {
            notify.send(&format!(
                "STOPPING=1\nSTATUS=stopped; last durable sequence {seq}"
            ));
            info!(last_durable_seq = seq, "exiting cleanly");
            Ok(0)
        }
        Outcome::Failed(reason) => {
            notify.send(&format!("STATUS=failed: {reason}"));
            error!(%reason, "training stopped on an error");
            Ok(1)
        }
    }
}

/// SIGHUP: re-reads the file and applies what can change at run time.
fn reload(
    path: Option<&std::path::Path>,
    current: CheckpointConfig,
    control: &Control,
    log: &Mutex<Log>,
    notify: &Notify,
) -> CheckpointConfig {
    let Some(path) = path else {
        warn!("SIGHUP: started without --config, nothing to reload");
        return current;
    };
    notify.send("RELOADING=1");
    let result = Config::load(path);
    notify.send("READY=1");
    let new = match result {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: configuration not reloaded, keeping the current settings");
            return current;
        }
    };
    let changes = new.checkpoint.changes_from(&current);
    if changes.is_empty() {
        info!(file = %path.display(), "SIGHUP: reloaded, no run-time setting changed (only [checkpoint] can change without a restart)");
    } else {
        info!(file = %path.display(), applied = %changes.join(", "), "SIGHUP: reloaded");
    }
    control.set_checkpoint_config(new.checkpoint);
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_options(new.log_options());
    new.checkpoint
}
