//! A real systemd for tests: one booted systemd-nspawn container (Debian,
//! systemd as PID 1), started by `tests/tools/systemd-container` the first
//! time a test asks for it and shared by every test of the binary, one test
//! at a time. If this process booted it, it powers it off when the process
//! exits; a container that was already running (CI boots it in the
//! background while cargo compiles) is left to whoever started it.
//!
//! Booting needs root. Without root, or when the container cannot boot, the
//! tests print a notice straight to the terminal (past the test harness's
//! output capture) and pass, unless `CI` is set: then they fail, so that CI
//! cannot go green without having run them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The container driver script in this repository.
pub fn script() -> PathBuf {
    std::env::var_os("EPOCHWAL_SYSTEMD_CONTAINER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/systemd-container")
        })
}

/// True when running on CI (`CI` set to anything but empty, `0` or `false`).
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Writes a line to the real stderr: visible even when the harness captures
/// the output of passing tests.
pub fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A booted container; methods run commands inside it as root.
pub struct Systemd {
    /// PID (on the host) of the container's systemd. Commands enter its
    /// namespaces directly, as the script's `exec` does, without looking it
    /// up again for every command (that lookup costs ~0.2 s per command).
    leader: u32,
    /// The binary under test was copied in (once per process).
    installed: bool,
}

/// The container's PID 1, found as the script finds it.
fn leader() -> Result<u32, String> {
    let pgrep = |args: &[&str]| -> Option<u32> {
        let out = Command::new("pgrep").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let nspawn = pgrep(&["-x", "systemd-nspawn"]).ok_or("no systemd-nspawn process")?;
    pgrep(&["-P", &nspawn.to_string(), "-x", "systemd"])
        .ok_or_else(|| "systemd-nspawn runs no systemd".to_string())
}

static CONTAINER: OnceLock<Result<Mutex<Systemd>, String>> = OnceLock::new();

extern "C" fn power_off_at_exit() {
    let started = Instant::now();
    let ok = Command::new(script())
        .arg("down")
        .output()
        .is_ok_and(|o| o.status.success());
    notice(&format!(
        "systemd container powered off ({}) in {:.1} s",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    ));
}

fn boot() -> Result<Mutex<Systemd>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("these tests need root (they boot a systemd-nspawn container)".into());
    }
    let script = script();
    let started = Instant::now();
    // Concurrent callers (CI booting it in the background) share one boot:
    // the script holds a lock while it builds and boots the container.
    let out = Command::new(&script)
        .arg("up")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{} up failed: {}", script.display(), text.trim()));
    }
    let booted_here = !text.contains("already running");
    notice(&format!(
        "systemd container {} in {:.1} s: {}",
        if booted_here {
            "booted"
        } else {
            "already running, waited"
        },
        started.elapsed().as_secs_f64(),
        text.trim()
    ));
    if booted_here {
        // SAFETY: registering a plain extern "C" function with atexit has
        // no preconditions; it runs when the test process exits.
        unsafe {
            libc::atexit(power_off_at_exit);
        }
    }
    Ok(Mutex::new(Systemd {
        leader: leader()?,
        installed: false,
    }))
}

/// The shared container, locked for the calling test; `None` (after a
/// visible notice) when the tests are to be skipped. Panics under CI when
/// the container cannot be had.
pub fn session(test: &str) -> Option<MutexGuard<'static, Systemd>> {
    match CONTAINER.get_or_init(boot) {
        Ok(m) => Some(m.lock().unwrap_or_else(|e| e.into_inner())),
        Err(why) if on_ci() => panic!("{test}: no real systemd, and CI is set: {why}"),
        Err(why) => {
            notice(&format!("SKIPPED {test}: no real systemd: {why}"));
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Systemd {
    /// PID (on the host) of the container's systemd.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// Runs a shell command inside the container as root, with the
    /// environment the script's `exec` gives it.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "--",
                "/usr/bin/env",
                "-i",
            ])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=dumb",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                "HOME=/root",
                "/bin/bash",
                "-c",
            ])
            .arg(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// Runs a shell command that must succeed; returns its stdout.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}):\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies a host file into the container (its mode is kept), through
    /// the container's root as the host sees it.
    pub fn copy(&self, src: &Path, dst: &str) {
        let target = PathBuf::from(format!("/proc/{}/root{dst}", self.leader));
        std::fs::create_dir_all(target.parent().unwrap())
            .unwrap_or_else(|e| panic!("mkdir for {dst}: {e}"));
        // A new inode, so that a running binary being replaced is not
        // written to (ETXTBSY) and readers see the old or the new file.
        let tmp = target.with_extension("epochwal-test-tmp");
        std::fs::copy(src, &tmp).unwrap_or_else(|e| panic!("copy {} to {dst}: {e}", src.display()));
        std::fs::rename(&tmp, &target).unwrap_or_else(|e| panic!("rename to {dst}: {e}"));
    }

    /// Writes `body` to `dst` inside the container.
    pub fn write(&self, dst: &str, body: &str) {
        let tmp = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(tmp.path(), body).expect("write temporary file");
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        self.copy(tmp.path(), dst);
    }

    /// Copies the binary under test to `/usr/local/bin/epochwal`, once.
    pub fn install_binary(&mut self) {
        if !self.installed {
            self.copy(
                Path::new(env!("CARGO_BIN_EXE_epochwal")),
                "/usr/local/bin/epochwal",
            );
            self.installed = true;
        }
    }

    /// One property of a unit (`systemctl show -p NAME --value`).
    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.ok(&format!("systemctl show -p {name} --value {unit}"))
            .trim()
            .to_string()
    }

    /// Polls `probe` every 100 ms until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A journal position to read after (`journalctl --after-cursor`).
    pub fn cursor(&self) -> String {
        let out = self.ok("journalctl -n 0 --show-cursor -q");
        out.lines()
            .find_map(|l| l.strip_prefix("-- cursor: "))
            .map(str::to_string)
            .unwrap_or_default()
    }

    /// Journal lines of `unit` after `cursor` (message text only; systemd's
    /// own lines about the unit included).
    pub fn journal(&self, unit: &str, cursor: &str) -> Vec<String> {
        let after = if cursor.is_empty() {
            String::new()
        } else {
            format!("--after-cursor='{cursor}'")
        };
        self.ok(&format!(
            "journalctl -u {unit} {after} -o cat --no-pager -q"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Waits until a journal line of `unit` after `cursor` contains every
    /// one of `needles`, and returns it.
    pub fn wait_journal(
        &self,
        unit: &str,
        cursor: &str,
        needles: &[&str],
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.journal(unit, cursor);
            if let Some(l) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no journal line of {unit} with {needles:?} within {timeout:?}; got:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
