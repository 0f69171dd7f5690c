//! GPTQ (Frantar et al., 2022): quantize a weight matrix column by column and push each
//! column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian
//! `H = Σ xᵀx` of the layer's inputs on a calibration text, so that the layer's *outputs* on
//! such inputs change as little as possible.
//!
//! Per row (rows are independent given `H`), with `U` the upper Cholesky factor of `H⁻¹`:
//! ```text
//! for i in 0..K:
//!     at a group start: choose the group's scale (and min) from the current, error-updated
//!                       weights, weighing columns by diag(H) (activation-aware)
//!     q = encode(w[i]);  e = (w[i] − decode(q)) / U[i][i]
//!     w[i+1..] −= e · U[i][i+1..]
//! ```
//! `H` is damped by `damp · mean(diag H)` on its diagonal; columns that never saw a non-zero
//! input are zeroed.

use super::format::QuantFormat;
use super::qtensor::{pack_codes, QTensor, RowParts};
use super::quantize::{
    quantize_lut4_group, quantize_q4_group, quantize_q4m_group, quantize_q8_group, QuantMethod,
};
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// Default diagonal damping, relative to the mean of diag(H) (the GPTQ paper's 1%).
pub const DEFAULT_DAMP: f64 = 0.01;

/// `Σ xᵀx` over the inputs a layer saw.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub dim: usize,
    /// Row-major `dim × dim`.
    pub sum: Vec<f64>,
    pub samples: usize,
}

impl Hessian {
    /// An empty accumulator for inputs of width `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            sum: vec![0.0; dim * dim],
            samples: 0,
        }
    }

    /// Adds the outer products of input rows (`rows × dim`), using the f32 matrix kernel for
    /// `Xᵀ·X` (accumulated here in f64).
    pub fn add(&mut self, x: &[f32]) {
        let d = self.dim;
        let rows = x.len() / d.max(1);
        if rows == 0 {
            return;
        }
        let mut xt = vec![0.0f32; d * rows];
        for r in 0..rows {
            for c in 0..d {
                xt[c * rows + r] = x[r * d + c];
            }
        }
        let xtx = crate::cpu::matmul::matmul(&xt, rows, &xt, d);
        for (s, v) in self.sum.iter_mut().zip(&xtx) {
            *s += f64::from(*v);
        }
        self.samples += rows;
    }

    /// Mean of each input column's square: the per-column importance.
    pub fn diag_mean(&self) -> Vec<f32> {
        let n = self.samples.max(1) as f64;
        (0..self.dim)
            .map(|i| (self.sum[i * self.dim + i] / n) as f32)
            .collect()
    }
}

/// In-place lower Cholesky factor of a row-major SPD matrix; `false` if it is not positive
/// definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let (head, tail) = a.split_at_mut(j * n);
        let row_j = &mut tail[..n];
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        row_j[j] = d;
        let row_j: Vec<f64> = row_j[..j].to_vec();
        // Rows below j: a[i][j] = (a[i][j] − Σ_k a[i][k]·a[j][k]) / d.
        debug_assert_eq!(head.len(), j * n);
        tail[n..].par_chunks_mut(n).for_each(|row_i| {
            let s: f64 = row_i[..j].iter().zip(&row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - s) / d;
        });
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    true
}

/// The inverse of a lower-triangular matrix (row-major).
fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    // Column by column: L · x = e_j, by forward substitution; columns are independent.
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0.0; n];
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let s: f64 = (j..i).map(|k| l[i * n + k] * x[k]).sum();
                x[i] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    for (j, col) in cols.iter().enumerate() {
        for i in j..n {
            inv[i * n + j] = col[i];
        }
    }
    inv
}

/// `U`, the upper Cholesky factor of `H⁻¹`, row-major, from a damped `H`.
fn inverse_hessian_factor(h: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = h.to_vec();
    if !cholesky(&mut l, n) {
        return None;
    }
    let li = invert_lower(&l, n);
    // H⁻¹ = L⁻ᵀ · L⁻¹: entry (i, j) is the dot product of columns i and j of L⁻¹, i.e. of
    // rows i and j of its transpose (contiguous), over k ≥ max(i, j).
    let mut lit = vec![0.0; n * n];
    for k in 0..n {
        for i in 0..=k {
            lit[i * n + k] = li[k * n + i];
        }
    }
    let hinv: Vec<f64> = (0..n * n)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let k0 = i.max(j);
            lit[i * n + k0..(i + 1) * n]
                .iter()
                .zip(&lit[j * n + k0..(j + 1) * n])
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect();
    let mut lh = hinv;
    if !cholesky(&mut lh, n) {
        return None;
    }
    // U = Lhᵀ.
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = lh[i * n + j];
        }
    }
    Some(u)
}

