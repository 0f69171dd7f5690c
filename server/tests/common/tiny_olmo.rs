//! What the tiny OLMo 3 adds to [`TinyModel`]: its window's GGUF keys (llama.cpp's
//! converter writes OLMo 3 as `olmo2` with one sliding flag per layer) and `config.json` keys
//! (`layer_types`), and YaRN over its global layers (the sliding ones keep plain RoPE, as
//! both llama.cpp and Hugging Face run them).

use super::tiny_model::{TinyModel, TINY_WINDOW};
use super::tiny_moe::{YARN_FACTOR, YARN_ORIGINAL_CONTEXT};
use lowbit::model::gguf::{GgufWriter, MetaValue};

impl TinyModel {
    pub(super) fn olmo_gguf_meta(&self, w: &mut GgufWriter) {
        let flags = (0..self.cfg.layers)
            .map(|l| MetaValue::Bool(self.cfg.arch.is_sliding(l)))
            .collect();
        w.meta(
            "olmo2.attention.sliding_window",
            MetaValue::U32(TINY_WINDOW as u32),
        )
        .meta(
            "olmo2.attention.sliding_window_pattern",
            MetaValue::Array(flags),
        )
        .meta("olmo2.rope.scaling.type", MetaValue::String("yarn".into()))
        .meta(
            "olmo2.rope.scaling.factor",
            MetaValue::F32(YARN_FACTOR as f32),
        )
        .meta(
            "olmo2.rope.scaling.original_context_length",
            MetaValue::U32(YARN_ORIGINAL_CONTEXT as u32),
        );
    }

    pub(super) fn olmo_hf_config(&self, config: &mut serde_json::Value) {
        config["sliding_window"] = TINY_WINDOW.into();
        config["layer_types"] = self.hf_layer_types().into();
        config["rope_scaling"] = serde_json::json!({
            "rope_type": "yarn",
            "factor": YARN_FACTOR,
            "original_max_position_embeddings": YARN_ORIGINAL_CONTEXT,
        });
    }
}
