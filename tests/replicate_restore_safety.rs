//! A restore never costs a run its progress, against the real S3 server
//! (s3s-fs on 127.0.0.1) and the real binary:
//! - a restored copy is made of exactly the bytes that were checked: the
//!   download is never mapped, so the fault shim's FLIP of a mapping of it
//!   (a medium returning other bytes on a second read) never fires;
//! - a log whose every record is damaged or unreadable is never replaced by
//!   a fresh run: without a remote the start is refused and nothing is
//!   deleted; with one, the valid remote copy is restored;
//! - a new machine that cannot reach the remote does not fork the run;
//! - a stale directory next to damaged newer remote objects numbers its
//!   records after every sequence the remote has used;
//! - AWS keys from systemd's `$CREDENTIALS_DIRECTORY`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{durable_seqs, field, newest_state, synthetic_config, write_config, Daemon};
use common::faults;
use common::s3::{epochwal, replicate_table, S3Server};
use epochwal::wal::{LogReader, RecordHeader};

const WAIT: Duration = Duration::from_secs(180);

fn checkpoint(keep_records: u64) -> String {
    format!("every_epochs = 1\nsegment_bytes = 1048576\nkeep_records = {keep_records}")
}

fn config(server: &S3Server, prefix: &str, data: &Path, epochs: u64, keep: u64) -> String {
    format!(
        "{}{}",
        synthetic_config(data, epochs, &checkpoint(keep)),
        replicate_table(server, prefix, "")
    )
}

/// Runs the daemon to its end with the server's environment plus `extra`.
fn run(server: &S3Server, cfg: &Path, extra: &[(String, String)]) -> (Option<i32>, Vec<String>) {
    let mut env = server.env();
    env.extend_from_slice(extra);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, lines) = Daemon::spawn(cfg, &[], &pairs).wait(WAIT);
    (status.code(), lines)
}

/// Trains `epochs` epochs one run at a time, so that every epoch's record
/// reaches the remote.
fn run_epoch_by_epoch(server: &S3Server, dir: &Path, prefix: &str, epochs: u64, keep: u64) {
    for e in 1..=epochs {
        let cfg = write_config(
            dir.parent().unwrap(),
            "stepwise.toml",
            &config(server, prefix, dir, e, keep),
        );
        let (code, lines) = run(server, &cfg, &[]);
        let all = lines.join("\n");
        assert_eq!(code, Some(0), "{all}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("reached the remote") && field(l, "seq") == Some(e)),
            "{all}"
        );
    }
}

/// Every record header in a log directory, with its segment.
fn records(dir: &Path) -> Vec<(PathBuf, RecordHeader)> {
    LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .into_iter()
        .flat_map(|s| s.records.into_iter().map(move |r| (s.path.clone(), r)))
        .collect()
}

/// The segment files of a directory and their bytes.
fn segment_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

fn flip_payload_byte(path: &Path, h: &RecordHeader) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = (h.offset + 4096 + h.payload_len / 2) as usize;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn log_of(lines: &[String]) -> String {
    lines.join("\n")
}

