//! Reasoning models (Qwen3, DeepSeek-R1 and its distills, QwQ) think between `<think>` and
//! `</think>` before they answer. As vLLM's reasoning parsers and llama-server do, a chat
//! reply is split: the thinking goes to `reasoning_content`, the answer to `content`.
//!
//! The thinking starts where the reply starts with `<think>` (Qwen3) or, when the rendered
//! prompt already ends with an open `<think>` (DeepSeek-R1's template), at the first token; it
//! ends at `</think>`, and the whitespace after it is dropped. A reply that never thinks is
//! all content, unchanged; one that is cut off while thinking is all reasoning. Streamed, the
//! split holds back only what could still be the start of a tag.
//!
//! gpt-oss writes OpenAI's harmony format instead: a reply is messages
//! `<|channel|>NAME<|message|>TEXT<|end|>` joined by `<|start|>assistant` (the tokenizer keeps
//! these markers in the text: `model/tokenizer.rs`). The `analysis` channel's text is the
//! reasoning, every other channel's (`final`, a `commentary` preamble) the content; the
//! markers and headers are dropped. Where the request's tools are read in harmony
//! (`api/tool_harmony.rs`), a message addressed `to=` a function is a call, not content.

/// Opens the thinking.
pub const OPEN: &str = "<think>";
/// Closes it.
pub const CLOSE: &str = "</think>";
/// Opens a harmony message's header (gpt-oss).
pub(crate) const CHANNEL: &str = "<|channel|>";
/// Ends the header.
pub(crate) const MESSAGE: &str = "<|message|>";
/// Ends a message.
pub(crate) const END: &str = "<|end|>";
/// Starts the next message of the reply.
const NEXT: &str = "<|start|>assistant";

/// Which reasoning parser the server applies (`--reasoning-parser`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningParser {
    /// Split where the model's chat template writes `</think>`.
    Auto,
    /// Never split: the thinking stays in `content`.
    None,
    /// vLLM's names; both are the tag split above.
    Qwen3,
    #[value(name = "deepseek_r1")]
    DeepseekR1,
}

impl ReasoningParser {
    /// Whether chats with a model of this template are split.
    pub fn splits(self, template_source: Option<&str>) -> bool {
        match self {
            Self::Auto => template_source.is_some_and(|t| t.contains(CLOSE) || t.contains(CHANNEL)),
            Self::None => false,
            Self::Qwen3 | Self::DeepseekR1 => true,
        }
    }
}

/// Whether a rendered prompt leaves the model inside an open `<think>`.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// Where a harmony message's text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Reasoning,
    Content,
    Call,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: it may still open with `<think>`.
    Start,
    Reasoning,
    /// Just after `</think>`: whitespace is dropped.
    Closed,
    Content,
    /// Harmony: a message's header, up to `<|message|>`.
    Header,
    /// Harmony: a message's text, up to `<|end|>`: reasoning (`analysis`), content, or a
    /// call's arguments (a message addressed `to=` a function: read by the tool syntax, not
    /// content).
    Body {
        part: Part,
    },
    /// Harmony: between messages, where `<|start|>assistant` comes.
    Between,
}

/// What a piece of the reply adds to each part.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parts {
    pub reasoning: String,
    pub content: String,
}

/// Splits one reply as it grows.
#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    state: State,
    /// Text not yet given out: leading whitespace, or what may be the start of a tag.
    pending: String,
    thought: bool,
    /// Harmony messages addressed `to=` a function are calls read apart (not content).
    calls_apart: bool,
}

impl ReasoningSplit {
    /// A reply to a prompt that does (`true`) or does not leave the thinking open.
    pub fn new(prompt_opens: bool) -> Self {
        Self {
            state: if prompt_opens {
                State::Reasoning
            } else {
                State::Start
            },
            pending: String::new(),
            thought: prompt_opens,
            calls_apart: false,
        }
    }

    /// The same, leaving out of the content the harmony messages addressed to a function
    /// (where the request's calls are read in harmony: `api/tool_harmony.rs`).
    pub fn reading_calls(mut self, calls_apart: bool) -> Self {
        self.calls_apart = calls_apart;
        self
    }

    /// Whether the reply has thought (its `reasoning_content` is not null).
    pub fn thought(&self) -> bool {
        self.thought
    }

