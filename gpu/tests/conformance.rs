//! One conformance suite for every backend: the same test bodies run against the CPU backend
//! and the wgpu backend (on both its feature paths), each op on random inputs against a
//! float64 reference with named bounds, on shapes that are multiples of no tile.
//!
//! The wgpu tests need a Vulkan adapter; in CI that is lavapipe (`mesa-vulkan-drivers`,
//! installed by scripts/test.sh). They fail, not skip, without one. Every activation buffer
//! the wgpu backend hands out is filled with NaN first, so an element a kernel forgets to
//! write fails the comparison.

use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::quant::{quantize, QuantMethod, QuantizeOptions};
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{Activations, WgpuBackend, WgpuOptions};
use lowbit_gpu::{
    AttentionShape, Backend, GroupSize, KvPoolSpec, QTensor, QuantFormat, Rope, RopeStyle, SeqSpan,
    Tensor, Weight,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Mutex, MutexGuard, OnceLock};

#[path = "conformance/attention.rs"]
mod attention;
use attention::*;

/// How far each backend may be from the float64 reference (‖out − ref‖ / ‖ref‖).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Products with float weights (f32 activations everywhere).
    matmul_float: f64,
    /// Products with integer weights, against the dequantized weights in float64: the CPU
    /// quantizes activations to int8 per block (dynamic quantization), the GPU keeps f32.
    matmul_quantized: f64,
    /// Norms, RoPE, element-wise ops and gathers.
    elementwise: f64,
    /// Attention over the paged pool.
    attention: f64,
}

const CPU: Bounds = Bounds {
    matmul_float: 1e-5,
    matmul_quantized: 1.5e-2,
    elementwise: 1e-6,
    attention: 1e-5,
};

/// Int8 activations for integer weights: the CPU's arithmetic, so the CPU's bounds.
const WGPU_INT8: Bounds = CPU;

const WGPU_F32: Bounds = Bounds {
    matmul_float: 1e-5,
    matmul_quantized: 1e-5,
    elementwise: 1e-6,
    attention: 1e-5,
};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (r.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0)
        .collect()
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - w).powi(2);
        den += w * w;
    }
    let e = (num / den.max(1e-300)).sqrt();
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

const FORMATS: [QuantFormat; 9] = [
    QuantFormat::F32,
    QuantFormat::F16,
    QuantFormat::Q8,
    QuantFormat::Q4(GroupSize::G32),
    QuantFormat::Q4(GroupSize::G64),
    QuantFormat::Q4(GroupSize::G128),
    QuantFormat::Q4M(GroupSize::G32),
    QuantFormat::Q4M(GroupSize::G64),
    QuantFormat::Q4M(GroupSize::G128),
];

/// A random weight in `format` and its values as the format defines them.
fn weight(
    be: &dyn Backend,
    r: &mut ChaCha8Rng,
    format: QuantFormat,
    rows: usize,
    cols: usize,
) -> (lowbit_gpu::Weight, Vec<f32>) {
    let values = random(r, rows * cols);
    let opts = QuantizeOptions {
        method: QuantMethod::Rtn,
        importance: None,
    };
    let q = quantize(&values, rows, cols, format, &opts).expect("quantize");
    let exact = q.dequantize();
    (be.load_weight(q).expect("load_weight"), exact)
}

fn upload(be: &dyn Backend, rows: usize, cols: usize, v: &[f32]) -> lowbit_gpu::Tensor {
    be.upload(rows, cols, v.to_vec()).expect("upload")
}

fn reference_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c]))
                .sum();
        }
    }
    out
}

fn matmul_matches_float64_for_every_format_and_shape(be: &dyn Backend, b: Bounds) {
    let mut r = rng(1);
    for format in FORMATS {
        // K = 96: an odd number of 32-blocks (the tiled kernels stage blocks in pairs).
        for (n, k) in [(67, 576), (33, 256), (19, 96)] {
            if !format.fits(k) {
                continue;
            }
            let (w, exact) = weight(be, &mut r, format, n, k);
            for m in [1, 2, 5, 8, 9, 70] {
                let x = random(&mut r, m * k);
                let got = be
                    .download(&be.matmul(&upload(be, m, k, &x), &w).expect("matmul"))
                    .expect("download");
                let bound = if format.is_quantized() {
                    b.matmul_quantized
                } else {
                    b.matmul_float
                };
                let e = rel_err(&got, &reference_matmul(&x, &exact, m, k, n));
                assert!(e < bound, "{format} {m}x{k} · {n}x{k}: {e} ≥ {bound}");
            }
        }
    }
}

