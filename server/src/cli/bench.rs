//! `lowbit bench`: prompt-processing and generation speed and resident memory, the way
//! `llama-bench` measures them (pp: one forward over the prompt; tg: token-by-token decode),
//! so the figures compare.

use super::{KvCacheDtypeArg, LoadArgs};
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::engine::solo::SoloKv;
use crate::model::synthetic::SyntheticModel;
use crate::model::{BatchSeq, Llama, MixedReadback};
use anyhow::{Context, Result};
use clap::Args;
use lowbit_gpu::wgpu::profile::Profile;
use lowbit_gpu::wgpu::WgpuBackend;
use std::path::PathBuf;
use std::time::Instant;

/// Kernel times of one profiled run, longest first.
fn print_profile(name: &str, p: &Profile) {
    let total = p.total_ns().max(1.0);
    println!("{name}: GPU time per kernel (timestamp queries, one pass per dispatch)");
    println!(
        "{:<28} {:>8} {:>11} {:>10} {:>6}",
        "kernel", "calls", "total ms", "avg µs", "%"
    );
    let mut rows: Vec<_> = p.kernels.iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (k, (calls, ns)) in rows {
        println!(
            "{k:<28} {calls:>8} {:>11.2} {:>10.1} {:>6.1}",
            ns / 1e6,
            ns / 1e3 / *calls as f64,
            100.0 * ns / total
        );
    }
    println!("{:<28} {:>8} {:>11.2}", "all", "", total / 1e6);
}

/// Arguments of `lowbit bench` (or `lowbit bench serve …`, the HTTP load generator).
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    serve: Option<BenchCommand>,
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights in a real architecture's shapes instead of a model file (for speed
    /// only: the text is noise). `--quant` is then one format (default q4g32).
    #[arg(long, value_enum)]
    synthetic: Option<SyntheticModel>,
    #[command(flatten)]
    load: LoadArgs,
    /// Prompt tokens per sequence (0: skip the prompt test).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Generated tokens per sequence (0: skip the generation test).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Positions already cached when the generation test starts (filled by an untimed
    /// prefill): its decode then attends over as many positions as a server's does after a
    /// prompt.
    #[arg(long, default_value_t = 0)]
    gen_context: usize,
    /// Sequences run together in one ragged batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How the KV cache stores keys and values.
    #[arg(long, value_enum, default_value_t = KvCacheDtypeArg::F32)]
    kv_cache_dtype: KvCacheDtypeArg,
    /// Decode samples at this temperature instead of taking the argmax (0: greedy), as the
    /// server samples: on a GPU a token drawn where the logits live, on the CPU the sampler
    /// over each row.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-p of the sampled decode (with `--temperature`).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print the GPU time of every kernel (timestamp queries; wgpu only).
    #[arg(long)]
    profile: bool,
}

/// `lowbit bench`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Load-test a running OpenAI-compatible server with streaming chats.
    Serve(super::bench_serve::BenchServeArgs),
}

/// Resident and peak resident memory of this process, in bytes (Linux; 0 elsewhere).
pub fn memory_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The model `--model` or `--synthetic` names, and its name for the report.
fn load(args: &BenchArgs) -> Result<(Llama, String)> {
    let (mut model, name) = load_unsized(args)?;
    // The longest sequence measured, as llama-bench sizes its context (LongRoPE's choice).
    model.set_max_positions(
        args.prompt_tokens
            .max(args.gen_context + args.gen_tokens)
            .max(1),
    );
    Ok((model, name))
}

fn load_unsized(args: &BenchArgs) -> Result<(Llama, String)> {
    match (&args.model, args.synthetic) {
        (Some(path), _) => {
            let source = crate::model::ModelSource::open(path)?;
            Ok((args.load.load_model(&source)?, path.display().to_string()))
        }
        (None, Some(arch)) => {
            anyhow::ensure!(
                args.load.calibration.is_none() && args.load.quant_method.is_none(),
                "--synthetic: the weights are random, so there is nothing to calibrate or quantize"
            );
            let spec = args.load.quant.as_deref().unwrap_or("q4g32");
            let format = lowbit_gpu::QuantFormat::parse(spec)
                .map_err(|e| anyhow::anyhow!("--quant with --synthetic takes one format: {e}"))?;
            let backend = super::backend_for(args.load.device)?;
            let model = Llama::synthetic(arch, format, backend, 0x10b1)?;
            Ok((model, format!("synthetic {}", arch.name())))
        }
        (None, None) => {
            anyhow::bail!("--model PATH or --synthetic llama-1b|llama-8b|smollm2-135m is required")
        }
    }
}

