//! [`QTensor`]: a weight matrix in one of lowbit's formats, laid out for GPUs first.
//!
//! Struct of arrays, rows contiguous, little-endian words:
//! ```text
//! words  | row 0: block 0 | block 1 | … | row 1: block 0 | … |     packed values, u32
//! scales | row 0: d d d … | row 1: d d d … |                      f16, one per group
//! mins   | row 0: m m m … | row 1: m m m … |                      f16, one per group (Q4M only)
//! ```
//! A 32-value block takes 4 words in Q4/Q4M/Lut4 and 8 words in Q8. Nibble order inside a
//! block (GGUF's, so that SIMD can split low and high nibbles with one mask and one shift):
//! ```text
//! byte j (j = 0..16) of the block = value j in bits 0..4 | value j+16 in bits 4..8
//! word w = bytes 4w..4w+4, byte 4w in bits 0..8
//! ```
//! Q8 block: byte i = value i as i8. F16: two values per word, the even index in bits 0..16.
//! F32: one value per word (its bits).
//!
//! [`QTensor::dequantize_row`] is the definition of every format's values; all kernels, on
//! every backend, are tested against it.

use super::format::{Codebook, GroupSize, QuantFormat, QBLOCK};
use crate::error::{Error, Result};
use crate::quant::ggml_blocks;
use crate::quant::source::{RawTensor, SourceDType};
use half::f16;
use rayon::prelude::*;

/// How a file's tensor type is brought into lowbit's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Re-laid out, every value unchanged.
    Exact(QuantFormat),
    /// Re-laid out with the same integer codes; each group's two-level scale (and min)
    /// becomes one f16 (relative change at most 2⁻¹¹ per scale).
    Rescaled(QuantFormat),
    /// Decoded and quantized again: no lowbit format holds its integers.
    Requantized(QuantFormat),
}

impl Import {
    /// The format the tensor gets.
    pub fn format(self) -> QuantFormat {
        match self {
            Self::Exact(f) | Self::Rescaled(f) | Self::Requantized(f) => f,
        }
    }

    /// Whether loading into `format` keeps the file's integer codes
    /// ([`QTensor::repack_into`]): its import format, or Q8 for a Lut4 one (the levels are
    /// int8 values: the same numbers at twice the bits).
    pub fn repacks_to(self, format: QuantFormat) -> bool {
        match self {
            Self::Exact(f) | Self::Rescaled(f) => {
                f == format || (matches!(f, QuantFormat::Lut4(_)) && format == QuantFormat::Q8)
            }
            Self::Requantized(_) => false,
        }
    }

    /// A word for reports: `exact`, `rescaled` or `requantized`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Exact(_) => "exact",
            Self::Rescaled(_) => "rescaled",
            Self::Requantized(_) => "requantized",
        }
    }
}

/// A weight matrix `rows × cols` in a [`QuantFormat`].
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub words: Vec<u32>,
    pub scales: Vec<f16>,
    pub mins: Vec<f16>,
}

/// Words one row takes in a format.
pub fn words_per_row(format: QuantFormat, cols: usize) -> usize {
    match format {
        QuantFormat::F32 => cols,
        QuantFormat::F16 => cols.div_ceil(2),
        QuantFormat::Q8 => cols / 4,
        QuantFormat::Q4(_) | QuantFormat::Q4M(_) | QuantFormat::Lut4(_) => cols / 8,
    }
}

/// Bytes a `rows × cols` matrix takes in a format (packed values, scales and mins).
pub fn storage_bytes(format: QuantFormat, rows: usize, cols: usize) -> usize {
    let groups = if format.is_quantized() {
        cols / format.group()
    } else {
        0
    };
    let per_group = if matches!(format, QuantFormat::Q4M(_)) {
        4
    } else {
        2
    };
    rows * (words_per_row(format, cols) * 4 + groups * per_group)
}

