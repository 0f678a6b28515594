//! The pointer object (HEAD) lost or damaged, with the real S3 server and
//! the real binary: a restore uses the newest intact record object found by
//! listing, loudly, and never starts a fresh log beside record objects;
//! the readers read the listing; `pull --seq/--best` choose a record; a
//! daemon that lost the pointer race and is restarted; `tail URL` marks
//! damaged record objects.

mod common;

use std::path::Path;

use common::daemon::{durable_seqs, field, newest_state, write_config};
use common::s3::{
    epochwal, replicated_config, run_epoch_by_epoch, run_to_end, spawn_daemon, S3Server,
};

fn flip_payload_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = 4096 + (bytes.len() - 4096) / 2;
    bytes[at] ^= 0x40;
    std::fs::write(file, &bytes).unwrap();
}

/// The sequence of a `tail` line (`seq=N epoch=...`).
fn tail_seq(line: &str) -> u64 {
    line.strip_prefix("seq=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tail line: {line}"))
}

fn log_id(server: &S3Server, prefix: &str) -> String {
    server.pointer(prefix).unwrap()["log_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn lost_pointer_restores_the_newest_intact_record_and_never_starts_afresh() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "lost", 3);
    let id = log_id(&server, "lost");
    // An accidental `aws s3 rm .../HEAD`.
    std::fs::remove_file(server.object_file("lost/HEAD")).unwrap();
    let url = server.url("lost");

    let (code, out, err) = epochwal(&server, &["verify", &url]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("missing"), "{out}");
    assert!(out.contains("would use sequence 3"), "{out}");
    assert!(!err.contains("nothing has been replicated"), "{err}");
    let (code, out, err) = epochwal(&server, &["tail", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.contains("missing"), "{err}");
    let (code, out, err) = epochwal(&server, &["inspect", "--json", &url]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["sequence"], 3, "{out}");

    // A new machine: restored from record 3, loudly, same log, and the
    // pointer is written again.
    let b = tmp.path().join("b");
    let cfg = write_config(
        tmp.path(),
        "b.toml",
        &replicated_config(&server, "lost", &b, 5, ""),
    );
    let lines = run_to_end(&server, &cfg);
    let all = lines.join("\n");
    assert!(all.contains("RESTORING WITHOUT THE POINTER"), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored from the remote copy")
                && field(l, "remote_seq") == Some(3)),
        "{all}"
    );
    assert!(!all.contains("remote copy is empty"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4, 5], "{all}");
    let ptr = server
        .pointer("lost")
        .expect("the pointer is written again");
    assert_eq!(ptr["log_id"], id.as_str());
    assert_eq!(ptr["sequence"], 5);
    let (_, state) = newest_state(&b).unwrap();
    assert_eq!(state.epoch, 5);

    // `pull` restores without the pointer too.
    std::fs::remove_file(server.object_file("lost/HEAD")).unwrap();
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("missing") && err.contains("listing"), "{err}");
    assert_eq!(newest_state(&pulled).unwrap().1.epoch, 5);
}

#[test]
fn damaged_pointer_is_named_and_the_restore_rewrites_it() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "dmg", 2);
    let id = log_id(&server, "dmg");
    let head = server.object_file("dmg/HEAD");
    let text = std::fs::read(&head).unwrap();
    // Cut in half: no longer a pointer document.
    std::fs::write(&head, &text[..text.len() / 2]).unwrap();
    let url = server.url("dmg");

    let (code, out, _) = epochwal(&server, &["verify", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains("would use sequence 2"), "{out}");

    let b = tmp.path().join("b");
    let cfg = write_config(
        tmp.path(),
        "b.toml",
        &replicated_config(&server, "dmg", &b, 3, ""),
    );
    let lines = run_to_end(&server, &cfg);
    let all = lines.join("\n");
    assert!(
        all.contains("the remote pointer (HEAD) is DAMAGED"),
        "{all}"
    );
    assert!(all.contains("RESTORING WITHOUT THE POINTER"), "{all}");
    assert!(
        all.contains("the damaged pointer (HEAD) was replaced"),
        "{all}"
    );
    assert!(all.contains("reached the remote"), "{all}");
    let ptr = server.pointer("dmg").expect("a whole pointer again");
    assert_eq!(ptr["log_id"], id.as_str());
    assert_eq!(ptr["sequence"], 3);
    let (code, out, err) = epochwal(&server, &["verify", &url]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_prefix_whose_record_objects_all_fail_is_refused_not_started_afresh() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "bad", 2);
    std::fs::remove_file(server.object_file("bad/HEAD")).unwrap();
    for key in server.record_keys("bad") {
        flip_payload_byte(&server.object_file(&key));
    }
    let b = tmp.path().join("b");
    let cfg = write_config(
        tmp.path(),
        "b.toml",
        &replicated_config(&server, "bad", &b, 3, "required = false"),
    );
    let d = spawn_daemon(&server, &cfg, &[]);
    let (status, lines) = d.wait(std::time::Duration::from_secs(120));
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(4), "{all}");
    assert!(all.contains("no record object validates"), "{all}");
    assert!(!all.contains("training started"), "{all}");
    assert!(server.pointer("bad").is_none());
    assert!(
        epochwal::wal::recover(&b).map_or(true, |r| r.record.is_none()),
        "a fresh log was started"
    );
}

