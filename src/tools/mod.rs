//! Operator commands: `tail`, `inspect`, `verify`, `export`, and
//! `check-config` (which reads a configuration file, not a log).
//!
//! Every command here is a *reader*: it never takes the writer's lock, never
//! creates or modifies a file in the log directory (so it works on a
//! read-only directory and next to a running writer) and looks at records
//! only through [`LogReader::scan`] (headers) and [`LogReader::load`]
//! (validated, zero-copy payloads). No command deserializes a record.
//!
//! Exit codes: 0 success; 1 an error (damage found by `verify`, no log in
//! the directory or no such directory, a record that cannot be found or
//! read, an output that cannot or must not be written); 2 a usage error (bad
//! flags, or a path that can never be a log directory: a file, a path under
//! a file, a name that is too long).
//!
//! A closed output pipe (`epochwal tail -f DIR | head -n 2`) ends any command
//! quietly with exit code 0.

mod check_config;
mod export;
pub mod general;
mod import;
mod inspect;
mod job;
mod remote;
mod tail;
mod tensorboard;
mod verify;

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::wal::{recover_settled, LogReader, MappedRecord, RecordHeader, WalError};

pub use check_config::CheckConfigArgs;
pub use export::{
    param_groups_json, OptimizerLayout, WeightTensor, NORM_PREFIXES, OPTIMIZER_PREFIX,
    OPTIMIZER_SUFFIX_EXP_AVG, OPTIMIZER_SUFFIX_EXP_AVG_SQ, OPTIMIZER_SUFFIX_STEP, PARAM_GROUPS_KEY,
};
pub use import::{hex as sha256_hex, read_import, AdamEntry, ImportFile, ParamKey};
pub use remote::{is_url, PullArgs, RemoteItem, RemoteReport};
pub use verify::{check as verify_log, Choice, Item, Report as VerifyReport};

/// The operator subcommands (flattened into the `epochwal` command line).
#[derive(clap::Subcommand, Debug)]
pub enum ToolCommand {
    /// Print the last records of a log (headers only), optionally following it.
    Tail(tail::TailArgs),
    /// Show one record: header, model, optimizer and a table of its tensors.
    Inspect(inspect::InspectArgs),
    /// Check every record of every segment; exit 0 when clean, 1 on damage.
    Verify(verify::VerifyArgs),
    /// Write one record's model (and optionally Adam state) as .safetensors.
    Export(export::ExportArgs),
    /// Check a configuration file; exit 0 when valid, 1 naming the bad key.
    CheckConfig(check_config::CheckConfigArgs),
    /// Restore the newest valid record of a remote copy into a local
    /// directory, without training.
    Pull(remote::PullArgs),
    /// Write a log's loss curves as TensorBoard event files (from the
    /// record headers).
    Tensorboard(tensorboard::TensorboardArgs),
}

/// Runs a tool; returns the process exit code.
pub fn run(cmd: ToolCommand) -> anyhow::Result<i32> {
    let result = match cmd {
        ToolCommand::Tail(args) => tail::run(&args),
        ToolCommand::Inspect(args) => inspect::run(&args),
        ToolCommand::Verify(args) => verify::run(&args),
        ToolCommand::Export(args) => export::run(&args),
        ToolCommand::CheckConfig(args) => check_config::run(&args),
        ToolCommand::Pull(args) => remote::pull(&args),
        ToolCommand::Tensorboard(args) => tensorboard::run(&args),
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) if is_broken_pipe(&e) => Ok(0),
        Err(e) => match e.downcast_ref::<UsageError>() {
            Some(usage) => {
                eprintln!("epochwal: error: {usage}");
                Ok(2)
            }
            None => Err(e),
        },
    }
}

/// A usage error: the command exits with code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// True if the error is (caused by) a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// What a path given as a log directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DirState {
    /// An existing directory.
    Dir,
    /// Nothing there yet, but a directory could be created there.
    Missing,
    /// It can never be a log directory (the reason): a file, a path under a
    /// file, a name that is too long.
    Impossible(String),
}

