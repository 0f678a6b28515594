//! Real PyTorch for tests: the `python3` that has torch and the installed
//! `epochwal` package (`pip install ./python`, as `.ci/run` does), the
//! scripts in `tests/python/`, and a small seeded random source for kill
//! moments.
//!
//! `EPOCHWAL_TEST_PYTHON` names another interpreter (a virtualenv with a
//! fresh build of the package). Without torch or the package the tests
//! print a notice and pass, unless `CI` is set: then they fail, so that CI
//! cannot go green without having run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use super::systemd::{notice, on_ci};

/// The interpreter the tests run.
pub fn python() -> String {
    std::env::var("EPOCHWAL_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A script of `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// `python script args..`, with one torch thread and unbuffered output.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script(name))
        .env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// True when torch and the compiled package import; otherwise a notice and
/// false, or a panic under CI.
pub fn available(test: &str) -> bool {
    // Importing torch takes seconds: probe once per test binary.
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let why = match PROBE.get_or_init(probe) {
        Ok(()) => return true,
        Err(why) => why,
    };
    let msg = format!(
        "{test}: {} cannot import torch and the epochwal package \
         (pip install torch numpy ./python): {why}",
        python()
    );
    if on_ci() {
        panic!("CI is set: {msg}");
    }
    notice(&format!("SKIPPED {msg}"));
    false
}

fn probe() -> Result<(), String> {
    let probe = Command::new(python())
        .args([
            "-c",
            "import torch, numpy, epochwal; from epochwal import Checkpointer, EpochwalError",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string()),
        Err(e) => Err(format!("cannot run {}: {e}", python())),
    }
}

/// True when the interpreter imports `module` (`safetensors`,
/// `tensorboard`, which some checks need besides torch); otherwise a
/// notice naming `what` and false, or a panic under CI.
pub fn imports(module: &str, what: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!(
            "{what}: {} cannot import {module} (pip install {module})",
            python()
        );
        if on_ci() {
            panic!("CI is set: {msg}");
        }
        notice(&format!("SKIPPED {msg}"));
    }
    ok
}

/// Runs a script to completion; panics with its output unless it exits 0.
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    run_ok_env(name, args, &[])
}

