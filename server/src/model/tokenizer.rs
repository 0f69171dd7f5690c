//! Text ↔ token ids, through the `tokenizers` crate.
//!
//! A Hugging Face folder brings its `tokenizer.json`. A GGUF file carries the vocabulary in
//! `tokenizer.ggml.*` metadata; [`Tokenizer::from_gguf`] rebuilds the equivalent byte-level
//! BPE tokenizer from it, with the pre-tokenizer llama.cpp uses for that model's `pre` type.

use super::error::{ModelError, Result};
use super::gguf::{GgufFile, MetaValue};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// llama.cpp's token types (`llama_token_type`).
mod token_type {
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Llama 3's pre-tokenizer split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

/// A tokenizer with the model's special ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    adds_bos: bool,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer; `bos`/`eos` from the model's config.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        // Whether plain encoding adds BOS is the post-processor's business; ask it.
        let probe = inner.encode("a", true).map_err(tok_err)?;
        let adds_bos = bos.is_some() && probe.get_ids().first().copied() == bos;
        Ok(Self {
            inner,
            bos,
            eos,
            adds_bos,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &std::path::Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::file(path.display(), format!("cannot load tokenizer: {e}")))?;
        Self::new(inner, bos, eos)
    }

    /// Rebuilds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path().display().to_string();
        let get = |k: &str| {
            gguf.get(k)
                .ok_or_else(|| ModelError::field(&path, k, "missing"))
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::field(
                &path,
                "tokenizer.ggml.model",
                format!("'{model}' is not supported (gpt2 byte-level BPE is); use the model's Hugging Face folder"),
            ));
        }
        let tokens = get("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| ModelError::field(&path, "tokenizer.ggml.tokens", "not an array"))?;
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            let s = t.as_str().ok_or_else(|| {
                ModelError::field(
                    &path,
                    "tokenizer.ggml.tokens",
                    format!("entry {id} is not a string"),
                )
            })?;
            vocab.insert(s.to_string(), id as u32);
        }
        let merges_meta = get("tokenizer.ggml.merges")?
            .as_array()
            .ok_or_else(|| ModelError::field(&path, "tokenizer.ggml.merges", "not an array"))?;
        let mut merges = Vec::with_capacity(merges_meta.len());
        for (i, m) in merges_meta.iter().enumerate() {
            let pair = m.as_str().and_then(|s| s.split_once(' '));
            let Some((a, b)) = pair else {
                return Err(ModelError::field(
                    &path,
                    "tokenizer.ggml.merges",
                    format!("entry {i} is not two tokens separated by a space"),
                ));
            };
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::field(&path, "tokenizer.ggml.merges", e.to_string()))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        inner.with_pre_tokenizer(Some(pre_tokenizer_for(pre, &path)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control and user-defined tokens are matched whole in the input, as llama.cpp does
        // with parse_special.
        let types = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .unwrap_or(&[]);
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter_map(|(id, t)| {
                let ty = t.as_f64()? as i64;
                (ty == token_type::CONTROL || ty == token_type::USER_DEFINED)
                    .then(|| tokens.get(id).and_then(MetaValue::as_str))
                    .flatten()
                    .map(|s| AddedToken::from(s.to_string(), ty == token_type::CONTROL))
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
            let control =
                types.get(id).and_then(MetaValue::as_f64) == Some(token_type::CONTROL as f64);
            if control
                && t.as_str().is_some_and(|s| END_OF_TURN.contains(&s))
                && !eos.contains(&(id as u32))
            {
                eos.push(id as u32);
            }
        }
        // llama.cpp adds BOS by default for BPE vocabularies unless the file says otherwise.
        let add_bos = gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(true);
        if let (true, Some(b)) = (add_bos, bos) {
            let bos_text = tokens
                .get(b as usize)
                .and_then(MetaValue::as_str)
                .unwrap_or("<s>")
                .to_string();
            let post = TemplateProcessing::builder()
                .try_single(format!("{bos_text} $A"))
                .and_then(|t| t.try_pair(format!("{bos_text} $A {bos_text} $B")))
                .map_err(tok_err)?
                .special_tokens(vec![(bos_text, b)])
                .build()
                .map_err(tok_err)?;
            inner.with_post_processor(Some(post));
        }
        Self::new(inner, bos, eos)
    }

    /// Token ids of `text`; special-token text (`<|im_start|>`) becomes its token.
    /// `add_special` adds BOS where the model wants it (plain prompts, not chat templates,
    /// which write their own).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, optionally leaving out special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The BOS id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Ids that end generation.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// The text of one token id (special tokens included).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped tokenizer (for streaming decoders).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
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
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => split_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT)?,
        other => {
            return Err(ModelError::field(
                path,
                "tokenizer.ggml.pre",
                format!("pre-tokenizer '{other}' is not supported (default, gpt2, smollm, starcoder, llama-bpe, qwen2…)"),
            ))
        }
    })
}
