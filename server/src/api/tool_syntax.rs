//! Tool calls in a model's own syntax, for models trained to call tools: the chat template
//! describes the tools itself (`tools` reach it), earlier calls and results are rendered by it,
//! and the reply is read in the format the template taught the model:
//!
//! - `hermes` (Qwen2.5, Qwen3, QwQ, Hermes 2 Pro/3 and the many fine-tunes that copy them):
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one block per call, after any
//!   text (a Qwen3 thinks first);
//! - `llama3_json` (Llama 3.1/3.2/3.3): the whole reply is `{"name": …, "parameters": {…}}`,
//!   one call per turn (the template refuses two);
//! - `mistral` (Mistral 7B v0.3, Nemo, Small): the reply is the `[TOOL_CALLS]` control token
//!   and a JSON list, `[{"name": …, "arguments": {…}}, …]`. Its templates want call ids of
//!   nine letters and digits: an OpenAI id (`call_…`) is given them as its last nine;
//! - `openai` (gpt-oss): harmony's `commentary to=functions.NAME` messages (tool_harmony.rs).
//!
//! The reply is constrained as in lowbit's generic format (tools.rs), so every call names a
//! real tool and its arguments parse against the tool's schema: `required` or a named
//! function allows calls only (after an optional thinking block); `auto` lets the model write
//! anything, and the moment it writes `<tool_call>` (or opens the reply with `{` for Llama, `[`
//! for Mistral) the rest must be valid calls — llama.cpp's lazy grammars, here one llguidance
//! grammar with a lazy lexeme for the text before the tag.

use super::openai::Tool;
use super::tool_harmony::{self, HarmonyIds};
use super::tools::ToolMode;
use crate::engine::grammar::{compact_json, OutputFormat};
use crate::model::pyjson::dumps_json;
use serde_json::{json, Value};

/// How the server reads tool calls (`--tool-call-parser`, vLLM's flag and names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallParser {
    /// The chat template's own syntax where lowbit knows it (it writes `<tool_call>`: hermes;
    /// Llama 3.x's JSON instructions: llama3_json; `[TOOL_CALLS]`: mistral; harmony's
    /// `<|channel|>commentary` calls to `functions.`: openai), else generic.
    Auto,
    /// lowbit's one JSON format, described in the system message (tools.rs): any template.
    Generic,
    Hermes,
    #[value(name = "llama3_json")]
    Llama3Json,
    Mistral,
    /// gpt-oss's harmony format (vLLM's name).
    Openai,
}

/// The format a served model's tool calls take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    Generic,
    Hermes,
    Llama3Json,
    /// `marker`: the id of the `[TOOL_CALLS]` control token where the vocabulary has one (the
    /// model emits it, and it is not in the decoded text); else the text is written out.
    Mistral {
        marker: Option<u32>,
    },
    /// gpt-oss's harmony format, its markers' ids (tool_harmony.rs).
    Harmony {
        ids: HarmonyIds,
    },
}

impl ToolCallParser {
    /// The syntax for a model with this chat template; `marker` as in [`ToolSyntax::Mistral`],
    /// `harmony` the vocabulary's harmony markers (without them harmony is not offered).
    pub fn syntax(
        self,
        template_source: Option<&str>,
        marker: Option<u32>,
        harmony: Option<HarmonyIds>,
    ) -> ToolSyntax {
        match self {
            Self::Generic => ToolSyntax::Generic,
            Self::Hermes => ToolSyntax::Hermes,
            Self::Llama3Json => ToolSyntax::Llama3Json,
            Self::Mistral => ToolSyntax::Mistral { marker },
            Self::Openai => harmony.map_or(ToolSyntax::Generic, |ids| ToolSyntax::Harmony { ids }),
            Self::Auto => match (template_source, harmony) {
                (Some(t), Some(ids)) if tool_harmony::template_calls_functions(t) => {
                    ToolSyntax::Harmony { ids }
                }
                _ => Self::auto_syntax(template_source, marker),
            },
        }
    }

    /// `auto` for the templates of the JSON syntaxes.
    fn auto_syntax(template_source: Option<&str>, marker: Option<u32>) -> ToolSyntax {
        match template_source {
            Some(t) if t.contains(OPEN) && t.contains("tools") => ToolSyntax::Hermes,
            Some(t) if t.contains(LLAMA3_INSTRUCTION) => ToolSyntax::Llama3Json,
            Some(t) if t.contains(MISTRAL_CALLS) => ToolSyntax::Mistral { marker },
            _ => ToolSyntax::Generic,
        }
    }
}

