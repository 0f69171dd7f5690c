//! Bad model files give errors that name the file, the field or tensor and (for GGUF) the byte
//! offset; never a panic or an out-of-bounds read.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_model::{TinyConfig, TinyModel};
use lowbit::model::gguf::{GgufFile, GgufWriter, MetaValue};
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::SourceDType;
use std::path::Path;
use std::sync::Arc;

fn tiny_gguf() -> Vec<u8> {
    let cfg = TinyConfig {
        layers: 1,
        vocab: 40,
        ..TinyConfig::default()
    };
    TinyModel::random(cfg, 11, true).gguf_bytes()
}

/// Parses and, if that succeeds, loads the model: either step may fail, neither may panic.
fn parse_and_load(bytes: Vec<u8>) -> Result<(), String> {
    let path = Path::new("/models/broken.gguf");
    let file = GgufFile::from_bytes(path, bytes).map_err(|e| e.to_string())?;
    let source = ModelSource::Gguf(file);
    Llama::load(
        &source,
        Arc::new(CpuBackend::new()),
        &QuantPolicy::parse("f32", None).unwrap(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn header_len(bytes: &[u8]) -> usize {
    let f = GgufFile::from_bytes(Path::new("x.gguf"), bytes.to_vec()).unwrap();
    f.tensors().iter().map(|t| t.offset as usize).min().unwrap()
}

#[test]
fn every_truncation_is_an_error_naming_file_and_offset() {
    let bytes = tiny_gguf();
    assert!(parse_and_load(bytes.clone()).is_ok());
    let header = header_len(&bytes);
    // Every cut inside the header, then every 97th byte of the data.
    let cuts = (0..header).chain((header..bytes.len()).step_by(97));
    for cut in cuts {
        let err = parse_and_load(bytes[..cut].to_vec()).expect_err(&format!("cut at {cut} parsed"));
        assert!(err.starts_with("/models/broken.gguf: "), "cut {cut}: {err}");
        assert!(err.contains("at byte "), "cut {cut}: {err}");
    }
}

#[test]
fn flipped_header_bytes_never_panic() {
    let bytes = tiny_gguf();
    let header = header_len(&bytes);
    for at in 0..header {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] ^= mask;
            if let Err(e) = parse_and_load(b) {
                assert!(
                    e.contains("broken.gguf") || e.contains("tokenizer") || e.contains("shape"),
                    "flip {at}: {e}"
                );
            }
        }
    }
}

#[test]
fn specific_corruptions_name_the_problem() {
    let bytes = tiny_gguf();
    let mut bad_magic = bytes.clone();
    bad_magic[0] = b'X';
    let e = parse_and_load(bad_magic).unwrap_err();
    assert!(e.contains("bad magic") && e.contains("at byte 0"), "{e}");

    let mut v1 = bytes.clone();
    v1[4] = 1;
    assert!(parse_and_load(v1).unwrap_err().contains("version 1"));

    let mut absurd = bytes.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = parse_and_load(absurd).unwrap_err();
    assert!(e.contains("tensor count") && e.contains("at byte 8"), "{e}");

    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()));
    w.tensor(
        "blk.0.ffn_up.weight",
        &[256, 2],
        SourceDType::F32,
        vec![0; 2048],
    );
    let mut i_quant = w.to_bytes();
    // Rewrite the tensor type (F32 = 0) to IQ2_XXS (16): the type field is the u32 before the
    // tensor's final u64 offset in the header.
    let name_at = i_quant
        .windows(19)
        .position(|s| s == b"blk.0.ffn_up.weight")
        .unwrap();
    let type_at = name_at + 19 + 4 + 16;
    i_quant[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let e = parse_and_load(i_quant).unwrap_err();
    assert!(
        e.contains("'blk.0.ffn_up.weight'")
            && e.contains("IQ2_XXS")
            && e.contains("Q4_K")
            && e.contains(&format!("at byte {type_at}")),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.tensor(
        "token_embd.weight",
        &[64, 4],
        SourceDType::F32,
        vec![0; 1024],
    );
    let mut past_end = w.to_bytes();
    past_end.truncate(past_end.len() - 4);
    let e = parse_and_load(past_end).unwrap_err();
    assert!(
        e.contains("'token_embd.weight'") && e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let tiny = TinyModel::random(TinyConfig::default(), 12, false);
    let dir = tempfile::tempdir().unwrap();
    tiny.write_hf_folder(dir.path(), 2);

    // A shard that lost a tensor listed in the index.
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut map = index["weight_map"].as_object().unwrap().clone();
    map.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        "model-00002-of-00002.safetensors".into(),
    );
    let moved = serde_json::json!({ "weight_map": map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        moved.to_string(),
    )
    .unwrap();
    let e = ModelSource::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight")
            && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );

    // A config whose FFN size disagrees with the tensors.
    let dir = tempfile::tempdir().unwrap();
    tiny.write_hf_folder(dir.path(), 1);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["intermediate_size"] = 128.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let source = ModelSource::open(dir.path()).unwrap();
    let e = Llama::load(
        &source,
        Arc::new(CpuBackend::new()),
        &QuantPolicy::parse("f32", None).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") || e.contains("blk.0.ffn_gate.weight"),
        "{e}"
    );
    assert!(e.contains("expected 128x64"), "{e}");

    // A config field of the wrong type.
    config["num_attention_heads"] = "four".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = ModelSource::open(dir.path())
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("'num_attention_heads'"),
        "{e}"
    );

    // No weights at all.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = ModelSource::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn version_2_files_parse_like_version_3() {
    let mut bytes = tiny_gguf();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(Path::new("v2.gguf"), bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensors().len(), 12);
    let mut v2 = tiny_gguf();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(parse_and_load(v2).is_ok());
}

/// A broken vocabulary is an error naming the file and the field, never a panic.
#[test]
fn broken_vocabularies_name_the_field() {
    use lowbit::model::gguf::{GgufFile, GgufWriter, MetaValue};
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, Option<MetaValue>, &str); 5] = [
        (
            "tokenizer-spm.gguf",
            "tokenizer.ggml.scores",
            None,
            "tokenizer.ggml.scores",
        ),
        (
            "tokenizer-spm.gguf",
            "tokenizer.ggml.scores",
            Some(MetaValue::Array(vec![MetaValue::F32(0.0); 3])),
            "tokenizer.ggml.scores",
        ),
        (
            "tokenizer-bpe.gguf",
            "tokenizer.ggml.merges",
            None,
            "tokenizer.ggml.merges",
        ),
        (
            "tokenizer-bpe.gguf",
            "tokenizer.ggml.model",
            Some(MetaValue::String("t5".into())),
            "'t5' is not supported",
        ),
        (
            "tokenizer-bpe.gguf",
            "tokenizer.ggml.pre",
            Some(MetaValue::String("nonesuch".into())),
            "pre-tokenizer 'nonesuch'",
        ),
    ];
    for (i, (file, key, value, want)) in cases.into_iter().enumerate() {
        let base = GgufFile::open(&data.join(file)).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in base.metadata() {
            if k != key {
                w.meta(k, v.clone());
            }
        }
        if let Some(v) = value {
            w.meta(key, v);
        }
        let path = dir.path().join(format!("broken-{i}.gguf"));
        std::fs::write(&path, w.to_bytes()).unwrap();
        let err = lowbit::model::Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want) && err.contains(&format!("broken-{i}.gguf")),
            "{key}: {err}"
        );
    }
}
