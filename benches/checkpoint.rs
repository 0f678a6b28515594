//! Checkpoint benchmark: every figure is a ratio of two things measured side
//! by side, run by run, in the same process (the machines we run on are
//! noisy, so absolute numbers from different runs do not compare).
//!
//! ```text
//! cargo bench --bench checkpoint
//! EPOCHWAL_BENCH_SIZES=16M,256M,1G,4G EPOCHWAL_BENCH_RUNS=5 cargo bench --bench checkpoint
//! cargo bench --bench checkpoint -- --sizes 16M,256M --runs 3 --only append,recovery
//! ```
//!
//! Environment / arguments:
//! - `EPOCHWAL_BENCH_SIZES` / `--sizes`: state sizes (K, M, G suffixes are
//!   KiB, MiB, GiB); default `16M,256M,1G`.
//! - `EPOCHWAL_BENCH_RUNS` / `--runs`: measured runs per figure; default 5,
//!   3 for sizes of 1 GiB and more. One unmeasured warm-up run precedes them.
//! - `EPOCHWAL_BENCH_DIR` / `--dir`: where files are written; default
//!   `target/bench-tmp`. Must not be tmpfs (the point is to measure the disk).
//!   The bench works in a `checkpoint-bench` subdirectory, which it deletes.
//! - `EPOCHWAL_BENCH_ONLY` / `--only`: comma list of sections among
//!   `append` (append_vs_raw_write, pause_vs_memcpy, safetensors_vs_append,
//!   torch_save_vs_append, pause_vs_torch_save, and the pause's parts),
//!   `open` (open_vs_torch_load, verify_GBps_per_core),
//!   `prefault` (first-touch cost of a fresh mapping), `recovery`
//!   (recovery_scaling, access_vs_deserialize), `train` (overhead_per_epoch,
//!   train_thread_ratio, extra_cpu_vs_copy_checksum and the restart figures,
//!   at 1 and 2 training threads, and observe_overhead: the checkpointed run
//!   with `[metrics]` and `[tensorboard]` work added, against without; see
//!   `checkpoint/train.rs`).
//! - `EPOCHWAL_BENCH_TRAIN_THREADS`: training thread counts of the `train`
//!   section, comma list; default `1,2`.
//! - `EPOCHWAL_BENCH_COPY_IN_PAUSE=1`: the `train` section copies the state
//!   in the training pause (`begin_append`) instead of handing a snapshot to
//!   the persisting thread as the daemon does; for comparison.
//! - `EPOCHWAL_BENCH_PYTHON`: the Python that runs `benches/torch_peer.py`
//!   (default `python3`). Without torch the torch figures print
//!   "skipped: no torch"; nothing else changes.
//!
//! Output: one line per figure, `name size median=R min=R max=R runs=N
//! goal=... status=...` followed by `key=value` absolute numbers, then the same
//! lines again as a summary table at the end.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "checkpoint/observe.rs"]
mod observe;
#[path = "checkpoint/torch.rs"]
mod torch;
#[path = "checkpoint/train.rs"]
mod training;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use epochwal::state::TrainState;
use epochwal::train::{Snapshot, TrainConfig, Trainer};
use epochwal::wal::{format, recover, Log, LogOptions, PendingAppend, Retention};
use torch::TorchPeer;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Upper bound on what the recovery section keeps on disk at once.
const RECOVERY_DISK_BUDGET: u64 = 12 * GIB;

// ---------------------------------------------------------------- options

struct Options {
    sizes: Vec<u64>,
    runs: Option<usize>,
    root: PathBuf,
    only: Option<Vec<String>>,
}

impl Options {
    fn parse() -> Options {
        let mut sizes = std::env::var("EPOCHWAL_BENCH_SIZES").ok();
        let mut runs = std::env::var("EPOCHWAL_BENCH_RUNS").ok();
        let mut dir = std::env::var("EPOCHWAL_BENCH_DIR").ok();
        let mut only = std::env::var("EPOCHWAL_BENCH_ONLY").ok();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            let mut value = |slot: &mut Option<String>| {
                if let Some((_, v)) = a.split_once('=') {
                    *slot = Some(v.to_string());
                } else {
                    i += 1;
                    *slot = args.get(i).cloned();
                }
            };
            match a.split('=').next().unwrap() {
                "--sizes" => value(&mut sizes),
                "--runs" => value(&mut runs),
                "--dir" => value(&mut dir),
                "--only" => value(&mut only),
                // `cargo bench` passes `--bench`; ignore it and other flags.
                s if s.starts_with('-') => {}
                // A bare argument is a size list.
                _ => sizes = Some(a.to_string()),
            }
            i += 1;
        }
        let sizes = sizes
            .as_deref()
            .unwrap_or("16M,256M,1G")
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_size(s.trim()).unwrap_or_else(|| die(&format!("bad size {s:?}"))))
            .collect();
        let runs = runs.map(|r| {
            r.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .unwrap_or_else(|| die(&format!("bad run count {r:?}")))
        });
        let root = dir.map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tmp"))
        });
        let only = only.map(|o| o.split(',').map(|s| s.trim().to_string()).collect());
        Options {
            sizes,
            runs,
            root,
            only,
        }
    }

    fn runs_for(&self, size: u64) -> usize {
        self.runs.unwrap_or(if size >= GIB { 3 } else { 5 })
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

fn die(msg: &str) -> ! {
    eprintln!("checkpoint bench: {msg}");
    std::process::exit(2)
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], KIB),
        'M' | 'm' => (&s[..s.len() - 1], MIB),
        'G' | 'g' => (&s[..s.len() - 1], GIB),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul).filter(|&n| n > 0)
}

