//! `epochwal run` as an operator meets it: the real binary, real signals,
//! real files.

mod common;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::daemon::*;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn runs_n_epochs_and_leaves_n_durable_records() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 6, "every_epochs = 1\nkeep_records = 0"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    assert_eq!(durable_seqs(&lines), vec![1, 2, 3, 4, 5, 6]);
    let scan = epochwal::wal::LogReader::open(&data)
        .unwrap()
        .scan()
        .unwrap();
    let epochs: Vec<u64> = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.epoch))
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6]);
    let (seq, state) = newest_state(&data).unwrap();
    assert_eq!((seq, state.epoch, state.step_in_epoch), (6, 6, 0));
}

/// A fresh run creates its first segment before training; a restart, whose
/// disk has room, leaves it to the persisting thread, and its checkpoints
/// go into that segment all the same.
#[test]
fn a_restart_creates_its_first_segment_beside_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = |epochs: u64| {
        write_config(
            tmp.path(),
            "c.toml",
            &synthetic_config(&data, epochs, "every_epochs = 1\nkeep_records = 0"),
        )
    };
    let (status, lines) = Daemon::spawn(&cfg(2), &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert!(
        all.contains("space for the first checkpoint reserved"),
        "{all}"
    );
    assert!(!all.contains("created beside training"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![1, 2]);

    let (status, lines) = Daemon::spawn(&cfg(4), &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert!(
        all.contains(
            "space for the first checkpoint checked; its segment is created beside training"
        ),
        "{all}"
    );
    assert!(
        !all.contains("space for the first checkpoint reserved"),
        "{all}"
    );
    assert_eq!(durable_seqs(&lines), vec![3, 4]);
    let (seq, state) = newest_state(&data).unwrap();
    assert_eq!((seq, state.epoch), (4, 4));
}

#[test]
fn the_tutorial_network_keeps_weight_ten_and_bias_one_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("seed");
    let body = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/seed.toml"))
        .unwrap()
        .replace(
            "data_dir = \"epochwal-seed\"",
            &format!("data_dir = \"{}\"", data.display()),
        );
    let cfg = write_config(tmp.path(), "seed.toml", &body);
    for epochs in [10, 40, 100] {
        let (status, lines) =
            Daemon::spawn(&cfg, &["--epochs", &epochs.to_string()], &[]).wait(LONG);
        assert!(status.success(), "{}", lines.join("\n"));
    }
    let (_, state) = newest_state(&data).unwrap();
    assert_eq!(state.epoch, 100);
    let w = state
        .model
        .tensors
        .iter()
        .find(|t| t.name == "fc.weight")
        .unwrap();
    let b = state
        .model
        .tensors
        .iter()
        .find(|t| t.name == "fc.bias")
        .unwrap();
    assert_eq!(w.shape, vec![1, 1]);
    assert!((w.data[0] - 10.0).abs() < 0.1, "fc.weight = {}", w.data[0]);
    assert!((b.data[0] - 1.0).abs() < 0.1, "fc.bias = {}", b.data[0]);
    assert!((w.data[0] + b.data[0] - 11.0).abs() < 0.1);
}

#[test]
fn sigterm_mid_epoch_writes_the_position_and_a_restart_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    // Checkpoints only at epoch ends, so any record with step_in_epoch > 0
    // can only come from the shutdown path.
    // 16384 examples (512 steps an epoch): with the default 1024 the eight
    // epochs took about 0.1 s on a quiet machine, so a SIGTERM 40 ms after
    // "training started" could find the run already complete.
    let body = |d: &std::path::Path| {
        synthetic_config(d, 8, "every_epochs = 1\nkeep_records = 0")
            .replace("n = 1024\n", "n = 16384\n")
    };
    let reference = reference_run(tmp.path(), body);

    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &body(&data));
    let mut stopped_mid_epoch = false;
    for attempt in 0..20 {
        let d = Daemon::spawn(&cfg, &[], &[]);
        d.wait_for("training started", LONG).expect("started");
        std::thread::sleep(Duration::from_millis(40 + 37 * attempt));
        d.signal(libc::SIGTERM);
        let (status, lines) = d.wait(LONG);
        assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
        let Some((_, state)) = newest_state(&data) else {
            continue;
        };
        if state.epoch >= 8 {
            break;
        }
        if state.step_in_epoch > 0 {
            stopped_mid_epoch = true;
            assert!(
                lines.iter().any(|l| l.contains("reason=\"shutdown\"")),
                "the mid-epoch record must be the final checkpoint"
            );
            break;
        }
    }
    assert!(stopped_mid_epoch, "no SIGTERM landed mid-epoch in 20 tries");
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let resumed = lines
        .iter()
        .find(|l| l.contains("recovered"))
        .expect("resumed");
    assert!(field(resumed, "step").unwrap() > 0);
    let (_, state) = newest_state(&data).unwrap();
    assert_same_training_state(&reference, &state);
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 0, "every_epochs = 1"),
    );
    let d = Daemon::spawn(
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "100000"),
        ],
    );
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent_term = false;
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no message: {e}; got {messages:?}"),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        messages.push(msg.clone());
        if !sent_term && messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2 {
            d.signal(libc::SIGTERM);
            sent_term = true;
        }
        if msg.contains("STATUS=stopped") {
            break;
        }
    }
    let (status, lines) = d.wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let pos = |needle: &str| {
        messages
            .iter()
            .position(|m| m.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing from {messages:?}"))
    };
    let ready = pos("READY=1");
    let durable_status = pos("last durable seq");
    let watchdog = pos("WATCHDOG=1");
    let stopping = pos("STOPPING=1");
    let extend = pos("EXTEND_TIMEOUT_USEC=");
    let stopped = pos("STATUS=stopped");
    assert_eq!(ready, 0, "READY=1 comes first: {messages:?}");
    assert!(ready < durable_status && ready < watchdog);
    assert!(
        watchdog < stopping && stopping < extend && extend < stopped,
        "{messages:?}"
    );
    assert!(messages[ready].contains("STATUS=training: epoch 0"));
    // From STOPPING=1 on, the status never reads "training" again, also when
    // the final checkpoint becomes durable.
    let after_stop = &messages[stopping..];
    assert!(
        !after_stop.iter().any(|m| m.contains("STATUS=training")),
        "{after_stop:?}"
    );
    if lines.iter().any(|l| l.contains("reason=shutdown")) {
        assert!(
            after_stop
                .iter()
                .any(|m| m.contains("STATUS=stopping: epoch") && m.contains("last durable seq")),
            "the final checkpoint is reported as stopping: {after_stop:?}"
        );
    }
}

