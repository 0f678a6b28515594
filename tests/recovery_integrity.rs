//! What the real `epochwal run` and `epochwal verify` do with a log whose
//! bytes or reads go wrong in ways that must never cost a run its progress:
//! a damaged segment header (FORMAT.md §5.2), errors that are not damage,
//! segments of two logs, a durable record that vanished, file modes, and
//! pages larger than 4 KiB.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use epochwal::wal::format::{self, PAGE};
use epochwal::wal::LogReader;

const LONG: Duration = Duration::from_secs(120);

/// A synthetic run of `epochs` epochs, a checkpoint per epoch, with the
/// given extra `[checkpoint]` lines.
fn config(dir: &Path, data: &Path, epochs: u64, checkpoint: &str) -> PathBuf {
    write_config(
        dir,
        &format!("c{epochs}.toml"),
        &synthetic_config(data, epochs, &format!("every_epochs = 1\n{checkpoint}")),
    )
}

fn run(cfg: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let (status, lines) = Daemon::spawn(cfg, args, envs).wait(LONG);
    (status.code(), lines)
}

fn run_ok(cfg: &Path) -> Vec<String> {
    let (code, lines) = run(cfg, &[], &[]);
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    lines
}

fn verify_json(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(binary())
        .arg("verify")
        .arg("--json")
        .arg(dir)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// The log ids of every record header in the directory.
fn log_ids(dir: &Path) -> Vec<u128> {
    let mut ids: Vec<u128> = LogReader::open(dir)
        .unwrap()
        .scan()
        .unwrap()
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.log_id))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

/// Xors one byte of a file.
fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
}

fn joined(lines: &[String]) -> String {
    lines.join("\n")
}

/// The line saying what recovery resumed from.
fn recovered_seq(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .find(|l| l.contains("recovered") && l.contains(" seq="))
        .and_then(|l| field(l, "seq"))
}

// ------------------------------------ item 1: a damaged segment header

/// `created_unix_ns` of the newest segment flipped (the header's checksum
/// fails): its four records are still walked, recovery resumes from the
/// newest of them and no sequence number is given twice.
#[test]
fn a_damaged_segment_header_hides_none_of_its_records_auto_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 12, ""));
    let names = segment_names(&data);
    assert_eq!(names.len(), 3, "{names:?}");
    let ids = log_ids(&data);
    flip_byte(&data.join(&names[2]), 48);

    let (code, v) = verify_json(&data);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["recovery"]["sequence"], 12, "{v}");
    assert_eq!(v["records_good"], 12, "{v}");

    let lines = run_ok(&config(tmp.path(), &data, 14, ""));
    let all = joined(&lines);
    assert_eq!(recovered_seq(&lines), Some(12), "{all}");
    assert!(all.contains("segment header"), "{all}");
    assert_eq!(durable_seqs(&lines), vec![13, 14], "{all}");
    assert_eq!(log_ids(&data), ids, "a new log id was minted");
}

/// The only segment of a log with its header damaged: before, the daemon
/// started a fresh run under a new log id beside the intact records.
#[test]
fn a_damaged_header_of_the_only_segment_is_no_fresh_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fixed = "segment_bytes = 16777216";
    run_ok(&config(tmp.path(), &data, 5, fixed));
    let names = segment_names(&data);
    assert_eq!(names.len(), 1, "{names:?}");
    let ids = log_ids(&data);
    flip_byte(&data.join(&names[0]), 50);

    let lines = run_ok(&config(tmp.path(), &data, 7, fixed));
    let all = joined(&lines);
    assert!(!all.contains("fresh run"), "{all}");
    assert_eq!(recovered_seq(&lines), Some(5), "{all}");
    assert_eq!(durable_seqs(&lines), vec![6, 7], "{all}");
    assert_eq!(log_ids(&data), ids, "a new log id was minted");
    // Retention at open and after each append keeps the damaged segment's
    // records counted: nothing of the run is lost.
    let (_, v) = verify_json(&data);
    assert_eq!(v["recovery"]["sequence"], 7, "{v}");
}

/// Also the zeroed header page of a segment (never written by a crash: a
/// segment is renamed into place only after its header is durable).
#[test]
fn a_zeroed_segment_header_page_hides_none_of_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fixed = "segment_bytes = 16777216";
    run_ok(&config(tmp.path(), &data, 3, fixed));
    let seg = data.join(format::segment_file_name(1));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0u8; PAGE as usize], 0).unwrap();
    }
    let lines = run_ok(&config(tmp.path(), &data, 4, fixed));
    let all = joined(&lines);
    assert_eq!(recovered_seq(&lines), Some(3), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4], "{all}");
}

// ------------------------- item 6: errors that are not damage stop the start