#[test]
fn a_restored_copy_that_differs_from_the_download_never_becomes_a_record() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    run_epoch_by_epoch(&server, &tmp.path().join("a"), "copy", 2, 0);
    let ptr = server.pointer("copy").unwrap();
    let remote_checksum = ptr["payload_checksum"].as_str().unwrap().to_string();

    // Machine B restores; a mapping of the download would read one byte
    // other than the one checked (as a medium that returns other bytes on a
    // second read would). The download is read once, into memory, and
    // checked and copied from there (FORMAT.md §1.8): it is never mapped, so
    // there is no second read to differ.
    let b = tmp.path().join("b");
    let cfg = write_config(tmp.path(), "b.toml", &config(&server, "copy", &b, 3, 0));
    let (code, lines) = run(
        &server,
        &cfg,
        &faults::env("mmap,.epochwal-download-,FLIP,count=1"),
    );
    let all = log_of(&lines);
    assert_eq!(
        faults::injected(&all).len(),
        0,
        "the download was mapped (read a second time): {all}"
    );
    // No record in B holds the changed bytes: every record that verifies is
    // the remote's record (its checksum) or one trained after it.
    for (_, h) in records(&b) {
        if h.epoch == 2 {
            assert_eq!(
                format!("{:016x}", h.payload_checksum),
                remote_checksum,
                "a record of the changed bytes became durable: {all}"
            );
        }
    }
    assert_eq!(code, Some(0), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored from the remote copy") && field(l, "seq") == Some(2)),
        "{all}"
    );
    let (_, state) = newest_state(&b).unwrap();
    assert_eq!(state.epoch, 3);
    let (code, out, err) = epochwal(&server, &["verify", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_log_with_no_usable_record_refuses_a_fresh_run_and_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 3, &checkpoint(1)),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(WAIT);
    assert!(status.success(), "{}", log_of(&lines));
    let held = records(&data);
    assert!(!held.is_empty());
    for (path, h) in &held {
        flip_payload_byte(path, h);
    }
    let before = segment_bytes(&data);

    let cfg = write_config(
        tmp.path(),
        "more.toml",
        &synthetic_config(&data, 5, &checkpoint(1)),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(WAIT);
    let all = log_of(&lines);
    assert!(!status.success(), "{all}");
    assert!(!all.contains("no checkpoint found: fresh run"), "{all}");
    assert!(all.contains("refusing to start a fresh run"), "{all}");
    assert!(all.contains(&data.display().to_string()), "{all}");
    assert_eq!(segment_bytes(&data), before, "a segment changed or went");
}

#[test]
fn unreadable_local_records_are_restored_from_the_remote_not_replaced_by_a_fresh_run() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_epoch_by_epoch(&server, &data, "eio", 3, 1);
    // Every retained record's payload reads fail with EIO.
    let held = records(&data);
    assert!(!held.is_empty());
    let spec: Vec<String> = held
        .iter()
        .map(|(p, h)| {
            let start = h.offset + 4096;
            format!(
                "pread,{},EIO,count=0,range={start}-{}",
                p.file_name().unwrap().to_string_lossy(),
                start + h.payload_len
            )
        })
        .collect();
    let cfg = write_config(
        tmp.path(),
        "more.toml",
        &config(&server, "eio", &data, 5, 1),
    );
    let (code, lines) = run(&server, &cfg, &faults::env(&spec.join(";")));
    let all = log_of(&lines);
    assert!(!faults::injected(&all).is_empty(), "{all}");
    assert!(!all.contains("no checkpoint found: fresh run"), "{all}");
    assert_eq!(code, Some(0), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored from the remote copy")
                && field(l, "remote_seq") == Some(3)),
        "{all}"
    );
    // Training went on from epoch 3, locally and remotely.
    let (_, state) = newest_state(&data).unwrap();
    assert_eq!(state.epoch, 5);
    let ptr = server.pointer("eio").unwrap();
    assert_eq!(ptr["epoch"].as_u64(), Some(5), "{ptr}");
    let epochs_trained: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .filter_map(|l| field(l, "epoch"))
        .collect();
    assert_eq!(epochs_trained, vec![4, 5], "{all}");
}

#[test]
fn a_new_machine_that_cannot_reach_the_remote_does_not_fork_the_run() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    run_epoch_by_epoch(&server, &tmp.path().join("a"), "fork", 2, 0);
    let log_id = server.pointer("fork").unwrap()["log_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.stop();

    // Machine B, empty directory, required = false, the remote down.
    let b = tmp.path().join("b");
    let body = format!(
        "{}required = false\nretry_max_seconds = 1\n",
        config(&server, "fork", &b, 4, 0)
    )
    .replace(
        "\nepochs = 4\n",
        "\nepochs = 4\nshutdown_grace_seconds = 3\n",
    );
    let cfg = write_config(tmp.path(), "b.toml", &body);
    let (code, lines) = run(&server, &cfg, &[]);
    let all = log_of(&lines);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("holds no checkpoint"), "{all}");
    assert!(!all.contains("training started"), "{all}");
    assert!(
        !b.exists() || records(&b).is_empty(),
        "a fresh run left records: {all}"
    );

    // The remote is back: B restores the run and goes on under its log id.
    server.restart();
    let (code, lines) = run(&server, &cfg, &[]);
    let all = log_of(&lines);
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("restored from the remote copy"), "{all}");
    let rec = epochwal::wal::recover(&b).unwrap();
    assert_eq!(rec.log_id.map(|id| format!("{id:032x}")), Some(log_id));
    assert_eq!(rec.record.unwrap().header().epoch, 4);
    assert_eq!(server.pointer("fork").unwrap()["epoch"].as_u64(), Some(4));
}

