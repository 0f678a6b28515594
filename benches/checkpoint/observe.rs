//! The observers of `[metrics]` and `[tensorboard]` for the training
//! figure: the same calls the daemon makes (the epoch and step after every
//! step, the losses at every epoch end, the histograms and an event-file
//! point after every durable record), plus a scraper that encodes the
//! metrics ten times a second, far more often than a Prometheus would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use epochwal::observe::metrics::{CheckpointFigures, Metrics};
use epochwal::observe::tensorboard::{EventWriter, Point};
use epochwal::wal::Durable;

pub struct Observed {
    metrics: Arc<Metrics>,
    events: Mutex<EventWriter>,
    stop: Arc<AtomicBool>,
    scraper: Mutex<Option<JoinHandle<u64>>>,
}

impl Observed {
    /// Starts the scraper; event files go to `dir`.
    pub fn start(dir: &Path) -> Arc<Observed> {
        let metrics = Arc::new(Metrics::new(Box::new(|| None)));
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = {
            let metrics = Arc::clone(&metrics);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut bytes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    bytes += metrics.encode().len() as u64;
                    std::thread::sleep(Duration::from_millis(100));
                }
                bytes
            })
        };
        Arc::new(Observed {
            metrics,
            events: Mutex::new(EventWriter::open(dir).expect("event file")),
            stop,
            scraper: Mutex::new(Some(scraper)),
        })
    }

    /// After every step (training thread).
    pub fn step(&self, epoch: u64, global_step: u64) {
        self.metrics.step(epoch, global_step);
    }

    /// At every epoch end (training thread).
    pub fn epoch_done(&self, loss: f32) {
        self.metrics
            .epoch_done(Some(f64::from(loss)), Some(loss), Some(loss));
    }

    /// After every durable record (persisting thread).
    pub fn durable(&self, d: &Durable, pause: Duration) {
        self.metrics.durable(&CheckpointFigures {
            sequence: d.header.sequence,
            epoch: d.header.epoch,
            step: d.header.step,
            unix_ns: d.header.unix_ns,
            bytes: d.bytes,
            pause_seconds: pause.as_secs_f64(),
            persist_seconds: d.sync_time.as_secs_f64(),
        });
        self.metrics.retained(2, d.bytes * 2);
        let mut p = Point::from_header(&d.header);
        p.scalars
            .push(("checkpoint/persist_seconds", d.sync_time.as_secs_f32()));
        p.scalars
            .push(("checkpoint/pause_seconds", pause.as_secs_f32()));
        self.events
            .lock()
            .unwrap()
            .write(&p)
            .expect("event file write");
    }

    /// Stops the scraper.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.scraper.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}
