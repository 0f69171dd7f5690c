//! One conformance suite for every backend: the same test bodies run against the CPU backend
//! and the wgpu backend (on both its feature paths), each op on random inputs against a
//! float64 reference with named bounds, on shapes that are multiples of no tile.
//!
//! The wgpu tests need a Vulkan adapter; in CI that is lavapipe (`mesa-vulkan-drivers`,
//! installed by scripts/test.sh). They fail, not skip, without one. Every activation buffer
//! the wgpu backend hands out is filled with NaN first, so an element a kernel forgets to
//! write fails the comparison.

use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::quant::{quantize, Codebook, QuantMethod, QuantizeOptions};
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{Activations, WgpuBackend, WgpuOptions};
use lowbit_gpu::{
    AttentionShape, Backend, GroupSize, KvPoolSpec, LogitsRequest, QTensor, QuantFormat, Rope,
    RopeStyle, SeqSpan, Tensor, Weight,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Mutex, MutexGuard, OnceLock};

#[path = "conformance/attention.rs"]
mod attention;
#[path = "conformance/draws.rs"]
mod draws;
#[path = "conformance/logprobs.rs"]
mod logprobs;
#[path = "conformance/products.rs"]
mod products;
#[path = "conformance/scatter.rs"]
mod scatter;
use attention::*;
use draws::*;
use logprobs::*;
use products::*;
use scatter::*;

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

const FORMATS: [QuantFormat; 11] = [
    QuantFormat::F32,
    QuantFormat::F16,
    QuantFormat::Q8,
    QuantFormat::Q4(GroupSize::G32),
    QuantFormat::Q4(GroupSize::G64),
    QuantFormat::Q4(GroupSize::G128),
    QuantFormat::Q4M(GroupSize::G32),
    QuantFormat::Q4M(GroupSize::G64),
    QuantFormat::Q4M(GroupSize::G128),
    QuantFormat::Lut4(Codebook::Fp4),
    QuantFormat::Lut4(Codebook::Iq4nl),
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

/// Qwen3's query/key norms: every `head`-long piece of a row normed on its own, with one
/// weight vector for all heads.
fn rms_norm_heads_matches_float64(be: &dyn Backend, b: Bounds) {
    let mut r = rng(11);
    for (rows, heads, head) in [(1, 16, 128), (5, 3, 64), (2, 1, 96)] {
        let cols = heads * head;
        let x = random(&mut r, rows * cols);
        let g = random(&mut r, head);
        let normed = be
            .rms_norm_heads(upload(be, rows, cols, &x), &upload(be, 1, head, &g), 1e-6)
            .expect("rms_norm_heads");
        assert_eq!((normed.rows(), normed.cols()), (rows, cols));
        let got = be.download(&normed).expect("download");
        let mut want = Vec::new();
        for piece in x.chunks(head) {
            let ms = piece.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / head as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            want.extend(
                piece
                    .iter()
                    .zip(&g)
                    .map(|(&v, &w)| f64::from(v) * inv * f64::from(w)),
            );
        }
        let e = rel_err(&got, &want);
        assert!(e < b.elementwise * 4.0, "{rows}x{heads}x{head}: {e}");
    }
    let x = upload(be, 2, 100, &random(&mut r, 200));
    let g = upload(be, 1, 64, &random(&mut r, 64));
    assert!(
        be.rms_norm_heads(x, &g, 1e-6).is_err(),
        "64 does not divide 100"
    );
}

/// Llama's RoPE (base 10000) over heads of `head_dim`, in `style`'s pairing.
fn rope_of(style: RopeStyle, head_dim: usize) -> Rope {
    partial_rope_of(style, head_dim, head_dim, 1.0)
}

/// RoPE of the first `rotated` dimensions of each head (Phi-4-mini's partial rotary), with
/// LongRoPE's `attention_factor` on sine and cosine.
fn partial_rope_of(
    style: RopeStyle,
    head_dim: usize,
    rotated: usize,
    attention_factor: f32,
) -> Rope {
    Rope {
        style,
        head_dim,
        inv_freq: (0..rotated / 2)
            .map(|i| 10000f32.powf(-(2.0 * i as f32) / rotated as f32))
            .collect(),
        attention_factor,
    }
}

/// Whole heads, and partial rotary (48 of 64 dimensions, the rest passed through) with an
/// attention factor, in both pairings.
fn rope_matches_float64_in_both_pairings(be: &dyn Backend, b: Bounds) {
    let mut r = rng(5);
    let hd = 64;
    let ropes = [RopeStyle::Interleaved, RopeStyle::HalfSplit]
        .into_iter()
        .flat_map(|style| [rope_of(style, hd), partial_rope_of(style, hd, 48, 1.25)]);
    for rope in ropes {
        let style = rope.style;
        let half = rope.rotated_pairs();
        let (rows, cols) = (5, 3 * hd);
        let x = random(&mut r, rows * cols);
        let positions = [0u32, 1, 7, 300, 4095];
        let got = be
            .download(
                &be.rope(&upload(be, rows, cols, &x), &positions, &rope)
                    .expect("rope"),
            )
            .expect("download");
        let mut want: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let m = f64::from(rope.attention_factor);
        for (row, &pos) in positions.iter().enumerate() {
            for head in 0..cols / hd {
                for (i, &freq) in rope.inv_freq.iter().enumerate() {
                    let (a, bb) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::HalfSplit => (i, i + half),
                    };
                    let base = row * cols + head * hd;
                    let (x0, x1) = (f64::from(x[base + a]), f64::from(x[base + bb]));
                    let (s, c) = (f64::from(pos) * f64::from(freq)).sin_cos();
                    want[base + a] = m * (x0 * c - x1 * s);
                    want[base + bb] = m * (x0 * s + x1 * c);
                }
            }
        }
        let e = rel_err(&got, &want);
        assert!(e < b.elementwise * 4.0, "{style:?}, {half} pairs: {e}");
        // Past the rotated dimensions the values are copied exactly.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if i % hd >= 2 * half {
                assert_eq!(f64::from(*g), *w, "value {i}");
            }
        }
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

