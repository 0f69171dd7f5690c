//! [`PackedWeight`]: the CPU backend's own layout for integer weights, rows interleaved by
//! eights.
//!
//! [`QTensor`] keeps each row contiguous (what GPUs and files want). A CPU dot product over
//! that layout ends every block with a horizontal sum across SIMD lanes. Interleaving eight
//! rows word by word puts row `i` in 32-bit lane `i` of every 256-bit load instead, so one
//! `dpbusd` (or `maddubs`) per load yields eight rows' partial sums already in place, one
//! activation load serves eight rows, and the eight rows' scales are one 128-bit load:
//! ```text
//! words  | rows 0–7: word 0 of r0 r1 … r7 | word 1 of r0 … r7 | … | rows 8–15: … |
//! scales | rows 0–7: group 0 of r0 … r7 | group 1 of r0 … r7 | … | rows 8–15: … |
//! mins   | same as scales (Q4M only)
//! ```
//! A word is the same 4 bytes as in the row-major layout (so a Q4 word holds values
//! `4w..4w+4` in its low nibbles and `4w+16..` in its high ones, per block), except that Q8
//! words are stored offset-binary (`byte ^ 0x80`, value + 128) so that the unsigned side of
//! `dpbusd` can take the weights; kernels subtract `128·d_w·Σ a` per block, as they subtract
//! `8·d_w·Σ a` for Q4. The last group of rows is padded with zero-scale rows.
//!
//! Packing is lossless: [`PackedWeight::unpack_rows`] gives back the row-major tensor.

use crate::quant::format::{QuantFormat, QBLOCK};
use crate::quant::qtensor::{words_per_row, QTensor};
use half::f16;

/// Rows interleaved together: one per 32-bit lane of a 256-bit register.
pub const ROW_GROUP: usize = 8;

/// An integer-format weight matrix in the interleaved CPU layout (module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub(crate) words: Vec<u32>,
    pub(crate) scales: Vec<f16>,
    pub(crate) mins: Vec<f16>,
}

impl PackedWeight {
    /// Interleaves an integer-format tensor; `None` for float formats.
    pub fn pack(q: &QTensor) -> Option<Self> {
        if !q.format.is_quantized() {
            return None;
        }
        let wpr = words_per_row(q.format, q.cols);
        let groups = q.cols / q.format.group();
        let padded = q.rows.div_ceil(ROW_GROUP) * ROW_GROUP;
        let flip = Self::word_flip(q.format);
        let mut words = vec![flip; padded * wpr];
        let mut scales = vec![f16::ZERO; padded * groups];
        let mut mins = vec![
            f16::ZERO;
            if q.mins.is_empty() {
                0
            } else {
                padded * groups
            }
        ];
        for r in 0..q.rows {
            let (base, lane) = (r / ROW_GROUP * ROW_GROUP, r % ROW_GROUP);
            for (w, &word) in q.row_words(r).iter().enumerate() {
                words[(base * wpr) + w * ROW_GROUP + lane] = word ^ flip;
            }
            for (g, &s) in q.row_scales(r).iter().enumerate() {
                scales[base * groups + g * ROW_GROUP + lane] = s;
            }
            for (g, &m) in q.row_mins(r).iter().enumerate() {
                mins[base * groups + g * ROW_GROUP + lane] = m;
            }
        }
        Some(Self {
            format: q.format,
            rows: q.rows,
            cols: q.cols,
            words,
            scales,
            mins,
        })
    }

    /// What a stored word is XORed with: Q8 is kept offset-binary (module doc).
    fn word_flip(format: QuantFormat) -> u32 {
        if format == QuantFormat::Q8 {
            0x8080_8080
        } else {
            0
        }
    }

    /// Groups of [`ROW_GROUP`] rows (the last one padded).
    pub fn row_groups(&self) -> usize {
        self.rows.div_ceil(ROW_GROUP)
    }

    /// Rows `range` back in the row-major layout.
    pub fn unpack_rows(&self, range: std::ops::Range<usize>) -> QTensor {
        let wpr = words_per_row(self.format, self.cols);
        let groups = self.cols / self.format.group();
        let flip = Self::word_flip(self.format);
        let n = range.len();
        let mut words = Vec::with_capacity(n * wpr);
        let mut scales = Vec::with_capacity(n * groups);
        let mut mins = Vec::new();
        for r in range {
            let (base, lane) = (r / ROW_GROUP * ROW_GROUP, r % ROW_GROUP);
            words.extend((0..wpr).map(|w| self.words[base * wpr + w * ROW_GROUP + lane] ^ flip));
            scales.extend((0..groups).map(|g| self.scales[base * groups + g * ROW_GROUP + lane]));
            if !self.mins.is_empty() {
                mins.extend((0..groups).map(|g| self.mins[base * groups + g * ROW_GROUP + lane]));
            }
        }
        QTensor {
            format: self.format,
            rows: n,
            cols: self.cols,
            words,
            scales,
            mins,
        }
    }

    /// Decodes row `r` into `out` with the format's reference definition.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.unpack_rows(r..r + 1).dequantize_row(0, out);
    }

    /// Bytes held in memory (padding included).
    pub fn resident_bytes(&self) -> usize {
        self.words.len() * 4 + (self.scales.len() + self.mins.len()) * 2
    }

    /// Words per 32-value block: 8 for Q8, 4 for Q4/Q4M/Lut4.
    pub(crate) fn words_per_block(&self) -> usize {
        words_per_row(self.format, QBLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::format::GroupSize;
    use crate::quant::quantize::{quantize, QuantizeOptions};

    #[test]
    fn packing_is_lossless_for_every_integer_format_and_ragged_row_counts() {
        for f in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4(GroupSize::G128),
            QuantFormat::Q4M(GroupSize::G64),
            QuantFormat::Lut4(crate::quant::Codebook::Iq4nl),
        ] {
            for rows in [1, 7, 8, 13, 24] {
                let cols = 256;
                let w: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
                    .collect();
                let q = quantize(&w, rows, cols, f, &QuantizeOptions::default()).unwrap();
                let p = PackedWeight::pack(&q).unwrap();
                assert_eq!(p.unpack_rows(0..rows), q, "{f} rows={rows}");
                let mut row = vec![0.0; cols];
                p.dequantize_row(rows - 1, &mut row);
                let mut want = vec![0.0; cols];
                q.dequantize_row(rows - 1, &mut want);
                assert_eq!(row, want);
            }
        }
        let f32_weight = QTensor::new(QuantFormat::F32, 1, 2, vec![0, 0], vec![], vec![]).unwrap();
        assert!(PackedWeight::pack(&f32_weight).is_none());
    }
}
