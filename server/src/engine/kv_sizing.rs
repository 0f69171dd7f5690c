//! How the server's KV budget (`--kv-cache-memory`, or `--max-total-tokens`) becomes pools:
//! one pool of every layer, or, for a model whose sliding-window layers get a pool of their
//! own (`model/llama/kv_pools.rs`), a window pool just large enough for the sequences that
//! can run at once and the rest of the budget for the main pool.
//!
//! A running sequence holds window blocks from the one its next row's window starts in to
//! the end of the chunk it computes: at most `⌈(window − 1) / bt⌉ + 2` blocks plus its
//! chunk's. Every chunk of a step fits in `--max-batch-tokens`, so
//! `sequences · (⌈window / bt⌉ + 2) + ⌈max_batch_tokens / bt⌉` blocks are never short; what
//! is left over keeps prefixes cached. The window pool never takes more blocks than a single
//! pool would have had, so the main pool is at least as large as one pool of every layer
//! (more positions for the same memory). Where that cap bites, the main pool keeps one
//! pool's size too: a sequence never needs more window blocks than main ones, so every
//! sequence the main pool holds fits the window pool. (No split does better while keeping
//! that guarantee: `S` sequences can hold `min(main blocks, S · (⌈window/bt⌉ + 2))` window
//! blocks, so a cap at or above one pool's size leaves nothing to gain.)
//!
//! A model whose every layer slides keeps them all in the window pool: its main pool has no
//! layer, only the block ids that identify positions (the prefix cache's chain), enough for
//! every sequence's whole context.

use super::blocks::BlockManager;
use super::kv_blocks::KvBlocks;
use crate::model::{Llama, Result};
use lowbit_gpu::{KvDtype, KvPool, KvPoolSpec};

/// What the flags ask of the KV cache.
#[derive(Debug, Clone, Copy)]
pub struct KvBudget {
    /// Bytes for both pools (unless `tokens`).
    pub memory: u64,
    /// Positions the main pool holds (overrides `memory`).
    pub tokens: Option<usize>,
    pub dtype: KvDtype,
    pub block_tokens: usize,
    pub max_sequences: usize,
    pub max_batch_tokens: usize,
    pub prefix_caching: bool,
    /// Whether sliding-window layers may get their own pool.
    pub window_pool: bool,
}

/// The pools and the block managers over them.
#[derive(Debug)]
pub struct KvPools {
    pub pool: KvPool,
    pub blocks: KvBlocks,
    /// The main pool's shape, and the window pool's where there is one.
    pub main: KvPoolSpec,
    pub window: Option<KvPoolSpec>,
}

/// Window blocks the running sequences can need at once ([module doc](self)).
pub fn window_pool_blocks(window: usize, b: &KvBudget) -> usize {
    let bt = b.block_tokens.max(1);
    b.max_sequences.max(1) * (window.div_ceil(bt) + 2) + b.max_batch_tokens.div_ceil(bt)
}

/// Allocates the pools `b` asks for in `model`'s backend.
pub fn kv_pools(model: &Llama, b: &KvBudget) -> Result<KvPools> {
    let all = model.kv_pool_spec(b.block_tokens, 1, b.dtype);
    let single = match b.tokens {
        Some(t) => all.blocks_for(t),
        None => (b.memory / all.bytes_per_block() as u64) as usize,
    }
    .max(1);
    let manager = |blocks| BlockManager::new(blocks, b.block_tokens, b.prefix_caching);
    let split = model
        .window_pool_layers()
        .filter(|_| b.window_pool)
        .and_then(|(window, _)| {
            let needed = window_pool_blocks(window, b);
            let window_blocks = needed.min(single);
            let (main, win) =
                model.split_kv_pool_specs(b.block_tokens, 1, window_blocks, b.dtype)?;
            let main_blocks = match b.tokens {
                // Capped at one pool's size, the window pool may not hold every sequence
                // the main pool could (a lone long prompt could wait for ever): then the
                // main pool takes no more blocks than it.
                _ if needed > single => single,
                Some(_) => single,
                // Every layer slides: the main pool is block ids only, enough for every
                // sequence's whole context.
                None if main.layers == 0 => {
                    let context = model.config().context_length;
                    b.max_sequences.max(1) * main.blocks_for(context)
                        + main.blocks_for(b.max_batch_tokens)
                }
                None => {
                    let left = b.memory.saturating_sub(win.bytes() as u64);
                    (left / main.bytes_per_block().max(1) as u64) as usize
                }
            };
            // A GPU binds a layer's keys at once: where that bounds the main pool below
            // the memory, the rest stays unused (one pool of `single` fits as before).
            let bound = match main.layers {
                0 => usize::MAX,
                _ => model.backend().max_kv_blocks(&main).max(single),
            };
            if main_blocks > bound {
                tracing::warn!(
                    "the main KV pool is capped at {bound} blocks (the adapter's largest binding), not {main_blocks}"
                );
            }
            let main_blocks = main_blocks.min(bound);
            Some((
                KvPoolSpec {
                    blocks: main_blocks.max(1),
                    ..main
                },
                win,
                window,
            ))
        });
    Ok(match split {
        Some((main, win, window)) => KvPools {
            pool: model.new_split_kv_pool(main, win)?,
            blocks: KvBlocks::with_window(manager(main.blocks), manager(win.blocks), window),
            main,
            window: Some(win),
        },
        None => {
            let main = KvPoolSpec {
                blocks: single,
                ..all
            };
            KvPools {
                pool: model.new_kv_pool(main)?,
                blocks: manager(single).into(),
                main,
                window: None,
            }
        }
    })
}
