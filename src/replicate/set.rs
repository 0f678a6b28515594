//! The set pointer of a multi-rank job (FORMAT.md §7.10).
//!
//! A job of `W` ranks replicates to a job URL `P`: rank r is an ordinary
//! single log under `P/rank-<r, 5 digits>` (its own `HEAD`, record objects
//! and retention), and `P/SET` names, for the newest step that every rank
//! has made remote, each rank's record object of that step. Any rank
//! advances `P/SET` after each of its uploads ([`SetMember::advance`]): it
//! reads every rank's `HEAD` and listing, and writes `P/SET` only when the
//! newest common step is newer than the one `P/SET` names, with a
//! conditional put, so that `P/SET` never moves backward and only names
//! objects that were complete before it was written. A job on empty
//! machines restores each rank's record named by `P/SET`
//! ([`restore_from_set`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path as FsPath;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::layout::{Pointer, REMOTE_FORMAT_VERSION};
use super::remote::{classify, error_text, Cause, Head, Remote, RemoteError};
use super::restore::check_against_pointer;
use crate::job::Start;
use crate::wal::{self, Durable, Log, LogOptions, RecordHeader};

/// Name of the set pointer under the job's prefix.
pub const SET_NAME: &str = "SET";

/// Conditional-write attempts of one advance before it gives up until the
/// next upload (each failed attempt means another rank wrote meanwhile).
const SET_ATTEMPTS: usize = 8;

/// `P/rank-<r>`: the URL rank `rank` replicates to under the job URL.
pub fn rank_url(job_url: &str, rank: u32) -> String {
    format!("{}/{}", job_url.trim_end_matches('/'), rank_dir(rank))
}

/// `rank-00003`.
pub fn rank_dir(rank: u32) -> String {
    format!("rank-{rank:05}")
}

/// The set pointer `P/SET`: one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPointer {
    /// [`REMOTE_FORMAT_VERSION`].
    pub format: u32,
    /// The job id of the rank that wrote it.
    pub job_id: String,
    /// Ranks in the job; `ranks` has this many entries.
    pub world_size: u32,
    /// The common step: every entry of `ranks` names a record of this step.
    pub step: u64,
    /// When it was written (ns since the Unix epoch), by the rank `writer`.
    pub unix_ns: u64,
    /// The rank that wrote it.
    pub writer: u32,
    /// Rank r's record, as its own `HEAD` would name it (the object is
    /// relative to `P/rank-<r>`).
    pub ranks: Vec<Pointer>,
}

impl SetPointer {
    /// The document's bytes (one line of JSON).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a set pointer always serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a set pointer document.
    pub fn decode(bytes: &[u8]) -> Result<SetPointer, String> {
        let s: SetPointer = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a set pointer document: {e}"))?;
        if s.format != REMOTE_FORMAT_VERSION {
            return Err(format!(
                "set pointer format {} (this build reads {REMOTE_FORMAT_VERSION})",
                s.format
            ));
        }
        if s.world_size == 0 || s.ranks.len() != s.world_size as usize {
            return Err(format!(
                "world_size is {} but {} ranks are named",
                s.world_size,
                s.ranks.len()
            ));
        }
        for (r, p) in s.ranks.iter().enumerate() {
            Pointer::decode(&p.encode()).map_err(|e| format!("rank {r}: {e}"))?;
            if p.step != s.step {
                return Err(format!(
                    "rank {r}'s record is of step {}, the set's step is {}",
                    p.step, s.step
                ));
            }
        }
        if s.writer >= s.world_size {
            return Err(format!(
                "writer {} is not below world_size {}",
                s.writer, s.world_size
            ));
        }
        Ok(s)
    }
}

/// `P/SET` as read.
#[derive(Debug, Clone)]
pub enum SetHead {
    /// There is none.
    Missing,
    /// One that decodes, with its version for a conditional replace.
    Valid(SetPointer, Option<UpdateVersion>),
    /// One that does not decode.
    Damaged(String, Option<UpdateVersion>),
}

fn set_path(job: &Remote) -> Path {
    let (_, prefix) = job.store();
    prefix.join(SET_NAME)
}

fn store_error(job: &Remote, path: &Path, what: &str, e: object_store::Error) -> RemoteError {
    let detail = error_text(&e);
    RemoteError {
        url: job.object_url(path),
        what: what.into(),
        cause: classify(&e, &detail),
        detail,
    }
}

