//! The x86-64 kernels: AVX2 `maddubs` and AVX-512 VNNI `dpbusd` (see the `qdot` module doc).

use super::*;
use std::arch::x86_64::*;

mod block_sums;
use block_sums::*;

/// A register width the row-group loop runs at: [`Width::GROUPS`] row groups side by side
/// (256-bit: one, 512-bit: two), lane `8·j + l` holding row `l` of group `j`.
trait Width {
    const GROUPS: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    unsafe fn splat_i(x: i32) -> Self::I;
    unsafe fn splat_f(x: f32) -> Self::F;
    /// The activation word at `p` in every lane.
    #[inline(always)]
    unsafe fn broadcast(p: *const i8) -> Self::I {
        // SAFETY: the caller guarantees 4 readable bytes.
        unsafe { Self::splat_i((p as *const i32).read_unaligned()) }
    }
    /// Word `c` of the groups whose words start at `w`, `wpr` words apart.
    unsafe fn words(w: *const __m256i, wpr: usize, c: usize) -> Self::I;
    /// The groups' eight coefficients at `p`, `stride` halves apart, widened.
    unsafe fn coefs(p: *const half::f16, stride: usize) -> Self::F;
    /// The low and high nibbles of each byte.
    unsafe fn nibbles(v: Self::I) -> (Self::I, Self::I);
    /// Each byte `b < 16` of `v` replaced by byte `b` of `table` (16 bytes, in every lane).
    unsafe fn lookup(table: Self::I, v: Self::I) -> Self::I;
    /// A 16-byte table in every 128-bit lane.
    unsafe fn table(bytes: &[u8; 16]) -> Self::I;
    /// [`Width::nibbles`] then [`Width::lookup`] of each, with AVX-512 VBMI's `vpermb`, which
    /// reads only the low 5 (6) index bits: with the table repeated in every lane, the bits
    /// above a nibble need no mask.
    unsafe fn lookup_nibbles_vbmi(table: Self::I, v: Self::I) -> (Self::I, Self::I);
    unsafe fn dpbusd(acc: Self::I, w: Self::I, a: Self::I) -> Self::I;
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    /// `acc + float(s)·(dw·da)`.
    unsafe fn scale_add(acc: Self::F, s: Self::I, dw: Self::F, da: Self::F) -> Self::F;
    unsafe fn fma(a: Self::F, b: Self::F, acc: Self::F) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
}

/// 256-bit registers: one row group.
struct Ymm;
/// 512-bit registers (AVX-512): two row groups, so each broadcast activation word serves
/// sixteen weight rows.
struct Zmm;