fn a_rows_product_does_not_depend_on_its_batch(be: &dyn Backend, _: Bounds) {
    let mut r = rng(2);
    for format in [
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::Q8,
        QuantFormat::F16,
    ] {
        let (k, n) = (576, 45);
        let (w, _) = weight(be, &mut r, format, n, k);
        let batch = random(&mut r, 40 * k);
        let run = |rows: &[f32]| {
            let m = rows.len() / k;
            be.download(&be.matmul(&upload(be, m, k, rows), &w).expect("matmul"))
                .expect("download")
        };
        let alone = run(&batch[..k]);
        for m in [3, 8, 9, 16, 40] {
            let among = run(&batch[..m * k]);
            assert_eq!(
                alone,
                among[..n],
                "{format}: row 0 alone vs in a batch of {m}"
            );
        }
        let many = be
            .matmul_many(&upload(be, 1, k, &batch[..k]), &[&w, &w])
            .expect("matmul_many");
        for t in many {
            assert_eq!(
                be.download(&t).expect("download"),
                alone,
                "{format} matmul_many"
            );
        }
    }
}

/// The residual connection fused into the product (the GPU adds it in the int8 epilogue)
/// gives exactly the product and then `add`, decode and tiled, for every kind.
fn matmul_add_equals_matmul_then_add(be: &dyn Backend, _: Bounds) {
    let mut r = rng(11);
    let (k, n) = (576, 67);
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G64),
        QuantFormat::F16,
    ] {
        let (w, _) = weight(be, &mut r, format, n, k);
        for m in [1, 3, 8, 9, 70] {
            let x = upload(be, m, k, &random(&mut r, m * k));
            let residual = upload(be, m, n, &random(&mut r, m * n));
            let fused = be.matmul_add(&x, &w, &residual).expect("matmul_add");
            let product = be.matmul(&x, &w).expect("matmul");
            let unfused = be.add(&product, &residual).expect("add");
            assert_eq!(
                be.download(&fused).expect("download"),
                be.download(&unfused).expect("download"),
                "{format} m={m}"
            );
        }
        let x = upload(be, 2, k, &random(&mut r, 2 * k));
        let wrong = upload(be, 2, n + 1, &random(&mut r, 2 * (n + 1)));
        assert!(
            be.matmul_add(&x, &w, &wrong).is_err(),
            "{format}: residual shape"
        );
    }
}

/// Random weights, quantized to `format`, one per row count.
fn host_weights(r: &mut ChaCha8Rng, format: QuantFormat, rows: &[usize], k: usize) -> Vec<QTensor> {
    let opts = QuantizeOptions {
        method: QuantMethod::Rtn,
        importance: None,
    };
    rows.iter()
        .map(|&n| quantize(&random(r, n * k), n, k, format, &opts).expect("quantize"))
        .collect()
}

fn products(be: &dyn Backend, x: &Tensor, ws: &[&Weight]) -> Vec<Vec<f32>> {
    be.matmul_many(x, ws)
        .expect("matmul_many")
        .iter()
        .map(|t| be.download(t).expect("download"))
        .collect()
}

