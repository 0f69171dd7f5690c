//! Synthetic models: random weights, already in their format, in the shapes of real
//! architectures, so that speed can be measured where a GPU is bandwidth-bound (SmolLM2 is too
//! small for that) without a multi-gigabyte download. Not for text: the weights are noise.

use super::config::{Activation, GemmaAdditions, LlamaConfig, MoeConfig, RopeScaling};
use super::error::Result;
use super::llama::Llama;
use super::quant_policy::TensorPlan;
use half::f16;
use lowbit_gpu::quant::qtensor::{storage_bytes, words_per_row};
use lowbit_gpu::{Backend, QTensor, QuantFormat, RopeStyle};
use std::sync::Arc;

/// The architectures `lowbit bench --synthetic` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyntheticModel {
    /// Llama-3.2-1B's shapes: 16 layers of 2048, GQA 32/8, FFN 8192, tied 128256 vocabulary.
    #[value(name = "llama-1b")]
    Llama1B,
    /// Llama-3.1-8B's shapes: 32 layers of 4096, GQA 32/8, FFN 14336, separate head.
    #[value(name = "llama-8b")]
    Llama8B,
    /// SmolLM2-135M's shapes (30 layers of 576, GQA 9/3, FFN 1536, tied 49152 vocabulary):
    /// the default model's speed where its file cannot travel (a device check).
    #[value(name = "smollm2-135m")]
    Smollm2,
    /// Qwen2.5-0.5B's shapes: 24 layers of 896, GQA 14/2, FFN 4864, Q/K/V biases, tied 151936
    /// vocabulary.
    #[value(name = "qwen2.5-0.5b")]
    Qwen25Half,
    /// Qwen3-0.6B's shapes: 28 layers of 1024, GQA 16/8 of 128-wide heads, FFN 3072, Q/K head
    /// norms, tied 151936 vocabulary.
    #[value(name = "qwen3-0.6b")]
    Qwen3Small,
    /// Gemma-3-1B's shapes: 26 layers of 1152, GQA 4/1 of 256-wide heads, FFN 6912 (GeGLU),
    /// post-norms, Q/K head norms, five of six layers in a 512-position sliding window, tied
    /// 262144 vocabulary.
    #[value(name = "gemma3-1b")]
    Gemma3OneB,
    /// Phi-4-mini's shapes: 32 layers of 3072, GQA 24/8 of 128-wide heads with 96 dimensions
    /// rotated, FFN 8192, LongRoPE, tied 200064 vocabulary.
    #[value(name = "phi4-mini")]
    Phi4Mini,
    /// Qwen3-30B-A3B's shapes: 48 layers of 2048, GQA 32/4 of 128-wide heads, Q/K head
    /// norms, 128 experts of FFN 768 per layer (8 per token), separate 151936-row head.
    #[value(name = "qwen3-30b-a3b")]
    Qwen3MoeA3B,
    /// gpt-oss-20b's shapes: 24 layers of 2880, GQA 64/8 of 64-wide heads with biases and
    /// sinks, every other layer in a 128-position window, YaRN ×32, 32 experts of FFN 2880
    /// per layer (4 per token) with biases and the clamped SwiGLU, separate 201088-row head.
    #[value(name = "gpt-oss-20b")]
    GptOss20B,
}