/// Options of [`gptq_quantize`].
#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// How each group's scale (and min) is chosen (diag(H) weighs the columns).
    pub method: QuantMethod,
    /// Diagonal damping relative to mean(diag H).
    pub damp: f64,
    /// Quantize columns in order of decreasing activation energy (diag H), so the most
    /// important columns are fixed first and the rest absorb their error ("act-order"). Group
    /// parameters are then chosen up front from the original weights ("static groups").
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            method: QuantMethod::Search,
            damp: DEFAULT_DAMP,
            act_order: true,
        }
    }
}

/// Chooses one group's parameters: (scale, min) — min is zero except for Q4M.
fn group_params(
    format: QuantFormat,
    x: &[f32],
    importance: &[f32],
    method: QuantMethod,
) -> (f16, f16) {
    let mut scratch = vec![0u8; x.len()];
    match format {
        QuantFormat::Q8 => {
            let q: &mut [i8] = bytemuck::cast_slice_mut(&mut scratch);
            (quantize_q8_group(x, Some(importance), method, q), f16::ZERO)
        }
        QuantFormat::Q4(_) => (
            quantize_q4_group(x, Some(importance), method, &mut scratch),
            f16::ZERO,
        ),
        QuantFormat::Lut4(book) => (
            quantize_lut4_group(x, Some(importance), method, book, &mut scratch),
            f16::ZERO,
        ),
        _ => quantize_q4m_group(x, Some(importance), method, &mut scratch),
    }
}

/// Code and decoded value of `v` under a group's parameters.
fn encode(format: QuantFormat, v: f64, d: f16, m: f16) -> (u8, f64) {
    let d = f64::from(d.to_f32());
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    match format {
        QuantFormat::Q8 => {
            let q = (v * inv).round().clamp(-127.0, 127.0);
            ((q as i8) as u8, d * q)
        }
        QuantFormat::Q4(_) => {
            let q = (v * inv + 8.0).round().clamp(0.0, 15.0);
            (q as u8, d * (q - 8.0))
        }
        QuantFormat::Lut4(book) => {
            let q = book.nearest((v * inv) as f32);
            (q, d * f64::from(book.levels()[usize::from(q)]))
        }
        _ => {
            let m = f64::from(m.to_f32());
            let q = ((v - m) * inv).round().clamp(0.0, 15.0);
            (q as u8, d * q + m)
        }
    }
}

