//! `epochwal run` protects the operator: retention keeps what it says,
//! problems are found at start, a diverging run stops cleanly, foreign
//! directories and oversized models are refused. The real binary, real
//! files, real signals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::*;
use epochwal::wal::{LogReader, AUTO_RECORDS_PER_SEGMENT};

const LONG: Duration = Duration::from_secs(180);

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name),
    )
    .unwrap()
}

/// (sequence, epoch) of every record header.
type Records = Vec<(u64, u64)>;
/// Segment files and their sizes.
type Segments = Vec<(PathBuf, u64)>;

/// The records of the log and its segment files.
fn inventory(dir: &Path) -> (Records, Segments) {
    let scan = LogReader::open(dir).unwrap().scan().unwrap();
    let records = scan
        .segments
        .iter()
        .flat_map(|s| s.records.iter().map(|r| (r.sequence, r.epoch)))
        .collect();
    let segments = scan
        .segments
        .iter()
        .map(|s| (s.path.clone(), s.file_len))
        .collect();
    (records, segments)
}

#[test]
fn retention_with_the_default_config_keeps_ten_records_plus_at_most_one_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let body = shipped("epochwal.toml");
    assert!(body.contains("epochs = 500") && body.contains("keep_records = 10"));
    // One checkpoint per epoch and keep_records alone: the rate limit and
    // keep_best of the shipped file are tested in daemon_progress.rs.
    assert!(body.contains("min_seconds_between = 0.1") && body.contains("keep_best = 3"));
    let body = body
        .replace("min_seconds_between = 0.1", "min_seconds_between = 0")
        .replace("keep_best = 3", "keep_best = 0");
    let cfg = write_config(tmp.path(), "epochwal.toml", &body);
    let (status, lines) =
        Daemon::spawn(&cfg, &["--data-dir", data.to_str().unwrap()], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    assert_eq!(durable_seqs(&lines).last(), Some(&500));
    let (records, segments) = inventory(&data);
    let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
    println!(
        "{} records left ({:?}) in {} segments of {:?} bytes",
        records.len(),
        seqs,
        segments.len(),
        segments.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    assert!(
        records.len() as u64 >= 10 && records.len() as u64 <= 10 + AUTO_RECORDS_PER_SEGMENT,
        "{} records remain: {seqs:?}",
        records.len()
    );
    // The newest ten are all there, in order.
    assert_eq!(
        &seqs[seqs.len() - 10..],
        &(491..=500).collect::<Vec<_>>()[..]
    );
    // Segments are sized to the records, not 64 MiB.
    for (path, len) in &segments {
        assert!(*len < 1 << 20, "{} is {len} bytes", path.display());
    }
}

#[test]
fn the_tutorial_model_does_not_preallocate_64_mib() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("seed");
    let cfg = write_config(tmp.path(), "seed.toml", &shipped("seed.toml"));
    let (status, lines) = Daemon::spawn(
        &cfg,
        &["--data-dir", data.to_str().unwrap(), "--epochs", "30"],
        &[],
    )
    .wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let (records, segments) = inventory(&data);
    let total: u64 = segments.iter().map(|s| s.1).sum();
    println!(
        "{} records in {} segments, {total} bytes on disk",
        records.len(),
        segments.len()
    );
    assert!(total <= 128 << 10, "{total} bytes of segments");
    assert!(records.len() as u64 <= 10 + AUTO_RECORDS_PER_SEGMENT);
}

/// A small synthetic run (a few KiB of state, 8 steps per epoch).
fn small_config(data: &Path, epochs: u64, extra_top: &str, optimizer: &str) -> String {
    format!(
        r#"data_dir = "{}"
epochs = {epochs}
seed = 3
batch_size = 32
{extra_top}
[dataset]
kind = "synthetic"
n = 256
input_dim = 8
output_dim = 2
[model]
hidden = [16]
[optimizer]
{optimizer}
[checkpoint]
every_epochs = 1
keep_records = 0
"#,
        data.display()
    )
}

