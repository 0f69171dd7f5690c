//! Hyper-parameters of a Llama-family model, read from GGUF metadata or a Hugging Face
//! `config.json`.

use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};
use lowbit_gpu::{AttentionShape, RopeStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest size accepted for any hyper-parameter: far above any real model, low enough that a
/// corrupt value is refused before it is used to size an allocation.
const MAX_DIMENSION: usize = 1 << 24;

pub(super) use super::architecture::Architecture;
pub use super::moe_params::MoeConfig;
pub use super::rope_params::RopeScaling;

/// Everything the forward pass needs to know about a Llama-family model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    #[serde(
        serialize_with = "serialize_rope_style",
        deserialize_with = "deserialize_rope_style"
    )]
    pub rope_style: RopeStyle,
    /// Dimensions of each head RoPE rotates, where fewer than `head_dim` (partial rotary:
    /// Phi-4-mini's 96 of 128); the rest pass through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
    pub vocab_size: usize,
    /// The output head reuses the token embedding.
    pub tied_embeddings: bool,
    pub context_length: usize,
    /// The Q, K and V projections add a bias (Qwen2; a llama GGUF may carry them too).
    #[serde(default)]
    pub attention_bias: bool,
    /// Each query and key head is RMS-normed (its own weights, `head_dim` long) before RoPE
    /// (Qwen3, Gemma 3).
    #[serde(default)]
    pub qk_norm: bool,
    /// The Q/K norms span each row's whole projection, one weight per query or key value
    /// (OLMo 2/3), rather than each head.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm_whole: bool,
    /// No RMSNorm before attention and the MLP: only [`GemmaAdditions::post_norms`] after
    /// them (OLMo 2/3).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_pre_norms: bool,
    /// Layers that attend without RoPE ("NoPE": SmolLM3's every fourth); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nope_layers: Vec<bool>,
    /// A mixture of experts in place of every block's MLP (Mixtral, Qwen2-MoE, Qwen3-MoE,
    /// Granite 3 MoE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
    /// gpt-oss's block: a sink logit per query head (`blk.N.attn_sinks`), a biased attention
    /// output (`attn_output.bias`), a router and experts with biases, the clamped SwiGLU
    /// ([`Activation::SwigluOai`]); the MLP's pre-norm is `blk.N.post_attention_norm`
    /// (llama.cpp's name).
    #[serde(default, skip_serializing_if = "is_false")]
    pub gpt_oss: bool,
    /// What Gemma adds (nothing for the others).
    #[serde(flatten)]
    pub gemma: GemmaAdditions,
}

/// What Gemma adds to Llama's block, every field off for the architectures that do not use
/// them (read by `gemma_params.rs`; OLMo, Granite, Phi-3 and gpt-oss take some: their
/// windows, scales, activation). Flattened into [`LlamaConfig`]'s JSON: lowbit files keep their keys,
/// and a file written before them reads as all off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GemmaAdditions {
    /// The gated MLP's activation: SiLU (SwiGLU), GELU (GeGLU, Gemma) or gpt-oss's clamped
    /// SiLU.
    pub activation: Activation,
    /// The token embeddings are multiplied by this (Gemma: `√hidden`).
    pub embedding_scale: Option<f32>,
    /// Each sub-block's output is RMS-normed before its residual add (Gemma 2/3:
    /// `post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Multiplies query·key scores instead of `1 / sqrt(head_dim)` (Gemma 2/3 27B).
    pub attention_scale: Option<f32>,
    /// Soft cap of the scaled attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Soft cap of the logits: `cap · tanh(logit / cap)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// The sliding window of the layers `sliding_layers` marks (Gemma 2/3; Phi-3's every
    /// layer); 0 none.
    pub sliding_window: usize,
    /// Which layers attend within `sliding_window` (one flag per layer; empty: none).
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding layers, unscaled (Gemma 3: 10,000 where global layers take
    /// 1,000,000, scaled); `None`: the same RoPE as every layer.
    pub sliding_rope_theta: Option<f64>,
    /// Multiplies each sub-block's output before its residual add (Granite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale: Option<f32>,
    /// Divides the logits (Granite's `logits_scaling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_scale: Option<f32>,
}

