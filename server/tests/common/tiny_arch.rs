//! Which member of the Llama family a tiny test model is, and what each one's block has.

/// Which member of the Llama family the tiny model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Llama,
    /// Q/K/V biases, RoPE on unpermuted weights in GGUF too.
    Qwen2,
    /// Per-head Q/K RMSNorms, heads twice as wide as `hidden / heads`.
    Qwen3,
    /// GeGLU, embeddings scaled by `√hidden`.
    Gemma,
    /// Gemma with post-norms, soft caps ([`GEMMA2_ATTN_SOFTCAP`], [`GEMMA2_FINAL_SOFTCAP`])
    /// and every other layer (the even ones) in a window of `TINY_WINDOW`.
    Gemma2,
    /// Gemma 2 without soft caps, with Qwen3's head norms and wide heads; five layers of six in
    /// the window, with RoPE base [`GEMMA3_SLIDING_THETA`] (llama.cpp's defaults: the file
    /// names neither).
    Gemma3,
    /// Phi-3/Phi-4-mini: Q/K/V and gate/up fused in the files, 12 of 16 head dimensions
    /// rotated, LongRoPE (`tiny_phi.rs`).
    Phi3,
    /// Granite: Llama with scaled embeddings, scores, residual branches and logits
    /// (`tiny_granite.rs`).
    Granite,
    /// SmolLM3: Llama with every fourth layer attending without RoPE.
    SmolLm3,
    /// Mixtral: Llama with a mixture of experts (`tiny_moe.rs`).
    Mixtral,
    /// Qwen2-MoE: Qwen2 with a mixture of experts and a shared expert.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3 with a mixture of experts.
    Qwen3Moe,
    /// Granite MoE Shared: Granite with a mixture of experts and an ungated shared expert.
    GraniteMoe,
    /// OLMo 3 (`tiny_olmo.rs`): norms after the sub-blocks only, Q/K norms over the whole
    /// projections, three layers of four in a window of `TINY_WINDOW` with plain RoPE,
    /// YaRN on the fourth.
    Olmo3,
    /// OLMoE: Llama with OLMo's whole-projection Q/K norms and a mixture of experts whose
    /// weights are not renormalized (as many KV heads as heads, as llama.cpp expects).
    Olmoe,
    /// gpt-oss (`tiny_gpt_oss.rs`): Qwen2's biased Q/K/V, attention sinks, a biased output
    /// projection, even layers in a window of `TINY_WINDOW`, YaRN everywhere, and experts
    /// in MXFP4 with biases, a biased router and the clamped SwiGLU.
    GptOss,
}

impl TinyArch {
    pub fn name(self) -> &'static str {
        match self {
            TinyArch::Llama => "llama",
            TinyArch::Qwen2 => "qwen2",
            TinyArch::Qwen3 => "qwen3",
            TinyArch::Gemma => "gemma",
            TinyArch::Gemma2 => "gemma2",
            TinyArch::Gemma3 => "gemma3",
            TinyArch::Phi3 => "phi3",
            TinyArch::Granite => "granite",
            TinyArch::SmolLm3 => "smollm3",
            TinyArch::Mixtral => "mixtral",
            TinyArch::Qwen2Moe => "qwen2_moe",
            TinyArch::Qwen3Moe => "qwen3_moe",
            TinyArch::GraniteMoe => "granitemoeshared",
            TinyArch::Olmo3 => "olmo3",
            TinyArch::Olmoe => "olmoe",
            TinyArch::GptOss => "gpt_oss",
        }
    }

    /// The GGUF `general.architecture`: llama.cpp's converter writes Mixtral as `llama`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            TinyArch::Mixtral => "llama",
            TinyArch::Qwen2Moe => "qwen2moe",
            TinyArch::Qwen3Moe => "qwen3moe",
            TinyArch::GraniteMoe => "granitemoe",
            // llama.cpp's converter writes OLMo 3 as OLMo 2 with a window.
            TinyArch::Olmo3 => "olmo2",
            TinyArch::GptOss => "gpt-oss",
            other => other.name(),
        }
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, TinyArch::Gemma | TinyArch::Gemma2 | TinyArch::Gemma3)
    }

    /// Norms after each sub-block (Gemma 2/3).
    pub fn post_norms(self) -> bool {
        matches!(self, TinyArch::Gemma2 | TinyArch::Gemma3 | TinyArch::Olmo3)
    }

    /// Q/K norms over each row's whole projection (OLMo 3, OLMoE).
    pub fn qk_norm_whole(self) -> bool {
        matches!(self, TinyArch::Olmo3 | TinyArch::Olmoe)
    }

    /// The name of the MLP's pre-norm: llama.cpp's gpt-oss files call it
    /// `post_attention_norm`.
    pub fn ffn_norm_part(self) -> &'static str {
        if self == TinyArch::GptOss {
            "post_attention_norm"
        } else {
            "ffn_norm"
        }
    }

    /// Norms before attention and the MLP (all but OLMo).
    pub fn pre_norms(self) -> bool {
        self != TinyArch::Olmo3
    }

    /// Per-head Q/K norms (Qwen3, Qwen3-MoE, Gemma 3).
    pub fn qk_norm(self) -> bool {
        matches!(
            self,
            TinyArch::Qwen3
                | TinyArch::Qwen3Moe
                | TinyArch::Gemma3
                | TinyArch::Olmo3
                | TinyArch::Olmoe
        )
    }

    /// Q/K/V biases (Qwen2, Qwen2-MoE).
    pub fn qkv_bias(self) -> bool {
        matches!(
            self,
            TinyArch::Qwen2 | TinyArch::Qwen2Moe | TinyArch::GptOss
        )
    }

    /// Whether layer `layer` attends without RoPE (SmolLM3's every fourth).
    pub fn is_nope(self, layer: usize) -> bool {
        self == TinyArch::SmolLm3 && (layer + 1).is_multiple_of(4)
    }

    /// Whether layer `layer` attends within `TINY_WINDOW` (llama.cpp's default patterns:
    /// every even layer of Gemma 2, all but every sixth of Gemma 3).
    pub fn is_sliding(self, layer: usize) -> bool {
        match self {
            TinyArch::Gemma2 => layer.is_multiple_of(2),
            TinyArch::Gemma3 => layer % 6 < 5,
            TinyArch::Olmo3 => layer % 4 < 3,
            TinyArch::GptOss => layer.is_multiple_of(2),
            _ => false,
        }
    }
}