/// How long a tool waits before scanning a log again when the newest
/// segment's walk met a bad header, which next to a running writer is a
/// record being written (see [`LogReader::scan_settled`]).
pub(crate) const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Longest file name component and path Linux accepts (NAME_MAX, PATH_MAX).
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Classifies `dir` without creating anything.
pub(crate) fn dir_state(dir: &Path) -> io::Result<DirState> {
    use std::os::unix::ffi::OsStrExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(DirState::Dir),
        Ok(m) => {
            return Ok(DirState::Impossible(format!(
                "is {}, not a directory",
                kind_of(&m)
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
            return Ok(DirState::Impossible("the name is too long".into()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if dir.as_os_str().len() > PATH_MAX {
        return Ok(DirState::Impossible(format!(
            "the path is longer than {PATH_MAX} bytes"
        )));
    }
    if let Some(c) = dir
        .components()
        .find(|c| c.as_os_str().as_bytes().len() > NAME_MAX)
    {
        return Ok(DirState::Impossible(format!(
            "the name {}... is longer than {NAME_MAX} bytes",
            String::from_utf8_lossy(&c.as_os_str().as_bytes()[..24])
        )));
    }
    // The nearest existing ancestor decides whether it can appear.
    for a in dir.ancestors().skip(1) {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => return Ok(DirState::Missing),
            Ok(m) => {
                return Ok(DirState::Impossible(format!(
                    "{} is {}, so no directory can appear under it",
                    a.display(),
                    kind_of(&m)
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(DirState::Missing)
}

/// Opens `dir` for reading. A path that can never be a directory is a
/// [`UsageError`] (exit 2); a missing directory is an error (exit 1).
fn open_reader(dir: &Path) -> anyhow::Result<LogReader> {
    let state = dir_state(dir)
        .with_context(|| format!("{}: cannot open the log directory", dir.display()))?;
    match state {
        DirState::Dir => {}
        DirState::Missing => {
            anyhow::bail!("no epochwal log in {}: no such directory", dir.display())
        }
        DirState::Impossible(why) => {
            return Err(UsageError(format!(
                "{}: {why}; give the directory of a log",
                dir.display()
            ))
            .into())
        }
    }
    match LogReader::open(dir) {
        Ok(r) => Ok(r),
        Err(WalError::NotFound { path, what }) => {
            anyhow::bail!("no epochwal log in {}: {what}", path.display())
        }
        Err(e) => Err(e.into()),
    }
}

/// [`select_record`] for a command's `DIR` argument, which may also be the
/// URL of a remote copy.
pub fn select_source(dir: &Path, sel: Selection) -> anyhow::Result<Selected> {
    if is_url(dir) {
        return remote::select(dir, sel);
    }
    select_record(&open_reader(dir)?, sel)
}

/// Which record a command should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The newest record that validates (what recovery would resume from).
    Newest,
    /// The record with this sequence number.
    Sequence(u64),
    /// The newest valid record whose epoch is this.
    Epoch(u64),
    /// The valid record with the lowest validation loss (ties: the older).
    Best,
}

impl Selection {
    /// From the `--seq` / `--epoch` / `--best` flags (clap makes them
    /// exclusive).
    pub fn from_flags(seq: Option<u64>, epoch: Option<u64>, best: bool) -> Selection {
        match (seq, epoch, best) {
            (Some(s), _, _) => Selection::Sequence(s),
            (None, Some(e), _) => Selection::Epoch(e),
            (None, None, true) => Selection::Best,
            (None, None, false) => Selection::Newest,
        }
    }
}

/// A record chosen by [`select_record`], with the damage passed over on the
/// way (for a note on stderr).
#[derive(Debug)]
pub struct Selected {
    /// The validated record.
    pub record: MappedRecord,
    /// Damaged records or files that were skipped to reach it.
    pub skipped: Vec<String>,
}

/// Finds the record `sel` names in `reader`'s directory and validates it
/// (checksum, rkyv, schema). Used by both `inspect` and `export`.
///
/// - [`Selection::Newest`] is exactly the record [`recover`] picks;
/// - [`Selection::Sequence`] is an error if that record is absent or damaged;
/// - [`Selection::Epoch`] takes the newest record of that epoch that
///   validates, and is an error if there is none;
/// - [`Selection::Best`] takes the record with the lowest validation loss in
///   its header that validates (a damaged one is passed over), and is an
///   error if no record has validation figures.
pub fn select_record(reader: &LogReader, sel: Selection) -> anyhow::Result<Selected> {
    let dir = reader.dir();
    match sel {
        Selection::Newest => {
            let rec = recover_settled(dir, SETTLE)?;
            let skipped = rec.skipped.iter().map(|s| s.to_string()).collect();
            match rec.record {
                Some(record) => Ok(Selected { record, skipped }),
                None => anyhow::bail!(
                    "{}: the log holds no intact record{}",
                    dir.display(),
                    if rec.skipped.is_empty() {
                        String::new()
                    } else {
                        let shown: Vec<String> =
                            rec.skipped.iter().take(3).map(|s| s.to_string()).collect();
                        format!(
                            "; passed over {} damaged item(s): {}{} (run `epochwal verify`)",
                            rec.skipped.len(),
                            shown.join("; "),
                            if rec.skipped.len() > 3 { "; ..." } else { "" }
                        )
                    }
                ),
            }
        }
        Selection::Sequence(seq) => {
            let scan = reader.scan_settled(SETTLE)?;
            let found = scan.segments.iter().find_map(|s| {
                s.records
                    .iter()
                    .find(|r| r.sequence == seq)
                    .map(|r| (s.path.clone(), *r))
            });
            let Some((path, header)) = found else {
                anyhow::bail!(
                    "{}: no record with sequence {seq} (the log holds {})",
                    dir.display(),
                    describe_range(scan.segments.iter().flat_map(|s| s.records.iter()))
                );
            };
            let record = reader.load(&path, &header).map_err(|e| {
                let what = if matches!(e, WalError::Unreadable { .. }) {
                    "cannot be read"
                } else {
                    "is damaged"
                };
                anyhow::Error::new(e).context(format!(
                    "record with sequence {seq} (epoch {}) in {} {what}",
                    header.epoch,
                    path.display()
                ))
            })?;
            Ok(Selected {
                record,
                skipped: Vec::new(),
            })
        }
        Selection::Best => {
            let scan = reader.scan_settled(SETTLE)?;
            let mut candidates: Vec<(PathBuf, RecordHeader, f32)> = scan
                .segments
                .iter()
                .flat_map(|s| s.records.iter().map(move |r| (s.path.clone(), *r)))
                .filter_map(|(p, r)| r.validation_loss().map(|l| (p, r, l)))
                .collect();
            if candidates.is_empty() {
                anyhow::bail!(
                    "{}: no record has a validation loss ({}); records get one at the end of an \
                     epoch when validation_fraction > 0",
                    dir.display(),
                    describe_range(scan.segments.iter().flat_map(|s| s.records.iter()))
                );
            }
            candidates.sort_by(|a, b| {
                crate::wal::format::best_first((a.2, a.1.sequence), (b.2, b.1.sequence))
            });
            let mut skipped = Vec::new();
            for (path, header, _) in candidates {
                match reader.load(&path, &header) {
                    Ok(record) => return Ok(Selected { record, skipped }),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            anyhow::bail!(
                "{}: every record with a validation loss is damaged: {}",
                dir.display(),
                skipped.join("; ")
            )
        }
        Selection::Epoch(epoch) => {
            let scan = reader.scan_settled(SETTLE)?;
            let mut candidates: Vec<(PathBuf, RecordHeader)> = scan
                .segments
                .iter()
                .flat_map(|s| s.records.iter().map(move |r| (s.path.clone(), *r)))
                .filter(|(_, r)| r.epoch == epoch)
                .collect();
            if candidates.is_empty() {
                let mut epochs: Vec<u64> = scan
                    .segments
                    .iter()
                    .flat_map(|s| s.records.iter().map(|r| r.epoch))
                    .collect();
                epochs.sort_unstable();
                epochs.dedup();
                anyhow::bail!(
                    "{}: no record of epoch {epoch} (epochs present: {})",
                    dir.display(),
                    if epochs.is_empty() {
                        "none".to_string()
                    } else {
                        compress_ranges(&epochs)
                    }
                );
            }
            candidates.sort_by_key(|(_, r)| std::cmp::Reverse(r.sequence));
            let mut skipped = Vec::new();
            for (path, header) in candidates {
                match reader.load(&path, &header) {
                    Ok(record) => return Ok(Selected { record, skipped }),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            anyhow::bail!(
                "{}: every record of epoch {epoch} is damaged: {}",
                dir.display(),
                skipped.join("; ")
            )
        }
    }
}

fn describe_seqs(mut seqs: Vec<u64>) -> String {
    if seqs.is_empty() {
        return "no records".into();
    }
    seqs.sort_unstable();
    seqs.dedup();
    format!("sequences {}", compress_ranges(&seqs))
}

fn describe_range<'a>(records: impl Iterator<Item = &'a RecordHeader>) -> String {
    let mut seqs: Vec<u64> = records.map(|r| r.sequence).collect();
    if seqs.is_empty() {
        return "no records".into();
    }
    seqs.sort_unstable();
    format!("sequences {}", compress_ranges(&seqs))
}

/// `[1,2,3,5,7,8]` → `1-3, 5, 7-8` (input sorted and deduplicated).
fn compress_ranges(v: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// Formats ns since the Unix epoch as UTC ISO-8601 with milliseconds,
/// e.g. `2023-11-14T22:13:20.000Z`.
pub fn format_unix_ns(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of `days` days after 1970-01-01 (the well-known
/// era/day-of-era decomposition: 400-year eras of 146097 days, with years
/// counted from March so that the leap day is last).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// What kind of file `path` is (`a character device`, ...), for messages.
pub(crate) fn describe_kind(m: &std::fs::Metadata) -> &'static str {
    kind_of(m)
}

/// The file name of a path as text (the whole path if it has none).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Summary statistics of an f32 tensor.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TensorStats {
    /// Smallest finite-or-infinite value (NaNs ignored; NaN if all are NaN or
    /// the tensor is empty).
    pub min: f32,
    /// Largest value (NaNs ignored).
    pub max: f32,
    /// Arithmetic mean, accumulated in f64.
    pub mean: f64,
    /// Euclidean norm, accumulated in f64.
    pub l2_norm: f64,
    /// Number of NaN or infinite values.
    pub non_finite: u64,
}

impl TensorStats {
    /// Computes the statistics of `v` in one pass.
    pub fn of(v: &[f32]) -> TensorStats {
        let mut min = f32::NAN;
        let mut max = f32::NAN;
        let mut sum = 0.0f64;
        let mut sq = 0.0f64;
        let mut non_finite = 0u64;
        for &x in v {
            min = min.min(x);
            max = max.max(x);
            let x64 = f64::from(x);
            sum += x64;
            sq += x64 * x64;
            if !x.is_finite() {
                non_finite += 1;
            }
        }
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            sum / v.len() as f64
        };
        TensorStats {
            min,
            max,
            mean,
            l2_norm: sq.sqrt(),
            non_finite,
        }
    }
}

/// The bytes of an `f32` slice, little-endian (the only byte order epochwal
/// supports; `state.rs` refuses to compile elsewhere), without copying.
pub fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: `u8` has alignment 1 and every byte of an f32 is initialized, so
    // any `[f32]` may be viewed as `size_of_val(v)` bytes; the borrow keeps
    // the same lifetime as `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_ns(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123Z"
        );
        // A leap day and the turn of a century that is a leap year.
        assert_eq!(
            format_unix_ns(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_unix_ns(4_107_542_399 * 1_000_000_000),
            "2100-02-28T23:59:59.000Z"
        );
        assert_eq!(
            format_unix_ns(4_107_542_400 * 1_000_000_000),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn stats_of_a_small_tensor() {
        let s = TensorStats::of(&[1.0, -2.0, 3.0, f32::NAN]);
        assert_eq!((s.min, s.max, s.non_finite), (-2.0, 3.0, 1));
        let s = TensorStats::of(&[3.0, 4.0]);
        assert_eq!((s.mean, s.l2_norm), (3.5, 5.0));
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(compress_ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
