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
//! `little_endian`, `aligned`, `pointer_width_64`); FORMAT.md describes it
//! byte by byte.
//!
//! # Versions
//!
//! Every schema version this build has ever written lives in its own frozen
//! module (`v1`, `v2`, ...); the newest one is re-exported here as *the*
//! schema ([`TrainState`] and its parts) and [`SCHEMA_VERSION`] is its
//! number. The record header carries the version, so a reader knows which
//! archived types to validate a payload with before touching it.
//! [`decode`] is the one place that dispatches on it: a record of the current
//! version is read in place; a record of an older version is validated with
//! its own types, deserialized, upgraded step by step (`v1 -> v2 -> ...`,
//! plain functions with documented defaults for new fields) and re-archived,
//! so every consumer sees an [`ArchivedTrainState`] of the current schema. A
//! version newer than this build is refused, never taken for damage.
//!
//! # How to bump the schema
//!
//! 1. Create `src/state/vN+1.rs` with its `VERSION` and the types that
//!    change (copied from `vN.rs`, then changed); re-export the unchanged
//!    ones from `vN` (as `v2.rs` does with version 1's `Tensor`). Never edit
//!    `vN.rs` again.
//! 2. In `vN+1.rs`, write `impl From<vN::TrainState> for TrainState` (the
//!    upgrade), giving every new field a default documented in FORMAT.md.
//! 3. Here: re-export `vN+1` instead of `vN`; in [`decode`], add the arm
//!    `N => upgrade_from::<vN::TrainState>(payload, N)` and, for versions
//!    older than `N`, chain the upgrades (`vN-1 -> vN -> vN+1`).
//! 4. Write a fixture log with the new binary under
//!    `tests/fixtures/log-schema-vN+1/` (see `tests/schema_upgrade.rs`), add
//!    its resume test, and describe the new layout in FORMAT.md.

use rkyv::rancor;
use rkyv::util::AlignedVec;

pub mod v1;
pub mod v2;
pub mod v3;

pub use v3::{
    dtype_size, AdamParamState, AdamState, ArchivedAdamParamState, ArchivedAdamState,
    ArchivedDataState, ArchivedGeneral, ArchivedImport, ArchivedModelState, ArchivedNamedTensor,
    ArchivedScaling, ArchivedTensor, ArchivedTrainState, DataState, General, Import, ModelState,
    NamedTensor, Scaling, Tensor, TensorBytes, TrainState, DTYPES, KIND_GENERAL, KIND_TRAINER,
    TENSOR_DATA_ALIGN,
};

/// Version of the current schema (the types re-exported above). Written in
/// every record's header and in its payload's `schema_version`.
pub const SCHEMA_VERSION: u32 = v3::VERSION;

/// The oldest schema version this build reads (and upgrades).
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// The element type of every tensor of a trainer record (general records
/// name theirs, see [`DTYPES`]).
pub const DTYPE_F32: &str = "F32";

impl ArchivedNamedTensor {
    /// The tensor's bytes, borrowed from the archive without copying.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The shape as plain integers.
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().map(|d| d.to_native()).collect()
    }

    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|d| d.to_native()).product()
    }
}

