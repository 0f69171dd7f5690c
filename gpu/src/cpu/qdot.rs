//! Integer matrix–vector products of [`PackedWeight`]s with int8-quantized activations.
//!
//! Activations are quantized at run time (dynamic quantization), per 32-value block:
//! `a = d_a·q_a` with `q_a ∈ −127..=127`; each block also keeps `c_a = d_a·Σ q_a`. A weight
//! block of any format then costs one integer dot product and one float multiply-add, plus a
//! per-group correction that is itself a float multiply-add:
//! ```text
//! Q8 :  Σ_b d_w·d_a·Σ u_w·q_a  −  128·Σ_b d_w·c_a    u_w = q_w + 128 (stored offset-binary)
//! Q4 :  Σ_b d_w·d_a·Σ q_w·q_a  −    8·Σ_b d_w·c_a    q_w ∈ 0..16, value d_w·(q_w − 8)
//! Q4M:  Σ_b d_w·d_a·Σ q_w·q_a  +      Σ_b m_w·c_a    value d_w·q_w + m_w
//! ```
//! The weights are interleaved by eight rows ([`super::packed`]), so each 256-bit load holds
//! one word of eight rows, and `dpbusd` against the broadcast activation word leaves each row's
//! partial sum in its own lane: no horizontal sums, one scale load per eight rows. Up to four
//! activation rows (a batch of decoding sequences) share each weight load and unpacking. The scalar
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

