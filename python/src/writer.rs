//! The writer: one `wal::Log` per directory (its lock, recovery and
//! retention are the daemon's), records of the general kind, and a persist
//! thread per record so that `save` returns after the copy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use epochwal::config::ReplicateConfig;
use epochwal::daemon::sd_notify::Notifier;
use epochwal::replicate::{
    restore_into, PointerAtStart, Progress, Remote, RestoreError, Restored, Uploader,
    UploaderOptions,
};
use epochwal::state::{dtype_size, General, NamedTensor, TensorBytes, TrainState};
use epochwal::wal::{Durable, Log, LogOptions, Retention, ValidationFigures};

use crate::error;
use crate::reader::RecordView;

/// The bytes of a tensor, held through the buffer protocol: the exporter
/// (a numpy view of a torch tensor's memory) cannot resize or free them
/// while the `PyBuffer` lives.
struct Pinned(PyBuffer<u8>);

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        if self.0.len_bytes() == 0 {
            return &[];
        }
        // SAFETY: the buffer was checked C-contiguous when it was taken, so
        // `len_bytes` bytes from `buf_ptr` are its memory; holding the
        // `PyBuffer` keeps the export (and so the memory) alive and
        // unresizable. The record is written while the caller is blocked
        // in `save`, so the loop does not change the tensor meanwhile.
        unsafe { std::slice::from_raw_parts(self.0.buf_ptr().cast::<u8>(), self.0.len_bytes()) }
    }
}

/// Result of one persist, as the persist thread hands it back.
type PersistResult = Result<Durable, String>;

/// What the writer shares with its persist threads.
struct Shared {
    log: Mutex<Log>,
    notifier: Option<Notifier>,
    uploader: Option<Uploader>,
}

struct Open {
    dir: PathBuf,
    shared: Arc<Shared>,
    in_flight: Option<JoinHandle<PersistResult>>,
    last_durable: Option<u64>,
    min_between: Duration,
    last_saved: Option<Instant>,
    recovered: Option<RecordView>,
    job: (String, u32, u32),
    url: Option<String>,
}

/// The writer of one log directory. See `epochwal.Checkpointer` for the
/// API meant for training loops; this class takes tensors already
/// flattened to `(name, dtype, shape, bytes)`.
#[pyclass(module = "epochwal._native", frozen)]
pub struct Writer {
    open: Mutex<Option<Open>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Creates `dir` (mode 0700) when it does not exist.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: creating the log directory: {e}", dir.display()))
}

/// Restores the newest remote record into `dir` when the directory holds
/// none (as `epochwal run` does), then starts the uploader.
fn start_replication(
    cfg: &ReplicateConfig,
    dir: &Path,
    options: LogOptions,
) -> Result<(Remote, PointerAtStart, Option<String>), String> {
    let remote = Remote::open(&cfg.url, cfg.allow_http).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the replication runtime: {e}"))?;
    let probe =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), remote.probe()).await });
    let pointer = match probe {
        Ok(Ok(p)) => p,
        Ok(Err(e)) if cfg.required => {
            return Err(format!(
                "replication: {e}; nothing was started because required = true (the default): \
                 fix the remote, or pass required=False to train locally while uploads retry"
            ))
        }
        Err(_) if cfg.required => {
            return Err(format!(
            "replication: {}: no answer within 60 s; nothing was started because required = true",
            cfg.url
        ))
        }
        Ok(Err(e)) => {
            return Ok((
                remote,
                PointerAtStart::Unread,
                Some(format!("remote unavailable at start: {e}")),
            ))
        }
        Err(_) => {
            return Ok((
                remote,
                PointerAtStart::Unread,
                Some(format!("{}: no answer within 60 s", cfg.url)),
            ))
        }
    };
    let restored = rt.block_on(restore_into(&remote, pointer.clone(), dir, options));
    let note = match restored {
        Ok(Restored::Record { header, url, .. }) => Some(format!(
            "restored seq {} (epoch {}) from {url}",
            header.sequence, header.epoch
        )),
        Ok(_) => None,
        Err(e @ (RestoreError::OtherLog { .. } | RestoreError::WouldLoseUnreadable { .. })) => {
            return Err(format!("replication: {e}"))
        }
        Err(RestoreError::Local(e)) => return Err(e.to_string()),
        Err(RestoreError::Remote(e)) if cfg.required => {
            return Err(format!(
                "replication: restoring from the remote failed: {e}"
            ))
        }
        Err(RestoreError::Remote(e)) => Some(format!("restore failed, starting locally: {e}")),
    };
    let pointer = match pointer {
        epochwal::replicate::Head::Valid(p) => PointerAtStart::Read(Some(p)),
        epochwal::replicate::Head::Missing => PointerAtStart::Read(None),
        epochwal::replicate::Head::Damaged { version, .. } => PointerAtStart::Damaged(version),
    };
    Ok((remote, pointer, note))
}

