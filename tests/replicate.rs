//! Replication end to end against a real S3 server (s3s-fs on 127.0.0.1)
//! and the real binary: upload, restore on an empty directory with
//! bit-identical results, `pull`, the readers on a URL, a damaged remote
//! record, and a directory holding another log.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{
    assert_same_training_state, durable_seqs, field, newest_state, reference_run, synthetic_config,
    write_config,
};
use common::s3::{epochwal, run_epoch_by_epoch, run_to_end, spawn_daemon, S3Server};

const CHECKPOINT: &str = common::s3::CHECKPOINT_ALL;

fn config(server: &S3Server, prefix: &str, data: &Path, epochs: u64, extra: &str) -> String {
    common::s3::replicated_config(server, prefix, data, epochs, extra)
}

#[test]
fn replicated_run_restored_on_an_empty_dir_ends_bit_identical() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference_run(tmp.path(), |d| synthetic_config(d, 12, CHECKPOINT));

    // Machine A trains 6 of 12 epochs, replicating every record.
    let a = tmp.path().join("machine-a");
    let cfg_a = write_config(tmp.path(), "a.toml", &config(&server, "run1", &a, 6, ""));
    let lines = run_to_end(&server, &cfg_a);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the final checkpoint reached the remote")),
        "{}",
        lines.join("\n")
    );
    let ptr = server.pointer("run1").expect("pointer written");
    assert_eq!(ptr["sequence"], 6, "{ptr}");
    assert_eq!(ptr["epoch"], 6, "{ptr}");
    // Every record went up, or was skipped because a newer one was durable
    // before its upload started (latest wins; epochs can be shorter than an
    // upload). keep_records = 0 keeps all remote objects.
    let replicated: Vec<_> = lines.iter().filter(|l| l.contains(" replicated")).collect();
    // Each `replicated` line counts the records that upload superseded
    // (`skipped=`, the gap in sequences since the previous upload) and the
    // running total (`skipped_total=`).
    let mut previous = 0;
    let mut total = 0;
    for l in &replicated {
        let seq = field(l, "seq").unwrap();
        assert_eq!(
            field(l, "skipped"),
            Some(seq - previous - 1),
            "{l}\n{}",
            lines.join("\n")
        );
        total += seq - previous - 1;
        assert_eq!(field(l, "skipped_total"), Some(total), "{l}");
        previous = seq;
    }
    assert_eq!(server.record_keys("run1").len(), replicated.len());
    assert_eq!(replicated.len() as u64 + total, 6, "{replicated:?}");
    let checkpoint_lines: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .collect();
    assert_eq!(checkpoint_lines.len(), 6);
    assert!(
        checkpoint_lines
            .iter()
            .all(|l| l.contains("remote_lag_records=")),
        "{checkpoint_lines:?}"
    );
    // The epoch line (INFO) ends with the remote lag.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("epoch 6/6") && l.contains("remote seq ")),
        "{}",
        lines.join("\n")
    );

    // Machine A is gone. Machine B starts on an empty directory.
    drop(std::fs::remove_dir_all(&a));
    let b = tmp.path().join("machine-b");
    let cfg_b = write_config(tmp.path(), "b.toml", &config(&server, "run1", &b, 12, ""));
    let lines = run_to_end(&server, &cfg_b);
    let restored = lines
        .iter()
        .find(|l| l.contains("restored from the remote copy"))
        .unwrap_or_else(|| panic!("no restore line:\n{}", lines.join("\n")));
    assert!(restored.contains("seq=6"), "{restored}");
    let (seq, state) = newest_state(&b).expect("machine B has records");
    assert_eq!(seq, 12);
    assert_same_training_state(&state, &reference);
    // And B kept replicating the same log.
    let ptr = server.pointer("run1").unwrap();
    assert_eq!(ptr["sequence"], 12, "{ptr}");
}