// SAFETY (both impls): the callers (`gemm_groups` and the block sums) pass pointers whose
// reads `check` has verified, from inside functions that enable the features used.
impl Width for Ymm {
    const GROUPS: usize = 1;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat_i(x: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn splat_f(x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn words(w: *const __m256i, _wpr: usize, c: usize) -> __m256i {
        unsafe { _mm256_loadu_si256(w.add(c)) }
    }
    #[inline(always)]
    unsafe fn coefs(p: *const half::f16, _stride: usize) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m256i) -> (__m256i, __m256i) {
        unsafe {
            let mask = _mm256_set1_epi8(0x0f);
            (
                _mm256_and_si256(v, mask),
                _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
            )
        }
    }
    #[inline(always)]
    unsafe fn lookup(table: __m256i, v: __m256i) -> __m256i {
        unsafe { _mm256_shuffle_epi8(table, v) }
    }
    #[inline(always)]
    unsafe fn lookup_nibbles_vbmi(table: __m256i, v: __m256i) -> (__m256i, __m256i) {
        unsafe {
            (
                _mm256_permutexvar_epi8(v, table),
                _mm256_permutexvar_epi8(_mm256_srli_epi16(v, 4), table),
            )
        }
    }
    #[inline(always)]
    unsafe fn table(bytes: &[u8; 16]) -> __m256i {
        unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(bytes.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(acc, w, a) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn scale_add(acc: __m256, s: __m256i, dw: __m256, da: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), acc) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
}

impl Width for Zmm {
    const GROUPS: usize = 2;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat_i(x: i32) -> __m512i {
        unsafe { _mm512_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn splat_f(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn words(w: *const __m256i, wpr: usize, c: usize) -> __m512i {
        unsafe {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(w.add(c))),
                _mm256_loadu_si256(w.add(wpr + c)),
                1,
            )
        }
    }
    #[inline(always)]
    unsafe fn coefs(p: *const half::f16, stride: usize) -> __m512 {
        unsafe {
            let lo = _mm_loadu_si128(p as *const __m128i);
            let hi = _mm_loadu_si128(p.add(stride) as *const __m128i);
            _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
        }
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        unsafe {
            let mask = _mm512_set1_epi8(0x0f);
            (
                _mm512_and_si512(v, mask),
                _mm512_and_si512(_mm512_srli_epi16(v, 4), mask),
            )
        }
    }
    #[inline(always)]
    unsafe fn lookup(table: __m512i, v: __m512i) -> __m512i {
        unsafe { _mm512_shuffle_epi8(table, v) }
    }
    #[inline(always)]
    unsafe fn lookup_nibbles_vbmi(table: __m512i, v: __m512i) -> (__m512i, __m512i) {
        unsafe {
            (
                _mm512_permutexvar_epi8(v, table),
                _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), table),
            )
        }
    }
    #[inline(always)]
    unsafe fn table(bytes: &[u8; 16]) -> __m512i {
        unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(bytes.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
        unsafe { _mm512_dpbusd_epi32(acc, w, a) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn scale_add(acc: __m512, s: __m512i, dw: __m512, da: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, da), acc) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

/// How many blocks ahead of the one being multiplied the VNNI kernels prefetch its row groups'
/// weights: the hardware prefetcher alone left decode waiting on weight loads (+9% single-row
/// decode, +2–7% at batch 8, prefill unchanged on an Intel Xeon, family 6 model 167; 4, 8
/// and 16 measured alike). The AVX2 kernels (unmeasured with it) do not.
const PREFETCH_BLOCKS: usize = 8;

/// Prefetches the block of `wpb` row-group words (32 bytes each) at word offset `at` of each
/// of the `W::GROUPS` row groups from `wq` (`wpr` words apart). A prefetch never faults, so
/// past the end it only wastes a slot; the addresses are computed with wrapping arithmetic,
/// never dereferenced.
#[inline(always)]
unsafe fn prefetch_block<W: Width>(wq: *const __m256i, wpr: usize, at: usize, wpb: usize) {
    for g in 0..W::GROUPS {
        let p = wq.wrapping_add(g * wpr + at) as *const i8;
        // SAFETY: a prefetch is a hint; it reads nothing the program sees.
        unsafe {
            // Q4's 128 bytes; Q8's 256 (written out: a loop here cost 4% of a decode).
            _mm_prefetch(p, _MM_HINT_T0);
            _mm_prefetch(p.wrapping_add(64), _MM_HINT_T0);
            if wpb > 4 {
                _mm_prefetch(p.wrapping_add(128), _MM_HINT_T0);
                _mm_prefetch(p.wrapping_add(192), _MM_HINT_T0);
            }
        }
    }
}

/// The row-group loop shared by every variant, for `R` activation rows and
/// [`Width::GROUPS`] row groups at once (each weight load serves all `R` rows, each
/// activation load every group). Per output value the operations are those of one row and
/// one group, so results do not depend on the tiling or the width. `block_sums(w, wpr, a,
/// init)` gives, per activation row, the groups' integer dot products of one block plus
/// `init` (the row's integer correction), their words starting at `w`, `wpr` words apart,
/// the rows' activations at `a`. `groups` (a multiple of `GROUPS` long) is written at its
/// place in `out`, whose rows' runs start at row group `first`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_groups<W: Width, const R: usize, const PREFETCH: bool>(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    first: usize,
    acts: &[ActRow<'_>],
    out: &mut GemmOut<'_>,
    block_sums: impl Fn(*const __m256i, usize, [*const i8; R], [W::I; R]) -> [W::I; R],
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * (w.cols / QBLOCK);
    let has_mins = !w.mins.is_empty();
    let factor = integer_correction(w.format);
    let coef_stride = ngroups * ROW_GROUP;
    // SAFETY: `check` verified the arrays' sizes for whole row groups, the activation
    // rows' lengths and `out`'s; every offset below stays inside them.
    unsafe {
        let outp: [*mut f32; R] = std::array::from_fn(|i| out.row_ptr(i));
        let mut rg = groups.start;
        while rg + W::GROUPS <= groups.end {
            let wq = w.words.as_ptr().add(rg * ROW_GROUP * wpr) as *const __m256i;
            let sc = w.scales.as_ptr().add(rg * coef_stride);
            let mn = if has_mins {
                w.mins.as_ptr().add(rg * coef_stride)
            } else {
                sc
            };
            let mut acc = [W::zero_f(); R];
            for g in 0..ngroups {
                let dw = W::coefs(sc.add(g * ROW_GROUP), coef_stride);
                let mw = W::coefs(mn.add(g * ROW_GROUP), coef_stride);
                for b in g * pg..(g + 1) * pg {
                    let aps = std::array::from_fn(|i| acts[i].q.as_ptr().add(b * QBLOCK));
                    let init = std::array::from_fn(|i| {
                        W::splat_i(factor * *acts[i].qsum.get_unchecked(b))
                    });
                    if PREFETCH {
                        prefetch_block::<W>(wq, wpr, (b + PREFETCH_BLOCKS) * wpb, wpb);
                    }
                    let sums = block_sums(wq.add(b * wpb), wpr, aps, init);
                    for i in 0..R {
                        let da = W::splat_f(*acts[i].d.get_unchecked(b));
                        acc[i] = W::scale_add(acc[i], sums[i], dw, da);
                        if has_mins {
                            acc[i] = W::fma(mw, W::splat_f(*acts[i].c.get_unchecked(b)), acc[i]);
                        }
                    }
                }
            }
            for i in 0..R {
                W::store(outp[i].add((rg - first) * ROW_GROUP), acc[i]);
            }
            rg += W::GROUPS;
        }
    }
}

/// Splits `acts` into tiles of up to `$max` rows and runs `tile!(R, acts, out)` with `R` one
/// of the constants listed (largest first, ending with 1).
macro_rules! for_each_tile {
    ($acts:expr, $out:expr, $tile:ident, $max:expr; $($r:literal)|+) => {{
        let (acts, mut out): (&[ActRow<'_>], GemmOut<'_>) = ($acts, $out);
        let mut i = 0;
        while i < acts.len() {
            let r = (acts.len() - i).min($max);
            let (a, o) = (&acts[i..i + r], out.rows_part(i, r));
            match r {
                $($r => $tile!($r, a, o),)+
                _ => unreachable!("a tile of {r} rows"),
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
    out: GemmOut<'_>,
) {
    let q8 = w.format == QuantFormat::Q8;
    let book = lut4_book(w.format);
    // SAFETY (both): AVX2 is enabled here.
    let signed = book.map(|b| unsafe { Ymm::table(&b.levels().map(|l| l as u8)) });
    let fp4 = (book == Some(Codebook::Fp4)).then(|| unsafe { Ymm::table(&FP4_PLUS_12) });
    // Sixteen registers: one row group at a time.
    macro_rules! tile {
        ($r:literal, $a:expr, $o:expr) => {{
            let (a, mut o, g): (&[ActRow<'_>], GemmOut<'_>, _) = ($a, $o, groups.clone());
            // SAFETY: pointers come from `gemm_groups` (sizes checked), and the assembly
            // tile takes only four contiguous rows.
            unsafe {
                if q8 {
                    gemm_groups::<Ymm, $r, false>(w, g.clone(), g.start, a, &mut o, |p, n, q, i| {
                        q8_sums_avx2::<$r>(p, n, q, i)
                    })
                } else if let Some(unsigned) = fp4 {
                    gemm_groups::<Ymm, $r, false>(w, g.clone(), g.start, a, &mut o, |p, _, q, i| {
                        fp4_sums_avx2::<$r>(p, unsigned, q, i)
                    })
                } else if let Some(signed) = signed {
                    gemm_groups::<Ymm, $r, false>(w, g.clone(), g.start, a, &mut o, |p, _, q, _| {
                        lut4_sums_avx2::<$r>(p, signed, q)
                    })
                } else if $r == 4 && avx2_q4x4::contiguous(a) {
                    avx2_q4x4::gemm_q4_x4(w, g, a, &mut o)
                } else {
                    gemm_groups::<Ymm, $r, false>(w, g.clone(), g.start, a, &mut o, |p, n, q, i| {
                        q4_sums_avx2::<$r>(p, n, q, i)
                    })
                }
            }
        }};
    }
    for_each_tile!(acts, out, tile, MAX_TILE_ROWS; 4 | 3 | 2 | 1);
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_vnni_impl(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
    single_paired: bool,
) {
    // SAFETY: the features the body needs are enabled here.
    unsafe { gemm_vnni_body::<SHUFFLE>(w, groups, acts, out, single_paired) }
}

/// [`gemm_vnni_impl`] reading Lut4 nibbles with `vpermb`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
fn gemm_vnni_vbmi_impl(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
    single_paired: bool,
) {
    // SAFETY: the features the body needs are enabled here.
    unsafe { gemm_vnni_body::<VBMI>(w, groups, acts, out, single_paired) }
}

/// The VNNI kernel; `LUT4` says how Lut4 nibbles are looked up (`SHUFFLE` or `VBMI`, whose
/// caller enables AVX-512 VBMI).
#[inline(always)]
unsafe fn gemm_vnni_body<const LUT4: u8>(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
    single_paired: bool,
) {
    let q8 = w.format == QuantFormat::Q8;
    let codes = lut4_book(w.format).map(lut4_codes);
    // SAFETY (both): AVX-512 is enabled here.
    let (table_y, table_z) = unsafe {
        let bytes = codes.unwrap_or([0; 16]);
        (Ymm::table(&bytes), Zmm::table(&bytes))
    };
    let lut = codes.is_some();
    // With several activation rows, pairs of row groups in 512-bit registers, so each
    // activation load serves sixteen weight rows (an odd last group alone). A single row
    // (decode): as `single_paired` says (`decode_pairs`).
    macro_rules! tile {
        ($r:literal, $a:expr, $o:expr) => {{
            let (a, mut o): (&[ActRow<'_>], GemmOut<'_>) = ($a, $o);
            let first = groups.start;
            let paired = if $r > 1 || single_paired {
                groups.len() / 2 * 2
            } else {
                0
            };
            let pairs = groups.start..groups.start + paired;
            let rest = pairs.end..groups.end;
            // SAFETY: pointers come from `gemm_groups` (sizes checked).
            unsafe {
                if q8 {
                    gemm_groups::<Zmm, $r, true>(w, pairs, first, a, &mut o, |p, n, q, i| {
                        q8_sums_vnni::<Zmm, $r>(p, n, q, i)
                    });
                    gemm_groups::<Ymm, $r, true>(w, rest, first, a, &mut o, |p, n, q, i| {
                        q8_sums_vnni::<Ymm, $r>(p, n, q, i)
                    });
                } else if lut {
                    gemm_groups::<Zmm, $r, true>(w, pairs, first, a, &mut o, |p, n, q, i| {
                        q4_sums_vnni::<Zmm, $r, LUT4>(p, n, q, i, table_z)
                    });
                    gemm_groups::<Ymm, $r, true>(w, rest, first, a, &mut o, |p, n, q, i| {
                        q4_sums_vnni::<Ymm, $r, LUT4>(p, n, q, i, table_y)
                    });
                } else {
                    gemm_groups::<Zmm, $r, true>(w, pairs, first, a, &mut o, |p, n, q, i| {
                        q4_sums_vnni::<Zmm, $r, PLAIN>(p, n, q, i, table_z)
                    });
                    gemm_groups::<Ymm, $r, true>(w, rest, first, a, &mut o, |p, n, q, i| {
                        q4_sums_vnni::<Ymm, $r, PLAIN>(p, n, q, i, table_y)
                    });
                }
            }
        }};
    }
    for_each_tile!(acts, out, tile, MAX_TILE_ROWS_AVX512; 8 | 7 | 6 | 5 | 4 | 3 | 2 | 1);
}

/// Whether a single activation row (decode) also takes row groups in pairs, in 512-bit
/// registers. Where AVX-512 runs at full width (Intel), it does: +11–17% decode on an Intel
/// Xeon (family 6 model 167) whose large L3 holds the weights, so the arithmetic bounds it.
/// AMD's Zen 4 splits each 512-bit operation in two, and there one group at a time (one
/// sequential stream of weights per task) measured 25% faster. The two give the same bits
/// (`gemm_groups`). `LOWBIT_CPU_DECODE_WIDTH=256|512` overrides, for measuring.
pub(super) fn decode_pairs() -> bool {
    static PAIRS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAIRS.get_or_init(
        || match std::env::var("LOWBIT_CPU_DECODE_WIDTH").as_deref() {
            Ok("512") => true,
            Ok("256") => false,
            _ => is_intel(),
        },
    )
}

/// Whether the CPU's vendor string is Intel's.
fn is_intel() -> bool {
    // CPUID leaf 0 (the vendor) exists on every x86-64 CPU.
    let id = __cpuid(0);
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"GenuineIntel"
}

pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether AVX-512 VBMI's byte permutes are there (Lut4 lookups without masks).
pub fn has_vbmi() -> bool {
    has_vnni() && is_x86_feature_detected!("avx512vbmi")
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
    out: GemmOut<'_>,
) {
    assert!(has_avx2());
    check(w, &groups, acts, &out);
    // SAFETY: features and shapes checked.
    unsafe { gemm_avx2_impl(w, groups, acts, out) }
}

pub fn gemm_vnni(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
) {
    gemm_vnni_with(w, groups, acts, out, decode_pairs())
}

/// [`gemm_vnni`] with a single row's groups one at a time in 256-bit registers.
pub fn gemm_vnni_256(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
) {
    gemm_vnni_with(w, groups, acts, out, false)
}

/// [`gemm_vnni`] with a single row's groups in pairs in 512-bit registers.
pub fn gemm_vnni_512(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
) {
    gemm_vnni_with(w, groups, acts, out, true)
}

fn gemm_vnni_with(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
    single_paired: bool,
) {
    assert!(has_vnni());
    check(w, &groups, acts, &out);
    // SAFETY: features and shapes checked.
    unsafe {
        if has_vbmi() && lut4_book(w.format).is_some() {
            gemm_vnni_vbmi_impl(w, groups, acts, out, single_paired)
        } else {
            gemm_vnni_impl(w, groups, acts, out, single_paired)
        }
    }
}

/// [`gemm_vnni`] reading Lut4 nibbles with `vpshufb` even where VBMI is there (tests compare
/// the two, benchmarks measure them).
pub fn gemm_vnni_shuffle(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
) {
    assert!(has_vnni());
    check(w, &groups, acts, &out);
    // SAFETY: features and shapes checked.
    unsafe { gemm_vnni_impl(w, groups, acts, out, decode_pairs()) }
}
