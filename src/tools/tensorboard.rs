//! `epochwal tensorboard DIR|URL -o OUTDIR`: the curves of a log, written as
//! TensorBoard event files from its record headers (no payload is read),
//! the same curves a daemon with `[tensorboard]` writes, for a run that
//! had none. Run again later, it adds only the records that are new since
//! (never a step at or below one already in OUTDIR).

use std::path::PathBuf;

use anyhow::Context;

use super::UsageError;
use crate::observe::tensorboard::{newest_log_headers, EventWriter};
use crate::replicate::{block_on, Cause};
use crate::wal::RecordHeader;

/// Arguments of `epochwal tensorboard`.
#[derive(clap::Args, Debug)]
pub struct TensorboardArgs {
    /// The log directory, or the URL of a remote copy
    /// (`s3://bucket/prefix`, `file:///path`).
    pub dir: PathBuf,
    /// Directory for the event files (created if missing); point
    /// `tensorboard --logdir` at it.
    #[arg(short = 'o', long = "output", value_name = "OUTDIR")]
    pub output: PathBuf,
}

/// The headers of the records of a remote copy (one range read each).
fn remote_headers(args: &TensorboardArgs) -> anyhow::Result<Vec<RecordHeader>> {
    let remote = super::remote::open(&args.dir)?;
    // Without a valid pointer: the log a listing finds (warned).
    let log_id = super::remote::source(&remote)?.log_id;
    block_on(async {
        let (records, _) = remote.list_records(log_id).await?;
        let mut out = Vec::new();
        for obj in &records {
            match remote.fetch_header(&obj.path).await {
                Ok(h) => out.push(h),
                // Deleted by retention between the listing and the read.
                Err(e) if e.cause == Cause::NotFound => {}
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Ok(out)
    })?
}

pub(crate) fn run(args: &TensorboardArgs) -> anyhow::Result<i32> {
    let headers = if super::is_url(&args.dir) {
        remote_headers(args)?
    } else {
        let reader = super::open_reader(&args.dir)?;
        if let (Ok(a), Ok(b)) = (
            std::fs::canonicalize(&args.dir),
            std::fs::canonicalize(&args.output),
        ) {
            if a == b {
                return Err(UsageError(format!(
                    "{}: -o must not be the log directory (readers never write there); \
                     choose another directory",
                    args.output.display()
                ))
                .into());
            }
        }
        let scan = reader
            .scan()
            .with_context(|| format!("{}: reading the record headers", args.dir.display()))?;
        newest_log_headers(&scan)
    };
    if headers.is_empty() {
        anyhow::bail!("{}: the log holds no record", args.dir.display());
    }
    let mut w = EventWriter::open(&args.output)
        .with_context(|| format!("{}: cannot write event files there", args.output.display()))?;
    let before = w.last_step();
    let written = w
        .write_headers(&headers)
        .with_context(|| format!("{}: writing the event file", w.path().display()))?;
    let steps = |h: &[RecordHeader]| {
        let lo = h.iter().map(|h| h.step).min().unwrap_or(0);
        let hi = h.iter().map(|h| h.step).max().unwrap_or(0);
        format!("{lo}..={hi}")
    };
    match before {
        Some(s) => println!(
            "{written} of {} records (steps {}) written to {}; {} already had points up to step {s}",
            headers.len(),
            steps(&headers),
            w.path().display(),
            args.output.display()
        ),
        None => println!(
            "{written} records (steps {}) written to {}",
            steps(&headers),
            w.path().display()
        ),
    }
    if written == 0 {
        // Nothing new: leave no file holding only the version event.
        let _ = std::fs::remove_file(w.path());
    }
    Ok(0)
}
