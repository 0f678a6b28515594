//! Fault injection: `fault_shim.c` (an `LD_PRELOAD` library that makes chosen
//! `pread`, `msync`, `fsync`, `fallocate`, `rename*` and `statfs` calls fail
//! or lie), compiled with gcc once per test process, and two ways to use it:
//! in the environment of a spawned `epochwal` ([`env`]), or in a child copy of
//! the running test with rules set from inside it ([`in_child`] + [`set`]).
//! The rule syntax is documented at the top of `fault_shim.c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variable naming the test a child process runs with the shim.
const CHILD_VAR: &str = "EPOCHWAL_FAULT_CHILD";

/// Path of the compiled shim (compiled on first use).
pub fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/fault_shim.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).expect("create the target tmp dir");
        let out = dir.join("epochwal_fault_shim.so");
        // Compile under a private name and rename, so that test processes
        // running at the same time never load a half-written library.
        let tmp = dir.join(format!("epochwal_fault_shim.{}.so", std::process::id()));
        let status = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .status()
            .expect("run gcc (the fault-injection tests need it)");
        assert!(status.success(), "gcc failed to compile {}", src.display());
        std::fs::rename(&tmp, &out).expect("install the shim");
        out
    })
}

/// Environment for a spawned `epochwal` that injects the faults of `spec`.
pub fn env(spec: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), shim().display().to_string()),
        ("EPOCHWAL_FAULTS".into(), spec.into()),
    ]
}

/// Adds [`env`] to a command.
pub fn apply(cmd: &mut Command, spec: &str) {
    for (k, v) in env(spec) {
        cmd.env(k, v);
    }
}

/// Lines of the shim's reports (one per injected fault) in a process's output.
pub fn injected(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with("epochwal-fault: "))
        .collect()
}

/// For a test that needs faults inside the test process itself. In the
/// parent it runs this very test again in a child process with the shim
/// preloaded, asserts that the child passed, and returns `false` (the parent
/// has nothing more to do). In the child it returns `true`: run the body and
/// steer the shim with [`set`].
pub fn in_child(test_name: &str) -> bool {
    if std::env::var(CHILD_VAR).as_deref() == Ok(test_name) {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test_name)
        .env("LD_PRELOAD", shim())
        .env_remove("EPOCHWAL_FAULTS")
        .output()
        .expect("spawn the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test_name} failed in the fault-injection child ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}

fn symbol(name: &std::ffi::CStr) -> *mut libc::c_void {
    // SAFETY: dlsym only reads the NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    assert!(
        !p.is_null(),
        "the fault shim is not loaded (call this only where in_child returned true)"
    );
    p
}

/// Replaces the shim's rules (in a process started by [`in_child`]).
pub fn set(spec: &str) {
    let f = symbol(c"epochwal_faults_set");
    // SAFETY: the symbol is `int epochwal_faults_set(const char *)` in
    // fault_shim.c; the string is NUL-terminated and outlives the call.
    let set: extern "C" fn(*const libc::c_char) -> libc::c_int = unsafe { std::mem::transmute(f) };
    let spec = std::ffi::CString::new(spec).expect("no NUL in a spec");
    assert!(set(spec.as_ptr()) >= 0, "bad fault spec {spec:?}");
}

/// How many faults the shim has injected in this process.
pub fn fired() -> i64 {
    let f = symbol(c"epochwal_faults_fired");
    // SAFETY: the symbol is `long epochwal_faults_fired(void)` in fault_shim.c.
    let fired: extern "C" fn() -> libc::c_long = unsafe { std::mem::transmute(f) };
    fired() as i64
}
