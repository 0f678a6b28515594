//! The background uploader: copies durable records to the remote, one at a
//! time, newest first.
//!
//! The daemon [`Uploader::offer`]s every record once it is durable; the offer
//! never blocks. The uploader thread takes the newest offer, reads the record
//! through the log's reader (checksum and rkyv validation included: nothing
//! unvalidated leaves the machine), uploads it, and only then moves the
//! pointer. When uploads fall behind, offers that were never started are
//! replaced by newer ones ("latest wins") and counted as skipped. Failures are
//! retried with exponential backoff, switching to a newer record if one
//! arrives meanwhile.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, info, warn};

use super::layout::{self, Pointer};
use super::remote::{Cause, Head, PointerState, Remote, RemoteError, Replacing};
use super::set::SetMember;
use crate::wal::format::best_first;
use crate::wal::{format, LogReader, RecordHeader};

/// How the uploader works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploaderOptions {
    /// Part size of multipart uploads (and the size above which they are used).
    pub part_bytes: u64,
    /// Parts in flight at once in a multipart upload.
    pub parallel_parts: usize,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// Remote retention: keep the newest N record objects (0 = all).
    pub keep_records: u64,
    /// Remote retention: also keep the newest record of every epoch
    /// divisible by N (0 = off).
    pub keep_every_epochs: u64,
    /// Remote retention: also keep the N record objects with the lowest
    /// validation loss in their headers (0 = off).
    pub keep_best: u64,
}

impl Default for UploaderOptions {
    fn default() -> Self {
        UploaderOptions {
            part_bytes: 16 << 20,
            parallel_parts: 4,
            retry_max: Duration::from_secs(30),
            keep_records: 10,
            keep_every_epochs: 0,
            keep_best: 0,
        }
    }
}

/// What the uploader has done so far (a snapshot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Newest record the remote pointer names (0 = none).
    pub remote_seq: u64,
    /// Its snapshot time, ns since the Unix epoch.
    pub remote_unix_ns: u64,
    /// Newest local durable record offered (0 = none).
    pub local_seq: u64,
    /// Its snapshot time.
    pub local_unix_ns: u64,
    /// Records uploaded by this process.
    pub uploaded: u64,
    /// Records never uploaded because a newer one was durable first.
    pub skipped: u64,
    /// Failed attempts so far.
    pub failures: u64,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Replication gave up for good (another log owns the remote prefix).
    pub stopped: Option<String>,
    /// Snapshot time of the oldest local record newer than the remote's.
    pub oldest_pending_unix_ns: Option<u64>,
    /// The newest local record has a sequence the remote already used for
    /// another record (it was not uploaded); cleared when a newer local
    /// record reaches the remote.
    pub diverged: Option<String>,
}

impl Progress {
    /// Records the remote is behind the local log.
    pub fn lag_records(&self) -> u64 {
        self.local_seq.saturating_sub(self.remote_seq)
    }

    /// Seconds of training the remote copy lacks: snapshot time of the
    /// newest local record minus that of the newest remote one (when the
    /// remote holds nothing yet, minus that of the oldest record waiting for
    /// upload). 0 when the remote is up to date.
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_records() == 0 {
            return 0.0;
        }
        let base = if self.remote_seq > 0 {
            self.remote_unix_ns
        } else {
            self.oldest_pending_unix_ns.unwrap_or(self.local_unix_ns)
        };
        self.local_unix_ns.saturating_sub(base) as f64 / 1e9
    }

    /// `remote seq 12 (lag 1 record, 4.2 s)` for the STATUS text.
    pub fn status_text(&self) -> String {
        if let Some(reason) = &self.stopped {
            return format!("replication stopped: {reason}");
        }
        let mut s = format!(
            "remote seq {} (lag {} record{}, {:.1} s)",
            self.remote_seq,
            self.lag_records(),
            if self.lag_records() == 1 { "" } else { "s" },
            self.lag_seconds()
        );
        if self.diverged.is_some() {
            s.push_str(&format!(
                ", local seq {} NOT on the remote (the remote used that sequence for another record)",
                self.local_seq
            ));
        } else if self.last_error.is_some() {
            s.push_str(", uploads failing, retrying");
        }
        s
    }
}