/// Weights loaded together (a layer's Q/K/V, its gate/up: one product on the GPU) multiply
/// exactly as the same weights loaded one by one: the whole stack, any other selection or
/// order of it, each weight alone and with a residual, decode and tiled.
fn weights_loaded_together_multiply_as_separate_ones(be: &dyn Backend, _: Bounds) {
    let mut r = rng(12);
    let k = 576;
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G64),
        QuantFormat::F16,
        QuantFormat::F32,
    ] {
        for rows in [&[67usize, 21, 21][..], &[45, 45]] {
            let qs = host_weights(&mut r, format, rows, k);
            let apart: Vec<Weight> = qs
                .iter()
                .map(|q| be.load_weight(q.clone()).expect("load_weight"))
                .collect();
            let together = be.load_weights_together(qs).expect("load_weights_together");
            let shapes: Vec<(usize, usize)> =
                together.iter().map(|w| (w.rows(), w.cols())).collect();
            let want_shapes: Vec<(usize, usize)> = rows.iter().map(|&n| (n, k)).collect();
            assert_eq!(shapes, want_shapes, "{format}");
            let apart: Vec<&Weight> = apart.iter().collect();
            let together: Vec<&Weight> = together.iter().collect();
            for m in [1, 3, 8, 9, 70] {
                let what = format!("{format} {rows:?} m={m}");
                let x = upload(be, m, k, &random(&mut r, m * k));
                let want = products(be, &x, &apart);
                assert_eq!(products(be, &x, &together), want, "{what}: the whole stack");
                let reversed: Vec<&Weight> = together.iter().rev().copied().collect();
                let want_reversed: Vec<Vec<f32>> = want.iter().rev().cloned().collect();
                assert_eq!(
                    products(be, &x, &reversed),
                    want_reversed,
                    "{what}: reversed"
                );
                assert_eq!(
                    products(be, &x, &together[1..]),
                    want[1..],
                    "{what}: the last ones"
                );
                for (i, (w, alone)) in together.iter().zip(&apart).enumerate() {
                    let got = be
                        .download(&be.matmul(&x, w).expect("matmul"))
                        .expect("download");
                    assert_eq!(got, want[i], "{what}: weight {i} alone");
                    let residual = upload(be, m, w.rows(), &random(&mut r, m * w.rows()));
                    let with = |w| {
                        be.download(&be.matmul_add(&x, w, &residual).expect("matmul_add"))
                            .expect("download")
                    };
                    assert_eq!(with(w), with(alone), "{what}: weight {i} with a residual");
                }
            }
        }
    }
}

fn embed_gathers_dequantized_rows(be: &dyn Backend, b: Bounds) {
    let mut r = rng(3);
    for format in FORMATS {
        let (vocab, dim) = (61, 256);
        let (table, exact) = weight(be, &mut r, format, vocab, dim);
        let ids = [5u32, 0, 60, 5, 17];
        let got = be
            .download(&be.embed(&table, &ids).expect("embed"))
            .expect("download");
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&i| {
                exact[i as usize * dim..][..dim]
                    .iter()
                    .map(|&v| f64::from(v))
            })
            .collect();
        let e = rel_err(&got, &want);
        assert!(e < b.elementwise, "{format}: {e}");
        assert!(be.embed(&table, &[61]).is_err(), "an id outside the table");
    }
}

fn rms_norm_matches_float64(be: &dyn Backend, b: Bounds) {
    let mut r = rng(4);
    for (rows, cols) in [(1, 576), (7, 96), (3, 1000)] {
        let x = random(&mut r, rows * cols);
        let g = random(&mut r, cols);
        let got = be
            .download(
                &be.rms_norm(&upload(be, rows, cols, &x), &upload(be, 1, cols, &g), 1e-5)
                    .expect("rms_norm"),
            )
            .expect("download");
        let mut want = Vec::new();
        for row in x.chunks(cols) {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            want.extend(
                row.iter()
                    .zip(&g)
                    .map(|(&v, &w)| f64::from(v) * inv * f64::from(w)),
            );
        }
        let e = rel_err(&got, &want);
        assert!(e < b.elementwise * 4.0, "{rows}x{cols}: {e}");
    }
}

fn rope_matches_float64_in_both_pairings(be: &dyn Backend, b: Bounds) {
    let mut r = rng(5);
    let hd = 64;
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-(2.0 * i as f32) / hd as f32))
        .collect();
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        let rope = Rope {
            style,
            head_dim: hd,
            inv_freq: inv_freq.clone(),
        };
        let (rows, cols) = (5, 3 * hd);
        let x = random(&mut r, rows * cols);
        let positions = [0u32, 1, 7, 300, 4095];
        let got = be
            .download(
                &be.rope(&upload(be, rows, cols, &x), &positions, &rope)
                    .expect("rope"),
            )
            .expect("download");
        let mut want = vec![0.0f64; rows * cols];
        for (row, &pos) in positions.iter().enumerate() {
            for head in 0..cols / hd {
                for (i, &freq) in inv_freq.iter().enumerate() {
                    let (a, bb) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::HalfSplit => (i, i + hd / 2),
                    };
                    let base = row * cols + head * hd;
                    let (x0, x1) = (f64::from(x[base + a]), f64::from(x[base + bb]));
                    let (s, c) = (f64::from(pos) * f64::from(freq)).sin_cos();
                    want[base + a] = x0 * c - x1 * s;
                    want[base + bb] = x0 * s + x1 * c;
                }
            }
        }
        let e = rel_err(&got, &want);
        assert!(e < b.elementwise * 4.0, "{style:?}: {e}");
        assert!(be
            .rope(&upload(be, rows, cols, &x), &positions[..2], &rope)
            .is_err());
    }
}

