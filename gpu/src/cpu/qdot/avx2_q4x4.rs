//! The AVX2 Q4 kernel's main tile, four activation rows by one row group, in assembly.
//!
//! Why assembly: both LLVM and GCC hoist every broadcast of the unrolled block ahead of its
//! use and spill the products (and, in Rust, the rows' pointers) to the stack, so the
//! compiled tile ran at ~24 multiply-adds per cycle on a Zen 3 where its `maddubs` port
//! allows 64. Written out with two scratch registers per step (renaming does the rest) and
//! the four rows addressed from one base and one stride, the same instructions ran 1.3×
//! faster (`qmatmul_speed`, kernel alone, 16 × 576 × N; see BENCHMARKS.md).
//!
//! The operations are exactly those of the intrinsics path in `x86.rs` (`q4_sums_avx2`
//! inside `gemm_groups`): the same integer sums, the same `fma(float(s), dw·da, acc)` and,
//! for Q4M, `fma(mw, c, acc)`, in the same order, so every output has the same bits (the
//! kernel tests compare both against the scalar twin).

use super::*;
use std::arch::x86_64::*;

/// One Q4 word's products for the four rows: `$c` is the word; `ymm0`–`ymm3` gather the
/// rows' i16 sums (4 · 2 · 2 · 15 · 127 = 30480 fits). `$row` is [`row_first`] for word 0
/// (its products start the sums) and [`row`] after it.
#[rustfmt::skip]
macro_rules! word {
    ($c:literal, $row:ident) => {
        concat!(
            "vmovdqu ymm4, ymmword ptr [{w} + 32*", $c, "]\n",
            "vpsrlw ymm5, ymm4, 4\n",
            "vpand ymm4, ymm4, ymm15\n",
            "vpand ymm5, ymm5, ymm15\n",
            $row!($c, "{q}", "ymm0"),
            $row!($c, "{q} + {qs}", "ymm1"),
            $row!($c, "{q} + 2*{qs}", "ymm2"),
            $row!($c, "{q} + {qs3}", "ymm3"),
        )
    };
}

/// One activation row's share of a word (at address `$a`): both nibbles' products, added
/// into `$acc`.
#[rustfmt::skip]
macro_rules! row {
    ($c:literal, $a:literal, $acc:literal) => {
        concat!(
            "vpbroadcastd ymm6, dword ptr [", $a, " + 4*", $c, "]\n",
            "vpbroadcastd ymm7, dword ptr [", $a, " + 16 + 4*", $c, "]\n",
            "vpmaddubsw ymm6, ymm4, ymm6\n",
            "vpmaddubsw ymm7, ymm5, ymm7\n",
            "vpaddw ymm6, ymm6, ymm7\n",
            "vpaddw ", $acc, ", ", $acc, ", ymm6\n",
        )
    };
}

/// [`row`] for a block's first word: the products are the row's first sums (exact
/// integers: the same sums as adding them to zero, one instruction fewer).
#[rustfmt::skip]
macro_rules! row_first {
    ($c:literal, $a:literal, $acc:literal) => {
        concat!(
            "vpbroadcastd ymm6, dword ptr [", $a, " + 4*", $c, "]\n",
            "vpbroadcastd ymm7, dword ptr [", $a, " + 16 + 4*", $c, "]\n",
            "vpmaddubsw ymm6, ymm4, ymm6\n",
            "vpmaddubsw ymm7, ymm5, ymm7\n",
            "vpaddw ", $acc, ", ymm6, ymm7\n",
        )
    };
}

/// Row `$i`'s block total: widen, apply Q4's offset (`s − 8·Σq_a`), scale by `dw·da` into
/// its accumulator. `$at` addresses the row's entry in a per-block array.
#[rustfmt::skip]
macro_rules! finish_offset {
    ($sum:literal, $acc:literal, $at:literal) => {
        concat!(
            "vpmaddwd ", $sum, ", ", $sum, ", ymm14\n",
            "vpbroadcastd ymm6, dword ptr [{qsum}", $at, "]\n",
            "vpslld ymm6, ymm6, 3\n",
            "vpsubd ", $sum, ", ", $sum, ", ymm6\n",
            "vcvtdq2ps ", $sum, ", ", $sum, "\n",
            "vbroadcastss ymm7, dword ptr [{d}", $at, "]\n",
            "vmulps ymm7, ymm7, ymm12\n",
            "vfmadd231ps ", $acc, ", ", $sum, ", ymm7\n",
        )
    };
}

/// Row `$i`'s block total for Q4M: widen, scale by `dw·da`, then add `mw · c`.
#[rustfmt::skip]
macro_rules! finish_min {
    ($sum:literal, $acc:literal, $at:literal) => {
        concat!(
            "vpmaddwd ", $sum, ", ", $sum, ", ymm14\n",
            "vcvtdq2ps ", $sum, ", ", $sum, "\n",
            "vbroadcastss ymm7, dword ptr [{d}", $at, "]\n",
            "vmulps ymm7, ymm7, ymm12\n",
            "vfmadd231ps ", $acc, ", ", $sum, ", ymm7\n",
            "vbroadcastss ymm7, dword ptr [{c}", $at, "]\n",
            "vfmadd231ps ", $acc, ", ymm7, ymm13\n",
        )
    };
}

