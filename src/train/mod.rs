//! The trainer: an MLP trained with Adam on a dataset, deterministically.
//!
//! The whole training state lives in one [`TrainState`] (weights, Adam
//! moments, counters, data position, random state) that the daemon archives
//! with rkyv straight into the log; [`Trainer::state`] lends it out between
//! steps, so a snapshot copies nothing beforehand. [`Trainer::restore`] puts
//! an archived state back so that continuing is bit-identical to never having
//! stopped.
//!
//! Determinism rests on three rules: every sum is taken in a fixed order
//! (single-threaded, no BLAS, see [`model`]); every random number comes from
//! an explicit generator derived from the seed (see [`rng`]); and the data
//! order of an epoch depends only on `(seed, epoch)`, so the position inside
//! the epoch (`step_in_epoch`) is all that must be stored about the data.
//!
//! Configuration (TOML, every key optional except `dataset.kind` and the keys
//! its kind requires):
//!
//! ```toml
//! batch_size = 32          # examples per step
//! seed = 0                 # initial weights, data order, generated data
//!
//! [dataset]
//! kind = "synthetic"       # "seed" | "csv" | "synthetic" | "diabetes" | "winequality"
//! n = 4096
//! input_dim = 64
//! output_dim = 8
//!
//! [model]
//! hidden = [256, 256]      # widths of the hidden layers
//! activation = "relu"      # "relu" | "tanh" | "identity" (alias "none")
//! loss = "mse"             # "mse" | "cross_entropy"
//! names = "layers"         # "layers" | "fc" (single Linear layer only)
//!
//! [optimizer]
//! lr = 0.001
//! betas = [0.9, 0.999]
//! eps = 1e-8
//! weight_decay = 0.0
//! ```

pub mod adam;
pub mod data;
mod guard;
pub mod linalg;
pub mod model;
pub mod pool;
pub mod rng;
mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::{
    AdamParamState, AdamState, ArchivedTrainState, DataState, Import, ModelState, TrainState,
    SCHEMA_VERSION,
};
use adam::{adam_update, AdamHyper, AdamStepScalars};
use data::{Dataset, Targets};
pub use guard::{MemoryPlan, NonFinite, SavedNumbers};
pub use model::{Activation, Loss};
use model::{BatchTargets, Mlp, MlpSpec};
use pool::{Pool, SharedMut};
use rng::{stream, Xoshiro256};
pub use snapshot::Snapshot;

/// A training run's configuration: `[dataset]`, `[model]`, `[optimizer]`,
/// `batch_size` and `seed`. Unknown keys are errors that name the key.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The training data (`[dataset]`, required).
    pub dataset: DatasetConfig,
    /// The network (`[model]`); default: a linear model with MSE.
    #[serde(default)]
    pub model: ModelConfig,
    /// Adam's hyperparameters (`[optimizer]`); default: PyTorch's.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Examples per optimizer step; the last batch of an epoch may be
    /// smaller. Default 32.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Seed of the initial weights, the data order and generated data.
    /// Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Threads for the products and the optimizer (the calling thread
    /// included). Results do not depend on it. Default 1.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Share of the examples held out for validation, in `[0, 0.9]`; which
    /// ones is fixed by the seed. 0 trains on everything and reports no
    /// validation figures. Default 0.1.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// The largest `validation_fraction` accepted.
pub const MAX_VALIDATION_FRACTION: f64 = 0.9;

fn default_batch_size() -> usize {
    32
}
fn default_threads() -> usize {
    1
}

/// Which data to train on, selected by `kind`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetConfig {
    /// The tutorial data: `y = 10 x + 1 + noise` with `x` uniform in
    /// `[-1, 1)`, for the `fc` Linear(1, 1) model (regression, MSE).
    Seed {
        /// Number of examples. Default 256.
        #[serde(default = "default_seed_n")]
        n: usize,
        /// Standard deviation of the (approximately Gaussian) noise added to
        /// `y`. Default 0.01.
        #[serde(default = "default_seed_noise")]
        noise_std: f32,
    },
    /// A CSV file with a header row and numeric columns. By default the
    /// inputs are standardised to zero mean and unit (population) variance
    /// with the file's own statistics, which the records keep and `export`
    /// writes as `input_norm.mean` / `input_norm.std`.
    Csv {
        /// The file (required).
        path: PathBuf,
        /// Target column name(s) (required). With `loss = "cross_entropy"`
        /// exactly one column of integer class labels `0, 1, ...`.
        targets: Vec<String>,
        /// Input columns. Default: every column that is not a target.
        #[serde(default)]
        inputs: Option<Vec<String>>,
        /// Number of classes for cross-entropy. Default: largest label + 1.
        #[serde(default)]
        classes: Option<usize>,
        /// Standardise the input columns. Default true.
        #[serde(default = "yes")]
        standardize_inputs: bool,
        /// Standardise regression targets too. Default false.
        #[serde(default)]
        standardize_targets: bool,
    },
    /// Random inputs and a fixed random linear teacher: its outputs are the
    /// MSE targets, their argmax the cross-entropy classes. The model's size
    /// is set by `model.hidden`; use it for benchmarks of any size.
    Synthetic {
        /// Number of examples. Default 4096.
        #[serde(default = "default_synthetic_n")]
        n: usize,
        /// Input features. Default 64.
        #[serde(default = "default_synthetic_input_dim")]
        input_dim: usize,
        /// Outputs (MSE) or classes (cross-entropy). Default 8.
        #[serde(default = "default_synthetic_output_dim")]
        output_dim: usize,
        /// Standard deviation of noise added to the teacher's outputs.
        /// Default 0.
        #[serde(default)]
        noise_std: f32,
        /// Seed of the data, if it should differ from the run's `seed`.
        /// Default: the run's seed.
        #[serde(default)]
        data_seed: Option<u64>,
    },
    /// The diabetes regression dataset shipped with `linfa-datasets` (10
    /// features, disease progression as target; MSE only).
    Diabetes {
        /// Standardise the input columns. Default true.
        #[serde(default = "yes")]
        standardize_inputs: bool,
        /// Standardise the target. Default false.
        #[serde(default)]
        standardize_targets: bool,
    },
    /// The red wine quality dataset shipped with `linfa-datasets` (11
    /// features, quality 3–8 as class for cross-entropy or value for MSE).
    Winequality {
        /// Standardise the input columns. Default true.
        #[serde(default = "yes")]
        standardize_inputs: bool,
    },
}

