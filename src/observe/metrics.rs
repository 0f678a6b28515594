//! The daemon's Prometheus metrics (`prometheus-client`), all named
//! `epochwal_*` with the unit in the name (`_seconds`, `_bytes`) and
//! counters ending in `_total`. README.md lists them with example queries.
//!
//! Gauges and counters are atomics: setting one costs a store, so the
//! training thread may set the epoch and step after every step. The two
//! histograms are observed by the persisting thread only. A few gauges are
//! computed when scraped ([`Metrics::encode`]): the age of the newest
//! durable record and the free space on the log's disk.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A gauge holding an `f64`.
type FloatGauge = Gauge<f64, AtomicU64>;
/// A gauge holding an `i64`.
type IntGauge = Gauge<i64, AtomicI64>;

/// Free space on the log's disk, in bytes, computed at each scrape.
pub type FreeBytes = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// What a scrape shows of the remote copy (`[replicate]`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteFigures {
    /// Sequence the remote pointer names (0 = none yet).
    pub sequence: u64,
    /// Records the remote is behind the local log.
    pub lag_records: u64,
    /// Seconds of training the remote copy lacks.
    pub lag_seconds: f64,
    /// Records uploaded by this process.
    pub uploaded: u64,
    /// Failed upload attempts, each retried.
    pub retries: u64,
    /// Failed uploads, retried or not (replication stopped for good).
    pub errors: u64,
}

/// One durable checkpoint, as the persisting thread reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointFigures {
    pub sequence: u64,
    pub epoch: u64,
    /// Global step of the record.
    pub step: u64,
    /// Snapshot time of the record, ns since the Unix epoch.
    pub unix_ns: u64,
    /// Bytes the record takes in its segment (header page and payload).
    pub bytes: u64,
    /// How long training paused for it.
    pub pause_seconds: f64,
    /// How long making it durable took.
    pub persist_seconds: f64,
}

/// Every metric of one daemon, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    epoch: IntGauge,
    global_step: IntGauge,
    train_loss: FloatGauge,
    validation_loss: FloatGauge,
    best_validation_loss: FloatGauge,
    checkpoints: Counter,
    written_bytes: Counter,
    pause: Histogram,
    persist: Histogram,
    durable_sequence: IntGauge,
    durable_epoch: IntGauge,
    durable_step: IntGauge,
    durable_timestamp: FloatGauge,
    durable_age: FloatGauge,
    retained_records: IntGauge,
    retained_bytes: IntGauge,
    disk_free: IntGauge,
    remote_sequence: IntGauge,
    remote_lag_records: IntGauge,
    remote_lag_seconds: FloatGauge,
    uploads: Counter,
    upload_retries: Counter,
    upload_errors: Counter,
    nonfinite_steps: Counter,
    nonfinite_stops: Counter,
    recovered_sequence: IntGauge,
    start_time: FloatGauge,
    /// Snapshot time of the newest durable record (0 = none yet).
    durable_unix_ns: AtomicU64,
    free_bytes: FreeBytes,
}

