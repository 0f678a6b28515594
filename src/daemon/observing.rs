//! The daemon's hooks into [`crate::observe`]: what the training and
//! persisting threads report, turned into metrics (and, with
//! `[tensorboard]`, event-file points). With neither table configured every
//! hook is a branch on `None`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Config;
use crate::observe::metrics::{CheckpointFigures, Metrics, RemoteFigures};
use crate::observe::tensorboard::{newest_log_headers, EventWriter, Point};
use crate::replicate::Progress;
use crate::wal::{Durable, RecordHeader};

/// The observers of one run.
#[derive(Default)]
pub(crate) struct Observers {
    pub metrics: Option<Arc<Metrics>>,
    /// The bound `/metrics` socket, until [`Observers::serve`] hands it to
    /// the runtime.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// The event file (persisting thread only, after start-up); `None`
    /// without `[tensorboard]` or after a write failed.
    tensorboard: Mutex<Option<EventWriter>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The uploader's progress as metrics show it.
pub(crate) fn remote_figures(p: &Progress) -> RemoteFigures {
    RemoteFigures {
        sequence: p.remote_seq,
        lag_records: p.lag_records(),
        lag_seconds: p.lag_seconds(),
        uploaded: p.uploaded,
        retries: p.failures,
        errors: p.failures + u64::from(p.stopped.is_some()),
    }
}

impl Observers {
    /// Sets up what the configuration asks for. The metrics port is bound
    /// here, before recovery, so that an address in use stops the start at
    /// once, naming `metrics.listen`.
    pub(crate) fn new(config: &Config) -> anyhow::Result<Observers> {
        let mut o = Observers::default();
        if let Some(m) = &config.metrics {
            let listener = crate::observe::server::bind(m.listen).with_context(|| {
                format!(
                    "`metrics.listen` = \"{}\": cannot listen there (another process on that port? \
                     choose another port, or remove [metrics])",
                    m.listen
                )
            })?;
            let dir = config.data_dir.clone();
            o.metrics = Some(Arc::new(Metrics::new(Box::new(move || {
                super::preflight::disk_available(&dir)
            }))));
            *lock(&o.listener) = Some(listener);
        }
        Ok(o)
    }

    /// Starts serving `/metrics` on the current tokio runtime.
    pub(crate) fn serve(&self) -> anyhow::Result<()> {
        let listener = lock(&self.listener).take();
        if let (Some(l), Some(m)) = (listener, &self.metrics) {
            let addr = l.local_addr().ok();
            crate::observe::server::serve(l, Arc::clone(m)).context("serving /metrics")?;
            if let Some(addr) = addr {
                info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
            }
        }
        Ok(())
    }

    /// At start, after recovery: the record training resumes from. With
    /// `[tensorboard]`, opens a new event file and writes the points of the
    /// durable records the event files lack (all of them the first time,
    /// the ones a crash left out after that).
    pub(crate) fn recovered(
        &self,
        config: &Config,
        record: Option<&RecordHeader>,
        epoch: u64,
        step: u64,
    ) -> anyhow::Result<()> {
        if let Some(m) = &self.metrics {
            m.recovered(record.map(|h| (h.sequence, h.unix_ns)), epoch, step);
        }
        let Some(tb) = &config.tensorboard else {
            return Ok(());
        };
        let mut w = EventWriter::open(&tb.dir).with_context(|| {
            format!(
                "`tensorboard.dir` = {}: cannot write event files there",
                tb.dir.display()
            )
        })?;
        if let (Some(last), Some(h)) = (w.last_step(), record) {
            if last > h.step {
                warn!(
                    dir = %tb.dir.display(),
                    tensorboard_step = last,
                    log_step = h.step,
                    "tensorboard: the event files go further than this log's newest record;                      points are written again only past step {last} (one tensorboard.dir per run)"
                );
            }
        }
        let mut backfilled = 0;
        if let Some(h) = record {
            let scan = crate::wal::LogReader::open(&config.data_dir)
                .and_then(|r| r.scan())
                .with_context(|| {
                    format!("{}: reading the record headers", config.data_dir.display())
                })?;
            let headers: Vec<RecordHeader> = newest_log_headers(&scan)
                .into_iter()
                .filter(|r| r.sequence <= h.sequence)
                .collect();
            backfilled = w
                .write_headers(&headers)
                .with_context(|| format!("{}: writing the event file", w.path().display()))?;
        }
        info!(
            file = %w.path().display(),
            from_log = backfilled,
            "tensorboard: writing event files"
        );
        *lock(&self.tensorboard) = Some(w);
        Ok(())
    }

    /// After every training step (training thread; atomics only).
    pub(crate) fn step(&self, epoch: u64, global_step: u64) {
        if let Some(m) = &self.metrics {
            m.step(epoch, global_step);
        }
    }

