//! Causal grouped-query attention over each sequence's host KV cache.

use super::pool::Pool;
use crate::backend::{AttentionShape, KvCache, SeqSpan};
use crate::error::{shape_err, Result};

/// Writes the new keys/values into the caches, then attends. See [`crate::Backend::attention`].
pub fn attention(
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[SeqSpan],
    caches: &mut [&mut KvCache],
    shape: AttentionShape,
) -> Result<Vec<f32>> {
    let (q_dim, kv_dim, hd) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    if seqs.len() != caches.len() {
        return Err(shape_err(
            "attention",
            format!("{} spans, {} caches", seqs.len(), caches.len()),
        ));
    }
    if shape.n_kv_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads) {
        return Err(shape_err(
            "attention",
            format!("{shape:?}: heads must be a multiple of KV heads"),
        ));
    }
    let rows = q.len() / q_dim.max(1);
    for (s, cache) in seqs.iter().zip(caches.iter_mut()) {
        if s.row_start + s.len > rows || cache.kv_dim != kv_dim || layer >= cache.layers.len() {
            return Err(shape_err(
                "attention",
                format!("span {s:?} / cache does not fit the batch"),
            ));
        }
        let l = &mut cache.layers[layer];
        if l.k.len() < s.pos_start * kv_dim {
            return Err(shape_err(
                "attention",
                format!(
                    "sequence starts at position {} but its cache holds {}",
                    s.pos_start,
                    l.k.len() / kv_dim
                ),
            ));
        }
        let end = (s.pos_start + s.len) * kv_dim;
        l.k.resize(end.max(l.k.len()), 0.0);
        l.v.resize(end.max(l.v.len()), 0.0);
        let rows = s.row_start * kv_dim..(s.row_start + s.len) * kv_dim;
        l.k[s.pos_start * kv_dim..end].copy_from_slice(&k[rows.clone()]);
        l.v[s.pos_start * kv_dim..end].copy_from_slice(&v[rows]);
    }

    // Rows of short spans (decode): each (token, head) output is one task, so that a single
    // decode row still spreads its heads over the threads. Long spans (prefill) go through
    // the tiled f32 matmul kernel instead (`tiled_span`).
    let mut row_owner = vec![None; rows];
    for (i, s) in seqs.iter().enumerate() {
        if s.len < TILED_MIN_ROWS {
            for t in 0..s.len {
                row_owner[s.row_start + t] = Some((i, s.pos_start + t));
            }
        }
    }
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let mut out = vec![0.0f32; rows * q_dim];
    for (s, cache) in seqs.iter().zip(&caches) {
        if s.len >= TILED_MIN_ROWS {
            tiled_span(q, s, &cache.layers[layer], shape, &mut out);
        }
    }
    Pool::global().for_each_chunk_mut(&mut out, hd, |task, oh| {
        let (r, h) = (task / shape.n_heads, task % shape.n_heads);
        let Some((seq, pos)) = row_owner[r] else {
            return;
        };
        let cache = &caches[seq].layers[layer];
        let kvh = h / group;
        let qh = &q[r * q_dim + h * hd..r * q_dim + (h + 1) * hd];
        let mut scores = vec![0.0f32; pos + 1];
        let mut max = f32::NEG_INFINITY;
        for (j, sc) in scores.iter_mut().enumerate() {
            let kj = &cache.k[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
            *sc = dot(qh, kj) * scale;
            max = max.max(*sc);
        }
        for sc in scores.iter_mut() {
            *sc = exp_nonpositive(*sc - max);
        }
        let inv_sum = 1.0 / sum(&scores);
        for (j, sc) in scores.iter().enumerate() {
            let p = sc * inv_sum;
            let vj = &cache.v[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
            for (o, x) in oh.iter_mut().zip(vj) {
                *o += p * x;
            }
        }
    });
    Ok(out)
}

/// From this many new tokens in one sequence on, its attention runs as matrix products.
const TILED_MIN_ROWS: usize = 16;
/// Query rows per task in the tiled path.
const QUERY_BLOCK: usize = 64;

/// Attention of one long span as matrix products per (head, block of query rows):
/// `S = Q·Kᵀ` over the positions the block can see, causal softmax, `O = P·V`, both with the
/// tiled f32 kernel. Scalar per-row loops ran prefill attention at ~10 GFLOP/s, a quarter of
/// prefill's time for 4% of its arithmetic.
fn tiled_span(
    q: &[f32],
    s: &SeqSpan,
    cache: &crate::backend::HostLayerKv,
    shape: AttentionShape,
    out: &mut [f32],
) {
    let (q_dim, kv_dim, hd) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let ctx = s.pos_start + s.len;
    // Each KV head's keys (ctx × hd) and transposed values (hd × ctx), contiguous.
    let kv_heads: Vec<(Vec<f32>, Vec<f32>)> = (0..shape.n_kv_heads)
        .map(|kvh| {
            let mut keys = Vec::with_capacity(ctx * hd);
            let mut values_t = vec![0.0f32; hd * ctx];
            for j in 0..ctx {
                let at = j * kv_dim + kvh * hd;
                keys.extend_from_slice(&cache.k[at..at + hd]);
                for (d, &v) in cache.v[at..at + hd].iter().enumerate() {
                    values_t[d * ctx + j] = v;
                }
            }
            (keys, values_t)
        })
        .collect();
    let blocks = s.len.div_ceil(QUERY_BLOCK);
    let results = Pool::global().map(shape.n_heads * blocks, |task| {
        let (h, b) = (task / blocks, task % blocks);
        let (keys, values_t) = &kv_heads[h / group];
        let (t0, t1) = (b * QUERY_BLOCK, ((b + 1) * QUERY_BLOCK).min(s.len));
        let m = t1 - t0;
        let mut qb = Vec::with_capacity(m * hd);
        for t in t0..t1 {
            let at = (s.row_start + t) * q_dim + h * hd;
            qb.extend_from_slice(&q[at..at + hd]);
        }
        // The last row of the block sees positions 0..=pos_start + t1 − 1.
        let visible = s.pos_start + t1;
        let scores = super::matmul::matmul(&qb, hd, &keys[..visible * hd], visible);
        let mut p = vec![0.0f32; m * ctx];
        for (i, (srow, prow)) in scores
            .chunks_exact(visible)
            .zip(p.chunks_exact_mut(ctx))
            .enumerate()
        {
            let seen = s.pos_start + t0 + i + 1;
            let max = srow[..seen]
                .iter()
                .fold(f32::NEG_INFINITY, |a, &v| a.max(v))
                * scale;
            for (o, &v) in prow[..seen].iter_mut().zip(&srow[..seen]) {
                *o = exp_nonpositive(v * scale - max);
            }
            let inv_sum = 1.0 / sum(&prow[..seen]);
            for o in &mut prow[..seen] {
                *o *= inv_sum;
            }
        }
        super::matmul::matmul(&p, ctx, values_t, hd)
    });
    for (task, o) in results.iter().enumerate() {
        let (h, b) = (task / blocks, task % blocks);
        for (i, row) in o.chunks_exact(hd).enumerate() {
            let at = (s.row_start + b * QUERY_BLOCK + i) * q_dim + h * hd;
            out[at..at + hd].copy_from_slice(row);
        }
    }
}

/// `Σ aᵢ·bᵢ` with 16 independent partial sums, so that the compiler can keep them in vector
/// registers: a plain iterator sum is one serial chain of dependent adds (floats do not
/// reassociate), which made prefill attention cost as much as all the matmuls.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += xa[i] * xb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ aᵢ`, with independent partial sums (see [`dot`]).
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
    use crate::backend::HostLayerKv;

    /// Naive float64 causal attention of one query row over a cache's first `seen` positions.
    fn reference_row(
        qrow: &[f32],
        cache: &HostLayerKv,
        seen: usize,
        shape: AttentionShape,
    ) -> Vec<f64> {
        let (hd, kv_dim) = (shape.head_dim, shape.kv_dim());
        let group = shape.n_heads / shape.n_kv_heads;
        let mut out = vec![0.0f64; shape.q_dim()];
        for h in 0..shape.n_heads {
            let kvh = h / group;
            let scores: Vec<f64> = (0..seen)
                .map(|j| {
                    (0..hd)
                        .map(|d| {
                            f64::from(qrow[h * hd + d])
                                * f64::from(cache.k[j * kv_dim + kvh * hd + d])
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
                    out[h * hd + d] += p * f64::from(cache.v[j * kv_dim + kvh * hd + d]);
                }
            }
        }
        out
    }

    #[test]
    fn tiled_and_per_row_paths_match_float64_in_one_ragged_batch() {
        let shape = AttentionShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 32,
        };
        let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
        let mut seed = 7u32;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
                })
                .collect()
        };
        // A long prefill from scratch (tiled, several query blocks), a decode row after 10
        // cached positions (per row), and a continued prefill after 30 (tiled).
        let spans = [(0usize, 150usize), (10, 1), (30, 20)];
        let mut caches: Vec<KvCache> = spans
            .iter()
            .map(|&(cached, _)| KvCache {
                kv_dim,
                layers: vec![HostLayerKv {
                    k: random(cached * kv_dim),
                    v: random(cached * kv_dim),
                }],
            })
            .collect();
        let rows: usize = spans.iter().map(|s| s.1).sum();
        let (q, k, v) = (
            random(rows * q_dim),
            random(rows * kv_dim),
            random(rows * kv_dim),
        );
        let mut row_start = 0;
        let seqs: Vec<SeqSpan> = spans
            .iter()
            .map(|&(pos_start, len)| {
                let s = SeqSpan {
                    row_start,
                    len,
                    pos_start,
                };
                row_start += len;
                s
            })
            .collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let out = attention(0, &q, &k, &v, &seqs, &mut refs, shape).unwrap();
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (s, cache) in seqs.iter().zip(&caches) {
            for t in 0..s.len {
                let r = s.row_start + t;
                let want = reference_row(
                    &q[r * q_dim..(r + 1) * q_dim],
                    &cache.layers[0],
                    s.pos_start + t + 1,
                    shape,
                );
                for (g, w) in out[r * q_dim..(r + 1) * q_dim].iter().zip(&want) {
                    num += (f64::from(*g) - w).powi(2);
                    den += w * w;
                }
            }
        }
        let e = (num / den).sqrt();
        assert!(e < 1e-5, "relative error {e}");
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
    fn dot_and_sum_match_float64_on_ragged_lengths() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-5, "n={n}");
            let want: f64 = a.iter().map(|x| f64::from(*x)).sum();
            assert!((f64::from(sum(&a)) - want).abs() < 1e-5, "n={n}");
        }
    }
}