/// Packs one row of integer codes (one per value: the i8 bit pattern for Q8, `0..16` for
/// Q4/Q4M/Lut4) into the row's words, in the layout drawn above.
pub fn pack_codes(format: QuantFormat, codes: &[u8]) -> Vec<u32> {
    let mut words = Vec::with_capacity(codes.len() / if format == QuantFormat::Q8 { 4 } else { 8 });
    pack_codes_into(format, codes, &mut words);
    words
}

/// [`pack_codes`], appending to `words`.
pub fn pack_codes_into(format: QuantFormat, codes: &[u8], words: &mut Vec<u32>) {
    let word = |b: [u8; 4]| u32::from_le_bytes(b);
    if format == QuantFormat::Q8 {
        words.extend(
            codes
                .chunks_exact(4)
                .map(|c| word([c[0], c[1], c[2], c[3]])),
        );
        return;
    }
    for block in codes.chunks_exact(QBLOCK) {
        let (lo, hi) = block.split_at(16);
        for j in (0..16).step_by(4) {
            words.push(word(std::array::from_fn(|k| lo[j + k] | (hi[j + k] << 4))));
        }
    }
}

/// One row's packed words, scales and mins, as quantizers produce them.
pub type RowParts = (Vec<u32>, Vec<f16>, Vec<f16>);

impl QTensor {
    /// Assembles a tensor from its rows' parts (in row order).
    pub fn from_rows(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        parts: Vec<RowParts>,
    ) -> Result<Self> {
        let mut words = Vec::with_capacity(rows * words_per_row(format, cols));
        let mut scales = Vec::new();
        let mut mins = Vec::new();
        for (w, s, m) in parts {
            words.extend(w);
            scales.extend(s);
            mins.extend(m);
        }
        Self::new(format, rows, cols, words, scales, mins)
    }

