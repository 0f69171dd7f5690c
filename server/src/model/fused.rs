//! Fused projections. Phi-3's files store Q, K and V as one matrix (`blk.N.attn_qkv`, Hugging
//! Face `qkv_proj`) and gate and up as one (`blk.N.ffn_up` of twice the rows in GGUF,
//! `gate_up_proj` in Hugging Face, gate first). A model source splits them by rows on load —
//! every format holds whole rows, so a part is a slice of the file's bytes — and the model,
//! quantization and `lowbit quantize` see the separate matrices of every other architecture
//! (which the loader fuses again for the backend where it pays).

use super::config::LlamaConfig;
use std::ops::Range;

/// The canonical name under which Hugging Face folders store gate and up fused (GGUF files
/// reuse `ffn_up`'s name for it).
pub(super) const GATE_UP: &str = "ffn_gate_up.weight";

/// Expert `expert`'s matrix `proj` (`ffn_gate`, `ffn_up`, `ffn_down`) of layer `layer`,
/// from its canonical name `blk.N.{proj}.E.weight`: GGUF files stack a layer's experts in
/// `blk.N.{proj}_exps.weight` (ggml dims `[cols, rows, experts]`), each expert a run of rows.
pub(super) fn expert_part(name: &str) -> Option<(usize, &'static str, usize)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, part) = rest.split_once('.')?;
    let (proj, expert) = part.split_once('.')?;
    let proj = match proj {
        "ffn_gate" => "ffn_gate",
        "ffn_up" => "ffn_up",
        "ffn_down" => "ffn_down",
        _ => return None,
    };
    Some((layer.parse().ok()?, proj, expert.parse().ok()?))
}

/// Layer, projection and expert of a canonical expert bias `blk.N.ffn_{gate,up,down}.E.bias`
/// (gpt-oss).
pub(super) fn expert_bias_part(name: &str) -> Option<(usize, &'static str, usize)> {
    expert_part(&format!("{}.weight", name.strip_suffix(".bias")?))
}

/// Which part of a fused tensor a canonical tensor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FusedPart {
    /// Part `rows` of `blk.N.attn_qkv.{weight,bias}` (for a bias: its values `rows`).
    Qkv { fused: String, rows: Range<usize> },
    /// Half `rows` of layer `layer`'s fused gate/up matrix.
    GateUp { layer: usize, gate: bool },
}

impl FusedPart {
    /// The part `name` would be if its layer's projections were fused (whether they are is
    /// the source's to say), given the model's sizes.
    pub(super) fn of(name: &str, c: &LlamaConfig) -> Option<Self> {
        let rest = name.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (proj, suffix) = part.split_once('.')?;
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let rows = match (proj, suffix) {
            ("attn_q", "weight" | "bias") => 0..q,
            ("attn_k", "weight" | "bias") => q..q + kv,
            ("attn_v", "weight" | "bias") => q + kv..q + 2 * kv,
            ("ffn_gate", "weight") => return Some(Self::GateUp { layer, gate: true }),
            ("ffn_up", "weight") => return Some(Self::GateUp { layer, gate: false }),
            _ => return None,
        };
        Some(Self::Qkv {
            fused: format!("blk.{layer}.attn_qkv.{suffix}"),
            rows,
        })
    }

    /// The rows of the fused gate/up matrix of `fused_rows` rows that this half is.
    pub(super) fn gate_up_rows(gate: bool, fused_rows: usize) -> Range<usize> {
        let half = fused_rows / 2;
        if gate {
            0..half
        } else {
            half..fused_rows
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q, K, V in that order with the model's widths; gate before up.
    #[test]
    fn parts_follow_the_fused_layouts() {
        let c = LlamaConfig {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 16,
            ..LlamaConfig::default()
        };
        let qkv = |name: &str| match FusedPart::of(name, &c) {
            Some(FusedPart::Qkv { fused, rows }) => (fused, rows),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            qkv("blk.3.attn_q.weight"),
            ("blk.3.attn_qkv.weight".into(), 0..128)
        );
        assert_eq!(
            qkv("blk.3.attn_k.weight"),
            ("blk.3.attn_qkv.weight".into(), 128..160)
        );
        assert_eq!(
            qkv("blk.3.attn_v.bias"),
            ("blk.3.attn_qkv.bias".into(), 160..192)
        );
        assert_eq!(
            FusedPart::of("blk.1.ffn_up.weight", &c),
            Some(FusedPart::GateUp {
                layer: 1,
                gate: false
            })
        );
        assert_eq!(FusedPart::gate_up_rows(true, 12), 0..6);
        assert_eq!(FusedPart::gate_up_rows(false, 12), 6..12);
        assert_eq!(FusedPart::of("blk.1.ffn_down.weight", &c), None);
        assert_eq!(FusedPart::of("output.weight", &c), None);
        assert_eq!(
            expert_part("blk.2.ffn_down.11.weight"),
            Some((2, "ffn_down", 11))
        );
        assert_eq!(expert_part("blk.2.ffn_down.weight"), None);
        assert_eq!(expert_part("blk.2.ffn_gate_inp.weight"), None);
        assert_eq!(expert_part("blk.2.attn_q.1.weight"), None);
    }
}
