//! The paged KV cache: one pool of fixed-size blocks per model, owned by the backend.
//!
//! The engine decides *which* blocks a sequence uses (its block table); the backend decides
//! *where* they live (host memory on the CPU, GPU buffers on wgpu). Position `p` of a sequence
//! lives in block `blocks[p / block_tokens]`, slot `p % block_tokens`. The pool is allocated
//! once, at start-up; nothing is allocated per step.

use crate::error::{shape_err, Error, Result};

/// Tokens per block unless configured otherwise (vLLM's default too): small enough that a
/// sequence wastes at most 15 slots, large enough that block tables stay short.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

/// Block sizes the kernels are built for.
pub const SUPPORTED_BLOCK_TOKENS: [usize; 3] = [8, 16, 32];

/// The shape of a KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolSpec {
    /// Transformer layers; every block holds keys and values for all of them.
    pub layers: usize,
    /// Key (and value) width: KV heads × head dimension.
    pub kv_dim: usize,
    /// Head dimension (the kernels lay keys out per head).
    pub head_dim: usize,
    /// Positions per block.
    pub block_tokens: usize,
    /// Blocks in the pool.
    pub blocks: usize,
}

impl KvPoolSpec {
    /// Bytes one block occupies: keys and values, f32, every layer.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.layers * self.block_tokens * self.kv_dim * std::mem::size_of::<f32>()
    }

    /// Bytes the whole pool occupies.
    pub fn bytes(&self) -> usize {
        self.blocks * self.bytes_per_block()
    }

    /// Positions the whole pool can hold.
    pub fn tokens(&self) -> usize {
        self.blocks * self.block_tokens
    }

    /// Blocks needed for `tokens` positions of one sequence.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens.max(1))
    }

    /// Checks the spec is one the kernels can run.
    pub fn validate(&self) -> Result<()> {
        if !SUPPORTED_BLOCK_TOKENS.contains(&self.block_tokens) {
            return Err(Error::Unsupported(format!(
                "KV block size {} (supported: {SUPPORTED_BLOCK_TOKENS:?})",
                self.block_tokens
            )));
        }
        if self.head_dim == 0 || !self.kv_dim.is_multiple_of(self.head_dim) || self.layers == 0 {
            return Err(shape_err("kv pool", format!("{self:?}")));
        }
        if self.blocks == 0 {
            return Err(Error::Unsupported(
                "a KV pool of 0 blocks (raise --kv-cache-memory)".into(),
            ));
        }
        Ok(())
    }
}

/// Where a pool's blocks live.
#[derive(Debug)]
pub enum KvStorage {
    /// Host memory (the CPU backend).
    Host(HostKv),
    /// GPU buffers (the wgpu backend).
    Device(crate::wgpu::attention::DeviceKv),
}

/// A KV pool as a backend holds it.
#[derive(Debug)]
pub struct KvPool {
    spec: KvPoolSpec,
    storage: KvStorage,
}

impl KvPool {
    /// Wraps storage; the backend that made it vouches that it matches `spec`.
    pub fn new(spec: KvPoolSpec, storage: KvStorage) -> Self {
        Self { spec, storage }
    }

    /// The pool's shape.
    pub fn spec(&self) -> &KvPoolSpec {
        &self.spec
    }

    /// The storage, for backends.
    pub fn storage(&self) -> &KvStorage {
        &self.storage
    }

    /// The storage, for backends.
    pub fn storage_mut(&mut self) -> &mut KvStorage {
        &mut self.storage
    }
}

/// Host keys and values.
///
/// Layout, per layer, per block, per KV head (`bt` = block tokens, `hd` = head dim):
/// keys transposed, `| k[d=0][slot 0..bt] | k[d=1][slot 0..bt] | … |` (`hd × bt`), so that one
/// query's scores against a whole block are `hd` vector multiply-adds with no horizontal sum;
/// values as they come, `| v[slot 0][0..hd] | v[slot 1][0..hd] | … |` (`bt × hd`), so that the
/// weighted sum adds whole value rows.
#[derive(Debug)]
pub struct HostKv {
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

impl HostKv {
    /// A zeroed pool (the operating system hands out zero pages lazily).
    pub fn zeroed(spec: &KvPoolSpec) -> Self {
        let n = spec.blocks * spec.layers * spec.block_tokens * spec.kv_dim;
        Self {
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// Checks a block table covers `positions` and names only blocks of the pool.
pub fn check_table(spec: &KvPoolSpec, blocks: &[u32], positions: usize) -> Result<()> {
    if blocks.len() * spec.block_tokens < positions {
        return Err(shape_err(
            "attention",
            format!(
                "{} blocks of {} cover fewer than {positions} positions",
                blocks.len(),
                spec.block_tokens
            ),
        ));
    }
    if let Some(&b) = blocks.iter().find(|&&b| b as usize >= spec.blocks) {
        return Err(shape_err(
            "attention",
            format!("block {b} outside a pool of {}", spec.blocks),
        ));
    }
    Ok(())
}
