//! A Responses `input` (and a stored response's output, which is valid input too) as chat
//! messages: message items become messages, `function_call` items an assistant turn's tool
//! calls, `function_call_output` items tool messages, and a `reasoning` item the next
//! assistant turn's `reasoning_content`. Errors name the item and field (`input[2].call_id`).

use super::error::ApiError;
use super::openai::{ContentPart, FunctionCall, MessageContent, RequestMessage, RequestToolCall};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{Map, Value};

/// What starts lowbit's opaque reasoning content.
const SEALED: &str = "lowbit.reasoning.v1:";

/// A reasoning item's thinking as `encrypted_content`: opaque to the client, which sends it
/// back when it keeps the conversation itself (`store: false`). Encoded, not encrypted: the
/// client already saw the thinking in `content`.
pub fn seal(text: &str) -> String {
    format!("{SEALED}{}", BASE64.encode(text))
}

fn unseal(sealed: &str) -> Option<String> {
    let bytes = BASE64.decode(sealed.strip_prefix(SEALED)?).ok()?;
    String::from_utf8(bytes).ok()
}

/// Fields each item type may carry.
fn allowed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "message" => &["type", "role", "content", "id", "status"],
        "function_call" => &["type", "call_id", "name", "arguments", "id", "status"],
        "function_call_output" => &["type", "call_id", "output", "id", "status"],
        _ => &[
            "type",
            "id",
            "summary",
            "content",
            "encrypted_content",
            "status",
        ],
    }
}

/// Item types lowbit cannot take (hosted tools, images, references to OpenAI's storage).
const UNSUPPORTED_ITEMS: &[&str] = &[
    // (An `item_reference` is resolved against the store before it gets here.)
    "item_reference",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "web_search_call",
    "image_generation_call",
    "code_interpreter_call",
    "local_shell_call",
    "local_shell_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
];

fn string_field<'a>(
    item: &'a Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<&'a str, ApiError> {
    match item.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid(
            format!("{at}.{field}"),
            format!("'{at}.{field}' must be a string"),
        )),
        None => Err(ApiError::invalid(
            format!("{at}.{field}"),
            format!("'{at}.{field}' is required"),
        )),
    }
}

/// The text of a content list whose parts are of the `allowed` types (each holding `text`,
/// or `refusal` for a refusal part).
fn parts_text(parts: &Value, at: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let Some(parts) = parts.as_array() else {
        return Err(ApiError::invalid(
            at,
            format!("'{at}' must be a string or an array of content parts"),
        ));
    };
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        let Some(part) = part.as_object() else {
            return Err(ApiError::invalid(&at, format!("'{at}' must be an object")));
        };
        let kind = string_field(part, &at, "type")?;
        if !allowed.contains(&kind) {
            let param = format!("{at}.type");
            return Err(if kind.starts_with("input_") {
                ApiError::unsupported(&param)
            } else {
                ApiError::invalid(
                    &param,
                    format!(
                        "'{param}' must be one of {}, got '{kind}'",
                        allowed.join(", ")
                    ),
                )
            });
        }
        let field = if kind == "refusal" { "refusal" } else { "text" };
        text.push_str(string_field(part, &at, field)?);
    }
    Ok(text)
}

/// Text content: a string or parts.
fn content_text(value: Option<&Value>, at: &str, allowed: &[&str]) -> Result<String, ApiError> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => parts_text(v, at, allowed),
        None => Err(ApiError::invalid(at, format!("'{at}' is required"))),
    }
}

fn text_message(role: &str, text: String) -> RequestMessage {
    RequestMessage {
        role: role.to_string(),
        content: Some(MessageContent::Parts(vec![ContentPart {
            kind: "text".to_string(),
            text: Some(text),
        }])),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
    }
}

/// Builds chat messages from items, in order.
#[derive(Default)]
pub struct Conversation {
    pub messages: Vec<RequestMessage>,
    /// A reasoning item's text, for the next assistant turn.
    reasoning: Option<String>,
    /// The last message is an assistant turn that later calls may join.
    assistant_open: bool,
}

impl Conversation {
    /// Adds one item; `at` names it in errors (`input[3]`).
    pub fn push(&mut self, item: &Value, at: &str) -> Result<(), ApiError> {
        let Some(obj) = item.as_object() else {
            return Err(ApiError::invalid(at, format!("'{at}' must be an object")));
        };
        let kind = match obj.get("type") {
            None if obj.contains_key("role") => "message",
            _ => string_field(obj, at, "type")?,
        };
        if UNSUPPORTED_ITEMS.contains(&kind) {
            return Err(ApiError::unsupported(&format!("{at}.type")));
        }
        if ![
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
        ]
        .contains(&kind)
        {
            let param = format!("{at}.type");
            return Err(ApiError::invalid(
                &param,
                format!("'{param}' must be message, function_call, function_call_output or reasoning, got '{kind}'"),
            ));
        }
        if let Some(field) = obj
            .keys()
            .find(|k| !allowed_fields(kind).contains(&k.as_str()))
        {
            let param = format!("{at}.{field}");
            return Err(ApiError {
                code: Some("unknown_parameter"),
                ..ApiError::invalid(&param, format!("unknown parameter '{param}'"))
            });
        }
        match kind {
            "message" => self.message(obj, at),
            "function_call" => self.function_call(obj, at),
            "function_call_output" => self.call_output(obj, at),
            _ => self.reasoning(obj, at),
        }
    }

