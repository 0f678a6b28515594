//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod faults;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A size-limited tmpfs mounted for a test (needs root), unmounted when
/// dropped.
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (`4m`) on `dir`; `None` if that fails (not
    /// root).
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        out.status.success().then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
pub mod s3;

use epochwal::state::{
    AdamParamState, AdamState, DataState, ModelState, Tensor, TrainState, SCHEMA_VERSION,
};

/// A training state whose tensors hold about `tensor_bytes` bytes in total
/// (model plus both Adam moments), with values that depend on `epoch` so that
/// records of different epochs differ everywhere.
pub fn sample_state(tensor_bytes: usize, epoch: u64) -> TrainState {
    let per_tensor = (tensor_bytes / 4 / 3).max(1);
    let fill = |salt: u32| -> Vec<f32> {
        (0..per_tensor)
            .map(|i| {
                (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) as f32 / 1e6
                    + epoch as f32
            })
            .collect()
    };
    TrainState {
        schema_version: SCHEMA_VERSION,
        epoch,
        global_step: epoch * 10,
        step_in_epoch: 0,
        model: ModelState {
            fingerprint: 0xfeed,
            description: "test state".into(),
            // Empty: the fingerprint is not the hash of a known architecture.
            architecture: String::new(),
            tensors: vec![Tensor {
                name: "fc.weight".into(),
                shape: vec![per_tensor as u64],
                data: fill(1),
            }],
        },
        optimizer: AdamState {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            params: vec![AdamParamState {
                name: "fc.weight".into(),
                step: epoch * 10,
                exp_avg: fill(2),
                exp_avg_sq: fill(3),
            }],
        },
        data: DataState {
            seed: 7,
            dataset_len: 100,
            rng: [1, 2, 3, epoch],
        },
        last_loss: 1.0 / (epoch as f32 + 1.0),
        wall_clock_unix_ns: 1_700_000_000_000_000_000 + epoch,
        train_time_ms: epoch,
        scaling: Default::default(),
        import: Default::default(),
    }
}
