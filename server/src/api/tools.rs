//! Tool calling (`tools`, `tool_choice`): the request's tools checked ([`ToolUse`]) and, for
//! templates without a tool syntax lowbit reads natively, lowbit's one generic format, as
//! llama.cpp's generic handler does: the tools are described in the system message, and the
//! reply is constrained (structured outputs, `engine/grammar.rs`) to one JSON object,
//! `{"tool_calls": [{"name", "arguments"}, …]}` or, where `tool_choice` is `auto`,
//! `{"response": …}` (a string, or a JSON value of the response format given with the tools).
//! The object is then turned into OpenAI's `tool_calls` (finish `tool_calls`) or into the
//! message's content. Earlier turns (assistant `tool_calls`, `tool` results) are written back
//! into the conversation in the same format.
//!
//! Models trained on a syntax of their own (Hermes `<tool_call>` tags: Qwen; Llama 3.x's JSON;
//! Mistral's `[TOOL_CALLS]`) get it instead (tool_syntax.rs, chosen by `--tool-call-parser`);
//! the generic format serves every other template, small models included (SmolLM2's has no
//! tools at all). In both the arguments always parse against their schema.

use super::error::ApiError;
use super::openai::{FunctionCall, ResponseToolCall, Tool, ToolChoice};
use super::tool_syntax::{self, Thinking, ToolSyntax};
use crate::engine::grammar::OutputFormat;
use crate::model::pyjson::dumps_json;
use serde_json::{json, Value};

/// What the reply must be, from `tool_choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// A tool call or an answer.
    Auto,
    /// One or more tool calls.
    Required,
}

/// The tools of a request, checked, with what its reply may be.
#[derive(Debug, Clone)]
pub struct ToolUse {
    /// The tools the reply may call (one, where `tool_choice` names it).
    tools: Vec<Tool>,
    /// All the request's tools: a native template lists them all.
    listed: Vec<Tool>,
    mode: ToolMode,
    /// Several calls in one reply (`parallel_tool_calls`, default true).
    parallel: bool,
    syntax: ToolSyntax,
    /// The JSON schema an answer (not a call) must follow: a response format given with tools.
    answer: Option<Value>,
}

