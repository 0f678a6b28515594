//! The replication drop-in under a real systemd (the booted container of
//! tests/common/systemd.rs) with the AWS keys passed as systemd credentials
//! (its `LoadCredential=` lines uncommented) and the real S3 server on the
//! host's loopback: the daemon replicates with no key in its environment,
//! and it runs without core dumps (`LimitCORE=0`), so that no dump can hold
//! the keys.
//!
//! The unit is installed under its own name, state and configuration
//! directories, so that it never meets the units other tests run in the
//! shared container. Skipped with a notice without root or s3s-fs (failing
//! instead when `CI` is set).

mod common;

use std::path::Path;
use std::time::Duration;

use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use common::systemd::session;

const UNIT: &str = "epochwal-creds.service";
const ETC: &str = "/etc/epochwal-creds";
const LONG: Duration = Duration::from_secs(90);

#[test]
fn keys_from_load_credential_replicate_and_no_core_dump_or_environment_holds_them() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let Some(mut s) =
        session("keys_from_load_credential_replicate_and_no_core_dump_or_environment_holds_them")
    else {
        return;
    };
    let units = "/etc/systemd/system";
    s.sh(&format!(
        "systemctl stop {UNIT}; systemctl reset-failed {UNIT}"
    ));
    s.ok(&format!(
        "rm -rf /var/lib/private/epochwal-creds /var/lib/epochwal-creds {units}/{UNIT}.d {ETC}"
    ));
    s.install_binary();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    s.copy(
        &shipped.join("epochwal.service"),
        &format!("{units}/{UNIT}"),
    );
    // The shipped drop-in, its LoadCredential= lines uncommented, its paths
    // moved to this test's configuration directory.
    let dropin = std::fs::read_to_string(shipped.join("epochwal.service.d/replicate.conf"))
        .unwrap()
        .replace("#   LoadCredential=", "LoadCredential=")
        .replace("/etc/epochwal/", &format!("{ETC}/"));
    assert_eq!(
        dropin
            .lines()
            .filter(|l| l.starts_with("LoadCredential="))
            .count(),
        2,
        "the drop-in ships two commented LoadCredential= lines:\n{dropin}"
    );
    s.write(&format!("{units}/{UNIT}.d/replicate.conf"), &dropin);
    s.write(
        &format!("{units}/{UNIT}.d/test.conf"),
        "[Service]\nStateDirectory=\nStateDirectory=epochwal-creds\n\
         ConfigurationDirectory=\nConfigurationDirectory=epochwal-creds\n",
    );
    s.write(
        &format!("{ETC}/epochwal.toml"),
        &format!(
            r#"data_dir = "unused: the unit passes --data-dir"
epochs = 0
seed = 1
batch_size = 32
[dataset]
kind = "synthetic"
n = 1024
input_dim = 16
output_dim = 4
[model]
hidden = [64]
[checkpoint]
every_epochs = 0
every_seconds = 1
segment_bytes = 1048576
keep_records = 5
[replicate]
url = "{}"
allow_http = true
"#,
            server.url("sd")
        ),
    );
    // Only region and endpoint in the environment file; no keys.
    s.write(
        &format!("{ETC}/replicate.env"),
        &format!(
            "AWS_REGION=us-east-1\nAWS_ENDPOINT_URL={}\n",
            server.endpoint()
        ),
    );
    s.write(
        &format!("{ETC}/credentials/aws_access_key_id"),
        &format!("{ACCESS_KEY}\n"),
    );
    s.write(
        &format!("{ETC}/credentials/aws_secret_access_key"),
        &format!("{SECRET_KEY}\n"),
    );
    s.ok(&format!(
        "chmod 0700 {ETC}/credentials && chmod 0600 {ETC}/credentials/* {ETC}/replicate.env"
    ));
    s.ok("systemctl daemon-reload");
    let cursor = s.cursor();
    let started = s.sh(&format!("systemctl start {UNIT}"));
    let journal = || s.journal(UNIT, &cursor).join("\n");
    assert!(started.status.success(), "{}", journal());
    s.wait_journal(UNIT, &cursor, &["replicated", "seq="], LONG);
    assert!(server.pointer("sd").is_some(), "{}", journal());

    let pid = s.prop(UNIT, "MainPID");
    let core = s.ok(&format!("grep 'Max core file size' /proc/{pid}/limits"));
    let limits: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(limits, ["0", "0"], "{core}");
    let environ = s.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"));
    assert!(environ.contains("CREDENTIALS_DIRECTORY="), "{environ}");
    assert!(!environ.contains("AWS_ACCESS_KEY_ID"), "{environ}");
    assert!(!environ.contains("AWS_SECRET_ACCESS_KEY"), "{environ}");
    assert!(!environ.contains(SECRET_KEY), "{environ}");
    s.ok(&format!("systemctl stop {UNIT}"));
    s.sh(&format!(
        "rm -rf {units}/{UNIT} {units}/{UNIT}.d {ETC}; systemctl daemon-reload"
    ));
}