    fn message(&mut self, obj: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
        let role = string_field(obj, at, "role")?;
        let allowed: &[&str] = match role {
            "user" | "system" | "developer" => &["input_text"],
            "assistant" => &["output_text", "refusal", "input_text"],
            other => {
                let param = format!("{at}.role");
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "'{param}' must be user, system, developer or assistant, got '{other}'"
                    ),
                ));
            }
        };
        let text = content_text(obj.get("content"), &format!("{at}.content"), allowed)?;
        let mut message = text_message(role, text);
        // Thinking belongs to the assistant turn after it; before any other turn it has none.
        let thinking = self.reasoning.take();
        if role == "assistant" {
            message.reasoning_content = thinking;
        }
        self.messages.push(message);
        self.assistant_open = role == "assistant";
        Ok(())
    }

    fn function_call(&mut self, obj: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
        let call = RequestToolCall {
            id: string_field(obj, at, "call_id")?.to_string(),
            kind: "function".to_string(),
            function: FunctionCall {
                name: string_field(obj, at, "name")?.to_string(),
                arguments: string_field(obj, at, "arguments")?.to_string(),
            },
        };
        if !self.assistant_open {
            self.messages.push(RequestMessage {
                role: "assistant".to_string(),
                content: None,
                name: None,
                tool_calls: None,
                tool_call_id: None,
                reasoning_content: self.reasoning.take(),
            });
            self.assistant_open = true;
        }
        if let Some(last) = self.messages.last_mut() {
            last.tool_calls.get_or_insert_with(Vec::new).push(call);
            // Thinking between two calls of one turn joins the turn's.
            if let Some(more) = self.reasoning.take() {
                match &mut last.reasoning_content {
                    Some(text) => {
                        text.push_str("\n\n");
                        text.push_str(&more);
                    }
                    none => *none = Some(more),
                }
            }
        }
        Ok(())
    }

    fn call_output(&mut self, obj: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
        let call_id = string_field(obj, at, "call_id")?;
        let output = content_text(obj.get("output"), &format!("{at}.output"), &["input_text"])?;
        let mut message = text_message("tool", output);
        message.tool_call_id = Some(call_id.to_string());
        self.messages.push(message);
        self.assistant_open = false;
        self.reasoning = None;
        Ok(())
    }

    fn reasoning(&mut self, obj: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
        let sealed = match obj.get("encrypted_content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match unseal(s) {
                Some(text) => Some(text),
                None => {
                    let param = format!("{at}.encrypted_content");
                    return Err(ApiError::invalid(
                        &param,
                        format!("'{param}' is not lowbit's (another server's encrypted reasoning cannot be read)"),
                    ));
                }
            },
            Some(_) => {
                let param = format!("{at}.encrypted_content");
                return Err(ApiError::invalid(
                    &param,
                    format!("'{param}' must be a string"),
                ));
            }
        };
        // The thinking itself where given, else what lowbit sealed, else its summary.
        let given = |v: &Value| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty());
        let text = match (obj.get("content"), sealed) {
            (Some(v), _) if given(v) => {
                parts_text(v, &format!("{at}.content"), &["reasoning_text"])?
            }
            (_, Some(text)) => text,
            _ => match obj.get("summary") {
                Some(v) => parts_text(v, &format!("{at}.summary"), &["summary_text"])?,
                None => {
                    let param = format!("{at}.summary");
                    return Err(ApiError::invalid(&param, format!("'{param}' is required")));
                }
            },
        };
        // Two reasoning items in a row are one turn's thinking.
        self.reasoning = Some(match self.reasoning.take() {
            Some(earlier) => format!("{earlier}\n\n{text}"),
            None => text,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conversation(items: Value) -> Result<Vec<RequestMessage>, ApiError> {
        let mut c = Conversation::default();
        for (i, item) in items.as_array().unwrap().iter().enumerate() {
            c.push(item, &format!("input[{i}]"))?;
        }
        Ok(c.messages)
    }

    fn text(m: &RequestMessage) -> String {
        match &m.content {
            Some(MessageContent::Parts(p)) => p.iter().filter_map(|p| p.text.clone()).collect(),
            Some(MessageContent::Text(t)) => t.clone(),
            None => String::new(),
        }
    }

    #[test]
    fn calls_join_the_assistant_turn_and_thinking_goes_to_the_next_one() {
        let call = |id: &str| json!({"type": "function_call", "call_id": id, "name": "f", "arguments": "{}"});
        let m = conversation(json!([
            {"role": "developer", "content": [{"type": "input_text", "text": "Be "}, {"type": "input_text", "text": "brief"}]},
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            call("call_1"), call("call_2"),
            {"type": "function_call_output", "call_id": "call_1", "output": "one"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "again"}]},
            call("call_3"),
        ]))
        .unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                "developer",
                "user",
                "assistant",
                "tool",
                "tool",
                "assistant"
            ]
        );
        assert_eq!(text(&m[0]), "Be brief");
        assert_eq!(text(&m[2]), "Let me look.");
        assert_eq!(m[2].reasoning_content.as_deref(), Some("hmm"));
        let ids: Vec<&str> = m[2]
            .tool_calls
            .iter()
            .flatten()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["call_1", "call_2"]);
        assert_eq!(
            (m[3].tool_call_id.as_deref(), text(&m[3]).as_str()),
            (Some("call_1"), "one")
        );
        assert_eq!(text(&m[4]), "two");
        assert!(m[5].content.is_none());
        assert_eq!(m[5].reasoning_content.as_deref(), Some("again"));
    }

    #[test]
    fn sealed_thinking_comes_back_as_it_was() {
        let thought = "2 + 2 is 4, \"surely\" ✓";
        let item = json!({"type": "reasoning", "summary": [], "encrypted_content": seal(thought)});
        let m = conversation(json!([item, {"role": "assistant", "content": "4"}])).unwrap();
        assert_eq!(m[0].reasoning_content.as_deref(), Some(thought));
        // An empty `content`, as clients rebuilding items send it, does not hide the sealed copy.
        let empty = json!({"type": "reasoning", "summary": [], "content": [], "encrypted_content": seal(thought)});
        let m = conversation(json!([empty, {"role": "assistant", "content": "4"}])).unwrap();
        assert_eq!(m[0].reasoning_content.as_deref(), Some(thought));
        // The thinking given in the clear wins over the sealed copy.
        let both = json!({"type": "reasoning", "summary": [], "encrypted_content": seal("old"),
            "content": [{"type": "reasoning_text", "text": "new"}]});
        let m = conversation(json!([both, {"role": "assistant", "content": "4"}])).unwrap();
        assert_eq!(m[0].reasoning_content.as_deref(), Some("new"));
    }

    #[test]
    fn thinking_goes_to_its_own_turn() {
        let thought = |t: &str| json!({"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": t}]});
        let call = |id: &str| json!({"type": "function_call", "call_id": id, "name": "f", "arguments": "{}"});
        let output =
            |id: &str| json!({"type": "function_call_output", "call_id": id, "output": "x"});
        let m = conversation(json!([
            {"role": "user", "content": "q"},
            thought("a"), call("1"), thought("b"), call("2"), output("1"), output("2"),
            {"role": "assistant", "content": "done"},
            thought("stray"), {"role": "user", "content": "again"},
            thought("c"), thought("d"), {"role": "assistant", "content": "ok"},
        ]))
        .unwrap();
        let turns: Vec<(&str, Option<&str>)> = m
            .iter()
            .map(|m| (m.role.as_str(), m.reasoning_content.as_deref()))
            .collect();
        assert_eq!(
            turns,
            [
                ("user", None),
                ("assistant", Some("a\n\nb")),
                ("tool", None),
                ("tool", None),
                ("assistant", None),
                ("user", None),
                ("assistant", Some("c\n\nd")),
            ]
        );
    }

    #[test]
    fn errors_name_the_item_and_field() {
        let param = |items: Value| conversation(items).unwrap_err().param.unwrap();
        assert_eq!(param(json!(["hi"])), "input[0]");
        assert_eq!(
            param(json!([{"type": "message", "content": "x"}])),
            "input[0].role"
        );
        assert_eq!(param(json!([{"role": "user"}])), "input[0].content");
        assert_eq!(
            param(json!([{"role": "user", "content": 3}])),
            "input[0].content"
        );
        assert_eq!(
            param(json!([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}])),
            "input[0].content[0].type"
        );
        assert_eq!(
            param(json!([{"type": "function_call_output", "output": "x"}])),
            "input[0].call_id"
        );
        assert_eq!(
            param(json!([{"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}])),
            "input[0].encrypted_content"
        );
        let forged = format!("{SEALED}not base64!");
        assert_eq!(
            param(json!([{"type": "reasoning", "summary": [], "encrypted_content": forged}])),
            "input[0].encrypted_content"
        );
        assert_eq!(
            param(json!([{"type": "item_reference", "id": "msg_1"}])),
            "input[0].type"
        );
        assert_eq!(param(json!([{"type": "banana"}])), "input[0].type");
    }
}
