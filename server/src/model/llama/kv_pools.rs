//! The sliding-window layers' own KV pool.
//!
//! Where layers attend within a window (Gemma 2/3, gpt-oss, OLMo 3, Qwen's
//! `max_window_layers`; every layer of Phi-3 from GGUF or Mistral v0.1), the server keeps
//! the sliding layers' keys and values in a second pool with block tables of their own
//! ([`KvPool::with_window`]; the main pool keeps the other layers, none if every layer
//! slides, and the block ids that identify positions): a sequence
//! gives back the blocks that have slid out of its window, so a long context takes a
//! window's worth of memory on those layers. The forward routes each layer to its pool and
//! table; the attention kernels are the same (they never read a block before a row's
//! window). The command-line tools keep one pool of every layer.

use super::Llama;
use crate::model::error::Result;
use lowbit_gpu::{KvDtype, KvPool, KvPoolSpec};

/// Where one layer's keys and values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KvSlot {
    /// In the window pool (else the main one).
    pub window: bool,
    /// The layer's index within its pool.
    pub index: usize,
}

impl Llama {
    /// `(window, sliding layers)` where some layers attend within a window: the shape a
    /// window pool takes. Where every layer slides (Phi-3 from GGUF, Mistral v0.1), the main
    /// pool keeps no layer, only the block ids that identify positions (prefix caching).
    pub fn window_pool_layers(&self) -> Option<(usize, usize)> {
        let c = &self.config;
        let sliding = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        (sliding > 0).then_some((c.gemma.sliding_window, sliding))
    }

    /// The shapes of a split pool: `blocks` blocks of the layers that see everything,
    /// `window_blocks` of the sliding ones. `None` where the model has no such split
    /// ([`Self::window_pool_layers`]).
    pub fn split_kv_pool_specs(
        &self,
        block_tokens: usize,
        blocks: usize,
        window_blocks: usize,
        dtype: KvDtype,
    ) -> Option<(KvPoolSpec, KvPoolSpec)> {
        let (_, sliding) = self.window_pool_layers()?;
        let all = self.kv_pool_spec(block_tokens, blocks, dtype);
        let main = KvPoolSpec {
            layers: all.layers - sliding,
            ..all
        };
        let window = KvPoolSpec {
            layers: sliding,
            blocks: window_blocks,
            ..all
        };
        Some((main, window))
    }

    /// Allocates a split pool in the backend ([`Self::split_kv_pool_specs`]).
    pub fn new_split_kv_pool(&self, main: KvPoolSpec, window: KvPoolSpec) -> Result<KvPool> {
        let window = self.backend.new_kv_pool(window)?;
        Ok(self.backend.new_kv_pool(main)?.with_window(window))
    }

    /// Each layer's pool and index in it, checking that `pool` is split as this model's
    /// layers are (or holds every layer).
    pub(super) fn kv_slots(&self, pool: &KvPool) -> Result<Vec<KvSlot>> {
        let c = &self.config;
        let Some(window) = pool.window() else {
            return Ok((0..c.n_layers)
                .map(|index| KvSlot {
                    window: false,
                    index,
                })
                .collect());
        };
        let sliding = self.window_pool_layers().map_or(0, |(_, n)| n);
        if sliding == 0
            || window.spec().layers != sliding
            || pool.spec().layers != c.n_layers - sliding
        {
            return Err(lowbit_gpu::Error::Shape {
                op: "forward",
                detail: format!(
                    "a KV pool of {} layers with a window pool of {} for a model of {} layers, {sliding} of them sliding",
                    pool.spec().layers,
                    window.spec().layers,
                    c.n_layers
                ),
            }
            .into());
        }
        let mut counts = [0usize; 2];
        Ok((0..c.n_layers)
            .map(|l| {
                let window = c.is_sliding(l);
                let count = &mut counts[usize::from(window)];
                *count += 1;
                KvSlot {
                    window,
                    index: *count - 1,
                }
            })
            .collect())
    }
}

/// The pool a layer's slot names.
pub(super) fn slot_pool(pool: &mut KvPool, slot: KvSlot) -> Result<&mut KvPool> {
    if !slot.window {
        return Ok(pool);
    }
    pool.window_mut()
        .ok_or_else(|| lowbit_gpu::Error::Internal("a window slot without a window pool").into())
}
