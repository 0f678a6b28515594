//! Restore: the newest remote record that validates, written into a local
//! log directory as a fresh segment.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use super::layout::Pointer;
use super::remote::{Cause, FetchedRecord, Head, PointerState, Remote, RemoteError, RemoteObject};
use crate::wal::{self, Log, LogOptions, RecordHeader};

/// The newest remote record that validates, and what was passed over.
pub struct Found {
    /// The record, validated and mapped.
    pub fetched: FetchedRecord,
    /// The pointer as read.
    pub pointer: Pointer,
    /// Record objects that failed validation (newest first), each naming
    /// the object and the reason.
    pub skipped: Vec<RemoteError>,
    /// The highest sequence the remote shows for this log: the pointer's, or
    /// a listed record object's if higher (an upload whose pointer update
    /// never happened). A restored log numbers its records after it.
    pub highest_sequence: u64,
    /// True when the record was found by listing the prefix because the
    /// pointer is missing or damaged (`pointer` is then built from the
    /// record's own header).
    pub by_listing: bool,
}

/// The log a restore falls back on when the pointer is missing or damaged:
/// chosen from a listing of every record object under the prefix.
pub struct ListedLog {
    /// Its id.
    pub log_id: u128,
    /// Its record objects, by sequence.
    pub records: Vec<RemoteObject>,
    /// Ids of the other logs found under the prefix (hex).
    pub others: Vec<String>,
}

impl ListedLog {
    /// The highest sequence among its objects.
    pub fn highest_sequence(&self) -> u64 {
        self.records.last().map_or(0, |r| r.sequence)
    }
}

