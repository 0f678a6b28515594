//! A small, explicit pseudo-random number generator.
//!
//! Everything random in a run (initial weights, synthetic data, noise, the
//! order of each epoch) comes from [`Xoshiro256`] generators derived from the
//! run's seed. The generator's whole state is four `u64`s, which is what
//! [`crate::state::DataState::rng`] stores, so there is no hidden state that a
//! checkpoint could miss.
//!
//! Only integer arithmetic, additions and multiplications are used to turn
//! bits into numbers (no `ln`, `cos`, ...): the system's libm could differ
//! between machines, and a run resumed elsewhere must regenerate exactly the
//! same dataset and data order.

/// Independent streams derived from one seed, so that, for example, adding a
/// layer does not change the data order.
pub mod stream {
    /// Initial weights.
    pub const INIT: u64 = 1;
    /// Dataset generation (synthetic inputs, teacher, noise).
    pub const DATA: u64 = 2;
    /// Order of the examples in one epoch (indexed by the epoch number).
    pub const ORDER: u64 = 3;
    /// The trainer's general-purpose generator stored in the checkpoint.
    pub const TRAIN: u64 = 4;
    /// Which examples are held out for validation.
    pub const SPLIT: u64 = 5;
}

/// One step of SplitMix64: advances `state` and returns a well-mixed value.
/// Used to expand a single `u64` seed into a xoshiro state.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** by Blackman and Vigna: fast, 256 bits of state, good quality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// Seeds the generator by running SplitMix64 from `seed`, as recommended by
    /// the authors (this never produces the forbidden all-zero state in
    /// practice; [`Xoshiro256::from_state`] guards against it anyway).
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self::from_state(s)
    }

    /// A generator for `(seed, stream, index)`: each combination gets an
    /// unrelated sequence, and no state other than these three numbers is
    /// involved (the data order of epoch `e` is `derive(seed, ORDER, e)`).
    pub fn derive(seed: u64, stream: u64, index: u64) -> Self {
        let mut sm = seed;
        let a = splitmix64(&mut sm);
        let mut sm = a ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix64(&mut sm);
        let mut sm = b ^ index.wrapping_mul(0xAEF1_7502_108E_F2D9);
        Self::from_seed(splitmix64(&mut sm))
    }

    /// Rebuilds a generator from a stored state.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            // The all-zero state is a fixed point of xoshiro; replace it by a
            // fixed non-zero state rather than producing zeros forever.
            return Self::from_seed(0);
        }
        Self { s }
    }

    /// The full state, for checkpointing.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 random bits (every value exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// Approximately standard normal: the Irwin–Hall sum of 12 uniforms minus
    /// 6 (mean 0, variance 1, tails cut at ±6). Chosen over Box–Muller because
    /// it needs no transcendental functions, so it is bit-identical on every
    /// machine.
    pub fn normal(&mut self) -> f32 {
        let mut sum = 0.0f32;
        for _ in 0..12 {
            sum += self.next_f32();
        }
        sum - 6.0
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's
    /// multiply-and-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// The order of the examples in epoch `epoch`: a Fisher–Yates shuffle of
/// `0..n` driven by a generator derived from `(seed, epoch)` alone, so that
/// the seed, the epoch and the position inside it determine the next batch.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    epoch_permutation_in(seed, stream::ORDER, epoch, n)
}

/// A Fisher–Yates shuffle of `0..n` driven by the generator of
/// `(seed, stream, index)`.
pub fn epoch_permutation_in(seed: u64, stream: u64, index: u64, n: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Xoshiro256::derive(seed, stream, index);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference values from
        // the published algorithm).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn xoshiro_reference_values() {
        // xoshiro256** with state [1, 2, 3, 4]: the published reference
        // implementation gives these first outputs.
        let mut r = Xoshiro256::from_state([1, 2, 3, 4]);
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1509978240);
        assert_eq!(r.next_u64(), 1215971899390074240);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let mut a = Xoshiro256::from_seed(42);
        for _ in 0..10 {
            a.next_u64();
        }
        let mut b = Xoshiro256::from_state(a.state());
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let p = epoch_permutation(7, 3, 1000);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, epoch_permutation(7, 3, 1000));
        assert_ne!(p, epoch_permutation(7, 4, 1000));
        assert_ne!(p, epoch_permutation(8, 3, 1000));
    }

    #[test]
    fn uniform_and_normal_ranges() {
        let mut r = Xoshiro256::from_seed(1);
        let mut mean = 0.0f64;
        let mut var = 0.0f64;
        let n = 20000;
        for _ in 0..n {
            let u = r.next_f32();
            assert!((0.0..1.0).contains(&u));
            let z = f64::from(r.normal());
            mean += z;
            var += z * z;
        }
        mean /= n as f64;
        var /= n as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        for n in [1u64, 2, 3, 10, 1 << 40] {
            for _ in 0..100 {
                assert!(r.below(n) < n);
            }
        }
    }
}
