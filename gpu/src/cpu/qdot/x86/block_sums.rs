//! The per-block integer sums the x86 kernels are built from: one 32-value block of a row
//! group (or two) against up to eight activation rows, per weight format and instruction set
//! (`gemm_groups` in the parent runs them block by block).

use super::*;

/// AVX2 Q4 block sums (one row group): `maddubs` pairs, summed in i16 (four words'
/// products fit: 4 · 2 · (2 · 15 · 127) = 30480), widened once.
#[inline(always)]
pub(super) unsafe fn q4_sums_avx2<const R: usize>(
    wp: *const __m256i,
    _wpr: usize,
    aps: [*const i8; R],
    init: [__m256i; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let nibbles = _mm256_set1_epi8(0x0f);
        let mut acc16 = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let v = _mm256_loadu_si256(wp.add(c));
            let lo = _mm256_and_si256(v, nibbles);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibbles);
            for i in 0..R {
                acc16[i] = _mm256_add_epi16(
                    acc16[i],
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, Ymm::broadcast(aps[i].add(4 * c))),
                        _mm256_maddubs_epi16(hi, Ymm::broadcast(aps[i].add(16 + 4 * c))),
                    ),
                );
            }
        }
        let ones = _mm256_set1_epi16(1);
        std::array::from_fn(|i| _mm256_add_epi32(init[i], _mm256_madd_epi16(acc16[i], ones)))
    }
}

/// AVX2 Q8 block sums: `maddubs` would saturate on offset-binary bytes, so the words go
/// back to signed and `|w| · (a·sign(w))` stays within i16. That is the signed dot product
/// itself, which equals `init + Σ u_w·q_a`, so `init` is not needed.
#[inline(always)]
pub(super) unsafe fn q8_sums_avx2<const R: usize>(
    wp: *const __m256i,
    _wpr: usize,
    aps: [*const i8; R],
    _init: [__m256i; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let (ones, flip) = (_mm256_set1_epi16(1), _mm256_set1_epi8(-128));
        let mut acc = [_mm256_setzero_si256(); R];
        for c in 0..8 {
            let ws = _mm256_xor_si256(_mm256_loadu_si256(wp.add(c)), flip);
            let wabs = _mm256_sign_epi8(ws, ws);
            for i in 0..R {
                let av = Ymm::broadcast(aps[i].add(4 * c));
                let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, ws));
                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
            }
        }
        acc
    }
}

/// AVX2 Lut4 block sums (`iq4nl`; `fp4` takes [`fp4_sums_avx2`]): each nibble looked up as its signed level (`signed`: the codebook's
/// levels), then Q8's signed product, `|w| · (a·sign(w))` (a pair is at most 2 · 127 · 127,
/// within i16), widened per word. The signed dot product equals `init + Σ u·q_a` with the
/// stored-offset codes `u` (`lut4_codes`), so `init` is not needed.
#[inline(always)]
pub(super) unsafe fn lut4_sums_avx2<const R: usize>(
    wp: *const __m256i,
    signed: __m256i,
    aps: [*const i8; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let (lo, hi) = Ymm::nibbles(_mm256_loadu_si256(wp.add(c)));
            for (ws, at) in [(lo, 4 * c), (hi, 16 + 4 * c)] {
                let ws = _mm256_shuffle_epi8(signed, ws);
                let wabs = _mm256_sign_epi8(ws, ws);
                for i in 0..R {
                    let av = Ymm::broadcast(aps[i].add(at));
                    let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, ws));
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
                }
            }
        }
        acc
    }
}