fn all_finite(state: &epochwal::state::TrainState) -> bool {
    state
        .model
        .tensors
        .iter()
        .all(|t| t.data.iter().all(|x| x.is_finite()))
        && state
            .optimizer
            .params
            .iter()
            .all(|p| p.exp_avg.iter().chain(&p.exp_avg_sq).all(|x| x.is_finite()))
}

#[test]
fn a_diverging_run_stops_with_exit_3_and_keeps_the_last_good_record_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let good = write_config(
        tmp.path(),
        "good.toml",
        &small_config(&data, 3, "", "lr = 0.001"),
    );
    let (status, lines) = Daemon::spawn(&good, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let (seq, before) = newest_state(&data).unwrap();
    assert_eq!((seq, before.epoch), (3, 3));

    // lr = 1e300 overflows f32: the first step makes the weights infinite.
    // epochs = 0 would otherwise train (and warn) forever.
    let bad = write_config(
        tmp.path(),
        "bad.toml",
        &small_config(&data, 0, "", "lr = 1e300"),
    );
    let (status, lines) = Daemon::spawn(&bad, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(
        status.code(),
        Some(epochwal::daemon::EXIT_DIVERGED),
        "{all}"
    );
    let line = lines
        .iter()
        .find(|l| l.contains("training diverged"))
        .unwrap_or_else(|| panic!("{all}"));
    // Recovered at global step 24 (3 epochs of 8): the next step diverges.
    assert!(
        line.contains("global step 25") && line.contains("epoch 3"),
        "{line}"
    );
    assert!(
        line.contains("layers.0.weight"),
        "names the first non-finite tensor: {line}"
    );
    assert!(line.contains("sequence 3"), "{line}");
    assert!(
        durable_seqs(&lines).is_empty(),
        "no record of the bad state: {all}"
    );
    let warnings = lines.iter().filter(|l| l.contains("not finite")).count();
    assert!(warnings <= 1, "{all}");
    let (seq, after) = newest_state(&data).unwrap();
    assert_eq!(seq, 3);
    assert!(all_finite(&after));
    assert_same_training_state(&before, &after);
    let v = std::process::Command::new(binary())
        .args(["verify", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn on_nonfinite_skip_drops_bad_steps_and_continue_keeps_them_with_rate_limited_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    // The initial state, to compare against: lr = 0 keeps the weights.
    let reference = tmp.path().join("reference");
    let cfg = write_config(
        tmp.path(),
        "r.toml",
        &small_config(&reference, 1, "", "lr = 0.0"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let (_, initial) = newest_state(&reference).unwrap();

    let skip = tmp.path().join("skip");
    let cfg = write_config(
        tmp.path(),
        "s.toml",
        &small_config(&skip, 3, "on_nonfinite = \"skip\"", "lr = 1e300"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert_eq!(durable_seqs(&lines), vec![1, 2, 3]);
    let warnings = lines
        .iter()
        .filter(|l| l.contains("non-finite step dropped"))
        .count();
    // 24 dropped steps in well under 10 s: one warning, not 24.
    assert_eq!(warnings, 1, "{all}");
    let (_, state) = newest_state(&skip).unwrap();
    assert_eq!((state.epoch, state.global_step), (3, 24));
    assert!(all_finite(&state));
    for (a, b) in state.model.tensors.iter().zip(&initial.model.tensors) {
        assert_eq!(
            a.data, b.data,
            "every step was dropped: {} unchanged",
            a.name
        );
    }
    assert!(state.optimizer.params.iter().all(|p| p.step == 0));

    let cont = tmp.path().join("continue");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &small_config(&cont, 3, "on_nonfinite = \"continue\"", "lr = 1e300"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    assert_eq!(durable_seqs(&lines), vec![1, 2, 3]);
    let warnings = lines.iter().filter(|l| l.contains("not finite")).count();
    assert!(warnings <= 1, "{all}");
    let (_, state) = newest_state(&cont).unwrap();
    assert!(!all_finite(&state), "continue writes the non-finite state");
}

#[test]
fn init_from_refuses_non_finite_weights_and_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(tmp.path(), "c.toml", &small_config(&data, 1, "", ""));
    // Weights of the right names and shapes, one of them NaN.
    let shapes: [(&str, Vec<usize>); 4] = [
        ("layers.0.weight", vec![16, 8]),
        ("layers.0.bias", vec![16]),
        ("layers.1.weight", vec![2, 16]),
        ("layers.1.bias", vec![2]),
    ];
    let bufs: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, s)| {
            let n: usize = s.iter().product();
            (0..n)
                .flat_map(|i| {
                    let v = if *name == "layers.1.weight" && i == 5 {
                        f32::NAN
                    } else {
                        0.1
                    };
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&bufs)
        .map(|((name, s), b)| {
            (
                *name,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let weights = tmp.path().join("w.safetensors");
    safetensors::serialize_to_file(views, None, &weights).unwrap();
    let (status, lines) =
        Daemon::spawn(&cfg, &["--init-from", weights.to_str().unwrap()], &[]).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        all.contains("layers.1.weight") && all.contains("index 5") && all.contains("finite"),
        "{all}"
    );
    assert!(
        !data.exists(),
        "a failed start leaves no directory behind: {all}"
    );
}

#[test]
fn the_unit_does_not_restart_a_diverged_or_refused_run() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/epochwal.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus= in the unit");
    let codes: Vec<i32> = line["RestartPreventExitStatus=".len()..]
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(codes.contains(&epochwal::daemon::EXIT_DIVERGED), "{line}");
    assert!(codes.contains(&epochwal::daemon::EXIT_REFUSED), "{line}");
}

#[test]
fn a_model_too_large_for_memory_is_refused_at_start_naming_widths_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 4·10¹⁰ parameters: 480 GB of state.
    let body = small_config(&data, 1, "", "").replace("hidden = [16]", "hidden = [200000, 200000]");
    let cfg = write_config(tmp.path(), "big.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(
        status.code(),
        Some(epochwal::daemon::EXIT_REFUSED),
        "no SIGABRT: {all}"
    );
    assert!(all.contains("model.hidden"), "{all}");
    assert!(all.contains("8-200000-200000-2"), "{all}");
    assert!(all.contains("available"), "{all}");
    assert!(!data.exists(), "{all}");

    // Under an address-space limit of 1 GiB, a model of ~3 GiB is refused
    // naming that limit.
    let body = small_config(&data, 1, "", "").replace("hidden = [16]", "hidden = [16384, 16384]");
    let cfg = write_config(tmp.path(), "mid.toml", &body);
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("run").arg("--config").arg(&cfg);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, lines) = Daemon::spawn_command(cmd).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(epochwal::daemon::EXIT_REFUSED), "{all}");
    assert!(
        all.contains("RLIMIT_AS") && all.contains("8-16384-16384-2"),
        "{all}"
    );
}

/// A child memory cgroup (v2 or v1) with `limit` bytes, removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    procs: std::ffi::CString,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Option<MemoryCgroup> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let name = format!("epochwal-test-{}", std::process::id());
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = rel.trim_start_matches('/');
            let (dir, file) = if controllers.is_empty() {
                (
                    Path::new("/sys/fs/cgroup").join(rel).join(&name),
                    "memory.max",
                )
            } else if controllers.split(',').any(|c| c == "memory") {
                (
                    Path::new("/sys/fs/cgroup/memory").join(rel).join(&name),
                    "memory.limit_in_bytes",
                )
            } else {
                continue;
            };
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join(file), limit.to_string()).is_ok() {
                let procs =
                    std::ffi::CString::new(dir.join("cgroup.procs").to_str().unwrap().as_bytes())
                        .unwrap();
                return Some(MemoryCgroup { dir, procs });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_model_larger_than_the_cgroup_memory_limit_is_refused_naming_it() {
    let Some(cg) = MemoryCgroup::new(512 << 20) else {
        println!("skipped: cannot create a memory cgroup (needs root and a writable cgroup fs)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 6.7·10⁷ parameters: about 1 GiB with training, over the 512 MiB limit.
    let body = small_config(&data, 1, "", "").replace("hidden = [16]", "hidden = [8192, 8192]");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("run").arg("--config").arg(&cfg);
    let procs = cg.procs.clone();
    // SAFETY: only async-signal-safe calls (open, write, close, getpid)
    // between fork and exec; the pid is formatted into a stack buffer.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let mut buf = [0u8; 24];
            let mut pid = libc::getpid() as u64;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (pid % 10) as u8;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
            libc::close(fd);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, lines) = Daemon::spawn_command(cmd).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(epochwal::daemon::EXIT_REFUSED), "{all}");
    assert!(
        all.contains("cgroup") && all.contains("8-8192-8192-2"),
        "{all}"
    );
    assert!(!data.exists(), "{all}");
}

#[test]
fn a_segment_larger_than_the_disk_fails_at_start_naming_segment_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 1 PiB: larger than any disk this runs on.
    let body = small_config(&data, 0, "", "").replace(
        "keep_records = 0",
        "keep_records = 0\nsegment_bytes = 1125899906842624",
    );
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("checkpoint.segment_bytes"), "{all}");
    assert!(all.contains(data.to_str().unwrap()), "{all}");
    assert!(
        !all.contains("training started"),
        "found before training: {all}"
    );
    assert!(!data.exists(), "{all}");
}

#[test]
fn an_unwritable_data_directory_fails_at_start() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: chattr +i needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // A LOCK file from an earlier run is writable; the directory is not.
    std::fs::write(data.join("LOCK"), b"").unwrap();
    let ok = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("skipped: this file system does not support chattr +i");
        return;
    }
    let cfg = write_config(tmp.path(), "c.toml", &small_config(&data, 0, "", ""));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&data)
        .status();
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains(data.to_str().unwrap()), "{all}");
    assert!(
        !all.contains("training started"),
        "found before training: {all}"
    );
}