fn yes() -> bool {
    true
}

fn default_seed_n() -> usize {
    256
}
fn default_seed_noise() -> f32 {
    0.01
}
fn default_synthetic_n() -> usize {
    4096
}
fn default_synthetic_input_dim() -> usize {
    64
}
fn default_synthetic_output_dim() -> usize {
    8
}

/// Naming scheme of the parameters.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TensorNames {
    /// `layers.0.weight`, `layers.0.bias`, `layers.1.weight`, ...
    #[default]
    Layers,
    /// `fc.weight`, `fc.bias`: the tutorial's single Linear layer.
    Fc,
    /// `0.weight`, `0.bias`, `2.weight`, ...: the names of
    /// `nn.Sequential(Linear, activation, Linear, ..., Linear)`, whose
    /// Linear layers are modules 0, 2, 4, ... (the activations between them
    /// have no parameters).
    Sequential,
}

/// The network: Linear layers of widths `[input, hidden..., output]`, where
/// input and output widths come from the dataset.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Widths of the hidden layers. Default `[]` (a single Linear layer).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer. Default `"relu"`.
    #[serde(default)]
    pub activation: Activation,
    /// Loss. Default `"mse"`.
    #[serde(default)]
    pub loss: Loss,
    /// Parameter names. Default `"layers"`; `"fc"` needs `hidden = []`.
    #[serde(default)]
    pub names: TensorNames,
}

/// `torch.optim.Adam` hyperparameters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Learning rate. Default 1e-3.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `[beta1, beta2]`. Default `[0.9, 0.999]`.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Denominator term. Default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// L2 penalty added to the gradient. Default 0.
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    fn hyper(&self) -> AdamHyper {
        AdamHyper {
            lr: self.lr,
            beta1: self.betas[0],
            beta2: self.betas[1],
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

impl TrainConfig {
    /// The tutorial run: `fc` Linear(1, 1) starting at weight 10 and bias 1,
    /// MSE on 256 noisy points of `y = 10 x + 1`, batches of 32, Adam with
    /// lr 1e-3 and betas (0.5, 0.999), seed 0.
    pub fn seed_tutorial() -> TrainConfig {
        TrainConfig {
            dataset: DatasetConfig::Seed {
                n: default_seed_n(),
                noise_std: default_seed_noise(),
            },
            model: ModelConfig {
                hidden: Vec::new(),
                activation: Activation::Identity,
                loss: Loss::Mse,
                names: TensorNames::Fc,
            },
            optimizer: OptimizerConfig {
                betas: [0.5, 0.999],
                ..OptimizerConfig::default()
            },
            batch_size: 32,
            seed: 0,
            threads: 1,
            validation_fraction: default_validation_fraction(),
        }
    }
}

/// Errors of the trainer. Each message names what is wrong and where.
#[derive(thiserror::Error, Debug)]
pub enum TrainError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A data file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A CSV file has bad content.
    #[error("{}:{line}: column {column}: {message}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Column name (`-` when the whole line is concerned).
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A dataset cannot be built as configured.
    #[error("dataset {kind}: {message}")]
    Dataset {
        /// The dataset kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// The record was written with a schema this build does not read.
    #[error(
        "checkpoint schema version {found} is not supported (this build reads version {expected})"
    )]
    SchemaVersion {
        /// Version in the record.
        found: u32,
        /// [`SCHEMA_VERSION`].
        expected: u32,
    },
    /// The record belongs to a different architecture or dataset shape.
    #[error(
        "checkpoint is for a different model: record fingerprint {record:016x} ({record_description}), \
         configuration fingerprint {config:016x} ({config_description})"
    )]
    Fingerprint {
        /// Fingerprint in the record.
        record: u64,
        /// Description in the record.
        record_description: String,
        /// Fingerprint of the current configuration.
        config: u64,
        /// Description of the current configuration.
        config_description: String,
    },
    /// The record was written with another seed, so data order and generated
    /// data would differ from the run that wrote it.
    #[error(
        "checkpoint was written with seed {record} but the configuration has seed {config}; \
         set seed = {record} to resume it"
    )]
    Seed {
        /// Seed in the record.
        record: u64,
        /// Seed in the configuration.
        config: u64,
    },
    /// The record's tensors or counters do not fit the model.
    #[error("checkpoint does not fit the model: {0}")]
    StateMismatch(String),
    /// Warm-start tensors do not match the model's parameters.
    #[error("warm-start tensors do not match the model: {0}")]
    InitFrom(String),
    /// The run would not fit in memory (the message says why).
    #[error("{0}")]
    Memory(String),
    /// Bad argument to [`Trainer::predict`].
    #[error("invalid input: {0}")]
    Input(String),
}

