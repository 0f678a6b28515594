//! SIGKILL of the daemon at random moments while records are being uploaded
//! (multipart uploads of a ~13 MiB state), 20 times over one log: after every
//! kill the remote pointer names a complete record object that validates, and
//! a restore on an empty directory gets a record at least as new as the
//! pointer says.
//!
//! It prints how many kills landed while an upload was in flight (the
//! daemon's last "upload started" line not yet answered) and fails unless
//! some did: `cargo test --test replicate_kill -- --nocapture` shows it.
//! `EPOCHWAL_KILLS` sets the number of kills, `EPOCHWAL_KILL_SEED` replays one
//! run.
//!
//! After the kills one more start must leave no part of an unfinished
//! multipart upload on the server that the server can still abort (each
//! start aborts the upload the killed run remembered in `UPLOAD`); parts
//! whose upload s3s-fs itself forgot (a kill during its non-atomic
//! CompleteMultipartUpload) are counted and printed apart. It must also
//! remove the `.epochwal-download-*` file a killed restore leaves in the
//! data directory.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::write_config;
use common::s3::{epochwal, leftover_parts, spawn_daemon, S3Server};

fn config(data: &std::path::Path, url: &str) -> String {
    format!(
        r#"data_dir = "{}"
epochs = 0
seed = 3
batch_size = 32
[dataset]
kind = "synthetic"
n = 64
input_dim = 32
output_dim = 8
[model]
hidden = [1024, 1024]
activation = "tanh"
[checkpoint]
every_epochs = 1
keep_records = 3
[replicate]
url = "{url}"
allow_http = true
part_bytes = 5242880
keep_records = 3
retry_max_seconds = 1
"#,
        data.display()
    )
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Whether the daemon was killed while an upload was in flight: its last
/// "upload started" line has no line after it that ends the attempt
/// (uploaded, failed, not uploaded, replication stopped).
fn upload_in_flight(lines: &[String]) -> bool {
    let Some(start) = lines.iter().rposition(|l| l.contains("upload started")) else {
        return false;
    };
    !lines[start..].iter().any(|l| {
        l.contains(" replicated")
            || l.contains("upload failed")
            || l.contains("not uploaded")
            || l.contains("replication stopped")
    })
}

#[test]
fn sigkill_during_uploads_never_exposes_an_incomplete_record() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let kills: usize = std::env::var("EPOCHWAL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("EPOCHWAL_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill seed {seed} (EPOCHWAL_KILL_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = server.url("kill");
    let cfg = write_config(tmp.path(), "c.toml", &config(&data, &url));
    let mut last_pointer = 0u64;
    let mut uploads_cut = 0;
    for i in 0..kills {
        let d = spawn_daemon(&server, &cfg, &[]);
        assert!(
            d.wait_for("training started", Duration::from_secs(60))
                .is_some(),
            "kill {i}: {}",
            d.lines().join("\n")
        );
        let delay = Duration::from_millis(200 + rng.next() % 1500);
        let t0 = Instant::now();
        while t0.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(5));
        }
        if i % 2 == 0 {
            // Every other kill aims at an upload: right after a record became
            // durable (its upload starts then), at a random point of it.
            let durable = |d: &common::daemon::Daemon| {
                d.lines()
                    .iter()
                    .filter(|l| l.contains("checkpoint durable"))
                    .count()
            };
            let before = durable(&d);
            let t1 = Instant::now();
            while durable(&d) == before && t1.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.next() % 80));
        }
        d.signal(libc::SIGKILL);
        let (_, lines) = d.wait(Duration::from_secs(30));
        if upload_in_flight(&lines) {
            uploads_cut += 1;
        }

        let Some(ptr) = server.pointer("kill") else {
            continue;
        };
        let seq = ptr["sequence"].as_u64().unwrap();
        assert!(
            seq >= last_pointer,
            "kill {i}: the pointer went back from {last_pointer} to {seq}"
        );
        last_pointer = seq;
        // The object the pointer names is complete...
        let object = server.object_file(&format!("kill/{}", ptr["object"].as_str().unwrap()));
        let len = std::fs::metadata(&object)
            .unwrap_or_else(|e| panic!("kill {i}: pointer names {object:?}: {e}"))
            .len();
        assert_eq!(len, 4096 + ptr["payload_len"].as_u64().unwrap(), "kill {i}");
        // ...and a restore on an empty directory gets it, with no damage.
        let fresh = tmp.path().join(format!("restore-{i}"));
        let (code, _, err) = epochwal(&server, &["pull", &url, fresh.to_str().unwrap()]);
        assert_eq!(code, 0, "kill {i}: {err}");
        assert!(!err.contains("damaged"), "kill {i}: {err}");
        let restored = epochwal::wal::recover(&fresh).unwrap().record.unwrap();
        assert!(restored.header().sequence >= seq, "kill {i}");
        std::fs::remove_dir_all(&fresh).unwrap();
    }
    let (parts_after_kills, _, bytes_after_kills) = leftover_parts(&server);
    // What a restore killed while downloading leaves behind.
    let download = data.join(".epochwal-download-Xk3Jq9");
    std::fs::write(&download, vec![7u8; 1 << 20]).unwrap();
    // One more start, stopped once it uploaded a record: it aborts the
    // upload the last kill left unfinished, and removes the download.
    let d = spawn_daemon(&server, &cfg, &[]);
    assert!(
        d.wait_for(" replicated", Duration::from_secs(120))
            .is_some(),
        "{}",
        d.lines().join("\n")
    );
    d.signal(libc::SIGTERM);
    let (status, lines) = d.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", lines.join("\n"));
    let (parts, forgotten, bytes) = leftover_parts(&server);
    println!(
        "{kills} kills, {uploads_cut} of them while an upload was in flight; pointer at {last_pointer}; \
         parts of unfinished uploads on the server: {parts_after_kills} abortable \
         ({bytes_after_kills} bytes with the forgotten ones) after the kills; after one more start \
         {parts} abortable and {forgotten} whose upload the server had forgotten ({bytes} bytes)"
    );
    assert_eq!(
        parts,
        0,
        "parts of unfinished multipart uploads left on the server:\n{}",
        lines.join("\n")
    );
    assert!(!download.exists(), "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("removed the leftover download")),
        "{}",
        lines.join("\n")
    );
    assert!(last_pointer > 0, "nothing was ever replicated");
    assert!(
        uploads_cut > 0,
        "no kill hit an upload in flight; the test proved nothing"
    );
}
