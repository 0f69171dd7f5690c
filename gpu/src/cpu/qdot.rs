//! Integer dot products of quantized weight rows with int8-quantized activations.
//!
//! Activations are quantized at run time (dynamic quantization), per 32-value block:
//! `a = d_a·q_a` with `q_a ∈ −127..=127`; each block also keeps `c_a = d_a·Σ q_a`. A weight
//! block of any format then costs one integer dot product and one float multiply-add, plus a
//! per-row correction that is itself a short float dot product:
//! ```text
//! Q8 :  Σ_b d_w·d_a·Σ q_w·q_a
//! Q4 :  Σ_b d_w·d_a·Σ q_w·q_a  −  8·Σ_b d_w·c_a      q_w ∈ 0..16, value d_w·(q_w − 8)
//! Q4M:  Σ_b d_w·d_a·Σ q_w·q_a  +    Σ_b m_w·c_a      value d_w·q_w + m_w
//! ```
//! Weight scales are widened to f32 per block once per chunk of rows ([`PreparedRows`]), and
//! the SIMD kernels take four weight rows per activation load. The scalar kernel is the twin
//! every SIMD variant (AVX2, AVX-512 VNNI) is tested against; variants are chosen at run time.

use crate::quant::format::{QuantFormat, QBLOCK};
use crate::quant::qtensor::QTensor;
use half::slice::HalfFloatSliceExt;

/// Rows of activations quantized to int8 per 32-block.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActs {
    pub cols: usize,
    pub q: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// `d · Σ q` per block.
    pub c: Vec<f32>,
}

impl QuantizedActs {
    /// Quantizes `x` (rows of `cols`, a multiple of 32): `d = max|a|/127`, `q = round(a/d)`.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / QBLOCK;
        let mut q = vec![0i8; x.len()];
        let mut d = Vec::with_capacity(blocks);
        let mut c = Vec::with_capacity(blocks);
        for (xb, qb) in x.chunks_exact(QBLOCK).zip(q.chunks_exact_mut(QBLOCK)) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for (o, v) in qb.iter_mut().zip(xb) {
                *o = (v * inv).round() as i8;
                s += i32::from(*o);
            }
            d.push(scale);
            c.push(scale * s as f32);
        }
        Self { cols, q, d, c }
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
        }
    }
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub c: &'a [f32],
}

/// A chunk of weight rows with their scales (and mins) widened to f32 in bulk.
#[derive(Debug)]
pub struct PreparedRows<'a> {
    pub format: QuantFormat,
    w: &'a QTensor,
    first: usize,
    /// `rows × groups` scales.
    dw: Vec<f32>,
    /// `rows × groups` mins (Q4M only).
    mins: Vec<f32>,
    groups: usize,
    /// 32-blocks per group.
    per_group: usize,
    blocks: usize,
}

impl<'a> PreparedRows<'a> {
    /// Prepares rows `first..first + n` of an integer-format tensor.
    pub fn new(w: &'a QTensor, first: usize, n: usize) -> Self {
        let groups = w.cols / w.format.group();
        let range = first * groups..(first + n) * groups;
        let mut dw = vec![0.0f32; n * groups];
        w.scales[range.clone()].convert_to_f32_slice(&mut dw);
        let mut mins = Vec::new();
        if !w.mins.is_empty() {
            mins.resize(n * groups, 0.0);
            w.mins[range].convert_to_f32_slice(&mut mins);
        }
        Self {
            format: w.format,
            w,
            first,
            dw,
            mins,
            groups,
            per_group: w.format.group() / QBLOCK,
            blocks: w.cols / QBLOCK,
        }
    }

    /// Packed bytes of prepared row `i`.
    pub fn bytes(&self, i: usize) -> &'a [u8] {
        self.w.row_bytes(self.first + i)
    }

    /// Scales of prepared row `i`, one per group.
    pub fn dw(&self, i: usize) -> &[f32] {
        &self.dw[i * self.groups..(i + 1) * self.groups]
    }

    /// The per-row correction term `Σ_b coef[b]·c_a[b]` (zero for Q8).
    fn correction(&self, i: usize, c: &[f32]) -> f32 {
        let pg = self.per_group;
        let coef = match self.format {
            QuantFormat::Q4(_) => self.dw(i),
            QuantFormat::Q4M(_) => &self.mins[i * self.groups..(i + 1) * self.groups],
            _ => return 0.0,
        };
        let s: f32 = if pg == 1 {
            coef.iter().zip(c).map(|(x, y)| x * y).sum()
        } else {
            coef.iter()
                .zip(c.chunks_exact(pg))
                .map(|(x, y)| x * y.iter().sum::<f32>())
                .sum()
        };
        if matches!(self.format, QuantFormat::Q4(_)) {
            -8.0 * s
        } else {
            s
        }
    }
}

