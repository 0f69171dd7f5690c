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
    fim: Option<FimTokens>,
    /// Control tokens decoded as text even where special tokens are left out: gpt-oss's
    /// harmony markers, which a chat reply's channels are read by (`api/reasoning.rs`).
    visible_controls: Vec<u32>,
}

/// gpt-oss's harmony format (the `o200k_harmony` vocabulary): a reply is messages
/// `<|channel|>NAME<|message|>TEXT<|end|>`, joined by `<|start|>assistant`, the last ended by
/// `<|return|>` (or `<|call|>` for a tool call).
pub const HARMONY_MARKERS: [&str; 5] = [
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
];

/// A code model's fill-in-the-middle tokens. A completion with a `suffix` is prompted
/// `[BOS] <prefix> text <suffix> suffix <middle>` and generates the middle (llama.cpp's
/// `/infill` order, "PSM").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
}

/// The names code models give their FIM tokens, as llama.cpp looks for them (Qwen2.5-Coder,
/// StarCoder/Granite, DeepSeek-Coder, CodeLlama, GLM-4.5, …); the first found is taken.
const FIM_NAMES: [[&str; 3]; 8] = [
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    ["<fim-prefix>", "<fim-suffix>", "<fim-middle>"],
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    [
        "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
        "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
        "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    ],
    ["<PRE>", "<SUF>", "<MID>"],
    ["\u{2581}<PRE>", "\u{2581}<SUF>", "\u{2581}<MID>"],
    ["<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"],
    ["<|prefix|>", "<|suffix|>", "<|middle|>"],
];

/// A code model's FIM padding, repository and file-separator tokens, which llama.cpp also
/// ends generation at, whatever their type (a completed middle is followed by one of them or
/// EOS).
const FIM_ENDS: [&str; 9] = [
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

impl FimTokens {
    /// The first complete set of FIM names found in the vocabulary.
    fn find(inner: &tokenizers::Tokenizer) -> Option<Self> {
        FIM_NAMES.iter().find_map(|[p, s, m]| {
            Some(Self {
                prefix: inner.token_to_id(p)?,
                suffix: inner.token_to_id(s)?,
                middle: inner.token_to_id(m)?,
            })
        })
    }

    /// The prompt that asks for the text between `prefix` and `suffix` (tokens without BOS),
    /// after `bos` where the model starts with one.
    pub fn prompt(&self, bos: Option<u32>, prefix: &[u32], suffix: &[u32]) -> Vec<u32> {
        let mut p = Vec::with_capacity(prefix.len() + suffix.len() + 4);
        p.extend(bos);
        p.push(self.prefix);
        p.extend_from_slice(prefix);
        p.push(self.suffix);
        p.extend_from_slice(suffix);
        p.push(self.middle);
        p
    }
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
        let fim = FimTokens::find(&inner);
        let mut eos = eos;
        let mut ends: Vec<u32> = FIM_ENDS
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        let harmony = ["<|channel|>", "<|message|>", "<|return|>"]
            .iter()
            .all(|t| inner.token_to_id(t).is_some());
        let mut visible_controls = Vec::new();
        if harmony {
            // As llama.cpp: a reply ends at `<|return|>` or `<|call|>`, not at the `<|end|>`
            // that closes its thinking before the answer.
            ends.extend(
                ["<|return|>", "<|call|>"]
                    .iter()
                    .filter_map(|t| inner.token_to_id(t)),
            );
            let end = inner.token_to_id("<|end|>");
            eos.retain(|&id| Some(id) != end);
            visible_controls = HARMONY_MARKERS
                .iter()
                .filter_map(|t| inner.token_to_id(t))
                .collect();
        }
        for id in ends {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        Ok(Self {
            inner,
            bos,
            eos,
            adds_bos,
            fim,
            visible_controls,
        })
    }

    /// Sets the FIM tokens a GGUF file names (`tokenizer.ggml.fim_*_token_id`), over the
    /// ones found by name.
    pub fn with_fim(mut self, fim: Option<FimTokens>) -> Self {
        let vocab = self.vocab_size();
        match fim {
            Some(f)
                if [f.prefix, f.suffix, f.middle]
                    .iter()
                    .all(|&id| (id as usize) < vocab) =>
            {
                self.fim = Some(f);
            }
            Some(f) => tracing::warn!(
                "tokenizer.ggml.fim_*_token_id {f:?} lie outside the vocabulary of {vocab}: ignored"
            ),
            None => {}
        }
        self
    }

    /// The fill-in-the-middle tokens, if the model has them.
    pub fn fim(&self) -> Option<FimTokens> {
        self.fim
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

    /// Text of `ids`, optionally leaving out special tokens (but the harmony markers of
    /// [`HARMONY_MARKERS`], which a gpt-oss reply is read by).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if !skip_special || self.visible_controls.is_empty() {
            return self.inner.decode(ids, skip_special).map_err(tok_err);
        }
        let mut text = String::new();
        for run in ids.split_inclusive(|id| self.visible_controls.contains(id)) {
            let (marker, plain) = match run.split_last() {
                Some((last, rest)) if self.visible_controls.contains(last) => (Some(*last), rest),
                _ => (None, run),
            };
            text += &self.inner.decode(plain, true).map_err(tok_err)?;
            if let Some(m) = marker {
                text += &self.inner.id_to_token(m).unwrap_or_default();
            }
        }
        Ok(text)
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
