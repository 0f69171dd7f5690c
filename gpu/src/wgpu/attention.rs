//! The paged KV pool on the GPU and attention over it.
//!
//! The pool is one key and one value buffer per layer (so that no binding outgrows the
//! adapter's limit), laid out `| block | kv head | slot | head dim |` (attention.wgsl), in f32
//! or in f16 (`--kv-cache-dtype f16`: half the memory and the bandwidth of long contexts;
//! rounded to nearest even, as the CPU backend's f16 pool).

use super::encoder::grid;
use super::kernels::{AttentionParams, Kernel, ATTENTION_CHUNK, ELEMENT_GROUP};
use super::{device_of, DeviceTensor, WgpuBackend};
use crate::backend::{AttentionShape, Rope, RopeStyle, SeqSpan};
use crate::checks;
use crate::error::{shape_err, Error, Result};
use crate::kv::{KvDtype, KvPool, KvPoolSpec, KvStorage};
use crate::tensor::Tensor;
use lowbit_shaders::WeightKind;
use std::sync::atomic::Ordering;

/// A row no sequence claims (attention.wgsl's `NO_ROW`).
const NO_ROW: u32 = u32::MAX;

/// Keys and values of every layer.
#[derive(Debug)]
pub struct DeviceKv {
    k: Vec<::wgpu::Buffer>,
    v: Vec<::wgpu::Buffer>,
}

/// A step's row → (position, block table) map, uploaded once for all layers.
#[derive(Debug, Clone)]
pub struct RowInfo {
    rows: DeviceTensor,
    tables: DeviceTensor,
}

fn layer_bytes(spec: &KvPoolSpec) -> u64 {
    (spec.blocks * block_bytes(spec) as usize) as u64
}

fn block_bytes(spec: &KvPoolSpec) -> u64 {
    (spec.block_tokens * spec.kv_dim * spec.dtype.size()) as u64
}

/// The kernels' name for a pool's element type.
fn element_kind(dtype: KvDtype) -> WeightKind {
    match dtype {
        KvDtype::F32 => WeightKind::F32,
        KvDtype::F16 => WeightKind::F16,
    }
}

fn device_kv(pool: &mut KvPool) -> Result<(KvPoolSpec, &mut DeviceKv)> {
    let spec = *pool.spec();
    match pool.storage_mut() {
        KvStorage::Device(kv) => Ok((spec, kv)),
        KvStorage::Host(_) => Err(Error::ForeignStorage("cpu")),
    }
}

impl WgpuBackend {
    /// Blocks of one layer's keys that fit the adapter's largest binding.
    pub(super) fn kv_pool_max_blocks(&self, spec: &KvPoolSpec) -> usize {
        let per_block = block_bytes(spec).max(1);
        usize::try_from(self.gpu.limits.max_storage_buffer_binding_size / per_block)
            .unwrap_or(usize::MAX)
    }

