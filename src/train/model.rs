//! A multi-layer perceptron in `f32`.
//!
//! The Linear layers run on sgemm ([`super::linalg`]), cut into pieces that
//! a [`Pool`] spreads over threads; every output element is computed by the
//! same call whatever the number of threads, so results do not depend on it.
//! Losses and their gradients are plain loops in a fixed order.
//!
//! The parameters are not owned here: they live in the
//! [`crate::state::TrainState`] that the daemon checkpoints, and are passed in
//! as `&[Tensor]` in `state_dict` order (`layers.0.weight`, `layers.0.bias`,
//! `layers.1.weight`, ...). This module owns only scratch buffers and the
//! gradients.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::linalg::{linear_backward, linear_forward};
use super::pool::Pool;
use super::rng::Xoshiro256;
use super::TensorNames;
use crate::state::Tensor;

/// Activation applied after every Linear layer except the last.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// No activation (`"identity"` or `"none"`).
    #[serde(alias = "none")]
    Identity,
}

impl Activation {
    /// The configuration spelling, used in descriptions and fingerprints.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Identity => "identity",
        }
    }
}

/// Training loss.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error over every output of the batch, like
    /// `torch.nn.MSELoss()`.
    #[default]
    Mse,
    /// Softmax cross-entropy of logits against integer class labels, mean
    /// over the batch, like `torch.nn.CrossEntropyLoss()`.
    CrossEntropy,
}

impl Loss {
    /// The configuration spelling, used in descriptions and fingerprints.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::CrossEntropy => "cross_entropy",
        }
    }
}

/// The targets of one mini-batch.
#[derive(Clone, Copy, Debug)]
pub enum BatchTargets<'a> {
    /// `[batch, out]` values for MSE.
    Values(&'a [f32]),
    /// `batch` class indices for cross-entropy.
    Classes(&'a [u32]),
}

/// Architecture of an MLP: layer widths, activation, loss and naming.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpSpec {
    /// `[input, hidden..., output]`.
    pub sizes: Vec<usize>,
    /// Activation between layers.
    pub activation: Activation,
    /// Loss function.
    pub loss: Loss,
    /// How the parameters are named.
    pub names: TensorNames,
}

impl MlpSpec {
    /// Number of Linear layers.
    pub fn layers(&self) -> usize {
        self.sizes.len() - 1
    }

    /// `(name, shape)` of every parameter, in `state_dict` order.
    pub fn tensor_specs(&self) -> Vec<(String, Vec<u64>)> {
        let mut out = Vec::with_capacity(2 * self.layers());
        for l in 0..self.layers() {
            let prefix = match self.names {
                TensorNames::Fc => "fc".to_string(),
                TensorNames::Layers => format!("layers.{l}"),
                // nn.Sequential(Linear, act, Linear, act, ..., Linear): the
                // Linear layers are modules 0, 2, 4, ...
                TensorNames::Sequential => format!("{}", 2 * l),
            };
            let (n_in, n_out) = (self.sizes[l] as u64, self.sizes[l + 1] as u64);
            out.push((format!("{prefix}.weight"), vec![n_out, n_in]));
            out.push((format!("{prefix}.bias"), vec![n_out]));
        }
        out
    }

    /// Total number of scalar parameters.
    pub fn parameter_count(&self) -> u64 {
        self.tensor_specs()
            .iter()
            .map(|(_, s)| s.iter().product::<u64>())
            .sum()
    }

    /// The tensors with every value zero (allocated zeroed, so untouched
    /// pages cost nothing), for a state that a restore will fill.
    pub fn zero_tensors(&self) -> Vec<Tensor> {
        self.tensor_specs()
            .into_iter()
            .map(|(name, shape)| {
                let len = shape.iter().product::<u64>() as usize;
                Tensor {
                    name,
                    shape,
                    data: vec![0.0; len],
                }
            })
            .collect()
    }

    /// Fresh parameters with PyTorch's default `nn.Linear` initialisation:
    /// weight and bias both uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))`
    /// (kaiming-uniform with `a = sqrt(5)` reduces to exactly this bound).
    pub fn init_tensors(&self, rng: &mut Xoshiro256) -> Vec<Tensor> {
        self.tensor_specs()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let fan_in = self.sizes[i / 2];
                let bound = 1.0 / (fan_in as f32).sqrt();
                let len = shape.iter().product::<u64>() as usize;
                let data = (0..len).map(|_| rng.uniform(-bound, bound)).collect();
                Tensor { name, shape, data }
            })
            .collect()
    }
}

/// Forward and backward passes of an [`MlpSpec`] with reusable buffers.
#[derive(Debug)]
pub struct Mlp {
    spec: MlpSpec,
    pool: Arc<Pool>,
    /// `acts[0]` is the input batch, `acts[l + 1]` the output of layer `l`
    /// (after its activation, except for the last layer: logits/predictions).
    acts: Vec<Vec<f32>>,
    /// Gradient with respect to a layer's output, two ping-pong buffers.
    delta: [Vec<f32>; 2],
    /// Gradients, one per parameter tensor, in `state_dict` order.
    grads: Vec<Vec<f32>>,
}

