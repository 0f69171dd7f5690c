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
//! Lut4: Σ_b d_w·d_a·(Σ u_w·q_a − 128·Σ q_a)    u_w = T[q_w] + 128 (looked up from the nibble)
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
use crate::quant::format::{Codebook, QuantFormat, QBLOCK};

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
    /// (ties to even, as llama.cpp's SIMD quantizers round). Inputs of more than a task are
    /// split over the thread pool; every task writes its own part of the output in place.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        /// Blocks per task: 16 KiB of activations, so that a decode step's few rows (16 × 576
        /// values are 288 blocks) are split too, not left to the calling thread alone.
        const BLOCKS_PER_TASK: usize = 128;
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
        // Disjoint parts of the four arrays, one per task.
        let mut parts: Vec<_> = acts
            .q
            .chunks_mut(BLOCKS_PER_TASK * QBLOCK)
            .zip(acts.d.chunks_mut(BLOCKS_PER_TASK))
            .zip(acts.c.chunks_mut(BLOCKS_PER_TASK))
            .zip(acts.qsum.chunks_mut(BLOCKS_PER_TASK))
            .collect();
        Pool::global().for_each_chunk_mut(&mut parts, 1, |t, part| {
            let (((q, d), c), qsum) = &mut part[0];
            let xs = &x[t * BLOCKS_PER_TASK * QBLOCK..][..q.len()];
            quantize_blocks(xs, q, d, c, qsum);
        });
        drop(parts);
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

/// Quantizes whole 32-blocks of `x` into the given block arrays, with 512-bit vectors where
/// the CPU has them (the same operations in the same order, so the same bits: tested).
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], c: &mut [f32], qsum: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { quantize_blocks_avx512(x, q, d, c, qsum) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: as above.
        unsafe { quantize_blocks_avx2(x, q, d, c, qsum) };
        return;
    }
    quantize_blocks_portable(x, q, d, c, qsum);
}

/// [`quantize_blocks_portable`] with one block in four 256-bit registers, for CPUs without
/// AVX-512 (the portable loop costs 4–6% of a batched step there).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    c: &mut [f32],
    qsum: &mut [i32],
) {
    use std::arch::x86_64::*;
    let blocks = (x.len() / QBLOCK).min(q.len() / QBLOCK).min(d.len());
    let blocks = blocks.min(c.len()).min(qsum.len());
    let round = _mm256_set1_ps(ROUND);
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let infinity = _mm256_set1_epi32(INFINITY_BITS as i32);
    // `packs` interleaves 128-bit lanes; this puts the 32 codes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /// The eight lanes of `v` folded by `op` (a macro: closures would not be inlined).
    macro_rules! horizontal {
        ($v:expr, $op:ident) => {{
            let v = $v;
            let v = $op(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let v = $op(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
            _mm_cvtsi128_si32($op(v, _mm_shuffle_epi32::<0b10_11_00_01>(v)))
        }};
    }
    for b in 0..blocks {
        // SAFETY: block b's 32 values lie inside x and q (`blocks` is bounded by both).
        unsafe {
            let xp = x.as_ptr().add(b * QBLOCK);
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xp.add(8 * i)));
            // Magnitudes as integers, NaN as 0 (they are below 2³¹, so signed compares work).
            let bits = |v: __m256| {
                let m = _mm256_and_si256(_mm256_castps_si256(v), magnitude);
                _mm256_andnot_si256(_mm256_cmpgt_epi32(m, infinity), m)
            };
            let amax = _mm256_max_epu32(
                _mm256_max_epu32(bits(v[0]), bits(v[1])),
                _mm256_max_epu32(bits(v[2]), bits(v[3])),
            );
            let amax_bits = horizontal!(amax, _mm_max_epu32) as u32;
            let scale = f32::from_bits(amax_bits) / 127.0;
            let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let codes = |v: __m256| {
                let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, inv), round), round);
                // NaN becomes 0, as `as i8` makes it.
                let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                _mm256_and_si256(_mm256_cvttps_epi32(r), ordered)
            };
            let k: [__m256i; 4] = std::array::from_fn(|i| codes(v[i]));
            let words = _mm256_packs_epi16(
                _mm256_packs_epi32(k[0], k[1]),
                _mm256_packs_epi32(k[2], k[3]),
            );
            let bytes = _mm256_permutevar8x32_epi32(words, order);
            _mm256_storeu_si256(q.as_mut_ptr().add(b * QBLOCK).cast(), bytes);
            let total =
                _mm256_add_epi32(_mm256_add_epi32(k[0], k[1]), _mm256_add_epi32(k[2], k[3]));
            let sum = horizontal!(total, _mm_add_epi32);
            d[b] = scale;
            c[b] = scale * sum as f32;
            qsum[b] = sum;
        }
    }
}