/// What one [`Trainer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss of the mini-batch (before the update).
    pub loss: f32,
    /// This step was the last of an epoch.
    pub epoch_completed: bool,
    /// Epochs completed after this step.
    pub epoch: u64,
    /// Optimizer steps taken since the start of the run, this one included.
    pub global_step: u64,
}

/// Validation figures of the model as it is after some epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    /// Epochs completed when they were computed.
    pub epoch: u64,
    /// Mean loss over the validation examples (the training loss function).
    pub loss: f32,
    /// Share of validation examples classified right (cross-entropy only).
    pub accuracy: Option<f32>,
}

/// Examples per forward pass when evaluating.
const EVAL_BATCH: usize = 512;

/// A training run in memory.
pub struct Trainer {
    cfg: TrainConfig,
    /// The live, checkpointable state: parameters and Adam moments live here.
    /// Shared with [`Snapshot`]s; written only through [`snapshot::unique`].
    state: Arc<TrainState>,
    /// Counts the snapshots alive.
    gate: Arc<snapshot::Gate>,
    /// Time spent waiting for snapshots to be dropped before a write, since
    /// [`Trainer::take_snapshot_wait`] was last called.
    snapshot_wait: std::time::Duration,
    mlp: Mlp,
    pool: Arc<Pool>,
    /// The optimizer step's pieces: `(tensor, start, end)`.
    adam_pieces: Vec<(usize, usize, usize)>,
    data: Dataset,
    /// Held-out examples (`n == 0` without validation).
    val: Dataset,
    last_validation: Option<Validation>,
    hyper: AdamHyper,
    /// Data order of `perm_epoch`, regenerated when the epoch changes.
    perm: Vec<usize>,
    perm_epoch: u64,
    fingerprint: u64,
    description: String,
    // Reused batch buffers.
    batch_x: Vec<f32>,
    batch_y: Vec<f32>,
    batch_c: Vec<u32>,
    /// False while the weights are zeros awaiting a restore (see
    /// [`Trainer::new_for_restore_within`]).
    weights_initialised: bool,
}

impl std::fmt::Debug for Trainer {
    /// A summary: the derived form would print every weight and example.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.description)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .field("dataset", &self.data.signature())
            .field("epoch", &self.state.epoch)
            .field("step_in_epoch", &self.state.step_in_epoch)
            .field("global_step", &self.state.global_step)
            .finish_non_exhaustive()
    }
}

/// Elements per piece of the optimizer step.
const ADAM_PIECE: usize = 1 << 16;
/// Parameter counts below which the optimizer step stays on one thread.
const ADAM_PARALLEL_MIN: usize = 1 << 17;

/// Cuts every tensor into pieces of at most [`ADAM_PIECE`] elements.
fn adam_pieces(tensors: &[crate::state::Tensor]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (t, tensor) in tensors.iter().enumerate() {
        let n = tensor.data.len();
        let mut a = 0;
        while a < n {
            let b = (a + ADAM_PIECE).min(n);
            out.push((t, a, b));
            a = b;
        }
    }
    out
}

/// The weights a fresh run starts from: drawn from the seed, except the
/// tutorial's recognisable `fc` start on the seed data (y = 10 x + 1).
fn initial_tensors(spec: &MlpSpec, seed: u64, is_seed_data: bool) -> Vec<crate::state::Tensor> {
    let mut init_rng = Xoshiro256::derive(seed, stream::INIT, 0);
    let mut tensors = spec.init_tensors(&mut init_rng);
    if is_seed_data && spec.names == TensorNames::Fc && spec.sizes == [1, 1] {
        tensors[0].data[0] = 10.0;
        tensors[1].data[0] = 1.0;
    }
    tensors
}

impl Trainer {
    /// Starts a fresh run (epoch 0, step 0): builds the dataset and the
    /// model, initialises the weights from the seed (the `fc` tutorial model
    /// starts at weight 10, bias 1) and the Adam moments at zero.
    pub fn new(cfg: &TrainConfig) -> Result<Trainer, TrainError> {
        Trainer::new_within(cfg, &|_| Ok(()))
    }

    /// [`Trainer::new`], but first asks `check` whether the run's
    /// [`MemoryPlan`] fits; its error is returned as [`TrainError::Memory`]
    /// before the model (or synthetic data) is allocated.
    pub fn new_within(
        cfg: &TrainConfig,
        check: &dyn Fn(&MemoryPlan) -> Result<(), String>,
    ) -> Result<Trainer, TrainError> {
        Trainer::build(cfg, check, true)
    }

    /// [`Trainer::new_within`] for a run that will most likely
    /// [`Trainer::restore`] a record: the weights are left at zero (memory
    /// the system hands out already zeroed, so they cost nothing until
    /// written) instead of being drawn from the seed only to be
    /// overwritten. Call [`Trainer::initialise_weights`] if there turns out
    /// to be nothing to restore; the first [`Trainer::step`] does it too.
    pub fn new_for_restore_within(
        cfg: &TrainConfig,
        check: &dyn Fn(&MemoryPlan) -> Result<(), String>,
    ) -> Result<Trainer, TrainError> {
        Trainer::build(cfg, check, false)
    }