impl Writer {
    /// Locks the writer's state without holding the GIL while waiting
    /// (another thread may hold the state, waiting for a persist with the
    /// GIL released, and need the GIL back to finish).
    fn state<'a>(&'a self, py: Python<'_>) -> MutexGuard<'a, Option<Open>> {
        loop {
            match self.open.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    py.allow_threads(|| std::thread::sleep(Duration::from_millis(1)))
                }
            }
        }
    }

    fn with_open<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Open) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut guard = self.state(py);
        match guard.as_mut() {
            Some(open) => f(open),
            None => Err(error(
                "the checkpointer is closed; open a new one to save again",
            )),
        }
    }
}

/// Waits for the record in flight, if any, with the GIL released. A failed
/// persist is returned as an error every time it is asked for: the log
/// refuses further appends (it is poisoned), so nothing is lost silently.
fn join(py: Python<'_>, open: &mut Open) -> PyResult<Option<u64>> {
    if let Some(handle) = open.in_flight.take() {
        let result = py.allow_threads(|| handle.join());
        match result {
            Ok(Ok(d)) => open.last_durable = Some(d.header.sequence),
            Ok(Err(e)) => return Err(error(e)),
            Err(_) => return Err(error("the persist thread panicked")),
        }
    }
    Ok(open.last_durable)
}

/// Everything `save` checks before touching the log, so that a record it
/// writes always passes recovery's consistency rules (FORMAT.md §5.4).
fn check_tensor(name: &str, dtype: &str, shape: &[u64], buf: &PyBuffer<u8>) -> Result<(), String> {
    let size = dtype_size(dtype).ok_or_else(|| {
        format!("tensor {name}: dtype {dtype:?} cannot be stored (see epochwal._native.DTYPES)")
    })?;
    if !buf.is_c_contiguous() {
        return Err(format!("tensor {name}: the buffer is not contiguous"));
    }
    let want = shape
        .iter()
        .try_fold(size as u64, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| format!("tensor {name}: shape {shape:?} is too large"))?;
    if want != buf.len_bytes() as u64 {
        return Err(format!(
            "tensor {name}: shape {shape:?} of {dtype} needs {want} bytes, the buffer has {}",
            buf.len_bytes()
        ));
    }
    Ok(())
}