    /// Takes the next piece of the reply.
    pub fn push(&mut self, text: &str) -> Parts {
        self.pending.push_str(text);
        let mut out = Parts::default();
        loop {
            match self.state {
                State::Start => {
                    let rest = self.pending.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.pending = after.to_string();
                        self.state = State::Reasoning;
                        self.thought = true;
                    } else if rest.starts_with(CHANNEL) {
                        self.pending = rest.to_string();
                        self.state = State::Header;
                    } else if rest.is_empty() || OPEN.starts_with(rest) || CHANNEL.starts_with(rest)
                    {
                        return out;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning => match self.pending.find(CLOSE) {
                    Some(i) => {
                        out.reasoning.push_str(&self.pending[..i]);
                        self.pending.drain(..i + CLOSE.len());
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = partial_tag_len(&self.pending, CLOSE);
                        let give = self.pending.len() - keep;
                        out.reasoning.extend(self.pending.drain(..give));
                        return out;
                    }
                },
                State::Closed => {
                    let rest = self.pending.trim_start();
                    if rest.is_empty() {
                        self.pending.clear();
                        return out;
                    }
                    self.pending = rest.to_string();
                    self.state = State::Content;
                }
                State::Content => {
                    out.content.push_str(&self.pending);
                    self.pending.clear();
                    return out;
                }
                State::Header => {
                    let Some(i) = self.pending.find(MESSAGE) else {
                        return out;
                    };
                    // `<|channel|>NAME`, anywhere in the header: a recipient (` to=…`) may come
                    // before or after it.
                    let header = &self.pending[..i];
                    let channel = header
                        .find(CHANNEL)
                        .map_or("", |at| &header[at + CHANNEL.len()..])
                        .split(|c: char| c.is_whitespace() || c == '<')
                        .next()
                        .unwrap_or("");
                    let addressed = header.contains(" to=") || header.starts_with("to=");
                    let part = if addressed && self.calls_apart {
                        Part::Call
                    } else if channel == "analysis" {
                        Part::Reasoning
                    } else {
                        Part::Content
                    };
                    self.thought |= part == Part::Reasoning;
                    self.pending.drain(..i + MESSAGE.len());
                    self.state = State::Body { part };
                }
                State::Body { part } => {
                    let mut call = String::new();
                    let part = match part {
                        Part::Reasoning => &mut out.reasoning,
                        Part::Content => &mut out.content,
                        Part::Call => &mut call,
                    };
                    match self.pending.find(END) {
                        Some(i) => {
                            part.push_str(&self.pending[..i]);
                            self.pending.drain(..i + END.len());
                            self.state = State::Between;
                        }
                        None => {
                            let keep = partial_tag_len(&self.pending, END);
                            let give = self.pending.len() - keep;
                            part.extend(self.pending.drain(..give));
                            return out;
                        }
                    }
                }
                State::Between => {
                    let rest = self.pending.trim_start();
                    if let Some(after) = rest.strip_prefix(NEXT) {
                        self.pending = after.to_string();
                        self.state = State::Header;
                    } else if rest.starts_with(CHANNEL) {
                        self.pending = rest.to_string();
                        self.state = State::Header;
                    } else if rest.is_empty() || NEXT.starts_with(rest) || CHANNEL.starts_with(rest)
                    {
                        return out;
                    } else {
                        // Not harmony after all: the rest is the answer.
                        self.pending = rest.to_string();
                        self.state = State::Content;
                    }
                }
            }
        }
    }

    /// The end of the reply: what was held back goes where it stands.
    pub fn finish(&mut self) -> Parts {
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Reasoning => Parts {
                reasoning: rest,
                content: String::new(),
            },
            State::Body {
                part: Part::Reasoning,
            } => Parts {
                reasoning: rest,
                content: String::new(),
            },
            // An unfinished header, the markup between messages and a call are not text.
            State::Closed | State::Header | State::Between | State::Body { part: Part::Call } => {
                Parts::default()
            }
            State::Start
            | State::Content
            | State::Body {
                part: Part::Content,
            } => Parts {
                reasoning: String::new(),
                content: rest,
            },
        }
    }

    /// The last piece of the reply: [`ReasoningSplit::push`], then [`ReasoningSplit::finish`].
    pub fn push_last(&mut self, text: &str) -> Parts {
        let mut parts = self.push(text);
        let end = self.finish();
        parts.reasoning.push_str(&end.reasoning);
        parts.content.push_str(&end.content);
        parts
    }

    /// A whole reply: its reasoning (`None` when it did not think) and its content.
    pub fn split(prompt_opens: bool, text: &str) -> (Option<String>, String) {
        Self::split_reading_calls(prompt_opens, false, text)
    }

    /// [`ReasoningSplit::split`], harmony calls apart where `calls_apart`.
    pub fn split_reading_calls(
        prompt_opens: bool,
        calls_apart: bool,
        text: &str,
    ) -> (Option<String>, String) {
        let mut s = Self::new(prompt_opens).reading_calls(calls_apart);
        let parts = s.push_last(text);
        (s.thought.then_some(parts.reasoning), parts.content)
    }
}