/// The segment's files as bytes (LOCK and COMMIT left out).
fn segment_bytes_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    segment_names(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

/// EMFILE or EACCES opening the segment to read the newest record's payload,
/// ENOMEM getting memory for it: none says anything about the bytes, so the
/// start stops naming the file and the cause (before, recovery passed over
/// the record as damaged and resumed from the one before it).
#[test]
fn errors_that_are_not_damage_stop_the_start() {
    let seg = format::segment_file_name(1);
    for (what, spec, cause) in [
        (
            "EMFILE opening the record",
            format!("open,{seg},EMFILE,skip=2"),
            "Too many open files",
        ),
        (
            "EACCES opening the record",
            format!("open,{seg},EACCES,skip=2"),
            "Permission denied",
        ),
        (
            "ENOMEM mapping the record",
            format!("mmap,anonymous,ENOMEM,range=200000-200001;mmap,{seg},ENOMEM"),
            "Cannot allocate memory",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let fixed = "segment_bytes = 16777216";
        run_ok(&config(tmp.path(), &data, 3, fixed));
        let before = segment_bytes_of(&data);
        let env = common::faults::env(&spec);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, lines) = run(&config(tmp.path(), &data, 5, fixed), &[], &env);
        let all = joined(&lines);
        assert!(
            !common::faults::injected(&all).is_empty(),
            "{what}: no fault injected: {all}"
        );
        assert_eq!(code, Some(1), "{what}: {all}");
        assert!(all.contains(cause), "{what}: cause not named: {all}");
        assert!(all.contains(&seg), "{what}: file not named: {all}");
        for never in ["recovered", "fresh run", "checkpoint durable"] {
            assert!(!all.contains(never), "{what}: {never:?}: {all}");
        }
        assert_eq!(segment_bytes_of(&data), before, "{what}: the log changed");
        // Without the fault, the run resumes from the newest record.
        let lines = run_ok(&config(tmp.path(), &data, 5, fixed));
        assert_eq!(recovered_seq(&lines), Some(3), "{what}");
        assert_eq!(durable_seqs(&lines), vec![4, 5], "{what}");
    }
}

// ------------------------------------ item 12: private files whatever the umask

/// Under umask 000 (and 077 for the files an older run left 0644): the log
/// directory is 0700, every file in it 0600.
#[test]
fn the_log_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested").join("data");
    let cfg = config(tmp.path(), &data, 2, "");
    let mut cmd = Command::new(binary());
    cmd.arg("run").arg("--config").arg(&cfg);
    // SAFETY: umask is async-signal-safe and touches only the child's mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let (status, lines) = Daemon::spawn_command(cmd).wait(LONG);
    assert!(status.success(), "{}", joined(&lines));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let mut files = 0;
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    // segment(s), LOCK, COMMIT, RUNNING.toml
    assert!(files >= 4, "{files}");
}

// ------------------------------------------ item 10: segments of two logs

/// A newer segment of another log (one valid record) planted beside a log:
/// before, it became the log and the real segments were rejected as
/// another log's. Now the start stops naming both ids, and
/// `--keep-log-id` continues the named one, leaving the other alone.
#[test]
fn segments_of_two_logs_stop_the_start_until_the_operator_names_one() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = "segment_bytes = 16777216";
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 3, fixed));
    let ours = log_ids(&data);
    assert_eq!(ours.len(), 1);
    // Another log whose second segment holds one record.
    let other_dir = tmp.path().join("other");
    let other = tmp.path().join("o");
    std::fs::create_dir(&other).unwrap();
    run_ok(&config(&other, &other_dir, 1, fixed));
    run_ok(&config(&other, &other_dir, 2, fixed));
    let planted = other_dir.join(format::segment_file_name(2));
    let theirs = log_ids(&other_dir);
    assert_eq!(theirs.len(), 1);
    assert_ne!(theirs, ours);
    std::fs::copy(&planted, data.join(format::segment_file_name(2))).unwrap();
    let before = segment_bytes_of(&data);

    let (code, lines) = run(&config(tmp.path(), &data, 5, fixed), &[], &[]);
    let all = joined(&lines);
    assert_eq!(code, Some(1), "{all}");
    for id in [ours[0], theirs[0]] {
        assert!(all.contains(&format!("{id:032x}")), "id not named: {all}");
    }
    assert!(all.contains("--keep-log-id"), "{all}");
    for never in ["recovered", "fresh run", "checkpoint durable"] {
        assert!(!all.contains(never), "{never:?}: {all}");
    }
    assert_eq!(segment_bytes_of(&data), before, "the log changed");

    let keep = format!("{:032x}", ours[0]);
    let (code, lines) = run(
        &config(tmp.path(), &data, 5, fixed),
        &["--keep-log-id", &keep],
        &[],
    );
    let all = joined(&lines);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(recovered_seq(&lines), Some(3), "{all}");
    assert_eq!(durable_seqs(&lines), vec![4, 5], "{all}");
    // The other log's segment is left exactly as it was.
    assert_eq!(
        std::fs::read(data.join(format::segment_file_name(2))).unwrap(),
        std::fs::read(&planted).unwrap()
    );
    // Naming an id the directory does not hold is an error naming it.
    let (code, lines) = run(
        &config(tmp.path(), &data, 6, fixed),
        &["--keep-log-id", "0123456789abcdef0123456789abcdef"],
        &[],
    );
    let all = joined(&lines);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("0123456789abcdef0123456789abcdef"), "{all}");
}