impl ArchivedTrainState {
    /// Whether this is a general record (named tensors and a metadata
    /// document, written by the Python package) rather than the trainer's.
    pub fn is_general(&self) -> bool {
        self.kind.to_native() == KIND_GENERAL
    }
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

/// Views archived little-endian f32s as `&[f32]` without copying.
pub fn as_f32_slice(archived: &[rkyv::rend::f32_le]) -> &[f32] {
    // SAFETY: on a little-endian target (checked at compile time above)
    // `f32_le` is a transparent wrapper over the bytes of an `f32` with the
    // same size and alignment (asserted above), so the slice can be viewed as
    // `[f32]`; every bit pattern is a valid f32, and the lifetime is kept.
    unsafe { std::slice::from_raw_parts(archived.as_ptr().cast::<f32>(), archived.len()) }
}

/// FNV-1a 64 of `text`: the model fingerprint is this hash of
/// [`ModelState::architecture`]. Written out here (not a crate) because the
/// function is part of the format and must never change.
pub fn fingerprint_of(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The line of [`ModelState::architecture`] that describes one tensor.
pub fn architecture_tensor_line(name: &str, shape: &[u64]) -> String {
    format!("tensor={name}:{shape:?}")
}

impl ArchivedTrainState {
    /// Checks what rkyv validation cannot: that the record agrees with
    /// itself. Every tensor's data holds the product of its shape values;
    /// tensor names are unique; the optimizer has one entry per tensor, in
    /// the same order and under the same name, with both moments as long as
    /// the tensor. A record that fails is damage (FORMAT.md §5.4): recovery
    /// passes over it and `verify` reports it.
    pub fn check_consistency(&self) -> Result<(), String> {
        self.check_general()?;
        let tensors = self.model.tensors.as_slice();
        let mut names = std::collections::HashSet::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let name = t.name.as_str();
            let product = t
                .shape
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(d.to_native()));
            if product != Some(t.data.len() as u64) {
                return Err(format!(
                    "tensor {i} ({name}) has shape {:?} but {} values",
                    t.dims(),
                    t.data.len()
                ));
            }
            if !names.insert(name) {
                return Err(format!("tensor name {name} appears twice"));
            }
        }
        let architecture = self.model.architecture.as_str();
        if !architecture.is_empty() {
            let fingerprint = self.model.fingerprint.to_native();
            let computed = fingerprint_of(architecture);
            if computed != fingerprint {
                return Err(format!(
                    "model fingerprint {fingerprint:016x} is not the hash of its architecture \
                     ({computed:016x})"
                ));
            }
            let listed = architecture.lines().filter(|l| l.starts_with("tensor="));
            let mut listed_count = 0;
            for (line, t) in listed.zip(tensors) {
                listed_count += 1;
                let want = architecture_tensor_line(t.name.as_str(), &t.dims());
                if line != want {
                    return Err(format!(
                        "the architecture lists `{line}` where the tensors have `{want}`"
                    ));
                }
            }
            let total = architecture
                .lines()
                .filter(|l| l.starts_with("tensor="))
                .count();
            if total != tensors.len() || listed_count != tensors.len() {
                return Err(format!(
                    "the architecture lists {total} tensors, the model has {}",
                    tensors.len()
                ));
            }
        }
        let params = self.optimizer.params.as_slice();
        if params.len() != tensors.len() {
            return Err(format!(
                "optimizer has state for {} parameters, the model has {} tensors",
                params.len(),
                tensors.len()
            ));
        }
        for (i, (p, t)) in params.iter().zip(tensors).enumerate() {
            if p.name.as_str() != t.name.as_str() {
                return Err(format!(
                    "optimizer entry {i} is named {}, tensor {i} is {}",
                    p.name.as_str(),
                    t.name.as_str()
                ));
            }
            let n = t.data.len();
            if p.exp_avg.len() != n || p.exp_avg_sq.len() != n {
                return Err(format!(
                    "Adam moments of {} hold {} and {} values, the tensor {n}",
                    t.name.as_str(),
                    p.exp_avg.len(),
                    p.exp_avg_sq.len()
                ));
            }
        }
        Ok(())
    }
}

impl ArchivedTrainState {
    /// The rules of FORMAT.md §5.4 for the record kind and for the tensors
    /// and document of a general record.
    fn check_general(&self) -> Result<(), String> {
        let g = &self.general;
        match self.kind.to_native() {
            KIND_TRAINER => {
                if !g.tensors.is_empty()
                    || !g.meta.is_empty()
                    || !g.job_id.is_empty()
                    || g.world_size != 0
                    || g.rank != 0
                {
                    return Err("a trainer record has general tensors or metadata".into());
                }
                return Ok(());
            }
            KIND_GENERAL => {}
            other => return Err(format!("unknown record kind {other}")),
        }
        if !self.model.tensors.is_empty() || !self.optimizer.params.is_empty() {
            return Err("a general record has trainer tensors".into());
        }
        let (world, rank) = (g.world_size.to_native(), g.rank.to_native());
        if (world == 0 && rank != 0) || (world != 0 && rank >= world) {
            return Err(format!("rank {rank} is not below world size {world}"));
        }
        let mut names = std::collections::HashSet::with_capacity(g.tensors.len());
        for (i, t) in g.tensors.iter().enumerate() {
            let name = t.name.as_str();
            let Some(size) = dtype_size(t.dtype.as_str()) else {
                return Err(format!(
                    "tensor {i} ({name}) has unknown dtype {:?}",
                    t.dtype.as_str()
                ));
            };
            let bytes = t
                .shape
                .iter()
                .try_fold(size as u64, |acc, d| acc.checked_mul(d.to_native()));
            if bytes != Some(t.data.len() as u64) {
                return Err(format!(
                    "tensor {i} ({name}) has shape {:?} of {} but {} bytes",
                    t.dims(),
                    t.dtype.as_str(),
                    t.data.len()
                ));
            }
            if !names.insert(name) {
                return Err(format!("tensor name {name} appears twice"));
            }
        }
        match serde_json::from_str::<serde_json::Value>(g.meta.as_str()) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            Ok(_) => Err("the metadata document is not a JSON object".into()),
            Err(e) => Err(format!("the metadata document is not JSON: {e}")),
        }
    }
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
        let general: usize = self.general.tensors.iter().map(|t| t.data.len()).sum();
        ((model + opt) * std::mem::size_of::<f32>() + general) as u64
    }
}