/// The factor of the per-group correction term (module doc).
fn correction_factor(format: QuantFormat) -> f32 {
    match format {
        QuantFormat::Q8 => -128.0,
        QuantFormat::Q4(_) => -8.0,
        _ => 1.0,
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
    let factor = correction_factor(w.format);
    let width = groups.len() * ROW_GROUP;
    for (a, out) in acts.iter().zip(out.chunks_exact_mut(width.max(1))) {
        for (rg, out8) in groups.clone().zip(out.chunks_exact_mut(ROW_GROUP)) {
            for (lane, o) in out8.iter_mut().enumerate() {
                let word =
                    |i: usize| w.words[rg * ROW_GROUP * wpr + i * ROW_GROUP + lane].to_le_bytes();
                let coef =
                    |v: &[half::f16], g: usize| v[(rg * ngroups + g) * ROW_GROUP + lane].to_f32();
                let (mut acc, mut corr) = (0.0f32, 0.0f32);
                for g in 0..ngroups {
                    let dw = coef(&w.scales, g);
                    let mut csum = 0.0f32;
                    for b in g * pg..(g + 1) * pg {
                        let aq = &a.q[b * QBLOCK..(b + 1) * QBLOCK];
                        let mut s = 0i32;
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
                        csum += a.c[b];
                    }
                    let k = if w.mins.is_empty() {
                        dw
                    } else {
                        coef(&w.mins, g)
                    };
                    corr += k * csum;
                }
                *o = acc + factor * corr;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The 32-bit activation word at `p`, in every lane.
    #[inline(always)]
    unsafe fn broadcast_word(p: *const i8) -> __m256i {
        // SAFETY: the caller guarantees 4 readable bytes.
        unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
    }

    /// The row-group loop shared by every variant, for `R` activation rows at once (each
    /// weight load serves all of them; per row, the float operations are those of `R = 1`, so
    /// results do not depend on how rows are tiled). `block_sums(w, a, b)` gives, per
    /// activation row, the eight weight rows' integer dot products of block `b`, whose words
    /// start at `w`, the rows' activations at `a`.
    #[inline(always)]
    unsafe fn gemm_groups<const R: usize>(
        w: &PackedWeight,
        groups: std::ops::Range<usize>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
        block_sums: impl Fn(*const __m256i, [*const i8; R], usize) -> [__m256i; R],
    ) {
        let pg = w.format.group() / QBLOCK;
        let ngroups = w.cols / w.format.group();
        let wpb = w.words_per_block();
        let wpr = wpb * (w.cols / QBLOCK);
        let has_mins = !w.mins.is_empty();
        let width = groups.len() * ROW_GROUP;
        // SAFETY: `check` verified the arrays' sizes for whole row groups, the activation
        // rows' lengths and `out`'s; every offset below stays inside them.
        unsafe {
            let factor = _mm256_set1_ps(correction_factor(w.format));
            let outp: [*mut f32; R] = std::array::from_fn(|i| out.as_mut_ptr().add(i * width));
            for (k, rg) in groups.enumerate() {
                let wq = w.words.as_ptr().add(rg * ROW_GROUP * wpr) as *const __m256i;
                let sc = w.scales.as_ptr().add(rg * ngroups * ROW_GROUP) as *const __m128i;
                let mn = if has_mins {
                    w.mins.as_ptr().add(rg * ngroups * ROW_GROUP) as *const __m128i
                } else {
                    sc
                };
                let mut acc = [_mm256_setzero_ps(); R];
                let mut corr = [_mm256_setzero_ps(); R];
                for g in 0..ngroups {
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(g)));
                    let mut csum = [0.0f32; R];
                    for b in g * pg..(g + 1) * pg {
                        let aps = std::array::from_fn(|i| acts[i].q.as_ptr().add(b * QBLOCK));
                        let sums = block_sums(wq.add(b * wpb), aps, b);
                        for i in 0..R {
                            let da = _mm256_set1_ps(*acts[i].d.get_unchecked(b));
                            acc[i] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(sums[i]),
                                _mm256_mul_ps(dw, da),
                                acc[i],
                            );
                            csum[i] += *acts[i].c.get_unchecked(b);
                        }
                    }
                    let k = if has_mins {
                        _mm256_cvtph_ps(_mm_loadu_si128(mn.add(g)))
                    } else {
                        dw
                    };
                    for i in 0..R {
                        corr[i] = _mm256_fmadd_ps(k, _mm256_set1_ps(csum[i]), corr[i]);
                    }
                }
                for i in 0..R {
                    _mm256_storeu_ps(
                        outp[i].add(k * ROW_GROUP),
                        _mm256_fmadd_ps(corr[i], factor, acc[i]),
                    );
                }
            }
        }
    }

    /// Splits `acts` into tiles of up to [`MAX_TILE_ROWS`] rows and runs `tile!(R, acts, out)`
    /// with `R` a constant.
    macro_rules! for_each_tile {
        ($acts:expr, $out:expr, $width:expr, $tile:ident) => {{
            let (acts, out, width) = ($acts, $out, $width);
            let mut i = 0;
            while i < acts.len() {
                let r = (acts.len() - i).min(MAX_TILE_ROWS);
                let (a, o) = (&acts[i..i + r], &mut out[i * width..(i + r) * width]);
                match r {
                    4 => $tile!(4, a, o),
                    3 => $tile!(3, a, o),
                    2 => $tile!(2, a, o),
                    _ => $tile!(1, a, o),
                }
                i += r;
            }
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn gemm_avx2_impl(
        w: &PackedWeight,
        groups: std::ops::Range<usize>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let ones = _mm256_set1_epi16(1);
        let nibbles = _mm256_set1_epi8(0x0f);
        let flip = _mm256_set1_epi8(-128);
        let width = groups.len() * ROW_GROUP;
        let q8 = w.format == QuantFormat::Q8;
        macro_rules! tile {
            ($r:literal, $a:expr, $o:expr) => {{
                let a: &[ActRow<'_>] = $a;
                // SAFETY: pointers come from `gemm_groups` (sizes checked).
                unsafe {
                    if q8 {
                        gemm_groups::<$r>(w, groups.clone(), a, $o, |wp, aps, b| {
                            // `maddubs` would saturate on offset-binary bytes: back to signed,
                            // then |w| · (a·sign(w)) stays within i16; adding 128·Σa gives the
                            // sum over offset-binary weights that `gemm_groups` corrects for.
                            let mut acc: [__m256i; $r] = std::array::from_fn(|i| {
                                _mm256_set1_epi32(128 * *a[i].qsum.get_unchecked(b))
                            });
                            for c in 0..8 {
                                let ws = _mm256_xor_si256(_mm256_loadu_si256(wp.add(c)), flip);
                                let wabs = _mm256_sign_epi8(ws, ws);
                                for i in 0..$r {
                                    let av = broadcast_word(aps[i].add(4 * c));
                                    let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, ws));
                                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
                                }
                            }
                            acc
                        })
                    } else {
                        gemm_groups::<$r>(w, groups.clone(), a, $o, |wp, aps, _| {
                            // Four words' products fit i16: 4 · 2 · (2 · 15 · 127) = 30480.
                            let mut acc16 = [_mm256_setzero_si256(); $r];
                            for c in 0..4 {
                                let v = _mm256_loadu_si256(wp.add(c));
                                let lo = _mm256_and_si256(v, nibbles);
                                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibbles);
                                for i in 0..$r {
                                    acc16[i] = _mm256_add_epi16(
                                        acc16[i],
                                        _mm256_add_epi16(
                                            _mm256_maddubs_epi16(
                                                lo,
                                                broadcast_word(aps[i].add(4 * c)),
                                            ),
                                            _mm256_maddubs_epi16(
                                                hi,
                                                broadcast_word(aps[i].add(16 + 4 * c)),
                                            ),
                                        ),
                                    );
                                }
                            }
                            std::array::from_fn(|i| _mm256_madd_epi16(acc16[i], ones))
                        })
                    }
                }
            }};
        }
        for_each_tile!(acts, out, width, tile);
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    fn gemm_vnni_impl(
        w: &PackedWeight,
        groups: std::ops::Range<usize>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let nibbles = _mm256_set1_epi8(0x0f);
        let width = groups.len() * ROW_GROUP;
        let q8 = w.format == QuantFormat::Q8;
        macro_rules! tile {
            ($r:literal, $a:expr, $o:expr) => {{
                let a: &[ActRow<'_>] = $a;
                // SAFETY: pointers come from `gemm_groups` (sizes checked).
                unsafe {
                    if q8 {
                        gemm_groups::<$r>(w, groups.clone(), a, $o, |wp, aps, _| {
                            // Two chains per row so consecutive `dpbusd`s do not wait on each
                            // other.
                            let mut s0 = [_mm256_setzero_si256(); $r];
                            let mut s1 = [_mm256_setzero_si256(); $r];
                            for c in (0..8).step_by(2) {
                                let w0 = _mm256_loadu_si256(wp.add(c));
                                let w1 = _mm256_loadu_si256(wp.add(c + 1));
                                for i in 0..$r {
                                    s0[i] = _mm256_dpbusd_epi32(
                                        s0[i],
                                        w0,
                                        broadcast_word(aps[i].add(4 * c)),
                                    );
                                    s1[i] = _mm256_dpbusd_epi32(
                                        s1[i],
                                        w1,
                                        broadcast_word(aps[i].add(4 * c + 4)),
                                    );
                                }
                            }
                            std::array::from_fn(|i| _mm256_add_epi32(s0[i], s1[i]))
                        })
                    } else {
                        gemm_groups::<$r>(w, groups.clone(), a, $o, |wp, aps, _| {
                            let mut lo_sum = [_mm256_setzero_si256(); $r];
                            let mut hi_sum = [_mm256_setzero_si256(); $r];
                            for c in 0..4 {
                                let v = _mm256_loadu_si256(wp.add(c));
                                let lo = _mm256_and_si256(v, nibbles);
                                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibbles);
                                for i in 0..$r {
                                    lo_sum[i] = _mm256_dpbusd_epi32(
                                        lo_sum[i],
                                        lo,
                                        broadcast_word(aps[i].add(4 * c)),
                                    );
                                    hi_sum[i] = _mm256_dpbusd_epi32(
                                        hi_sum[i],
                                        hi,
                                        broadcast_word(aps[i].add(16 + 4 * c)),
                                    );
                                }
                            }
                            std::array::from_fn(|i| _mm256_add_epi32(lo_sum[i], hi_sum[i]))
                        })
                    }
                }
            }};
        }
        for_each_tile!(acts, out, width, tile);
    }

    pub fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    pub fn has_vnni() -> bool {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    pub fn gemm_avx2(
        w: &PackedWeight,
        groups: std::ops::Range<usize>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        assert!(has_avx2());
        check(w, &groups, acts, out);
        // SAFETY: features and shapes checked.
        unsafe { gemm_avx2_impl(w, groups, acts, out) }
    }

    pub fn gemm_vnni(
        w: &PackedWeight,
        groups: std::ops::Range<usize>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        assert!(has_vnni());
        check(w, &groups, acts, out);
        // SAFETY: features and shapes checked.
        unsafe { gemm_vnni_impl(w, groups, acts, out) }
    }
}

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