    pub(super) fn kv_pool(&self, spec: KvPoolSpec) -> Result<KvPool> {
        spec.validate()?;
        if spec.dtype == KvDtype::F16 && !spec.head_dim.is_multiple_of(2) {
            return Err(Error::Unsupported(format!(
                "an f16 KV cache on wgpu stores values in pairs; heads of {} dimensions are odd",
                spec.head_dim
            )));
        }
        // Cached bind groups would keep an earlier pool's buffers alive (bench makes one
        // per run; the server one for its life).
        self.recorder()?.forget_bind_groups();
        let bytes = layer_bytes(&spec);
        let max = self.gpu.limits.max_storage_buffer_binding_size;
        if bytes > max && spec.layers > 0 {
            return Err(Error::Unsupported(format!(
                "a KV pool of {} blocks needs {bytes} bytes per layer for keys (and as many \
                 for values), more than this adapter binds at once ({max}); lower \
                 --kv-cache-memory",
                spec.blocks
            )));
        }
        let make = |what: &str, layer: usize| {
            self.gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(&format!("{what} layer {layer}")),
                size: bytes,
                usage: ::wgpu::BufferUsages::STORAGE
                    | ::wgpu::BufferUsages::COPY_SRC
                    | ::wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let kv = self.gpu.scoped("allocating the KV pool", || DeviceKv {
            k: (0..spec.layers).map(|l| make("keys", l)).collect(),
            v: (0..spec.layers).map(|l| make("values", l)).collect(),
        })?;
        self.memory
            .kv
            .fetch_add(2 * bytes * spec.layers as u64, Ordering::Relaxed);
        Ok(KvPool::new(spec, KvStorage::Device(kv)))
    }

    pub(super) fn copy_kv_blocks(&self, pool: &mut KvPool, pairs: &[(u32, u32)]) -> Result<()> {
        let (spec, kv) = device_kv(pool)?;
        if let Some(&(s, d)) = pairs
            .iter()
            .find(|(s, d)| *s as usize >= spec.blocks || *d as usize >= spec.blocks)
        {
            return Err(shape_err(
                "copy_blocks",
                format!("({s}, {d}) in a pool of {} blocks", spec.blocks),
            ));
        }
        let pairs: Vec<(u32, u32)> = pairs.iter().copied().filter(|(s, d)| s != d).collect();
        if pairs.is_empty() {
            return Ok(());
        }
        // A buffer cannot be copied into itself: each block goes through a scratch buffer,
        // pair after pair, so chained pairs behave as the CPU backend's.
        let bb = block_bytes(&spec);
        let scratch = self.alloc(spec.block_tokens, spec.kv_dim)?;
        let mut rec = self.recorder()?;
        for buffers in [&kv.k, &kv.v] {
            for b in buffers.iter() {
                for &(src, dst) in &pairs {
                    rec.copy(b, u64::from(src) * bb, scratch.buffer(), 0, bb);
                    rec.copy(scratch.buffer(), 0, b, u64::from(dst) * bb, bb);
                }
            }
        }
        Ok(())
    }

    fn row_info(&self, rows: usize, seqs: &[SeqSpan<'_>]) -> Result<RowInfo> {
        let mut key = Vec::with_capacity(1 + seqs.len() * 4);
        key.push(rows as u32);
        for s in seqs {
            key.extend([s.row_start as u32, s.len as u32, s.pos_start as u32]);
            key.push(s.blocks.len() as u32);
            key.extend_from_slice(s.blocks);
        }
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| Error::Internal("the wgpu step cache is poisoned"))?;
        if let Some((_, info)) = cache.attention.iter().find(|(k, _)| *k == key) {
            return Ok(info.clone());
        }
        // The older of two gives its buffers (as the RoPE tables do: uploads are ordered with
        // the dispatches already recorded).
        let old = (cache.attention.len() == 2).then(|| cache.attention.remove(0).1);
        let mut info = vec![[NO_ROW, 0u32]; rows];
        let mut tables = Vec::new();
        for s in seqs {
            let offset = tables.len() as u32;
            tables.extend_from_slice(s.blocks);
            for t in 0..s.len {
                info[s.row_start + t] = [(s.pos_start + t) as u32, offset];
            }
        }
        if tables.is_empty() {
            tables.push(0);
        }
        if info.is_empty() {
            info.push([NO_ROW, 0]);
        }
        let (old_rows, old_tables) = old.map(|o| (o.rows, o.tables)).unzip();
        let info = RowInfo {
            rows: self.upload_reusing(old_rows, bytemuck::cast_slice(&info))?,
            tables: self.upload_reusing(old_tables, bytemuck::cast_slice(&tables))?,
        };
        cache.attention.push((key, info.clone()));
        Ok(info)
    }

    /// Attention of `layer`; with `rope` (positions and rotation), q and the new keys are
    /// rotated inside the kernels as they are read (two dispatches fewer than `rope` first).
    pub(super) fn attend(
        &self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rope: Option<(&[u32], &Rope)>,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor> {
        let rows = q.rows();
        let (spec, kv) = device_kv(pool)?;
        checks::attention(layer, (q, k, v), seqs, &spec, shape)?;
        if let Some((positions, r)) = rope {
            checks::rope(q, positions, r)?;
            checks::rope(k, positions, r)?;
            if r.head_dim != shape.head_dim {
                return Err(shape_err(
                    "rope_attention",
                    format!(
                        "RoPE over {} dimensions, heads of {}",
                        r.head_dim, shape.head_dim
                    ),
                ));
            }
        }
        if shape.head_dim > 256 {
            return Err(Error::Unsupported(format!(
                "attention heads of {} dimensions on the GPU (at most 256)",
                shape.head_dim
            )));
        }
        let out = self.alloc(rows, shape.q_dim())?;
        if rows == 0 {
            return Ok(self.tensor(rows, shape.q_dim(), out));
        }
        let info = self.row_info(rows, seqs)?;
        let table = rope
            .map(|(positions, r)| self.rope_table(positions, r))
            .transpose()?;
        let table_binding = match &table {
            Some(t) => (t.buffer(), t.bytes()),
            None => (&self.dummy_read, 256),
        };
        let rope_kind = match rope {
            None => 0,
            Some((_, r)) if r.style == RopeStyle::HalfSplit => 2,
            Some(_) => 1,
        };
        let (qd, kd, vd) = (device_of(q)?, device_of(k)?, device_of(v)?);
        let sinks = shape.sinks.map(device_of).transpose()?;
        let kind = element_kind(spec.dtype);
        let write = self.kernel(Kernel::KvWrite { pool: kind })?;
        let attend = self.kernel(Kernel::Attend { pool: kind })?;
        let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
        // kv_write: a thread per value, or per pair of values of an f16 pool (one word).
        let per_thread = 4 / spec.dtype.size();
        let write_threads = rows * spec.kv_dim / per_thread;
        let write_groups = grid((write_threads as u32).div_ceil(ELEMENT_GROUP));
        // Split-K: every row's positions in chunks; the grid covers the longest row.
        let longest = seqs.iter().map(|s| s.pos_start + s.len).max().unwrap_or(1);
        let seen = if shape.window > 0 {
            longest.min(shape.window)
        } else {
            longest
        };
        let splits = seen.div_ceil(ATTENTION_CHUNK).max(1);
        let attend_groups = grid((rows * shape.n_heads * splits) as u32);
        let merge_groups = grid((rows * shape.n_heads) as u32);
        let partial = (splits > 1)
            .then(|| self.alloc(rows * shape.n_heads * splits, shape.head_dim + 2))
            .transpose()?;
        let partial_binding = match &partial {
            Some(t) => (t.buffer(), t.bytes()),
            None => (&self.dummy_write, 256),
        };
        let params = |grid_x| AttentionParams {
            rows: rows as u32,
            n_heads: shape.n_heads as u32,
            n_kv_heads: shape.n_kv_heads as u32,
            head_dim: shape.head_dim as u32,
            block_tokens: spec.block_tokens as u32,
            scale: shape.scale,
            grid_x,
            splits: splits as u32,
            rope: rope_kind,
            softcap: shape.softcap,
            window: shape.window as u32,
            rotated_pairs: rope.map_or(0, |(_, r)| r.rotated_pairs() as u32),
            has_sinks: u32::from(sinks.is_some()),
            _pad: [0; 3],
        };
        let sinks_binding = match sinks {
            Some(t) => (t.buffer(), t.bytes()),
            None => (&self.dummy_read, 256),
        };
        let mut rec = self.recorder()?;
        rec.dispatch(
            write,
            &[
                (&self.dummy_read, 256),
                (kd.buffer(), kd.bytes()),
                (vd.buffer(), vd.bytes()),
                (kc, kc.size()),
                (vc, vc.size()),
                (info.rows.buffer(), info.rows.bytes()),
                (info.tables.buffer(), info.tables.bytes()),
                (&self.dummy_write, 256),
                (&self.dummy_write, 256),
                table_binding,
                (&self.dummy_read, 256),
            ],
            &params(write_groups.0 * ELEMENT_GROUP),
            write_groups,
        );
        rec.dispatch(
            attend,
            &[
                (qd.buffer(), qd.bytes()),
                (&self.dummy_read, 256),
                (&self.dummy_read, 256),
                (kc, kc.size()),
                (vc, vc.size()),
                (info.rows.buffer(), info.rows.bytes()),
                (info.tables.buffer(), info.tables.bytes()),
                (out.buffer(), out.bytes()),
                partial_binding,
                table_binding,
                sinks_binding,
            ],
            &params(attend_groups.0),
            attend_groups,
        );
        if partial.is_some() {
            let merge = self.kernel(Kernel::AttendMerge)?;
            rec.dispatch(
                merge,
                &[
                    (&self.dummy_read, 256),
                    (&self.dummy_read, 256),
                    (&self.dummy_read, 256),
                    (&self.dummy_write, 256),
                    (&self.dummy_write, 256),
                    (info.rows.buffer(), info.rows.bytes()),
                    (&self.dummy_read, 256),
                    (out.buffer(), out.bytes()),
                    partial_binding,
                    (&self.dummy_read, 256),
                    sinks_binding,
                ],
                &params(merge_groups.0),
                merge_groups,
            );
        }
        Ok(self.tensor(rows, shape.q_dim(), out))
    }
}
