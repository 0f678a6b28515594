//! The training loop of README.md, run exactly as written with the
//! installed package and real torch: it trains to its last epoch with a
//! durable general record per epoch; SIGTERM in the middle makes it save
//! and exit 0; restarted, it resumes and ends bit-identical to the
//! uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::python::{python, readme_block, torch_package_available};
use epochwal::state::TrainState;

const LAST_EPOCH: u64 = 40;

fn write_loop(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("loop.py");
    std::fs::write(&script, readme_block("readme-loop")).unwrap();
    script
}

fn newest(log: &Path) -> Option<TrainState> {
    let r = epochwal::wal::recover(log).ok()?;
    r.record.map(|rec| rec.to_owned_state().unwrap())
}

fn run_to_end(dir: &Path) -> std::process::Output {
    let out = python(&write_loop(dir), dir).output().unwrap();
    assert!(
        out.status.success(),
        "README loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Tensor name -> (dtype, shape, bytes) of a general record.
fn tensors(s: &TrainState) -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    s.general
        .tensors
        .iter()
        .filter(|t| !t.name.starts_with("rng."))
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.clone(),
                t.shape.clone(),
                t.data.as_slice().to_vec(),
            )
        })
        .collect()
}

#[test]
fn readme_loop_runs_as_written_and_resumes_bit_exact_after_sigterm() {
    if !torch_package_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // Uninterrupted.
    let whole = tmp.path().join("whole");
    run_to_end(&whole);
    let log = whole.join("runs/readme");
    let done = newest(&log).expect("a record");
    assert_eq!(done.kind, epochwal::state::KIND_GENERAL);
    assert_eq!(done.epoch, LAST_EPOCH);
    assert_eq!(done.global_step, LAST_EPOCH * 16);
    let names: Vec<String> = tensors(&done).into_iter().map(|t| t.0).collect();
    for want in [
        "model.0.weight",
        "model.2.bias",
        "optimizer.state.0.exp_avg_sq",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let report = epochwal::tools::verify_log(&log).unwrap();
    assert!(report.recovery.is_some());
    // Run again: it resumes at the last epoch and writes nothing.
    run_to_end(&whole);
    assert_eq!(newest(&log).unwrap().epoch, LAST_EPOCH);

    // SIGTERM as soon as the first record is durable, then restart. The
    // loop is stopped (SIGSTOP) while the signal is delivered, so that it
    // cannot finish all its epochs first.
    let cut = tmp.path().join("cut");
    let script = write_loop(&cut);
    let child = python(&script, &cut).spawn().unwrap();
    let pid = child.id() as i32;
    let cut_log = cut.join("runs/readme");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cut_log.join("COMMIT").exists() {
        assert!(Instant::now() < deadline, "no record within 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) of our own child's pid (not yet reaped).
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGSTOP), 0);
        assert_eq!(libc::kill(pid, libc::SIGTERM), 0);
        assert_eq!(libc::kill(pid, libc::SIGCONT), 0);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGTERM did not end the loop with 0: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = newest(&cut_log).unwrap();
    assert!(
        (1..LAST_EPOCH).contains(&stopped.epoch),
        "stopped at epoch {} of {LAST_EPOCH}",
        stopped.epoch
    );
    run_to_end(&cut);
    let resumed = newest(&cut_log).unwrap();
    assert_eq!(resumed.epoch, LAST_EPOCH);
    let (a, b) = (tensors(&done), tensors(&resumed));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, &x.1, &x.2), (&y.0, &y.1, &y.2));
        assert!(x.3 == y.3, "{} differs after SIGTERM and resume", x.0);
    }
}
