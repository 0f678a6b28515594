//! The training-state schema: what one checkpoint record holds.
//!
//! A record is the *whole* state needed to continue a run bit-for-bit: the
//! model tensors, the Adam state, the counters, the data position and the
//! random-number state. It is archived with rkyv so that a reader can look at
//! a multi-GiB record through a read-only mapping without copying it; the
//! tensor data of an [`ArchivedTrainState`] is visible as `&[f32]`
//! ([`ArchivedTensor::values`]).
//!
//! The layout of the archive is rkyv 0.8's with little-endian primitives,
//! 16-byte aligned buffers and 64-bit relative pointers (the crate features
//! `little_endian`, `aligned`, `pointer_width_64`); a change to any type here
//! is a change of the on-disk format and must bump [`SCHEMA_VERSION`].

use rkyv::{Archive, Deserialize, Serialize};

/// Version of the schema below. Stored in every record; a reader refuses a
/// record whose schema version it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// The element type of every tensor. Only f32 is stored today; the field
/// exists so that a reader of FORMAT.md can check it.
pub const DTYPE_F32: &str = "F32";

/// Everything needed to continue training exactly where it stopped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TrainState {
    /// [`SCHEMA_VERSION`] at the time of writing.
    pub schema_version: u32,
    /// Number of epochs completed. A record written at the end of epoch 3
    /// (counting from 1) has `epoch == 3` and `step_in_epoch == 0`; a record
    /// written in the middle of the fourth epoch has `epoch == 3` and
    /// `step_in_epoch > 0`.
    pub epoch: u64,
    /// Optimizer steps taken since the start of the run.
    pub global_step: u64,
    /// Mini-batches already consumed in the current (unfinished) epoch.
    pub step_in_epoch: u64,
    /// Model parameters, in the order of the model's `state_dict()`.
    pub model: ModelState,
    /// State of `torch.optim.Adam`, one entry per parameter, same order.
    pub optimizer: AdamState,
    /// Random-number and data-order state.
    pub data: DataState,
    /// Mean loss of the last mini-batch (NaN before the first step).
    pub last_loss: f32,
    /// Wall-clock time at which the snapshot was taken, ns since the Unix epoch.
    pub wall_clock_unix_ns: u64,
    /// Training time accumulated over all runs, in milliseconds.
    pub train_time_ms: u64,
}

/// The model: named tensors plus a fingerprint of its shape.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ModelState {
    /// Fingerprint of the architecture (names, shapes, activation, loss); a
    /// run refuses to resume from a record whose fingerprint differs from
    /// the one its configuration produces.
    pub fingerprint: u64,
    /// Human-readable description of the architecture, e.g. `mlp 1-1 relu mse`.
    pub description: String,
    /// Parameters under their PyTorch `state_dict` names.
    pub tensors: Vec<Tensor>,
}

/// A named f32 tensor in row-major (C) order, as PyTorch stores it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Tensor {
    /// PyTorch name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape, outermost dimension first (`[out, in]` for a Linear weight).
    pub shape: Vec<u64>,
    /// Values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// Mirrors `torch.optim.Adam.state_dict()`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AdamState {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// One entry per model tensor, in the same order.
    pub params: Vec<AdamParamState>,
}

/// Per-parameter Adam state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AdamParamState {
    /// Name of the parameter this state belongs to.
    pub name: String,
    /// Number of optimizer steps applied to this parameter.
    pub step: u64,
    /// First moment, same shape as the parameter.
    pub exp_avg: Vec<f32>,
    /// Second moment, same shape as the parameter.
    pub exp_avg_sq: Vec<f32>,
}

/// Data order and random state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct DataState {
    /// The run's seed (from the configuration).
    pub seed: u64,
    /// Number of training examples; the order of epoch `e` is a permutation
    /// of `0..dataset_len` derived from `(seed, e)`.
    pub dataset_len: u64,
    /// State of the trainer's general-purpose generator (xoshiro256**).
    pub rng: [u64; 4],
}

impl ArchivedTensor {
    /// The tensor values, borrowed from the archive without copying.
    pub fn values(&self) -> &[f32] {
        as_f32_slice(self.data.as_slice())
    }

    /// The shape as plain integers.
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().map(|d| d.to_native()).collect()
    }
}

impl ArchivedAdamParamState {
    /// First moment, borrowed.
    pub fn exp_avg(&self) -> &[f32] {
        as_f32_slice(self.exp_avg.as_slice())
    }
    /// Second moment, borrowed.
    pub fn exp_avg_sq(&self) -> &[f32] {
        as_f32_slice(self.exp_avg_sq.as_slice())
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("epochwal reads f32 tensors in place and supports little-endian targets only");

const _: () = {
    assert!(std::mem::size_of::<rkyv::rend::f32_le>() == std::mem::size_of::<f32>());
    assert!(std::mem::align_of::<rkyv::rend::f32_le>() == std::mem::align_of::<f32>());
};

fn as_f32_slice(archived: &[rkyv::rend::f32_le]) -> &[f32] {
    // SAFETY: on a little-endian target (checked at compile time above)
    // `f32_le` is a transparent wrapper over the bytes of an `f32` with the
    // same size and alignment (asserted above), so the slice can be viewed as
    // `[f32]`; every bit pattern is a valid f32, and the lifetime is kept.
    unsafe { std::slice::from_raw_parts(archived.as_ptr().cast::<f32>(), archived.len()) }
}

impl TrainState {
    /// Total bytes of tensor data (model plus optimizer moments).
    pub fn tensor_bytes(&self) -> u64 {
        let model: usize = self.model.tensors.iter().map(|t| t.data.len()).sum();
        let opt: usize = self
            .optimizer
            .params
            .iter()
            .map(|p| p.exp_avg.len() + p.exp_avg_sq.len())
            .sum();
        ((model + opt) * std::mem::size_of::<f32>()) as u64
    }
}
