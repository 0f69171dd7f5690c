//! Stop strings: matched across token boundaries on the generated text; text that could still
//! become a stop string is held back, and a stop string is never emitted.

/// One sequence's stop-string matcher.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet emitted because it may be the start of a stop string.
    pending: String,
}

/// What the matcher lets out after some new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to emit now.
    pub text: String,
    /// A stop string matched: generation ends and `text` is the last of it.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Takes new text; returns what can be emitted.
    pub fn push(&mut self, text: &str) -> StopOutput {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutput {
                text: std::mem::take(&mut self.pending),
                stopped: false,
            };
        }
        // The earliest match wins (for two matches at the same place, the longer one).
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutput {
                text,
                stopped: true,
            };
        }
        // Hold back the longest suffix that begins some stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let rest = self.pending.split_off(hold);
        let text = std::mem::replace(&mut self.pending, rest);
        StopOutput {
            text,
            stopped: false,
        }
    }

    /// Takes new text without matching it (vLLM's `min_tokens`: no stop before that many
    /// tokens); returns it with whatever was held back.
    pub fn pass(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        std::mem::take(&mut self.pending)
    }

    /// The held-back text, once generation has ended for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Vec<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let (mut out, mut emitted) = (String::new(), Vec::new());
        for p in pieces {
            let o = m.push(p);
            emitted.push(o.text.clone());
            out.push_str(&o.text);
            if o.stopped {
                return (out, true, emitted);
            }
        }
        out.push_str(&m.flush());
        (out, false, emitted)
    }

    #[test]
    fn stop_across_token_boundaries_is_never_emitted() {
        let (out, stopped, emitted) =
            run(&["\n\nUser:"], &["Hi", " there", "\n", "\nUs", "er:", " x"]);
        assert!(stopped);
        assert_eq!(out, "Hi there");
        // Held back while it could match.
        assert_eq!(emitted, ["Hi", " there", "", "", ""]);
    }

    #[test]
    fn held_text_is_released_when_it_cannot_match_any_more() {
        let (out, stopped, emitted) = run(&["END"], &["the E", "N", "d of it"]);
        assert!(!stopped);
        assert_eq!(out, "the ENd of it");
        assert_eq!(emitted, ["the ", "", "ENd of it"]);
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        let (out, stopped, _) = run(&["東京", "b"], &["a東", "京b"]);
        assert!(stopped);
        assert_eq!(out, "a");
        let (out, stopped, _) = run(&[], &["x", "y"]);
        assert_eq!((out.as_str(), stopped), ("xy", false));
    }
}
