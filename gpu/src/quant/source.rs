//! Weight data as model files store it, and the one scalar decoder for each format.
//!
//! GGUF block layouts (llama.cpp's `ggml-common.h`), 32 values per block, little-endian:
//! ```text
//! Q8_0  | d: f16 | q[0..32]: i8 |                         34 bytes, x = d·q
//! Q4_0  | d: f16 | qs[0..16]: u8 |                        18 bytes, x = d·(q − 8)
//! Q4_1  | d: f16 | m: f16 | qs[0..16]: u8 |               20 bytes, x = d·q + m
//! ```
//! Nibble order of Q4_0/Q4_1: byte `qs[j]` holds value `j` in its low nibble and value `j + 16`
//! in its high nibble. The other GGUF block formats lowbit reads (Q5_0, Q5_1, K-quants,
//! IQ4_NL, IQ4_XS) are decoded in [`super::ggml_blocks`].

use super::ggml_blocks::{self, QK_K};
use crate::error::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Values per block of GGUF's 32-value block formats (K-quants: [`QK_K`]).
pub const GGUF_BLOCK: usize = 32;

/// Element type of a tensor as stored in a model file (ggml's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum SourceDType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    /// OCP microscaling FP4 (gpt-oss's experts): 32 E2M1 values and a power-of-two scale.
    MXFP4,
}

impl SourceDType {
    /// Values per storage block (1 for plain floats).
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0
            | Self::Q4_0
            | Self::Q4_1
            | Self::Q5_0
            | Self::Q5_1
            | Self::IQ4_NL
            | Self::MXFP4 => GGUF_BLOCK,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::IQ4_XS => QK_K,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 | Self::IQ4_NL => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::IQ4_XS => 136,
            Self::MXFP4 => 17,
        }
    }

    /// Bytes of `values` elements, or `None` if they are not whole blocks or overflow.
    pub fn bytes_for(self, values: usize) -> Option<usize> {
        if !values.is_multiple_of(self.block_values()) {
            return None;
        }
        (values / self.block_values()).checked_mul(self.block_bytes())
    }

    /// Bits of storage per value, for size reports.
    pub fn bits_per_value(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_values() as f64
    }
}

/// A borrowed matrix in a model file's own encoding: `rows × cols`, rows contiguous.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    pub dtype: SourceDType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> RawTensor<'a> {
    /// Checks that `data` holds exactly `rows × cols` values of `dtype` in whole blocks.
    pub fn new(dtype: SourceDType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        if !cols.is_multiple_of(dtype.block_values()) {
            return Err(Error::PartialBlock {
                dtype,
                block: dtype.block_values(),
                cols,
            });
        }
        let expected = rows
            .checked_mul(cols)
            .and_then(|n| dtype.bytes_for(n))
            .unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(Error::DataSize {
                dtype,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_values() * self.dtype.block_bytes()
    }

    /// The encoded bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Rows `range` as a matrix of their own: a slice of the bytes, since every format holds
    /// whole rows (a fused Q/K/V projection split into its parts).
    pub fn row_range(&self, range: std::ops::Range<usize>) -> Result<RawTensor<'a>> {
        if range.start > range.end || range.end > self.rows {
            return Err(crate::error::shape_err(
                "row_range",
                format!("rows {range:?} of {}", self.rows),
            ));
        }
        let n = self.row_bytes();
        Ok(RawTensor {
            dtype: self.dtype,
            rows: range.len(),
            cols: self.cols,
            data: &self.data[range.start * n..range.end * n],
        })
    }

    /// Decodes the whole tensor to f32 (rows in parallel: loading requantizes whole models).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_exact_mut(self.cols)
                .enumerate()
                .for_each(|(r, dst)| decode_row(self.dtype, self.row(r), dst));
        }
        out
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes `out.len()` values of `dtype` from `src` (which holds exactly that many).
///
/// This is the definition of each format's values: every backend is tested against it.
pub fn decode_row(dtype: SourceDType, src: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        SourceDType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        SourceDType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        SourceDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(GGUF_BLOCK).zip(src.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                    *x = d * f32::from(q as i8);
                }
            }
        }
        SourceDType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(GGUF_BLOCK).zip(src.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    o[j] = d * (f32::from(q & 0x0f) - 8.0);
                    o[j + 16] = d * (f32::from(q >> 4) - 8.0);
                }
            }
        }
        SourceDType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(GGUF_BLOCK).zip(src.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for (j, &q) in b[4..20].iter().enumerate() {
                    o[j] = d * f32::from(q & 0x0f) + m;
                    o[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
        }
        SourceDType::Q5_0
        | SourceDType::Q5_1
        | SourceDType::Q2_K
        | SourceDType::Q3_K
        | SourceDType::Q4_K
        | SourceDType::Q5_K
        | SourceDType::Q6_K
        | SourceDType::IQ4_NL
        | SourceDType::IQ4_XS
        | SourceDType::MXFP4 => ggml_blocks::decode(dtype, src, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_decodes_low_nibbles_first() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let raw = RawTensor::new(SourceDType::Q4_1, 1, 32, &block).unwrap();
        let values = raw.to_f32();
        for j in 0..16 {
            assert_eq!(values[j], 0.5 * j as f32 - 1.0);
            assert_eq!(values[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q4_0_and_q8_0_blocks_decode_symmetrically() {
        let mut q4 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q4.extend([0x8fu8; 16]); // low nibble 15 -> +7, high nibble 8 -> 0
        let v = RawTensor::new(SourceDType::Q4_0, 1, 32, &q4)
            .unwrap()
            .to_f32();
        assert!(v[..16].iter().all(|&x| x == 14.0));
        assert!(v[16..].iter().all(|&x| x == 0.0));

        let mut q8 = f16::from_f32(0.25).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = RawTensor::new(SourceDType::Q8_0, 1, 32, &q8)
            .unwrap()
            .to_f32();
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, 0.25 * (i as f32 - 16.0));
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(matches!(
            RawTensor::new(SourceDType::Q4_1, 1, 48, &[0; 30]),
            Err(Error::PartialBlock { .. })
        ));
        assert!(matches!(
            RawTensor::new(SourceDType::F16, 2, 3, &[0; 10]),
            Err(Error::DataSize { expected: 12, .. })
        ));
    }
}