    /// Checks that the arrays have the sizes the format and shape ask for.
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        words: Vec<u32>,
        scales: Vec<f16>,
        mins: Vec<f16>,
    ) -> Result<Self> {
        if !format.fits(cols) {
            return Err(Error::PartialBlock {
                dtype: SourceDType::F32,
                block: format.group(),
                cols,
            });
        }
        let groups = if format.is_quantized() {
            rows * cols / format.group()
        } else {
            0
        };
        let want_mins = if matches!(format, QuantFormat::Q4M(_)) {
            groups
        } else {
            0
        };
        let want_words = rows * words_per_row(format, cols);
        if words.len() != want_words || scales.len() != groups || mins.len() != want_mins {
            return Err(Error::Shape {
                op: "QTensor::new",
                detail: format!(
                    "{format} {rows}x{cols} needs {want_words} words, {groups} scales, {want_mins} mins; got {}, {}, {}",
                    words.len(),
                    scales.len(),
                    mins.len()
                ),
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            words,
            scales,
            mins,
        })
    }

    /// Bytes held in memory.
    pub fn resident_bytes(&self) -> usize {
        self.words.len() * 4 + (self.scales.len() + self.mins.len()) * 2
    }

    /// Words of row `r`.
    pub fn row_words(&self, r: usize) -> &[u32] {
        let n = words_per_row(self.format, self.cols);
        &self.words[r * n..(r + 1) * n]
    }

    /// Scales of row `r` (one per group).
    pub fn row_scales(&self, r: usize) -> &[f16] {
        let n = self.cols / self.format.group();
        &self.scales[r * n..(r + 1) * n]
    }

    /// Mins of row `r` (Q4M; empty otherwise).
    pub fn row_mins(&self, r: usize) -> &[f16] {
        if self.mins.is_empty() {
            return &[];
        }
        let n = self.cols / self.format.group();
        &self.mins[r * n..(r + 1) * n]
    }

    /// The packed bytes of row `r` (little-endian words).
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        bytemuck::cast_slice(self.row_words(r))
    }

    /// Decodes row `r` into `out` (`cols` values): the reference definition of each format.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = self.row_bytes(r);
        let g = self.format.group();
        match self.format {
            QuantFormat::F32 => {
                for (o, w) in out.iter_mut().zip(self.row_words(r)) {
                    *o = f32::from_bits(*w);
                }
            }
            QuantFormat::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            QuantFormat::Q8 => {
                let scales = self.row_scales(r);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = scales[i / g].to_f32() * f32::from(bytes[i] as i8);
                }
            }
            QuantFormat::Q4(_) | QuantFormat::Q4M(_) => {
                let (scales, mins) = (self.row_scales(r), self.row_mins(r));
                for (b, block) in out.chunks_exact_mut(QBLOCK).enumerate() {
                    let qs = &bytes[b * 16..b * 16 + 16];
                    let group = b * QBLOCK / g;
                    let d = scales[group].to_f32();
                    if let QuantFormat::Q4M(_) = self.format {
                        let m = mins[group].to_f32();
                        for j in 0..16 {
                            block[j] = d * f32::from(qs[j] & 0x0f) + m;
                            block[j + 16] = d * f32::from(qs[j] >> 4) + m;
                        }
                    } else {
                        for j in 0..16 {
                            block[j] = d * (f32::from(qs[j] & 0x0f) - 8.0);
                            block[j + 16] = d * (f32::from(qs[j] >> 4) - 8.0);
                        }
                    }
                }
            }
            QuantFormat::Lut4(codebook) => {
                let (scales, levels) = (self.row_scales(r), codebook.levels());
                for (b, block) in out.chunks_exact_mut(QBLOCK).enumerate() {
                    let qs = &bytes[b * 16..b * 16 + 16];
                    let d = scales[b].to_f32();
                    for j in 0..16 {
                        block[j] = d * f32::from(levels[usize::from(qs[j] & 0x0f)]);
                        block[j + 16] = d * f32::from(levels[usize::from(qs[j] >> 4)]);
                    }
                }
            }
        }
    }

    /// The whole matrix as f32 (tests and export).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(r, row);
            }
        }
        out
    }

    /// How a file's tensor type becomes one of lowbit's formats when kept as stored.
    pub fn import(dtype: SourceDType) -> Import {
        use QuantFormat::{Lut4, Q4M, Q8};
        let q4mg32 = Q4M(GroupSize::G32);
        match dtype {
            SourceDType::F32 | SourceDType::BF16 => Import::Exact(QuantFormat::F32),
            SourceDType::F16 => Import::Exact(QuantFormat::F16),
            SourceDType::Q8_0 | SourceDType::Q5_0 => Import::Exact(Q8),
            SourceDType::IQ4_NL => Import::Exact(Lut4(Codebook::Iq4nl)),
            // MXFP4: exact for every block scale from 2⁻²⁴ to 2¹⁵ (real weights' are near
            // 2⁻⁸); a smaller block's values (under 4·10⁻⁷) round to the levels nearest them
            // in units of 2⁻²⁴, a larger scale is refused (`repack`).
            SourceDType::MXFP4 => Import::Exact(Lut4(Codebook::Fp4)),
            SourceDType::Q4_0 => Import::Exact(QuantFormat::Q4(GroupSize::G32)),
            SourceDType::Q4_1 => Import::Exact(q4mg32),
            SourceDType::Q4_K => Import::Rescaled(q4mg32),
            SourceDType::IQ4_XS => Import::Rescaled(Lut4(Codebook::Iq4nl)),
            SourceDType::Q5_1 | SourceDType::Q5_K | SourceDType::Q6_K => Import::Requantized(Q8),
            SourceDType::Q2_K | SourceDType::Q3_K => Import::Requantized(q4mg32),
        }
    }

    /// Repacks a file tensor into its import format ([`QTensor::import`]) keeping its integer
    /// codes: GGUF blocks → planar arrays. Exact imports change no value; rescaled ones round
    /// each group's scale product once to f16.
    pub fn repack(raw: &RawTensor<'_>) -> Result<Self> {
        let format = match Self::import(raw.dtype) {
            Import::Exact(f) | Import::Rescaled(f) => f,
            Import::Requantized(_) => {
                return Err(Error::Shape {
                    op: "QTensor::repack",
                    detail: format!("{:?} must be requantized", raw.dtype),
                })
            }
        };
        if raw.dtype == SourceDType::MXFP4 {
            if let Some(e) = ggml_blocks::mxfp4_exponent_too_large(raw.data) {
                return Err(Error::Unsupported(format!(
                    "an MXFP4 block scale of 2^{} (lowbit's fp4 holds up to 2^{})",
                    i32::from(e) - 128,
                    i32::from(ggml_blocks::MXFP4_MAX_EXPONENT) - 128
                )));
            }
        }
        match raw.dtype {
            SourceDType::Q5_0
            | SourceDType::IQ4_NL
            | SourceDType::IQ4_XS
            | SourceDType::Q4_K
            | SourceDType::MXFP4 => Self::repack_groups(raw, format),
            _ => Self::repack_planar(raw, format),
        }
    }

    /// [`QTensor::repack`] into `format`, which [`Import::repacks_to`] must allow: a Lut4
    /// import asked for as Q8 takes its levels as Q8's codes, with the same scales.
    pub fn repack_into(raw: &RawTensor<'_>, format: QuantFormat) -> Result<Self> {
        if !Self::import(raw.dtype).repacks_to(format) {
            return Err(Error::Shape {
                op: "QTensor::repack_into",
                detail: format!("{:?} does not repack into {format}", raw.dtype),
            });
        }
        let q = Self::repack(raw)?;
        if q.format == format {
            return Ok(q);
        }
        let QuantFormat::Lut4(book) = q.format else {
            return Err(Error::Internal("only Lut4 repacks into another format"));
        };
        let levels = book.levels();
        let mut words = Vec::with_capacity(q.rows * words_per_row(QuantFormat::Q8, q.cols));
        let mut codes = vec![0u8; q.cols];
        for r in 0..q.rows {
            for (b, block) in q.row_bytes(r).chunks_exact(16).enumerate() {
                for (j, &byte) in block.iter().enumerate() {
                    codes[b * QBLOCK + j] = levels[usize::from(byte & 0x0f)] as u8;
                    codes[b * QBLOCK + 16 + j] = levels[usize::from(byte >> 4)] as u8;
                }
            }
            pack_codes_into(QuantFormat::Q8, &codes, &mut words);
        }
        Self::new(QuantFormat::Q8, q.rows, q.cols, words, q.scales, Vec::new())
    }

    /// [`QTensor::repack`] for floats and the 32-value blocks lowbit stores as they are.
    fn repack_planar(raw: &RawTensor<'_>, format: QuantFormat) -> Result<Self> {
        let (rows, cols) = (raw.rows, raw.cols);
        let mut bytes: Vec<u8> = Vec::with_capacity(rows * words_per_row(format, cols) * 4);
        let mut scales = Vec::new();
        let mut mins = Vec::new();
        let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        match raw.dtype {
            SourceDType::F32 => bytes.extend_from_slice(raw.data),
            SourceDType::F16 => bytes.extend_from_slice(raw.data),
            SourceDType::BF16 => {
                for v in raw.to_f32() {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            SourceDType::Q8_0 => {
                for b in raw.data.chunks_exact(34) {
                    scales.push(f16_at(b, 0));
                    bytes.extend_from_slice(&b[2..34]);
                }
            }
            SourceDType::Q4_0 => {
                for b in raw.data.chunks_exact(18) {
                    scales.push(f16_at(b, 0));
                    bytes.extend_from_slice(&b[2..18]);
                }
            }
            SourceDType::Q4_1 => {
                for b in raw.data.chunks_exact(20) {
                    scales.push(f16_at(b, 0));
                    mins.push(f16_at(b, 2));
                    bytes.extend_from_slice(&b[4..20]);
                }
            }
            other => unreachable!("{other:?} is not a planar format"),
        }
        if format == QuantFormat::F16 && cols % 2 == 1 {
            // Odd rows: pad each row to whole words.
            let mut padded = Vec::with_capacity(rows * (cols + 1) * 2);
            for r in 0..rows {
                padded.extend_from_slice(&bytes[r * cols * 2..(r + 1) * cols * 2]);
                padded.extend_from_slice(&[0, 0]);
            }
            bytes = padded;
        }
        let words = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Self::new(format, rows, cols, words, scales, mins)
    }

    /// [`QTensor::repack`] for the formats of [`ggml_blocks`], rows in parallel (loading
    /// repacks whole models).
    fn repack_groups(raw: &RawTensor<'_>, format: QuantFormat) -> Result<Self> {
        let (rows, cols) = (raw.rows, raw.cols);
        let per_row: Vec<RowParts> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let mut words = Vec::with_capacity(words_per_row(format, cols));
                let mut scales = Vec::with_capacity(cols / QBLOCK);
                let mut mins = Vec::new();
                ggml_blocks::repack_groups(raw.dtype, raw.row(r), |group| {
                    scales.push(group.scale);
                    mins.extend(group.min);
                    pack_codes_into(format, &group.codes, &mut words);
                });
                (words, scales, mins)
            })
            .collect();
        Self::from_rows(format, rows, cols, per_row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf_block_bytes(dtype: SourceDType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        // Arbitrary bytes with sane f16 scales: every byte pattern of the quants is valid.
        let n = dtype.bytes_for(rows * cols).unwrap();
        let mut state = seed;
        let mut bytes: Vec<u8> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let (bb, nf16) = match dtype {
            SourceDType::Q8_0 => (34, 1),
            SourceDType::Q4_0 => (18, 1),
            SourceDType::Q4_1 => (20, 2),
            _ => (0, 0),
        };
        if bb > 0 {
            for (i, b) in bytes.chunks_exact_mut(bb).enumerate() {
                for k in 0..nf16 {
                    let v = f16::from_f32(0.01 * (i % 7) as f32 - 0.02 * k as f32);
                    b[2 * k..2 * k + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        bytes
    }

    #[test]
    fn gguf_import_is_bit_identical() {
        for dtype in [
            SourceDType::Q8_0,
            SourceDType::Q4_0,
            SourceDType::Q4_1,
            SourceDType::F16,
            SourceDType::F32,
        ] {
            let (rows, cols) = (3, 96);
            let data = if dtype.block_values() == 1 {
                (0..rows * cols)
                    .flat_map(|i| match dtype {
                        SourceDType::F16 => {
                            f16::from_f32(i as f32 * 0.37 - 9.0).to_le_bytes().to_vec()
                        }
                        _ => (i as f32 * 0.37 - 9.0).to_le_bytes().to_vec(),
                    })
                    .collect()
            } else {
                gguf_block_bytes(dtype, rows, cols, 99)
            };
            let raw = RawTensor::new(dtype, rows, cols, &data).unwrap();
            let q = QTensor::repack(&raw).unwrap();
            let a: Vec<u32> = q.dequantize().iter().map(|v| v.to_bits()).collect();
            let b: Vec<u32> = raw.to_f32().iter().map(|v| v.to_bits()).collect();
            assert_eq!(a, b, "{dtype:?}");
            assert_eq!(
                q.resident_bytes(),
                data.len(),
                "{dtype:?} keeps the file's size"
            );
        }
    }

    #[test]
    fn sizes_are_checked() {
        let e = QTensor::new(
            QuantFormat::Q8,
            2,
            64,
            vec![0; 31],
            vec![f16::ZERO; 4],
            vec![],
        );
        assert!(e.is_err());
        assert!(QTensor::new(
            QuantFormat::Q4(GroupSize::G64),
            1,
            96,
            vec![0; 12],
            vec![f16::ZERO; 1],
            vec![]
        )
        .is_err());
    }
}
