//! Causal grouped-query attention over the paged KV pool in host memory ([`HostKv`]).
//!
//! One numeric path for every query row, whatever its sequence is doing (a one-token decode,
//! a prefill chunk of any size) and whatever else shares the step: each score is one query
//! against one key, accumulated along the head dimension in the same order; each row's
//! softmax and weighted sum of values run over its own positions in increasing order. The
//! work is blocked (a task takes up to [`QUERY_BLOCK`] rows of one head, so each key block is
//! loaded once for all of them; within a task, tiles of four rows against several key blocks
//! keep many independent multiply-add chains in registers) without changing any row's
//! arithmetic, so a request's tokens do not depend on its batch or on how its prompt was
//! chunked.

use super::fastmath::exp_nonpositive;
use super::matmul::{Accumulate, Fused, Plain};
use super::pool::{Pool, SendPtr};
use crate::backend::{AttentionShape, SeqSpan};
use crate::error::{shape_err, Result};
use crate::kv::{HostKv, HostKvData, KvPoolSpec};
use crate::tensor::Tensor;

/// Query rows of one head per task: enough to reuse each key block from L1 many times, few
/// enough that a 512-token prefill still makes hundreds of tasks.
const QUERY_BLOCK: usize = 16;

/// Where one (layer, block, KV head) lives in [`HostKv`]'s arrays: `head_dim × block_tokens`
/// floats of keys (transposed) and as many of values, at the same offset.
fn head_offset(spec: &KvPoolSpec, layer: usize, block: u32, kv_head: usize) -> usize {
    let n_kv = spec.kv_dim / spec.head_dim;
    let per_head = spec.block_tokens * spec.head_dim;
    ((layer * spec.blocks + block as usize) * n_kv + kv_head) * per_head
}

/// Writes the new keys/values into the pool, then attends. See [`crate::Backend::attention`].
/// The backend has checked the shapes, spans and block tables (`checks::attention`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[SeqSpan<'_>],
    kv: &mut HostKv,
    spec: &KvPoolSpec,
    shape: AttentionShape,
) -> Result<Vec<f32>> {
    with_host_kv!(kv, data => write_and_attend(layer, q, (k, v), seqs, data, spec, shape))
}

/// `$body` with `$data` bound to the pool's typed arrays, whichever type the pool stores
/// (the generic code is then monomorphized for each).
macro_rules! with_host_kv {
    ($kv:expr, $data:ident => $body:expr) => {
        match $kv {
            HostKv::F32($data) => $body,
            HostKv::F16($data) => $body,
        }
    };
}
use with_host_kv;