/// [`quantize_blocks_portable`] with one block in two 512-bit registers (the compiler
/// vectorizes the portable loop across blocks, with gathers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_blocks_avx512(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    c: &mut [f32],
    qsum: &mut [i32],
) {
    use std::arch::x86_64::*;
    let blocks = (x.len() / QBLOCK).min(q.len() / QBLOCK).min(d.len());
    let blocks = blocks.min(c.len()).min(qsum.len());
    let round = _mm512_set1_ps(ROUND);
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let infinity = _mm512_set1_epi32(INFINITY_BITS as i32);
    for b in 0..blocks {
        // SAFETY: block b's 32 values lie inside x and q (`blocks` is bounded by both).
        unsafe {
            let xp = x.as_ptr().add(b * QBLOCK);
            let (lo, hi) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
            let bits = |v: __m512| {
                let m = _mm512_and_si512(_mm512_castps_si512(v), magnitude);
                _mm512_maskz_mov_epi32(_mm512_cmple_epu32_mask(m, infinity), m)
            };
            let amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(bits(lo), bits(hi)));
            let scale = f32::from_bits(amax_bits) / 127.0;
            let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let codes = |v: __m512| {
                let r = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, inv), round), round);
                // NaN becomes 0, as `as i8` makes it.
                _mm512_maskz_cvttps_epi32(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r)
            };
            let (qlo, qhi) = (codes(lo), codes(hi));
            let qp = q.as_mut_ptr().add(b * QBLOCK);
            _mm_storeu_si128(qp.cast(), _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128(qp.add(16).cast(), _mm512_cvtsepi32_epi8(qhi));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            d[b] = scale;
            c[b] = scale * sum as f32;
            qsum[b] = sum;
        }
    }
}

/// Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even) in plain
/// arithmetic; `f32::round` is a library call per value on baseline x86-64.
const ROUND: f32 = 12_582_912.0;
const INFINITY_BITS: u32 = 0x7f80_0000;

/// The block loop: the largest magnitude is an integer maximum of the values' bit patterns
/// without their sign (for non-NaN floats the same order as the values; NaN counts as 0, as
/// `f32::max` skips it), and rounding is the add-and-subtract trick, with no fused
/// multiply-add.
fn quantize_blocks_portable(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    c: &mut [f32],
    qsum: &mut [i32],
) {
    for ((((xb, qb), d), c), qsum) in x
        .chunks_exact(QBLOCK)
        .zip(q.chunks_exact_mut(QBLOCK))
        .zip(d.iter_mut())
        .zip(c.iter_mut())
        .zip(qsum.iter_mut())
    {
        let xb: &[f32; QBLOCK] = xb.try_into().expect("a whole block");
        let qb: &mut [i8; QBLOCK] = qb.try_into().expect("a whole block");
        let amax_bits = xb.iter().fold(0u32, |m, v| {
            let bits = v.to_bits() & 0x7fff_ffff;
            m.max(if bits > INFINITY_BITS { 0 } else { bits })
        });
        let scale = f32::from_bits(amax_bits) / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = ((v * inv + ROUND) - ROUND) as i8;
        }
        let s = qb.iter().map(|&v| i32::from(v)).sum::<i32>();
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
/// group in `groups`, written to `out`: a run of `8 · groups.len()` values (padding rows
/// included) per activation row.
pub type GemmFn =
    fn(w: &PackedWeight, groups: std::ops::Range<usize>, acts: &[ActRow<'_>], out: GemmOut<'_>);

/// Where a kernel writes: activation row `i`'s run of `width` values starts `i · stride`
/// values past the start. A run per row back to back in a buffer of its own
/// ([`GemmOut::packed`]), or a block of columns of a whole product's rows
/// ([`GemmOut::strided`]): the tasks of a batched product then write their columns in place
/// instead of through a buffer copied afterwards (that copy was 7% of a prefill).
#[derive(Debug)]
pub struct GemmOut<'a> {
    ptr: *mut f32,
    rows: usize,
    width: usize,
    stride: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> GemmOut<'a> {
    /// Runs of `width` values back to back: `out.len() / width` rows.
    pub fn packed(out: &'a mut [f32], width: usize) -> Self {
        let rows = out.len().checked_div(width).unwrap_or(0);
        assert_eq!(rows * width, out.len(), "output of runs of {width}");
        Self {
            ptr: out.as_mut_ptr(),
            rows,
            width,
            stride: width,
            _out: std::marker::PhantomData,
        }
    }

    /// `rows` runs of `width` values, `stride` apart, from `ptr`.
    ///
    /// # Safety
    /// For every row `i < rows`, `ptr + i·stride .. + width` is valid for writes and nothing
    /// else reads or writes it for `'a`.
    pub unsafe fn strided(ptr: *mut f32, rows: usize, width: usize, stride: usize) -> Self {
        assert!(
            rows <= 1 || width <= stride,
            "runs of {width} overlap {stride} apart"
        );
        Self {
            ptr,
            rows,
            width,
            stride,
            _out: std::marker::PhantomData,
        }
    }

    /// Rows it holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values each row's run holds.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Row `i`'s run (`i < rows`, checked by the kernels' `check`).
    fn row_ptr(&self, i: usize) -> *mut f32 {
        self.ptr.wrapping_add(i * self.stride)
    }

    /// The rows `start..start + len`, giving this one up for as long as the part lives.
    fn rows_part(&mut self, start: usize, len: usize) -> GemmOut<'_> {
        assert!(start + len <= self.rows);
        GemmOut {
            ptr: self.row_ptr(start),
            rows: len,
            width: self.width,
            stride: self.stride,
            _out: std::marker::PhantomData,
        }
    }

    /// Row `i`'s run as a slice.
    fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows);
        // SAFETY: the constructors guarantee each row's run is writable and this one's alone.
        unsafe { std::slice::from_raw_parts_mut(self.row_ptr(i), self.width) }
    }
}