    /// At the end of every epoch (training thread; atomics only).
    pub(crate) fn epoch_done(&self, loss: Option<f64>, val_loss: Option<f32>, best: Option<f32>) {
        if let Some(m) = &self.metrics {
            m.epoch_done(loss, val_loss, best);
        }
    }

    /// A non-finite step was dropped or kept (`stop = false`), or ends the
    /// run (`stop = true`).
    pub(crate) fn nonfinite(&self, stop: bool) {
        if let Some(m) = &self.metrics {
            if stop {
                m.nonfinite_stop();
            } else {
                m.nonfinite_step();
            }
        }
    }

    /// A record became durable (persisting thread). `retained` is what the
    /// log holds after retention.
    pub(crate) fn durable(
        &self,
        d: &Durable,
        pause: Duration,
        retained: (u64, u64),
        remote: Option<&Progress>,
    ) {
        if let Some(m) = &self.metrics {
            m.durable(&CheckpointFigures {
                sequence: d.header.sequence,
                epoch: d.header.epoch,
                step: d.header.step,
                unix_ns: d.header.unix_ns,
                bytes: d.bytes,
                pause_seconds: pause.as_secs_f64(),
                persist_seconds: d.sync_time.as_secs_f64(),
            });
            m.retained(retained.0, retained.1);
            if let Some(p) = remote {
                m.remote(&remote_figures(p));
            }
        }
        let mut tb = lock(&self.tensorboard);
        if let Some(w) = tb.as_mut() {
            let mut p = Point::from_header(&d.header);
            p.scalars
                .push(("checkpoint/pause_seconds", pause.as_secs_f32()));
            p.scalars
                .push(("checkpoint/persist_seconds", d.sync_time.as_secs_f32()));
            if let Some(r) = remote {
                p.scalars
                    .push(("replication/lag_seconds", r.lag_seconds() as f32));
                p.scalars
                    .push(("replication/lag_records", r.lag_records() as f32));
            }
            if let Err(e) = w.write(&p) {
                // The curves are a view; training and the log go on.
                warn!(
                    file = %w.path().display(),
                    error = %e,
                    "tensorboard: cannot write the event file; no more points in this run \
                     (a restart writes the missing ones from the log)"
                );
                *tb = None;
            }
        }
    }
}

/// The `checkpoint durable` line when logging to the journal: INFO for
/// every checkpoint (routine ones are DEBUG on stderr), its text as stderr
/// would show it, and its figures as journal fields (`EPOCHWAL_SEQ`,
/// `EPOCHWAL_EPOCH`, `EPOCHWAL_STEP`, `EPOCHWAL_LOSS`, `EPOCHWAL_VAL_LOSS`,
/// `EPOCHWAL_BYTES`, `EPOCHWAL_PAUSE_SECONDS`, `EPOCHWAL_PERSIST_SECONDS`,
/// `EPOCHWAL_REASON`, `EPOCHWAL_SEGMENT`, and with `[replicate]`
/// `EPOCHWAL_REMOTE_SEQ`, `EPOCHWAL_REMOTE_LAG_RECORDS`,
/// `EPOCHWAL_REMOTE_LAG_SECONDS`).
pub(crate) fn journal_durable(
    d: &Durable,
    pause: Duration,
    reason: &str,
    remote: Option<&Progress>,
) {
    let ms = |t: Duration| (t.as_secs_f64() * 1e6).round() / 1e3;
    let segment = d
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let h = &d.header;
    let mut text = format!(
        "checkpoint durable seq={} epoch={} step={} bytes={} pause_ms={} persist_ms={} reason={reason:?}",
        h.sequence,
        h.epoch,
        h.step,
        d.bytes,
        ms(pause),
        ms(d.sync_time)
    );
    if let Some(v) = h.validation {
        text.push_str(&format!(" val_loss={}", f64::from(v.loss)));
    }
    text.push_str(&format!(" segment={segment}"));
    if let Some(p) = remote {
        text.push_str(&format!(
            " remote_seq={} remote_lag_records={} remote_lag_s={}",
            p.remote_seq,
            p.lag_records(),
            (p.lag_seconds() * 1e3).round() / 1e3
        ));
    }
    info!(
        target: crate::observe::journal::TARGET,
        seq = h.sequence,
        epoch = h.epoch,
        step = h.step,
        loss = h.loss,
        val_loss = h.validation.map(|v| f64::from(v.loss)),
        bytes = d.bytes,
        pause_seconds = pause.as_secs_f64(),
        persist_seconds = d.sync_time.as_secs_f64(),
        reason,
        segment = %segment,
        remote_seq = remote.map(|p| p.remote_seq),
        remote_lag_records = remote.map(|p| p.lag_records()),
        remote_lag_seconds = remote.map(|p| p.lag_seconds()),
        "{text}"
    );
}
