//! Causal grouped-query attention over the paged KV pool in host memory ([`HostKv`]).
//!
//! One numeric path for every query row, whatever its sequence is doing (a one-token decode,
//! a prefill chunk of any size) and whatever else shares the step: each score is one query
//! against one key, accumulated along the head dimension in the same order; each row's
//! softmax and weighted sum of values run over its own positions in increasing order. The
//! work is blocked (a task takes up to [`QUERY_BLOCK`] rows of one head, so each key block is
//! loaded once for all of them) without changing any row's arithmetic, so a request's tokens
//! do not depend on its batch or on how its prompt was chunked.

use super::matmul::{Accumulate, Fused, Plain};
use super::pool::Pool;
use crate::backend::{AttentionShape, SeqSpan};
use crate::error::{shape_err, Result};
use crate::kv::{check_table, HostKv, KvPoolSpec};

/// Query rows of one head per task: enough to reuse each key block from L1 many times, few
/// enough that a 512-token prefill still makes hundreds of tasks.
const QUERY_BLOCK: usize = 16;

/// Where one (layer, block, KV head) lives in [`HostKv`]'s arrays: `head_dim × block_tokens`
/// floats of keys (transposed) and as many of values, at the same offset.
fn head_offset(spec: &KvPoolSpec, layer: usize, block: u32, kv_head: usize) -> usize {
    let n_kv = spec.kv_dim / spec.head_dim;
    let per_head = spec.block_tokens * spec.head_dim;
    ((layer * spec.blocks + block as usize) * n_kv + kv_head) * per_head
}

/// Writes the new keys/values into the pool, then attends. See [`crate::Backend::attention`].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[SeqSpan<'_>],
    kv: &mut HostKv,
    spec: &KvPoolSpec,
    shape: AttentionShape,
) -> Result<Vec<f32>> {
    let (q_dim, kv_dim, hd) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    if shape.n_kv_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads) {
        return Err(shape_err(
            "attention",
            format!("{shape:?}: heads must be a multiple of KV heads"),
        ));
    }
    if kv_dim != spec.kv_dim || hd != spec.head_dim || layer >= spec.layers {
        return Err(shape_err(
            "attention",
            format!("layer {layer} of {shape:?} does not fit the pool {spec:?}"),
        ));
    }
    let rows = q.len() / q_dim.max(1);
    for s in seqs {
        if s.row_start + s.len > rows {
            return Err(shape_err(
                "attention",
                format!(
                    "span at row {} of {} rows exceeds the batch of {rows}",
                    s.row_start, s.len
                ),
            ));
        }
        check_table(spec, s.blocks, s.pos_start + s.len)?;
    }

    let bt = spec.block_tokens;
    for s in seqs {
        for t in 0..s.len {
            let pos = s.pos_start + t;
            let (block, slot) = (s.blocks[pos / bt], pos % bt);
            let (krow, vrow) = (
                &k[(s.row_start + t) * kv_dim..][..kv_dim],
                &v[(s.row_start + t) * kv_dim..][..kv_dim],
            );
            for kvh in 0..shape.n_kv_heads {
                let at = head_offset(spec, layer, block, kvh);
                let (kh, vh) = (&krow[kvh * hd..][..hd], &vrow[kvh * hd..][..hd]);
                for (d, &x) in kh.iter().enumerate() {
                    kv.k[at + d * bt + slot] = x;
                }
                kv.v[at + slot * hd..][..hd].copy_from_slice(vh);
            }
        }
    }

    let mut tasks = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for h in 0..shape.n_heads {
            for t0 in (0..s.len).step_by(QUERY_BLOCK) {
                tasks.push(Task {
                    seq: i,
                    head: h,
                    rows: t0..(t0 + QUERY_BLOCK).min(s.len),
                });
            }
        }
    }
    let kernel = best_kernel();
    let kv = &*kv;
    let ctx = Ctx {
        layer,
        q,
        kv,
        seqs,
        spec,
        shape,
    };
    let results = Pool::global().map(tasks.len(), |i| kernel(&ctx, &tasks[i]));
    let mut out = vec![0.0f32; rows * q_dim];
    for (task, o) in tasks.iter().zip(&results) {
        let s = &seqs[task.seq];
        for (t, row) in task.rows.clone().zip(o.chunks_exact(hd)) {
            out[(s.row_start + t) * q_dim + task.head * hd..][..hd].copy_from_slice(row);
        }
    }
    Ok(out)
}

