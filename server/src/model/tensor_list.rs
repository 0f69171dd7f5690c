//! Every tensor a Llama-family model has, by canonical (GGUF) name: what `lowbit quantize`
//! writes and `lowbit info` lists.

use super::config::LlamaConfig;

/// What a tensor of the model is: a weight matrix (`rows × cols`) or a norm vector.
///
/// A mixture of experts' tensors are `blk.N.ffn_gate_inp` (the router, one row per expert),
/// `blk.N.ffn_{gate,up,down}.E` (expert `E`'s matrices: llama.cpp's names for experts stored
/// apart; its files stack them in `blk.N.ffn_{gate,up,down}_exps`) and the shared expert
/// `blk.N.ffn_{gate,up,down}_shexp` (Qwen2-MoE, Granite MoE Shared) with, where gated
/// (Qwen2-MoE), its gate row `blk.N.ffn_gate_inp_shexp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Matrix { rows: usize, cols: usize },
    Vector { len: usize },
}

/// The lengths of the query and key norm weights: a head's (Qwen3, Gemma 3), or each row's
/// whole projection (OLMo 2/3).
pub(super) fn qk_norm_lens(c: &LlamaConfig) -> (usize, usize) {
    if c.qk_norm_whole {
        (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim)
    } else {
        (c.head_dim, c.head_dim)
    }
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
        if !c.no_pre_norms {
            out.push((n("attn_norm"), v(h)));
        }
        out.extend([
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
            let (q_len, k_len) = qk_norm_lens(c);
            out.extend([(n("attn_q_norm"), v(q_len)), (n("attn_k_norm"), v(k_len))]);
        }
        out.push((n("attn_output"), m(h, q_dim)));
        if c.gpt_oss {
            out.push((format!("blk.{i}.attn_output.bias"), v(h)));
            out.push((n("attn_sinks"), v(c.n_heads)));
        }
        if !c.no_pre_norms {
            out.push((n(c.ffn_norm_part()), v(h)));
        }
        match &c.moe {
            None => out.extend([
                (n("ffn_gate"), m(c.ffn_size, h)),
                (n("ffn_up"), m(c.ffn_size, h)),
                (n("ffn_down"), m(h, c.ffn_size)),
            ]),
            Some(moe) => {
                let f = moe.expert_ffn_size;
                out.push((n("ffn_gate_inp"), m(moe.experts, h)));
                if c.gpt_oss {
                    out.push((format!("blk.{i}.ffn_gate_inp.bias"), v(moe.experts)));
                }
                for e in 0..moe.experts {
                    let x = |part: &str| format!("blk.{i}.{part}.{e}.weight");
                    let b = |part: &str| format!("blk.{i}.{part}.{e}.bias");
                    if c.gpt_oss {
                        out.extend([
                            (b("ffn_gate"), v(f)),
                            (b("ffn_up"), v(f)),
                            (b("ffn_down"), v(h)),
                        ]);
                    }
                    out.extend([
                        (x("ffn_gate"), m(f, h)),
                        (x("ffn_up"), m(f, h)),
                        (x("ffn_down"), m(h, f)),
                    ]);
                }
                let s = moe.shared_expert_ffn_size;
                if s > 0 && moe.shared_expert_gated {
                    out.push((n("ffn_gate_inp_shexp"), m(1, h)));
                }
                if s > 0 {
                    out.extend([
                        (n("ffn_gate_shexp"), m(s, h)),
                        (n("ffn_up_shexp"), m(s, h)),
                        (n("ffn_down_shexp"), m(h, s)),
                    ]);
                }
            }
        }
        if c.gemma.post_norms {
            out.extend([(n("post_attention_norm"), v(h)), (n("post_ffw_norm"), v(h))]);
        }
    }
    out.push(("output_norm.weight".into(), v(h)));
    out
}
