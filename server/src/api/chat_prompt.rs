//! A chat request's messages made into the model's prompt: roles and content parts checked, tool
//! calls and results written for the model (in its template's own syntax where lowbit reads
//! it, tool_syntax.rs; else in lowbit's generic format, tools.rs), the chat template rendered
//! and tokenized.

use super::error::ApiError;
use super::openai::{MessageContent, RequestMessage};
use super::reasoning;
use super::tool_syntax::{self, ToolSyntax};
use super::tools::{self, ToolUse};
use super::AppState;
use crate::model::{ChatMessage, ChatTemplate};
use serde_json::json;

/// The messages as the template sees them.
fn messages(messages: &[RequestMessage], syntax: ToolSyntax) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role.as_str(),
            // OpenAI's newer name for the system role.
            "developer" => "system",
            "tool" if syntax.native() => "tool",
            // A tool's result is a user turn (tools.rs): every template has one.
            "tool" => "user",
            "function" => {
                return Err(ApiError::unsupported(&format!("messages[{i}].role")));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role '{other}' (system, developer, user, assistant, tool)"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs 'text'",
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError {
                                message: format!("content parts of type '{kind}' are not supported by lowbit (only 'text')"),
                                ..ApiError::unsupported(&format!("messages[{i}].content[{j}].type"))
                            })
                        }
                    }
                }
                text
            }
        };
        let mut message = tool_turn(i, m, role, content, syntax)?;
        if m.reasoning_content.is_some() {
            if m.role != "assistant" {
                return Err(ApiError::invalid(
                    format!("messages[{i}].reasoning_content"),
                    "only assistant messages carry 'reasoning_content'",
                ));
            }
            message.reasoning_content = m.reasoning_content.clone();
        }
        out.push(message);
    }
    Ok(out)
}

/// A message with its tool calls or its tool result: as the template reads them (`tool_calls`
/// with object arguments, `tool_call_id`, `name`) for a native syntax, else written into the
/// text as the model writes and reads them (tools.rs).
fn tool_turn(
    i: usize,
    m: &RequestMessage,
    role: &str,
    content: String,
    syntax: ToolSyntax,
) -> Result<ChatMessage, ApiError> {
    if m.role == "tool" {
        let Some(id) = &m.tool_call_id else {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "a tool message needs 'tool_call_id'",
            ));
        };
        if syntax.native() {
            return Ok(ChatMessage {
                tool_call_id: Some(template_call_id(syntax, id)),
                name: m.name.clone(),
                ..ChatMessage::new(role, &content)
            });
        }
        let text = tools::result_as_text(id, m.name.as_deref(), &content);
        return Ok(ChatMessage::new(role, &text));
    }
    if m.tool_call_id.is_some() {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_call_id"),
            "only tool messages answer a tool call",
        ));
    }
    let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) else {
        return Ok(ChatMessage::new(role, &content));
    };
    if m.role != "assistant" {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls"),
            "only assistant messages call tools",
        ));
    }
    if let Some(j) = calls.iter().position(|c| c.kind != "function") {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls[{j}].type"),
            "only 'function' tool calls",
        ));
    }
    if syntax.native() {
        let calls = calls
            .iter()
            .map(|c| {
                json!({"id": template_call_id(syntax, &c.id), "type": "function", "function": {
                    "name": c.function.name,
                    "arguments": tool_syntax::template_arguments(&c.function.arguments),
                }})
            })
            .collect();
        return Ok(ChatMessage {
            tool_calls: Some(calls),
            ..ChatMessage::new(role, &content)
        });
    }
    let calls: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
        .collect();
    let written = tools::calls_as_text(&calls);
    let text = if content.is_empty() {
        written
    } else {
        format!("{content}\n{written}")
    };
    Ok(ChatMessage::new(role, &text))
}

/// A call's id as the template is given it (Mistral's want nine letters and digits).
fn template_call_id(syntax: ToolSyntax, id: &str) -> String {
    match syntax {
        ToolSyntax::Mistral { .. } => tool_syntax::mistral_call_id(id),
        _ => id.to_string(),
    }
}

/// A conversation rendered for the model.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// The template left the assistant's turn inside an open `<think>` (DeepSeek-R1).
    pub opens_thinking: bool,
}

/// The token ids of a conversation: messages checked, the model's chat template rendered with
/// the assistant's turn opened (and the caller's `chat_template_kwargs`), the text tokenized
/// (the template writes its own special tokens). With `tools`, the template describes them
/// (native syntax) or the system message does, with the reply's format (generic).
pub fn chat_prompt(
    state: &AppState,
    msgs: &[RequestMessage],
    tools: Option<&ToolUse>,
    kwargs: &serde_json::Map<String, serde_json::Value>,
) -> Result<ChatPrompt, ApiError> {
    if let Some(name) = ChatTemplate::RESERVED
        .iter()
        .find(|n| kwargs.contains_key(**n))
    {
        return Err(ApiError::invalid(
            "chat_template_kwargs",
            format!("'chat_template_kwargs' cannot set '{name}': lowbit sets it"),
        ));
    }
    let syntax = state.model.tool_syntax;
    let mut msgs = messages(msgs, syntax)?;
    if let Some(t) = tools.filter(|_| !syntax.native()) {
        match msgs.first_mut().filter(|m| m.role == "system") {
            Some(system) => system.content = format!("{}\n\n{}", system.content, t.instructions()),
            None => msgs.insert(0, ChatMessage::new("system", &t.instructions())),
        }
    }
    let Some(template) = &state.model.template else {
        return Err(ApiError::bad_request(
            "this model has no chat template: use /v1/completions",
        ));
    };
    let text = template
        .render_with(
            &msgs,
            tools.and_then(ToolUse::template_tools).as_deref(),
            true,
            kwargs,
        )
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let ids = state
        .model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    Ok(ChatPrompt {
        ids,
        opens_thinking: reasoning::prompt_opens_thinking(&text),
    })
}
