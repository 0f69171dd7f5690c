//! Integer matrix–vector products of [`PackedWeight`]s with int8-quantized activations.
//!
//! Activations are quantized at run time (dynamic quantization), per 32-value block:
//! `a = d_a·q_a` with `q_a ∈ −127..=127`; each block also keeps `Σ q_a` and `c_a = d_a·Σ q_a`.
//! A weight block of any format then costs one integer dot product, whose offset is corrected
//! in integers, and one float multiply-add (Q4M: two, its min being a float):
//! ```text
//! Q8 :  Σ_b d_w·d_a·(Σ u_w·q_a − 128·Σ q_a)    u_w = q_w + 128 (stored offset-binary)
//! Q4 :  Σ_b d_w·d_a·(Σ q_w·q_a −   8·Σ q_a)    q_w ∈ 0..16, value d_w·(q_w − 8)
//! Q4M:  Σ_b d_w·d_a·Σ q_w·q_a  +  m_w·c_a      value d_w·q_w + m_w
//! ```
//! (the integer part is exact, as in llama.cpp's Q4_0/Q8_0 products).
//! The weights are interleaved by eight rows ([`super::packed`]), so each 256-bit load holds
//! one word of eight rows, and `dpbusd` against the broadcast activation word leaves each row's
//! partial sum in its own lane: no horizontal sums, one scale load per eight rows. Up to four
//! activation rows (a batch of decoding sequences, a prefill tile) share each weight load and
//! unpacking; with AVX-512VL's 32 registers two row groups share each activation load. The scalar
//! kernel is the twin every SIMD variant (AVX2 `maddubs`, AVX-512 VNNI `dpbusd`) is tested
//! against; variants are chosen at run time.

use super::packed::{PackedWeight, ROW_GROUP};
use super::pool::Pool;
use crate::quant::format::{QuantFormat, QBLOCK};

/// Rows of activations quantized to int8 per 32-block.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActs {
    pub cols: usize,
    pub q: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// `d · Σ q` per block.
    pub c: Vec<f32>,
    /// `Σ q` per block.
    pub qsum: Vec<i32>,
}

impl QuantizedActs {
    /// Quantizes `x` (rows of `cols`, a multiple of 32): `d = max|a|/127`, `q = round(a/d)`
    /// (ties to even, as llama.cpp's SIMD quantizers round). Large inputs (prefill) are split
    /// over the thread pool.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        /// Blocks per task: ~64 KiB of activations.
        const BLOCKS_PER_TASK: usize = 512;
        let blocks = x.len() / QBLOCK;
        let mut acts = Self {
            cols,
            q: vec![0i8; blocks * QBLOCK],
            d: vec![0.0; blocks],
            c: vec![0.0; blocks],
            qsum: vec![0; blocks],
        };
        if blocks <= BLOCKS_PER_TASK {
            quantize_blocks(x, &mut acts.q, &mut acts.d, &mut acts.c, &mut acts.qsum);
            return acts;
        }
        let parts = Pool::global().map(blocks.div_ceil(BLOCKS_PER_TASK), |t| {
            let b = t * BLOCKS_PER_TASK..((t + 1) * BLOCKS_PER_TASK).min(blocks);
            let mut q = vec![0i8; b.len() * QBLOCK];
            let (mut d, mut c, mut qsum) =
                (vec![0.0; b.len()], vec![0.0; b.len()], vec![0; b.len()]);
            let xs = &x[b.start * QBLOCK..b.end * QBLOCK];
            quantize_blocks(xs, &mut q, &mut d, &mut c, &mut qsum);
            (q, d, c, qsum)
        });
        for (t, (q, d, c, qsum)) in parts.into_iter().enumerate() {
            let b0 = t * BLOCKS_PER_TASK;
            acts.q[b0 * QBLOCK..b0 * QBLOCK + q.len()].copy_from_slice(&q);
            acts.d[b0..b0 + d.len()].copy_from_slice(&d);
            acts.c[b0..b0 + c.len()].copy_from_slice(&c);
            acts.qsum[b0..b0 + qsum.len()].copy_from_slice(&qsum);
        }
        acts
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.q.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Row `i`'s view.
    pub fn row(&self, i: usize) -> ActRow<'_> {
        let b = self.cols / QBLOCK;
        ActRow {
            q: &self.q[i * self.cols..(i + 1) * self.cols],
            d: &self.d[i * b..(i + 1) * b],
            c: &self.c[i * b..(i + 1) * b],
            qsum: &self.qsum[i * b..(i + 1) * b],
        }
    }
}

/// Quantizes whole 32-blocks of `x` into the given block arrays.
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], c: &mut [f32], qsum: &mut [i32]) {
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even) in plain
    // arithmetic; `f32::round` is a library call per value on baseline x86-64.
    const ROUND: f32 = 12_582_912.0;
    for ((((xb, qb), d), c), qsum) in x
        .chunks_exact(QBLOCK)
        .zip(q.chunks_exact_mut(QBLOCK))
        .zip(d.iter_mut())
        .zip(c.iter_mut())
        .zip(qsum.iter_mut())
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut s = 0i32;
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = ((v * inv + ROUND) - ROUND) as i8;
            s += i32::from(*o);
        }
        *d = scale;
        *c = scale * s as f32;
        *qsum = s;
    }
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub c: &'a [f32],
    pub qsum: &'a [i32],
}

