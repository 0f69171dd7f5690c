//! `lowbit info`: what a model file holds.

use crate::api::reasoning::ReasoningParser;
use crate::api::tool_syntax::{self, ToolCallParser};
use crate::model::llama::{expected_tensors, TensorRole};
use crate::model::{ModelSource, QuantPolicy, TensorPlan};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `lowbit info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long, required_unless_present = "adapters")]
    model: Option<PathBuf>,
    /// List the GPU adapters (the N of `--device gpu:N`) instead of describing a model.
    #[arg(long, conflicts_with = "model")]
    adapters: bool,
    /// Also load the model on this device and report the memory it takes there.
    #[arg(long)]
    device: Option<super::Device>,
    /// Show the format each weight matrix would get under this policy (see `generate --quant`).
    #[arg(long)]
    quant: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The format each weight matrix gets under `policy`, without quantizing anything.
fn plan(
    source: &ModelSource,
    config: &crate::model::LlamaConfig,
    policy: &QuantPolicy,
) -> Result<Vec<TensorPlan>> {
    let tied = config.tied_embeddings && !source.has_tensor("output.weight");
    let mut plans = Vec::new();
    for (name, role) in expected_tensors(config, tied) {
        if let TensorRole::Matrix { .. } = role {
            plans.push(source.plan(&name, policy)?);
        }
    }
    Ok(plans)
}

/// `info --adapters`: every adapter wgpu sees, in `--device gpu:N` order.
fn list_adapters(json: bool) -> Result<()> {
    let adapters = lowbit_gpu::wgpu::device::list_adapters();
    if json {
        let list: Vec<_> = adapters
            .iter()
            .map(|a| {
                serde_json::json!({"index": a.index, "name": a.name, "backend": a.backend,
                    "device_type": a.device_type, "driver": a.driver})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if adapters.is_empty() {
        println!("no GPU adapter (is a Vulkan, Metal or DX12 driver installed?)");
    } else {
        for a in &adapters {
            println!("gpu:{}  {a}", a.index);
        }
    }
    Ok(())
}

/// Bytes the model takes on `device` once loaded: (where, weights, KV, activations).
fn device_memory(
    source: &ModelSource,
    policy: &QuantPolicy,
    device: super::Device,
) -> Result<(String, u64, u64, u64)> {
    let backend = super::backend_for(device)?;
    let model = crate::model::Llama::load(source, backend, policy)?;
    let be = model.backend();
    Ok(
        match be.as_any().downcast_ref::<lowbit_gpu::wgpu::WgpuBackend>() {
            Some(g) => {
                let (w, kv, act) = g.memory_bytes();
                (g.adapter().to_string(), w, kv, act)
            }
            None => ("cpu".into(), model.weight_bytes() as u64, 0, 0),
        },
    )
}

pub fn run(args: InfoArgs) -> Result<()> {
    if args.adapters {
        return list_adapters(args.json);
    }
    let model_path = args.model.clone().context("--model is required")?;
    let mut out = std::io::stdout().lock();
    let source = ModelSource::open(&model_path)?;
    let config = source.config()?;
    let tokenizer = source.tokenizer()?;
    let template = source.chat_template(&tokenizer).ok();
    let has_template = template.is_some();
    // What `lowbit serve` makes of the template by default: its tool syntax, its thinking.
    let template_source = template.as_ref().map(|t| t.source());
    let tool_syntax = ToolCallParser::Auto
        .syntax(
            template_source,
            tool_syntax::mistral_marker(&tokenizer),
            crate::api::tool_harmony::HarmonyIds::of(&tokenizer),
        )
        .name();
    let thinks = ReasoningParser::Auto.splits(template_source);
    let tensors = source.list_tensors();
    let policy = match &args.quant {
        Some(spec) => {
            QuantPolicy::parse(spec, None).map_err(|e| anyhow::anyhow!("--quant: {e}"))?
        }
        None => QuantPolicy::as_stored(),
    };
    let plans = plan(&source, &config, &policy)?;
    let plan_values: usize = plans.iter().map(|p| p.rows * p.cols).sum();
    let plan_bits =
        plans.iter().map(|p| p.bytes).sum::<usize>() as f64 * 8.0 / plan_values.max(1) as f64;
    let params: u64 = tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    // A mixture of experts multiplies each token by `experts_used` of its experts only.
    let idle_params: u64 = config.moe.as_ref().map_or(0, |m| {
        [
            config.n_layers,
            m.experts - m.experts_used,
            3,
            config.hidden_size,
            m.expert_ffn_size,
        ]
        .iter()
        .fold(1u64, |acc, &v| acc.saturating_mul(v as u64))
    });
    let active_params = params.saturating_sub(idle_params);
    let tensor_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    let bits_per_weight = tensor_bytes as f64 * 8.0 / params.max(1) as f64;
    let memory = match args.device {
        Some(d) => Some(device_memory(&source, &policy, d)?),
        None => None,
    };
    if args.json {
        let obj = serde_json::json!({
            "path": model_path,
            "device_memory": memory.as_ref().map(|(on, w, kv, act)| serde_json::json!({
                "device": on, "weights": w, "kv": kv, "activations": act})),
            "file_bytes": source.file_bytes(),
            "parameters": params,
            "active_parameters": active_params,
            "bits_per_weight": bits_per_weight,
            "config": config,
            "tokenizer": {
                "vocab_size": tokenizer.vocab_size(),
                "bos": tokenizer.bos(),
                "eos": tokenizer.eos(),
                "adds_bos": tokenizer.adds_bos(),
                "fim": tokenizer.fim(),
            },
            "chat_template": has_template,
            "tool_call_parser": tool_syntax,
            "reasoning": thinks,
            "tensors": tensors,
            "quant_policy": policy.spec,
            "weight_formats": plans,
            "weight_bits_per_weight": plan_bits,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&obj).context("serialising info")?
        )?;
        return Ok(());
    }
    writeln!(out, "model       {}", model_path.display())?;
    if let Some((on, w, kv, act)) = &memory {
        writeln!(
            out,
            "memory      {:.1} MB on {on} (weights {:.1}, KV {:.1}, activations {:.1})",
            (w + kv + act) as f64 / 1e6,
            *w as f64 / 1e6,
            *kv as f64 / 1e6,
            *act as f64 / 1e6
        )?;
    }
    writeln!(
        out,
        "size        {:.1} MB on disk, {:.1} M parameters{}, {bits_per_weight:.2} bits per weight",
        source.file_bytes() as f64 / 1e6,
        params as f64 / 1e6,
        if idle_params > 0 {
            format!(" ({:.1} M active per token)", active_params as f64 / 1e6)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "shape       {} layers, hidden {}, FFN {}, {} heads / {} KV heads of {}, vocab {}{}{}",
        config.n_layers,
        config.hidden_size,
        config.ffn_size,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.vocab_size,
        if config.attention_bias {
            "; Q/K/V biases"
        } else {
            ""
        },
        match (config.qk_norm, config.qk_norm_whole) {
            (true, false) => "; Q/K head norms",
            (true, true) => "; Q/K norms over whole projections",
            _ => "",
        },
    )?;
    if let Some(gemma) = gemma_summary(&config) {
        writeln!(out, "additions   {gemma}")?;
    }
    if let Some(m) = &config.moe {
        writeln!(
            out,
            "experts     {} per layer, {} per token ({}), FFN {} each{}",
            m.experts,
            m.experts_used,
            if m.normalize {
                "weights renormalized"
            } else {
                "softmax weights"
            },
            m.expert_ffn_size,
            if m.shared_expert_ffn_size > 0 {
                format!("; a shared expert of FFN {}", m.shared_expert_ffn_size)
            } else {
                String::new()
            }
        )?;
    }
    writeln!(
        out,
        "rope        theta {}, {:?} pairs{}, scaling {}; context {}; RMS eps {:e}; tied head {}",
        config.rope_theta,
        config.rope_style,
        match config.rotary_dim {
            Some(d) => format!(" over {d} of {} dimensions", config.head_dim),
            None => String::new(),
        },
        rope_scaling_summary(&config.rope_scaling),
        config.context_length,
        config.rms_eps,
        config.tied_embeddings
    )?;
    let name = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or_else(|| "-".into())
    };
    let fim = tokenizer.fim().map_or_else(
        || "no".to_string(),
        |f| {
            format!(
                "{} {} {}",
                name(Some(f.prefix)),
                name(Some(f.suffix)),
                name(Some(f.middle))
            )
        },
    );
    writeln!(
        out,
        "tokenizer   {} tokens, BOS {} ({}), EOS {:?}, adds BOS: {}; fill in the middle: {fim}; chat template: {}{}",
        tokenizer.vocab_size(),
        tokenizer.bos().map_or("-".into(), |b| b.to_string()),
        name(tokenizer.bos()),
        tokenizer.eos(),
        tokenizer.adds_bos(),
        if has_template { "yes" } else { "no" },
        if has_template {
            format!(
                " (tool calls: {tool_syntax}; thinking split: {})",
                if thinks { "yes" } else { "no" }
            )
        } else {
            String::new()
        }
    )?;
    if let ModelSource::Gguf(g) = &source {
        writeln!(out, "\nmetadata (GGUF v{}):", g.version())?;
        for (k, v) in g.metadata() {
            writeln!(out, "  {k:<44} {}", v.summary())?;
        }
    }
    writeln!(
        out,
        "\nweight formats ({}): {plan_bits:.3} bits per weight over the weight matrices",
        policy.spec
    )?;
    for p in &plans {
        let fallback = p
            .fallback_from
            .as_ref()
            .map(|a| format!("  ({a} does not fit rows of {})", p.cols))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<36} {:>6} -> {:<8} {:<11}{fallback}",
            p.name, p.source, p.format, p.conversion
        )?;
    }
    writeln!(out, "\ntensors:")?;
    for t in &tensors {
        writeln!(
            out,
            "  {:<36} {:<6} {:>14} {:>12} bytes",
            t.name,
            t.dtype,
            format!("{:?}", t.shape),
            t.bytes
        )?;
    }
    Ok(())
}

/// The scaling in a line: LongRoPE's factor lists are summarised, not printed.
fn rope_scaling_summary(s: &crate::model::config::RopeScaling) -> String {
    use crate::model::config::RopeScaling;
    match s {
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position,
            attention_factor,
        } => format!(
            "LongRoPE ({} short and {} long factors, the long ones for a served context over {original_max_position}; attention factor {attention_factor:.4})",
            short_factor.len(),
            long_factor.len()
        ),
        RopeScaling::FreqFactors(f) => format!("{} frequency factors", f.len()),
        RopeScaling::Yarn {
            factor,
            original_max_position,
            attention_factor,
            ..
        } => format!(
            "YaRN ×{factor} over an original context of {original_max_position} (attention factor {attention_factor:.4})"
        ),
        other => format!("{other:?}"),
    }
}

/// What a Gemma model adds to Llama's block, for `info`; `None` for a plain one.
fn gemma_summary(c: &crate::model::config::LlamaConfig) -> Option<String> {
    if !c.has_gemma_features() && !c.needs_format_3() {
        return None;
    }
    let mut parts = vec![format!("{:?} MLP", c.gemma.activation)];
    if let Some(s) = c.gemma.embedding_scale {
        parts.push(format!("embeddings × {s}"));
    }
    if c.gemma.post_norms {
        parts.push(if c.no_pre_norms {
            "post-norms only".into()
        } else {
            "post-norms".into()
        });
    }
    if let Some(s) = c.gemma.attention_scale {
        parts.push(format!("score scale {s}"));
    }
    if let Some(cap) = c.gemma.attn_softcap {
        parts.push(format!("score soft cap {cap}"));
    }
    if let Some(cap) = c.gemma.final_softcap {
        parts.push(format!("logit soft cap {cap}"));
    }
    if let Some(s) = c.gemma.residual_scale {
        parts.push(format!("residual branches × {s}"));
    }
    if let Some(s) = c.gemma.logit_scale {
        parts.push(format!("logits ÷ {s}"));
    }
    let nope = (0..c.n_layers).filter(|&l| c.is_nope(l)).count();
    if nope > 0 {
        parts.push(format!("no RoPE on {nope} of {} layers", c.n_layers));
    }
    if c.gemma.sliding_window > 0 {
        let sliding = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        let theta = c
            .gemma
            .sliding_rope_theta
            .map_or(String::new(), |t| format!(", RoPE theta {t}"));
        parts.push(format!(
            "sliding window {} on {sliding} of {} layers{theta}",
            c.gemma.sliding_window, c.n_layers
        ));
    }
    Some(parts.join("; "))
}