/// Lists every record object under the prefix and picks the log to
/// restore: `prefer` (the local directory's log) when the prefix holds
/// objects of it, else the only log, else the log whose newest readable
/// record header has the newest snapshot time. `None` when the prefix holds
/// no record object at all.
pub async fn list_newest_log(
    remote: &Remote,
    prefer: Option<u128>,
) -> Result<Option<ListedLog>, RemoteError> {
    let mut logs: BTreeMap<u128, Vec<RemoteObject>> = BTreeMap::new();
    for (id, obj) in remote.list_all_records().await? {
        logs.entry(id).or_default().push(obj);
    }
    if logs.is_empty() {
        return Ok(None);
    }
    let chosen = match prefer.filter(|id| logs.contains_key(id)) {
        Some(id) => id,
        None if logs.len() == 1 => *logs.keys().next().unwrap_or(&0),
        None => {
            let mut best: Option<(u64, u128)> = None;
            for (id, objs) in &logs {
                for obj in objs.iter().rev() {
                    match remote.fetch_header(&obj.path).await {
                        Ok(h) => {
                            if best.is_none_or(|(t, _)| h.unix_ns > t) {
                                best = Some((h.unix_ns, *id));
                            }
                            break;
                        }
                        Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            match best {
                Some((_, id)) => id,
                None => *logs.keys().next_back().unwrap_or(&0),
            }
        }
    };
    let others = logs
        .keys()
        .filter(|id| **id != chosen)
        .map(|id| format!("{id:032x}"))
        .collect();
    let records = logs.remove(&chosen).unwrap_or_default();
    Ok(Some(ListedLog {
        log_id: chosen,
        records,
        others,
    }))
}

/// The newest record object of `listed` that validates, found without a
/// pointer. An error when none does: a prefix holding record objects is
/// never taken for an empty one.
pub async fn newest_listed(
    remote: &Remote,
    listed: &ListedLog,
    tmp_dir: &Path,
) -> Result<Found, RemoteError> {
    let mut skipped = Vec::new();
    for obj in listed.records.iter().rev() {
        match remote.fetch_record(&obj.path, tmp_dir).await {
            Ok(fetched) => {
                let pointer = Pointer::for_record(fetched.record.header());
                return Ok(Found {
                    fetched,
                    pointer,
                    skipped,
                    highest_sequence: listed.highest_sequence(),
                    by_listing: true,
                });
            }
            Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError {
        url: remote.url().to_string(),
        what: "finding a record to restore without a pointer".into(),
        cause: Cause::Damaged,
        detail: format!(
            "none of the {} record objects of log {:032x} validates ({}); refusing to start a \
             new log beside them",
            listed.records.len(),
            listed.log_id,
            skipped
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

fn pointer_damaged(remote: &Remote, detail: String) -> RemoteError {
    RemoteError {
        url: remote.url().to_string(),
        what: "reading the pointer".into(),
        cause: Cause::Damaged,
        detail,
    }
}

/// Finds the newest complete remote record that validates: the one the
/// pointer names, else the next older record object of the same log, and
/// so on. `Ok(None)` when the remote holds no pointer (nothing replicated
/// yet). Damaged or missing objects are reported in [`Found::skipped`]; so
/// is a pointer's object whose payload checksum is not the one the pointer
/// names (replaced by another writer of the same log). Network and
/// permission errors end the search.
pub async fn newest_valid(
    remote: &Remote,
    pointer: Option<PointerState>,
    tmp_dir: &Path,
) -> Result<Option<Found>, RemoteError> {
    let Some(state) = pointer else {
        return Ok(None);
    };
    let pointer = state.pointer;
    let log_id = pointer
        .log_id()
        .map_err(|detail| pointer_damaged(remote, detail))?;
    // One listing: the older records to fall back on, and the highest
    // sequence the remote has used (the pointer's object is tried first
    // whatever the listing says: listings may lag).
    let (records, _) = remote.list_records(log_id).await?;
    let highest_sequence = records
        .iter()
        .map(|r| r.sequence)
        .fold(pointer.sequence, u64::max);
    let mut candidates: VecDeque<_> = records
        .iter()
        .rev()
        .filter(|r| r.sequence < pointer.sequence)
        .map(|r| (r.path.clone(), None))
        .collect();
    candidates.push_front((remote.pointer_object(&pointer), Some(&pointer)));
    let mut skipped = Vec::new();
    for (path, named_by) in candidates {
        let checked =
            remote
                .fetch_record(&path, tmp_dir)
                .await
                .and_then(|fetched| match named_by {
                    Some(p) => check_against_pointer(fetched, p),
                    None => Ok(fetched),
                });
        match checked {
            Ok(fetched) => {
                return Ok(Some(Found {
                    fetched,
                    pointer,
                    skipped,
                    highest_sequence,
                    by_listing: false,
                }))
            }
            Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError {
        url: remote.url().to_string(),
        what: "finding a record to restore".into(),
        cause: Cause::Damaged,
        detail: format!(
            "no record object validates ({} damaged or missing: {})",
            skipped.len(),
            skipped
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// The pointer's object must hold the very record the pointer names: an
/// object of the same name written by another writer of the same log
/// validates on its own but is another record (reported as damaged).
pub fn check_against_pointer(
    fetched: FetchedRecord,
    pointer: &Pointer,
) -> Result<FetchedRecord, RemoteError> {
    let h = fetched.record.header();
    let checksum = format!("{:016x}", h.payload_checksum);
    if checksum != pointer.payload_checksum || h.unix_ns != pointer.unix_ns {
        return Err(RemoteError {
            url: fetched.url.clone(),
            what: "checking the record object against the pointer".into(),
            cause: Cause::Damaged,
            detail: format!(
                "it holds another record than the pointer names (payload checksum {checksum}, \
                 time {}; the pointer says {} and {}): replaced by another writer of this log",
                h.unix_ns, pointer.payload_checksum, pointer.unix_ns
            ),
        });
    }
    Ok(fetched)
}

/// What [`restore_into`] did.
// Made once per restore and matched at once: boxing the big variant would
// buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Restored {
    /// A remote record was written into the directory.
    Record {
        /// Its header as restored (new segment and offset, and a new
        /// sequence when it is not the remote's highest; see `remote_sequence`).
        header: RecordHeader,
        /// Its sequence in the remote copy.
        remote_sequence: u64,
        /// The object it came from.
        url: String,
        /// Newer record objects that were damaged and passed over.
        skipped: Vec<RemoteError>,
        /// Found by listing the prefix: the pointer is missing or damaged
        /// (its problem, and the ids of other logs under the prefix).
        by_listing: Option<(String, Vec<String>)>,
        /// Local records (sequence, epoch) that the remote does not hold
        /// and that the restored record supersedes: this directory's
        /// writer lost the prefix to another writer of the same log.
        dropped: Vec<(u64, u64)>,
    },
    /// The directory's newest intact record is at least as new as the best
    /// the remote holds, but the remote has used sequences up to
    /// `remote_highest` (in objects that are damaged, or that another copy
    /// of the log uploaded): the local record was copied once more as the
    /// next sequence after them, so that the log numbers its new records
    /// after every sequence the remote has used (FORMAT.md §7.7).
    Renumbered {
        /// The copy's header (its new sequence, segment and offset).
        header: RecordHeader,
        /// The sequence of the local record it copies.
        local_sequence: u64,
        /// The highest sequence the remote shows for this log.
        remote_highest: u64,
        /// Newer record objects that were damaged and passed over.
        skipped: Vec<RemoteError>,
    },
    /// The remote holds nothing yet.
    RemoteEmpty,
    /// The directory already holds an intact record at least as new as the
    /// best the remote holds, and numbers its next record after every
    /// sequence the remote has used (its newest sequence given).
    UpToDate(u64),
}

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The directory holds another log than the remote.
    #[error("{dir}: holds log {local:032x}, but {url} holds log {remote}; refusing to mix two logs (restore into an empty directory, or use another prefix)")]
    OtherLog {
        /// The local directory.
        dir: String,
        /// Its log id.
        local: u128,
        /// The remote URL.
        url: String,
        /// The remote log id (hex).
        remote: String,
    },
    /// The directory holds records newer than the best remote record that
    /// could not be read (an I/O error, which may clear): restoring the
    /// older remote record would let retention delete them.
    #[error("{dir}: records up to sequence {local_highest} could not be read ({unreadable}), and the newest valid record of {url} is older (sequence {remote_sequence}); refusing to restore it, because retention would then delete the unreadable records, which a repaired disk may give back. Copy the directory elsewhere (or repair the disk) and restart, or move the directory away to resume from sequence {remote_sequence}")]
    WouldLoseUnreadable {
        /// The local directory.
        dir: String,
        /// The highest record header sequence in the directory.
        local_highest: u64,
        /// The first unreadable record, as recovery reported it.
        unreadable: String,
        /// The remote URL.
        url: String,
        /// The remote record's sequence.
        remote_sequence: u64,
    },
    /// A remote error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A local error.
    #[error(transparent)]
    Local(#[from] wal::WalError),
}

/// Downloads attempted when the restored copy differs from the downloaded
/// record (the download's bytes changed between their check and the copy).
const RESTORE_ATTEMPTS: usize = 3;

/// Restores the newest valid remote record into `dir` (created if missing)
/// unless the directory already holds an *intact* record at least as new (a
/// record whose header survives but whose payload is damaged or unreadable
/// does not count: its sequence is no record to resume from). Refuses a
/// directory that holds another log, naming both ids. The restored record
/// keeps its sequence when that is the highest the remote and the directory
/// show for the log, and gets the next one after them otherwise; so does a
/// local record that is newer than every valid remote one while the remote
/// has used higher sequences (FORMAT.md §7.7). The copy's checksum is
/// compared with the original's before it becomes durable. When the pointer
/// is missing or damaged but record objects exist, the newest one that
/// validates is restored (found by listing the prefix); a prefix whose
/// record objects all fail is an error, never an empty remote. The download
/// happens with the directory's LOCK held (leftover downloads are removed
/// by [`Log::open`]).
pub async fn restore_into(
    remote: &Remote,
    head: Head,
    dir: &Path,
    options: LogOptions,
) -> Result<Restored, RestoreError> {
    let local = if dir.exists() {
        Some(wal::recover(dir)?)
    } else {
        None
    };
    let local_id = local.as_ref().and_then(|r| r.log_id);
    let (remote_id, upto, listed) = match &head {
        Head::Valid(state) => {
            let id = state.pointer.log_id().map_err(|detail| RemoteError {
                url: remote.url().to_string(),
                what: "reading the pointer".into(),
                cause: Cause::Damaged,
                detail,
            })?;
            (id, state.pointer.sequence, None)
        }
        Head::Missing | Head::Damaged { .. } => {
            let Some(listed) = list_newest_log(remote, local_id).await? else {
                return Ok(Restored::RemoteEmpty);
            };
            let problem = match &head {
                Head::Damaged { detail, .. } => format!("damaged ({detail})"),
                _ => "missing".to_string(),
            };
            (
                listed.log_id,
                listed.highest_sequence(),
                Some((listed, problem)),
            )
        }
    };
    if let Some(local_id) = local_id {
        if local_id != remote_id {
            return Err(RestoreError::OtherLog {
                dir: dir.display().to_string(),
                local: local_id,
                url: remote.url().to_string(),
                remote: format!("{remote_id:032x}"),
            });
        }
    }
    let local_next = local.as_ref().map_or(1, |r| r.next_sequence);
    let local_intact = local
        .as_ref()
        .and_then(|r| r.record.as_ref())
        .map(|r| r.header().sequence);
    if local_intact.is_some_and(|s| s >= upto) {
        // Nothing to download; only the sequences the remote has used
        // matter (objects above the pointer: uploads whose pointer update
        // never happened).
        let (records, _) = remote.list_records(remote_id).await?;
        let highest = records.iter().map(|r| r.sequence).fold(upto, u64::max);
        if local_next > highest {
            return Ok(Restored::UpToDate(local_next - 1));
        }
        return renumber_local(dir, options, highest, Vec::new());
    }
    let existed = dir.exists();
    // The writer's LOCK before any download: no other writer starts
    // meanwhile, and the leftovers of an earlier killed download are gone.
    let mut log = Some(Log::open(dir, options)?.0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let found = match (&head, &listed) {
            (Head::Valid(state), _) => newest_valid(remote, Some(state.clone()), dir).await,
            (_, Some((l, _))) => newest_listed(remote, l, dir).await.map(Some),
            (_, None) => Ok(None),
        };
        let found = match found {
            Ok(Some(f)) => f,
            Ok(None) => {
                if let Some(mut l) = log.take() {
                    let _ = l.discard_if_empty(!existed);
                }
                return Ok(Restored::RemoteEmpty);
            }
            Err(e) => {
                if let Some(mut l) = log.take() {
                    let _ = l.discard_if_empty(!existed);
                }
                return Err(e.into());
            }
        };
        let mut header = *found.fetched.record.header();
        let remote_sequence = header.sequence;
        if local_intact.is_some_and(|s| s >= remote_sequence) {
            // The newer remote objects are all damaged: the local record is
            // the best copy there is.
            drop(found.fetched);
            drop(log.take());
            if local_next > found.highest_sequence {
                return Ok(Restored::UpToDate(local_next - 1));
            }
            return renumber_local(dir, options, found.highest_sequence, found.skipped);
        }
        if local_next > remote_sequence + 1 {
            if let Some(bad) = local
                .as_ref()
                .and_then(|r| r.skipped.iter().find(|s| s.unreadable))
            {
                return Err(RestoreError::WouldLoseUnreadable {
                    dir: dir.display().to_string(),
                    local_highest: local_next - 1,
                    unreadable: bad.to_string(),
                    url: remote.url().to_string(),
                    remote_sequence,
                });
            }
        }
        let writer = match log.as_mut() {
            Some(l) => l,
            None => log.insert(Log::open(dir, options)?.0),
        };
        // The remote has used sequences above this record (a damaged
        // pointer object passed over, or an upload whose pointer update
        // never happened), or the directory holds record headers up to it
        // or beyond (whose payloads are damaged or unreadable): the restored
        // log numbers after them, so that no sequence ever names two
        // different records.
        let used = found.highest_sequence.max(writer.next_sequence() - 1);
        if remote_sequence < used || remote_sequence < writer.next_sequence() {
            header.sequence = used + 1;
        }
        let dropped = if local_intact.is_some() {
            local_not_on_remote(remote, dir, remote_id).await?
        } else {
            Vec::new()
        };
        match writer.import(&header, found.fetched.record.payload()) {
            Ok(durable) => {
                return Ok(Restored::Record {
                    header: durable.header,
                    remote_sequence,
                    url: found.fetched.url,
                    skipped: found.skipped,
                    by_listing: listed.map(|(l, problem)| (problem, l.others)),
                    dropped,
                })
            }
            Err(e @ wal::WalError::CopyDiffers { .. }) if attempt < RESTORE_ATTEMPTS => {
                tracing::warn!(object = %found.fetched.url, error = %e, "the restored copy differs from the downloaded record; downloading it again");
                // A writer that failed an import is done; a fresh one (the
                // LOCK taken again at once) sees the directory as it is.
                drop(log.take());
                log = Some(Log::open(dir, options)?.0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
/// Copies the directory's newest intact record once more as sequence
/// `remote_highest + 1`, so that the log goes on after every sequence the
/// remote has used.
fn renumber_local(
    dir: &Path,
    options: LogOptions,
    remote_highest: u64,
    skipped: Vec<RemoteError>,
) -> Result<Restored, RestoreError> {
    let (mut log, recovery) = Log::open(dir, options)?;
    // Recovered a moment ago; only another process could have changed it.
    let Some(record) = recovery.record.as_ref() else {
        return Err(wal::WalError::ImportRefused {
            path: dir.to_path_buf(),
            reason: "the intact record found a moment ago is gone (changed by another process?)"
                .into(),
        }
        .into());
    };
    let local_sequence = record.header().sequence;
    let header = RecordHeader {
        sequence: remote_highest.max(log.next_sequence() - 1) + 1,
        ..*record.header()
    };
    let durable = log.import(&header, record.payload())?;
    Ok(Restored::Renumbered {
        header: durable.header,
        local_sequence,
        remote_highest,
        skipped,
    })
}

/// The local records of log `log_id` in `dir` that the remote does not
/// hold, newest first, down to the newest one it holds with the same
/// payload checksum (or the oldest sequence the remote still lists, below
/// which remote retention may have deleted the common history).
async fn local_not_on_remote(
    remote: &Remote,
    dir: &Path,
    log_id: u128,
) -> Result<Vec<(u64, u64)>, RestoreError> {
    let scan = wal::LogReader::open(dir)?.scan()?;
    let mut local: Vec<RecordHeader> = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().copied())
        .filter(|h| h.log_id == log_id)
        .collect();
    local.sort_by_key(|h| std::cmp::Reverse(h.sequence));
    local.dedup_by_key(|h| h.sequence);
    let (records, _) = remote.list_records(log_id).await?;
    let oldest_remote = records.first().map_or(u64::MAX, |r| r.sequence);
    let mut dropped = Vec::new();
    for h in local {
        if h.sequence < oldest_remote {
            break;
        }
        let same = match records
            .iter()
            .find(|r| r.sequence == h.sequence && r.epoch == h.epoch)
        {
            Some(obj) => match remote.fetch_header(&obj.path).await {
                Ok(rh) => rh.payload_checksum == h.payload_checksum,
                Err(e) if matches!(e.cause, Cause::Damaged | Cause::NotFound) => false,
                Err(e) => return Err(e.into()),
            },
            None => false,
        };
        if same {
            break;
        }
        dropped.push((h.sequence, h.epoch));
    }
    Ok(dropped)
}