/// A record offered for upload.
#[derive(Debug, Clone)]
struct Offer {
    header: RecordHeader,
    segment: PathBuf,
}

#[derive(Default)]
struct Slot {
    offer: Option<Offer>,
    stop: bool,
    /// Set while the thread works on a record (for `wait_for`).
    busy: bool,
    progress: Progress,
    /// The pointer as last read or written.
    pointer: Option<PointerState>,
    /// False until the pointer was read once (the start-up contact failed):
    /// the first upload then takes the remote pointer as it finds it.
    pointer_known: bool,
    /// (sequence, snapshot time) of offered records newer than the remote's.
    pending: std::collections::VecDeque<(u64, u64)>,
    /// The pointer object was damaged at start: the first upload replaces
    /// it (if it is still damaged then).
    damaged_at_start: bool,
}

impl Slot {
    /// Sets the remote's newest record and forgets what it now covers.
    fn set_remote(&mut self, seq: u64, unix_ns: u64) {
        if seq >= self.progress.local_seq {
            self.progress.diverged = None;
        }
        self.progress.remote_seq = seq;
        self.progress.remote_unix_ns = unix_ns;
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            self.pending.pop_front();
        }
        self.progress.oldest_pending_unix_ns = self.pending.front().map(|p| p.1);
    }
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// Notified whenever progress changes.
    changed: Condvar,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called after every change of progress (upload done, failure), from the
/// uploader thread: the daemon updates its STATUS and the `REMOTE` file.
pub type OnProgress = Box<dyn Fn(&Progress) + Send>;

/// What the daemon knows of the remote pointer when the uploader starts.
#[derive(Debug, Clone)]
pub enum PointerAtStart {
    /// Read at start: the pointer, or none yet. Any later change by someone
    /// else is another writer, and stops replication.
    Read(Option<PointerState>),
    /// Could not be read (the remote was unreachable at start): the first
    /// upload adopts the pointer it finds, if that names an older record of
    /// the same log.
    Unread,
    /// The pointer object was damaged at start (the restore went by a
    /// listing): the first upload writes a new one over it, if it is still
    /// damaged then; a valid pointer found instead is another writer's.
    Damaged(Option<object_store::UpdateVersion>),
}

/// The uploader thread and its mailbox.
pub struct Uploader {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Uploader {
    /// Starts the thread. `pointer` is the remote pointer read at start
    /// (it must name this log or nothing). The thread talks to the remote
    /// through a client of its own (see [`Remote::with_own_client`]).
    /// `journal` is where a multipart upload's id is kept while it runs
    /// (the `UPLOAD` file of the log directory); one left by a killed run
    /// is aborted first.
    pub fn start(
        remote: Remote,
        pointer: PointerAtStart,
        options: UploaderOptions,
        on_progress: OnProgress,
        journal: Option<PathBuf>,
    ) -> std::io::Result<Uploader> {
        Uploader::start_member(remote, pointer, options, None, on_progress, journal)
    }

