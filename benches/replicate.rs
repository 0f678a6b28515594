//! Replication benchmark against a real S3 server (s3s-fs on 127.0.0.1,
//! started by the bench). Every figure is a ratio of two things measured back
//! to back in the same run; absolute numbers are printed for reference.
//!
//! ```text
//! cargo bench --bench replicate
//! EPOCHWAL_BENCH_SIZES=16M,256M EPOCHWAL_BENCH_RUNS=5 cargo bench --bench replicate
//! EPOCHWAL_BENCH_SIZES= cargo bench --bench replicate   # overhead_per_epoch only
//! ```
//!
//! - `replicate_vs_raw_put`: throughput of the uploader (record read back and
//!   validated from the log's read-only mapping, multipart upload of its
//!   exact bytes, pointer update) over a plain object_store multipart upload
//!   of the same bytes from memory, same part size and parallelism, same
//!   server. Goal ≥ 0.9.
//! - `overhead_per_epoch`: training time per epoch (the trainer's own
//!   `train_time_ms`, which includes every checkpoint pause) of the real
//!   daemon with `[replicate]` over the same run without it; both checkpoint
//!   every epoch to the local log. Goal ≤ 1.03.
//!
//! `EPOCHWAL_BENCH_DIR` (default `target/bench-tmp`) holds the log and the
//! server's files; the server and the log share the disk, as a local S3
//! server would.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use epochwal::replicate::{PointerAtStart, Remote, Uploader, UploaderOptions};
use epochwal::wal::{Log, LogOptions};
use object_store::{ObjectStoreExt, PutPayload};

use common::s3::S3Server;

const MIB: u64 = 1 << 20;

fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], MIB),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().expect("size") * mul
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn stats(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "median={:.3} min={:.3} max={:.3} runs={}",
        median(v.to_vec()),
        min,
        max,
        v.len()
    )
}

