//! How the tiny models' values are written: GGUF block encodings (round to nearest, as
//! llama.cpp's reference quantizers), values rounded through a file dtype, and llama.cpp's
//! Q/K row permutation.

use half::f16;
use lowbit_gpu::SourceDType;

/// Encodes a row-major matrix in a GGUF block format (round-to-nearest, as llama.cpp's
/// reference quantizers) and returns the bytes.
pub fn encode(dtype: SourceDType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match dtype {
        SourceDType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        SourceDType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        SourceDType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        SourceDType::Q8_0 => {
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * inv).round() as i8 as u8));
            }
        }
        SourceDType::Q4_1 => {
            for b in values.chunks_exact(32) {
                let min = b.iter().fold(f32::INFINITY, |m, v| m.min(*v));
                let max = b.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * inv).round() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        SourceDType::Q4_0 => {
            for b in values.chunks_exact(32) {
                let max = b
                    .iter()
                    .fold(0.0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        SourceDType::MXFP4 => {
            // The smallest power-of-two scale that fits the block in ±12 (twice E2M1's 6),
            // then the nearest of the 16 codes.
            const LEVELS: [f32; 16] = [
                0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0,
                -12.0,
            ];
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let e = if amax > 0.0 {
                    ((amax / 12.0).log2().ceil() as i32 + 128).clamp(2, 254)
                } else {
                    128
                };
                let d = 2f32.powi(e - 128);
                let q = |v: f32| {
                    (0..16u8)
                        .min_by(|&a, &c| {
                            let (ea, ec) = (
                                (LEVELS[a as usize] * d - v).abs(),
                                (LEVELS[c as usize] * d - v).abs(),
                            );
                            ea.total_cmp(&ec)
                        })
                        .unwrap_or(0)
                };
                out.push(e as u8);
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        other => panic!("tiny models are not written in {other:?} (llama-quantize makes those)"),
    }
    out
}

/// Rounds values through a dtype so the float64 reference sees what the file stores.
pub(super) fn representable(
    dtype: SourceDType,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
) -> Vec<f32> {
    let bytes = encode(dtype, &values);
    lowbit_gpu::RawTensor::new(dtype, rows, cols, &bytes)
        .expect("encoded size")
        .to_f32()
}

/// llama.cpp's `permute` of Q/K rows: within each head, row `2i + j` takes row `j·d/2 + i`.
pub fn permute_rows(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let dst = h * hd + 2 * i + j;
                let src = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
