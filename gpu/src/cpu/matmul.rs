//! f32 matrix multiply `x · Wᵀ` for the reference CPU path.
//!
//! Register-tiled: each inner step loads 4 activation rows and 4 weight rows once and updates
//! 16 dot products, `LANES` floats at a time, so LLVM emits vector FMAs. The lane width and FMA
//! use are picked at run time from the CPU's features (never at compile time, so a default
//! build is fast everywhere); [`matmul_scalar`] is the plain twin every variant is tested
//! against.

use super::pool::{Pool, SendPtr};
use super::qdot::GemmOut;
use std::borrow::Cow;

/// Rows of x and of W in one register tile.
const TILE: usize = 4;
/// Weight rows handed to one pool task; big enough to amortise the task, small enough to
/// spread a 576-row projection over a few threads.
const ROWS_PER_TASK: usize = 32;

/// How a product is accumulated: fused (one rounding, needs hardware FMA) or plain.
pub(crate) trait Accumulate {
    fn mul_add(a: f32, b: f32, acc: f32) -> f32;
}

pub(crate) struct Fused;
impl Accumulate for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
        a.mul_add(b, acc)
    }
}

pub(crate) struct Plain;
impl Accumulate for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
        a * b + acc
    }
}

#[inline(always)]
fn dot<const L: usize, A: Accumulate>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..L {
            acc[l] = A::mul_add(xa[l], xb[l], acc[l]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum = A::mul_add(*x, *y, sum);
    }
    sum
}

#[inline(always)]
fn tile<const L: usize, A: Accumulate>(
    xs: [&[f32]; TILE],
    ws: [&[f32]; TILE],
) -> [[f32; TILE]; TILE] {
    let k = xs[0].len();
    let full = k / L * L;
    let mut acc = [[[0.0f32; L]; TILE]; TILE];
    let mut p = 0;
    while p < full {
        // Fixed-size views let LLVM drop bounds checks and keep `acc` in vector registers.
        let xv: [&[f32; L]; TILE] =
            std::array::from_fn(|a| xs[a][p..p + L].try_into().expect("L-wide chunk"));
        let wv: [&[f32; L]; TILE] =
            std::array::from_fn(|b| ws[b][p..p + L].try_into().expect("L-wide chunk"));
        for a in 0..TILE {
            for b in 0..TILE {
                for l in 0..L {
                    acc[a][b][l] = A::mul_add(xv[a][l], wv[b][l], acc[a][b][l]);
                }
            }
        }
        p += L;
    }
    let mut out = [[0.0f32; TILE]; TILE];
    for a in 0..TILE {
        for b in 0..TILE {
            let mut s: f32 = acc[a][b].iter().sum();
            for q in full..k {
                s = A::mul_add(xs[a][q], ws[b][q], s);
            }
            out[a][b] = s;
        }
    }
    out
}

/// `out[i][j] = x[i] · w[j]` for a block of weight rows; `out` is `m × n`. Full `MR × NR`
/// tiles go to `tile`, the ragged edges to `dot`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<const MR: usize, const NR: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    tile: impl Fn([&[f32]; MR], [&[f32]; NR]) -> [[f32; NR]; MR],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let mut i = 0;
    while i < m {
        let mut j = 0;
        while j < n {
            if i + MR <= m && j + NR <= n {
                let xs = std::array::from_fn(|a| &x[(i + a) * k..(i + a + 1) * k]);
                let ws = std::array::from_fn(|b| &w[(j + b) * k..(j + b + 1) * k]);
                let t = tile(xs, ws);
                for (a, row) in t.iter().enumerate() {
                    out[(i + a) * n + j..(i + a) * n + j + NR].copy_from_slice(row);
                }
            } else {
                for a in i..(i + MR).min(m) {
                    for b in j..(j + NR).min(n) {
                        out[a * n + b] = dot(&x[a * k..(a + 1) * k], &w[b * k..(b + 1) * k]);
                    }
                }
            }
            j += NR;
        }
        i += MR;
    }
}

type BlockFn = fn(&[f32], usize, usize, &[f32], usize, &mut [f32]);

