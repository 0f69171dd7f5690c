//! The GGUF block formats lowbit imports but does not store as they are: Q5_0, Q5_1, the
//! K-quants (Q2_K … Q6_K), the non-linear IQ4_NL / IQ4_XS and MXFP4. Each has a scalar decoder here
//! (the definition of its values, in ggml's arithmetic order) and, where one of lowbit's
//! formats holds the same integers, the codes and per-group scales for a repack.
//!
//! Layouts (llama.cpp's `ggml-common.h`), little-endian; K-quant super-blocks are 256 values:
//! ```text
//! Q5_0    | d f16 | qh[4] | qs[16] |                               22 B / 32,  x = d·(q − 16)
//! Q5_1    | d f16 | m f16 | qh[4] | qs[16] |                       24 B / 32,  x = d·q + m
//! IQ4_NL  | d f16 | qs[16] |                                       18 B / 32,  x = d·T[q]
//! Q2_K    | scales[16] | qs[64] | d f16 | dmin f16 |               84 B / 256, 16 × 16 values
//! Q3_K    | hmask[32] | qs[64] | scales[12] | d f16 |             110 B / 256, 16 × 16 values
//! Q4_K    | d f16 | dmin f16 | scales[12] | qs[128] |            144 B / 256,  8 × 32 values
//! Q5_K    | d f16 | dmin f16 | scales[12] | qh[32] | qs[128] |   176 B / 256,  8 × 32 values
//! Q6_K    | ql[128] | qh[64] | scales[16] i8 | d f16 |           210 B / 256, 16 × 16 values
//! IQ4_XS  | d f16 | scales_h u16 | scales_l[4] | qs[128] |       136 B / 256,  8 × 32 values
//! MXFP4   | e u8 | qs[16] |                                        17 B / 32,  x = 2^(e−128)·T[q]
//! ```
//! MXFP4's `e` is an E8M0 exponent and `T` twice the E2M1 values (`kvalues_mxfp4`), so that
//! `2^(e−128)` (ggml's `E8M0_TO_FP32_HALF`) makes them whole. IQ4_NL, IQ4_XS and MXFP4 keep
//! their 4-bit codes in lowbit's `Lut4` formats ([`Codebook`]'s tables are `T`).
//! Q5's fifth bits: bit `j` of `qh` belongs to value `j` (values 0..16 in low nibbles of `qs`,
//! 16..32 in high nibbles). K-quant sub-block scales are 6 bits (Q3_K: offset by 32; Q4_K and
//! Q5_K: a scale and a min, both multiplied by the super-block's `d` / `dmin`), Q2_K's are
//! 4 + 4 bits, Q6_K's are whole i8.

use super::format::Codebook;
use super::source::SourceDType;
use half::f16;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// IQ4_NL / IQ4_XS's 16 levels (`kvalues_iq4nl`).
const IQ4_LEVELS: &[i8; 16] = Codebook::Iq4nl.levels();

/// MXFP4's 16 codes: twice FP4 E2M1's values (`kvalues_mxfp4`).
const MXFP4_LEVELS: &[i8; 16] = Codebook::Fp4.levels();

/// `2^(e − 128)`, E8M0's value halved (ggml's `ggml_e8m0_to_fp32_half`, subnormals included).
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// The largest MXFP4 block exponent fp4 holds: a scale of 2¹⁵, f16's largest power of two.
/// `QTensor::repack` refuses a tensor with a larger one.
pub const MXFP4_MAX_EXPONENT: u8 = 143;
/// Below this exponent a block's scale (2⁻²⁵ and less) is under f16's smallest.
const MXFP4_MIN_EXACT_EXPONENT: u8 = 104;

/// An MXFP4 block as fp4 codes and an f16 scale: the same codes, exact for exponents 104 to
/// 143 (real weights' are near 120); below, the values (all under 12 · 2⁻²⁵) take the
/// levels nearest them in units of f16's smallest scale, 2⁻²⁴.
fn mxfp4_group(b: &[u8]) -> Group {
    let codes = nibbles(&b[1..17]);
    debug_assert!(b[0] <= MXFP4_MAX_EXPONENT, "checked by QTensor::repack");
    let e = b[0].min(MXFP4_MAX_EXPONENT);
    if e < MXFP4_MIN_EXACT_EXPONENT {
        let in_units = e8m0_half(e) * 16_777_216.0; // 2^(e − 104) < 1
        return Group {
            codes: codes
                .map(|q| Codebook::Fp4.nearest(f32::from(MXFP4_LEVELS[q as usize]) * in_units)),
            scale: f16::from_bits(1),
            min: None,
        };
    }
    Group {
        codes,
        scale: f16::from_f32(e8m0_half(e)),
        min: None,
    }
}

