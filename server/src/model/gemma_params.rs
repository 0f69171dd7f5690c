//! What Gemma adds to Llama's block ([`GemmaAdditions`]), read from a GGUF file's metadata
//! (as llama.cpp reads it) or a Hugging Face `config.json`: GeGLU, the embedding scale,
//! post-norms, soft caps, the sliding window, which layers slide and their RoPE base; and
//! the scales Granite adds (embeddings, scores, residual branches, logits), the windows of
//! the other architectures.

use super::config::{Activation, Architecture, GemmaAdditions};
use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};

/// Read as llama.cpp reads a GGUF file (defaults included: Gemma 2's soft caps 50 and 30 and
/// window 4,096; every other layer sliding in Gemma 2, five of six in Gemma 3; Gemma 3's
/// sliding RoPE base 10,000), or from a Hugging Face `config.json`.
impl GemmaAdditions {
    /// Granite's four scales; 0 or absent means none, as llama.cpp reads them.
    fn set_granite_scales(
        &mut self,
        embedding: Option<f64>,
        attention: Option<f64>,
        residual: Option<f64>,
        logits: Option<f64>,
    ) {
        let set = |v: Option<f64>| v.filter(|&v| v != 0.0).map(|v| v as f32);
        self.embedding_scale = set(embedding);
        self.attention_scale = set(attention);
        self.residual_scale = set(residual);
        self.logit_scale = set(logits);
    }

    /// A window on every layer (Phi-3), where it is shorter than the context (Phi-3.5's
    /// and Phi-4-mini's 262,144 never bite).
    pub(super) fn set_window_on_every_layer(
        &mut self,
        window: usize,
        layers: usize,
        context: usize,
    ) {
        if window > 0 && window < context {
            self.sliding_window = window;
            self.sliding_layers = vec![true; layers];
        }
    }

