//! Multi-rank jobs under real torchrun (`python3 -m torch.distributed.run
//! --standalone`, gloo on CPU, one thread per rank, deterministic
//! algorithms): `tests/python/torch_ranks.py` trains a small MLP with DDP
//! (AdamW) or with a ZeroRedundancyOptimizer (Adam, each rank saving its own
//! shard) and checkpoints every step with `epochwal.DistributedCheckpointer`.
//!
//! - The whole job (the torchrun agent and every worker, each in its own
//!   session) is SIGKILLed at random moments (2 ranks DDP: 12 moments; 4
//!   ranks ZeRO: 8) and restarted: every restart resumes all ranks from the
//!   same step, never before a step every rank had made durable, and the
//!   final parameters, optimizer state and RNG of every rank are
//!   bit-identical to an uninterrupted run.
//! - One rank SIGKILLs itself in the middle of a save (2 ranks, ZeRO); the
//!   restart resumes and ends bit-identical.
//! - One rank's newest record is damaged: `epochwal verify JOB` fails and
//!   names it, the job falls back to the previous common step and says so,
//!   and ends bit-identical; a restart with another world size fails naming
//!   what each rank holds.
//!
//! The tests of this file run one at a time (a 4-rank job alone loads a
//! 2-core machine). Needs python3 with torch and the package installed; see
//! tests/common/torch.rs for the skip rule.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::torch::{available, python, script, Rng};

/// Steps of every run (each life of a killed run makes at most about 10).
const STEPS: u64 = 150;
/// Sleep per step (s): a step of the small model takes well under a
/// millisecond; with it, a kill a few ms after a save lands a step or two on.
const STEP_SLEEP: &str = "0.004";
/// Generous: four ranks importing torch on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(240);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn torchrun(ranks: u32, job: &Path, digest: &Path, mode: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "torch.distributed.run", "--standalone"])
        .arg(format!("--nproc-per-node={ranks}"))
        .arg(script("torch_ranks.py"))
        .arg(job)
        .args([
            "--mode",
            mode,
            "--steps",
            &STEPS.to_string(),
            "--step-sleep",
            STEP_SLEEP,
        ])
        .arg("--digest")
        .arg(digest)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .process_group(0);
    cmd
}

/// The parent pid of every process, from /proc.
fn parents() -> BTreeMap<i32, i32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `pid` and all its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let parents = parents();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Whether `pid` is gone or a zombie.
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

