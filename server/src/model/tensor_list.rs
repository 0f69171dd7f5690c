//! Every tensor a Llama-family model has, by canonical (GGUF) name: what `lowbit quantize`
//! writes and `lowbit info` lists.

use super::config::LlamaConfig;

/// What a tensor of the model is: a weight matrix (`rows × cols`) or a norm vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Matrix { rows: usize, cols: usize },
    Vector { len: usize },
}

/// Every tensor a Llama-family model with this config has, by canonical (GGUF) name, in load
/// order. `tied` leaves out `output.weight`.
pub fn expected_tensors(c: &LlamaConfig, tied: bool) -> Vec<(String, TensorRole)> {
    let (h, q_dim, kv_dim) = (
        c.hidden_size,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
    );
    let m = |rows, cols| TensorRole::Matrix { rows, cols };
    let v = |len| TensorRole::Vector { len };
    let mut out = vec![("token_embd.weight".to_string(), m(c.vocab_size, h))];
    if !tied {
        out.push(("output.weight".into(), m(c.vocab_size, h)));
    }
    for i in 0..c.n_layers {
        let n = |part: &str| format!("blk.{i}.{part}.weight");
        out.extend([
            (n("attn_norm"), v(h)),
            (n("attn_q"), m(q_dim, h)),
            (n("attn_k"), m(kv_dim, h)),
            (n("attn_v"), m(kv_dim, h)),
        ]);
        if c.attention_bias {
            let b = |part: &str| format!("blk.{i}.{part}.bias");
            out.extend([
                (b("attn_q"), v(q_dim)),
                (b("attn_k"), v(kv_dim)),
                (b("attn_v"), v(kv_dim)),
            ]);
        }
        if c.qk_norm {
            out.extend([
                (n("attn_q_norm"), v(c.head_dim)),
                (n("attn_k_norm"), v(c.head_dim)),
            ]);
        }
        out.extend([
            (n("attn_output"), m(h, q_dim)),
            (n("ffn_norm"), v(h)),
            (n("ffn_gate"), m(c.ffn_size, h)),
            (n("ffn_up"), m(c.ffn_size, h)),
            (n("ffn_down"), m(h, c.ffn_size)),
        ]);
        if c.gemma.post_norms {
            out.extend([(n("post_attention_norm"), v(h)), (n("post_ffw_norm"), v(h))]);
        }
    }
    out.push(("output_norm.weight".into(), v(h)));
    out
}