impl SyntheticModel {
    /// The architecture's hyper-parameters.
    pub fn config(self) -> LlamaConfig {
        let llama3 = |hidden_size, n_layers, head_dim, ffn_size, tied| LlamaConfig {
            hidden_size,
            n_layers,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim,
            ffn_size,
            rms_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::HalfSplit,
            vocab_size: 128_256,
            tied_embeddings: tied,
            context_length: 8192,
            attention_bias: false,
            qk_norm: false,
            ..LlamaConfig::default()
        };
        let qwen25 = || LlamaConfig {
            hidden_size: 896,
            n_layers: 24,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            ffn_size: 4864,
            rms_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::HalfSplit,
            vocab_size: 151_936,
            tied_embeddings: true,
            context_length: 32_768,
            attention_bias: true,
            qk_norm: false,
            ..LlamaConfig::default()
        };
        match self {
            SyntheticModel::Llama1B => llama3(2048, 16, 64, 8192, true),
            SyntheticModel::Llama8B => llama3(4096, 32, 128, 14336, false),
            SyntheticModel::Smollm2 => LlamaConfig {
                hidden_size: 576,
                n_layers: 30,
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
                ffn_size: 1536,
                rms_eps: 1e-5,
                rope_theta: 100_000.0,
                rope_scaling: RopeScaling::None,
                rope_style: RopeStyle::HalfSplit,
                vocab_size: 49_152,
                tied_embeddings: true,
                context_length: 8192,
                attention_bias: false,
                qk_norm: false,
                ..LlamaConfig::default()
            },
            SyntheticModel::Qwen25Half => qwen25(),
            // Qwen3-0.6B: Qwen2.5's vocabulary and RoPE, wider heads, head norms, no biases.
            SyntheticModel::Qwen3Small => LlamaConfig {
                hidden_size: 1024,
                n_layers: 28,
                n_heads: 16,
                n_kv_heads: 8,
                head_dim: 128,
                ffn_size: 3072,
                context_length: 40_960,
                attention_bias: false,
                qk_norm: true,
                ..qwen25()
            },
            SyntheticModel::Gemma3OneB => LlamaConfig {
                hidden_size: 1152,
                n_layers: 26,
                n_heads: 4,
                n_kv_heads: 1,
                head_dim: 256,
                ffn_size: 6912,
                rms_eps: 1e-6,
                rope_theta: 1_000_000.0,
                rope_scaling: RopeScaling::None,
                rope_style: RopeStyle::HalfSplit,
                rotary_dim: None,
                nope_layers: Vec::new(),
                qk_norm_whole: false,
                no_pre_norms: false,
                moe: None,
                gpt_oss: false,
                vocab_size: 262_144,
                tied_embeddings: true,
                context_length: 32_768,
                attention_bias: false,
                qk_norm: true,
                gemma: GemmaAdditions {
                    activation: Activation::GeluTanh,
                    embedding_scale: Some((1152f32).sqrt()),
                    post_norms: true,
                    sliding_window: 512,
                    sliding_layers: (0..26).map(|l| l % 6 < 5).collect(),
                    sliding_rope_theta: Some(10_000.0),
                    ..GemmaAdditions::default()
                },
            },
            SyntheticModel::Phi4Mini => LlamaConfig {
                hidden_size: 3072,
                n_layers: 32,
                n_heads: 24,
                n_kv_heads: 8,
                head_dim: 128,
                ffn_size: 8192,
                rotary_dim: Some(96),
                // Factor lists of ones: the speed is the same whatever they hold.
                rope_scaling: RopeScaling::LongRope {
                    short_factor: Vec::new(),
                    long_factor: Vec::new(),
                    original_max_position: 4096,
                    attention_factor: (1.0 + 32f64.ln() / 4096f64.ln()).sqrt(),
                },
                vocab_size: 200_064,
                tied_embeddings: true,
                context_length: 131_072,
                ..LlamaConfig::default()
            },
            SyntheticModel::Qwen3MoeA3B => LlamaConfig {
                hidden_size: 2048,
                n_layers: 48,
                n_heads: 32,
                n_kv_heads: 4,
                head_dim: 128,
                ffn_size: 6144,
                qk_norm: true,
                attention_bias: false,
                tied_embeddings: false,
                context_length: 40_960,
                moe: Some(MoeConfig {
                    experts: 128,
                    experts_used: 8,
                    expert_ffn_size: 768,
                    normalize: true,
                    shared_expert_ffn_size: 0,
                    shared_expert_gated: false,
                }),
                ..qwen25()
            },
            SyntheticModel::GptOss20B => LlamaConfig {
                hidden_size: 2880,
                n_layers: 24,
                n_heads: 64,
                n_kv_heads: 8,
                head_dim: 64,
                ffn_size: 2880,
                rope_theta: 150_000.0,
                rope_scaling: RopeScaling::Yarn {
                    factor: 32.0,
                    original_max_position: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    attention_factor: super::rope_params::yarn_mscale(32.0, 1.0),
                },
                vocab_size: 201_088,
                tied_embeddings: false,
                context_length: 131_072,
                attention_bias: true,
                moe: Some(MoeConfig {
                    experts: 32,
                    experts_used: 4,
                    expert_ffn_size: 2880,
                    normalize: true,
                    shared_expert_ffn_size: 0,
                    shared_expert_gated: false,
                }),
                gpt_oss: true,
                gemma: GemmaAdditions {
                    activation: Activation::SwigluOai,
                    sliding_window: 128,
                    sliding_layers: (0..24).map(|l: usize| l.is_multiple_of(2)).collect(),
                    ..GemmaAdditions::default()
                },
                ..LlamaConfig::default()
            },
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SyntheticModel::Llama1B => "llama-1b",
            SyntheticModel::Llama8B => "llama-8b",
            SyntheticModel::Smollm2 => "smollm2-135m",
            SyntheticModel::Qwen25Half => "qwen2.5-0.5b",
            SyntheticModel::Qwen3Small => "qwen3-0.6b",
            SyntheticModel::Gemma3OneB => "gemma3-1b",
            SyntheticModel::Phi4Mini => "phi4-mini",
            SyntheticModel::Qwen3MoeA3B => "qwen3-30b-a3b",
            SyntheticModel::GptOss20B => "gpt-oss-20b",
        }
    }
}