/// A value type of the host pool: stored from f32, read back as f32 (exactly, for f16).
pub(crate) trait KvElem: bytemuck::Pod + Send + Sync {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Eight stored values from `p`, widened.
    /// # Safety
    /// Eight values readable at `p`, on a CPU with AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen stored values from `p`, widened.
    /// # Safety
    /// Sixteen values readable at `p`, on a CPU with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// [`attention`] once the shapes are checked, for one value type of the pool.
fn write_and_attend<E: KvElem>(
    layer: usize,
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    seqs: &[SeqSpan<'_>],
    kv: &mut HostKvData<E>,
    spec: &KvPoolSpec,
    shape: AttentionShape,
) -> Result<Vec<f32>> {
    let (kv_dim, hd) = (shape.kv_dim(), shape.head_dim);
    let bt = spec.block_tokens;
    for s in seqs {
        for t in 0..s.len {
            let pos = s.pos_start + t;
            let (block, slot) = (s.blocks[pos / bt], pos % bt);
            let (krow, vrow) = (
                &k[(s.row_start + t) * kv_dim..][..kv_dim],
                &v[(s.row_start + t) * kv_dim..][..kv_dim],
            );
            for kvh in 0..shape.n_kv_heads {
                let at = head_offset(spec, layer, block, kvh);
                let (kh, vh) = (&krow[kvh * hd..][..hd], &vrow[kvh * hd..][..hd]);
                for (d, &x) in kh.iter().enumerate() {
                    kv.k[at + d * bt + slot] = E::from_f32(x);
                }
                for (o, &x) in kv.v[at + slot * hd..][..hd].iter_mut().zip(vh) {
                    *o = E::from_f32(x);
                }
            }
        }
    }

    let group = shape.n_heads / shape.n_kv_heads;
    let per_head_tasks: usize = seqs.iter().map(|s| s.len.div_ceil(QUERY_BLOCK)).sum();
    // A task takes all the query heads of a KV head (each key and value is then read once
    // for all of them) unless that would leave too few tasks to keep every thread busy.
    let heads_per_task = if per_head_tasks * shape.n_kv_heads >= 2 * Pool::global().threads() {
        group
    } else {
        1
    };
    let kernel = best_kernel();
    attend_with(kernel, layer, q, seqs, kv, spec, shape, heads_per_task)
}

/// The attention proper, with a chosen kernel (tests compare them) and `heads_per_task`
/// query heads (1 or a whole group) per task: the same arithmetic per row either way.
#[allow(clippy::too_many_arguments)]
fn attend_with<E: KvElem>(
    kernel: KernelFn<E>,
    layer: usize,
    q: &[f32],
    seqs: &[SeqSpan<'_>],
    kv: &HostKvData<E>,
    spec: &KvPoolSpec,
    shape: AttentionShape,
    heads_per_task: usize,
) -> Result<Vec<f32>> {
    let (q_dim, hd) = (shape.q_dim(), shape.head_dim);
    let rows = q.len() / q_dim.max(1);
    let mut tasks = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for h in (0..shape.n_heads).step_by(heads_per_task) {
            for t0 in (0..s.len).step_by(QUERY_BLOCK) {
                tasks.push(Task {
                    seq: i,
                    heads: h..h + heads_per_task,
                    rows: t0..(t0 + QUERY_BLOCK).min(s.len),
                });
            }
        }
    }
    let ctx = Ctx {
        layer,
        q,
        k: &kv.k,
        v: &kv.v,
        seqs,
        spec,
        shape,
        sinks: shape.sinks.map(Tensor::host).transpose()?,
    };
    let mut out = vec![0.0f32; rows * q_dim];
    // Tasks write disjoint (row, head) slices: each belongs to one task (the tasks split
    // every span's rows and heads), and nothing reads `out` until all are done.
    let base = SendPtr(out.as_mut_ptr());
    // Each task puts its rows in place itself: gathering them on the calling thread was
    // serial work while the other threads waited.
    Pool::global().run(tasks.len(), &|i| {
        let task = &tasks[i];
        let o = kernel(&ctx, task);
        let s = &seqs[task.seq];
        let nh = task.heads.len();
        for (r, row) in o.chunks_exact(hd).enumerate() {
            let (t, head) = (task.rows.start + r / nh, task.heads.start + r % nh);
            let at = (s.row_start + t) * q_dim + head * hd;
            assert!(
                at + hd <= rows * q_dim,
                "attention row {t} of a span past the batch"
            );
            // SAFETY: inside `out` (asserted), and this task's alone (above).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.at(at), hd) };
        }
    });
    Ok(out)
}

/// Everything a task reads.
struct Ctx<'a, E> {
    layer: usize,
    q: &'a [f32],
    k: &'a [E],
    v: &'a [E],
    seqs: &'a [SeqSpan<'a>],
    spec: &'a KvPoolSpec,
    shape: AttentionShape<'a>,
    /// One logit per query head that joins each softmax with no value (gpt-oss).
    sinks: Option<&'a [f32]>,
}

/// Rows `rows` (relative to the span) of query heads `heads` (all of one KV head) of span
/// `seq`. Its output rows are position-major: row `r` is position `rows.start + r / nh` of
/// head `heads.start + r % nh`.
struct Task {
    seq: usize,
    heads: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
}

