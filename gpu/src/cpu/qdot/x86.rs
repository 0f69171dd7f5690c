//! The x86-64 kernels: AVX2 `maddubs` and AVX-512 VNNI `dpbusd` (see the `qdot` module doc).

use super::*;
use std::arch::x86_64::*;

/// The 32-bit activation word at `p`, in every lane.
#[inline(always)]
unsafe fn broadcast_word(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// The row-group loop shared by every variant, for `R` activation rows at once (each
/// weight load serves all of them; per output value the operations are those of `R = 1`,
/// so results do not depend on how rows are tiled). `block_sums(w, a, init)` gives, per
/// activation row, the eight weight rows' integer dot products of one block plus `init`
/// (the row's integer correction), the words starting at `w`, the rows' activations at
/// `a`. `groups` is written at its place in `out`, whose runs of `width` values start at
/// row group `first`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_groups<const R: usize>(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    first: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
    width: usize,
    block_sums: impl Fn(*const __m256i, [*const i8; R], [__m256i; R]) -> [__m256i; R],
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * (w.cols / QBLOCK);
    let has_mins = !w.mins.is_empty();
    let factor = integer_correction(w.format);
    // SAFETY: `check` verified the arrays' sizes for whole row groups, the activation
    // rows' lengths and `out`'s; every offset below stays inside them.
    unsafe {
        let outp: [*mut f32; R] = std::array::from_fn(|i| out.as_mut_ptr().add(i * width));
        for rg in groups {
            let wq = w.words.as_ptr().add(rg * ROW_GROUP * wpr) as *const __m256i;
            let sc = w.scales.as_ptr().add(rg * ngroups * ROW_GROUP) as *const __m128i;
            let mn = if has_mins {
                w.mins.as_ptr().add(rg * ngroups * ROW_GROUP) as *const __m128i
            } else {
                sc
            };
            let mut acc = [_mm256_setzero_ps(); R];
            for g in 0..ngroups {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(g)));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(mn.add(g)));
                for b in g * pg..(g + 1) * pg {
                    let aps = std::array::from_fn(|i| acts[i].q.as_ptr().add(b * QBLOCK));
                    let init = std::array::from_fn(|i| {
                        _mm256_set1_epi32(factor * *acts[i].qsum.get_unchecked(b))
                    });
                    let sums = block_sums(wq.add(b * wpb), aps, init);
                    for i in 0..R {
                        let da = _mm256_set1_ps(*acts[i].d.get_unchecked(b));
                        acc[i] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sums[i]),
                            _mm256_mul_ps(dw, da),
                            acc[i],
                        );
                        if has_mins {
                            let ca = _mm256_set1_ps(*acts[i].c.get_unchecked(b));
                            acc[i] = _mm256_fmadd_ps(mw, ca, acc[i]);
                        }
                    }
                }
            }
            for i in 0..R {
                _mm256_storeu_ps(outp[i].add((rg - first) * ROW_GROUP), acc[i]);
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

/// AVX2 Q4 block sums (one row group): `maddubs` pairs, summed in i16 (four words'
/// products fit: 4 · 2 · (2 · 15 · 127) = 30480), widened once.
#[inline(always)]
unsafe fn q4_sums_avx2<const R: usize>(
    wp: *const __m256i,
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
                        _mm256_maddubs_epi16(lo, broadcast_word(aps[i].add(4 * c))),
                        _mm256_maddubs_epi16(hi, broadcast_word(aps[i].add(16 + 4 * c))),
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
unsafe fn q8_sums_avx2<const R: usize>(
    wp: *const __m256i,
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
                let av = broadcast_word(aps[i].add(4 * c));
                let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, ws));
                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
            }
        }
        acc
    }
}

/// VNNI Q4 block sums of one row group: low and high nibbles in separate chains, so
/// that consecutive `dpbusd`s do not wait on each other.
#[inline(always)]
unsafe fn q4_sums_vnni<const R: usize>(
    wp: *const __m256i,
    aps: [*const i8; R],
    init: [__m256i; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let nibbles = _mm256_set1_epi8(0x0f);
        let mut lo_sum = init;
        let mut hi_sum = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let v = _mm256_loadu_si256(wp.add(c));
            let lo = _mm256_and_si256(v, nibbles);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibbles);
            for i in 0..R {
                lo_sum[i] = _mm256_dpbusd_epi32(lo_sum[i], lo, broadcast_word(aps[i].add(4 * c)));
                hi_sum[i] =
                    _mm256_dpbusd_epi32(hi_sum[i], hi, broadcast_word(aps[i].add(16 + 4 * c)));
            }
        }
        std::array::from_fn(|i| _mm256_add_epi32(lo_sum[i], hi_sum[i]))
    }
}

