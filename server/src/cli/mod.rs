//! The `lowbit` command line (the contract in DESIGN.md): `info`, `generate`, `eval perplexity`.

mod generate;
mod info;
mod perplexity;
mod quantize;

use crate::model::{Llama, ModelSource, QuantPolicy};
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::quant::QuantMethod;
use lowbit_gpu::Backend;
use std::path::PathBuf;
use std::sync::Arc;

/// lowbit: a quantized LLM inference server.
#[derive(Debug, Parser)]
#[command(name = "lowbit", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads for compute (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's configuration, tokenizer and tensors.
    Info(info::InfoArgs),
    /// Generate text from a prompt.
    Generate(generate::GenerateArgs),
    /// Write a model in the formats a policy asks for, as one .safetensors file.
    Quantize(quantize::QuantizeArgs),
    /// Measure a model's quality.
    Eval {
        #[command(subcommand)]
        which: EvalCommand,
    },
}

/// Evaluations.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Perplexity on a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(perplexity::PerplexityArgs),
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The best available (the CPU, until the GPU backend lands).
    Auto,
    Cpu,
    Gpu,
}

/// Options shared by every command that loads a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Weight formats: a format (f32, f16, q8, q4g32, q4mg64, …), a preset (q8, q4, q4m), and
    /// PATTERN=FORMAT rules, comma-separated ("q4g64,output=q8,blk.0.*=q8"). Default: as stored.
    #[arg(long)]
    pub quant: Option<String>,
    /// How scales are chosen when quantizing (default: search for presets, rtn otherwise).
    #[arg(long, value_enum)]
    pub quant_method: Option<QuantMethodArg>,
}

/// `--quant-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantMethodArg {
    /// Round to nearest (llama.cpp's reference quantizers).
    Rtn,
    /// Per-group search of the scale (and min) with the least reconstruction error.
    Search,
}

impl ModelArgs {
    /// The quantization policy the flags ask for.
    pub fn policy(&self) -> Result<QuantPolicy> {
        let method = self.quant_method.map(|m| match m {
            QuantMethodArg::Rtn => QuantMethod::Rtn,
            QuantMethodArg::Search => QuantMethod::Search,
        });
        match &self.quant {
            None => {
                let mut p = QuantPolicy::as_stored();
                if let Some(m) = method {
                    p.method = m;
                }
                Ok(p)
            }
            Some(spec) => {
                QuantPolicy::parse(spec, method).map_err(|e| anyhow::anyhow!("--quant: {e}"))
            }
        }
    }

    /// Opens the model file and loads the model on the chosen device and formats.
    pub fn load(&self) -> Result<(ModelSource, Llama)> {
        let policy = self.policy()?;
        let backend = backend_for(self.device)?;
        let source = ModelSource::open(&self.model)?;
        let model = Llama::load(&source, backend, &policy)?;
        Ok((source, model))
    }
}

/// The backend for a `--device` choice.
pub fn backend_for(device: Device) -> Result<Arc<dyn Backend>> {
    match device {
        Device::Auto | Device::Cpu => Ok(Arc::new(CpuBackend::new())),
        Device::Gpu => bail!("--device gpu: the wgpu backend is not built yet; use --device cpu"),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()?;
    }
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Eval {
            which: EvalCommand::Perplexity(a),
        } => perplexity::run(a),
    }
}
