//! Quantizers: f32 rows → [`QTensor`] in any format.
//!
//! - [`QuantMethod::Rtn`]: round-to-nearest exactly as llama.cpp's reference quantizers
//!   (`quantize_row_q4_0_ref`, `q4_1`, `q8_0`), so lowbit's baseline reproduces their figures.
//! - [`QuantMethod::Search`]: per group, try a grid of scales (and mins), refit each candidate by
//!   least squares, and keep the one with the smallest (importance-weighted) reconstruction
//!   error, measured with the f16-rounded scale that is actually stored.
//!
//! Importance (optional, one weight per input column, e.g. the mean squared activation from a
//! calibration text) turns the error into `Σ imp[k]·(x − x̂)²`: errors on columns that see
//! large activations cost more. Everything is deterministic: same input, same bytes.

use super::format::{Codebook, QuantFormat};
use super::qtensor::{pack_codes, words_per_row, QTensor, RowParts};
use super::source::{decode_row, RawTensor};
use crate::error::Result;
use half::f16;
use rayon::prelude::*;

/// How scales are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMethod {
    /// Round to nearest from the group's extremes (llama.cpp's reference).
    #[default]
    Rtn,
    /// Search the scale (and min) that minimises the reconstruction error.
    Search,
}

/// Options of [`quantize`].
#[derive(Debug, Clone, Default)]
pub struct QuantizeOptions {
    pub method: QuantMethod,
    /// Per-column importance (length `cols`); `None` weighs all columns alike.
    pub importance: Option<Vec<f32>>,
}

/// Quantizes a row-major `rows × cols` matrix into `format` (which must fit `cols`).
pub fn quantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    format: QuantFormat,
    opts: &QuantizeOptions,
) -> Result<QTensor> {
    if !format.fits(cols) || values.len() != rows * cols {
        return QTensor::new(format, rows, cols, Vec::new(), Vec::new(), Vec::new());
    }
    let imp = opts.importance.as_deref().filter(|i| i.len() == cols);
    let per_row: Vec<RowParts> = values
        .par_chunks(cols.max(1))
        .map(|row| quantize_row(row, format, opts.method, imp))
        .collect();
    QTensor::from_rows(format, rows, cols, per_row)
}

/// Quantizes a tensor in a file's encoding into `format`, decoding one row at a time: no f32
/// copy of the whole tensor (loading requantizes whole models; an 8B model's head would take
/// 2 GB as f32).
pub fn quantize_raw(
    raw: &RawTensor<'_>,
    format: QuantFormat,
    opts: &QuantizeOptions,
) -> Result<QTensor> {
    let (rows, cols) = (raw.rows, raw.cols);
    if !format.fits(cols) {
        return QTensor::new(format, rows, cols, Vec::new(), Vec::new(), Vec::new());
    }
    let imp = opts.importance.as_deref().filter(|i| i.len() == cols);
    let per_row: Vec<RowParts> = (0..rows)
        .into_par_iter()
        .map_init(
            || vec![0.0f32; cols],
            |row, r| {
                decode_row(raw.dtype, raw.row(r), row);
                quantize_row(row, format, opts.method, imp)
            },
        )
        .collect();
    QTensor::from_rows(format, rows, cols, per_row)
}

