//! Two real PyTorch loops (`tests/python/torch_loop.py`: a CNN on generated
//! images with SGD+momentum, an MLP with AdamW, OneCycleLR, a bfloat16 and an
//! int64 buffer) checkpoint every step through the `epochwal` package, are
//! SIGKILLed at 20 random moments each (some while Python starts and recovers,
//! most at a random point of a random step, often inside `save`) and
//! restarted, and end with parameters, buffers, optimizer state, scheduler
//! and the torch, numpy and Python RNG states bit-identical to a run that was
//! never interrupted. No restart resumes before a step the loop was told is
//! durable.
//!
//! Needs python3 with torch and the package installed (`.ci/run`); see
//! tests/common/torch.rs for the skip rule.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::torch::{available, command, run_ok, Rng};

/// Steps of each run. A life is killed a random moment after 1 to 6 new
/// steps were read, but the loop runs on meanwhile (a step with its save
/// takes about 15 ms on an idle machine since direct I/O), and one life was
/// seen to make 94 steps before its kill: 600 leaves 20 kills room to land
/// before the end (200 did not, on an idle machine).
const STEPS: u64 = 600;
const KILLS: u32 = 20;
/// Of which at most this many land while Python starts, imports torch and
/// recovers (before the loop's first line).
const STARTUP_KILLS: u32 = 3;
/// Generous: torch's import alone takes seconds on a loaded machine.
const LONG: Duration = Duration::from_secs(120);

struct Life {
    child: Child,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn(kind: &str, dir: &Path, digest: &Path) -> Life {
    let mut child = command("torch_loop.py")
        .arg(kind)
        .arg(dir)
        .args(["--steps", &STEPS.to_string(), "--digest"])
        .arg(digest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 torch_loop.py");
    let (tx, lines) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    Life {
        child,
        lines,
        stderr,
    }
}

impl Life {
    /// The next stdout line; `None` when the process closed stdout (exited).
    fn next(&self, what: &str) -> Option<String> {
        match self.lines.recv_timeout(LONG) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("no line within {LONG:?} waiting for {what}"),
        }
    }

    fn sigkill(&mut self) -> bool {
        // SAFETY: kill(2) on the pid of a child we have not yet waited for
        // (so the pid cannot have been reused); no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let status = self.child.wait().unwrap();
        status.signal() == Some(libc::SIGKILL)
    }

    fn fail(self, why: &str) -> ! {
        let mut child = self.child;
        let _ = child.kill();
        let _ = child.wait();
        let rest: Vec<String> = self.lines.try_iter().collect();
        panic!(
            "{why}\nremaining stdout:\n{}\nstderr:\n{}",
            rest.join("\n"),
            self.stderr.join().unwrap_or_default()
        );
    }
}

fn parse_num(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn read_digest(path: &Path) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("digest {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn killed_run_matches_uninterrupted(kind: &str) {
    let test = format!("python_torch_kill {kind}");
    if !available(&test) {
        return;
    }
    let mut rng = Rng::from_env(&test);
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference.json");
    let killed = tmp.path().join("killed.json");
    let ref_dir = tmp.path().join("reference-log");
    let kill_dir = tmp.path().join("killed-log");

    let started = Instant::now();
    run_ok(
        "torch_loop.py",
        &[
            kind,
            ref_dir.to_str().unwrap(),
            "--steps",
            &STEPS.to_string(),
            "--digest",
            reference.to_str().unwrap(),
        ],
    );
    let reference_secs = started.elapsed().as_secs_f64();

    let mut kills = 0;
    let mut startup_kills = 0;
    let mut last_durable = 0u64;
    let mut furthest = 0u64;
    let mut resumes = Vec::new();
    loop {
        let mut life = spawn(kind, &kill_dir, &killed);
        let finish = kills >= KILLS;
        if !finish && startup_kills < STARTUP_KILLS && rng.below(6) == 0 {
            // Anywhere in Python's start: the import, opening the log,
            // recovery and load_latest.
            std::thread::sleep(Duration::from_millis(rng.below(3000)));
            if life.sigkill() {
                kills += 1;
                startup_kills += 1;
            }
            continue;
        }
        let Some(first) = life.next("the first line") else {
            life.fail("the loop exited before resuming");
        };
        let resumed = if first.starts_with("fresh") {
            0
        } else if let Some(s) = parse_num(&first, "resumed step=") {
            s
        } else {
            life.fail(&format!("unexpected first line {first:?}"))
        };
        if resumed < last_durable {
            life.fail(&format!(
                "resumed at step {resumed}, but step {last_durable} was reported durable"
            ));
        }
        resumes.push(resumed);
        let target = if finish {
            u64::MAX
        } else {
            resumed + 1 + rng.below(6)
        };
        // How long a step (with its save) takes in this life: the kill
        // below lands inside the next one, whatever the machine's speed.
        let mut last_step_at: Option<Instant> = None;
        let mut step_us: u64 = 40_000;
        while let Some(line) = life.next("a step") {
            if let Some(s) = parse_num(&line, "durable step=") {
                last_durable = s;
            }
            if let Some(s) = line
                .strip_prefix("step ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let now = Instant::now();
                if let Some(prev) = last_step_at {
                    step_us = (now - prev).as_micros().clamp(1_000, 40_000) as u64;
                }
                last_step_at = Some(now);
                if !finish {
                    furthest = furthest.max(s);
                }
                if s >= target {
                    break;
                }
            }
        }
        if finish {
            let status = life.child.wait().unwrap();
            if !status.success() {
                life.fail(&format!("the last life ended with {status}"));
            }
            break;
        }
        // A random moment inside the next step: often while save() copies
        // the state or while the persist thread writes it.
        std::thread::sleep(Duration::from_micros(rng.below(step_us)));
        if life.sigkill() {
            kills += 1;
        } else {
            life.fail("the loop exited on its own before its kill");
        }
    }
    assert!(kills >= 20, "only {kills} kills landed");
    assert!(
        furthest < STEPS,
        "a killed life finished the run: the kills were not all mid-training"
    );
    let (a, b) = (read_digest(&reference), read_digest(&killed));
    let differing: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different state names"
    );
    assert!(
        differing.is_empty(),
        "{kind}: after {kills} kills these differ from the uninterrupted run: {differing:?}"
    );
    common::systemd::notice(&format!(
        "{test}: {kills} kills ({startup_kills} during start-up), resumed at {resumes:?}; \
         uninterrupted run {reference_secs:.1} s, whole test {:.1} s; {} hashes equal",
        started.elapsed().as_secs_f64(),
        a.len()
    ));
}

#[test]
fn cnn_killed_20_times_ends_bit_identical_to_an_uninterrupted_run() {
    killed_run_matches_uninterrupted("cnn");
}

#[test]
fn mlp_adamw_bf16_int64_killed_20_times_ends_bit_identical_to_an_uninterrupted_run() {
    killed_run_matches_uninterrupted("mlp");
}
