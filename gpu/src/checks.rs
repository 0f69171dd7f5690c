//! Operand checks every backend makes before it runs an operation, in one place so that the
//! backends refuse exactly the same inputs with the same messages.

use crate::backend::{AttentionShape, Rope, ScatteredRows, SeqSpan};
use crate::error::{shape_err, Result};
use crate::kv::{check_table, KvPoolSpec};
use crate::tensor::Tensor;

/// `a` and `b` have the same shape (element-wise operations).
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.rows() != b.rows() || a.cols() != b.cols() {
        return Err(shape_err(
            op,
            format!("{}x{} vs {}x{}", a.rows(), a.cols(), b.rows(), b.cols()),
        ));
    }
    Ok(())
}

/// Each part of [`crate::Backend::add_scattered`] has one row index and one weight per row,
/// rows as long as `base`'s, and distinct target rows within `base`.
pub(crate) fn scattered(base: &Tensor, parts: &[ScatteredRows<'_>]) -> Result<()> {
    let mut seen = vec![usize::MAX; base.rows()];
    for (p, part) in parts.iter().enumerate() {
        if part.x.rows() != part.rows.len()
            || part.weights.len() != part.rows.len()
            || part.x.cols() != base.cols()
        {
            return Err(shape_err(
                "add_scattered",
                format!(
                    "part {p}: {}x{} with {} rows and {} weights onto rows of {}",
                    part.x.rows(),
                    part.x.cols(),
                    part.rows.len(),
                    part.weights.len(),
                    base.cols()
                ),
            ));
        }
        for &r in part.rows {
            match seen.get_mut(r) {
                None => {
                    return Err(shape_err(
                        "add_scattered",
                        format!("part {p}: row {r} of {}", base.rows()),
                    ))
                }
                Some(last) if *last == p => {
                    return Err(shape_err(
                        "add_scattered",
                        format!("part {p}: row {r} twice"),
                    ))
                }
                Some(last) => *last = p,
            }
        }
    }
    Ok(())
}

/// A norm weight of `1 × cols` for rows of `x`.
pub(crate) fn norm_weight(x: &Tensor, weight: &Tensor) -> Result<()> {
    row_vector("rms_norm", "weight", x, weight)
}

/// A bias of `1 × cols` for rows of `x`.
pub(crate) fn bias(x: &Tensor, bias: &Tensor) -> Result<()> {
    row_vector("add_bias", "bias", x, bias)
}

/// `v` is one row as long as the rows of `x`.
fn row_vector(op: &'static str, what: &str, x: &Tensor, v: &Tensor) -> Result<()> {
    if v.cols() != x.cols() || v.rows() != 1 {
        return Err(shape_err(
            op,
            format!("{what} {}x{} for rows of {}", v.rows(), v.cols(), x.cols()),
        ));
    }
    Ok(())
}

/// One position per row, and rows that split into whole heads of `rope.head_dim`.
pub(crate) fn rope(x: &Tensor, positions: &[u32], rope: &Rope) -> Result<()> {
    let cols = x.cols();
    if positions.len() != x.rows()
        || rope.head_dim == 0
        || !cols.is_multiple_of(rope.head_dim)
        || rope.inv_freq.is_empty()
        || rope.inv_freq.len() * 2 > rope.head_dim
    {
        return Err(shape_err(
            "rope",
            format!(
                "{} positions, {}x{cols}, head_dim {}, {} rotated pairs",
                positions.len(),
                x.rows(),
                rope.head_dim,
                rope.inv_freq.len()
            ),
        ));
    }
    Ok(())
}

/// Queries, keys and values that fit `shape`, a layer and head layout that fit the pool, and
/// spans inside the batch whose block tables cover their positions.
pub(crate) fn attention(
    layer: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    seqs: &[SeqSpan<'_>],
    spec: &KvPoolSpec,
    shape: AttentionShape,
) -> Result<()> {
    let rows = q.rows();
    if q.cols() != shape.q_dim()
        || k.cols() != shape.kv_dim()
        || v.cols() != shape.kv_dim()
        || k.rows() != rows
        || v.rows() != rows
    {
        return Err(shape_err(
            "attention",
            format!(
                "q {}x{}, k {}x{}, v {}x{} for {shape:?}",
                q.rows(),
                q.cols(),
                k.rows(),
                k.cols(),
                v.rows(),
                v.cols()
            ),
        ));
    }
    if shape.n_kv_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads) {
        return Err(shape_err(
            "attention",
            format!("{shape:?}: heads must be a multiple of KV heads"),
        ));
    }
    if let Some(sinks) = shape.sinks {
        if sinks.rows() * sinks.cols() != shape.n_heads {
            return Err(shape_err(
                "attention",
                format!(
                    "{}x{} sinks for {} heads",
                    sinks.rows(),
                    sinks.cols(),
                    shape.n_heads
                ),
            ));
        }
    }
    if shape.kv_dim() != spec.kv_dim || shape.head_dim != spec.head_dim || layer >= spec.layers {
        return Err(shape_err(
            "attention",
            format!("layer {layer} of {shape:?} does not fit the pool {spec:?}"),
        ));
    }
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
        check_table(
            spec,
            s.blocks,
            s.pos_start + s.len,
            shape.first_seen(s.pos_start),
        )?;
    }
    Ok(())
}
