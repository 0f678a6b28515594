//! Multi-rank jobs under real torchrun (`python3 -m torch.distributed.run
//! --standalone`, gloo on CPU, one thread per rank, deterministic
//! algorithms): `tests/python/torch_ranks.py` trains a small MLP with DDP
//! (AdamW) or with a ZeroRedundancyOptimizer (Adam, each rank saving its own
//! shard) and checkpoints every step with `epochwal.DistributedCheckpointer`.
//!
//! - The whole job (the torchrun agent and every worker, each in its own
//!   session) is SIGKILLed at 20 random moments in each configuration (2
//!   ranks DDP, 4 ranks ZeRO): up to 4 in the start, the others one or two
//!   steps in, aimed in turn inside a save and between two from the
//!   measured step and save times (each rank's last line says where it
//!   died: the summary on stderr counts them). Every restart resumes all ranks from the same
//!   step, never before a step every rank had made durable nor after one a
//!   rank had not begun to save, and the final parameters, optimizer state
//!   and RNG of every rank are bit-identical to an uninterrupted run.
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

use common::systemd::notice;
use common::torch::{available, python, script, Rng};

/// Steps of every run (a killed life makes about 1 to 3: it is killed
/// within a step after rank 0's first or second save).
const STEPS: u64 = 100;
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

/// Every process's pid and its /proc directory.
fn processes() -> Vec<(i32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            Some((pid, e.path()))
        })
        .collect()
}