/// The head's argmax: the first of equal maxima, −∞ and very negative rows, a vocabulary
/// that is no multiple of a workgroup (SmolLM2's 49152 plus 7), the maximum in the last column.
fn argmax_rows_find_the_first_largest_value(be: &dyn Backend, _: Bounds) {
    let mut r = rng(9);
    let cols = 49_159;
    let mut rows: Vec<Vec<f32>> = (0..5).map(|_| random(&mut r, cols)).collect();
    rows[1][cols - 1] = 10.0;
    rows[2][300] = 7.0;
    rows[2][40_000] = 7.0;
    rows[2][12] = 7.0;
    rows[3] = vec![f32::NEG_INFINITY; cols];
    rows[4].iter_mut().for_each(|v| *v -= 1e30);
    let want: Vec<u32> = rows.iter().map(|row| lowbit_gpu::argmax(row)).collect();
    assert_eq!(&want[1..4], &[cols as u32 - 1, 12, 0]);
    let x = upload(be, rows.len(), cols, &rows.concat());
    assert_eq!(be.argmax_rows(&x).expect("argmax"), want);
    let one = upload(be, 1, 3, &[1.0, 3.0, 3.0]);
    assert_eq!(be.argmax_rows(&one).expect("argmax"), vec![1]);
}

/// The head's top k: every backend ranks as the host does (largest first, equal values by
/// lower index, −0 below +0, infinities and NaN never kept), on SmolLM2's vocabulary plus 7,
/// with ties straddling the k-th place, fewer finite values than k, and k from 1 to 64.
fn top_k_rows_rank_as_the_host_does(be: &dyn Backend, _: Bounds) {
    let mut r = rng(14);
    let cols = 49_159;
    let mut rows: Vec<Vec<f32>> = (0..6).map(|_| random(&mut r, cols)).collect();
    // Ties at the k-th place: 100 copies of one value above everything else but 10.
    for c in (0..cols).step_by(400).take(100) {
        rows[1][c] = 5.0;
    }
    for c in (7..cols).step_by(4000) {
        rows[1][c] = 6.0;
    }
    rows[1][cols - 1] = 5.0;
    // Infinities and NaN beside the largest finite values; signed zeros.
    rows[2][3] = f32::INFINITY;
    rows[2][4] = f32::NAN;
    rows[2][5] = f32::NEG_INFINITY;
    rows[2][6] = 3.0;
    rows[2][7] = -0.0;
    rows[2][8] = 0.0;
    // Fewer finite values than k.
    rows[3] = vec![f32::NEG_INFINITY; cols];
    for (i, c) in [10usize, 40_000, 5, cols - 1].into_iter().enumerate() {
        rows[3][c] = i as f32 - 1.5;
    }
    rows[3][11] = f32::NAN;
    // Every value equal; and all non-finite.
    rows[4] = vec![0.25; cols];
    rows[5] = vec![f32::NAN; cols];
    rows[5][77] = f32::INFINITY;
    let x = upload(be, rows.len(), cols, &rows.concat());
    for k in [1, 2, 17, 40, 64, 100] {
        let want: Vec<Vec<(u32, f32)>> = rows.iter().map(|row| lowbit_gpu::top_k(row, k)).collect();
        assert_eq!(want[3].len(), k.min(4));
        assert!(want[5].is_empty());
        let got = be.top_k_rows(&x, k).expect("top_k_rows");
        assert_eq!(got.len(), rows.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bits =
                |v: &[(u32, f32)]| v.iter().map(|&(i, x)| (i, x.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(w), "k={k} row {i}");
        }
    }
    let small = upload(be, 2, 3, &[1.0, 3.0, 3.0, -1.0, -0.0, 0.0]);
    let got = be.top_k_rows(&small, 2).expect("top_k_rows");
    assert_eq!(got[0], vec![(1, 3.0), (2, 3.0)]);
    assert_eq!(got[1][0].0, 2, "+0 ranks above -0");
}

fn elementwise_ops_and_gathers_match_float64(be: &dyn Backend, b: Bounds) {
    let mut r = rng(6);
    let (rows, cols) = (9, 77);
    let (xa, xb) = (random(&mut r, rows * cols), random(&mut r, rows * cols));
    let (ta, tb) = (upload(be, rows, cols, &xa), upload(be, rows, cols, &xb));
    let sum = be
        .download(&be.add(&ta, &tb).expect("add"))
        .expect("download");
    let want: Vec<f64> = xa
        .iter()
        .zip(&xb)
        .map(|(a, b)| f64::from(*a) + f64::from(*b))
        .collect();
    assert!(rel_err(&sum, &want) < b.elementwise, "add");
    let swiglu = be
        .download(&be.silu_mul(&ta, &tb).expect("silu_mul"))
        .expect("download");
    let want: Vec<f64> = xa
        .iter()
        .zip(&xb)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            g / (1.0 + (-g).exp()) * f64::from(u)
        })
        .collect();
    let e = rel_err(&swiglu, &want);
    assert!(e < b.elementwise * 4.0, "silu_mul: {e}");
    let picked = be
        .download(&be.select_rows(&ta, &[8, 0, 8, 3]).expect("select_rows"))
        .expect("download");
    let want: Vec<f32> = [8, 0, 8, 3]
        .iter()
        .flat_map(|&r| xa[r * cols..(r + 1) * cols].to_vec())
        .collect();
    assert_eq!(picked, want, "select_rows");
    let none = be.select_rows(&ta, &[]).expect("select no rows");
    assert!(be.download(&none).expect("download").is_empty());
    assert!(be.select_rows(&ta, &[9]).is_err());
    let other = upload(be, rows, cols + 1, &random(&mut r, rows * (cols + 1)));
    assert!(be.add(&ta, &other).is_err(), "shape mismatch");
}