fn unix_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Registers every metric. `free_bytes` tells the free space of the
    /// log's disk (called at each scrape).
    pub fn new(free_bytes: FreeBytes) -> Metrics {
        let mut registry = Registry::with_prefix("epochwal");
        // Pauses and persists from 0.5 ms to about a minute.
        let buckets = || exponential_buckets(0.0005, 2.0, 18);
        let m = Metrics {
            registry: Registry::default(),
            epoch: IntGauge::default(),
            global_step: IntGauge::default(),
            train_loss: FloatGauge::default(),
            validation_loss: FloatGauge::default(),
            best_validation_loss: FloatGauge::default(),
            checkpoints: Counter::default(),
            written_bytes: Counter::default(),
            pause: Histogram::new(buckets()),
            persist: Histogram::new(buckets()),
            durable_sequence: IntGauge::default(),
            durable_epoch: IntGauge::default(),
            durable_step: IntGauge::default(),
            durable_timestamp: FloatGauge::default(),
            durable_age: FloatGauge::default(),
            retained_records: IntGauge::default(),
            retained_bytes: IntGauge::default(),
            disk_free: IntGauge::default(),
            remote_sequence: IntGauge::default(),
            remote_lag_records: IntGauge::default(),
            remote_lag_seconds: FloatGauge::default(),
            uploads: Counter::default(),
            upload_retries: Counter::default(),
            upload_errors: Counter::default(),
            nonfinite_steps: Counter::default(),
            nonfinite_stops: Counter::default(),
            recovered_sequence: IntGauge::default(),
            start_time: FloatGauge::default(),
            durable_unix_ns: AtomicU64::new(0),
            free_bytes,
        };
        let r = &mut registry;
        r.register("epoch", "Epochs completed", m.epoch.clone());
        r.register(
            "global_step",
            "Optimizer steps taken",
            m.global_step.clone(),
        );
        r.register(
            "train_loss",
            "Mean training loss of the last completed epoch",
            m.train_loss.clone(),
        );
        r.register(
            "validation_loss",
            "Validation loss at the end of the last completed epoch",
            m.validation_loss.clone(),
        );
        r.register(
            "validation_loss_best",
            "Lowest validation loss of this run so far",
            m.best_validation_loss.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints made durable by this process",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoint_written_bytes",
            "Bytes of durable checkpoint records written by this process (header page and payload)",
            m.written_bytes.clone(),
        );
        r.register(
            "checkpoint_pause_seconds",
            "How long training paused for a checkpoint: handing a snapshot of the state to the log, any wait for the previous checkpoint, and any wait of the next step for the snapshot's copy",
            m.pause.clone(),
        );
        r.register(
            "checkpoint_persist_seconds",
            "How long making a checkpoint durable took (msync of payload and header)",
            m.persist.clone(),
        );
        r.register(
            "last_durable_sequence",
            "Sequence number of the newest durable record (0 = none)",
            m.durable_sequence.clone(),
        );
        r.register(
            "last_durable_epoch",
            "Epochs completed in the newest durable record",
            m.durable_epoch.clone(),
        );
        r.register(
            "last_durable_step",
            "Global step of the newest durable record",
            m.durable_step.clone(),
        );
        r.register(
            "last_durable_timestamp_seconds",
            "Snapshot time of the newest durable record, seconds since the Unix epoch (0 = none)",
            m.durable_timestamp.clone(),
        );
        r.register(
            "last_durable_age_seconds",
            "Seconds since the snapshot time of the newest durable record, at the scrape (0 = none)",
            m.durable_age.clone(),
        );
        r.register(
            "retained_records",
            "Records in the log directory after retention",
            m.retained_records.clone(),
        );
        r.register(
            "retained_bytes",
            "Bytes of the segment files in the log directory after retention",
            m.retained_bytes.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free space on the log's file system available to the daemon, at the scrape",
            m.disk_free.clone(),
        );
        r.register(
            "remote_sequence",
            "Sequence number the remote pointer names ([replicate]; 0 = none)",
            m.remote_sequence.clone(),
        );
        r.register(
            "remote_lag_records",
            "Durable records the remote copy does not hold yet",
            m.remote_lag_records.clone(),
        );
        r.register(
            "remote_lag_seconds",
            "Seconds of training the remote copy lacks (snapshot time of the newest local record minus the remote's)",
            m.remote_lag_seconds.clone(),
        );
        r.register(
            "uploads",
            "Records uploaded to the remote by this process",
            m.uploads.clone(),
        );
        r.register(
            "upload_retries",
            "Failed upload attempts that were retried",
            m.upload_retries.clone(),
        );
        r.register(
            "upload_errors",
            "Failed upload attempts (retried, or the one that stopped replication)",
            m.upload_errors.clone(),
        );
        r.register(
            "nonfinite_steps",
            "Steps whose loss or parameters were not finite and that were dropped or kept (on_nonfinite = skip or continue)",
            m.nonfinite_steps.clone(),
        );
        r.register(
            "nonfinite_stops",
            "Runs stopped because training diverged (on_nonfinite = stop); the process exits with code 3 right after",
            m.nonfinite_stops.clone(),
        );
        r.register(
            "recovered_sequence",
            "Sequence number of the record this process resumed from (0 = a fresh run); changes(epochwal_start_time_seconds[1h]) counts restarts",
            m.recovered_sequence.clone(),
        );
        r.register(
            "start_time_seconds",
            "When this process started, seconds since the Unix epoch",
            m.start_time.clone(),
        );
        m.start_time.set(unix_seconds(now_unix_ns()));
        Metrics { registry, ..m }
    }

    /// At start: the record resumed from, as (sequence, snapshot time in ns
    /// since the Unix epoch) (`None`: a fresh run), and the epoch and step
    /// training starts at.
    pub fn recovered(&self, record: Option<(u64, u64)>, epoch: u64, step: u64) {
        if let Some((sequence, unix_ns)) = record {
            self.recovered_sequence.set(as_i64(sequence));
            self.durable_sequence.set(as_i64(sequence));
            self.durable_epoch.set(as_i64(epoch));
            self.durable_step.set(as_i64(step));
            self.durable_timestamp.set(unix_seconds(unix_ns));
            self.durable_unix_ns.store(unix_ns, Ordering::Relaxed);
        }
        self.epoch.set(as_i64(epoch));
        self.global_step.set(as_i64(step));
    }

    /// After every step (training thread: two atomic stores).
    pub fn step(&self, epoch: u64, global_step: u64) {
        self.epoch.set(as_i64(epoch));
        self.global_step.set(as_i64(global_step));
    }

    /// At the end of every epoch (training thread).
    pub fn epoch_done(&self, train_loss: Option<f64>, validation: Option<f32>, best: Option<f32>) {
        if let Some(l) = train_loss {
            self.train_loss.set(l);
        }
        if let Some(v) = validation {
            self.validation_loss.set(f64::from(v));
        }
        if let Some(b) = best {
            self.best_validation_loss.set(f64::from(b));
        }
    }

    /// A step whose figures were not finite was dropped or kept.
    pub fn nonfinite_step(&self) {
        self.nonfinite_steps.inc();
    }

    /// Training diverged and the run stops.
    pub fn nonfinite_stop(&self) {
        self.nonfinite_stops.inc();
    }

    /// A record became durable (persisting thread).
    pub fn durable(&self, c: &CheckpointFigures) {
        self.checkpoints.inc();
        self.written_bytes.inc_by(c.bytes);
        self.pause.observe(c.pause_seconds);
        self.persist.observe(c.persist_seconds);
        self.durable_sequence.set(as_i64(c.sequence));
        self.durable_epoch.set(as_i64(c.epoch));
        self.durable_step.set(as_i64(c.step));
        self.durable_timestamp.set(unix_seconds(c.unix_ns));
        self.durable_unix_ns.store(c.unix_ns, Ordering::Relaxed);
    }

    /// What retention left in the directory (persisting thread).
    pub fn retained(&self, records: u64, bytes: u64) {
        self.retained_records.set(as_i64(records));
        self.retained_bytes.set(as_i64(bytes));
    }

    /// The uploader's progress (persisting or uploading thread).
    pub fn remote(&self, r: &RemoteFigures) {
        self.remote_sequence.set(as_i64(r.sequence));
        self.remote_lag_records.set(as_i64(r.lag_records));
        self.remote_lag_seconds.set(r.lag_seconds);
        // The uploader counts from the start of the process: counters
        // follow its totals and never go down.
        self.uploads
            .inner()
            .fetch_max(r.uploaded, Ordering::Relaxed);
        self.upload_retries
            .inner()
            .fetch_max(r.retries, Ordering::Relaxed);
        self.upload_errors
            .inner()
            .fetch_max(r.errors, Ordering::Relaxed);
    }

    /// The Prometheus text format (version 0.0.4) of every metric, with the
    /// scrape-time gauges brought up to date first.
    pub fn encode(&self) -> String {
        let durable = self.durable_unix_ns.load(Ordering::Relaxed);
        self.durable_age.set(if durable == 0 {
            0.0
        } else {
            now_unix_ns().saturating_sub(durable) as f64 / 1e9
        });
        if let Some(free) = (self.free_bytes)() {
            self.disk_free.set(as_i64(free));
        }
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_values_show() {
        let m = Metrics::new(Box::new(|| Some(12345)));
        m.step(3, 96);
        m.epoch_done(Some(0.5), Some(0.25), Some(0.125));
        m.durable(&CheckpointFigures {
            sequence: 7,
            epoch: 3,
            step: 96,
            unix_ns: 1_700_000_000_000_000_000,
            bytes: 4096 * 3,
            pause_seconds: 0.002,
            persist_seconds: 0.010,
        });
        m.remote(&RemoteFigures {
            sequence: 6,
            lag_records: 1,
            lag_seconds: 1.5,
            uploaded: 6,
            retries: 2,
            errors: 2,
        });
        let text = m.encode();
        for line in [
            "epochwal_epoch 3",
            "epochwal_global_step 96",
            "epochwal_train_loss 0.5",
            "epochwal_validation_loss 0.25",
            "epochwal_validation_loss_best 0.125",
            "epochwal_checkpoints_total 1",
            "epochwal_checkpoint_written_bytes_total 12288",
            "epochwal_checkpoint_persist_seconds_count 1",
            "epochwal_checkpoint_pause_seconds_sum 0.002",
            "epochwal_last_durable_sequence 7",
            "epochwal_last_durable_epoch 3",
            "epochwal_disk_free_bytes 12345",
            "epochwal_remote_lag_records 1",
            "epochwal_upload_retries_total 2",
            "epochwal_nonfinite_steps_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line `{line}` in:\n{text}"
            );
        }
        assert!(text.contains("# TYPE epochwal_checkpoint_persist_seconds histogram"));
        // Counters follow the uploader's totals and never go back.
        m.remote(&RemoteFigures {
            retries: 1,
            ..Default::default()
        });
        assert!(m.encode().contains("epochwal_upload_retries_total 2\n"));
    }
}