/// Activation rows one kernel call reuses each weight load for (the SIMD kernels keep their
/// accumulators in registers).
pub const MAX_TILE_ROWS: usize = 4;

/// [`MAX_TILE_ROWS`] for the AVX-512 kernel, whose 32 registers hold the accumulators of
/// more rows.
pub const MAX_TILE_ROWS_AVX512: usize = 8;

/// The integer correction per block, times the block's `Σ q_a` (module doc): Q8 words are
/// offset-binary, Q4 codes are offset by 8, Lut4's looked-up codes by 128; Q4M's offset is
/// its float min instead.
fn integer_correction(format: QuantFormat) -> i32 {
    match format {
        QuantFormat::Q8 | QuantFormat::Lut4(_) => -128,
        QuantFormat::Q4(_) => -8,
        _ => 0,
    }
}

/// The codebook of a Lut4 format.
fn lut4_book(format: QuantFormat) -> Option<Codebook> {
    match format {
        QuantFormat::Lut4(book) => Some(book),
        _ => None,
    }
}

/// A codebook's levels as the unsigned codes the integer kernels multiply: `T[q] + 128`
/// (offset-binary, as Q8's words), so that they go on `dpbusd`'s unsigned side.
fn lut4_codes(book: Codebook) -> [u8; 16] {
    book.levels().map(|l| (l as u8) ^ 0x80)
}

/// The scalar twin: plain integer arithmetic, block by block, one row at a time.
pub fn gemm_scalar(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    mut out: GemmOut<'_>,
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * (w.cols / QBLOCK);
    let factor = integer_correction(w.format);
    // The unsigned value of each nibble: itself, or its Lut4 code.
    let nibble = lut4_book(w.format).map_or(std::array::from_fn(|q| q as u8), lut4_codes);
    let width = groups.len() * ROW_GROUP;
    assert!(out.rows() == acts.len() && out.width() == width);
    for (r, a) in acts.iter().enumerate() {
        let out = out.row_mut(r);
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
                                    let (lo, hi) = (
                                        nibble[usize::from(byte & 0x0f)],
                                        nibble[usize::from(byte >> 4)],
                                    );
                                    s += i32::from(lo) * i32::from(aq[4 * c + j])
                                        + i32::from(hi) * i32::from(aq[16 + 4 * c + j]);
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

/// The AVX2 Q4 kernel's four-row tile in assembly (a child of `x86`'s dispatch).
#[cfg(target_arch = "x86_64")]
mod avx2_q4x4;

#[cfg(target_arch = "x86_64")]
mod amx;

/// The shape checks the SIMD kernels rely on (once per call, not per block).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn check(
    w: &PackedWeight,
    groups: &std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: &GemmOut<'_>,
) {
    let padded = w.row_groups() * ROW_GROUP;
    let ngroups = w.cols / w.format.group();
    assert!(
        groups.end <= w.row_groups()
            && out.rows() == acts.len()
            && out.width() == groups.len() * ROW_GROUP
    );
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
        if amx::has_amx() {
            v.push(("amx", amx::gemm_amx));
        }
        if x86::has_vnni() {
            v.push(("avx512vnni", x86::gemm_vnni));
            // The other width of a single row than this CPU's default (tests run both).
            if x86::decode_pairs() {
                v.push(("avx512vnni-256", x86::gemm_vnni_256));
            } else {
                v.push(("avx512vnni-512", x86::gemm_vnni_512));
            }
            // Lut4 lookups with `vpshufb` where the default takes VBMI's `vpermb`.
            if x86::has_vbmi() {
                v.push(("avx512vnni-shuffle", x86::gemm_vnni_shuffle));
            }
        }
        if x86::has_avx2() {
            v.push(("avx2", x86::gemm_avx2));
        }
    }
    v.push(("scalar", gemm_scalar));
    v
}

