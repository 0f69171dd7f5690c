//! AMX (Intel Advanced Matrix Extensions) int8 tiles for products of 16 or more activation
//! rows: prefill chunks and batches of decoding sequences, on Xeons from Sapphire Rapids on.
//!
//! One `tdpbssd` multiplies 16 activation rows' 32-value block (the A tile, read in place from
//! the quantized activations) by 16 weight rows' block (the B tile: the weights' signed
//! values, Q4 codes − 8, Q4M codes, Lut4 levels, Q8 bytes back from offset-binary), 8,192 multiply-adds
//! into 16 × 16 exact int32 sums, one activation row per tile row and one weight row per lane.
//! Those are the integers the VNNI kernel sums with its correction (`Σ (q_w − 8)·q_a =
//! −8·Σ q_a + Σ q_w·q_a`, likewise for Q8's 128), and the float epilogue runs its operations
//! in its order for every output: `acc + float(Σ)·(d_w·d_a)`, then `+ m_w·c_a` for Q4M, block
//! after block. So a row's result has the same bits here as in the VNNI kernel that takes
//! fewer rows (tested): a request's tokens still do not depend on its batch.
//!
//! The B operand wants, per tile row, four consecutive values of each of 16 weight rows: the
//! interleaved layout ([`super::super::packed`]) already stores a row group's words that way,
//! so a call only splits Q4 nibbles (or flips Q8 bytes) of its row groups into a per-thread
//! buffer, two groups side by side. The OS must grant the tile state: Linux does on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once; where it refuses, or the CPU has no AMX,
//! the variant is not offered.

use super::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Activation rows per tile, and weight rows per tile (two row groups).
const TILE: usize = 16;
/// Bytes of one tile operand for one block: 16 rows × 32 bytes (A) or 8 rows × 64 bytes (B).
const TILE_BYTES: usize = TILE * QBLOCK;

