//! The GGUF block formats lowbit imports, against llama.cpp itself: blocks made by llama.cpp's
//! quantizer and random ones, with llama.cpp's C decoding of each (`data/ggml_blocks.json`,
//! written by `data/ggml_blocks.py`). Checks the decoders, the repacks (exact and rescaled) and
//! what requantization adds to a file's own error.

use lowbit_gpu::quant::qtensor::Import;
use lowbit_gpu::quant::{quantize, QuantMethod, QuantizeOptions};
use lowbit_gpu::{QTensor, QuantFormat, RawTensor, SourceDType};
use std::path::Path;

struct Case {
    dtype: SourceDType,
    kind: String,
    rows: usize,
    cols: usize,
    blocks: Vec<u8>,
    /// llama.cpp's decoding of `blocks`.
    values: Vec<f32>,
    /// The Gaussian rows llama.cpp quantized (`quantized` cases only).
    source: Option<Vec<f32>>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn f32s(s: &str) -> Vec<f32> {
    unhex(s)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn dtype(name: &str) -> SourceDType {
    match name {
        "Q5_0" => SourceDType::Q5_0,
        "Q5_1" => SourceDType::Q5_1,
        "Q2_K" => SourceDType::Q2_K,
        "Q3_K" => SourceDType::Q3_K,
        "Q4_K" => SourceDType::Q4_K,
        "Q5_K" => SourceDType::Q5_K,
        "Q6_K" => SourceDType::Q6_K,
        "IQ4_NL" => SourceDType::IQ4_NL,
        "IQ4_XS" => SourceDType::IQ4_XS,
        other => panic!("unknown type {other}"),
    }
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ggml_blocks.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let cases: Vec<Case> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|c| Case {
            dtype: dtype(c["type"].as_str().expect("type")),
            kind: c["kind"].as_str().expect("kind").to_string(),
            rows: c["rows"].as_u64().expect("rows") as usize,
            cols: c["cols"].as_u64().expect("cols") as usize,
            blocks: unhex(c["hex"].as_str().expect("hex")),
            values: f32s(c["values_f32le"].as_str().expect("values")),
            source: c["source_f32le"].as_str().map(f32s),
        })
        .collect();
    assert_eq!(cases.len(), 18, "9 types, quantized and random blocks");
    cases
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn every_imported_block_format_decodes_as_llama_cpp_does() {
    for c in cases() {
        let raw = RawTensor::new(c.dtype, c.rows, c.cols, &c.blocks).expect("whole blocks");
        let got = raw.to_f32();
        assert_eq!(got.len(), c.values.len());
        // ggml's C may fuse `d·q − m` into one FMA; allow that last-bit difference only.
        let scale = c.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&c.values).enumerate() {
            assert!(
                (g - w).abs() <= scale * 1e-6,
                "{:?} {} value {i}: {g} vs llama.cpp {w}",
                c.dtype,
                c.kind
            );
        }
    }
}

#[test]
fn repacks_keep_the_codes_and_rescaled_scales_move_little() {
    for c in cases() {
        let raw = RawTensor::new(c.dtype, c.rows, c.cols, &c.blocks).expect("whole blocks");
        let import = QTensor::import(c.dtype);
        let (Import::Exact(format) | Import::Rescaled(format)) = import else {
            assert!(QTensor::repack(&raw).is_err(), "{:?} repacked", c.dtype);
            continue;
        };
        let q = QTensor::repack(&raw).expect("repack");
        assert_eq!(q.format, format);
        let got = q.dequantize();
        match import {
            Import::Exact(_) => {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&c.values), "{:?} {}", c.dtype, c.kind);
            }
            _ => {
                // One f16 rounding of the scale and of the min: each moves a value by at most
                // 2⁻¹¹ of |scale·code| + |min| (plus f32 rounding).
                for (i, (g, w)) in got.iter().zip(&c.values).enumerate() {
                    let group = i / 32;
                    let scale = q.scales[group].to_f32().abs();
                    let min = q.mins.get(group).map_or(0.0, |m| m.to_f32().abs());
                    let code = (w.abs() + min) / scale.max(f32::MIN_POSITIVE);
                    let bound = (scale * code.min(127.0) + min) * (2.0f32.powi(-11) + 1e-6);
                    assert!(
                        (g - w).abs() <= bound,
                        "{:?} {} value {i}: {g} vs {w} (bound {bound})",
                        c.dtype,
                        c.kind
                    );
                }
            }
        }
    }
}

/// What loading a requantized type adds, relative to the file's own error against the
/// weights llama.cpp quantized: ‖import − source‖ / ‖file − source‖.
#[test]
fn requantized_imports_add_little_to_the_files_own_error() {
    // (method, bound for 8-bit imports of 5/6-bit files, for 4-bit imports of 2/3-bit files:
    // two 16-value sub-blocks share one 4-bit grid there). Measured with RTN: 1.011 Q5_1,
    // 0.999 Q5_K, 1.058 Q6_K, 1.019 Q2_K, 1.114 Q3_K; with search: 1.013, 0.998, 1.040, 1.017,
    // 1.061.
    for (method, q8_bound, q4_bound) in [
        (QuantMethod::Rtn, 1.07, 1.13),
        (QuantMethod::Search, 1.05, 1.08),
    ] {
        requantized_growth(method, q8_bound, q4_bound);
    }
}

fn requantized_growth(method: QuantMethod, q8_bound: f64, q4_bound: f64) {
    for c in cases() {
        let Import::Requantized(format) = QTensor::import(c.dtype) else {
            continue;
        };
        let raw = RawTensor::new(c.dtype, c.rows, c.cols, &c.blocks).expect("whole blocks");
        let q = quantize(
            &raw.to_f32(),
            c.rows,
            c.cols,
            format,
            &QuantizeOptions {
                method,
                importance: None,
            },
        )
        .expect("quantize");
        let got = q.dequantize();
        let against_file = rel_err(&got, &c.values);
        let Some(source) = &c.source else {
            continue;
        };
        let file_error = rel_err(&c.values, source);
        let import_error = rel_err(&got, source);
        let growth = import_error / file_error;
        eprintln!(
            "{method:?} {:?} -> {format}: file error {file_error:.4}, imported {import_error:.4} ({growth:.3}x), \
             change {against_file:.4}",
            c.dtype
        );
        let bound = if format == QuantFormat::Q8 {
            q8_bound
        } else {
            q4_bound
        };
        assert!(growth < bound, "{method:?} {:?}: {growth}", c.dtype);
    }
}
