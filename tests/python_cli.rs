//! The `epochwal` command that `pip install ./python` installs: the same
//! program as the cargo-built binary, run as a real process from the
//! package's scripts directory, with real signals.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::daemon::{synthetic_config, write_config, Daemon};
use common::follow::Follower;

const LONG: Duration = Duration::from_secs(120);

fn pip_command(scripts: &Path) -> PathBuf {
    let cmd = scripts.join("epochwal");
    assert!(
        cmd.is_file(),
        "pip install ./python installed no epochwal command in {}",
        scripts.display()
    );
    cmd
}

fn output(program: impl AsRef<std::ffi::OsStr>, args: &[&str], cwd: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every tool, its usage errors and its errors: the same output and the same
/// exit code from the pip-installed command, from `python -m epochwal` and
/// from the binary.
#[test]
fn the_pip_command_prints_what_the_binary_prints() {
    let Some(scripts) = common::python::scripts_dir() else {
        return;
    };
    let pip = pip_command(&scripts);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(Path::new("data"), 3, "every_epochs = 1"),
    );
    let mut run = Command::new(common::daemon::binary());
    run.arg("run")
        .arg("--config")
        .arg(&cfg)
        .current_dir(tmp.path());
    let (status, lines) = Daemon::spawn_command(run).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));

    let cases: &[&[&str]] = &[
        &["tail", "data"],
        &["tail", "--json", "-n", "2", "data"],
        &["inspect", "data"],
        &["verify", "--json", "data"],
        &["check-config", "c.toml"],
        &["tail", "missing"],
        &["verify", "c.toml"],
        &["bogus"],
        &["tail"],
        &["--version"],
    ];
    for args in cases {
        let want = output(common::daemon::binary(), args, tmp.path());
        for (name, got) in [
            ("epochwal (pip)", output(&pip, args, tmp.path())),
            ("python3 -m epochwal", {
                let mut m = vec!["-m", "epochwal"];
                m.extend_from_slice(args);
                output("python3", &m, tmp.path())
            }),
        ] {
            let show = |o: &Output| {
                format!(
                    "{:?}\n{}{}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            };
            assert_eq!(
                (got.status.code(), &got.stdout, &got.stderr),
                (want.status.code(), &want.stdout, &want.stderr),
                "{name} {args:?}:\n{}\nthe binary:\n{}",
                show(&got),
                show(&want)
            );
        }
        eprintln!("{args:?}: exit {:?}, the same", want.status.code());
    }
}

/// The daemon and a follower, both run by the pip-installed command: SIGTERM
/// gives the run its final checkpoint and exit 0, the follower prints every
/// record the run wrote and SIGINT ends it with 0, and the log is clean.
#[test]
fn the_pip_command_runs_the_daemon_and_follows_it_with_real_signals() {
    let Some(scripts) = common::python::scripts_dir() else {
        return;
    };
    let pip = pip_command(&scripts);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Long enough that SIGTERM lands while it trains.
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 100_000, "every_epochs = 1\nkeep_records = 0"),
    );
    let mut follower = Command::new(&pip);
    follower.arg("tail").arg(&data).args(["-f", "--json"]);
    let tail = Follower::spawn_command(follower);
    let mut run = Command::new(&pip);
    run.arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info,epochwal=debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    let daemon = Daemon::spawn_command(run);
    // Three records followed while the run goes on.
    tail.expect_sequences(1..=3);
    daemon.signal(libc::SIGTERM);
    let (status, lines) = daemon.wait(LONG);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    // A final checkpoint, unless SIGTERM came right after an epoch's own.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reason=\"shutdown\"") || l.contains("no final checkpoint needed")),
        "a final checkpoint: {}",
        lines.join("\n")
    );
    let scan = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap();
    let newest = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.sequence))
        .max()
        .unwrap();
    tail.expect_sequences(4..=newest);
    let mut tail = tail;
    // SAFETY: kill only reads its arguments; the pid is our child's.
    unsafe { libc::kill(tail.child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + LONG;
    let status = loop {
        if let Some(s) = tail.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "tail -f did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "tail -f after SIGINT");
    let verify = output(&pip, &["verify", data.to_str().unwrap()], tmp.path());
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    eprintln!("{newest} records followed, final checkpoint on SIGTERM, verify clean");
}