/// One row's words, scales and mins.
fn quantize_row(
    row: &[f32],
    format: QuantFormat,
    method: QuantMethod,
    imp: Option<&[f32]>,
) -> RowParts {
    let cols = row.len();
    let g = format.group();
    let groups_per_row = if format.is_quantized() { cols / g } else { 0 };
    let mut scales = Vec::with_capacity(groups_per_row);
    let mut mins = Vec::with_capacity(if matches!(format, QuantFormat::Q4M(_)) {
        groups_per_row
    } else {
        0
    });
    let words = match format {
        QuantFormat::F32 => row.iter().map(|v| v.to_bits()).collect(),
        QuantFormat::F16 => {
            let mut halves: Vec<u16> = row.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
            halves.resize(words_per_row(format, cols) * 2, 0);
            halves
                .chunks_exact(2)
                .map(|h| u32::from(h[0]) | (u32::from(h[1]) << 16))
                .collect()
        }
        _ => {
            let mut codes = vec![0u8; cols];
            for (gi, (x, qg)) in row
                .chunks_exact(g)
                .zip(codes.chunks_exact_mut(g))
                .enumerate()
            {
                let w = imp.map(|i| &i[gi * g..(gi + 1) * g]);
                match format {
                    QuantFormat::Q8 => {
                        let q: &mut [i8] = bytemuck::cast_slice_mut(qg);
                        scales.push(quantize_q8_group(x, w, method, q));
                    }
                    QuantFormat::Q4M(_) => {
                        let (d, m) = quantize_q4m_group(x, w, method, qg);
                        scales.push(d);
                        mins.push(m);
                    }
                    QuantFormat::Lut4(book) => {
                        scales.push(quantize_lut4_group(x, w, method, book, qg))
                    }
                    _ => scales.push(quantize_q4_group(x, w, method, qg)),
                }
            }
            pack_codes(format, &codes)
        }
    };
    (words, scales, mins)
}

/// Weighted squared error of a reconstruction.
fn weighted_error(x: &[f32], w: Option<&[f32]>, recon: impl Fn(usize) -> f32) -> f64 {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let e = f64::from(v - recon(i));
            e * e * w.map_or(1.0, |w| f64::from(w[i]))
        })
        .sum()
}

/// `x.round()` (half away from zero, as C's `roundf`, which llama.cpp's reference quantizers
/// call) for |x| < 2²³, without the libm call `round` compiles to on baseline x86-64: the
/// difference from the truncated value is exact.
pub(crate) fn round_half_away(x: f32) -> f32 {
    let t = x as i32 as f32;
    let frac = x - t;
    // Selects, not branches: the fractions are random.
    let up = if frac >= 0.5 { 1.0 } else { 0.0 };
    let down = if frac <= -0.5 { 1.0 } else { 0.0 };
    t + up - down
}

/// Symmetric 8-bit: returns the scale, writes the codes into `q`.
pub(crate) fn quantize_q8_group(
    x: &[f32],
    w: Option<&[f32]>,
    method: QuantMethod,
    q: &mut [i8],
) -> f16 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let encode = |d: f32, q: &mut [i8]| {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (o, v) in q.iter_mut().zip(x) {
            *o = round_half_away(v * id).clamp(-127.0, 127.0) as i8;
        }
    };
    let d = amax / 127.0;
    encode(d, q);
    let dh = f16::from_f32(d);
    if method == QuantMethod::Rtn || amax == 0.0 {
        return dh;
    }
    let mut best_d = dh;
    let mut best_err = weighted_error(x, w, |i| dh.to_f32() * f32::from(q[i]));
    let mut cand = vec![0i8; x.len()];
    for step in 1..=12 {
        let d = amax / (127.0 - 0.25 * step as f32);
        encode(d, &mut cand);
        let d = refit_scale(x, w, cand.iter().map(|&v| f32::from(v))).unwrap_or(d);
        encode(d, &mut cand);
        let dh = f16::from_f32(d);
        let err = weighted_error(x, w, |i| dh.to_f32() * f32::from(cand[i]));
        if err < best_err {
            best_d = dh;
            best_err = err;
            q.copy_from_slice(&cand);
        }
    }
    best_d
}

/// Least-squares scale for fixed integer levels: `argmin_d Σ w (x − d·l)²`.
fn refit_scale(x: &[f32], w: Option<&[f32]>, levels: impl Iterator<Item = f32>) -> Option<f32> {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, l) in levels.enumerate() {
        let wi = w.map_or(1.0, |w| f64::from(w[i]));
        num += wi * f64::from(x[i]) * f64::from(l);
        den += wi * f64::from(l) * f64::from(l);
    }
    (den > 0.0).then(|| (num / den) as f32)
}

