//! The products of a Linear layer on `matrixmultiply`'s sgemm, split into
//! pieces that the [`Pool`] runs on several threads.
//!
//! Why the results do not depend on the number of threads: every product is
//! cut into pieces along an *output* dimension (columns of `y` and `dx`, rows
//! of `dw`), at boundaries computed from the shapes alone
//! ([`piece_len`]). A piece is one sgemm call on its own block of the output
//! with the full inner dimension, so each output element is computed by the
//! same call, with the same summation order, whichever thread runs it and
//! however many threads there are. (sgemm itself sums each element over the
//! inner dimension in blocks of a fixed size, in order, so the cut along the
//! output does not change any sum either; the fixed cut makes the guarantee
//! independent of that detail.)
//!
//! What the results do depend on: sgemm picks its kernel by the CPU's
//! features at run time (FMA or not), so two machines with different
//! instruction sets may round differently. A run resumed on the same kind of
//! machine continues bit-identically.

use super::model::Activation;
use super::pool::{Pool, SharedMut};

/// Multiply-adds below which a product is not split (a piece this small
/// costs about as much as waking a thread).
const MIN_PIECE_MACS: usize = 1 << 19;
/// Most pieces a product is cut into: enough to balance up to 16 threads.
const MAX_PIECES: usize = 16;
/// Piece boundaries are multiples of this (the sgemm kernel's tile width).
const PIECE_ALIGN: usize = 16;

/// Length of a piece when `total` outputs, each costing `macs_per_output`
/// multiply-adds, are split. Depends on the shape only.
fn piece_len(total: usize, macs_per_output: usize) -> usize {
    let macs = total.saturating_mul(macs_per_output);
    let pieces = (macs / MIN_PIECE_MACS).clamp(1, MAX_PIECES);
    total
        .div_ceil(pieces)
        .next_multiple_of(PIECE_ALIGN)
        .min(total)
        .max(1)
}

/// `c[m, n] = a[m, k] · b[k, n]` with arbitrary strides (row stride,
/// column stride) for each matrix; `c` is overwritten.
///
/// # Safety
/// The pointers and strides must describe matrices inside live buffers, and
/// nothing else may access `c`'s elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
    c: (*mut f32, usize, usize),
) {
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.0,
        a.1 as isize,
        a.2 as isize,
        b.0,
        b.1 as isize,
        b.2 as isize,
        0.0,
        c.0,
        c.1 as isize,
        c.2 as isize,
    );
}

/// `y[b, o] = act(x[b, :] · w[o, :] + bias[o])` for a `[batch, n_in]` input
/// `x` and a `[n_out, n_in]` weight `w`; `act = None` leaves the sum as is.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    pool: &Pool,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    n_in: usize,
    n_out: usize,
    act: Option<Activation>,
) {
    let batch = x.len() / n_in;
    assert_eq!(x.len(), batch * n_in, "input length");
    assert_eq!(w.len(), n_out * n_in, "weight length");
    assert_eq!(bias.len(), n_out, "bias length");
    assert_eq!(y.len(), batch * n_out, "output length");
    if batch == 0 || n_out == 0 {
        return;
    }
    let piece = piece_len(n_out, batch * n_in);
    let pieces = n_out.div_ceil(piece);
    let out = SharedMut::new(y);
    pool.run(pieces, &|p| {
        let o0 = p * piece;
        let o1 = (o0 + piece).min(n_out);
        // SAFETY: x and w are live slices of the asserted lengths; the
        // piece writes only columns o0..o1 of y, which no other piece
        // touches, and y outlives `pool.run`.
        unsafe {
            if n_in == 0 {
                for b in 0..batch {
                    out.slice(b * n_out + o0, o1 - o0).fill(0.0);
                }
            } else {
                gemm(
                    batch,
                    n_in,
                    o1 - o0,
                    (x.as_ptr(), n_in, 1),
                    (w.as_ptr().add(o0 * n_in), 1, n_in),
                    (out.ptr().add(o0), n_out, 1),
                );
            }
            for b in 0..batch {
                let row = out.slice(b * n_out + o0, o1 - o0);
                for (v, bo) in row.iter_mut().zip(&bias[o0..o1]) {
                    *v += bo;
                }
                match act {
                    Some(Activation::Relu) => row.iter_mut().for_each(|v| *v = v.max(0.0)),
                    Some(Activation::Tanh) => row.iter_mut().for_each(|v| *v = v.tanh()),
                    Some(Activation::Identity) | None => {}
                }
            }
        }
    });
}

