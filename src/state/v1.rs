//! Schema version 1, frozen.
//!
//! These are the types of every record whose header says schema version 1
//! (or 0, written before the header carried the version). **Never edit this
//! file**: logs written by binaries of this schema must stay readable by every
//! later binary. A schema change adds `v2.rs` (a copy of the newest module,
//! then changed) and an upgrade from this one; see "How to bump the schema" in
//! `src/state.rs`.

use rkyv::{Archive, Deserialize, Serialize};

/// The schema version these types describe.
pub const VERSION: u32 = 1;

/// Everything needed to continue training exactly where it stopped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TrainState {
    /// The schema version at the time of writing ([`VERSION`] here).
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
