//! The architectures lowbit runs, as GGUF files and Hugging Face configs name them.

use lowbit_gpu::RopeStyle;

/// The architectures lowbit runs: Llama's block, with the variations each one adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Architecture {
    /// Llama, Mistral (no sliding window): RoPE pairing as stored.
    Llama,
    /// Qwen2 / Qwen2.5: biased Q/K/V.
    Qwen2,
    /// Qwen3: per-head Q/K norms.
    Qwen3,
    /// Gemma: GeGLU, embeddings scaled by `√hidden`, wide heads.
    Gemma,
    /// Gemma 2: Gemma with post-norms, soft caps and sliding-window layers (every other).
    Gemma2,
    /// Gemma 3: Gemma 2 without soft caps, with per-head Q/K norms, five sliding layers to
    /// one global, and a RoPE base of their own for the sliding layers.
    Gemma3,
    /// Phi-3, Phi-3.5, Phi-4, Phi-4-mini: Q/K/V and gate/up stored fused (split on load),
    /// LongRoPE, partial rotary (Phi-4-mini), a sliding window on every layer (Phi-3-mini).
    Phi3,
    /// IBM Granite 3.x (dense): Llama's block with scaled embeddings, scores, residual
    /// branches and logits.
    Granite,
    /// SmolLM3: Llama's block, every fourth layer without RoPE.
    SmolLm3,
    /// Granite 3.x MoE (and its shared-expert variant): Granite with a mixture of experts.
    GraniteMoe,
    /// OLMo 2 and OLMo 3: norms after attention and the MLP only, Q/K norms over the whole
    /// projections; OLMo 3 slides three layers of four.
    Olmo2,
    /// OLMoE: Llama's block with OLMo's Q/K norms over whole projections and a mixture of
    /// experts (their softmax weights not renormalized).
    Olmoe,
    /// Mixtral: Llama's block with a mixture of experts (GGUF files name it `llama`).
    Mixtral,
    /// Qwen2-MoE: Qwen2's block with a mixture of experts and a shared expert.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3's block with a mixture of experts.
    Qwen3Moe,
    /// gpt-oss: a mixture of experts with biases and a clamped SwiGLU, attention sinks, a
    /// biased output projection, every other layer sliding (128 positions).
    GptOss,
}

impl Architecture {
    /// The architecture a GGUF `general.architecture` or an HF `model_type` names.
    pub(super) fn named(name: &str) -> Option<Self> {
        Some(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma" => Self::Gemma,
            "gemma2" => Self::Gemma2,
            // Hugging Face's text-only Gemma 3 (1B, and the text half of the others).
            "gemma3" | "gemma3_text" => Self::Gemma3,
            "phi3" => Self::Phi3,
            "granite" => Self::Granite,
            "granitemoe" | "granitemoeshared" => Self::GraniteMoe,
            "olmo2" | "olmo3" => Self::Olmo2,
            "olmoe" => Self::Olmoe,
            "smollm3" => Self::SmolLm3,
            "mixtral" => Self::Mixtral,
            "qwen2moe" | "qwen2_moe" => Self::Qwen2Moe,
            "qwen3moe" | "qwen3_moe" => Self::Qwen3Moe,
            // GGUF's name; Hugging Face's (`gpt_oss`) is refused by `from_hf_json`.
            "gpt-oss" | "gpt_oss" => Self::GptOss,
            _ => return None,
        })
    }

    pub(super) const SUPPORTED: &'static str =
        "llama, mistral, mixtral, qwen2, qwen2moe, qwen3, qwen3moe, gemma, gemma2, gemma3, phi3, \
         granite, granitemoe, olmo2, olmo3, olmoe, smollm3, gpt-oss (GGUF)";

    /// Granite's scales (dense and MoE).
    pub(super) fn is_granite(self) -> bool {
        matches!(self, Self::Granite | Self::GraniteMoe)
    }

    /// Per-head Q/K norms (Qwen3, Qwen3-MoE, Gemma 3).
    pub(super) fn has_qk_norm(self) -> bool {
        matches!(
            self,
            Self::Qwen3 | Self::Qwen3Moe | Self::Gemma3 | Self::Olmo2 | Self::Olmoe
        )
    }

    pub(super) fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma | Self::Gemma2 | Self::Gemma3)
    }

    /// How a GGUF file of this architecture pairs RoPE's dimensions: llama.cpp's converter
    /// permutes Llama's Q/K rows to rotate adjacent pairs, and leaves Qwen's as Hugging Face
    /// stores them (llama.cpp's NEOX rope type).
    pub(super) fn gguf_rope_style(self) -> RopeStyle {
        match self {
            // Granite's converter is Llama's.
            Self::Llama | Self::Mixtral | Self::Granite | Self::GraniteMoe | Self::SmolLm3 => {
                RopeStyle::Interleaved
            }
            Self::Qwen2
            | Self::Qwen2Moe
            | Self::Qwen3
            | Self::Qwen3Moe
            | Self::Gemma
            | Self::Gemma2
            | Self::Gemma3
            | Self::Olmo2
            | Self::Olmoe
            | Self::GptOss
            | Self::Phi3 => RopeStyle::HalfSplit,
        }
    }
}
