//! The CPU backend: host memory, its own spinning thread pool, runtime-selected SIMD.
//!
//! Weights stay in their format: float ones row-major, integer ones interleaved by eight rows
//! for the integer kernels ([`packed`]).

mod attention;
pub mod fastmath;
pub mod matmul;
pub mod packed;
pub mod pool;
pub mod qdot;
pub mod qmatmul;

use crate::backend::{AttentionShape, Backend, Rope, RopeStyle, ScatteredRows, SeqSpan};
use crate::checks;
use crate::error::{shape_err, Error, Result};
use crate::kv::{HostKv, KvPool, KvPoolSpec, KvStorage};
use crate::quant::QTensor;
use crate::tensor::{Tensor, Weight, WeightStorage};
use pool::Pool;

/// Element-wise work below this size runs on the calling thread: waking the pool costs more.
const PARALLEL_MIN_VALUES: usize = 1 << 14;

/// The CPU backend (stateless; threads come from the process's spinning [`Pool`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> Self {
        Self
    }
}

/// How this backend keeps a weight: integer formats move to the interleaved layout the kernels
/// want ([`packed`]) and the row-major copy is dropped, so memory stays at one copy; float
/// formats stay row-major.
pub fn host_storage(w: QTensor) -> WeightStorage {
    match packed::PackedWeight::pack(&w) {
        Some(p) => WeightStorage::HostPacked(p),
        None => WeightStorage::Host(w),
    }
}

/// Each row's (sin, cos) per rotated pair ([`Rope::sin_cos`]).
fn rope_table(positions: &[u32], rope: &Rope) -> Vec<(f32, f32)> {
    let pairs = rope.rotated_pairs();
    let mut table = Vec::with_capacity(positions.len() * pairs);
    for &pos in positions {
        table.extend((0..pairs).map(|i| rope.sin_cos(pos, i)));
    }
    table
}

/// Runs `f` with the table for `positions`, made once per step: every layer's queries and keys
/// share the step's positions, so only the first of those 2 × layers calls computes it. Two
/// tables are kept: Gemma 3's sliding and global layers rotate by different frequencies and
/// alternate within a step.
fn with_rope_table<R>(positions: &[u32], rope: &Rope, f: impl FnOnce(&[(f32, f32)]) -> R) -> R {
    type Cached = Vec<(Vec<u32>, Vec<u32>, Vec<(f32, f32)>)>;
    thread_local! {
        static LAST: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let key = rope.table_key();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let hit = last
            .iter()
            .position(|(p, fb, _)| p == positions && *fb == key);
        let at = match hit {
            Some(i) => i,
            None => {
                if last.len() == 2 {
                    last.remove(0);
                }
                last.push((positions.to_vec(), key, rope_table(positions, rope)));
                last.len() - 1
            }
        };
        f(&last[at].2)
    })
}

/// `f(a[i], b[i])` for every value (same shapes); in parallel chunks where there are many
/// (decode rows are too small to be worth waking the thread pool).
fn zip_values(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    let (xa, xb) = (a.host()?, b.host()?);
    let out = if xa.len() < PARALLEL_MIN_VALUES {
        xa.iter().zip(xb).map(|(&x, &y)| f(x, y)).collect()
    } else {
        let mut out = vec![0.0f32; xa.len()];
        Pool::global().for_each_chunk_mut(&mut out, PARALLEL_MIN_VALUES, |c, part| {
            let start = c * PARALLEL_MIN_VALUES;
            let (pa, pb) = (
                &xa[start..start + part.len()],
                &xb[start..start + part.len()],
            );
            for (o, (&x, &y)) in part.iter_mut().zip(pa.iter().zip(pb)) {
                *o = f(x, y);
            }
        });
        out
    };
    Tensor::from_host(a.rows(), a.cols(), out)
}

