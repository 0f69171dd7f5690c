//! A tiny random Llama model written by the tests themselves, as a GGUF file (with llama.cpp's
//! Q/K permutation and some quantized tensors) and as a Hugging Face folder, plus a naive
//! float64 forward pass to check lowbit against.

pub use super::tiny_arch::TinyArch;
use super::tiny_encoding::representable;
pub use super::tiny_encoding::{encode, permute_rows};
use super::tiny_moe::{stacked_dims, TINY_EXPERTS, TINY_SHARED_FFN};
use lowbit::model::gguf::{GgufWriter, MetaValue};
use lowbit_gpu::SourceDType;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// The tiny Gemma 2/3 models' sliding window: shorter than the tests' 11 tokens.
pub const TINY_WINDOW: usize = 4;
/// Soft caps small enough to bend the tiny model's scores and logits.
pub const GEMMA2_ATTN_SOFTCAP: f64 = 1.5;
pub const GEMMA2_FINAL_SOFTCAP: f64 = 5.0;
/// llama.cpp's RoPE base of Gemma 3's sliding layers when a file does not name one.
pub const GEMMA3_SLIDING_THETA: f64 = 10_000.0;

/// Shape of the tiny model; K dimensions are multiples of 32 so block formats fit.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub arch: TinyArch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub eps: f64,
    pub tied: bool,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            arch: TinyArch::Llama,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 96,
            vocab: 100,
            rope_theta: 10_000.0,
            eps: 1e-5,
            tied: false,
        }
    }
}

impl TinyConfig {
    pub fn head_dim(&self) -> usize {
        match self.arch {
            TinyArch::Qwen3 | TinyArch::Qwen3Moe | TinyArch::Gemma3 => 2 * self.hidden / self.heads,
            _ => self.hidden / self.heads,
        }
    }
}

/// One tensor: canonical name, rows, cols, values (exactly representable in its file dtype).
#[derive(Debug, Clone)]
pub struct TinyTensor {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub dtype: SourceDType,
    pub values: Vec<f32>,
}

/// The weights, in Hugging Face (unpermuted) row order.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub cfg: TinyConfig,
    pub tensors: Vec<TinyTensor>,
}