/// The four rows' products of a block, then `$finish` for each row.
#[rustfmt::skip]
macro_rules! block {
    ($finish:ident) => {
        concat!(
            word!("0", row_first),
            word!("1", row),
            word!("2", row),
            word!("3", row),
            $finish!("ymm0", "ymm8", ""),
            $finish!("ymm1", "ymm9", " + {rs}"),
            $finish!("ymm2", "ymm10", " + 2*{rs}"),
            $finish!("ymm3", "ymm11", " + {rs3}"),
        )
    };
}

/// Whether `acts` are four consecutive rows of one [`QuantizedActs`] (what the batched
/// matmul passes), so that one base and one stride address each of their arrays.
pub(super) fn contiguous(acts: &[ActRow<'_>]) -> bool {
    let nb = acts.first().map_or(0, |a| a.d.len());
    acts.len() == 4
        && acts.iter().enumerate().all(|(i, a)| {
            a.q.as_ptr() == acts[0].q.as_ptr().wrapping_add(i * nb * QBLOCK)
                && a.d.as_ptr() == acts[0].d.as_ptr().wrapping_add(i * nb)
                && a.c.as_ptr() == acts[0].c.as_ptr().wrapping_add(i * nb)
                && a.qsum.as_ptr() == acts[0].qsum.as_ptr().wrapping_add(i * nb)
        })
}

/// Four contiguous activation rows ([`contiguous`]) over `groups` of a Q4 or Q4M weight;
/// `out` holds the rows' runs, `groups.start` at the front of each.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `check` accepted the shapes; `acts` are contiguous.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_q4_x4(
    w: &PackedWeight,
    groups: std::ops::Range<usize>,
    acts: &[ActRow<'_>],
    out: &mut GemmOut<'_>,
) {
    let pg = w.format.group() / QBLOCK;
    let ngroups = w.cols / w.format.group();
    let nb = w.cols / QBLOCK;
    let wpr = 4 * nb;
    let coef_stride = ngroups * ROW_GROUP;
    let mins = !w.mins.is_empty();
    // Row strides in bytes: activations (one byte each), and the per-block f32/i32 arrays.
    let (qs, rs) = (nb * QBLOCK, nb * 4);
    let (nibbles, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
    // SAFETY: `check` verified the arrays hold whole row groups and each row `nb` blocks;
    // every pointer below stays inside them.
    unsafe {
        for (k, rg) in groups.enumerate() {
            let mut wq = w.words.as_ptr().add(rg * ROW_GROUP * wpr) as *const __m256i;
            let sc = w.scales.as_ptr().add(rg * coef_stride);
            let mn = if mins {
                w.mins.as_ptr().add(rg * coef_stride)
            } else {
                sc
            };
            let zero = _mm256_setzero_ps();
            let (mut acc0, mut acc1, mut acc2, mut acc3) = (zero, zero, zero, zero);
            for g in 0..ngroups {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(g * ROW_GROUP) as *const _));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(mn.add(g * ROW_GROUP) as *const _));
                for b in g * pg..(g + 1) * pg {
                    let q = acts[0].q.as_ptr().add(b * QBLOCK);
                    let d = acts[0].d.as_ptr().add(b);
                    let qsum = acts[0].qsum.as_ptr().add(b);
                    let c = acts[0].c.as_ptr().add(b);
                    // `$array` is the per-block array the finish reads besides `d`.
                    macro_rules! run {
                        ($finish:ident, $array:ident) => {
                            std::arch::asm!(
                                block!($finish),
                                w = in(reg) wq,
                                q = in(reg) q,
                                qs = in(reg) qs,
                                qs3 = in(reg) 3 * qs,
                                d = in(reg) d,
                                $array = in(reg) $array,
                                rs = in(reg) rs,
                                rs3 = in(reg) 3 * rs,
                                out("ymm0") _,
                                out("ymm1") _,
                                out("ymm2") _,
                                out("ymm3") _,
                                out("ymm4") _,
                                out("ymm5") _,
                                out("ymm6") _,
                                out("ymm7") _,
                                inout("ymm8") acc0,
                                inout("ymm9") acc1,
                                inout("ymm10") acc2,
                                inout("ymm11") acc3,
                                in("ymm12") dw,
                                in("ymm13") mw,
                                in("ymm14") ones,
                                in("ymm15") nibbles,
                                options(pure, readonly, nostack, preserves_flags),
                            )
                        };
                    }
                    if mins {
                        run!(finish_min, c);
                    } else {
                        run!(finish_offset, qsum);
                    }
                    wq = wq.add(4);
                }
            }
            let o = |r: usize| out.row_ptr(r).add(k * ROW_GROUP);
            _mm256_storeu_ps(o(0), acc0);
            _mm256_storeu_ps(o(1), acc1);
            _mm256_storeu_ps(o(2), acc2);
            _mm256_storeu_ps(o(3), acc3);
        }
    }
}