/// An f16 pool holds each value rounded to nearest even, on both backends: attention over
/// keys and values that are exactly halves (and one head of values at the rounding edges:
/// ties, subnormals, the largest half and past it) agrees between them to f32 rounding, and
/// both read the ties as the even neighbour.
#[test]
fn f16_pools_round_as_the_cpu_does() {
    let _turn = gpu_turn();
    let (cpu, gpu) = (cpu_backend(), wgpu_backend());
    let hd = 32;
    let spec = KvPoolSpec {
        layers: 1,
        kv_dim: hd,
        head_dim: hd,
        block_tokens: 16,
        blocks: 2,
        dtype: lowbit_gpu::KvDtype::F16,
    };
    let shape = AttentionShape {
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: hd,
    };
    // One position: the output is exactly the stored values (softmax of one score is 1).
    let edges: Vec<f32> = vec![
        1.0 + 1.0 / 2048.0, // a tie between 1 and 1 + 2^-10: even, 1
        1.0 + 3.0 / 2048.0, // a tie: even, 1 + 2^-9
        1.0 + 1.0 / 4096.0, // below half an ulp: 1
        65504.0,            // the largest half
        65519.0,            // rounds down to it
        65520.0,            // rounds up, past it: infinity
        -65520.0,
        2f32.powi(-24),         // the smallest subnormal
        2f32.powi(-25),         // a tie with zero: 0
        2f32.powi(-25) * 1.5,   // rounds up to 2^-24
        3.0 * 2f32.powi(-25),   // a subnormal tie: even, 2^-23
        2f32.powi(-14) * 0.999, // just below the smallest normal
        2f32.powi(-14),         // the smallest normal
        -1.5e-7,
        1e-30,
        2e-31,
        0.1,
        -0.3,
        1234.5678,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e-5,
        -7.7e-6,
        0.5,
        0.25 + 1.0 / 8192.0,
        100.03,
        -2.0e4,
        6.0e-8,
        1.0,
        -1.0,
        42.0,
        0.333,
    ];
    assert_eq!(edges.len(), hd);
    let want: Vec<f32> = edges
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let run = |be: &dyn Backend| {
        let mut pool = be.new_kv_pool(spec).expect("an f16 pool");
        let q = upload(be, 1, hd, &vec![0.0; hd]);
        let k = upload(be, 1, hd, &vec![0.0; hd]);
        let v = upload(be, 1, hd, &edges);
        let span = SeqSpan {
            row_start: 0,
            len: 1,
            pos_start: 0,
            blocks: &[1],
        };
        let out = be
            .attention(0, &q, &k, &v, &[span], &mut pool, shape)
            .expect("attention");
        be.download(&out).expect("download")
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&run(cpu)), bits(&want), "cpu");
    assert_eq!(bits(&run(gpu)), bits(&want), "wgpu");
}

