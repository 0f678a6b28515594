//! `[replicate]` in the daemon: contact and restore before the log opens,
//! the uploader while training, the remote part of the status, and the last
//! upload at shutdown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tracing::{error, info, warn};

use super::{Notify, Refused};
use crate::config::{Config, ReplicateConfig};
use crate::replicate::{
    restore_into, write_remote_file, Cause, Head, PointerAtStart, Progress, Remote, RestoreError,
    Restored, Uploader, UploaderOptions,
};
use crate::wal::{Durable, RecordHeader};

/// Longest the first contact with the remote may take at start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The remote after the start-up contact.
pub(crate) struct Prepared {
    remote: Remote,
    pointer: PointerAtStart,
}

/// Contacts the remote and, when the local directory holds no record (or an
/// older one of the same log), restores the newest valid remote record into
/// it. Errors when the remote cannot be used and `required` is set, or when
/// the directory holds another log than the remote. `None`: replication is
/// off for this run (`required = false` and an error retrying cannot heal,
/// said loudly).
pub(crate) fn prepare(
    cfg: &ReplicateConfig,
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<Prepared>> {
    // Ok(true): go on without the start-up contact (uploads retry);
    // Ok(false): replication is off for this run.
    let unusable = |e: String, permanent: bool| -> anyhow::Result<bool> {
        if cfg.required {
            if permanent {
                bail!(
                    "replication: {e}\n  training did not start because [replicate] required = true \
                     (the default); retrying cannot fix this: correct the setting, the credentials \
                     or the bucket, then start again"
                );
            }
            bail!(
                "replication: {e}\n  training did not start because [replicate] required = true \
                 (the default); fix the remote, or set required = false to train locally \
                 while uploads retry"
            );
        }
        if !local_has_records(&config.data_dir)? {
            // A fresh run here would take a new log id: if the remote holds
            // this run (a replacement machine), the run would fork, and the
            // new log could never replicate to this prefix.
            bail!(
                "replication: {e}\n  training did not start: {} holds no checkpoint, and the \
                 remote could not be consulted, so a fresh run could fork a run the remote \
                 holds (required = false trains locally only when there is a local checkpoint \
                 to resume). Retry when the remote answers (the service restarts), or start \
                 a new run deliberately without [replicate] first",
                config.data_dir.display()
            );
        }
        if permanent {
            error!(url = %cfg.url, error = %e, "REPLICATION OFF for this run: retrying cannot fix this error (required = false): training locally WITHOUT any remote copy; correct it and restart");
            return Ok(false);
        }
        error!(url = %cfg.url, error = %e, "REPLICATION UNAVAILABLE at start: training locally; uploads retry in the background (required = false)");
        Ok(true)
    };
    let remote = match Remote::open(&cfg.url, cfg.allow_http) {
        Ok(r) => r,
        Err(e) if e.cause == Cause::HttpNotAllowed => {
            unusable(e.to_string(), true)?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let probe = runtime.block_on(async {
        match tokio::time::timeout(PROBE_TIMEOUT, remote.probe()).await {
            Ok(r) => r.map_err(|e| (e.to_string(), e.cause.is_permanent())),
            Err(_) => Err((
                format!(
                    "{}: no answer within {} s",
                    cfg.url,
                    PROBE_TIMEOUT.as_secs()
                ),
                false,
            )),
        }
    });
    let head = match probe {
        Ok(p) => p,
        Err((e, permanent)) => {
            if !unusable(e, permanent)? {
                return Ok(None);
            }
            return Ok(Some(Prepared {
                remote,
                pointer: PointerAtStart::Unread,
            }));
        }
    };
    match &head {
        Head::Valid(p) => {
            info!(url = %cfg.url, log_id = %p.pointer.log_id, seq = p.pointer.sequence, epoch = p.pointer.epoch, "remote copy found")
        }
        Head::Missing => info!(url = %cfg.url, "no pointer object (HEAD) on the remote"),
        Head::Damaged { detail, .. } => {
            error!(pointer = %remote.pointer_url(), reason = %detail, "the remote pointer (HEAD) is DAMAGED")
        }
    }
    let restored = runtime.block_on(restore_into(
        &remote,
        head.clone(),
        &config.data_dir,
        config.log_options(),
    ));
    match restored {
        Ok(Restored::Record {
            header,
            remote_sequence,
            url,
            skipped,
            by_listing,
            dropped,
        }) => {
            for s in &skipped {
                warn!(object = %s.url, reason = %s.detail, "remote record is damaged; using an older one");
            }
            if let Some((problem, others)) = &by_listing {
                warn!(
                    pointer = %remote.pointer_url(),
                    object = %url,
                    remote_seq = remote_sequence,
                    other_logs = %others.join(","),
                    "RESTORING WITHOUT THE POINTER: the pointer (HEAD) is {problem}; restored the newest record object that validates, found by listing the prefix; the pointer is written again after the next upload"
                );
            }
            if !dropped.is_empty() {
                warn!(
                    dir = %config.data_dir.display(),
                    dropped = %describe_dropped(&dropped),
                    remote_seq = remote_sequence,
                    remote_epoch = header.epoch,
                    "the remote copy of this log moved on without these local records (another daemon wrote this prefix): the remote wins, training resumes from its record and the local records listed are no longer part of the run (they stay in the directory until retention removes them)"
                );
            }
            info!(
                seq = header.sequence,
                remote_seq = remote_sequence,
                epoch = header.epoch,
                step = header.step,
                object = %url,
                dir = %config.data_dir.display(),
                "restored from the remote copy"
            );
        }
        Ok(Restored::Renumbered {
            header,
            local_sequence,
            remote_highest,
            skipped,
        }) => {
            for s in &skipped {
                warn!(object = %s.url, reason = %s.detail, "remote record is damaged; the local copy is newer");
            }
            warn!(
                seq = header.sequence,
                local_seq = local_sequence,
                remote_highest,
                epoch = header.epoch,
                dir = %config.data_dir.display(),
                "the remote has used sequences beyond this directory's newest intact record: \
                 copied it as the next sequence, so that no sequence names two records"
            );
        }
        Ok(Restored::RemoteEmpty) => {
            info!(url = %cfg.url, "remote copy is empty (no pointer, no record object)")
        }
        Ok(Restored::UpToDate(_)) => {}
        Err(e @ RestoreError::OtherLog { .. }) => {
            return Err(Refused(format!("replication: {e}")).into())
        }
        Err(e @ RestoreError::WouldLoseUnreadable { .. }) => bail!("replication: {e}"),
        Err(RestoreError::Local(e)) => return Err(e.into()),
        Err(RestoreError::Remote(e))
            if !matches!(head, Head::Valid(_)) && e.cause == Cause::Damaged =>
        {
            // Record objects exist but none validates: never a fresh log
            // beside them, whatever `required` says.
            return Err(Refused(format!(
                "replication: {e}\n  the pointer (HEAD) is missing or damaged and no record object \
                 validates: move the prefix's objects aside (or use another prefix) to start afresh"
            ))
            .into());
        }
        Err(RestoreError::Remote(e)) => {
            if !unusable(e.to_string(), e.cause.is_permanent())? {
                return Ok(None);
            }
            // The remote was read but not understood: the uploader judges
            // the pointer afresh, as when it could not be read at all, so
            // a remote ahead of this directory stops uploads loudly.
            return Ok(Some(Prepared {
                remote,
                pointer: PointerAtStart::Unread,
            }));
        }
    }
    let pointer = match head {
        Head::Valid(p) => PointerAtStart::Read(Some(p)),
        Head::Missing => PointerAtStart::Read(None),
        Head::Damaged { version, .. } => PointerAtStart::Damaged(version),
    };
    Ok(Some(Prepared { remote, pointer }))
}

/// `seq 126 (epoch 126), seq 127 (epoch 127)` for the WARN line.
fn describe_dropped(dropped: &[(u64, u64)]) -> String {
    dropped
        .iter()
        .map(|(s, e)| format!("seq {s} (epoch {e})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `dir` holds a record (intact or not) to resume from, so that a
/// start without the remote is no fresh run.
fn local_has_records(dir: &std::path::Path) -> anyhow::Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    let r = crate::wal::recover(dir)?;
    Ok(r.record.is_some() || r.next_sequence > 1)
}

/// The running replication.
pub(crate) struct Replication {
    uploader: Uploader,
    url: String,
    /// The daemon's own STATUS text; the remote part is appended.
    status_base: Arc<Mutex<String>>,
}

fn remote_options(cfg: &ReplicateConfig, config: &Config) -> UploaderOptions {
    UploaderOptions {
        part_bytes: cfg.part_bytes,
        parallel_parts: 4,
        retry_max: Duration::from_secs(cfg.retry_max_seconds),
        keep_records: cfg.keep_records.unwrap_or(config.checkpoint.keep_records),
        keep_every_epochs: cfg
            .keep_every_epochs
            .unwrap_or(config.checkpoint.keep_every_epochs),
        keep_best: cfg.keep_best.unwrap_or(config.checkpoint.keep_best),
    }
}

impl Replication {
    /// Starts the uploader. `recovered` is the record training resumes
    /// from: uploaded first if the remote does not have it yet.
    pub(crate) fn start(
        prepared: Prepared,
        config: &Config,
        recovered: Option<(RecordHeader, PathBuf)>,
        notify: Notify,
        metrics: Option<Arc<crate::observe::metrics::Metrics>>,
    ) -> anyhow::Result<Replication> {
        let cfg = config
            .replicate
            .as_ref()
            .expect("replication starts only with [replicate]");
        let status_base = Arc::new(Mutex::new(String::from("training")));
        let on_progress = {
            let base = Arc::clone(&status_base);
            let dir = config.data_dir.clone();
            let url = cfg.url.clone();
            Box::new(move |p: &Progress| {
                write_remote_file(&dir, &url, p);
                if let Some(m) = &metrics {
                    m.remote(&super::observing::remote_figures(p));
                }
                let base = base.lock().map(|b| b.clone()).unwrap_or_default();
                notify.send(&format!("STATUS={base}; {}", p.status_text()));
            })
        };
        let url = prepared.remote.url().to_string();
        let uploader = Uploader::start(
            prepared.remote,
            prepared.pointer,
            remote_options(cfg, config),
            on_progress,
            Some(config.data_dir.join(crate::wal::format::UPLOAD_FILE)),
        )?;
        if let Some((header, path)) = recovered {
            uploader.offer(header, path);
        }
        Ok(Replication {
            uploader,
            url,
            status_base,
        })
    }

    /// A record became durable: queue it (never blocks).
    pub(crate) fn offer(&self, d: &Durable) {
        self.uploader.offer(d.header, d.path.clone());
    }

    /// The uploader's progress.
    pub(crate) fn progress(&self) -> Progress {
        self.uploader.progress()
    }

    /// The full STATUS text for the daemon's `base` text (and remembers
    /// `base` for the uploader's own updates).
    pub(crate) fn status(&self, base: &str) -> String {
        if let Ok(mut b) = self.status_base.lock() {
            *b = base.to_string();
        }
        format!("{base}; {}", self.progress().status_text())
    }

    /// At shutdown (SIGTERM, or the last epoch done), after the final local
    /// checkpoint: waits until the remote holds `seq` or `deadline` passes
    /// (never longer: uploads to an unreachable remote retry forever), and
    /// says which happened.
    pub(crate) fn finish(&self, seq: u64, deadline: Instant) -> bool {
        let started = Instant::now();
        if seq > 0 && self.progress().remote_seq < seq {
            info!(
                seq,
                url = %self.url,
                wait_at_most_ms = deadline.saturating_duration_since(started).as_millis() as u64,
                "waiting for the final checkpoint to reach the remote (bounded by shutdown_grace_seconds)"
            );
        }
        let reached = seq == 0 || self.uploader.wait_for(seq, deadline);
        let waited_ms = started.elapsed().as_millis() as u64;
        let p = self.progress();
        if reached {
            info!(seq, url = %self.url, skipped = p.skipped, waited_ms, "the final checkpoint reached the remote");
        } else {
            warn!(
                seq,
                remote_seq = p.remote_seq,
                waited_ms,
                url = %self.url,
                last_error = p.last_error.as_deref().unwrap_or(p.stopped.as_deref().unwrap_or("-")),
                "the final checkpoint did NOT reach the remote within shutdown_grace_seconds; it is durable locally"
            );
        }
        reached
    }
}