/// OpenAI's rule for function names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolUse {
    /// The tool use `tools`, `tool_choice` and `parallel_tool_calls` ask for, in the served
    /// model's `syntax`: `None` when the reply is plain text (no tools, or `tool_choice: "none"`).
    pub fn from_request(
        tools: Option<&[Tool]>,
        choice: Option<&ToolChoice>,
        parallel: Option<bool>,
        syntax: ToolSyntax,
    ) -> Result<Option<Self>, ApiError> {
        let tools = tools.unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("tool type '{}' is not supported (only 'function')", t.kind),
                ));
            }
            if !valid_name(&t.function.name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "a function name is 1 to 64 letters, digits, '_' or '-'",
                ));
            }
            if tools[..i]
                .iter()
                .any(|u| u.function.name == t.function.name)
            {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("two tools are named '{}'", t.function.name),
                ));
            }
            if t.function
                .parameters
                .as_ref()
                .is_some_and(|p| !p.is_object())
            {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "'parameters' must be a JSON schema object",
                ));
            }
        }
        let (mode, only) = match choice {
            None if tools.is_empty() => return Ok(None),
            None => (ToolMode::Auto, None),
            Some(ToolChoice::Mode(m)) => match m.as_str() {
                "none" => return Ok(None),
                "auto" => (ToolMode::Auto, None),
                "required" => (ToolMode::Required, None),
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!(
                            "unknown tool_choice '{other}' (none, auto, required, or a function)"
                        ),
                    ))
                }
            },
            Some(ToolChoice::Named(n)) => (ToolMode::Required, Some(n.function.name.as_str())),
        };
        if tools.is_empty() {
            return Err(ApiError::invalid(
                "tool_choice",
                "'tool_choice' needs 'tools'",
            ));
        }
        let callable: Vec<Tool> = match only {
            None => tools.to_vec(),
            Some(name) => {
                let named: Vec<Tool> = tools
                    .iter()
                    .filter(|t| t.function.name == name)
                    .cloned()
                    .collect();
                if named.is_empty() {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("'tool_choice' names '{name}', which is not among the tools"),
                    ));
                }
                named
            }
        };
        Ok(Some(Self {
            tools: callable,
            listed: tools.to_vec(),
            mode,
            parallel: parallel.unwrap_or(true),
            syntax,
            answer: None,
        }))
    }

    /// The tools as a native template is given them; `None` in the generic format (the system
    /// message describes them).
    pub fn template_tools(&self) -> Option<Vec<Value>> {
        self.syntax
            .native()
            .then(|| self.listed.iter().map(tool_syntax::template_tool).collect())
    }

    /// The syntax of the reply.
    pub fn syntax(&self) -> ToolSyntax {
        self.syntax
    }

    /// An answer that is not a call must be JSON valid under `schema` (`response_format`
    /// given with tools, as OpenAI allows: the model calls tools or answers in that format).
    pub fn set_answer_format(&mut self, schema: Value) {
        self.answer = Some(schema);
    }

    /// Whether an answer is a JSON value (its text is the content) rather than free text.
    pub fn json_answer(&self) -> bool {
        self.answer.is_some()
    }

    /// The grammar the reply is constrained to; `thinking`: where a reasoning model's reply
    /// starts (native syntaxes let it think first).
    pub fn output_format(&self, thinking: Thinking) -> OutputFormat {
        if self.syntax.native() {
            return tool_syntax::output_format(
                self.syntax,
                &self.tools,
                self.mode,
                self.parallel,
                thinking,
                self.answer.as_ref(),
            );
        }
        self.generic_format()
    }

    /// The JSON schema of a generic reply.
    fn generic_format(&self) -> OutputFormat {
        let calls: Vec<Value> = self
            .tools
            .iter()
            .map(|t| tool_syntax::call_schema(t, "arguments"))
            .collect();
        let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
        if !self.parallel {
            list["maxItems"] = json!(1);
        }
        let call = json!({
            "type": "object",
            "properties": {"tool_calls": list},
            "required": ["tool_calls"],
            "additionalProperties": false,
        });
        OutputFormat::JsonSchema(match self.mode {
            ToolMode::Required => call,
            ToolMode::Auto => json!({"anyOf": [call, {
                "type": "object",
                "properties": {"response": self.answer.clone().unwrap_or(json!({"type": "string"}))},
                "required": ["response"],
                "additionalProperties": false,
            }]}),
        })
    }

    /// What the system message says of the tools and of the reply's format.
    pub fn instructions(&self) -> String {
        let listed: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.function.name,
                    "description": t.function.description.clone().unwrap_or_default(),
                    "parameters": t.function.parameters.clone().unwrap_or(json!({"type": "object"})),
                })
            })
            .collect();
        let tools = serde_json::to_string_pretty(&listed).unwrap_or_default();
        let call =
            r#"{"tool_calls": [{"name": "<tool name>", "arguments": {<the tool's arguments>}}]}"#;
        let reply = match self.mode {
            ToolMode::Required => format!("Reply with a JSON object that calls one or more of the tools: {call}"),
            ToolMode::Auto => match &self.answer {
                None => format!(
                    "Reply with a JSON object: either {call} to call one or more of the tools, or {{\"response\": \"<your answer>\"}} to answer directly."
                ),
                Some(schema) => format!(
                    "Reply with a JSON object: either {call} to call one or more of the tools, or {{\"response\": <your answer>}} to answer directly, the answer a JSON value of this schema: {}",
                    dumps_json(schema)
                ),
            },
        };
        format!("You can call these tools:\n{tools}\n{reply}")
    }
}

/// A reply in the tools' format turned into OpenAI's: the tool calls, or the answer's text.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Calls(Vec<ResponseToolCall>),
    Text(String),
}

/// A new tool call's id.
pub fn call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

/// Reads a complete reply; one that does not parse (cut by `max_tokens`) stays text as is.
/// A `json_answer` is the JSON text of the response's value.
pub fn read_reply(text: &str, json_answer: bool) -> Reply {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Reply::Text(text.to_string());
    };
    match v.get("response") {
        Some(answer) if json_answer => return Reply::Text(dumps_json(answer)),
        Some(Value::String(answer)) => return Reply::Text(answer.clone()),
        _ => {}
    }
    let Some(calls) = v.get("tool_calls").and_then(Value::as_array) else {
        return Reply::Text(text.to_string());
    };
    Reply::Calls(
        calls
            .iter()
            .map(|c| ResponseToolCall {
                id: call_id(),
                kind: "function",
                function: FunctionCall {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    // As the model wrote them (and as a stream sends them).
                    arguments: dumps_json(&c["arguments"]),
                },
            })
            .collect(),
    )
}

/// An earlier assistant turn's tool calls as the model writes them.
pub fn calls_as_text(calls: &[(String, String)]) -> String {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(name, arguments)| {
            // Arguments are a JSON string in OpenAI's API; written back as the object.
            let arguments = serde_json::from_str::<Value>(arguments).unwrap_or(json!(arguments));
            json!({"name": name, "arguments": arguments})
        })
        .collect();
    dumps_json(&json!({ "tool_calls": calls }))
}