    /// Draws the initial weights from the seed, exactly as
    /// [`Trainer::new`] does, if they were left for a restore that did not
    /// happen; otherwise does nothing.
    pub fn initialise_weights(&mut self) {
        if self.weights_initialised {
            return;
        }
        let is_seed = matches!(self.cfg.dataset, DatasetConfig::Seed { .. });
        let fresh = initial_tensors(self.mlp.spec(), self.cfg.seed, is_seed);
        for (t, f) in self.state_mut().model.tensors.iter_mut().zip(fresh) {
            t.data = f.data;
        }
        self.weights_initialised = true;
    }

    fn build(
        cfg: &TrainConfig,
        check: &dyn Fn(&MemoryPlan) -> Result<(), String>,
        initialise: bool,
    ) -> Result<Trainer, TrainError> {
        if cfg.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be at least 1".into()));
        }
        if cfg.threads == 0 {
            return Err(TrainError::Config("threads must be at least 1".into()));
        }
        let f = cfg.validation_fraction;
        if !(0.0..=MAX_VALIDATION_FRACTION).contains(&f) {
            return Err(TrainError::Config(format!(
                "validation_fraction must be in [0, {MAX_VALIDATION_FRACTION}], got {f}"
            )));
        }
        let hyper = cfg.optimizer.hyper();
        hyper.validate().map_err(TrainError::Config)?;
        let m = &cfg.model;
        if let Some(i) = m.hidden.iter().position(|&w| w == 0) {
            return Err(TrainError::Config(format!(
                "model.hidden[{i}] is 0: widths must be at least 1"
            )));
        }
        if m.names == TensorNames::Fc && !m.hidden.is_empty() {
            return Err(TrainError::Config(format!(
                "model.names = \"fc\" names a single Linear layer, but model.hidden = {:?} has hidden layers; \
                 use names = \"layers\"",
                m.hidden
            )));
        }
        let is_seed = matches!(cfg.dataset, DatasetConfig::Seed { .. });
        if let Some(plan) = guard::plan_before_data(cfg) {
            check(&plan).map_err(TrainError::Memory)?;
        }
        let data = data::build(&cfg.dataset, m.loss, cfg.seed)?;
        check(&MemoryPlan::new(
            cfg,
            data.n,
            data.input_dim,
            data.output_dim(),
        ))
        .map_err(TrainError::Memory)?;
        let mut sizes = Vec::with_capacity(m.hidden.len() + 2);
        sizes.push(data.input_dim);
        sizes.extend_from_slice(&m.hidden);
        sizes.push(data.output_dim());
        let spec = MlpSpec {
            sizes,
            activation: m.activation,
            loss: m.loss,
            names: m.names,
        };

        let tensors = if initialise {
            initial_tensors(&spec, cfg.seed, is_seed)
        } else {
            spec.zero_tensors()
        };
        let params = tensors
            .iter()
            .map(|t| AdamParamState {
                name: t.name.clone(),
                step: 0,
                exp_avg: vec![0.0; t.data.len()],
                exp_avg_sq: vec![0.0; t.data.len()],
            })
            .collect();

