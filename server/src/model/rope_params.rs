//! RoPE's parameters: how its frequencies are scaled ([`RopeScaling`], read from GGUF
//! metadata as llama.cpp reads it or from a Hugging Face `rope_scaling`), how many dimensions
//! of a head it rotates, and the [`Rope`] the backends apply.

use super::config::LlamaConfig;
use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};
use lowbit_gpu::Rope;
use serde::{Deserialize, Serialize};

/// How RoPE frequencies are stretched for contexts longer than training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies divided by it).
    Linear {
        factor: f64,
    },
    /// Llama 3's piecewise scaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// Per-frequency divisors stored in the model (GGUF `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
    /// Phi-3's LongRoPE ("su"): per-frequency divisors, `short_factor` for a context up to
    /// `original_max_position`, `long_factor` beyond (empty: all 1), and `attention_factor`
    /// on every rotated sine and cosine. Which list applies is decided once for the
    /// context the model is served with, as llama.cpp decides it (Hugging Face switches
    /// lists per sequence length, which changes the keys already cached).
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position: usize,
        attention_factor: f64,
    },
    /// YaRN (Qwen2.5/Qwen3 long context, OLMo 3, DeepSeek): each frequency blended between
    /// itself (wavelengths well inside the original context, more than `beta_fast` turns in
    /// it) and itself ÷ `factor` (fewer than `beta_slow` turns), linearly between; sines and
    /// cosines times `attention_factor` (`1 + 0.1 ln factor` unless the model says).
    Yarn {
        factor: f64,
        original_max_position: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// From a GGUF file's `{arch}.rope.scaling.*` keys and its factor tensors
    /// (`rope_freqs.weight`; LongRoPE's `rope_factors_long/short.weight`).
    pub(super) fn from_gguf(
        gguf: &GgufFile,
        key: &dyn Fn(&str) -> String,
        context_length: usize,
    ) -> Result<Self> {
        let path = gguf.path().display().to_string();
        if let Some(t) = gguf.tensor_info("rope_freqs.weight") {
            return Ok(Self::FreqFactors(gguf.raw_tensor(t)?.to_f32()));
        }
        let factors = |name: &str| -> Result<Option<Vec<f32>>> {
            match gguf.tensor_info(name) {
                Some(t) => Ok(Some(gguf.raw_tensor(t)?.to_f32())),
                None => Ok(None),
            }
        };
        let (long, short) = (
            factors("rope_factors_long.weight")?,
            factors("rope_factors_short.weight")?,
        );
        let float = |k: &str| gguf.get(&key(k)).and_then(MetaValue::as_f64);
        if long.is_some() || short.is_some() {
            // llama.cpp: the training context unless the file names the original one.
            let original = gguf
                .get(&key("rope.scaling.original_context_length"))
                .and_then(MetaValue::as_u64)
                .map_or(context_length, |v| v as usize);
            return Ok(Self::LongRope {
                short_factor: short.unwrap_or_default(),
                long_factor: long.unwrap_or_default(),
                original_max_position: original,
                attention_factor: float("rope.scaling.attn_factor").unwrap_or(1.0),
            });
        }
        Ok(
            match gguf
                .get(&key("rope.scaling.type"))
                .and_then(MetaValue::as_str)
            {
                None | Some("none") => Self::None,
                Some("linear") => Self::Linear {
                    factor: float("rope.scaling.factor").unwrap_or(1.0),
                },
                Some("yarn") => {
                    // As llama.cpp's context setup and rope kernel combine them.
                    let factor = float("rope.scaling.factor").unwrap_or(1.0);
                    let base = match float("rope.scaling.yarn_log_multiplier") {
                        Some(m) if m != 0.0 => yarn_mscale(factor, 1.0) / yarn_mscale(factor, m),
                        _ => yarn_mscale(factor, 1.0),
                    };
                    Self::Yarn {
                        factor,
                        original_max_position: gguf
                            .get(&key("rope.scaling.original_context_length"))
                            .and_then(MetaValue::as_u64)
                            .map_or(context_length, |v| v as usize),
                        beta_fast: float("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                        beta_slow: float("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                        attention_factor: base * float("rope.scaling.attn_factor").unwrap_or(1.0),
                    }
                }
                Some(other) => {
                    return Err(ModelError::field(
                        &path,
                        &key("rope.scaling.type"),
                        format!("'{other}' is not supported (none, linear, yarn)"),
                    ))
                }
            },
        )
    }

    /// From a Hugging Face `config.json`'s `rope_scaling` (absent or null: none).
    pub(super) fn from_hf_json(p: &str, json: &serde_json::Value) -> Result<Self> {
        let s = match json.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => return Ok(Self::None),
            Some(s) => s,
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let f = |k: &str| -> Result<f64> {
            s.get(k).and_then(|v| v.as_f64()).ok_or_else(|| {
                ModelError::field(p, &format!("rope_scaling.{k}"), "missing or not a number")
            })
        };
        Ok(match kind {
            "default" => Self::None,
            "linear" => Self::Linear {
                factor: f("factor")?,
            },
            "llama3" => Self::Llama3 {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position: f("original_max_position_embeddings")?,
            },
            "longrope" | "su" => Self::long_rope_from_hf(p, json, s)?,
            "yarn" => {
                // Hugging Face's `_compute_yarn_parameters`, the factor as given, as llama.cpp
                // and vLLM read it (some transformers versions take `max_position_embeddings /
                // original` instead).
                let factor = f("factor")?;
                let opt = |k: &str| s.get(k).and_then(|v| v.as_f64());
                if s.get("truncate").and_then(|v| v.as_bool()) == Some(false) {
                    return Err(ModelError::field(
                        p,
                        "rope_scaling.truncate",
                        "YaRN without rounding its correction range is not supported",
                    ));
                }
                let nonzero = |k: &str| opt(k).filter(|&v| v != 0.0);
                let attention_factor = match (
                    opt("attention_factor"),
                    nonzero("mscale"),
                    nonzero("mscale_all_dim"),
                ) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                    _ => yarn_mscale(factor, 1.0),
                };
                let original = s
                    .get("original_max_position_embeddings")
                    .or_else(|| json.get("original_max_position_embeddings"))
                    .and_then(|v| v.as_u64())
                    .or_else(|| json.get("max_position_embeddings").and_then(|v| v.as_u64()))
                    .unwrap_or(2048) as usize;
                Self::Yarn {
                    factor,
                    original_max_position: original,
                    beta_fast: opt("beta_fast").unwrap_or(32.0),
                    beta_slow: opt("beta_slow").unwrap_or(1.0),
                    attention_factor,
                }
            }
            other => {
                return Err(ModelError::field(
                    p,
                    "rope_scaling.rope_type",
                    format!("'{other}' is not supported (default, linear, llama3, longrope, yarn)"),
                ))
            }
        })
    }

    /// Hugging Face's `_compute_longrope_parameters`: the original context from the config
    /// (or `rope_scaling`), the attention factor given or `√(1 + ln s / ln original)` for
    /// `s = max_position_embeddings / original`.
    fn long_rope_from_hf(p: &str, json: &serde_json::Value, s: &serde_json::Value) -> Result<Self> {
        let list = |k: &str| -> Result<Vec<f32>> {
            s.get(k)
                .and_then(|v| v.as_array())
                .and_then(|a| a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect())
                .ok_or_else(|| {
                    ModelError::field(p, &format!("rope_scaling.{k}"), "missing or not numbers")
                })
        };
        let max_positions = json
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(2048) as usize;
        let top_level = json
            .get("original_max_position_embeddings")
            .and_then(|v| v.as_u64());
        let original = top_level
            .or_else(|| {
                s.get("original_max_position_embeddings")
                    .and_then(|v| v.as_u64())
            })
            .map_or(max_positions, |v| v as usize);
        // Phi's configs name the original context at the top level and the ratio is the
        // factor; elsewhere `rope_scaling.factor` is.
        let ratio = max_positions as f64 / original.max(1) as f64;
        let factor = match top_level {
            Some(_) => ratio,
            None => s.get("factor").and_then(|v| v.as_f64()).unwrap_or(ratio),
        };
        let attention_factor = match s.get("attention_factor").and_then(|v| v.as_f64()) {
            Some(a) => a,
            None if factor <= 1.0 || original <= 1 => 1.0,
            None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
        };
        Ok(Self::LongRope {
            short_factor: list("short_factor")?,
            long_factor: list("long_factor")?,
            original_max_position: original,
            attention_factor,
        })
    }

    /// The context a model is good for: YaRN's is its original context times the factor,
    /// where the file declares less (Qwen's configs keep `max_position_embeddings` at the
    /// original and add `rope_scaling`).
    pub(super) fn extended_context(&self, declared: usize) -> usize {
        match self {
            Self::Yarn {
                factor,
                original_max_position,
                ..
            } => declared.max((*original_max_position as f64 * factor) as usize),
            _ => declared,
        }
    }

    /// Checks the factor lists fit `pairs` rotated pairs, naming the field.
    pub(super) fn validate(&self, p: &str, pairs: usize) -> Result<()> {
        let lists: Vec<(&str, &[f32])> = match self {
            Self::FreqFactors(f) => vec![("rope_freqs", f)],
            Self::LongRope {
                short_factor,
                long_factor,
                attention_factor,
                ..
            } => {
                if !(*attention_factor > 0.0 && attention_factor.is_finite()) {
                    return Err(ModelError::field(
                        p,
                        "rope.scaling.attn_factor",
                        format!("{attention_factor} is not a positive number"),
                    ));
                }
                vec![("short_factor", short_factor), ("long_factor", long_factor)]
            }
            Self::Yarn {
                factor,
                attention_factor,
                original_max_position,
                beta_fast,
                beta_slow,
            } => {
                if !(*beta_slow > 0.0 && beta_fast > beta_slow && beta_fast.is_finite()) {
                    return Err(ModelError::field(
                        p,
                        "rope.scaling.yarn_beta_fast",
                        format!("fast {beta_fast} and slow {beta_slow}: need fast > slow > 0"),
                    ));
                }
                for (name, v) in [
                    ("rope.scaling.factor", *factor),
                    ("rope.scaling.attn_factor", *attention_factor),
                    (
                        "rope.scaling.original_context_length",
                        *original_max_position as f64,
                    ),
                ] {
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(ModelError::field(
                            p,
                            name,
                            format!("{v} is not a positive number"),
                        ));
                    }
                }
                vec![]
            }
            _ => vec![],
        };
        for (name, list) in lists {
            if !list.is_empty() && list.len() != pairs {
                return Err(ModelError::field(
                    p,
                    name,
                    format!("{} factors, the model rotates {pairs} pairs", list.len()),
                ));
            }
            if let Some(bad) = list.iter().find(|f| !(**f > 0.0 && f.is_finite())) {
                return Err(ModelError::field(
                    p,
                    name,
                    format!("factor {bad} is not a positive number"),
                ));
            }
        }
        Ok(())
    }
}

