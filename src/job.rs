//! Multi-rank jobs: a job directory holds one ordinary log per rank
//! (`rank-00000/`, `rank-00001/`, ...), and the job resumes from the newest
//! step that every rank holds intact, on one branch of the job's history
//! (FORMAT.md §8).
//!
//! This room only reads logs (through [`LogReader`]); it is used by the
//! operator tools (`tail`, `inspect`, `verify` on a job directory) and by
//! the Python package's `DistributedCheckpointer`, whose ranks gather their
//! [`RankListing`]s with torch.distributed and all call [`choose`] on the
//! same input, so they all make the same choice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::KIND_GENERAL;
use crate::wal::LogReader;

/// The prefix of a rank's log directory inside a job directory.
pub const RANK_PREFIX: &str = "rank-";

/// The key of a general record's JSON document that holds the branch
/// information of a multi-rank job (FORMAT.md §8.2).
pub const DOC_KEY: &str = "distributed";

/// `rank-` + the rank in 5 decimal digits.
pub fn rank_dir_name(rank: u32) -> String {
    format!("{RANK_PREFIX}{rank:05}")
}

/// The rank a directory name stands for (`rank-` + exactly 5 digits).
pub fn parse_rank_dir(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(RANK_PREFIX)?;
    if digits.len() != 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rank directories of a job directory, by rank. Empty when `dir` holds
/// none (it is then not a job directory).
pub fn rank_dirs(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rank) = name.to_str().and_then(parse_rank_dir) else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            out.push((rank, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` is a job directory: it holds at least one rank directory
/// and no segment of its own.
pub fn is_job_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut ranks = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".wal") {
            return false;
        }
        if parse_rank_dir(name).is_some() && entry.path().is_dir() {
            ranks = true;
        }
    }
    ranks
}

/// The branch of a job's history a record belongs to (FORMAT.md §8.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// The generation: 1 for a job's first start, then 1 + the highest
    /// generation the ranks knew at each restore. 0: a record without the
    /// `distributed` key.
    pub generation: u64,
    /// Which save of its lineage the record is: 1 for the first save of a
    /// job, the restored record's + 1 for the first save after a restore.
    pub ordinal: u64,
    /// Every generation's start known when this record's generation
    /// started: the step each generation was restored from (`None`: it
    /// started fresh), and where each rank's log stood then.
    pub starts: Vec<Start>,
}

/// The start of one generation of a job (FORMAT.md §8.2), written
/// `[generation, base]` or `[generation, base, [seq of rank 0, ...]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StartRepr", into = "StartRepr")]
pub struct Start {
    /// The generation that began.
    pub generation: u64,
    /// The step it resumed from; `None`: it started from the beginning.
    pub base: Option<u64>,
    /// Per rank (index = rank), the highest sequence that rank's log held
    /// when the generation began: every record of the rank up to it was
    /// written before. `None` in records of writers that did not record it.
    pub seqs: Option<Vec<u64>>,
}

/// [`Start`] as JSON: an array of two or three elements.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StartRepr {
    Full(u64, Option<u64>, Vec<u64>),
    Short(u64, Option<u64>),
}

impl From<StartRepr> for Start {
    fn from(r: StartRepr) -> Start {
        match r {
            StartRepr::Full(generation, base, seqs) => Start {
                generation,
                base,
                seqs: Some(seqs),
            },
            StartRepr::Short(generation, base) => Start {
                generation,
                base,
                seqs: None,
            },
        }
    }
}

impl From<Start> for StartRepr {
    fn from(s: Start) -> StartRepr {
        match s.seqs {
            Some(seqs) => StartRepr::Full(s.generation, s.base, seqs),
            None => StartRepr::Short(s.generation, s.base),
        }
    }
}

impl Start {
    /// Whether this start abandons a record of step `step`: the
    /// generation resumed from an older step (or from the beginning).
    pub fn abandons_step(&self, step: u64) -> bool {
        self.base.is_none_or(|b| step > b)
    }

    /// Whether rank `rank`'s record `seq` of step `step` lies on a branch
    /// this start left, told by its sequence alone (FORMAT.md §7.10): it
    /// was written before the generation began and is newer than its base.
    /// False when the start does not record the rank's sequence.
    pub fn abandons_sequence(&self, rank: u32, seq: u64, step: u64) -> bool {
        self.seqs
            .as_ref()
            .and_then(|s| s.get(rank as usize))
            .is_some_and(|&h| seq <= h)
            && self.abandons_step(step)
    }
}

impl Branch {
    /// The branch of a general record's JSON document (`None`: the document
    /// has no `distributed` key; an error names what is malformed).
    pub fn from_doc(meta: &str) -> Result<Option<Branch>, String> {
        let doc: serde_json::Value =
            serde_json::from_str(meta).map_err(|e| format!("the document is not JSON: {e}"))?;
        match doc.get(DOC_KEY) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| format!("its \"{DOC_KEY}\" object is malformed: {e}")),
        }
    }
}

/// One intact record of a rank's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    /// Sequence number in the rank's log.
    pub seq: u64,
    /// Global step.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// The record's `job_id`.
    pub job_id: String,
    /// The record's `world_size` (0: not a multi-rank record).
    pub world_size: u32,
    /// The record's `rank`.
    pub rank: u32,
    /// Its branch (generation 0 without one).
    pub branch: Branch,
    /// The segment file.
    pub segment: PathBuf,
}

