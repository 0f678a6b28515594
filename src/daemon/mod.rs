//! `epochwal run`: the long-running trainer daemon.
//!
//! Three threads, so that keeping the state safe costs training little:
//! - the **training thread** steps the model and, when a checkpoint is due,
//!   serializes the live state into the log's staging buffer (the only
//!   time training pauses);
//! - the **persisting thread** makes that record durable (`pwrite`,
//!   `fdatasync`, header, `fdatasync`), applies retention and reports it, while training goes on;
//! - the **main thread** runs a small tokio runtime for signals, the systemd
//!   watchdog and shutdown.
//!
//! Back-pressure: at most one checkpoint is in flight. When the next one is
//! due before the previous is durable, the training thread waits for it; that
//! wait is counted in the reported pause.

mod observing;
mod pipeline;
pub mod preflight;
mod replication;
pub mod sd_notify;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::train::Trainer;
use crate::wal::{Log, RecordHeader, WalError};
use pipeline::{Control, Outcome};
use sd_notify::Notifier;

/// Exit code when training diverged under `on_nonfinite = "stop"`: a restart
/// would diverge again, so the shipped unit lists it in
/// `RestartPreventExitStatus=`.
pub const EXIT_DIVERGED: i32 = 3;

/// Exit code when the run is refused at start because this configuration
/// cannot work here (the model does not fit in memory, the data directory
/// holds foreign files): a restart would be refused again.
pub const EXIT_REFUSED: i32 = 4;

/// A refusal at start; `main` exits with [`EXIT_REFUSED`].
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn parse_epochs(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|_| {
        format!("`{s}` is not a number of epochs: give 0 (train until stopped) or a positive whole number")
    })
}

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
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_epochs)]
    pub epochs: Option<u64>,
    /// Use a data directory that holds other files but no log (they are
    /// left alone). Without it such a directory is refused.
    #[arg(long)]
    pub allow_foreign_files: bool,
    /// Start a fresh run from the weights in this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub init_from: Option<PathBuf>,
    /// When the data directory holds segments of more than one log (which
    /// stops the start, naming the ids), continue the log with this id
    /// (32 hex digits, as the error and `epochwal inspect` print it); the
    /// other log's segments are left as they are.
    #[arg(long, value_name = "LOG_ID", value_parser = parse_log_id)]
    pub keep_log_id: Option<u128>,
}