/// [`run_ok`] with extra environment variables (an S3 server's).
pub fn run_ok_env(name: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let out = command(name)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A xorshift64* generator: kill moments that differ from run to run, and
/// a seed printed so that a failing run can be replayed
/// (`EPOCHWAL_KILL_SEED=N`).
pub struct Rng(u64);

impl Rng {
    /// Seeded from `EPOCHWAL_KILL_SEED` or the clock; prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("EPOCHWAL_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        notice(&format!("{test}: EPOCHWAL_KILL_SEED={seed}"));
        Rng(seed.max(1))
    }

    /// The next value, uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The host's Python (with torch and the package) inside the systemd
/// container: the interpreter's install bound at `/opt/epochwal-py/base`,
/// each site directory outside it at `/opt/epochwal-py/siteN`.
pub struct ContainerPython {
    /// The interpreter, as the container sees it.
    pub exe: String,
    /// `Environment=` lines for a unit that runs it.
    pub environment: Vec<String>,
}

/// Where `python()`'s install and the directories of torch, numpy and
/// epochwal live on the host.
fn host_layout() -> (String, String, Vec<String>) {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, os, torch, numpy, epochwal\n\
             print(sys.base_prefix)\n\
             print('python%d.%d' % sys.version_info[:2])\n\
             for m in (epochwal, torch, numpy):\n\
             \x20   print(os.path.dirname(os.path.dirname(os.path.realpath(m.__file__))))",
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(str::to_string);
    let base = lines.next().unwrap();
    let version = lines.next().unwrap();
    (base, version, lines.collect())
}

/// Bind-mounts host directory `src` at `dst` inside the container whose
/// systemd is `leader`: a detached copy of the mount (open_tree) moved into
/// the container's mount namespace (setns + move_mount) by a child process,
/// which then runs the container's /bin/true. (`machinectl bind` needs the
/// host's systemd, which these machines lack.)
fn bind_into(leader: u32, src: &str, dst: &str) {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let src_c = CString::new(src).unwrap();
    let dst_c = CString::new(dst).unwrap();
    let ns_c = CString::new(format!("/proc/{leader}/ns/mnt")).unwrap();
    let empty = CString::new("").unwrap();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes raw system calls on
    // C strings allocated before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src_c.as_ptr(),
                OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint,
            );
            if tree < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ns = libc::open(ns_c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if ns < 0 || libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::syscall(
                libc::SYS_move_mount,
                tree as libc::c_int,
                empty.as_ptr(),
                libc::AT_FDCWD,
                dst_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("bind {src} into the container at {dst}: {e}"));
    assert!(st.success(), "bind {src} into the container at {dst}: {st}");
}

/// Makes `python()` with torch and the package runnable inside the
/// container (read-only binds, renewed on every call).
pub fn python_in_container(s: &super::systemd::Systemd) -> ContainerPython {
    let (base, version, dirs) = host_layout();
    assert!(
        base != "/usr",
        "{} is the system Python (base prefix /usr), which cannot be bound into the \
         container without shadowing its own /usr; use a Python installed under its own \
         prefix (pyenv, /opt) via EPOCHWAL_TEST_PYTHON",
        python()
    );
    let mut binds = vec![(base.clone(), "/opt/epochwal-py/base".to_string())];
    let mut pythonpath = Vec::new();
    for d in dirs {
        let under = binds.iter().any(|(src, _)| Path::new(&d).starts_with(src));
        if !under {
            let dst = format!("/opt/epochwal-py/site{}", binds.len());
            pythonpath.push(dst.clone());
            binds.push((d, dst));
        }
    }
    // Earlier binds (a previous test, another interpreter) go first.
    s.sh("for m in $(findmnt -rn -o TARGET | grep '^/opt/epochwal-py/' | sort -r); do umount -l \"$m\"; done");
    for (src, dst) in &binds {
        s.ok(&format!("mkdir -p {dst}"));
        bind_into(s.leader(), src, dst);
        s.ok(&format!("mount -o remount,bind,ro {dst}"));
    }
    let mut environment = vec![format!("LD_LIBRARY_PATH=/opt/epochwal-py/base/lib")];
    if !pythonpath.is_empty() {
        environment.push(format!("PYTHONPATH={}", pythonpath.join(":")));
    }
    ContainerPython {
        exe: format!("/opt/epochwal-py/base/bin/{version}"),
        environment,
    }
}

/// The lines a running script prints, read on a thread.
pub struct Said(std::sync::mpsc::Receiver<String>);

impl Said {
    /// Reads the lines of `stdout` (a spawned script's) as they come.
    pub fn of(stdout: std::process::ChildStdout) -> Said {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Said(rx)
    }

    /// The next line, waiting up to 120 s (torch starts slowly on a loaded
    /// machine; the wait ends as soon as the line comes).
    pub fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("the script did not say {what} within 120 s: {e}"))
    }
}

/// Flips one byte in the middle of the payload of the newest record of
/// the log in `dir` (its checksum then fails) and returns that record's
/// step.
pub fn damage_newest_record(dir: &Path) -> u64 {
    let reader = epochwal::wal::LogReader::open(dir).expect("open the log");
    let scan = reader.scan().expect("scan the log");
    let seg = scan
        .segments
        .iter()
        .rev()
        .find(|s| !s.records.is_empty())
        .expect("a segment with records");
    let h = seg.records.last().expect("a record");
    let mut bytes = std::fs::read(&seg.path).expect("read the segment");
    let at = (h.offset + 4096 + h.payload_len / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&seg.path, &bytes).expect("write the segment");
    h.step
}
