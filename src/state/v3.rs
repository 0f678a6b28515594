//! Schema version 3, the current one.
//!
//! New since version 2 (FORMAT.md §4.4 gives the defaults an upgraded
//! version-2 record gets):
//! - [`TrainState::kind`]: what the record holds. [`KIND_TRAINER`] is the
//!   daemon's own trainer (everything of version 2); [`KIND_GENERAL`] is a
//!   record of the Python package: any named tensors with their dtype and
//!   shape plus one JSON metadata document, in [`TrainState::general`],
//!   while the trainer's parts stay empty.
//! - [`General`]: those tensors, the document, and the fields of a
//!   multi-rank job (`world_size`, `rank`, `job_id`; zero and empty in a
//!   single-process job).
//!
//! Types that did not change are version 2's (and 1's), re-exported. Once a
//! version 4 exists this file is frozen like `v1.rs` and `v2.rs`.

use std::sync::Arc;

use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Positional, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

pub use super::v1::{
    AdamParamState, AdamState, ArchivedAdamParamState, ArchivedAdamState, ArchivedDataState,
    ArchivedTensor, DataState, Tensor,
};
pub use super::v2::{
    ArchivedImport, ArchivedModelState, ArchivedScaling, Import, ModelState, Scaling,
};

/// The schema version these types describe.
pub const VERSION: u32 = 3;

/// [`TrainState::kind`] of a record written by the daemon's trainer.
pub const KIND_TRAINER: u32 = 0;
/// [`TrainState::kind`] of a record of named tensors and a metadata
/// document ([`General`]), written by the Python package.
pub const KIND_GENERAL: u32 = 1;

/// Where the writer places the first byte of every general tensor's data,
/// counted from the first payload byte (itself page-aligned in the file):
/// so that a reader can view the bytes as any element type in place. A
/// reader must not rely on it (validation does not check it).
pub const TENSOR_DATA_ALIGN: usize = 64;

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
    /// Empty in a general record.
    pub model: ModelState,
    /// State of `torch.optim.Adam`, one entry per parameter, same order.
    /// No parameters in a general record.
    pub optimizer: AdamState,
    /// Random-number and data-order state of the trainer.
    pub data: DataState,
    /// Mean loss of the last mini-batch (NaN when not known).
    pub last_loss: f32,
    /// Wall-clock time at which the snapshot was taken, ns since the Unix epoch.
    pub wall_clock_unix_ns: u64,
    /// Training time accumulated over all runs, in milliseconds.
    pub train_time_ms: u64,
    /// How the dataset was standardised before training.
    pub scaling: Scaling,
    /// The file the run's weights were imported from, if any.
    pub import: Import,
    /// [`KIND_TRAINER`] or [`KIND_GENERAL`].
    pub kind: u32,
    /// The named tensors and metadata of a general record; empty in a
    /// trainer record.
    pub general: General,
}

/// The contents of a general record.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct General {
    /// Named tensors, in the order they were given; names are unique.
    pub tensors: Vec<NamedTensor>,
    /// A JSON document (an object), UTF-8: optimizer hyperparameters,
    /// scheduler state and any plain values. Empty in a trainer record.
    pub meta: String,
    /// The job this log belongs to when it is one rank of many; empty
    /// otherwise.
    pub job_id: String,
    /// Number of ranks of the job; 0 when the record is not part of a
    /// multi-rank job.
    pub world_size: u32,
    /// This log's rank in the job, below `world_size` (0 without a job).
    pub rank: u32,
}

/// One named tensor of any element type.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct NamedTensor {
    /// The name (`model.fc.weight`, `optimizer.state.0.exp_avg`, ...).
    pub name: String,
    /// The element type by its safetensors name (`F32`, `BF16`, `I64`,
    /// `BOOL`, ...); see [`dtype_size`].
    pub dtype: String,
    /// The shape; `[]` for a scalar.
    pub shape: Vec<u64>,
    /// The elements in row-major (C) order, little-endian, exactly
    /// `product(shape) * dtype_size(dtype)` bytes.
    pub data: TensorBytes,
}

