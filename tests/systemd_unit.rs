//! The shipped unit `systemd/epochwal.service` is accepted by systemd and stays
//! hardened: `systemd-analyze verify` reports nothing about it, and
//! `systemd-analyze security --offline=yes` rates its exposure 2.0 or lower.
//!
//! The tests that need `systemd-analyze` print a notice and pass when it is not
//! installed (e.g. on macOS or minimal CI images); any other failure fails.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT_NAME: &str = "epochwal.service";
const INSTALLED_EXEC_START: &str = "ExecStart=/usr/local/bin/epochwal ";
const MAX_EXPOSURE: f64 = 2.0;

fn shipped_unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT_NAME)
}

fn shipped_unit() -> String {
    let path = shipped_unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `systemd-analyze ARGS`, or returns `None` (after printing a notice)
/// when the tool is not installed.
fn systemd_analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("NOTICE: systemd-analyze is not installed; skipping this systemd unit check");
            None
        }
        Err(e) => panic!("cannot run systemd-analyze {args:?}: {e}"),
    }
}

/// A copy of the shipped unit, in a temporary directory, whose ExecStart runs
/// the binary this test build produced (verify checks that it is executable).
fn unit_pointing_at_built_binary() -> (tempfile::TempDir, PathBuf) {
    let unit = shipped_unit();
    let bin = env!("CARGO_BIN_EXE_epochwal");
    let bin = if bin.contains(char::is_whitespace) {
        format!("\"{bin}\"")
    } else {
        bin.to_string()
    };
    assert!(
        unit.contains(INSTALLED_EXEC_START),
        "{UNIT_NAME} should start {INSTALLED_EXEC_START:?}"
    );
    // ExecStart= and the check-config ExecReload= both run the binary.
    let rewritten = unit.replace("=/usr/local/bin/epochwal ", &format!("={bin} "));
    let dir = tempfile::tempdir().expect("tempdir");
    // The file name is the unit name: keep it.
    let path = dir.path().join(UNIT_NAME);
    std::fs::write(&path, rewritten).expect("write unit copy");
    (dir, path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `→ Overall exposure level for epochwal.service: 0.4 SAFE 😀` -> 0.4
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, after) = line.rsplit_once(": ")?;
    let score: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    score.parse().ok()
}

#[test]
fn shipped_unit_is_type_notify_with_watchdog_and_state_directory() {
    let unit = shipped_unit();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for expected in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60",
        "StateDirectory=epochwal",
        "ConfigurationDirectory=epochwal",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestrictAddressFamilies=AF_UNIX",
        "PrivateNetwork=yes",
        "CapabilityBoundingSet=",
        "UMask=0077",
    ] {
        assert!(
            directives.contains(&expected),
            "{UNIT_NAME} lacks the line {expected:?}"
        );
    }
    assert!(
        unit.contains("--data-dir ${STATE_DIRECTORY}"),
        "ExecStart should pass the StateDirectory= as --data-dir"
    );
    // A reload checks the file before signalling: the check comes first.
    let reloads: Vec<&str> = directives
        .iter()
        .copied()
        .filter(|l| l.starts_with("ExecReload="))
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert!(
        reloads[0].starts_with("ExecReload=/usr/local/bin/epochwal check-config --running"),
        "{reloads:?}"
    );
    assert_eq!(reloads[1], "ExecReload=/bin/kill -HUP $MAINPID");
}

#[test]
fn systemd_analyze_verify_reports_nothing_about_the_unit() {
    let (_dir, unit) = unit_pointing_at_built_binary();
    let Some(out) = systemd_analyze(&["verify", unit.to_str().unwrap()]) else {
        return;
    };
    let report = text(&out);
    let about_unit: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(UNIT_NAME) || l.contains(unit.to_str().unwrap()))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify complained about {UNIT_NAME}:\n{}",
        about_unit.join("\n")
    );
    if !out.status.success() {
        // Nothing about our unit, but the tool failed: show why, don't fail
        // (e.g. an unrelated unit of the host referenced as a dependency).
        eprintln!(
            "NOTICE: systemd-analyze verify exited with {} without naming {UNIT_NAME}:\n{report}",
            out.status
        );
    }
}

#[test]
fn systemd_analyze_security_rates_the_unit_exposure_at_most_2_0() {
    let (_dir, unit) = unit_pointing_at_built_binary();
    let Some(out) = systemd_analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        unit.to_str().unwrap(),
    ]) else {
        return;
    };
    let report = text(&out);
    let score = overall_exposure(&report).unwrap_or_else(|| {
        panic!("no \"Overall exposure level\" line in systemd-analyze security output:\n{report}")
    });
    assert!(
        score <= MAX_EXPOSURE,
        "exposure of {UNIT_NAME} is {score}, above {MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn exposure_line_parser_reads_the_score() {
    assert_eq!(
        overall_exposure("x\n→ Overall exposure level for epochwal.service: 0.4 SAFE 😀\n"),
        Some(0.4)
    );
    assert_eq!(
        overall_exposure("Overall exposure level for a.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(overall_exposure("no score here"), None);
}