/// The id of the `[TOOL_CALLS]` control token in `tokenizer`'s vocabulary, if it has one.
pub fn mistral_marker(tokenizer: &crate::model::Tokenizer) -> Option<u32> {
    let inner = tokenizer.inner();
    let id = inner.token_to_id(MISTRAL_CALLS)?;
    inner
        .get_added_tokens_decoder()
        .get(&id)
        .is_some_and(|t| t.special)
        .then_some(id)
}

/// A call id as Mistral's templates require it: nine letters and digits, the id's last nine
/// (zero-padded), so that a call and its result keep matching ids.
pub fn mistral_call_id(id: &str) -> String {
    let alnum: Vec<char> = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let tail: String = alnum[alnum.len().saturating_sub(9)..].iter().collect();
    format!("{tail:0>9}")
}

impl ToolSyntax {
    /// vLLM's name of the parser.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral { .. } => "mistral",
            Self::Harmony { .. } => "openai",
        }
    }

    /// Whether the template itself renders tools, calls and results.
    pub fn native(self) -> bool {
        self != Self::Generic
    }

    /// The key a call's arguments go under.
    fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// Opens Mistral's calls (a control token in its vocabularies).
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
/// What Llama 3.x's templates ask for when tools are given.
const LLAMA3_INSTRUCTION: &str =
    r#"{"name": function name, "parameters": dictionary of argument name and its value}"#;

/// Where the reply starts relative to a reasoning model's thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// Not a reasoning model (or its thinking is off): calls come first.
    No,
    /// The reply may open with `<think>…</think>` before the calls.
    May,
    /// The prompt opened `<think>` (DeepSeek-R1's template): the reply starts inside it.
    Open,
}

/// A tool as the template prints it: OpenAI's object, the fields the request gave.
pub fn template_tool(t: &Tool) -> Value {
    let mut function = json!({"name": t.function.name});
    if let Some(d) = &t.function.description {
        function["description"] = json!(d);
    }
    if let Some(p) = &t.function.parameters {
        function["parameters"] = p.clone();
    }
    json!({"type": "function", "function": function})
}

/// A call's arguments as templates want them (an object; OpenAI sends a JSON text): the text
/// itself where it is not JSON.
pub fn template_arguments(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!(arguments))
}

/// The JSON schema of one call of `tool`: `{"name": <its name>, <arguments_key>: <its
/// parameters>}`, in that order.
pub fn call_schema(tool: &Tool, arguments_key: &str) -> Value {
    let parameters = tool
        .function
        .parameters
        .clone()
        .unwrap_or(json!({"type": "object"}));
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.function.name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": false,
    })
}

/// The grammar of a reply in `syntax` calling `tools` (≥ 1) as `mode` and `parallel` allow;
/// `answer`: the JSON schema an answer must follow instead of free text (a response format).
pub fn output_format(
    syntax: ToolSyntax,
    tools: &[Tool],
    mode: ToolMode,
    parallel: bool,
    thinking: Thinking,
    answer: Option<&Value>,
) -> OutputFormat {
    if let ToolSyntax::Harmony { ids } = syntax {
        return tool_harmony::output_format(ids, tools, mode, answer);
    }
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| call_schema(t, syntax.arguments_key()))
        .collect();
    let call_json = format!("%json {}", compact_json(json!({"anyOf": calls})));
    let (call, many) = match syntax {
        ToolSyntax::Hermes => (
            format!("call: \"{OPEN}\\n\" {call_json} \"\\n{CLOSE}\"\n"),
            if parallel {
                "call (\"\\n\" call)*"
            } else {
                "call"
            },
        ),
        // Mistral: the marker, then every call in one JSON list.
        ToolSyntax::Mistral { marker } => {
            let marker = match marker {
                Some(id) => format!("<[{id}]>"),
                None => format!("{MISTRAL_CALLS:?}"),
            };
            let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
            if !parallel {
                list["maxItems"] = json!(1);
            }
            (
                format!("call: {marker} %json {}\n", compact_json(list)),
                "call",
            )
        }
        // Llama 3.x: one call, the reply's whole text.
        _ => (format!("call: {call_json}\n"), "call"),
    };
    let reply = match (syntax, mode, answer) {
        (_, ToolMode::Required, _) => many.to_string(),
        (_, ToolMode::Auto, Some(schema)) => {
            format!("%json {} | {many}", compact_json(schema.clone()))
        }
        // Free text, which holds any thinking too. Text before the first call must not write
        // the tag itself: a lazy lexeme ends at it, and the calls follow.
        (ToolSyntax::Hermes, ToolMode::Auto, None) => {
            let more = if parallel { "(\"\\n\" call)*" } else { "" };
            return OutputFormat::Lark(format!(
                "start: TEXT | lead \"\\n\" {call_json} \"\\n{CLOSE}\" {more}\nTEXT: /(.|\\n)*/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\nlead[lazy]: /(.|\\n)*<tool_call>/\n{call}"
            ));
        }
        // An answer cannot open as a call does (`{`; Mistral's `[`, the marker's text).
        (ToolSyntax::Mistral { .. }, ToolMode::Auto, None) => {
            "TEXT | call\nTEXT: /([^\\[](.|\\n)*)?/".to_string()
        }
        (_, ToolMode::Auto, None) => "TEXT | call\nTEXT: /([^{](.|\\n)*)?/".to_string(),
    };
    // A reasoning model may think before it calls or answers in a format.
    let start = match thinking {
        Thinking::No => "start: reply\n",
        Thinking::May => "start: think? reply\nthink: thought /[ \\n]*/\nthought[lazy]: /<think>(.|\\n)*<\\/think>/\n",
        Thinking::Open => "start: think reply\nthink: thought /[ \\n]*/\nthought[lazy]: /(.|\\n)*<\\/think>/\n",
    };
    OutputFormat::Lark(format!("{start}reply: {reply}\n{call}"))
}

