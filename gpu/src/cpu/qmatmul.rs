//! `x · Wᵀ` for weights in any [`QuantFormat`], keeping them in their format.
//!
//! Integer formats: the activations are quantized to int8 once per call, then each thread
//! takes a chunk of weight rows and, for every activation row, runs the integer dot kernel —
//! the chunk's weights stay in cache while all activation rows pass over them. Float formats
//! go through the f32 tiled kernel, f16 rows widened one chunk at a time.

use super::matmul;
use super::qdot::{best_dot, DotFn, QuantizedActs};
use crate::quant::format::QuantFormat;
use crate::quant::qtensor::QTensor;
use half::f16;
use rayon::prelude::*;
use std::borrow::Cow;

/// Weight rows per rayon task in the integer path.
const QROWS_PER_TASK: usize = 64;
/// Tasks per thread for a single-row product: a few, so a thread slowed by something else
/// does not hold the step back, not many, since each costs a few microseconds.
const TASKS_PER_THREAD: usize = 4;
/// From this many activation rows on, integer formats are widened to f32 a chunk of rows at a
/// time and multiplied by the tiled f32 kernel: the widening is paid once per chunk and shared
/// by all rows, and the f32 kernel is ~4× faster per multiply-add than the int8 one (measured:
/// BENCHMARKS.md). Below it (decode), activations are quantized to int8 and the integer
/// kernels read each weight once.
pub const F32_TILE_MIN_ROWS: usize = 16;

/// `x · Wᵀ` with the best kernels for this CPU; `x` is `m × w.cols`.
pub fn qmatmul(x: &[f32], w: &QTensor) -> Vec<f32> {
    qmatmul_with(x, w, best_dot().1)
}

/// `x · Wᵀ` with a chosen integer dot kernel (tests compare every variant).
pub fn qmatmul_with(x: &[f32], w: &QTensor, dot: DotFn) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    match w.format {
        QuantFormat::F32 => matmul::matmul(x, k, bytemuck::cast_slice(&w.words), n),
        QuantFormat::F16 => matmul::matmul_rows(x, k, n, &|j0, j1| {
            let mut rows = vec![0.0f32; (j1 - j0) * k];
            for (r, out) in (j0..j1).zip(rows.chunks_exact_mut(k)) {
                let halves: &[f16] = bytemuck::cast_slice(w.row_words(r));
                for (o, h) in out.iter_mut().zip(halves) {
                    *o = h.to_f32();
                }
            }
            Cow::Owned(rows)
        }),
        _ if x.len() / k.max(1) >= F32_TILE_MIN_ROWS => matmul::matmul_rows(x, k, n, &|j0, j1| {
            let mut rows = vec![0.0f32; (j1 - j0) * k];
            for (r, out) in (j0..j1).zip(rows.chunks_exact_mut(k)) {
                w.dequantize_row(r, out);
            }
            Cow::Owned(rows)
        }),
        _ => {
            let acts = QuantizedActs::quantize(x, k);
            integer_matmul(&acts, w, dot)
        }
    }
}

/// `x · Wᵢᵀ` for weights sharing the input: activations are quantized once for every
/// integer-format weight that takes the int8 path.
pub fn qmatmul_many(x: &[f32], ws: &[&QTensor]) -> Vec<Vec<f32>> {
    let k = ws.first().map_or(0, |w| w.cols);
    let int8_path = |w: &QTensor| w.format.is_quantized() && x.len() / k.max(1) < F32_TILE_MIN_ROWS;
    let acts = ws
        .iter()
        .any(|w| int8_path(w))
        .then(|| QuantizedActs::quantize(x, k));
    ws.iter()
        .map(|w| match &acts {
            Some(a) if int8_path(w) => integer_matmul(a, w, best_dot().1),
            _ => qmatmul(x, w),
        })
        .collect()
}