struct Job {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Job {
    fn spawn(mut cmd: Command) -> Job {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3 -m torch.distributed.run");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Job {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line of stdout or stderr; `None` once both are closed.
    fn next(&mut self, what: &str) -> Option<String> {
        match self.lines.recv_timeout(LONG) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("no line within {LONG:?} waiting for {what}"))
            }
        }
    }

    /// SIGKILLs the agent and every worker (each worker runs in its own
    /// session, so the agent's process group alone would miss them), and
    /// waits until all are dead.
    fn kill_all(&mut self) {
        let pids = tree(self.child.id() as i32);
        for &pid in &pids {
            // SAFETY: kill(2) with plain integers; a pid from the tree we
            // listed a moment ago (the agent is our unreaped child; a worker
            // that exited meanwhile leaves at worst a stale number, which
            // kill reports as ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + LONG;
        while !pids.iter().all(|&p| dead(p)) {
            assert!(
                Instant::now() < deadline,
                "processes {pids:?} survive SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads to the end; the exit status and every line.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        while self.next("the end of the job").is_some() {}
        let status = self.child.wait().unwrap();
        (status, self.seen)
    }

    fn fail(&mut self, why: &str) -> ! {
        self.kill_all();
        let rest: Vec<String> = self.lines.try_iter().collect();
        panic!(
            "{why}\noutput:\n{}\n{}",
            self.seen.join("\n"),
            rest.join("\n")
        );
    }
}

fn run_ok(cmd: Command) -> Vec<String> {
    let (status, lines) = Job::spawn(cmd).finish();
    assert!(
        status.success(),
        "torchrun failed ({status}):\n{}",
        lines.join("\n")
    );
    lines
}

fn num_after(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `rank R resumed S` / `rank R fresh` lines: (rank, step).
fn resume_line(line: &str) -> Option<(u32, u64)> {
    let rest = line.strip_prefix("rank ")?;
    let (rank, what) = rest.split_once(' ')?;
    let rank = rank.parse().ok()?;
    if what == "fresh" {
        return Some((rank, 0));
    }
    Some((rank, num_after(what, "resumed ")?))
}

fn saved_line(line: &str) -> Option<(u32, u64)> {
    let rest = line.strip_prefix("rank ")?;
    let (rank, what) = rest.split_once(' ')?;
    Some((rank.parse().ok()?, num_after(what, "saved ")?))
}

/// Digests of an uninterrupted run, per configuration (computed once).
fn reference(ranks: u32, mode: &str) -> PathBuf {
    static DONE: Mutex<BTreeMap<(u32, String), (tempfile::TempDir, PathBuf)>> =
        Mutex::new(BTreeMap::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    let key = (ranks, mode.to_string());
    if let Some((_, d)) = done.get(&key) {
        return d.clone();
    }
    let tmp = tempfile::tempdir().unwrap();
    let digest = tmp.path().join("digest");
    let started = Instant::now();
    run_ok(torchrun(ranks, &tmp.path().join("job"), &digest, mode, &[]));
    eprintln!(
        "reference run ({ranks} ranks, {mode}, {STEPS} steps): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    done.insert(key, (tmp, digest.clone()));
    digest
}

fn assert_same_digests(ranks: u32, reference: &Path, got: &Path) {
    for r in 0..ranks {
        let want = std::fs::read_to_string(format!("{}.rank{r}", reference.display())).unwrap();
        let have = std::fs::read_to_string(format!("{}.rank{r}", got.display()))
            .unwrap_or_else(|e| panic!("digest of rank {r}: {e}"));
        assert_eq!(
            have, want,
            "rank {r}: the final state differs from the uninterrupted run's"
        );
    }
}

/// Starts the job again and again, SIGKILLing all of it at a random moment,
/// then lets it finish; checks every resume and the final state.
fn killed_job_matches_uninterrupted(ranks: u32, mode: &str, kills: u32) {
    let test = format!("python_torch_ranks {ranks} ranks {mode}");
    if !available(&test) {
        return;
    }
    let _serial = serial();
    let mut rng = Rng::from_env(&test);
    let want = reference(ranks, mode);
    let tmp = tempfile::tempdir().unwrap();
    let job_dir = tmp.path().join("job");
    let digest = tmp.path().join("digest");
    let started = Instant::now();
    let mut done_kills = 0;
    let mut startup_kills = 0;
    // The newest step every rank had reported durable: no resume may be older.
    let mut durable_everywhere = 0u64;
    let mut resumes = Vec::new();
    loop {
        let finish = done_kills >= kills;
        let mut job = Job::spawn(torchrun(ranks, &job_dir, &digest, mode, &[]));
        if !finish && startup_kills < 3 && rng.below(5) == 0 {
            // Anywhere in the start: imports, rendezvous, load_latest.
            std::thread::sleep(Duration::from_millis(rng.below(4000)));
            job.kill_all();
            done_kills += 1;
            startup_kills += 1;
            continue;
        }
        let mut resumed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut saved: BTreeMap<u32, u64> = BTreeMap::new();
        let saves_before_kill = 1 + rng.below(4);
        let mut rank0_saves = 0;
        let mut killed = false;
        while let Some(line) = job.next("a step") {
            if let Some((r, s)) = resume_line(&line) {
                if s < durable_everywhere {
                    job.fail(&format!(
                        "rank {r} resumed at step {s}, but every rank had made step \
                         {durable_everywhere} durable"
                    ));
                }
                resumed.insert(r, s);
            }
            if let Some((r, s)) = saved_line(&line) {
                saved.insert(r, s);
                if r == 0 && !finish {
                    rank0_saves += 1;
                    if rank0_saves == saves_before_kill {
                        std::thread::sleep(Duration::from_millis(rng.below(30)));
                        job.kill_all();
                        killed = true;
                        break;
                    }
                }
            }
        }
        let steps: Vec<u64> = resumed.values().copied().collect();
        if steps.len() != ranks as usize || steps.iter().any(|s| *s != steps[0]) {
            job.fail(&format!(
                "the ranks did not all resume from one step: {resumed:?}"
            ));
        }
        resumes.push(steps[0]);
        if saved.len() == ranks as usize {
            // A save returned after the previous one was durable.
            let everywhere = saved.values().min().unwrap().saturating_sub(1);
            durable_everywhere = durable_everywhere.max(everywhere);
        }
        if killed {
            done_kills += 1;
            continue;
        }
        let status = job.child.wait().unwrap();
        if !status.success() {
            job.fail(&format!("the final run failed: {status}"));
        }
        break;
    }
    assert_same_digests(ranks, &want, &digest);
    eprintln!(
        "{test}: {done_kills} kills ({startup_kills} during start), resumes {resumes:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        resumes.iter().filter(|s| **s > 0).count() >= 3,
        "too few restarts resumed from a record: {resumes:?}"
    );
}

#[test]
fn ddp_two_ranks_killed_at_random_moments_end_bit_identical() {
    killed_job_matches_uninterrupted(2, "ddp", 12);
}

#[test]
fn zero_four_ranks_killed_at_random_moments_end_bit_identical() {
    killed_job_matches_uninterrupted(4, "zero", 8);
}

#[test]
fn one_rank_killed_alone_mid_save_resumes_bit_identical() {
    if !available("python_torch_ranks one rank killed") {
        return;
    }
    let _serial = serial();
    let want = reference(2, "zero");
    let tmp = tempfile::tempdir().unwrap();
    let job_dir = tmp.path().join("job");
    let digest = tmp.path().join("digest");
    let started = Instant::now();
    let (status, lines) = Job::spawn(torchrun(
        2,
        &job_dir,
        &digest,
        "zero",
        &["--kill-self-at", "20", "--kill-rank", "1"],
    ))
    .finish();
    assert!(
        !status.success(),
        "the job survived its rank's death:\n{}",
        lines.join("\n")
    );
    // A kill that lands after its save returned is reported as missed and
    // armed again for the next save: the last one armed is the one that
    // landed inside a save.
    let killed_in: u64 = lines
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("rank 1 killing itself ")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no kill was armed:\n{}", lines.join("\n")));
    assert!(
        !lines
            .iter()
            .any(|l| *l == format!("rank 1 saved {killed_in}")),
        "rank 1's save of step {killed_in} returned before the kill:\n{}",
        lines.join("\n")
    );
    let lines = run_ok(torchrun(2, &job_dir, &digest, "zero", &[]));
    let resumed: Vec<(u32, u64)> = lines.iter().filter_map(|l| resume_line(l)).collect();
    assert_eq!(resumed.len(), 2, "{}", lines.join("\n"));
    assert_eq!(resumed[0].1, resumed[1].1, "{}", lines.join("\n"));
    // Saves waited for their persist: the step before the killed save was
    // durable on both ranks.
    assert!(resumed[0].1 >= killed_in - 1, "{}", lines.join("\n"));
    assert_same_digests(2, &want, &digest);
    eprintln!(
        "one rank killed mid-save: resumed from {}, {:.1} s",
        resumed[0].1,
        started.elapsed().as_secs_f64()
    );
}

fn epochwal(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epochwal"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn damaged_newest_record_falls_back_to_the_previous_common_step() {
    if !available("python_torch_ranks damaged record") {
        return;
    }
    let _serial = serial();
    let want = reference(2, "ddp");
    let tmp = tempfile::tempdir().unwrap();
    let job_dir = tmp.path().join("job");
    let digest = tmp.path().join("digest");
    let started = Instant::now();
    // A first run that stops after step 12.
    let mut first = torchrun(2, &job_dir, &digest, "ddp", &[]);
    first.args(["--steps", "12"]);
    run_ok(first);

    let (code, text) = epochwal(&["verify"], &job_dir);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("common step 12 (rank 0 seq"), "{text}");
    for tool in ["tail", "inspect"] {
        let (code, text) = epochwal(&[tool], &job_dir);
        assert_eq!(code, 0, "{tool}: {text}");
        assert!(text.contains("common step 12"), "{tool}: {text}");
        assert!(text.contains("rank     1  newest seq"), "{tool}: {text}");
    }

    // Flip one payload byte of rank 1's newest record.
    let rank1 = job_dir.join("rank-00001");
    let reader = epochwal::wal::LogReader::open(&rank1).unwrap();
    let scan = reader.scan().unwrap();
    let seg = scan
        .segments
        .iter()
        .rev()
        .find(|s| !s.records.is_empty())
        .unwrap();
    let h = seg.records.last().unwrap();
    assert_eq!(h.step, 12);
    let mut bytes = std::fs::read(&seg.path).unwrap();
    let at = (h.offset + 4096 + h.payload_len / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&seg.path, &bytes).unwrap();

    let (code, text) = epochwal(&["verify"], &job_dir);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("common step 11"), "{text}");
    assert!(
        text.contains("damaged beyond the common step: rank 1: record"),
        "{text}"
    );

    // The job falls back to step 11 on both ranks and says so.
    let lines = run_ok(torchrun(2, &job_dir, &digest, "ddp", &[]));
    let all = lines.join("\n");
    assert!(
        all.contains("resuming every rank from common step 11"),
        "{all}"
    );
    assert!(
        all.contains("rank 1: record") && all.contains("is damaged"),
        "{all}"
    );
    let resumed: Vec<(u32, u64)> = lines.iter().filter_map(|l| resume_line(l)).collect();
    assert_eq!(resumed.len(), 2, "{all}");
    assert!(resumed.iter().all(|(_, s)| *s == 11), "{all}");
    assert_same_digests(2, &want, &digest);

    // Another world size: an error naming what each rank holds.
    let (status, lines) = Job::spawn(torchrun(3, &job_dir, &digest, "ddp", &[])).finish();
    let all = lines.join("\n");
    assert!(!status.success(), "{all}");
    assert!(
        all.contains("the job has world size 3, but rank 0 holds a record of world size 2"),
        "{all}"
    );
    assert!(all.contains("rank-00002): no intact record"), "{all}");
    eprintln!(
        "damaged record test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