#[test]
fn a_stale_directory_numbers_after_damaged_newer_remote_records() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "stale", 1, 0);
    // A copy of the directory as it was after epoch 1.
    let stale = tmp.path().join("stale");
    std::fs::create_dir(&stale).unwrap();
    for e in std::fs::read_dir(&a).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "wal") {
            std::fs::copy(e.path(), stale.join(e.file_name())).unwrap();
        }
    }
    // Machine A goes on to epoch 3; then records 2 and 3 are damaged on the
    // remote.
    for e in 2..=3 {
        let cfg = write_config(tmp.path(), "a.toml", &config(&server, "stale", &a, e, 0));
        let (code, lines) = run(&server, &cfg, &[]);
        assert_eq!(code, Some(0), "{}", log_of(&lines));
    }
    let keys = server.record_keys("stale");
    assert_eq!(keys.len(), 3, "{keys:?}");
    for key in &keys[1..] {
        let file = server.object_file(key);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = 4096 + (bytes.len() - 4096) / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }

    // The stale directory resumes: its record 1 is the newest valid copy,
    // but the remote has used sequences 2 and 3.
    let cfg = write_config(
        tmp.path(),
        "stale.toml",
        &config(&server, "stale", &stale, 3, 0),
    );
    let (code, lines) = run(&server, &cfg, &[]);
    let all = log_of(&lines);
    assert_eq!(code, Some(0), "{all}");
    let seqs = durable_seqs(&lines);
    assert!(
        seqs.iter().all(|s| *s > 3),
        "a local record took a sequence the remote used: {seqs:?}\n{all}"
    );
    assert_eq!(seqs.len(), 2, "{all}");
    // Every new record reached the remote: nothing dropped, no false lag 0.
    let ptr = server.pointer("stale").unwrap();
    assert_eq!(ptr["sequence"].as_u64(), seqs.last().copied(), "{ptr}");
    assert_eq!(ptr["epoch"].as_u64(), Some(3), "{ptr}");
    let (_, state) = newest_state(&stale).unwrap();
    assert_eq!(state.epoch, 3);
}

#[test]
fn aws_keys_come_from_the_systemd_credentials_directory() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(
        creds.join("aws_access_key_id"),
        format!("{}\n", common::s3::ACCESS_KEY),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &config(&server, "creds", &data, 1, 0));
    let env_without_keys = |dir: &Path| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = server
            .env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
            .collect();
        env.push(("CREDENTIALS_DIRECTORY".into(), dir.display().to_string()));
        env
    };
    let spawn = |env: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut cmd = std::process::Command::new(common::daemon::binary());
        cmd.arg("run").arg("--config").arg(&cfg);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        for (k, v) in pairs {
            cmd.env(k, v);
        }
        Daemon::spawn_command(cmd).wait(WAIT)
    };

    // Only the key id: refused, naming the missing credential.
    let (status, lines) = spawn(&env_without_keys(&creds));
    let all = log_of(&lines);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("aws_secret_access_key"), "{all}");
    assert!(all.contains(&creds.display().to_string()), "{all}");

    // Both keys: replication works with no key in the environment.
    std::fs::write(
        creds.join("aws_secret_access_key"),
        format!("{}\n", common::s3::SECRET_KEY),
    )
    .unwrap();
    let (status, lines) = spawn(&env_without_keys(&creds));
    let all = log_of(&lines);
    assert!(status.success(), "{all}");
    assert!(
        all.contains("the final checkpoint reached the remote"),
        "{all}"
    );
    assert_eq!(server.pointer("creds").unwrap()["epoch"].as_u64(), Some(1));
}