// ------------------------------- item 11: a durable record that vanished

fn zero_newest_header_page(data: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let scan = LogReader::open(data).unwrap().scan().unwrap();
    let seg = scan.segments.last().unwrap();
    let newest = *seg.records.last().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .unwrap();
    f.write_all_at(&[0u8; PAGE as usize], newest.offset)
        .unwrap();
    newest.sequence
}

/// The newest record's header page zeroed after it was durable: the bytes
/// look like a crash between the two barriers, but `COMMIT` says the record
/// was durable, so `verify` exits 1 and the daemon warns.
#[test]
fn a_durable_record_that_vanished_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = "segment_bytes = 16777216";
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 3, fixed));
    assert_eq!(zero_newest_header_page(&data), 3);

    let (code, v) = verify_json(&data);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["recovery"]["sequence"], 2, "{v}");
    assert!(
        v["damage"].to_string().contains("COMMIT says record 3"),
        "{v}"
    );

    let lines = run_ok(&config(tmp.path(), &data, 4, fixed));
    let all = joined(&lines);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("COMMIT says record 3")),
        "{all}"
    );
    assert_eq!(recovered_seq(&lines), Some(2), "{all}");
    // Epochs 3 and 4 again, under numbers never given before: 3 was.
    assert_eq!(durable_seqs(&lines), vec![4, 5], "{all}");
}

/// The same bytes after a crash between the barriers: `COMMIT` still names
/// the record before, which is the newest intact one; nothing is reported.
#[test]
fn a_crash_before_the_header_barrier_is_not_reported_as_a_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = "segment_bytes = 16777216";
    let data = tmp.path().join("data");
    run_ok(&config(tmp.path(), &data, 3, fixed));
    let scan = LogReader::open(&data).unwrap().scan().unwrap();
    let second = scan.segments.last().unwrap().records[1];
    zero_newest_header_page(&data);
    std::fs::write(
        data.join("COMMIT"),
        format!(
            "sequence=2 epoch={} step={} segment={} offset={}\n",
            second.epoch,
            second.step,
            format::segment_file_name(1),
            second.offset
        ),
    )
    .unwrap();
    let (code, v) = verify_json(&data);
    assert_eq!(code, Some(0), "{v}");
    let lines = run_ok(&config(tmp.path(), &data, 4, fixed));
    assert!(
        !joined(&lines).contains("COMMIT says"),
        "{}",
        joined(&lines)
    );
}

// ------------------------------------------- item 13: pages above 4 KiB

/// On a 64 KiB-page kernel (simulated with the test-only variable) the
/// writer refuses to start with an error naming the page size, before it
/// creates or changes anything; readers still work.
#[test]
fn a_kernel_with_64_kib_pages_is_refused_by_the_writer_not_the_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fresh = tmp.path().join("fresh");
    run_ok(&config(tmp.path(), &data, 2, ""));
    let before = segment_bytes_of(&data);
    let big = [("EPOCHWAL_TEST_PAGE_SIZE", "65536")];
    for dir in [&data, &fresh] {
        let (code, lines) = run(&config(tmp.path(), dir, 3, ""), &[], &big);
        let all = joined(&lines);
        assert_eq!(code, Some(1), "{all}");
        assert!(all.contains("page size is 65536 bytes"), "{all}");
        assert!(!all.contains("checkpoint durable"), "{all}");
    }
    assert!(!fresh.exists(), "a log directory was created");
    assert_eq!(segment_bytes_of(&data), before);
    let out = Command::new(binary())
        .args(["verify", "--json"])
        .arg(&data)
        .env("EPOCHWAL_TEST_PAGE_SIZE", "65536")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // A value that is not a page size names the variable.
    let (code, lines) = run(
        &config(tmp.path(), &data, 3, ""),
        &[],
        &[("EPOCHWAL_TEST_PAGE_SIZE", "lots")],
    );
    assert_eq!(code, Some(1));
    assert!(joined(&lines).contains("EPOCHWAL_TEST_PAGE_SIZE=lots"));
}
