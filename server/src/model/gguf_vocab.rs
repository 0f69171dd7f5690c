//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`), rebuilt with the `tokenizers`
//! crate so that it gives llama.cpp's ids (checked against llama.cpp in
//! `tests/pre_tokenizers.rs`):
//!
//! - `gpt2`: byte-level BPE from the vocabulary and merges, with the pre-tokenizer llama.cpp
//!   applies for the file's `pre` type (GPT-2's split, digits apart, Llama 3's, Qwen2's).
//! - `llama`: SentencePiece BPE (Llama 2, Mistral, TinyLlama) from the pieces and their
//!   scores. SentencePiece merges, at each step, the adjacent pair whose union scores
//!   highest; a BPE whose merges are every split of every piece into two pieces, ranked by the
//!   whole piece's score, does the same (Hugging Face's converter builds Llama's tokenizer so).
//!   Spaces become `▁`, each run of text gets a leading `▁` as llama.cpp gives it (after the
//!   start and after every special token, unless `add_space_prefix` is false), and characters
//!   missing from the pieces fall back to the `<0xXX>` byte pieces.
//!
//! Control and user-defined tokens are matched whole in the input (llama.cpp's
//! parse_special); BOS is added where the file asks (by default, as llama.cpp does).

use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};
use super::tokenizer::{tok_err, Tokenizer};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// llama.cpp's token types (`llama_token_type`).
mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Llama 3's pre-tokenizer split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o's split (o200k; llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT4O`: Phi-4-mini, Llama 4) as its
/// `tokenizer.json` writes it: a word keeps its case run and a trailing contraction, digits go
/// in threes, a punctuation run takes the newlines and slashes after it.
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral's Tekken split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_TEKKEN`: Mistral Nemo, Mistral
/// Small 3, Pixtral's text) as its `tokenizer.json` writes it: GPT-4o's word split without
/// contractions, single digits.
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Control tokens that end a turn in some model family (a subset of llama.cpp's list).
const END_OF_TURN: [&str; 8] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
];

/// SentencePiece's word-boundary mark, standing for a space.
const SPACE_MARK: &str = "\u{2581}";

/// The tokenizer of a GGUF file.
pub(super) fn tokenizer(gguf: &GgufFile) -> Result<Tokenizer> {
    let path = gguf.path().display().to_string();
    let field = |k: &str| {
        gguf.get(k)
            .ok_or_else(|| ModelError::field(&path, k, "missing"))
    };
    let model = field("tokenizer.ggml.model")?.as_str().unwrap_or("");
    let tokens_meta = field("tokenizer.ggml.tokens")?
        .as_array()
        .ok_or_else(|| ModelError::field(&path, "tokenizer.ggml.tokens", "not an array"))?;
    let tokens = tokens_meta
        .iter()
        .enumerate()
        .map(|(id, t)| {
            t.as_str().ok_or_else(|| {
                ModelError::field(
                    &path,
                    "tokenizer.ggml.tokens",
                    format!("entry {id} is not a string"),
                )
            })
        })
        .collect::<Result<Vec<&str>>>()?;
    let types: Vec<i64> = gguf
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| {
            a.iter()
                .map(|t| t.as_f64().map_or(token_type::NORMAL, |v| v as i64))
                .collect()
        })
        .unwrap_or_else(|| vec![token_type::NORMAL; tokens.len()]);
    let type_of = |id: usize| types.get(id).copied().unwrap_or(token_type::NORMAL);

    let mut inner = match model {
        "gpt2" => byte_level_bpe(gguf, &path, &tokens)?,
        "llama" => sentencepiece_bpe(gguf, &path, &tokens, &type_of)?,
        other => {
            return Err(ModelError::field(
                &path,
                "tokenizer.ggml.model",
                format!("'{other}' is not supported (gpt2 byte-level BPE and llama SentencePiece are); use the model's Hugging Face folder"),
            ))
        }
    };

    let special: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| matches!(type_of(id), token_type::CONTROL | token_type::USER_DEFINED))
        // Matched in the raw text, before the SentencePiece normalizer writes its `▁`s.
        .map(|(id, s)| {
            AddedToken::from(s.to_string(), type_of(id) == token_type::CONTROL).normalized(false)
        })
        .collect();
    inner.add_special_tokens(&special);

    let id = |k: &str| gguf.get(k).and_then(MetaValue::as_u64).map(|v| v as u32);
    let bos = id("tokenizer.ggml.bos_token_id");
    let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id")
        .into_iter()
        .chain(id("tokenizer.ggml.eot_token_id"))
        .collect();
    // Like llama.cpp, any control token named as an end of turn ends generation too: an
    // instruct model's file often names `<|endoftext|>` its EOS while its chats end with
    // `<|im_end|>` (Qwen), or the reverse.
    for (id, t) in tokens.iter().enumerate() {
        if type_of(id) == token_type::CONTROL
            && END_OF_TURN.contains(t)
            && !eos.contains(&(id as u32))
        {
            eos.push(id as u32);
        }
    }
    // Where the file does not say, llama.cpp adds BOS for SentencePiece and Llama 3's family.
    let pre = gguf.get("tokenizer.ggml.pre").and_then(MetaValue::as_str);
    let add_bos = gguf
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(model == "llama" || pre.is_some_and(merges_whole_words));
    if let (true, Some(b)) = (add_bos, bos) {
        let bos_text = tokens.get(b as usize).copied().unwrap_or("<s>").to_string();
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos_text} $A"))
            .and_then(|t| t.try_pair(format!("{bos_text} $A {bos_text} $B")))
            .map_err(tok_err)?
            .special_tokens(vec![(bos_text, b)])
            .build()
            .map_err(tok_err)?;
        inner.with_post_processor(Some(post));
    }
    let fim = match (
        id("tokenizer.ggml.fim_pre_token_id"),
        id("tokenizer.ggml.fim_suf_token_id"),
        id("tokenizer.ggml.fim_mid_token_id"),
    ) {
        (Some(prefix), Some(suffix), Some(middle)) => Some(super::tokenizer::FimTokens {
            prefix,
            suffix,
            middle,
        }),
        _ => None,
    };
    Ok(Tokenizer::new(inner, bos, eos)?.with_fim(fim))
}

