//! `lowbit eval perplexity`.

use super::{backend_for, ModelArgs};
use crate::eval::perplexity;
use crate::model::{Llama, ModelSource};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `lowbit eval perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows (0: all), like llama-perplexity's --chunks.
    #[arg(long, default_value_t = 0)]
    chunks: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let source = ModelSource::open(&args.model.model)?;
    let tokenizer = source.tokenizer()?;
    let tokens = tokenizer.encode(&text, false)?;
    let bos = if tokenizer.adds_bos() {
        tokenizer.bos()
    } else {
        None
    };
    let policy = args.model.policy()?;
    let model = Llama::load(&source, backend_for(args.model.device)?, &policy)?;
    let windows = (tokens.len() / args.ctx.max(1)).min(if args.chunks > 0 {
        args.chunks
    } else {
        usize::MAX
    });
    eprintln!("{} tokens, {windows} windows of {}", tokens.len(), args.ctx);
    let report = perplexity(&model, &tokens, args.ctx, bos, args.chunks, |w, ppl| {
        eprint!("[{w}]{ppl:.4} ");
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    if args.json {
        let obj = serde_json::json!({
            "model": args.model.model,
            "text": args.text,
            "text_tokens": tokens.len(),
            "backend": model.backend().name(),
            "report": report,
        });
        println!("{}", serde_json::to_string(&obj)?);
    } else {
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5} ({} windows of {}, {} tokens scored, {:.1}s)",
            report.perplexity,
            report.perplexity_stderr,
            report.windows,
            report.ctx,
            report.scored_tokens,
            report.seconds
        );
    }
    Ok(())
}