fn parse_log_id(s: &str) -> Result<u128, String> {
    if s.len() != 32 {
        return Err(format!(
            "`{s}` is not a log id: give its 32 hexadecimal digits"
        ));
    }
    u128::from_str_radix(s, 16)
        .map_err(|_| format!("`{s}` is not a log id: give its 32 hexadecimal digits"))
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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        // The object store client logs every retried request at info level;
        // the uploader reports failures itself.
        .unwrap_or_else(|_| EnvFilter::new("info,object_store=warn"));
    // Under systemd: the checkpoint and epoch lines (their own target) go
    // through the journal's native protocol with fields; the rest stays
    // text on stderr.
    if let Some(journal) = crate::observe::journal::layer() {
        use tracing_subscriber::filter::{filter_fn, FilterExt, Targets};
        use tracing_subscriber::Layer;
        let target = crate::observe::journal::TARGET;
        let text = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter.and(filter_fn(move |m| m.target() != target)));
        let fields = journal.with_filter(Targets::new().with_target(target, tracing::Level::INFO));
        let _ = tracing_subscriber::registry()
            .with(text)
            .with(fields)
            .try_init();
        return;
    }
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
    match run(args) {
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("epochwal: error: {e}");
            Ok(EXIT_REFUSED)
        }
        other => other,
    }
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = load_config(&args)?;
    for w in config.warnings() {
        warn!("{}: {w}", config_name(&args));
    }
    if !args.allow_foreign_files {
        let foreign = preflight::foreign_files(&config.data_dir).with_context(|| {
            format!(
                "{}: cannot list the data directory",
                config.data_dir.display()
            )
        })?;
        if !foreign.is_empty() {
            let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
            return Err(Refused(format!(
                "{}: holds no epochwal log but {} other file(s) ({}{}): refusing to write a log \
                 next to them; choose an empty or new data directory, or pass --allow-foreign-files",
                config.data_dir.display(),
                foreign.len(),
                shown.join(", "),
                if foreign.len() > 5 { ", ..." } else { "" }
            ))
            .into());
        }
    }
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
    let observers = Arc::new(observing::Observers::new(&config)?);
    {
        let _guard = runtime.enter();
        observers.serve()?;
    }
    let dir_existed = config.data_dir.exists();
    // Replication first: an empty directory is restored from the remote
    // before the log is opened.
    let prepared = match &config.replicate {
        Some(r) => replication::prepare(r, &config, &runtime)?,
        None => None,
    };
    let (trainer, mut log, durable, recovered) = start(&config, &args, dir_existed)?;
    let state = trainer.state();
    let (epoch, step) = (state.epoch, state.global_step);
    if let Err(e) = observers.recovered(&config, recovered.as_ref().map(|r| &r.0), epoch, step) {
        if durable.is_none() {
            let _ = log.discard_if_empty(!dir_existed);
        }
        return Err(e);
    }
    if config.epochs > 0 && epoch >= config.epochs {
        info!(
            epoch,
            target = config.epochs,
            "the run is already complete; nothing to do"
        );
        notify.send("READY=1\nSTATUS=run complete");
        if let Some(prepared) = prepared {
            // The remote may still lack the last record (a run that ended
            // before its upload finished).
            let last = recovered.as_ref().map_or(0, |r| r.0.sequence);
            let r = replication::Replication::start(
                prepared,
                &config,
                recovered,
                notify.clone(),
                None,
            )?;
            r.finish(
                last,
                Instant::now() + Duration::from_secs(config.shutdown_grace_seconds),
            );
        }
        return Ok(0);
    }
    if let Err(e) = reserve_first_segment(&config, &trainer, &mut log, recovered.is_some()) {
        if durable.is_none() {
            let _ = log.discard_if_empty(!dir_existed);
        }
        return Err(e);
    }
    write_running(&config);
    let replication = match prepared {
        Some(p) => Some(Arc::new(replication::Replication::start(
            p,
            &config,
            recovered,
            notify.clone(),
            observers.metrics.clone(),
        )?)),
        None => None,
    };
    let control = Arc::new(Control::new(config.checkpoint, durable));
    let log = Arc::new(Mutex::new(log));
    let handles = pipeline::spawn(
        trainer,
        Arc::clone(&log),
        Arc::clone(&control),
        config.epochs,
        config.on_nonfinite,
        notify.clone(),
        replication.clone(),
        observers,
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
    let cleanup = Cleanup {
        empty_at_start: durable.is_none(),
        remove_dir: !dir_existed,
    };
    runtime.block_on(supervise(
        signals,
        control,
        log,
        handles,
        notify,
        config,
        args,
        cleanup,
        replication,
    ))
}

fn config_name(args: &RunArgs) -> String {
    args.config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string())
}

/// Writes the configuration in force for `epochwal check-config --running`;
/// a failure (a full disk) is logged and changes nothing else.
fn write_running(config: &Config) {
    if let Err(e) = config.write_running(&config.data_dir) {
        warn!(
            file = %Config::running_path(&config.data_dir).display(),
            error = %e,
            "cannot record the running configuration; `epochwal check-config --running` will not see it"
        );
    }
}