    /// [`Uploader::start`] for a rank of a multi-rank job: after each
    /// upload the thread advances the job's set pointer (`set`), and
    /// remote retention keeps what the set names or may name
    /// (FORMAT.md §7.10).
    pub fn start_member(
        remote: Remote,
        pointer: PointerAtStart,
        options: UploaderOptions,
        set: Option<SetMember>,
        on_progress: OnProgress,
        journal: Option<PathBuf>,
    ) -> std::io::Result<Uploader> {
        let remote = remote.with_own_client().map_err(std::io::Error::other)?;
        let mut slot = Slot::default();
        match pointer {
            PointerAtStart::Read(pointer) => {
                if let Some(p) = &pointer {
                    slot.set_remote(p.pointer.sequence, p.pointer.unix_ns);
                }
                slot.pointer = pointer;
                slot.pointer_known = true;
            }
            PointerAtStart::Damaged(_) => {
                slot.pointer_known = true;
                slot.damaged_at_start = true;
            }
            PointerAtStart::Unread => {}
        }
        let shared = Arc::new(Shared {
            slot: Mutex::new(slot),
            wake: Condvar::new(),
            changed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("replicate".into())
            .spawn(move || run(&s, remote, options, set, on_progress, journal))?;
        Ok(Uploader {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over a durable record; never blocks. A previous offer that was
    /// not started yet is replaced and counted as skipped.
    pub fn offer(&self, header: RecordHeader, segment: PathBuf) {
        let mut slot = lock(&self.shared.slot);
        if header.sequence > slot.progress.local_seq {
            slot.progress.local_seq = header.sequence;
            slot.progress.local_unix_ns = header.unix_ns;
        }
        if header.sequence <= slot.progress.remote_seq {
            // Already there, when the pointer names this very record or a
            // newer one that follows it. A record the pointer does not name
            // at a sequence the remote has used is another history of the
            // log: it is not uploaded, and that is said, not hidden as lag 0.
            let same = slot.pointer.as_ref().is_some_and(|p| {
                p.pointer.sequence == header.sequence
                    && p.pointer.checksum() == header.payload_checksum
                    && p.pointer.unix_ns == header.unix_ns
            });
            if !same && header.sequence == slot.progress.local_seq {
                let reason = format!(
                    "local record {} (epoch {}) has a sequence the remote has already used \
                     (its pointer names sequence {}): not uploaded; the remote holds another \
                     history of this log",
                    header.sequence, header.epoch, slot.progress.remote_seq
                );
                warn!(
                    seq = header.sequence,
                    remote_seq = slot.progress.remote_seq,
                    "{reason}"
                );
                slot.progress.skipped += 1;
                slot.progress.diverged = Some(reason);
            }
            return;
        }
        slot.pending.push_back((header.sequence, header.unix_ns));
        if slot.progress.oldest_pending_unix_ns.is_none() {
            slot.progress.oldest_pending_unix_ns = Some(header.unix_ns);
        }
        if let Some(old) = slot.offer.replace(Offer { header, segment }) {
            if old.header.sequence < header.sequence {
                slot.progress.skipped += 1;
            } else {
                // Never go backwards.
                slot.offer = Some(old);
            }
        }
        drop(slot);
        self.shared.wake.notify_all();
    }

    /// The current progress.
    pub fn progress(&self) -> Progress {
        lock(&self.shared.slot).progress.clone()
    }

    /// Waits until the remote holds `seq` (or newer), replication stopped,
    /// or `deadline` passed. True if the remote holds it.
    pub fn wait_for(&self, seq: u64, deadline: Instant) -> bool {
        let mut slot = lock(&self.shared.slot);
        loop {
            if slot.progress.remote_seq >= seq {
                return true;
            }
            if slot.progress.stopped.is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            slot = self
                .shared
                .changed
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the thread after the attempt in progress.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        lock(&self.shared.slot).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Uploader {
    /// Asks the thread to stop without waiting for an upload in progress
    /// (use [`Uploader::stop`] to wait).
    fn drop(&mut self) {
        lock(&self.shared.slot).stop = true;
        self.shared.wake.notify_all();
        drop(self.thread.take());
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Nice value of the uploader thread: it yields the CPU to training. Under
/// contention CFS gives a nice-10 thread about a tenth of the share of a
/// nice-0 one (weights 110 and 1024), so an upload slows down before an
/// epoch does. Threads it starts inherit it.
const UPLOADER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (on Linux nice is per thread). Where
/// it is not allowed (the shipped systemd unit filters `setpriority`) the
/// uploader runs at the daemon's priority.
fn yield_cpu_to_training() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: setpriority only reads its three integer arguments.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, UPLOADER_NICE) } != 0 {
            debug!(error = %std::io::Error::last_os_error(), "uploader thread keeps the daemon's priority");
        }
    }
}

/// CPU time this thread has used, in ms (what an upload costs the machine,
/// whatever else runs on it).
fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn run(
    shared: &Shared,
    remote: Remote,
    options: UploaderOptions,
    mut set: Option<SetMember>,
    on_progress: OnProgress,
    journal: Option<PathBuf>,
) {
    yield_cpu_to_training();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "replication: cannot start its runtime; no uploads in this run");
            return;
        }
    };
    if let Some(j) = &journal {
        runtime.block_on(remote.abort_remembered_upload(j));
    }
    let journal = journal.as_deref();
    // Each `replicated` line says how many records this upload superseded
    // (the sequences between the remote's previous record and this one,
    // never uploaded), and their sum over the run.
    let mut skipped_total = 0u64;
    let mut backoff = Duration::from_millis(250);
    // Validation losses of remote records by sequence, for keep_best (a
    // record object never changes, so its header is read once).
    let mut losses = HashMap::new();
    loop {
        // Take the newest offer.
        let offer = {
            let mut slot = lock(&shared.slot);
            loop {
                if slot.stop {
                    return;
                }
                if let Some(o) = slot.offer.take() {
                    slot.busy = true;
                    break o;
                }
                slot.busy = false;
                shared.changed.notify_all();
                slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let (previous, known, damaged) = {
            let slot = lock(&shared.slot);
            (
                slot.pointer.clone(),
                slot.pointer_known,
                slot.damaged_at_start,
            )
        };
        if previous
            .as_ref()
            .is_some_and(|p| p.pointer.sequence >= offer.header.sequence)
        {
            continue;
        }
        let started = Instant::now();
        let cpu_started = thread_cpu_ms();
        debug!(
            seq = offer.header.sequence,
            epoch = offer.header.epoch,
            bytes = offer.header.payload_len + format::PAGE,
            "upload started"
        );
        let expected = known.then_some(previous.as_ref());
        let outcome = match runtime.block_on(upload(
            &remote, &offer, expected, damaged, &options, journal,
        )) {
            // Retrying cannot heal these (the settings, the credentials or
            // the bucket must change first): stop, loudly, instead of
            // retrying for ever.
            Err(Failure::Retry(e)) if e.cause.is_permanent() => Err(Failure::Fatal(format!(
                "{e}; retrying cannot fix this: correct it and restart the daemon"
            ))),
            other => other,
        };
        match outcome {
            Ok(Uploaded::Done { state, bytes }) => {
                backoff = Duration::from_millis(250);
                let upload_ms = started.elapsed().as_secs_f64() * 1e3;
                let cpu_ms = thread_cpu_ms() - cpu_started;
                let progress = {
                    let mut slot = lock(&shared.slot);
                    let skipped = offer
                        .header
                        .sequence
                        .saturating_sub(slot.progress.remote_seq + 1);
                    skipped_total += skipped;
                    slot.set_remote(state.pointer.sequence, state.pointer.unix_ns);
                    slot.progress.uploaded += 1;
                    slot.progress.last_error = None;
                    slot.pointer = Some(state.clone());
                    slot.pointer_known = true;
                    slot.damaged_at_start = false;
                    // Logged under the lock: a `wait_for` at shutdown sees
                    // the new remote sequence only after this line is out,
                    // so the process never exits without it.
                    info!(
                        seq = offer.header.sequence,
                        epoch = offer.header.epoch,
                        bytes,
                        upload_ms = (upload_ms * 1e3).round() / 1e3,
                        cpu_ms = (cpu_ms * 1e3).round() / 1e3,
                        mib_per_s = ((bytes as f64 / 1048576.0) / (upload_ms / 1e3).max(1e-9)
                            * 10.0)
                            .round()
                            / 10.0,
                        skipped,
                        skipped_total,
                        remote_lag_records = slot.progress.lag_records(),
                        "replicated"
                    );
                    slot.progress.clone()
                };
                shared.changed.notify_all();
                on_progress(&progress);
                // A rank of a job: advance the set pointer first; retention
                // then keeps what it names or may name, and deletes nothing
                // when the set could not be read.
                let keep = match set.as_mut() {
                    None => Some(None),
                    Some(member) => match runtime.block_on(member.advance()) {
                        Ok(outcome) => Some(Some(outcome.keep)),
                        Err(e) => {
                            warn!(error = %e, "the set pointer was not advanced; remote retention waits for the next upload");
                            None
                        }
                    },
                };
                if let Some(keep) = keep {
                    if let Err(e) = runtime.block_on(retention(
                        &remote,
                        &state.pointer,
                        &options,
                        &mut losses,
                        keep.as_ref(),
                    )) {
                        warn!(error = %e, "remote retention failed; old record objects stay until the next upload");
                    }
                }
            }
            Ok(Uploaded::Gone(reason)) => {
                let progress = {
                    let mut slot = lock(&shared.slot);
                    slot.progress.skipped += 1;
                    slot.progress.clone()
                };
                warn!(seq = offer.header.sequence, reason = %reason, "record no longer readable locally; not uploaded");
                on_progress(&progress);
            }
            Ok(Uploaded::AlreadyThere(state)) => {
                // The pointer already names this very record (an earlier
                // run of this log uploaded it).
                backoff = Duration::from_millis(250);
                let progress = {
                    let mut slot = lock(&shared.slot);
                    slot.set_remote(state.pointer.sequence, state.pointer.unix_ns);
                    slot.progress.last_error = None;
                    slot.pointer = Some(state);
                    slot.pointer_known = true;
                    slot.progress.clone()
                };
                shared.changed.notify_all();
                on_progress(&progress);
                // An earlier run uploaded it, perhaps without advancing the
                // set pointer before it was killed.
                if let Some(member) = set.as_mut() {
                    if let Err(e) = runtime.block_on(member.advance()) {
                        warn!(error = %e, "the set pointer was not advanced");
                    }
                }
            }
            Err(Failure::Fatal(reason)) => {
                error!(url = %remote.url(), %reason, "replication stopped; training goes on locally");
                let progress = {
                    let mut slot = lock(&shared.slot);
                    slot.progress.stopped = Some(reason);
                    slot.busy = false;
                    slot.progress.clone()
                };
                shared.changed.notify_all();
                on_progress(&progress);
                // Keep draining offers so that `offer` stays cheap, but
                // upload nothing.
                let mut slot = lock(&shared.slot);
                while !slot.stop {
                    slot.offer = None;
                    slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                return;
            }
            Err(Failure::Retry(e)) => {
                let progress = {
                    let mut slot = lock(&shared.slot);
                    slot.progress.failures += 1;
                    slot.progress.last_error = Some(e.to_string());
                    // Retry this record unless a newer one arrived meanwhile.
                    match &slot.offer {
                        Some(newer) if newer.header.sequence > offer.header.sequence => {
                            slot.progress.skipped += 1;
                        }
                        _ => slot.offer = Some(offer.clone()),
                    }
                    slot.progress.clone()
                };
                warn!(seq = offer.header.sequence, error = %e, retry_in_ms = backoff.as_millis() as u64, "upload failed; will retry");
                on_progress(&progress);
                shared.changed.notify_all();
                // Sleep, but wake for stop.
                let deadline = Instant::now() + backoff;
                let mut slot = lock(&shared.slot);
                while !slot.stop && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    slot = shared
                        .wake
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                drop(slot);
                backoff = (backoff * 2).min(options.retry_max);
            }
        }
    }
}

enum Uploaded {
    Done {
        state: PointerState,
        bytes: u64,
    },
    /// The record vanished locally (retention) or failed validation.
    Gone(String),
    /// The pointer already names this very record.
    AlreadyThere(PointerState),
}

enum Failure {
    Retry(RemoteError),
    Fatal(String),
}

/// What the pointer found on the remote means for an upload.
enum Judged {
    /// Write over this state (the one expected, or an older record of the
    /// same log when nothing was expected).
    Replace(Option<PointerState>),
    /// It already names the record being uploaded.
    Holds(PointerState),
}

/// Compares the pointer found on the remote (`current`) with the one this
/// uploader last read or wrote (`expected`; `None` when it never could read
/// it). Anything else than what was expected is another writer: the pointer
/// is never written over then, and replication stops (FORMAT.md §7.5).
fn judge(
    remote: &Remote,
    ours: &Pointer,
    expected: Option<Option<&PointerState>>,
    current: Option<PointerState>,
) -> Result<Judged, Failure> {
    let describe = |p: &Pointer| {
        format!(
            "log {} sequence {} (epoch {}, step {})",
            p.log_id, p.sequence, p.epoch, p.step
        )
    };
    match (current, expected) {
        (Some(cur), _) if cur.pointer == *ours => Ok(Judged::Holds(cur)),
        (Some(cur), _) if cur.pointer.log_id != ours.log_id => Err(Failure::Fatal(format!(
            "the pointer {}/{} names {}, but this daemon writes log {}; not overwriting it \
             (use another prefix for this log)",
            remote.url(),
            layout::POINTER_NAME,
            describe(&cur.pointer),
            ours.log_id
        ))),
        (cur, Some(exp)) if cur.as_ref().map(|c| &c.pointer) == exp.map(|e| &e.pointer) => {
            Ok(Judged::Replace(cur))
        }
        (None, None) => Ok(Judged::Replace(None)),
        (Some(cur), None) if cur.pointer.sequence < ours.sequence => Ok(Judged::Replace(Some(cur))),
        (cur, exp) => Err(Failure::Fatal(format!(
            "another writer moved the pointer {}/{}: it names {}, where this daemon {} \
             (two processes replicate log {} to one prefix, e.g. a copy restored on another \
             machine while this one still runs); not overwriting it",
            remote.url(),
            layout::POINTER_NAME,
            cur.as_ref()
                .map_or_else(|| "nothing (deleted)".to_string(), |c| describe(&c.pointer)),
            match exp {
                Some(Some(e)) => format!("last wrote or read {}", describe(&e.pointer)),
                Some(None) => "found no pointer at start".to_string(),
                None => format!("is about to upload sequence {}", ours.sequence),
            },
            ours.log_id
        ))),
    }
}

async fn upload(
    remote: &Remote,
    offer: &Offer,
    expected: Option<Option<&PointerState>>,
    damaged_at_start: bool,
    options: &UploaderOptions,
    journal: Option<&std::path::Path>,
) -> Result<Uploaded, Failure> {
    let reader = match LogReader::open(offer.segment.parent().unwrap_or(std::path::Path::new(".")))
    {
        Ok(r) => r,
        Err(e) => return Ok(Uploaded::Gone(e.to_string())),
    };
    let record = match reader.load(&offer.segment, &offer.header) {
        Ok(r) => Arc::new(r),
        Err(e) => return Ok(Uploaded::Gone(e.to_string())),
    };
    let pointer = Pointer::for_record(&offer.header);
    // Before anything is written: is the pointer still the one this daemon
    // left? (Works on every store; the conditional put below closes the
    // window between this read and the write where the server honours it.)
    let current = match remote.read_head().await.map_err(Failure::Retry)? {
        Head::Valid(p) => Some(p),
        Head::Missing => None,
        Head::Damaged { version, .. } if damaged_at_start => {
            // Damaged at start and still damaged: written over, after the
            // record object is complete like any pointer update.
            let bytes = remote
                .put_record(
                    &record,
                    usize::try_from(options.part_bytes).unwrap_or(usize::MAX),
                    options.parallel_parts,
                    journal,
                )
                .await
                .map_err(Failure::Retry)?;
            drop(record);
            let state = remote
                .write_pointer_over(&pointer, Replacing::Version(version.as_ref()))
                .await
                .map_err(Failure::Retry)?;
            warn!(pointer = %remote.pointer_url(), seq = pointer.sequence, "the damaged pointer (HEAD) was replaced; it names this record now");
            return Ok(Uploaded::Done { state, bytes });
        }
        Head::Damaged { detail, .. } => {
            return Err(Failure::Retry(RemoteError {
                url: remote.pointer_url(),
                what: "reading the pointer".into(),
                cause: Cause::Damaged,
                detail,
            }))
        }
    };
    let baseline = match judge(remote, &pointer, expected, current)? {
        Judged::Holds(state) => return Ok(Uploaded::AlreadyThere(state)),
        Judged::Replace(b) => b,
    };
    let bytes = remote
        .put_record(
            &record,
            usize::try_from(options.part_bytes).unwrap_or(usize::MAX),
            options.parallel_parts,
            journal,
        )
        .await
        .map_err(Failure::Retry)?;
    drop(record);
    match remote.write_pointer(&pointer, baseline.as_ref()).await {
        Ok(state) => Ok(Uploaded::Done { state, bytes }),
        Err(e) if e.cause == Cause::Conflict => {
            // The pointer changed between the read above and the write: our
            // own earlier attempt whose answer was lost, or another writer.
            let current = remote.read_pointer().await.map_err(Failure::Retry)?;
            match judge(remote, &pointer, Some(baseline.as_ref()), current)? {
                Judged::Holds(state) => Ok(Uploaded::Done { state, bytes }),
                // Unchanged after all (a version mismatch only): try again.
                Judged::Replace(_) => Err(Failure::Retry(e)),
            }
        }
        Err(e) => Err(Failure::Retry(e)),
    }
}

/// Deletes record objects of the pointer's log that retention no longer
/// keeps. Never the pointer's record, never anything newer than it, never
/// a sequence in `keep` (what a job's set pointer names or may name).
async fn retention(
    remote: &Remote,
    pointer: &Pointer,
    options: &UploaderOptions,
    losses: &mut HashMap<u64, Option<f32>>,
    keep: Option<&HashSet<u64>>,
) -> Result<(), RemoteError> {
    if options.keep_records == 0 {
        return Ok(());
    }
    let Ok(log_id) = pointer.log_id() else {
        return Ok(());
    };
    let (records, _) = remote.list_records(log_id).await?;
    let older: Vec<_> = records
        .iter()
        .filter(|r| r.sequence <= pointer.sequence)
        .collect();
    let best = if options.keep_best > 0 {
        // The validation loss is in the record header: one range read per
        // record object not seen before.
        losses.retain(|seq, _| older.iter().any(|r| r.sequence == *seq));
        let mut ranked = Vec::new();
        for r in &older {
            let loss = match losses.get(&r.sequence) {
                Some(l) => *l,
                None => match remote.fetch_header(&r.path).await {
                    Ok(h) => *losses.entry(r.sequence).or_insert(h.validation_loss()),
                    // Gone between the listing and the read.
                    Err(e) if e.cause == Cause::NotFound => None,
                    Err(e) => return Err(e),
                },
            };
            if let Some(l) = loss {
                ranked.push((l, r.sequence));
            }
        }
        ranked.sort_by(|a, b| best_first(*a, *b));
        ranked
            .iter()
            .take(options.keep_best as usize)
            .map(|&(_, seq)| seq)
            .collect()
    } else {
        HashSet::new()
    };
    let mut epochs_kept = HashSet::new();
    let mut doomed = Vec::new();
    for (i, r) in older.iter().rev().enumerate() {
        let newest = r.sequence == pointer.sequence;
        let within = (i as u64) < options.keep_records;
        let milestone = options.keep_every_epochs > 0
            && r.epoch % options.keep_every_epochs == 0
            && epochs_kept.insert(r.epoch);
        let in_set = keep.is_some_and(|k| k.contains(&r.sequence));
        if !(newest || within || milestone || in_set || best.contains(&r.sequence)) {
            doomed.push(r.path.clone());
        }
    }
    for path in &doomed {
        remote.delete(path).await?;
    }
    if !doomed.is_empty() {
        tracing::debug!(
            deleted = doomed.len(),
            "remote retention removed old record objects"
        );
    }
    Ok(())
}

/// Writes the `REMOTE` file of a log directory: what the remote copy holds,
/// for `tail --json` and operators. Replaced atomically, not fsynced (it is a
/// report, not state).
pub fn write_remote_file(dir: &std::path::Path, url: &str, p: &Progress) {
    let tmp = dir.join(format!("{}.tmp", format::REMOTE_FILE));
    let line = format!(
        "remote_sequence={} remote_unix_ns={} local_sequence={} local_unix_ns={} skipped={} failing={} updated_unix_ns={} url={}\n",
        p.remote_seq,
        p.remote_unix_ns,
        p.local_seq,
        p.local_unix_ns,
        p.skipped,
        p.last_error.is_some() || p.stopped.is_some() || p.diverged.is_some(),
        now_unix_ns(),
        url
    );
    let res = crate::wal::write_private(&tmp, line.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, dir.join(format::REMOTE_FILE)));
    if let Err(e) = res {
        warn!(dir = %dir.display(), error = %e, "could not update the REMOTE file");
    }
}

/// What a `REMOTE` file says (see [`write_remote_file`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteFile {
    /// Newest sequence the remote pointer names.
    pub remote_sequence: u64,
    /// Its snapshot time.
    pub remote_unix_ns: u64,
    /// Records skipped so far by the writing process.
    pub skipped: u64,
    /// Whether uploads were failing when it was written.
    pub failing: bool,
    /// The remote URL.
    pub url: String,
}

/// Reads the `REMOTE` file of a log directory, if there is one.
pub fn read_remote_file(dir: &std::path::Path) -> Option<RemoteFile> {
    let text = std::fs::read_to_string(dir.join(format::REMOTE_FILE)).ok()?;
    let mut out = RemoteFile::default();
    for field in text.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "remote_sequence" => out.remote_sequence = v.parse().ok()?,
            "remote_unix_ns" => out.remote_unix_ns = v.parse().ok()?,
            "skipped" => out.skipped = v.parse().ok()?,
            "failing" => out.failing = v == "true",
            "url" => out.url = v.to_string(),
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sequence: u64, payload_checksum: u64) -> RecordHeader {
        RecordHeader {
            log_id: 0xabc,
            segment_no: 1,
            sequence,
            epoch: sequence,
            step: sequence * 10,
            offset: 4096,
            payload_len: 1000,
            payload_checksum,
            unix_ns: 7,
            loss: 0.5,
            schema_version: 1,
            validation: None,
        }
    }

    #[test]
    fn a_record_under_a_sequence_the_remote_used_is_reported_not_shown_as_lag_0() {
        let dir = tempfile::tempdir().unwrap();
        let remote =
            Remote::open(&format!("file://{}", dir.path().display()), Some(false)).unwrap();
        let theirs = header(5, 0xaaaa);
        let pointer = PointerState {
            pointer: Pointer::for_record(&theirs),
            version: None,
        };
        let up = Uploader::start(
            remote,
            PointerAtStart::Read(Some(pointer)),
            UploaderOptions::default(),
            Box::new(|_| {}),
            None,
        )
        .unwrap();
        // The pointer's own record: already there.
        up.offer(theirs, dir.path().join("1.wal"));
        let p = up.progress();
        assert!(p.diverged.is_none(), "{p:?}");
        assert!(!p.status_text().contains("NOT"), "{}", p.status_text());
        // Another record under the same sequence: said, not lag 0 alone.
        up.offer(header(5, 0xbbbb), dir.path().join("1.wal"));
        let p = up.progress();
        assert!(
            p.diverged
                .as_deref()
                .is_some_and(|r| r.contains("already used")),
            "{p:?}"
        );
        assert!(
            p.status_text().contains("local seq 5 NOT on the remote"),
            "{}",
            p.status_text()
        );
        assert_eq!(p.skipped, 1);
        up.stop();
    }
}
