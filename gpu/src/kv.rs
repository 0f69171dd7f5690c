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

/// How keys and values are stored. Attention computes in f32 either way; f16 halves the
/// pool's memory (twice the tokens per byte) and the bytes decode attention streams per
/// step, at the cost of rounding each key and value once when it is written (llama.cpp's
/// default cache type). Every row of a pool reads the same stored values, so batch
/// invariance holds for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    /// The name flags and logs use.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        }
    }
}

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
    /// How values are stored.
    pub dtype: KvDtype,
}

impl KvPoolSpec {
    /// Bytes one block occupies: keys and values, every layer.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.layers * self.block_tokens * self.kv_dim * self.dtype.size()
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
        // (A pool of no layers is a main pool whose model slides on every layer: block ids
        // only, every layer's keys and values in its window pool.)
        if self.head_dim == 0 || !self.kv_dim.is_multiple_of(self.head_dim) {
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
///
/// A model with sliding-window layers may keep those layers in a second pool of its own
/// ([`KvPool::with_window`]): its blocks have their own ids and block tables, and a
/// sequence gives back the blocks that have slid out of every window it will attend to, so
/// a long context takes a window's worth of memory on those layers (llama.cpp's iSWA
/// cache, vLLM's sliding-window group). This pool then holds the other layers only.
#[derive(Debug)]
pub struct KvPool {
    spec: KvPoolSpec,
    storage: KvStorage,
    window: Option<Box<KvPool>>,
}

impl KvPool {
    /// Wraps storage; the backend that made it vouches that it matches `spec`.
    pub fn new(spec: KvPoolSpec, storage: KvStorage) -> Self {
        Self {
            spec,
            storage,
            window: None,
        }
    }

    /// This pool with `window` holding the model's sliding-window layers.
    pub fn with_window(mut self, window: KvPool) -> Self {
        self.window = Some(Box::new(window));
        self
    }

    /// The sliding-window layers' own pool, where they have one.
    pub fn window(&self) -> Option<&KvPool> {
        self.window.as_deref()
    }

    /// The sliding-window layers' own pool, where they have one.
    pub fn window_mut(&mut self) -> Option<&mut KvPool> {
        self.window.as_deref_mut()
    }

    /// Bytes of this pool and its window pool.
    pub fn bytes(&self) -> usize {
        self.spec.bytes() + self.window.as_ref().map_or(0, |w| w.spec.bytes())
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
pub enum HostKv {
    F32(HostKvData<f32>),
    F16(HostKvData<half::f16>),
}

/// The key and value arrays of a [`HostKv`] of one element type.
#[derive(Debug)]
pub struct HostKvData<E> {
    pub(crate) k: Vec<E>,
    pub(crate) v: Vec<E>,
}

impl<E: bytemuck::Pod> HostKvData<E> {
    /// Zeroed arrays, allocated as zeroed bytes so that pages are mapped only when written
    /// (`vec![x; n]` writes every element unless `x` is a primitive zero).
    fn zeroed(n: usize) -> Self {
        let zeroed = || bytemuck::allocation::zeroed_vec::<E>(n);
        Self {
            k: zeroed(),
            v: zeroed(),
        }
    }
}

impl HostKv {
    /// A zeroed pool of the spec's element type (the operating system hands out zero pages
    /// lazily).
    pub fn zeroed(spec: &KvPoolSpec) -> Self {
        let n = spec.blocks * spec.layers * spec.block_tokens * spec.kv_dim;
        match spec.dtype {
            KvDtype::F32 => HostKv::F32(HostKvData::zeroed(n)),
            KvDtype::F16 => HostKv::F16(HostKvData::zeroed(n)),
        }
    }
}

/// A block-table entry whose block was given back: a sliding-window pool's blocks wholly
/// before every window of the sequence ([`KvPool::window`]). No kernel reads it.
pub const NO_BLOCK: u32 = u32::MAX;

/// Checks a block table covers `positions` and names only blocks of the pool from the block
/// holding position `first_seen` on (the first position any of the span's rows attends to;
/// blocks before it may be [`NO_BLOCK`]).
pub fn check_table(
    spec: &KvPoolSpec,
    blocks: &[u32],
    positions: usize,
    first_seen: usize,
) -> Result<()> {
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
    let seen = blocks
        .get(first_seen / spec.block_tokens..)
        .unwrap_or_default();
    if let Some(&b) = seen.iter().find(|&&b| b as usize >= spec.blocks) {
        return Err(shape_err(
            "attention",
            format!("block {b} outside a pool of {}", spec.blocks),
        ));
    }
    Ok(())
}
