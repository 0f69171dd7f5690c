//! Structured outputs: a choice constrained to a JSON schema (OpenAI's `response_format`), a
//! regular expression or a list of strings. The constraint is compiled once per request to a
//! grammar (llguidance: an Earley parser over a derivative-based lexer, what vLLM, SGLang and
//! llama.cpp use), and before each token of a choice the grammar gives the set of tokens that
//! keep the output a prefix of some valid one; the others get −∞ before sampling, so the
//! sampler's temperature, top-k and top-p act on the allowed tokens alone.
//!
//! Why a library: computing token masks fast over a 50k–250k vocabulary takes a token trie
//! walked against the lexer's states, with the lexer built lazily from regex derivatives;
//! llguidance does exactly that (≈ 50 µs a token) and compiles JSON schemas (`$ref`, `anyOf`,
//! formats, lengths) to its grammars. lowbit writes only the seam: the vocabulary's bytes,
//! the masking of a logits row, and the end of a choice.

use crate::model::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory, TokenParser};
use std::sync::{Arc, OnceLock};

/// What a choice's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// A JSON value valid under this JSON schema (`{"type": "object"}`: any object).
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of a context-free grammar in llguidance's Lark syntax (`start: …`).
    Lark(String),
}

/// Why a format could not be compiled (the request's fault: a 400).
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The schema, expression or choices are invalid or unsupported (the message says which).
    #[error("{0}")]
    Invalid(String),
    /// The model's tokenizer cannot be turned into the byte vocabulary grammars need.
    #[error("structured outputs are not available for this model's tokenizer: {0}")]
    Tokenizer(String),
}

/// JSON is written as Python's `json.dumps` writes it (`", "`, `": "`, no other whitespace)
/// unless the schema's own `x-guidance` says otherwise: with free whitespace a small model
/// can fill `max_tokens` with newlines between two braces.
fn compact_json_options() -> JsonCompileOptions {
    JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        ..JsonCompileOptions::default()
    }
}

/// `schema` with the compact layout of [`compact_json_options`] unless it sets its own
/// (`x-guidance`): for a schema inside a Lark grammar (`%json {…}`).
pub fn compact_json(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object() {
        if !obj.contains_key("x-guidance") {
            compact_json_options().apply_to(&mut schema);
        }
    }
    schema
}

/// The model's vocabulary as bytes, for llguidance: each token's bytes in a trie, and the
/// model's own tokenizer for the text llguidance tokenizes itself (forced prefixes).
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Option<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie
            .tokenize_with_greedy_fallback(s, |text| match &self.tokenizer {
                Some(t) => t.encode(text, false).unwrap_or_default(),
                None => self.trie.greedy_tokenize(text.as_bytes()),
            })
    }
}

/// Compiles output formats for one model; built on first use (≈ 0.2 s for a 49k vocabulary:
/// the trie and llguidance's per-lexeme slices), shared by every request.
pub struct Grammars {
    source: VocabularySource,
    factory: OnceLock<Result<ParserFactory, String>>,
}

enum VocabularySource {
    Tokenizer(Box<Tokenizer>),
    /// Each token's bytes and the end-of-sequence ids (tests' tiny vocabularies).
    Bytes(Vec<Vec<u8>>, Vec<u32>),
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("built", &self.factory.get().is_some())
            .finish()
    }
}

