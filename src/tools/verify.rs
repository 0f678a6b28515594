//! `epochwal verify DIR [--json]`: checks every record of every segment and
//! reports what is damaged, where, and which record recovery would choose.
//!
//! Checked: each segment header (magic, checksum, version, number, size),
//! each record header (checksum, framing, offsets, order within a segment),
//! each payload (checksum, rkyv validation, schema version, agreement with
//! its header) through [`LogReader::load`] on every header [`LogReader::scan`]
//! found, sequence order across segments, and segments of another log.
//! Reported but not counted as damage: gaps in segment numbers (retention with
//! `keep_every_epochs` deletes middle segments) and files that are not
//! segments. Reported apart from damage: I/O errors (bytes that could not be
//! read are not known to be damaged; the check is incomplete there).
//!
//! Exit code: 0 clean, 1 damage found, 2 usage error (including a log
//! directory that does not exist), 3 I/O errors (whether or not damage was
//! found too).

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{file_name, format_unix_ns, human_bytes, open_reader};
use crate::wal::{SegmentScan, WalError};

/// Payload volume above which a progress bar is shown (on a terminal only).
const PROGRESS_THRESHOLD: u64 = 256 << 20;

/// Arguments of `epochwal verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The log directory, or the URL of a remote copy
    /// (`s3://bucket/prefix`, `file:///path`).
    pub dir: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One finding: a file, an offset in it (0 for whole-file findings), why.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The file concerned.
    pub file: String,
    /// Byte offset in it (0 for whole-file findings).
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl Item {
    fn new(file: &Path, offset: u64, reason: impl Into<String>) -> Item {
        Item {
            file: file.display().to_string(),
            offset,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.file, self.offset, self.reason
        )
    }
}

/// The record recovery would resume from.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub sequence: u64,
    pub epoch: u64,
    pub step: u64,
    pub segment: String,
    pub offset: u64,
    pub time: String,
}

/// What `epochwal verify` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dir: String,
    /// No damage and no I/O error found (warnings and notes do not count).
    pub clean: bool,
    pub segments: usize,
    pub records_good: u64,
    pub records_damaged: u64,
    /// Records whose payload could not be read (I/O error).
    pub records_unreadable: u64,
    pub payload_bytes_checked: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    pub damage: Vec<Item>,
    /// Reads that failed: what lies there is unknown, not known damaged.
    pub io_errors: Vec<Item>,
    pub warnings: Vec<Item>,
    pub notes: Vec<Item>,
    /// Records of a schema version this binary does not read (written by a
    /// newer epochwal): not damage, but recovery refuses to start on them.
    pub unsupported: Vec<Item>,
    /// What `recover` picks; `None` if no record is intact.
    pub recovery: Option<Choice>,
    /// Why recovery would refuse to start, when it would.
    pub recovery_refused: Option<String>,
    /// How many items recovery passed over to reach its choice.
    pub recovery_skipped: usize,
}

