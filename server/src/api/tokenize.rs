//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes).

use super::error::ApiError;
use super::openai::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use super::params::parse_body;
use super::tools::ToolUse;
use super::{body_bytes, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;

/// Token ids of a prompt, or of chat messages (and their tools) through the template.
#[utoipa::path(post, path = "/tokenize", operation_id = "tokenize", tag = "lowbit", request_body = TokenizeRequest, responses((status = 200, body = TokenizeResponse), (status = 400, body = super::error::ErrorBody)))]
pub async fn tokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let body = body_bytes(body, state.max_body_bytes)?;
    let req: TokenizeRequest = parse_body(
        &body,
        &[
            "model",
            "prompt",
            "messages",
            "add_special_tokens",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "chat_template_kwargs",
        ],
        false,
    )?;
    if let Some(m) = &req.model {
        state.check_model(m)?;
    }
    let tokenizer = &state.model.tokenizer;
    // The tools' description is part of a chat's prompt (tools.rs): counted as a chat would.
    let tools = ToolUse::from_request(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        state.model.tool_syntax,
    )?;
    if tools.is_some() && req.messages.is_none() {
        return Err(ApiError::invalid("tools", "'tools' go with 'messages'"));
    }
    if req.chat_template_kwargs.is_some() && req.messages.is_none() {
        return Err(ApiError::invalid(
            "chat_template_kwargs",
            "'chat_template_kwargs' go with 'messages'",
        ));
    }
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => tokenizer
            .encode(p, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
        (None, Some(messages)) => {
            let kwargs = req.chat_template_kwargs.unwrap_or_default();
            super::chat_prompt::chat_prompt(&state, messages, tools.as_ref(), &kwargs)?.ids
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of 'prompt' and 'messages'",
            ))
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: state.engine.max_model_len(),
    }))
}

/// Text of token ids.
#[utoipa::path(post, path = "/detokenize", operation_id = "detokenize", tag = "lowbit", request_body = DetokenizeRequest, responses((status = 200, body = DetokenizeResponse), (status = 400, body = super::error::ErrorBody)))]
pub async fn detokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let body = body_bytes(body, state.max_body_bytes)?;
    let req: DetokenizeRequest = parse_body(&body, &["model", "tokens"], false)?;
    if let Some(m) = &req.model {
        state.check_model(m)?;
    }
    let tokenizer = &state.model.tokenizer;
    let vocab = tokenizer.vocab_size();
    if let Some(&bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let prompt = tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
