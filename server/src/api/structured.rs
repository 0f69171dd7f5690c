//! Structured outputs at the API: OpenAI's `response_format` (`json_object`, `json_schema`),
//! vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`) and its older
//! `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` become one
//! [`OutputFormat`], compiled (on a blocking thread: a large schema takes milliseconds) into
//! the grammar the engine masks each token with. A format that does not compile is a 400
//! naming its parameter.

use super::error::ApiError;
use super::openai::{ResponseFormat, SamplingFields};
use super::AppState;
use crate::engine::grammar::{Grammar, GrammarError, OutputFormat};

/// The format a request asks for, with the parameter that asked; at most one may.
pub fn output_format(f: &SamplingFields) -> Result<Option<(&'static str, OutputFormat)>, ApiError> {
    let mut asked = Vec::new();
    match &f.response_format {
        None | Some(ResponseFormat::Text {}) => {}
        Some(ResponseFormat::JsonObject {}) => asked.push((
            "response_format",
            OutputFormat::JsonSchema(serde_json::json!({"type": "object"})),
        )),
        Some(ResponseFormat::JsonSchema { json_schema }) => asked.push((
            "response_format",
            OutputFormat::JsonSchema(json_schema.schema.clone().unwrap_or(serde_json::json!({}))),
        )),
    }
    if let Some(schema) = &f.guided_json {
        asked.push(("guided_json", OutputFormat::JsonSchema(schema.clone())));
    }
    if let Some(rx) = &f.guided_regex {
        asked.push(("guided_regex", OutputFormat::Regex(rx.clone())));
    }
    if let Some(choices) = &f.guided_choice {
        asked.push(("guided_choice", OutputFormat::Choice(choices.clone())));
    }
    if let Some(grammar) = &f.guided_grammar {
        asked.push(("guided_grammar", OutputFormat::Lark(grammar.clone())));
    }
    if let Some(s) = &f.structured_outputs {
        const PARAM: &str = "structured_outputs";
        let json = match &s.json {
            // vLLM takes the schema or its text.
            Some(serde_json::Value::String(text)) => {
                Some(serde_json::from_str(text).map_err(|e| {
                    ApiError::invalid(PARAM, format!("'structured_outputs.json' is not JSON: {e}"))
                })?)
            }
            other => other.clone(),
        };
        let formats = [
            json.map(OutputFormat::JsonSchema),
            s.regex.clone().map(OutputFormat::Regex),
            s.choice.clone().map(OutputFormat::Choice),
            s.grammar.clone().map(OutputFormat::Lark),
        ];
        let given: Vec<OutputFormat> = formats.into_iter().flatten().collect();
        if given.len() != 1 {
            return Err(ApiError::invalid(
                PARAM,
                "'structured_outputs' takes exactly one of json, regex, choice, grammar",
            ));
        }
        asked.extend(given.into_iter().map(|f| (PARAM, f)));
    }
    if asked.len() > 1 {
        let names: Vec<&str> = asked.iter().map(|(p, _)| *p).collect();
        return Err(ApiError::invalid(
            asked[1].0,
            format!(
                "only one output format may be given, got {}",
                names.join(" and ")
            ),
        ));
    }
    Ok(asked.pop())
}

/// The compiled grammar of the format `f` asks for, if any.
pub async fn grammar(state: &AppState, f: &SamplingFields) -> Result<Option<Grammar>, ApiError> {
    match output_format(f)? {
        Some((param, format)) => compile(state, param, format).await.map(Some),
        None => Ok(None),
    }
}

/// `format` compiled; an error is a 400 naming `param`.
pub async fn compile(
    state: &AppState,
    param: &'static str,
    format: OutputFormat,
) -> Result<Grammar, ApiError> {
    let grammars = state.model.grammars.clone();
    let compiled = tokio::task::spawn_blocking(move || grammars.compile(&format))
        .await
        .map_err(|e| ApiError::internal(format!("compiling the output format failed: {e}")))?;
    match compiled {
        Ok(g) => Ok(g),
        Err(GrammarError::Invalid(why)) => Err(ApiError::invalid(
            param,
            format!("'{param}' cannot be used: {why}"),
        )),
        Err(e @ GrammarError::Tokenizer(_)) => Err(ApiError::invalid(param, e.to_string())),
    }
}