impl Mlp {
    /// Allocates gradient buffers for `spec` (activation buffers grow on the
    /// first batch); products run on `pool`.
    pub fn new(spec: MlpSpec, pool: Arc<Pool>) -> Self {
        let grads = spec
            .tensor_specs()
            .iter()
            .map(|(_, s)| vec![0.0; s.iter().product::<u64>() as usize])
            .collect();
        let acts = vec![Vec::new(); spec.sizes.len()];
        Self {
            spec,
            pool,
            acts,
            delta: [Vec::new(), Vec::new()],
            grads,
        }
    }

    /// The architecture.
    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    /// Gradients of the last [`Mlp::forward_backward`], in `state_dict` order.
    pub fn grads(&self) -> &[Vec<f32>] {
        &self.grads
    }

    /// Runs the network on `x` (`[batch, input]`); returns the outputs
    /// (`[batch, output]`: predictions or logits).
    pub fn forward(&mut self, params: &[Tensor], x: &[f32]) -> &[f32] {
        let sizes = &self.spec.sizes;
        let batch = x.len() / sizes[0];
        self.acts[0].clear();
        self.acts[0].extend_from_slice(x);
        let layers = self.spec.layers();
        for l in 0..layers {
            let (n_in, n_out) = (sizes[l], sizes[l + 1]);
            let (before, after) = self.acts.split_at_mut(l + 1);
            let input = &before[l];
            let out = &mut after[0];
            out.resize(batch * n_out, 0.0);
            let act = (l + 1 < layers).then_some(self.spec.activation);
            linear_forward(
                &self.pool,
                input,
                &params[2 * l].data,
                &params[2 * l + 1].data,
                out,
                n_in,
                n_out,
                act,
            );
        }
        &self.acts[layers]
    }

    /// Forward pass, loss, and backward pass; the gradients are left in
    /// [`Mlp::grads`]. Returns the mean loss of the batch.
    pub fn forward_backward(&mut self, params: &[Tensor], x: &[f32], t: BatchTargets) -> f32 {
        let batch = x.len() / self.spec.sizes[0];
        self.forward(params, x);
        let layers = self.spec.layers();
        let n_out = self.spec.sizes[layers];
        let out = &self.acts[layers];
        let mut delta = std::mem::take(&mut self.delta[0]);
        delta.resize(batch * n_out, 0.0);
        let loss = match t {
            BatchTargets::Values(y) => mse(out, y, &mut delta),
            BatchTargets::Classes(c) => cross_entropy(out, c, n_out, &mut delta),
        };
        let mut next = std::mem::take(&mut self.delta[1]);
        for l in (0..layers).rev() {
            let (n_in, n_out) = (self.spec.sizes[l], self.spec.sizes[l + 1]);
            let (gw, gb) = {
                let (a, b) = self.grads.split_at_mut(2 * l + 1);
                (&mut a[2 * l], &mut b[0])
            };
            let input = &self.acts[l];
            let dx = if l > 0 {
                next.resize(batch * n_in, 0.0);
                Some(&mut next[..])
            } else {
                None
            };
            linear_backward(
                &self.pool,
                input,
                &params[2 * l].data,
                &delta,
                gw,
                gb,
                dx,
                self.spec.activation,
                n_in,
                n_out,
            );
            if l > 0 {
                std::mem::swap(&mut delta, &mut next);
            }
        }
        self.delta = [delta, next];
        loss
    }
}

/// Sum of squared errors over every output (for validation).
pub fn squared_error_sum(out: &[f32], y: &[f32]) -> f64 {
    out.iter()
        .zip(y)
        .map(|(o, t)| {
            let d = f64::from(o - t);
            d * d
        })
        .sum()
}

/// Sum of the cross-entropy losses of the examples and the number whose
/// largest logit is their class (the first largest, on ties).
pub fn cross_entropy_sum(logits: &[f32], classes: &[u32], n_classes: usize) -> (f64, usize) {
    let mut total = 0.0f64;
    let mut correct = 0;
    for (z, &c) in logits.chunks_exact(n_classes).zip(classes) {
        let (mut arg, mut m) = (0, f32::NEG_INFINITY);
        for (i, &v) in z.iter().enumerate() {
            if v > m {
                (arg, m) = (i, v);
            }
        }
        let s: f64 = z.iter().map(|zi| f64::from((zi - m).exp())).sum();
        total += s.ln() + f64::from(m) - f64::from(z[c as usize]);
        correct += usize::from(arg == c as usize);
    }
    (total, correct)
}