        // The fingerprint describes the whole dataset, so that it does not
        // change with the validation split (which `dataset_len` pins).
        let (fingerprint, description, architecture) = Self::identity(&spec, &data);
        let (data, val) = data.split(cfg.validation_fraction, cfg.seed)?;
        let state = TrainState {
            schema_version: SCHEMA_VERSION,
            epoch: 0,
            global_step: 0,
            step_in_epoch: 0,
            model: ModelState {
                fingerprint,
                description: description.clone(),
                tensors,
                architecture,
            },
            optimizer: AdamState {
                lr: hyper.lr,
                beta1: hyper.beta1,
                beta2: hyper.beta2,
                eps: hyper.eps,
                weight_decay: hyper.weight_decay,
                params,
            },
            data: DataState {
                seed: cfg.seed,
                dataset_len: data.n as u64,
                rng: Xoshiro256::derive(cfg.seed, stream::TRAIN, 0).state(),
            },
            last_loss: f32::NAN,
            wall_clock_unix_ns: 0,
            train_time_ms: 0,
            scaling: data.scaling.clone(),
            import: Import::default(),
            kind: crate::state::KIND_TRAINER,
            general: Default::default(),
        };
        let perm = rng::epoch_permutation(cfg.seed, 0, data.n);
        let adam_pieces = adam_pieces(&state.model.tensors);
        let pool = Arc::new(Pool::new(cfg.threads));
        Ok(Trainer {
            cfg: cfg.clone(),
            state: Arc::new(state),
            gate: Arc::default(),
            snapshot_wait: std::time::Duration::ZERO,
            mlp: Mlp::new(spec, Arc::clone(&pool)),
            pool,
            adam_pieces,
            data,
            val,
            last_validation: None,
            hyper,
            perm,
            perm_epoch: 0,
            fingerprint,
            description,
            batch_x: Vec::new(),
            batch_y: Vec::new(),
            batch_c: Vec::new(),
            weights_initialised: initialise,
        })
    }

    /// Fingerprint, description and canonical text (the fingerprint is its
    /// hash) of an architecture on a dataset shape.
    fn identity(spec: &MlpSpec, data: &Dataset) -> (u64, String, String) {
        let mut canon = String::from("epochwal-mlp-v1\n");
        canon.push_str(&format!(
            "activation={}\nloss={}\n",
            spec.activation.name(),
            spec.loss.name()
        ));
        for (name, shape) in spec.tensor_specs() {
            canon.push_str(&crate::state::architecture_tensor_line(&name, &shape));
            canon.push('\n');
        }
        canon.push_str(&data.signature());
        canon.push('\n');
        let sizes: Vec<String> = spec.sizes.iter().map(|s| s.to_string()).collect();
        // The activation goes between Linear layers: with no hidden layer
        // there is none, whatever the configuration says (the fingerprint
        // above keeps the configured name, so existing logs still resume).
        let activation = if spec.layers() > 1 {
            spec.activation.name()
        } else {
            "linear"
        };
        let description = format!(
            "mlp {} {} {}, {} tensors, {} parameters",
            sizes.join("-"),
            activation,
            spec.loss.name(),
            2 * spec.layers(),
            spec.parameter_count()
        );
        (crate::state::fingerprint_of(&canon), description, canon)
    }

    /// Fingerprint of the architecture: parameter names and shapes,
    /// activation, loss and the dataset's kind and dimensions — not the seed
    /// or the optimizer settings. FNV-1a over a canonical text, so it is the
    /// same in every build.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Human-readable architecture, e.g.
    /// `mlp 1-1 linear mse, 2 tensors, 2 parameters` (no hidden layer, so no
    /// activation) or `mlp 10-64-1 relu mse, 4 tensors, 769 parameters`.
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// The configuration this trainer was built from.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The live training state, up to date after every step. Parameters and
    /// Adam moments live here; serialize it directly.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The state as it is now, to read on another thread without a copy
    /// (the persisting thread serializes it, see
    /// [`crate::wal::Log::begin_append_unfilled`]). The trainer's next
    /// write to its state (in the next step's optimizer update, after its
    /// forward and backward passes) waits until the snapshot is dropped.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(&self.state, &self.gate)
    }

    /// Time the trainer waited for snapshots to be dropped before writing
    /// its state, since the last call; resets it.
    pub fn take_snapshot_wait(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.snapshot_wait)
    }

    /// The state, for writing (see [`snapshot::unique`]).
    fn state_mut(&mut self) -> &mut TrainState {
        snapshot::unique(&mut self.state, &self.gate, &mut self.snapshot_wait)
    }

    /// Mini-batches per epoch: `ceil(n / batch_size)`.
    pub fn steps_per_epoch(&self) -> u64 {
        self.data.n.div_ceil(self.cfg.batch_size) as u64
    }

    /// Records that the run's initial state was imported from a file with
    /// this SHA-256 (kept in every record from now on).
    pub fn set_import(&mut self, sha256: [u8; 32], source: String) {
        self.state_mut().import = Import { sha256, source };
    }

    /// Records the wall-clock time of a snapshot (ns since the Unix epoch)
    /// and the training time accumulated over all runs (ms).
    pub fn set_wall_clock(&mut self, unix_ns: u64, train_time_ms: u64) {
        let s = self.state_mut();
        s.wall_clock_unix_ns = unix_ns;
        s.train_time_ms = train_time_ms;
    }

    /// Replaces the optimizer hyperparameters (for example on a reload of
    /// the configuration); the moments and step counts are kept, as when a
    /// PyTorch user edits `param_groups`.
    pub fn set_optimizer(&mut self, opt: &OptimizerConfig) -> Result<(), TrainError> {
        let hyper = opt.hyper();
        hyper.validate().map_err(TrainError::Config)?;
        self.hyper = hyper;
        self.cfg.optimizer = opt.clone();
        let o = &mut self.state_mut().optimizer;
        o.lr = hyper.lr;
        o.beta1 = hyper.beta1;
        o.beta2 = hyper.beta2;
        o.eps = hyper.eps;
        o.weight_decay = hyper.weight_decay;
        Ok(())
    }

    /// One optimizer step on the next mini-batch of the current epoch:
    /// forward, backward, Adam. After the last batch of an epoch the epoch
    /// counter advances and the position returns to 0.
    pub fn step(&mut self) -> StepOutcome {
        self.initialise_weights();
        let n = self.data.n;
        let bs = self.cfg.batch_size;
        if self.perm_epoch != self.state.epoch {
            self.perm = rng::epoch_permutation(self.state.data.seed, self.state.epoch, n);
            self.perm_epoch = self.state.epoch;
        }
        let start = (self.state.step_in_epoch as usize)
            .saturating_mul(bs)
            .min(n);
        let end = (start + bs).min(n);
        self.data.gather(
            &self.perm[start..end],
            &mut self.batch_x,
            &mut self.batch_y,
            &mut self.batch_c,
        );
        let targets = match self.data.targets {
            Targets::Values { .. } => BatchTargets::Values(&self.batch_y),
            Targets::Classes { .. } => BatchTargets::Classes(&self.batch_c),
        };
        let loss = self
            .mlp
            .forward_backward(&self.state.model.tensors, &self.batch_x, targets);
        self.optimizer_step();
        self.last_validation = None;

        let steps_per_epoch = self.steps_per_epoch();
        let s = self.state_mut();
        s.last_loss = loss;
        s.global_step += 1;
        s.step_in_epoch += 1;
        let epoch_completed = s.step_in_epoch >= steps_per_epoch;
        if epoch_completed {
            s.epoch += 1;
            s.step_in_epoch = 0;
        }
        StepOutcome {
            loss,
            epoch_completed,
            epoch: s.epoch,
            global_step: s.global_step,
        }
    }

    /// Number of (training, validation) examples.
    pub fn split_sizes(&self) -> (usize, usize) {
        (self.data.n, self.val.n)
    }

    /// Evaluates the model as it is now on the validation examples and
    /// remembers the result ([`Trainer::validation`]); `None` without a
    /// validation split. Deterministic: fixed batches, sums in f64 in order.
    pub fn evaluate(&mut self) -> Option<Validation> {
        let n = self.val.n;
        if n == 0 {
            return None;
        }
        let d = self.val.input_dim;
        let (mut total, mut correct) = (0.0f64, 0usize);
        let mut start = 0;
        while start < n {
            let end = (start + EVAL_BATCH).min(n);
            let out = self.mlp.forward(
                &self.state.model.tensors,
                &self.val.inputs[start * d..end * d],
            );
            match &self.val.targets {
                Targets::Values { dim, data } => {
                    total += model::squared_error_sum(out, &data[start * dim..end * dim]);
                }
                Targets::Classes { classes, labels } => {
                    let (t, c) = model::cross_entropy_sum(out, &labels[start..end], *classes);
                    total += t;
                    correct += c;
                }
            }
            start = end;
        }
        let (loss, accuracy) = match &self.val.targets {
            Targets::Values { dim, .. } => ((total / (n * dim) as f64) as f32, None),
            Targets::Classes { .. } => (
                (total / n as f64) as f32,
                Some((correct as f64 / n as f64) as f32),
            ),
        };
        let v = Validation {
            epoch: self.state.epoch,
            loss,
            accuracy,
        };
        self.last_validation = Some(v);
        Some(v)
    }

    /// The last [`Trainer::evaluate`] result, if the weights have not
    /// changed since (no step taken after it).
    pub fn validation(&self) -> Option<Validation> {
        self.last_validation
    }

    /// Adam on every parameter with the gradients of the last
    /// forward-backward pass, in pieces spread over the pool. Every element
    /// is updated by the same arithmetic wherever it runs.
    fn optimizer_step(&mut self) {
        // The first write of a step: waits here for a snapshot still being
        // copied (see `snapshot.rs`).
        let state = snapshot::unique(&mut self.state, &self.gate, &mut self.snapshot_wait);
        let mut views = Vec::with_capacity(state.model.tensors.len());
        let crate::state::TrainState {
            model, optimizer, ..
        } = state;
        for (t, st) in model.tensors.iter_mut().zip(optimizer.params.iter_mut()) {
            st.step += 1;
            assert_eq!(st.exp_avg.len(), t.data.len(), "exp_avg of {}", st.name);
            assert_eq!(
                st.exp_avg_sq.len(),
                t.data.len(),
                "exp_avg_sq of {}",
                st.name
            );
            views.push((
                AdamStepScalars::new(&self.hyper, st.step),
                SharedMut::new(&mut t.data),
                SharedMut::new(&mut st.exp_avg),
                SharedMut::new(&mut st.exp_avg_sq),
            ));
        }
        let grads = self.mlp.grads();
        let pieces = &self.adam_pieces;
        let job = |i: usize| {
            let (t, a, b) = pieces[i];
            let (scalars, p, m, v) = views[t];
            // SAFETY: the pieces of one tensor are disjoint ranges inside
            // it (see `adam_pieces`), each piece runs once, and the tensors
            // outlive the job; `grads` is only read.
            unsafe {
                adam_update(
                    &scalars,
                    p.slice(a, b - a),
                    &grads[t][a..b],
                    m.slice(a, b - a),
                    v.slice(a, b - a),
                );
            }
        };
        let total: usize = pieces.iter().map(|&(_, a, b)| b - a).sum();
        if total < ADAM_PARALLEL_MIN {
            (0..pieces.len()).for_each(job);
        } else {
            self.pool.run(pieces.len(), &job);
        }
    }

    /// Runs the model on `inputs` (`[batch, input_dim]`, in the model's input
    /// space, i.e. after any standardisation) and returns its outputs
    /// (`[batch, output_dim]`: predictions, or logits for cross-entropy).
    pub fn predict(&mut self, inputs: &[f32]) -> Result<Vec<f32>, TrainError> {
        let d = self.data.input_dim;
        if inputs.is_empty() || inputs.len() % d != 0 {
            return Err(TrainError::Input(format!(
                "expected a multiple of {d} input values (input_dim), got {}",
                inputs.len()
            )));
        }
        Ok(self.mlp.forward(&self.state.model.tensors, inputs).to_vec())
    }

    /// Continues from an archived state (for example the newest record of
    /// the log). Refuses a record of another schema version, fingerprint or
    /// seed, or whose tensors do not fit; on error nothing is changed.
    /// Otherwise the weights, moments, counters and random state are copied,
    /// so that stepping on is bit-identical to a run that never stopped.
    /// The optimizer hyperparameters stay those of the configuration (the
    /// record's are informational), so a restart may change them on purpose.
    pub fn restore(&mut self, s: &ArchivedTrainState) -> Result<(), TrainError> {
        let version = s.schema_version.to_native();
        if version != SCHEMA_VERSION {
            return Err(TrainError::SchemaVersion {
                found: version,
                expected: SCHEMA_VERSION,
            });
        }
        if s.is_general() {
            return Err(TrainError::StateMismatch(
                "the record holds named tensors written by the Python package (a general \
                 record), not a state of this trainer; give `run` a log of its own"
                    .into(),
            ));
        }
        let record_fp = s.model.fingerprint.to_native();
        if record_fp != self.fingerprint {
            return Err(TrainError::Fingerprint {
                record: record_fp,
                record_description: s.model.description.as_str().to_string(),
                config: self.fingerprint,
                config_description: self.description.clone(),
            });
        }
        let seed = s.data.seed.to_native();
        if seed != self.state.data.seed {
            return Err(TrainError::Seed {
                record: seed,
                config: self.state.data.seed,
            });
        }
        let len = s.data.dataset_len.to_native();
        if len != self.data.n as u64 {
            let all = self.data.n + self.val.n;
            let hint = if len == all as u64 {
                " (the record was written without a validation split: set validation_fraction = 0 to resume it)"
            } else {
                ""
            };
            return Err(TrainError::StateMismatch(format!(
                "record has {len} training examples, the configuration leaves {} of {all} for \
                 training ({} held out by validation_fraction = {}){hint}",
                self.data.n, self.val.n, self.cfg.validation_fraction
            )));
        }
        let step_in_epoch = s.step_in_epoch.to_native();
        if step_in_epoch >= self.steps_per_epoch() {
            return Err(TrainError::StateMismatch(format!(
                "record is at step {step_in_epoch} of an epoch, but an epoch has {} steps \
                 (was batch_size changed from the run that wrote it?)",
                self.steps_per_epoch()
            )));
        }
        let ours = &self.state.model.tensors;
        if s.model.tensors.len() != ours.len() {
            return Err(TrainError::StateMismatch(format!(
                "record has {} tensors, the model has {}",
                s.model.tensors.len(),
                ours.len()
            )));
        }
        if s.optimizer.params.len() != ours.len() {
            return Err(TrainError::StateMismatch(format!(
                "record has optimizer state for {} tensors, the model has {}",
                s.optimizer.params.len(),
                ours.len()
            )));
        }
        for ((rt, rp), t) in s
            .model
            .tensors
            .iter()
            .zip(s.optimizer.params.iter())
            .zip(ours)
        {
            let dims = rt.dims();
            if rt.name.as_str() != t.name || dims != t.shape {
                return Err(TrainError::StateMismatch(format!(
                    "record tensor {} {:?} where the model has {} {:?}",
                    rt.name.as_str(),
                    dims,
                    t.name,
                    t.shape
                )));
            }
            let n = t.data.len();
            if rt.values().len() != n {
                return Err(TrainError::StateMismatch(format!(
                    "record tensor {} has {} values, its shape {:?} needs {n}",
                    t.name,
                    rt.values().len(),
                    dims
                )));
            }
            if rp.name.as_str() != t.name || rp.exp_avg().len() != n || rp.exp_avg_sq().len() != n {
                return Err(TrainError::StateMismatch(format!(
                    "record optimizer state {} ({} / {} moment values) does not fit tensor {} ({n} values)",
                    rp.name.as_str(),
                    rp.exp_avg().len(),
                    rp.exp_avg_sq().len(),
                    t.name
                )));
            }
        }

        // Scaling: a record that kept it must have been trained on data
        // scaled the same way (records upgraded from schema 1 did not keep it).
        let sc = &s.scaling;
        let kept = !(sc.input_mean.is_empty()
            && sc.input_std.is_empty()
            && sc.target_mean.is_empty()
            && sc.target_std.is_empty());
        if kept {
            let ours = &self.state.scaling;
            let same = |a: &rkyv::vec::ArchivedVec<rkyv::rend::f32_le>, b: &[f32]| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.to_native().to_bits() == y.to_bits())
            };
            if !(same(&sc.input_mean, &ours.input_mean)
                && same(&sc.input_std, &ours.input_std)
                && same(&sc.target_mean, &ours.target_mean)
                && same(&sc.target_std, &ours.target_std))
            {
                return Err(TrainError::StateMismatch(
                    "the dataset's standardisation (column means and stds) differs from the \
                     record's: the data or the dataset.standardize_* options changed since the \
                     run was started"
                        .to_string(),
                ));
            }
        }

        // Everything checked: copy.
        let st = snapshot::unique(&mut self.state, &self.gate, &mut self.snapshot_wait);
        st.import = Import {
            sha256: s.import.sha256,
            source: s.import.source.as_str().to_string(),
        };
        // The copy is spread over the training threads, in the optimizer
        // step's pieces: on a restart it stands between recovery and the
        // first step, and most of its time is the first write to each page
        // of the buffers it fills, which the threads take in parallel.
        let mut views = Vec::with_capacity(st.model.tensors.len());
        for ((rt, rp), (t, p)) in s.model.tensors.iter().zip(s.optimizer.params.iter()).zip(
            st.model
                .tensors
                .iter_mut()
                .zip(st.optimizer.params.iter_mut()),
        ) {
            p.step = rp.step.to_native();
            views.push((
                [rt.values(), rp.exp_avg(), rp.exp_avg_sq()],
                [
                    SharedMut::new(&mut t.data),
                    SharedMut::new(&mut p.exp_avg),
                    SharedMut::new(&mut p.exp_avg_sq),
                ],
            ));
        }
        let pieces = &self.adam_pieces;
        let job = |i: usize| {
            let (t, a, b) = pieces[i];
            let (from, to) = &views[t];
            for (src, dst) in from.iter().zip(to) {
                // SAFETY: the pieces of one tensor are disjoint ranges inside
                // it (see `adam_pieces`), each piece runs once, every
                // destination has the length of its tensor (checked above
                // against the record's, which `src` has), and the buffers
                // outlive the job.
                unsafe { dst.slice(a, b - a) }.copy_from_slice(&src[a..b]);
            }
        };
        self.pool.run(pieces.len(), &job);
        st.epoch = s.epoch.to_native();
        st.global_step = s.global_step.to_native();
        st.step_in_epoch = step_in_epoch;
        st.data.rng = [
            s.data.rng[0].to_native(),
            s.data.rng[1].to_native(),
            s.data.rng[2].to_native(),
            s.data.rng[3].to_native(),
        ];
        st.last_loss = s.last_loss.to_native();
        st.wall_clock_unix_ns = s.wall_clock_unix_ns.to_native();
        st.train_time_ms = s.train_time_ms.to_native();
        if self.perm_epoch != st.epoch {
            self.perm = rng::epoch_permutation(st.data.seed, st.epoch, self.data.n);
            self.perm_epoch = st.epoch;
        }
        self.last_validation = None;
        self.weights_initialised = true;
        Ok(())
    }

    /// Warm start: replaces the weights by name with `(name, shape, values)`
    /// triples (for example from a safetensors file). Every parameter must be
    /// given exactly once with its shape; otherwise the error lists the
    /// missing, unexpected and mis-shaped names and nothing is changed. The
    /// optimizer state and counters are not touched (call this right after
    /// [`Trainer::new`] for a fresh optimizer).
    pub fn init_from(
        &mut self,
        tensors: &[(String, Vec<u64>, Vec<f32>)],
    ) -> Result<(), TrainError> {
        let ours = &self.state.model.tensors;
        let mut problems = Vec::new();
        let mut index = vec![None; ours.len()];
        for (k, (name, shape, values)) in tensors.iter().enumerate() {
            match ours.iter().position(|t| &t.name == name) {
                None => problems.push(format!("unexpected tensor {name}")),
                Some(i) => {
                    if index[i].is_some() {
                        problems.push(format!("tensor {name} given twice"));
                        continue;
                    }
                    index[i] = Some(k);
                    let want = &ours[i].shape;
                    if shape != want {
                        problems.push(format!(
                            "{name} has shape {shape:?}, the model needs {want:?}"
                        ));
                    } else if values.len() != ours[i].data.len() {
                        problems.push(format!(
                            "{name} has {} values, its shape {shape:?} needs {}",
                            values.len(),
                            ours[i].data.len()
                        ));
                    }
                }
            }
        }
        for (t, k) in ours.iter().zip(&index) {
            if k.is_none() {
                problems.push(format!("missing tensor {} {:?}", t.name, t.shape));
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::InitFrom(problems.join("; ")));
        }
        for (t, k) in self.state_mut().model.tensors.iter_mut().zip(index) {
            if let Some(k) = k {
                t.data.copy_from_slice(&tensors[k].2);
            }
        }
        Ok(())
    }

    /// Warm start of the optimizer: sets Adam's step and moments of every
    /// parameter, `adam[i]` for the `i`-th parameter in `state_dict` order.
    /// Each moment must have its parameter's shape; a missing entry, an
    /// extra one or a wrong shape is an error listing every problem, and
    /// nothing is changed.
    pub fn init_adam(&mut self, adam: &[AdamInit]) -> Result<(), TrainError> {
        let ours = &self.state.model.tensors;
        let mut problems = Vec::new();
        if adam.len() != ours.len() {
            problems.push(format!(
                "the file has Adam state for {} parameters, the model has {}",
                adam.len(),
                ours.len()
            ));
        }
        for (i, (a, t)) in adam.iter().zip(ours).enumerate() {
            for (what, (shape, values)) in [("exp_avg", &a.exp_avg), ("exp_avg_sq", &a.exp_avg_sq)]
            {
                if shape != &t.shape || values.len() != t.data.len() {
                    problems.push(format!(
                        "Adam {what} of parameter {i} ({}) has shape {shape:?}, the parameter {:?}",
                        t.name, t.shape
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::InitFrom(problems.join("; ")));
        }
        for (a, p) in adam
            .iter()
            .zip(self.state_mut().optimizer.params.iter_mut())
        {
            p.step = a.step;
            p.exp_avg.copy_from_slice(&a.exp_avg.1);
            p.exp_avg_sq.copy_from_slice(&a.exp_avg_sq.1);
        }
        Ok(())
    }
}

/// Adam state of one parameter for [`Trainer::init_adam`]: the step and the
/// two moments as `(shape, values)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamInit {
    /// Steps taken.
    pub step: u64,
    /// First moment.
    pub exp_avg: (Vec<u64>, Vec<f32>),
    /// Second moment.
    pub exp_avg_sq: (Vec<u64>, Vec<f32>),
}

#[cfg(test)]
mod tests;