/// A record whose header decodes but which is not intact (or not readable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Damaged {
    /// Sequence number from its header.
    pub seq: u64,
    /// Global step from its header.
    pub step: u64,
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of its header.
    pub offset: u64,
    /// Why it is not intact.
    pub cause: String,
}

/// What one rank's log holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankListing {
    /// The rank whose directory this is.
    pub rank: u32,
    /// The rank's log directory.
    pub dir: PathBuf,
    /// Intact records, in log order.
    pub records: Vec<RankRecord>,
    /// Records that are damaged or unreadable, in log order.
    pub damaged: Vec<Damaged>,
}

impl RankListing {
    /// The newest intact record (by log order), if any.
    pub fn newest(&self) -> Option<&RankRecord> {
        self.records.last()
    }

    /// A short account of what the rank holds, for errors:
    /// `rank 1 (J/rank-00001): steps 10, 20 (world size 2, job "x"); damaged: seq 3 (step 30)`.
    pub fn describe(&self) -> String {
        let mut s = format!("rank {} ({})", self.rank, self.dir.display());
        if self.records.is_empty() {
            s.push_str(": no intact record");
        } else {
            let mut groups: BTreeMap<(u32, &str), Vec<String>> = BTreeMap::new();
            for r in &self.records {
                groups
                    .entry((r.world_size, r.job_id.as_str()))
                    .or_default()
                    .push(format!("{}", r.step));
            }
            let parts: Vec<String> = groups
                .iter()
                .map(|((ws, job), steps)| {
                    format!("steps {} (world size {ws}, job {job:?})", steps.join(", "))
                })
                .collect();
            s.push_str(": ");
            s.push_str(&parts.join("; "));
        }
        if !self.damaged.is_empty() {
            let d: Vec<String> = self
                .damaged
                .iter()
                .map(|d| format!("seq {} (step {})", d.seq, d.step))
                .collect();
            s.push_str(&format!("; damaged: {}", d.join(", ")));
        }
        s
    }
}

