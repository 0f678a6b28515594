//! Guards around training: what a run will need in memory (checked before
//! anything large is allocated), and finding and undoing non-finite values.

use super::{DatasetConfig, TrainConfig, Trainer};

/// What a run will hold in memory, computed from the configuration and the
/// dataset's dimensions before the model is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Layer widths `[input, hidden..., output]`.
    pub widths: Vec<usize>,
    /// Number of parameters.
    pub parameters: u128,
    /// Bytes of the training state: weights and both Adam moments (f32).
    pub state_bytes: u128,
    /// Bytes training needs beyond the state: gradients, activations and
    /// their gradients for one mini-batch, the dataset and its order, and
    /// the checkpoint's staging copy of the state.
    pub working_bytes: u128,
}

impl MemoryPlan {
    /// The plan for `cfg` on a dataset of `n` examples with these widths.
    /// Computed in 128-bit integers, so absurd widths cannot overflow.
    pub fn new(cfg: &TrainConfig, n: usize, input_dim: usize, output_dim: usize) -> MemoryPlan {
        let mut widths = vec![input_dim];
        widths.extend_from_slice(&cfg.model.hidden);
        widths.push(output_dim);
        let parameters: u128 = widths
            .windows(2)
            .map(|w| w[0] as u128 * w[1] as u128 + w[1] as u128)
            .sum();
        let batch = cfg.batch_size.min(n.max(1)) as u128;
        let sum_widths: u128 = widths.iter().map(|&w| w as u128).sum();
        // Gradients (one per parameter); per layer output and its gradient,
        // plus the backward pass's scratch, for one mini-batch; the dataset
        // (inputs and targets, 4 bytes each) and the epoch order (8 bytes per
        // example); and the log's staging buffer, which holds a copy of the
        // state between a checkpoint's pause and its write (wal/staging.rs).
        let working = 4 * parameters
            + 3 * 4 * parameters
            + 4 * 3 * batch * sum_widths
            + 4 * n as u128 * (input_dim as u128 + output_dim as u128)
            + 8 * n as u128;
        MemoryPlan {
            widths,
            parameters,
            state_bytes: 3 * 4 * parameters,
            working_bytes: working,
        }
    }

    /// State plus working memory.
    pub fn total_bytes(&self) -> u128 {
        self.state_bytes + self.working_bytes
    }

    /// The widths as `10-64-32-1`.
    pub fn widths_text(&self) -> String {
        let w: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        w.join("-")
    }
}

/// The plan of a dataset whose size the configuration alone fixes (the
/// synthetic one), so that it can be checked before the data is generated.
pub(super) fn plan_before_data(cfg: &TrainConfig) -> Option<MemoryPlan> {
    match cfg.dataset {
        DatasetConfig::Synthetic {
            n,
            input_dim,
            output_dim,
            ..
        } => Some(MemoryPlan::new(cfg, n, input_dim, output_dim)),
        _ => None,
    }
}

/// The first value that is NaN or infinite.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// `loss`, a parameter name (`layers.0.weight`) or an Adam moment
    /// (`layers.0.weight.exp_avg_sq`).
    pub tensor: String,
    /// Flat index of the value in the tensor.
    pub index: usize,
    /// The value (NaN, inf or -inf).
    pub value: f32,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}] = {}", self.tensor, self.index, self.value)
    }
}

/// Parameters, Adam moments and step counts, and the last loss, kept by
/// [`Trainer::save_numbers`] so that a step can be undone.
#[derive(Debug, Default, Clone)]
pub struct SavedNumbers {
    values: Vec<f32>,
    steps: Vec<u64>,
    last_loss: f32,
}

/// Exponent bits of an f32: all ones exactly for NaN and ±inf.
const EXPONENT: u32 = 0x7f80_0000;

fn first_bad(name: &str, v: &[f32]) -> Option<NonFinite> {
    // The common case (all finite) is a branch-free integer reduction per
    // chunk, which the compiler vectorizes (`all(is_finite)` would stop at
    // each element to test for an early exit).
    let finite = v
        .chunks(4096)
        .all(|c| c.iter().map(|x| x.to_bits() & EXPONENT).fold(0, u32::max) != EXPONENT);
    if finite {
        return None;
    }
    let index = v.iter().position(|x| !x.is_finite())?;
    Some(NonFinite {
        tensor: name.to_string(),
        index,
        value: v[index],
    })
}

