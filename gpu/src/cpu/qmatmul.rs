//! `x · Wᵀ` for weights in any [`QuantFormat`], keeping them in their format.
//!
//! Integer formats live in the interleaved [`PackedWeight`] layout. Activations are quantized
//! to int8 once per call (dynamic quantization, per 32-value block) and each thread takes a
//! run of row groups through the integer kernel, which reuses each weight load for up to four
//! activation rows (eight with AVX-512); in decode every weight is read once. Float formats
//! always take the f32 kernel, f16 rows widened one chunk at a time.
//!
//! Every row of a product takes the same numeric path whatever the number of rows: a served
//! request's tokens must not depend on what else shares its step (batch invariance). Q8 once
//! took f32 activations from 16 rows on, for fidelity in prefill (perplexity +0.19% instead
//! of +0.51% over f32 on SmolLM2); that made a decode row compute differently in a batch of
//! 16, and it made batched decode slower at 16 rows than at 15, so it is gone.

use super::matmul;
use super::packed::{PackedWeight, ROW_GROUP};
use super::pool::Pool;
use super::qdot::{best_gemm, ActRow, GemmFn, GemmOut, QuantizedActs};
use crate::error::{Error, Result};
use crate::quant::format::QuantFormat;
use crate::quant::qtensor::QTensor;
use crate::tensor::WeightStorage;
use std::borrow::Cow;

/// Row groups per pool task when several activation rows share the weights.
const GROUPS_PER_TASK: usize = 8;
/// Tasks per thread for a single-row product: threads claim tasks from a shared counter, so
/// several per thread let a thread slowed by something else take fewer.
const TASKS_PER_THREAD: usize = 8;

/// `x · Wᵀ` for a weight as the CPU backend stores it; `x` is `m × w.cols`.
pub fn host_matmul(x: &[f32], w: &WeightStorage) -> Result<Vec<f32>> {
    match w {
        WeightStorage::Host(q) => Ok(float_matmul(x, q)),
        WeightStorage::HostPacked(p) => Ok(packed_matmul(x, p)),
        WeightStorage::Device(_) => Err(Error::ForeignStorage("wgpu")),
    }
}

/// `x · Wᵢᵀ` for weights sharing the input: activations are quantized once for every integer
/// weight.
pub fn host_matmul_many(x: &[f32], ws: &[&WeightStorage]) -> Result<Vec<Vec<f32>>> {
    let packed: Option<Vec<&PackedWeight>> = ws
        .iter()
        .map(|w| match w {
            WeightStorage::HostPacked(p) => Some(p),
            _ => None,
        })
        .collect();
    match packed {
        Some(ps) if !ps.is_empty() && ps.iter().all(|p| p.cols == ps[0].cols) => {
            let acts = QuantizedActs::quantize(x, ps[0].cols);
            Ok(integer_matmul_many(&acts, &ps, best_gemm().1))
        }
        _ => ws.iter().map(|w| host_matmul(x, w)).collect(),
    }
}

/// `x · Wᵀ` through the f32 kernel, any format widened a chunk of rows at a time (float
/// weights, and the reference path for row-major integer ones).
pub fn float_matmul(x: &[f32], w: &QTensor) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    match w.format {
        QuantFormat::F32 => matmul::matmul(x, k, bytemuck::cast_slice(&w.words), n),
        _ => matmul::matmul_rows(x, k, n, &|j0, j1| {
            let mut rows = vec![0.0f32; (j1 - j0) * k];
            for (r, out) in (j0..j1).zip(rows.chunks_exact_mut(k)) {
                w.dequantize_row(r, out);
            }
            Cow::Owned(rows)
        }),
    }
}

/// `x · Wᵀ` with the best kernels for this CPU.
pub fn packed_matmul(x: &[f32], w: &PackedWeight) -> Vec<f32> {
    packed_matmul_with(x, w, best_gemm().1)
}

/// `x · Wᵀ` with a chosen integer kernel (tests compare every variant).
pub fn packed_matmul_with(x: &[f32], w: &PackedWeight, gemm: GemmFn) -> Vec<f32> {
    integer_matmul(&QuantizedActs::quantize(x, w.cols), w, gemm)
}