/// Creates the segment of the first checkpoint before training, so that a
/// full disk, a segment size larger than the disk or an unwritable directory
/// stops the run now rather than after an interval of training; warns if the
/// disk cannot hold what retention will keep.
///
/// A restart (`resumed`: a record was recovered) whose disk has room for
/// the segment leaves its creation to the persisting thread, which makes it
/// while the first steps run: its directory took a segment of this size
/// before, and creating one (preallocation, two fsyncs) would otherwise
/// delay the first training step. If the disk looks too full for it, the
/// segment is made here, so that a full disk still stops the run at start.
fn reserve_first_segment(
    config: &Config,
    trainer: &Trainer,
    log: &mut Log,
    resumed: bool,
) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    let payload = crate::wal::archived_len(trainer.state())?;
    let span = crate::wal::format::record_span(payload);
    let opts = config.log_options();
    let segment = crate::wal::segment_bytes_for(opts.segment_bytes, span);
    let human = crate::tools::human_bytes;
    let free_before = preflight::disk_available(dir);
    let lazy = resumed && free_before.is_some_and(|free| free > segment);
    let reserved = if lazy {
        log.expect_record_of(trainer.state()).map(|_| ())
    } else {
        log.reserve_for(trainer.state()).map(|_| ())
    };
    match reserved {
        Ok(_) => {}
        Err(WalError::NoSpace { .. }) => bail!(
            "{}: not enough space for the first segment ({}; a record of this model takes {}, \
             `checkpoint.segment_bytes` = {}): lower `checkpoint.segment_bytes` (\"auto\" sizes it \
             to the records) or free space on that disk",
            dir.display(),
            human(segment),
            human(span),
            config.checkpoint.segment_bytes
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "{}: cannot create the first segment before training",
                dir.display()
            )))
        }
    }
    if lazy {
        info!(
            segment_bytes = segment,
            record_bytes = span,
            "space for the first checkpoint checked; its segment is created beside training"
        );
    } else {
        info!(
            segment_bytes = segment,
            record_bytes = span,
            "space for the first checkpoint reserved"
        );
    }
    // What retention will keep at most: whole segments covering keep_records
    // records (or keep_bytes), plus the one being filled.
    let per_segment = ((segment - crate::wal::format::PAGE) / span).max(1);
    let r = opts.retention;
    let mut budget = None;
    if r.keep_records > 0 {
        budget = Some((r.keep_records.div_ceil(per_segment) + 1).saturating_mul(segment));
    }
    if r.keep_bytes > 0 {
        let b = r.keep_bytes.saturating_add(segment);
        budget = Some(budget.map_or(b, |x: u64| x.min(b)));
    }
    if r.keep_every_epochs == 0 {
        if let (Some(budget), Some(free)) = (budget, preflight::disk_available(dir)) {
            // The reserved segment is already taken from `free`, unless it
            // is still to be made.
            let taken = if lazy { 0 } else { segment };
            if budget.saturating_sub(taken) > free {
                warn!(
                    dir = %dir.display(),
                    free_bytes = free,
                    retention_bytes = budget,
                    "the disk has less free space than retention keeps (keep_records / keep_bytes \
                     of segments of {}): checkpoints will fail for lack of space before retention \
                     frees any; lower retention or `checkpoint.segment_bytes`, or free space",
                    human(segment)
                );
            }
        }
    }
    Ok(())
}

/// What to remove if the run fails before writing any record.
#[derive(Debug, Clone, Copy)]
struct Cleanup {
    /// The log held no record when the run started.
    empty_at_start: bool,
    /// The run created the data directory.
    remove_dir: bool,
}

/// Loads an `--init-from` file into a fresh trainer: weights, and Adam's
/// state when the file has one.
fn import_into(
    trainer: &mut Trainer,
    path: &Path,
    file: crate::tools::ImportFile,
) -> anyhow::Result<()> {
    let context = || format!("{}: cannot initialise the model", path.display());
    for (name, _, values) in &file.weights {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: refusing --init-from: tensor {name} holds {} at index {i}; \
                 the weights must be finite",
                path.display(),
                values[i]
            );
        }
    }
    trainer.init_from(&file.weights).with_context(context)?;
    let names: Vec<String> = trainer
        .state()
        .model
        .tensors
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let adam_entries = file.adam.len();
    if adam_entries > 0 {
        let mut slots: Vec<Option<crate::train::AdamInit>> = vec![None; names.len()];
        let mut extra = Vec::new();
        for (key, e) in file.adam {
            for (what, values) in [("exp_avg", &e.exp_avg.1), ("exp_avg_sq", &e.exp_avg_sq.1)] {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    bail!(
                        "{}: refusing --init-from: the Adam {what} of parameter {key} holds {} at \
                         index {i}; the optimizer state must be finite",
                        path.display(),
                        values[i]
                    );
                }
            }
            let index = match &key {
                crate::tools::ParamKey::Index(i) => Some(*i).filter(|i| *i < names.len()),
                crate::tools::ParamKey::Name(n) => names.iter().position(|m| m == n),
            };
            match index {
                Some(i) => {
                    slots[i] = Some(crate::train::AdamInit {
                        step: e.step,
                        exp_avg: e.exp_avg,
                        exp_avg_sq: e.exp_avg_sq,
                    })
                }
                None => extra.push(key.to_string()),
            }
        }
        let missing: Vec<&str> = slots
            .iter()
            .zip(&names)
            .filter(|(s, _)| s.is_none())
            .map(|(_, n)| n.as_str())
            .collect();
        if !extra.is_empty() || !missing.is_empty() {
            bail!(
                "{}: the Adam state does not fit the model: {}{}",
                path.display(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("no state for {}", missing.join(", "))
                },
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}state for unknown parameters {}",
                        if missing.is_empty() { "" } else { "; " },
                        extra.join(", ")
                    )
                }
            );
        }
        let adam: Vec<crate::train::AdamInit> = slots.into_iter().flatten().collect();
        trainer.init_adam(&adam).with_context(context)?;
    }
    trainer.set_import(file.sha256, path.display().to_string());
    info!(
        file = %path.display(),
        sha256 = %crate::tools::sha256_hex(&file.sha256),
        tensors = file.weights.len(),
        adam = adam_entries > 0,
        "fresh run, initialised from safetensors"
    );
    Ok(())
}

