//! `lowbit quantize`: writes a model in the formats a policy asks for, as one safetensors
//! file that serves on its own (config, tokenizer and chat template in its metadata).

use super::ModelArgs;
use crate::model::llama::{expected_tensors, TensorRole};
use crate::model::lowbit_file;
use crate::model::ModelSource;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `lowbit quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The file to write (.safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.model.load.quant.is_none() {
        bail!("--quant is required (e.g. --quant q4, --quant q8, --quant f16)");
    }
    if args.out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "--out {}: the file name must end in .safetensors",
            args.out.display()
        );
    }
    let start = Instant::now();
    let policy = args.model.policy()?;
    let source = ModelSource::open(&args.model.model)?;
    let mut config = source.config()?;
    let tokenizer = source.tokenizer()?;
    let template = source.chat_template_parts(&tokenizer).ok();
    let tied = config.tied_embeddings && !source.has_tensor("output.weight");
    config.tied_embeddings = tied;

    let calibration = args.model.load.calibration(&source)?;
    let mut entries = Vec::new();
    let mut formats = BTreeMap::new();
    let mut stored_formats = Vec::new();
    let (mut values, mut bytes) = (0usize, 0usize);
    for (name, role) in expected_tensors(&config, tied) {
        match role {
            TensorRole::Matrix { rows, cols } => {
                let hessian = calibration.as_ref().and_then(|c| c.hessian(&name));
                let (q, plan) = source.quantized_tensor(&name, &policy, hessian)?;
                if (q.rows, q.cols) != (rows, cols) {
                    bail!(
                        "{}: tensor '{name}' is {}x{}, expected {rows}x{cols}",
                        args.model.model.display(),
                        q.rows,
                        q.cols
                    );
                }
                values += rows * cols;
                bytes += q.resident_bytes();
                formats.insert(name.clone(), plan.format.clone());
                stored_formats.push(q.format);
                entries.extend(lowbit_file::matrix_entries(&name, &q));
            }
            TensorRole::Vector { len } => {
                let v = source.vector(&name)?;
                if v.len() != len {
                    bail!(
                        "{}: tensor '{name}' has {} values, expected {len}",
                        args.model.model.display(),
                        v.len()
                    );
                }
                let le: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                entries.push((name, (safetensors::Dtype::F32, vec![len], le)));
            }
        }
    }

    let mut meta = HashMap::new();
    meta.insert(
        "lowbit.format_version".to_string(),
        lowbit_file::format_version_for(&config, stored_formats.into_iter()).to_string(),
    );
    meta.insert("lowbit.formats".into(), serde_json::to_string(&formats)?);
    meta.insert("lowbit.config".into(), serde_json::to_string(&config)?);
    let tok_json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
    meta.insert("lowbit.tokenizer".into(), tok_json);
    meta.insert(
        "lowbit.bos".into(),
        serde_json::to_string(&tokenizer.bos())?,
    );
    meta.insert("lowbit.eos".into(), serde_json::to_string(tokenizer.eos())?);
    // A GGUF file's FIM ids may name tokens that the names alone would not find again.
    if let Some(fim) = tokenizer.fim() {
        meta.insert("lowbit.fim".into(), serde_json::to_string(&fim)?);
    }
    if let Some((tmpl, bos, eos)) = template {
        meta.insert("lowbit.chat_template".into(), tmpl);
        meta.insert("lowbit.bos_token".into(), bos);
        meta.insert("lowbit.eos_token".into(), eos);
    }
    meta.insert(
        "lowbit.policy".into(),
        format!("{} ({:?})", policy.spec, policy.method),
    );
    meta.insert(
        "lowbit.source".into(),
        args.model.model.display().to_string(),
    );
    lowbit_file::write(&args.out, &entries, meta)?;
    let size = std::fs::metadata(&args.out)
        .with_context(|| format!("reading back {}", args.out.display()))?
        .len();
    eprintln!(
        "wrote {}: {:.1} MB, weight matrices {:.2} bits per weight, {:.1}s",
        args.out.display(),
        size as f64 / 1e6,
        bytes as f64 * 8.0 / values.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