fn block_portable(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    block::<TILE, TILE>(x, m, k, w, n, out, tile::<8, Plain>, dot::<8, Plain>)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// 4 × 4 dot products, 16 lanes at a time: 16 zmm accumulators + 4 weight + 1 activation
    /// register, within AVX-512's 32.
    #[target_feature(enable = "avx512f")]
    fn tile_avx512(xs: [&[f32]; 4], ws: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let k = xs[0].len();
        let full = k / 16 * 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut p = 0;
        while p < full {
            // SAFETY: every slice has k ≥ p + 16 elements.
            unsafe {
                let wv: [__m512; 4] =
                    std::array::from_fn(|b| _mm512_loadu_ps(ws[b].as_ptr().add(p)));
                for a in 0..4 {
                    let xa = _mm512_loadu_ps(xs[a].as_ptr().add(p));
                    for b in 0..4 {
                        acc[a][b] = _mm512_fmadd_ps(xa, wv[b], acc[a][b]);
                    }
                }
            }
            p += 16;
        }
        let mut out = [[0.0f32; 4]; 4];
        for a in 0..4 {
            for b in 0..4 {
                // Lanes summed in order, as `dot` does, so that a row gives the same result in
                // a full tile and on the ragged edge (batch invariance).
                let mut lanes = [0.0f32; 16];
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[a][b]) };
                let mut s: f32 = lanes.iter().sum();
                for q in full..k {
                    s = xs[a][q].mul_add(ws[b][q], s);
                }
                out[a][b] = s;
            }
        }
        out
    }

    /// 2 × 4 dot products, 8 lanes: 8 ymm accumulators + 4 weight + 1 activation, within 16.
    #[target_feature(enable = "avx2,fma")]
    fn tile_avx2(xs: [&[f32]; 2], ws: [&[f32]; 4]) -> [[f32; 4]; 2] {
        let k = xs[0].len();
        let full = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut p = 0;
        while p < full {
            // SAFETY: every slice has k ≥ p + 8 elements.
            unsafe {
                let wv: [__m256; 4] =
                    std::array::from_fn(|b| _mm256_loadu_ps(ws[b].as_ptr().add(p)));
                for a in 0..2 {
                    let xa = _mm256_loadu_ps(xs[a].as_ptr().add(p));
                    for b in 0..4 {
                        acc[a][b] = _mm256_fmadd_ps(xa, wv[b], acc[a][b]);
                    }
                }
            }
            p += 8;
        }
        let mut out = [[0.0f32; 4]; 2];
        for a in 0..2 {
            for b in 0..4 {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[a][b]) };
                let mut s: f32 = lanes.iter().sum();
                for q in full..k {
                    s = xs[a][q].mul_add(ws[b][q], s);
                }
                out[a][b] = s;
            }
        }
        out
    }

    #[target_feature(enable = "avx512f,fma")]
    fn block_avx512_impl(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
        block::<4, 4>(
            x,
            m,
            k,
            w,
            n,
            out,
            |a, b| tile_avx512(a, b),
            dot::<16, Fused>,
        )
    }

    #[target_feature(enable = "avx2,fma")]
    fn block_avx2_impl(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
        block::<2, 4>(x, m, k, w, n, out, |a, b| tile_avx2(a, b), dot::<8, Fused>)
    }

    pub(super) fn block_avx2(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        // SAFETY: the features were just checked.
        unsafe { block_avx2_impl(x, m, k, w, n, out) }
    }

    pub(super) fn block_avx512(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"));
        // SAFETY: the features were just checked.
        unsafe { block_avx512_impl(x, m, k, w, n, out) }
    }
}

#[cfg(target_arch = "aarch64")]
fn block_neon(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    // NEON and FMA are baseline on aarch64.
    block::<TILE, TILE>(x, m, k, w, n, out, tile::<4, Fused>, dot::<4, Fused>)
}

/// A whole matmul: `(x, k, w, n) -> x · Wᵀ`.
pub type MatmulFn = fn(&[f32], usize, &[f32], usize) -> Vec<f32>;

/// The kernel variants this CPU can run, best first, with their names (for tests and logs).
pub fn available_variants() -> Vec<(&'static str, MatmulFn)> {
    let mut v: Vec<(&'static str, MatmulFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            v.push(("avx512", |x, k, w, n| run(x, k, w, n, x86::block_avx512)));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(("avx2", |x, k, w, n| run(x, k, w, n, x86::block_avx2)));
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push(("neon", |x, k, w, n| run(x, k, w, n, block_neon)));
    v.push(("portable", |x, k, w, n| run(x, k, w, n, block_portable)));
    v
}

fn best_block() -> BlockFn {
    static BEST: std::sync::OnceLock<BlockFn> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return x86::block_avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return x86::block_avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        return block_neon;
        #[allow(unreachable_code)]
        block_portable
    })
}

