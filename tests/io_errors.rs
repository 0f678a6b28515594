//! I/O errors, a full quota, a hostile directory and risky file systems, as
//! the real binary meets them: faults are injected into `epochwal run` and
//! `epochwal verify` with the LD_PRELOAD shim of tests/common/fault_shim.c.
//! The rule of them all: an I/O error is never taken for "no checkpoint" or
//! for damage, and never costs a record that is on the disk.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use common::faults;
use epochwal::wal::format::{self, PAGE};
use epochwal::wal::{Log, LogOptions, LogReader, RecordHeader};

const LONG: Duration = Duration::from_secs(120);

/// A synthetic run of `epochs` epochs with a checkpoint per epoch.
fn config(dir: &Path, data: &Path, epochs: u64) -> std::path::PathBuf {
    write_config(
        dir,
        &format!("c{epochs}.toml"),
        &synthetic_config(data, epochs, "every_epochs = 1"),
    )
}

fn spawn_with_faults(cfg: &Path, spec: &str) -> Daemon {
    let env = faults::env(spec);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::spawn(cfg, &[], &env)
}

fn run_ok(cfg: &Path) -> Vec<String> {
    let (status, lines) = Daemon::spawn(cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    lines
}

/// The files of the log, without LOCK and COMMIT (which any writer rewrites).
fn log_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name();
            n != "LOCK" && n != "COMMIT"
        })
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// (segment path, its record headers), in segment order.
fn layout(dir: &Path) -> Vec<(std::path::PathBuf, Vec<RecordHeader>)> {
    LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .into_iter()
        .map(|s| (s.path, s.records))
        .collect()
}

fn log_ids(dir: &Path) -> Vec<u128> {
    let mut ids: Vec<u128> = LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .iter()
        .filter_map(|s| s.header.map(|h| h.log_id))
        .collect();
    ids.dedup();
    ids
}

fn joined(lines: &[String]) -> String {
    lines.join("\n")
}

// ------------------------------------------------ finding 1: EIO at start-up