/// A kernel: for each activation row in `acts`, eight weight rows' dot products for each row
/// group in `groups`. `out` holds one run of `8 · groups.len()` values (padding rows included)
/// per activation row, in order.
pub type GemmFn =
    fn(w: &PackedWeight, groups: std::ops::Range<usize>, acts: &[ActRow<'_>], out: &mut [f32]);

/// Activation rows one kernel call reuses each weight load for (the SIMD kernels keep their
/// accumulators in registers).
pub const MAX_TILE_ROWS: usize = 4;

/// The integer correction per block, times the block's `Σ q_a` (module doc): Q8 words are
/// offset-binary, Q4 codes are offset by 8; Q4M's offset is its float min instead.
fn integer_correction(format: QuantFormat) -> i32 {
    match format {
        QuantFormat::Q8 => -128,
        QuantFormat::Q4(_) => -8,
        _ => 0,
    }
}

/// The scalar twin: plain integer arithmetic, block by block, one row at a time.
pub fn gemm_scalar(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * (w.cols / QBLOCK);
    let factor = integer_correction(w.format);
    let width = groups.len() * ROW_GROUP;
    for (a, out) in acts.iter().zip(out.chunks_exact_mut(width.max(1))) {
        for (rg, out8) in groups.clone().zip(out.chunks_exact_mut(ROW_GROUP)) {
            for (lane, o) in out8.iter_mut().enumerate() {
                let word =
                    |i: usize| w.words[rg * ROW_GROUP * wpr + i * ROW_GROUP + lane].to_le_bytes();
                let coef =
                    |v: &[half::f16], g: usize| v[(rg * ngroups + g) * ROW_GROUP + lane].to_f32();
                let mut acc = 0.0f32;
                for g in 0..ngroups {
                    let dw = coef(&w.scales, g);
                    for b in g * pg..(g + 1) * pg {
                        let aq = &a.q[b * QBLOCK..(b + 1) * QBLOCK];
                        let mut s = factor * a.qsum[b];
                        for c in 0..wpb {
                            for (j, &byte) in word(b * wpb + c).iter().enumerate() {
                                if w.format == QuantFormat::Q8 {
                                    s += i32::from(byte) * i32::from(aq[4 * c + j]);
                                } else {
                                    s += i32::from(byte & 0x0f) * i32::from(aq[4 * c + j])
                                        + i32::from(byte >> 4) * i32::from(aq[16 + 4 * c + j]);
                                }
                            }
                        }
                        acc += s as f32 * (dw * a.d[b]);
                        if !w.mins.is_empty() {
                            acc += coef(&w.mins, g) * a.c[b];
                        }
                    }
                }
                *o = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// The shape checks the SIMD kernels rely on (once per call, not per block).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn check(w: &PackedWeight, groups: &std::ops::Range<usize>, acts: &[ActRow<'_>], out: &[f32]) {
    let padded = w.row_groups() * ROW_GROUP;
    let ngroups = w.cols / w.format.group();
    assert!(groups.end <= w.row_groups() && out.len() == acts.len() * groups.len() * ROW_GROUP);
    assert!(
        w.words.len() == padded * w.words_per_block() * (w.cols / QBLOCK)
            && w.scales.len() == padded * ngroups
            && (w.mins.is_empty() || w.mins.len() == padded * ngroups)
    );
    assert_eq!(!w.mins.is_empty(), matches!(w.format, QuantFormat::Q4M(_)));
    for a in acts {
        assert!(a.q.len() == w.cols && a.d.len() * QBLOCK == w.cols);
        assert!(a.c.len() == a.d.len() && a.qsum.len() == a.d.len());
    }
}

/// The variants this CPU can run, best first.
pub fn available_gemms() -> Vec<(&'static str, GemmFn)> {
    let mut v: Vec<(&'static str, GemmFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            v.push(("avx512vnni", x86::gemm_vnni));
        }
        if x86::has_avx2() {
            v.push(("avx2", x86::gemm_avx2));
        }
    }
    v.push(("scalar", gemm_scalar));
    v
}

/// The best variant for this CPU (decided once). `LOWBIT_CPU_KERNEL=avx2|avx512vnni|scalar`
/// pins one (benchmarks compare them).
pub fn best_gemm() -> (&'static str, GemmFn) {
    static BEST: std::sync::OnceLock<(&'static str, GemmFn)> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        let all = available_gemms();
        std::env::var("LOWBIT_CPU_KERNEL")
            .ok()
            .and_then(|want| all.iter().find(|(name, _)| *name == want).copied())
            .unwrap_or(all[0])
    })
}