/// The parent pid of every process, from /proc.
fn parents() -> BTreeMap<i32, i32> {
    let mut out = BTreeMap::new();
    for (pid, path) in processes() {
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
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
    /// Each line of stdout or stderr, with the moment its reader thread
    /// read it.
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
    /// The agent and its workers, listed once every worker has started, so
    /// that a kill reaches them all at once (empty before).
    pids: Vec<i32>,
    /// A string that the command line of every process of this job holds,
    /// and of no other (the job's temporary directory).
    marker: String,
}

/// Processes alive (not zombies) whose command line holds `marker`.
fn naming(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for (pid, path) in processes() {
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let marker = marker.as_bytes();
        if cmdline.windows(marker.len()).any(|w| w == marker) && !dead(pid) {
            out.push(pid);
        }
    }
    out
}

impl Job {
    /// Starts `cmd`, one of whose arguments is the job directory `job`.
    fn spawn(mut cmd: Command, job: &Path) -> Job {
        let marker = job.display().to_string();
        assert!(
            job.is_absolute() && cmd.get_args().any(|a| a == job.as_os_str()),
            "the command names the job directory {marker}, by which its processes are found"
        );
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
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Job {
            child,
            lines,
            seen: Vec::new(),
            pids: Vec::new(),
            marker,
        }
    }

    /// The next line of stdout or stderr and when it was read; `None` once
    /// both are closed.
    fn next_at(&mut self, what: &str) -> Option<(Instant, String)> {
        match self.lines.recv_timeout(LONG) {
            Ok((at, l)) => {
                self.seen.push(l.clone());
                Some((at, l))
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("no line within {LONG:?} waiting for {what}"))
            }
        }
    }

    /// The next line of stdout or stderr; `None` once both are closed.
    fn next(&mut self, what: &str) -> Option<String> {
        self.next_at(what).map(|(_, l)| l)
    }

    /// Lists the agent and its workers now (call it once every worker has
    /// started): [`Job::kill_all`] then needs no listing before its kill.
    fn list(&mut self) {
        self.pids = tree(self.child.id() as i32);
    }

    /// SIGKILLs the agent and every worker (each worker runs in its own
    /// session, so the agent's process group alone would miss them), and
    /// waits until all are dead.
    fn kill_all(&mut self) {
        let mut pids = if self.pids.is_empty() {
            tree(self.child.id() as i32)
        } else {
            self.pids.clone()
        };
        // The workers first, the agent last: the ranks die within
        // microseconds of each other.
        for &pid in pids.iter().rev() {
            // SAFETY: kill(2) with plain integers; a pid of the job, listed
            // while it was running (the agent is our unreaped child; a worker
            // that exited meanwhile leaves at worst a stale number, which
            // kill reports as ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // A worker the agent forked after the listing is an orphan now: it
        // is found by the job directory its command line names.
        let deadline = Instant::now() + LONG;
        loop {
            let strays = naming(&self.marker);
            for &pid in &strays {
                // SAFETY: as above; a process whose command line names this
                // job's own temporary directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            pids.extend(&strays);
            if strays.is_empty() && pids.iter().all(|&p| dead(p)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes {pids:?} survive SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
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
        let rest: Vec<String> = self.lines.try_iter().map(|(_, l)| l).collect();
        panic!(
            "{why}\noutput:\n{}\n{}",
            self.seen.join("\n"),
            rest.join("\n")
        );
    }
}

fn run_ok(cmd: Command, job: &Path) -> Vec<String> {
    let (status, lines) = Job::spawn(cmd, job).finish();
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

fn saving_line(line: &str) -> Option<(u32, u64)> {
    let rest = line.strip_prefix("rank ")?;
    let (rank, what) = rest.split_once(' ')?;
    Some((rank.parse().ok()?, num_after(what, "saving ")?))
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
    let job = tmp.path().join("job");
    run_ok(torchrun(ranks, &job, &digest, mode, &[]), &job);
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

/// Where a rank's last line (before its kill) says it stood.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stood {
    /// Said `saving S` but not `saved S`.
    InSave,
    /// Resumed, and no save begun since its last one returned.
    Between,
}

/// What the lines of the lives of a killed job say: the bounds on each
/// resume, and the measured start, step and save times of rank 0 that the
/// kill moments are drawn from.
struct Watch {
    ranks: u32,
    /// Per rank, the newest step known to be durable: the resumed step, or
    /// `S - 1` once `saved S` is said (a save returns after the persist of
    /// the previous record).
    durable: Vec<u64>,
    /// Per rank, the newest step it began to save (or resumed from): no
    /// rank can hold a record of a later step on the live branch.
    reached: Vec<u64>,
    /// The bounds of this life's resume, fixed at its start.
    lower: u64,
    upper: u64,
    resumed: BTreeMap<u32, u64>,
    stood: BTreeMap<u32, Stood>,
    life_started: Instant,
    rank0_saving: Option<Instant>,
    rank0_saved: Option<Instant>,
    /// Measured: spawn to rank 0's first `saving`; rank 0's `saved S` to
    /// `saving S+1`; rank 0's `saving S` to `saved S`.
    starts: Vec<Duration>,
    steps: Vec<Duration>,
    saves: Vec<Duration>,
}

/// The median of `xs`, or `default` when nothing was measured yet.
fn median(xs: &[Duration], default: Duration) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(default)
}

/// A random duration in `0..d` (microsecond resolution).
fn within(rng: &mut Rng, d: Duration) -> Duration {
    Duration::from_micros(rng.below((d.as_micros() as u64).max(1)))
}

impl Watch {
    fn new(ranks: u32) -> Watch {
        Watch {
            ranks,
            durable: vec![0; ranks as usize],
            reached: vec![0; ranks as usize],
            lower: 0,
            upper: 0,
            resumed: BTreeMap::new(),
            stood: BTreeMap::new(),
            life_started: Instant::now(),
            rank0_saving: None,
            rank0_saved: None,
            starts: Vec::new(),
            steps: Vec::new(),
            saves: Vec::new(),
        }
    }

    fn begin_life(&mut self) {
        self.lower = *self.durable.iter().min().unwrap();
        self.upper = *self.reached.iter().min().unwrap();
        self.resumed.clear();
        self.stood.clear();
        self.life_started = Instant::now();
        self.rank0_saving = None;
        self.rank0_saved = None;
    }

    /// Takes in one line read at `at`; `Some(true)` when it is rank 0's
    /// `saving S`, `Some(false)` when rank 0's `saved S`. An error when a
    /// resume breaks the bounds.
    fn see(&mut self, at: Instant, line: &str) -> Result<Option<bool>, String> {
        if let Some((r, s)) = resume_line(line) {
            if s < self.lower {
                return Err(format!(
                    "rank {r} resumed at step {s}, but every rank had made step {} durable",
                    self.lower
                ));
            }
            if s > self.upper {
                return Err(format!(
                    "rank {r} resumed at step {s}, but a rank had begun no save after step {}",
                    self.upper
                ));
            }
            if let Some((q, t)) = self.resumed.iter().next() {
                if *t != s {
                    return Err(format!(
                        "the ranks did not all resume from one step: rank {q} from {t}, \
                         rank {r} from {s}"
                    ));
                }
            } else {
                // load_latest is a collective: every rank chose this step,
                // whether or not it lives to say so.
                self.durable.iter_mut().for_each(|d| *d = s);
                self.reached.iter_mut().for_each(|d| *d = s);
            }
            self.resumed.insert(r, s);
            self.stood.insert(r, Stood::Between);
        } else if let Some((r, s)) = saving_line(line) {
            let reached = &mut self.reached[r as usize];
            *reached = (*reached).max(s);
            self.stood.insert(r, Stood::InSave);
            if r == 0 {
                match self.rank0_saved {
                    Some(t) => self.steps.push(at - t),
                    None => self.starts.push(at - self.life_started),
                }
                self.rank0_saving = Some(at);
                return Ok(Some(true));
            }
        } else if let Some((r, s)) = saved_line(line) {
            let durable = &mut self.durable[r as usize];
            *durable = (*durable).max(s - 1);
            self.stood.insert(r, Stood::Between);
            if r == 0 {
                if let Some(t) = self.rank0_saving {
                    self.saves.push(at - t);
                }
                self.rank0_saved = Some(at);
                return Ok(Some(false));
            }
        }
        Ok(None)
    }

    /// Whether every rank said from which step it resumed.
    fn all_resumed(&self) -> bool {
        self.resumed.len() == self.ranks as usize
    }

    fn start_time(&self) -> Duration {
        median(&self.starts, Duration::from_secs(4))
    }

    fn step_time(&self) -> Duration {
        median(&self.steps, Duration::from_millis(8))
    }

    fn save_time(&self) -> Duration {
        median(&self.saves, Duration::from_millis(2))
    }
}

/// Where the kills of a job landed, by the last line of each rank.
#[derive(Default)]
struct Landed {
    /// Before some rank said from which step it resumed, and with none
    /// inside a save.
    start: u32,
    /// With at least one rank inside a save (`every`: all of them).
    in_save: u32,
    every: u32,
    /// With every rank resumed and between two saves.
    between: u32,
}

/// Starts the job again and again, SIGKILLing all of it at a random moment
/// (up to 4 during the start, drawn within its measured duration; the rest
/// in rank 0's first or second save, or after it, aimed in turn inside a
/// save and between two from the measured times), then lets it finish. Each resume must be one step for every
/// rank, no older than the newest step every rank had made durable and no
/// newer than the newest every rank had begun to save; the final state must
/// be the uninterrupted run's.
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
    let mut watch = Watch::new(ranks);
    let mut landed = Landed::default();
    let mut done_kills = 0;
    let mut startup_kills = 0;
    let mut resumes = Vec::new();
    loop {
        let finish = done_kills >= kills;
        watch.begin_life();
        let mut job = Job::spawn(torchrun(ranks, &job_dir, &digest, mode, &[]), &job_dir);
        let mut killed = false;
        if !finish && startup_kills < 4 && rng.below(5) == 0 {
            // Anywhere in the start (imports, rendezvous, load_latest), or
            // a little after.
            std::thread::sleep(within(&mut rng, watch.start_time()));
            job.kill_all();
            startup_kills += 1;
            killed = true;
        } else {
            // Aim inside a save as often as between two, by where the kills
            // so far landed: a moment within the measured duration of a
            // save after rank 0 says it begins one, or within the measured
            // time between two after it says one returned.
            let aim_in_save = landed.in_save <= landed.between;
            let saves_before_kill = 1 + rng.below(2);
            let mut rank0_saves = 0;
            while let Some((at, line)) = job.next_at("a step") {
                let said = match watch.see(at, &line) {
                    Ok(said) => said,
                    Err(why) => job.fail(&why),
                };
                if job.pids.is_empty() && watch.all_resumed() {
                    job.list();
                }
                if finish || said != Some(aim_in_save) {
                    continue;
                }
                rank0_saves += 1;
                if rank0_saves < saves_before_kill {
                    continue;
                }
                let delay = if aim_in_save {
                    within(&mut rng, watch.save_time())
                } else {
                    within(&mut rng, watch.step_time())
                };
                let delay = delay.saturating_sub(at.elapsed());
                std::thread::sleep(delay);
                job.kill_all();
                killed = true;
                break;
            }
        }
        if killed {
            // The lines the ranks wrote before they died.
            while let Some((at, line)) = job.next_at("the end of the killed job's output") {
                if let Err(why) = watch.see(at, &line) {
                    job.fail(&why);
                }
            }
            done_kills += 1;
            let in_save = watch
                .stood
                .values()
                .filter(|s| **s == Stood::InSave)
                .count();
            if in_save > 0 {
                landed.in_save += 1;
                if in_save == ranks as usize {
                    landed.every += 1;
                }
            } else if !watch.all_resumed() {
                landed.start += 1;
            } else {
                landed.between += 1;
            }
            if let Some(s) = watch.resumed.values().next() {
                resumes.push(*s);
            }
            continue;
        }
        if !finish {
            job.fail(&format!(
                "the job ended before its kill (kill {} of {kills}): {STEPS} steps are too few",
                done_kills + 1
            ));
        }
        if !watch.all_resumed() {
            job.fail(&format!(
                "not every rank said from which step it resumed: {:?}",
                watch.resumed
            ));
        }
        resumes.push(*watch.resumed.values().next().unwrap());
        let status = job.child.wait().unwrap();
        if !status.success() {
            job.fail(&format!("the final run failed: {status}"));
        }
        break;
    }
    assert_same_digests(ranks, &want, &digest);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    notice(&format!(
        "{test}: {done_kills} whole-job SIGKILLs: {} during the start, {} inside a save \
         ({} of them inside every rank's), {} between saves; resumes {resumes:?}; measured \
         start {:.0} ms, step {:.1} ms, save {:.1} ms (medians); {:.1} s",
        landed.start,
        landed.in_save,
        landed.every,
        landed.between,
        ms(watch.start_time()),
        ms(watch.step_time()),
        ms(watch.save_time()),
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(done_kills, kills);
    assert!(
        resumes.iter().filter(|s| **s > 0).count() >= kills as usize / 4,
        "too few restarts resumed from a record: {resumes:?}"
    );
}

#[test]
fn ddp_two_ranks_killed_at_random_moments_end_bit_identical() {
    killed_job_matches_uninterrupted(2, "ddp", 20);
}

#[test]
fn zero_four_ranks_killed_at_random_moments_end_bit_identical() {
    killed_job_matches_uninterrupted(4, "zero", 20);
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
    let (status, lines) = Job::spawn(
        torchrun(
            2,
            &job_dir,
            &digest,
            "zero",
            &["--kill-self-at", "20", "--kill-rank", "1"],
        ),
        &job_dir,
    )
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
    let lines = run_ok(torchrun(2, &job_dir, &digest, "zero", &[]), &job_dir);
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
    run_ok(first, &job_dir);

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
    assert_eq!(
        common::torch::damage_newest_record(&job_dir.join("rank-00001")),
        12
    );

    let (code, text) = epochwal(&["verify"], &job_dir);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("common step 11"), "{text}");
    assert!(
        text.contains("damaged beyond the common step: rank 1: record"),
        "{text}"
    );

    // The job falls back to step 11 on both ranks and says so.
    let lines = run_ok(torchrun(2, &job_dir, &digest, "ddp", &[]), &job_dir);
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
    let (status, lines) = Job::spawn(torchrun(3, &job_dir, &digest, "ddp", &[]), &job_dir).finish();
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