/// The first MXFP4 block exponent of `src` above [`MXFP4_MAX_EXPONENT`], if any.
pub fn mxfp4_exponent_too_large(src: &[u8]) -> Option<u8> {
    src.chunks_exact(17)
        .map(|b| b[0])
        .find(|&e| e > MXFP4_MAX_EXPONENT)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K / Q5_K sub-block `j`'s 6-bit (scale, min) from the 12 packed bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q3_K's 16 signed sub-block scales (6 bits each, stored offset by 32).
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    std::array::from_fn(|j| {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        i32::from(low | (high << 4)) - 32
    })
}

/// The fifth bits of a Q5_0 / Q5_1 block: value `j`'s 5-bit code.
fn q5_codes(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let nib = if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        };
        nib | ((((high >> j) & 1) as u8) << 4)
    })
}

/// IQ4_XS sub-block `j`'s 6-bit scale, minus 32.
fn iq4_xs_scale(b: &[u8], j: usize) -> i32 {
    let high = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + j / 2] >> (4 * (j % 2))) & 0x0f;
    i32::from(low | ((((high >> (2 * j)) & 3) as u8) << 4)) - 32
}

/// The nibbles of a 32-value run stored as GGUF's 4-bit blocks store it (value `j` low,
/// `j + 16` high), in value order.
fn nibbles(qs: &[u8]) -> [u8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    })
}

/// Decodes whole blocks of one of this module's formats (`decode_row` hands them here).
pub fn decode(dtype: SourceDType, src: &[u8], out: &mut [f32]) {
    let bytes = dtype.block_bytes();
    let per = dtype.block_values();
    for (o, b) in out.chunks_exact_mut(per).zip(src.chunks_exact(bytes)) {
        match dtype {
            SourceDType::Q5_0 => {
                let d = f16_at(b, 0);
                for (x, q) in o.iter_mut().zip(q5_codes(&b[2..6], &b[6..22])) {
                    *x = (i32::from(q) - 16) as f32 * d;
                }
            }
            SourceDType::Q5_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (x, q) in o.iter_mut().zip(q5_codes(&b[4..8], &b[8..24])) {
                    *x = f32::from(q) * d + m;
                }
            }
            SourceDType::IQ4_NL => {
                let d = f16_at(b, 0);
                for (x, q) in o.iter_mut().zip(nibbles(&b[2..18])) {
                    *x = d * f32::from(IQ4_LEVELS[q as usize]);
                }
            }
            SourceDType::MXFP4 => {
                let d = e8m0_half(b[0]);
                for (x, q) in o.iter_mut().zip(nibbles(&b[1..17])) {
                    *x = f32::from(MXFP4_LEVELS[q as usize]) * d;
                }
            }
            SourceDType::Q2_K => decode_q2_k(b, o),
            SourceDType::Q3_K => decode_q3_k(b, o),
            SourceDType::Q4_K | SourceDType::Q5_K => decode_q45_k(dtype, b, o),
            SourceDType::Q6_K => decode_q6_k(b, o),
            SourceDType::IQ4_XS => {
                let d = f16_at(b, 0);
                for (j, run) in o.chunks_exact_mut(32).enumerate() {
                    let dl = d * iq4_xs_scale(b, j) as f32;
                    let qs = &b[8 + 16 * j..8 + 16 * (j + 1)];
                    for (x, q) in run.iter_mut().zip(nibbles(qs)) {
                        *x = dl * f32::from(IQ4_LEVELS[q as usize]);
                    }
                }
            }
            other => unreachable!("{other:?} is not an imported block format"),
        }
    }
}

