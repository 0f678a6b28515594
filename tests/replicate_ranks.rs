//! A multi-rank job moves to fresh hosts through S3 (issue 22, items 4
//! and 5), with real torchrun (gloo, CPU), the real Python package and a
//! real S3 server (s3s-fs on 127.0.0.1):
//! - host A, a network namespace of its own that sees only its directory
//!   and the S3 server's port, runs a 2-rank job that replicates every
//!   step to `s3://ckpt/job/rank-<r>` and advances `s3://ckpt/job/SET`;
//!   it is SIGKILLed once the set pointer names a step;
//! - the set pointer names, for every rank, a record object that exists,
//!   of the same step;
//! - host B, another namespace with an empty directory, runs the same job:
//!   every rank restores its record of that step from S3 and the job ends
//!   on the same bits as a job that ran through without interruption.
//!
//! Without `ip netns` (not root, no namespaces) the hosts are two
//! directories of this machine and the test says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Host;
use common::s3::S3Server;
use common::torch;

const STEPS: u64 = 60;
const WAIT: Duration = Duration::from_secs(300);

/// `python -m torch.distributed.run --standalone` of `ranks_s3.py`.
fn torchrun_args(job: &Path, url: Option<&str>, digest: &Path, ranks: u32) -> Vec<String> {
    let mut a = vec![
        "-m".into(),
        "torch.distributed.run".into(),
        "--standalone".into(),
        format!("--nproc-per-node={ranks}"),
        torch::script("ranks_s3.py").display().to_string(),
        job.display().to_string(),
        "--steps".into(),
        STEPS.to_string(),
        "--digest".into(),
        digest.display().to_string(),
    ];
    if let Some(u) = url {
        // Uploads keep up with a step of 50 ms; with none, "latest wins"
        // lets the ranks skip different steps (FORMAT.md §7.10).
        a.extend([
            "--url".into(),
            u.into(),
            "--step-seconds".into(),
            "0.05".into(),
        ]);
    }
    a
}

fn env(cmd: &mut Command, server: Option<&S3Server>) {
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // A host has only its loopback.
        .env("GLOO_SOCKET_IFNAME", "lo");
    if let Some(s) = server {
        cmd.envs(s.env());
    }
}

fn spawn(mut cmd: Command, out: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(out).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn torchrun")
}