/// Symmetric 4-bit: returns the scale, writes `q ∈ 0..16` (value = d·(q − 8)).
pub(crate) fn quantize_q4_group(
    x: &[f32],
    w: Option<&[f32]>,
    method: QuantMethod,
    q: &mut [u8],
) -> f16 {
    // llama.cpp's Q4_0: the value of largest magnitude maps to −8.
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let encode = |d: f32, q: &mut [u8]| {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (o, v) in q.iter_mut().zip(x) {
            *o = ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        }
    };
    let d = max / -8.0;
    encode(d, q);
    let dh = f16::from_f32(d);
    if method == QuantMethod::Rtn || max == 0.0 {
        return dh;
    }
    // Divisors from 6.5 to 9.5 for both signs: the extreme maps near −8 or near +7.
    let candidates = (0..=30).flat_map(|step| {
        let div = 6.5 + 0.1 * step as f32;
        [-1.0f32, 1.0].map(|sign| max / (sign * div))
    });
    search_codes(x, w, q, dh, candidates, encode, |c| f32::from(c) - 8.0)
}

/// The scale search of the symmetric 4-bit formats: from round to nearest's codes `q` and
/// scale `dh`, each candidate scale is encoded, refit by least squares over its codes'
/// levels, encoded again, and kept (its codes written to `q`) where its error with the f16
/// scale that is stored is lower.
fn search_codes(
    x: &[f32],
    w: Option<&[f32]>,
    q: &mut [u8],
    dh: f16,
    candidates: impl Iterator<Item = f32>,
    encode: impl Fn(f32, &mut [u8]),
    level: impl Fn(u8) -> f32,
) -> f16 {
    let error = |d: f16, q: &[u8]| weighted_error(x, w, |i| d.to_f32() * level(q[i]));
    let mut best_err = error(dh, q);
    let mut best_d = dh;
    let mut cand = vec![0u8; x.len()];
    for d in candidates {
        encode(d, &mut cand);
        let d = refit_scale(x, w, cand.iter().map(|&c| level(c))).unwrap_or(d);
        encode(d, &mut cand);
        let dh = f16::from_f32(d);
        let err = error(dh, &cand);
        if err < best_err {
            best_err = err;
            best_d = dh;
            q.copy_from_slice(&cand);
        }
    }
    best_d
}

/// 4-bit codes into a codebook: returns the scale, writes `q ∈ 0..16` (value = d·T[q]). RTN
/// maps the value of largest magnitude to the level of largest magnitude (as Q4_0 maps it to
/// −8, and llama.cpp's IQ4_NL quantizer starts); the search tries scales ±20% around it, each
/// refit by least squares, as llama.cpp's IQ4_NL search does over a narrower range.
pub(crate) fn quantize_lut4_group(
    x: &[f32],
    w: Option<&[f32]>,
    method: QuantMethod,
    book: Codebook,
    q: &mut [u8],
) -> f16 {
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let levels = book.levels();
    let encode = |d: f32, q: &mut [u8]| {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (o, v) in q.iter_mut().zip(x) {
            *o = book.nearest(v * id);
        }
    };
    let extreme = f32::from(book.extreme());
    let d = max / extreme;
    encode(d, q);
    let dh = f16::from_f32(d);
    if method == QuantMethod::Rtn || max == 0.0 {
        return dh;
    }
    let candidates = (-10..=10).flat_map(|step| {
        [1.0f32, -1.0].map(|sign| max / (sign * extreme * (1.0 + 0.02 * step as f32)))
    });
    search_codes(x, w, q, dh, candidates, encode, |c| {
        f32::from(levels[usize::from(c)])
    })
}