/// `x · Wᵀ` with the best kernel for this CPU: `x` is `m × k` (m = x.len()/k), `w` is `n × k`.
pub fn matmul(x: &[f32], k: usize, w: &[f32], n: usize) -> Vec<f32> {
    run(x, k, w, n, best_block())
}

/// The single-threaded scalar twin: one plain dot product per output.
pub fn matmul_scalar(x: &[f32], k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let m = x.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = x[i * k..(i + 1) * k]
                .iter()
                .zip(&w[j * k..(j + 1) * k])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    out
}

fn run(x: &[f32], k: usize, w: &[f32], n: usize, kernel: BlockFn) -> Vec<f32> {
    run_rows(x, k, n, kernel, &|j0, j1| Cow::Borrowed(&w[j0 * k..j1 * k]))
}

/// `x · Wᵀ` where the weight rows come from `rows(j0, j1)` as f32, a block at a time (so f16
/// weights are widened one block at a time, never as a whole f32 copy).
pub fn matmul_rows<'w>(
    x: &[f32],
    k: usize,
    n: usize,
    rows: &(dyn Fn(usize, usize) -> Cow<'w, [f32]> + Sync),
) -> Vec<f32> {
    run_rows(x, k, n, best_block(), rows)
}

fn run_rows<'w>(
    x: &[f32],
    k: usize,
    n: usize,
    kernel: BlockFn,
    rows: &(dyn Fn(usize, usize) -> Cow<'w, [f32]> + Sync),
) -> Vec<f32> {
    let m = x.len().checked_div(k).unwrap_or(0);
    column_blocks(m, n, ROWS_PER_TASK, |c, out| {
        let (j0, j1) = (c * ROWS_PER_TASK, ((c + 1) * ROWS_PER_TASK).min(n));
        out.resize(m * (j1 - j0), 0.0);
        kernel(x, m, k, &rows(j0, j1), j1 - j0, out);
        j1 - j0
    })
}

thread_local! {
    /// Each thread's block buffer for [`column_blocks`] (taken out while a task runs).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs one task per block of `per_task` columns, task `c` writing columns `c·per_task..` of
/// every row into a scratch buffer (row-major, `m × stride` for the `stride ≥ width` it
/// returns; the buffer is the thread's own, reused, so tasks allocate nothing), and copies
/// each block into place from its own task: the `m × n` output is never zeroed and never
/// gathered on one thread.
pub(crate) fn column_blocks(
    m: usize,
    n: usize,
    per_task: usize,
    block: impl Fn(usize, &mut Vec<f32>) -> usize + Sync,
) -> Vec<f32> {
    let mut outs = for_column_blocks(m, &[n], per_task, |_, c, target| {
        with_scratch(|b| {
            let stride = block(c, b);
            target.copy_from(b, stride);
        })
    });
    outs.pop().unwrap_or_default()
}

/// Runs `f` on this thread's block buffer, emptied (taken out of [`SCRATCH`] meanwhile).
fn with_scratch(f: impl FnOnce(&mut Vec<f32>)) {
    SCRATCH.with(|scratch| {
        let mut b = scratch.take();
        b.clear();
        f(&mut b);
        scratch.replace(b);
    })
}

/// [`column_blocks`] for integer kernels, which write through a [`GemmOut`], and for several
/// `m × ns[i]` outputs in one parallel region (the products of one input with Q, K and V, or
/// gate and up: small outputs, as K and V of a grouped-query model, would otherwise leave
/// threads idle at each region's end). Task `(i, c)` computes block `c` of output `i`,
/// `padded(i, c)` columns wide (its width, plus the padding rows of a last, partial row
/// group), and writes it straight into the output where it fits inside the rows, or else (a
/// block with padding columns) through the thread's buffer.
pub(crate) fn gemm_column_blocks(
    m: usize,
    ns: &[usize],
    per_task: usize,
    padded: impl Fn(usize, usize) -> usize + Sync,
    block: impl Fn(usize, usize, GemmOut<'_>) + Sync,
) -> Vec<Vec<f32>> {
    for_column_blocks(m, ns, per_task, |i, c, target| {
        let padded = padded(i, c);
        if target.col + padded <= target.n {
            // SAFETY: rows 0..m, columns col..col + padded of output `i` lie inside its
            // m × n capacity (checked just above) and belong to this task alone.
            block(i, c, unsafe {
                GemmOut::strided(target.start(), m, padded, target.n)
            });
        } else {
            with_scratch(|b| {
                b.resize(m * padded, 0.0);
                block(i, c, GemmOut::packed(b, padded));
                target.copy_from(b, padded);
            })
        }
    })
}

/// A task's block of one output: columns `col..col + width` of every row of an `m × n`
/// buffer that tasks fill in parallel.
struct ColumnBlock {
    base: *mut f32,
    m: usize,
    n: usize,
    col: usize,
    width: usize,
}

impl ColumnBlock {
    /// Row 0's first value of the block.
    fn start(&self) -> *mut f32 {
        self.base.wrapping_add(self.col)
    }

    /// Copies the block from `src`, `m` rows of `stride ≥ width` values.
    fn copy_from(&self, src: &[f32], stride: usize) {
        let (m, width) = (self.m, self.width);
        assert!(
            stride >= width && src.len() == m * stride,
            "a column block of {m} × {width} in rows of {stride}"
        );
        for (r, row) in src.chunks_exact(stride).enumerate() {
            // SAFETY: row r, columns col..col + width lie inside the output's m × n capacity
            // and belong to this task alone.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    row.as_ptr(),
                    self.base.wrapping_add(r * self.n + self.col),
                    width,
                );
            }
        }
    }
}