#[test]
fn pull_restores_without_training_and_readers_take_the_url() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_epoch_by_epoch(&server, &data, "p/q", 4);
    let url = server.url("p/q");

    // tail URL: one line per record object, same format as for a directory.
    let (code, out, err) = epochwal(&server, &["tail", &url, "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("seq=2 epoch=2 "), "{out}");
    assert!(lines[2].starts_with("seq=4 epoch=4 "), "{out}");
    let (code, out, _) = epochwal(&server, &["tail", &url, "--json", "-n", "1"]);
    assert_eq!(code, 0);
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["sequence"], 4);

    // inspect and export read the validated remote record.
    let (code, out, err) = epochwal(&server, &["inspect", &url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["sequence"], 4, "{out}");
    let (code, out, err) = epochwal(&server, &["inspect", &url, "--seq", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sequence 2"), "{out}");
    // --best on the URL picks what --best picks on the directory (figures
    // from the remote headers).
    let best = |target: &str| {
        let (code, out, err) = epochwal(&server, &["inspect", target, "--best", "--json"]);
        assert_eq!(code, 0, "{target}: {err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        doc["sequence"].as_u64().unwrap()
    };
    assert_eq!(best(&url), best(data.to_str().unwrap()));
    let st = tmp.path().join("w.safetensors");
    let (code, _, err) = epochwal(&server, &["export", &url, "-o", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(st.metadata().unwrap().len() > 0);

    // verify URL: clean.
    let (code, out, err) = epochwal(&server, &["verify", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 good, 0 damaged"), "{out}");

    // pull into an empty directory, then the local tools agree.
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("restored record 4"), "{err}");
    let (seq, state) = newest_state(&pulled).unwrap();
    let (_, original) = newest_state(&data).unwrap();
    assert_eq!(seq, 4);
    assert_same_training_state(&state, &original);
    // Pulling again finds it up to date.
    let (code, _, err) = epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to pull"), "{err}");
}

#[test]
fn restore_into_a_directory_of_another_log_is_refused_naming_both_ids() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &config(&server, "r", &data, 2, ""));
    run_to_end(&server, &cfg);
    let remote_id = server.pointer("r").unwrap()["log_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Another, local-only log.
    let other = tmp.path().join("other");
    let cfg_local = write_config(
        tmp.path(),
        "local.toml",
        &synthetic_config(&other, 1, CHECKPOINT),
    );
    let d = common::daemon::Daemon::spawn(&cfg_local, &[], &[]);
    assert!(d.wait(Duration::from_secs(60)).0.success());
    let local_id = format!(
        "{:032x}",
        epochwal::wal::recover(&other).unwrap().log_id.unwrap()
    );

    let url = server.url("r");
    let (code, _, err) = epochwal(&server, &["pull", &url, other.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&remote_id) && err.contains(&local_id), "{err}");

    // `run` with [replicate] on that directory refuses too, before training,
    // with the exit code of a refusal at start (4: systemd does not restart
    // it, as a restart would be refused again).
    let cfg_other = write_config(tmp.path(), "o.toml", &config(&server, "r", &other, 3, ""));
    let d = spawn_daemon(&server, &cfg_other, &[]);
    let (status, lines) = d.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(4), "{}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(all.contains(&remote_id) && all.contains(&local_id), "{all}");
    assert!(!all.contains("training started"), "{all}");
    // The remote still names the original log.
    assert_eq!(server.pointer("r").unwrap()["log_id"], remote_id.as_str());
}

#[test]
fn flipped_byte_in_a_stored_object_is_named_and_restore_uses_the_previous_record() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_epoch_by_epoch(&server, &data, "f", 3);
    let ptr = server.pointer("f").unwrap();
    let object = format!("f/{}", ptr["object"].as_str().unwrap());
    // Flip one payload byte in the server's backing file.
    let file = server.object_file(&object);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = 4096 + bytes.len().saturating_sub(4096) / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    let url = server.url("f");
    let (code, out, err) = epochwal(&server, &["verify", &url]);
    assert_eq!(code, 1, "{out}{err}");
    let name = ptr["object"].as_str().unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("damaged") && l.contains(name) && l.contains("checksum")),
        "{out}"
    );
    assert!(out.contains("would use sequence 2"), "{out}");

    // The restored log numbers after the damaged pointer's sequence 3:
    // record 2 becomes sequence 4, so that no sequence names two records.
    let pulled = tmp.path().join("pulled");
    let (code, _, err) = epochwal(&server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(name), "the damaged object is named: {err}");
    assert!(err.contains("restored record 2"), "{err}");
    assert!(err.contains("as sequence 4"), "{err}");
    let (seq, state) = newest_state(&pulled).unwrap();
    assert_eq!((seq, state.epoch), (4, 2));

    // `run` on an empty directory does the same and trains on from record 2
    // (epoch 2): epochs 3 and 4 get sequences 5 and 6, never 3 again.
    let b = tmp.path().join("b");
    let cfg_b = write_config(tmp.path(), "b.toml", &config(&server, "f", &b, 4, ""));
    let lines = run_to_end(&server, &cfg_b);
    let all = lines.join("\n");
    assert!(
        all.contains("remote record is damaged") && all.contains(name),
        "{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored from the remote copy")
                && field(l, "seq") == Some(4)
                && field(l, "remote_seq") == Some(2)),
        "{all}"
    );
    assert_eq!(durable_seqs(&lines), vec![5, 6], "{all}");
    // The remote: every sequence names one object; the damaged one is
    // untouched (nothing was uploaded under its sequence); the restored
    // record went up as sequence 4 and the pointer moved past the damage.
    let keys = server.record_keys("f");
    let seqs: Vec<u64> = keys
        .iter()
        .map(|k| k.rsplit('/').next().unwrap()[..20].parse().unwrap())
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "a sequence names two objects: {keys:?}");
    // (5 may have been skipped: latest wins.)
    assert!(
        seqs.starts_with(&[1, 2, 3, 4]) && seqs.ends_with(&[6]),
        "{keys:?}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "damaged object rewritten"
    );
    let ptr = server.pointer("f").unwrap();
    assert_eq!(
        (ptr["sequence"].as_u64(), ptr["epoch"].as_u64()),
        (Some(6), Some(4))
    );
    let (_, out, err) = epochwal(&server, &["verify", &url]);
    assert!(out.contains("would use sequence 6"), "{out}{err}");
}

