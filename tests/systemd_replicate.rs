//! The replication drop-in `systemd/epochwal.service.d/replicate.conf`: with
//! it in place systemd loads the unit, the sandbox opens exactly the network
//! replication needs (AF_INET/AF_INET6 besides AF_UNIX, no private network
//! namespace, no IP deny list) and nothing else, and the exposure stays at
//! most 1.5 (`systemd-analyze security --offline=yes --root=`, which reads
//! drop-ins from the root's /etc/systemd/system).
//!
//! Prints a notice and passes when `systemd-analyze` is not installed.

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

const MAX_EXPOSURE: f64 = 1.5;

fn root_with_unit(with_dropin: bool) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(etc.join("epochwal.service.d")).unwrap();
    std::fs::copy(src.join("epochwal.service"), etc.join("epochwal.service")).unwrap();
    if with_dropin {
        std::fs::copy(
            src.join("epochwal.service.d/replicate.conf"),
            etc.join("epochwal.service.d/replicate.conf"),
        )
        .unwrap();
    }
    root
}

fn security(root: &Path) -> Option<String> {
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

fn exposure(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

fn finding<'a>(report: &'a str, setting: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(setting))
        .unwrap_or_else(|| panic!("{setting} not in:\n{report}"))
}

#[test]
fn the_dropin_opens_the_network_and_nothing_else() {
    let base = root_with_unit(false);
    let Some(before) = security(base.path()) else {
        return;
    };
    let with = root_with_unit(true);
    let after = security(with.path()).unwrap();
    let (b, a) = (exposure(&before), exposure(&after));
    eprintln!("exposure without the drop-in {b}, with it {a}");
    assert!(a <= MAX_EXPOSURE, "{after}");
    assert!(a > b, "the drop-in must change what the analysis sees");
    // Opened: Internet sockets, the host network, no IP deny list.
    assert!(finding(&after, "RestrictAddressFamilies=~AF_(INET|INET6)").contains('✗'));
    assert!(finding(&after, "PrivateNetwork=").contains('✗'));
    // Still closed: packet and netlink sockets, and every other hardening
    // line the base unit passes except the network ones.
    assert!(finding(&after, "RestrictAddressFamilies=~AF_PACKET").contains('✓'));
    assert!(finding(&after, "RestrictAddressFamilies=~AF_NETLINK").contains('✓'));
    let failing = |r: &str| -> Vec<String> {
        r.lines()
            .filter(|l| l.starts_with('✗'))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let newly: Vec<String> = failing(&after)
        .into_iter()
        .filter(|s| !failing(&before).contains(s))
        .collect();
    for s in &newly {
        assert!(
            s.starts_with("RestrictAddressFamilies=~AF_(INET")
                || s.starts_with("PrivateNetwork=")
                || s.starts_with("IPAddressDeny="),
            "the drop-in opened more than the network: {s}\n{after}"
        );
    }
}