/// A read error at start-up is fatal: no fresh run, no new log id, nothing
/// written; the next start without the fault resumes the old log.
#[test]
fn a_read_error_at_start_up_stops_the_daemon_and_a_later_start_resumes_the_log() {
    // The segment header (offset 0) and the newest record's header page.
    for (what, rule) in [
        ("the first pread of the segment", "pread,.wal,EIO"),
        (
            "a bad sector in page 0",
            "pread,.wal,EIO,count=0,range=0-4096",
        ),
        (
            "a record header",
            "pread,.wal,EIO,count=0,range=12288-16384",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        run_ok(&config(tmp.path(), &data, 3));
        let before = log_files(&data);
        let ids = log_ids(&data);
        assert_eq!(ids.len(), 1);
        // The third record's header is at 12288 when records span 2 pages;
        // make the range rule meaningful whatever the record size.
        let rule = if rule.contains("12288") {
            let third = layout(&data)[0].1[2].offset;
            format!("pread,.wal,EIO,count=0,range={third}-{}", third + PAGE)
        } else {
            rule.to_string()
        };

        let (status, lines) = spawn_with_faults(&config(tmp.path(), &data, 6), &rule).wait(LONG);
        let all = joined(&lines);
        assert_eq!(status.code(), Some(1), "{what}: {all}");
        assert!(
            !faults::injected(&all).is_empty(),
            "{what}: no fault injected"
        );
        assert!(
            all.contains("EIO") && all.contains("Input/output error"),
            "{what}: errno not named: {all}"
        );
        assert!(
            all.contains(&format::segment_file_name(1)),
            "{what}: file not named: {all}"
        );
        assert!(all.contains("at offset"), "{what}: offset not named: {all}");
        for never in ["fresh run", "training started", "checkpoint durable"] {
            assert!(
                !all.contains(never),
                "{what}: {never:?} after a read error: {all}"
            );
        }
        assert_eq!(log_files(&data), before, "{what}: the log was changed");

        let lines = run_ok(&config(tmp.path(), &data, 6));
        let all = joined(&lines);
        assert!(
            all.contains("recovered") && all.contains("seq=3"),
            "{what}: {all}"
        );
        assert_eq!(durable_seqs(&lines), vec![4, 5, 6], "{what}");
        assert_eq!(log_ids(&data), ids, "{what}: a new log id was minted");
    }
}

/// `verify` lists read errors apart from damage and exits 3.
#[test]
fn verify_reports_read_errors_apart_from_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    {
        let (mut log, _) = Log::open(
            &dir,
            LogOptions {
                segment_bytes: 64 << 10,
                ..Default::default()
            },
        )
        .unwrap();
        for e in 1..=4 {
            log.append(&common::sample_state(20_000, e)).unwrap();
        }
    }
    let segs = layout(&dir);
    assert_eq!(segs.len(), 2);
    let seg2 = segs[1].0.file_name().unwrap().to_str().unwrap().to_string();
    let last = segs[1].1[1];
    let verify = |spec: &str| {
        let mut c = Command::new(binary());
        c.arg("verify").arg("--json").arg(&dir);
        faults::apply(&mut c, spec);
        let out = c.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // A payload page of the newest record cannot be read.
    let at = last.payload_offset() + 2 * PAGE;
    let (code, v, err) = verify(&format!(
        "pread,{seg2},EIO,count=0,range={at}-{}",
        at + PAGE
    ));
    assert!(!faults::injected(&err).is_empty());
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["damage"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["records_unreadable"], 1, "{v}");
    assert_eq!(v["records_good"], 3, "{v}");
    let io = v["io_errors"].as_array().unwrap();
    let text = io[0]["reason"].as_str().unwrap();
    assert!(
        text.contains("record 4 (epoch 4)") && text.contains("EIO"),
        "{text}"
    );
    assert_eq!(io[0]["offset"], last.offset);
    // Recovery passes over it to record 3.
    assert_eq!(v["recovery"]["sequence"], 3, "{v}");

    // Every read of the newest segment fails: an I/O error, not damage,
    // and recovery refuses to guess.
    let (code, v, _) = verify(&format!("pread,{seg2},EIO,count=0"));
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["damage"].as_array().unwrap().len(), 0, "{v}");
    let io: Vec<String> = v["io_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["file"], i["reason"]))
        .collect();
    assert!(
        io.iter().any(|i| i.contains(&seg2) && i.contains("EIO")),
        "{io:?}"
    );
    assert!(
        io.iter()
            .any(|i| i.contains("recovery would refuse to start")),
        "{io:?}"
    );
    assert!(v["recovery"].is_null());

    // Text output says so in its own lines.
    let mut c = Command::new(binary());
    c.arg("verify").arg(&dir);
    faults::apply(&mut c, &format!("pread,{seg2},EIO,count=0"));
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IO ERROR") && text.contains("IO ERRORS ("),
        "{text}"
    );
    assert!(!text.contains("DAMAGE "), "{text}");
}

// ------------------------------------------- finding 2: fsyncgate at restart

/// After a failed header fdatasync the run exits 1; a restart that cannot make
/// what it would resume from durable refuses to start instead of trusting
/// the page cache (and reporting "already complete"); a restart that can
/// make it durable resumes from it.
#[test]
fn a_restart_resumes_only_from_what_it_made_durable_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), &data, 2);
    // fdatasync #1, #2: record 1's payload and header; #4: record 2's header.
    let (status, lines) = spawn_with_faults(&cfg, "fdatasync,.wal,EIO,skip=3").wait(LONG);
    let all = joined(&lines);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("flushing to disk failed"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![1]);

    let (status, lines) = spawn_with_faults(&cfg, "fsync,.wal,EIO,count=0").wait(LONG);
    let all = joined(&lines);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(!faults::injected(&all).is_empty());
    assert!(
        all.contains("fsync before resuming failed") && all.contains(".wal"),
        "{all}"
    );
    for never in ["already complete", "recovered", "training started"] {
        assert!(!all.contains(never), "{never:?}: {all}");
    }

    // Without the fault the restart makes record 2 durable and, the target
    // reached, reports the run complete.
    let lines = run_ok(&cfg);
    let all = joined(&lines);
    assert!(all.contains("recovered") && all.contains("seq=2"), "{all}");
    assert!(all.contains("already complete"), "{all}");
}

