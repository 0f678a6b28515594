//! Running the installed Python package (`pip install ./python`) from
//! tests: real `python3`, real torch, real signals.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `python3` imports the compiled package and torch. Without them
/// the test is skipped with a notice, except when `CI` is set: then it
/// fails (`.ci/run` installs both).
pub fn torch_package_available() -> bool {
    let out = Command::new("python3")
        .args([
            "-c",
            "import torch, numpy, epochwal._native, epochwal.torch",
        ])
        .output();
    let ok = out.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        let why = out
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string());
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but python3 cannot import torch and the epochwal package (pip install torch ./python): {why}");
        }
        eprintln!(
            "skipped: python3 cannot import torch and epochwal (pip install torch ./python): {why}"
        );
    }
    ok
}

/// The directory where `pip install ./python` put the `epochwal` command
/// (the scripts directory of `python3`'s environment, or of its user
/// scheme for a `--user` install), if `python3` imports the compiled
/// package. Without it the test is skipped with a notice, except when `CI`
/// is set: then it fails.
pub fn scripts_dir() -> Option<std::path::PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import epochwal._native, os, sysconfig\n\
             print(sysconfig.get_path('scripts'))\n\
             print(sysconfig.get_path('scripts', os.name + '_user'))",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let dirs: Vec<std::path::PathBuf> = text.lines().map(Into::into).collect();
            let found = dirs.iter().find(|d| d.join("epochwal").is_file());
            // None found: the first, so that the test names where it looked.
            found.or(dirs.first()).cloned()
        }
        other => {
            let why = other
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_else(|e| e.to_string());
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but python3 cannot import the epochwal package (pip install ./python): {why}");
            }
            eprintln!("skipped: python3 cannot import epochwal (pip install ./python): {why}");
            None
        }
    }
}

/// The Python code block that follows `<!-- marker -->` in README.md.
pub fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let tag = format!("<!-- {marker} -->");
    let at = readme
        .find(&tag)
        .unwrap_or_else(|| panic!("README.md has no {tag}"));
    let rest = &readme[at + tag.len()..];
    let start = rest
        .find("```python\n")
        .expect("a python block after the marker")
        + 10;
    let end = rest[start..].find("```").expect("the block ends") + start;
    rest[start..end].to_string()
}

/// `python3 SCRIPT` in `cwd`, one thread for torch (so that runs are
/// bit-comparable), output piped.
pub fn python(script: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .current_dir(cwd)
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}