fn wait_ok(child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(
                st.success(),
                "{what} failed ({st}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn digests(prefix: &Path, ranks: u32) -> Vec<String> {
    (0..ranks)
        .map(|r| {
            std::fs::read_to_string(format!("{}.{r}", prefix.display()))
                .unwrap_or_else(|e| panic!("digest of rank {r} at {}: {e}", prefix.display()))
        })
        .collect()
}

/// The job's set pointer `PREFIX/SET`, if it is on the server.
fn set_pointer(server: &S3Server, prefix: &str) -> Option<serde_json::Value> {
    let bytes = std::fs::read(server.object_file(&format!("{prefix}/SET"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every object the set pointer `set` of the job at `prefix` names, one
/// per rank, is on the server.
fn assert_set_objects_stored(server: &S3Server, prefix: &str, set: &serde_json::Value) {
    for (r, e) in set["ranks"].as_array().unwrap().iter().enumerate() {
        let key = format!("{prefix}/rank-{r:05}/{}", e["object"].as_str().unwrap());
        assert!(
            server.object_file(&key).is_file(),
            "the set names {key}, which is not on the server"
        );
    }
}

/// The processes descended from `root` (by their parent ids in /proc).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so after the ')'.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parent.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// SIGKILLs `root` and every process descended from it, until none is left.
fn kill_tree(root: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = descendants(root);
        all.push(root);
        for pid in &all {
            // SAFETY: kill(2) of a process this test started or one of its
            // descendants.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        if descendants(root).is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A host: a namespace when possible, else this machine.
struct Machine {
    host: Option<Host>,
    dir: PathBuf,
}

impl Machine {
    fn command(&self, hidden: &[PathBuf]) -> Command {
        match &self.host {
            Some(h) => h.command(hidden, &torch::python()),
            None => Command::new(torch::python()),
        }
    }
}

#[test]
fn a_job_moved_to_fresh_hosts_resumes_from_the_set_pointer_bit_identically() {
    if !torch::available("replicate_ranks") {
        return;
    }
    let Some(server) = S3Server::start() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let ranks = 2;

    // The job run through, without replication, for the reference bits.
    let reference = tmp.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let mut cmd = Command::new(torch::python());
    cmd.args(torchrun_args(
        &reference.join("J"),
        None,
        &reference.join("digest"),
        ranks,
    ));
    env(&mut cmd, None);
    let log = reference.join("log");
    wait_ok(&mut spawn(cmd, &log), &log, "the reference job");
    let expected = digests(&reference.join("digest"), ranks);

    // Two hosts.
    let machines: Vec<Machine> = ["a", "b"]
        .iter()
        .map(|tag| {
            let dir = tmp.path().join(format!("host-{tag}"));
            std::fs::create_dir(&dir).unwrap();
            let host = match Host::create(tag) {
                Ok(h) => {
                    h.bridge_port(server.port).expect("bridge the S3 port");
                    assert_eq!(h.interfaces(), vec!["lo".to_string()], "host {tag}");
                    Some(h)
                }
                Err(why) => {
                    common::systemd::notice(&format!(
                        "replicate_ranks: no network namespaces ({why}); the two hosts are two \
                         directories of this machine"
                    ));
                    None
                }
            };
            Machine { host, dir }
        })
        .collect();
    let hidden = |me: usize| -> Vec<PathBuf> {
        vec![
            machines[1 - me].dir.clone(),
            server.root().to_path_buf(),
            reference.clone(),
        ]
    };
    let url = server.url("job");

    // Host A: replicates every step; killed once the set names a step.
    let a = &machines[0];
    let mut cmd = a.command(&hidden(0));
    cmd.args(torchrun_args(
        &a.dir.join("J"),
        Some(&url),
        &a.dir.join("digest"),
        ranks,
    ));
    env(&mut cmd, Some(&server));
    let log_a = a.dir.join("log");
    let mut job_a = spawn(cmd, &log_a);
    let deadline = Instant::now() + WAIT;
    loop {
        if set_pointer(&server, "job").is_some_and(|s| s["step"].as_u64().unwrap_or(0) >= 10) {
            break;
        }
        if let Some(st) = job_a.try_wait().unwrap() {
            panic!(
                "host A's job ended ({st}) before the set pointer named step 10:\n{}",
                std::fs::read_to_string(&log_a).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no set pointer of step >= 10 within {WAIT:?}:\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The whole job at once: torchrun starts its workers in sessions of
    // their own, so every descendant of the process this test started.
    kill_tree(job_a.id());
    let _ = job_a.wait();
    assert!(
        descendants(job_a.id()).is_empty(),
        "host A's job still runs after SIGKILL"
    );
    let set = set_pointer(&server, "job").expect("the set pointer");
    let step = set["step"].as_u64().unwrap();
    assert_eq!(set["world_size"], 2, "{set}");
    let entries = set["ranks"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{set}");
    for (r, e) in entries.iter().enumerate() {
        assert_eq!(e["step"].as_u64(), Some(step), "rank {r}: {set}");
    }
    assert_set_objects_stored(&server, "job", &set);
    eprintln!("host A was killed with the set pointer at step {step} of {STEPS}");
    assert!(step < STEPS, "host A finished before it was killed");

    // Host B: an empty directory; resumes from S3.
    let b = &machines[1];
    let mut cmd = b.command(&hidden(1));
    cmd.args(torchrun_args(
        &b.dir.join("J"),
        Some(&url),
        &b.dir.join("digest"),
        ranks,
    ));
    env(&mut cmd, Some(&server));
    let log_b = b.dir.join("log");
    wait_ok(&mut spawn(cmd, &log_b), &log_b, "host B's job");
    let text = std::fs::read_to_string(&log_b).unwrap();
    for r in 0..ranks {
        assert!(
            text.contains(&format!("resumed rank={r} step={step}\n")),
            "rank {r} did not resume at step {step}:\n{text}"
        );
    }
    assert_eq!(
        digests(&b.dir.join("digest"), ranks),
        expected,
        "the job resumed on host B did not end on the bits of the uninterrupted job:\n{text}"
    );
    let last = set_pointer(&server, "job").expect("the set pointer");
    assert_eq!(last["step"].as_u64(), Some(STEPS), "{last}");
    // `epochwal pull` of the job's URL: every rank's record of the set.
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = common::s3::epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for r in 0..ranks {
        assert!(
            err.contains(&format!("rank {r}: restored step {STEPS} ")),
            "{err}"
        );
        let rec = epochwal::wal::recover(pulled.join(format!("rank-{r:05}")))
            .expect("recover a pulled rank")
            .record
            .expect("a pulled record");
        assert_eq!(rec.header().step, STEPS, "rank {r}");
    }
    restore_from_set_refusals(&server, tmp.path(), &url);
    eprintln!(
        "replicate_ranks: {} s",
        started.elapsed().as_secs_f64().round()
    );
}

/// `epochwal._native.restore_from_set` on what host B left: restores a
/// rank's record of `P/SET`'s step into an empty directory, and refuses
/// (naming the object, the rank and the cause) another world size, a
/// directory that holds a log, and (after `P/SET` is deleted) a job URL
/// whose rank has records but no `P/SET`.
fn restore_from_set_refusals(server: &S3Server, tmp: &Path, url: &str) {
    let script = r#"
import json, os, sys
from epochwal import _native, EpochwalError
url, tmp = sys.argv[1], sys.argv[2]
out = {}
got = _native.restore_from_set(url, os.path.join(tmp, "r1"), rank=1, world_size=2)
out["restored"] = got
out["again_if_empty"] = _native.restore_from_set(url, os.path.join(tmp, "r1"), rank=1, world_size=2, only_if_empty=True)
for name, call in [
    ("not_empty", lambda: _native.restore_from_set(url, os.path.join(tmp, "r1"), rank=1, world_size=2)),
    ("world_size", lambda: _native.restore_from_set(url, os.path.join(tmp, "r4"), rank=1, world_size=4)),
    ("no_set", lambda: (os.remove(sys.argv[3]), _native.restore_from_set(url, os.path.join(tmp, "r0"), rank=0, world_size=2))),
]:
    try:
        call()
        out[name] = None
    except EpochwalError as e:
        out[name] = str(e)
out["nothing"] = _native.restore_from_set(url + "-empty", os.path.join(tmp, "r9"), rank=0, world_size=2)
print(json.dumps(out))
"#;
    let mut cmd = Command::new(torch::python());
    // The last check deletes P/SET (the server's file) first.
    cmd.args(["-c", script, url])
        .arg(tmp)
        .arg(server.object_file("job/SET"))
        .envs(server.env());
    let out = cmd.output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line");
    let restored = &v["restored"];
    assert_eq!(restored["set_step"].as_u64(), Some(STEPS), "{v}");
    assert_eq!(restored["step"].as_u64(), Some(STEPS), "{v}");
    assert!(
        restored["object"]
            .as_str()
            .is_some_and(|o| o.contains("/job/rank-00001/logs/")),
        "{v}"
    );
    assert!(v["again_if_empty"].is_null(), "{v}");
    let err = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} did not fail: {v}"))
    };
    assert!(err("not_empty").contains("holds log"), "{v}");
    assert!(err("not_empty").contains("rank 1"), "{v}");
    assert!(err("world_size").contains("job/SET"), "{v}");
    assert!(err("world_size").contains("2 ranks"), "{v}");
    assert!(err("world_size").contains("4"), "{v}");
    assert!(err("no_set").contains("job/SET: missing"), "{v}");
    assert!(
        err("no_set").contains("job/rank-00000 holds records of rank 0"),
        "{v}"
    );
    assert!(v["nothing"].is_null(), "{v}");
}

/// `ranks_s3.py` on this machine (no namespaces), to `steps`, with extra
/// arguments; waits for it to end with success.
fn run_job(server: &S3Server, dir: &Path, url: Option<&str>, steps: u64, extra: &[&str]) -> String {
    let (cmd, log) = job_command(server, dir, url, 2, steps, extra);
    wait_ok(
        &mut spawn(cmd, &log),
        &log,
        &format!("the job to step {steps} {extra:?}"),
    );
    std::fs::read_to_string(&log).unwrap()
}

/// The torchrun command of `ranks_s3.py` and its log file.
fn job_command(
    server: &S3Server,
    dir: &Path,
    url: Option<&str>,
    ranks: u32,
    steps: u64,
    extra: &[&str],
) -> (Command, PathBuf) {
    let mut cmd = Command::new(torch::python());
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--standalone",
        &format!("--nproc-per-node={ranks}"),
    ]);
    cmd.arg(torch::script("ranks_s3.py"))
        .arg(dir.join("J"))
        .args(["--steps", &steps.to_string(), "--digest"])
        .arg(dir.join("digest"))
        .args(extra);
    if let Some(u) = url {
        cmd.args(["--url", u]);
    }
    env(&mut cmd, Some(server));
    let log = dir.join(format!("log-{steps}-{}", extra.join("_")));
    (cmd, log)
}

/// The gap FORMAT.md §7.10 closes ("Why a set never mixes branches"):
/// rank 0 uploaded its step 6 and rank 1 did not; rank 1's step 6 is then
/// damaged, and the job resumes from step 5. Rank 1 uploads its new step
/// 6 while rank 0's `HEAD` still names the abandoned one: `P/SET` must not
/// name that pair (it stays at step 5). The job then ends on the bits of
/// an uninterrupted one, and `P/SET` names its last step.
#[test]
fn a_set_never_names_a_record_of_a_branch_the_job_left() {
    if !torch::available("replicate_ranks") {
        return;
    }
    let Some(server) = S3Server::start() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let url = server.url("gap");
    let set = || set_pointer(&server, "gap").expect("gap/SET, as JSON");
    let reference = tmp.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    run_job(&server, &reference, None, 10, &[]);
    let expected = digests(&reference.join("digest"), 2);

    let dir = tmp.path().join("job");
    std::fs::create_dir(&dir).unwrap();
    run_job(&server, &dir, Some(&url), 5, &[]);
    assert_eq!(set()["step"].as_u64(), Some(5), "{}", set());
    // Step 6: rank 0 uploads it, rank 1 does not.
    run_job(&server, &dir, Some(&url), 6, &["--local-only-rank", "1"]);
    let old6 = server.pointer("gap/rank-00000").expect("rank 0's HEAD");
    assert_eq!(old6["step"].as_u64(), Some(6), "{old6}");
    assert_eq!(
        server.pointer("gap/rank-00001").unwrap()["step"].as_u64(),
        Some(5)
    );
    assert_eq!(set()["step"].as_u64(), Some(5), "{}", set());

    // Rank 1's step 6 is damaged: one payload byte flipped.
    assert_eq!(torch::damage_newest_record(&dir.join("J/rank-00001")), 6);

    // The job resumes from step 5; rank 1 saves and uploads step 6 again,
    // rank 0 uploads nothing new until rank 1 has closed.
    let text = run_job(&server, &dir, Some(&url), 6, &["--unsaved-rank", "0"]);
    assert!(
        text.contains("resuming every rank from common step 5"),
        "{text}"
    );
    assert!(
        text.contains("resumed rank=0 step=5") && text.contains("resumed rank=1 step=5"),
        "{text}"
    );
    let new6 = server.pointer("gap/rank-00001").expect("rank 1's HEAD");
    assert_eq!(new6["step"].as_u64(), Some(6), "{new6}");
    assert_eq!(
        server.pointer("gap/rank-00000").unwrap(),
        old6,
        "rank 0 uploaded nothing new"
    );
    let s = set();
    assert_eq!(
        s["step"].as_u64(),
        Some(5),
        "the set names rank 0's record {} of the abandoned step 6 next to rank 1's new one: {s}",
        old6["sequence"]
    );

    // The job goes on from step 5 to 10: the bits of an uninterrupted job.
    let text = run_job(&server, &dir, Some(&url), 10, &[]);
    assert!(
        text.contains("resumed rank=0 step=5") && text.contains("resumed rank=1 step=5"),
        "{text}"
    );
    assert_eq!(digests(&dir.join("digest"), 2), expected, "{text}");
    let s = set();
    assert_eq!(s["step"].as_u64(), Some(10), "{s}");
    assert_set_objects_stored(&server, "gap", &s);
    eprintln!(
        "abandoned-branch set test: {} s",
        started.elapsed().as_secs_f64().round()
    );
}

/// Remote retention and the set pointer's writers under contention: a
/// 4-rank job keeps 2 records per rank remotely and every rank advances
/// `P/SET` after each of its uploads. Watched while it runs, `P/SET`
/// never moves backward and every object it names is on the server while
/// it names it; each rank's prefix ends with
/// few records, the one `P/SET` names among them; and `epochwal pull`
/// restores every rank's record of the last step.
#[test]
fn remote_retention_keeps_the_set_while_ranks_race_to_advance_it() {
    if !torch::available("replicate_ranks") {
        return;
    }
    let Some(server) = S3Server::start() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let url = server.url("race");
    let ranks = 4;
    let steps = 40;
    let (cmd, log) = job_command(
        &server,
        tmp.path(),
        Some(&url),
        ranks,
        steps,
        &["--keep-records", "2", "--step-seconds", "0.02"],
    );
    let mut job = spawn(cmd, &log);
    let set_file = server.object_file("race/SET");
    let mut seen: Vec<(u64, u32)> = Vec::new();
    let mut checked = 0u32;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = job.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let Ok(bytes) = std::fs::read(&set_file) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        // s3s-fs replaces the file as a whole; a read between its steps
        // may find it empty, which is not a pointer the job wrote.
        let Ok(set) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let step = set["step"].as_u64().expect("step");
        let writer = set["writer"].as_u64().expect("writer") as u32;
        if let Some(&(last, _)) = seen.last() {
            assert!(
                step >= last,
                "the set pointer moved back from step {last} to {step}: {set}"
            );
        }
        if seen.last() != Some(&(step, writer)) {
            seen.push((step, writer));
        }
        let entries = set["ranks"].as_array().expect("ranks");
        assert_eq!(entries.len(), ranks as usize, "{set}");
        let missing: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(r, e)| format!("race/rank-{r:05}/{}", e["object"].as_str().unwrap()))
            .filter(|k| !server.object_file(k).is_file())
            .collect();
        // An object may go once the set has moved on; not while it names it.
        if !missing.is_empty() && std::fs::read(&set_file).ok().as_deref() == Some(&bytes[..]) {
            panic!("the set pointer names {missing:?}, which are not on the server: {set}");
        }
        checked += 1;
        std::thread::sleep(Duration::from_millis(2));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the job failed ({status}):\n{text}");
    let writers: std::collections::BTreeSet<u32> = seen.iter().map(|(_, w)| *w).collect();
    eprintln!(
        "set pointer: {checked} reads, {} versions seen, written by ranks {writers:?}",
        seen.len()
    );
    // Which ranks' writes were seen depends on timing (the last rank to
    // upload a step writes it); printed, not asserted.
    let set = set_pointer(&server, "race").expect("race/SET, as JSON");
    assert_eq!(set["step"].as_u64(), Some(steps), "{set}");
    for r in 0..ranks {
        let prefix = format!("race/rank-{r:05}");
        let keys = server.record_keys(&prefix);
        let named = format!(
            "{prefix}/{}",
            set["ranks"][r as usize]["object"].as_str().unwrap()
        );
        assert!(
            keys.contains(&named),
            "rank {r}: {named} is not among {keys:?}"
        );
        // keep_records = 2, plus what the set may still need (records at
        // or above the slowest rank's HEAD, which lags under load): fewer
        // than half the records uploaded.
        eprintln!("rank {r}: {} records remain remote", keys.len());
        assert!(
            keys.len() <= steps as usize / 2,
            "rank {r}: remote retention left {} records: {keys:?}",
            keys.len()
        );
    }
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = common::s3::epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for r in 0..ranks {
        assert!(
            err.contains(&format!("rank {r}: restored step {steps} ")),
            "{err}"
        );
    }
    // The tools on the job's URL: a usage error saying what it is and
    // where the logs are (it used to say "nothing has been replicated
    // there yet"); on a rank's prefix they read that rank's log.
    for tool in ["tail", "inspect", "verify"] {
        let (code, _, err) = common::s3::epochwal(&server, &[tool, &url]);
        assert_eq!(code, 2, "{tool} {url}: {err}");
        assert!(
            err.contains("is the URL of a multi-rank job")
                && err.contains(&format!("names step {steps} of a job of 4 ranks"))
                && err.contains(&format!("{url}/rank-00000"))
                && err.contains("epochwal pull"),
            "{tool} {url}: {err}"
        );
    }
    let (code, out, err) = common::s3::epochwal(&server, &["tail", &format!("{url}/rank-00002")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("step {steps}")) || out.contains(&format!("{steps}")),
        "{out}"
    );
    eprintln!(
        "retention and contention test: {} s",
        started.elapsed().as_secs_f64().round()
    );
}