/// Gradients of a Linear layer given `dy = dL/dy` (`[batch, n_out]`):
/// `dw = dyᵀ x`, `db[o] = Σ_b dy[b, o]` (summed in batch order), and, when
/// `dx` is given, `dx = dy w`, then multiplied by the derivative of
/// `input_act`, the activation that produced `x` (so `dx` is the gradient
/// with respect to the previous layer's pre-activation).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    pool: &Pool,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    input_act: Activation,
    n_in: usize,
    n_out: usize,
) {
    let batch = dy.len() / n_out.max(1);
    assert_eq!(x.len(), batch * n_in, "input length");
    assert_eq!(w.len(), n_out * n_in, "weight length");
    assert_eq!(dy.len(), batch * n_out, "output gradient length");
    assert_eq!(dw.len(), n_out * n_in, "weight gradient length");
    assert_eq!(db.len(), n_out, "bias gradient length");
    let want_dx = dx.is_some();
    let dx = dx.map(|d| {
        assert_eq!(d.len(), batch * n_in, "input gradient length");
        SharedMut::new(d)
    });
    // Pieces 0..dw_pieces: rows of dw (and db); then columns of dx.
    let dw_piece = piece_len(n_out, batch * n_in);
    let dw_pieces = if n_out == 0 {
        0
    } else {
        n_out.div_ceil(dw_piece)
    };
    let dx_piece = piece_len(n_in, batch * n_out);
    let dx_pieces = if want_dx && n_in > 0 {
        n_in.div_ceil(dx_piece)
    } else {
        0
    };
    let dw_out = SharedMut::new(dw);
    let db_out = SharedMut::new(db);
    let job = |p: usize| {
        if p < dw_pieces {
            let o0 = p * dw_piece;
            let o1 = (o0 + dw_piece).min(n_out);
            // SAFETY: the piece writes rows o0..o1 of dw and db[o0..o1],
            // disjoint from every other piece; inputs are live slices of
            // the asserted lengths.
            unsafe {
                if batch == 0 {
                    dw_out.slice(o0 * n_in, (o1 - o0) * n_in).fill(0.0);
                } else if n_in > 0 {
                    gemm(
                        o1 - o0,
                        batch,
                        n_in,
                        (dy.as_ptr().add(o0), 1, n_out),
                        (x.as_ptr(), n_in, 1),
                        (dw_out.ptr().add(o0 * n_in), n_in, 1),
                    );
                }
                let db = db_out.slice(o0, o1 - o0);
                db.fill(0.0);
                for row in dy.chunks_exact(n_out) {
                    for (d, g) in db.iter_mut().zip(&row[o0..o1]) {
                        *d += g;
                    }
                }
            }
        } else {
            let dx = dx.expect("dx pieces exist only with dx");
            let i0 = (p - dw_pieces) * dx_piece;
            let i1 = (i0 + dx_piece).min(n_in);
            // SAFETY: the piece writes columns i0..i1 of dx only.
            unsafe {
                if n_out == 0 || batch == 0 {
                    for b in 0..batch {
                        dx.slice(b * n_in + i0, i1 - i0).fill(0.0);
                    }
                } else {
                    gemm(
                        batch,
                        n_out,
                        i1 - i0,
                        (dy.as_ptr(), n_out, 1),
                        (w.as_ptr().add(i0), n_in, 1),
                        (dx.ptr().add(i0), n_in, 1),
                    );
                }
                for b in 0..batch {
                    let d = dx.slice(b * n_in + i0, i1 - i0);
                    let a = &x[b * n_in + i0..b * n_in + i1];
                    match input_act {
                        Activation::Relu => {
                            for (d, a) in d.iter_mut().zip(a) {
                                if *a <= 0.0 {
                                    *d = 0.0;
                                }
                            }
                        }
                        Activation::Tanh => {
                            for (d, a) in d.iter_mut().zip(a) {
                                *d *= 1.0 - a * a;
                            }
                        }
                        Activation::Identity => {}
                    }
                }
            }
        }
    };
    let pieces = dw_pieces + dx_pieces;
    if batch.saturating_mul(n_in).saturating_mul(n_out) < MIN_PIECE_MACS {
        // Too small to be worth waking a thread (one piece of each kind).
        (0..pieces).for_each(job);
    } else {
        pool.run(pieces, &job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Xoshiro256;

    fn rand(rng: &mut Xoshiro256, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    struct Out {
        y: Vec<f32>,
        dw: Vec<f32>,
        db: Vec<f32>,
        dx: Vec<f32>,
    }

    fn run(threads: usize, batch: usize, n_in: usize, n_out: usize, act: Activation) -> Out {
        let mut rng = Xoshiro256::from_seed((batch * 31 + n_in * 7 + n_out) as u64);
        let (x, w, b, dy) = (
            rand(&mut rng, batch * n_in),
            rand(&mut rng, n_out * n_in),
            rand(&mut rng, n_out),
            rand(&mut rng, batch * n_out),
        );
        let pool = Pool::new(threads);
        let mut y = vec![f32::NAN; batch * n_out];
        linear_forward(&pool, &x, &w, &b, &mut y, n_in, n_out, Some(act));
        let (mut dw, mut db, mut dx) = (
            vec![f32::NAN; n_out * n_in],
            vec![f32::NAN; n_out],
            vec![f32::NAN; batch * n_in],
        );
        linear_backward(
            &pool,
            &x,
            &w,
            &dy,
            &mut dw,
            &mut db,
            Some(&mut dx),
            act,
            n_in,
            n_out,
        );
        // Reference in f64 with naive loops.
        for bi in 0..batch {
            for o in 0..n_out {
                let mut s = f64::from(b[o]);
                for i in 0..n_in {
                    s += f64::from(x[bi * n_in + i]) * f64::from(w[o * n_in + i]);
                }
                let s = match act {
                    Activation::Relu => s.max(0.0),
                    Activation::Tanh => s.tanh(),
                    Activation::Identity => s,
                };
                let got = f64::from(y[bi * n_out + o]);
                assert!((got - s).abs() <= 1e-4 * (1.0 + s.abs()), "y {got} vs {s}");
            }
        }
        for o in 0..n_out {
            for i in (0..n_in).step_by(7) {
                let s: f64 = (0..batch)
                    .map(|bi| f64::from(dy[bi * n_out + o]) * f64::from(x[bi * n_in + i]))
                    .sum();
                let got = f64::from(dw[o * n_in + i]);
                assert!((got - s).abs() <= 1e-4 * (1.0 + s.abs()), "dw {got} vs {s}");
            }
        }
        for bi in 0..batch {
            for i in (0..n_in).step_by(5) {
                let mut s: f64 = (0..n_out)
                    .map(|o| f64::from(dy[bi * n_out + o]) * f64::from(w[o * n_in + i]))
                    .sum();
                let a = x[bi * n_in + i];
                s = match act {
                    Activation::Relu if a <= 0.0 => 0.0,
                    Activation::Tanh => s * f64::from(1.0 - a * a),
                    _ => s,
                };
                let got = f64::from(dx[bi * n_in + i]);
                assert!((got - s).abs() <= 1e-4 * (1.0 + s.abs()), "dx {got} vs {s}");
            }
        }
        Out { y, dw, db, dx }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    #[test]
    fn products_match_an_f64_reference_and_are_identical_at_any_thread_count() {
        // Shapes that are split into many pieces, a few, and one; odd sizes
        // that leave partial kernel tiles.
        let shapes = [(32, 512, 2048), (33, 300, 77), (5, 3, 2), (256, 64, 512)];
        for (batch, n_in, n_out) in shapes {
            for act in [Activation::Relu, Activation::Tanh, Activation::Identity] {
                let one = run(1, batch, n_in, n_out, act);
                for threads in [2, 3, 4] {
                    let many = run(threads, batch, n_in, n_out, act);
                    let what = format!("{batch}x{n_in}x{n_out} {act:?} at {threads} threads");
                    assert_eq!(bits(&one.y), bits(&many.y), "y {what}");
                    assert_eq!(bits(&one.dw), bits(&many.dw), "dw {what}");
                    assert_eq!(bits(&one.db), bits(&many.db), "db {what}");
                    assert_eq!(bits(&one.dx), bits(&many.dx), "dx {what}");
                }
            }
        }
    }

    #[test]
    fn pieces_depend_on_the_shape_only() {
        assert_eq!(piece_len(8, 10), 8);
        assert_eq!(piece_len(2048, 32 * 512), 128);
        assert_eq!(piece_len(100, 1 << 30), 16);
        assert!(piece_len(1, 1) >= 1);
    }
}