/// Lists rank `rank`'s log in `dir`: every record header that decodes,
/// each loaded and validated. A directory that does not exist holds
/// nothing. An error names the directory and the cause (the directory
/// cannot be listed, or a segment cannot be read).
pub fn list_rank(dir: &Path, rank: u32) -> Result<RankListing, String> {
    let mut listing = RankListing {
        rank,
        dir: dir.to_path_buf(),
        ..RankListing::default()
    };
    if !dir.exists() {
        return Ok(listing);
    }
    let reader = LogReader::open(dir).map_err(|e| e.to_string())?;
    let scan = reader.scan().map_err(|e| e.to_string())?;
    for seg in &scan.segments {
        if let Some(f) = &seg.read_failure {
            return Err(f.to_error(&seg.path).to_string());
        }
        for h in &seg.records {
            let damaged = |cause: String| Damaged {
                seq: h.sequence,
                step: h.step,
                segment: seg.path.clone(),
                offset: h.offset,
                cause,
            };
            let rec = match reader.load(&seg.path, h) {
                Ok(r) => r,
                Err(e) => {
                    listing.damaged.push(damaged(e.to_string()));
                    continue;
                }
            };
            let state = rec.state();
            if state.kind.to_native() != KIND_GENERAL {
                // A trainer record has no rank: it is listed with world
                // size 0, which no job matches.
                listing.records.push(RankRecord {
                    seq: h.sequence,
                    step: h.step,
                    epoch: h.epoch,
                    job_id: String::new(),
                    world_size: 0,
                    rank: 0,
                    branch: Branch::default(),
                    segment: seg.path.clone(),
                });
                continue;
            }
            let g = &state.general;
            let branch = match Branch::from_doc(g.meta.as_str()) {
                Ok(b) => b.unwrap_or_default(),
                Err(e) => {
                    listing.damaged.push(damaged(format!(
                        "{}: record {}: {e}",
                        seg.path.display(),
                        h.sequence
                    )));
                    continue;
                }
            };
            listing.records.push(RankRecord {
                seq: h.sequence,
                step: h.step,
                epoch: h.epoch,
                job_id: g.job_id.as_str().to_string(),
                world_size: g.world_size.to_native(),
                rank: g.rank.to_native(),
                branch,
                segment: seg.path.clone(),
            });
        }
    }
    Ok(listing)
}

/// The records a job resumes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The common step.
    pub step: u64,
    /// Per rank (index = rank), the record of that step it loads.
    pub records: Vec<RankRecord>,
    /// The branch the job's next records carry: a new generation, the
    /// ordinal to continue from, and every start known to any rank.
    pub next: Branch,
    /// One line per thing an operator should know: damaged records, and
    /// records newer than the common step that are passed over.
    pub notes: Vec<String>,
}

/// What [`choose`] decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// Every rank resumes from its record of the common step.
    Resume(Choice),
    /// The job starts from the beginning, with this branch (no rank holds
    /// a record, or only records of the first two saves of a job, which a
    /// kill during them leaves, FORMAT.md §8.3).
    Fresh {
        /// The branch of the job's first records.
        next: Branch,
        /// What was passed over, as for [`Choice::notes`].
        notes: Vec<String>,
    },
}

/// Every generation's start known to any record of any rank; for a
/// generation named twice with different bases, the lower base, and per
/// rank the higher sequence (the rule then abandons more, never less).
fn known_starts(listings: &[RankListing]) -> BTreeMap<u64, Start> {
    let mut starts: BTreeMap<u64, Start> = BTreeMap::new();
    for l in listings {
        for r in &l.records {
            for s in &r.branch.starts {
                starts
                    .entry(s.generation)
                    .and_modify(|k| {
                        k.base = match (k.base, s.base) {
                            (Some(x), Some(y)) => Some(x.min(y)),
                            _ => None,
                        };
                        k.seqs = match (k.seqs.take(), &s.seqs) {
                            (Some(a), Some(b)) => Some(
                                (0..a.len().max(b.len()))
                                    .map(|i| {
                                        a.get(i)
                                            .copied()
                                            .unwrap_or(0)
                                            .max(b.get(i).copied().unwrap_or(0))
                                    })
                                    .collect(),
                            ),
                            (a, b) => a.or_else(|| b.clone()),
                        };
                    })
                    .or_insert_with(|| s.clone());
            }
        }
    }
    starts
}

/// Whether `r` lies on an abandoned branch: a later generation started
/// from an older step than `r`'s (or started fresh).
pub fn abandoned(r: &RankRecord, starts: &BTreeMap<u64, Start>) -> bool {
    starts
        .range(r.branch.generation + 1..)
        .any(|(_, s)| s.abandons_step(r.step))
}