/// splitmix64: fast, and the same weights for the same seed on every machine.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random `rows × cols` matrix in `format`, of the magnitude of trained weights.
fn random_matrix(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    noise: &mut Noise,
) -> Result<QTensor> {
    let n_words = rows * words_per_row(format, cols);
    let groups = if format.is_quantized() {
        rows * cols / format.group()
    } else {
        0
    };
    let words: Vec<u32> = match format {
        QuantFormat::F32 => (0..n_words)
            .map(|_| (noise.unit() * 0.05).to_bits())
            .collect(),
        QuantFormat::F16 => (0..n_words)
            .map(|_| {
                let h = |v: f32| u32::from(f16::from_f32(v * 0.05).to_bits());
                h(noise.unit()) | (h(noise.unit()) << 16)
            })
            .collect(),
        _ => (0..n_words).map(|_| noise.next() as u32).collect(),
    };
    let step = match format {
        QuantFormat::Q8 => 0.05 / 127.0,
        QuantFormat::Lut4(book) => 0.05 / f32::from(book.extreme().unsigned_abs()),
        _ => 0.05 / 8.0,
    };
    let scales: Vec<f16> = (0..groups)
        .map(|_| f16::from_f32(step * (0.75 + 0.25 * noise.unit())))
        .collect();
    let mins: Vec<f16> = if matches!(format, QuantFormat::Q4M(_)) {
        scales
            .iter()
            .map(|d| f16::from_f32(-8.0 * d.to_f32()))
            .collect()
    } else {
        Vec::new()
    };
    // The validating constructor: a wrong array size is an error here, not a bad upload.
    Ok(QTensor::new(format, rows, cols, words, scales, mins)?)
}

impl Llama {
    /// A model of `arch`'s shapes with random weights in `format` (a smaller group of the
    /// same kind, Q8 or F16 where rows do not split into its groups).
    pub fn synthetic(
        arch: SyntheticModel,
        format: QuantFormat,
        backend: Arc<dyn Backend>,
        seed: u64,
    ) -> Result<Self> {
        Self::synthetic_of(arch.config(), format, backend, seed)
    }