#[pymethods]
impl Writer {
    /// Opens `dir` for writing (created with mode 0700): takes the lock
    /// (a second writer gets an error naming the holder's pid), recovers
    /// the newest intact record, and with `replicate` (the JSON of a
    /// `[replicate]` table) first restores from the remote when the
    /// directory holds no record. A rank of a job (`world_size` > 0)
    /// replicates to `replicate`'s URL + `/rank-<rank>` and advances the
    /// job's set pointer; `job_starts` (JSON: the `starts` of the rank's
    /// next records, FORMAT.md §8.2) tells it the branches the job left.
    #[new]
    #[pyo3(signature = (dir, *, segment_bytes=0, keep_records=10, keep_bytes=0, keep_every_epochs=0, keep_best=0, min_seconds_between=0.0, replicate=None, job_id=String::new(), world_size=0, rank=0, job_starts=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dir: PathBuf,
        segment_bytes: u64,
        keep_records: u64,
        keep_bytes: u64,
        keep_every_epochs: u64,
        keep_best: u64,
        min_seconds_between: f64,
        replicate: Option<String>,
        job_id: String,
        world_size: u32,
        rank: u32,
        job_starts: Option<String>,
    ) -> PyResult<Writer> {
        if !(min_seconds_between.is_finite() && min_seconds_between >= 0.0) {
            return Err(error(format!(
                "min_seconds_between must be a number >= 0, not {min_seconds_between}"
            )));
        }
        if (world_size == 0 && rank != 0) || (world_size != 0 && rank >= world_size) {
            return Err(error(format!(
                "rank {rank} must be below world_size {world_size}"
            )));
        }
        let mut cfg: Option<ReplicateConfig> = match &replicate {
            None => None,
            Some(json) => {
                Some(serde_json::from_str(json).map_err(|e| error(format!("replicate: {e}")))?)
            }
        };
        // A rank of a job: `replicate`'s URL is the job's (FORMAT.md §7.10).
        let job_url = match cfg.as_mut() {
            Some(c) if world_size > 0 => Some(crate::set::as_rank(c, rank)),
            _ => None,
        };
        let options = LogOptions {
            segment_bytes,
            retention: Retention {
                keep_records,
                keep_bytes,
                keep_every_epochs,
                keep_best,
            },
        };
        let opened = py.allow_threads(|| -> Result<_, String> {
            create_private_dir(&dir)?;
            let notifier = Notifier::from_env()
                .map_err(|e| format!("NOTIFY_SOCKET is set but cannot be used: {e}"))?;
            let mut replication = None;
            if let (Some(cfg), Some(job)) = (&cfg, &job_url) {
                crate::set::restore_if_empty(job, cfg.allow_http, rank, world_size, &dir, options)?;
            }
            if let Some(cfg) = &cfg {
                // A restore writes through `Log::open`, so a directory that
                // another writer holds is refused there, by its lock.
                replication = Some(start_replication(cfg, &dir, options)?);
            }
            let (log, recovery) = Log::open(&dir, options).map_err(|e| e.to_string())?;
            let recovered = recovery.record;
            let uploader = match (replication, &cfg) {
                (Some((remote, pointer, _note)), Some(cfg)) => {
                    let uo = UploaderOptions {
                        part_bytes: cfg.part_bytes,
                        parallel_parts: 4,
                        retry_max: Duration::from_secs(cfg.retry_max_seconds),
                        keep_records: cfg.keep_records.unwrap_or(keep_records),
                        keep_every_epochs: cfg.keep_every_epochs.unwrap_or(keep_every_epochs),
                        keep_best: cfg.keep_best.unwrap_or(keep_best),
                    };
                    let dir2 = dir.clone();
                    let url = cfg.url.clone();
                    let on_progress = Box::new(move |p: &Progress| {
                        epochwal::replicate::write_remote_file(&dir2, &url, p);
                    });
                    let journal = Some(dir.join(epochwal::wal::format::UPLOAD_FILE));
                    let member = match &job_url {
                        Some(job) => Some(crate::set::member(
                            job,
                            cfg.allow_http,
                            rank,
                            world_size,
                            &job_id,
                            job_starts.as_deref(),
                        )?),
                        None => None,
                    };
                    let up =
                        Uploader::start_member(remote, pointer, uo, member, on_progress, journal)
                            .map_err(|e| format!("starting the uploader: {e}"))?;
                    if let Some(r) = &recovered {
                        up.offer(*r.header(), r.path().to_path_buf());
                    }
                    Some(up)
                }
                _ => None,
            };
            Ok((log, recovered, notifier, uploader))
        });
        let (log, recovered, notifier, uploader) = opened.map_err(error)?;
        Ok(Writer {
            open: Mutex::new(Some(Open {
                dir,
                shared: Arc::new(Shared {
                    log: Mutex::new(log),
                    notifier,
                    uploader,
                }),
                in_flight: None,
                last_durable: None,
                min_between: Duration::from_secs_f64(min_seconds_between),
                last_saved: None,
                recovered: recovered.map(RecordView::new),
                job: (job_id, world_size, rank),
                url: cfg.map(|c| c.url),
            })),
        })
    }

    /// The log directory.
    #[getter]
    fn dir(&self, py: Python<'_>) -> PyResult<PathBuf> {
        self.with_open(py, |o| Ok(o.dir.clone()))
    }

    /// The replication URL, if any.
    #[getter]
    fn url(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with_open(py, |o| Ok(o.url.clone()))
    }

    /// Whether the writer is closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.state(py).is_none()
    }

    /// The record recovery chose when the log was opened (None: the log
    /// was empty, after a restore from the remote when replicating).
    fn recovered(&self, py: Python<'_>) -> PyResult<Option<RecordView>> {
        self.with_open(py, |o| Ok(o.recovered.clone()))
    }

    /// Whether a save now would be written: False while
    /// `min_seconds_between` has not passed since the last one.
    fn due(&self, py: Python<'_>) -> PyResult<bool> {
        self.with_open(py, |o| {
            Ok(o.last_saved.is_none_or(|t| t.elapsed() >= o.min_between))
        })
    }

    /// Writes one general record. `tensors` are `(name, dtype, shape,
    /// buffer)` with C-contiguous byte buffers; `meta` is a JSON object.
    /// Returns after the bytes are copied into the log (the GIL released
    /// during the copy) with the record's sequence number, and persists on
    /// a Rust thread; None when `min_seconds_between` holds the save back
    /// (unless `force`). Raises the failure of the previous persist.
    #[pyo3(signature = (tensors, meta, *, epoch, step, step_in_epoch=0, loss=None, val_loss=None, train_time_ms=0, force=false))]
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        py: Python<'_>,
        tensors: Vec<(String, String, Vec<u64>, Bound<'_, PyAny>)>,
        meta: String,
        epoch: u64,
        step: u64,
        step_in_epoch: u64,
        loss: Option<f64>,
        val_loss: Option<f64>,
        train_time_ms: u64,
        force: bool,
    ) -> PyResult<Option<u64>> {
        self.with_open(py, |open| {
            join(py, open)?;
            if let Some(last) = open.last_saved {
                if !force && last.elapsed() < open.min_between {
                    return Ok(None);
                }
            }
            match serde_json::from_str::<serde_json::Value>(&meta) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => return Err(error("meta must be the text of a JSON object")),
            }
            let mut names = HashSet::with_capacity(tensors.len());
            let mut named = Vec::with_capacity(tensors.len());
            for (name, dtype, shape, obj) in tensors {
                let buf = PyBuffer::<u8>::get(&obj).map_err(|e| {
                    error(format!(
                        "tensor {name}: not a buffer of bytes ({e}); pass a uint8 view"
                    ))
                })?;
                check_tensor(&name, &dtype, &shape, &buf).map_err(error)?;
                if !names.insert(name.clone()) {
                    return Err(error(format!("tensor name {name} appears twice")));
                }
                named.push(NamedTensor {
                    name,
                    dtype,
                    shape,
                    data: TensorBytes::shared(Arc::new(Pinned(buf))),
                });
            }
            let (job_id, world_size, rank) = open.job.clone();
            let state = TrainState {
                epoch,
                global_step: step,
                step_in_epoch,
                last_loss: loss.map_or(f32::NAN, |l| l as f32),
                wall_clock_unix_ns: now_unix_ns(),
                train_time_ms,
                general: General {
                    tensors: named,
                    meta,
                    job_id,
                    world_size,
                    rank,
                },
                ..TrainState::default()
            };
            let validation = val_loss.map(|l| ValidationFigures {
                loss: l as f32,
                accuracy: None,
            });
            let shared = Arc::clone(&open.shared);
            let pending =
                py.allow_threads(|| lock(&shared.log).begin_append_with(&state, validation));
            // The tensors' buffers are released here, with the GIL held.
            drop(state);
            let pending = pending.map_err(|e| error(e.to_string()))?;
            let seq = pending.header().sequence;
            open.last_saved = Some(Instant::now());
            let handle = std::thread::Builder::new()
                .name("epochwal-persist".into())
                .spawn(move || persist(&shared, pending))
                .map_err(|e| error(format!("starting the persist thread: {e}")))?;
            open.in_flight = Some(handle);
            Ok(Some(seq))
        })
    }

    /// Blocks (GIL released) until the last record is durable; returns its
    /// sequence number (None before the first save). Raises if it failed.
    fn wait(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.with_open(py, |open| join(py, open))
    }

    /// Sends `message` to systemd's notify socket (`READY=1`,
    /// `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`); False without
    /// `NOTIFY_SOCKET`.
    fn notify(&self, py: Python<'_>, message: &str) -> PyResult<bool> {
        self.with_open(py, |open| match &open.shared.notifier {
            Some(n) => n
                .notify(message)
                .map(|_| true)
                .map_err(|e| error(format!("sd_notify: {e}"))),
            None => Ok(false),
        })
    }

    /// Sequence number of the newest record the remote holds (None without
    /// replication).
    fn remote_seq(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.with_open(py, |open| {
            Ok(open
                .shared
                .uploader
                .as_ref()
                .map(|u| u.progress().remote_seq))
        })
    }

    /// Waits for the last record to be durable, then (with replication)
    /// up to `upload_timeout` seconds for the remote to hold it, and
    /// releases the lock. Raises a failed persist; closing twice is
    /// allowed.
    #[pyo3(signature = (upload_timeout=30.0))]
    fn close(&self, py: Python<'_>, upload_timeout: f64) -> PyResult<Option<u64>> {
        let mut guard = self.state(py);
        let Some(mut open) = guard.take() else {
            return Ok(None);
        };
        let result = join(py, &mut open);
        if let (Ok(Some(seq)), Some(up)) = (&result, &open.shared.uploader) {
            let deadline = Instant::now() + Duration::from_secs_f64(upload_timeout.max(0.0));
            let seq = *seq;
            py.allow_threads(|| up.wait_for(seq, deadline));
        }
        // Dropping the log releases the lock.
        py.allow_threads(move || drop(open));
        result
    }
}

/// The persist thread: makes the record durable, applies retention,
/// prepares the next append, and tells systemd and the uploader.
fn persist(shared: &Shared, pending: epochwal::wal::PendingAppend) -> PersistResult {
    let durable = pending.persist();
    let finished = {
        let mut log = lock(&shared.log);
        let finished = log.finish(&durable);
        if durable.is_ok() {
            // A failure here (a full disk at rotation) is met again, and
            // reported, by the next append.
            let _ = log.prepare_next_append();
        }
        finished
    };
    let durable = durable.map_err(|e| e.to_string())?;
    finished.map_err(|e| format!("record {} is durable, but {e}", durable.header.sequence))?;
    if let Some(n) = &shared.notifier {
        let h = &durable.header;
        let loss = if h.loss.is_nan() {
            String::from("-")
        } else {
            format!("{:.6}", h.loss)
        };
        let _ = n.status(&format!(
            "epoch {} step {} seq {} durable, loss {loss}",
            h.epoch, h.step, h.sequence
        ));
    }
    if let Some(up) = &shared.uploader {
        up.offer(durable.header, durable.path.clone());
    }
    Ok(durable)
}