/// Length of the longest end of `text` that is a proper start of `tag` (held back, since the
/// next piece may complete the tag).
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && tag.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `n` characters and joins what comes out.
    fn streamed(prompt_opens: bool, text: &str, n: usize) -> (String, String, bool) {
        let mut s = ReasoningSplit::new(prompt_opens);
        let chars: Vec<char> = text.chars().collect();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for piece in chars.chunks(n) {
            let p = s.push(&piece.iter().collect::<String>());
            reasoning += &p.reasoning;
            content += &p.content;
        }
        let p = s.finish();
        (reasoning + &p.reasoning, content + &p.content, s.thought())
    }

    /// `text` splits into `reasoning` and `content` whole and streamed in every piece size.
    fn splits_alike(opens: bool, text: &str, reasoning: Option<&str>, content: &str) {
        let (r, c) = ReasoningSplit::split(opens, text);
        assert_eq!((r.as_deref(), c.as_str()), (reasoning, content), "{text:?}");
        for n in [1, 2, 3, 5, 8, 100] {
            let (r, c, thought) = streamed(opens, text, n);
            assert_eq!(thought, reasoning.is_some(), "{text:?} by {n}");
            assert_eq!(
                (r.as_str(), c.as_str()),
                (reasoning.unwrap_or(""), content),
                "{text:?} by {n}"
            );
        }
    }

    /// gpt-oss's harmony replies: the analysis channel is the reasoning, the others' text the
    /// content, the markers dropped; whole and in every piece size.
    #[test]
    fn a_harmony_reply_splits_by_channel() {
        let cases: [(&str, Option<&str>, &str); 7] = [
            (
                "<|channel|>analysis<|message|>User says hi. <b><|end|><|start|>assistant\
                 <|channel|>final<|message|>Hello <|en!",
                Some("User says hi. <b>"),
                "Hello <|en!",
            ),
            (
                "<|channel|>final<|message|>Just the answer",
                None,
                "Just the answer",
            ),
            ("<|channel|>analysis<|message|>cut off", Some("cut off"), ""),
            (
                "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary\
                 <|message|>Let me check. <|end|><|start|>assistant<|channel|>final<|message|>Done",
                Some("a"),
                "Let me check. Done",
            ),
            (
                "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}",
                None,
                "{}",
            ),
            (
                "<|channel|>analysis<|message|>look<|end|><|channel|>final<|message|>up",
                Some("look"),
                "up",
            ),
            (
                "<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.f\
                 <|channel|>commentary json<|message|>{\"a\": 1}",
                Some("x"),
                "{\"a\": 1}",
            ),
        ];
        for (text, reasoning, content) in cases {
            splits_alike(false, text, reasoning, content);
        }
        // Where the request's calls are read in harmony, a call is not content.
        let call = "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>commentary \
                    to=functions.f <|constrain|>json<|message|>{\"a\": 1}";
        assert_eq!(
            ReasoningSplit::split_reading_calls(false, true, call),
            (Some("x".to_string()), String::new())
        );
        let mut s = ReasoningSplit::new(false).reading_calls(true);
        let streamed: Vec<Parts> = call.split_inclusive('>').map(|p| s.push(p)).collect();
        assert!(streamed.iter().all(|p| p.content.is_empty()));
        let harmony = "{{- '<|start|>assistant<|channel|>final<|message|>' }}";
        assert!(ReasoningParser::Auto.splits(Some(harmony)));
        assert!(!ReasoningParser::Auto.splits(Some("{{ messages }}")));
    }

    #[test]
    fn a_thought_reply_splits_alike_whole_and_in_every_piece_size() {
        let cases: [(bool, &str, Option<&str>, &str); 7] = [
            (
                false,
                "<think>\nLet me add: 2+2=4 <b>.\n</think>\n\nIt is 4.",
                Some("\nLet me add: 2+2=4 <b>.\n"),
                "It is 4.",
            ),
            (
                false,
                "Just an answer, <think> inside is content.",
                None,
                "Just an answer, <think> inside is content.",
            ),
            (false, "  \n<think>hm</think>ok", Some("hm"), "ok"),
            (
                false,
                "<think>cut off while thin",
                Some("cut off while thin"),
                "",
            ),
            (
                true,
                "continuing thoughts </thi</think>\n\nAnswer </think> stays",
                Some("continuing thoughts </thi"),
                "Answer </think> stays",
            ),
            (false, "<thin", None, "<thin"),
            (
                false,
                "  leading spaces kept",
                None,
                "  leading spaces kept",
            ),
        ];
        for (opens, text, reasoning, content) in cases {
            splits_alike(opens, text, reasoning, content);
        }
    }

    #[test]
    fn only_a_possible_tag_is_held_back() {
        let mut s = ReasoningSplit::new(true);
        assert_eq!(s.push("abc </th").reasoning, "abc ");
        assert_eq!(s.push("é").reasoning, "</thé");
        let mut s = ReasoningSplit::new(false);
        assert_eq!(s.push("Hi").content, "Hi");
    }

    #[test]
    fn the_parser_flag_decides_per_template() {
        let qwen3 = "{{ '<think>\\n\\n</think>\\n\\n' }}";
        assert!(ReasoningParser::Auto.splits(Some(qwen3)));
        assert!(!ReasoningParser::Auto.splits(Some("{{ messages }}")));
        assert!(!ReasoningParser::Auto.splits(None));
        assert!(!ReasoningParser::None.splits(Some(qwen3)));
        assert!(ReasoningParser::Qwen3.splits(None));
        assert!(prompt_opens_thinking("<|Assistant|><think>\n"));
        assert!(!prompt_opens_thinking(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
    }
}