/// What `start` hands back: the trainer, the open log, the (sequence, step)
/// of the recovered record, and its header and segment.
type Started = (
    Trainer,
    Log,
    Option<(u64, u64)>,
    Option<(RecordHeader, PathBuf)>,
);

/// Recovers the log and builds the trainer from the newest good record (or
/// fresh, or from `--init-from`).
fn start(config: &Config, args: &RunArgs, dir_existed: bool) -> anyhow::Result<Started> {
    let limit = preflight::memory_limit();
    // Weights are drawn from the seed only if recovery finds nothing to
    // restore (below): drawing them for a large model takes longer than
    // reading the record that would overwrite them.
    let mut trainer = match Trainer::new_for_restore_within(&config.train_config(), &|plan| {
        preflight::check_memory(plan, limit.as_ref())
    }) {
        Ok(t) => t,
        Err(crate::train::TrainError::Memory(m)) => {
            return Err(Refused(format!("{}: {m}", config_name(args))).into())
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("building the model and dataset from the configuration"))
        }
    };
    let (train_rows, val_rows) = trainer.split_sizes();
    info!(
        model = %trainer.describe(),
        fingerprint = format!("{:016x}", trainer.fingerprint()),
        train_examples = train_rows,
        validation_examples = val_rows,
        threads = config.train_config().threads,
        "model built"
    );
    let import = match &args.init_from {
        Some(path) => Some(
            crate::tools::read_import(path)
                .with_context(|| format!("reading --init-from {}", path.display()))?,
        ),
        None => None,
    };
    let (mut log, recovery) =
        Log::open_keeping(&config.data_dir, config.log_options(), args.keep_log_id)?;
    refuse_fresh_over_records(config, &recovery)?;
    if recovery.record.is_none() {
        trainer.initialise_weights();
    }
    let recovered = recovery
        .record
        .as_ref()
        .map(|r| (*r.header(), r.path().to_path_buf()));
    match restore(&mut trainer, &mut log, &recovery, import, config, args) {
        Ok(durable) => Ok((trainer, log, durable, recovered)),
        Err(e) => {
            if recovery.record.is_none() {
                let _ = log.discard_if_empty(!dir_existed);
            }
            Err(e)
        }
    }
}

/// A log that holds record headers but no record that can be used (every
/// payload damaged or unreadable) is no place for a fresh run: the new run
/// would take over the log's sequences and its first checkpoint would let
/// retention delete the old records, which a repaired disk or a copy could
/// still give back. With `[replicate]`, the remote's valid copy was restored
/// before this point if it had one.
fn refuse_fresh_over_records(
    config: &Config,
    recovery: &crate::wal::Recovery,
) -> anyhow::Result<()> {
    if recovery.record.is_some() || recovery.next_sequence <= 1 {
        return Ok(());
    }
    for skip in &recovery.skipped {
        error!(file = %skip.file.display(), offset = skip.offset, reason = %skip.reason, unreadable = skip.unreadable, "recovery passed over a record");
    }
    let unreadable = recovery.skipped.iter().filter(|s| s.unreadable).count();
    bail!(
        "{}: no record in the log can be used: it holds record headers up to sequence {}, but \
         every record was passed over ({} problem(s) logged above, {unreadable} of them read errors); refusing \
         to start a fresh run in this log, which would delete them. {}Copy or repair the disk \
         and restart, restore a copy with `epochwal pull URL DIR`{}, or move the directory away \
         to start a new run",
        config.data_dir.display(),
        recovery.next_sequence - 1,
        recovery.skipped.len(),
        if unreadable > 0 {
            "A read error may clear: "
        } else {
            ""
        },
        if config.replicate.is_some() {
            " (the remote holds no valid copy that is usable)"
        } else {
            ""
        }
    );
}

