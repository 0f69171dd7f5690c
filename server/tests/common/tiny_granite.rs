//! What the tiny Granite model adds to [`TinyModel`](super::tiny_model::TinyModel): its four
//! scales, chosen far from 1 so that each shows (Granite 3.x 8B: embeddings × 12, scores ×
//! 1/128, residual branches × 0.22, logits ÷ 16).

use lowbit::model::gguf::{GgufWriter, MetaValue};

pub const GRANITE_EMBEDDING_SCALE: f64 = 2.5;
pub const GRANITE_ATTENTION_SCALE: f64 = 0.1;
pub const GRANITE_RESIDUAL_SCALE: f64 = 0.5;
pub const GRANITE_LOGIT_SCALE: f64 = 3.0;

/// The GGUF keys llama.cpp's converter writes (`arch`: `granite` or `granitemoe`).
pub fn granite_gguf_meta(w: &mut GgufWriter, arch: &str) {
    let key = |k: &str| format!("{arch}.{k}");
    w.meta(
        &key("embedding_scale"),
        MetaValue::F32(GRANITE_EMBEDDING_SCALE as f32),
    )
    .meta(
        &key("attention.scale"),
        MetaValue::F32(GRANITE_ATTENTION_SCALE as f32),
    )
    .meta(
        &key("residual_scale"),
        MetaValue::F32(GRANITE_RESIDUAL_SCALE as f32),
    )
    .meta(
        &key("logit_scale"),
        MetaValue::F32(GRANITE_LOGIT_SCALE as f32),
    );
}

/// `GraniteConfig`'s multipliers.
pub fn granite_hf_config(config: &mut serde_json::Value) {
    config["embedding_multiplier"] = GRANITE_EMBEDDING_SCALE.into();
    config["attention_multiplier"] = GRANITE_ATTENTION_SCALE.into();
    config["residual_multiplier"] = GRANITE_RESIDUAL_SCALE.into();
    config["logits_scaling"] = GRANITE_LOGIT_SCALE.into();
}