impl Grammars {
    /// Grammars over `tokenizer`'s vocabulary (its end-of-sequence ids end a choice).
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self {
            source: VocabularySource::Tokenizer(Box::new(tokenizer)),
            factory: OnceLock::new(),
        }
    }

    /// Grammars over a vocabulary given as each token's bytes (a leading 0xFF marks a special
    /// token, which no grammar emits), with these end-of-sequence ids.
    pub fn from_token_bytes(tokens: Vec<Vec<u8>>, eos: Vec<u32>) -> Self {
        Self {
            source: VocabularySource::Bytes(tokens, eos),
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&ParserFactory, GrammarError> {
        self.factory
            .get_or_init(|| self.build().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| GrammarError::Tokenizer(e.clone()))
    }

    fn build(&self) -> anyhow::Result<ParserFactory> {
        let (bytes, eos, tokenizer) = match &self.source {
            VocabularySource::Tokenizer(t) => {
                let json: serde_json::Value = serde_json::from_str(
                    &t.inner()
                        .to_string(false)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                )?;
                let mut bytes = llguidance::token_bytes_from_tokenizer_json(&json)?;
                bytes.resize(bytes.len().max(t.vocab_size()), Vec::new());
                (bytes, t.eos().to_vec(), Some((**t).clone()))
            }
            VocabularySource::Bytes(b, eos) => (b.clone(), eos.clone(), None),
        };
        let Some(&first_eos) = eos.first() else {
            anyhow::bail!("the model has no end-of-sequence token to end a constrained choice");
        };
        let mut bytes = bytes;
        // Ids without text (gaps, padding) become special tokens no grammar allows.
        for (id, b) in bytes.iter_mut().enumerate() {
            if b.is_empty() {
                b.push(TokTrie::SPECIAL_TOKEN_MARKER);
                b.extend_from_slice(format!("<[{id}]>").as_bytes());
            }
        }
        let info = TokRxInfo::new(bytes.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &bytes).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)?;
        // Problems are errors returned to the request, not lines on the server's stderr.
        factory.quiet();
        Ok(factory)
    }

    /// Compiles `format` (milliseconds for common schemas; bounded by llguidance's limits):
    /// an error names what is wrong with it.
    pub fn compile(&self, format: &OutputFormat) -> Result<Grammar, GrammarError> {
        let factory = self.factory()?;
        let grammar = match format {
            OutputFormat::JsonSchema(schema) => {
                if !schema.is_object() {
                    return Err(GrammarError::Invalid(
                        "the JSON schema must be an object".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(compact_json(schema.clone()))
            }
            OutputFormat::Regex(rx) => TopLevelGrammar::from_regex(rx),
            OutputFormat::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
            OutputFormat::Choice(options) => {
                if options.is_empty() {
                    return Err(GrammarError::Invalid("no choices given".into()));
                }
                // Lark string literals are JSON strings: no escaping of our own.
                let literals: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::Value::from(o.as_str()).to_string())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", literals.join(" | ")))
            }
        };
        // llguidance turns its own panics into errors in the matcher, not while compiling.
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            factory.create_parser(grammar)
        }))
        .map_err(|_| GrammarError::Invalid("the grammar could not be compiled".into()))?
        .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        Ok(Grammar { parser })
    }
}

/// A compiled format, not yet started: each choice starts its own [`Constraint`] from it.
#[derive(Clone)]
pub struct Grammar {
    parser: TokenParser,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammar")
    }
}

impl Grammar {
    /// A constraint at the start of the output.
    pub fn start(&self) -> Constraint {
        Constraint {
            matcher: Matcher::new(Ok(self.parser.clone())),
            masked: Vec::new(),
        }
    }
}

/// One choice's position in its grammar.
pub struct Constraint {
    matcher: Matcher,
    /// The last masked row (a vocabulary's worth, reused).
    masked: Vec<f32>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// `logits` with every token the grammar does not allow next set to −∞ (also ids past
    /// the vocabulary, such as a model's padding rows); an error if it allows none.
    pub fn mask(&mut self, logits: &[f32]) -> Result<&[f32], String> {
        let allowed = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        self.masked.clear();
        self.masked.extend(logits.iter().enumerate().map(|(t, &l)| {
            if t < allowed.len() && allowed.is_allowed(t as TokenId) {
                l
            } else {
                f32::NEG_INFINITY
            }
        }));
        Ok(&self.masked)
    }

    /// Whether the grammar allows `token` next: a few lexer steps on its bytes, where a mask
    /// walks the whole vocabulary's trie.
    pub fn allows(&mut self, token: u32) -> bool {
        self.matcher
            .validate_tokens(&[token])
            .is_ok_and(|valid| valid == 1)
    }