/// Achieved weight bandwidth of decode: every step streams the layers' matrices and the
/// output head once for the whole batch.
/// One decode step's tokens, chosen as the server chooses them: greedy, the argmax (a GPU
/// reads back ids, not vocabularies); sampled, a token drawn where the logits live on a GPU,
/// the sampler over each whole row on the CPU.
fn decode_step(
    model: &Llama,
    seqs: &[BatchSeq<'_>],
    pool: &mut lowbit_gpu::KvPool,
    samplers: &mut [Sampler],
) -> Result<Vec<u32>> {
    let vocab = model.config().vocab_size;
    if samplers.iter().all(Sampler::takes_argmax) {
        return Ok(model.forward_argmax(seqs, pool)?);
    }
    if model.backend().logits_stay_on_device() {
        let draws = samplers
            .iter_mut()
            .enumerate()
            .map(|(row, s)| {
                let (u, inv_temperature, min_weight, top_p) = s
                    .whole_row_draw(vocab)
                    .context("a sampler without a whole-row draw")?;
                Ok(lowbit_gpu::RowDraw {
                    row,
                    u,
                    inv_temperature,
                    min_weight,
                    top_p,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let what = MixedReadback {
            draws,
            ..MixedReadback::default()
        };
        return Ok(model.forward_mixed(seqs, pool, &what)?.drawn);
    }
    let logits = model.forward(seqs, pool)?;
    Ok(samplers
        .iter_mut()
        .enumerate()
        .map(|(row, s)| s.sample(logits.row(row)))
        .collect())
}

fn weight_gb_per_second(model: &Llama, gen_tokens_per_second: f64, batch: usize) -> f64 {
    model.decode_weight_bytes() as f64 * gen_tokens_per_second / batch as f64 / 1e9
}

/// Each sequence's whole `tokens` from position 0 into its own blocks, the last row's logits
/// asked for (one prefill over the batch).
fn whole_prompts<'a>(tables: &'a [Vec<u32>], tokens: &'a [u32]) -> Vec<BatchSeq<'a>> {
    tables
        .iter()
        .map(|table| BatchSeq {
            tokens,
            pos_start: 0,
            blocks: table,
            window_blocks: &[],
            logits: tokens.len().saturating_sub(1)..tokens.len(),
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Serve(a)) = args.serve {
        return super::bench_serve::run(a);
    }
    let load_start = Instant::now();
    let (model, model_name) = load(&args)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size as u32;
    // Ordinary token ids, away from the special tokens at the start of most vocabularies.
    let first_id = (vocab / 2).min(1000);
    let batch = args.batch.max(1);
    let kv_dtype = args.kv_cache_dtype.into();
    let span = u64::from((vocab - first_id).max(1));
    // A fixed stream of those ids, the same for every sequence.
    let tokens = |n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| first_id + (i * 7919 % span) as u32)
            .collect()
    };
    let prompt = tokens(args.prompt_tokens);

    let run_prompt = || -> Result<f64> {
        let mut kv = SoloKv::with_dtype(&model, batch, prompt.len(), kv_dtype)?;
        let seqs = whole_prompts(&kv.tables, &prompt);
        let t = Instant::now();
        model.forward(&seqs, &mut kv.pool)?;
        Ok((batch * prompt.len()) as f64 / t.elapsed().as_secs_f64())
    };
    let gpu = model.backend().as_any().downcast_ref::<WgpuBackend>();
    if args.temperature < 0.0 || !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--temperature must be at least 0 and --top-p in (0, 1]");
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        ..SamplingParams::default()
    };
    let run_gen = || -> Result<f64> {
        let cached = args.gen_context;
        let mut kv = SoloKv::with_dtype(&model, batch, cached + args.gen_tokens, kv_dtype)?;
        if cached > 0 {
            let context = tokens(cached);
            let seqs = whole_prompts(&kv.tables, &context);
            model.forward_argmax(&seqs, &mut kv.pool)?;
        }
        // The host times count decode steps only, not the untimed prefill of the context.
        if let Some(g) = gpu {
            g.take_host_times()?;
        }
        let mut next: Vec<u32> = (0..batch as u64)
            .map(|b| first_id + (b % span) as u32)
            .collect();
        let mut samplers: Vec<Sampler> = (0..batch as u64)
            .map(|b| {
                Sampler::new(SamplingParams {
                    seed: b,
                    ..sampling.clone()
                })
            })
            .collect();
        let t = Instant::now();
        for pos in cached..cached + args.gen_tokens {
            let seqs: Vec<BatchSeq<'_>> = next
                .iter()
                .zip(&kv.tables)
                .map(|(tok, table)| BatchSeq {
                    tokens: std::slice::from_ref(tok),
                    pos_start: pos,
                    blocks: table,
                    window_blocks: &[],
                    logits: 0..1,
                })
                .collect();
            next = decode_step(&model, &seqs, &mut kv.pool, &mut samplers)?;
        }
        Ok((batch * args.gen_tokens) as f64 / t.elapsed().as_secs_f64())
    };

    if args.profile {
        match gpu {
            Some(g) if g.can_profile() => {}
            Some(_) => anyhow::bail!("--profile: this adapter has no timestamp queries"),
            None => anyhow::bail!("--profile times GPU kernels; the model runs on the CPU"),
        }
    }
    // With --profile, one more run, timed per kernel (the timing passes slow it, so it is
    // not among the reported reps).
    let profiled = |name: &str, f: &dyn Fn() -> Result<f64>| -> Result<()> {
        if let (true, Some(g)) = (args.profile, gpu) {
            g.set_profiling(true)?;
            let r = f();
            print_profile(name, &g.take_profile()?);
            g.set_profiling(false)?;
            r?;
        }
        Ok(())
    };

    let reps = args.reps.max(1);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    if args.prompt_tokens > 0 {
        run_prompt().context("warm-up")?;
        for _ in 0..reps {
            pp.push(run_prompt()?);
        }
        profiled(&format!("pp{}", args.prompt_tokens), &run_prompt)?;
    }
    let mut host = None;
    if args.gen_tokens > 0 {
        for _ in 0..reps {
            tg.push(run_gen()?);
        }
        host = gpu.map(|g| g.take_host_times()).transpose()?;
        profiled(&format!("tg{}", args.gen_tokens), &run_gen)?;
    }
    // Per decode step of the last rep (one submission each): the host's encoding against its
    // wait for the GPU.
    let host_per_step = host.filter(|h| h.flushes > 0).map(|h| {
        let per = |v: u64| v as f64 / h.flushes as f64;
        serde_json::json!({"dispatches": per(h.dispatches),
            "encode_us": per(h.encode_ns) / 1e3, "wait_us": per(h.wait_ns) / 1e3})
    });
    let (rss, peak) = memory_bytes();
    let (pp, tg) = (median(pp), median(tg));
    let gb_per_second = weight_gb_per_second(&model, tg, batch);
    let gpu_memory = gpu.map(|g| {
        let (weights, kv, activations) = g.memory_bytes();
        serde_json::json!({"weights": weights, "kv": kv, "activations": activations,
            "total": weights + kv + activations, "adapter": g.adapter().to_string()})
    });
    if args.json {
        let obj = serde_json::json!({
            "model": model_name,
            "quant": args.load.quant,
            "backend": model.backend().name(),
            "threads": lowbit_gpu::cpu::pool::Pool::global().threads(),
            "batch": batch,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "prompt_tokens_per_second": pp,
            "gen_tokens_per_second": tg,
            "load_seconds": load_seconds,
            "weight_bytes": model.weight_bytes(),
            "decode_weight_bytes": model.decode_weight_bytes(),
            "weight_gb_per_second": gb_per_second,
            "gpu_memory_bytes": gpu_memory,
            "gpu_decode_step": host_per_step,
            "bits_per_weight": model.bits_per_weight(),
            "rss_bytes": rss,
            "peak_rss_bytes": peak,
        });
        println!("{}", serde_json::to_string(&obj)?);
    } else {
        let mut on = match gpu {
            Some(g) => g.adapter().to_string(),
            None => format!(
                "{} threads",
                lowbit_gpu::cpu::pool::Pool::global().threads()
            ),
        };
        if args.temperature > 0.0 {
            on += &format!(
                ", decode sampled at temperature {} top-p {}",
                args.temperature, args.top_p
            );
        }
        println!(
            "{model_name} ({}, {on}, batch {batch}): pp{} {pp:.1} tok/s, tg{} {tg:.1} tok/s ({gb_per_second:.1} GB/s of weights); weights {:.1} MB ({:.2} bits/weight), RSS {:.0} MB (peak {:.0} MB), load {load_seconds:.2}s",
            args.load.quant.as_deref().unwrap_or(if args.synthetic.is_some() { "q4g32" } else { "as stored" }),
            args.prompt_tokens,
            args.gen_tokens,
            model.weight_bytes() as f64 / 1e6,
            model.bits_per_weight(),
            rss as f64 / 1e6,
            peak as f64 / 1e6
        );
        if let Some(g) = gpu {
            let (weights, kv, activations) = g.memory_bytes();
            let (hits, misses) = g.bind_group_counts()?;
            println!(
                "GPU memory: {:.1} MB (weights {:.1}, KV {:.1}, activations {:.1}); bind groups: {hits} reused, {misses} created",
                (weights + kv + activations) as f64 / 1e6,
                weights as f64 / 1e6,
                kv as f64 / 1e6,
                activations as f64 / 1e6
            );
        }
        if let Some(h) = &host_per_step {
            println!(
                "decode step on the host: {:.0} dispatches encoded and submitted in {:.1} µs, then {:.1} µs waiting for the GPU",
                h["dispatches"].as_f64().unwrap_or(0.0),
                h["encode_us"].as_f64().unwrap_or(0.0),
                h["wait_us"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