/// The best variant for this CPU (decided once). `LOWBIT_CPU_KERNEL=amx|avx512vnni|avx2|scalar`
/// pins one (benchmarks compare them; `avx512vnni-256` and `-512` pin a decode row's width,
/// `avx512vnni-shuffle` Lut4's `vpshufb` lookups on a CPU with VBMI).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantizer as first written: `f32::max` over magnitudes, one value at a time.
    fn quantize_reference(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<f32>, Vec<i32>) {
        let (mut q, mut d, mut c, mut qsum) = (vec![], vec![], vec![], vec![]);
        for xb in x.chunks_exact(QBLOCK) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for v in xb {
                let o = ((v * inv + 12_582_912.0) - 12_582_912.0) as i8;
                q.push(o);
                s += i32::from(o);
            }
            d.push(scale);
            c.push(scale * s as f32);
            qsum.push(s);
        }
        (q, d, c, qsum)
    }

    type QuantizeFn = fn(&[f32], &mut [i8], &mut [f32], &mut [f32], &mut [i32]);

    /// The block loops this CPU can run.
    fn quantizers() -> Vec<(&'static str, QuantizeFn)> {
        let mut v: Vec<(&'static str, QuantizeFn)> = vec![("portable", quantize_blocks_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the feature was just detected.
                v.push(("avx2", |x, q, d, c, s| unsafe {
                    quantize_blocks_avx2(x, q, d, c, s)
                }));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                // SAFETY: as above.
                v.push(("avx512", |x, q, d, c, s| unsafe {
                    quantize_blocks_avx512(x, q, d, c, s)
                }));
            }
        }
        v
    }

    #[test]
    fn quantized_activations_match_the_reference_bit_for_bit() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // 1,100 blocks: past one task, so the parallel path runs too; odd values on purpose.
        let mut x: Vec<f32> = (0..1100 * QBLOCK)
            .map(|_| (next() % 20_001) as f32 / 1000.0 - 10.0)
            .collect();
        x[5] = f32::NAN;
        x[40] = f32::INFINITY;
        x[70] = -f32::INFINITY;
        x[96..128].fill(0.0);
        x[128..160].fill(-0.0);
        x[160] = 127.0;
        x[161] = 0.5; // a tie: rounds to even
        x[200..232].fill(f32::NAN);
        for rows in [1, 16, 1100] {
            let xs = &x[..rows * QBLOCK];
            let got = QuantizedActs::quantize(xs, QBLOCK);
            let (q, d, c, qsum) = quantize_reference(xs);
            assert_eq!(got.q, q, "{rows} blocks");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.d), bits(&d), "{rows} blocks");
            assert_eq!(bits(&got.c), bits(&c), "{rows} blocks");
            assert_eq!(got.qsum, qsum, "{rows} blocks");
            // Every loop this CPU can run, whichever ran above.
            for (name, quantize) in quantizers() {
                let mut p = QuantizedActs::quantize(&vec![0.0; xs.len()], QBLOCK);
                quantize(xs, &mut p.q, &mut p.d, &mut p.c, &mut p.qsum);
                assert_eq!(p.q, got.q, "{name}, {rows} blocks");
                assert_eq!(bits(&p.d), bits(&got.d), "{name}, {rows} blocks");
                assert_eq!(bits(&p.c), bits(&got.c), "{name}, {rows} blocks");
                assert_eq!(p.qsum, got.qsum, "{name}, {rows} blocks");
            }
        }
    }
}