#[test]
fn a_second_daemon_on_the_same_directory_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &synthetic_config(&data, 0, ""));
    let first = Daemon::spawn(&cfg, &[], &[]);
    first
        .wait_for("training started", LONG)
        .expect("first started");
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert_eq!(status.code(), Some(1));
    let all = lines.join("\n");
    assert!(all.contains("locked by another writer"), "{all}");
    assert!(all.contains(&format!("pid {}", first.pid())), "{all}");
    assert!(all.contains(data.to_str().unwrap()), "{all}");
    first.signal(libc::SIGTERM);
    let (status, _) = first.wait(LONG);
    assert!(status.success());
}

#[test]
fn an_unknown_config_key_is_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let body = synthetic_config(&data, 1, "every_epoch = 2");
    let cfg = write_config(tmp.path(), "bad.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert_eq!(status.code(), Some(1));
    let all = lines.join("\n");
    assert!(all.contains("every_epoch"), "{all}");
    assert!(all.contains("bad.toml"), "{all}");
    assert!(!data.exists(), "nothing is created on a bad config");
}

#[test]
fn an_ill_typed_config_value_is_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let body = synthetic_config(&data, 1, "").replace("batch_size = 32", "batch_size = \"big\"");
    let cfg = write_config(tmp.path(), "bad.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert_eq!(status.code(), Some(1));
    assert!(lines.join("\n").contains("batch_size"), "{lines:?}");
}

#[test]
fn resuming_with_an_incompatible_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &synthetic_config(&data, 1, ""));
    let (status, _) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success());
    let other = synthetic_config(&data, 2, "").replace("hidden = [128, 128]", "hidden = [64]");
    let cfg2 = write_config(tmp.path(), "other.toml", &other);
    let (status, lines) = Daemon::spawn(&cfg2, &[], &[]).wait(LONG);
    assert_eq!(status.code(), Some(1));
    let all = lines.join("\n");
    assert!(all.contains("fingerprint"), "{all}");
    assert_eq!(newest_state(&data).unwrap().0, 1, "the log is untouched");
}