/// A tool's result as the conversation carries it (a user turn: every template has one).
pub fn result_as_text(tool_call_id: &str, name: Option<&str>, content: &str) -> String {
    let mut v = json!({"tool_call_id": tool_call_id, "content": content});
    if let Some(n) = name {
        v["name"] = json!(n);
    }
    dumps_json(&json!({ "tool_response": v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC: ToolSyntax = ToolSyntax::Generic;

    fn tool(name: &str) -> Tool {
        serde_json::from_value(json!({"type": "function", "function": {"name": name,
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}))
        .unwrap()
    }

    #[test]
    fn a_reply_reads_as_calls_or_as_its_answer() {
        let calls = read_reply(
            r#"{"tool_calls": [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]}"#,
            false,
        );
        let Reply::Calls(calls) = calls else {
            panic!("{calls:?}")
        };
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0].function,
            FunctionCall {
                name: "f".into(),
                arguments: r#"{"x": 1}"#.into()
            }
        );
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(
            read_reply(r#"{"response": "hi \"you\""}"#, false),
            Reply::Text("hi \"you\"".into())
        );
        // Cut short: the text as it is.
        assert_eq!(
            read_reply(r#"{"tool_calls": [{"na"#, false),
            Reply::Text(r#"{"tool_calls": [{"na"#.into())
        );
    }

    #[test]
    fn with_a_response_format_the_answer_is_json() {
        let tools = [tool("f")];
        let mut t = ToolUse::from_request(Some(&tools), None, None, GENERIC)
            .unwrap()
            .unwrap();
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        t.set_answer_format(schema.clone());
        assert!(t.json_answer());
        let OutputFormat::JsonSchema(format) = t.output_format(Thinking::No) else {
            panic!()
        };
        assert_eq!(format["anyOf"][1]["properties"]["response"], schema);
        assert!(t
            .instructions()
            .contains(r#"{"type": "object", "properties""#));
        assert_eq!(
            read_reply(r#"{"response": {"a": 1}}"#, true),
            Reply::Text(r#"{"a": 1}"#.into())
        );
        assert_eq!(
            read_reply(r#"{"response": "x"}"#, true),
            Reply::Text(r#""x""#.into())
        );
    }

    #[test]
    fn earlier_turns_are_written_as_the_model_writes_them() {
        let written = calls_as_text(&[
            ("f".into(), r#"{"x": 1}"#.into()),
            ("g".into(), "not json".into()),
        ]);
        assert_eq!(
            written,
            r#"{"tool_calls": [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": "not json"}]}"#
        );
        let Reply::Calls(back) = read_reply(&written, false) else {
            panic!()
        };
        assert_eq!(back[0].function.arguments, r#"{"x": 1}"#);
        assert_eq!(
            result_as_text("call_1", None, "18 \"C\""),
            r#"{"tool_response": {"tool_call_id": "call_1", "content": "18 \"C\""}}"#
        );
    }

    #[test]
    fn tool_choice_decides_the_format() {
        let tools = [tool("f"), tool("g")];
        let none = ToolUse::from_request(
            Some(&tools),
            Some(&ToolChoice::Mode("none".into())),
            None,
            GENERIC,
        );
        assert!(none.unwrap().is_none());
        assert!(ToolUse::from_request(None, None, None, GENERIC)
            .unwrap()
            .is_none());
        let auto = ToolUse::from_request(Some(&tools), None, Some(false), GENERIC)
            .unwrap()
            .unwrap();
        let OutputFormat::JsonSchema(schema) = auto.output_format(Thinking::No) else {
            panic!()
        };
        assert_eq!(schema["anyOf"][1]["required"], json!(["response"]));
        assert_eq!(
            schema["anyOf"][0]["properties"]["tool_calls"]["maxItems"],
            1
        );
        assert!(auto.instructions().contains("\"response\""));
        let named: ToolChoice =
            serde_json::from_value(json!({"type": "function", "function": {"name": "g"}})).unwrap();
        let g = ToolUse::from_request(Some(&tools), Some(&named), None, GENERIC)
            .unwrap()
            .unwrap();
        let OutputFormat::JsonSchema(schema) = g.output_format(Thinking::No) else {
            panic!()
        };
        let items = &schema["properties"]["tool_calls"]["items"]["anyOf"];
        assert_eq!(items.as_array().unwrap().len(), 1);
        assert_eq!(items[0]["properties"]["name"]["const"], "g");
        assert!(schema["properties"]["tool_calls"].get("maxItems").is_none());
        assert!(!g.instructions().contains("\"response\""));
    }
}