/// The integer path over already-quantized activations.
pub fn integer_matmul(acts: &QuantizedActs, w: &QTensor, dot: DotFn) -> Vec<f32> {
    let n = w.rows;
    let m = acts.rows();
    if m == 1 {
        // Decode of one sequence: threads write their rows of the output directly, in a few
        // large chunks (each task costs microseconds; a token runs ~200 matmuls).
        let per_task = n
            .div_ceil(TASKS_PER_THREAD * rayon::current_num_threads())
            .max(QROWS_PER_TASK / 2);
        let mut out = vec![0.0f32; n];
        let a = acts.row(0);
        out.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(c, chunk)| {
                let j0 = c * per_task;
                dot(w, j0..j0 + chunk.len(), a, chunk);
            });
        return out;
    }
    let chunks: Vec<Vec<f32>> = (0..n.div_ceil(QROWS_PER_TASK))
        .into_par_iter()
        .map(|c| {
            let (j0, j1) = (c * QROWS_PER_TASK, ((c + 1) * QROWS_PER_TASK).min(n));
            let mut out = vec![0.0f32; m * (j1 - j0)];
            for (i, row_out) in out.chunks_exact_mut(j1 - j0).enumerate() {
                dot(w, j0..j1, acts.row(i), row_out);
            }
            out
        })
        .collect();
    matmul::gather_column_blocks(&chunks, m, n, QROWS_PER_TASK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::qdot::available_dots;
    use crate::quant::format::GroupSize;
    use crate::quant::quantize::{quantize, QuantizeOptions};
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// Integer kernels against the float64 product of the *dequantized* weights and the
    /// original activations: the only error left is int8 activation rounding (≈ 0.3–0.6%
    /// relative on random data).
    const INT8_ACT_REL_TOL: f64 = 1e-2;
    /// SIMD variants against the scalar twin: same integers, different float summation order.
    const VARIANT_REL_TOL: f64 = 1e-5;

    fn random(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32)
            .collect()
    }

    fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
    }

    #[test]
    fn every_format_and_variant_matches_float64_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let formats = [
            QuantFormat::F32,
            QuantFormat::F16,
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4(GroupSize::G64),
            QuantFormat::Q4M(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G128),
        ];
        for &(m, k, n) in &[(1, 128, 70), (5, 256, 130), (3, 384, 9), (20, 128, 33)] {
            let x = random(&mut rng, m * k);
            let wv = random(&mut rng, n * k);
            for f in formats {
                let q = quantize(&wv, n, k, f, &QuantizeOptions::default()).unwrap();
                let wd = q.dequantize();
                let reference: Vec<f64> = (0..m * n)
                    .map(|o| {
                        (0..k)
                            .map(|p| x[o / n * k + p] as f64 * wd[o % n * k + p] as f64)
                            .sum()
                    })
                    .collect();
                let tol = if f.is_quantized() {
                    INT8_ACT_REL_TOL
                } else {
                    1e-5
                };
                let scalar = qmatmul_with(&x, &q, super::super::qdot::dot_scalar);
                if f.is_quantized() {
                    // The int8 path directly, whatever m is.
                    let acts = QuantizedActs::quantize(&x, k);
                    let direct = integer_matmul(&acts, &q, super::super::qdot::dot_scalar);
                    let e = rel_err(&direct, &reference);
                    assert!(e < INT8_ACT_REL_TOL, "{f} int8 scalar m={m}: {e}");
                    let direct64: Vec<f64> = direct.iter().map(|&v| v as f64).collect();
                    for (name, dot) in available_dots() {
                        let e = rel_err(&integer_matmul(&acts, &q, dot), &direct64);
                        assert!(
                            e < VARIANT_REL_TOL,
                            "{f} {name} int8 vs scalar m={m} k={k} n={n}: {e}"
                        );
                    }
                }
                let e = rel_err(&scalar, &reference);
                assert!(e < tol, "{f} scalar m={m} k={k} n={n}: {e}");
                let scalar64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
                for (name, dot) in available_dots() {
                    let got = qmatmul_with(&x, &q, dot);
                    let e = rel_err(&got, &scalar64);
                    assert!(
                        e < VARIANT_REL_TOL,
                        "{f} {name} vs scalar m={m} k={k} n={n}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn shared_input_products_equal_separate_ones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let k = 256;
        let ws: Vec<QTensor> = [
            (QuantFormat::Q8, 40),
            (QuantFormat::Q4(GroupSize::G64), 24),
            (QuantFormat::F16, 8),
        ]
        .iter()
        .map(|&(f, n)| {
            quantize(
                &random(&mut rng, n * k),
                n,
                k,
                f,
                &QuantizeOptions::default(),
            )
            .unwrap()
        })
        .collect();
        let refs: Vec<&QTensor> = ws.iter().collect();
        for m in [1, 3, F32_TILE_MIN_ROWS + 1] {
            let x = random(&mut rng, m * k);
            let many = qmatmul_many(&x, &refs);
            for (w, got) in ws.iter().zip(&many) {
                assert_eq!(got, &qmatmul(&x, w), "{} m={m}", w.format);
            }
        }
    }

    #[test]
    fn activation_quantization_round_trips_within_half_a_step() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = random(&mut rng, 4 * 64);
        let a = QuantizedActs::quantize(&x, 64);
        for (b, xb) in x.chunks_exact(32).enumerate() {
            for (j, v) in xb.iter().enumerate() {
                let back = a.d[b] * f32::from(a.q[b * 32 + j]);
                assert!((back - v).abs() <= a.d[b] * 0.5 + 1e-7);
            }
            let sum = a.q[b * 32..(b + 1) * 32]
                .iter()
                .map(|&q| i32::from(q))
                .sum::<i32>();
            assert_eq!(a.c[b], a.d[b] * sum as f32);
        }
    }
}