/// A step's logits readback (every argmax, whole rows, top k, draws; the GPU's in one
/// transfer) equals the operations one after another, whichever parts a step asks for.
fn read_logits_equals_its_parts(be: &dyn Backend, _: Bounds) {
    let mut r = rng(15);
    let (rows, cols) = (5, 4099);
    let mut values = random(&mut r, rows * cols);
    values[cols + 7] = 9.0;
    values[cols + 70] = 9.0;
    let x = upload(be, rows, cols, &values);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (full, top, k) in [
        (&[1usize, 3][..], &[0usize, 3, 4][..], 40),
        (&[], &[2], 64),
        (&[0, 1, 2, 3, 4], &[], 0),
        (&[4], &[1], 100),
        (&[], &[], 0),
    ] {
        // Two draws at the middle of rows' distributions (no boundary is that close).
        let draws = [0, 3].map(|row| lowbit_gpu::RowDraw {
            row,
            u: 0.5,
            inv_temperature: 1.0,
            min_weight: 0.0,
            top_p: 0.9,
        });
        let draws = if top.is_empty() { &[][..] } else { &draws[..] };
        let ask = LogitsRequest {
            full,
            top,
            k,
            draws,
            ..LogitsRequest::default()
        };
        let got = be.read_logits(&x, &ask).expect("read_logits");
        let want = lowbit_gpu::read_logits_apart(be, &x, &ask).expect("apart");
        assert_eq!(got.drawn, want.drawn, "{full:?} {top:?} {k}");
        assert_eq!(got.drawn.len(), draws.len());
        assert_eq!(got.ids, want.ids, "{full:?} {top:?} {k}");
        assert_eq!(bits(&got.full), bits(&want.full), "{full:?} {top:?} {k}");
        assert_eq!(got.top, want.top, "{full:?} {top:?} {k}");
        assert_eq!(got.full.len(), full.len() * cols);
        assert_eq!(got.top.len(), top.len());
    }
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
    // GeGLU on gates of ±8 (GELU's tails), scale and soft cap.
    let wide: Vec<f32> = xa.iter().map(|v| v * 8.0).collect();
    let tw = upload(be, rows, cols, &wide);
    let geglu = be
        .download(&be.gelu_mul(&tw, &tb).expect("gelu_mul"))
        .expect("download");
    let want: Vec<f64> = wide
        .iter()
        .zip(&xb)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            0.5 * g * (1.0 + inner.tanh()) * f64::from(u)
        })
        .collect();
    let e = rel_err(&geglu, &want);
    assert!(e < b.elementwise * 4.0, "gelu_mul: {e}");
    assert!(be.gelu_mul(&ta, &upload(be, 1, cols, &xb[..cols])).is_err());
    // gpt-oss's clamped SwiGLU on gates and ups of ±8: both clamps (at 7) are crossed.
    let wide_up: Vec<f32> = xb.iter().map(|v| v * 8.0).collect();
    let oai = be
        .download(
            &be.swiglu_oai(&tw, &upload(be, rows, cols, &wide_up), 7.0)
                .expect("swiglu_oai"),
        )
        .expect("download");
    let want: Vec<f64> = wide
        .iter()
        .zip(&wide_up)
        .map(|(&g, &u)| {
            let g = f64::from(g).min(7.0);
            let u = f64::from(u).clamp(-7.0, 7.0);
            g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
        })
        .collect();
    let e = rel_err(&oai, &want);
    assert!(e < b.elementwise * 4.0, "swiglu_oai: {e}");
    assert!(wide.iter().any(|&g| g > 7.0) && wide_up.iter().any(|&u| u < -7.0));
    assert!(be
        .swiglu_oai(&ta, &upload(be, 1, cols, &xb[..cols]), 7.0)
        .is_err());
    let scaled = be
        .download(&be.scale(&tw, 0.37).expect("scale"))
        .expect("download");
    let want: Vec<f64> = wide.iter().map(|&v| f64::from(v) * 0.37).collect();
    assert!(rel_err(&scaled, &want) < b.elementwise, "scale");
    let capped = be
        .download(&be.softcap(&tw, 3.0).expect("softcap"))
        .expect("download");
    let want: Vec<f64> = wide
        .iter()
        .map(|&v| 3.0 * (f64::from(v) / 3.0).tanh())
        .collect();
    let e = rel_err(&capped, &want);
    assert!(e < b.elementwise * 4.0, "softcap: {e}");
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

    let bias = random(&mut r, cols);
    let biased = be
        .download(
            &be.add_bias(&ta, &upload(be, 1, cols, &bias))
                .expect("add_bias"),
        )
        .expect("download");
    let want: Vec<f64> = xa
        .chunks(cols)
        .flat_map(|row| {
            row.iter()
                .zip(&bias)
                .map(|(a, b)| f64::from(*a) + f64::from(*b))
        })
        .collect();
    assert!(rel_err(&biased, &want) < b.elementwise, "add_bias");
    let short = upload(be, 1, cols - 1, &bias[1..]);
    assert!(be.add_bias(&ta, &short).is_err(), "bias shorter than a row");
    assert!(be.add_bias(&ta, &tb).is_err(), "bias of several rows");
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
    read_logits_equals_its_parts,
    draws_follow_each_rows_distribution,
    choices_are_made_from_adjusted_logits,
    logprobs_are_a_log_softmax_of_the_logits_as_given,
    matmul_matches_float64_for_every_format_and_shape,
    a_rows_product_does_not_depend_on_its_batch,
    matmul_add_equals_matmul_then_add,
    weights_loaded_together_multiply_as_separate_ones,
    embed_gathers_dequantized_rows,
    rms_norm_matches_float64,
    rms_norm_heads_matches_float64,
    rope_matches_float64_in_both_pairings,
    elementwise_ops_and_gathers_match_float64,
    scattered_adds_match_float64,
    attention_over_scattered_blocks_matches_float64,
    attention_does_not_depend_on_chunking_or_batch,
    copied_blocks_attend_like_the_originals,
    bad_block_tables_are_errors,
    rope_attention_equals_rope_then_attention,
    sliding_windows_and_soft_caps_match_float64,
);

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