type KernelFn<E> = fn(&Ctx<'_, E>, &Task) -> Vec<f32>;

/// The kernels this CPU can run with fused multiply-adds (the same bits from each: tested).
#[cfg(test)]
fn fused_kernels<E: KvElem>() -> Vec<(&'static str, KernelFn<E>)> {
    let mut v: Vec<(&'static str, KernelFn<E>)> =
        vec![("portable", |c, t| task::<Fused, PORTABLE, E>(c, t))];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx2() {
            v.push(("avx2", x86::task_avx2));
        }
        if x86::has_avx512() {
            v.push(("avx512", x86::task_avx512));
        }
    }
    v
}

/// The fastest kernel this CPU runs (the features are detected once and cached by std).
fn best_kernel<E: KvElem>() -> KernelFn<E> {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512() {
            return x86::task_avx512;
        }
        if x86::has_avx2() {
            return x86::task_avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    return |c, t| task::<Fused, PORTABLE, E>(c, t);
    #[allow(unreachable_code)]
    |c, t| task::<Plain, PORTABLE, E>(c, t)
}

#[cfg(target_arch = "x86_64")]
mod x86;

// Which loops a task runs. All of them compute every score and output value as the same
// chain of multiply-adds in the same order, so a kind changes speed, not bits.

/// The portable loops, for 16 vector registers (NEON, baseline): one key block, 16 value
/// columns per pass.
const PORTABLE: u8 = 0;
/// AVX2 (16 registers): hand-written loops for 16-token blocks, two key blocks per pass of the
/// scores and 16–64 value columns per pass of the weighted sum (the portable loops spend a
/// quarter of their time on bounds checks and wait on four-cycle multiply-add chains).
const YMM: u8 = 1;
/// AVX-512 (32 registers): several key blocks per pass of the scores (four for 16-token
/// blocks, else two), 64 value columns per pass of the weighted sum.
const ZMM: u8 = 2;

#[inline(always)]
fn task<A: Accumulate, const V: u8, E: KvElem>(c: &Ctx<'_, E>, t: &Task) -> Vec<f32> {
    match c.spec.block_tokens {
        8 => task_bt::<A, 8, V, E>(c, t),
        32 => task_bt::<A, 32, V, E>(c, t),
        _ => task_bt::<A, 16, V, E>(c, t),
    }
}

/// `R` queries against the `BT` keys of each of `KB` blocks (`kt[k]` is `hd × BT`,
/// transposed): every score is one chain of multiply-adds along the head dimension, `R·KB`
/// independent chains at once, each in the same order whatever its neighbours.
#[inline(always)]
fn block_scores<A: Accumulate, E: KvElem, const BT: usize, const R: usize, const KB: usize>(
    q: [&[f32]; R],
    kt: [&[E]; KB],
    out: [[&mut [f32]; KB]; R],
) {
    let mut acc = [[[0.0f32; BT]; KB]; R];
    let hd = q[0].len();
    let q: [&[f32]; R] = q.map(|q| &q[..hd]);
    for d in 0..hd {
        // Fixed-size rows: no bounds checks in the inner loop.
        let kd: [&[E; BT]; KB] =
            std::array::from_fn(|k| kt[k][d * BT..(d + 1) * BT].try_into().expect("BT keys"));
        for j in 0..R {
            let qd = q[j][d];
            for k in 0..KB {
                for s in 0..BT {
                    acc[j][k][s] = A::mul_add(qd, kd[k][s].to_f32(), acc[j][k][s]);
                }
            }
        }
    }
    for (outs, a) in out.into_iter().zip(&acc) {
        for (o, a) in outs.into_iter().zip(a) {
            o[..BT].copy_from_slice(a);
        }
    }
}

/// `out[j] = Σ_slot p[j][slot] · v[slot]` over the `DC` columns from `d0`, for `R` rows at
/// once, slots of the range in increasing order (slot `s` is row `s % BT` of `blocks[s / BT]`, rows `hd`
/// apart): per output value one chain of multiply-adds from zero in position order. `p[j]` is
/// zero past row `j`'s positions, which adds nothing (a sum that starts at +0 never becomes
/// −0).
#[inline(always)]
fn weighted_values<A: Accumulate, E: KvElem, const BT: usize, const R: usize, const DC: usize>(
    p: [&[f32]; R],
    blocks: &[&[E]],
    (hd, d0): (usize, usize),
    slots: std::ops::Range<usize>,
    out: [&mut [f32]; R],
) {
    let mut acc = [[0.0f32; DC]; R];
    for slot in slots {
        let vs: &[E; DC] = blocks[slot / BT][(slot % BT) * hd + d0..][..DC]
            .try_into()
            .expect("DC columns");
        for j in 0..R {
            let pj = p[j][slot];
            for d in 0..DC {
                acc[j][d] = A::mul_add(pj, vs[d].to_f32(), acc[j][d]);
            }
        }
    }
    for (o, a) in out.into_iter().zip(&acc) {
        o[d0..d0 + DC].copy_from_slice(a);
    }
}

/// Tiles of a task's `m` rows: fours (four chains per key or value column), then the rest as
/// one tile of one to three rows (a decode row of one head computes one row, not four);
/// either way the same arithmetic per row.
fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let fours = m / 4 * 4;
    (0..fours)
        .step_by(4)
        .map(|r| (r, 4))
        .chain((fours < m).then_some((fours, m - fours)))
}

/// Columns `cols` of `R` consecutive rows of `rows` (each `stride` long) from row `r0`.
fn rows_mut<const R: usize>(
    rows: &mut [f32],
    stride: usize,
    r0: usize,
    cols: std::ops::Range<usize>,
) -> [&mut [f32]; R] {
    let mut it = rows[r0 * stride..(r0 + R) * stride].chunks_exact_mut(stride);
    std::array::from_fn(|_| &mut it.next().expect("R rows")[cols.clone()])
}

#[inline(always)]
fn task_bt<A: Accumulate, const BT: usize, const V: u8, E: KvElem>(
    c: &Ctx<'_, E>,
    t: &Task,
) -> Vec<f32> {
    let (q_dim, hd) = (c.shape.q_dim(), c.shape.head_dim);
    let group = c.shape.n_heads / c.shape.n_kv_heads;
    let kv_head = t.heads.start / group;
    let s = &c.seqs[t.seq];
    let nh = t.heads.len();
    let m = t.rows.len() * nh;
    // Row r (span row t.rows.start + r / nh) sees positions first(r)..seen(r): all of them,
    // or a sliding window's last few.
    let seen = |r: usize| s.pos_start + t.rows.start + r / nh + 1;
    let first = |r: usize| c.shape.first_seen(seen(r) - 1);
    let blocks = seen(m - 1).div_ceil(BT);
    let stride = blocks * BT;
    let queries: Vec<&[f32]> = t
        .rows
        .clone()
        .flat_map(|row| {
            t.heads
                .clone()
                .map(move |h| &c.q[(s.row_start + row) * q_dim + h * hd..][..hd])
        })
        .collect();
    // Blocks wholly before the first row's window are read by no row: they may have been
    // given back (`NO_BLOCK`), so they stand in as the first block seen.
    let first_block = first(0) / BT;
    let at: Vec<usize> = (0..blocks)
        .map(|b| head_offset(c.spec, c.layer, s.blocks[b.max(first_block)], kv_head))
        .collect();
    let keys: Vec<&[E]> = at.iter().map(|&a| &c.k[a..a + hd * BT]).collect();
    // The SIMD kernels take 16-token blocks; every row of a pool takes the same path.
    const { assert!(V == PORTABLE || cfg!(target_arch = "x86_64")) };
    let zmm_blocks = V == ZMM && BT == 16;
    let ymm_blocks = V == YMM && BT == 16;

    let mut scores = vec![0.0f32; m * stride];
    // Blocks wholly before the first row's window are seen by no row (later rows' windows
    // start no earlier): their scores stay zero and are masked below.
    let mut b = first_block;
    while b < blocks {
        // Rows that see no position of these blocks compute scores nobody reads.
        let first_row = (0..m).find(|&r| b * BT < seen(r)).unwrap_or(m);
        // Key blocks per pass: more independent chains (zmm: four blocks, up to 16 chains).
        let kb = match blocks - b {
            left if left >= 4 && zmm_blocks => 4,
            left if left >= 2 && (V == ZMM || ymm_blocks) => 2,
            _ => 1,
        };
        for (r0, n) in row_tiles(m).filter(|&(r0, n)| r0 + n > first_row) {
            // Scores of `$kb` blocks from block `b + $k0` for `$r` rows.
            macro_rules! scores {
                ($r:literal, $kb:literal) => {
                    scores!($r, $kb, 0)
                };
                ($r:literal, $kb:literal, $k0:literal) => {{
                    let q: [&[f32]; $r] = std::array::from_fn(|j| queries[r0 + j]);
                    let kt: [&[E]; $kb] = std::array::from_fn(|k| keys[b + $k0 + k]);
                    let cols = (b + $k0) * BT..(b + $k0 + $kb) * BT;
                    let out = rows_mut::<$r>(&mut scores, stride, r0, cols).map(|o| {
                        let mut it = o.chunks_exact_mut(BT);
                        std::array::from_fn(|_| it.next().expect("KB blocks"))
                    });
                    if zmm_blocks {
                        // SAFETY: `ZMM` comes only from the AVX-512 entry point.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            x86::block_scores_zmm::<E, $r, $kb>(q, kt, out)
                        };
                    } else if ymm_blocks {
                        // SAFETY: `YMM` comes only from the AVX2 entry point.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            x86::block_scores_ymm::<E, $r, $kb>(q, kt, out)
                        };
                    } else {
                        block_scores::<A, E, BT, $r, $kb>(q, kt, out);
                    }
                }};
            }
            match (n, kb) {
                // Four rows of two blocks would need sixteen accumulators: one block at a time.
                (4, 2) if ymm_blocks => {
                    scores!(4, 1, 0);
                    scores!(4, 1, 1);
                }
                (4, 4) => scores!(4, 4),
                (4, 2) => scores!(4, 2),
                (4, _) => scores!(4, 1),
                (3, 4) => scores!(3, 4),
                (3, 2) => scores!(3, 2),
                (3, _) => scores!(3, 1),
                (2, 4) => scores!(2, 4),
                (2, 2) => scores!(2, 2),
                (2, _) => scores!(2, 1),
                (_, 4) => scores!(1, 4),
                (_, 2) => scores!(1, 2),
                _ => scores!(1, 1),
            }
        }
        b += kb;
    }
    // Softmax per row; probabilities outside a row's positions are zero.
    for (r, row) in scores.chunks_exact_mut(stride).enumerate() {
        let (row, rest) = row.split_at_mut(seen(r));
        rest.fill(0.0);
        let (before, sc) = row.split_at_mut(first(r));
        before.fill(0.0);
        let mut max = f32::NEG_INFINITY;
        for v in sc.iter_mut() {
            *v = c.shape.score(*v);
            max = max.max(*v);
        }
        // A sink is one more softmax term with no value: it shares the maximum and the sum.
        let sink = c.sinks.map(|s| s[t.heads.start + r % nh]);
        if let Some(sink) = sink {
            max = max.max(sink);
        }
        for v in sc.iter_mut() {
            *v = exp_nonpositive(*v - max);
        }
        let inv = 1.0 / (sum(sc) + sink.map_or(0.0, |s| exp_nonpositive(s - max)));
        for v in sc.iter_mut() {
            *v *= inv;
        }
    }
    let values: Vec<&[E]> = at.iter().map(|&a| &c.v[a..a + BT * hd]).collect();
    let mut out = vec![0.0f32; m * hd];
    for (r0, n) in row_tiles(m) {
        // From the tile's first row's window (the others' start no earlier: before their own
        // window their probabilities are zero, which adds nothing to a sum that starts at +0).
        let slots = first(r0)..seen(r0 + n - 1);
        let mut d0 = 0;
        macro_rules! columns {
            ($r:literal, $dc:literal) => {
                while hd - d0 >= $dc {
                    let p: [&[f32]; $r] =
                        std::array::from_fn(|j| &scores[(r0 + j) * stride..(r0 + j + 1) * stride]);
                    let o = rows_mut::<$r>(&mut out, hd, r0, 0..hd);
                    if $dc == 64 {
                        // SAFETY: 64-column passes run only on the AVX-512 entry point.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            x86::weighted_values_zmm::<E, $r>(
                                p,
                                &values,
                                (hd, d0),
                                slots.clone(),
                                o,
                            )
                        };
                    } else {
                        weighted_values::<A, E, BT, $r, $dc>(
                            p,
                            &values,
                            (hd, d0),
                            slots.clone(),
                            o,
                        );
                    }
                    d0 += $dc;
                }
            };
        }
        macro_rules! ymm_columns {
            ($r:literal, $c:literal) => {
                while hd - d0 >= 8 * $c {
                    let p: [&[f32]; $r] =
                        std::array::from_fn(|j| &scores[(r0 + j) * stride..(r0 + j + 1) * stride]);
                    let o = rows_mut::<$r>(&mut out, hd, r0, 0..hd);
                    // SAFETY: `YMM` comes only from the AVX2 entry point.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::weighted_values_ymm::<E, $r, $c>(
                            p,
                            &values,
                            (hd, d0),
                            slots.clone(),
                            o,
                        )
                    };
                    d0 += 8 * $c;
                }
            };
        }
        macro_rules! all_columns {
            ($r:literal) => {{
                if zmm_blocks {
                    columns!($r, 64);
                }
                // Eight to twelve independent chains per pass.
                if ymm_blocks {
                    if $r == 1 {
                        ymm_columns!($r, 8);
                    }
                    if $r <= 3 {
                        ymm_columns!($r, 4);
                    }
                    ymm_columns!($r, 2);
                }
                columns!($r, 16);
                columns!($r, 4);
                columns!($r, 1);
            }};
        }
        match n {
            4 => all_columns!(4),
            3 => all_columns!(3),
            2 => all_columns!(2),
            _ => all_columns!(1),
        }
    }
    out
}