/// The log directory itself is fsynced before READY; its failure is fatal.
#[test]
fn a_failed_directory_fsync_at_open_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 1));
    let spec = format!("fsyncdir,{},EIO,count=0", data.display());
    let (status, lines) = spawn_with_faults(&config(tmp.path(), &data, 2), &spec).wait(LONG);
    let all = joined(&lines);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        all.contains("fsync of the log directory before resuming failed"),
        "{all}"
    );
    assert!(!all.contains("training started"), "{all}");
}

// ------------------------------------- finding 4 (by pread): unreadable payload

/// A payload that cannot be read makes recovery resume from the record
/// before it, say so, and never give its sequence number again.
#[test]
fn an_unreadable_newest_payload_falls_back_to_the_previous_record() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 3));
    let third = layout(&data)[0].1[2];
    let at = third.payload_offset() + PAGE;
    let spec = format!("pread,.wal,EIO,count=0,range={at}-{}", at + PAGE);
    let (status, lines) = spawn_with_faults(&config(tmp.path(), &data, 4), &spec).wait(LONG);
    let all = joined(&lines);
    assert!(status.success(), "{all}");
    assert!(
        all.contains("cannot be read") && all.contains("record 3 (epoch 3)"),
        "{all}"
    );
    assert!(all.contains("recovered") && all.contains("seq=2"), "{all}");
    // Epochs 3 and 4 trained again from record 2, under new numbers.
    assert_eq!(durable_seqs(&lines), vec![4, 5]);
}

/// Records that recovery passed over because their payloads could not be
/// read are kept for the life of the writer, whatever the retention: with
/// `keep_records = 1` the run resumes from the older intact record, trains
/// on, and the segment holding the unreadable records is still there,
/// byte for byte, for a repaired disk to give back.
#[test]
fn retention_never_deletes_a_segment_holding_records_that_could_not_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 6));
    let segs: Vec<_> = layout(&data)
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .collect();
    assert!(segs.len() >= 2, "{segs:?}");
    let (pinned, unreadable) = segs.last().unwrap().clone();
    let older = segs[segs.len() - 2].1.last().unwrap().sequence;
    let name = pinned.file_name().unwrap().to_str().unwrap().to_string();
    let bytes = std::fs::read(&pinned).unwrap();
    // EIO on a payload page of every record in the newest segment; their
    // header pages stay readable.
    let spec = unreadable
        .iter()
        .map(|r| {
            let at = r.payload_offset();
            format!("pread,{name},EIO,count=0,range={at}-{}", at + PAGE)
        })
        .collect::<Vec<_>>()
        .join(";");
    let cfg = write_config(
        tmp.path(),
        "keep1.toml",
        &synthetic_config(&data, 11, "every_epochs = 1\nkeep_records = 1"),
    );
    let (status, lines) = spawn_with_faults(&cfg, &spec).wait(LONG);
    let all = joined(&lines);
    assert!(status.success(), "{all}");
    assert!(!faults::injected(&all).is_empty(), "no fault injected");
    assert!(
        all.contains("recovered") && all.contains(&format!("seq={older}")),
        "{all}"
    );
    let first_new = unreadable.last().unwrap().sequence + 1;
    let trained = durable_seqs(&lines);
    assert_eq!(trained.len() as u64, 11 - older, "{all}");
    assert_eq!(trained[0], first_new, "{all}");
    // Retention ran: older segments, intact ones too, are gone.
    assert!(!segs[0].0.exists(), "retention did not run: {all}");
    // The segment of the unreadable records is kept, unchanged, and a WARN
    // at start names it and the records it holds.
    assert!(
        pinned.exists(),
        "the segment holding unreadable records {:?} was deleted: {all}",
        unreadable.iter().map(|r| r.sequence).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read(&pinned).unwrap(), bytes, "{name} changed");
    let warn = lines
        .iter()
        .find(|l| l.contains("WARN") && l.contains("retention keeps") && l.contains(&name))
        .unwrap_or_else(|| panic!("no WARN naming {name}: {all}"));
    for r in &unreadable {
        assert!(warn.contains(&r.sequence.to_string()), "{warn}");
    }
    // Later starts without the fault: the newest records are intact ones
    // written since, and retention treats the old segment like any other.
    let lines = run_ok(&cfg);
    assert!(joined(&lines).contains("already complete"));
    let lines = run_ok(&write_config(
        tmp.path(),
        "keep1b.toml",
        &synthetic_config(&data, 12, "every_epochs = 1\nkeep_records = 1"),
    ));
    assert_eq!(durable_seqs(&lines).len(), 1, "{}", joined(&lines));
    assert!(!pinned.exists(), "{name} kept after the disk was readable");
}