/// Whether this CPU has AMX-INT8 and the OS lets this process use the tiles (checked once).
pub fn has_amx() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // The epilogue is AVX-512; the CPUID bits are AMX-TILE (24) and AMX-INT8 (25).
        let leaf7 = super::x86::has_vnni().then(|| __cpuid_count(7, 0));
        leaf7.is_some_and(|l| l.edx & (3 << 24) == 3 << 24) && request_tile_permission()
    })
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`;
/// granted per process, for every thread).
fn request_tile_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; it reads no memory of ours.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The tile configuration (`ldtilecfg`'s 64-byte operand, palette 1), two sets so that one
/// block's product runs while the previous one's epilogue does: tmm0/tmm3 = A (16 × 32
/// bytes), tmm1/tmm4 = B (8 × 64 bytes), tmm2/tmm5 = C (16 × 16 int32).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved_end: [u8; 16],
}

static CONFIG: TileConfig = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut set = 0;
    while set < 2 {
        let t = 3 * set;
        colsb[t] = QBLOCK as u16;
        rows[t] = TILE as u8;
        colsb[t + 1] = 64;
        rows[t + 1] = (QBLOCK / 4) as u8;
        colsb[t + 2] = 64;
        rows[t + 2] = TILE as u8;
        set += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb,
        rows,
        reserved_end: [0; 16],
    }
};

/// Per-thread buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// Weights as B tiles: `[pair][block]` × 8 rows × 64 bytes.
    b: Vec<u8>,
    /// Each pair's weight scales (and mins) per group, 16 lanes, 0 for a missing half.
    dw: Vec<f32>,
    mw: Vec<f32>,
    /// A tile of activation rows copied out when they are not 16 consecutive rows.
    a: Vec<i8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Products of fewer rows than this stay on the VNNI kernel (the same bits): a tile has 16
/// rows, and every weight is unpacked once per call, so smaller products would waste both
/// (one-GEMM probe on Sapphire Rapids, Q4 g32, K = 576, N = 1536, VNNI → AMX: 16 rows 0.084 →
/// 0.076 ms, 32 rows 0.16 → 0.117, 64 rows 0.286 → 0.198, 512 rows 2.25 → 1.25).
const MIN_ROWS: usize = 16;

/// The AMX variant: calls with fewer than [`MIN_ROWS`] rows (decoding fewer sequences) go to
/// the VNNI kernel.
pub fn gemm_amx(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
) {
    if acts.len() < MIN_ROWS {
        super::x86::gemm_vnni(w, groups, acts, out);
    } else {
        gemm_tiles(w, groups, acts, out);
    }
}

/// Tiles of 16 activation rows; fewer than 8 left over go to the VNNI kernel, a larger rest
/// fills a last tile padded with zeros.
fn gemm_tiles(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    mut out: GemmOut<'_>,
) {
    let tiled = match acts.len() % TILE {
        r if r >= TILE / 2 => acts.len(),
        r => acts.len() - r,
    };
    if tiled < acts.len() {
        let rest = acts.len() - tiled;
        super::x86::gemm_vnni(
            w,
            groups.clone(),
            &acts[tiled..],
            out.rows_part(tiled, rest),
        );
    }
    if tiled == 0 || groups.is_empty() {
        return;
    }
    assert!(has_amx());
    check(w, &groups, acts, &out);
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let out = out.rows_part(0, tiled);
        // SAFETY: AMX is usable (asserted) and the shapes are checked.
        unsafe { gemm_amx_impl(w, groups, &acts[..tiled], out, s) }
    });
}

/// Starts one block's product in tile set 0 or 1 (A at `a`, `stride` bytes a row; B at `b`).
macro_rules! block_product {
    ($a:expr, $stride:expr, $b:expr, $ta:literal, $tb:literal, $tc:literal) => {
        asm!(
            concat!("tileloadd tmm", $ta, ", [{a} + {sa}]"),
            concat!("tileloadd tmm", $tb, ", [{b} + {sb}]"),
            concat!("tilezero tmm", $tc),
            concat!("tdpbssd tmm", $tc, ", tmm", $ta, ", tmm", $tb),
            a = in(reg) $a,
            sa = in(reg) $stride,
            b = in(reg) $b,
            sb = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// Stores a product's 16 × 16 sums to `c`.
macro_rules! store_sums {
    ($c:expr, $tc:literal) => {
        asm!(
            concat!("tilestored [{c} + {sc}], tmm", $tc),
            c = in(reg) $c,
            sc = in(reg) 64usize,
            options(nostack),
        )
    };
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn gemm_amx_impl(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: GemmOut<'_>,
    s: &mut Scratch,
) {
    let cols = w.cols;
    let blocks = cols / QBLOCK;
    let pg = w.format.group() / QBLOCK;
    let ngroups = cols / w.format.group();
    let pairs = groups.len().div_ceil(2);
    let has_mins = !w.mins.is_empty();
    unpack_weights(w, groups.clone(), s);
    // SAFETY: the configuration is valid for palette 1, which every AMX CPU has.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
    let mut c = Aligned([[0i32; TILE * TILE]; 2]);
    for (t, tile) in acts.chunks(TILE).enumerate() {
        // A tiles straight from the activations when the rows are 16 consecutive ones (rows
        // of one `QuantizedActs`), else from a zero-padded copy.
        let base = tile[0].q.as_ptr();
        let consecutive = tile.len() == TILE
            && tile
                .iter()
                .enumerate()
                .all(|(i, a)| std::ptr::eq(a.q.as_ptr(), base.wrapping_add(i * cols)));
        let a_rows: *const i8 = if consecutive {
            base
        } else {
            s.a.clear();
            s.a.resize(TILE * cols, 0);
            for (row, a) in s.a.chunks_exact_mut(cols).zip(tile) {
                row.copy_from_slice(a.q);
            }
            s.a.as_ptr()
        };
        let n_rows = tile.len();
        // Sixteen rows always (a short tile repeats its first row, whose extra results are
        // not stored), so the epilogue unrolls and its accumulators stay in registers.
        let rows: [&ActRow<'_>; TILE] = std::array::from_fn(|n| tile.get(n).unwrap_or(&tile[0]));
        for p in 0..pairs {
            let halves = (groups.end - (groups.start + 2 * p)).min(2);
            // SAFETY (the block below): `b` holds `pairs × blocks` B tiles and `dw`/`mw`
            // 16 lanes per pair and group (`unpack_weights`), A rows are `cols` bytes apart
            // with 16 of them readable, and the features are enabled for this function.
            unsafe {
                let mut acc = [_mm512_setzero_ps(); TILE];
                // A macro, not a closure: the closure was not inlined, so the accumulators
                // went through memory at every block.
                macro_rules! epilogue {
                    ($acc:expr, $sums:expr, $b:expr) => {{
                        let g = (p * ngroups + $b / pg) * TILE;
                        let dw = _mm512_loadu_ps(s.dw.as_ptr().add(g));
                        if has_mins {
                            let mw = _mm512_loadu_ps(s.mw.as_ptr().add(g));
                            epilogue_rows::<true>($acc, $sums, &rows, $b, dw, mw);
                        } else {
                            epilogue_rows::<false>($acc, $sums, &rows, $b, dw, dw);
                        }
                    }};
                }
                let b_tile = |b: usize| s.b.as_ptr().wrapping_add((p * blocks + b) * TILE_BYTES);
                let a_tile = |b: usize| a_rows.wrapping_add(b * QBLOCK);
                // Two blocks in flight: while the epilogue of blocks b and b + 1 runs, the
                // tiles already multiply blocks b + 2 and b + 3.
                block_product!(a_tile(0), cols, b_tile(0), 0, 1, 2);
                if blocks > 1 {
                    block_product!(a_tile(1), cols, b_tile(1), 3, 4, 5);
                }
                let mut b = 0;
                while b < blocks {
                    let (c0, c1) = c.0.split_at_mut(1);
                    store_sums!(c0[0].as_mut_ptr(), 2);
                    if b + 1 < blocks {
                        store_sums!(c1[0].as_mut_ptr(), 5);
                    }
                    if b + 2 < blocks {
                        block_product!(a_tile(b + 2), cols, b_tile(b + 2), 0, 1, 2);
                    }
                    if b + 3 < blocks {
                        block_product!(a_tile(b + 3), cols, b_tile(b + 3), 3, 4, 5);
                    }
                    epilogue!(&mut acc, &c0[0], b);
                    if b + 1 < blocks {
                        epilogue!(&mut acc, &c1[0], b + 1);
                    }
                    b += 2;
                }
                let col0 = 2 * p * ROW_GROUP;
                for (n, v) in acc.iter().enumerate().take(n_rows) {
                    let dst = out.row_ptr(t * TILE + n).add(col0);
                    if halves == 2 {
                        _mm512_storeu_ps(dst, *v);
                    } else {
                        _mm256_storeu_ps(dst, _mm512_castps512_ps256(*v));
                    }
                }
            }
        }
    }
    // SAFETY: releases the tile state this function configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One block's sums of 16 activation rows × 16 weight rows into the accumulators, in the
/// VNNI kernel's operations (module doc). Unrolled: the accumulators stay in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn epilogue_rows<const MINS: bool>(
    acc: &mut [__m512; TILE],
    sums: &[i32; TILE * TILE],
    rows: &[&ActRow<'_>; TILE],
    b: usize,
    dw: __m512,
    mw: __m512,
) {
    macro_rules! row {
        ($n:expr) => {{
            let a = rows[$n];
            // SAFETY: `b` is a block of every row (checked shapes); sums has 16 rows.
            unsafe {
                // The weights' offset is already in the B tile: no correction to add.
                let sum = _mm512_loadu_si512(sums.as_ptr().add($n * TILE).cast());
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(b)));
                acc[$n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[$n]);
                if MINS {
                    let ca = _mm512_set1_ps(*a.c.get_unchecked(b));
                    acc[$n] = _mm512_fmadd_ps(mw, ca, acc[$n]);
                }
            }
        }};
    }
    row!(0);
    row!(1);
    row!(2);
    row!(3);
    row!(4);
    row!(5);
    row!(6);
    row!(7);
    row!(8);
    row!(9);
    row!(10);
    row!(11);
    row!(12);
    row!(13);
    row!(14);
    row!(15);
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// The call's row groups as B tiles, two groups side by side (pair `p`, block `b`: tile row
/// `k` holds four values of each of 16 weight rows, lanes 0–7 from group `2p`, 8–15 from
/// `2p + 1`, zeros if there is none). Q4: rows 0–3 are the low nibbles of the block's four
/// words (values 0–15), rows 4–7 the high ones (16–31), matching activation bytes 0–31 in
/// order; Q8: the eight words, flipped back to signed. Also each pair's scales and mins.
#[target_feature(enable = "avx2,f16c")]
fn unpack_weights(w: &PackedWeight, groups: std::ops::Range<usize>, s: &mut Scratch) {
    let blocks = w.cols / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let wpb = w.words_per_block();
    let wpr = wpb * blocks;
    let pairs = groups.len().div_ceil(2);
    // Every byte is written below but a missing last half, which must be zeros.
    s.b.resize(pairs * blocks * TILE_BYTES, 0);
    if groups.len() % 2 == 1 {
        let last = &mut s.b[(pairs - 1) * blocks * TILE_BYTES..];
        for row in last.chunks_exact_mut(64) {
            row[32..].fill(0);
        }
    }
    s.dw.clear();
    s.dw.resize(pairs * ngroups * TILE, 0.0);
    s.mw.clear();
    s.mw.resize(pairs * ngroups * TILE, 0.0);
    let q8 = w.format == QuantFormat::Q8;
    // Q4 codes are stored + 8 (its values are d·(q − 8)); Q4M's are the values' own; Lut4's
    // index their levels.
    let q4_offset = if matches!(w.format, QuantFormat::Q4(_)) {
        8
    } else {
        0
    };
    let levels = lut4_book(w.format).map(|b| b.levels().map(|l| l as u8));
    for (i, rg) in groups.enumerate() {
        let (p, half) = (i / 2, i % 2);
        let words = &w.words[rg * ROW_GROUP * wpr..(rg + 1) * ROW_GROUP * wpr];
        for b in 0..blocks {
            let tile = &mut s.b[(p * blocks + b) * TILE_BYTES..][..TILE_BYTES];
            // Word c of the group's eight rows is 32 contiguous bytes: one tile row's half.
            let src = &words[b * wpb * ROW_GROUP..(b + 1) * wpb * ROW_GROUP];
            // SAFETY: `src` holds `wpb` runs of 8 words and `tile` 8 rows of 64 bytes;
            // AVX2 is there (the kernel needs AVX-512).
            unsafe {
                let (from, to) = (src.as_ptr().cast::<__m256i>(), tile.as_mut_ptr());
                let offset = _mm256_set1_epi8(q4_offset);
                let table =
                    levels.map(|l| _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr().cast())));
                let row = |r: usize| to.add(r * 64 + half * 32).cast::<__m256i>();
                for c in 0..wpb {
                    let v = _mm256_loadu_si256(from.add(c));
                    if q8 {
                        let signed = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                        _mm256_storeu_si256(row(c), signed);
                    } else {
                        let mask = _mm256_set1_epi8(0x0f);
                        let lo = _mm256_and_si256(v, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                        let (lo, hi) = match table {
                            Some(t) => (_mm256_shuffle_epi8(t, lo), _mm256_shuffle_epi8(t, hi)),
                            None => (_mm256_sub_epi8(lo, offset), _mm256_sub_epi8(hi, offset)),
                        };
                        _mm256_storeu_si256(row(c), lo);
                        _mm256_storeu_si256(row(4 + c), hi);
                    }
                }
            }
        }
        // Eight rows' coefficients per group are contiguous halves: widened eight at once
        // (`vcvtph2ps`, exact, as the VNNI kernel widens them).
        for g in 0..ngroups {
            let (src, dst) = ((rg * ngroups + g) * ROW_GROUP, (p * ngroups + g) * TILE);
            let dst = dst + half * ROW_GROUP;
            for (from, to) in [(&w.scales, &mut s.dw), (&w.mins, &mut s.mw)] {
                if from.is_empty() {
                    continue;
                }
                let (from, to) = (&from[src..src + ROW_GROUP], &mut to[dst..dst + ROW_GROUP]);
                // SAFETY: eight halves in, eight floats out (slices just taken); F16C is
                // there (the kernel needs AVX-512).
                unsafe {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(from.as_ptr().cast()));
                    _mm256_storeu_ps(to.as_mut_ptr(), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::format::GroupSize;
    use crate::quant::quantize::{quantize, QuantizeOptions};
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// The B tiles hold each format's signed values in tdpbssd's order (block `b` of pair `p`:
    /// tile row `r` holds values `4r..4r+4`, or `16 + 4(r − 4)..` for `r ≥ 4` (Q8: `4r..`),
    /// of each of 16 weight rows), a missing half zeros. Only the unpacking (AVX2) runs, so
    /// this checks it on machines without AMX too.
    #[test]
    fn weight_tiles_hold_each_formats_signed_values() {
        if !super::super::x86::has_avx2() {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(43);
        let (n, k) = (24, 64); // three row groups: the second pair's upper half is empty
        let values: Vec<f32> = (0..n * k)
            .map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32)
            .collect();
        for f in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G32),
            QuantFormat::Lut4(crate::quant::format::Codebook::Fp4),
            QuantFormat::Lut4(crate::quant::format::Codebook::Iq4nl),
        ] {
            let q = quantize(&values, n, k, f, &QuantizeOptions::default()).unwrap();
            // Value `c` of row `r` as a signed integer, from the row-major layout.
            let signed = |r: usize, c: usize| -> i8 {
                let bytes = q.row_bytes(r);
                if f == QuantFormat::Q8 {
                    return bytes[c] as i8;
                }
                let byte = bytes[c / QBLOCK * 16 + c % 16];
                let code = if c % QBLOCK < 16 {
                    byte & 0x0f
                } else {
                    byte >> 4
                };
                match f {
                    QuantFormat::Q4(_) => code as i8 - 8,
                    QuantFormat::Lut4(book) => book.levels()[usize::from(code)],
                    _ => code as i8,
                }
            };
            let p = PackedWeight::pack(&q).unwrap();
            let mut s = Scratch::default();
            // SAFETY: AVX2 was checked above.
            unsafe { unpack_weights(&p, 0..p.row_groups(), &mut s) };
            let blocks = k / QBLOCK;
            for pair in 0..2 {
                for b in 0..blocks {
                    let tile = &s.b[(pair * blocks + b) * TILE_BYTES..][..TILE_BYTES];
                    for (t, row) in tile.chunks_exact(64).enumerate() {
                        for (lane, v) in row.chunks_exact(4).enumerate() {
                            let w = (2 * pair + lane / ROW_GROUP) * ROW_GROUP + lane % ROW_GROUP;
                            let first = if f == QuantFormat::Q8 || t < 4 {
                                4 * t
                            } else {
                                16 + 4 * (t - 4)
                            };
                            for (i, &got) in v.iter().enumerate() {
                                let want = if w < n {
                                    signed(w, b * QBLOCK + first + i)
                                } else {
                                    0
                                };
                                assert_eq!(
                                    got as i8, want,
                                    "{f} pair {pair} block {b} row {t} lane {lane}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AMX kernel gives the VNNI kernel's bits for every format, tile shape and run of
    /// row groups (odd ones leave half a weight tile empty).
    #[test]
    fn amx_results_equal_vnni_bit_for_bit() {
        if !has_amx() {
            eprintln!("no AMX here (or the OS refused the tile state): skipped");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32)
                .collect()
        };
        for &(m, k, n) in &[
            (16, 128, 40),
            (17, 512, 24),
            (24, 128, 8),
            (40, 256, 72),
            (64, 128, 24),
        ] {
            let acts = QuantizedActs::quantize(&random(m * k), k);
            let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
            for f in [
                QuantFormat::Q8,
                QuantFormat::Q4(GroupSize::G32),
                QuantFormat::Q4(GroupSize::G128),
                QuantFormat::Q4M(GroupSize::G32),
                QuantFormat::Q4M(GroupSize::G64),
                QuantFormat::Lut4(crate::quant::format::Codebook::Fp4),
                QuantFormat::Lut4(crate::quant::format::Codebook::Iq4nl),
            ] {
                let q = quantize(&random(n * k), n, k, f, &QuantizeOptions::default()).unwrap();
                let p = PackedWeight::pack(&q).unwrap();
                // (`1..` is empty for a weight of one row group: nothing to compare.)
                let ranges = [0..p.row_groups(), 1..p.row_groups(), 0..1];
                for g in ranges.into_iter().filter(|g| !g.is_empty()) {
                    let run = |gemm: GemmFn| {
                        let width = g.len() * ROW_GROUP;
                        let mut out = vec![f32::NAN; m * width];
                        gemm(&p, g.clone(), &rows, GemmOut::packed(&mut out, width));
                        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    assert_eq!(
                        run(gemm_tiles),
                        run(super::super::x86::gemm_vnni),
                        "{f} m={m} k={k} groups {g:?}"
                    );
                }
            }
        }
    }
}
