//! The `lowbit` command line (the contract in DESIGN.md): `serve`, `info`, `generate`,
//! `quantize`, `bench`, `eval perplexity`.

mod bench;
mod bench_serve;
mod generate;
mod info;
mod perplexity;
mod quantize;
pub mod serve;

use crate::model::calibrate::DEFAULT_CALIBRATION_WINDOWS;
use crate::model::{Calibration, Llama, ModelSource, QuantPolicy};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::quant::QuantMethod;
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{WgpuBackend, WgpuOptions};
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
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Show a model's configuration, tokenizer and tensors.
    Info(info::InfoArgs),
    /// Generate text from a prompt.
    Generate(generate::GenerateArgs),
    /// Write a model in the formats a policy asks for, as one .safetensors file.
    Quantize(quantize::QuantizeArgs),
    /// Measure prompt and generation speed and memory (`bench serve`: load-test a server).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Bench(bench::BenchArgs),
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

/// Where the model runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A hardware GPU (discrete, then integrated) if there is one, else the CPU. A software
    /// Vulkan adapter (lavapipe) is slower than the CPU backend, so `auto` never takes it.
    Auto,
    Cpu,
    /// The best GPU adapter, software ones included.
    Gpu,
    /// The N-th adapter (`lowbit info --adapters` lists them).
    GpuIndex(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            other => other
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(Device::GpuIndex)
                .ok_or_else(|| format!("unknown device '{s}' (valid: auto, cpu, gpu, gpu:N)")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu => write!(f, "gpu"),
            Device::GpuIndex(i) => write!(f, "gpu:{i}"),
        }
    }
}

/// Options shared by every command that loads a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// How a model is loaded: where it runs and in which formats (`bench --synthetic` takes these
/// without a file).
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Where to run: auto (a hardware GPU, else the CPU), cpu, gpu (any adapter, software
    /// ones included), gpu:N (the N-th adapter).
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
    /// Weight formats: a format (f32, f16, q8, q4g32, q4mg64, …), a preset (q8, q4, q4m), and
    /// PATTERN=FORMAT rules, comma-separated ("q4g64,output=q8,blk.0.*=q8"). Default: as stored.
    #[arg(long)]
    pub quant: Option<String>,
    /// How scales are chosen when quantizing (default: rtn).
    #[arg(long, value_enum)]
    pub quant_method: Option<QuantMethodArg>,
    /// Activation-aware quantization: a text whose activations (seen by the unquantized model)
    /// drive GPTQ error compensation and the scale search.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Windows of 512 tokens of the calibration text to use.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_WINDOWS)]
    pub calibration_windows: usize,
}

/// `--kv-cache-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KvCacheDtypeArg {
    /// 4 bytes per value: the exact keys and values.
    #[default]
    F32,
    /// 2 bytes per value: twice the tokens per byte and half the bytes decode attention
    /// reads; each key and value rounded once (llama.cpp's default cache type). CPU only.
    F16,
}

impl From<KvCacheDtypeArg> for lowbit_gpu::KvDtype {
    fn from(a: KvCacheDtypeArg) -> Self {
        match a {
            KvCacheDtypeArg::F32 => lowbit_gpu::KvDtype::F32,
            KvCacheDtypeArg::F16 => lowbit_gpu::KvDtype::F16,
        }
    }
}

/// `--quant-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantMethodArg {
    /// Round to nearest (llama.cpp's reference quantizers).
    Rtn,
    /// Per-group search of the scale (and min) with the least reconstruction error.
    Search,
}

impl LoadArgs {
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

    /// The calibration statistics `--calibration` asks for, if any.
    pub fn calibration(&self, source: &ModelSource) -> Result<Option<Calibration>> {
        let Some(path) = &self.calibration else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--calibration {}", path.display()))?;
        let tokenizer = source.tokenizer()?;
        let start = std::time::Instant::now();
        let c = Calibration::gather(source, &tokenizer, &text, self.calibration_windows)?;
        eprintln!(
            "calibrated on {} tokens of {} in {:.1}s",
            c.tokens,
            path.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(Some(c))
    }

    /// Loads the model from an opened source on the chosen device and formats.
    pub fn load_model(&self, source: &ModelSource) -> Result<Llama> {
        let policy = self.policy()?;
        let calibration = self.calibration(source)?;
        Ok(Llama::load_calibrated(
            source,
            backend_for(self.device)?,
            &policy,
            calibration.as_ref(),
        )?)
    }
}

impl ModelArgs {
    /// The quantization policy the flags ask for.
    pub fn policy(&self) -> Result<QuantPolicy> {
        self.load.policy()
    }

    /// Loads the model from an opened source on the chosen device and formats.
    pub fn load_model(&self, source: &ModelSource) -> Result<Llama> {
        self.load.load_model(source)
    }

    /// Opens the model file and loads the model on the chosen device and formats.
    pub fn load(&self) -> Result<(ModelSource, Llama)> {
        let source = ModelSource::open(&self.model)?;
        let model = self.load.load_model(&source)?;
        Ok((source, model))
    }
}

/// The backend for a `--device` choice. Under `auto`, no hardware GPU (or one that fails to
/// open) means the CPU, and the log says why.
pub fn backend_for(device: Device) -> Result<Arc<dyn Backend>> {
    let gpu = |choice| -> Result<Arc<dyn Backend>> {
        let be = WgpuBackend::new(choice, WgpuOptions::from_env()?)?;
        tracing::info!(
            target: "lowbit::device",
            subgroups = be.uses_subgroups(),
            activations = ?be.options().activations,
            "running on the GPU: {}",
            be.adapter()
        );
        Ok(Arc::new(be))
    };
    match device {
        Device::Cpu => {
            tracing::info!(
                target: "lowbit::device",
                kernel = lowbit_gpu::cpu::qdot::best_gemm().0,
                "running on the CPU (--device cpu)"
            );
            Ok(Arc::new(CpuBackend::new()))
        }
        Device::Gpu => gpu(AdapterChoice::Any).context("--device gpu"),
        Device::GpuIndex(i) => {
            gpu(AdapterChoice::Index(i)).with_context(|| format!("--device gpu:{i}"))
        }
        Device::Auto => match gpu(AdapterChoice::Hardware) {
            Ok(be) => Ok(be),
            Err(e) => {
                tracing::info!(
                    target: "lowbit::device",
                    kernel = lowbit_gpu::cpu::qdot::best_gemm().0,
                    "running on the CPU: {e:#}"
                );
                Ok(Arc::new(CpuBackend::new()))
            }
        },
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
        Command::Serve(a) => serve::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval {
            which: EvalCommand::Perplexity(a),
        } => perplexity::run(a),
    }
}