/// Per rank (index = rank), the highest sequence its listing shows, intact
/// or damaged (0: none): where each rank's log stands when a generation
/// begins.
fn highest_sequences(listings: &[RankListing]) -> Vec<u64> {
    listings
        .iter()
        .map(|l| {
            l.records
                .iter()
                .map(|r| r.seq)
                .chain(l.damaged.iter().map(|d| d.seq))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// The newest step every rank holds, on the job's live branch, as
/// [`choose`] would pick it; `None` when there is none. Used by the tools.
pub fn common_step(listings: &[RankListing], world_size: u32) -> Option<u64> {
    match choose(listings, world_size) {
        Ok(Decision::Resume(c)) => Some(c.step),
        _ => None,
    }
}

/// Picks the records a job of `world_size` ranks resumes from, given every
/// rank's listing (index = rank). The rule is FORMAT.md §8.3. An error
/// names what each rank holds.
pub fn choose(listings: &[RankListing], world_size: u32) -> Result<Decision, String> {
    if listings.len() != world_size as usize {
        return Err(format!(
            "{} rank listings for a job of world size {world_size}",
            listings.len()
        ));
    }
    for (i, l) in listings.iter().enumerate() {
        if l.rank as usize != i {
            return Err(format!("listing {i} is of rank {}", l.rank));
        }
    }
    let starts = known_starts(listings);
    let max_generation = listings
        .iter()
        .flat_map(|l| l.records.iter())
        .map(|r| r.branch.generation)
        .chain(starts.keys().copied())
        .max()
        .unwrap_or(0);
    let held = || {
        listings
            .iter()
            .map(RankListing::describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    // Per rank: step -> the record of that step on the live branch (the
    // highest generation, then the highest sequence).
    let mut live: Vec<BTreeMap<u64, &RankRecord>> = Vec::new();
    let mut other_world = Vec::new();
    for l in listings {
        let mut steps: BTreeMap<u64, &RankRecord> = BTreeMap::new();
        for r in &l.records {
            if r.world_size != world_size || r.rank != l.rank {
                other_world.push((l.rank, r));
                continue;
            }
            if abandoned(r, &starts) {
                continue;
            }
            let better = steps
                .get(&r.step)
                .is_none_or(|o| (r.branch.generation, r.seq) > (o.branch.generation, o.seq));
            if better {
                steps.insert(r.step, r);
            }
        }
        live.push(steps);
    }
    // The newest step all ranks hold, with one job id among them.
    let mut common: Option<u64> = None;
    if let Some(first) = live.first() {
        for step in first.keys().rev() {
            let recs: Option<Vec<&RankRecord>> =
                live.iter().map(|m| m.get(step).copied()).collect();
            if let Some(recs) = recs {
                if recs.iter().all(|r| r.job_id == recs[0].job_id) {
                    common = Some(*step);
                    break;
                }
            }
        }
    }
    let mut notes = Vec::new();
    for l in listings {
        for d in &l.damaged {
            notes.push(format!(
                "rank {}: record {} (step {}) in {} at offset {} is damaged: {}",
                l.rank,
                d.seq,
                d.step,
                d.segment.display(),
                d.offset,
                d.cause
            ));
        }
    }
    let Some(step) = common else {
        if !other_world.is_empty() {
            let (rank, r) = other_world[0];
            return Err(format!(
                "the job has world size {world_size}, but rank {rank} holds a record of world \
                 size {} (rank {}, step {}); a job resumes only with the world size it was \
                 saved with. What each rank holds: {}",
                r.world_size,
                r.rank,
                r.step,
                held()
            ));
        }
        // A kill during the first two saves of a job leaves ranks with no
        // common step (FORMAT.md §8.3); anything else is an error.
        let live_count: usize = live.iter().map(BTreeMap::len).sum();
        let early = listings.iter().all(|l| l.damaged.is_empty())
            && live
                .iter()
                .flat_map(|m| m.values())
                .all(|r| r.branch.ordinal <= 2 && r.branch.generation > 0);
        if live_count == 0 || early {
            if live_count > 0 {
                notes.push(format!(
                    "no step is held by every rank, and the ranks hold only records of the \
                     first two saves of the job: starting from the beginning ({})",
                    held()
                ));
            }
            let mut next_starts: Vec<Start> = starts.into_values().collect();
            next_starts.push(Start {
                generation: max_generation + 1,
                base: None,
                seqs: Some(highest_sequences(listings)),
            });
            return Ok(Decision::Fresh {
                next: Branch {
                    generation: max_generation + 1,
                    ordinal: 0,
                    starts: next_starts,
                },
                notes,
            });
        }
        return Err(format!(
            "no step is held intact by every rank of the job (world size {world_size}): {}",
            held()
        ));
    };
    let records: Vec<RankRecord> = live.iter().map(|m| m[&step].clone()).collect();
    for (l, m) in listings.iter().zip(&live) {
        let newer: Vec<u64> = m.range(step + 1..).map(|(s, _)| *s).collect();
        if !newer.is_empty() {
            notes.push(format!(
                "rank {}: steps {newer:?} are newer than the common step {step} but not held by \
                 every rank; they are passed over",
                l.rank
            ));
        }
    }
    let ordinal = records.iter().map(|r| r.branch.ordinal).max().unwrap_or(0);
    let mut next_starts: Vec<Start> = starts.into_values().collect();
    next_starts.push(Start {
        generation: max_generation + 1,
        base: Some(step),
        seqs: Some(highest_sequences(listings)),
    });
    Ok(Decision::Resume(Choice {
        step,
        records,
        next: Branch {
            generation: max_generation + 1,
            ordinal,
            starts: next_starts,
        },
        notes,
    }))
}

/// The lines of FORMAT.md §8's rule an operator sees: each rank's newest
/// record and the common step, for `tail`, `inspect` and `verify`.
pub fn summary(listings: &[RankListing]) -> (Vec<String>, Option<u64>) {
    let world_size = listings
        .iter()
        .flat_map(|l| l.records.last())
        .map(|r| r.world_size)
        .max()
        .unwrap_or(listings.len() as u32);
    let mut lines = Vec::new();
    for l in listings {
        match l.newest() {
            Some(r) => lines.push(format!(
                "rank {:>5}  newest seq {} epoch {} step {} generation {} job {:?} world size {}{}",
                l.rank,
                r.seq,
                r.epoch,
                r.step,
                r.branch.generation,
                r.job_id,
                r.world_size,
                if l.damaged.is_empty() {
                    String::new()
                } else {
                    format!("  ({} damaged)", l.damaged.len())
                }
            )),
            None => lines.push(format!("rank {:>5}  no intact record", l.rank)),
        }
    }
    let common = if listings.len() == world_size as usize {
        common_step(listings, world_size)
    } else {
        None
    };
    (lines, common)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        rank: u32,
        seq: u64,
        step: u64,
        generation: u64,
        ordinal: u64,
        starts: &[(u64, Option<u64>)],
    ) -> RankRecord {
        let starts = starts
            .iter()
            .map(|&(generation, base)| Start {
                generation,
                base,
                seqs: None,
            })
            .collect();
        RankRecord {
            seq,
            step,
            epoch: 0,
            job_id: "j".into(),
            world_size: 2,
            rank,
            branch: Branch {
                generation,
                ordinal,
                starts,
            },
            segment: PathBuf::from("s"),
        }
    }

    fn listing(rank: u32, records: Vec<RankRecord>) -> RankListing {
        RankListing {
            rank,
            dir: PathBuf::from(format!("J/{}", rank_dir_name(rank))),
            records,
            damaged: vec![],
        }
    }

    #[test]
    fn newest_common_step() {
        let g1 = [(1, None)];
        let a = listing(
            0,
            vec![
                rec(0, 1, 10, 1, 1, &g1),
                rec(0, 2, 20, 1, 2, &g1),
                rec(0, 3, 30, 1, 3, &g1),
            ],
        );
        let b = listing(1, vec![rec(1, 1, 10, 1, 1, &g1), rec(1, 2, 20, 1, 2, &g1)]);
        let Decision::Resume(c) = choose(&[a, b], 2).unwrap() else {
            panic!()
        };
        assert_eq!(c.step, 20);
        assert_eq!(c.next.generation, 2);
        assert_eq!(c.next.ordinal, 2);
        assert_eq!(
            c.next.starts,
            vec![
                Start {
                    generation: 1,
                    base: None,
                    seqs: None
                },
                Start {
                    generation: 2,
                    base: Some(20),
                    seqs: Some(vec![3, 2])
                }
            ]
        );
    }

    #[test]
    fn starts_read_both_forms_and_tell_abandoned_sequences() {
        let b: Branch = serde_json::from_str(
            r#"{"generation":3,"ordinal":4,"starts":[[1,null],[2,20,[7,5]],[3,null,[9,9]]]}"#,
        )
        .unwrap();
        assert_eq!(b.starts[0].seqs, None);
        assert_eq!(b.starts[1].seqs, Some(vec![7, 5]));
        let json = serde_json::to_string(&b).unwrap();
        assert!(
            json.contains(r#"[[1,null],[2,20,[7,5]],[3,null,[9,9]]]"#),
            "{json}"
        );
        let g2 = &b.starts[1];
        // Rank 0's record 7 of step 30 was written before generation 2
        // began from step 20: abandoned. Its record 8 (after) is not; nor
        // is record 6 of step 20; nor a rank the start does not cover.
        assert!(g2.abandons_sequence(0, 7, 30));
        assert!(!g2.abandons_sequence(0, 8, 30));
        assert!(!g2.abandons_sequence(0, 6, 20));
        assert!(!g2.abandons_sequence(2, 1, 30));
        assert!(!b.starts[0].abandons_sequence(0, 1, 30));
        assert!(b.starts[2].abandons_sequence(1, 9, 1));
        assert!(
            serde_json::from_str::<Branch>(r#"{"generation":1,"ordinal":1,"starts":[[1]]}"#)
                .is_err()
        );
    }

    #[test]
    fn abandoned_branch_is_never_combined() {
        // Generation 1 wrote step 30 on rank 0 only; the job restored from
        // 20 (generation 2), rank 1 wrote 30 on the new branch, then a kill.
        let g1 = [(1, None)];
        let g2 = [(1, None), (2, Some(20))];
        let a = listing(0, vec![rec(0, 2, 20, 1, 2, &g1), rec(0, 3, 30, 1, 3, &g1)]);
        let b = listing(1, vec![rec(1, 2, 20, 1, 2, &g1), rec(1, 3, 30, 2, 3, &g2)]);
        let Decision::Resume(c) = choose(&[a, b], 2).unwrap() else {
            panic!()
        };
        assert_eq!(c.step, 20);
        assert_eq!(c.next.generation, 3);
    }

    #[test]
    fn world_size_change_names_each_rank() {
        let g1 = [(1, None)];
        let a = listing(0, vec![rec(0, 1, 10, 1, 1, &g1)]);
        let b = listing(1, vec![rec(1, 1, 10, 1, 1, &g1)]);
        let c = listing(2, vec![]);
        let e = choose(&[a, b, c], 3).unwrap_err();
        assert!(e.contains("world size 2"), "{e}");
        assert!(e.contains("rank 2 (J/rank-00002): no intact record"), "{e}");
    }

    #[test]
    fn early_kill_starts_fresh_late_gap_is_an_error() {
        let g1 = [(1, None)];
        let a = listing(0, vec![rec(0, 1, 10, 1, 1, &g1), rec(0, 2, 20, 1, 2, &g1)]);
        let b = listing(1, vec![]);
        assert!(matches!(
            choose(&[a, b.clone()], 2).unwrap(),
            Decision::Fresh { .. }
        ));
        let a = listing(0, vec![rec(0, 5, 50, 1, 5, &g1)]);
        let e = choose(&[a, b], 2).unwrap_err();
        assert!(e.contains("no step is held intact by every rank"), "{e}");
    }

    #[test]
    fn rank_dir_names() {
        assert_eq!(rank_dir_name(3), "rank-00003");
        assert_eq!(parse_rank_dir("rank-00012"), Some(12));
        assert_eq!(parse_rank_dir("rank-12"), None);
        assert_eq!(parse_rank_dir("rank-0001x"), None);
    }
}
