//! The x86-64 attention loops: AVX-512 and AVX2 entry points and their hand-written
//! score and weighted-sum kernels for 16-token blocks.
use super::*;
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,fma,f16c")]
fn task_avx512_impl<E: KvElem>(c: &Ctx<'_, E>, t: &Task) -> Vec<f32> {
    task::<Fused, ZMM, E>(c, t)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn task_avx2_impl<E: KvElem>(c: &Ctx<'_, E>, t: &Task) -> Vec<f32> {
    task::<Fused, YMM, E>(c, t)
}

/// AVX2 with FMA and F16C (every AVX2 CPU has F16C, which widens an f16 pool's values).
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(super) fn has_avx512() -> bool {
    has_avx2() && is_x86_feature_detected!("avx512f")
}

/// [`block_scores`] for 16-token blocks in two 256-bit registers each (`2·R·KB`
/// accumulators: the callers keep them to twelve, so they stay in registers): the same fused multiply-adds
/// per score in the same order, without the portable loop's bounds checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn block_scores_ymm<E: KvElem, const R: usize, const KB: usize>(
    q: [&[f32]; R],
    kt: [&[E]; KB],
    out: [[&mut [f32]; KB]; R],
) {
    let hd = q[0].len();
    assert!(q.iter().all(|q| q.len() == hd) && kt.iter().all(|k| k.len() >= hd * 16));
    assert!(out.iter().flatten().all(|o| o.len() >= 16));
    // SAFETY: the lengths were just checked.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; KB]; R];
        for d in 0..hd {
            let kd: [[__m256; 2]; KB] = std::array::from_fn(|k| {
                let p = kt[k].as_ptr().add(d * 16);
                [E::load8(p), E::load8(p.add(8))]
            });
            for j in 0..R {
                let qd = _mm256_set1_ps(*q[j].get_unchecked(d));
                for k in 0..KB {
                    for h in 0..2 {
                        acc[j][k][h] = _mm256_fmadd_ps(qd, kd[k][h], acc[j][k][h]);
                    }
                }
            }
        }
        for (outs, acc) in out.into_iter().zip(acc) {
            for (o, a) in outs.into_iter().zip(acc) {
                _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
            }
        }
    }
}

/// [`weighted_values`] for 16-token blocks and `8·C` columns, `R·C` accumulators (the
/// callers keep them to twelve).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn weighted_values_ymm<E: KvElem, const R: usize, const C: usize>(
    p: [&[f32]; R],
    blocks: &[&[E]],
    (hd, d0): (usize, usize),
    slots: std::ops::Range<usize>,
    out: [&mut [f32]; R],
) {
    assert!(d0 + 8 * C <= hd && slots.end <= blocks.len() * 16);
    assert!(blocks.iter().all(|b| b.len() >= 16 * hd) && p.iter().all(|p| p.len() >= slots.end));
    assert!(out.iter().all(|o| o.len() >= d0 + 8 * C));
    // SAFETY: the lengths were just checked.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for slot in slots.clone() {
            let v = blocks
                .get_unchecked(slot / 16)
                .as_ptr()
                .add((slot % 16) * hd + d0);
            let vs: [__m256; C] = std::array::from_fn(|c| E::load8(v.add(8 * c)));
            for j in 0..R {
                let pj = _mm256_set1_ps(*p[j].get_unchecked(slot));
                for c in 0..C {
                    acc[j][c] = _mm256_fmadd_ps(pj, vs[c], acc[j][c]);
                }
            }
        }
        for (o, acc) in out.into_iter().zip(acc) {
            for (c, a) in acc.into_iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(d0 + 8 * c), a);
            }
        }
    }
}

/// [`block_scores`] for 16-token blocks, one block per 512-bit register: the same fused
/// multiply-adds per score in the same order, written out because the compiler keeps the
/// portable version's accumulators in memory.
#[target_feature(enable = "avx512f,fma,f16c")]
pub(super) fn block_scores_zmm<E: KvElem, const R: usize, const KB: usize>(
    q: [&[f32]; R],
    kt: [&[E]; KB],
    out: [[&mut [f32]; KB]; R],
) {
    let hd = q[0].len();
    assert!(q.iter().all(|q| q.len() == hd) && kt.iter().all(|k| k.len() >= hd * 16));
    assert!(out.iter().flatten().all(|o| o.len() >= 16));
    // SAFETY: the lengths were just checked.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); KB]; R];
        for d in 0..hd {
            let kd: [__m512; KB] = std::array::from_fn(|k| E::load16(kt[k].as_ptr().add(d * 16)));
            for j in 0..R {
                let qd = _mm512_set1_ps(*q[j].get_unchecked(d));
                for k in 0..KB {
                    acc[j][k] = _mm512_fmadd_ps(qd, kd[k], acc[j][k]);
                }
            }
        }
        for (outs, acc) in out.into_iter().zip(acc) {
            for (o, a) in outs.into_iter().zip(acc) {
                _mm512_storeu_ps(o.as_mut_ptr(), a);
            }
        }
    }
}

/// [`weighted_values`] for 16-token blocks and 64 columns, `4·R` registers.
#[target_feature(enable = "avx512f,fma,f16c")]
pub(super) fn weighted_values_zmm<E: KvElem, const R: usize>(
    p: [&[f32]; R],
    blocks: &[&[E]],
    (hd, d0): (usize, usize),
    slots: std::ops::Range<usize>,
    out: [&mut [f32]; R],
) {
    assert!(d0 + 64 <= hd && slots.end <= blocks.len() * 16);
    assert!(blocks.iter().all(|b| b.len() >= 16 * hd) && p.iter().all(|p| p.len() >= slots.end));
    assert!(out.iter().all(|o| o.len() >= d0 + 64));
    // SAFETY: the lengths were just checked.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for slot in slots.clone() {
            let v = blocks
                .get_unchecked(slot / 16)
                .as_ptr()
                .add((slot % 16) * hd + d0);
            let vs: [__m512; 4] = std::array::from_fn(|c| E::load16(v.add(16 * c)));
            for j in 0..R {
                let pj = _mm512_set1_ps(*p[j].get_unchecked(slot));
                for c in 0..4 {
                    acc[j][c] = _mm512_fmadd_ps(pj, vs[c], acc[j][c]);
                }
            }
        }
        for (o, acc) in out.into_iter().zip(acc) {
            for (c, a) in acc.into_iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(d0 + 16 * c), a);
            }
        }
    }
}

pub(super) fn task_avx512<E: KvElem>(c: &Ctx<'_, E>, t: &Task) -> Vec<f32> {
    assert!(has_avx512());
    // SAFETY: the features were just checked.
    unsafe { task_avx512_impl(c, t) }
}

pub(super) fn task_avx2<E: KvElem>(c: &Ctx<'_, E>, t: &Task) -> Vec<f32> {
    assert!(has_avx2());
    // SAFETY: the features were just checked.
    unsafe { task_avx2_impl(c, t) }
}