/// A kernel: dot products of prepared rows `rows` (a range of `p`) with one activation row.
pub type DotFn =
    fn(p: &PreparedRows<'_>, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]);

/// The scalar twin: plain integer arithmetic, block by block, one row at a time.
pub fn dot_scalar(
    p: &PreparedRows<'_>,
    rows: std::ops::Range<usize>,
    a: ActRow<'_>,
    out: &mut [f32],
) {
    for (o, i) in out.iter_mut().zip(rows) {
        let (bytes, dw) = (p.bytes(i), p.dw(i));
        let mut acc = 0.0f32;
        for b in 0..p.blocks {
            let aq = &a.q[b * QBLOCK..(b + 1) * QBLOCK];
            let s: i32 = if p.format == QuantFormat::Q8 {
                bytes[b * 32..b * 32 + 32]
                    .iter()
                    .zip(aq)
                    .map(|(&x, &y)| i32::from(x as i8) * i32::from(y))
                    .sum()
            } else {
                let qs = &bytes[b * 16..b * 16 + 16];
                (0..16)
                    .map(|j| {
                        i32::from(qs[j] & 0x0f) * i32::from(aq[j])
                            + i32::from(qs[j] >> 4) * i32::from(aq[j + 16])
                    })
                    .sum()
            };
            acc += dw[b / p.per_group] * a.d[b] * s as f32;
        }
        *o = acc + p.correction(i, a.c);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Unpacks a Q4 block's 16 bytes into 32 bytes of values in natural order.
    #[inline(always)]
    unsafe fn unpack_q4(ptr: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes.
        unsafe {
            let v = _mm_loadu_si128(ptr as *const __m128i);
            let m4 = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(v, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            _mm256_set_m128i(hi, lo)
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: plain register arithmetic.
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
        }
    }

    /// The shared loop: `R` weight rows against one activation row. `idot(w_ptr, a)` gives
    /// the 8 partial integer sums of one block.
    #[inline(always)]
    unsafe fn rows_kernel<const R: usize>(
        p: &PreparedRows<'_>,
        first: usize,
        a: ActRow<'_>,
        out: &mut [f32],
        idot: impl Fn(*const u8, __m256i) -> __m256i,
    ) {
        let wbytes = if p.format == QuantFormat::Q8 { 32 } else { 16 };
        let ptrs: [*const u8; R] = std::array::from_fn(|r| p.bytes(first + r).as_ptr());
        let dws: [&[f32]; R] = std::array::from_fn(|r| p.dw(first + r));
        // SAFETY: every row holds `blocks` whole blocks and the activation row `blocks × 32`
        // bytes; indices stay below `blocks`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..p.blocks {
                let av = _mm256_loadu_si256(a.q.as_ptr().add(b * QBLOCK) as *const __m256i);
                let da = *a.d.get_unchecked(b);
                for r in 0..R {
                    let isum = idot(ptrs[r].add(b * wbytes), av);
                    let scale = _mm256_set1_ps(*dws[r].get_unchecked(b / p.per_group) * da);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + p.correction(first + r, a.c);
            }
        }
    }

    #[inline(always)]
    unsafe fn dispatch(
        p: &PreparedRows<'_>,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
        idot: impl Fn(*const u8, __m256i) -> __m256i + Copy,
    ) {
        let mut i = rows.start;
        let mut o = 0;
        // SAFETY: forwarded from the callers (whole rows and blocks).
        unsafe {
            while i + 4 <= rows.end {
                rows_kernel::<4>(p, i, a, &mut out[o..o + 4], idot);
                i += 4;
                o += 4;
            }
            while i < rows.end {
                rows_kernel::<1>(p, i, a, &mut out[o..o + 1], idot);
                i += 1;
                o += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2_impl(
        p: &PreparedRows<'_>,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
    ) {
        let ones = _mm256_set1_epi16(1);
        // SAFETY: block pointers come from whole rows (see rows_kernel).
        unsafe {
            if p.format == QuantFormat::Q8 {
                dispatch(p, rows, a, out, |wp, av| {
                    let wv = _mm256_loadu_si256(wp as *const __m256i);
                    // |w| · (a·sign(w)): u8 × i8 without overflow (|w| ≤ 128).
                    _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv)),
                        ones,
                    )
                })
            } else {
                dispatch(p, rows, a, out, |wp, av| {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(unpack_q4(wp), av), ones)
                })
            }
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    fn dot_vnni_impl(
        p: &PreparedRows<'_>,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
    ) {
        let zero = _mm256_setzero_si256();
        // SAFETY: as above.
        unsafe {
            if p.format == QuantFormat::Q8 {
                dispatch(p, rows, a, out, |wp, av| {
                    let wv = _mm256_loadu_si256(wp as *const __m256i);
                    _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv))
                })
            } else {
                dispatch(p, rows, a, out, |wp, av| {
                    _mm256_dpbusd_epi32(zero, unpack_q4(wp), av)
                })
            }
        }
    }

    pub fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    pub fn has_vnni() -> bool {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    pub fn dot_avx2(
        p: &PreparedRows<'_>,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
    ) {
        assert!(has_avx2() && a.q.len() >= p.blocks * QBLOCK);
        // SAFETY: features checked.
        unsafe { dot_avx2_impl(p, rows, a, out) }
    }

    pub fn dot_vnni(
        p: &PreparedRows<'_>,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
    ) {
        assert!(has_vnni() && a.q.len() >= p.blocks * QBLOCK);
        // SAFETY: features checked.
        unsafe { dot_vnni_impl(p, rows, a, out) }
    }
}

/// The variants this CPU can run, best first.
pub fn available_dots() -> Vec<(&'static str, DotFn)> {
    let mut v: Vec<(&'static str, DotFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        // AVX2 first: on the AMD EPYC (Zen 4) of BENCHMARKS.md its maddubs path beats
        // 256-bit VNNI for Q8 and ties it for Q4; VNNI stays available and tested.
        if x86::has_avx2() {
            v.push(("avx2", x86::dot_avx2));
        }
        if x86::has_vnni() {
            v.push(("avx512vnni", x86::dot_vnni));
        }
    }
    v.push(("scalar", dot_scalar));
    v
}

/// The best variant for this CPU (decided once).
pub fn best_dot() -> (&'static str, DotFn) {
    static BEST: std::sync::OnceLock<(&'static str, DotFn)> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available_dots()[0])
}