/// Asymmetric 4-bit: returns (scale, min), writes `q ∈ 0..16` (value = d·q + m).
pub(crate) fn quantize_q4m_group(
    x: &[f32],
    w: Option<&[f32]>,
    method: QuantMethod,
    q: &mut [u8],
) -> (f16, f16) {
    let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let encode = |d: f32, m: f32, q: &mut [u8]| {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (o, v) in q.iter_mut().zip(x) {
            *o = (((v - m) * id + 0.5) as i32).clamp(0, 15) as u8;
        }
    };
    let d = (max - min) / 15.0;
    encode(d, min, q);
    let (dh, mh) = (f16::from_f32(d), f16::from_f32(min));
    if method == QuantMethod::Rtn || max == min {
        return (dh, mh);
    }
    let q4m_error = |d: f16, m: f16, q: &[u8]| {
        weighted_error(x, w, |i| d.to_f32() * f32::from(q[i]) + m.to_f32())
    };
    let mut best = (dh, mh);
    let mut best_err = q4m_error(dh, mh, q);
    let mut cand = vec![0u8; x.len()];
    // As llama.cpp's make_qkx2_quants: stretch the range, then refit (d, m) by least squares.
    for step in 0..=20 {
        let levels = 15.0 - 1.0 + 0.1 * step as f32;
        let d = (max - min) / levels;
        encode(d, min, &mut cand);
        let Some((d, m)) = refit_scale_and_min(x, w, &cand) else {
            continue;
        };
        encode(d, m, &mut cand);
        let (dh, mh) = (f16::from_f32(d), f16::from_f32(m));
        let err = q4m_error(dh, mh, &cand);
        if err < best_err {
            best_err = err;
            best = (dh, mh);
            q.copy_from_slice(&cand);
        }
    }
    best
}