/// A payload validated by [`decode`].
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A record of the current schema, validated in place (zero-copy).
    Current(&'a ArchivedTrainState),
    /// A record of an older schema, upgraded to the current one.
    Upgraded(Upgraded),
}

impl Decoded<'_> {
    /// The state in the current schema.
    pub fn state(&self) -> &ArchivedTrainState {
        match self {
            Decoded::Current(s) => s,
            Decoded::Upgraded(u) => u.state(),
        }
    }
}

impl std::ops::Deref for Decoded<'_> {
    type Target = ArchivedTrainState;
    fn deref(&self) -> &ArchivedTrainState {
        self.state()
    }
}

/// A record of an older schema, upgraded and archived again in the current
/// schema. Owns a copy of the whole state.
pub struct Upgraded {
    /// The schema version the record was written with.
    from: u32,
    /// An rkyv archive of the upgraded [`TrainState`], written by rkyv itself.
    bytes: AlignedVec,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("from", &self.from)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Upgraded {
    /// The schema version the record was written with.
    pub fn from_version(&self) -> u32 {
        self.from
    }

    /// The upgraded state.
    pub fn state(&self) -> &ArchivedTrainState {
        // SAFETY: `bytes` was produced by `rkyv::to_bytes` from a
        // `TrainState` (in `upgrade_from`) and is never modified, so it is a
        // valid archive of `TrainState` with its root at the end.
        unsafe { rkyv::access_unchecked::<ArchivedTrainState>(&self.bytes) }
    }
}

/// Why [`decode`] refused a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record's schema version is not one this build reads (newer than
    /// [`SCHEMA_VERSION`], or older than [`OLDEST_SCHEMA_VERSION`]). Not
    /// damage: the record may be perfectly good for another binary.
    Unsupported {
        /// The version the record says it has.
        found: u32,
    },
    /// The bytes are not a valid archive of the version's types, or disagree
    /// with themselves.
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Unsupported { found } => write!(f, "{}", unsupported_message(*found)),
            DecodeError::Invalid(reason) => write!(f, "{reason}"),
        }
    }
}

