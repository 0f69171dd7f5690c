//! A tool reply read as it is generated, so that a stream sends it token by token as OpenAI's
//! does: the answer's text (`{"response": "…"}`) as content deltas, each tool call's name
//! once it is complete, then its arguments' JSON text as it grows.
//!
//! The reply's layout is fixed by its grammar (tools.rs builds the schema, engine/grammar.rs
//! writes JSON as `json.dumps` does: `", "`, `": "`, keys in schema order), so the reader
//! matches literal pieces instead of parsing JSON in general; anything else ends the
//! incremental reading and, if nothing was sent yet, the whole reply is read at its end.

use super::openai::{Delta, DeltaFunction, DeltaToolCall};
use super::tools;

/// What the reply has added since the last push.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More of the answer's text (decoded from its JSON string).
    Content(String),
    /// Call `index` begins: its function's name.
    Call { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text).
    Arguments { index: usize, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first key.
    Start,
    /// Inside the answer's string.
    Answer,
    /// Inside an answer that is a JSON value (a response format with tools): sent as its text,
    /// less its last character, which may be the reply's closing `}`.
    AnswerValue,
    /// Before a call's name (after `[` or `, `).
    CallStart,
    /// Inside call `index`'s arguments, `depth` brackets deep, within a string or not.
    Arguments {
        index: usize,
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After a call's arguments: `}` then `, ` or `]}`.
    CallEnd,
    /// The reply is complete.
    Done,
    /// The reply did not look as expected: read whole at its end.
    Lost,
}

/// Reads one choice's reply as it grows.
#[derive(Debug, Clone)]
pub struct ToolStream {
    text: String,
    /// Bytes of `text` read.
    at: usize,
    state: State,
    /// Calls begun.
    calls: usize,
    /// Whether anything was sent.
    sent: bool,
    /// The answer is a JSON value, not a string (tools.rs, `set_answer_format`).
    json_answer: bool,
}

const ANSWER: &str = r#"{"response": ""#;
const ANSWER_VALUE: &str = r#"{"response": "#;
const CALLS: &str = r#"{"tool_calls": ["#;
const NAME: &str = r#"{"name": ""#;
const ARGUMENTS: &str = r#"", "arguments": "#;

impl ToolStream {
    /// A reader of a reply whose answer is a string, or a JSON value (`json_answer`).
    pub fn new(json_answer: bool) -> Self {
        Self {
            text: String::new(),
            at: 0,
            state: State::Start,
            calls: 0,
            sent: false,
            json_answer,
        }
    }

    /// At the reply's end: the answer's last character when the reply was cut short (else it
    /// is the reply's closing brace, not the answer's).
    pub fn finish(&mut self, complete: bool) -> Vec<Piece> {
        if self.state != State::AnswerValue || complete || self.at >= self.text.len() {
            return Vec::new();
        }
        let rest = self.text[self.at..].to_string();
        self.at = self.text.len();
        self.sent = true;
        vec![Piece::Content(rest)]
    }

    /// Adds generated text; returns the pieces it completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.text.push_str(text);
        let mut out = Vec::new();
        while let Some(piece) = self.step() {
            if let Some(p) = piece {
                out.push(p);
            }
        }
        self.sent |= !out.is_empty();
        out
    }

    /// Whether the reply was read to its end.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Calls begun.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether the reader lost track before sending anything (then the whole reply at its
    /// end is sent as the non-streamed response would be).
    pub fn unsent(&self) -> bool {
        !self.sent
    }

    /// The whole text pushed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// One move: `Some(piece or nothing)` when it advanced, `None` when it needs more text.
    fn step(&mut self) -> Option<Option<Piece>> {
        let rest = &self.text[self.at..];
        match self.state {
            State::Done | State::Lost => None,
            State::Start => {
                let answer = if self.json_answer {
                    (ANSWER_VALUE, State::AnswerValue)
                } else {
                    (ANSWER, State::Answer)
                };
                for (lit, next) in [answer, (CALLS, State::CallStart)] {
                    if rest.starts_with(lit) {
                        self.at += lit.len();
                        self.state = next;
                        return Some(None);
                    }
                }
                if !answer.0.starts_with(rest) && !CALLS.starts_with(rest) {
                    self.state = State::Lost;
                }
                None
            }
            State::AnswerValue => {
                // All but the last character, cut back to a character boundary.
                let last = rest.char_indices().last()?.0;
                if last == 0 {
                    return None;
                }
                self.at += last;
                Some(Some(Piece::Content(rest[..last].to_string())))
            }
            State::Answer => {
                let (raw, closed) = string_body(rest);
                if raw.is_empty() {
                    // The string's end: then the object's.
                    if closed && rest.starts_with("\"}") {
                        self.at += 2;
                        self.state = State::Done;
                        return Some(None);
                    }
                    if closed && rest.len() >= 2 {
                        self.state = State::Lost;
                    }
                    return None;
                }
                // The text so far, less an escape not complete yet (or the first half of a
                // surrogate pair): cut back to the last backslash until it decodes.
                let mut end = raw.len();
                let decoded = loop {
                    match serde_json::from_str::<String>(&format!("\"{}\"", &raw[..end])) {
                        Ok(s) => break s,
                        Err(_) => match raw[..end].rfind('\\') {
                            Some(0) | None => return None,
                            Some(cut) => end = cut,
                        },
                    }
                };
                self.at += end;
                Some(Some(Piece::Content(decoded)))
            }
            State::CallStart => {
                if !rest.starts_with(NAME) {
                    if !NAME.starts_with(rest) {
                        self.state = State::Lost;
                    }
                    return None;
                }
                let name_and_more = &rest[NAME.len()..];
                let name_end = name_and_more.find('"')?;
                let after = &name_and_more[name_end..];
                if !after.starts_with(ARGUMENTS) {
                    if !ARGUMENTS.starts_with(after) {
                        self.state = State::Lost;
                    }
                    return None;
                }
                let name = name_and_more[..name_end].to_string();
                self.at += NAME.len() + name_end + ARGUMENTS.len();
                let index = self.calls;
                self.calls += 1;
                self.state = State::Arguments {
                    index,
                    depth: 0,
                    in_string: false,
                    escaped: false,
                };
                Some(Some(Piece::Call { index, name }))
            }
            State::Arguments {
                index,
                mut depth,
                mut in_string,
                mut escaped,
            } => {
                if rest.is_empty() {
                    return None;
                }
                let mut end = rest.len();
                let mut complete = false;
                // Where the value ends: its closing bracket or quote back at depth 0, or (a
                // bare number or literal) just before the call object's `}`.
                for (i, c) in rest.char_indices() {
                    if in_string {
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                in_string = false;
                                if depth == 0 {
                                    (end, complete) = (i + 1, true);
                                    break;
                                }
                            }
                            _ => {}
                        }
                        continue;
                    }
                    match c {
                        '"' => in_string = true,
                        '{' | '[' => depth += 1,
                        '}' | ']' | ',' if depth == 0 => {
                            (end, complete) = (i, true);
                            break;
                        }
                        '}' | ']' => {
                            depth -= 1;
                            if depth == 0 {
                                (end, complete) = (i + 1, true);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let text = rest[..end].to_string();
                self.at += end;
                self.state = if complete {
                    State::CallEnd
                } else {
                    State::Arguments {
                        index,
                        depth,
                        in_string,
                        escaped,
                    }
                };
                Some(Some(Piece::Arguments { index, text }))
            }
            State::CallEnd => {
                for (lit, next) in [("}, ", State::CallStart), ("}]}", State::Done)] {
                    if rest.starts_with(lit) {
                        self.at += lit.len();
                        self.state = next;
                        return Some(None);
                    }
                }
                if !"}, ".starts_with(rest) && !"}]}".starts_with(rest) {
                    self.state = State::Lost;
                }
                None
            }
        }
    }
}

/// The stream deltas of `pieces`: a call's first one has a new id, its type and its name.
pub fn deltas(pieces: Vec<Piece>) -> Vec<Delta> {
    let call = |index, id: Option<String>, function| Delta {
        tool_calls: Some(vec![DeltaToolCall {
            index,
            kind: id.as_ref().map(|_| "function"),
            id,
            function,
        }]),
        ..Delta::default()
    };
    pieces
        .into_iter()
        .map(|p| match p {
            Piece::Content(text) => Delta {
                content: Some(text),
                ..Delta::default()
            },
            Piece::Call { index, name } => call(
                index,
                Some(tools::call_id()),
                DeltaFunction {
                    name: Some(name),
                    arguments: Some(String::new()),
                },
            ),
            Piece::Arguments { index, text } => call(
                index,
                None,
                DeltaFunction {
                    name: None,
                    arguments: Some(text),
                },
            ),
        })
        .collect()
}

/// The raw body of a JSON string that starts `text`'s: up to its closing quote (true) or to
/// the end of the text.
fn string_body(text: &str) -> (&str, bool) {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return (&text[..i], true),
            _ => {}
        }
    }
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece of `reply` fed in chunks of `n` characters, merged by kind.
    fn read(reply: &str, n: usize) -> (Vec<Piece>, ToolStream) {
        let mut r = ToolStream::new(false);
        let chars: Vec<char> = reply.chars().collect();
        let mut pieces: Vec<Piece> = Vec::new();
        for chunk in chars.chunks(n) {
            for p in r.push(&chunk.iter().collect::<String>()) {
                match (pieces.last_mut(), p) {
                    (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                    (
                        Some(Piece::Arguments { index: i, text: a }),
                        Piece::Arguments { index: j, text: b },
                    ) if *i == j => a.push_str(&b),
                    (_, p) => pieces.push(p),
                }
            }
        }
        (pieces, r)
    }

    #[test]
    fn a_json_answer_streams_as_its_text_without_the_closing_brace() {
        let reply = r#"{"response": {"city": "Par\u00eds", "n": [1, 2]}}"#;
        for n in 1..=5 {
            let mut r = ToolStream::new(true);
            let chars: Vec<char> = reply.chars().collect();
            let mut text = String::new();
            for chunk in chars.chunks(n) {
                for p in r.push(&chunk.iter().collect::<String>()) {
                    let Piece::Content(t) = p else {
                        panic!("{p:?}")
                    };
                    text.push_str(&t);
                }
            }
            assert!(r.finish(true).is_empty());
            assert_eq!(text, r#"{"city": "Par\u00eds", "n": [1, 2]}"#, "by {n}");
        }
        // Cut short: the answer's text as far as it got.
        let mut r = ToolStream::new(true);
        let mut pieces = r.push(r#"{"response": {"a": 1"#);
        pieces.extend(r.finish(false));
        let text: String = pieces
            .into_iter()
            .map(|p| match p {
                Piece::Content(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(text, r#"{"a": 1"#);
    }

    #[test]
    fn an_answer_streams_as_its_decoded_text_whatever_the_chunks() {
        let reply = r#"{"response": "It is \"18\" \u00b0C\nin Par\u00eds \ud83d\ude00 \\ ok"}"#;
        for n in 1..=5 {
            let (pieces, r) = read(reply, n);
            assert_eq!(
                pieces,
                vec![Piece::Content("It is \"18\" °C\nin París 😀 \\ ok".into())],
                "chunks of {n}"
            );
            assert!(r.done());
        }
    }

    #[test]
    fn calls_stream_as_names_then_their_arguments() {
        let reply = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa}ris\"", "n": [1, {"a": 2}]}}, {"name": "t", "arguments": {}}]}"#;
        for n in [1, 2, 3, 7, 200] {
            let (pieces, r) = read(reply, n);
            assert_eq!(
                pieces,
                vec![
                    Piece::Call {
                        index: 0,
                        name: "get_weather".into()
                    },
                    Piece::Arguments {
                        index: 0,
                        text: r#"{"city": "Pa}ris\"", "n": [1, {"a": 2}]}"#.into()
                    },
                    Piece::Call {
                        index: 1,
                        name: "t".into()
                    },
                    Piece::Arguments {
                        index: 1,
                        text: "{}".into()
                    },
                ],
                "chunks of {n}"
            );
            assert!(r.done());
        }
    }

    #[test]
    fn arguments_that_are_not_objects_end_where_they_end() {
        for (args, n) in [(r#""a}\"b""#, 1), ("12.5", 2), ("true", 3), ("[1, [2]]", 1)] {
            let reply = format!(r#"{{"tool_calls": [{{"name": "f", "arguments": {args}}}]}}"#);
            let (pieces, r) = read(&reply, n);
            assert_eq!(
                pieces[1],
                Piece::Arguments {
                    index: 0,
                    text: args.into()
                },
                "{reply}"
            );
            assert!(r.done(), "{reply}");
        }
    }

    #[test]
    fn a_cut_reply_stops_where_it_is_and_a_strange_one_is_lost_unsent() {
        let (pieces, r) = read(r#"{"tool_calls": [{"name": "f", "arguments": {"x": 1"#, 4);
        assert_eq!(pieces.len(), 2);
        assert!(!r.done() && !r.unsent());
        let (pieces, r) = read(r#"{"other": 1}"#, 3);
        assert!(pieces.is_empty() && r.unsent() && !r.done());
        assert_eq!(r.text(), r#"{"other": 1}"#);
    }
}