// ------------------------------------------------ finding 5: hostile names

/// A junk file whose number leaves no room is an error at start naming the
/// file to move, not a failure at the first checkpoint.
#[test]
fn a_segment_number_too_high_to_continue_from_is_an_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 1));
    let junk = data.join("18446744073709551614.wal");
    std::fs::write(&junk, b"junk").unwrap();
    let (status, lines) = Daemon::spawn(&config(tmp.path(), &data, 3), &[], &[]).wait(LONG);
    let all = joined(&lines);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        all.contains("18446744073709551614.wal") && all.contains("move"),
        "{all}"
    );
    assert!(!all.contains("training started"), "{all}");
    std::fs::remove_file(&junk).unwrap();
    let lines = run_ok(&config(tmp.path(), &data, 3));
    assert_eq!(durable_seqs(&lines), vec![2, 3]);
}

// --------------------------------------------------- finding 8: disk quota

/// EDQUOT from fallocate is a full disk: reported, training goes on, the
/// next trigger retries. (The first segment is made before training starts,
/// where no space at all is fatal by design; the quota runs out later.)
#[test]
fn a_disk_quota_error_is_handled_like_a_full_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Every record needs a segment of its own, so every checkpoint rotates:
    // fallocate #2 is the rotation ahead after record 1, #3 the rotation of
    // the epoch-2 checkpoint; both hit the quota, #4 succeeds.
    let cfg = write_config(
        tmp.path(),
        "quota.toml",
        &synthetic_config(&data, 3, "every_epochs = 1\nsegment_bytes = 65536"),
    );
    let (status, lines) =
        spawn_with_faults(&cfg, "fallocate,.wal.tmp,EDQUOT,skip=1,count=2").wait(LONG);
    let all = joined(&lines);
    assert!(status.success(), "{all}");
    assert_eq!(faults::injected(&all).len(), 2, "{all}");
    assert!(
        all.contains("no space left") && all.contains("disk quota exceeded"),
        "{all}"
    );
    assert!(all.contains("training goes on"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![1, 2]);
}

/// A copy-on-write or network file system is named at open.
#[test]
fn copy_on_write_and_network_file_systems_are_warned_about_at_open() {
    for (magic, name) in [
        ("0x9123683e", "btrfs"),
        ("0x2fc12fc1", "ZFS"),
        ("0x6969", "NFS"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let spec = format!("statfs,*,{magic},count=0");
        let (status, lines) = spawn_with_faults(&config(tmp.path(), &data, 1), &spec).wait(LONG);
        let all = joined(&lines);
        assert!(status.success(), "{all}");
        assert!(
            all.contains(&format!("the log directory is on {name}")),
            "{name}: {all}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let all = joined(&run_ok(&config(tmp.path(), &tmp.path().join("d"), 1)));
    assert!(!all.contains("the log directory is on"), "{all}");
}
