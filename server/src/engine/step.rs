//! The seam between the scheduler and a model: one forward over a ragged batch (all the
//! logits rows it asked for, or only their argmax when every sampling row is greedy) and
//! block copies. [`LlamaStep`] is the real model with its pool; the scheduler tests use a fake.

use super::kv_blocks::BlockCopies;
use crate::model::{BatchSeq, Llama, Logits, MixedReadback, MixedRows};
use lowbit_gpu::KvPool;

/// What the scheduler needs from a model: one forward over a ragged batch and block copies.
/// The real one is [`LlamaStep`]; tests use a fake.
pub trait StepModel: Send {
    /// Runs one step; see [`Llama::forward`].
    fn forward(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Logits>;
    /// Runs one step whose logits rows all want the greedy choice, and returns each row's
    /// argmax; see [`Llama::forward_argmax`].
    fn forward_argmax(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Vec<u32>> {
        let logits = self.forward(seqs)?;
        Ok((0..logits.rows())
            .map(|r| lowbit_gpu::argmax(logits.row(r)))
            .collect())
    }
    /// Runs one step and returns every logits row's argmax, and the whole rows and top k
    /// values `what` lists; see [`Llama::forward_mixed`].
    fn forward_mixed(
        &mut self,
        seqs: &[BatchSeq<'_>],
        what: &MixedReadback,
    ) -> crate::model::Result<MixedRows> {
        let logits = self.forward(seqs)?;
        Ok(mixed_rows(&logits, what))
    }
    /// Tokens in the model's vocabulary (logits per row).
    fn vocab_size(&self) -> usize;
    /// Whether the choices are made where the logits live ([`MixedReadback`]: a greedy row's
    /// argmax, a top-k row's top k, other rows' draws, penalties and bias applied there
    /// first): where logits must cross to the host (a GPU), not where they are there already
    /// (the sampler's own passes are faster than a full readback).
    fn chooses_on_device(&self) -> bool {
        false
    }
    /// Copies KV blocks `src → dst` of each pool before the next forward.
    fn copy_blocks(&mut self, copies: &BlockCopies) -> crate::model::Result<()>;
    /// Bytes the model holds where it computes, by kind (`weights`, `kv_cache`,
    /// `activations`), for the metrics.
    fn device_memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The backend computing the steps (`cpu`, `wgpu:<adapter>`), for the metrics.
    fn backend_name(&self) -> String {
        "unknown".into()
    }
}

/// A loaded model with its KV pool.
pub struct LlamaStep {
    pub model: Llama,
    pub pool: KvPool,
}

impl StepModel for LlamaStep {
    fn forward(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Logits> {
        self.model.forward(seqs, &mut self.pool)
    }

    fn forward_argmax(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Vec<u32>> {
        self.model.forward_argmax(seqs, &mut self.pool)
    }

    fn forward_mixed(
        &mut self,
        seqs: &[BatchSeq<'_>],
        what: &MixedReadback,
    ) -> crate::model::Result<MixedRows> {
        self.model.forward_mixed(seqs, &mut self.pool, what)
    }

    fn chooses_on_device(&self) -> bool {
        self.model.backend().logits_stay_on_device()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn copy_blocks(&mut self, copies: &BlockCopies) -> crate::model::Result<()> {
        let backend = self.model.backend();
        if !copies.main.is_empty() {
            backend.copy_blocks(&mut self.pool, &copies.main)?;
        }
        if !copies.window.is_empty() {
            let window = self.pool.window_mut().ok_or(lowbit_gpu::Error::Internal(
                "window block copies without a window pool",
            ))?;
            backend.copy_blocks(window, &copies.window)?;
        }
        Ok(())
    }

    fn backend_name(&self) -> String {
        self.model.backend().name()
    }

    fn device_memory(&self) -> Vec<(&'static str, u64)> {
        let gpu = self
            .model
            .backend()
            .as_any()
            .downcast_ref::<lowbit_gpu::wgpu::WgpuBackend>();
        match gpu {
            Some(g) => {
                let (weights, kv, activations) = g.memory_bytes();
                vec![
                    ("weights", weights),
                    ("kv_cache", kv),
                    ("activations", activations),
                ]
            }
            // The CPU's activations are ordinary heap memory, in the process's RSS.
            None => vec![
                ("weights", self.model.weight_bytes() as u64),
                ("kv_cache", self.pool.bytes() as u64),
            ],
        }
    }
}

/// A mixed step's rows from whole logits (a model that only computes those, or a test): the
/// choices from the logits after `what.adjust`, the whole rows and the log-probabilities of
/// the logits as they were.
pub fn mixed_rows(logits: &Logits, what: &MixedReadback) -> MixedRows {
    let changed = Logits {
        vocab: logits.vocab,
        data: lowbit_gpu::adjusted_rows(&logits.data, logits.vocab, &what.adjust),
    };
    let ids: Vec<u32> = (0..changed.rows())
        .map(|r| lowbit_gpu::argmax(changed.row(r)))
        .collect();
    let drawn: Vec<u32> = what
        .draws
        .iter()
        .map(|d| lowbit_gpu::draw_row(changed.row(d.row), d))
        .collect();
    let logprobs = what
        .logprobs
        .iter()
        .map(|l| {
            let token = lowbit_gpu::logprobs::chosen_token(l, &ids, &what.draws, &drawn);
            lowbit_gpu::token_logprobs(logits.row(l.row), token, l.top)
        })
        .collect();
    MixedRows {
        logits: Logits {
            vocab: logits.vocab,
            data: what
                .full
                .iter()
                .flat_map(|&r| logits.row(r).to_vec())
                .collect(),
        },
        top: what
            .top
            .iter()
            .map(|&r| lowbit_gpu::top_k(changed.row(r), what.k))
            .collect(),
        ids,
        drawn,
        logprobs,
    }
}

/// What a step gave back for its sampling rows.
pub(super) enum StepRows {
    Logits(Logits),
    /// Each row's greedy choice.
    Tokens(Vec<u32>),
    /// Each row's greedy choice, and the whole logits or the top k of the rows that asked.
    Mixed(MixedRows),
}