/// Uploader vs raw multipart put, for one state size.
fn replicate_vs_raw_put(server: &S3Server, work: &Path, size: u64, runs: usize) -> String {
    let part = 16 * MIB;
    let parallel = 4;
    let dir = work.join(format!("log-{size}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut log, _) = Log::open(&dir, LogOptions::default()).unwrap();
    let mut records = Vec::new();
    for epoch in 0..=runs as u64 {
        let d = log
            .append(&common::sample_state(size as usize, epoch))
            .unwrap();
        records.push(d);
    }
    drop(log);
    let payload = records[0].header.payload_len;
    let object_bytes = 4096 + payload;
    let remote = Remote::open(&server.url(&format!("bench-{size}")), Some(true)).unwrap();
    // The raw side gets a client of its own: an HTTP client's pooled
    // connections belong to the runtime that opened them, and this
    // thread's runtime is idle while the uploader's thread works.
    let (store, prefix) = Remote::open(&server.url(&format!("bench-{size}")), Some(true))
        .unwrap()
        .store();
    let uploader = Uploader::start(
        remote,
        PointerAtStart::Read(None),
        UploaderOptions {
            part_bytes: part,
            parallel_parts: parallel,
            retry_max: Duration::from_secs(1),
            keep_records: 2,
            keep_every_epochs: 0,
            keep_best: 0,
        },
        Box::new(|_| {}),
        None,
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The raw side: the same number of bytes from memory, same part size.
    let raw: Vec<u8> = (0..object_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let raw = Bytes::from(raw);
    let raw_put = |n: usize| {
        runtime.block_on(async {
            let path = prefix.clone().join(format!("raw-{n}"));
            let mut up = store.put_multipart(&path).await.unwrap();
            let mut set = tokio::task::JoinSet::new();
            let mut start = 0usize;
            while start < raw.len() {
                let end = (start + part as usize).min(raw.len());
                set.spawn(up.put_part(PutPayload::from(raw.slice(start..end))));
                start = end;
                while set.len() >= parallel {
                    set.join_next().await.unwrap().unwrap().unwrap();
                }
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap();
            }
            up.complete().await.unwrap();
            let _ = store.delete(&path).await;
        })
    };
    let mut ratios = Vec::new();
    let mut up_mibs = Vec::new();
    let mut raw_mibs = Vec::new();
    for (i, d) in records.iter().enumerate() {
        let t = Instant::now();
        raw_put(i);
        let raw_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        uploader.offer(d.header, d.path.clone());
        assert!(
            uploader.wait_for(d.header.sequence, Instant::now() + Duration::from_secs(600)),
            "upload did not finish: {:?}",
            uploader.progress()
        );
        let up_s = t.elapsed().as_secs_f64();
        if i == 0 {
            continue; // warm-up
        }
        let mib = object_bytes as f64 / MIB as f64;
        up_mibs.push(mib / up_s);
        raw_mibs.push(mib / raw_s);
        ratios.push(raw_s / up_s);
    }
    uploader.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let m = median(ratios.clone());
    format!(
        "replicate_vs_raw_put {} {} goal>=0.90 status={} uploader_MiB_s={:.0} raw_put_MiB_s={:.0} part={}MiB parallel={parallel}",
        label(size),
        stats(&ratios),
        if m >= 0.9 { "met" } else { "MISSED" },
        median(up_mibs),
        median(raw_mibs),
        part / MIB
    )
}

fn label(size: u64) -> String {
    if size >= 1 << 30 {
        format!("{}G", size >> 30)
    } else {
        format!("{}M", size / MIB)
    }
}

fn daemon_config(data: &Path, epochs: u64, hidden: u64, replicate: Option<&str>) -> String {
    let mut s = format!(
        r#"data_dir = "{}"
epochs = {epochs}
seed = 5
batch_size = 32
[dataset]
kind = "synthetic"
n = 2048
input_dim = 64
output_dim = 8
[model]
hidden = [{hidden}, {hidden}]
activation = "tanh"
[checkpoint]
every_epochs = 1
keep_records = 3
"#,
        data.display()
    );
    if let Some(url) = replicate {
        s.push_str(&format!(
            "[replicate]\nurl = \"{url}\"\nallow_http = true\nkeep_records = 3\n"
        ));
    }
    s
}

/// CPU time (user + system) of the waited-for children of this process, ms.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// CPU time (user + system) a running process has used so far, ms.
fn process_cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e3 / hz
}

/// One whole daemon run.
struct RunFigures {
    /// The trainer's own training time, from the final record.
    train_ms: f64,
    /// CPU the daemon used (all its threads).
    daemon_cpu_ms: f64,
    /// CPU the S3 server used meanwhile.
    server_cpu_ms: f64,
    uploaded: usize,
    skipped: u64,
    /// The uploader thread's CPU per upload (its own clock), median.
    upload_cpu_ms: f64,
}

fn run_daemon(server: &S3Server, work: &Path, name: &str, body: &str) -> RunFigures {
    let data = work.join(name);
    let _ = std::fs::remove_dir_all(&data);
    let cfg = common::daemon::write_config(work, &format!("{name}.toml"), body);
    let server_pid = server.pid().expect("server runs");
    let (cpu0, srv0) = (children_cpu_ms(), process_cpu_ms(server_pid));
    let d = common::s3::spawn_daemon(server, &cfg, &[]);
    let (status, lines) = d.wait(Duration::from_secs(1800));
    let (cpu1, srv1) = (children_cpu_ms(), process_cpu_ms(server_pid));
    assert!(status.success(), "{}", lines.join("\n"));
    let (_, state) = common::daemon::newest_state(&data).unwrap();
    let skipped = lines
        .iter()
        .filter(|l| l.contains(" replicated"))
        .filter_map(|l| common::daemon::field(l, "skipped_total"))
        .max()
        .unwrap_or(0);
    let uploaded = lines.iter().filter(|l| l.contains(" replicated")).count();
    let cpu: Vec<f64> = lines
        .iter()
        .filter(|l| l.contains(" replicated"))
        .filter_map(|l| {
            let v = l.split(" cpu_ms=").nth(1)?.split(' ').next()?;
            v.parse().ok()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&data);
    RunFigures {
        upload_cpu_ms: if cpu.is_empty() { 0.0 } else { median(cpu) },
        train_ms: state.train_time_ms as f64,
        daemon_cpu_ms: cpu1 - cpu0,
        server_cpu_ms: srv1 - srv0,
        uploaded,
        skipped,
    }
}

fn overhead_per_epoch(server: &S3Server, work: &Path, runs: usize) -> String {
    let epochs = 30;
    let hidden = 512;
    let threads = std::env::var("EPOCHWAL_BENCH_THREADS").ok();
    let extra = threads
        .as_ref()
        .map_or(String::new(), |t| format!("threads = {t}\n"));
    let mut ratios = Vec::new();
    let mut off_ms = Vec::new();
    let (mut cpu_off, mut cpu_on, mut srv_on) = (Vec::new(), Vec::new(), Vec::new());
    let mut upload_cpu = Vec::new();
    let mut notes = String::new();
    for i in 0..=runs {
        let url = server.url(&format!("overhead-{i}"));
        let off_cfg = format!(
            "{extra}{}",
            daemon_config(&work.join("off"), epochs, hidden, None)
        );
        let on_cfg = format!(
            "{extra}{}",
            daemon_config(&work.join("on"), epochs, hidden, Some(&url))
        );
        // The side that goes first alternates from run to run.
        let (off, on) = if i % 2 == 0 {
            let off = run_daemon(server, work, "off", &off_cfg);
            (off, run_daemon(server, work, "on", &on_cfg))
        } else {
            let on = run_daemon(server, work, "on", &on_cfg);
            (run_daemon(server, work, "off", &off_cfg), on)
        };
        if i == 0 {
            continue; // warm-up
        }
        let e = epochs as f64;
        ratios.push(on.train_ms / off.train_ms);
        off_ms.push(off.train_ms / e);
        cpu_off.push(off.daemon_cpu_ms / e);
        cpu_on.push(on.daemon_cpu_ms / e);
        srv_on.push(on.server_cpu_ms / e);
        upload_cpu.push(on.upload_cpu_ms);
        notes = format!("uploaded={} skipped={}", on.uploaded, on.skipped);
    }
    let m = median(ratios.clone());
    format!(
        "overhead_per_epoch hidden={hidden}x{hidden} {} goal<=1.03 status={} epoch_ms_off={:.1} \
         daemon_cpu_ms_per_epoch_off={:.1} daemon_cpu_ms_per_epoch_on={:.1} \
         uploader_cpu_ms_per_upload={:.2} server_cpu_ms_per_epoch={:.1} \
         threads={} epochs={epochs} last_run_{notes}",
        stats(&ratios),
        if m <= 1.03 { "met" } else { "MISSED" },
        median(off_ms),
        median(cpu_off),
        median(cpu_on),
        median(upload_cpu),
        median(srv_on),
        threads.as_deref().unwrap_or("all")
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("replicate_vs_raw_put: benchmark\noverhead_per_epoch: benchmark");
        return;
    }
    let Some(server) = S3Server::start() else {
        eprintln!("replicate bench: s3s-fs is not installed; nothing measured");
        return;
    };
    // The bench process is single-threaded here: the client reads these.
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let root = std::env::var_os("EPOCHWAL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target/bench-tmp"));
    // Absolute: the daemon's configuration names its data directory, and a
    // relative one would be taken from the configuration file's directory.
    let root = std::env::current_dir().unwrap().join(root);
    let work = root.join("replicate-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let sizes: Vec<u64> = std::env::var("EPOCHWAL_BENCH_SIZES")
        .unwrap_or_else(|_| "64M,256M".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_size)
        .collect();
    let runs: usize = std::env::var("EPOCHWAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "# epochwal replication benchmark (s3s-fs on 127.0.0.1, log and server files in {})",
        work.display()
    );
    println!(
        "# cores={} load_at_start=\"{}\" (the machine is shared: other builds run concurrently)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut lines = Vec::new();
    for &size in &sizes {
        let l = replicate_vs_raw_put(&server, &work, size, runs);
        println!("{l}");
        lines.push(l);
    }
    let l = overhead_per_epoch(&server, &work, runs);
    println!("{l}");
    lines.push(l);
    println!(
        "# load_at_end=\"{}\"",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = std::fs::remove_dir_all(&work);
    let _ = Arc::new(());
}