/// A Llama block with nothing added; the sizes are zero (which [`LlamaConfig::validate`]
/// refuses), for `..LlamaConfig::default()` after the ones a model sets.
impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            hidden_size: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            head_dim: 0,
            ffn_size: 0,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::HalfSplit,
            rotary_dim: None,
            vocab_size: 0,
            tied_embeddings: false,
            context_length: 2048,
            attention_bias: false,
            qk_norm: false,
            nope_layers: Vec::new(),
            qk_norm_whole: false,
            no_pre_norms: false,
            moe: None,
            gpt_oss: false,
            gemma: GemmaAdditions::default(),
        }
    }
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `silu(gate) · up` (SwiGLU: Llama, Mistral, Qwen).
    #[default]
    Silu,
    /// `gelu(gate) · up`, GELU's tanh form (GeGLU: Gemma).
    GeluTanh,
    /// gpt-oss's SwiGLU, gate and up clamped at [`SWIGLU_OAI_LIMIT`]
    /// ([`lowbit_gpu::Backend::swiglu_oai`]).
    SwigluOai,
}

/// gpt-oss's SwiGLU clamp (llama.cpp's, and the released configs' `swiglu_limit`).
pub const SWIGLU_OAI_LIMIT: f32 = 7.0;

fn deserialize_rope_style<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<RopeStyle, D::Error> {
    match String::deserialize(d)?.as_str() {
        "interleaved" => Ok(RopeStyle::Interleaved),
        "half_split" => Ok(RopeStyle::HalfSplit),
        other => Err(serde::de::Error::custom(format!(
            "unknown rope_style '{other}'"
        ))),
    }
}

fn serialize_rope_style<S: serde::Serializer>(
    style: &RopeStyle,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match style {
        RopeStyle::Interleaved => "interleaved",
        RopeStyle::HalfSplit => "half_split",
    })
}