/// The integer path over already-quantized activations.
pub fn integer_matmul(acts: &QuantizedActs, w: &PackedWeight, gemm: GemmFn) -> Vec<f32> {
    integer_matmul_many(acts, &[w], gemm)
        .pop()
        .unwrap_or_default()
}

/// [`integer_matmul`] for several weights over the same activations; with several rows, all
/// of their column blocks share one parallel region.
pub fn integer_matmul_many(
    acts: &QuantizedActs,
    ws: &[&PackedWeight],
    gemm: GemmFn,
) -> Vec<Vec<f32>> {
    let m = acts.rows();
    if m == 1 {
        return ws.iter().map(|w| single_row(acts, w, gemm)).collect();
    }
    // Several rows (a batch of decoding sequences): each task runs all of them over its row
    // groups, the kernel reusing each weight load for up to four rows (eight with AVX-512).
    let per_task = GROUPS_PER_TASK * ROW_GROUP;
    let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
    let ns: Vec<usize> = ws.iter().map(|w| w.rows).collect();
    let groups = |i: usize, c: usize| {
        c * GROUPS_PER_TASK..((c + 1) * GROUPS_PER_TASK).min(ws[i].row_groups())
    };
    // Rows of whole row groups: the padding rows past `n` are computed and not kept.
    let padded = |i: usize, c: usize| groups(i, c).len() * ROW_GROUP;
    matmul::gemm_column_blocks(m, &ns, per_task, padded, |i, c, out| {
        gemm(ws[i], groups(i, c), &rows, out);
    })
}

