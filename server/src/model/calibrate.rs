//! Activation-aware quantization: statistics of each linear layer's inputs on a calibration
//! text, gathered by running the unquantized model over it.
//!
//! For every block and each of its distinct linear inputs ([`LinearInput`]: four in a dense
//! block, two more per expert in a mixture of experts), and for the output head's input, the
//! calibration keeps `H = Σ xᵀx`; GPTQ uses it to compensate rounding errors and its diagonal
//! (mean squared activation per input column) weighs the scale search.

use super::error::Result;
use super::llama::{BatchSeq, LinearInput, Llama};
use super::quant_policy::QuantPolicy;
use super::source::ModelSource;
use super::tokenizer::Tokenizer;
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::quant::gptq::Hessian;
use std::collections::HashMap;
use std::sync::Arc;

/// Tokens per calibration window.
pub const CALIBRATION_CTX: usize = 512;
/// Windows used by default: 8k tokens, where GPTQ's gains level off for small models.
pub const DEFAULT_CALIBRATION_WINDOWS: usize = 16;
/// Most memory the experts' statistics may take (f64 Hessians, two per expert per layer):
/// beyond it the experts are quantized without them (Qwen3-30B-A3B's would take 235 GB).
const EXPERT_HESSIAN_BUDGET: usize = 2 << 30;

/// Input statistics of every block's linear layers.
#[derive(Debug, Default)]
pub struct Calibration {
    hessians: HashMap<(usize, LinearInput), Hessian>,
    /// Blocks of the model: the head's statistics are kept as layer `n_layers`.
    n_layers: usize,
    /// Whether `token_embd` is also the output head (then it takes the head's statistics).
    tied: bool,
    pub tokens: usize,
}

impl Calibration {
    /// Runs the unquantized model over `text` (at most `max_windows` windows of
    /// [`CALIBRATION_CTX`] tokens) and gathers the statistics.
    pub fn gather(
        source: &ModelSource,
        tokenizer: &Tokenizer,
        text: &str,
        max_windows: usize,
    ) -> Result<Self> {
        let mut model = Llama::load(
            source,
            Arc::new(CpuBackend::new()),
            &QuantPolicy::parse("f32", None).map_err(super::ModelError::Tokenizer)?,
        )?;
        let tokens = tokenizer.encode(text, false)?;
        let ctx = CALIBRATION_CTX.min(tokens.len().max(1));
        model.set_max_positions(ctx);
        let windows = (tokens.len() / ctx).clamp(0, max_windows.max(1));
        if windows == 0 {
            return Err(super::ModelError::Tokenizer(
                "the calibration text is empty".into(),
            ));
        }
        let c = model.config();
        let expert_bytes = c.moe.as_ref().map_or(0, |m| {
            let side = |n: usize| n.saturating_mul(n).saturating_mul(8);
            (side(c.hidden_size).saturating_add(side(m.expert_ffn_size)))
                .saturating_mul(m.experts)
                .saturating_mul(c.n_layers)
        });
        let observe_experts = expert_bytes <= EXPERT_HESSIAN_BUDGET;
        if !observe_experts {
            tracing::warn!(
                "the experts' calibration statistics would take {:.1} GB: experts are quantized \
                 without them (GPTQ for the other matrices)",
                expert_bytes as f64 / 1e9
            );
        }
        let mut calib = Self {
            n_layers: model.config().n_layers,
            tied: model.head_is_embedding(),
            ..Self::default()
        };
        let mut kv = crate::engine::solo::SoloKv::new(&model, 1, ctx)?;
        for w in 0..windows {
            let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
            if let (true, Some(b)) = (tokenizer.adds_bos(), tokenizer.bos()) {
                window[0] = b;
            }
            let seq = BatchSeq {
                tokens: &window,
                pos_start: 0,
                blocks: &kv.tables[0],
                window_blocks: &[],
                logits: 0..0,
            };
            let hessians = &mut calib.hessians;
            model.forward_observed(&[seq], &mut kv.pool, &mut |layer, input, x| {
                let expert = matches!(input, LinearInput::Expert(_) | LinearInput::ExpertDown(_));
                if expert && !observe_experts {
                    return;
                }
                if let Ok(values) = x.host() {
                    hessians
                        .entry((layer, input))
                        .or_insert_with(|| Hessian::new(x.cols()))
                        .add(values);
                }
            })?;
            calib.tokens += ctx;
            tracing::info!("calibration window {}/{windows}", w + 1);
        }
        Ok(calib)
    }

    /// The statistics of a weight matrix's input, by its canonical name (`blk.3.ffn_up.weight`).
    pub fn hessian(&self, tensor: &str) -> Option<&Hessian> {
        if tensor == "output.weight" || (tensor == "token_embd.weight" && self.tied) {
            return self.hessians.get(&(self.n_layers, LinearInput::Head));
        }
        let rest = tensor.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let part = part.strip_suffix(".weight")?;
        self.hessians
            .get(&(layer.parse().ok()?, LinearInput::of(part)?))
    }
}