#[test]
fn tail_follow_on_a_url_polls_the_pointer() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &config(&server, "t", &data, 0, ""));
    let mut tail = std::process::Command::new(common::daemon::binary())
        .args(["tail", "-f", "--json", &server.url("t")])
        .envs(server.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = spawn_daemon(&server, &cfg, &[]);
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tail -f printed a remote record");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seqs.push(v["sequence"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    d.signal(libc::SIGTERM);
    let (status, _) = d.wait(Duration::from_secs(60));
    assert!(status.success());
    // SAFETY: kill only reads its arguments; the pid is our child's.
    unsafe { libc::kill(tail.id() as i32, libc::SIGINT) };
    let st = tail.wait().unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn remote_retention_keeps_the_best_records_by_validation_loss() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Locally everything is kept (the headers are the reference); remotely
    // the newest 3 and the best 3. A high learning rate makes the
    // validation loss go up and down, so the best are not the newest.
    // 16384 rows: epochs long enough that uploads keep up (latest wins
    // would otherwise skip most records of this tiny model).
    let body = format!(
        "{}\n[optimizer]\nlr = 0.05\n",
        config(
            &server,
            "best",
            &data,
            40,
            "keep_records = 3\nkeep_best = 3"
        )
    )
    .replace("n = 1024", "n = 16384");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let lines = run_to_end(&server, &cfg);
    // Records that reached the remote (latest wins may skip some).
    let uploaded: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains(" replicated ") || l.ends_with("replicated"))
        .filter_map(|l| field(l, "seq"))
        .collect();
    assert!(uploaded.len() > 10, "{}", lines.join("\n"));
    let headers: Vec<_> = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .iter()
        .flat_map(|s| s.records.clone())
        .collect();
    let mut ranked: Vec<(f32, u64)> = headers
        .iter()
        .filter(|h| uploaded.contains(&h.sequence))
        .filter_map(|h| h.validation_loss().map(|l| (l, h.sequence)))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let best: Vec<u64> = ranked[..3].iter().map(|r| r.1).collect();
    let newest = *uploaded.iter().max().unwrap();
    assert!(
        best.iter().any(|s| *s + 3 <= newest),
        "the loss must not simply fall: best {best:?}, newest {newest}"
    );
    let remote: Vec<u64> = server
        .record_keys("best")
        .iter()
        .map(|k| {
            let name = k.rsplit('/').next().unwrap();
            name.split('-').next().unwrap().parse().unwrap()
        })
        .collect();
    for seq in best.iter().chain([&newest]) {
        assert!(
            remote.contains(seq),
            "record {seq} missing remotely: {remote:?} (best {best:?})"
        );
    }
    // The newest 3, the best 3, and at most one more when the daemon
    // exited before the last upload's retention pass.
    assert!(remote.len() <= 7, "retention ran: {remote:?}");
}

/// A restore's target directory is private like any log directory: `pull`
/// into a new directory (under a missing parent) and `run` restoring at
/// start into a new data directory, both under umask 000, leave the
/// directory 0700 and every file in it 0600.
#[test]
fn a_restore_creates_its_directory_0700_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    run_epoch_by_epoch(&server, &tmp.path().join("a"), "modes", 1);
    let umask_000 = |cmd: &mut std::process::Command| {
        // SAFETY: umask is async-signal-safe and touches only the child's mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let assert_private = |dir: &Path, what: &str| {
        assert_eq!(mode(dir), 0o700, "{what}: {}", dir.display());
        let mut files = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{what}: {}", p.display());
            files += 1;
        }
        assert!(files >= 3, "{what}: {files} files");
    };

    let pulled = tmp.path().join("new").join("pulled");
    let mut cmd = std::process::Command::new(common::daemon::binary());
    cmd.args(["pull", &server.url("modes")])
        .arg(&pulled)
        .envs(server.env());
    umask_000(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_private(&pulled, "pull");
    assert_eq!(
        mode(&tmp.path().join("new")),
        0o700,
        "pull: the parent it created"
    );

    let restored = tmp.path().join("b").join("data");
    let cfg = write_config(
        tmp.path(),
        "b.toml",
        &config(&server, "modes", &restored, 2, ""),
    );
    let mut cmd = std::process::Command::new(common::daemon::binary());
    cmd.arg("run").arg("--config").arg(&cfg).envs(server.env());
    umask_000(&mut cmd);
    let (status, lines) = common::daemon::Daemon::spawn_command(cmd).wait(Duration::from_secs(180));
    assert!(status.success(), "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored from the remote copy")),
        "{}",
        lines.join("\n")
    );
    assert_private(&restored, "run");
    assert_eq!(
        mode(&tmp.path().join("b")),
        0o700,
        "run: the parent it created"
    );
}
