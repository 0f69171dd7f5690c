//! Text ↔ token ids, through the `tokenizers` crate.
//!
//! A Hugging Face folder brings its `tokenizer.json`. A GGUF file carries the vocabulary in
//! `tokenizer.ggml.*` metadata, from which `gguf_vocab.rs` rebuilds the equivalent tokenizer.

use super::error::{ModelError, Result};
use super::gguf::GgufFile;

/// A tokenizer with the model's special ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    adds_bos: bool,
}

pub(super) fn tok_err(e: impl std::fmt::Display) -> ModelError {
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

    /// Rebuilds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata
    /// (`gguf_vocab.rs`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        super::gguf_vocab::tokenizer(gguf)
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