/// Allocates the `m × ns[i]` outputs (never zeroed) and runs `task(i, c, block)` for every
/// column block of `per_task` columns of every output in one parallel region; each task must
/// write all of its block.
fn for_column_blocks(
    m: usize,
    ns: &[usize],
    per_task: usize,
    task: impl Fn(usize, usize, ColumnBlock) + Sync,
) -> Vec<Vec<f32>> {
    let per_task = per_task.max(1);
    let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| Vec::with_capacity(m * n)).collect();
    // Every task writes only its own columns, so no two threads write one element, and
    // nothing reads the buffers until all tasks are done.
    let bases: Vec<SendPtr<f32>> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    // Task numbers where each output's blocks start.
    let firsts: Vec<usize> = ns
        .iter()
        .scan(0, |next, &n| {
            let first = *next;
            *next += n.div_ceil(per_task);
            Some(first)
        })
        .collect();
    let tasks = ns.iter().map(|&n| n.div_ceil(per_task)).sum();
    Pool::global().run(tasks, &|t| {
        let i = firsts.partition_point(|&f| f <= t) - 1;
        let (c, n) = (t - firsts[i], ns[i]);
        let col = c * per_task;
        let block = ColumnBlock {
            base: bases[i].get(),
            m,
            n,
            col,
            width: per_task.min(n - col),
        };
        task(i, c, block);
    });
    for (o, &n) in outs.iter_mut().zip(ns) {
        // SAFETY: the tasks wrote every column of every row (a panicking task re-panics in
        // `run` before this line).
        unsafe { o.set_len(m * n) };
    }
    outs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// f32 accumulation over K ≤ 2000 of values in [-1, 1]: the relative error of the whole
    /// output stays far below this.
    const REL_TOL: f64 = 1e-5;

    fn random(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32)
            .collect()
    }

    fn reference(x: &[f32], k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let m = x.len() / k;
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        out
    }

    fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
        let num: f64 = out
            .iter()
            .zip(reference)
            .map(|(a, b)| (*a as f64 - b).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    }

    #[test]
    fn every_variant_matches_float64_reference_on_odd_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, k, n) in &[
            (1, 576, 70),
            (5, 64, 9),
            (17, 1536, 33),
            (4, 13, 4),
            (3, 40, 1),
        ] {
            let x = random(&mut rng, m * k);
            let w = random(&mut rng, n * k);
            let r = reference(&x, k, &w, n);
            assert!(rel_err(&matmul_scalar(&x, k, &w, n), &r) < REL_TOL);
            for (name, f) in available_variants() {
                let all = f(&x, k, &w, n);
                let e = rel_err(&all, &r);
                assert!(e < REL_TOL, "{name} m={m} k={k} n={n}: rel err {e}");
                // A row's result does not depend on the rows multiplied with it.
                for i in 0..m {
                    let alone = f(&x[i * k..(i + 1) * k], k, &w, n);
                    assert_eq!(&all[i * n..(i + 1) * n], &alone[..], "{name} row {i}");
                }
            }
        }
    }
}
