//! Incremental detokenization: the text each new token adds, never splitting a UTF-8
//! character.
//!
//! Decoding a token alone loses context (a leading space some tokenizers only produce after a
//! preceding token, bytes of one character spread over several byte-level tokens), so each
//! step decodes a short window ending at the new token and emits what it adds beyond the
//! window's previous text. While the text ends in U+FFFD (an incomplete character), nothing
//! is emitted: the next token completes it.

/// Turns token ids into text.
pub trait TextDecoder: Send + Sync {
    /// The text of `ids`, special tokens left out.
    fn decode(&self, ids: &[u32]) -> String;
}

impl TextDecoder for crate::model::Tokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        crate::model::Tokenizer::decode(self, ids, true).unwrap_or_default()
    }
}

/// Tokens of the prompt decoded along with the first generated ones, for context.
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// One sequence's incremental decoder over its token list.
#[derive(Debug, Clone)]
pub struct IncrementalDetok {
    /// Start of the decoding window.
    prefix_offset: usize,
    /// Tokens up to here have been turned into emitted text.
    read_offset: usize,
}

impl IncrementalDetok {
    /// A decoder for output that follows `prompt_len` prompt tokens.
    pub fn new(prompt_len: usize) -> Self {
        Self {
            prefix_offset: prompt_len.saturating_sub(PROMPT_CONTEXT_TOKENS),
            read_offset: prompt_len,
        }
    }

    /// The text that `tokens` (the whole sequence, the new token last) adds, possibly empty.
    pub fn step(&mut self, decoder: &dyn TextDecoder, tokens: &[u32]) -> String {
        let before = decoder.decode(&tokens[self.prefix_offset..self.read_offset]);
        let now = decoder.decode(&tokens[self.prefix_offset..]);
        if now.ends_with('\u{fffd}') {
            return String::new();
        }
        match now.get(before.len()..) {
            Some(delta) if now.len() > before.len() && now.starts_with(&before) => {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = tokens.len();
                delta
            }
            // No new visible text (a special token, or a token that only changed the
            // window's earlier text): advance once the window holds complete text.
            _ => String::new(),
        }
    }

    /// Whatever text is left once the sequence ends (an incomplete character included).
    pub fn finish(&mut self, decoder: &dyn TextDecoder, tokens: &[u32]) -> String {
        if self.read_offset >= tokens.len() {
            return String::new();
        }
        let before = decoder.decode(&tokens[self.prefix_offset..self.read_offset]);
        let now = decoder.decode(&tokens[self.prefix_offset..]);
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        match now.get(before.len()..) {
            Some(d) if now.starts_with(&before) => d.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A byte-level toy: token `i < 256` is byte `i`; decoding is lossy UTF-8, as a byte-level
    /// BPE decoder is.
    pub(crate) struct Bytes;
    impl TextDecoder for Bytes {
        fn decode(&self, ids: &[u32]) -> String {
            let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    #[test]
    fn multi_byte_characters_are_emitted_whole() {
        let text = "a é 東京 🚀!";
        let prompt = [b'>' as u32];
        let mut tokens = prompt.to_vec();
        let mut d = IncrementalDetok::new(prompt.len());
        let mut out = String::new();
        let mut pieces = Vec::new();
        for b in text.bytes() {
            tokens.push(u32::from(b));
            let piece = d.step(&Bytes, &tokens);
            assert!(!piece.contains('\u{fffd}'));
            if !piece.is_empty() {
                pieces.push(piece.clone());
            }
            out.push_str(&piece);
        }
        out.push_str(&d.finish(&Bytes, &tokens));
        assert_eq!(out, text);
        assert!(pieces.contains(&"🚀".to_string()));
    }

    #[test]
    fn special_tokens_add_nothing_and_an_unfinished_character_is_flushed_at_the_end() {
        let mut tokens = vec![b'x' as u32];
        let mut d = IncrementalDetok::new(1);
        tokens.push(300); // not text
        assert_eq!(d.step(&Bytes, &tokens), "");
        tokens.push(u32::from(b'h'));
        assert_eq!(d.step(&Bytes, &tokens), "h");
        tokens.push(0xE6); // first byte of a three-byte character
        assert_eq!(d.step(&Bytes, &tokens), "");
        assert_eq!(d.finish(&Bytes, &tokens), "\u{fffd}");
    }
}