/// Everything a task reads.
struct Ctx<'a> {
    layer: usize,
    q: &'a [f32],
    kv: &'a HostKv,
    seqs: &'a [SeqSpan<'a>],
    spec: &'a KvPoolSpec,
    shape: AttentionShape,
}

/// Rows `rows` (relative to the span) of query head `head` of span `seq`.
struct Task {
    seq: usize,
    head: usize,
    rows: std::ops::Range<usize>,
}

type KernelFn = fn(&Ctx<'_>, &Task) -> Vec<f32>;

fn best_kernel() -> KernelFn {
    static BEST: std::sync::OnceLock<KernelFn> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return x86::task_avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return x86::task_avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        return |c, t| task::<Fused>(c, t);
        #[allow(unreachable_code)]
        |c, t| task::<Plain>(c, t)
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,fma")]
    fn task_avx512_impl(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
        task::<Fused>(c, t)
    }

    #[target_feature(enable = "avx2,fma")]
    fn task_avx2_impl(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
        task::<Fused>(c, t)
    }

    pub(super) fn task_avx512(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
        assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"));
        // SAFETY: the features were just checked.
        unsafe { task_avx512_impl(c, t) }
    }

    pub(super) fn task_avx2(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        // SAFETY: the features were just checked.
        unsafe { task_avx2_impl(c, t) }
    }
}

#[inline(always)]
fn task<A: Accumulate>(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
    match c.spec.block_tokens {
        8 => task_bt::<A, 8>(c, t),
        32 => task_bt::<A, 32>(c, t),
        _ => task_bt::<A, 16>(c, t),
    }
}

/// One query against the `BT` keys of a block (`kt` is `hd × BT`, transposed): the scores
/// accumulate along the head dimension, one lane per key.
#[inline(always)]
fn block_scores<A: Accumulate, const BT: usize>(q: &[f32], kt: &[f32], out: &mut [f32; BT]) {
    let mut acc = [0.0f32; BT];
    for (qd, kd) in q.iter().zip(kt.chunks_exact(BT)) {
        for s in 0..BT {
            acc[s] = A::mul_add(*qd, kd[s], acc[s]);
        }
    }
    *out = acc;
}

/// [`block_scores`] for four queries at once: four independent chains of multiply-adds
/// instead of one, each query's accumulation in exactly the same order as alone.
#[inline(always)]
fn block_scores4<A: Accumulate, const BT: usize>(q: [&[f32]; 4], kt: &[f32], out: [&mut [f32]; 4]) {
    let mut acc = [[0.0f32; BT]; 4];
    for (d, kd) in kt.chunks_exact(BT).enumerate().take(q[0].len()) {
        for j in 0..4 {
            let qd = q[j][d];
            for s in 0..BT {
                acc[j][s] = A::mul_add(qd, kd[s], acc[j][s]);
            }
        }
    }
    for (o, a) in out.into_iter().zip(&acc) {
        o[..BT].copy_from_slice(a);
    }
}

/// `o += p · v`.
#[inline(always)]
fn axpy<A: Accumulate>(o: &mut [f32], p: f32, v: &[f32]) {
    for (o, x) in o.iter_mut().zip(v) {
        *o = A::mul_add(p, *x, *o);
    }
}

#[inline(always)]
fn task_bt<A: Accumulate, const BT: usize>(c: &Ctx<'_>, t: &Task) -> Vec<f32> {
    let (q_dim, hd) = (c.shape.q_dim(), c.shape.head_dim);
    let group = c.shape.n_heads / c.shape.n_kv_heads;
    let kv_head = t.head / group;
    let s = &c.seqs[t.seq];
    let scale = 1.0 / (hd as f32).sqrt();
    let m = t.rows.len();
    // Row r (span row t.rows.start + r) sees positions 0..seen(r).
    let seen = |r: usize| s.pos_start + t.rows.start + r + 1;
    let blocks = seen(m - 1).div_ceil(BT);
    let stride = blocks * BT;
    let queries: Vec<&[f32]> = t
        .rows
        .clone()
        .map(|row| &c.q[(s.row_start + row) * q_dim + t.head * hd..][..hd])
        .collect();

    let mut scores = vec![0.0f32; m * stride];
    for b in 0..blocks {
        let at = head_offset(c.spec, c.layer, s.blocks[b], kv_head);
        let kt = &c.kv.k[at..at + hd * BT];
        // Rows that see no position of this block compute scores nobody reads.
        let first = (0..m).find(|&r| b * BT < seen(r)).unwrap_or(m);
        let mut rows = scores.chunks_exact_mut(stride).enumerate().skip(first);
        let mut r = first;
        while r + 4 <= m {
            let out: [&mut [f32]; 4] = std::array::from_fn(|_| {
                let (_, row) = rows.next().expect("four rows left");
                &mut row[b * BT..(b + 1) * BT]
            });
            block_scores4::<A, BT>(std::array::from_fn(|j| queries[r + j]), kt, out);
            r += 4;
        }
        for (r, row) in rows {
            let out: &mut [f32; BT] = (&mut row[b * BT..(b + 1) * BT])
                .try_into()
                .expect("BT-wide chunk");
            block_scores::<A, BT>(queries[r], kt, out);
        }
    }
    let mut inv_sums = vec![0.0f32; m];
    for (r, inv) in inv_sums.iter_mut().enumerate() {
        let sc = &mut scores[r * stride..][..seen(r)];
        let mut max = f32::NEG_INFINITY;
        for v in sc.iter_mut() {
            *v *= scale;
            max = max.max(*v);
        }
        for v in sc.iter_mut() {
            *v = exp_nonpositive(*v - max);
        }
        *inv = 1.0 / sum(sc);
    }
    let mut out = vec![0.0f32; m * hd];
    for b in 0..blocks {
        let at = head_offset(c.spec, c.layer, s.blocks[b], kv_head);
        let vb = &c.kv.v[at..at + BT * hd];
        for (r, o) in out.chunks_exact_mut(hd).enumerate() {
            let n = seen(r).saturating_sub(b * BT).min(BT);
            for slot in 0..n {
                let p = scores[r * stride + b * BT + slot] * inv_sums[r];
                axpy::<A>(o, p, &vb[slot * hd..][..hd]);
            }
        }
    }
    out
}

/// Copies every layer's keys and values of block `src` to block `dst`, for each pair.
pub fn copy_blocks(kv: &mut HostKv, spec: &KvPoolSpec, pairs: &[(u32, u32)]) -> Result<()> {
    let n_kv = spec.kv_dim / spec.head_dim;
    let per_block = n_kv * spec.block_tokens * spec.head_dim;
    for &(src, dst) in pairs {
        if src as usize >= spec.blocks || dst as usize >= spec.blocks {
            return Err(shape_err(
                "copy_blocks",
                format!("({src}, {dst}) in a pool of {} blocks", spec.blocks),
            ));
        }
        if src == dst {
            continue;
        }
        for layer in 0..spec.layers {
            let (s, d) = (
                head_offset(spec, layer, src, 0),
                head_offset(spec, layer, dst, 0),
            );
            kv.k.copy_within(s..s + per_block, d);
            kv.v.copy_within(s..s + per_block, d);
        }
    }
    Ok(())
}

/// `Σ aᵢ` with 16 independent partial sums, so that the compiler can keep them in vector
/// registers: a plain iterator sum is one serial chain of dependent adds (floats do not
/// reassociate).
fn sum(a: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for xa in chunks {
        for i in 0..LANES {
            acc[i] += xa[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `eˣ` for `x ≤ 0` (softmax after subtracting the maximum), in plain arithmetic the compiler
/// vectorizes, where `f32::exp` is a library call per score: `eˣ = 2ⁿ·eʸ` with `n` the nearest
/// integer to `x·log₂e`, `y = x − n·ln 2` (ln 2 split in two so the product is exact,
/// Cody–Waite) and `eʸ`, `|y| ≤ 0.35`, from its degree-6 Taylor polynomial (relative error
/// about 2·10⁻⁷, one or two f32 ulp). Below −87 it gives e⁻⁸⁷ ≈ 1.6·10⁻³⁸, nothing next to
/// the maximum's 1.
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HI: f32 = 0.693_359_4;
    const LN_2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let y = (x - n * LN_2_HI) - n * LN_2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: AttentionShape = AttentionShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 32,
    };

    fn random(seed: &mut u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (*seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// One sequence's whole history: queries, keys and values for positions `0..ctx`.
    struct History {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        blocks: Vec<u32>,
    }

    /// Naive float64 causal attention of the query at `pos` over positions `0..=pos`.
    fn reference_row(h: &History, pos: usize, shape: AttentionShape) -> Vec<f64> {
        let (hd, kv_dim, q_dim) = (shape.head_dim, shape.kv_dim(), shape.q_dim());
        let group = shape.n_heads / shape.n_kv_heads;
        let mut out = vec![0.0f64; q_dim];
        for head in 0..shape.n_heads {
            let kvh = head / group;
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    (0..hd)
                        .map(|d| {
                            f64::from(h.q[pos * q_dim + head * hd + d])
                                * f64::from(h.k[j * kv_dim + kvh * hd + d])
                        })
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in scores.iter().enumerate() {
                let p = (s - max).exp() / total;
                for d in 0..hd {
                    out[head * hd + d] += p * f64::from(h.v[j * kv_dim + kvh * hd + d]);
                }
            }
        }
        out
    }

    /// Runs one step: sequence `i` contributes positions `steps[i]` (a range of its history).
    fn run_step(
        histories: &[History],
        steps: &[(usize, std::ops::Range<usize>)],
        kv: &mut HostKv,
        spec: &KvPoolSpec,
    ) -> Vec<f32> {
        let (q_dim, kv_dim) = (SHAPE.q_dim(), SHAPE.kv_dim());
        let (mut q, mut k, mut v, mut spans) = (vec![], vec![], vec![], vec![]);
        for (i, r) in steps {
            let h = &histories[*i];
            spans.push(SeqSpan {
                row_start: q.len() / q_dim,
                len: r.len(),
                pos_start: r.start,
                blocks: &h.blocks,
            });
            q.extend_from_slice(&h.q[r.start * q_dim..r.end * q_dim]);
            k.extend_from_slice(&h.k[r.start * kv_dim..r.end * kv_dim]);
            v.extend_from_slice(&h.v[r.start * kv_dim..r.end * kv_dim]);
        }
        attention(1, &q, &k, &v, &spans, kv, spec, SHAPE).unwrap()
    }

    fn setup(ctxs: &[usize], block_tokens: usize) -> (Vec<History>, HostKv, KvPoolSpec) {
        let mut seed = 7u32;
        let total: usize = ctxs.iter().map(|c| c.div_ceil(block_tokens)).sum();
        let spec = KvPoolSpec {
            layers: 2,
            kv_dim: SHAPE.kv_dim(),
            head_dim: SHAPE.head_dim,
            block_tokens,
            blocks: total + 5,
        };
        // Blocks handed out scattered and interleaved between sequences, in reverse.
        let mut ids: Vec<u32> = (0..spec.blocks as u32).rev().collect();
        ids.retain(|b| b % 3 != 1 || *b > total as u32);
        ids.extend((0..spec.blocks as u32).filter(|b| b % 3 == 1 && *b <= total as u32));
        let mut next = ids.into_iter();
        let histories = ctxs
            .iter()
            .map(|&ctx| History {
                q: random(&mut seed, ctx * SHAPE.q_dim()),
                k: random(&mut seed, ctx * SHAPE.kv_dim()),
                v: random(&mut seed, ctx * SHAPE.kv_dim()),
                blocks: (0..ctx.div_ceil(block_tokens))
                    .map(|_| next.next().unwrap())
                    .collect(),
            })
            .collect();
        let kv = HostKv::zeroed(&spec);
        (histories, kv, spec)
    }

    #[test]
    fn ragged_batch_over_scattered_blocks_matches_float64() {
        for bt in [8, 16, 32] {
            // A long prefill from scratch, a decode row after 10 cached positions, a continued
            // prefill after 30, a single first token.
            let (hs, mut kv, spec) = setup(&[150, 11, 50, 1], bt);
            run_step(&hs, &[(1, 0..10), (2, 0..30)], &mut kv, &spec);
            let steps = [(0, 0..150), (1, 10..11), (2, 30..50), (3, 0..1)];
            let out = run_step(&hs, &steps, &mut kv, &spec);
            let q_dim = SHAPE.q_dim();
            let (mut num, mut den, mut row) = (0.0f64, 0.0f64, 0);
            for (i, r) in &steps {
                for pos in r.clone() {
                    let want = reference_row(&hs[*i], pos, SHAPE);
                    for (g, w) in out[row * q_dim..(row + 1) * q_dim].iter().zip(&want) {
                        num += (f64::from(*g) - w).powi(2);
                        den += w * w;
                    }
                    row += 1;
                }
            }
            let e = (num / den).sqrt();
            assert!(e < 1e-5, "block tokens {bt}: relative error {e}");
        }
    }

    #[test]
    fn a_rows_output_does_not_depend_on_chunking_or_batch() {
        let (hs, mut kv, spec) = setup(&[70, 40], 16);
        let q_dim = SHAPE.q_dim();
        // Sequence 0 in one prefill, sequence 1 alongside it.
        let whole = run_step(&hs, &[(0, 0..70), (1, 0..40)], &mut kv, &spec);
        // Sequence 0 again in chunks of 3, 20 and one row at a time, alone.
        let mut pieces = Vec::new();
        pieces.extend(run_step(&hs, &[(0, 0..3)], &mut kv, &spec));
        pieces.extend(run_step(&hs, &[(0, 3..23)], &mut kv, &spec));
        for p in 23..70 {
            pieces.extend(run_step(&hs, &[(0, p..p + 1)], &mut kv, &spec));
        }
        assert_eq!(&whole[..70 * q_dim], &pieces[..]);
    }

    #[test]
    fn copied_blocks_attend_like_the_originals() {
        let (mut hs, mut kv, spec) = setup(&[20], 16);
        run_step(&hs, &[(0, 0..19)], &mut kv, &spec);
        let before = run_step(&hs, &[(0, 19..20)], &mut kv, &spec);
        let spare = (0..spec.blocks as u32)
            .filter(|b| !hs[0].blocks.contains(b))
            .take(2)
            .collect::<Vec<_>>();
        let pairs: Vec<(u32, u32)> = hs[0].blocks.iter().copied().zip(spare.clone()).collect();
        copy_blocks(&mut kv, &spec, &pairs).unwrap();
        // Poison the originals in every layer: the copies alone must give the same output.
        let orig = hs[0].blocks.clone();
        for b in &orig {
            for layer in 0..spec.layers {
                let at = head_offset(&spec, layer, *b, 0);
                let n = spec.kv_dim * spec.block_tokens;
                kv.k[at..at + n].iter_mut().for_each(|x| *x = f32::NAN);
                kv.v[at..at + n].iter_mut().for_each(|x| *x = f32::NAN);
            }
        }
        hs[0].blocks = spare;
        let after = run_step(&hs, &[(0, 19..20)], &mut kv, &spec);
        assert_eq!(before, after);
        assert!(copy_blocks(&mut kv, &spec, &[(0, spec.blocks as u32)]).is_err());
    }

    #[test]
    fn tables_too_short_or_outside_the_pool_are_errors() {
        let (mut hs, mut kv, spec) = setup(&[20], 16);
        hs[0].blocks.truncate(1);
        let (q, k) = (
            vec![0.0; 20 * SHAPE.q_dim()],
            vec![0.0; 20 * SHAPE.kv_dim()],
        );
        let span = SeqSpan {
            row_start: 0,
            len: 20,
            pos_start: 0,
            blocks: &hs[0].blocks,
        };
        assert!(attention(0, &q, &k, &k, &[span], &mut kv, &spec, SHAPE).is_err());
        let bad = [0u32, spec.blocks as u32];
        let span = SeqSpan {
            blocks: &bad,
            ..span
        };
        assert!(attention(0, &q, &k, &k, &[span], &mut kv, &spec, SHAPE).is_err());
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_float64() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp_nonpositive(-200.0) < 2e-38);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn sum_matches_float64_on_ragged_lengths() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let want: f64 = a.iter().map(|x| f64::from(*x)).sum();
            assert!((f64::from(sum(&a)) - want).abs() < 1e-5, "n={n}");
        }
    }
}