/// The element types a general tensor may have, by their safetensors
/// names, with their sizes in bytes. `BOOL` is one byte, 0 or 1.
pub const DTYPES: [(&str, usize); 15] = [
    ("BOOL", 1),
    ("U8", 1),
    ("I8", 1),
    ("F8_E4M3", 1),
    ("F8_E5M2", 1),
    ("I16", 2),
    ("U16", 2),
    ("F16", 2),
    ("BF16", 2),
    ("I32", 4),
    ("U32", 4),
    ("F32", 4),
    ("I64", 8),
    ("U64", 8),
    ("F64", 8),
];

/// The size in bytes of one element of `dtype`, or `None` for a name that
/// is not in [`DTYPES`].
pub fn dtype_size(dtype: &str) -> Option<usize> {
    DTYPES.iter().find(|(n, _)| *n == dtype).map(|(_, s)| *s)
}

/// The bytes of one tensor: owned (after deserializing), or shared with
/// the memory the caller keeps them in (a torch tensor's buffer, for the
/// Python package), so that writing a record copies them exactly once,
/// straight into the log. Archived as a `Vec<u8>` whose first byte is
/// placed at a multiple of [`TENSOR_DATA_ALIGN`] from the start of the
/// archive.
#[derive(Clone)]
pub struct TensorBytes(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    Shared(Arc<dyn AsRef<[u8]> + Send + Sync>),
}

impl TensorBytes {
    /// Bytes that live somewhere else, read when the record is written.
    pub fn shared(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> TensorBytes {
        TensorBytes(Repr::Shared(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Shared(s) => (**s).as_ref(),
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl From<Vec<u8>> for TensorBytes {
    fn from(v: Vec<u8>) -> TensorBytes {
        TensorBytes(Repr::Owned(v))
    }
}

impl PartialEq for TensorBytes {
    fn eq(&self, other: &TensorBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBytes({} bytes)", self.len())
    }
}

impl Archive for TensorBytes {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for TensorBytes {
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        // rkyv's own `align` pads at most 15 bytes; up to 63 are needed.
        const ZEROS: [u8; TENSOR_DATA_ALIGN] = [0; TENSOR_DATA_ALIGN];
        let padding =
            (TENSOR_DATA_ALIGN - serializer.pos() % TENSOR_DATA_ALIGN) % TENSOR_DATA_ALIGN;
        serializer.write(&ZEROS[..padding])?;
        ArchivedVec::serialize_from_slice(self.as_slice(), serializer)
    }
}

impl<D: Fallible + ?Sized> Deserialize<TensorBytes, D> for ArchivedVec<u8> {
    fn deserialize(&self, _: &mut D) -> Result<TensorBytes, D::Error> {
        Ok(TensorBytes(Repr::Owned(self.as_slice().to_vec())))
    }
}

impl Default for TrainState {
    /// An empty general record: what the Python package fills in.
    fn default() -> TrainState {
        TrainState {
            schema_version: VERSION,
            epoch: 0,
            global_step: 0,
            step_in_epoch: 0,
            model: ModelState {
                fingerprint: 0,
                description: String::new(),
                tensors: Vec::new(),
                architecture: String::new(),
            },
            optimizer: AdamState {
                lr: 0.0,
                beta1: 0.0,
                beta2: 0.0,
                eps: 0.0,
                weight_decay: 0.0,
                params: Vec::new(),
            },
            data: DataState {
                seed: 0,
                dataset_len: 0,
                rng: [0; 4],
            },
            last_loss: f32::NAN,
            wall_clock_unix_ns: 0,
            train_time_ms: 0,
            scaling: Scaling::default(),
            import: Import::default(),
            kind: KIND_GENERAL,
            general: General::default(),
        }
    }
}

/// The upgrade from version 2: a trainer record with an empty [`General`].
impl From<super::v2::TrainState> for TrainState {
    fn from(s: super::v2::TrainState) -> TrainState {
        TrainState {
            schema_version: VERSION,
            epoch: s.epoch,
            global_step: s.global_step,
            step_in_epoch: s.step_in_epoch,
            model: s.model,
            optimizer: s.optimizer,
            data: s.data,
            last_loss: s.last_loss,
            wall_clock_unix_ns: s.wall_clock_unix_ns,
            train_time_ms: s.train_time_ms,
            scaling: s.scaling,
            import: s.import,
            kind: KIND_TRAINER,
            general: General::default(),
        }
    }
}

/// The upgrade from version 1, through version 2.
impl From<super::v1::TrainState> for TrainState {
    fn from(s: super::v1::TrainState) -> TrainState {
        super::v2::TrainState::from(s).into()
    }
}
