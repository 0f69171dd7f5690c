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

    // Each (token, head) output is independent: they run in parallel, so that a single decode
    // row still spreads its heads over the threads.
    let mut row_owner = vec![None; rows];
    for (i, s) in seqs.iter().enumerate() {
        for t in 0..s.len {
            row_owner[s.row_start + t] = Some((i, s.pos_start + t));
        }
    }
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let mut out = vec![0.0f32; rows * q_dim];
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
            *sc = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            max = max.max(*sc);
        }
        let mut sum = 0.0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        for (j, sc) in scores.iter().enumerate() {
            let p = sc / sum;
            let vj = &cache.v[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
            for (o, x) in oh.iter_mut().zip(vj) {
                *o += p * x;
            }
        }
    });
    Ok(out)
}