/// VNNI Q8 block sums of one row group (offset-binary words on the unsigned side of
/// `dpbusd`), even and odd words in separate chains.
#[inline(always)]
unsafe fn q8_sums_vnni<const R: usize>(
    wp: *const __m256i,
    aps: [*const i8; R],
    init: [__m256i; R],
) -> [__m256i; R] {
    // SAFETY: pointers come from `gemm_groups` (sizes checked).
    unsafe {
        let mut s0 = init;
        let mut s1 = [_mm256_setzero_si256(); R];
        for c in (0..8).step_by(2) {
            let (w0, w1) = (
                _mm256_loadu_si256(wp.add(c)),
                _mm256_loadu_si256(wp.add(c + 1)),
            );
            for i in 0..R {
                s0[i] = _mm256_dpbusd_epi32(s0[i], w0, broadcast_word(aps[i].add(4 * c)));
                s1[i] = _mm256_dpbusd_epi32(s1[i], w1, broadcast_word(aps[i].add(4 * c + 4)));
            }
        }
        std::array::from_fn(|i| _mm256_add_epi32(s0[i], s1[i]))
    }
}

/// [`gemm_groups`] for pairs of row groups in 512-bit registers (AVX-512): lanes 0–7
/// hold row group `rg`, lanes 8–15 group `rg + 1`, so each `dpbusd` and each broadcast
/// activation load serves sixteen weight rows. Every lane computes exactly what
/// [`gemm_groups`] computes for it, so pairing does not change any value.
/// `block_sums(w0, w1, a, init)` is `gemm_groups`'s, for the two groups' words.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_pairs_zmm<const R: usize>(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    first: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
    width: usize,
    block_sums: impl Fn(*const __m256i, *const __m256i, [*const i8; R], [__m512i; R]) -> [__m512i; R],
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * (w.cols / QBLOCK);
    let has_mins = !w.mins.is_empty();
    let factor = integer_correction(w.format);
    // SAFETY: `check` verified the arrays' sizes for whole row groups, the activation
    // rows' lengths and `out`'s; every offset below stays inside them.
    unsafe {
        let outp: [*mut f32; R] = std::array::from_fn(|i| out.as_mut_ptr().add(i * width));
        let mut rg = groups.start;
        while rg + 2 <= groups.end {
            let wq0 = w.words.as_ptr().add(rg * ROW_GROUP * wpr) as *const __m256i;
            let wq1 = wq0.add(wpr);
            let pair = |v: &[half::f16], g: usize| -> __m512 {
                let p = v.as_ptr().add(rg * ngroups * ROW_GROUP + g * ROW_GROUP);
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadu_si128(p.add(ngroups * ROW_GROUP) as *const __m128i);
                _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
            };
            let mut acc = [_mm512_setzero_ps(); R];
            for g in 0..ngroups {
                let dw = pair(&w.scales, g);
                let mw = if has_mins { pair(&w.mins, g) } else { dw };
                for b in g * pg..(g + 1) * pg {
                    let aps = std::array::from_fn(|i| acts[i].q.as_ptr().add(b * QBLOCK));
                    let init = std::array::from_fn(|i| {
                        _mm512_set1_epi32(factor * *acts[i].qsum.get_unchecked(b))
                    });
                    let sums = block_sums(wq0.add(b * wpb), wq1.add(b * wpb), aps, init);
                    for i in 0..R {
                        let da = _mm512_set1_ps(*acts[i].d.get_unchecked(b));
                        acc[i] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(sums[i]),
                            _mm512_mul_ps(dw, da),
                            acc[i],
                        );
                        if has_mins {
                            let ca = _mm512_set1_ps(*acts[i].c.get_unchecked(b));
                            acc[i] = _mm512_fmadd_ps(mw, ca, acc[i]);
                        }
                    }
                }
            }
            for i in 0..R {
                _mm512_storeu_ps(outp[i].add((rg - first) * ROW_GROUP), acc[i]);
            }
            rg += 2;
        }
    }
}

/// Two row groups' words `c` as one 512-bit register (lanes 8–15: the second group).
#[inline(always)]
unsafe fn pair_words(w0: *const __m256i, w1: *const __m256i, c: usize) -> __m512i {
    // SAFETY: the caller guarantees both words are readable.
    unsafe {
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(c))),
            _mm256_loadu_si256(w1.add(c)),
            1,
        )
    }
}

/// The activation word at `p` in every 32-bit lane of a 512-bit register.
#[inline(always)]
unsafe fn broadcast_word16(p: *const i8) -> __m512i {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
}