/// A step recorded again with the same shapes finds every bind group in the cache, and
/// computes the same values.
#[test]
fn repeated_steps_reuse_their_bind_groups() {
    let _turn = gpu_turn();
    let be = wgpu_backend();
    let gpu = be
        .as_any()
        .downcast_ref::<lowbit_gpu::wgpu::WgpuBackend>()
        .expect("the wgpu backend");
    let mut r = rng(10);
    let (w, _) = weight(be, &mut r, QuantFormat::Q4(GroupSize::G32), 40, 256);
    let x = random(&mut r, 3 * 256);
    let step = || {
        let h = be.matmul(&upload(be, 3, 256, &x), &w).expect("matmul");
        let y = be.add(&h, &h).expect("add");
        be.download(&y).expect("download")
    };
    let first = step();
    step();
    let (hits, misses) = gpu.bind_group_counts().expect("counts");
    assert_eq!(step(), first);
    let (hits_after, misses_after) = gpu.bind_group_counts().expect("counts");
    assert_eq!(misses_after, misses, "a repeated step created bind groups");
    assert!(hits_after >= hits + 3, "{hits} -> {hits_after}");
}

// ---- the backends ----

fn cpu_backend() -> &'static dyn Backend {
    static CPU_BACKEND: CpuBackend = CpuBackend;
    &CPU_BACKEND
}

fn open_gpu(options: WgpuOptions) -> WgpuBackend {
    let be = WgpuBackend::new(AdapterChoice::Any, options).unwrap_or_else(|e| {
        panic!("the wgpu tests need a Vulkan adapter (apt-get install mesa-vulkan-drivers): {e}")
    });
    be.set_poison(true);
    be
}

/// The default: subgroups where offered, int8 activations for integer weights.
fn wgpu_backend() -> &'static WgpuBackend {
    static GPU: OnceLock<WgpuBackend> = OnceLock::new();
    GPU.get_or_init(|| open_gpu(WgpuOptions::default()))
}

/// No optional feature, int8 activations.
fn wgpu_portable_backend() -> &'static WgpuBackend {
    static GPU: OnceLock<WgpuBackend> = OnceLock::new();
    GPU.get_or_init(|| {
        open_gpu(WgpuOptions {
            portable: true,
            ..WgpuOptions::default()
        })
    })
}

/// Subgroups, f32 activations for every weight.
fn wgpu_f32_backend() -> &'static WgpuBackend {
    static GPU: OnceLock<WgpuBackend> = OnceLock::new();
    GPU.get_or_init(|| {
        open_gpu(WgpuOptions {
            activations: Activations::F32,
            ..WgpuOptions::default()
        })
    })
}

/// GPU tests run one at a time (lavapipe is slow and shares the cores).
fn gpu_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod cpu {
            $(#[test] fn $name() { super::$name(super::cpu_backend(), super::CPU) })*
        }
        mod wgpu {
            $(#[test] fn $name() {
                let _turn = super::gpu_turn();
                super::$name(super::wgpu_backend(), super::WGPU_INT8)
            })*
        }
        mod wgpu_portable {
            $(#[test] fn $name() {
                let _turn = super::gpu_turn();
                super::$name(super::wgpu_portable_backend(), super::WGPU_INT8)
            })*
        }
        mod wgpu_f32 {
            $(#[test] fn $name() {
                let _turn = super::gpu_turn();
                super::$name(super::wgpu_f32_backend(), super::WGPU_F32)
            })*
        }
    };
}

suite!(
    argmax_rows_find_the_first_largest_value,
    top_k_rows_rank_as_the_host_does,
    matmul_matches_float64_for_every_format_and_shape,
    a_rows_product_does_not_depend_on_its_batch,
    matmul_add_equals_matmul_then_add,
    weights_loaded_together_multiply_as_separate_ones,
    embed_gathers_dequantized_rows,
    rms_norm_matches_float64,
    rope_matches_float64_in_both_pairings,
    elementwise_ops_and_gathers_match_float64,
    attention_over_scattered_blocks_matches_float64,
    attention_does_not_depend_on_chunking_or_batch,
    copied_blocks_attend_like_the_originals,
    bad_block_tables_are_errors,
    rope_attention_equals_rope_then_attention,
);