    /// Advances past the chosen `token`; true once the output is complete (nothing may follow
    /// but the end of the sequence) or the grammar failed, either way the choice ends.
    pub fn accept(&mut self, token: u32) -> bool {
        if let Err(e) = self.matcher.consume_token(token) {
            tracing::warn!("structured output ended by its grammar: {e}");
            return true;
        }
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character of `chars`, then `<eos>` (id 0 is the end of sequence).
    fn tiny(chars: &str) -> Grammars {
        let mut bytes = vec![b"\xff<eos>".to_vec()];
        bytes.extend(chars.chars().map(|c| c.to_string().into_bytes()));
        Grammars::from_token_bytes(bytes, vec![0])
    }

    fn allowed(c: &mut Constraint, n: usize) -> Vec<usize> {
        let out = c.mask(&vec![0.0; n]).unwrap();
        (0..n).filter(|&t| out[t] == 0.0).collect()
    }

    #[test]
    fn a_choice_allows_only_its_strings_and_ends_with_them() {
        // Tokens: 1 'a', 2 'b', 3 'c', 4 'x'.
        let g = tiny("abcx");
        let grammar = g
            .compile(&OutputFormat::Choice(vec!["ab".into(), "ac".into()]))
            .unwrap();
        let mut c = grammar.start();
        assert_eq!(allowed(&mut c, 6), vec![1]);
        assert!(!c.accept(1));
        assert_eq!(allowed(&mut c, 6), vec![2, 3]);
        assert!(c.accept(3), "\"ac\" is complete: the choice ends");
    }

    #[test]
    fn json_is_compact_and_follows_the_schema() {
        let g = tiny("{}\":, a1");
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a"],
            "additionalProperties": false
        });
        let grammar = g.compile(&OutputFormat::JsonSchema(schema)).unwrap();
        let mut c = grammar.start();
        // {"a": 1}
        for (ch, t) in [
            ('{', 1),
            ('"', 3),
            ('a', 7),
            ('"', 3),
            (':', 4),
            (' ', 6),
            ('1', 8),
        ] {
            let ok = allowed(&mut c, 9);
            assert!(ok.contains(&t), "{ch} at {ok:?}");
            assert!(!c.accept(t as u32));
        }
        // A second digit or the closing brace; no whitespace.
        assert_eq!(allowed(&mut c, 9), vec![2, 8]);
        assert!(c.accept(2));
    }

    #[test]
    fn a_token_is_allowed_exactly_when_the_mask_keeps_it() {
        let chars = "{}\":, a1";
        let g = tiny(chars);
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}},
            "required": ["a"], "additionalProperties": false});
        let grammar = g.compile(&OutputFormat::JsonSchema(schema)).unwrap();
        let mut c = grammar.start();
        // Along {"a": 1}, then at its end (where only the brace, a digit or nothing follow).
        for next in [1u32, 3, 7, 3, 4, 6, 8, 2] {
            let kept = allowed(&mut c, chars.len() + 1);
            for t in 0..=chars.len() as u32 {
                assert_eq!(c.allows(t), kept.contains(&(t as usize)), "token {t}");
            }
            if c.accept(next) {
                break;
            }
        }
    }

    #[test]
    fn a_lark_grammar_constrains_like_its_rules() {
        // Tokens: 1 'a', 2 'b', 3 '('.
        let g = tiny("ab(");
        let grammar = g
            .compile(&OutputFormat::Lark(
                "start: \"(\" x \"b\"\nx: \"a\"+".into(),
            ))
            .unwrap();
        let mut c = grammar.start();
        assert_eq!(allowed(&mut c, 5), vec![3]);
        assert!(!c.accept(3));
        assert_eq!(allowed(&mut c, 5), vec![1]);
        assert!(!c.accept(1));
        assert_eq!(allowed(&mut c, 5), vec![1, 2]);
        assert!(c.accept(2));
        assert!(g
            .compile(&OutputFormat::Lark("start: nope".into()))
            .is_err());
    }

    #[test]
    fn bad_formats_are_errors_that_say_why() {
        let g = tiny("ab");
        let bad = g.compile(&OutputFormat::JsonSchema(
            serde_json::json!({"type": "nope"}),
        ));
        assert!(matches!(bad, Err(GrammarError::Invalid(_))), "{bad:?}");
        let not_object = g.compile(&OutputFormat::JsonSchema(serde_json::json!(true)));
        assert!(matches!(not_object, Err(GrammarError::Invalid(_))));
        assert!(g.compile(&OutputFormat::Regex("(".into())).is_err());
        assert!(g.compile(&OutputFormat::Choice(vec![])).is_err());
    }
}