/// AVX2 `fp4` block sums: FP4's levels are at most 12 in magnitude, so with 12 added
/// (`unsigned`: 0..=24, on `maddubs`'s unsigned side) a block's four words of low (and of high)
/// nibbles sum in i16 (4 · 2 · 24 · 127 = 24,384), widened once per half, as Q4's are. The
/// offset comes off as −12·Σq_a: `init` is −128·Σq_a, so `init / 32 · 3`, exact.
#[inline(always)]
pub(super) unsafe fn fp4_sums_avx2<const R: usize>(
    wp: *const __m256i,
    unsigned: __m256i,
    aps: [*const i8; R],
    init: [__m256i; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let mut lo16 = [_mm256_setzero_si256(); R];
        let mut hi16 = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let (lo, hi) = Ymm::nibbles(_mm256_loadu_si256(wp.add(c)));
            let (lo, hi) = (
                _mm256_shuffle_epi8(unsigned, lo),
                _mm256_shuffle_epi8(unsigned, hi),
            );
            for i in 0..R {
                let a_lo = Ymm::broadcast(aps[i].add(4 * c));
                let a_hi = Ymm::broadcast(aps[i].add(16 + 4 * c));
                lo16[i] = _mm256_add_epi16(lo16[i], _mm256_maddubs_epi16(lo, a_lo));
                hi16[i] = _mm256_add_epi16(hi16[i], _mm256_maddubs_epi16(hi, a_hi));
            }
        }
        let ones = _mm256_set1_epi16(1);
        std::array::from_fn(|i| {
            let q = _mm256_srai_epi32::<5>(init[i]);
            let offset = _mm256_add_epi32(q, _mm256_slli_epi32::<1>(q));
            let halves = _mm256_add_epi32(
                _mm256_madd_epi16(lo16[i], ones),
                _mm256_madd_epi16(hi16[i], ones),
            );
            _mm256_add_epi32(offset, halves)
        })
    }
}

/// FP4's levels plus 12, the unsigned codes of [`fp4_sums_avx2`].
pub(super) const FP4_PLUS_12: [u8; 16] = {
    let levels = Codebook::Fp4.levels();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (levels[i] + 12) as u8;
        i += 1;
    }
    out
};

/// How the VNNI kernel reads a nibble: as it is (Q4, Q4M), or looked up in a Lut4 table with
/// `vpshufb` or with AVX-512 VBMI's `vpermb` (no masks).
pub(super) const PLAIN: u8 = 0;
pub(super) const SHUFFLE: u8 = 1;
pub(super) const VBMI: u8 = 2;

/// VNNI Q4 block sums of [`Width::GROUPS`] row groups: low and high nibbles in separate
/// chains, so that consecutive `dpbusd`s do not wait on each other. Unless `LOOKUP` is
/// `PLAIN`, each nibble becomes its Lut4 code (`table`: the offset levels of `lut4_codes`).
#[inline(always)]
pub(super) unsafe fn q4_sums_vnni<W: Width, const R: usize, const LOOKUP: u8>(
    wp: *const __m256i,
    wpr: usize,
    aps: [*const i8; R],
    init: [W::I; R],
    table: W::I,
) -> [W::I; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let mut lo_sum = init;
        let mut hi_sum = [W::zero_i(); R];
        for c in 0..4 {
            let v = W::words(wp, wpr, c);
            let (lo, hi) = match LOOKUP {
                VBMI => W::lookup_nibbles_vbmi(table, v),
                SHUFFLE => {
                    let (lo, hi) = W::nibbles(v);
                    (W::lookup(table, lo), W::lookup(table, hi))
                }
                _ => W::nibbles(v),
            };
            for i in 0..R {
                lo_sum[i] = W::dpbusd(lo_sum[i], lo, W::broadcast(aps[i].add(4 * c)));
                hi_sum[i] = W::dpbusd(hi_sum[i], hi, W::broadcast(aps[i].add(16 + 4 * c)));
            }
        }
        std::array::from_fn(|i| W::add(lo_sum[i], hi_sum[i]))
    }
}

/// VNNI Q8 block sums of [`Width::GROUPS`] row groups (offset-binary words on the unsigned
/// side of `dpbusd`), even and odd words in separate chains.
#[inline(always)]
pub(super) unsafe fn q8_sums_vnni<W: Width, const R: usize>(
    wp: *const __m256i,
    wpr: usize,
    aps: [*const i8; R],
    init: [W::I; R],
) -> [W::I; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let mut s0 = init;
        let mut s1 = [W::zero_i(); R];
        for c in (0..8).step_by(2) {
            let (w0, w1) = (W::words(wp, wpr, c), W::words(wp, wpr, c + 1));
            for i in 0..R {
                s0[i] = W::dpbusd(s0[i], w0, W::broadcast(aps[i].add(4 * c)));
                s1[i] = W::dpbusd(s1[i], w1, W::broadcast(aps[i].add(4 * c + 4)));
            }
        }
        std::array::from_fn(|i| W::add(s0[i], s1[i]))
    }
}