impl Trainer {
    /// The first NaN or infinite value among the parameters, then the Adam
    /// moments, in model order; `None` if all are finite.
    pub fn first_non_finite(&self) -> Option<NonFinite> {
        let s = &self.state;
        s.model
            .tensors
            .iter()
            .find_map(|t| first_bad(&t.name, &t.data))
            .or_else(|| {
                s.optimizer.params.iter().find_map(|p| {
                    first_bad(&format!("{}.exp_avg", p.name), &p.exp_avg)
                        .or_else(|| first_bad(&format!("{}.exp_avg_sq", p.name), &p.exp_avg_sq))
                })
            })
    }

    /// The first NaN or infinite weight, in model order: a third of
    /// [`Trainer::first_non_finite`]'s work.
    pub fn first_non_finite_weight(&self) -> Option<NonFinite> {
        self.state
            .model
            .tensors
            .iter()
            .find_map(|t| first_bad(&t.name, &t.data))
    }

    /// Copies the numbers a step changes (weights, moments, Adam step
    /// counts, last loss) into `into`, reusing its allocation.
    pub fn save_numbers(&self, into: &mut SavedNumbers) {
        let s = &self.state;
        into.values.clear();
        for t in &s.model.tensors {
            into.values.extend_from_slice(&t.data);
        }
        for p in &s.optimizer.params {
            into.values.extend_from_slice(&p.exp_avg);
            into.values.extend_from_slice(&p.exp_avg_sq);
        }
        into.steps.clear();
        into.steps.extend(s.optimizer.params.iter().map(|p| p.step));
        into.last_loss = s.last_loss;
    }

    /// Puts back what [`Trainer::save_numbers`] saved. The position in the
    /// data and the step counters are left as they are: the mini-batch stays
    /// consumed.
    pub fn restore_numbers(&mut self, from: &SavedNumbers) {
        let s = self.state_mut();
        let mut rest = &from.values[..];
        let mut take = |dst: &mut [f32]| {
            let (head, tail) = rest.split_at(dst.len());
            dst.copy_from_slice(head);
            rest = tail;
        };
        for t in &mut s.model.tensors {
            take(&mut t.data);
        }
        for p in &mut s.optimizer.params {
            take(&mut p.exp_avg);
            take(&mut p.exp_avg_sq);
        }
        for (p, &step) in s.optimizer.params.iter_mut().zip(&from.steps) {
            p.step = step;
        }
        s.last_loss = from.last_loss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainer() -> Trainer {
        Trainer::new(&TrainConfig::seed_tutorial()).unwrap()
    }

    #[test]
    fn finds_the_first_non_finite_weight_then_moment() {
        let mut t = trainer();
        assert_eq!(t.first_non_finite(), None);
        t.state_mut().optimizer.params[1].exp_avg_sq[0] = f32::INFINITY;
        assert_eq!(t.first_non_finite_weight(), None, "weights are finite");
        let bad = t.first_non_finite().unwrap();
        assert_eq!((bad.tensor.as_str(), bad.index), ("fc.bias.exp_avg_sq", 0));
        t.state_mut().model.tensors[0].data[0] = f32::NAN;
        let bad = t.first_non_finite_weight().unwrap();
        assert_eq!((bad.tensor.as_str(), bad.index), ("fc.weight", 0));
        assert_eq!(t.first_non_finite().unwrap().tensor, "fc.weight");
    }

    #[test]
    fn restore_numbers_undoes_a_step_but_keeps_the_position() {
        let mut t = trainer();
        let mut saved = SavedNumbers::default();
        t.save_numbers(&mut saved);
        let before = t.state.clone();
        t.step();
        assert_ne!(t.state.model.tensors, before.model.tensors);
        t.restore_numbers(&saved);
        assert_eq!(t.state.model.tensors, before.model.tensors);
        assert_eq!(t.state.optimizer.params, before.optimizer.params);
        assert_eq!(t.state.global_step, 1, "the mini-batch stays consumed");
    }
}
