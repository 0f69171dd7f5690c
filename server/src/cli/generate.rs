//! `lowbit generate`: one completion from the command line, streamed to stdout.

use super::ModelArgs;
use crate::engine::detok::IncrementalDetok;
use crate::engine::{generate, GenerateOptions, SamplingParams};
use crate::model::{ChatMessage, ModelSource};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::time::Instant;

/// Arguments of `lowbit generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (with --chat, the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens below this fraction of the best one's probability (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Seed of the sampler's random stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (prompt and completion ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let load_start = Instant::now();
    let source = ModelSource::open(&args.model.model)?;
    let tokenizer = source.tokenizer()?;
    let (prompt_text, prompt_ids) = if args.chat {
        let template = source.chat_template(&tokenizer)?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        let text = template.render(&messages, true)?;
        let ids = tokenizer.encode(&text, false)?;
        (text, ids)
    } else {
        (args.prompt.clone(), tokenizer.encode(&args.prompt, true)?)
    };
    let mut model = args.model.load_model(&source)?;
    // The sequence is at most the prompt and the tokens asked for (LongRoPE's choice).
    model.set_max_positions(prompt_ids.len() + args.max_tokens);
    let load_seconds = load_start.elapsed().as_secs_f64();

    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            seed: args.seed,
            ..SamplingParams::default()
        },
    };
    // The prompt is context for the first tokens' text (a leading space, a split character).
    let mut so_far = prompt_ids.clone();
    let mut detok = IncrementalDetok::new(prompt_ids.len());
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let result = generate(&model, &prompt_ids, tokenizer.eos(), &opts, |id| {
        if json {
            return true;
        }
        so_far.push(id);
        let piece = detok.step(&tokenizer, &so_far);
        if !piece.is_empty() {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
        true
    })?;
    let text = tokenizer.decode(&result.tokens, true)?;
    if json {
        let n = result.tokens.len();
        let obj = serde_json::json!({
            "model": args.model.model,
            "backend": model.backend().name(),
            "prompt": prompt_text,
            "prompt_tokens": prompt_ids,
            "completion_tokens": result.tokens,
            "text": text,
            "stop_reason": result.stop,
            "sampling": opts.sampling,
            "timings": {
                "load_seconds": load_seconds,
                "prompt_seconds": result.prompt_seconds,
                "prompt_tokens_per_second": prompt_ids.len() as f64 / result.prompt_seconds.max(1e-9),
                "decode_seconds": result.decode_seconds,
                "decode_tokens_per_second": n.saturating_sub(1) as f64 / result.decode_seconds.max(1e-9),
            },
        });
        println!(
            "{}",
            serde_json::to_string(&obj).context("serialising the result")?
        );
    } else {
        write!(stdout, "{}", detok.finish(&tokenizer, &so_far))?;
        writeln!(stdout)?;
        eprintln!(
            "[{} prompt tokens in {:.2}s, {} generated at {:.1} tok/s, stop: {:?}]",
            prompt_ids.len(),
            result.prompt_seconds,
            result.tokens.len(),
            result.tokens.len().saturating_sub(1) as f64 / result.decode_seconds.max(1e-9),
            result.stop
        );
    }
    Ok(())
}
