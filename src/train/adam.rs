//! Adam with the exact semantics of `torch.optim.Adam` (single-tensor path,
//! `amsgrad=False`, `maximize=False`).
//!
//! PyTorch computes the per-step scalars (bias corrections, step size) in
//! Python floats, i.e. f64, and then hands them to f32 tensor kernels, which
//! round each scalar to f32 once before using it. The element-wise operations
//! below follow the kernels' operation order:
//!
//! ```text
//! grad = fma(wd, param, grad)                # grad.add(param, alpha=wd)
//! m    = lerp(m, grad, 1 - beta1)             # exp_avg.lerp_(grad, 1 - beta1)
//! v    = fma((1 - beta2) * grad, grad, v * beta2)  # mul_(beta2).addcmul_(...)
//! denom = sqrt(v) / sqrt(bias_correction2) + eps
//! param = param + ((-step_size) * m) / denom  # addcdiv_(m, denom, value=-step_size)
//! ```
//!
//! where ATen's `lerp(a, b, w)` is `a + w * (b - a)` for `|w| < 0.5` and
//! `b + (w - 1) * (b - a)` otherwise.
//!
//! PyTorch's CPU kernels are compiled with fused multiply-add: its vectorised
//! `lerp`, `addcmul` and `add(alpha=)` use `fmadd`, and the compiler contracts
//! the scalar tails too. The reference trajectories in
//! `fixtures/adam_torch_reference.json` show it: with plain multiply-then-add
//! `exp_avg` drifts up to 18 ulps from torch's (cancellation in `g - m`
//! magnifies one rounding), with fused operations every value matches
//! exactly. So those three operations are fused here. A fused multiply-add
//! is correctly rounded by definition, so every way of computing it gives
//! the same bits: on a CPU with FMA (checked at run time) the update runs
//! with the hardware instruction, vectorised; elsewhere with [`fma_f32`], a
//! correctly rounded fused multiply-add in portable f64 arithmetic, about ten
//! times slower. Either way the result is bit-identical on every machine
//! (`hardware_and_portable_fma_updates_agree_bit_for_bit`).

use crate::state::AdamParamState;

/// Adam hyperparameters (f64, as PyTorch keeps them in Python floats).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// L2 penalty added to the gradient (not decoupled as in AdamW).
    pub weight_decay: f64,
}