impl LlamaConfig {
    /// The attention head layout (a sliding-window layer's too: [`Self::layer_attention`]).
    pub fn attention_shape(&self) -> AttentionShape<'static> {
        let mut shape = AttentionShape::new(self.n_heads, self.n_kv_heads, self.head_dim);
        if let Some(scale) = self.gemma.attention_scale {
            shape.scale = scale;
        }
        shape.softcap = self.gemma.attn_softcap.unwrap_or(0.0);
        shape
    }

    /// Whether layer `layer` attends within a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.gemma.sliding_window > 0
            && self
                .gemma
                .sliding_layers
                .get(layer)
                .copied()
                .unwrap_or(false)
    }

    /// How layer `layer` attends: [`Self::attention_shape`], windowed where it slides.
    pub fn layer_attention(&self, layer: usize) -> AttentionShape<'static> {
        let mut shape = self.attention_shape();
        if self.is_sliding(layer) {
            shape.window = self.gemma.sliding_window;
        }
        shape
    }

    /// Whether the file uses anything beyond Llama's block with Qwen's additions (what
    /// format version 1 of lowbit's own files could describe).
    pub fn has_gemma_features(&self) -> bool {
        self.gemma.activation != Activation::Silu
            || self.gemma.embedding_scale.is_some()
            || self.gemma.post_norms
            || self.gemma.attention_scale.is_some()
            || self.gemma.attn_softcap.is_some()
            || self.gemma.final_softcap.is_some()
            || self.gemma.sliding_window > 0
            || self.gemma.sliding_rope_theta.is_some()
    }

    /// Whether the model needs what lowbit's file format versions 1 and 2 could not
    /// describe: RoPE over part of each head or LongRoPE (Phi), residual or logit scales
    /// (Granite), layers without RoPE (SmolLM3).
    pub fn needs_format_3(&self) -> bool {
        self.rotary_dim.is_some()
            || matches!(self.rope_scaling, RopeScaling::LongRope { .. })
            || self.gemma.residual_scale.is_some()
            || self.gemma.logit_scale.is_some()
            || self.nope_layers.iter().any(|&n| n)
    }

    /// Whether the model needs what lowbit's file format version 3 could not describe: a
    /// mixture of experts, YaRN, OLMo's norms.
    pub fn needs_format_4(&self) -> bool {
        self.moe.is_some()
            || matches!(self.rope_scaling, RopeScaling::Yarn { .. })
            || self.qk_norm_whole
            || self.no_pre_norms
    }

    /// The name of each block's MLP pre-norm: llama.cpp's gpt-oss files call it
    /// `post_attention_norm` (it follows attention), the others `ffn_norm`.
    pub fn ffn_norm_part(&self) -> &'static str {
        if self.gpt_oss {
            "post_attention_norm"
        } else {
            "ffn_norm"
        }
    }

    /// Whether layer `layer` attends without RoPE.
    pub fn is_nope(&self, layer: usize) -> bool {
        self.nope_layers.get(layer).copied().unwrap_or(false)
    }

    /// Checks the numbers fit together, naming the offending field.
    pub(crate) fn validate(self, path: &Path) -> Result<Self> {
        let p = path.display();
        let positive = [
            ("hidden_size", self.hidden_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_size", self.ffn_size),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::field(&p, name, "must be positive"));
            }
            if v > MAX_DIMENSION {
                return Err(ModelError::field(
                    &p,
                    name,
                    format!("{v} is absurd (more than {MAX_DIMENSION})"),
                ));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ModelError::field(
                &p,
                "n_kv_heads",
                format!("{} does not divide {} heads", self.n_kv_heads, self.n_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::field(
                &p,
                "head_dim",
                format!("{} is odd; RoPE rotates pairs", self.head_dim),
            ));
        }
        if !(self.rms_eps > 0.0 && self.rms_eps.is_finite()) {
            return Err(ModelError::field(
                &p,
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_eps),
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(ModelError::field(
                &p,
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            ));
        }
        let positive = [
            ("embedding_scale", self.gemma.embedding_scale),
            ("attention_scale", self.gemma.attention_scale),
            ("attn_logit_softcapping", self.gemma.attn_softcap),
            ("final_logit_softcapping", self.gemma.final_softcap),
            ("residual_scale", self.gemma.residual_scale),
            ("logit_scale", self.gemma.logit_scale),
            (
                "rope.freq_base_swa",
                self.gemma.sliding_rope_theta.map(|t| t as f32),
            ),
        ];
        for (name, v) in positive {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                return Err(ModelError::field(
                    &p,
                    name,
                    format!("{v} is not a positive number"),
                ));
            }
        }
        if self.gemma.sliding_window > MAX_DIMENSION {
            return Err(ModelError::field(
                &p,
                "sliding_window",
                format!(
                    "{} is absurd (more than {MAX_DIMENSION})",
                    self.gemma.sliding_window
                ),
            ));
        }
        if !self.gemma.sliding_layers.is_empty() && self.gemma.sliding_layers.len() != self.n_layers
        {
            return Err(ModelError::field(
                &p,
                "sliding_window_pattern",
                format!(
                    "{} layers marked, the model has {}",
                    self.gemma.sliding_layers.len(),
                    self.n_layers
                ),
            ));
        }
        if !self.nope_layers.is_empty() && self.nope_layers.len() != self.n_layers {
            return Err(ModelError::field(
                &p,
                "no_rope_layers",
                format!(
                    "{} layers marked, the model has {}",
                    self.nope_layers.len(),
                    self.n_layers
                ),
            ));
        }
        let rotated = self.rotated_dims();
        if rotated == 0 || !rotated.is_multiple_of(2) || rotated > self.head_dim {
            return Err(ModelError::field(
                &p,
                "rope.dimension_count",
                format!(
                    "{rotated} rotated dimensions of heads of {}: RoPE rotates pairs",
                    self.head_dim
                ),
            ));
        }
        self.rope_scaling.validate(&p.to_string(), rotated / 2)?;
        if self.qk_norm_whole && !self.qk_norm {
            return Err(ModelError::field(
                &p,
                "qk_norm_whole",
                "Q/K norms over whole projections need the Q/K norms",
            ));
        }
        if self.no_pre_norms && !self.gemma.post_norms {
            return Err(ModelError::field(
                &p,
                "no_pre_norms",
                "a block without pre-norms needs post-norms",
            ));
        }
        if self.gpt_oss && (self.moe.is_none() || self.gemma.activation != Activation::SwigluOai) {
            return Err(ModelError::field(
                &p,
                "expert_count",
                "gpt-oss's block needs experts with its clamped SwiGLU",
            ));
        }
        if let Some(moe) = &self.moe {
            moe.validate(&p.to_string(), MAX_DIMENSION)?;
            if self.gemma.post_norms {
                return Err(ModelError::field(
                    &p,
                    "expert_count",
                    "experts with post-norms are not supported",
                ));
            }
        }
        Ok(self)
    }

    /// Reads `{arch}.*` keys of a GGUF file (llama.cpp's names).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path().display().to_string();
        let arch = gguf
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| ModelError::field(&path, "general.architecture", "missing"))?;
        let Some(architecture) = Architecture::named(arch) else {
            return Err(ModelError::field(
                &path,
                "general.architecture",
                format!("'{arch}' is not supported ({})", Architecture::SUPPORTED),
            ));
        };
        if architecture != Architecture::GptOss
            && gguf.tensor_info("blk.0.attn_output.bias").is_some()
        {
            return Err(ModelError::tensor(
                &path,
                "blk.0.attn_output.bias",
                "a biased attention output projection is not supported",
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| -> Result<usize> {
            let full = key(k);
            gguf.get(&full)
                .ok_or_else(|| ModelError::field(&path, &full, "missing"))?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::field(&path, &full, "not an unsigned integer"))
        };
        let opt_uint = |k: &str| {
            gguf.get(&key(k))
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
        };
        let opt_float = |k: &str| gguf.get(&key(k)).and_then(MetaValue::as_f64);

        let hidden_size = uint("embedding_length")?;
        let n_heads = uint("attention.head_count")?;
        let head_dim = opt_uint("attention.key_length")
            .unwrap_or(hidden_size.checked_div(n_heads).unwrap_or(0));
        let vocab_size = match opt_uint("vocab_size") {
            Some(v) => v,
            None => gguf
                .tensor_info("token_embd.weight")
                .map(|t| t.rows())
                .ok_or_else(|| ModelError::tensor(&path, "token_embd.weight", "missing"))?,
        };
        let context_length = opt_uint("context_length").unwrap_or(2048);
        let rope_scaling = RopeScaling::from_gguf(gguf, &key, context_length)?;
        let context_length = rope_scaling.extended_context(context_length);
        // llama.cpp's `n_rot`: all of a head unless the file says fewer.
        let rotary_dim = opt_uint("rope.dimension_count").filter(|&d| d != head_dim);
        let n_layers = uint("block_count")?;
        let ffn_size = uint("feed_forward_length")?;
        let moe = MoeConfig::from_gguf(architecture, gguf, &key, ffn_size)?;
        let mut gemma =
            GemmaAdditions::from_gguf(architecture, gguf, &key, hidden_size, n_heads, n_layers)?;
        if architecture == Architecture::Phi3 {
            // llama.cpp disables Phi's window (its converter writes no layer pattern, see
            // llama.cpp#13676); the models were trained with it on every layer, as Hugging
            // Face runs them, and so does lowbit.
            let window = opt_uint("attention.sliding_window").unwrap_or(0);
            gemma.set_window_on_every_layer(window, n_layers, context_length);
        }
        Self {
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads: opt_uint("attention.head_count_kv").unwrap_or(n_heads),
            head_dim,
            ffn_size,
            rms_eps: opt_float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            rope_theta: opt_float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rope_style: architecture.gguf_rope_style(),
            rotary_dim,
            vocab_size,
            tied_embeddings: gguf.tensor_info("output.weight").is_none(),
            context_length,
            // llama.cpp loads Q/K/V biases wherever a file has them; lowbit wants all three.
            attention_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some()
                || gguf.tensor_info("blk.0.attn_qkv.bias").is_some(),
            qk_norm: architecture.has_qk_norm(),
            qk_norm_whole: matches!(architecture, Architecture::Olmo2 | Architecture::Olmoe),
            no_pre_norms: architecture == Architecture::Olmo2,
            // llama.cpp: every fourth layer (its step is fixed).
            nope_layers: if architecture == Architecture::SmolLm3 {
                (0..n_layers).map(|l| (l + 1).is_multiple_of(4)).collect()
            } else {
                Vec::new()
            },
            moe,
            gpt_oss: architecture == Architecture::GptOss,
            gemma,
        }
        .validate(gguf.path())
    }

    /// Reads a Hugging Face `config.json` (Llama-family `LlamaForCausalLM`).
    pub fn from_hf_json(path: &Path, json: &serde_json::Value) -> Result<Self> {
        let p = path.display().to_string();
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        let Some(architecture) = Architecture::named(model_type) else {
            return Err(ModelError::field(
                &p,
                "model_type",
                format!(
                    "'{model_type}' is not supported ({})",
                    Architecture::SUPPORTED
                ),
            ));
        };
        if architecture == Architecture::GptOss {
            return Err(ModelError::field(
                &p,
                "model_type",
                "gpt-oss is read from GGUF files (llama.cpp's convert_hf_to_gguf.py, or its \
                 published GGUFs), not from Hugging Face folders",
            ));
        }
        if json.get("text_config").is_some() {
            return Err(ModelError::field(
                &p,
                "text_config",
                "a multimodal checkpoint: lowbit reads text models (convert this one's text \
                 model to GGUF with llama.cpp's convert_hf_to_gguf.py)",
            ));
        }
        let uint = |k: &str| -> Result<usize> {
            json.get(k)
                .ok_or_else(|| ModelError::field(&p, k, "missing"))?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::field(&p, k, "not an unsigned integer"))
        };
        let opt_uint = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let opt_float = |k: &str| json.get(k).and_then(|v| v.as_f64());
        let hidden_size = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let rope_scaling = RopeScaling::from_hf_json(&p, json)?;
        // Qwen2's Q/K/V always have biases (its config has no key for them); elsewhere
        // `attention_bias` biases the output projection too, which lowbit does not run.
        let qwen2_attention = matches!(architecture, Architecture::Qwen2 | Architecture::Qwen2Moe);
        if !qwen2_attention && json.get("attention_bias").and_then(|v| v.as_bool()) == Some(true) {
            return Err(ModelError::field(
                &p,
                "attention_bias",
                "a biased attention output projection is not supported",
            ));
        }
        let attention_bias = qwen2_attention;
        let n_layers = uint("num_hidden_layers")?;
        let context_length =
            rope_scaling.extended_context(opt_uint("max_position_embeddings").unwrap_or(2048));
        let mut gemma =
            GemmaAdditions::from_hf_json(architecture, &p, json, hidden_size, n_layers)?;
        gemma.set_hf_windows(model_type, &p, json, n_layers, context_length)?;
        let head_dim =
            opt_uint("head_dim").unwrap_or(hidden_size.checked_div(n_heads).unwrap_or(0));
        // Hugging Face's `int(head_dim · partial_rotary_factor)`.
        let rotary_dim = opt_float("partial_rotary_factor")
            .map(|f| (head_dim as f64 * f) as usize)
            .filter(|&d| d != head_dim);
        Self {
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads: opt_uint("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            ffn_size: uint("intermediate_size")?,
            rms_eps: opt_float("rms_norm_eps").unwrap_or(1e-6) as f32,
            rope_theta: opt_float("rope_theta").unwrap_or(10_000.0),
            rope_scaling,
            rope_style: RopeStyle::HalfSplit,
            rotary_dim,
            vocab_size: uint("vocab_size")?,
            tied_embeddings: json
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                // Gemma's configs leave it out: tied.
                .unwrap_or(architecture.is_gemma()),
            context_length,
            attention_bias,
            qk_norm: architecture.has_qk_norm(),
            qk_norm_whole: matches!(architecture, Architecture::Olmo2 | Architecture::Olmoe),
            no_pre_norms: architecture == Architecture::Olmo2,
            nope_layers: if architecture == Architecture::SmolLm3 {
                super::rope_params::hf_nope_layers(&p, json, n_layers)?
            } else {
                Vec::new()
            },
            moe: MoeConfig::from_hf_json(architecture, &p, json)?,
            gpt_oss: false,
            gemma,
        }
        .validate(path)
    }
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