/// VNNI Q4 block sums of a pair of row groups, low and high nibbles in separate chains.
#[inline(always)]
unsafe fn q4_sums_zmm<const R: usize>(
    w0: *const __m256i,
    w1: *const __m256i,
    aps: [*const i8; R],
    init: [__m512i; R],
) -> [__m512i; R] {
    // SAFETY: pointers come from `gemm_pairs_zmm` (sizes checked).
    unsafe {
        let nibbles = _mm512_set1_epi8(0x0f);
        let mut lo_sum = init;
        let mut hi_sum = [_mm512_setzero_si512(); R];
        for c in 0..4 {
            let v = pair_words(w0, w1, c);
            let lo = _mm512_and_si512(v, nibbles);
            let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibbles);
            for i in 0..R {
                lo_sum[i] = _mm512_dpbusd_epi32(lo_sum[i], lo, broadcast_word16(aps[i].add(4 * c)));
                hi_sum[i] =
                    _mm512_dpbusd_epi32(hi_sum[i], hi, broadcast_word16(aps[i].add(16 + 4 * c)));
            }
        }
        std::array::from_fn(|i| _mm512_add_epi32(lo_sum[i], hi_sum[i]))
    }
}

/// VNNI Q8 block sums of a pair of row groups, even and odd words in separate chains.
#[inline(always)]
unsafe fn q8_sums_zmm<const R: usize>(
    w0: *const __m256i,
    w1: *const __m256i,
    aps: [*const i8; R],
    init: [__m512i; R],
) -> [__m512i; R] {
    // SAFETY: pointers come from `gemm_pairs_zmm` (sizes checked).
    unsafe {
        let mut s0 = init;
        let mut s1 = [_mm512_setzero_si512(); R];
        for c in (0..8).step_by(2) {
            let (v0, v1) = (pair_words(w0, w1, c), pair_words(w0, w1, c + 1));
            for i in 0..R {
                s0[i] = _mm512_dpbusd_epi32(s0[i], v0, broadcast_word16(aps[i].add(4 * c)));
                s1[i] = _mm512_dpbusd_epi32(s1[i], v1, broadcast_word16(aps[i].add(4 * c + 4)));
            }
        }
        std::array::from_fn(|i| _mm512_add_epi32(s0[i], s1[i]))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2_impl(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    let width = groups.len() * ROW_GROUP;
    let q8 = w.format == QuantFormat::Q8;
    // Sixteen registers: one row group at a time.
    macro_rules! tile {
        ($r:literal, $a:expr, $o:expr) => {{
            let (a, o, g): (&[ActRow<'_>], &mut [f32], _) = ($a, $o, groups.clone());
            // SAFETY: pointers come from `gemm_groups` (sizes checked).
            unsafe {
                if q8 {
                    gemm_groups::<$r>(w, g.clone(), g.start, a, o, width, |p, q, i| {
                        q8_sums_avx2::<$r>(p, q, i)
                    })
                } else {
                    gemm_groups::<$r>(w, g.clone(), g.start, a, o, width, |p, q, i| {
                        q4_sums_avx2::<$r>(p, q, i)
                    })
                }
            }
        }};
    }
    for_each_tile!(acts, out, width, tile);
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_vnni_impl(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    let width = groups.len() * ROW_GROUP;
    let q8 = w.format == QuantFormat::Q8;
    // With several activation rows, pairs of row groups in 512-bit registers, so each
    // activation load serves sixteen weight rows (an odd last group alone). A single row
    // (decode) waits on memory, not on loads: one group at a time keeps each task's
    // weights one sequential stream (measured 25% faster there).
    macro_rules! tile {
        ($r:literal, $a:expr, $o:expr) => {{
            let (a, o): (&[ActRow<'_>], &mut [f32]) = ($a, $o);
            let first = groups.start;
            let paired = if $r > 1 { groups.len() / 2 * 2 } else { 0 };
            let pairs = groups.start..groups.start + paired;
            let rest = pairs.end..groups.end;
            // SAFETY: pointers come from `gemm_groups` / `gemm_pairs_zmm` (sizes checked).
            unsafe {
                if q8 {
                    gemm_pairs_zmm::<$r>(w, pairs, first, a, o, width, |p, p1, q, i| {
                        q8_sums_zmm::<$r>(p, p1, q, i)
                    });
                    gemm_groups::<$r>(w, rest, first, a, o, width, |p, q, i| {
                        q8_sums_vnni::<$r>(p, q, i)
                    });
                } else {
                    gemm_pairs_zmm::<$r>(w, pairs, first, a, o, width, |p, p1, q, i| {
                        q4_sums_zmm::<$r>(p, p1, q, i)
                    });
                    gemm_groups::<$r>(w, rest, first, a, o, width, |p, q, i| {
                        q4_sums_vnni::<$r>(p, q, i)
                    });
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
        && is_x86_feature_detected!("avx512bw")
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
