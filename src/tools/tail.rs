//! `epochwal tail DIR [-n N] [-f] [--json] [--headers-only]`: the newest
//! records, one line each, from the record headers; each printed record's
//! payload is also validated (checksum and rkyv), and a damaged one is marked
//! `DAMAGED: <reason>` (`--headers-only` skips that, for very large states).
//!
//! Following (`-f`) works like `tail -F`. Stores through a mapping are
//! invisible to inotify, so the writer signals with ordinary file operations:
//! after each durable append it replaces `COMMIT` (rename of `COMMIT.tmp`),
//! and new segments appear by rename of `*.wal.tmp`. The follower watches the
//! directory for those events, rescans the headers on each, and also rescans
//! every second as a safety net (a missed or coalesced event, a directory
//! that is deleted and recreated, a filesystem without inotify). A directory
//! that does not exist yet is waited for (its nearest existing ancestor is
//! watched), and when it appears every record in it is printed, like
//! `tail -F` prints a file that appears. A path that can never become a
//! directory (a file, a path under a file, a name that is too long) is a
//! usage error at once. Only records with a sequence greater than the last
//! one printed are printed, so rotation, retention deletes and writer
//! restarts neither repeat nor lose lines.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};

use super::{dir_state, file_name, format_unix_ns, human_bytes, open_reader, DirState, UsageError};
use crate::replicate::{block_on, read_remote_file, Cause, Remote};
use crate::wal::format::best_first;
use crate::wal::{LogReader, LogScan, RecordHeader};

/// Arguments of `epochwal tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The log directory, or the URL of a remote copy
    /// (`s3://bucket/prefix`, `file:///path`).
    pub dir: PathBuf,
    /// How many of the newest records to print first [default: 10]. Not on
    /// a job directory, which prints one line per rank.
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<usize>,
    /// Keep running and print records as they become durable (like `tail -F`:
    /// follows rotation, retention, writer restarts, and a directory that does
    /// not exist yet). Ends quietly on Ctrl-C or when the output pipe closes.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// One JSON object per line: sequence, epoch, step, loss, val_loss,
    /// val_accuracy (null when absent), best, payload_bytes, unix_ns, time,
    /// segment, offset, intact, and for records of the Python package the
    /// `metrics` given to `save`.
    #[arg(long)]
    pub json: bool,
    /// Do not validate the payloads of the printed records (no `DAMAGED`
    /// marker); for logs of very large states, where reading each payload
    /// costs time.
    #[arg(long)]
    pub headers_only: bool,
}

/// One record as `tail` shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    sequence: u64,
    epoch: u64,
    step: u64,
    loss: f64,
    /// Validation loss of the record's weights (null: none was computed).
    val_loss: Option<f32>,
    /// Validation accuracy (classification only).
    val_accuracy: Option<f32>,
    /// The lowest validation loss of the log at the time of the scan
    /// (ties: the older record).
    best: bool,
    payload_bytes: u64,
    unix_ns: u64,
    time: String,
    segment: String,
    offset: u64,
    /// False when the payload failed validation (`damage` says why); true
    /// when it passed or was not checked (`--headers-only`).
    intact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    damage: Option<String>,
    /// The `metrics` of a general record (the Python package's; FORMAT.md
    /// §4.5), read with the payload (absent with `--headers-only`).
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<serde_json::Value>,
    /// Newest sequence the remote copy holds, from the daemon's `REMOTE`
    /// file (absent without replication).
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_sequence: Option<u64>,
    /// Records this one is ahead of the remote copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_lag_records: Option<u64>,
    /// Seconds of training (snapshot time) this one is ahead of the remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_lag_seconds: Option<f64>,
    #[serde(skip)]
    log_id: u128,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    header: RecordHeader,
}

