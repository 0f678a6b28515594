//! `systemd/epochwal-torch-example.service` running
//! `systemd/epochwal-torch-example.py` (real torch, the real package) under a
//! real systemd (tests/common/systemd.rs): `systemctl start` returns after
//! READY=1 (sent by load_latest once recovery restored the state), STATUS
//! names a durable checkpoint, `systemctl stop` (SIGTERM) makes the loop
//! write a final checkpoint and exit 0 (`Result=success`), and the next start
//! resumes from exactly that checkpoint.
//!
//! The host's Python with torch and the package is bound read-only into the
//! container (tests/common/torch.rs); a drop-in points ExecStart at it. The
//! shipped unit is otherwise used as is, hardening included.

mod common;

use std::path::Path;
use std::time::Duration;

use common::systemd::{session, Systemd};
use common::torch::{available, python_in_container};

const UNIT: &str = "epochwal-torch-example.service";
const SCRIPT: &str = "/usr/local/lib/epochwal/torch-example.py";
const DROP_IN: &str = "/etc/systemd/system/epochwal-torch-example.service.d/test.conf";
const LONG: Duration = Duration::from_secs(180);

fn install(s: &mut Systemd) {
    s.sh(&format!(
        "systemctl stop {UNIT}; systemctl reset-failed {UNIT}"
    ));
    s.ok("rm -rf /var/lib/private/epochwal-torch-example /var/lib/epochwal-torch-example");
    let py = python_in_container(s);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    s.copy(&root.join("systemd/epochwal-torch-example.py"), SCRIPT);
    s.copy(
        &root.join("systemd/epochwal-torch-example.service"),
        &format!("/etc/systemd/system/{UNIT}"),
    );
    let env: String = py
        .environment
        .iter()
        .map(|e| format!("Environment={e}\n"))
        .collect();
    s.write(
        DROP_IN,
        &format!(
            "[Service]\nExecStart=\nExecStart={} {SCRIPT}\n{env}\
             Environment=EPOCHWAL_EXAMPLE_STEPS_PER_EPOCH=20\n",
            py.exe
        ),
    );
    s.ok("systemctl daemon-reload");
}

/// `key=N` in `line`.
fn num(line: &str, key: &str) -> u64 {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn sigterm_writes_a_final_checkpoint_exits_successfully_and_the_restart_resumes_from_it() {
    let test =
        "sigterm_writes_a_final_checkpoint_exits_successfully_and_the_restart_resumes_from_it";
    if !available(test) {
        return;
    }
    let Some(mut s) = session(test) else {
        return;
    };
    install(&mut s);
    let cursor = s.cursor();
    // Type=notify: start returns once READY=1 came, after load_latest.
    s.ok(&format!("systemctl start {UNIT}"));
    assert_eq!(s.prop(UNIT, "ActiveState"), "active");
    s.wait_journal(UNIT, &cursor, &["fresh run"], LONG);
    // STATUS after a durable save.
    let status = s.wait_for("STATUS naming a durable checkpoint", LONG, |s| {
        let st = s.prop(UNIT, "StatusText");
        st.contains("seq").then_some(st)
    });
    assert!(status.contains("epoch"), "STATUS: {status}");

    // SIGTERM: the final checkpoint, then a clean exit.
    s.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(s.prop(UNIT, "Result"), "success");
    assert_eq!(s.prop(UNIT, "ExecMainStatus"), "0");
    assert_eq!(s.prop(UNIT, "ActiveState"), "inactive");
    let last = s.wait_journal(UNIT, &cursor, &["final checkpoint", "stop requested"], LONG);
    let (seq, epoch, step) = (num(&last, "seq"), num(&last, "epoch"), num(&last, "step"));
    assert!(step > 0, "{last}");

    // The restart resumes from exactly that record.
    let cursor = s.cursor();
    s.ok(&format!("systemctl start {UNIT}"));
    let resumed = s.wait_journal(UNIT, &cursor, &["resumed from"], LONG);
    assert_eq!(
        (
            num(&resumed, "seq"),
            num(&resumed, "epoch"),
            num(&resumed, "step")
        ),
        (seq, epoch, step),
        "{resumed} after {last}"
    );
    s.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(s.prop(UNIT, "Result"), "success");
    let again = s.wait_journal(UNIT, &cursor, &["final checkpoint", "stop requested"], LONG);
    assert!(
        num(&again, "seq") > seq && num(&again, "step") >= step,
        "{again}"
    );
}
