//! A mixture of experts in place of each block's MLP ([`MoeConfig`]), read from a GGUF file's
//! metadata (as llama.cpp reads it) or a Hugging Face `config.json`: Mixtral (GGUF
//! architecture `llama` with experts), Qwen2-MoE (with a gated shared expert), Qwen3-MoE,
//! Granite 3 MoE (with or without an ungated shared expert) and OLMoE.

use super::config::Architecture;
use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};
use serde::{Deserialize, Serialize};

/// Most experts a layer may have (llama.cpp's `LLAMA_MAX_EXPERTS`): a file claiming more is
/// refused before its expert names are listed.
pub const MAX_EXPERTS: usize = 1024;

/// Each token's MLP is the weighted sum of the `experts_used` experts (each a SwiGLU MLP)
/// its router ranks highest: `softmax(router · x)`, the top `experts_used` kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Experts per layer.
    pub experts: usize,
    /// Experts each token runs.
    pub experts_used: usize,
    /// Each expert's intermediate size.
    pub expert_ffn_size: usize,
    /// The chosen experts' probabilities are renormalized to sum to one (Mixtral,
    /// Qwen3-MoE); otherwise each weighs its probability among all experts (Qwen2-MoE).
    pub normalize: bool,
    /// Intermediate size of the expert every token runs besides the routed ones (Qwen2-MoE,
    /// Granite MoE Shared); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_expert_ffn_size: usize,
    /// The shared expert's output is scaled by `sigmoid(gate · x)` of its own gate row
    /// (Qwen2-MoE); otherwise added as is (Granite).
    #[serde(default)]
    pub shared_expert_gated: bool,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl MoeConfig {
    /// Checks the numbers fit together, naming the offending field.
    pub(super) fn validate(&self, path: &str, max: usize) -> Result<()> {
        for (name, v, max) in [
            ("expert_count", self.experts, MAX_EXPERTS),
            ("expert_used_count", self.experts_used, MAX_EXPERTS),
            ("expert_feed_forward_length", self.expert_ffn_size, max),
        ] {
            if v == 0 || v > max {
                return Err(ModelError::field(
                    path,
                    name,
                    format!("{v} is not between 1 and {max}"),
                ));
            }
        }
        if self.experts_used > self.experts {
            return Err(ModelError::field(
                path,
                "expert_used_count",
                format!("{} experts used of {}", self.experts_used, self.experts),
            ));
        }
        if self.shared_expert_ffn_size > max {
            return Err(ModelError::field(
                path,
                "expert_shared_feed_forward_length",
                format!("{} is absurd", self.shared_expert_ffn_size),
            ));
        }
        Ok(())
    }

    /// From GGUF `{arch}.expert_*` keys; `None` for a dense model. `ffn` is the file's
    /// `feed_forward_length` (Mixtral's expert size; Qwen2-MoE's shared expert's default).
    pub(super) fn from_gguf(
        arch: Architecture,
        gguf: &GgufFile,
        key: &dyn Fn(&str) -> String,
        ffn: usize,
    ) -> Result<Option<Self>> {
        let path = gguf.path().display().to_string();
        let uint = |k: &str| -> Result<Option<usize>> {
            let full = key(k);
            match gguf.get(&full) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) => Ok(Some(n as usize)),
                    // llama.cpp accepts one value per layer; lowbit one for all.
                    None => match v.as_array().map(|a| a.iter().map(MetaValue::as_u64)) {
                        Some(mut values) => {
                            let first = values.next().flatten();
                            match first {
                                Some(f) if values.all(|v| v == Some(f)) => Ok(Some(f as usize)),
                                _ => Err(ModelError::field(
                                    &path,
                                    &full,
                                    "different values per layer are not supported",
                                )),
                            }
                        }
                        None => Err(ModelError::field(&path, &full, "not an unsigned integer")),
                    },
                },
            }
        };
        let experts = uint("expert_count")?.unwrap_or(0);
        let is_moe_arch = matches!(
            arch,
            Architecture::Qwen2Moe
                | Architecture::Qwen3Moe
                | Architecture::GraniteMoe
                | Architecture::Olmoe
                | Architecture::GptOss
        );
        if experts == 0 && !is_moe_arch {
            return Ok(None);
        }
        if !matches!(arch, Architecture::Llama | Architecture::Mixtral) && !is_moe_arch {
            return Err(ModelError::field(
                &path,
                &key("expert_count"),
                "experts in this architecture are not supported (llama/Mixtral, qwen2moe, \
                 qwen3moe, granitemoe, olmoe and gpt-oss are)",
            ));
        }
        if uint("expert_group_count")?.is_some_and(|g| g > 1) {
            return Err(ModelError::field(
                &path,
                &key("expert_group_count"),
                "grouped expert selection is not supported",
            ));
        }
        // llama.cpp's gating function 1 is the softmax; gpt-oss's graph fixes its own (the
        // softmax of the chosen experts' scores: the renormalized softmax).
        if arch != Architecture::GptOss && uint("expert_gating_func")?.is_some_and(|g| g != 1) {
            return Err(ModelError::field(
                &path,
                &key("expert_gating_func"),
                "only softmax gating is supported",
            ));
        }
        if let Some(s) = gguf
            .get(&key("expert_weights_scale"))
            .and_then(MetaValue::as_f64)
        {
            if s != 0.0 && s != 1.0 {
                return Err(ModelError::field(
                    &path,
                    &key("expert_weights_scale"),
                    format!("{s}: scaled expert weights are not supported"),
                ));
            }
        }
        let shared = match arch {
            Architecture::Qwen2Moe => uint("expert_shared_feed_forward_length")?.unwrap_or(ffn),
            Architecture::GraniteMoe => uint("expert_shared_feed_forward_length")?.unwrap_or(0),
            _ => 0,
        };
        Ok(Some(Self {
            experts,
            experts_used: uint("expert_used_count")?.unwrap_or(0),
            // llama.cpp's Mixtral and Granite MoE experts are `feed_forward_length` wide;
            // gpt-oss's file must say.
            expert_ffn_size: match arch {
                Architecture::GptOss => uint("expert_feed_forward_length")?.ok_or_else(|| {
                    ModelError::field(&path, &key("expert_feed_forward_length"), "missing")
                })?,
                // Qwen's: llama.cpp's fallback where the key is missing.
                Architecture::Qwen2Moe | Architecture::Qwen3Moe => {
                    match uint("expert_feed_forward_length")?.filter(|&f| f != 0) {
                        Some(f) => f,
                        None => ffn / uint("expert_used_count")?.unwrap_or(1).max(1),
                    }
                }
                _ => ffn,
            },
            // As llama.cpp's graphs: Qwen2-MoE and OLMoE keep the softmax over all experts.
            normalize: !matches!(arch, Architecture::Qwen2Moe | Architecture::Olmoe),
            shared_expert_ffn_size: shared,
            shared_expert_gated: arch == Architecture::Qwen2Moe,
        }))
    }

    /// From a Hugging Face `config.json` (`MixtralConfig`, `Qwen2MoeConfig`,
    /// `Qwen3MoeConfig`, `GraniteMoeConfig`, `GraniteMoeSharedConfig`); `None` for the dense
    /// architectures.
    pub(super) fn from_hf_json(
        arch: Architecture,
        path: &str,
        json: &serde_json::Value,
    ) -> Result<Option<Self>> {
        let uint = |k: &str| -> Result<usize> {
            json.get(k)
                .ok_or_else(|| ModelError::field(path, k, "missing"))?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::field(path, k, "not an unsigned integer"))
        };
        match arch {
            // Granite MoE's top k of the scores, softmaxed: the renormalized softmax.
            Architecture::Mixtral | Architecture::GraniteMoe => Ok(Some(Self {
                experts: uint("num_local_experts")?,
                experts_used: uint("num_experts_per_tok")?,
                expert_ffn_size: uint("intermediate_size")?,
                normalize: true,
                shared_expert_ffn_size: json
                    .get("shared_intermediate_size")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0) as usize,
                shared_expert_gated: false,
            })),
            Architecture::Qwen2Moe | Architecture::Qwen3Moe | Architecture::Olmoe => {
                let step = json
                    .get("decoder_sparse_step")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1);
                let dense_layers = json
                    .get("mlp_only_layers")
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| !a.is_empty());
                if step != 1 || dense_layers {
                    return Err(ModelError::field(
                        path,
                        if dense_layers {
                            "mlp_only_layers"
                        } else {
                            "decoder_sparse_step"
                        },
                        "dense layers between the expert layers are not supported",
                    ));
                }
                Ok(Some(Self {
                    experts: uint("num_experts")?,
                    experts_used: uint("num_experts_per_tok")?,
                    // OLMoE's experts are `intermediate_size` wide.
                    expert_ffn_size: uint(if arch == Architecture::Olmoe {
                        "intermediate_size"
                    } else {
                        "moe_intermediate_size"
                    })?,
                    // Transformers' default is false; the released models set it.
                    normalize: json
                        .get("norm_topk_prob")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    shared_expert_ffn_size: if arch == Architecture::Qwen2Moe {
                        uint("shared_expert_intermediate_size")?
                    } else {
                        0
                    },
                    shared_expert_gated: arch == Architecture::Qwen2Moe,
                }))
            }
            _ => Ok(None),
        }
    }
}
