//! `train_vs_torch`: epochwal's epoch time divided by PyTorch's CPU epoch
//! time on the same model, data size, batch size and thread count.
//!
//! For every (threads, batch) pair the two sides run back to back, the side
//! that goes first alternating from run to run, and the ratio is computed
//! per run from the median epoch of each side; the line gives the median,
//! min and max of those ratios. The PyTorch side is `train_vs_torch.py`
//! beside this file, run with `python3` (or `$EPOCHWAL_BENCH_PYTHON`); when
//! `import torch` fails the figure prints "skipped: no torch".
//!
//! ```sh
//! cargo bench --bench train_vs_torch
//! EPOCHWAL_BENCH_RUNS=5 EPOCHWAL_BENCH_TORCH_TRAIN=1024,512,2048:512,8 \
//!   EPOCHWAL_BENCH_THREADS=1,2 EPOCHWAL_BENCH_BATCHES=32,256 cargo bench --bench train_vs_torch
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use epochwal::train::{DatasetConfig, ModelConfig, OptimizerConfig, TrainConfig, Trainer};

struct Shape {
    n: usize,
    input: usize,
    hidden: Vec<usize>,
    output: usize,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .collect()
}

fn shape() -> Shape {
    let spec = std::env::var("EPOCHWAL_BENCH_TORCH_TRAIN")
        .unwrap_or_else(|_| "1024,512,2048:512,8".to_string());
    let parts: Vec<&str> = spec.split(',').collect();
    assert_eq!(
        parts.len(),
        4,
        "EPOCHWAL_BENCH_TORCH_TRAIN is n,input,h1:h2:...,output"
    );
    let num = |s: &str| -> usize {
        s.parse()
            .unwrap_or_else(|_| panic!("EPOCHWAL_BENCH_TORCH_TRAIN: not a number: {s}"))
    };
    Shape {
        n: num(parts[0]),
        input: num(parts[1]),
        hidden: parts[2]
            .split(':')
            .filter(|h| !h.is_empty())
            .map(num)
            .collect(),
        output: num(parts[3]),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn python() -> String {
    std::env::var("EPOCHWAL_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/train_vs_torch.py")
}

/// `Ok(version)` when PyTorch imports, `Err(reason)` otherwise.
fn torch_available() -> Result<String, String> {
    let out = Command::new(python())
        .args([
            "-W",
            "ignore",
            "-c",
            "import torch; print(torch.__version__)",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or("import failed").to_string())
    }
}

/// Median epoch time of PyTorch in ms.
fn torch_epoch_ms(s: &Shape, batch: usize, epochs: usize, threads: usize) -> f64 {
    let hidden: Vec<String> = s.hidden.iter().map(|h| h.to_string()).collect();
    let out = Command::new(python())
        .arg("-W")
        .arg("ignore")
        .arg(script())
        .args([
            s.n.to_string(),
            s.input.to_string(),
            hidden.join(":"),
            s.output.to_string(),
            batch.to_string(),
            epochs.to_string(),
            threads.to_string(),
            "1".to_string(),
        ])
        .output()
        .expect("running the torch script");
    assert!(
        out.status.success(),
        "torch script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("torch script output");
    let mut times: Vec<f64> = v["epoch_ms"]
        .as_array()
        .expect("epoch_ms")
        .iter()
        .filter_map(|t| t.as_f64())
        .collect();
    median(&mut times)
}

/// Median epoch time of epochwal's trainer in ms (one warm-up epoch).
fn epochwal_epoch_ms(s: &Shape, batch: usize, epochs: usize, threads: usize) -> f64 {
    let cfg = TrainConfig {
        dataset: DatasetConfig::Synthetic {
            n: s.n,
            input_dim: s.input,
            output_dim: s.output,
            noise_std: 0.0,
            data_seed: None,
        },
        model: ModelConfig {
            hidden: s.hidden.clone(),
            ..ModelConfig::default()
        },
        optimizer: OptimizerConfig::default(),
        batch_size: batch,
        seed: 0,
        threads,
        validation_fraction: 0.0,
    };
    let mut t = Trainer::new(&cfg).expect("building the trainer");
    let steps = t.steps_per_epoch();
    let mut times = Vec::with_capacity(epochs);
    for e in 0..=epochs {
        let t0 = Instant::now();
        for _ in 0..steps {
            t.step();
        }
        if e > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(&mut times)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from argv.
    let s = shape();
    let runs = env_list("EPOCHWAL_BENCH_RUNS", "3")[0].max(1);
    let epochs = env_list("EPOCHWAL_BENCH_EPOCHS", "3")[0].max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = env_list("EPOCHWAL_BENCH_THREADS", "1,2");
    let batches = env_list("EPOCHWAL_BENCH_BATCHES", "32,256");
    let hidden: Vec<String> = s.hidden.iter().map(|h| h.to_string()).collect();
    println!("# epochwal train_vs_torch benchmark");
    println!(
        "# model {}-{}-{} relu mse adam, n={} rows, {epochs} timed epochs per side per run (+1 warm-up), runs={runs}, cores={cores}",
        s.input,
        hidden.join("-"),
        s.output,
        s.n
    );
    let version = match torch_available() {
        Ok(v) => v,
        Err(reason) => {
            println!(
                "train_vs_torch skipped: no torch ({} -c 'import torch': {reason})",
                python()
            );
            return;
        }
    };
    println!("# torch {version} on CPU via {}", python());
    for &th in &threads {
        if th > cores {
            println!("train_vs_torch threads={th} skipped: only {cores} cores");
            continue;
        }
        for &batch in &batches {
            let mut ratios = Vec::new();
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for run in 0..runs {
                let (e, t) = if run % 2 == 0 {
                    let t = torch_epoch_ms(&s, batch, epochs, th);
                    (epochwal_epoch_ms(&s, batch, epochs, th), t)
                } else {
                    let e = epochwal_epoch_ms(&s, batch, epochs, th);
                    (e, torch_epoch_ms(&s, batch, epochs, th))
                };
                ratios.push(e / t);
                ours.push(e);
                theirs.push(t);
            }
            let m = median(&mut ratios.clone());
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
            println!(
                "train_vs_torch threads={th} batch={batch} median={m:.3} min={lo:.3} max={hi:.3} runs={runs} goal<=1.0 status={} epochwal_epoch_ms={:.1} torch_epoch_ms={:.1}",
                if m <= 1.0 { "met" } else { "MISSED" },
                median(&mut ours),
                median(&mut theirs),
            );
        }
    }
}
