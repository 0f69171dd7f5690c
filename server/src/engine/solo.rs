//! The KV pool of the command-line tools (`generate`, `eval`, `bench`, calibration): a fixed
//! number of sequences, each owning its own run of blocks — the trivial block manager. The
//! server's engine shares, caches and evicts blocks instead (`blocks.rs`); both drive the same
//! pool and the same attention.

use crate::model::{Llama, Result};
use lowbit_gpu::{KvDtype, KvPool, DEFAULT_BLOCK_TOKENS};

/// A pool with one block table per sequence.
#[derive(Debug)]
pub struct SoloKv {
    pub pool: KvPool,
    /// `tables[i]`: sequence `i`'s blocks, in position order.
    pub tables: Vec<Vec<u32>>,
}

impl SoloKv {
    /// A pool of f32 values for `seqs` sequences of up to `tokens` positions each.
    pub fn new(model: &Llama, seqs: usize, tokens: usize) -> Result<Self> {
        Self::with_dtype(model, seqs, tokens, KvDtype::F32)
    }

    /// [`SoloKv::new`] storing values as `dtype`.
    pub fn with_dtype(model: &Llama, seqs: usize, tokens: usize, dtype: KvDtype) -> Result<Self> {
        let per_seq = tokens.max(1).div_ceil(DEFAULT_BLOCK_TOKENS);
        let spec = model.kv_pool_spec(DEFAULT_BLOCK_TOKENS, per_seq * seqs.max(1), dtype);
        let tables = (0..seqs)
            .map(|i| (i * per_seq..(i + 1) * per_seq).map(|b| b as u32).collect())
            .collect();
        Ok(Self {
            pool: model.new_kv_pool(spec)?,
            tables,
        })
    }
}
