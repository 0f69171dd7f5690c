//! Integer dot products of quantized weight rows with int8-quantized activations.
//!
//! Activations are quantized at run time (dynamic quantization), per 32-value block:
//! `a = d_a·q_a` with `q_a ∈ −127..=127`; each block also keeps `Σ q_a`. A weight block of any
//! format then costs one integer dot product and one or two float multiply-adds:
//! ```text
//! Q8 :  d_w·d_a·Σ q_w·q_a
//! Q4 :  d_w·d_a·(Σ q_w·q_a − 8·Σ q_a)            q_w ∈ 0..16 stored, value d_w·(q_w − 8)
//! Q4M:  d_w·d_a·Σ q_w·q_a + m_w·d_a·Σ q_a         value d_w·q_w + m_w
//! ```
//! The scalar kernels are the twins every SIMD variant (AVX2, AVX-512 VNNI) is tested against;
//! variants are chosen at run time from the CPU's features.

use crate::quant::format::{QuantFormat, QBLOCK};
use half::f16;

/// Rows of activations quantized to int8 per 32-block.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActs {
    pub cols: usize,
    pub q: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// `Σ q` per block.
    pub sums: Vec<i32>,
}

impl QuantizedActs {
    /// Quantizes `x` (rows of `cols`, a multiple of 32): `d = max|a|/127`, `q = round(a/d)`.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / QBLOCK;
        let mut q = vec![0i8; x.len()];
        let mut d = Vec::with_capacity(blocks);
        let mut sums = Vec::with_capacity(blocks);
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
            sums.push(s);
        }
        Self { cols, q, d, sums }
    }

    /// Row `i`'s view.
    pub fn row(&self, i: usize) -> ActRow<'_> {
        let b = self.cols / QBLOCK;
        ActRow {
            q: &self.q[i * self.cols..(i + 1) * self.cols],
            d: &self.d[i * b..(i + 1) * b],
            sums: &self.sums[i * b..(i + 1) * b],
        }
    }
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
}

/// One quantized weight row.
#[derive(Debug, Clone, Copy)]
pub struct WeightRow<'a> {
    pub format: QuantFormat,
    pub bytes: &'a [u8],
    pub scales: &'a [f16],
    pub mins: &'a [f16],
}

/// A dot-product kernel: weight row · activation row.
pub type DotFn = fn(WeightRow<'_>, ActRow<'_>) -> f32;