impl Row {
    fn line(&self, json: bool) -> String {
        if json {
            // A Row has no map with non-string keys, so this cannot fail.
            serde_json::to_string(self).unwrap_or_default()
        } else {
            let mut val = String::new();
            if let Some(v) = self.val_loss {
                val.push_str(&format!(" val_loss={v:.6}"));
            }
            if let Some(a) = self.val_accuracy {
                val.push_str(&format!(" val_acc={a:.4}"));
            }
            if let Some(m) = self.metrics.as_ref().and_then(|m| m.as_object()) {
                for (k, v) in m {
                    val.push_str(&format!(" {k}={v}"));
                }
            }
            format!(
                "seq={} epoch={} step={} loss={:.6}{val} size={} time={} segment={}{}{}",
                self.sequence,
                self.epoch,
                self.step,
                self.loss,
                human_bytes(self.payload_bytes).replace(' ', ""),
                self.time,
                self.segment,
                if self.best { " best" } else { "" },
                self.damage
                    .as_ref()
                    .map(|d| format!(" DAMAGED: {d}"))
                    .unwrap_or_default()
            )
        }
    }

    /// Validates the payload (checksum, rkyv, schema) and records the result.
    fn check(&mut self, reader: &LogReader) {
        match reader.load(&self.path, &self.header) {
            Ok(rec) => self.metrics = general_metrics(&rec),
            Err(e) => {
                let text = e.to_string();
                // The reason without the "path at offset N: " prefix the
                // line already shows.
                let reason = match text.split_once(": ") {
                    Some((_, r)) if text.starts_with(&self.path.display().to_string()) => r,
                    _ => &text,
                };
                self.intact = false;
                // A damaged record is never called the best.
                self.best = false;
                self.damage = Some(reason.to_string());
            }
        }
    }
}

/// The non-empty `metrics` of a general record (the Python package's;
/// FORMAT.md §4.5); None for a trainer record.
fn general_metrics(rec: &crate::wal::MappedRecord) -> Option<serde_json::Value> {
    let st = rec.state();
    if !st.is_general() {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(st.general.meta.as_str())
        .ok()
        .and_then(|m| m.get("metrics").cloned())
        .filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))
}

/// The records of the newest log in the directory (segments of another log
/// id are left out), sorted by sequence, and the problems the scan met.
fn rows(scan: &LogScan) -> (Vec<Row>, Vec<String>) {
    let current = scan.segments.iter().rev().find_map(|s| s.log_id);
    let mut out = Vec::new();
    let mut problems: Vec<String> = scan
        .segments
        .iter()
        .flat_map(|s| s.problems.iter().map(|p| p.to_string()))
        .collect();
    for seg in &scan.segments {
        let Some(id) = seg.log_id else { continue };
        if Some(id) != current {
            problems.push(format!(
                "{}: segment of another log (id {id:032x}); its records are not shown",
                seg.path.display(),
            ));
            continue;
        }
        let name = file_name(&seg.path);
        out.extend(
            seg.records
                .iter()
                .map(|r| Row::from_header(r, name.clone(), seg.path.clone())),
        );
    }
    out.sort_by_key(|r| r.sequence);
    out.dedup_by_key(|r| r.sequence);
    if let Some(remote) = read_remote_file(&scan.dir) {
        for r in &mut out {
            r.set_remote(remote.remote_sequence, remote.remote_unix_ns);
        }
    }
    mark_best(&mut out);
    (out, problems)
}

/// Marks the row with the lowest validation loss (ties: the older).
fn mark_best(rows: &mut [Row]) {
    let best = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.intact)
        .filter_map(|(i, r)| {
            r.val_loss
                .filter(|l| l.is_finite())
                .map(|l| (l, r.sequence, i))
        })
        .min_by(|a, b| best_first((a.0, a.1), (b.0, b.1)));
    if let Some((_, _, i)) = best {
        rows[i].best = true;
    }
}

impl Row {
    /// Adds the lag of this record behind a remote copy holding `seq`.
    fn set_remote(&mut self, seq: u64, unix_ns: u64) {
        let records = self.sequence.saturating_sub(seq);
        self.remote_sequence = Some(seq);
        self.remote_lag_records = Some(records);
        self.remote_lag_seconds = Some(if records == 0 {
            0.0
        } else {
            self.unix_ns.saturating_sub(unix_ns) as f64 / 1e9
        });
    }