/// Continues from the recovered record, or initialises a fresh run (from
/// `--init-from` if given, writing the imported state as the first record).
fn restore(
    trainer: &mut Trainer,
    log: &mut Log,
    recovery: &crate::wal::Recovery,
    import: Option<crate::tools::ImportFile>,
    config: &Config,
    args: &RunArgs,
) -> anyhow::Result<Option<(u64, u64)>> {
    for skip in &recovery.skipped {
        if skip.unreadable {
            error!(file = %skip.file.display(), offset = skip.offset, reason = %skip.reason, "recovery passed over a record that cannot be read (I/O error)");
        } else {
            warn!(file = %skip.file.display(), offset = skip.offset, reason = %skip.reason, "recovery skipped");
        }
    }
    if let Some(lost) = &recovery.lost_durable_record {
        warn!(dir = %config.data_dir.display(), "a durable record is missing: {lost}; resuming from the newest intact record (run `epochwal verify` and check the disk)");
    }
    let durable = recovery
        .record
        .as_ref()
        .map(|r| (r.header().sequence, r.header().step));
    let mut durable = durable;
    match &recovery.record {
        Some(record) => {
            if let (Some(path), Some(file)) = (&args.init_from, &import) {
                // Idempotent import: the run this log holds was started from
                // exactly this file, so the flag is satisfied; resume.
                let st = record.state();
                let theirs = st.import.sha256;
                let h = record.header();
                if theirs == [0; 32] {
                    bail!(
                        "{}: refusing --init-from {} (sha256 {}): the log already holds record {} (epoch {}) \
                         of a run that was not imported from a file; use an empty --data-dir for a warm start",
                        config.data_dir.display(),
                        path.display(),
                        crate::tools::sha256_hex(&file.sha256),
                        h.sequence,
                        h.epoch
                    );
                }
                if theirs != file.sha256 {
                    bail!(
                        "{}: refusing --init-from {}: its sha256 is {}, but the run in this log was imported \
                         from {} with sha256 {} (record {}, epoch {}); pass that file (or no --init-from) to \
                         resume, or use an empty --data-dir to start another run",
                        config.data_dir.display(),
                        path.display(),
                        crate::tools::sha256_hex(&file.sha256),
                        st.import.source,
                        crate::tools::sha256_hex(&theirs),
                        h.sequence,
                        h.epoch
                    );
                }
                info!(file = %path.display(), sha256 = %crate::tools::sha256_hex(&theirs), "--init-from was already imported into this log; resuming from the log");
            }
            let record_rows = record.state().data.dataset_len.to_native();
            let (train_rows, val_rows) = trainer.split_sizes();
            if config.validation_fraction.is_none()
                && val_rows > 0
                && record_rows == (train_rows + val_rows) as u64
            {
                // Written without a validation split (before validation
                // existed, or with validation_fraction = 0): resume it so.
                if config.checkpoint.keep_best > 0 {
                    bail!(
                        "{}: checkpoint.keep_best needs validation, but this log was written \
                         without a validation split (all {record_rows} examples train); \
                         set keep_best = 0 to resume it, or start a new log",
                        config.data_dir.display()
                    );
                }
                info!(
                    examples = record_rows,
                    "this log was written without a validation split; it resumes without one \
                     (validation_fraction applies to new logs)"
                );
                let mut cfg = config.train_config();
                cfg.validation_fraction = 0.0;
                *trainer = Trainer::new(&cfg)
                    .with_context(|| "building the model and dataset from the configuration")?;
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
            if let (Some(path), Some(file)) = (&args.init_from, import) {
                import_into(trainer, path, file)?;
                // Record 0: the imported state is durable before the first
                // step, so a crash from now on resumes from it, with or
                // without the flag, instead of starting from random weights.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                trainer.set_wall_clock(now, 0);
                let d = log.append(trainer.state()).with_context(|| {
                    format!(
                        "{}: writing the imported state as the first record",
                        config.data_dir.display()
                    )
                })?;
                info!(seq = d.header.sequence, epoch = 0, step = 0, reason = "import", segment = %d.path.display(), "checkpoint durable");
                durable = Some((d.header.sequence, 0));
            } else {
                info!(dir = %config.data_dir.display(), "no checkpoint found: fresh run");
            }
        }
    }
    Ok(durable)
}

/// The main thread's loop: signals, watchdog, shutdown.
#[allow(clippy::too_many_arguments)] // each is a distinct piece of the run
async fn supervise(
    mut signals: signal_hook_tokio::Signals,
    control: Arc<Control>,
    log: Arc<Mutex<Log>>,
    mut handles: pipeline::Handles,
    notify: Notify,
    config: Config,
    args: RunArgs,
    cleanup: Cleanup,
    replication: Option<Arc<replication::Replication>>,
) -> anyhow::Result<i32> {
    let watchdog = sd_notify::watchdog_interval_from_env();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut last_heartbeat = u64::MAX;
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut running = config;
    let mut replication = replication;
    loop {
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            done = &mut handles.done => {
                let outcome = done.unwrap_or(Outcome::Failed("the training thread vanished".into()));
                let failed = matches!(outcome, Outcome::Failed(_) | Outcome::Diverged(_));
                if failed && cleanup.empty_at_start && control.last_durable_seq.load(Ordering::SeqCst) == 0 {
                    // Nothing was ever written: leave no directory holding
                    // only LOCK and an empty segment behind.
                    let _ = control.wait_idle();
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = std::fs::remove_file(Config::running_path(log.dir()));
                    let _ = log.discard_if_empty(cleanup.remove_dir);
                }
                if let (Outcome::Stopped { seq } | Outcome::Completed { seq }, Some(r)) = (&outcome, replication.take()) {
                    // The local final checkpoint is durable; now the remote
                    // copy, within what is left of the grace period.
                    let until = deadline.map_or_else(|| Instant::now() + grace, |d| d.into_std());
                    notify.send(&format!("STATUS=uploading the final checkpoint (seq {seq})"));
                    let seq = *seq;
                    let (tx, mut rx) = tokio::sync::oneshot::channel();
                    std::thread::spawn(move || {
                        let _ = tx.send(r.finish(seq, until));
                    });
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            sig = signals.next() => {
                                if let Some(sig @ (SIGTERM | SIGINT)) = sig {
                                    error!(signal = sig, "second stop signal during the final upload: exiting at once; the final checkpoint is durable locally");
                                    std::process::exit(128 + sig);
                                }
                            }
                        }
                    }
                }
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
                        control.request_stop(|| {
                            notify.send("STOPPING=1\nSTATUS=stopping: writing the final checkpoint");
                        });
                        notify.send(&format!("EXTEND_TIMEOUT_USEC={}", grace.as_micros()));
                        deadline = Some(tokio::time::Instant::now() + grace);
                    }
                    SIGHUP => {
                        reload(&args, &mut running, &control, &log, &notify);
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
        Outcome::Diverged(reason) => {
            notify.send(&format!("STATUS=diverged: {reason}"));
            error!(%reason, "training stopped: on_nonfinite = \"stop\"");
            Ok(EXIT_DIVERGED)
        }
        Outcome::Failed(reason) => {
            notify.send(&format!("STATUS=failed: {reason}"));
            error!(%reason, "training stopped on an error");
            Ok(1)
        }
    }
}