/// Runs `epochwal verify`.
pub fn run(args: &VerifyArgs) -> anyhow::Result<i32> {
    if super::is_url(&args.dir) {
        return super::remote::verify(&args.dir, args.json);
    }
    if crate::job::is_job_dir(&args.dir) {
        return super::job::verify(&args.dir, args.json);
    }
    let report = check_settled(&args.dir, super::SETTLE)?;
    if report.segments == 0 {
        // Saying "clean" here would let an operator believe a wrong or
        // empty directory holds a healthy log.
        anyhow::bail!(
            "no epochwal log in {}: it holds no segment file ({} other file(s))",
            args.dir.display(),
            report.notes.len()
        );
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
    } else {
        write_text(&mut out, &report).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(if !report.io_errors.is_empty() {
        3
    } else if report.clean {
        0
    } else {
        1
    })
}

/// Checks every record of every segment of the log in `dir` and says which
/// record recovery would choose. Reads only; takes no lock.
pub fn check(dir: &Path) -> anyhow::Result<Report> {
    check_settled(dir, std::time::Duration::ZERO)
}

/// [`check`], but when the newest segment's walk met a damaged header
/// (perhaps a header page a running writer is writing right now, or one it
/// overtook) it waits `settle` and looks again before calling it damage.
fn check_settled(dir: &Path, settle: std::time::Duration) -> anyhow::Result<Report> {
    let reader = open_reader(dir)?;
    // Read before the scan: the record it names was durable before the scan
    // began, so a writer appending meanwhile cannot make it look lost.
    let commit = crate::wal::format::CommitNote::read(dir);
    let scan = reader.scan_settled(settle)?;
    let mut report = Report {
        dir: dir.display().to_string(),
        clean: true,
        segments: scan.segments.len(),
        records_good: 0,
        records_damaged: 0,
        records_unreadable: 0,
        payload_bytes_checked: 0,
        first_sequence: None,
        last_sequence: None,
        damage: Vec::new(),
        io_errors: Vec::new(),
        warnings: Vec::new(),
        notes: scan
            .others
            .iter()
            .map(|s| Item::new(&s.file, s.offset, s.reason.clone()))
            .collect(),
        unsupported: Vec::new(),
        recovery: None,
        recovery_refused: None,
        recovery_skipped: 0,
    };

    // Whose log this is, by recovery's rule (FORMAT.md §5.2): the newest
    // segment holding a record header decides, else the newest valid one.
    // Segments of another log are damage, their records unchecked.
    let newest_with = |need_records: bool| {
        scan.segments
            .iter()
            .rev()
            .filter(|s| !need_records || !s.records.is_empty())
            .find_map(|s| s.log_id)
    };
    let log_id = newest_with(true).or_else(|| newest_with(false));
    let ours: Vec<&SegmentScan> = scan
        .segments
        .iter()
        .filter(|s| match s.log_id {
            Some(id) if Some(id) != log_id => {
                report.damage.push(Item::new(
                    &s.path,
                    0,
                    format!(
                        "segment belongs to another log (id {:032x}, this log is {:032x}); its {} record(s) were not checked",
                        id,
                        log_id.unwrap_or_default(),
                        s.records.len()
                    ),
                ));
                for p in &s.problems {
                    let list = if p.unreadable { &mut report.io_errors } else { &mut report.damage };
                    list.push(Item::new(&p.file, p.offset, p.reason.clone()));
                }
                false
            }
            _ => true,
        })
        .collect();

    // Header-level damage (the scan has already looked past a damaged header
    // for the records behind it, and says how many it found) and read errors.
    for seg in &ours {
        if !seg.problems.is_empty() && !seg.path.exists() {
            report.notes.push(Item::new(
                &seg.path,
                0,
                "the segment was deleted during verification (retention of a running writer)",
            ));
            continue;
        }
        for p in &seg.problems {
            let list = if p.unreadable {
                &mut report.io_errors
            } else {
                &mut report.damage
            };
            list.push(Item::new(&p.file, p.offset, p.reason.clone()));
        }
    }

    // Sequence order across segments, and gaps in segment numbers.
    let mut prev: Option<(u64, &Path)> = None;
    for seg in &ours {
        if let (Some(first), Some((last, prev_path))) = (seg.records.first(), prev) {
            if first.sequence <= last {
                report.damage.push(Item::new(
                    &seg.path,
                    first.offset,
                    format!(
                        "sequence {} does not follow sequence {last} of the earlier segment {}",
                        first.sequence,
                        file_name(prev_path)
                    ),
                ));
            }
        }
        if let Some(last) = seg.records.last() {
            prev = Some((last.sequence, &seg.path));
        }
    }
    for pair in scan.segments.windows(2) {
        let (a, b) = (pair[0].segment_no, pair[1].segment_no);
        if b > a + 1 {
            report.warnings.push(Item::new(
                &pair[1].path,
                0,
                if b == a + 2 {
                    format!("segment {} is missing (deleted by retention?)", a + 1)
                } else {
                    format!(
                        "segments {}..={} are missing (deleted by retention?)",
                        a + 1,
                        b - 1
                    )
                },
            ));
        }
    }

    // Every payload.
    let total: u64 = ours
        .iter()
        .flat_map(|s| s.records.iter())
        .map(|r| r.payload_len)
        .sum();
    let bar = (total > PROGRESS_THRESHOLD && io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "verifying [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    // What recovery would do *in this snapshot*: the last record, in segment
    // and offset order, that is intact (it resumes from it) or written by a
    // newer schema (it refuses to fall back past it); FORMAT.md §5.4–5.
    // Taken from the records checked here rather than from a second look at
    // the directory, which a running writer may have extended in between.
    let mut choice: Option<(&SegmentScan, crate::wal::RecordHeader, Option<String>)> = None;
    for seg in &ours {
        for rec in &seg.records {
            match reader.load(&seg.path, rec) {
                Ok(_mapped) => {
                    choice = Some((seg, *rec, None));
                    report.records_good += 1;
                    report.payload_bytes_checked += rec.payload_len;
                    report.first_sequence = Some(
                        report
                            .first_sequence
                            .map_or(rec.sequence, |s| s.min(rec.sequence)),
                    );
                    report.last_sequence = Some(
                        report
                            .last_sequence
                            .map_or(rec.sequence, |s| s.max(rec.sequence)),
                    );
                }
                Err(WalError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && !seg.path.exists() =>
                {
                    report.notes.push(Item::new(
                        &seg.path,
                        rec.offset,
                        format!(
                            "record {}: the segment was deleted during verification (retention of a running writer)",
                            rec.sequence
                        ),
                    ));
                }
                Err(e @ WalError::UnsupportedSchema { .. }) => {
                    choice = Some((seg, *rec, Some(e.to_string())));
                    report.unsupported.push(Item::new(
                        &seg.path,
                        rec.offset,
                        unsupported_reason(&e),
                    ));
                }
                Err(e @ (WalError::Unreadable { .. } | WalError::Io { .. })) => {
                    report.records_unreadable += 1;
                    report.io_errors.push(Item::new(
                        &seg.path,
                        rec.offset,
                        format!(
                            "record {} (epoch {}) cannot be read: {e}",
                            rec.sequence, rec.epoch
                        ),
                    ));
                }
                Err(e) => {
                    report.records_damaged += 1;
                    let reason = match e {
                        WalError::Damaged { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    report.damage.push(Item::new(
                        &seg.path,
                        rec.offset,
                        format!("record {} (epoch {}): {reason}", rec.sequence, rec.epoch),
                    ));
                }
            }
            if let Some(bar) = &bar {
                bar.inc(rec.payload_len);
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // Recovery does not guess past a header it cannot read: a read failure
    // in the segment of its choice, or in a newer one, makes it refuse.
    if let Some(bad) = ours.iter().rev().find(|s| {
        s.read_failure.is_some()
            && choice
                .as_ref()
                .is_none_or(|(c, _, _)| s.segment_no >= c.segment_no)
    }) {
        let f = bad.read_failure.as_ref().expect("just checked");
        report.io_errors.push(Item::new(
            &bad.path,
            f.offset,
            format!(
                "recovery would refuse to start: {} failed here, and it does not guess past bytes it cannot read",
                f.what
            ),
        ));
        choice = None;
    }

    // What recovery would do, and what it would pass over on the way.
    if let Some((seg, h, refused)) = choice {
        report.recovery_skipped = report
            .damage
            .iter()
            .filter(|d| {
                let no = Path::new(&d.file)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(crate::wal::format::parse_segment_file_name);
                no.is_some_and(|n| {
                    n > seg.segment_no || (n == seg.segment_no && d.offset > h.offset)
                })
            })
            .count();
        match refused {
            Some(why) => report.recovery_refused = Some(why),
            None => {
                report.recovery = Some(Choice {
                    sequence: h.sequence,
                    epoch: h.epoch,
                    step: h.step,
                    segment: seg.path.display().to_string(),
                    offset: h.offset,
                    time: format_unix_ns(h.unix_ns),
                })
            }
        }
    }
    // A record that was durable (COMMIT names it) but is no longer the
    // newest intact one, while its segment is still here: damage, although
    // the bytes left look like a crash before its header (FORMAT.md §2).
    // Not said where a read failed: what lies there is unknown.
    if report.recovery_refused.is_none() && scan.segments.iter().all(|s| s.read_failure.is_none()) {
        let newest = report.recovery.as_ref().map(|c| c.sequence);
        let highest = scan
            .segments
            .iter()
            .map(|s| s.highest_sequence)
            .max()
            .unwrap_or(0);
        if let Some(lost) = commit.and_then(|c| c.lost(dir, newest, highest).map(|l| (c, l))) {
            let (c, reason) = lost;
            report.damage.push(Item::new(
                &dir.join(crate::wal::format::segment_file_name(c.segment_no)),
                c.offset,
                reason,
            ));
        }
    }
    report.clean =
        report.damage.is_empty() && report.unsupported.is_empty() && report.io_errors.is_empty();
    for list in [&mut report.damage, &mut report.io_errors] {
        list.sort_by(|a, b| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
        list.dedup_by(|a, b| a.file == b.file && a.offset == b.offset && a.reason == b.reason);
    }
    Ok(report)
}

/// The message of an [`WalError::UnsupportedSchema`] without the path and
/// offset (the item carries those).
fn unsupported_reason(e: &WalError) -> String {
    match e {
        WalError::UnsupportedSchema {
            sequence, found, ..
        } => format!(
            "record {sequence}: {}",
            crate::state::unsupported_message(*found)
        ),
        other => other.to_string(),
    }
}

fn write_text(w: &mut impl Write, r: &Report) -> io::Result<()> {
    writeln!(w, "log          {}", r.dir)?;
    writeln!(w, "segments     {}", r.segments)?;
    let range = match (r.first_sequence, r.last_sequence) {
        (Some(a), Some(b)) => format!(", sequences {a}..={b}"),
        _ => String::new(),
    };
    writeln!(
        w,
        "records      {} good, {} damaged{} ({} of payload checked{range})",
        r.records_good,
        r.records_damaged,
        if r.records_unreadable > 0 {
            format!(", {} unreadable", r.records_unreadable)
        } else {
            String::new()
        },
        human_bytes(r.payload_bytes_checked)
    )?;
    for d in &r.damage {
        writeln!(w, "DAMAGE       {d}")?;
    }
    for d in &r.unsupported {
        writeln!(w, "UNREADABLE   {d}")?;
    }
    for d in &r.io_errors {
        writeln!(w, "IO ERROR     {d}")?;
    }
    for d in &r.warnings {
        writeln!(w, "warning      {d}")?;
    }
    for d in &r.notes {
        writeln!(w, "note         {d}")?;
    }
    match &r.recovery {
        _ if r.recovery_refused.is_some() => writeln!(
            w,
            "recovery     refused: {}",
            r.recovery_refused.as_deref().unwrap_or_default()
        )?,
        Some(c) => writeln!(
            w,
            "recovery     would resume from sequence {} (epoch {}, step {}, {}) in {} at offset {}{}",
            c.sequence,
            c.epoch,
            c.step,
            c.time,
            c.segment,
            c.offset,
            if r.recovery_skipped > 0 {
                format!(", passing over {} item(s)", r.recovery_skipped)
            } else {
                String::new()
            }
        )?,
        None => writeln!(
            w,
            "recovery     no intact record: a writer would start training from scratch"
        )?,
    }
    if r.clean {
        writeln!(w, "result       clean")
    } else if !r.io_errors.is_empty() {
        writeln!(
            w,
            "result       IO ERRORS ({} I/O error(s), {} damage problem(s)); the check is incomplete where reads failed",
            r.io_errors.len(),
            r.damage.len()
        )
    } else if r.damage.is_empty() {
        writeln!(
            w,
            "result       UNREADABLE by this epochwal ({} record(s) of a schema version it does not read)",
            r.unsupported.len()
        )
    } else {
        writeln!(w, "result       DAMAGED ({} problem(s))", r.damage.len())
    }
}