    /// A row for a record whose header passed validation. Payloads are
    /// not read here (remote ones are not even downloaded): `verify` checks
    /// them.
    fn from_header(h: &RecordHeader, segment: String, path: PathBuf) -> Row {
        Row {
            sequence: h.sequence,
            epoch: h.epoch,
            step: h.step,
            loss: h.loss,
            val_loss: h.validation.map(|v| v.loss),
            val_accuracy: h.validation.and_then(|v| v.accuracy),
            best: false,
            payload_bytes: h.payload_len,
            unix_ns: h.unix_ns,
            time: format_unix_ns(h.unix_ns),
            segment,
            offset: h.offset,
            intact: true,
            damage: None,
            metrics: None,
            remote_sequence: None,
            remote_lag_records: None,
            remote_lag_seconds: None,
            log_id: h.log_id,
            path,
            header: *h,
        }
    }

    fn from_remote(h: &RecordHeader, object: String) -> Row {
        let path = PathBuf::from(&object);
        Row::from_header(h, object, path)
    }
}

/// The rows of the records of a remote copy with sequences in `after+1..=upto`
/// (headers fetched by range reads), the last `limit` of them. With `check`
/// each is also downloaded and validated like a restore validates it
/// (header and payload checksums, size, rkyv), and a damaged one is marked
/// `DAMAGED: <reason>`; a record object whose header does not decode gets a
/// row from its name, marked the same way.
fn remote_rows(
    remote: &Remote,
    log_id: u128,
    after: u64,
    upto: u64,
    limit: usize,
    check: bool,
) -> anyhow::Result<Vec<Row>> {
    let tmp = std::env::temp_dir();
    block_on(async {
        let (records, _) = remote.list_records(log_id).await?;
        let wanted: Vec<_> = records
            .iter()
            .filter(|r| r.sequence > after && r.sequence <= upto)
            .collect();
        let start = wanted.len().saturating_sub(limit);
        let mut rows = Vec::new();
        for obj in &wanted[start..] {
            let name = obj.path.filename().unwrap_or_default().to_string();
            let mut row = match remote.fetch_header(&obj.path).await {
                Ok(h) => Row::from_remote(&h, name),
                // Deleted by retention between the listing and the read.
                Err(e) if e.cause == Cause::NotFound => continue,
                Err(e) if e.cause == Cause::Damaged => {
                    let mut row = Row::from_remote(&placeholder(log_id, obj), name);
                    row.intact = false;
                    row.damage = Some(e.detail);
                    rows.push(row);
                    continue;
                }
                Err(e) => return Err(anyhow::Error::from(e)),
            };
            if check {
                match remote.fetch_record(&obj.path, &tmp).await {
                    Ok(fetched) => row.metrics = general_metrics(&fetched.record),
                    Err(e) if e.cause == Cause::NotFound => continue,
                    Err(e) if e.cause == Cause::Damaged => {
                        row.intact = false;
                        row.damage = Some(e.detail);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            rows.push(row);
        }
        Ok(rows)
    })?
}

/// A header standing in for a record object whose own header does not
/// decode: sequence and epoch from its name, nothing else known.
fn placeholder(log_id: u128, obj: &crate::replicate::RemoteObject) -> RecordHeader {
    RecordHeader {
        log_id,
        segment_no: 0,
        sequence: obj.sequence,
        epoch: obj.epoch,
        step: 0,
        offset: 0,
        payload_len: obj.size.saturating_sub(crate::wal::format::PAGE),
        payload_checksum: 0,
        unix_ns: 0,
        loss: f64::NAN,
        schema_version: 0,
        validation: None,
    }
}

/// `tail URL`: the records of a remote copy; `-f` polls the pointer.
fn run_remote(args: &TailArgs) -> anyhow::Result<i32> {
    let remote = super::remote::open(&args.dir)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if args.follow {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))
                .context("installing signal handlers")?;
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut last: Option<(u128, u64)> = None;
    loop {
        let state = if args.follow {
            match block_on(remote.read_pointer())? {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("epochwal: warning: {e}; retrying");
                    None
                }
            }
        } else {
            // Without a valid pointer: the log a listing finds (warned).
            let src = super::remote::source(&remote)?;
            let upto = match (&src.pointer, &src.listed) {
                (Some(p), _) => p.pointer.sequence,
                (None, Some(l)) => l.highest_sequence(),
                (None, None) => 0,
            };
            let mut rows = remote_rows(
                &remote,
                src.log_id,
                0,
                upto,
                args.newest(),
                !args.headers_only,
            )?;
            mark_best(&mut rows);
            for row in &rows {
                match writeln!(out, "{}", row.line(args.json)) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
                    r => r.context("writing to stdout")?,
                }
            }
            out.flush().ok();
            return Ok(0);
        };
        if let Some(state) = state {
            let p = &state.pointer;
            let id = p.log_id().map_err(anyhow::Error::msg)?;
            let after = match last {
                Some((l, seq)) if l == id => seq,
                Some(_) => {
                    eprintln!(
                        "epochwal: note: {}: the pointer now names another log ({}); following it",
                        remote.url(),
                        p.log_id
                    );
                    0
                }
                None => 0,
            };
            if last.is_none() || p.sequence > after || last.is_some_and(|(l, _)| l != id) {
                let limit = if last.is_none() {
                    args.newest()
                } else {
                    usize::MAX
                };
                let mut rows =
                    remote_rows(&remote, id, after, p.sequence, limit, !args.headers_only)?;
                if last.is_none() {
                    // Among the rows shown: `tail` reads headers only.
                    mark_best(&mut rows);
                }
                for row in &rows {
                    match writeln!(out, "{}", row.line(args.json)) {
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
                        r => r.context("writing to stdout")?,
                    }
                }
                out.flush().ok();
                last = Some((id, p.sequence.max(after)));
            }
        }
        if !args.follow {
            return Ok(0);
        }
        for _ in 0..10 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) || stdout_pipe_closed() {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Records printed first when `-n` is not given.
const DEFAULT_LINES: usize = 10;

impl TailArgs {
    /// `-n`, or its default.
    fn newest(&self) -> usize {
        self.lines.unwrap_or(DEFAULT_LINES)
    }
}

/// Runs `epochwal tail`.
pub fn run(args: &TailArgs) -> anyhow::Result<i32> {
    if super::is_url(&args.dir) {
        return run_remote(args);
    }
    if crate::job::is_job_dir(&args.dir) {
        if args.follow {
            return Err(UsageError(format!(
                "{}: is a job directory (one log per rank); follow one rank's log, e.g. `epochwal tail -f {}`",
                args.dir.display(),
                args.dir.join(crate::job::rank_dir_name(0)).display()
            ))
            .into());
        }
        if args.lines.is_some() {
            return Err(UsageError(format!(
                "{}: is a job directory (one log per rank), for which tail prints one line per rank; -n counts the records of one log, e.g. `epochwal tail -n N {}`",
                args.dir.display(),
                args.dir.join(crate::job::rank_dir_name(0)).display()
            ))
            .into());
        }
        return super::job::show(&args.dir, args.json);
    }
    if args.follow {
        return follow(args);
    }
    let reader = open_reader(&args.dir)?;
    let scan = reader.scan_settled(super::SETTLE)?;
    let (mut rows, problems) = rows(&scan);
    for p in problems {
        eprintln!("epochwal: warning: {p}");
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let start = rows.len().saturating_sub(args.newest());
    for row in &mut rows[start..] {
        if !args.headers_only {
            row.check(&reader);
        }
        writeln!(out, "{}", row.line(args.json)).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(0)
}

/// What wakes the follower.
enum Wake {
    /// Something changed in the directory.
    Fs,
    /// SIGINT or SIGTERM.
    Stop,
}

/// The follower's memory between rescans.
struct Follower {
    dir: PathBuf,
    json: bool,
    lines: usize,
    check: bool,
    /// The first scan prints only the last `lines` records; a log that
    /// appears later is printed whole.
    started: bool,
    /// The last record printed (or skipped by `-n` on the first scan).
    last_seq: u64,
    /// The highest sequence the previous scan found. A scan is not a
    /// snapshot: its walk can pass the header page of a record that the
    /// writer is still writing and then find the writer's next record
    /// further on. A record missing before one that the previous scan had
    /// already seen whole was there, finished, when this scan began:
    /// damaged or deleted, not in flight. Only such gaps, and only such
    /// bad header pages of the newest segment, are printed past.
    prev_scan_max: u64,
    /// The last scan stopped printing at a gap that may be a record in
    /// flight: rescan at once instead of waiting for the next event.
    rescan_soon: bool,
    log_id: Option<u128>,
    /// Device and inode of the directory being watched (or polled).
    watched: Option<(u64, u64)>,
    /// The ancestor watched while the directory does not exist.
    watched_missing: Option<PathBuf>,
    watcher: Option<notify::RecommendedWatcher>,
}

/// Device and inode of a directory, to notice it being replaced.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

impl Follower {
    /// (Re)creates the directory watch if the directory exists and is not
    /// the one being watched; drops it if the directory is gone.
    fn ensure_watch(&mut self, tx: &mpsc::Sender<Wake>) {
        let id = dir_identity(&self.dir);
        if id.is_some() && self.watched == id {
            return;
        }
        self.watched = id;
        // A missing directory: watch its nearest existing ancestor, so that
        // its creation wakes the follower at once.
        let target = if id.is_some() {
            self.dir.clone()
        } else {
            match self
                .dir
                .ancestors()
                .skip(1)
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        a
                    }
                })
                .find(|a| a.is_dir())
            {
                Some(a) => a.to_path_buf(),
                None => {
                    self.watcher = None;
                    return;
                }
            }
        };
        if id.is_none() && self.watched_missing.as_ref() == Some(&target) {
            return;
        }
        self.watcher = None;
        self.watched_missing = if id.is_none() {
            Some(target.clone())
        } else {
            None
        };
        let tx = tx.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Opens and closes are ignored: inotify reports them for every
            // file in the directory, including the follower's own reads of
            // the segments, which would otherwise wake it up forever. The
            // writer's signals are creations and renames.
            if let Ok(ev) = &res {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
            }
            let _ = tx.send(Wake::Fs);
        })
        .and_then(|mut w| w.watch(&target, RecursiveMode::NonRecursive).map(|_| w));
        match made {
            Ok(w) => self.watcher = Some(w),
            // The one-second rescan still follows the log, only with more lag.
            Err(e) => eprintln!(
                "epochwal: warning: {}: cannot watch the directory ({e}); rescanning every second",
                target.display()
            ),
        }
    }

    /// Rescans and prints the new records.
    fn poll(&mut self, out: &mut impl Write) -> io::Result<()> {
        let Ok(reader) = LogReader::open(&self.dir) else {
            // Whatever appears here later is new: print all of it.
            self.started = true;
            return Ok(());
        };
        // A listing error (the directory vanished mid-scan) is retried at the
        // next wake-up.
        let Ok(scan) = reader.scan() else {
            return Ok(());
        };
        let (rows, _problems) = rows(&scan);
        let newest_id = rows.last().map(|r| r.log_id);
        if let (Some(old), Some(new)) = (self.log_id, newest_id) {
            if old != new {
                eprintln!(
                    "epochwal: note: {}: a different log (id {new:032x}) replaced the one being followed; following it from its start",
                    self.dir.display()
                );
                self.last_seq = 0;
                self.prev_scan_max = 0;
            }
        }
        if newest_id.is_some() {
            self.log_id = newest_id;
        }
        let mut fresh: Vec<&Row> = rows.iter().filter(|r| r.sequence > self.last_seq).collect();
        // The sequence the next printed record should have; None where no
        // record comes before it (a new log, or the first scan's window).
        let mut expected = (self.last_seq > 0).then_some(self.last_seq + 1);
        if !self.started {
            self.started = true;
            let start = fresh.len().saturating_sub(self.lines);
            if let Some(skipped) = start.checked_sub(1).map(|i| fresh[i]) {
                self.last_seq = skipped.sequence;
            }
            fresh.drain(..start);
            expected = None;
        }
        // The first bad header page of the newest segment's walk: next to a
        // running writer, possibly a record being written that the walk
        // passed before it found the writer's next record further on. A
        // record after it that the previous scan had not seen waits for the
        // next scan too; this also covers the first record a follower sees,
        // where there is no sequence to count a gap from.
        let unsettled = scan.segments.last().and_then(|seg| {
            seg.first_bad_record_header()
                .map(|at| (file_name(&seg.path), at))
        });
        self.rescan_soon = false;
        for row in fresh {
            let gap = expected.is_some_and(|want| row.sequence != want);
            let behind_bad_header = unsettled
                .as_ref()
                .is_some_and(|(segment, at)| row.segment == *segment && row.offset > *at);
            if (gap || behind_bad_header) && row.sequence > self.prev_scan_max {
                self.rescan_soon = true;
                break;
            }
            let mut row = row.clone();
            if self.check {
                row.check(&reader);
            }
            writeln!(out, "{}", row.line(self.json))?;
            self.last_seq = row.sequence;
            expected = Some(row.sequence + 1);
        }
        self.prev_scan_max = rows.last().map_or(0, |r| r.sequence);
        out.flush()
    }
}