/// Copies every layer's keys and values of block `src` to block `dst`, for each pair.
pub fn copy_blocks(kv: &mut HostKv, spec: &KvPoolSpec, pairs: &[(u32, u32)]) -> Result<()> {
    with_host_kv!(kv, data => copy_blocks_in(data, spec, pairs))
}

fn copy_blocks_in<E: KvElem>(
    kv: &mut HostKvData<E>,
    spec: &KvPoolSpec,
    pairs: &[(u32, u32)],
) -> Result<()> {
    let n_kv = spec.kv_dim / spec.head_dim;
    let per_block = n_kv * spec.block_tokens * spec.head_dim;
    for &(src, dst) in pairs {
        if src as usize >= spec.blocks || dst as usize >= spec.blocks {
            return Err(shape_err(
                "copy_blocks",
                format!("({src}, {dst}) in a pool of {} blocks", spec.blocks),
            ));
        }
        if src == dst {
            continue;
        }
        for layer in 0..spec.layers {
            let (s, d) = (
                head_offset(spec, layer, src, 0),
                head_offset(spec, layer, dst, 0),
            );
            kv.k.copy_within(s..s + per_block, d);
            kv.v.copy_within(s..s + per_block, d);
        }
    }
    Ok(())
}

/// `Σ aᵢ` with 16 independent partial sums, so that the compiler can keep them in vector
/// registers: a plain iterator sum is one serial chain of dependent adds (floats do not
/// reassociate).
fn sum(a: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for xa in chunks {
        for i in 0..LANES {
            acc[i] += xa[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests;
