//! `lowbit eval perplexity`.

use super::ModelArgs;
use crate::eval::{kl, perplexity_with_logits};
use crate::model::ModelSource;
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
    /// Save this model's top tokens per scored position, as the base for --kl-base.
    #[arg(long, conflicts_with = "kl_base")]
    save_kl_base: Option<PathBuf>,
    /// Compare with a base saved by --save-kl-base: mean KL divergence and top-1 agreement.
    #[arg(long)]
    kl_base: Option<PathBuf>,
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
    let mut model = args.model.load_model(&source)?;
    // Scored in windows of `ctx`: LongRoPE picks its factors by that, as llama-perplexity's.
    model.set_max_positions(args.ctx);
    let windows = (tokens.len() / args.ctx.max(1)).min(if args.chunks > 0 {
        args.chunks
    } else {
        usize::MAX
    });
    eprintln!("{} tokens, {windows} windows of {}", tokens.len(), args.ctx);
    let fp = kl::fingerprint(&tokens, args.ctx, windows);
    let mut saver = args
        .save_kl_base
        .as_deref()
        .map(|p| kl::BaseWriter::create(p, fp))
        .transpose()?;
    let mut comparer = args
        .kl_base
        .as_deref()
        .map(|p| kl::KlComparer::open(p, fp))
        .transpose()?;
    let progress = |w, ppl| {
        eprint!("[{w}]{ppl:.4} ");
        let _ = std::io::stderr().flush();
    };
    let report = perplexity_with_logits(
        &model,
        &tokens,
        args.ctx,
        bos,
        args.chunks,
        progress,
        |row| {
            if let Some(s) = saver.as_mut() {
                s.push(row)?;
            }
            if let Some(c) = comparer.as_mut() {
                c.push(row)?;
            }
            Ok(())
        },
    )?;
    eprintln!();
    if let Some(s) = saver {
        let n = s.finish()?;
        eprintln!(
            "saved the top {} tokens of {n} positions as a KL base",
            kl::TOP_K
        );
    }
    let kl_report = comparer.map(|c| c.report());
    if args.json {
        let obj = serde_json::json!({
            "model": args.model.model,
            "quant": args.model.load.quant,
            "quant_method": format!("{:?}", args.model.policy()?.method).to_lowercase(),
            "calibration": args.model.load.calibration,
            "bits_per_weight": model.bits_per_weight(),
            "weight_bytes": model.weight_bytes(),
            "text": args.text,
            "text_tokens": tokens.len(),
            "backend": model.backend().name(),
            "report": report,
            "kl": kl_report,
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
        if let Some(k) = kl_report {
            println!(
                "KL vs base: mean KL = {:.6}, top-1 agreement = {:.2}% ({} positions; base mass outside its stored top {}: {:.4})",
                k.mean_kl,
                100.0 * k.top1_agreement,
                k.positions,
                kl::TOP_K,
                k.rest_mass
            );
        }
    }
    Ok(())
}