    /// [`Llama::synthetic`] of any config.
    fn synthetic_of(
        c: LlamaConfig,
        format: QuantFormat,
        backend: Arc<dyn Backend>,
        seed: u64,
    ) -> Result<Self> {
        let separate_output = !c.tied_embeddings;
        let mut noise = Noise(seed);
        let mut norm_noise = Noise(seed ^ 0x5eed);
        Llama::assemble(
            c,
            backend,
            separate_output,
            |name, rows, cols| {
                // Routers stay f32, as quantization leaves them.
                let f = if name.contains(".ffn_gate_inp") {
                    QuantFormat::F32
                } else {
                    format.fallback_for(cols)
                };
                let q = random_matrix(f, rows, cols, &mut noise)?;
                let plan = TensorPlan {
                    name: name.to_string(),
                    rows,
                    cols,
                    source: "synthetic".into(),
                    format: f.to_string(),
                    fallback_from: (f != format).then(|| format.to_string()),
                    conversion: "synthetic",
                    bytes: storage_bytes(f, rows, cols),
                };
                Ok((q, plan))
            },
            // Norm weights near 1, biases near 0.
            |name, len| {
                let center = if name.ends_with(".bias") { 0.0 } else { 1.0 };
                Ok((0..len).map(|_| center + 0.1 * norm_noise.unit()).collect())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_gpu::cpu::CpuBackend;

    /// gpt-oss-20b's config cut to two layers (sliding, global) and a small vocabulary: it
    /// builds (sinks, biases, the clamped SwiGLU) and runs a step.
    #[test]
    fn gpt_oss_builds_and_steps() {
        let mut c = SyntheticModel::GptOss20B.config();
        c.n_layers = 2;
        c.vocab_size = 64;
        c.gemma.sliding_layers.truncate(2);
        let model =
            Llama::synthetic_of(c, QuantFormat::Q8, Arc::new(CpuBackend::new()), 1).unwrap();
        let mut kv = crate::engine::solo::SoloKv::new(&model, 1, 4).unwrap();
        let seq = crate::model::BatchSeq {
            tokens: &[1, 2, 3],
            pos_start: 0,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: 0..3,
        };
        let logits = model.forward(&[seq], &mut kv.pool).unwrap();
        assert!(logits.data.iter().all(|v| v.is_finite()));
        assert_eq!(logits.data.len(), 3 * 64);
    }

    /// Qwen3-30B-A3B's config cut to one layer of 4 experts and a small vocabulary: it builds,
    /// with f32 routers and quantized experts, and a decode step reads 2 experts' worth.
    #[test]
    fn a_mixture_of_experts_builds_with_f32_routers() {
        let mut c = SyntheticModel::Qwen3MoeA3B.config();
        c.n_layers = 1;
        c.vocab_size = 64;
        if let Some(m) = c.moe.as_mut() {
            m.experts = 4;
            m.experts_used = 2;
        }
        let model =
            Llama::synthetic_of(c, QuantFormat::Q8, Arc::new(CpuBackend::new()), 1).unwrap();
        let router = model
            .plans()
            .iter()
            .find(|p| p.name == "blk.0.ffn_gate_inp.weight")
            .unwrap();
        assert_eq!((router.format.as_str(), router.rows), ("f32", 4));
        let expert = model
            .plans()
            .iter()
            .find(|p| p.name == "blk.0.ffn_down.3.weight")
            .unwrap();
        assert_eq!((expert.format.as_str(), expert.cols), ("q8", 768));
        let expert_bytes = 4 * 3 * storage_bytes(QuantFormat::Q8, 768, 2048);
        let embedding = storage_bytes(QuantFormat::Q8, 64, 2048);
        assert_eq!(
            model.weight_bytes() - model.decode_weight_bytes(),
            embedding + expert_bytes / 2
        );
    }
}