/// A complete reply read: the text outside the calls (`None` when only whitespace) and each
/// call's name and arguments (JSON text, as `json.dumps` writes it).
#[derive(Debug, Clone, PartialEq)]
pub struct NativeReply {
    pub content: Option<String>,
    pub calls: Vec<(String, String)>,
}

impl NativeReply {
    fn text(text: &str) -> Self {
        Self {
            content: Some(text.to_string()),
            calls: Vec::new(),
        }
    }
}

/// One call's JSON, `{"name": …, "arguments" | "parameters": …}`; `None` if it is not one.
fn read_call(json_text: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(json_text.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = v.get("arguments").or_else(|| v.get("parameters"))?;
    let arguments = match arguments {
        // Some models write the arguments as a JSON text.
        Value::String(s) => s.clone(),
        other => dumps_json(other),
    };
    Some((name, arguments))
}

/// Reads a complete reply. One whose calls do not parse (cut by `max_tokens`) is all text, as
/// it was written.
pub fn read_reply(syntax: ToolSyntax, text: &str) -> NativeReply {
    match syntax {
        ToolSyntax::Generic => NativeReply::text(text),
        ToolSyntax::Hermes => {
            let Some(first) = text.find(OPEN) else {
                return NativeReply::text(text);
            };
            let mut calls = Vec::new();
            let mut rest = &text[first..];
            while let Some(body) = rest.strip_prefix(OPEN) {
                let Some(end) = body.find(CLOSE) else {
                    return NativeReply::text(text);
                };
                let Some(call) = read_call(&body[..end]) else {
                    return NativeReply::text(text);
                };
                calls.push(call);
                rest = body[end + CLOSE.len()..].trim_start();
            }
            if !rest.trim().is_empty() {
                return NativeReply::text(text);
            }
            let before = text[..first].trim();
            NativeReply {
                content: (!before.is_empty()).then(|| before.to_string()),
                calls,
            }
        }
        ToolSyntax::Llama3Json => {
            let body = text.trim_start();
            let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
            if !body.starts_with('{') {
                return NativeReply::text(text);
            }
            match read_call(body) {
                Some(call) => NativeReply {
                    content: None,
                    calls: vec![call],
                },
                None => NativeReply::text(text),
            }
        }
        // The whole reply, markers and all (the caller keeps its split content).
        // Without a call read, `content` is the text addressed to functions (cut short).
        ToolSyntax::Harmony { .. } => {
            let calls = tool_harmony::read_calls(text);
            let content = calls
                .is_empty()
                .then(|| tool_harmony::addressed_text(text))
                .filter(|t| !t.is_empty());
            NativeReply { content, calls }
        }
        ToolSyntax::Mistral { .. } => {
            // The marker's text, unless it was a control token (not decoded).
            let body = text.trim_start();
            let body = body.strip_prefix(MISTRAL_CALLS).unwrap_or(body);
            let Ok(Value::Array(list)) = serde_json::from_str::<Value>(body.trim()) else {
                return NativeReply::text(text);
            };
            let calls: Option<Vec<(String, String)>> =
                list.iter().map(|c| read_call(&c.to_string())).collect();
            match calls {
                Some(calls) if !calls.is_empty() => NativeReply {
                    content: None,
                    calls,
                },
                _ => NativeReply::text(text),
            }
        }
    }
}

/// What a stream sends as a native reply grows.
#[derive(Debug, Clone, PartialEq)]
pub enum NativePiece {
    Content(String),
    /// A whole call (its block closed): `index` among the reply's calls.
    Call {
        index: usize,
        name: String,
        arguments: String,
    },
    /// Call `index` begins: its name (its arguments follow in pieces).
    CallStart {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    Arguments {
        index: usize,
        text: String,
    },
}

/// How the grammar writes a hermes call, up to its name, after it, and at its end.
const CALL_HEAD: &str = "<tool_call>\n{\"name\": \"";
const CALL_ARGUMENTS: &str = "\", \"arguments\": ";
const CALL_END: &str = "}\n</tool_call>";

/// Reads one choice's reply (its answer, after any thinking) as it is generated: text is sent
/// as it comes, less what could be the start of a call's tag; a hermes call's name once it is
/// written, then its arguments as they grow (less what could be the block's end), as OpenAI
/// streams calls — or, in a layout other than the grammar's, the whole call once its block
/// closes. A Llama or Mistral reply opening as a call is read at the end.
#[derive(Debug, Clone)]
pub struct NativeStream {
    syntax: ToolSyntax,
    /// Text not yet sent.
    held: String,
    /// Inside a call's block (hermes) or a Llama call.
    in_call: bool,
    /// Only whitespace so far (a Llama reply is decided by its first other character).
    started: bool,
    /// A harmony reply as generated, markers and all (its calls are read from it at the end;
    /// what `push` is given is its content, the split of `api/reasoning.rs`).
    raw: String,
    calls: usize,
    /// Where the streamed call's arguments start in `held`, and how far they were sent.
    arguments: Option<(usize, usize)>,
}

impl NativeStream {
    pub fn new(syntax: ToolSyntax) -> Self {
        Self {
            syntax,
            held: String::new(),
            in_call: false,
            started: false,
            raw: String::new(),
            calls: 0,
            arguments: None,
        }
    }

    /// Call arguments streamed as they grow: the call's name once written in the grammar's
    /// layout, then its arguments' text less what could be the block's end; `true` when the
    /// block closed (the call is complete), `false` when more text is needed or the layout is
    /// another (then the whole block is read at its end).
    fn stream_arguments(&mut self, out: &mut Vec<NativePiece>) -> bool {
        let index = self.calls;
        if self.arguments.is_none() {
            let Some(rest) = self.held.strip_prefix(CALL_HEAD) else {
                return false;
            };
            let Some(quote) = rest.find('"') else {
                return false;
            };
            // Only an object's text is sent as it grows (read whole, a string is unquoted).
            let after_name = rest[quote..].strip_prefix(CALL_ARGUMENTS);
            if !after_name.is_some_and(|a| a.starts_with('{')) {
                return false;
            }
            let name = rest[..quote].to_string();
            let at = CALL_HEAD.len() + quote + CALL_ARGUMENTS.len();
            out.push(NativePiece::CallStart { index, name });
            self.arguments = Some((at, at));
        }
        let Some((at, sent)) = self.arguments else {
            return false;
        };
        if let Some(end) = self.held[at..].find(CALL_END).map(|e| at + e) {
            let text = self.held[sent..end].to_string();
            if !text.is_empty() {
                out.push(NativePiece::Arguments { index, text });
            }
            self.held.drain(..end + CALL_END.len());
            self.arguments = None;
            self.calls += 1;
            self.in_call = false;
            return true;
        }
        // CALL_END is ASCII: the cut is a character boundary.
        let keep = (1..CALL_END.len())
            .rev()
            .find(|&k| self.held.ends_with(&CALL_END[..k]))
            .unwrap_or(0);
        let upto = self.held.len() - keep;
        if upto > sent {
            out.push(NativePiece::Arguments {
                index,
                text: self.held[sent..upto].to_string(),
            });
            self.arguments = Some((at, upto));
        }
        false
    }

    /// Calls sent.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Sees generated text as generated (a harmony reply's calls are read from it).
    pub fn observe_raw(&mut self, text: &str) {
        if matches!(self.syntax, ToolSyntax::Harmony { .. }) {
            self.raw.push_str(text);
        }
    }

    /// Adds generated text; returns what can be sent.
    pub fn push(&mut self, text: &str) -> Vec<NativePiece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        match self.syntax {
            // The content of a harmony reply (its calls are not in it) goes as it comes.
            ToolSyntax::Harmony { .. } => {
                out.push(NativePiece::Content(std::mem::take(&mut self.held)));
            }
            ToolSyntax::Llama3Json | ToolSyntax::Mistral { .. } | ToolSyntax::Generic => {
                if !self.started {
                    let body = self.held.trim_start();
                    let (tag, open) = match self.syntax {
                        ToolSyntax::Mistral { .. } => (MISTRAL_CALLS, '['),
                        _ => ("<|python_tag|>", '{'),
                    };
                    if body.is_empty() || (tag.starts_with(body) && !body.starts_with(open)) {
                        return out;
                    }
                    self.started = true;
                    self.in_call = body.starts_with(open) || body.starts_with(tag);
                }
                if !self.in_call {
                    out.push(NativePiece::Content(std::mem::take(&mut self.held)));
                }
            }
            ToolSyntax::Hermes => loop {
                if self.in_call {
                    if self.stream_arguments(&mut out) {
                        continue;
                    }
                    if self.arguments.is_some() {
                        break;
                    }
                    let Some(end) = self.held.find(CLOSE) else {
                        break;
                    };
                    let block = self.held[OPEN.len()..end].to_string();
                    let Some((name, arguments)) = read_call(&block) else {
                        // Not a call after all: sent as it was written.
                        let whole: String = self.held.drain(..end + CLOSE.len()).collect();
                        self.in_call = false;
                        out.push(NativePiece::Content(whole));
                        continue;
                    };
                    self.held.drain(..end + CLOSE.len());
                    out.push(NativePiece::Call {
                        index: self.calls,
                        name,
                        arguments,
                    });
                    self.calls += 1;
                    self.in_call = false;
                    continue;
                }
                if let Some(at) = self.held.find(OPEN) {
                    let before: String = self.held.drain(..at).collect();
                    // Whitespace between calls (and before the first) is the syntax's own.
                    if !before.trim().is_empty() {
                        out.push(NativePiece::Content(before));
                    }
                    self.in_call = true;
                    continue;
                }
                // Hold back what could still become the tag.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&k| self.held.ends_with(&OPEN[..k]))
                    .unwrap_or(0);
                let send = self.held.len() - keep;
                // Whitespace waits: it may come before a call.
                if send > 0 && !self.held[..send].trim().is_empty() {
                    out.push(NativePiece::Content(self.held.drain(..send).collect()));
                }
                break;
            },
        }
        out.retain(|p| !matches!(p, NativePiece::Content(t) if t.is_empty()));
        out
    }

    /// The end of the reply: whatever is held, as a call where it reads as one, else as text
    /// (a call cut short while its arguments streamed: the rest of them, as written).
    pub fn finish(&mut self) -> Vec<NativePiece> {
        if matches!(self.syntax, ToolSyntax::Harmony { .. }) {
            // `push` sent every piece of content already; without a call read, what was
            // addressed to a function goes as text.
            self.held.clear();
            let raw = std::mem::take(&mut self.raw);
            let calls = tool_harmony::read_calls(&raw);
            self.calls = calls.len();
            if calls.is_empty() {
                let text = tool_harmony::addressed_text(&raw);
                return (!text.is_empty())
                    .then_some(NativePiece::Content(text))
                    .into_iter()
                    .collect();
            }
            return calls
                .into_iter()
                .enumerate()
                .map(|(index, (name, arguments))| NativePiece::Call {
                    index,
                    name,
                    arguments,
                })
                .collect();
        }
        if let Some((_, sent)) = self.arguments.take() {
            let text = self.held.split_off(sent);
            self.held.clear();
            self.calls += 1;
            let index = self.calls - 1;
            return (!text.is_empty())
                .then_some(NativePiece::Arguments { index, text })
                .into_iter()
                .collect();
        }
        let held = std::mem::take(&mut self.held);
        if self.syntax != ToolSyntax::Hermes && self.in_call {
            let reply = read_reply(self.syntax, &held);
            if !reply.calls.is_empty() {
                let calls = reply.calls.into_iter().enumerate();
                self.calls = calls.len();
                return calls
                    .map(|(index, (name, arguments))| NativePiece::Call {
                        index,
                        name,
                        arguments,
                    })
                    .collect();
            }
        }
        if held.is_empty() || (self.calls > 0 && held.trim().is_empty()) {
            return Vec::new();
        }
        vec![NativePiece::Content(held)]
    }
}

#[cfg(test)]
#[path = "tool_syntax_tests.rs"]
mod tests;
