//! Speculative decoding by prompt lookup (vLLM's `ngram` method): a sequence whose last few
//! tokens occurred before in its prompt or output proposes the tokens that followed them
//! then, and one forward computes its next token and those drafts together. Its rows then
//! choose tokens in order, each as plain decoding would, until one differs from the draft it
//! predicts (scheduler_speculate.rs): the drafts the model agrees with are kept (their keys
//! and values are already written), the differing choice replaces the rest, and a fully
//! accepted draft earns one more token from its last row. The output is the one plain
//! decoding gives, token for token, because every row is computed exactly as a one-row decode
//! computes it (the kernels give a row the same result whatever else is in its batch) and
//! chosen with the same sampler state.
//!
//! Where it pays: outputs that copy their input (editing code, extraction, quoting a source,
//! summaries that reuse its phrases) emit several tokens per step for about the cost of one,
//! because a decode step reads every weight once whatever its row count. A rejected draft
//! costs its rows' compute; drafts are only proposed where an n-gram matched, and a
//! sequence's draft length follows its last accepted run (README, "Speculative decoding").

/// How sequences speculate; `tokens == 0` turns speculation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Draft tokens per step at most.
    pub tokens: usize,
    /// Shortest suffix of a sequence looked up.
    pub ngram_min: usize,
    /// Longest suffix looked up (longer ones are tried first).
    pub ngram_max: usize,
    /// No sequence speculates in a step that starts with more sequences running than this:
    /// a full batch is compute-bound, and rejected drafts would cost its other rows.
    pub max_running: usize,
}

impl SpeculativeConfig {
    /// Speculation off.
    pub const OFF: Self = Self {
        tokens: 0,
        ngram_min: 2,
        ngram_max: 4,
        max_running: 8,
    };

    /// Whether any sequence may speculate.
    pub fn enabled(&self) -> bool {
        self.tokens > 0 && self.ngram_max >= self.ngram_min.max(1)
    }
}

impl Default for SpeculativeConfig {
    fn default() -> Self {
        Self::OFF
    }
}

/// Up to `max` tokens that followed the latest earlier occurrence of the longest suffix of
/// `tokens` (between `cfg.ngram_min` and `cfg.ngram_max` tokens long) that occurred before;
/// empty when none did.
pub fn propose(tokens: &[u32], cfg: &SpeculativeConfig, max: usize) -> Vec<u32> {
    if max == 0 || !cfg.enabled() {
        return Vec::new();
    }
    let len = tokens.len();
    // (An earlier occurrence needs at least one token before the suffix.)
    for n in (cfg.ngram_min.max(1)..=cfg.ngram_max.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // The latest occurrence that ends before the suffix does: recent text predicts best
        // (a repeated line, the section being rewritten).
        let found = (0..len - n)
            .rev()
            .find(|&start| &tokens[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            return tokens[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: usize, max: usize) -> SpeculativeConfig {
        SpeculativeConfig {
            tokens: 5,
            ngram_min: min,
            ngram_max: max,
            max_running: 8,
        }
    }

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_suffix() {
        // "1 2 3" occurred twice; its latest occurrence was followed by 9 8.
        let t = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 2, 3];
        // Suffix (2, 3): latest earlier occurrence at 6, followed by 9 8 7 2 3.
        assert_eq!(propose(&t, &cfg(2, 4), 5), vec![9, 8, 7, 2, 3]);
        assert_eq!(propose(&t, &cfg(2, 4), 2), vec![9, 8]);
        // A longer suffix wins over a later short match.
        let t = [5, 6, 7, 1, 1, 9, 7, 5, 6, 7];
        assert_eq!(propose(&t, &cfg(1, 3), 3), vec![1, 1, 9]);
        assert_eq!(propose(&t, &cfg(1, 1), 3), vec![5, 6, 7]);
    }

    #[test]
    fn proposes_nothing_without_a_match_or_room() {
        let t = [1, 2, 3, 4, 5];
        assert!(propose(&t, &cfg(2, 4), 5).is_empty());
        assert!(propose(&[1, 2, 1, 2], &cfg(2, 4), 0).is_empty());
        assert!(propose(&[1, 2, 1, 2], &SpeculativeConfig::OFF, 3).is_empty());
        assert!(propose(&[], &cfg(1, 4), 3).is_empty());
        assert!(propose(&[7], &cfg(1, 4), 3).is_empty());
        // A match that runs up to the suffix itself proposes what overlaps it.
        assert_eq!(propose(&[4, 4, 4], &cfg(2, 2), 3), vec![4]);
    }
}