/// SmolLM3's layers without RoPE: `no_rope_layers` (1 rotates, 0 does not) or every
/// `no_rope_layer_interval`-th layer (4), as Hugging Face reads them.
pub(super) fn hf_nope_layers(
    p: &str,
    json: &serde_json::Value,
    layers: usize,
) -> Result<Vec<bool>> {
    if let Some(flags) = json.get("no_rope_layers").and_then(|v| v.as_array()) {
        let nope: Option<Vec<bool>> = flags.iter().map(|f| f.as_u64().map(|f| f == 0)).collect();
        return match nope {
            Some(n) if n.len() == layers => Ok(n),
            _ => Err(ModelError::field(
                p,
                "no_rope_layers",
                format!("not {layers} flags of 0 or 1"),
            )),
        };
    }
    let every = json
        .get("no_rope_layer_interval")
        .and_then(|v| v.as_u64())
        .unwrap_or(4)
        .max(1) as usize;
    Ok((0..layers).map(|l| (l + 1).is_multiple_of(every)).collect())
}

/// YaRN's attention scale for a `factor` and an `mscale` (Hugging Face's `get_mscale`).
pub(super) fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

impl LlamaConfig {
    /// Dimensions of each head RoPE rotates.
    pub fn rotated_dims(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// RoPE with frequencies `theta^(-2i/d)` over the rotated dimensions `d`, scaled as the
    /// model asks, for sequences of up to `context_length` positions (LongRoPE chooses its
    /// factors by it).
    pub fn rope(&self) -> Rope {
        self.rope_for(self.context_length)
    }

    /// [`Self::rope`] for sequences of up to `max_positions` (what a server admits).
    pub fn rope_for(&self, max_positions: usize) -> Rope {
        self.rope_with(self.rope_theta, &self.rope_scaling, max_positions)
    }

    /// The RoPE of sliding-window layers, where it differs from [`Self::rope`] (Gemma 3).
    pub fn sliding_rope(&self) -> Option<Rope> {
        self.gemma
            .sliding_rope_theta
            .map(|theta| self.rope_with(theta, &RopeScaling::None, self.context_length))
    }

    /// Whether LongRoPE takes its long factors for sequences of up to `max_positions`
    /// (llama.cpp's rule: a context longer than the original one).
    pub fn uses_long_rope_factors(&self, max_positions: usize) -> bool {
        matches!(&self.rope_scaling, RopeScaling::LongRope { original_max_position, .. }
            if max_positions > *original_max_position)
    }

    fn rope_with(&self, theta: f64, scaling: &RopeScaling, max_positions: usize) -> Rope {
        let d = self.rotated_dims();
        let divisor = |list: &[f32], i: usize| f64::from(list.get(i).copied().unwrap_or(1.0));
        // YaRN's ramp over the pairs: 1 (keep the frequency) up to `low`, 0 (divide it by the
        // factor) from `high` (llama.cpp's `ggml_rope_yarn_corr_dims`, Hugging Face's
        // `find_correction_range`).
        let yarn_keep = |i: usize, original: usize, fast: f64, slow: f64| {
            let dim = |turns: f64| {
                d as f64 * (original as f64 / (turns * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * theta.ln())
            };
            let low = dim(fast).floor().max(0.0);
            let high = dim(slow).ceil().min(d as f64 - 1.0);
            1.0 - ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0)
        };
        let inv_freq = (0..d / 2)
            .map(|i| {
                let f = theta.powf(-2.0 * i as f64 / d as f64);
                let f = match scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::FreqFactors(div) => f / divisor(div, i),
                    RopeScaling::LongRope {
                        short_factor,
                        long_factor,
                        ..
                    } => {
                        if self.uses_long_rope_factors(max_positions) {
                            f / divisor(long_factor, i)
                        } else {
                            f / divisor(short_factor, i)
                        }
                    }
                    RopeScaling::Yarn {
                        factor,
                        original_max_position,
                        beta_fast,
                        beta_slow,
                        ..
                    } => {
                        let keep = yarn_keep(i, *original_max_position, *beta_fast, *beta_slow);
                        f / factor * (1.0 - keep) + f * keep
                    }
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low_wavelen = original_max_position / low_freq_factor;
                        let high_wavelen = original_max_position / high_freq_factor;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect();
        let attention_factor = match scaling {
            RopeScaling::LongRope {
                attention_factor, ..
            }
            | RopeScaling::Yarn {
                attention_factor, ..
            } => *attention_factor as f32,
            _ => 1.0,
        };
        Rope {
            style: self.rope_style,
            head_dim: self.head_dim,
            inv_freq,
            attention_factor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phi_like(scaling: RopeScaling) -> LlamaConfig {
        LlamaConfig {
            hidden_size: 64,
            n_layers: 1,
            n_heads: 4,
            n_kv_heads: 4,
            head_dim: 16,
            ffn_size: 32,
            vocab_size: 10,
            rotary_dim: Some(12),
            rope_scaling: scaling,
            context_length: 4096,
            ..LlamaConfig::default()
        }
    }

    /// Partial rotary: frequencies over the rotated dimensions only; LongRoPE divides by the
    /// short list up to the original context and by the long one beyond, with its attention
    /// factor either way.
    #[test]
    fn long_rope_picks_its_list_by_the_served_context() {
        let c = phi_like(RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            long_factor: vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
            original_max_position: 1024,
            attention_factor: 1.25,
        });
        let plain = |i: usize| 10_000f64.powf(-2.0 * i as f64 / 12.0);
        let short = c.rope_for(1024);
        let long = c.rope_for(1025);
        assert_eq!(short.rotated_pairs(), 6);
        for i in 0..6 {
            let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-7 * b;
            assert!(close(short.inv_freq[i], plain(i) / (i + 1) as f64));
            assert!(close(long.inv_freq[i], plain(i) / (10 * (i + 1)) as f64));
        }
        assert_eq!(
            (short.attention_factor, long.attention_factor),
            (1.25, 1.25)
        );
        assert!(c.uses_long_rope_factors(4096) && !c.uses_long_rope_factors(1024));
        assert_eq!(
            c.rope().inv_freq,
            long.inv_freq,
            "the model's context: long"
        );
        let plain_rope = phi_like(RopeScaling::None).rope();
        assert_eq!(plain_rope.attention_factor, 1.0);
        assert!((f64::from(plain_rope.inv_freq[1]) - plain(1)).abs() < 1e-7 * plain(1));
    }

    /// YaRN as Hugging Face's `_compute_yarn_parameters` computes it for Qwen3's long context
    /// (factor 4 over 32,768, the factor read as given, as llama.cpp and vLLM read it; some
    /// transformers versions derive it from `max_position_embeddings`): frequencies kept above
    /// the fast correction dimension, divided by 4 below the slow one, blended linearly
    /// between; `1 + 0.1 ln 4` on sine and cosine; the context extended to 131,072. Betas out
    /// of order are refused by name.
    #[test]
    fn yarn_blends_frequencies_as_hugging_face_does() {
        let json = serde_json::json!({
            "max_position_embeddings": 40960,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                             "original_max_position_embeddings": 32768},
        });
        let scaling = RopeScaling::from_hf_json("config.json", &json).unwrap();
        assert_eq!(scaling.extended_context(40960), 131_072);
        let c = LlamaConfig {
            head_dim: 128,
            rotary_dim: None,
            rope_theta: 1_000_000.0,
            rope_scaling: scaling,
            ..phi_like(RopeScaling::None)
        };
        let rope = c.rope();
        let (dim, base, factor) = (128.0f64, 1_000_000f64, 4.0f64);
        let correction = |turns: f64| {
            dim * (32768.0 / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (low, high) = (correction(32.0).floor(), correction(1.0).ceil());
        assert!(low > 0.0 && high < 63.0 && low < high, "{low} {high}");
        for i in 0..64 {
            let extrapolation = base.powf(-2.0 * i as f64 / dim);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            let want = extrapolation / factor * (1.0 - keep) + extrapolation * keep;
            let got = f64::from(rope.inv_freq[i]);
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "pair {i}: {got} vs {want}"
            );
        }
        assert!((f64::from(rope.attention_factor) - (1.0 + 0.1 * 4f64.ln())).abs() < 1e-6);
        let swapped = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position: 32768,
            beta_fast: 1.0,
            beta_slow: 32.0,
            attention_factor: 1.0,
        };
        let err = swapped.validate("config.json", 64).unwrap_err().to_string();
        assert!(err.contains("yarn_beta_fast"), "{err}");
    }

    /// Hugging Face's defaults: the attention factor from the context ratio, the original
    /// context from the top level; a factor list of the wrong length is refused by name.
    #[test]
    fn long_rope_reads_hugging_face_configs() {
        let json = serde_json::json!({
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0]}
        });
        let s = RopeScaling::from_hf_json("config.json", &json).unwrap();
        let RopeScaling::LongRope {
            original_max_position,
            attention_factor,
            ..
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!(*original_max_position, 4096);
        let expected = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert!((attention_factor - expected).abs() < 1e-12);
        assert!(s.validate("config.json", 2).is_ok());
        // Without the top-level key: `rope_scaling`'s own original context and factor.
        let json = serde_json::json!({
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "longrope", "factor": 8.0,
                "original_max_position_embeddings": 4096,
                "short_factor": [1.0], "long_factor": [2.0]}
        });
        let RopeScaling::LongRope {
            original_max_position,
            attention_factor,
            ..
        } = RopeScaling::from_hf_json("config.json", &json).unwrap()
        else {
            panic!()
        };
        assert_eq!(original_max_position, 4096);
        let expected = (1.0 + 8f64.ln() / 4096f64.ln()).sqrt();
        assert!((attention_factor - expected).abs() < 1e-12);
        let err = s.validate("config.json", 3).unwrap_err().to_string();
        assert!(
            err.contains("short_factor") && err.contains("3 pairs"),
            "{err}"
        );
    }
}