/// SIGHUP: re-reads the file (with the command line's overrides) and applies
/// what can change at run time: the `[checkpoint]` table. Keys that need a
/// restart are named in a WARN line and keep their running values.
fn reload(
    args: &RunArgs,
    running: &mut Config,
    control: &Control,
    log: &Mutex<Log>,
    notify: &Notify,
) {
    let Some(path) = args.config.as_deref() else {
        warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    notify.send("RELOADING=1");
    let result = load_config(args);
    notify.send("READY=1");
    let new = match result {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: configuration not reloaded, keeping the current settings");
            return;
        }
    };
    let restart_only = new.restart_only_changes(running);
    if !restart_only.is_empty() {
        warn!(
            file = %path.display(),
            keys = %restart_only.join(", "),
            "SIGHUP: changed keys take effect only after a restart; keeping the running values"
        );
    }
    let changes = new.checkpoint.changes_from(&running.checkpoint);
    if changes.is_empty() {
        info!(file = %path.display(), "SIGHUP: reloaded, no run-time setting changed (only [checkpoint] can change without a restart)");
    } else {
        info!(file = %path.display(), applied = %changes.join(", "), "SIGHUP: reloaded");
    }
    control.set_checkpoint_config(new.checkpoint);
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_options(new.log_options());
    running.checkpoint = new.checkpoint;
    write_running(running);
}
