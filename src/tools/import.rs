//! Reading a safetensors file for `epochwal run --init-from FILE`: the model
//! weights, the Adam state when the file has one (in either layout `export`
//! writes), and the SHA-256 of the file's bytes, which the run keeps in every
//! record so that a restart with the same flag resumes instead of importing
//! again (see the daemon's start-up).
//!
//! Tensor names:
//! - `optimizer.state.<i>.{exp_avg,exp_avg_sq,step}` with `<i>` a decimal
//!   index: torch's layout (`optimizer.state_dict()["state"][i]`, `i` the
//!   position of the parameter in the model's `state_dict` order);
//! - `optimizer.state.<param>.{exp_avg,exp_avg_sq,step}` with `<param>` a
//!   parameter name: the by-name layout;
//! - `input_norm.*`, `target_norm.*`: the dataset scaling `export` may add;
//!   not weights, skipped;
//! - everything else: a weight under its `state_dict` name.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use safetensors::Dtype;
use sha2::{Digest, Sha256};

use super::export::{
    WeightTensor, NORM_PREFIXES, OPTIMIZER_PREFIX, OPTIMIZER_SUFFIX_EXP_AVG,
    OPTIMIZER_SUFFIX_EXP_AVG_SQ, OPTIMIZER_SUFFIX_STEP,
};

/// A tensor's shape and values.
type Shaped = (Vec<u64>, Vec<f32>);

/// Which parameter an Adam entry of the file belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamKey {
    /// torch's layout: the position in `state_dict` order.
    Index(usize),
    /// The by-name layout.
    Name(String),
}

impl std::fmt::Display for ParamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamKey::Index(i) => write!(f, "{i}"),
            ParamKey::Name(n) => write!(f, "{n}"),
        }
    }
}

/// The Adam state of one parameter, as read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamEntry {
    /// Steps taken (torch stores it as a float tensor).
    pub step: u64,
    /// First moment, flattened, with the shape it had in the file.
    pub exp_avg: (Vec<u64>, Vec<f32>),
    /// Second moment, flattened, with the shape it had in the file.
    pub exp_avg_sq: (Vec<u64>, Vec<f32>),
}

/// What `--init-from` brings in.
#[derive(Debug, Clone)]
pub struct ImportFile {
    /// SHA-256 of the file's bytes.
    pub sha256: [u8; 32],
    /// Weights in file order.
    pub weights: Vec<WeightTensor>,
    /// Adam state per parameter (empty when the file has none).
    pub adam: BTreeMap<ParamKey, AdamEntry>,
}

/// The SHA-256 of a file's bytes in lower-case hex, as `sha256sum` prints it.
pub fn hex(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a safetensors file for `--init-from`. Every tensor must be F32; a
/// file that cannot be read or parsed, or an incomplete Adam entry, is an
/// error naming the file and the tensor.
pub fn read_import(path: &Path) -> anyhow::Result<ImportFile> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read the weights file", path.display()))?;
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let invalid = |e: safetensors::SafeTensorError| {
        anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let mut weights = Vec::new();
    // exp_avg, exp_avg_sq, step of each parameter as found.
    let mut parts: BTreeMap<ParamKey, [Option<Shaped>; 3]> = BTreeMap::new();
    for name in meta.offset_keys() {
        if NORM_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let view = st.tensor(&name).map_err(invalid)?;
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} has dtype {:?}; only F32 tensors can be loaded (convert with `tensor.float()` before saving)",
                path.display(),
                view.dtype()
            );
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let Some(rest) = name.strip_prefix(OPTIMIZER_PREFIX) else {
            weights.push((name.to_string(), shape, values));
            continue;
        };
        let (param, slot) = [
            (OPTIMIZER_SUFFIX_EXP_AVG_SQ, 1),
            (OPTIMIZER_SUFFIX_EXP_AVG, 0),
            (OPTIMIZER_SUFFIX_STEP, 2),
        ]
        .iter()
        .find_map(|(suffix, slot)| rest.strip_suffix(suffix).map(|p| (p, *slot)))
        .with_context(|| {
            format!(
                "{}: tensor {name}: an optimizer tensor must end in .exp_avg, .exp_avg_sq or .step",
                path.display()
            )
        })?;
        let key =
            if !param.is_empty() && param.bytes().all(|b| b.is_ascii_digit()) {
                ParamKey::Index(param.parse().with_context(|| {
                    format!("{}: tensor {name}: index too large", path.display())
                })?)
            } else {
                ParamKey::Name(param.to_string())
            };
        parts.entry(key).or_default()[slot] = Some((shape, values));
    }
    let mut adam = BTreeMap::new();
    for (key, [exp_avg, exp_avg_sq, step]) in parts {
        let missing = |what: &str| {
            anyhow::anyhow!(
                "{}: the Adam state of parameter {key} has no {OPTIMIZER_PREFIX}{key}.{what}",
                path.display()
            )
        };
        let exp_avg = exp_avg.ok_or_else(|| missing("exp_avg"))?;
        let exp_avg_sq = exp_avg_sq.ok_or_else(|| missing("exp_avg_sq"))?;
        let (step_shape, step_values) = step.ok_or_else(|| missing("step"))?;
        let step = match step_values.as_slice() {
            [s] if *s >= 0.0 && s.fract() == 0.0 && *s < 2f32.powi(24) => *s as u64,
            _ => bail!(
                "{}: {OPTIMIZER_PREFIX}{key}.step must be one whole number >= 0, got {step_values:?} of shape {step_shape:?}",
                path.display()
            ),
        };
        adam.insert(
            key,
            AdamEntry {
                step,
                exp_avg,
                exp_avg_sq,
            },
        );
    }
    let layouts = (
        adam.keys().any(|k| matches!(k, ParamKey::Index(_))),
        adam.keys().any(|k| matches!(k, ParamKey::Name(_))),
    );
    if layouts == (true, true) {
        bail!(
            "{}: the Adam state mixes torch's layout (optimizer.state.<index>.*) with the by-name layout (optimizer.state.<name>.*)",
            path.display()
        );
    }
    Ok(ImportFile {
        sha256,
        weights,
        adam,
    })
}
