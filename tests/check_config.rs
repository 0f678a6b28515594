//! `epochwal check-config`: a valid file exits 0, a bad one exits 1 naming
//! the file, the line and the key on one line; `--running` compares with the
//! `RUNNING.toml` a running daemon keeps in its log directory and warns about
//! changed keys that only a restart applies.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::*;

const LONG: Duration = Duration::from_secs(120);

fn check_config(args: &[&str], file: &Path) -> Output {
    Command::new(binary())
        .arg("check-config")
        .args(args)
        .arg(file)
        .output()
        .expect("run epochwal check-config")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_valid_file_exits_0_and_a_bad_key_exits_1_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let good = write_config(
        tmp.path(),
        "good.toml",
        &synthetic_config(&data, 0, "every_steps = 4"),
    );
    let out = check_config(&[], &good);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("configuration is valid"),
        "{}",
        stdout(&out)
    );
    assert!(!data.exists(), "checking creates nothing");

    let bad = write_config(
        tmp.path(),
        "bad.toml",
        &synthetic_config(&data, 0, "every_stepz = 4"),
    );
    let out = check_config(&[], &bad);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("every_stepz"))
        .unwrap_or_else(|| panic!("the key is named: {err}"));
    assert!(line.contains(bad.to_str().unwrap()), "{line}");
    assert!(line.contains("line 14"), "{line}");

    let out_of_range = write_config(
        tmp.path(),
        "range.toml",
        &synthetic_config(&data, 0, "segment_bytes = 4096"),
    );
    let out = check_config(&[], &out_of_range);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checkpoint.segment_bytes"),
        "{}",
        stderr(&out)
    );

    let out = check_config(&[], &tmp.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn running_names_the_keys_a_reload_would_not_apply() {
    let tmp = tempfile::tempdir().unwrap();
    // The file names one directory, the command line another (as the unit
    // does with --data-dir): that is no change.
    let data = tmp.path().join("state");
    let body = synthetic_config(&tmp.path().join("elsewhere"), 0, "every_epochs = 0");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let dir = data.to_str().unwrap();
    let d = Daemon::spawn(&cfg, &["--data-dir", dir], &[]);
    d.wait_for("training started", LONG).unwrap();

    let out = check_config(&["--running", "--data-dir", dir], &cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("a reload changes no [checkpoint] setting"),
        "{}",
        stdout(&out)
    );

    let changed = body
        .replace("batch_size = 32", "batch_size = 64")
        .replace("hidden = [128, 128]", "hidden = [64]")
        .replace("every_epochs = 0", "every_epochs = 0\nevery_steps = 3");
    write_config(tmp.path(), "c.toml", &changed);
    let out = check_config(&["--running", "--data-dir", dir], &cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let warn = stderr(&out);
    let warn = warn
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("{warn}"));
    assert!(warn.contains(cfg.to_str().unwrap()), "{warn}");
    assert!(warn.contains("batch_size 32 -> 64"), "{warn}");
    assert!(warn.contains("model.hidden [128, 128] -> [64]"), "{warn}");
    assert!(
        !warn.contains("every_steps") && !warn.contains("data_dir"),
        "{warn}"
    );
    assert!(
        stdout(&out).contains("a reload applies: checkpoint.every_steps 0 -> 3"),
        "{}",
        stdout(&out)
    );

    // After SIGHUP the daemon runs with the new trigger, not the new size.
    d.signal(libc::SIGHUP);
    d.wait_for("SIGHUP: reloaded", LONG).unwrap();
    let deadline = std::time::Instant::now() + LONG;
    let out = loop {
        let out = check_config(&["--running", "--data-dir", dir], &cfg);
        if stdout(&out).contains("a reload changes no [checkpoint] setting") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "{}", stdout(&out));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        stderr(&out).contains("batch_size 32 -> 64"),
        "{}",
        stderr(&out)
    );
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let daemon_warn: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("SIGHUP"))
        .collect();
    assert_eq!(daemon_warn.len(), 1, "{daemon_warn:?}");
    assert!(
        daemon_warn[0].contains("batch_size 32 -> 64"),
        "{daemon_warn:?}"
    );
    assert!(!daemon_warn[0].contains("data_dir"), "{daemon_warn:?}");
}

#[test]
fn running_without_a_daemon_warns_that_it_cannot_compare_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &synthetic_config(&data, 0, ""));
    let out = check_config(&["--running"], &cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("WARN: cannot compare with the running daemon"),
        "{err}"
    );
    assert!(err.contains("RUNNING.toml"), "{err}");
}
