//! Schema version 2, the current one.
//!
//! New since version 1 (FORMAT.md §4.4 gives the defaults an upgraded
//! version-1 record gets):
//! - [`TrainState::scaling`]: the standardisation applied to the dataset's
//!   inputs and targets, so that an exported model can be applied to raw data;
//! - [`TrainState::import`]: the content hash of the `--init-from` file a run
//!   started from, so that a restart with the same flag resumes and one with
//!   another file is refused;
//! - [`ModelState::architecture`]: the canonical text the fingerprint hashes,
//!   so that a record whose fingerprint disagrees with its tensors is caught.
//!
//! Types that did not change are version 1's, re-exported. Once a version 3
//! exists this file is frozen like `v1.rs`.

use rkyv::{Archive, Deserialize, Serialize};

pub use super::v1::{
    AdamParamState, AdamState, ArchivedAdamParamState, ArchivedAdamState, ArchivedDataState,
    ArchivedTensor, DataState, Tensor,
};

/// The schema version these types describe.
pub const VERSION: u32 = 2;

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
    /// How the dataset was standardised before training.
    pub scaling: Scaling,
    /// The file the run's weights were imported from, if any.
    pub import: Import,
}

/// The model: named tensors plus a fingerprint of its shape.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ModelState {
    /// Fingerprint of the architecture: FNV-1a 64 of `architecture`. A run
    /// refuses to resume from a record whose fingerprint differs from the
    /// one its configuration produces.
    pub fingerprint: u64,
    /// Human-readable description of the architecture, e.g. `mlp 1-1 relu mse`.
    pub description: String,
    /// Parameters under their PyTorch `state_dict` names.
    pub tensors: Vec<Tensor>,
    /// The canonical text the fingerprint is the hash of: one line per
    /// fact, among them `tensor=NAME:[d0, d1]` for each tensor in order.
    /// Empty in records upgraded from version 1 (not known there).
    pub architecture: String,
}

/// Per-column standardisation `x' = (x - mean) / std` applied to the raw
/// data before training (population statistics of the dataset itself; a
/// constant column has `std = 1`). Empty vectors: not standardised.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Scaling {
    /// Mean of each input column, `input_dim` values or none.
    pub input_mean: Vec<f32>,
    /// Standard deviation of each input column, as many as `input_mean`.
    pub input_std: Vec<f32>,
    /// Mean of each regression target column, or none.
    pub target_mean: Vec<f32>,
    /// Standard deviation of each target column, as many as `target_mean`.
    pub target_std: Vec<f32>,
}

/// Where the run's initial state came from.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Import {
    /// SHA-256 of the bytes of the `--init-from` file; all zero when the
    /// run started from its own random initialisation.
    pub sha256: [u8; 32],
    /// The path it was given as, for messages (empty without an import).
    pub source: String,
}

impl From<super::v1::ModelState> for ModelState {
    fn from(m: super::v1::ModelState) -> ModelState {
        ModelState {
            fingerprint: m.fingerprint,
            description: m.description,
            tensors: m.tensors,
            architecture: String::new(),
        }
    }
}

/// The upgrade from version 1: no scaling recorded, no import, architecture
/// unknown.
impl From<super::v1::TrainState> for TrainState {
    fn from(s: super::v1::TrainState) -> TrainState {
        TrainState {
            schema_version: VERSION,
            epoch: s.epoch,
            global_step: s.global_step,
            step_in_epoch: s.step_in_epoch,
            model: s.model.into(),
            optimizer: s.optimizer,
            data: s.data,
            last_loss: s.last_loss,
            wall_clock_unix_ns: s.wall_clock_unix_ns,
            train_time_ms: s.train_time_ms,
            scaling: Scaling::default(),
            import: Import::default(),
        }
    }
}