fn uniform(rng: &mut ChaCha8Rng, scale: f32) -> f32 {
    (rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
}

impl TinyModel {
    /// Random weights; `quantized` stores the projections of layer 0 as Q8_0/Q4_1/Q4_0/F16
    /// in the GGUF file (and their decoded values everywhere else).
    pub fn random(cfg: TinyConfig, seed: u64, quantized: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, hd) = (cfg.hidden, cfg.head_dim());
        let mut tensors = Vec::new();
        let mut add = |name: String,
                       rows: usize,
                       cols: usize,
                       dtype: SourceDType,
                       scale: f32,
                       offset: f32,
                       rng: &mut ChaCha8Rng| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| offset + uniform(rng, scale))
                .collect();
            let values = representable(dtype, rows, cols, values);
            tensors.push(TinyTensor {
                name,
                rows,
                cols,
                dtype,
                values,
            });
        };
        add(
            "token_embd.weight".into(),
            cfg.vocab,
            h,
            SourceDType::F32,
            1.0,
            0.0,
            &mut rng,
        );
        // Phi-3's fused parts share one dtype: Q/K/V that of Q, gate/up that of gate.
        let fused = cfg.arch == TinyArch::Phi3;
        let proj = |layer: usize, which: usize| {
            let which = match which {
                1 | 2 if fused => 0,
                _ => which,
            };
            if !quantized || layer != 0 {
                SourceDType::F32
            } else {
                [
                    SourceDType::Q8_0,
                    SourceDType::Q4_1,
                    SourceDType::Q4_0,
                    SourceDType::F16,
                ][which % 4]
            }
        };
        for l in 0..cfg.layers {
            let n = |p: &str| format!("blk.{l}.{p}.weight");
            let s = 1.0 / (h as f32).sqrt();
            if cfg.arch.pre_norms() {
                add(n("attn_norm"), 1, h, SourceDType::F32, 0.2, 1.0, &mut rng);
            }
            add(
                n("attn_q"),
                cfg.heads * hd,
                h,
                proj(l, 0),
                s * 2.0,
                0.0,
                &mut rng,
            );
            add(
                n("attn_k"),
                cfg.kv_heads * hd,
                h,
                proj(l, 1),
                s * 2.0,
                0.0,
                &mut rng,
            );
            add(
                n("attn_v"),
                cfg.kv_heads * hd,
                h,
                proj(l, 2),
                s,
                0.0,
                &mut rng,
            );
            if cfg.arch.qkv_bias() {
                let b = |p: &str| format!("blk.{l}.{p}.bias");
                add(
                    b("attn_q"),
                    1,
                    cfg.heads * hd,
                    SourceDType::F32,
                    0.5,
                    0.0,
                    &mut rng,
                );
                add(
                    b("attn_k"),
                    1,
                    cfg.kv_heads * hd,
                    SourceDType::F32,
                    0.5,
                    0.0,
                    &mut rng,
                );
                add(
                    b("attn_v"),
                    1,
                    cfg.kv_heads * hd,
                    SourceDType::F32,
                    0.5,
                    0.0,
                    &mut rng,
                );
            }
            if cfg.arch.qk_norm() {
                // OLMo norms each row's whole projection.
                let whole = cfg.arch.qk_norm_whole();
                for (part, heads) in [("attn_q_norm", cfg.heads), ("attn_k_norm", cfg.kv_heads)] {
                    let len = if whole { heads * hd } else { hd };
                    add(n(part), 1, len, SourceDType::F32, 0.3, 1.0, &mut rng);
                }
            }
            add(
                n("attn_output"),
                h,
                cfg.heads * hd,
                proj(l, 3),
                s,
                0.0,
                &mut rng,
            );
            if cfg.arch == TinyArch::GptOss {
                super::tiny_gpt_oss::attention_extras(&mut add, l, cfg, &mut rng);
            }
            if cfg.arch.pre_norms() {
                let norm = n(cfg.arch.ffn_norm_part());
                add(norm, 1, h, SourceDType::F32, 0.2, 1.0, &mut rng);
            }
            let mlps: Vec<(String, usize)> = if cfg.arch.is_moe() {
                // A router with scores spread wide (few near-ties between experts).
                add(
                    n("ffn_gate_inp"),
                    TINY_EXPERTS,
                    h,
                    SourceDType::F32,
                    s * 6.0,
                    0.0,
                    &mut rng,
                );
                if cfg.arch == TinyArch::GptOss {
                    let bias = format!("blk.{l}.ffn_gate_inp.bias");
                    add(bias, 1, TINY_EXPERTS, SourceDType::F32, 1.0, 0.0, &mut rng);
                }
                let mut mlps: Vec<(String, usize)> = (0..TINY_EXPERTS)
                    .map(|e| (format!(".{e}"), cfg.ffn))
                    .collect();
                if cfg.arch == TinyArch::Qwen2Moe {
                    add(
                        n("ffn_gate_inp_shexp"),
                        1,
                        h,
                        SourceDType::F32,
                        s * 2.0,
                        0.0,
                        &mut rng,
                    );
                }
                if matches!(cfg.arch, TinyArch::Qwen2Moe | TinyArch::GraniteMoe) {
                    mlps.push(("_shexp".into(), TINY_SHARED_FFN));
                }
                mlps
            } else {
                vec![(String::new(), cfg.ffn)]
            };
            for (suffix, ffn) in mlps {
                if cfg.arch == TinyArch::GptOss {
                    super::tiny_gpt_oss::expert(&mut add, l, &suffix, cfg, &mut rng);
                    continue;
                }
                let n = |p: &str| format!("blk.{l}.{p}{suffix}.weight");
                add(n("ffn_gate"), ffn, h, proj(l, 1), s, 0.0, &mut rng);
                let up = if fused { proj(l, 1) } else { proj(l, 0) };
                add(n("ffn_up"), ffn, h, up, s, 0.0, &mut rng);
                add(
                    n("ffn_down"),
                    h,
                    ffn,
                    SourceDType::F32,
                    1.0 / (ffn as f32).sqrt(),
                    0.0,
                    &mut rng,
                );
            }
            if cfg.arch.post_norms() {
                for part in ["post_attention_norm", "post_ffw_norm"] {
                    add(n(part), 1, h, SourceDType::F32, 0.2, 1.0, &mut rng);
                }
            }
        }
        add(
            "output_norm.weight".into(),
            1,
            h,
            SourceDType::F32,
            0.2,
            1.0,
            &mut rng,
        );
        if !cfg.tied {
            add(
                "output.weight".into(),
                cfg.vocab,
                h,
                SourceDType::Q8_0,
                0.5,
                0.0,
                &mut rng,
            );
        }
        Self { cfg, tensors }
    }

    pub fn get(&self, name: &str) -> &TinyTensor {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// A GGUF file as llama.cpp's converter writes it: Q/K rows permuted, dims innermost first.
    pub fn gguf_bytes(&self) -> Vec<u8> {
        let c = &self.cfg;
        let mut w = GgufWriter::new();
        let arch = c.arch.gguf_name();
        let key = |k: &str| format!("{arch}.{k}");
        w.meta("general.architecture", MetaValue::String(arch.into()))
            .meta("general.name", MetaValue::String("tiny".into()))
            .meta(&key("embedding_length"), MetaValue::U32(c.hidden as u32))
            .meta(&key("block_count"), MetaValue::U32(c.layers as u32))
            .meta(&key("feed_forward_length"), MetaValue::U32(c.ffn as u32))
            .meta(&key("attention.head_count"), MetaValue::U32(c.heads as u32))
            .meta(
                &key("attention.head_count_kv"),
                MetaValue::U32(c.kv_heads as u32),
            )
            .meta(
                &key("attention.key_length"),
                MetaValue::U32(c.head_dim() as u32),
            )
            .meta(
                &key("attention.value_length"),
                MetaValue::U32(c.head_dim() as u32),
            )
            .meta(
                &key("attention.layer_norm_rms_epsilon"),
                MetaValue::F32(c.eps as f32),
            )
            .meta(&key("rope.freq_base"), MetaValue::F32(c.rope_theta as f32))
            .meta(&key("context_length"), MetaValue::U32(256))
            .meta(&key("vocab_size"), MetaValue::U32(c.vocab as u32))
            // No vocabulary: llama.cpp runs such a file on token ids (the fixtures of
            // tests/data/llama_cpp_logits.json were made so).
            .meta("tokenizer.ggml.model", MetaValue::String("none".into()));
        if c.arch == TinyArch::Gemma2 {
            w.meta(
                &key("attention.sliding_window"),
                MetaValue::U32(TINY_WINDOW as u32),
            )
            .meta(
                &key("attn_logit_softcapping"),
                MetaValue::F32(GEMMA2_ATTN_SOFTCAP as f32),
            )
            .meta(
                &key("final_logit_softcapping"),
                MetaValue::F32(GEMMA2_FINAL_SOFTCAP as f32),
            );
        }
        if c.arch == TinyArch::Gemma3 {
            w.meta(
                &key("attention.sliding_window"),
                MetaValue::U32(TINY_WINDOW as u32),
            );
        }
        if c.arch == TinyArch::Phi3 {
            self.phi3_gguf_meta(&mut w);
        }
        if c.arch.is_granite() {
            super::tiny_granite::granite_gguf_meta(&mut w, c.arch.gguf_name());
        }
        if c.arch.is_moe() {
            self.moe_gguf_meta(&mut w);
        }
        if c.arch == TinyArch::Olmo3 {
            self.olmo_gguf_meta(&mut w);
        }
        if c.arch == TinyArch::GptOss {
            w.meta(
                &key("attention.sliding_window"),
                MetaValue::U32(TINY_WINDOW as u32),
            );
        }
        // Only Llama's converter (Granite's is Llama's) permutes Q/K rows (llama.cpp's NORM
        // rope); Qwen's keep HF order.
        let permute = matches!(
            c.arch,
            TinyArch::Llama
                | TinyArch::Granite
                | TinyArch::GraniteMoe
                | TinyArch::SmolLm3
                | TinyArch::Mixtral
        );
        for t in &self.stored_tensors(true) {
            let values = if permute && t.name.ends_with("attn_q.weight") {
                permute_rows(&t.values, c.heads, t.cols)
            } else if permute && t.name.ends_with("attn_k.weight") {
                permute_rows(&t.values, c.kv_heads, t.cols)
            } else {
                t.values.clone()
            };
            let dims: Vec<u64> = if let Some(dims) = stacked_dims(t) {
                dims
            } else if t.rows == 1 {
                vec![t.cols as u64]
            } else {
                vec![t.cols as u64, t.rows as u64]
            };
            w.tensor(&t.name, &dims, t.dtype, encode(t.dtype, &values));
        }
        w.to_bytes()
    }

    /// Each layer's kind as newer transformers configs name it (`layer_types`).
    pub(super) fn hf_layer_types(&self) -> Vec<&'static str> {
        (0..self.cfg.layers)
            .map(|l| {
                if self.cfg.arch.is_sliding(l) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect()
    }

    /// A Hugging Face folder (`config.json` + `model.safetensors`, F32 or `dtype`), shards >1
    /// split the tensors over that many files with an index.
    pub fn write_hf_folder(&self, dir: &Path, shards: usize) {
        let c = &self.cfg;
        std::fs::create_dir_all(dir).unwrap();
        let mut config = serde_json::json!({
            "architectures": [match c.arch {
                TinyArch::Llama => "LlamaForCausalLM",
                TinyArch::Qwen2 => "Qwen2ForCausalLM",
                TinyArch::Qwen3 => "Qwen3ForCausalLM",
                TinyArch::Gemma => "GemmaForCausalLM",
                TinyArch::Gemma2 => "Gemma2ForCausalLM",
                TinyArch::Gemma3 => "Gemma3ForCausalLM",
                TinyArch::Phi3 => "Phi3ForCausalLM",
                TinyArch::Granite => "GraniteForCausalLM",
                TinyArch::SmolLm3 => "SmolLM3ForCausalLM",
                TinyArch::Mixtral => "MixtralForCausalLM",
                TinyArch::Qwen2Moe => "Qwen2MoeForCausalLM",
                TinyArch::Qwen3Moe => "Qwen3MoeForCausalLM",
                TinyArch::GraniteMoe => "GraniteMoeSharedForCausalLM",
                TinyArch::Olmo3 => "Olmo3ForCausalLM",
                TinyArch::Olmoe => "OlmoeForCausalLM",
                TinyArch::GptOss => "GptOssForCausalLM",
            }],
            "model_type": if c.arch == TinyArch::Gemma3 { "gemma3_text" } else { c.arch.name() },
            "hidden_size": c.hidden,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "intermediate_size": c.ffn,
            "rms_norm_eps": c.eps,
            "rope_theta": c.rope_theta,
            "vocab_size": c.vocab,
            "tie_word_embeddings": c.tied,
            "max_position_embeddings": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
        });
        if c.arch.is_moe() {
            self.moe_hf_config(&mut config);
        }
        if c.arch == TinyArch::Olmo3 {
            self.olmo_hf_config(&mut config);
        }
        if matches!(c.arch, TinyArch::Qwen3 | TinyArch::Qwen3Moe) {
            config["head_dim"] = c.head_dim().into();
            config["attention_bias"] = false.into();
        }
        if c.arch.is_gemma() {
            config["head_dim"] = c.head_dim().into();
            config["hidden_activation"] = "gelu_pytorch_tanh".into();
            config["query_pre_attn_scalar"] = c.head_dim().into();
        }
        if c.arch == TinyArch::Gemma2 {
            config["sliding_window"] = TINY_WINDOW.into();
            config["attn_logit_softcapping"] = GEMMA2_ATTN_SOFTCAP.into();
            config["final_logit_softcapping"] = GEMMA2_FINAL_SOFTCAP.into();
        }
        if c.arch == TinyArch::Gemma3 {
            // Newer transformers name each layer's kind; llama.cpp's pattern of six.
            config["sliding_window"] = TINY_WINDOW.into();
            config["layer_types"] = self.hf_layer_types().into();
            config["rope_local_base_freq"] = GEMMA3_SLIDING_THETA.into();
            config["final_logit_softcapping"] = serde_json::Value::Null;
            config["attn_logit_softcapping"] = serde_json::Value::Null;
        }
        if c.arch == TinyArch::Phi3 {
            self.phi3_hf_config(&mut config);
        }
        if c.arch.is_granite() {
            super::tiny_granite::granite_hf_config(&mut config);
        }
        if c.arch == TinyArch::SmolLm3 {
            let flags: Vec<u32> = (0..c.layers)
                .map(|l| u32::from(!c.arch.is_nope(l)))
                .collect();
            config["no_rope_layers"] = flags.into();
            config["no_rope_layer_interval"] = 4.into();
        }
        let naming = lowbit::model::hf::HfNaming::of(&config);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        let hf: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .stored_tensors(false)
            .iter()
            .map(|t| {
                let name = lowbit::model::hf::hf_name_in(&t.name, naming).unwrap();
                let shape = if let Some(dims) = stacked_dims(t) {
                    dims.iter().rev().map(|&d| d as usize).collect()
                } else if t.rows == 1 {
                    vec![t.cols]
                } else {
                    vec![t.rows, t.cols]
                };
                // Gemma's checkpoints store RMSNorm weights less one (the model adds it).
                let values: Vec<f32> = if c.arch.is_gemma() && t.name.ends_with("norm.weight") {
                    t.values.iter().map(|v| v - 1.0).collect()
                } else {
                    t.values.clone()
                };
                (name, shape, encode(SourceDType::F32, &values))
            })
            .collect();
        let per_shard = hf.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for (i, chunk) in hf.chunks(per_shard).enumerate() {
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
            };
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
                .iter()
                .map(|(n, s, b)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                            .unwrap(),
                    )
                })
                .collect();
            for (n, _, _) in chunk {
                weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
            }
            safetensors::serialize_to_file(
                views,
                None::<HashMap<String, String>>,
                &dir.join(&file),
            )
            .unwrap();
        }
        if shards > 1 {
            let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        }
    }
}

/// Every position's logits of `tokens`, one prefill.
pub fn all_logits(model: &lowbit::model::Llama, tokens: &[u32]) -> Vec<f32> {
    let mut kv = lowbit::engine::solo::SoloKv::new(model, 1, tokens.len()).unwrap();
    let seq = lowbit::model::BatchSeq {
        tokens,
        pos_start: 0,
        blocks: &kv.tables[0],
        window_blocks: &[],
        logits: 0..tokens.len(),
    };
    model.forward(&[seq], &mut kv.pool).unwrap().data
}

/// Rows of a reference, one after another.
pub fn flat(v: Vec<Vec<f64>>) -> Vec<f64> {
    v.into_iter().flatten().collect()
}