#[test]
fn a_disk_smaller_than_what_retention_keeps_is_warned_about_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_mount) = common::Mount::tmpfs(&mnt, "4m") else {
        println!("skipped: cannot mount a tmpfs (needs root; CI runs as root)");
        return;
    };
    let data = mnt.join("data");
    // ~260 KiB records; keeping 100 of them needs ~27 MiB, the disk has 4.
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &synthetic_config(&data, 1, "every_epochs = 1\nkeep_records = 100"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    let warning = lines
        .iter()
        .find(|l| l.contains("less free space than retention keeps"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(warning.contains(data.to_str().unwrap()), "{warning}");
    // Keeping 2 fits: no warning.
    let data2 = mnt.join("data2");
    let cfg = write_config(
        tmp.path(),
        "c2.toml",
        &synthetic_config(&data2, 1, "every_epochs = 1\nkeep_records = 2"),
    );
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success());
    assert!(
        !lines.iter().any(|l| l.contains("less free space")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn a_full_disk_with_oversized_segments_hints_at_segment_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_mount) = common::Mount::tmpfs(&mnt, "3m") else {
        println!("skipped: cannot mount a tmpfs (needs root; CI runs as root)");
        return;
    };
    let data = mnt.join("data");
    // 8 KiB records in 2 MiB segments: the first fits the 3 MiB disk, the
    // second cannot be created, and the segment size is what to lower.
    let body = small_config(&data, 0, "", "").replace(
        "every_epochs = 1\nkeep_records = 0",
        "every_epochs = 0\nevery_steps = 1\nsegment_bytes = 2097152\nkeep_records = 1",
    );
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let d = Daemon::spawn(&cfg, &[], &[]);
    let line = d
        .wait_for("checkpoint failed; training goes on", LONG)
        .unwrap_or_else(|| panic!("{}", d.lines().join("\n")));
    assert!(line.contains("lower checkpoint.segment_bytes"), "{line}");
    d.signal(libc::SIGTERM);
    let _ = d.wait(LONG);
}

#[test]
fn settings_that_defeat_the_product_are_warned_about_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let body = small_config(&data, 1, "shutdown_grace_seconds = 0", "")
        .replace("every_epochs = 1", "every_epochs = 0");
    let cfg = write_config(tmp.path(), "c.toml", &body);
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    let warn = |key: &str| lines.iter().any(|l| l.contains("WARN") && l.contains(key));
    assert!(warn("shutdown_grace_seconds = 0"), "{all}");
    assert!(
        warn("every_epochs, every_steps and every_seconds are all 0"),
        "{all}"
    );
    // The defaults draw no warning.
    let quiet = tmp.path().join("quiet");
    let cfg = write_config(tmp.path(), "q.toml", &small_config(&quiet, 1, "", ""));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    assert!(status.success());
    assert!(
        !lines.iter().any(|l| l.contains("WARN")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn paths_in_the_config_are_relative_to_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut csv = String::from("a,b,y\n");
    for i in 0..64 {
        let (a, b) = (i as f32 / 64.0, (i % 7) as f32);
        csv.push_str(&format!("{a},{b},{}\n", 2.0 * a - b));
    }
    std::fs::write(etc.join("train.csv"), csv).unwrap();
    let cfg = write_config(
        &etc,
        "epochwal.toml",
        "data_dir = \"log\"\nepochs = 2\n[dataset]\nkind = \"csv\"\npath = \"train.csv\"\ntargets = [\"y\"]\n",
    );
    let mut cmd = std::process::Command::new(binary());
    cmd.current_dir(&elsewhere)
        .env("RUST_LOG", "info")
        .arg("run")
        .arg("--config")
        .arg("../etc/epochwal.toml");
    let _ = cfg;
    let (status, lines) = Daemon::spawn_command(cmd).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    let (_, state) = newest_state(&etc.join("log")).expect("the log is next to the config");
    assert_eq!(state.epoch, 2);
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing in the working directory"
    );
    // The shipped file says so.
    assert!(shipped("epochwal.toml").contains("relative to the\n# directory of this file"));
}

#[test]
fn run_refuses_a_directory_of_foreign_files_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("holiday.jpg"), b"not a log").unwrap();
    let cfg = write_config(tmp.path(), "c.toml", &small_config(&data, 1, "", ""));
    let (status, lines) = Daemon::spawn(&cfg, &[], &[]).wait(LONG);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(epochwal::daemon::EXIT_REFUSED), "{all}");
    assert!(
        all.contains("holiday.jpg") && all.contains("--allow-foreign-files"),
        "{all}"
    );
    let names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("holiday.jpg")],
        "untouched"
    );

    let (status, lines) = Daemon::spawn(&cfg, &["--allow-foreign-files"], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
    assert_eq!(
        std::fs::read(data.join("holiday.jpg")).unwrap(),
        b"not a log"
    );
    assert_eq!(newest_state(&data).unwrap().1.epoch, 1);
    // Once it holds a log, the directory is ours: no flag needed to resume.
    let (status, lines) = Daemon::spawn(&cfg, &["--epochs", "2"], &[]).wait(LONG);
    assert!(status.success(), "{}", lines.join("\n"));
}

#[test]
fn a_negative_epoch_count_is_explained() {
    let out = std::process::Command::new(binary())
        .args(["run", "--epochs", "-1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("-1") && err.contains("not a number of epochs"),
        "{err}"
    );
    assert!(!err.contains("unexpected argument"), "{err}");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &small_config(&file.join("data"), 1, "", ""),
    );
    for (args, os_error) in [
        (
            vec!["run", "--config", missing.to_str().unwrap()],
            "No such file or directory",
        ),
        (
            vec!["run", "--config", cfg.to_str().unwrap()],
            "Not a directory",
        ),
    ] {
        let out = std::process::Command::new(binary())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches(os_error).count(), 1, "{args:?}: {err}");
    }
}