impl Default for AdamHyper {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamHyper {
    /// Checks the ranges that `torch.optim.Adam.__init__` checks; the error
    /// names the offending option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(format!(
                "optimizer.lr must be a finite number >= 0, got {}",
                self.lr
            ));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!(
                "optimizer.eps must be a finite number >= 0, got {}",
                self.eps
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(format!(
                "optimizer.betas[0] must be in [0, 1), got {}",
                self.beta1
            ));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(format!(
                "optimizer.betas[1] must be in [0, 1), got {}",
                self.beta2
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!(
                "optimizer.weight_decay must be a finite number >= 0, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// `a * b + c` with a single rounding (IEEE 754 fusedMultiplyAdd) for f32.
///
/// The product of two f32 is exact in f64 (48 significant bits); the sum is
/// computed in f64 with its exact error (TwoSum) and then rounded "to odd"
/// (an inexact result gets an odd last bit) so that the final rounding to f32
/// cannot suffer double rounding; f64 has more than the 24 + 2 bits this
/// needs. Unlike `f32::mul_add` this never calls into libm, and the compiler
/// can vectorise it.
#[inline]
pub fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    let p = f64::from(a) * f64::from(b);
    let c = f64::from(c);
    let s = p + c;
    let bv = s - p;
    let err = (p - (s - bv)) + (c - bv);
    let bits = s.to_bits();
    let odd = if s.is_finite() && err != 0.0 && bits & 1 == 0 {
        // Step one ulp towards the exact value: away from zero when the
        // error has the sign of `s`, towards zero otherwise.
        if (err > 0.0) == (s > 0.0) {
            bits + 1
        } else {
            bits - 1
        }
    } else {
        bits
    };
    f64::from_bits(odd) as f32
}

/// The per-step scalars of an Adam update, each rounded to f32 once as
/// PyTorch's tensor kernels do.
#[derive(Clone, Copy, Debug)]
pub struct AdamStepScalars {
    neg_step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    wd: f32,
    weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    small_weight: bool,
    weight_minus_one: f32,
    decay: bool,
}

impl AdamStepScalars {
    /// The scalars of step number `step` (counting from 1, after the
    /// increment PyTorch makes first).
    pub fn new(h: &AdamHyper, step: u64) -> AdamStepScalars {
        // Python: `step = _get_value(step_t)` is a float; `beta ** step` is C pow.
        let step = step as f64;
        let bias_correction1 = 1.0 - h.beta1.powf(step);
        let bias_correction2 = 1.0 - h.beta2.powf(step);
        let step_size = h.lr / bias_correction1;
        // Python `x ** 0.5` is pow(x, 0.5), kept as such rather than sqrt.
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        let weight = (1.0 - h.beta1) as f32;
        AdamStepScalars {
            neg_step_size: (-step_size) as f32,
            bc2_sqrt: bias_correction2_sqrt as f32,
            eps: h.eps as f32,
            wd: h.weight_decay as f32,
            weight,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            small_weight: weight.abs() < 0.5,
            weight_minus_one: weight - 1.0,
            decay: h.weight_decay != 0.0,
        }
    }
}

/// The element-wise Adam update of `param` (and its moments `exp_avg`,
/// `exp_avg_sq`) with gradient `grad`. Each element depends only on its own
/// values, so a tensor may be updated in pieces, on any threads.
pub fn adam_update(
    c: &AdamStepScalars,
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    assert_eq!(param.len(), grad.len(), "gradient length");
    assert_eq!(param.len(), exp_avg.len(), "exp_avg length");
    assert_eq!(param.len(), exp_avg_sq.len(), "exp_avg_sq length");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports FMA and AVX2, as checked just above.
        unsafe { adam_update_x86_fma(c, param, grad, exp_avg, exp_avg_sq) };
        return;
    }
    adam_update_portable(c, param, grad, exp_avg, exp_avg_sq);
}

/// [`adam_update`] with [`fma_f32`], on any CPU.
pub fn adam_update_portable(
    c: &AdamStepScalars,
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    adam_update_with(c, param, grad, exp_avg, exp_avg_sq, fma_f32);
}

/// [`adam_update`] with the CPU's fused multiply-add, vectorised with AVX2.
///
/// # Safety
/// The CPU must support the `fma` and `avx2` features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
pub unsafe fn adam_update_x86_fma(
    c: &AdamStepScalars,
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    // With the `fma` feature enabled here, `mul_add` is one vfmadd
    // instruction (never a libm call), and the loop vectorises.
    adam_update_with(c, param, grad, exp_avg, exp_avg_sq, f32::mul_add);
}

#[inline(always)]
fn adam_update_with(
    c: &AdamStepScalars,
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    fma: impl Fn(f32, f32, f32) -> f32,
) {
    let iter = param
        .iter_mut()
        .zip(grad)
        .zip(exp_avg.iter_mut())
        .zip(exp_avg_sq.iter_mut());
    for (((p, &g), m), v) in iter {
        let g = if c.decay { fma(c.wd, *p, g) } else { g };
        *m = if c.small_weight {
            fma(c.weight, g - *m, *m)
        } else {
            fma(c.weight_minus_one, g - *m, g)
        };
        *v = fma(c.one_minus_beta2 * g, g, *v * c.beta2);
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        *p += c.neg_step_size * *m / denom;
    }
}

/// Applies one Adam step to `param` with gradient `grad`, updating `state`
/// (its `step` is incremented first, as PyTorch does).
pub fn adam_step(h: &AdamHyper, param: &mut [f32], grad: &[f32], state: &mut AdamParamState) {
    assert_eq!(param.len(), grad.len(), "gradient length of {}", state.name);
    state.step += 1;
    let c = AdamStepScalars::new(h, state.step);
    adam_update(&c, param, grad, &mut state.exp_avg, &mut state.exp_avg_sq);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn hardware_and_portable_fma_updates_agree_bit_for_bit() {
        if !(std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")) {
            eprintln!("no FMA unit: only the portable path exists here");
            return;
        }
        let mut rng = crate::train::rng::Xoshiro256::from_seed(17);
        let n = 10_007;
        let mut r =
            |scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform(-scale, scale)).collect() };
        let (p0, g, m0, v0) = (r(1.0), r(0.1), r(0.01), r(1e-4));
        let v0: Vec<f32> = v0.iter().map(|v| v.abs()).collect();
        for (beta1, wd) in [(0.9, 0.0), (0.3, 0.01), (0.5, 1e-4)] {
            let h = AdamHyper {
                lr: 1e-3,
                beta1,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
            };
            let (mut pa, mut ma, mut va) = (p0.clone(), m0.clone(), v0.clone());
            let (mut pb, mut mb, mut vb) = (p0.clone(), m0.clone(), v0.clone());
            for step in 1..=5 {
                let c = AdamStepScalars::new(&h, step);
                adam_update_portable(&c, &mut pa, &g, &mut ma, &mut va);
                // SAFETY: FMA and AVX2 were detected above.
                unsafe { adam_update_x86_fma(&c, &mut pb, &g, &mut mb, &mut vb) };
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pa), bits(&pb), "param, beta1 {beta1} wd {wd}");
            assert_eq!(bits(&ma), bits(&mb), "exp_avg");
            assert_eq!(bits(&va), bits(&vb), "exp_avg_sq");
        }
    }
    use std::path::PathBuf;

    /// Distance in units in the last place between two f32s (0 if equal,
    /// counting across zero).
    fn ulps(a: f32, b: f32) -> u64 {
        fn ordered(x: f32) -> i64 {
            let i = x.to_bits() as i32;
            i64::from(if i < 0 { i32::MIN.wrapping_sub(i) } else { i })
        }
        (ordered(a) - ordered(b)).unsigned_abs()
    }

    fn fresh(name: &str, n: usize) -> AdamParamState {
        AdamParamState {
            name: name.to_string(),
            step: 0,
            exp_avg: vec![0.0; n],
            exp_avg_sq: vec![0.0; n],
        }
    }

    /// The published algorithm in f64, step by step.
    struct Reference {
        p: Vec<f64>,
        m: Vec<f64>,
        v: Vec<f64>,
        t: i32,
    }

    impl Reference {
        // Index loops mirror the formula's notation.
        #[allow(clippy::needless_range_loop)]
        fn step(&mut self, h: &AdamHyper, grad: &[f32]) {
            self.t += 1;
            for i in 0..self.p.len() {
                let g = f64::from(grad[i]) + h.weight_decay * self.p[i];
                self.m[i] = h.beta1 * self.m[i] + (1.0 - h.beta1) * g;
                self.v[i] = h.beta2 * self.v[i] + (1.0 - h.beta2) * g * g;
                let m_hat = self.m[i] / (1.0 - h.beta1.powi(self.t));
                let v_hat = self.v[i] / (1.0 - h.beta2.powi(self.t));
                self.p[i] -= h.lr * m_hat / (v_hat.sqrt() + h.eps);
            }
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn matches_the_published_formula_computed_in_f64() {
        let cases = [
            AdamHyper::default(),
            AdamHyper {
                beta1: 0.5,
                ..AdamHyper::default()
            },
            AdamHyper {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.01,
            },
        ];
        for h in cases {
            let init = [0.5f32, -1.25, 3.0, 0.0, 1e-3];
            let mut p = init.to_vec();
            let mut st = fresh("w", p.len());
            let mut r = Reference {
                p: init.iter().map(|&x| f64::from(x)).collect(),
                m: vec![0.0; 5],
                v: vec![0.0; 5],
                t: 0,
            };
            for s in 0..8 {
                // Gradients of changing sign and magnitude, including zero.
                let grad: Vec<f32> = (0..5)
                    .map(|i| ((i * 7 + s * 3) % 11) as f32 * 0.3 - 1.5)
                    .collect();
                adam_step(&h, &mut p, &grad, &mut st);
                r.step(&h, &grad);
                assert_eq!(st.step, s as u64 + 1);
                for i in 0..5 {
                    let close = |got: f32, want: f64, what: &str| {
                        // Relative 2e-6 plus an absolute term for the
                        // cancellation in small moments.
                        let tol = 2e-6 * want.abs() + 1e-7;
                        assert!(
                            (f64::from(got) - want).abs() <= tol,
                            "{h:?} step {s} {what}[{i}]: got {got}, want {want}"
                        );
                    };
                    close(p[i], r.p[i], "param");
                    close(st.exp_avg[i], r.m[i], "exp_avg");
                    close(st.exp_avg_sq[i], r.v[i], "exp_avg_sq");
                }
            }
        }
    }

    fn fixture_path() -> PathBuf {
        let rel = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/adam_torch_reference.json");
        if rel.exists() {
            return rel;
        }
        PathBuf::from("/work/shared/fixtures/adam_torch_reference.json")
    }

    fn flatten(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
            serde_json::Value::Number(n) => {
                out.push(n.as_f64().expect("fixture number") as f32);
            }
            other => panic!("unexpected fixture value {other}"),
        }
    }

    fn tensor(v: &serde_json::Value) -> Vec<f32> {
        let mut out = Vec::new();
        flatten(v, &mut out);
        out
    }

    #[test]
    fn matches_torch_reference_trajectories_within_4_ulps() {
        let path = fixture_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the torch reference fixture is required but cannot be read at {} \
                 (also looked for ../shared/fixtures relative to the crate): {e}",
                path.display()
            )
        });
        let doc: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        let cases = doc["cases"].as_array().expect("fixture has cases");
        assert_eq!(cases.len(), 3, "fixture should hold three cases");
        let names = ["fc.weight", "fc.bias"];
        let mut worst = 0;
        let mut compared = 0;
        for case in cases {
            let hy = &case["hyper"];
            assert_eq!(hy["amsgrad"], serde_json::Value::Bool(false));
            let h = AdamHyper {
                lr: hy["lr"].as_f64().expect("lr"),
                beta1: hy["betas"][0].as_f64().expect("beta1"),
                beta2: hy["betas"][1].as_f64().expect("beta2"),
                eps: hy["eps"].as_f64().expect("eps"),
                weight_decay: hy["weight_decay"].as_f64().expect("weight_decay"),
            };
            let mut params: Vec<Vec<f32>> =
                names.iter().map(|n| tensor(&case["init"][n])).collect();
            let mut states: Vec<AdamParamState> = names
                .iter()
                .zip(&params)
                .map(|(n, p)| fresh(n, p.len()))
                .collect();
            let steps = case["steps"].as_array().expect("steps");
            assert_eq!(steps.len(), 5);
            for (si, step) in steps.iter().enumerate() {
                for (k, name) in names.iter().enumerate() {
                    let grad = tensor(&step["grad"][name]);
                    adam_step(&h, &mut params[k], &grad, &mut states[k]);
                    let after = &step["after"][name];
                    assert_eq!(
                        states[k].step as f64,
                        after["step"].as_f64().expect("step"),
                        "step counter"
                    );
                    for (what, got) in [
                        ("param", &params[k]),
                        ("exp_avg", &states[k].exp_avg),
                        ("exp_avg_sq", &states[k].exp_avg_sq),
                    ] {
                        let want = tensor(&after[what]);
                        assert_eq!(want.len(), got.len());
                        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            let d = ulps(g, w);
                            worst = worst.max(d);
                            compared += 1;
                            assert!(
                                d <= 4,
                                "case {} step {} {name} {what}[{i}]: got {g:e}, torch {w:e} ({d} ulps)",
                                case["name"],
                                si + 1
                            );
                        }
                    }
                }
            }
        }
        eprintln!("compared {compared} values with torch, worst {worst} ulps");
    }

    #[test]
    fn fma_f32_is_correctly_rounded() {
        let mut rng = crate::train::rng::Xoshiro256::from_seed(99);
        let check = |a: f32, b: f32, c: f32| {
            let want = a.mul_add(b, c);
            let got = fma_f32(a, b, c);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "fma({a:e}, {b:e}, {c:e}) = {got:e}, want {want:e}"
            );
        };
        for _ in 0..200_000 {
            let a = f32::from_bits(rng.next_u64() as u32 & 0x7fff_ffff) * 1e-20;
            let b = rng.uniform(-4.0, 4.0);
            let c = rng.uniform(-1.0, 1.0) * if rng.next_u64() & 1 == 0 { 1e-3 } else { 1.0 };
            check(a, b, c);
            check(
                rng.uniform(-1.0, 1.0),
                rng.uniform(-1.0, 1.0),
                rng.uniform(-1.0, 1.0),
            );
            // Products that nearly cancel c: the hard cases for rounding.
            let x = rng.uniform(0.5, 1.0);
            let y = rng.uniform(0.5, 1.0);
            check(x, y, -(x * y));
            check(x, y, -(x * y) + f32::EPSILON * rng.uniform(-1.0, 1.0));
        }
        // Halfway cases where naive double rounding goes wrong: a*b + c lies
        // just above the midpoint between two f32 but rounds onto it in f64.
        let one_plus = 1.0 + f32::EPSILON; // 1 + 2^-23
        check(one_plus, 1.0 + 0.5 * f32::EPSILON, f32::from_bits(1) * 1e-3);
        check(one_plus, one_plus, -1.0);
        check(1.0, 1.0, f32::from_bits(0x3380_0001)); // 1 + (2^-24 + tiny)
        check(f32::MAX, 2.0, -f32::MAX);
        check(f32::INFINITY, 1.0, 1.0);
        check(0.0, 0.0, -0.0);
    }

    #[test]
    fn ulps_counts_across_zero() {
        assert_eq!(ulps(1.0, 1.0), 0);
        assert_eq!(ulps(1.0, f32::from_bits(1.0f32.to_bits() + 3)), 3);
        assert_eq!(ulps(-0.0, 0.0), 0);
        assert_eq!(ulps(f32::from_bits(1), -f32::from_bits(1)), 2);
    }

    #[test]
    fn validate_rejects_bad_ranges() {
        let ok = AdamHyper::default();
        assert!(ok.validate().is_ok());
        let e = AdamHyper { beta1: 1.0, ..ok }.validate().unwrap_err();
        assert!(e.contains("betas[0]"), "{e}");
        let e = AdamHyper { lr: -1.0, ..ok }.validate().unwrap_err();
        assert!(e.contains("lr"), "{e}");
    }
}