/// Q2_K: each 128-value half is 32 bytes of 2-bit codes read four times (shifts 0, 2, 4, 6),
/// 16 values per scale byte (scale in the low nibble, min in the high one).
fn decode_q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, run) in out.chunks_exact_mut(16).enumerate() {
        let (half, shift, second) = (i / 8, 2 * ((i % 8) / 2), i % 2);
        let sc = scales[i];
        let dl = d * f32::from(sc & 0x0f);
        let ml = dmin * f32::from(sc >> 4);
        let q = &qs[32 * half + 16 * second..32 * half + 16 * second + 16];
        for (x, &byte) in run.iter_mut().zip(q) {
            *x = dl * f32::from((byte >> shift) & 3) - ml;
        }
    }
}

/// Q3_K: Q2_K's code order, plus a high bit from `hmask` (bit `i / 2` of byte `l`) that,
/// when clear, subtracts 4.
fn decode_q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (i, run) in out.chunks_exact_mut(16).enumerate() {
        let (half, pass, second) = (i / 8, (i % 8) / 2, i % 2);
        let dl = d * scales[i] as f32;
        let at = 16 * second;
        let q = &qs[32 * half + at..32 * half + at + 16];
        let mask = 1u8 << (4 * half + pass);
        for (l, x) in run.iter_mut().enumerate() {
            let low = i32::from((q[l] >> (2 * pass)) & 3);
            let sub = if hmask[at + l] & mask != 0 { 0 } else { 4 };
            *x = dl * (low - sub) as f32;
        }
    }
}

/// Q4_K / Q5_K: 64-value chunks of 32 bytes, low nibbles then high nibbles; Q5_K's fifth bit
/// of value `l` in chunk `c` is bit `2c` (low) or `2c + 1` (high) of `qh[l]`.
fn decode_q45_k(dtype: SourceDType, b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = match dtype {
        SourceDType::Q5_K => (Some(&b[16..48]), &b[48..176]),
        _ => (None, &b[16..144]),
    };
    for (j, run) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
        let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for (l, x) in run.iter_mut().enumerate() {
            let mut q = if j % 2 == 0 {
                chunk[l] & 0x0f
            } else {
                chunk[l] >> 4
            };
            if let Some(qh) = qh {
                q |= ((qh[l] >> j) & 1) << 4;
            }
            *x = d1 * f32::from(q) - m1;
        }
    }
}

/// Q6_K: per 128-value half, 64 bytes of low nibbles and 32 bytes of 2-bit high parts; value
/// `l + 32k` (k = 0..4) takes nibble k/2 of `ql[l + 32(k % 2)]` and bits 2k of `qh[l]`; one
/// i8 scale per 16 values.
fn decode_q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, run) in out.chunks_exact_mut(16).enumerate() {
        let (half, k, part) = (i / 8, (i % 8) / 2, i % 2);
        let dl = d * f32::from(scales[i] as i8);
        let at = 16 * part;
        let low = &ql[64 * half + 32 * (k % 2) + at..][..16];
        let high = &qh[32 * half + at..][..16];
        let (shift, hshift) = (4 * (k / 2), 2 * k);
        for ((x, &lo), &hi) in run.iter_mut().zip(low).zip(high) {
            let q = ((lo >> shift) & 0x0f) | (((hi >> hshift) & 3) << 4);
            *x = dl * (i32::from(q) - 32) as f32;
        }
    }
}

/// One 32-value group of a format that repacks into one of lowbit's: its integer codes (the
/// i8 bit pattern for Q8, `0..16` for Q4M and Lut4), scale, and min (Q4M only).
pub struct Group {
    pub codes: [u8; 32],
    pub scale: f16,
    pub min: Option<f16>,
}

