//! gpt-oss's tool calls, in OpenAI's harmony format (`--tool-call-parser openai`, vLLM's
//! name; `auto` picks it for a template that writes `<|channel|>commentary` and calls to
//! `functions.`).
//!
//! The template lists the tools itself (a `functions` namespace in the developer message) and
//! renders earlier calls and results. A reply is harmony messages
//! (`<|channel|>NAME<|message|>TEXT<|end|>`, joined by `<|start|>assistant`); a call is a
//! `commentary` message addressed to the function,
//! `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{arguments}`, ended by
//! `<|call|>` (an end of generation). The reply is constrained as other native syntaxes':
//! thinking first if the model likes (an `analysis` message), then a call (`required`, or a
//! named function) or a call or a `final` answer (`auto`; a JSON one where a response format
//! asks), every call naming a real tool with arguments valid under its schema. The markers are
//! control tokens, named in the grammar by id. One call per reply, as harmony has it.

use super::openai::Tool;
use super::reasoning::{CHANNEL, END, MESSAGE};
use super::tools::ToolMode;
use crate::engine::grammar::{compact_json, OutputFormat};
use crate::model::pyjson::dumps_json;
use crate::model::tokenizer::HARMONY_MARKERS;
use crate::model::Tokenizer;
use serde_json::{json, Value};

/// The ids of the harmony markers in a gpt-oss vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmonyIds {
    pub start: u32,
    pub end: u32,
    pub message: u32,
    pub channel: u32,
    pub constrain: u32,
}

impl HarmonyIds {
    /// The markers' ids, where the vocabulary has all of them.
    pub fn of(tokenizer: &Tokenizer) -> Option<Self> {
        let [start, end, message, channel, constrain] =
            HARMONY_MARKERS.map(|t| tokenizer.inner().token_to_id(t));
        Some(Self {
            start: start?,
            end: end?,
            message: message?,
            channel: channel?,
            constrain: constrain?,
        })
    }
}

/// Whether a chat template teaches harmony's tool calls (gpt-oss's writes earlier calls as
/// `<|start|>assistant to=functions.NAME<|channel|>commentary …`).
pub fn template_calls_functions(template: &str) -> bool {
    template.contains(&format!("{CHANNEL}commentary")) && template.contains("functions.")
}

/// The grammar of a harmony reply calling `tools` (≥ 1) as `mode` allows; `answer`: the JSON
/// schema a final answer must follow instead of free text.
pub fn output_format(
    ids: HarmonyIds,
    tools: &[Tool],
    mode: ToolMode,
    answer: Option<&Value>,
) -> OutputFormat {
    let token = |id: u32| format!("<[{id}]>");
    let (ch, msg) = (token(ids.channel), token(ids.message));
    let calls: Vec<String> = tools
        .iter()
        .map(|t| {
            let parameters = t
                .function
                .parameters
                .clone()
                .unwrap_or(json!({"type": "object"}));
            // A JSON string is a Lark literal (tool names are letters, digits, `_` and `-`).
            let head =
                serde_json::to_string(&format!("commentary to=functions.{} ", t.function.name))
                    .unwrap_or_default();
            format!(
                "{ch} {head} {} \"json\" {msg} %json {}",
                token(ids.constrain),
                compact_json(parameters)
            )
        })
        .collect();
    let answer = match answer {
        Some(schema) => format!("%json {}", compact_json(schema.clone())),
        None => "ANSWER".to_string(),
    };
    let reply = match mode {
        ToolMode::Required => "call",
        ToolMode::Auto => "final | call",
    };
    OutputFormat::Lark(format!(
        "start: analysis? reply\n\
         analysis: {ch} \"analysis\" {msg} THOUGHT {} {} \"assistant\"\n\
         THOUGHT: /(.|\\n)*/ & ~/(.|\\n)*<\\|end\\|>(.|\\n)*/\n\
         ANSWER: /(.|\\n)*/ & ~/(.|\\n)*<\\|end\\|>(.|\\n)*/\n\
         reply: {reply}\n\
         final: {ch} \"final\" {msg} {answer}\n\
         call: {}\n",
        token(ids.end),
        token(ids.start),
        calls.join(" | ")
    ))
}

/// The bodies of a harmony reply's messages addressed to a function (calls cut short), as
/// text.
pub fn addressed_text(raw: &str) -> String {
    messages(raw)
        .filter_map(|(header, body)| header.contains("to=").then_some(body))
        .collect()
}

/// A harmony reply's messages (cut at `<|end|>`) as (header, body), those with a body.
fn messages(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split(END).filter_map(|m| m.split_once(MESSAGE))
}

/// The calls of a whole harmony reply (its text with the markers): every message addressed to
/// `functions.NAME`, its body the arguments (JSON text, as `json.dumps` writes it). A body
/// that is not JSON (cut short) is no call.
pub fn read_calls(raw: &str) -> Vec<(String, String)> {
    messages(raw)
        .filter_map(|(header, body)| {
            let name = header.split("to=functions.").nth(1)?;
            let name = name
                .split(|c: char| c.is_whitespace() || c == '<')
                .next()?
                .to_string();
            let arguments: Value = serde_json::from_str(body.trim()).ok()?;
            (!name.is_empty()).then(|| (name, dumps_json(&arguments)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls are read from messages addressed to a function, the recipient before or after
    /// the channel; thinking, answers and cut-off arguments are not calls.
    #[test]
    fn calls_are_the_messages_addressed_to_functions() {
        let reply = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant\
                     <|channel|>commentary to=functions.get_weather <|constrain|>json\
                     <|message|>{\"city\": \"Paris\",\"days\":2}";
        assert_eq!(
            read_calls(reply),
            [(
                "get_weather".to_string(),
                "{\"city\": \"Paris\", \"days\": 2}".to_string()
            )]
        );
        let before = "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}";
        assert_eq!(read_calls(before), [("f".to_string(), "{}".to_string())]);
        assert!(read_calls("<|channel|>final<|message|>{\"a\": 1}").is_empty());
        assert!(read_calls("<|channel|>commentary to=functions.f <|message|>{\"cut").is_empty());
    }

    /// The grammar names each tool with its schema, the markers by id, and allows a final
    /// answer only in `auto`.
    #[test]
    fn the_grammar_names_tools_and_markers() {
        let tool: Tool = serde_json::from_value(json!({
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }))
        .unwrap();
        let ids = HarmonyIds {
            start: 1,
            end: 2,
            message: 3,
            channel: 4,
            constrain: 5,
        };
        let OutputFormat::Lark(auto) =
            output_format(ids, std::slice::from_ref(&tool), ToolMode::Auto, None)
        else {
            panic!("a Lark grammar");
        };
        assert!(auto.contains("reply: final | call"), "{auto}");
        assert!(
            auto.contains("<[4]> \"commentary to=functions.get_weather \" <[5]> \"json\" <[3]>"),
            "{auto}"
        );
        let OutputFormat::Lark(required) = output_format(ids, &[tool], ToolMode::Required, None)
        else {
            panic!("a Lark grammar");
        };
        assert!(required.contains("reply: call\n"), "{required}");
    }
}