#[test]
fn pull_chooses_a_record_by_sequence_or_best_validation_loss() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "choose", 3);
    let url = server.url("choose");

    let two = tmp.path().join("two");
    let (code, _, err) = epochwal(
        &server,
        &["pull", "--seq", "2", &url, two.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("restored record 2"), "{err}");
    let (seq, state) = newest_state(&two).unwrap();
    // Numbered after the remote's highest sequence (3).
    assert_eq!((seq, state.epoch), (4, 2));

    // --best is the record `inspect --best` names.
    let (code, out, err) = epochwal(&server, &["inspect", "--best", "--json", &url]);
    assert_eq!(code, 0, "{err}");
    let best: serde_json::Value = serde_json::from_str(&out).unwrap();
    let best_epoch = best["epoch"].as_u64().unwrap();
    let chosen = tmp.path().join("best");
    let (code, _, err) = epochwal(&server, &["pull", "--best", &url, chosen.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(newest_state(&chosen).unwrap().1.epoch, best_epoch);

    // Into a directory that already holds the log: refused (an older
    // record would silently become the newest).
    let (code, _, err) = epochwal(&server, &["pull", "--seq", "1", &url, a.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("empty or new directory"), "{err}");
    assert_eq!(newest_state(&a).unwrap().1.epoch, 3);

    // Without the pointer, --seq still works (from the listing).
    std::fs::remove_file(server.object_file("choose/HEAD")).unwrap();
    let one = tmp.path().join("one");
    let (code, _, err) = epochwal(
        &server,
        &["pull", "--seq", "1", &url, one.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(newest_state(&one).unwrap().1.epoch, 1);
}

#[test]
fn the_loser_of_a_pointer_race_restarted_on_the_same_log_warns_naming_the_dropped_records() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "race", 2);
    // B: a copy of A's directory (same log) that goes on replicating to
    // epoch 6 while A, cut off from the remote, trains locally to epoch 4.
    let b = tmp.path().join("b");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg_b = write_config(
        tmp.path(),
        "b.toml",
        &replicated_config(&server, "race", &b, 6, ""),
    );
    run_to_end(&server, &cfg_b);
    let local_only = write_config(
        tmp.path(),
        "local.toml",
        &common::daemon::synthetic_config(&a, 4, common::s3::CHECKPOINT_ALL),
    );
    let d = common::daemon::Daemon::spawn(&local_only, &[], &[]);
    assert!(d.wait(std::time::Duration::from_secs(60)).0.success());
    assert_eq!(newest_state(&a).unwrap().0, 4);

    // A restarts with replication: the remote (B's sequence 6) wins, and
    // the WARN names A's records 3 and 4 that are no longer the run's.
    let cfg_a = write_config(
        tmp.path(),
        "a.toml",
        &replicated_config(&server, "race", &a, 7, ""),
    );
    let lines = run_to_end(&server, &cfg_a);
    let all = lines.join("\n");
    let warn = lines
        .iter()
        .find(|l| l.contains("the remote wins"))
        .unwrap_or_else(|| panic!("no WARN about dropped records:\n{all}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains("seq 3 (epoch 3)") && warn.contains("seq 4 (epoch 4)"),
        "{warn}"
    );
    assert!(!warn.contains("seq 2 (epoch 2)"), "{warn}");
    assert_eq!(newest_state(&a).unwrap().1.epoch, 7);
}

#[test]
fn tail_on_a_url_marks_damaged_record_objects_and_never_calls_one_best() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run_epoch_by_epoch(&server, &a, "tail", 4);
    let keys = server.record_keys("tail");
    assert_eq!(keys.len(), 4);
    let url = server.url("tail");
    // Before any damage: which record is the best?
    let (_, out, _) = epochwal(&server, &["tail", &url]);
    let best_line = out
        .lines()
        .find(|l| l.ends_with(" best"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let best_seq = tail_seq(&best_line);
    // Damage the best record (truncated) and another (one byte flipped).
    let best_key = &keys[best_seq as usize - 1];
    let file = server.object_file(best_key);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let other = if best_seq == 2 { 3 } else { 2 };
    flip_payload_byte(&server.object_file(&keys[other as usize - 1]));

    let (code, out, err) = epochwal(&server, &["tail", &url]);
    assert_eq!(code, 0, "{err}");
    for l in out.lines() {
        let seq = tail_seq(l);
        if seq == best_seq || seq == other {
            assert!(l.contains(" DAMAGED: "), "{out}");
            assert!(!l.contains(" best"), "{out}");
        } else {
            assert!(!l.contains("DAMAGED"), "{out}");
        }
    }
    assert_eq!(
        out.lines().filter(|l| l.contains(" best")).count(),
        1,
        "{out}"
    );
    let (_, out, _) = epochwal(&server, &["tail", "--json", &url]);
    let damaged = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["intact"] == false)
        .count();
    assert_eq!(damaged, 2, "{out}");
    // --headers-only skips the downloads.
    let (_, out, _) = epochwal(&server, &["tail", "--headers-only", &url]);
    assert!(!out.contains("DAMAGED"), "{out}");
}

#[test]
fn a_flipped_byte_in_the_padding_of_the_header_page_is_reported() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    run_epoch_by_epoch(&server, &tmp.path().join("a"), "pad", 1);
    let key = &server.record_keys("pad")[0];
    let file = server.object_file(key);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[2000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, _) = epochwal(&server, &["verify", &server.url("pad")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("byte 2000 of the header page"), "{out}");
}