/// The sentence that names a record's schema version and the versions this
/// build reads.
pub fn unsupported_message(found: u32) -> String {
    let reads = if OLDEST_SCHEMA_VERSION == SCHEMA_VERSION {
        format!("schema version {SCHEMA_VERSION}")
    } else {
        format!("schema versions {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}")
    };
    if found > SCHEMA_VERSION {
        format!(
            "record has schema version {found}, newer than this epochwal {} reads ({reads}); \
             run a newer epochwal on this log",
            env!("CARGO_PKG_VERSION")
        )
    } else {
        format!(
            "record has schema version {found}, older than this epochwal {} reads ({reads}); \
             resume it with an older epochwal and let it write a record, or convert the log",
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// Whether this build reads records of schema `version`.
pub fn is_supported(version: u32) -> bool {
    (OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&version)
}

/// The one payload decoder: validates `payload` as an archive of schema
/// `version` (taken from the record header) with that version's types, and
/// returns it in the current schema. Never reads a field of an unvalidated
/// archive.
pub fn decode(version: u32, payload: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    match version {
        SCHEMA_VERSION => {
            let s = rkyv::access::<ArchivedTrainState, rancor::Error>(payload)
                .map_err(|e| DecodeError::Invalid(format!("rkyv validation failed: {e}")))?;
            check_payload_version(s.schema_version.to_native(), version)?;
            s.check_consistency().map_err(DecodeError::Invalid)?;
            Ok(Decoded::Current(s))
        }
        // Older versions: validated with their own types, then upgraded.
        2 => upgrade_from::<v2::TrainState>(payload, 2).map(Decoded::Upgraded),
        1 => upgrade_from::<v1::TrainState>(payload, 1).map(Decoded::Upgraded),
        found => Err(DecodeError::Unsupported { found }),
    }
}

fn check_payload_version(in_payload: u32, in_header: u32) -> Result<(), DecodeError> {
    if in_payload == in_header {
        Ok(())
    } else {
        Err(DecodeError::Invalid(format!(
            "payload says schema version {in_payload}, its header says {in_header}"
        )))
    }
}

/// The `schema_version` field of each frozen schema's archived root, so
/// that [`upgrade_from`] can check it against the header. One impl per
/// module in `src/state/` (kept here, since those modules are frozen).
trait StoredVersion {
    fn stored_version(&self) -> u32;
}

impl StoredVersion for v1::ArchivedTrainState {
    fn stored_version(&self) -> u32 {
        self.schema_version.to_native()
    }
}

impl StoredVersion for v2::ArchivedTrainState {
    fn stored_version(&self) -> u32 {
        self.schema_version.to_native()
    }
}

impl StoredVersion for v3::ArchivedTrainState {
    fn stored_version(&self) -> u32 {
        self.schema_version.to_native()
    }
}

/// Validates `payload` as an archive of the old schema type `T` (of schema
/// `version`), deserializes it, upgrades it with `From` and archives the
/// result in the current schema.
fn upgrade_from<T>(payload: &[u8], version: u32) -> Result<Upgraded, DecodeError>
where
    T: rkyv::Archive + Into<TrainState>,
    T::Archived: StoredVersion
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let old = rkyv::access::<T::Archived, rancor::Error>(payload)
        .map_err(|e| DecodeError::Invalid(format!("rkyv validation failed: {e}")))?;
    check_payload_version(old.stored_version(), version)?;
    let old: T = rkyv::deserialize::<T, rancor::Error>(old)
        .map_err(|e| DecodeError::Invalid(format!("deserializing failed: {e}")))?;
    let new: TrainState = old.into();
    let bytes = rkyv::to_bytes::<rancor::Error>(&new)
        .map_err(|e| DecodeError::Invalid(format!("archiving the upgraded state failed: {e}")))?;
    let up = Upgraded {
        from: version,
        bytes,
    };
    check_payload_version(up.state().schema_version.to_native(), SCHEMA_VERSION)?;
    up.state()
        .check_consistency()
        .map_err(DecodeError::Invalid)?;
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_v1() -> v1::TrainState {
        v1::TrainState {
            schema_version: 1,
            epoch: 3,
            global_step: 24,
            step_in_epoch: 0,
            model: v1::ModelState {
                fingerprint: 0xfeed,
                description: "mlp 2-1 relu mse".into(),
                tensors: vec![Tensor {
                    name: "fc.weight".into(),
                    shape: vec![1, 2],
                    data: vec![0.5, -1.25],
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
                    step: 24,
                    exp_avg: vec![0.1, 0.2],
                    exp_avg_sq: vec![0.01, 0.04],
                }],
            },
            data: DataState {
                seed: 7,
                dataset_len: 16,
                rng: [1, 2, 3, 4],
            },
            last_loss: 0.25,
            wall_clock_unix_ns: 1,
            train_time_ms: 2,
        }
    }

    fn sample() -> TrainState {
        let mut s: TrainState = sample_v1().into();
        s.model.architecture = "loss=mse\ntensor=fc.weight:[1, 2]\n".into();
        s.model.fingerprint = fingerprint_of(&s.model.architecture);
        s.scaling.input_mean = vec![1.0, 2.0];
        s.scaling.input_std = vec![0.5, 4.0];
        s.import.sha256 = [7; 32];
        s.import.source = "w.safetensors".into();
        s
    }

    fn archive(s: &TrainState) -> AlignedVec {
        rkyv::to_bytes::<rancor::Error>(s).unwrap()
    }

    fn owned(s: &ArchivedTrainState) -> TrainState {
        rkyv::deserialize::<TrainState, rancor::Error>(s).unwrap()
    }

    /// The layout FORMAT.md §4.3 gives, pinned: sizes, alignments and field
    /// offsets of every archived struct of every schema version.
    #[test]
    fn archived_layouts_are_the_documented_ones() {
        use std::mem::{align_of, offset_of, size_of};
        macro_rules! layout {
            ($t:ty, $size:expr, [$($f:ident = $o:expr),*]) => {
                assert_eq!((size_of::<$t>(), align_of::<$t>()), ($size, 8), stringify!($t));
                $(assert_eq!(offset_of!($t, $f), $o, concat!(stringify!($t), ".", stringify!($f)));)*
            };
        }
        layout!(rkyv::string::ArchivedString, 16, []);
        layout!(rkyv::vec::ArchivedVec<f32>, 16, []);
        layout!(ArchivedTensor, 48, [name = 0, shape = 16, data = 32]);
        layout!(
            ArchivedAdamParamState,
            56,
            [name = 0, step = 16, exp_avg = 24, exp_avg_sq = 40]
        );
        layout!(
            ArchivedAdamState,
            56,
            [
                lr = 0,
                beta1 = 8,
                beta2 = 16,
                eps = 24,
                weight_decay = 32,
                params = 40
            ]
        );
        layout!(ArchivedDataState, 48, [seed = 0, dataset_len = 8, rng = 16]);
        layout!(
            ArchivedScaling,
            64,
            [
                input_mean = 0,
                input_std = 16,
                target_mean = 32,
                target_std = 48
            ]
        );
        layout!(ArchivedImport, 48, [sha256 = 0, source = 32]);
        layout!(
            ArchivedModelState,
            56,
            [
                fingerprint = 0,
                description = 8,
                tensors = 24,
                architecture = 40
            ]
        );
        layout!(
            v1::ArchivedModelState,
            40,
            [fingerprint = 0, description = 8, tensors = 24]
        );
        layout!(
            ArchivedNamedTensor,
            64,
            [name = 0, dtype = 16, shape = 32, data = 48]
        );
        layout!(
            ArchivedGeneral,
            56,
            [
                tensors = 0,
                meta = 16,
                job_id = 32,
                world_size = 48,
                rank = 52
            ]
        );
        layout!(
            ArchivedTrainState,
            392,
            [
                schema_version = 0,
                epoch = 8,
                global_step = 16,
                step_in_epoch = 24,
                model = 32,
                optimizer = 88,
                data = 144,
                last_loss = 192,
                wall_clock_unix_ns = 200,
                train_time_ms = 208,
                scaling = 216,
                import = 280,
                kind = 328,
                general = 336
            ]
        );
        layout!(
            v2::ArchivedTrainState,
            328,
            [
                schema_version = 0,
                epoch = 8,
                global_step = 16,
                step_in_epoch = 24,
                model = 32,
                optimizer = 88,
                data = 144,
                last_loss = 192,
                wall_clock_unix_ns = 200,
                train_time_ms = 208,
                scaling = 216,
                import = 280
            ]
        );
        layout!(
            v1::ArchivedTrainState,
            200,
            [
                schema_version = 0,
                epoch = 8,
                global_step = 16,
                step_in_epoch = 24,
                model = 32,
                optimizer = 72,
                data = 128,
                last_loss = 176,
                wall_clock_unix_ns = 184,
                train_time_ms = 192
            ]
        );
    }

    #[test]
    fn current_version_decodes_in_place() {
        let bytes = archive(&sample());
        let d = decode(SCHEMA_VERSION, &bytes).unwrap();
        assert!(matches!(d, Decoded::Current(_)));
        assert_eq!(owned(&d), sample());
    }

    #[test]
    fn newer_version_is_unsupported_and_named_with_the_versions_read() {
        let bytes = archive(&sample());
        let e = decode(SCHEMA_VERSION + 1, &bytes).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Unsupported {
                found: SCHEMA_VERSION + 1
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{msg}"
        );
        assert!(msg.contains("newer than this epochwal"), "{msg}");
        assert!(msg.contains(&SCHEMA_VERSION.to_string()), "{msg}");
        assert!(!is_supported(SCHEMA_VERSION + 1));
    }

    #[test]
    fn version_older_than_the_oldest_is_unsupported() {
        let bytes = archive(&sample());
        let e = decode(OLDEST_SCHEMA_VERSION - 1, &bytes).unwrap_err();
        assert!(e.to_string().contains("older than this epochwal"), "{e}");
    }

    #[test]
    fn payload_version_must_agree_with_the_header() {
        let mut s = sample();
        s.schema_version = SCHEMA_VERSION + 1;
        let bytes = archive(&s);
        let e = decode(SCHEMA_VERSION, &bytes).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("its header says"), "{e}");
    }

    #[test]
    fn damaged_archive_is_invalid_not_unsupported() {
        let bytes = archive(&sample());
        let e = decode(SCHEMA_VERSION, &bytes[..bytes.len() - 8]).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid(_)), "{e}");
    }

    fn invalid(s: &TrainState) -> String {
        match decode(SCHEMA_VERSION, &archive(s)) {
            Err(DecodeError::Invalid(reason)) => reason,
            other => panic!("accepted or refused otherwise: {other:?}"),
        }
    }

    #[test]
    fn shape_product_must_equal_the_data_length() {
        let mut s = sample();
        s.model.tensors[0].shape = vec![2, 2];
        assert!(invalid(&s).contains("has shape [2, 2] but 2 values"));
        s.model.tensors[0].shape = vec![u64::MAX, 2];
        assert!(invalid(&s).contains("but 2 values"));
    }

    #[test]
    fn moments_must_match_the_tensor() {
        let mut s = sample();
        s.optimizer.params[0].exp_avg_sq.push(0.0);
        assert!(invalid(&s).contains("Adam moments of fc.weight hold 2 and 3 values"));
    }

    #[test]
    fn names_must_be_unique_and_the_optimizer_must_follow_the_model() {
        let mut s = sample();
        s.model.tensors.push(s.model.tensors[0].clone());
        assert!(invalid(&s).contains("tensor name fc.weight appears twice"));
        let mut s = sample();
        s.optimizer.params[0].name = "fc.bias".into();
        assert!(invalid(&s).contains("optimizer entry 0 is named fc.bias"));
        let mut s = sample();
        s.optimizer.params.clear();
        assert!(invalid(&s).contains("state for 0 parameters"));
    }

    #[test]
    fn fingerprint_must_be_the_hash_of_an_architecture_matching_the_tensors() {
        let mut s = sample();
        s.model.fingerprint ^= 1;
        assert!(invalid(&s).contains("is not the hash of its architecture"));
        let mut s = sample();
        s.model.architecture = "loss=mse\ntensor=fc.weight:[2, 1]\n".into();
        s.model.fingerprint = fingerprint_of(&s.model.architecture);
        assert!(invalid(&s).contains("lists `tensor=fc.weight:[2, 1]`"));
        let mut s = sample();
        s.model.architecture.push_str("tensor=fc.bias:[1]\n");
        s.model.fingerprint = fingerprint_of(&s.model.architecture);
        assert!(invalid(&s).contains("lists 2 tensors, the model has 1"));
    }

    /// A version-1 payload is validated with version 1's types and upgraded
    /// with the documented defaults.
    #[test]
    fn a_version_1_payload_is_upgraded_with_the_documented_defaults() {
        let bytes = rkyv::to_bytes::<rancor::Error>(&sample_v1()).unwrap();
        let d = decode(1, &bytes).unwrap();
        let Decoded::Upgraded(up) = &d else {
            panic!("not upgraded")
        };
        assert_eq!(up.from_version(), 1);
        let s = owned(&d);
        assert_eq!(s.schema_version, SCHEMA_VERSION);
        assert_eq!(s.model.architecture, "");
        assert_eq!(s.scaling, Scaling::default());
        assert_eq!(s.import, Import::default());
        let v1 = sample_v1();
        assert_eq!(s.model.tensors, v1.model.tensors);
        assert_eq!(s.optimizer, v1.optimizer);
        assert_eq!((s.epoch, s.data.rng), (v1.epoch, v1.data.rng));
        // A version-1 payload under a version-2 header is not valid, and
        // the other way round.
        assert!(matches!(decode(2, &bytes), Err(DecodeError::Invalid(_))));
        let v2 = archive(&sample());
        assert!(matches!(decode(1, &v2), Err(DecodeError::Invalid(_))));
        let e = upgrade_from::<v1::TrainState>(&bytes, 3).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid(_)), "{e}");
    }

    fn sample_general() -> TrainState {
        let mut s = TrainState {
            epoch: 2,
            global_step: 40,
            last_loss: 0.5,
            ..TrainState::default()
        };
        s.general.meta = r#"{"optimizer":{"param_groups":[{"lr":0.1}]}}"#.into();
        s.general.tensors = vec![
            NamedTensor {
                name: "model.fc.weight".into(),
                dtype: "BF16".into(),
                shape: vec![2, 3],
                data: vec![1u8; 12].into(),
            },
            NamedTensor {
                name: "model.count".into(),
                dtype: "I64".into(),
                shape: vec![],
                data: 7i64.to_le_bytes().to_vec().into(),
            },
        ];
        s
    }

    /// A general record decodes in place, and every tensor's data starts at
    /// a multiple of 64 bytes from the start of the archive.
    #[test]
    fn a_general_record_decodes_in_place_with_aligned_tensor_data() {
        let bytes = archive(&sample_general());
        let d = decode(SCHEMA_VERSION, &bytes).unwrap();
        assert!(matches!(d, Decoded::Current(_)));
        assert!(d.is_general());
        assert_eq!(owned(&d), sample_general());
        for t in d.general.tensors.iter() {
            let at = t.bytes().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(at % TENSOR_DATA_ALIGN, 0, "{}", t.name.as_str());
        }
        assert_eq!(d.general.tensors[1].numel(), 1);
    }

    #[test]
    fn general_tensors_must_agree_with_their_dtype_and_shape() {
        let mut s = sample_general();
        s.general.tensors[0].dtype = "F128".into();
        assert!(invalid(&s).contains("unknown dtype \"F128\""));
        let mut s = sample_general();
        s.general.tensors[0].dtype = "F32".into();
        assert!(invalid(&s).contains("has shape [2, 3] of F32 but 12 bytes"));
        let mut s = sample_general();
        s.general.tensors[1].name = "model.fc.weight".into();
        assert!(invalid(&s).contains("appears twice"));
        let mut s = sample_general();
        s.general.meta = "[1]".into();
        assert!(invalid(&s).contains("not a JSON object"));
        s.general.meta = "{".into();
        assert!(invalid(&s).contains("not JSON"));
        let mut s = sample_general();
        s.general.world_size = 2;
        s.general.rank = 2;
        assert!(invalid(&s).contains("rank 2 is not below world size 2"));
        let mut s = sample_general();
        s.kind = 7;
        assert!(invalid(&s).contains("unknown record kind 7"));
    }

    #[test]
    fn kinds_do_not_mix() {
        let mut s = sample_general();
        s.model.tensors = sample().model.tensors;
        assert!(invalid(&s).contains("a general record has trainer tensors"));
        let mut s = sample();
        s.general.meta = "{}".into();
        assert!(invalid(&s).contains("a trainer record has general tensors or metadata"));
    }

    /// A version-2 payload is validated with version 2's types and becomes
    /// a trainer record with an empty general part.
    #[test]
    fn a_version_2_payload_is_upgraded_to_a_trainer_record() {
        let v2 = v2::TrainState::from(sample_v1());
        let bytes = rkyv::to_bytes::<rancor::Error>(&v2).unwrap();
        let d = decode(2, &bytes).unwrap();
        assert!(matches!(&d, Decoded::Upgraded(u) if u.from_version() == 2));
        let s = owned(&d);
        assert_eq!(s.kind, KIND_TRAINER);
        assert_eq!(s.general, General::default());
        assert_eq!(s.model, v2.model);
        assert!(matches!(decode(3, &bytes), Err(DecodeError::Invalid(_))));
    }
}