/// Decode of one sequence: threads write their runs of output rows directly.
fn single_row(acts: &QuantizedActs, w: &PackedWeight, gemm: GemmFn) -> Vec<f32> {
    let (n, groups) = (w.rows, w.row_groups());
    let pool = Pool::global();
    let per_task = groups.div_ceil(TASKS_PER_THREAD * pool.threads()).max(2);
    let mut out = vec![0.0f32; groups * ROW_GROUP];
    let a = acts.row(0);
    pool.for_each_chunk_mut(&mut out, per_task * ROW_GROUP, |c, chunk| {
        let g0 = c * per_task;
        let width = chunk.len();
        gemm(
            w,
            g0..g0 + width / ROW_GROUP,
            &[a],
            GemmOut::packed(chunk, width),
        );
    });
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::packed::ROW_GROUP;
    use crate::cpu::qdot::{available_gemms, gemm_scalar};
    use crate::quant::format::{Codebook, GroupSize};
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
            QuantFormat::Lut4(Codebook::Fp4),
            QuantFormat::Lut4(Codebook::Iq4nl),
        ];
        // Row counts that do and do not fill the last group of eight; m on both paths.
        for &(m, k, n) in &[
            (1, 128, 70),
            (5, 256, 130),
            (3, 384, 9),
            (20, 128, 33),
            (1, 256, 64),
            (9, 128, 24),
            // Enough rows for AMX tiles (where there are): whole tiles, a padded last one.
            (64, 128, 70),
            (59, 256, 33),
        ] {
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
                let e = rel_err(&float_matmul(&x, &q), &reference);
                assert!(e < 1e-5, "{f} f32 path m={m} k={k} n={n}: {e}");
                let Some(p) = PackedWeight::pack(&q) else {
                    continue;
                };
                let e = rel_err(&packed_matmul(&x, &p), &reference);
                assert!(e < INT8_ACT_REL_TOL, "{f} best path m={m} k={k} n={n}: {e}");
                // The int8 path directly, whatever m is.
                let acts = QuantizedActs::quantize(&x, k);
                let scalar = integer_matmul(&acts, &p, gemm_scalar);
                let e = rel_err(&scalar, &reference);
                assert!(e < INT8_ACT_REL_TOL, "{f} int8 scalar m={m}: {e}");
                let scalar64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
                for (name, gemm) in available_gemms() {
                    let got = integer_matmul(&acts, &p, gemm);
                    let e = rel_err(&got, &scalar64);
                    assert!(
                        e < VARIANT_REL_TOL,
                        "{f} {name} int8 vs scalar m={m} k={k} n={n}: {e}"
                    );
                    // A row's result does not depend on the rows batched with it.
                    for i in 0..m {
                        let alone = integer_matmul(
                            &QuantizedActs::quantize(&x[i * k..(i + 1) * k], k),
                            &p,
                            gemm,
                        );
                        assert_eq!(&got[i * n..(i + 1) * n], &alone[..], "{f} {name} row {i}");
                    }
                }
            }
        }
    }

    /// The narrow integer sums at their bounds: every weight at the code whose products are
    /// largest (Q8 ±127, Q4/Q4M 15, fp4 +12, iq4nl −127) against activations all +127 (row 0)
    /// or all −127 (row 1), so that each `maddubs` pair and each i16 block sum (AVX2's Q4 and
    /// fp4 paths) is as large as it gets. The integer sums are exact, so every variant gives
    /// the scalar kernel's bits.
    #[test]
    fn integer_sums_at_their_bounds_are_exact_in_every_variant() {
        let (m, k, n) = (2, 256, 16);
        let x: Vec<f32> = (0..m * k).map(|i| if i < k { 1.0 } else { -1.0 }).collect();
        let acts = QuantizedActs::quantize(&x, k);
        for (f, code, value) in [
            (QuantFormat::Q8, 127u8, 127.0f32),
            (QuantFormat::Q8, (-127i8) as u8, -127.0),
            (QuantFormat::Q4(GroupSize::G32), 15, 7.0),
            (QuantFormat::Q4M(GroupSize::G32), 15, 15.0),
            (QuantFormat::Lut4(Codebook::Fp4), 7, 12.0),
            (QuantFormat::Lut4(Codebook::Iq4nl), 0, -127.0),
        ] {
            let codes = vec![code; k];
            let words: Vec<u32> = (0..n)
                .flat_map(|_| crate::quant::qtensor::pack_codes(f, &codes))
                .collect();
            let groups = n * k / f.group();
            let mins = if matches!(f, QuantFormat::Q4M(_)) {
                vec![half::f16::ZERO; groups]
            } else {
                Vec::new()
            };
            let scales = vec![half::f16::ONE; groups];
            let q = QTensor::new(f, n, k, words, scales, mins).unwrap();
            let p = PackedWeight::pack(&q).unwrap();
            let want = integer_matmul(&acts, &p, gemm_scalar);
            // Activations of ±1 quantize to ±127 · (1/127): the sums are ±k · value.
            for (i, sign) in [(0, 1.0f32), (n, -1.0)] {
                let exact = sign * k as f32 * value;
                assert!(
                    (want[i] - exact).abs() <= 1e-4 * exact.abs(),
                    "{f} {code}: {}",
                    want[i]
                );
            }
            for (name, gemm) in available_gemms() {
                assert_eq!(
                    integer_matmul(&acts, &p, gemm),
                    want,
                    "{f} code {code}: {name}"
                );
            }
        }
    }

    /// The AVX-512 kernel pairs row groups in 512-bit registers: a group's values are the
    /// same paired or alone, whichever groups share its call.
    #[test]
    fn a_row_groups_values_do_not_depend_on_the_groups_beside_it() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        let (m, k, n) = (6, 128, 7 * ROW_GROUP - 3);
        let acts = QuantizedActs::quantize(&random(&mut rng, m * k), k);
        let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
        for f in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G64),
            QuantFormat::Lut4(Codebook::Fp4),
        ] {
            let q = quantize(
                &random(&mut rng, n * k),
                n,
                k,
                f,
                &QuantizeOptions::default(),
            );
            let p = PackedWeight::pack(&q.unwrap()).unwrap();
            let groups = p.row_groups();
            for (name, gemm) in available_gemms() {
                let run = |g: std::ops::Range<usize>, r: &[ActRow<'_>]| {
                    let width = g.len() * ROW_GROUP;
                    let mut out = vec![f32::NAN; r.len() * width];
                    gemm(&p, g, r, GemmOut::packed(&mut out, width));
                    out
                };
                let all = run(0..groups, &rows);
                for start in 0..groups {
                    for end in start + 1..=groups {
                        for r0 in [0, 1, 3] {
                            let part = run(start..end, &rows[r0..]);
                            let width = (end - start) * ROW_GROUP;
                            for (i, got) in part.chunks_exact(width).enumerate() {
                                let want =
                                    &all[(r0 + i) * groups * ROW_GROUP..][..groups * ROW_GROUP];
                                assert_eq!(
                                    got,
                                    &want[start * ROW_GROUP..end * ROW_GROUP],
                                    "{f} {name} groups {start}..{end} row {}",
                                    r0 + i
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Batched products write each task's columns in place, `n` values a row apart: a
    /// kernel writes exactly its rows' runs there, the same bits as into a buffer of its own,
    /// and not one value beside them.
    #[test]
    fn every_variant_writes_strided_runs_and_nothing_else() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
        let (k, n) = (128, 6 * ROW_GROUP);
        const UNTOUCHED: f32 = -1234.5;
        for f in [QuantFormat::Q8, QuantFormat::Q4(GroupSize::G32)] {
            let q = quantize(
                &random(&mut rng, n * k),
                n,
                k,
                f,
                &QuantizeOptions::default(),
            );
            let p = PackedWeight::pack(&q.unwrap()).unwrap();
            // One row, a few, and enough for AMX tiles where there are.
            for m in [1, 5, 21] {
                let acts = QuantizedActs::quantize(&random(&mut rng, m * k), k);
                let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
                for (name, gemm) in available_gemms() {
                    let g = 1..4;
                    let width = g.len() * ROW_GROUP;
                    let mut packed = vec![f32::NAN; m * width];
                    gemm(&p, g.clone(), &rows, GemmOut::packed(&mut packed, width));
                    let (offset, stride) = (3, width + 11);
                    let mut buf = vec![UNTOUCHED; offset + m * stride];
                    // SAFETY: every run lies inside `buf`, which nothing else touches.
                    let out =
                        unsafe { GemmOut::strided(buf.as_mut_ptr().add(offset), m, width, stride) };
                    gemm(&p, g.clone(), &rows, out);
                    for (i, v) in buf.iter().enumerate() {
                        let (r, col) = (
                            (i.wrapping_sub(offset)) / stride,
                            (i.wrapping_sub(offset)) % stride,
                        );
                        if i >= offset && col < width {
                            let want = packed[r * width + col];
                            assert_eq!(v.to_bits(), want.to_bits(), "{f} {name} m={m} row {r}");
                        } else {
                            assert_eq!(*v, UNTOUCHED, "{f} {name} m={m}: value {i} written");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn shared_input_products_equal_separate_ones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let k = 256;
        // Integer weights only (one parallel region for all of them; widths not multiples
        // of a task's columns, one smaller than a row group), and with a float one.
        let integer = [
            (QuantFormat::Q8, 200),
            (QuantFormat::Q4(GroupSize::G64), 24),
            (QuantFormat::Q4M(GroupSize::G32), 5),
            (QuantFormat::Q8, 64),
        ];
        let mixed = [
            (QuantFormat::Q8, 40),
            (QuantFormat::Q4(GroupSize::G64), 24),
            (QuantFormat::F16, 8),
        ];
        for formats in [&integer[..], &mixed[..]] {
            let ws: Vec<WeightStorage> = formats
                .iter()
                .map(|&(f, n)| {
                    let w = random(&mut rng, n * k);
                    let q = quantize(&w, n, k, f, &QuantizeOptions::default()).unwrap();
                    crate::cpu::host_storage(q)
                })
                .collect();
            let refs: Vec<&WeightStorage> = ws.iter().collect();
            for m in [1, 3, 17] {
                let x = random(&mut rng, m * k);
                let many = host_matmul_many(&x, &refs).unwrap();
                assert_eq!(many.len(), ws.len());
                for (w, got) in ws.iter().zip(&many) {
                    assert_eq!(got, &host_matmul(&x, w).unwrap(), "m={m} {formats:?}");
                }
            }
        }
    }

    #[test]
    fn parallel_activation_quantization_equals_block_by_block() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        let x = random(&mut rng, 1500 * 32);
        let all = QuantizedActs::quantize(&x, 32 * 500);
        for (b, xb) in x.chunks_exact(32).enumerate() {
            let one = QuantizedActs::quantize(xb, 32);
            assert_eq!(&all.q[b * 32..(b + 1) * 32], &one.q[..]);
            assert_eq!(
                (all.d[b], all.c[b], all.qsum[b]),
                (one.d[0], one.c[0], one.qsum[0])
            );
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