#[test]
fn sigusr1_checkpoints_now_and_sighup_applies_new_triggers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 0, "every_epochs = 0"),
    );
    let d = Daemon::spawn(&cfg, &[], &[]);
    d.wait_for("training started", LONG).unwrap();
    d.signal(libc::SIGUSR1);
    let line = d
        .wait_for("reason=\"signal\"", LONG)
        .expect("SIGUSR1 checkpoint");
    assert_eq!(field(&line, "seq"), Some(1));

    // A new trigger, and a batch size, which needs a restart.
    write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 0, "every_epochs = 0\nevery_steps = 3")
            .replace("batch_size = 32", "batch_size = 64"),
    );
    d.signal(libc::SIGHUP);
    let applied = d.wait_for("SIGHUP: reloaded", LONG).expect("reload line");
    assert!(
        applied.contains("checkpoint.every_steps 0 -> 3"),
        "{applied}"
    );
    let warned = d
        .wait_for("take effect only after a restart", LONG)
        .expect("a WARN line for the restart-only key");
    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains("batch_size 32 -> 64"), "{warned}");
    assert!(!warned.contains("every_steps"), "{warned}");
    d.wait_for("reason=\"steps\"", LONG)
        .expect("the new trigger fires");
    let running = std::fs::read_to_string(data.join("RUNNING.toml")).unwrap();
    assert!(running.contains("every_steps = 3"), "{running}");
    assert!(running.contains("batch_size = 32"), "{running}");

    std::fs::write(&cfg, "this is not toml").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("configuration not reloaded", LONG)
        .expect("a bad file is refused");
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
}

#[test]
fn a_second_sigterm_exits_at_once_and_leaves_a_valid_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 0, "every_steps = 4"),
    );
    let d = Daemon::spawn(&cfg, &[], &[]);
    d.wait_for("checkpoint durable", LONG).unwrap();
    d.signal(libc::SIGTERM);
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(LONG);
    // Either the second signal arrived while the final checkpoint was being
    // written (exit 143 at once) or after it was done (exit 0).
    assert!(
        status.code() == Some(143) || status.code() == Some(0),
        "status {status:?} signal {:?}\n{}",
        status.signal(),
        lines.join("\n")
    );
    let reported = durable_seqs(&lines).into_iter().max().unwrap();
    let (seq, _) = newest_state(&data).expect("a valid record");
    assert!(seq >= reported);
    let (status, lines) = Daemon::spawn(&cfg, &["--epochs", "1"], &[]).wait(LONG);
    assert!(
        status.success(),
        "restart after the hard exit: {}",
        lines.join("\n")
    );
}

#[test]
fn init_from_starts_a_fresh_run_from_the_given_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let cfg = write_config(tmp.path(), "a.toml", &synthetic_config(&source, 2, ""));
    let (status, _) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success());
    let weights = tmp.path().join("w.safetensors");
    let out = std::process::Command::new(binary())
        .args([
            "export",
            source.to_str().unwrap(),
            "-o",
            weights.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With lr = 0 training leaves the weights alone, so the first record must
    // hold exactly the imported weights.
    let fresh = tmp.path().join("fresh");
    let body = synthetic_config(&fresh, 1, "")
        .replace("[checkpoint]", "[optimizer]\nlr = 0.0\n[checkpoint]");
    let cfg2 = write_config(tmp.path(), "b.toml", &body);
    let (status, lines) =
        Daemon::spawn(&cfg2, &["--init-from", weights.to_str().unwrap()], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    assert!(lines
        .iter()
        .any(|l| l.contains("initialised from safetensors")));
    let (_, exported) = newest_state(&source).unwrap();
    let (_, started) = newest_state(&fresh).unwrap();
    assert_eq!(started.epoch, 1);
    for (a, b) in exported.model.tensors.iter().zip(&started.model.tensors) {
        assert_eq!(a.name, b.name);
        assert!(
            a.data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}",
            a.name
        );
    }

    // A model with other shapes is refused with the names, and a non-empty
    // log refuses a warm start.
    let other = tmp.path().join("other");
    let body = synthetic_config(&other, 1, "").replace("hidden = [128, 128]", "hidden = [16]");
    let cfg3 = write_config(tmp.path(), "c.toml", &body);
    let (status, lines) =
        Daemon::spawn(&cfg3, &["--init-from", weights.to_str().unwrap()], &[]).wait(LONG);
    assert_eq!(status.code(), Some(1));
    assert!(lines.join("\n").contains("layers.0.weight"), "{lines:?}");
    // The same file again on a non-empty log resumes (idempotent import);
    // daemon_import.rs has the crash and other-file cases.
    let (status, lines) =
        Daemon::spawn(&cfg2, &["--init-from", weights.to_str().unwrap()], &[]).wait(LONG);
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.join("\n").contains("already imported into this log"),
        "{lines:?}"
    );
}