    /// The sliding windows Hugging Face runs for the non-Gemma architectures: Mistral's and
    /// Phi-3's on every layer (Mistral 7B v0.1, Phi-3-mini: 4,096 and 2,047), Qwen2's and
    /// Qwen3's where `use_sliding_window` is set, on the layers `layer_types` marks or else
    /// from `max_window_layers` on (Hugging Face's default 28). llama.cpp runs these
    /// architectures' GGUF files without windows (Phi-3's: `config.rs`).
    pub(super) fn set_hf_windows(
        &mut self,
        model_type: &str,
        path: &str,
        json: &serde_json::Value,
        layers: usize,
        context: usize,
    ) -> Result<()> {
        let window = json
            .get("sliding_window")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        match model_type {
            "mistral" | "mixtral" | "phi3" => {
                self.set_window_on_every_layer(window, layers, context)
            }
            // OLMo 3: `layer_types`, else three sliding layers of four (`Olmo3Config`'s
            // window defaults to 4,096), with unscaled RoPE there whatever the window.
            "olmo3" => {
                self.sliding_window = json
                    .get("sliding_window")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(4096) as usize;
                self.sliding_layers = match layer_kinds(path, json, layers)? {
                    Some(flags) => flags,
                    None => (0..layers).map(|l| (l + 1) % 4 != 0).collect(),
                };
                self.sliding_rope_theta = Some(
                    json.get("rope_theta")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(10_000.0),
                );
            }
            "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe"
                if json.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) =>
            {
                if window == 0 {
                    return Err(ModelError::field(
                        path,
                        "sliding_window",
                        "use_sliding_window is set without a window",
                    ));
                }
                let flags = match layer_kinds(path, json, layers)? {
                    Some(flags) => flags,
                    None => {
                        let first = json
                            .get("max_window_layers")
                            .and_then(|v| v.as_u64())
                            .unwrap_or(28) as usize;
                        (0..layers).map(|l| l >= first).collect()
                    }
                };
                if window < context && flags.iter().any(|&f| f) {
                    self.sliding_window = window;
                    self.sliding_layers = flags;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// From a Hugging Face `config.json` (`GemmaConfig`, `Gemma2Config`, `Gemma3TextConfig`).
    pub(super) fn from_hf_json(
        arch: Architecture,
        path: &str,
        json: &serde_json::Value,
        hidden: usize,
        layers: usize,
    ) -> Result<Self> {
        let mut p = Self::default();
        let float = |k: &str| json.get(k).and_then(|v| v.as_f64());
        if arch.is_granite() {
            // `GraniteConfig`'s multipliers (llama.cpp's converter writes them as scales).
            // `GraniteConfig` defaults each to 1 (the scores too, where llama.cpp's GGUF
            // reading falls back to 1/√head_dim).
            p.set_granite_scales(
                float("embedding_multiplier"),
                float("attention_multiplier").or(Some(1.0)),
                float("residual_multiplier"),
                float("logits_scaling"),
            );
            return Ok(p);
        }
        if arch == Architecture::Olmo2 {
            p.post_norms = true;
            return Ok(p);
        }
        if !arch.is_gemma() {
            return Ok(p);
        }
        // Hugging Face's Gemma reads `hidden_activation` only, the tanh GELU where it is absent
        // (the first configs' `hidden_act: "gelu"` is not used); an explicit "gelu" would be
        // the exact (erf) form, which lowbit does not run.
        let act = json
            .get("hidden_activation")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(ModelError::field(
                path,
                "hidden_activation",
                format!("'{act}' is not supported (gelu_pytorch_tanh)"),
            ));
        }
        p.activation = Activation::GeluTanh;
        p.embedding_scale = Some((hidden as f32).sqrt());
        if arch == Architecture::Gemma {
            return Ok(p);
        }
        p.post_norms = true;
        p.attention_scale = float("query_pre_attn_scalar").map(|s| (1.0 / s.sqrt()) as f32);
        p.attn_softcap = float("attn_logit_softcapping").map(|c| c as f32);
        p.final_softcap = float("final_logit_softcapping").map(|c| c as f32);
        p.sliding_window = json
            .get("sliding_window")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        if p.sliding_window == 0 {
            return Ok(p);
        }
        if arch == Architecture::Gemma3 {
            p.sliding_rope_theta = Some(float("rope_local_base_freq").unwrap_or(10_000.0));
        }
        p.sliding_layers = match layer_kinds(path, json, layers)? {
            Some(flags) => flags,
            None => {
                let default = if arch == Architecture::Gemma2 { 2 } else { 6 };
                let n = json
                    .get("sliding_window_pattern")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(default) as usize;
                (0..layers).map(|l| n == 0 || l % n < n - 1).collect()
            }
        };
        Ok(p)
    }

    pub(super) fn from_gguf(
        arch: Architecture,
        gguf: &GgufFile,
        key: &dyn Fn(&str) -> String,
        hidden: usize,
        heads: usize,
        layers: usize,
    ) -> Result<Self> {
        let mut p = Self::default();
        let float = |k: &str| gguf.get(&key(k)).and_then(MetaValue::as_f64);
        if arch.is_granite() {
            p.set_granite_scales(
                float("embedding_scale"),
                float("attention.scale"),
                float("residual_scale"),
                float("logit_scale"),
            );
            return Ok(p);
        }
        let uint = |k: &str| gguf.get(&key(k)).and_then(MetaValue::as_u64);
        if arch == Architecture::Olmo2 {
            // OLMo 3's window on three layers of four (llama.cpp's default pattern), RoPE
            // unscaled there: YaRN only on the global layers, as llama.cpp's graph does.
            p.post_norms = true;
            p.sliding_window = uint("attention.sliding_window").unwrap_or(0) as usize;
            if p.sliding_window > 0 {
                p.sliding_layers = gguf_sliding_layers(gguf, key, layers, 4)?;
                // llama.cpp's graph rotates them with the global base (`freq_base_swa` only
                // shifts its cache).
                p.sliding_rope_theta = Some(float("rope.freq_base").unwrap_or(10_000.0));
            }
            return Ok(p);
        }
        if arch == Architecture::GptOss {
            // Every other layer slides, the first included (llama.cpp's pattern 2), with the
            // global layers' RoPE.
            p.activation = Activation::SwigluOai;
            let window_key = key("attention.sliding_window");
            p.sliding_window = uint("attention.sliding_window").ok_or_else(|| {
                ModelError::field(gguf.path().display().to_string(), &window_key, "missing")
            })? as usize;
            if p.sliding_window > 0 {
                p.sliding_layers = gguf_sliding_layers(gguf, key, layers, 2)?;
            }
            return Ok(p);
        }
        if !arch.is_gemma() {
            return Ok(p);
        }
        p.activation = Activation::GeluTanh;
        // llama.cpp scales in f32: sqrtf(n_embd).
        p.embedding_scale = Some((hidden as f32).sqrt());
        if arch == Architecture::Gemma {
            return Ok(p);
        }
        p.post_norms = true;
        // The 27B models scale by hidden / heads, not the head width (llama.cpp tells them
        // by their layer count; Hugging Face's `query_pre_attn_scalar`).
        let is_27b = matches!(
            (arch, layers),
            (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62)
        );
        if is_27b && heads > 0 {
            p.attention_scale = Some(1.0 / ((hidden / heads) as f32).sqrt());
        }
        let pattern_default = if arch == Architecture::Gemma2 {
            p.attn_softcap = Some(float("attn_logit_softcapping").unwrap_or(50.0) as f32);
            p.final_softcap = Some(float("final_logit_softcapping").unwrap_or(30.0) as f32);
            p.sliding_window = uint("attention.sliding_window").unwrap_or(4096) as usize;
            p.sliding_rope_theta = float("rope.freq_base_swa");
            2
        } else {
            p.final_softcap = float("final_logit_softcapping")
                .filter(|&c| c != 0.0)
                .map(|c| c as f32);
            p.sliding_window = uint("attention.sliding_window").unwrap_or(0) as usize;
            if p.sliding_window > 0 {
                p.sliding_rope_theta = Some(float("rope.freq_base_swa").unwrap_or(10_000.0));
            }
            6
        };
        if p.sliding_window == 0 {
            return Ok(p);
        }
        p.sliding_layers = gguf_sliding_layers(gguf, key, layers, pattern_default)?;
        Ok(p)
    }
}

/// Which layers slide, from GGUF `attention.sliding_window_pattern`: one flag per layer, or
/// `n` (llama.cpp's `set_swa_pattern`: of every `n` layers the last is global), `default`
/// where absent.
fn gguf_sliding_layers(
    gguf: &GgufFile,
    key: &dyn Fn(&str) -> String,
    layers: usize,
    default: u64,
) -> Result<Vec<bool>> {
    let pattern_key = key("attention.sliding_window_pattern");
    Ok(match gguf.get(&pattern_key) {
        Some(MetaValue::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags.iter().map(MetaValue::as_bool).collect();
            match flags {
                Some(f) if f.len() == layers => f,
                _ => {
                    return Err(ModelError::field(
                        gguf.path().display().to_string(),
                        &pattern_key,
                        format!("not {layers} booleans, one per layer"),
                    ))
                }
            }
        }
        other => {
            let n = other.and_then(MetaValue::as_u64).unwrap_or(default) as usize;
            (0..layers).map(|l| n == 0 || l % n < n - 1).collect()
        }
    })
}

/// Newer Hugging Face configs name each layer's kind (`layer_types`): which slide.
fn layer_kinds(path: &str, json: &serde_json::Value, layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(types) = json.get("layer_types").and_then(|v| v.as_array()) else {
        return Ok(None);
    };
    let flags: Option<Vec<bool>> = types
        .iter()
        .map(|t| match t.as_str() {
            Some("sliding_attention") => Some(true),
            Some("full_attention") => Some(false),
            _ => None,
        })
        .collect();
    match flags {
        Some(f) if f.len() == layers => Ok(Some(f)),
        _ => Err(ModelError::field(
            path,
            "layer_types",
            format!("not {layers} of \"sliding_attention\" or \"full_attention\""),
        )),
    }
}