/// Weights larger than one binding are split into parts by rows; here parts of 4 KiB (a
/// few rows each) on weights of a few hundred rows, stacks whose weights start inside a part
/// among them: every product and gather equals the unsplit backend's, bit for bit.
#[test]
fn weights_split_into_parts_compute_as_whole_ones() {
    let _turn = gpu_turn();
    let whole = wgpu_backend();
    let split = open_gpu(WgpuOptions {
        weight_part_bytes: Some(4096),
        ..WgpuOptions::default()
    });
    let mut r = rng(13);
    let k = 576;
    for format in [
        QuantFormat::Q8,
        // Nine groups per row: parts must start on an even row (scales in f16 pairs).
        QuantFormat::Q4(GroupSize::G64),
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::F32,
    ] {
        let qs = host_weights(&mut r, format, &[67, 21, 21], k);
        let load = |be: &WgpuBackend| {
            let alone = be.load_weight(qs[0].clone()).expect("load_weight");
            let stack = be
                .load_weights_together(qs.clone())
                .expect("load_weights_together");
            (alone, stack)
        };
        let ((wa, ws), (sa, ss)) = (load(whole), load(&split));
        for m in [1, 5, 70] {
            let x = random(&mut r, m * k);
            let run = |be: &WgpuBackend, alone: &Weight, stack: &[Weight]| {
                let t = upload(be, m, k, &x);
                let mut out = products(be, &t, &stack.iter().collect::<Vec<_>>());
                out.push(
                    be.download(&be.matmul(&t, alone).expect("matmul"))
                        .expect("download"),
                );
                out.push(
                    be.download(&be.matmul(&t, &stack[2]).expect("matmul"))
                        .expect("download"),
                );
                out
            };
            assert_eq!(
                run(&split, &sa, &ss),
                run(whole, &wa, &ws),
                "{format} m={m}"
            );
        }
        let ids = [66u32, 0, 13, 14, 40];
        let gather = |be: &WgpuBackend, w: &Weight| {
            be.download(&be.embed(w, &ids).expect("embed"))
                .expect("download")
        };
        assert_eq!(gather(&split, &sa), gather(whole, &wa), "{format} embed");
        assert!(
            split.embed(&ss[1], &[0]).is_err(),
            "an embedding from a stack"
        );
    }
}

#[test]
fn tensors_of_one_backend_are_refused_by_the_other() {
    let _turn = gpu_turn();
    let gpu = wgpu_backend();
    let cpu = cpu_backend();
    let host = upload(cpu, 2, 8, &[1.0; 16]);
    let device = upload(gpu, 2, 8, &[1.0; 16]);
    assert!(gpu.add(&host, &host).is_err());
    assert!(cpu.add(&device, &device).is_err());
    assert!(gpu.download(&host).is_err());
}

#[test]
fn the_portable_path_uses_no_subgroups() {
    let _turn = gpu_turn();
    assert!(!wgpu_portable_backend().uses_subgroups());
}

/// Int8 activations on the GPU are the CPU's dynamic quantization: the same integers, the
/// same float steps, so the two backends agree far more closely than either does with the
/// float64 product (only the division in the scale may round differently).
#[test]
fn int8_products_agree_with_the_cpu_backend() {
    let _turn = gpu_turn();
    let (cpu, gpu) = (cpu_backend(), wgpu_backend());
    let mut r = rng(8);
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4(GroupSize::G64),
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G128),
    ] {
        for (n, k) in [(70, 768), (100, 1536), (4099, 576), (37, 224)] {
            if !format.fits(k) {
                continue;
            }
            let values = random(&mut r, n * k);
            let opts = QuantizeOptions {
                method: QuantMethod::Rtn,
                importance: None,
            };
            let q = quantize(&values, n, k, format, &opts).expect("quantize");
            let (wc, wg) = (
                cpu.load_weight(q.clone()).expect("load"),
                gpu.load_weight(q).expect("load"),
            );
            for m in [1, 4, 8, 9, 65] {
                let x = random(&mut r, m * k);
                let on = |be: &dyn Backend, w| {
                    be.download(&be.matmul(&upload(be, m, k, &x), w).expect("matmul"))
                        .expect("download")
                };
                let (c, g) = (on(cpu, &wc), on(gpu, &wg));
                let want: Vec<f64> = c.iter().map(|&v| f64::from(v)).collect();
                let e = rel_err(&g, &want);
                assert!(e < 1e-6, "{format} {n}x{k} m={m}: GPU vs CPU {e}");
            }
        }
    }
}