/// The groups of whole blocks of a repackable format, in value order: Q5_0 to Q8, IQ4_NL to
/// iq4nl and MXFP4 to fp4 (same codes, same scale: exact), Q4_K to Q4M g32 and IQ4_XS to
/// iq4nl (same codes; the two-level scale `d·sc`, and Q4_K's min `−dmin·m`, rounded once to
/// f16).
pub fn repack_groups(dtype: SourceDType, src: &[u8], mut emit: impl FnMut(Group)) {
    let f16_bits = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
    for b in src.chunks_exact(dtype.block_bytes()) {
        match dtype {
            SourceDType::Q5_0 => emit(Group {
                codes: q5_codes(&b[2..6], &b[6..22]).map(|q| (q as i8 - 16) as u8),
                scale: f16_bits(b, 0),
                min: None,
            }),
            SourceDType::MXFP4 => emit(mxfp4_group(b)),
            SourceDType::IQ4_NL => emit(Group {
                codes: nibbles(&b[2..18]),
                scale: f16_bits(b, 0),
                min: None,
            }),
            SourceDType::IQ4_XS => {
                let d = f16_at(b, 0);
                for j in 0..8 {
                    let qs = &b[8 + 16 * j..8 + 16 * (j + 1)];
                    emit(Group {
                        codes: nibbles(qs),
                        scale: f16::from_f32(d * iq4_xs_scale(b, j) as f32),
                        min: None,
                    });
                }
            }
            SourceDType::Q4_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    let chunk = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                    let shift = 4 * (j % 2);
                    emit(Group {
                        codes: std::array::from_fn(|l| (chunk[l] >> shift) & 0x0f),
                        scale: f16::from_f32(d * f32::from(sc)),
                        min: Some(f16::from_f32(-(dmin * f32::from(m)))),
                    });
                }
            }
            other => unreachable!("{other:?} does not repack"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MXFP4 as the OCP spec defines it (E2M1 codes: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their
    /// negatives; scale 2^(e − 127)), and its fp4 repack equal to the decode bit for bit over
    /// every exponent f16 holds.
    #[test]
    fn mxfp4_decodes_as_the_spec_and_repacks_exactly() {
        let e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let mut block = [0u8; 17];
        block[0] = 127;
        for j in 0..16 {
            block[1 + j] = (j as u8) | (((15 - j) as u8) << 4);
        }
        let mut out = [0.0f32; 32];
        decode(SourceDType::MXFP4, &block, &mut out);
        for (j, &x) in out.iter().enumerate() {
            let code = if j < 16 { j } else { 15 - (j - 16) };
            let want = if code < 8 {
                e2m1[code]
            } else {
                -e2m1[code - 8]
            };
            assert_eq!(x, want, "value {j}");
        }
        let value =
            |g: &Group, j: usize| f32::from(MXFP4_LEVELS[g.codes[j] as usize]) * g.scale.to_f32();
        for e in 104..=143u8 {
            block[0] = e;
            decode(SourceDType::MXFP4, &block, &mut out);
            let mut groups = Vec::new();
            repack_groups(SourceDType::MXFP4, &block, |g| groups.push(g));
            let g = &groups[0];
            for (j, &x) in out.iter().enumerate() {
                let v = value(g, j);
                assert_eq!(v.to_bits(), x.to_bits(), "exponent {e}, value {j}");
            }
        }
        // Scales below f16's: the nearest levels in units of 2⁻²⁴ (every error at most 2⁻²⁵).
        for e in [103, 100, 1, 0] {
            block[0] = e;
            decode(SourceDType::MXFP4, &block, &mut out);
            repack_groups(SourceDType::MXFP4, &block, |g| {
                for (j, &x) in out.iter().enumerate() {
                    let v = value(&g, j);
                    assert!((v - x).abs() <= 2f32.powi(-25), "value {j}: {v} for {x}");
                }
            });
        }
        // Larger scales than f16 holds are found (the import refuses them).
        assert_eq!(mxfp4_exponent_too_large(&block), None);
        block[0] = 144;
        assert_eq!(mxfp4_exponent_too_large(&block), Some(144));
    }

    #[test]
    fn q3_k_scales_unpack_as_ggml_does() {
        // ggml's shuffle on u32 words, written out: the reference for the per-index formula.
        let s: [u8; 12] = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x1b, 0x2c, 0x3d, 0x4e,
        ];
        let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (a0, a1, tmp) = (w(0), w(1), w(2));
        let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
        let aux = [
            (a0 & k2) | ((tmp & k1) << 4),
            (a1 & k2) | (((tmp >> 2) & k1) << 4),
            ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
            ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
        ];
        let expected: Vec<i32> = aux
            .iter()
            .flat_map(|a| a.to_le_bytes())
            .map(|b| i32::from(b as i8) - 32)
            .collect();
        assert_eq!(q3_k_scales(&s).to_vec(), expected);
    }
}