/// Reads `P/SET`.
pub async fn read_set(job: &Remote) -> Result<SetHead, RemoteError> {
    let (store, _) = job.store();
    let path = set_path(job);
    let got = match store.get(&path).await {
        Ok(g) => g,
        Err(e @ object_store::Error::NotFound { .. }) => {
            let detail = error_text(&e);
            if classify(&e, &detail) == Cause::NoBucket {
                return Err(store_error(job, &path, "reading the set pointer", e));
            }
            return Ok(SetHead::Missing);
        }
        Err(e) => return Err(store_error(job, &path, "reading the set pointer", e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let version = version.e_tag.is_some().then_some(version);
    let bytes = got
        .bytes()
        .await
        .map_err(|e| store_error(job, &path, "reading the set pointer", e))?;
    Ok(match SetPointer::decode(&bytes) {
        Ok(s) => SetHead::Valid(s, version),
        Err(d) => SetHead::Damaged(d, version),
    })
}

/// Writes `P/SET` over the version read (`None`: create it), where the
/// store honours conditional puts; `Cause::Conflict` when it changed.
async fn write_set(
    job: &Remote,
    set: &SetPointer,
    over: Option<Option<&UpdateVersion>>,
) -> Result<(), RemoteError> {
    let (store, _) = job.store();
    let path = set_path(job);
    let mut conditional = true;
    loop {
        let mode = match over {
            _ if !conditional => PutMode::Overwrite,
            None => PutMode::Create,
            Some(Some(v)) => PutMode::Update(v.clone()),
            Some(None) => PutMode::Overwrite,
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match store
            .put_opts(&path, PutPayload::from(set.encode()), opts)
            .await
        {
            Ok(_) => {
                if let Some(file) = job.local_file(&path) {
                    // file://: the SET file and its directory reach the disk
                    // before anything relies on them.
                    let sync = |p: &FsPath| std::fs::File::open(p).and_then(|f| f.sync_all());
                    sync(&file)
                        .and_then(|()| file.parent().map_or(Ok(()), sync))
                        .map_err(|e| RemoteError {
                            url: job.object_url(&path),
                            what: "making the set pointer durable".into(),
                            cause: Cause::Other,
                            detail: e.to_string(),
                        })?;
                }
                return Ok(());
            }
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) if conditional => conditional = false,
            Err(e) => return Err(store_error(job, &path, "writing the set pointer", e)),
        }
    }
}

/// One rank's remote log, as the set sees it.
#[derive(Debug, Default)]
struct RankView {
    /// The step of the record its `HEAD` names.
    head_step: u64,
    /// Its current branch: step -> the newest record of that step.
    by_step: BTreeMap<u64, RecordHeader>,
}

/// What one [`SetMember::advance`] found and did.
#[derive(Debug, Clone, Default)]
pub struct SetOutcome {
    /// `P/SET` after the advance (written now or found), if any.
    pub set: Option<SetPointer>,
    /// Whether this advance wrote it.
    pub wrote: bool,
    /// Sequences of this rank's record objects that remote retention must
    /// keep: the one `P/SET` names, the newest common step's, and every
    /// record of the current branch whose step is at least the smallest
    /// step any rank's `HEAD` names (it may still become common).
    pub keep: HashSet<u64>,
    /// False when some rank's `HEAD` could not be read or was missing: then
    /// every record of this rank's current branch is in `keep`.
    pub all_ranks_seen: bool,
}

/// A rank of a job that advances `P/SET` after its uploads.
pub struct SetMember {
    job: Remote,
    ranks: Vec<Remote>,
    rank: u32,
    job_id: String,
    /// Every generation's start this rank knows (FORMAT.md §8.2): a
    /// record it abandons by sequence is on no rank's current branch.
    starts: Vec<Start>,
    /// Record headers already read, by object path (an object never
    /// changes; a re-upload of the same name is checked against HEAD).
    headers: HashMap<String, RecordHeader>,
}

impl std::fmt::Debug for SetMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetMember")
            .field("job", &self.job.url())
            .field("rank", &self.rank)
            .field("world_size", &self.ranks.len())
            .finish()
    }
}

impl SetMember {
    /// Clients for the job URL and every rank's prefix (nothing is
    /// contacted yet). `starts` are the job's generation starts as this
    /// rank's next records carry them (empty outside the Python package's
    /// `DistributedCheckpointer`).
    pub fn new(
        job_url: &str,
        allow_http: Option<bool>,
        rank: u32,
        world_size: u32,
        job_id: &str,
        starts: Vec<Start>,
    ) -> Result<SetMember, RemoteError> {
        let job = Remote::open(job_url.trim_end_matches('/'), allow_http)?;
        let ranks = (0..world_size)
            .map(|r| Remote::open(&rank_url(job_url, r), allow_http))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SetMember {
            job,
            ranks,
            rank,
            job_id: job_id.to_string(),
            starts,
            headers: HashMap::new(),
        })
    }

    /// The URL of `P/SET`.
    pub fn set_url(&self) -> String {
        self.job.object_url(&set_path(&self.job))
    }

    /// Reads rank `r`'s `HEAD` and listing: `None` when it has no valid
    /// `HEAD` yet.
    async fn view(&mut self, r: usize) -> Result<Option<RankView>, RemoteError> {
        let remote = &self.ranks[r];
        let head = match remote.read_head().await? {
            Head::Valid(p) => p.pointer,
            Head::Missing | Head::Damaged { .. } => return Ok(None),
        };
        let Ok(log_id) = head.log_id() else {
            return Ok(None);
        };
        let (listed, _) = remote.list_records(log_id).await?;
        let mut records = Vec::new();
        for o in listed.iter().filter(|o| o.sequence <= head.sequence) {
            let key = o.path.to_string();
            let h = match self.headers.get(&key) {
                Some(h) => *h,
                None => match remote.fetch_header(&o.path).await {
                    Ok(h) => {
                        self.headers.insert(key, h);
                        h
                    }
                    // Deleted by that rank's retention since the listing,
                    // or damaged: not a record the set can name.
                    Err(e) if matches!(e.cause, Cause::NotFound | Cause::Damaged) => continue,
                    Err(e) => return Err(e),
                },
            };
            records.push(h);
        }
        // The HEAD's record itself, from the HEAD (a listing may lag).
        if !records.iter().any(|h| h.sequence == head.sequence) {
            let path = remote.pointer_object(&head);
            match remote.fetch_header(&path).await {
                Ok(h) => records.push(h),
                Err(e) if matches!(e.cause, Cause::NotFound | Cause::Damaged) => {}
                Err(e) => return Err(e),
            }
        }
        // A record written before a generation began, newer than the
        // step that generation resumed from, lies on a branch the job left
        // (FORMAT.md §7.10): never part of a set.
        let rank = r as u32;
        let abandoned = |seq: u64, step: u64| {
            self.starts
                .iter()
                .any(|s| s.abandons_sequence(rank, seq, step))
        };
        let head_abandoned = abandoned(head.sequence, head.step);
        records.retain(|h| !abandoned(h.sequence, h.step));
        records.sort_by_key(|h| h.sequence);
        // The current branch: after the last record whose step is smaller
        // than its predecessor's (a restore's copy starts a new branch).
        let start = (1..records.len())
            .rev()
            .find(|&i| records[i].step < records[i - 1].step)
            .unwrap_or(0);
        let mut by_step = BTreeMap::new();
        for h in &records[start..] {
            by_step.insert(h.step, *h);
        }
        Ok(Some(RankView {
            // An abandoned HEAD says nothing of the steps this rank will
            // upload next (its next records resume from an older step).
            head_step: if head_abandoned { 0 } else { head.step },
            by_step,
        }))
    }

    /// Advances `P/SET` to the newest step every rank has made remote, if
    /// that is newer than the step it names (FORMAT.md §7.10). Never moves
    /// it backward; a conditional put loses to a concurrent writer, and
    /// the advance is then tried again on what it wrote.
    pub async fn advance(&mut self) -> Result<SetOutcome, RemoteError> {
        let mut outcome = SetOutcome::default();
        for _ in 0..SET_ATTEMPTS {
            let found = read_set(&self.job).await?;
            let mut views = Vec::with_capacity(self.ranks.len());
            for r in 0..self.ranks.len() {
                views.push(self.view(r).await?);
            }
            let me = self.rank as usize;
            let (current, version) = match &found {
                SetHead::Missing => (None, None),
                SetHead::Valid(s, v) => (Some(s.clone()), Some(v.as_ref())),
                SetHead::Damaged(detail, v) => {
                    tracing::warn!(set = %self.set_url(), %detail, "the set pointer is damaged; it will be replaced by the next common step");
                    (None, Some(v.as_ref()))
                }
            };
            if let Some(s) = &current {
                if s.world_size as usize != self.ranks.len() {
                    return Err(RemoteError {
                        url: self.set_url(),
                        what: "checking the set pointer".into(),
                        cause: Cause::Settings,
                        detail: format!(
                            "it names a job of {} ranks (step {}, job id {:?}), this job has {}; \
                             use another prefix for a job of another size",
                            s.world_size,
                            s.step,
                            s.job_id,
                            self.ranks.len()
                        ),
                    });
                }
            }
            // What this rank must keep, whatever happens below.
            outcome.keep.clear();
            if let Some(s) = &current {
                outcome.keep.insert(s.ranks[me].sequence);
            }
            outcome.all_ranks_seen = views.iter().all(Option::is_some);
            let floor = views.iter().flatten().map(|v| v.head_step).min();
            if let Some(Some(mine)) = views.get(me) {
                for (step, h) in &mine.by_step {
                    if !outcome.all_ranks_seen || floor.is_some_and(|f| *step >= f) {
                        outcome.keep.insert(h.sequence);
                    }
                }
            }
            let common = if outcome.all_ranks_seen {
                let views: Vec<&RankView> = views.iter().flatten().collect();
                views[0]
                    .by_step
                    .keys()
                    .rev()
                    .find(|s| views.iter().all(|v| v.by_step.contains_key(s)))
                    .map(|s| (*s, views))
            } else {
                None
            };
            let Some((step, views)) = common else {
                outcome.set = current;
                return Ok(outcome);
            };
            outcome.keep.insert(views[me].by_step[&step].sequence);
            if current.as_ref().is_some_and(|s| s.step >= step) {
                outcome.set = current;
                return Ok(outcome);
            }
            let set = SetPointer {
                format: REMOTE_FORMAT_VERSION,
                job_id: self.job_id.clone(),
                world_size: self.ranks.len() as u32,
                step,
                unix_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                writer: self.rank,
                ranks: views
                    .iter()
                    .map(|v| Pointer::for_record(&v.by_step[&step]))
                    .collect(),
            };
            match write_set(&self.job, &set, version).await {
                Ok(()) => {
                    tracing::info!(set = %self.set_url(), step, "set pointer advanced: every rank's record of this step is remote");
                    outcome.set = Some(set);
                    outcome.wrote = true;
                    return Ok(outcome);
                }
                // Another rank wrote meanwhile: read again.
                Err(e) if e.cause == Cause::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RemoteError {
            url: self.set_url(),
            what: "advancing the set pointer".into(),
            cause: Cause::Conflict,
            detail: format!("it changed under {SET_ATTEMPTS} conditional writes in a row"),
        })
    }
}

/// What [`restore_from_set`] restored.
#[derive(Debug, Clone)]
pub struct SetRestored {
    /// The set pointer it followed.
    pub set: SetPointer,
    /// The record as written into the directory (its sequence may be new).
    pub durable: Durable,
    /// The record object's URL.
    pub object_url: String,
}

/// Restores rank `rank`'s record named by `P/SET` into `dir`, which must
/// hold no log (it is created if missing). `Ok(None)` when there is no
/// `P/SET` and nothing under `P/rank-<rank>`. The record keeps its sequence
/// when it is the highest the rank's prefix shows, else it is numbered
/// after it (FORMAT.md §7.7 step 6): the copy then starts a new branch of
/// the rank's remote log. Errors name the object, the rank and the cause.
pub async fn restore_from_set(
    job_url: &str,
    allow_http: Option<bool>,
    rank: u32,
    world_size: u32,
    dir: &FsPath,
    options: LogOptions,
) -> Result<Option<SetRestored>, String> {
    let job = Remote::open(job_url.trim_end_matches('/'), allow_http).map_err(|e| e.to_string())?;
    let remote = Remote::open(&rank_url(job_url, rank), allow_http).map_err(|e| e.to_string())?;
    let set_url = job.object_url(&set_path(&job));
    let set = match read_set(&job).await.map_err(|e| e.to_string())? {
        SetHead::Valid(s, _) => s,
        SetHead::Damaged(detail, _) => {
            return Err(format!(
                "{set_url}: the set pointer is damaged ({detail}); rank {rank} cannot be restored \
                 consistently (each rank's records are under {job_url}/rank-NNNNN)"
            ))
        }
        SetHead::Missing => {
            return match remote.read_head().await.map_err(|e| e.to_string())? {
                Head::Missing => Ok(None),
                _ => Err(format!(
                    "{set_url}: missing, but {} holds records of rank {rank}: no step is \
                     known to be remote on every rank, so the job cannot be restored \
                     consistently (restore one rank with `epochwal pull`, or use another prefix \
                     to start afresh)",
                    remote.url()
                )),
            };
        }
    };
    if set.world_size != world_size {
        return Err(format!(
            "{set_url}: names a job of {} ranks at step {} (job id {:?}); this job has {world_size} \
             ranks",
            set.world_size, set.step, set.job_id
        ));
    }
    let Some(entry) = set.ranks.get(rank as usize).cloned() else {
        return Err(format!("rank {rank} is not below world_size {world_size}"));
    };
    if dir.exists() {
        let local = wal::recover(dir).map_err(|e| e.to_string())?;
        if let Some(id) = local.log_id {
            return Err(format!(
                "{}: holds log {id:032x} already; rank {rank} is restored from {set_url} into a \
                 directory that holds no log",
                dir.display()
            ));
        }
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: creating the directory: {e}", dir.display()))?;
    }
    let log_id = entry
        .log_id()
        .map_err(|e| format!("{set_url}: rank {rank}: {e}"))?;
    let (mut log, _) = Log::open(dir, options).map_err(|e| e.to_string())?;
    let path = remote.pointer_object(&entry);
    let object_url = remote.object_url(&path);
    let fetched = remote
        .fetch_record(&path, dir)
        .await
        .and_then(|f| check_against_pointer(f, &entry))
        .map_err(|e| {
            format!(
                "rank {rank}: restoring step {} named by {set_url}: {e}",
                set.step
            )
        })?;
    let (listed, _) = remote
        .list_records(log_id)
        .await
        .map_err(|e| e.to_string())?;
    let from_head = match remote.read_head().await.map_err(|e| e.to_string())? {
        Head::Valid(p) if p.pointer.log_id().ok() == Some(log_id) => p.pointer.sequence,
        _ => 0,
    };
    let highest = listed.iter().map(|o| o.sequence).fold(from_head, u64::max);
    let mut header = *fetched.record.header();
    if header.sequence < highest {
        header.sequence = highest + 1;
    }
    let durable = log.import(&header, fetched.record.payload()).map_err(|e| {
        format!(
            "rank {rank}: writing {object_url} into {}: {e}",
            dir.display()
        )
    })?;
    tracing::info!(rank, step = set.step, object = %object_url, dir = %dir.display(), sequence = durable.header.sequence, "restored this rank's record of the set pointer's step");
    Ok(Some(SetRestored {
        set,
        durable,
        object_url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(seq: u64, step: u64) -> Pointer {
        Pointer::for_record(&RecordHeader {
            log_id: 0xabc,
            segment_no: 1,
            sequence: seq,
            epoch: 1,
            step,
            offset: 4096,
            payload_len: 10,
            payload_checksum: 7,
            unix_ns: 5,
            loss: 0.0,
            schema_version: 1,
            validation: None,
        })
    }

    #[test]
    fn set_round_trips_and_rejects_inconsistent_documents() {
        let s = SetPointer {
            format: 1,
            job_id: "j".into(),
            world_size: 2,
            step: 40,
            unix_ns: 9,
            writer: 1,
            ranks: vec![pointer(4, 40), pointer(5, 40)],
        };
        assert_eq!(SetPointer::decode(&s.encode()).unwrap(), s);
        let mut bad = s.clone();
        bad.ranks[1] = pointer(5, 30);
        assert!(SetPointer::decode(&bad.encode())
            .unwrap_err()
            .contains("rank 1"));
        let mut bad = s.clone();
        bad.world_size = 3;
        assert!(SetPointer::decode(&bad.encode()).is_err());
        let mut bad = s;
        bad.writer = 2;
        assert!(SetPointer::decode(&bad.encode()).is_err());
        assert!(SetPointer::decode(b"{}").is_err());
        assert_eq!(rank_url("s3://b/p/", 3), "s3://b/p/rank-00003");
    }
}
