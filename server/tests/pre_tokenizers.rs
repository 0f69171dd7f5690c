//! GGUF vocabularies tokenize as llama.cpp tokenizes them, for each pre-tokenizer family
//! lowbit supports. One byte-level BPE vocabulary (`data/tokenizer-bpe.gguf`), written again
//! with each `tokenizer.ggml.pre` value, and llama.cpp's ids for hard strings (digits,
//! contractions in both cases, whitespace runs, CRLF, non-Latin letters, emoji, special tokens)
//! with each (`data/llama_cpp_tokens.json`; both made by `data/llama_cpp_tokens.py`). Decoding
//! gives the text back. Likewise a SentencePiece vocabulary (`data/tokenizer-spm.gguf`,
//! `tokenizer.ggml.model = llama`, as Llama 2 and Mistral files carry) with and without BOS.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

use lowbit::model::gguf::{GgufFile, GgufWriter, MetaValue};
use lowbit::model::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Family {
    pre: String,
    cases: Vec<Case>,
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The vocabulary file with `tokenizer.ggml.pre` set to `pre`.
fn vocabulary_with_pre(dir: &Path, pre: &str) -> GgufFile {
    rewritten_without(dir, "tokenizer-bpe.gguf", pre, "", |w| {
        w.meta("tokenizer.ggml.pre", MetaValue::String(pre.into()));
    })
}

/// A copy of the data file `file` saved as `name`, without the key `drop_key` ("" for none),
/// its metadata then changed by `change` (a key set again keeps its place).
fn rewritten_without(
    dir: &Path,
    file: &str,
    name: &str,
    drop_key: &str,
    change: impl FnOnce(&mut GgufWriter),
) -> GgufFile {
    let base = GgufFile::open(&data(file)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata() {
        if k != drop_key {
            w.meta(k, v.clone());
        }
    }
    change(&mut w);
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, w.to_bytes()).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn each_pre_tokenizer_splits_as_llama_cpp_does() {
    let json = std::fs::read_to_string(data("llama_cpp_tokens.json")).unwrap();
    let families: Vec<Family> = serde_json::from_str(&json).unwrap();
    let pres: Vec<&str> = families.iter().map(|f| f.pre.as_str()).collect();
    assert_eq!(
        pres,
        ["qwen2", "llama-bpe", "smollm", "dbrx", "gpt-4o", "tekken"]
    );
    let dir = tempfile::tempdir().unwrap();
    for f in &families {
        let tok = Tokenizer::from_gguf(&vocabulary_with_pre(dir.path(), &f.pre)).unwrap();
        for case in &f.cases {
            let ids = tok.encode(&case.text, false).unwrap();
            assert_eq!(ids, case.ids, "{}: {:?}", f.pre, case.text);
            assert_eq!(tok.decode(&ids, false).unwrap(), case.text, "{}", f.pre);
        }
    }
    // The file names <|im_end|> its EOS; <|endoftext|> ends a turn too, as in llama.cpp.
    let tok = Tokenizer::from_gguf(&vocabulary_with_pre(dir.path(), "qwen2")).unwrap();
    let id = |s: &str| tok.encode(s, false).unwrap()[0];
    assert_eq!(tok.eos(), [id("<|im_end|>"), id("<|endoftext|>")]);

    // Files that do not say whether to add BOS get llama.cpp's default: yes for Llama 3's
    // family and SentencePiece, no for the other byte-level BPE families.
    for (file, pre, adds) in [
        ("tokenizer-bpe.gguf", "llama-bpe", true),
        ("tokenizer-bpe.gguf", "qwen2", false),
        ("tokenizer-bpe.gguf", "smollm", false),
        ("tokenizer-bpe.gguf", "dbrx", false),
        ("tokenizer-bpe.gguf", "gpt-4o", false),
        ("tokenizer-bpe.gguf", "tekken", true),
        ("tokenizer-spm.gguf", "default", true),
    ] {
        let name = format!("no-bos-key-{pre}");
        let gguf = rewritten_without(
            dir.path(),
            file,
            &name,
            "tokenizer.ggml.add_bos_token",
            |w| {
                w.meta("tokenizer.ggml.pre", MetaValue::String(pre.into()));
            },
        );
        assert_eq!(
            Tokenizer::from_gguf(&gguf).unwrap().adds_bos(),
            adds,
            "{file} {pre}"
        );
    }

    // Each family's split shows in some case's ids: a family read with another's split fails
    // (DBRX's split is Llama 3's; the two differ in BOS, above).
    for (i, a) in families.iter().enumerate() {
        for b in &families[i + 1..] {
            if (a.pre.as_str(), b.pre.as_str()) == ("llama-bpe", "dbrx") {
                continue;
            }
            let differ = a.cases.iter().zip(&b.cases).any(|(x, y)| x.ids != y.ids);
            assert!(differ, "{} and {} tokenize every case alike", a.pre, b.pre);
        }
    }
}

#[derive(serde::Deserialize)]
struct SpmCase {
    text: String,
    ids: Vec<u32>,
    ids_with_bos: Vec<u32>,
}

#[test]
fn a_sentencepiece_vocabulary_tokenizes_as_llama_cpp_does() {
    let json = std::fs::read_to_string(data("llama_cpp_spm_tokens.json")).unwrap();
    let cases: Vec<SpmCase> = serde_json::from_str(&json).unwrap();
    let tok = Tokenizer::from_gguf(&GgufFile::open(&data("tokenizer-spm.gguf")).unwrap()).unwrap();
    assert!(tok.adds_bos());
    for case in &cases {
        assert_eq!(
            tok.encode(&case.text, false).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
        assert_eq!(
            tok.encode(&case.text, true).unwrap(),
            case.ids_with_bos,
            "{:?} with BOS",
            case.text
        );
        // The leading space llama.cpp adds is not part of the text; special tokens are.
        let back = tok.decode(&case.ids, false).unwrap();
        if !case.text.starts_with(' ') && !case.text.contains("<|") && !case.text.contains("<s>") {
            assert_eq!(back, case.text, "{:?}", case.text);
        }
    }
    // Characters outside the pieces (CJK, emoji) went through the byte pieces.
    let cjk = cases.iter().find(|c| c.text.contains('東')).unwrap();
    let byte_pieces = cjk
        .ids
        .iter()
        .filter(|&&id| tok.token_text(id).is_some_and(|t| t.starts_with("<0x")))
        .count();
    assert!(byte_pieces >= 6, "{byte_pieces} byte pieces");
}
