//! The seam between the scheduler and a model: one forward over a ragged batch (all the
//! logits rows it asked for, or only their argmax when every sampling row is greedy) and
//! block copies. [`LlamaStep`] is the real model with its pool; the scheduler tests use a fake.

use crate::model::{BatchSeq, Llama, Logits};
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
    /// Runs one step and returns every logits row's argmax and the whole rows of `full`
    /// (indices among the logits rows, ascending); see [`Llama::forward_mixed`].
    fn forward_mixed(
        &mut self,
        seqs: &[BatchSeq<'_>],
        full: &[usize],
    ) -> crate::model::Result<(Vec<u32>, Logits)> {
        let logits = self.forward(seqs)?;
        let ids = (0..logits.rows())
            .map(|r| lowbit_gpu::argmax(logits.row(r)))
            .collect();
        let data = full.iter().flat_map(|&r| logits.row(r).to_vec()).collect();
        Ok((
            ids,
            Logits {
                vocab: logits.vocab,
                data,
            },
        ))
    }
    /// Copies KV blocks `src → dst` before the next forward.
    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> crate::model::Result<()>;
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
        full: &[usize],
    ) -> crate::model::Result<(Vec<u32>, Logits)> {
        self.model.forward_mixed(seqs, &mut self.pool, full)
    }

    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> crate::model::Result<()> {
        Ok(self.model.backend().copy_blocks(&mut self.pool, pairs)?)
    }
}

/// What a step gave back for its sampling rows.
pub(super) enum StepRows {
    Logits(Logits),
    /// Each row's greedy choice.
    Tokens(Vec<u32>),
    /// Each row's greedy choice, and the whole logits of the rows that asked for them.
    Mixed(Vec<u32>, Logits),
}
