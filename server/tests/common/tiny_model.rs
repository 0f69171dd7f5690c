//! A tiny random Llama model written by the tests themselves, as a GGUF file (with llama.cpp's
//! Q/K permutation and some quantized tensors) and as a Hugging Face folder, plus a naive
//! float64 forward pass to check lowbit against.

use half::f16;
use lowbit::model::gguf::{GgufWriter, MetaValue};
use lowbit_gpu::SourceDType;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// Which member of the Llama family the tiny model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Llama,
    /// Q/K/V biases, RoPE on unpermuted weights in GGUF too.
    Qwen2,
    /// Per-head Q/K RMSNorms, heads twice as wide as `hidden / heads`.
    Qwen3,
}

impl TinyArch {
    pub fn name(self) -> &'static str {
        match self {
            TinyArch::Llama => "llama",
            TinyArch::Qwen2 => "qwen2",
            TinyArch::Qwen3 => "qwen3",
        }
    }
}

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
            TinyArch::Qwen3 => 2 * self.hidden / self.heads,
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

/// Encodes a row-major matrix in a GGUF block format (round-to-nearest, as llama.cpp's
/// reference quantizers) and returns the bytes.
pub fn encode(dtype: SourceDType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match dtype {
        SourceDType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        SourceDType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        SourceDType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        SourceDType::Q8_0 => {
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * inv).round() as i8 as u8));
            }
        }
        SourceDType::Q4_1 => {
            for b in values.chunks_exact(32) {
                let min = b.iter().fold(f32::INFINITY, |m, v| m.min(*v));
                let max = b.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * inv).round() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        SourceDType::Q4_0 => {
            for b in values.chunks_exact(32) {
                let max = b
                    .iter()
                    .fold(0.0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        other => panic!("tiny models are not written in {other:?} (llama-quantize makes those)"),
    }
    out
}

/// Rounds values through a dtype so the float64 reference sees what the file stores.
fn representable(dtype: SourceDType, rows: usize, cols: usize, values: Vec<f32>) -> Vec<f32> {
    let bytes = encode(dtype, &values);
    lowbit_gpu::RawTensor::new(dtype, rows, cols, &bytes)
        .expect("encoded size")
        .to_f32()
}

/// llama.cpp's `permute` of Q/K rows: within each head, row `2i + j` takes row `j·d/2 + i`.
pub fn permute_rows(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let dst = h * hd + 2 * i + j;
                let src = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
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
        let proj = |layer: usize, which: usize| {
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
            add(n("attn_norm"), 1, h, SourceDType::F32, 0.2, 1.0, &mut rng);
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
            if cfg.arch == TinyArch::Qwen2 {
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
            if cfg.arch == TinyArch::Qwen3 {
                for part in ["attn_q_norm", "attn_k_norm"] {
                    add(n(part), 1, hd, SourceDType::F32, 0.3, 1.0, &mut rng);
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
            add(n("ffn_norm"), 1, h, SourceDType::F32, 0.2, 1.0, &mut rng);
            add(n("ffn_gate"), cfg.ffn, h, proj(l, 1), s, 0.0, &mut rng);
            add(n("ffn_up"), cfg.ffn, h, proj(l, 0), s, 0.0, &mut rng);
            add(
                n("ffn_down"),
                h,
                cfg.ffn,
                SourceDType::F32,
                1.0 / (cfg.ffn as f32).sqrt(),
                0.0,
                &mut rng,
            );
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
        let arch = c.arch.name();
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
        // Only Llama's converter permutes Q/K rows (llama.cpp's NORM rope); Qwen's keep HF order.
        let permute = c.arch == TinyArch::Llama;
        for t in &self.tensors {
            let values = if permute && t.name.ends_with("attn_q.weight") {
                permute_rows(&t.values, c.heads, t.cols)
            } else if permute && t.name.ends_with("attn_k.weight") {
                permute_rows(&t.values, c.kv_heads, t.cols)
            } else {
                t.values.clone()
            };
            let dims: Vec<u64> = if t.rows == 1 {
                vec![t.cols as u64]
            } else {
                vec![t.cols as u64, t.rows as u64]
            };
            w.tensor(&t.name, &dims, t.dtype, encode(t.dtype, &values));
        }
        w.to_bytes()
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
            }],
            "model_type": c.arch.name(),
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
        if c.arch == TinyArch::Qwen3 {
            config["head_dim"] = c.head_dim().into();
            config["attention_bias"] = false.into();
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        let hf: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|t| {
                let name = lowbit::model::hf::hf_name(&t.name).unwrap();
                let shape = if t.rows == 1 {
                    vec![t.cols]
                } else {
                    vec![t.rows, t.cols]
                };
                (name, shape, encode(SourceDType::F32, &t.values))
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

    /// Logits at every position of `tokens`, by a naive float64 Llama forward (Hugging Face
    /// conventions: half-split RoPE on unpermuted weights).
    pub fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim());
        let m = |name: &str| -> (usize, usize, Vec<f64>) {
            let t = self.get(name);
            (t.rows, t.cols, t.values.iter().map(|&v| v as f64).collect())
        };
        let matvec = |w: &(usize, usize, Vec<f64>), x: &[f64]| -> Vec<f64> {
            (0..w.0)
                .map(|r| (0..w.1).map(|k| w.2[r * w.1 + k] * x[k]).sum())
                .collect()
        };
        let norm = |x: &[f64], g: &(usize, usize, Vec<f64>)| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let inv = 1.0 / (ms + c.eps).sqrt();
            x.iter().zip(&g.2).map(|(v, g)| v * inv * g).collect()
        };
        let rope = |x: &mut [f64], pos: usize| {
            for head in x.chunks_mut(hd) {
                for i in 0..hd / 2 {
                    let theta = pos as f64 * c.rope_theta.powf(-2.0 * i as f64 / hd as f64);
                    let (s, co) = theta.sin_cos();
                    let (a, b) = (head[i], head[i + hd / 2]);
                    head[i] = a * co - b * s;
                    head[i + hd / 2] = a * s + b * co;
                }
            }
        };
        let emb = m("token_embd.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb.2[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        for l in 0..c.layers {
            let n = |p: &str| format!("blk.{l}.{p}.weight");
            let (wq, wk, wv, wo) = (
                m(&n("attn_q")),
                m(&n("attn_k")),
                m(&n("attn_v")),
                m(&n("attn_output")),
            );
            let (an, fnm) = (m(&n("attn_norm")), m(&n("ffn_norm")));
            let (wg, wu, wd) = (m(&n("ffn_gate")), m(&n("ffn_up")), m(&n("ffn_down")));
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            let vector = |p: &str| {
                let has = self.tensors.iter().any(|t| t.name == p);
                has.then(|| m(p))
            };
            let b = |p: &str| vector(&format!("blk.{l}.{p}.bias"));
            let (bq, bk, bv) = (b("attn_q"), b("attn_k"), b("attn_v"));
            let (nq, nk) = (vector(&n("attn_q_norm")), vector(&n("attn_k_norm")));
            let add_bias = |x: &mut Vec<f64>, bias: &Option<(usize, usize, Vec<f64>)>| {
                if let Some(b) = bias {
                    x.iter_mut().zip(&b.2).for_each(|(v, b)| *v += b);
                }
            };
            let head_norm = |x: &mut Vec<f64>, g: &Option<(usize, usize, Vec<f64>)>| {
                if let Some(g) = g {
                    *x = x.chunks(hd).flat_map(|head| norm(head, g)).collect();
                }
            };
            for (pos, x) in xs.iter().enumerate() {
                let hx = norm(x, &an);
                let mut q = matvec(&wq, &hx);
                let mut k = matvec(&wk, &hx);
                let mut v = matvec(&wv, &hx);
                add_bias(&mut q, &bq);
                add_bias(&mut k, &bk);
                add_bias(&mut v, &bv);
                head_norm(&mut q, &nq);
                head_norm(&mut k, &nk);
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0.0; c.heads * hd];
                for head in 0..c.heads {
                    let kvh = head / (c.heads / c.kv_heads);
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            q.iter()
                                .zip(&ks[j][kvh * hd..(kvh + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (j, p) in e.iter().enumerate() {
                        for d in 0..hd {
                            attn[head * hd + d] += p / sum * vs[j][kvh * hd + d];
                        }
                    }
                }
                let o = matvec(&wo, &attn);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let hx = norm(x, &fnm);
                let g = matvec(&wg, &hx);
                let u = matvec(&wu, &hx);
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = matvec(&wd, &act);
                x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            }
        }
        let on = m("output_norm.weight");
        let out = if c.tied { emb } else { m("output.weight") };
        xs.iter().map(|x| matvec(&out, &norm(x, &on))).collect()
    }
}

/// Every position's logits of `tokens`, one prefill.
pub fn all_logits(model: &lowbit::model::Llama, tokens: &[u32]) -> Vec<f32> {
    let mut kv = lowbit::engine::solo::SoloKv::new(model, 1, tokens.len()).unwrap();
    let seq = lowbit::model::BatchSeq {
        tokens,
        pos_start: 0,
        blocks: &kv.tables[0],
        logits: 0..tokens.len(),
    };
    model.forward(&[seq], &mut kv.pool).unwrap().data
}

/// Rows of a reference, one after another.
pub fn flat(v: Vec<Vec<f64>>) -> Vec<f64> {
    v.into_iter().flatten().collect()
}