#[test]
fn a_file_remote_is_fsynced_before_the_pointer_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    let body = |data: &Path| {
        format!(
            "{}[replicate]\nurl = \"file://{}\"\nretry_max_seconds = 1\n",
            synthetic_config(data, 1, &checkpoint(0)),
            remote.display()
        )
        .replace(
            "\nepochs = 1\n",
            "\nepochs = 1\nshutdown_grace_seconds = 3\n",
        )
    };
    let logs = format!("{}/logs/", remote.display());
    // The record object's fsync, then its directory's, fails: the pointer
    // must not name an object that may not be on the disk.
    for (i, spec) in [
        format!("fsync,{logs},EIO,count=0"),
        format!("fsyncdir,{logs},EIO,count=0"),
    ]
    .iter()
    .enumerate()
    {
        let data = tmp.path().join(format!("data{i}"));
        let cfg = write_config(tmp.path(), "f.toml", &body(&data));
        let env = faults::env(spec);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, lines) = Daemon::spawn(&cfg, &[], &pairs).wait(WAIT);
        let all = log_of(&lines);
        assert!(status.success(), "{all}");
        assert!(
            !faults::injected(&all).is_empty(),
            "{spec}: the object was never fsynced: {all}"
        );
        assert!(
            !remote.join("HEAD").exists(),
            "{spec}: the pointer names an object that is not durable: {all}"
        );
        assert!(all.contains("did NOT reach the remote"), "{all}");
    }
    // Without faults the record goes up and the pointer names it.
    let data = tmp.path().join("data-ok");
    let cfg = write_config(tmp.path(), "f.toml", &body(&data));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(WAIT);
    let all = log_of(&lines);
    assert!(status.success(), "{all}");
    assert!(
        all.contains("the final checkpoint reached the remote"),
        "{all}"
    );
    assert!(remote.join("HEAD").exists());
}

#[test]
fn an_older_remote_copy_is_not_restored_over_newer_unreadable_records() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_epoch_by_epoch(&server, &data, "older", 3, 0);
    // Epoch 4 is trained with the remote down: local 1..4, remote 1..3.
    server.stop();
    let body = format!(
        "{}required = false\nretry_max_seconds = 1\n",
        config(&server, "older", &data, 4, 0)
    )
    .replace(
        "\nepochs = 4\n",
        "\nepochs = 4\nshutdown_grace_seconds = 2\n",
    );
    let cfg = write_config(tmp.path(), "down.toml", &body);
    let (code, lines) = run(&server, &cfg, &[]);
    assert_eq!(code, Some(0), "{}", log_of(&lines));
    server.restart();
    // Records 2, 3 and 4 cannot be read; 1 can.
    let held = records(&data);
    assert_eq!(held.len(), 4);
    let spec: Vec<String> = held[1..]
        .iter()
        .map(|(p, h)| {
            let start = h.offset + 4096;
            format!(
                "pread,{},EIO,count=0,range={start}-{}",
                p.file_name().unwrap().to_string_lossy(),
                start + h.payload_len
            )
        })
        .collect();
    let before = segment_bytes(&data);
    let cfg = write_config(
        tmp.path(),
        "more.toml",
        &config(&server, "older", &data, 6, 0),
    );
    let (code, lines) = run(&server, &cfg, &faults::env(&spec.join(";")));
    let all = log_of(&lines);
    assert!(!faults::injected(&all).is_empty(), "{all}");
    // Restoring record 3 (or resuming from 1) would let retention delete
    // record 4, which only a read error hides: refused, naming both.
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("could not be read"), "{all}");
    assert!(all.contains("sequence 3"), "{all}");
    assert!(!all.contains("training started"), "{all}");
    assert_eq!(segment_bytes(&data), before, "a segment changed or went");
    // Without the read errors the log resumes from its own record 4.
    let (code, lines) = run(&server, &cfg, &[]);
    let all = log_of(&lines);
    assert_eq!(code, Some(0), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("recovered") && field(l, "seq") == Some(4)),
        "{all}"
    );
}