/// True if stdout is a pipe whose reading end has been closed (Linux reports
/// POLLERR on such a pipe), so that `tail -f | head -n 2` ends even when no
/// new record would make a write fail.
fn stdout_pipe_closed() -> bool {
    // SAFETY: fstat and poll on file descriptor 1 with properly sized,
    // initialized out-parameters; neither call keeps the pointers.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(1, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: 1,
            events: 0,
            revents: 0,
        };
        libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLERR != 0
    }
}

fn follow(args: &TailArgs) -> anyhow::Result<i32> {
    // Wait only for what can still appear: a file, a path under a file or an
    // over-long name never becomes a log directory.
    let state =
        dir_state(&args.dir).with_context(|| format!("{}: cannot follow", args.dir.display()))?;
    if let DirState::Impossible(why) = state {
        return Err(UsageError(format!(
            "{}: {why}; it can never become a log directory",
            args.dir.display()
        ))
        .into());
    }
    let (tx, rx) = mpsc::channel();
    // Install the handlers before printing anything: once the first line is
    // out, Ctrl-C always ends the follower with exit code 0.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
        .context("installing signal handlers")?;
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                let _ = tx.send(Wake::Stop);
            }
        });
    }
    let mut f = Follower {
        dir: args.dir.clone(),
        json: args.json,
        lines: args.newest(),
        check: !args.headers_only,
        started: false,
        last_seq: 0,
        prev_scan_max: 0,
        rescan_soon: false,
        log_id: None,
        watched: None,
        watched_missing: None,
        watcher: None,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    loop {
        f.ensure_watch(&tx);
        match f.poll(&mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        if stdout_pipe_closed() {
            return Ok(0);
        }
        // Poll for a missing directory faster than the safety-net rescan, so
        // the first records still show up well within a second.
        let wait = if f.rescan_soon {
            // The record in flight was finished before the walk found the
            // one after it: the next scan sees it.
            Duration::from_millis(20)
        } else if f.watched.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        match rx.recv_timeout(wait) {
            Ok(Wake::Stop) => return Ok(0),
            Ok(Wake::Fs) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
        }
        // Coalesce a burst of events (COMMIT.tmp write + rename, segment
        // creation) into one rescan.
        while let Ok(w) = rx.try_recv() {
            if let Wake::Stop = w {
                return Ok(0);
            }
        }
    }
}