fn size_label(n: u64) -> String {
    if n >= GIB && n % GIB == 0 {
        format!("{}GiB", n / GIB)
    } else if n >= MIB && n % MIB == 0 {
        format!("{}MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{}KiB", n / KIB)
    } else {
        format!("{n}B")
    }
}

// ---------------------------------------------------------------- machine

fn utc_now() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    epochwal::tools::format_unix_ns(ns)
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn mem_total() -> String {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |kb| {
            format!("{:.1}GiB", kb as f64 / (1 << 20) as f64)
        })
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The transparent-huge-page mode for anonymous memory (the bracketed word
/// of `/sys/kernel/mm/transparent_hugepage/enabled`).
fn thp_mode() -> String {
    let s = read_trim("/sys/kernel/mm/transparent_hugepage/enabled");
    s.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(&s)
        .to_string()
}

/// The 1, 5 and 15 minute load averages (other jobs on a shared machine).
fn load_average() -> String {
    let s = read_trim("/proc/loadavg");
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// (device, mount point, fs type, options) of the mount holding `path`.
fn mount_of(path: &Path) -> (String, String, String, String) {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(String, String, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let mp = f[1].replace("\\040", " ");
        if path.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.len() >= b.1.len()) {
            best = Some((f[0].into(), mp, f[2].into(), f[3].into()));
        }
    }
    best.unwrap_or_else(|| ("?".into(), "?".into(), "?".into(), "?".into()))
}

fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn sync_all_fs() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

/// Drops the page cache (needs root). Returns whether it worked.
fn drop_caches() -> bool {
    sync_all_fs();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

// ---------------------------------------------------------------- stats

#[derive(Clone)]
struct Line {
    name: &'static str,
    size: String,
    ratios: Vec<f64>,
    goal: Option<(&'static str, f64)>,
    extra: Vec<(String, String)>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Line {
    fn new(name: &'static str, size: &str, ratios: Vec<f64>) -> Line {
        Line {
            name,
            size: size.to_string(),
            ratios,
            goal: None,
            extra: Vec::new(),
        }
    }
    fn goal(mut self, op: &'static str, v: f64) -> Line {
        self.goal = Some((op, v));
        self
    }
    fn kv(mut self, k: &str, v: impl std::fmt::Display) -> Line {
        self.extra.push((k.to_string(), v.to_string()));
        self
    }
    fn ms_of(self, k: &str, v: &[f64]) -> Line {
        let med = median(v);
        self.kv(k, fmt_ms(med))
    }
    fn render(&self) -> String {
        let med = median(&self.ratios);
        let mut s = format!(
            "{} {} median={:.3} min={:.3} max={:.3} runs={}",
            self.name,
            self.size,
            med,
            min(&self.ratios),
            max(&self.ratios),
            self.ratios.len()
        );
        if let Some((op, g)) = self.goal {
            let met = match op {
                ">=" => med >= g,
                _ => med <= g,
            };
            s += &format!(" goal{op}{g} status={}", if met { "met" } else { "MISSED" });
        }
        for (k, v) in &self.extra {
            s += &format!(" {k}={v}");
        }
        s
    }
}

struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, line: Line) {
        println!("{}", line.render());
        let _ = std::io::stdout().flush();
        self.lines.push(line);
    }
}

fn note(s: &str) {
    println!("# {s}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- helpers

fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 slice is a valid byte slice of 4x the length.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn set_epoch(state: &mut TrainState, epoch: u64) {
    state.epoch = epoch;
    state.global_step = epoch * 10;
    state
        .optimizer
        .params
        .iter_mut()
        .for_each(|p| p.step = epoch * 10);
}

fn archive(state: &TrainState) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(state).expect("serialize")
}

fn fresh_dir(p: &Path) {
    if p.exists() {
        fs::remove_dir_all(p).expect("removing an old bench directory");
    }
    fs::create_dir_all(p).expect("creating a bench directory");
}

fn remove(p: &Path) {
    if p.is_dir() {
        let _ = fs::remove_dir_all(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// One plain `write` of `bytes` to a new file, then `fdatasync`.
fn raw_write(path: &Path, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create raw file");
    f.write_all(bytes).expect("write raw file");
    f.sync_data().expect("fdatasync raw file");
    t.elapsed()
}

/// The state's tensors through `safetensors::serialize_to_file`, then fsync.
fn safetensors_write(path: &Path, state: &TrainState) -> Duration {
    use safetensors::tensor::{Dtype, TensorView};
    let t = Instant::now();
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for tensor in &state.model.tensors {
        let shape = tensor.shape.iter().map(|&d| d as usize).collect();
        views.push((
            tensor.name.clone(),
            TensorView::new(Dtype::F32, shape, as_bytes(&tensor.data)).unwrap(),
        ));
    }
    for p in &state.optimizer.params {
        for (kind, v) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
            views.push((
                format!("optimizer.{}.{kind}", p.name),
                TensorView::new(Dtype::F32, vec![v.len()], as_bytes(v)).unwrap(),
            ));
        }
    }
    safetensors::serialize_to_file(views, None, path).expect("safetensors write");
    File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync safetensors file");
    t.elapsed()
}

/// Reads one f32 per 4 KiB page of every tensor of a validated record.
fn touch_record(state: &epochwal::state::ArchivedTrainState) -> f32 {
    let mut sum = 0.0f32;
    let mut touch = |v: &[f32]| {
        for x in v.iter().step_by(1024) {
            sum += *x;
        }
    };
    for t in state.model.tensors.iter() {
        touch(t.values());
    }
    for p in state.optimizer.params.iter() {
        touch(p.exp_avg());
        touch(p.exp_avg_sq());
    }
    sum
}

// ---------------------------------------------------------------- sections

/// append_vs_raw_write, pause_vs_memcpy, safetensors_vs_append and, with a
/// torch peer, torch_save_vs_append and pause_vs_torch_save: the ways of
/// writing the same bytes, interleaved run by run, in a rotating order so
/// that no side always goes first. Then the parts of the pause, each beside a
/// memcpy: the counting pass, rkyv into the heap, THP against 4 KiB pages.
fn bench_append(
    opts: &Options,
    report: &mut Report,
    work: &Path,
    size: u64,
    peer: Option<&mut TorchPeer>,
) {
    let label = size_label(size);
    let runs = opts.runs_for(size);
    let dir = work.join(format!("append-{label}"));
    fresh_dir(&dir);
    let mut state = common::sample_state(size as usize, 1);
    let bytes = archive(&state);
    let payload = bytes.len() as u64;
    let mut dest = vec![1u8; bytes.len()];
    dest.copy_from_slice(&bytes); // pre-faulted, and warm
    let log_dir = dir.join("log");
    let (mut log, _) = Log::open(
        &log_dir,
        LogOptions {
            retention: Retention {
                keep_records: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("open log");
    let seg = log.options().segment_bytes;
    note(&format!(
        "{label}: payload {payload} bytes, segment_bytes {seg} ({}), runs {runs} + 1 warm-up",
        if format::record_span(payload) + format::PAGE > seg {
            "each record gets a segment of its own: every append rotates"
        } else {
            "several records per segment: some appends rotate"
        }
    ));

    let sides = if peer.is_some() { 4 } else { 3 };
    let (mut raw, mut app, mut pause, mut persist, mut mcp, mut st, mut csum) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut torch_save, mut torch_total, mut torch_fsync) = (vec![], vec![], vec![]);
    let (mut count, mut ser_heap, mut pause_faults) = (vec![], vec![], vec![]);
    let (mut mcp_4k, mut mcp_thp) = (vec![], vec![]);
    // THP: the memcpy reference into anonymous memory may get 2 MiB pages
    // (THP "always", or glibc's hugetlb tunable); a file mapping of ext4
    // never does. The same copy into both kinds shows what that is worth.
    let thp_before = anon_huge_kib();
    let mut heap_thp = AnonBuffer::new(bytes.len(), true);
    let thp_granted_mib = anon_huge_kib().saturating_sub(thp_before) / 1024;
    let mut heap_4k = AnonBuffer::new(bytes.len(), false);
    let mut peer = peer;
    let mut new_segments = 0;
    for run in 0..=runs {
        let measured = run > 0;
        set_epoch(&mut state, run as u64 + 1);
        let mut order: Vec<usize> = (0..sides).collect();
        order.rotate_left(run % sides);
        for side in order {
            sync_all_fs();
            match side {
                0 => {
                    let p = dir.join(format!("raw-{run}.bin"));
                    let t = raw_write(&p, &bytes);
                    remove(&p);
                    if measured {
                        raw.push(ms(t));
                    }
                }
                1 => {
                    // What the daemon's persisting thread does after the
                    // previous checkpoint (untimed: it is off the training
                    // thread): rotate if needed and prefault the pages.
                    log.prepare_next_append().expect("prepare_next_append");
                    // The memcpy reference right next to the pause it is
                    // compared with.
                    let t0 = Instant::now();
                    dest.copy_from_slice(black_box(&bytes));
                    black_box(&mut dest);
                    let tm = t0.elapsed();
                    let faults0 = minor_faults();
                    let t0 = Instant::now();
                    let pending = log.begin_append(&state).expect("begin_append");
                    let t1 = Instant::now();
                    let faults = minor_faults() - faults0;
                    let durable = pending.persist();
                    let t2 = Instant::now();
                    let durable_ok = durable.as_ref().expect("persist").clone();
                    log.finish(&durable).expect("finish");
                    assert_eq!(durable_ok.header.payload_len, payload);
                    if measured {
                        mcp.push(ms(tm));
                        pause.push(ms(t1 - t0));
                        pause_faults.push(faults as f64);
                        persist.push(ms(t2 - t1));
                        app.push(ms(t2 - t0));
                        new_segments += usize::from(durable_ok.new_segment);
                    }
                }
                2 => {
                    let p = dir.join(format!("st-{run}.safetensors"));
                    let t = safetensors_write(&p, &state);
                    remove(&p);
                    if measured {
                        st.push(ms(t));
                    }
                }
                _ => {
                    let p = dir.join(format!("torch-{run}.pt"));
                    let s = peer.as_mut().expect("side 3 only with a peer").save(&p);
                    remove(&p);
                    if measured {
                        torch_save.push(ms(s.save));
                        torch_fsync.push(ms(s.fsync));
                        torch_total.push(ms(s.save + s.fsync));
                    }
                }
            }
        }
        if measured {
            // The parts of the pause and of persist, alone (CPU only), each
            // next to a memcpy of the same bytes into the same kind of memory.
            let t0 = Instant::now();
            black_box(format::checksum(black_box(&bytes)));
            csum.push(ms(t0.elapsed()));
            let t0 = Instant::now();
            black_box(epochwal::wal::archived_len(black_box(&state)).expect("count"));
            count.push(ms(t0.elapsed()));
            let t0 = Instant::now();
            let w = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
                black_box(&state),
                rkyv::ser::writer::Buffer::from(&mut dest[..]),
            )
            .expect("serialize into the heap");
            black_box(rkyv::ser::Positional::pos(&w));
            ser_heap.push(ms(t0.elapsed()));
            for huge in [run % 2 == 0, run % 2 == 1] {
                let buf = if huge { &mut heap_thp } else { &mut heap_4k };
                let t0 = Instant::now();
                buf.as_mut_slice().copy_from_slice(black_box(&bytes));
                black_box(buf.as_mut_slice());
                if huge {
                    mcp_thp.push(ms(t0.elapsed()));
                } else {
                    mcp_4k.push(ms(t0.elapsed()));
                }
            }
        }
    }
    drop(log);
    remove(&dir);

    let r = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
    let secs = |v: &[f64]| median(v) / 1e3;
    report.push(
        Line::new("append_vs_raw_write", &label, r(&raw, &app))
            .goal(">=", 0.95)
            .kv("append_GBps", format!("{:.3}", gbps(payload, secs(&app))))
            .kv("raw_GBps", format!("{:.3}", gbps(payload, secs(&raw))))
            .ms_of("append_ms", &app)
            .ms_of("raw_ms", &raw)
            .ms_of("begin_append_ms", &pause)
            .ms_of("persist_ms", &persist)
            .ms_of("checksum_ms", &csum)
            .kv("new_segment_appends", format!("{new_segments}/{runs}")),
    );
    report.push(
        Line::new("pause_vs_memcpy", &label, r(&pause, &mcp))
            .goal("<=", 1.2)
            .ms_of("begin_append_ms", &pause)
            .ms_of("memcpy_ms", &mcp)
            .kv("memcpy_GBps", format!("{:.2}", gbps(payload, secs(&mcp))))
            .kv(
                "begin_append_GBps",
                format!("{:.2}", gbps(payload, secs(&pause))),
            )
            .kv(
                "pause_minor_faults",
                format!("{:.0}", median(&pause_faults)),
            )
            .ms_of("count_pass_ms", &count)
            .ms_of("serialize_heap_ms", &ser_heap),
    );
    report.push(
        Line::new("serialize_heap_vs_memcpy", &label, r(&ser_heap, &mcp))
            .ms_of("serialize_heap_ms", &ser_heap)
            .ms_of("count_pass_ms", &count)
            .ms_of("memcpy_ms", &mcp),
    );
    report.push(
        Line::new("memcpy_4k_vs_thp", &label, r(&mcp_4k, &mcp_thp))
            .ms_of("memcpy_4k_ms", &mcp_4k)
            .ms_of("memcpy_thp_ms", &mcp_thp)
            .kv("thp_granted_MiB", thp_granted_mib),
    );
    report.push(
        Line::new("safetensors_vs_append", &label, r(&st, &app))
            .goal(">=", 1.0)
            .ms_of("safetensors_ms", &st)
            .ms_of("append_ms", &app)
            .kv(
                "safetensors_GBps",
                format!("{:.3}", gbps(payload, secs(&st))),
            ),
    );
    match peer {
        Some(peer) => {
            report.push(
                Line::new("torch_save_vs_append", &label, r(&torch_total, &app))
                    .goal(">=", 1.5)
                    .ms_of("torch_save_fsync_ms", &torch_total)
                    .ms_of("torch_save_ms", &torch_save)
                    .ms_of("torch_fsync_ms", &torch_fsync)
                    .ms_of("append_ms", &app)
                    .kv("torch", &peer.version),
            );
            report.push(
                Line::new("pause_vs_torch_save", &label, r(&torch_save, &pause))
                    .goal(">=", 20.0)
                    .ms_of("torch_save_ms", &torch_save)
                    .ms_of("begin_append_ms", &pause)
                    .kv(
                        "with_fsync_median",
                        format!("{:.1}", median(&r(&torch_total, &pause))),
                    ),
            );
        }
        None => {
            for name in ["torch_save_vs_append", "pause_vs_torch_save"] {
                println!("{name} {label} skipped: no torch");
            }
        }
    }
}

/// Minor page faults of this thread so far.
fn minor_faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_minflt
}

/// `AnonHugePages` of this process, KiB.
fn anon_huge_kib() -> u64 {
    fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Anonymous memory, pre-faulted, with transparent huge pages asked for
/// (`MADV_HUGEPAGE`) or refused (`MADV_NOHUGEPAGE`).
struct AnonBuffer {
    ptr: *mut u8,
    len: usize,
}

impl AnonBuffer {
    fn new(len: usize, huge: bool) -> AnonBuffer {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes");
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on the mapping just made; failure only means no THP.
        unsafe { libc::madvise(ptr, len, advice) };
        // SAFETY: the mapping is `len` bytes, readable and writable.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 1, len) };
        AnonBuffer {
            ptr: ptr.cast(),
            len,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping lives as long as self and is only reached
        // through this exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Evidence for the pause: copying into a freshly created, fallocated,
/// mapped file (what begin_append does after a rotation) vs the same copy
/// into a mapping whose pages were write-faulted beforehand with
/// `madvise(MADV_POPULATE_WRITE)` (which the persister thread could do), vs
/// memcpy into a pre-faulted heap buffer.
fn bench_prefault(opts: &Options, report: &mut Report, work: &Path, size: u64) {
    let label = size_label(size);
    let runs = opts.runs_for(size);
    let dir = work.join(format!("prefault-{label}"));
    fresh_dir(&dir);
    let src = vec![7u8; size as usize];
    let mut dest = vec![1u8; size as usize];
    let map_file = |name: &str| -> (File, memmap2::MmapRaw) {
        let p = dir.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        // SAFETY: fallocate on a valid fd.
        assert_eq!(
            unsafe {
                libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, size as i64)
            },
            0
        );
        let m = memmap2::MmapOptions::new()
            .len(size as usize)
            .map_raw(&f)
            .unwrap();
        (f, m)
    };
    let copy_into = |m: &memmap2::MmapRaw| -> Duration {
        // SAFETY: the mapping is ours and `size` long.
        let d = unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr(), size as usize) };
        let t = Instant::now();
        d.copy_from_slice(black_box(&src));
        t.elapsed()
    };
    let (mut fresh, mut populated, mut populate, mut mcp, mut popsync) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut populate_ok = true;
    for run in 0..=runs {
        sync_all_fs();
        let t = Instant::now();
        dest.copy_from_slice(black_box(&src));
        let tm = t.elapsed();
        let (_f1, m1) = map_file(&format!("fresh-{run}"));
        let tf = copy_into(&m1);
        let (_f2, m2) = map_file(&format!("pop-{run}"));
        let t = Instant::now();
        // SAFETY: advice on our own mapping.
        let rc = unsafe {
            libc::madvise(
                m2.as_mut_ptr().cast(),
                size as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        let tpop = t.elapsed();
        populate_ok &= rc == 0;
        let tp = copy_into(&m2);
        // Populated, then written back (as `sync` or the 30 s dirty expiry
        // would do before the next checkpoint): writeback write-protects the
        // pages again, so the copy faults again (page_mkwrite).
        let (f3, m3) = map_file(&format!("popsync-{run}"));
        // SAFETY: as above.
        unsafe {
            libc::madvise(
                m3.as_mut_ptr().cast(),
                size as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        f3.sync_data().unwrap();
        let tps = copy_into(&m3);
        drop((m1, m2, m3));
        remove(&dir.join(format!("fresh-{run}")));
        remove(&dir.join(format!("pop-{run}")));
        remove(&dir.join(format!("popsync-{run}")));
        if run > 0 {
            popsync.push(ms(tps));
            fresh.push(ms(tf));
            populated.push(ms(tp));
            populate.push(ms(tpop));
            mcp.push(ms(tm));
        }
    }
    remove(&dir);
    let r = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
    report.push(
        Line::new("fresh_mapping_copy_vs_memcpy", &label, r(&fresh, &mcp))
            .ms_of("fresh_mapping_copy_ms", &fresh)
            .ms_of("memcpy_ms", &mcp),
    );
    report.push(
        Line::new(
            "populated_mapping_copy_vs_memcpy",
            &label,
            r(&populated, &mcp),
        )
        .ms_of("populated_mapping_copy_ms", &populated)
        .ms_of("madv_populate_write_ms", &populate)
        .ms_of("memcpy_ms", &mcp)
        .kv("populate_ok", populate_ok),
    );
    report.push(
        Line::new(
            "populated_written_back_copy_vs_memcpy",
            &label,
            r(&popsync, &mcp),
        )
        .ms_of("populated_written_back_copy_ms", &popsync)
        .ms_of("memcpy_ms", &mcp),
    );
}

/// open_vs_torch_load (recover, validate and read every value of every
/// tensor in place, against `torch.load` of the same tensors, warm cache,
/// interleaved) and verify_GBps_per_core (`epochwal verify` of a log holding
/// one record, warm cache, as an operator runs it).
fn bench_open(
    opts: &Options,
    report: &mut Report,
    work: &Path,
    size: u64,
    peer: Option<&mut TorchPeer>,
) {
    let label = size_label(size);
    let runs = opts.runs_for(size);
    let dir = work.join(format!("open-{label}"));
    fresh_dir(&dir);
    let log_dir = dir.join("log");
    let payload = {
        let state = common::sample_state(size as usize, 1);
        let (mut log, _) = Log::open(&log_dir, LogOptions::default()).expect("open log");
        log.append(&state).expect("append").header.payload_len
    };
    let torch_file = dir.join("state.pt");
    let mut peer = peer;
    if let Some(p) = peer.as_mut() {
        p.save(&torch_file);
    }
    // Recover, which checksums the payload with pread and validates the
    // archive, then read every f32 of every tensor through the mapping.
    let open_and_read = || -> (Duration, Duration) {
        let t = Instant::now();
        let r = recover(&log_dir).expect("recover");
        let recovered = t.elapsed();
        let state = r.record.as_ref().expect("a record").state();
        let mut sum = 0.0f32;
        for t in state.model.tensors.iter() {
            sum += sum_all(t.values());
        }
        for p in state.optimizer.params.iter() {
            sum += sum_all(p.exp_avg()) + sum_all(p.exp_avg_sq());
        }
        black_box(sum);
        (recovered, t.elapsed())
    };
    // Drops the cached pages of `path` (written back first), so that the
    // next read of it comes from the disk.
    let forget = |path: &Path| {
        let f = File::open(path).expect("open for fadvise");
        f.sync_all().expect("fsync");
        // SAFETY: posix_fadvise only reads its integer arguments.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };
    let forget_log = || {
        for e in std::fs::read_dir(&log_dir).expect("list log") {
            let p = e.expect("list log").path();
            if p.is_file() {
                forget(&p);
            }
        }
    };
    // Warm and cold side by side: in every run, both sides with the cache
    // as the previous read left it, then both after dropping the pages of
    // the files they read.
    let (mut ours, mut ours_recover, mut theirs) = (vec![], vec![], vec![]);
    let (mut ours_cold, mut ours_recover_cold, mut theirs_cold) = (vec![], vec![], vec![]);
    for run in 0..=runs {
        let order: [bool; 2] = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for cold in [false, true] {
            for torch in order {
                if torch {
                    if let Some(p) = peer.as_mut() {
                        if cold {
                            forget(&torch_file);
                        }
                        let t = p.load(&torch_file);
                        if run > 0 {
                            if cold { &mut theirs_cold } else { &mut theirs }.push(ms(t));
                        }
                    }
                } else {
                    if cold {
                        forget_log();
                    }
                    let (rec, all) = open_and_read();
                    if run > 0 {
                        if cold {
                            ours_recover_cold.push(ms(rec));
                            ours_cold.push(ms(all));
                        } else {
                            ours_recover.push(ms(rec));
                            ours.push(ms(all));
                        }
                    }
                }
            }
        }
    }
    let secs = |v: &[f64]| median(v) / 1e3;
    // Issue 21's goals: >= 3 at 16 MiB, >= 5 from 256 MiB on.
    let goal = if size < 256 * MIB { 3.0 } else { 5.0 };
    if peer.is_some() {
        let sides = [
            ("open_vs_torch_load", "warm", &theirs, &ours, &ours_recover),
            (
                "open_vs_torch_load_cold",
                "cold",
                &theirs_cold,
                &ours_cold,
                &ours_recover_cold,
            ),
        ];
        for (name, cache, theirs, ours, recover) in sides {
            report.push(
                Line::new(
                    name,
                    &label,
                    theirs.iter().zip(ours.iter()).map(|(a, b)| a / b).collect(),
                )
                .goal(">=", goal)
                .kv("cache", cache)
                .ms_of("torch_load_ms", theirs)
                .ms_of("recover_and_read_ms", ours)
                .ms_of("recover_ms", recover)
                .kv(
                    "recover_and_read_GBps",
                    format!("{:.2}", gbps(payload, secs(ours))),
                ),
            );
        }
    } else {
        println!("open_vs_torch_load {label} skipped: no torch");
    }

    // `epochwal verify` as a process; per core: bytes over the CPU time
    // (user + system) the process used. It checks on one thread.
    let bin = env!("CARGO_BIN_EXE_epochwal");
    let (mut per_core, mut wall) = (vec![], vec![]);
    for run in 0..=runs {
        let cpu0 = children_cpu();
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .arg("verify")
            .arg(&log_dir)
            .output()
            .expect("running epochwal verify");
        let el = t.elapsed();
        let cpu = children_cpu() - cpu0;
        assert!(
            out.status.success(),
            "epochwal verify failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if run > 0 {
            per_core.push(gbps(payload, cpu.as_secs_f64()));
            wall.push(ms(el));
        }
    }
    report.push(
        Line::new("verify_GBps_per_core", &label, per_core)
            .goal(">=", 5.0)
            .kv("cache", "warm")
            .ms_of("verify_wall_ms", &wall)
            .kv(
                "verify_wall_GBps",
                format!("{:.2}", gbps(payload, secs(&wall))),
            ),
    );
    remove(&dir);
}

/// The sum of every value, in eight lanes so that it runs at the speed of
/// reading memory (a single running f32 sum is one dependent add per value).
fn sum_all(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// CPU time (user + system) of this process, all threads, so far.
fn self_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU time (user + system) used by waited-for children so far.
fn children_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

/// CPU time the hypervisor took from this machine's CPUs so far (the
/// `steal` column of `/proc/stat`, all CPUs), or None where there is no
/// such column. On a virtual machine whose host does the guest's disk I/O
/// on the cores that run its virtual CPUs, this grows while records are
/// written, and it is time that no thread of the guest ran.
fn steal_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf only reads its integer argument.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// recovery_scaling (1 record vs many of the same size) and
/// access_vs_deserialize.
fn bench_recovery(opts: &Options, report: &mut Report, work: &Path, size: u64, cold_ok: bool) {
    let label = size_label(size);
    let runs = opts.runs_for(size);
    let many: u64 = if size >= GIB {
        10
    } else {
        (RECOVERY_DISK_BUDGET / size).clamp(2, 100)
    };
    let dir = work.join(format!("recovery-{label}"));
    fresh_dir(&dir);
    let one_dir = dir.join("one");
    let many_dir = dir.join("many");
    let mut state = common::sample_state(size as usize, 1);
    let t = Instant::now();
    {
        let (mut log, _) = Log::open(&one_dir, LogOptions::default()).unwrap();
        log.append(&state).unwrap();
        let (mut log, _) = Log::open(&many_dir, LogOptions::default()).unwrap();
        for e in 1..=many {
            set_epoch(&mut state, e);
            log.append(&state).unwrap();
        }
    }
    let segments = fs::read_dir(&many_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .count();
    note(&format!(
        "{label}: built logs of 1 and {many} records ({segments} segments of default size {} MiB or one per record) in {:.1} s",
        LogOptions::default().segment_bytes >> 20,
        t.elapsed().as_secs_f64()
    ));
    drop(state);

    let time_recover = |d: &Path, expect_seq: u64| -> f64 {
        let t = Instant::now();
        let r = recover(d).expect("recover");
        let el = t.elapsed();
        assert_eq!(r.record.as_ref().unwrap().header().sequence, expect_seq);
        drop(r);
        ms(el)
    };
    let mut lines = Vec::new();
    for cold in [true, false] {
        if cold && !cold_ok {
            continue;
        }
        let (mut t1, mut tn) = (vec![], vec![]);
        for run in 0..=runs {
            let order: [bool; 2] = if run % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for long in order {
                if cold {
                    drop_caches();
                }
                let t = if long {
                    time_recover(&many_dir, many)
                } else {
                    time_recover(&one_dir, 1)
                };
                if run > 0 || cold {
                    if long {
                        tn.push(t)
                    } else {
                        t1.push(t)
                    }
                }
            }
        }
        if cold {
            // Cold runs need no warm-up; keep the same count as warm ones.
            t1.truncate(runs);
            tn.truncate(runs);
        }
        let ratios = tn.iter().zip(&t1).map(|(a, b)| a / b).collect();
        lines.push(
            Line::new(
                if cold {
                    "recovery_scaling"
                } else {
                    "recovery_scaling_warm"
                },
                &label,
                ratios,
            )
            .goal("<=", 1.2)
            .kv("records", many)
            .kv("cache", if cold { "cold(drop_caches)" } else { "warm" })
            .ms_of("recover_1_ms", &t1)
            .ms_of(&format!("recover_{many}_ms"), &tn)
            .kv(
                "recover_1_GBps",
                format!("{:.2}", gbps(size, median(&t1) / 1e3)),
            ),
        );
    }
    for l in lines {
        report.push(l);
    }

    // Zero-copy access vs full deserialization, warm cache (the record was
    // just read), interleaved.
    let (mut access, mut deser, mut touch_only, mut deser_only) = (vec![], vec![], vec![], vec![]);
    for run in 0..=runs {
        let order: [bool; 2] = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for full in order {
            let t = Instant::now();
            let r = recover(&one_dir).unwrap();
            let rec = r.record.as_ref().unwrap();
            let t_open = Instant::now();
            if full {
                let owned = rec.to_owned_state().unwrap();
                let el = t.elapsed();
                let only = t_open.elapsed();
                black_box(&owned);
                drop(owned);
                if run > 0 {
                    deser.push(ms(el));
                    deser_only.push(ms(only));
                }
            } else {
                black_box(touch_record(rec.state()));
                let el = t.elapsed();
                let only = t_open.elapsed();
                if run > 0 {
                    access.push(ms(el));
                    touch_only.push(ms(only));
                }
            }
            drop(r);
        }
    }
    report.push(
        Line::new(
            "access_vs_deserialize",
            &label,
            access.iter().zip(&deser).map(|(a, b)| a / b).collect(),
        )
        .kv("cache", "warm")
        .ms_of("recover_and_touch_ms", &access)
        .ms_of("recover_and_deserialize_ms", &deser)
        .ms_of("touch_only_ms", &touch_only)
        .ms_of("deserialize_only_ms", &deser_only),
    );
    remove(&dir);
}

// ---------------------------------------------------------------- main

fn main() {
    let opts = Options::parse();
    fs::create_dir_all(&opts.root)
        .unwrap_or_else(|e| die(&format!("cannot create {}: {e}", opts.root.display())));
    let work = opts.root.join("checkpoint-bench");
    fresh_dir(&work);
    let (dev, mp, fstype, mopts) = mount_of(&work);
    if fstype == "tmpfs" || fstype == "ramfs" {
        die(&format!(
            "{} is on {fstype}: durability costs nothing there; set EPOCHWAL_BENCH_DIR to a directory on a real disk",
            work.display()
        ));
    }
    let cold_ok = drop_caches();
    println!("# epochwal checkpoint benchmark");
    println!(
        "# date={} cores={} cpu=\"{}\" mem={} kernel={} thp={}",
        utc_now(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        mem_total(),
        read_trim("/proc/sys/kernel/osrelease"),
        thp_mode()
    );
    println!(
        "# dir={} fs={fstype} device={dev} mount={mp} options={mopts} free={:.1}GiB",
        work.display(),
        free_bytes(&work).unwrap_or(0) as f64 / GIB as f64
    );
    println!(
        "# sizes={} runs={} (each ratio is computed per run from two sides measured back to back; median/min/max over runs; one warm-up run is discarded)",
        opts.sizes.iter().map(|&s| size_label(s)).collect::<Vec<_>>().join(","),
        opts.runs.map_or("5 (3 for >=1GiB)".into(), |r| r.to_string()),
    );
    println!(
        "# page cache drop for cold recovery: {}",
        if cold_ok {
            "yes (/proc/sys/vm/drop_caches)"
        } else {
            "NOT possible; recovery is measured warm only"
        }
    );
    let mut report = Report { lines: Vec::new() };
    let started = Instant::now();

    for &size in &opts.sizes {
        println!(
            "## state size {} (load average {})",
            size_label(size),
            load_average()
        );
        let mut peer = None;
        if opts.wants("append") || opts.wants("open") {
            let state = common::sample_state(size as usize, 1);
            match TorchPeer::start(&work, &state) {
                Ok(p) => peer = Some(p),
                Err(reason) => note(&format!("torch peer: skipped: no torch ({reason})")),
            }
        }
        if opts.wants("append") {
            bench_append(&opts, &mut report, &work, size, peer.as_mut());
        }
        if opts.wants("open") {
            bench_open(&opts, &mut report, &work, size, peer.as_mut());
        }
        drop(peer);
        if opts.wants("prefault") {
            bench_prefault(&opts, &mut report, &work, size);
        }
        if opts.wants("recovery") {
            bench_recovery(&opts, &mut report, &work, size, cold_ok);
        }
    }
    if opts.wants("train") {
        println!("## training overhead");
        training::bench_train(&opts, &mut report, &work);
    }
    remove(&work);

    println!();
    println!(
        "## summary ({:.0} s, load average at the end {})",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    let mut by_name: HashMap<&str, Vec<&Line>> = HashMap::new();
    let mut names = Vec::new();
    for l in &report.lines {
        if !by_name.contains_key(l.name) {
            names.push(l.name);
        }
        by_name.entry(l.name).or_default().push(l);
    }
    for n in names {
        for l in &by_name[n] {
            println!("{}", l.render());
        }
    }
}

fn size_label_f(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / MIB as f64)
}