/// Weighted least squares for `x ≈ d·q + m` with fixed `q`.
fn refit_scale_and_min(x: &[f32], w: Option<&[f32]>, q: &[u8]) -> Option<(f32, f32)> {
    let (mut sw, mut swq, mut swqq, mut swx, mut swqx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for (i, (&v, &l)) in x.iter().zip(q).enumerate() {
        let wi = w.map_or(1.0, |w| f64::from(w[i]));
        let (l, v) = (f64::from(l), f64::from(v));
        sw += wi;
        swq += wi * l;
        swqq += wi * l * l;
        swx += wi * v;
        swqx += wi * l * v;
    }
    let det = sw * swqq - swq * swq;
    if det.abs() < 1e-20 {
        return None;
    }
    let d = (sw * swqx - swq * swx) / det;
    let m = (swqq * swx - swq * swqx) / det;
    (d > 0.0).then_some((d as f32, m as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizing_a_file_tensor_row_by_row_equals_quantizing_its_f32_copy() {
        use crate::quant::source::SourceDType;
        // Q8_0 blocks: an f16 scale, then 32 arbitrary codes.
        let (rows, cols) = (5, 128);
        let mut bytes = Vec::new();
        for b in 0..rows * cols / 32 {
            bytes.extend_from_slice(&f16::from_f32(0.01 + 0.003 * b as f32).to_le_bytes());
            bytes.extend((0..32).map(|j| ((b * 37 + j * 11) % 256) as u8));
        }
        let raw = RawTensor::new(SourceDType::Q8_0, rows, cols, &bytes).unwrap();
        for format in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G64),
            QuantFormat::Q4M(GroupSize::G32),
            QuantFormat::F16,
        ] {
            for method in [QuantMethod::Rtn, QuantMethod::Search] {
                let opts = QuantizeOptions {
                    method,
                    importance: None,
                };
                let whole = quantize(&raw.to_f32(), rows, cols, format, &opts).unwrap();
                assert_eq!(
                    quantize_raw(&raw, format, &opts).unwrap(),
                    whole,
                    "{format}"
                );
            }
        }
    }

    #[test]
    fn round_half_away_is_roundf() {
        let mut x = -300.0f32;
        while x < 300.0 {
            for v in [
                x,
                x + 0.5,
                x - 0.5,
                x.next_up(),
                x.next_down(),
                (x + 0.5).next_down(),
            ] {
                assert_eq!(round_half_away(v), v.round(), "{v}");
            }
            x += 0.173;
        }
        for v in [
            0.49999997f32,
            -0.49999997,
            0.5,
            -0.5,
            1.5,
            -2.5,
            127.5,
            -127.49999,
        ] {
            assert_eq!(round_half_away(v), v.round(), "{v}");
        }
    }
    use crate::quant::format::GroupSize;

    fn data(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32 * 0.1))
            .collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let n: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let d: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (n / d).sqrt()
    }

    #[test]
    fn every_format_reconstructs_within_its_expected_error() {
        let (rows, cols) = (8, 256);
        let x = data(rows, cols);
        // Uniform data: 8-bit ≈ 0.4%, 4-bit ≈ 7–9% relative RMS error.
        let cases = [
            (QuantFormat::F32, 0.0),
            (QuantFormat::F16, 1e-3),
            (QuantFormat::Q8, 0.01),
            (QuantFormat::Q4(GroupSize::G32), 0.12),
            (QuantFormat::Q4(GroupSize::G128), 0.14),
            (QuantFormat::Q4M(GroupSize::G64), 0.10),
            (QuantFormat::Lut4(Codebook::Iq4nl), 0.12),
            (QuantFormat::Lut4(Codebook::Fp4), 0.14),
        ];
        for (f, tol) in cases {
            for method in [QuantMethod::Rtn, QuantMethod::Search] {
                let q = quantize(
                    &x,
                    rows,
                    cols,
                    f,
                    &QuantizeOptions {
                        method,
                        importance: None,
                    },
                )
                .unwrap();
                let e = rel_err(&q.dequantize(), &x);
                assert!(e <= tol, "{f} {method:?}: {e}");
            }
        }
    }

    #[test]
    fn search_never_does_worse_than_rtn_and_is_deterministic() {
        let (rows, cols) = (16, 128);
        let x = data(rows, cols);
        for f in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G32),
            QuantFormat::Lut4(Codebook::Fp4),
            QuantFormat::Lut4(Codebook::Iq4nl),
        ] {
            let rtn = quantize(&x, rows, cols, f, &QuantizeOptions::default()).unwrap();
            let opts = QuantizeOptions {
                method: QuantMethod::Search,
                importance: None,
            };
            let s1 = quantize(&x, rows, cols, f, &opts).unwrap();
            let s2 = quantize(&x, rows, cols, f, &opts).unwrap();
            assert_eq!(s1, s2);
            let (e_rtn, e_s) = (
                rel_err(&rtn.dequantize(), &x),
                rel_err(&s1.dequantize(), &x),
            );
            assert!(e_s <= e_rtn, "{f}: search {e_s} > rtn {e_rtn}");
            if f != QuantFormat::Q8 {
                assert!(
                    e_s < 0.97 * e_rtn,
                    "{f}: search {e_s} barely beats rtn {e_rtn}"
                );
            }
        }
    }

    #[test]
    fn lut4_groups_map_their_extreme_to_the_extreme_level_and_zeros_to_zero() {
        for book in [Codebook::Fp4, Codebook::Iq4nl] {
            let f = QuantFormat::Lut4(book);
            let mut x = vec![0.0f32; 64];
            // Group 0: its largest magnitude is positive; group 1 is all zeros.
            x[3] = 2.0;
            x[7] = -0.5;
            for method in [QuantMethod::Rtn, QuantMethod::Search] {
                let opts = QuantizeOptions {
                    method,
                    importance: None,
                };
                let q = quantize(&x, 1, 64, f, &opts).unwrap();
                let d = q.dequantize();
                assert!((d[3] - 2.0).abs() < 1e-3, "{f} {method:?}: {}", d[3]);
                assert!(d[32..].iter().all(|&v| v == 0.0), "{f} {method:?}");
                if method == QuantMethod::Rtn {
                    // d = 2 / extreme: negative, so 2.0 takes the extreme (negative) level.
                    assert!(q.scales[0].to_f32() < 0.0, "{f}");
                }
            }
        }
    }

    #[test]
    fn q4_rtn_matches_llama_cpp_q4_0_rounding() {
        // A block whose largest magnitude is negative: it maps to q = 0 (−8·d).
        let mut x = vec![0.0f32; 32];
        x[3] = -1.6;
        x[4] = 0.7;
        x[5] = 0.05; // 0.05/0.2 + 8.5 = 8.75 → q 8
        let q = quantize(
            &x,
            1,
            32,
            QuantFormat::Q4(GroupSize::G32),
            &QuantizeOptions::default(),
        )
        .unwrap();
        let bytes = q.row_bytes(0);
        assert_eq!(q.scales[0], f16::from_f32(0.2));
        assert_eq!(bytes[3] & 0x0f, 0);
        assert_eq!(bytes[4] & 0x0f, (0.7f32 / 0.2 + 8.5) as u8);
        assert_eq!(bytes[5] & 0x0f, 8);
    }
}