/// The token → id map; a text that repeats maps to its last id, as in llama.cpp.
fn vocabulary(tokens: &[&str]) -> Vocab {
    let mut vocab = Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), id as u32);
    }
    vocab
}

/// GPT-2-style byte-level BPE.
fn byte_level_bpe(gguf: &GgufFile, path: &str, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let merges_meta = gguf
        .get("tokenizer.ggml.merges")
        .ok_or_else(|| ModelError::field(path, "tokenizer.ggml.merges", "missing"))?
        .as_array()
        .ok_or_else(|| ModelError::field(path, "tokenizer.ggml.merges", "not an array"))?;
    let mut merges = Vec::with_capacity(merges_meta.len());
    for (i, m) in merges_meta.iter().enumerate() {
        let Some((a, b)) = m.as_str().and_then(|s| s.split_once(' ')) else {
            return Err(ModelError::field(
                path,
                "tokenizer.ggml.merges",
                format!("entry {i} is not two tokens separated by a space"),
            ));
        };
        merges.push((a.to_string(), b.to_string()));
    }
    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let bpe = BPE::builder()
        .vocab_and_merges(vocabulary(tokens), merges)
        .ignore_merges(merges_whole_words(pre))
        .build()
        .map_err(|e| ModelError::field(path, "tokenizer.ggml.merges", e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer_for(pre, path)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// SentencePiece BPE from pieces and scores (see the module comment).
fn sentencepiece_bpe(
    gguf: &GgufFile,
    path: &str,
    tokens: &[&str],
    type_of: &dyn Fn(usize) -> i64,
) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f32> = gguf
        .get("tokenizer.ggml.scores")
        .ok_or_else(|| ModelError::field(path, "tokenizer.ggml.scores", "missing"))?
        .as_array()
        .ok_or_else(|| ModelError::field(path, "tokenizer.ggml.scores", "not an array"))?
        .iter()
        .map(|s| s.as_f64().unwrap_or(0.0) as f32)
        .collect();
    if scores.len() != tokens.len() || scores.iter().any(|s| !s.is_finite()) {
        return Err(ModelError::field(
            path,
            "tokenizer.ggml.scores",
            format!(
                "{} finite scores expected (one a token), got {}",
                tokens.len(),
                scores.len()
            ),
        ));
    }
    let vocab = vocabulary(tokens);
    // (merged piece's score, its id, left id, right id): highest score first; ties (never
    // within one file's scores in practice) in Hugging Face's order.
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                ranked.push((scores[id], id as u32, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    let merges = ranked
        .iter()
        .map(|&(_, _, l, r)| {
            (
                tokens[l as usize].to_string(),
                tokens[r as usize].to_string(),
            )
        })
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = (0..tokens.len()).find(|&id| type_of(id) == token_type::UNKNOWN) {
        builder = builder.unk_token(tokens[unk].to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| ModelError::field(path, "tokenizer.ggml.scores", e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);

    let space_prefix = gguf
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(MetaValue::as_bool)
        .unwrap_or(true);
    let spaces = Replace::new(" ", SPACE_MARK).map_err(tok_err)?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPACE_MARK.into())));
    }
    normalizers.push(NormalizerWrapper::Replace(spaces));
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPACE_MARK, " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// Pre-tokenizer names of Llama 3's family (its split).
fn is_llama3_family(pre: &str) -> bool {
    matches!(
        pre,
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral"
    )
}

/// Pre-tokenizers for which llama.cpp adds BOS by default and takes a word found whole in
/// the vocabulary as one token without merging (`ignore_merges`): Llama 3's family and
/// Tekken.
fn merges_whole_words(pre: &str) -> bool {
    is_llama3_family(pre) || pre == "tekken"
}

/// A regex split (each match its own piece), then the byte-level mapping.
fn split_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])))
}

/// The pre-tokenizer llama.cpp applies for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_for(pre: &str, path: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    Ok(match pre {
        // GPT-2's own split, built into the byte-level pre-tokenizer.
        "default" | "gpt-2" | "gpt2" | "olmo" | "phi-2" => byte_level(true),
        // Digits one at a time, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level(true)]))
        }
        p if is_llama3_family(p) => split_then_bytes(LLAMA3_SPLIT)?,
        "tekken" => split_then_bytes(TEKKEN_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT)?,
        // Llama 3's split without its BOS and whole-word rules (Phi-4, DBRX).
        "dbrx" | "smaug-bpe" => split_then_bytes(LLAMA3_SPLIT)?,
        "gpt-4o" | "llama4" => split_then_bytes(GPT4O_SPLIT)?,
        other => {
            return Err(ModelError::field(
                path,
                "tokenizer.ggml.pre",
                format!("pre-tokenizer '{other}' is not supported (default, gpt2, smollm, starcoder, llama-bpe, qwen2, dbrx, gpt-4o, tekken…)"),
            ))
        }
    })
}