/// Mean squared error and its gradient. Like torch's `mse_loss_backward`,
/// the gradient is `(out - y) * (2 / numel)` with the factor rounded to f32
/// once.
fn mse(out: &[f32], y: &[f32], grad: &mut [f32]) -> f32 {
    let numel = out.len();
    let norm = (2.0f64 / numel as f64) as f32;
    let mut sum = 0.0f64;
    for ((g, o), t) in grad.iter_mut().zip(out).zip(y) {
        let d = o - t;
        sum += f64::from(d) * f64::from(d);
        *g = d * norm;
    }
    (sum / numel as f64) as f32
}

/// Softmax cross-entropy against class indices, mean over the batch; the
/// gradient with respect to the logits is `(softmax - onehot) / batch`.
fn cross_entropy(logits: &[f32], classes: &[u32], n_classes: usize, grad: &mut [f32]) -> f32 {
    let batch = classes.len();
    let inv_batch = 1.0 / batch as f64;
    let mut total = 0.0f64;
    for ((z, g), &c) in logits
        .chunks_exact(n_classes)
        .zip(grad.chunks_exact_mut(n_classes))
        .zip(classes)
    {
        // Subtract the maximum so that exp never overflows.
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0f64;
        for (gi, zi) in g.iter_mut().zip(z) {
            let e = f64::from((zi - m).exp());
            *gi = e as f32;
            s += e;
        }
        let c = c as usize;
        total += s.ln() + f64::from(m) - f64::from(z[c]);
        for gi in g.iter_mut() {
            *gi = (f64::from(*gi) / s * inv_batch) as f32;
        }
        g[c] -= inv_batch as f32;
    }
    (total * inv_batch) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sizes: &[usize], act: Activation, loss: Loss) -> MlpSpec {
        MlpSpec {
            sizes: sizes.to_vec(),
            activation: act,
            loss,
            names: TensorNames::Layers,
        }
    }

    /// Compares analytic gradients with central finite differences.
    #[allow(clippy::needless_range_loop)]
    fn grad_check(spec: MlpSpec, targets: BatchTargets, batch: usize, seed: u64) {
        let mut rng = Xoshiro256::from_seed(seed);
        let mut params = spec.init_tensors(&mut rng);
        let x: Vec<f32> = (0..batch * spec.sizes[0])
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let mut mlp = Mlp::new(spec, Arc::new(Pool::new(2)));
        mlp.forward_backward(&params, &x, targets);
        let grads = mlp.grads().to_vec();
        let h = 1e-2f32;
        let mut worst = 0.0f32;
        for ti in 0..params.len() {
            for i in 0..params[ti].data.len() {
                let orig = params[ti].data[i];
                params[ti].data[i] = orig + h;
                let lp = mlp.forward_backward(&params, &x, targets);
                params[ti].data[i] = orig - h;
                let lm = mlp.forward_backward(&params, &x, targets);
                params[ti].data[i] = orig;
                let fd = (lp - lm) / (2.0 * h);
                let g = grads[ti][i];
                let err = (fd - g).abs() / g.abs().max(0.1);
                worst = worst.max(err);
                assert!(
                    err < 2e-2,
                    "{}[{i}]: analytic {g}, finite difference {fd}",
                    params[ti].name
                );
            }
        }
        eprintln!("worst relative gradient error {worst}");
    }

    #[test]
    fn mse_gradient_matches_finite_differences() {
        let y: Vec<f32> = (0..5 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        for act in [Activation::Tanh, Activation::Identity, Activation::Relu] {
            grad_check(
                spec(&[4, 6, 5, 3], act, Loss::Mse),
                BatchTargets::Values(&y),
                5,
                11,
            );
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let c = [0u32, 2, 1, 3, 2, 0];
        for act in [Activation::Tanh, Activation::Relu] {
            grad_check(
                spec(&[3, 7, 4], act, Loss::CrossEntropy),
                BatchTargets::Classes(&c),
                6,
                5,
            );
        }
    }

    #[test]
    fn cross_entropy_value_matches_formula() {
        // One example, logits [1, 2, 3], class 2: loss = ln(e + e^2 + e^3) - 3.
        let logits = [1.0f32, 2.0, 3.0];
        let mut g = [0.0f32; 3];
        let loss = cross_entropy(&logits, &[2], 3, &mut g);
        let e = std::f64::consts::E;
        let want = (e + e * e + e * e * e).ln() - 3.0;
        assert!((f64::from(loss) - want).abs() < 1e-6, "{loss} vs {want}");
        assert!(g.iter().sum::<f32>().abs() < 1e-6);
    }

    #[test]
    fn init_bounds_and_names() {
        let s = spec(&[4, 3, 2], Activation::Relu, Loss::Mse);
        let t = s.init_tensors(&mut Xoshiro256::from_seed(1));
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias"
            ]
        );
        assert_eq!(t[0].shape, [3, 4]);
        assert_eq!(t[2].shape, [2, 3]);
        assert!(t[0].data.iter().all(|v| v.abs() <= 0.5));
        assert!(t[2].data.iter().all(|v| v.abs() <= 1.0 / 3f32.sqrt()));
        assert_eq!(s.parameter_count(), 12 + 3 + 6 + 2);
    }
}
