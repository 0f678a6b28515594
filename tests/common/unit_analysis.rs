//! `systemd-analyze security --offline=yes --root=` over the shipped unit
//! with chosen drop-ins, for the tests of the drop-ins.

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

/// A root holding `etc/systemd/system/epochwal.service` and the named
/// drop-ins of `systemd/epochwal.service.d/` (`"replicate.conf"`).
pub fn root_with_unit(dropins: &[&str]) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(etc.join("epochwal.service.d")).unwrap();
    std::fs::copy(src.join("epochwal.service"), etc.join("epochwal.service")).unwrap();
    for d in dropins {
        let rel = format!("epochwal.service.d/{d}");
        std::fs::copy(src.join(&rel), etc.join(&rel)).unwrap();
    }
    root
}

/// The security report of the unit in `root`; `None` (after a notice) when
/// systemd-analyze is not installed.
pub fn security(root: &Path) -> Option<String> {
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(format!("--root={}", root.display()))
        .arg("epochwal.service")
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("NOTICE: systemd-analyze is not installed; skipping");
            return None;
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The overall exposure score of a report.
pub fn exposure(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// The report's line about `setting`.
pub fn finding<'a>(report: &'a str, setting: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(setting))
        .unwrap_or_else(|| panic!("{setting} not in:\n{report}"))
}

/// The settings a report marks as failing (`✗`).
pub fn failing(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with('✗'))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
        .collect()
}
