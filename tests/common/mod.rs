//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod faults;
pub mod follow;
pub mod http;
pub mod netns;
pub mod overtake;
pub mod prometheus;
pub mod python;
pub mod systemd;
pub mod torch;
pub mod unit_analysis;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A free TCP port on 127.0.0.1 (bound and released; another process could
/// take it before the caller binds it, which the callers' start-up checks
/// would show).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

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
        kind: epochwal::state::KIND_TRAINER,
        general: Default::default(),
    }
}

/// A general record (schema 3, as the Python package writes them) of
/// epoch `epoch`: tensors of several dtypes and shapes, one of them with a
/// long name, a scalar, an empty tensor, and a JSON document.
pub fn general_state(epoch: u64) -> TrainState {
    use epochwal::state::{General, NamedTensor};
    let bytes = |n: usize, seed: u64| -> Vec<u8> {
        (0..n).map(|i| (i as u64 * 31 + seed * 7) as u8).collect()
    };
    let t = |name: &str, dtype: &str, shape: Vec<u64>, n: usize| NamedTensor {
        name: name.into(),
        dtype: dtype.into(),
        shape,
        data: bytes(n, epoch).into(),
    };
    TrainState {
        epoch,
        global_step: epoch * 10,
        last_loss: 1.0 / epoch as f32,
        wall_clock_unix_ns: 1_700_000_000_000_000_000 + epoch,
        general: General {
            tensors: vec![
                t(
                    "model.encoder.layers.0.self_attn.in_proj_weight",
                    "F32",
                    vec![3, 4],
                    48,
                ),
                t("model.norm.weight", "BF16", vec![5], 10),
                t("model.steps", "I64", vec![], 8),
                t("model.mask", "BOOL", vec![2, 2], 4),
                t("optimizer.state.0.exp_avg", "F16", vec![7], 14),
                t("model.empty", "F64", vec![0, 3], 0),
                t("rng.torch", "U8", vec![20], 20),
            ],
            meta: format!(
                r#"{{"format":"epochwal.torch","epoch":{epoch},"optimizer":{{"param_groups":[{{"lr":0.01,"betas":{{"__tuple__":[0.9,0.999]}}}}]}}}}"#
            ),
            job_id: "job-7".into(),
            world_size: 2,
            rank: 1,
        },
        ..TrainState::default()
    }
}

/// The unprivileged user the permission tests run a child as.
pub const NOBODY: u32 = 65534;

/// A copy of an executable that `nobody` can run wherever the checkout lives.
///
/// Root ignores permission bits, so a test that needs "a user who may not
/// read this" runs a child as `nobody`. That child must first reach the
/// executable: under a checkout in a 0700 directory (anything under
/// `/root`, a `mktemp -d`) it cannot reach `target/` at all, and the test
/// would fail for where the checkout lives rather than for what the product
/// does. So the executable is copied into a fresh 0755 directory under the
/// system's temporary directory; the copy is removed on drop.
pub struct ExeForNobody {
    _dir: tempfile::TempDir,
    /// The copy, mode 0755.
    pub path: PathBuf,
}

impl ExeForNobody {
    /// Copies `exe`. `Err` says why `nobody` still could not run it (a
    /// temporary directory below a directory that others may not enter):
    /// the caller prints that reason and skips, never silently.
    pub fn copy(exe: &Path) -> Result<ExeForNobody, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("epochwal-nobody-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
        if let Some(closed) = first_closed_ancestor(dir.path()) {
            return Err(format!(
                "nobody cannot enter {} (mode without o+x), above the temporary directory {}",
                closed.display(),
                dir.path().display()
            ));
        }
        let name = exe.file_name().ok_or("executable has no file name")?;
        let path = dir.path().join(name);
        std::fs::copy(exe, &path)
            .map_err(|e| format!("copy {} to {}: {e}", exe.display(), path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(ExeForNobody { _dir: dir, path })
    }
}

/// The first ancestor of `path` (itself excluded) that users other than its
/// owner may not enter, if any.
pub fn first_closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().skip(1).find_map(|a| {
        let mode = std::fs::metadata(a).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| a.to_path_buf())
    })
}
