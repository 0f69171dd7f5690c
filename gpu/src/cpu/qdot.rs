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
//! The SIMD kernels take eight blocks at a time: eight integer dot products, one horizontal
//! reduction to eight block sums, then one vector multiply-add with the eight widened scales
//! (`vcvtph2ps`), with software prefetch ahead of the weight stream. The scalar kernel is the
//! twin every SIMD variant (AVX2, AVX-512 VNNI) is tested against; variants are chosen at run
//! time.

use crate::quant::format::{QuantFormat, QBLOCK};
use crate::quant::qtensor::{words_per_row, QTensor};

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

/// A kernel: dot products of weight rows `rows` of `w` with one activation row.
pub type DotFn = fn(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]);

/// The scalar twin: plain integer arithmetic, block by block, one row at a time.
pub fn dot_scalar(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]) {
    let pg = w.format.group() / QBLOCK;
    for (o, r) in out.iter_mut().zip(rows) {
        let (bytes, scales, mins) = (w.row_bytes(r), w.row_scales(r), w.row_mins(r));
        let mut acc = 0.0f32;
        for b in 0..a.d.len() {
            let aq = &a.q[b * QBLOCK..(b + 1) * QBLOCK];
            let dw = scales[b / pg].to_f32();
            let s: i32 = if w.format == QuantFormat::Q8 {
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
            acc += dw * a.d[b] * s as f32;
            match w.format {
                QuantFormat::Q4(_) => acc -= 8.0 * dw * a.c[b],
                QuantFormat::Q4M(_) => acc += mins[b / pg].to_f32() * a.c[b],
                _ => {}
            }
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Unpacks a Q4 block's 16 bytes into 32 bytes of values in natural order: the 16 bytes
    /// go to both halves, the high half is shifted right by 4, then both are masked.
    #[inline(always)]
    unsafe fn unpack_q4(ptr: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes.
        unsafe {
            let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(ptr as *const __m128i));
            let shifted = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
            _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
        }
    }

    /// One f16 to f32 with `vcvtph2ps` (callers run with `f16c` enabled).
    #[inline(always)]
    unsafe fn f16_to_f32(h: half::f16) -> f32 {
        // SAFETY: register arithmetic; the caller's target features include f16c.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
    }

    #[inline(always)]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        // SAFETY: register arithmetic only.
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
        }
    }

    #[inline(always)]
    unsafe fn hsum_epi32(v: __m256i) -> i32 {
        // SAFETY: register arithmetic only.
        unsafe {
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01)))
        }
    }

    /// Eight vectors of 8 partial sums → one vector of their 8 totals.
    #[inline(always)]
    unsafe fn reduce8(s: [__m256i; 8]) -> __m256i {
        // SAFETY: register arithmetic only.
        unsafe {
            let t0 = _mm256_hadd_epi32(s[0], s[1]);
            let t1 = _mm256_hadd_epi32(s[2], s[3]);
            let t2 = _mm256_hadd_epi32(s[4], s[5]);
            let t3 = _mm256_hadd_epi32(s[6], s[7]);
            let u0 = _mm256_hadd_epi32(t0, t1);
            let u1 = _mm256_hadd_epi32(t2, t3);
            _mm256_add_epi32(
                _mm256_permute2x128_si256(u0, u1, 0x20),
                _mm256_permute2x128_si256(u0, u1, 0x31),
            )
        }
    }

    /// Eight f16 per-block coefficients starting at group `g0`, expanded from groups of `pg`
    /// blocks. Reads exactly the `8 / pg` halves needed.
    #[inline(always)]
    unsafe fn load_group_coefs(ptr: *const half::f16, pg: usize) -> __m256 {
        // SAFETY: the caller guarantees `8 / pg` readable halves.
        unsafe {
            match pg {
                1 => _mm256_cvtph_ps(_mm_loadu_si128(ptr as *const __m128i)),
                2 => {
                    let v = _mm256_cvtph_ps(_mm_loadl_epi64(ptr as *const __m128i));
                    _mm256_permutevar8x32_ps(v, _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0))
                }
                _ => {
                    let v =
                        _mm256_cvtph_ps(_mm_cvtsi32_si128((ptr as *const i32).read_unaligned()));
                    _mm256_permutevar8x32_ps(v, _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0))
                }
            }
        }
    }

    /// `R` consecutive weight rows (from `r0`) against one activation row, interleaved in one
    /// loop so the rows' independent work overlaps. `idot(w_ptr, a_ptr)` gives the 8 partial
    /// integer sums of one block.
    #[inline(always)]
    unsafe fn row_dots<const R: usize>(
        w: &QTensor,
        r0: usize,
        a: ActRow<'_>,
        idot: impl Fn(*const u8, *const i8) -> __m256i,
    ) -> [f32; R] {
        let format = w.format;
        let pg = format.group() / QBLOCK;
        let wbytes = if format == QuantFormat::Q8 { 32 } else { 16 };
        let blocks = a.d.len();
        let groups = blocks / pg;
        debug_assert!(
            w.words.len() * 4 >= (r0 + R) * blocks * wbytes && a.q.len() >= blocks * QBLOCK
        );
        // SAFETY: rows r0..r0+R each hold `blocks` whole blocks, `a` as many activation
        // blocks, and the scales (mins) one per group; every index below stays within those
        // (the callers checked the shapes once per call).
        unsafe {
            let wp: [*const u8; R] = std::array::from_fn(|i| {
                (w.words.as_ptr() as *const u8).add((r0 + i) * blocks * wbytes)
            });
            let scales: [*const half::f16; R] =
                std::array::from_fn(|i| w.scales.as_ptr().add((r0 + i) * groups));
            let mins: [*const half::f16; R] = std::array::from_fn(|i| {
                if w.mins.is_empty() {
                    scales[i]
                } else {
                    w.mins.as_ptr().add((r0 + i) * groups)
                }
            });
            let ap = a.q.as_ptr();
            let mut acc = [_mm256_setzero_ps(); R];
            let mut corr = [_mm256_setzero_ps(); R];
            let mut b = 0;
            while b + 8 <= blocks {
                let da = _mm256_loadu_ps(a.d.as_ptr().add(b));
                let c = _mm256_loadu_ps(a.c.as_ptr().add(b));
                for i in 0..R {
                    _mm_prefetch(wp[i].add((b + 16) * wbytes) as *const i8, _MM_HINT_T0);
                    _mm_prefetch(wp[i].add((b + 16) * wbytes + 64) as *const i8, _MM_HINT_T0);
                    let s: [__m256i; 8] = std::array::from_fn(|j| {
                        idot(wp[i].add((b + j) * wbytes), ap.add((b + j) * QBLOCK))
                    });
                    let sums = _mm256_cvtepi32_ps(reduce8(s));
                    let dw = load_group_coefs(scales[i].add(b / pg), pg);
                    acc[i] = _mm256_fmadd_ps(sums, _mm256_mul_ps(dw, da), acc[i]);
                    match format {
                        QuantFormat::Q4(_) => corr[i] = _mm256_fmadd_ps(dw, c, corr[i]),
                        QuantFormat::Q4M(_) => {
                            corr[i] = _mm256_fmadd_ps(
                                load_group_coefs(mins[i].add(b / pg), pg),
                                c,
                                corr[i],
                            )
                        }
                        _ => {}
                    }
                }
                b += 8;
            }
            let mut total: [f32; R] = std::array::from_fn(|i| {
                let corr = hsum_ps(corr[i]);
                hsum_ps(acc[i])
                    + if matches!(format, QuantFormat::Q4(_)) {
                        -8.0 * corr
                    } else {
                        corr
                    }
            });
            while b < blocks {
                let (da, c) = (*a.d.get_unchecked(b), *a.c.get_unchecked(b));
                for i in 0..R {
                    let isum = hsum_epi32(idot(wp[i].add(b * wbytes), ap.add(b * QBLOCK))) as f32;
                    let dw = f16_to_f32(*scales[i].add(b / pg));
                    total[i] += dw * da * isum;
                    match format {
                        QuantFormat::Q4(_) => total[i] -= 8.0 * dw * c,
                        QuantFormat::Q4M(_) => total[i] += f16_to_f32(*mins[i].add(b / pg)) * c,
                        _ => {}
                    }
                }
                b += 1;
            }
            total
        }
    }

    /// Runs `row_dots` over a range of rows, two at a time.
    #[inline(always)]
    unsafe fn all_rows(
        w: &QTensor,
        rows: std::ops::Range<usize>,
        a: ActRow<'_>,
        out: &mut [f32],
        idot: impl Fn(*const u8, *const i8) -> __m256i + Copy,
    ) {
        let mut r = rows.start;
        let mut o = 0;
        // SAFETY: forwarded from the callers (shapes checked).
        unsafe {
            while r + 2 <= rows.end {
                out[o..o + 2].copy_from_slice(&row_dots::<2>(w, r, a, idot));
                r += 2;
                o += 2;
            }
            if r < rows.end {
                out[o] = row_dots::<1>(w, r, a, idot)[0];
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2_impl(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]) {
        let ones = _mm256_set1_epi16(1);
        // SAFETY: block pointers come from whole rows (see row_dots).
        unsafe {
            if w.format == QuantFormat::Q8 {
                all_rows(w, rows, a, out, |wp, ap| {
                    let wv = _mm256_loadu_si256(wp as *const __m256i);
                    let av = _mm256_loadu_si256(ap as *const __m256i);
                    // |w| · (a·sign(w)): u8 × i8 without overflow (|w| ≤ 128).
                    _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv)),
                        ones,
                    )
                })
            } else {
                all_rows(w, rows, a, out, |wp, ap| {
                    let av = _mm256_loadu_si256(ap as *const __m256i);
                    _mm256_madd_epi16(_mm256_maddubs_epi16(unpack_q4(wp), av), ones)
                })
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    fn dot_vnni_impl(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]) {
        let zero = _mm256_setzero_si256();
        // SAFETY: as above.
        unsafe {
            if w.format == QuantFormat::Q8 {
                all_rows(w, rows, a, out, |wp, ap| {
                    let wv = _mm256_loadu_si256(wp as *const __m256i);
                    let av = _mm256_loadu_si256(ap as *const __m256i);
                    _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv))
                })
            } else {
                all_rows(w, rows, a, out, |wp, ap| {
                    _mm256_dpbusd_epi32(
                        zero,
                        unpack_q4(wp),
                        _mm256_loadu_si256(ap as *const __m256i),
                    )
                })
            }
        }
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

    fn check(w: &QTensor, rows: &std::ops::Range<usize>, a: &ActRow<'_>, out: &[f32]) {
        assert!(w.format.is_quantized() && rows.end <= w.rows && out.len() >= rows.len());
        // The kernels address rows by offset: the arrays must have exactly their sizes.
        let groups = w.rows * (w.cols / w.format.group());
        assert!(
            w.words.len() == w.rows * words_per_row(w.format, w.cols) && w.scales.len() == groups
        );
        assert!(
            w.mins.len()
                == if matches!(w.format, QuantFormat::Q4M(_)) {
                    groups
                } else {
                    0
                }
        );
        assert!(a.q.len() == w.cols && a.d.len() * QBLOCK == w.cols && a.c.len() == a.d.len());
    }

    pub fn dot_avx2(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]) {
        assert!(has_avx2());
        check(w, &rows, &a, out);
        // SAFETY: features and shapes checked.
        unsafe { dot_avx2_impl(w, rows, a, out) }
    }

    pub fn dot_vnni(w: &QTensor, rows: std::ops::Range<usize>, a: ActRow<'_>, out: &mut [f32]) {
        assert!(has_vnni());
        check(w, &rows, &a, out);
        // SAFETY: features and shapes checked.
        unsafe { dot_vnni_impl(w, rows, a, out) }
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