/// The scalar twin: plain integer arithmetic, block by block.
pub fn dot_scalar(w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
    let g = w.format.group();
    let mut acc = 0.0f32;
    for b in 0..a.d.len() {
        let grp = b * QBLOCK / g;
        let d = w.scales[grp].to_f32() * a.d[b];
        let aq = &a.q[b * QBLOCK..(b + 1) * QBLOCK];
        match w.format {
            QuantFormat::Q8 => {
                let wq = &w.bytes[b * QBLOCK..(b + 1) * QBLOCK];
                let s: i32 = wq.iter().zip(aq).map(|(&x, &y)| i32::from(x as i8) * i32::from(y)).sum();
                acc += d * s as f32;
            }
            QuantFormat::Q4(_) | QuantFormat::Q4M(_) => {
                let qs = &w.bytes[b * 16..b * 16 + 16];
                let mut s = 0i32;
                for j in 0..16 {
                    s += i32::from(qs[j] & 0x0f) * i32::from(aq[j]) + i32::from(qs[j] >> 4) * i32::from(aq[j + 16]);
                }
                if matches!(w.format, QuantFormat::Q4M(_)) {
                    acc += d * s as f32 + w.mins[grp].to_f32() * a.d[b] * a.sums[b] as f32;
                } else {
                    acc += d * (s - 8 * a.sums[b]) as f32;
                }
            }
            QuantFormat::F32 | QuantFormat::F16 => unreachable!("float weights take the f32 path"),
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn f16_to_f32(h: f16) -> f32 {
        // SAFETY: only called from functions compiled with `f16c`.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
    }

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

    /// Shared block loop: `idot(w_ptr, a_ptr)` gives the 8 partial integer sums of one block.
    #[inline(always)]
    fn dot_blocks(w: WeightRow<'_>, a: ActRow<'_>, idot: impl Fn(*const u8, *const i8) -> __m256i) -> f32 {
        let g = w.format.group();
        let is_q8 = w.format == QuantFormat::Q8;
        let has_min = matches!(w.format, QuantFormat::Q4M(_));
        let blocks = a.d.len();
        debug_assert!(w.bytes.len() >= blocks * if is_q8 { 32 } else { 16 });
        // SAFETY: every pointer below stays inside `w.bytes`/`a.q`, whose lengths cover
        // `blocks` whole blocks (checked by the callers' shapes).
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut extra = 0.0f32;
            for b in 0..blocks {
                let grp = b * QBLOCK / g;
                let dw = f16_to_f32(*w.scales.get_unchecked(grp));
                let da = *a.d.get_unchecked(b);
                let wp = w.bytes.as_ptr().add(if is_q8 { b * 32 } else { b * 16 });
                let sums = idot(wp, a.q.as_ptr().add(b * QBLOCK));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * da), acc);
                if !is_q8 {
                    let s = *a.sums.get_unchecked(b) as f32;
                    extra += if has_min { f16_to_f32(*w.mins.get_unchecked(grp)) * da * s } else { -8.0 * dw * da * s };
                }
            }
            let hi = _mm256_extractf128_ps(acc, 1);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            _mm_cvtss_f32(s1) + extra
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2_impl(w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
        let ones = _mm256_set1_epi16(1);
        if w.format == QuantFormat::Q8 {
            dot_blocks(w, a, |wp, ap| unsafe {
                // SAFETY: 32 readable bytes each (see dot_blocks).
                let wv = _mm256_loadu_si256(wp as *const __m256i);
                let av = _mm256_loadu_si256(ap as *const __m256i);
                // |w| · (a·sign(w)): u8 × i8 without overflow (|w| ≤ 128).
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
                _mm256_madd_epi16(p, ones)
            })
        } else {
            dot_blocks(w, a, |wp, ap| unsafe {
                // SAFETY: 16 weight bytes and 32 activation bytes (see dot_blocks).
                let wv = unpack_q4(wp);
                let av = _mm256_loadu_si256(ap as *const __m256i);
                _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones)
            })
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    fn dot_vnni_impl(w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
        let zero = _mm256_setzero_si256();
        if w.format == QuantFormat::Q8 {
            dot_blocks(w, a, |wp, ap| unsafe {
                // SAFETY: as above.
                let wv = _mm256_loadu_si256(wp as *const __m256i);
                let av = _mm256_loadu_si256(ap as *const __m256i);
                _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv))
            })
        } else {
            dot_blocks(w, a, |wp, ap| unsafe {
                // SAFETY: as above.
                _mm256_dpbusd_epi32(zero, unpack_q4(wp), _mm256_loadu_si256(ap as *const __m256i))
            })
        }
    }

    pub fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    pub fn has_vnni() -> bool {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    pub fn dot_avx2(w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
        assert!(has_avx2());
        // SAFETY: features checked.
        unsafe { dot_avx2_impl(w, a) }
    }

    pub fn dot_vnni(w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
        assert!(has_vnni());
        // SAFETY: features checked.
        unsafe { dot_vnni_impl(w, a) }
    }
}

/// The variants this CPU can run, best first.
pub fn available_dots() -> Vec<(&'static str, DotFn)> {
    let mut v: Vec<(&'static str, DotFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            v.push(("avx512vnni", x86::dot_vnni));
        }
        if x86::has_avx2() {
            v.push(("avx2", x86::dot_avx2));
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