/// Rotates one row's heads in place by its (sin, cos) per rotated pair; dimensions past the
/// rotated ones stay as they are.
fn rope_row(row: &mut [f32], sincos: &[(f32, f32)], rope: &Rope) {
    let hd = rope.head_dim;
    let half = rope.rotated_pairs();
    for head in row.chunks_exact_mut(hd) {
        for (i, &(sin, cos)) in sincos.iter().enumerate().take(half) {
            let (a, b) = match rope.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn run_step(&self, step: &mut (dyn FnMut() + Send)) {
        // The calling thread takes part in every parallel region; the pool's helpers stay
        // awake between them (pool.rs).
        step();
    }

    fn load_weight(&self, w: QTensor) -> Result<Weight> {
        let (rows, cols) = (w.rows, w.cols);
        Ok(Weight::new(rows, cols, host_storage(w)))
    }

    fn upload(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_host(rows, cols, data)
    }

    fn download(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.host()?.to_vec())
    }

    fn download_owned(&self, x: Tensor) -> Result<Vec<f32>> {
        x.into_host()
    }

    fn argmax_rows(&self, x: &Tensor) -> Result<Vec<u32>> {
        if x.cols() == 0 {
            return Ok(vec![0; x.rows()]);
        }
        let (rows, cols) = (x.rows(), x.cols());
        let data = x.host()?;
        if rows < 2 || data.len() < PARALLEL_MIN_VALUES {
            return Ok(data.chunks(cols).map(crate::argmax).collect());
        }
        // A batch of logits rows (16 × 49,152 values) is worth both cores.
        Ok(Pool::global().map(rows, |r| crate::argmax(&data[r * cols..(r + 1) * cols])))
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let (vocab, dim) = (table.rows(), table.cols());
        let mut out = vec![0.0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim.max(1))) {
            let id = id as usize;
            if id >= vocab {
                return Err(shape_err(
                    "embed",
                    format!("token id {id} outside vocabulary of {vocab}"),
                ));
            }
            table.host_row(id, row)?;
        }
        Tensor::from_host(ids.len(), dim, out)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let cols = x.cols();
        checks::norm_weight(x, weight)?;
        let w = weight.host()?;
        let mut out = x.host()?.to_vec();
        let norm_row = |row: &mut [f32]| {
            let mean_sq = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / cols as f64;
            let inv = (1.0 / (mean_sq + f64::from(eps)).sqrt()) as f32;
            for (v, g) in row.iter_mut().zip(w) {
                *v = *v * inv * g;
            }
        };
        // The float64 sum is one dependent chain per row (≈ 1 ns a value), so rows go to the
        // pool from a few thousand values on: a batch of 8+ decode rows already gains.
        if out.len() < PARALLEL_MIN_VALUES / 4 || x.rows() < 2 {
            out.chunks_exact_mut(cols.max(1)).for_each(norm_row);
        } else {
            let rows_per_task = x.rows().div_ceil(2 * Pool::global().threads()).max(1);
            Pool::global().for_each_chunk_mut(&mut out, rows_per_task * cols, |_, part| {
                part.chunks_exact_mut(cols).for_each(norm_row);
            });
        }
        Tensor::from_host(x.rows(), cols, out)
    }

    fn matmul(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        if x.cols() != w.cols() {
            return Err(shape_err(
                "matmul",
                format!("x has {} columns, W has {}", x.cols(), w.cols()),
            ));
        }
        let out = qmatmul::host_matmul(x.host()?, w.storage())?;
        Tensor::from_host(x.rows(), w.rows(), out)
    }

    fn matmul_many(&self, x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
        let mut qs = Vec::with_capacity(ws.len());
        for w in ws {
            if x.cols() != w.cols() {
                return Err(shape_err(
                    "matmul_many",
                    format!("x has {} columns, W has {}", x.cols(), w.cols()),
                ));
            }
            qs.push(w.storage());
        }
        qmatmul::host_matmul_many(x.host()?, &qs)?
            .into_iter()
            .zip(ws)
            .map(|(out, w)| Tensor::from_host(x.rows(), w.rows(), out))
            .collect()
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        checks::same_shape("add", a, b)?;
        let out = a
            .host()?
            .iter()
            .zip(b.host()?)
            .map(|(x, y)| x + y)
            .collect();
        Tensor::from_host(a.rows(), a.cols(), out)
    }

    fn add_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        checks::bias(x, bias)?;
        let b = bias.host()?;
        let mut out = x.host()?.to_vec();
        for row in out.chunks_exact_mut(x.cols().max(1)) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        Tensor::from_host(x.rows(), x.cols(), out)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        checks::same_shape("silu_mul", gate, up)?;
        zip_values(gate, up, |g, u| fastmath::silu(g) * u)
    }

    fn gelu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        checks::same_shape("gelu_mul", gate, up)?;
        zip_values(gate, up, |g, u| fastmath::gelu_tanh(g) * u)
    }

    fn swiglu_oai(&self, gate: &Tensor, up: &Tensor, limit: f32) -> Result<Tensor> {
        checks::same_shape("swiglu_oai", gate, up)?;
        zip_values(gate, up, |g, u| crate::backend::swiglu_oai(g, u, limit))
    }

    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        zip_values(x, x, |v, _| v * factor)
    }

    fn softcap(&self, x: &Tensor, cap: f32) -> Result<Tensor> {
        zip_values(x, x, |v, _| cap * (v / cap).tanh())
    }

    fn rope(&self, x: &Tensor, positions: &[u32], rope: &Rope) -> Result<Tensor> {
        let cols = x.cols();
        checks::rope(x, positions, rope)?;
        let mut out = x.host()?.to_vec();
        let pairs = rope.rotated_pairs();
        with_rope_table(positions, rope, |table| {
            let sincos = |r: usize| &table[r * pairs..(r + 1) * pairs];
            if out.len() < PARALLEL_MIN_VALUES {
                for (r, row) in out.chunks_mut(cols).enumerate() {
                    rope_row(row, sincos(r), rope);
                }
            } else {
                Pool::global().for_each_chunk_mut(&mut out, cols, |r, row| {
                    rope_row(row, sincos(r), rope);
                });
            }
        });
        Tensor::from_host(x.rows(), cols, out)
    }

    fn select_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let (cols, data) = (x.cols(), x.host()?);
        let mut out = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            if r >= x.rows() {
                return Err(shape_err("select_rows", format!("row {r} of {}", x.rows())));
            }
            out.extend_from_slice(&data[r * cols..(r + 1) * cols]);
        }
        Tensor::from_host(rows.len(), cols, out)
    }

    fn add_scattered(&self, base: &Tensor, parts: &[ScatteredRows<'_>]) -> Result<Tensor> {
        checks::scattered(base, parts)?;
        let cols = base.cols();
        let mut out = base.host()?.to_vec();
        for part in parts {
            let x = part.x.host()?;
            for ((&r, &w), src) in part
                .rows
                .iter()
                .zip(part.weights)
                .zip(x.chunks_exact(cols.max(1)))
            {
                let dst = &mut out[r * cols..(r + 1) * cols];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
            }
        }
        Tensor::from_host(base.rows(), cols, out)
    }

    fn new_kv_pool(&self, spec: KvPoolSpec) -> Result<KvPool> {
        spec.validate()?;
        Ok(KvPool::new(spec, KvStorage::Host(HostKv::zeroed(&spec))))
    }

    fn copy_blocks(&self, pool: &mut KvPool, pairs: &[(u32, u32)]) -> Result<()> {
        let spec = *pool.spec();
        let KvStorage::Host(kv) = pool.storage_mut() else {
            return Err(Error::ForeignStorage("wgpu"));
        };
        attention::copy_blocks(kv, &spec, pairs)
    }

    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor> {
        checks::attention(layer, (q, k, v), seqs, pool.spec(), shape)?;
        let spec = *pool.spec();
        let KvStorage::Host(kv) = pool.storage_mut() else {
            return Err(Error::ForeignStorage("wgpu"));
        };
        let out = attention::attention(
            layer,
            q.host()?,
            k.host()?,
            v.host()?,
            seqs,
            kv,
            &spec,
            shape,
        )?;
        Tensor::from_host(q.rows(), shape.q_dim(), out)
    }
}