/// Quantizes `values` (`rows × cols`) into `format` with GPTQ error compensation under
/// Hessian `h` (`cols × cols`).
pub fn gptq_quantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    format: QuantFormat,
    h: &Hessian,
    opts: &GptqOptions,
) -> Result<QTensor> {
    if h.dim != cols || !format.is_quantized() || !format.fits(cols) || values.len() != rows * cols
    {
        return Err(Error::Shape {
            op: "gptq_quantize",
            detail: format!("{format} {rows}x{cols} with a Hessian of {}", h.dim),
        });
    }
    let n = cols;
    let samples = h.samples.max(1) as f64;
    let mut hm: Vec<f64> = h.sum.iter().map(|v| v / samples).collect();
    let dead: Vec<bool> = (0..n).map(|i| hm[i * n + i] <= 0.0).collect();
    for i in 0..n {
        if dead[i] {
            hm[i * n + i] = 1.0;
        }
    }
    let importance: Vec<f32> = (0..n).map(|i| hm[i * n + i] as f32).collect();
    let mut perm: Vec<usize> = (0..n).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    }
    let hp: Vec<f64> = (0..n * n)
        .map(|ij| hm[perm[ij / n] * n + perm[ij % n]])
        .collect();
    let mean_diag = (0..n).map(|i| hp[i * n + i]).sum::<f64>() / n as f64;
    let mut u = None;
    let mut damp = opts.damp;
    for _ in 0..6 {
        let mut hd = hp.clone();
        for i in 0..n {
            hd[i * n + i] += damp * mean_diag;
        }
        u = inverse_hessian_factor(&hd, n);
        if u.is_some() {
            break;
        }
        damp *= 10.0;
    }
    let u = u.ok_or(Error::Shape {
        op: "gptq_quantize",
        detail: "the Hessian stays singular even when damped".into(),
    })?;
    let g = format.group();
    let groups = cols / g;
    let has_mins = matches!(format, QuantFormat::Q4M(_));

    let per_row: Vec<RowParts> = values
        .par_chunks(cols)
        .map(|row| {
            let orig: Vec<f32> = row
                .iter()
                .zip(&dead)
                .map(|(&v, &d)| if d { 0.0 } else { v })
                .collect();
            let mut params = vec![(f16::ZERO, f16::ZERO); groups];
            let mut known = vec![false; groups];
            if opts.act_order {
                for (gi, p) in params.iter_mut().enumerate() {
                    *p = group_params(
                        format,
                        &orig[gi * g..(gi + 1) * g],
                        &importance[gi * g..(gi + 1) * g],
                        opts.method,
                    );
                }
                known.fill(true);
            }
            // Work in permuted column order.
            let mut w: Vec<f64> = perm.iter().map(|&c| f64::from(orig[c])).collect();
            let mut codes = vec![0u8; cols];
            for i in 0..n {
                let col = perm[i];
                let gi = col / g;
                if !known[gi] {
                    // Without act-order the permutation is the identity: the group is the
                    // next `g` columns, already updated by the errors before them.
                    let x: Vec<f32> = w[i..i + g].iter().map(|&v| v as f32).collect();
                    params[gi] = group_params(format, &x, &importance[col..col + g], opts.method);
                    known[gi] = true;
                }
                let (d, m) = params[gi];
                let (code, deq) = encode(format, w[i], d, m);
                codes[col] = code;
                let err = (w[i] - deq) / u[i * n + i];
                let urow = &u[i * n + i + 1..(i + 1) * n];
                for (wj, uj) in w[i + 1..].iter_mut().zip(urow) {
                    *wj -= err * uj;
                }
            }
            let words = pack_codes(format, &codes);
            let scales = params.iter().map(|p| p.0).collect();
            let mins = if has_mins {
                params.iter().map(|p| p.1).collect()
            } else {
                Vec::new()
            };
            (words, scales, mins)
        })
        .collect();
    QTensor::from_rows(format, rows, cols, per_row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::format::GroupSize;
    use crate::quant::quantize::{quantize, QuantizeOptions};
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    fn gauss(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
        // Sum of uniforms: close enough to normal for a test.
        (0..6)
            .map(|_| rng.next_u32() as f32 / u32::MAX as f32)
            .sum::<f32>()
            - 3.0
    }

    #[test]
    fn cholesky_and_inverse_factor_reconstruct_the_inverse() {
        let n = 5;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    1.0 / (1.0 + (i as f64 - j as f64).abs()) + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_hessian_factor(&a, n).unwrap();
        // Uᵀ·U = A⁻¹, so A·(Uᵀ·U) = I.
        for i in 0..n {
            for j in 0..n {
                let hinv_kj = |k: usize| (0..n).map(|m| u[m * n + k] * u[m * n + j]).sum::<f64>();
                let v: f64 = (0..n).map(|k| a[i * n + k] * hinv_kj(k)).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn gptq_lowers_the_output_error_on_correlated_inputs() {
        // Inputs with strongly uneven, correlated columns: where GPTQ pays off.
        let (rows, cols, samples) = (32, 128, 512);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let w: Vec<f32> = (0..rows * cols).map(|_| gauss(&mut rng) * 0.1).collect();
        let mut x = vec![0.0f32; samples * cols];
        for s in 0..samples {
            let common = gauss(&mut rng);
            for c in 0..cols {
                let scale = 1.0 + 4.0 * ((c * 7) % 11) as f32 / 10.0;
                x[s * cols + c] = scale * (0.7 * common + 0.3 * gauss(&mut rng));
            }
        }
        let mut h = Hessian::new(cols);
        h.add(&x);
        let out_err = |q: &QTensor| {
            let d = q.dequantize();
            let mut e = 0.0f64;
            for s in 0..samples {
                for r in 0..rows {
                    let diff: f32 = (0..cols)
                        .map(|c| (w[r * cols + c] - d[r * cols + c]) * x[s * cols + c])
                        .sum();
                    e += f64::from(diff).powi(2);
                }
            }
            e
        };
        for f in [
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G64),
            QuantFormat::Lut4(crate::quant::format::Codebook::Iq4nl),
        ] {
            let rtn = quantize(&w, rows, cols, f, &QuantizeOptions::default()).unwrap();
            for act_order in [false, true] {
                let opts = GptqOptions {
                    act_order,
                    ..GptqOptions::default()
                };
                let g1 = gptq_quantize(&w, rows, cols, f, &h, &opts).unwrap();
                let g2 = gptq_quantize(&w, rows, cols, f, &h, &opts).unwrap();
                assert_eq!(g1, g2, "deterministic");
                let (e_rtn, e_gptq) = (out_err(&rtn), out_err(&g1));
                assert!(
                    e_gptq < 0.7 * e_rtn,
                    "{f} act_order={act_order}: gptq {e_gptq} vs rtn {e_rtn}"
                );
            }
        }
    }
}
