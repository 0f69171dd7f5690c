//! `POST /v1/completions`: raw prompts (text, texts, token ids), `echo`, legacy `logprobs`,
//! and both together: the prompt's log-probabilities (what lm-evaluation-harness's
//! loglikelihood asks, usually with `max_tokens` 0 or 1).

use super::chat_reply::token_text;
use super::error::ApiError;
use super::generation::{self, Choice};
use super::openai::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptSpec,
};
use super::params::{self, COMPLETION_FIELDS, MAX_COMPLETION_LOGPROBS};
use super::structured;
use super::{body_bytes, request_id, unix_now, AppState};
use crate::engine::sampler::TokenLogprobs;
use crate::engine::{Event, EventStream};
use crate::model::tokenizer::FimTokens;
use crate::model::Tokenizer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The legacy `logprobs` object; offsets count from `offset` (the echoed prompt's length).
fn legacy_logprobs(
    tokenizer: &Tokenizer,
    lps: &[TokenLogprobs],
    offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for lp in lps {
        let t = token_text(tokenizer, lp.token);
        out.text_offset.push(at);
        at += t.len();
        out.tokens.push(t);
        out.token_logprobs.push(Some(lp.logprob));
        out.top_logprobs.push(Some(
            lp.top
                .iter()
                .map(|&(id, l)| (token_text(tokenizer, id), l))
                .collect(),
        ));
    }
    out
}

/// The legacy `logprobs` object of an echoed prompt: its first token without a
/// log-probability (nothing precedes it), then `lps`, those of the tokens after it.
fn prompt_logprobs(
    tokenizer: &Tokenizer,
    prompt: &[u32],
    lps: &[TokenLogprobs],
) -> CompletionLogprobs {
    let Some(&first) = prompt.first() else {
        return CompletionLogprobs::default();
    };
    let t = token_text(tokenizer, first);
    let rest = legacy_logprobs(tokenizer, lps, t.len());
    CompletionLogprobs {
        text_offset: [0].into_iter().chain(rest.text_offset).collect(),
        tokens: [t].into_iter().chain(rest.tokens).collect(),
        token_logprobs: [None].into_iter().chain(rest.token_logprobs).collect(),
        top_logprobs: [None].into_iter().chain(rest.top_logprobs).collect(),
    }
}

/// `a` followed by `b`.
fn joined(mut a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs {
    a.tokens.extend(b.tokens);
    a.token_logprobs.extend(b.token_logprobs);
    a.top_logprobs.extend(b.top_logprobs);
    a.text_offset.extend(b.text_offset);
    a
}

/// Creates a completion.
#[utoipa::path(post, path = "/v1/completions", operation_id = "createCompletion", tag = "openai", request_body = CompletionRequest,
    responses((status = 200, body = Completion), (status = 400, body = super::error::ErrorBody),
              (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.max_body_bytes)?;
    let req: CompletionRequest = params::parse_body(&body, COMPLETION_FIELDS, true)?;
    state.check_model(&req.model)?;
    let tokenizer = &state.model.tokenizer;
    let settings = params::settings(&req.sampling, tokenizer.vocab_size())?;
    if let Some(b) = req.best_of {
        if b != 1 && b != settings.n as i64 {
            return Err(ApiError::unsupported("best_of"));
        }
    }
    let top = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_COMPLETION_LOGPROBS).contains(&k) => Some(k as usize),
        Some(_) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("'logprobs' must be between 0 and {MAX_COMPLETION_LOGPROBS}"),
            ))
        }
    };
    let echo = req.echo.unwrap_or(false);
    // With `echo`, the prompt's tokens come with their log-probabilities too.
    let prompt_top = top.filter(|_| echo);
    // With a suffix the prompt is the text before the middle: encoded without BOS, which
    // the fill-in-the-middle prompt puts first itself.
    let fim = match &req.suffix {
        None => None,
        Some(suffix) => Some(fill_in_the_middle(tokenizer, suffix, echo)?),
    };
    let add_bos = fim.is_none();
    let prompts: Vec<Vec<u32>> = match req.prompt {
        PromptSpec::Text(t) => vec![encode(tokenizer, &t, add_bos)?],
        PromptSpec::Texts(ts) => ts
            .iter()
            .map(|t| encode(tokenizer, t, add_bos))
            .collect::<Result<_, _>>()?,
        PromptSpec::Tokens(ids) => vec![ids],
        PromptSpec::TokenLists(l) => l,
    };
    let prompts = match fim {
        None => prompts,
        Some((tokens, suffix)) => {
            let bos = tokenizer.bos().filter(|_| tokenizer.adds_bos());
            prompts
                .iter()
                .map(|p| tokens.prompt(bos, p, &suffix))
                .collect()
        }
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "'prompt' must not be empty"));
    }
    // 0 (OpenAI's legacy completions allow it): the prompt alone, with `echo`.
    let max_tokens = match req.max_tokens {
        Some(0) => 0,
        m => params::max_tokens("max_tokens", m, DEFAULT_MAX_TOKENS)?,
    };
    let id = request_id(&headers);
    let grammar = structured::grammar(&state, &req.sampling).await?;
    let n = settings.n;
    // All or nothing: a refused request drops (cancels) the ones already queued.
    let mut streams: Vec<EventStream> = Vec::with_capacity(prompts.len());
    let mut echoes = Vec::with_capacity(prompts.len());
    for p in &prompts {
        echoes.push(if echo {
            tokenizer.decode(p, false).unwrap_or_default()
        } else {
            String::new()
        });
        let mut gen = params::request(
            &id,
            p.clone(),
            max_tokens,
            &settings,
            top,
            state.request_timeout,
        )?;
        gen.prompt_logprobs = prompt_top;
        gen.grammar = grammar.clone();
        streams.push(state.engine.submit(gen)?);
    }
    let requests = streams.len();
    let events = generation::merged(streams);
    let created = unix_now();
    let cmpl_id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    if !req.stream.unwrap_or(false) {
        let (choices, usage) = generation::collect(events, requests, n).await?;
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(index, c): (usize, Choice)| {
                let prefix = &echoes[index / n];
                let echoed = c
                    .prompt_logprobs
                    .map(|lps| prompt_logprobs(tokenizer, &prompts[index / n], &lps))
                    .unwrap_or_default();
                let generated = |_| legacy_logprobs(tokenizer, &c.logprobs, prefix.len());
                CompletionChoice {
                    index,
                    logprobs: top.map(generated).map(|g| joined(echoed, g)),
                    text: format!("{prefix}{}", c.text),
                    finish_reason: c.finish.map(|f| f.as_str()),
                }
            })
            .collect();
        return Ok(Json(Completion {
            id: cmpl_id,
            object: "text_completion",
            created,
            model: state.model_name().to_string(),
            system_fingerprint: state.system_fingerprint.clone(),
            choices,
            usage: Some(Some(usage.into())),
        })
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(generation::sse(move |tx| async move {
        let mut events = events;
        let chunk = |choices: Vec<CompletionChoice>, usage| Completion {
            id: cmpl_id.clone(),
            object: "text_completion",
            created,
            model: state.model_name().to_string(),
            system_fingerprint: state.system_fingerprint.clone(),
            choices,
            usage: include_usage.then_some(usage),
        };
        let one = |index, text, logprobs, finish_reason| {
            vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason,
            }]
        };
        // The echoed prompt goes first; with its log-probabilities, once they are computed.
        if prompt_top.is_none() {
            for (index, prefix) in (0..requests * n).map(|i| (i, &echoes[i / n])) {
                if !prefix.is_empty()
                    && !tx.json(&chunk(one(index, prefix.clone(), None, None), None))
                {
                    return;
                }
            }
        }
        let tokenizer = &state.model.tokenizer;
        let mut offsets: Vec<usize> = (0..requests * n).map(|i| echoes[i / n].len()).collect();
        let (mut done, mut usage) = (0, crate::engine::Usage::default());
        while let Some((r, e)) = events.next().await {
            let sent = match e {
                Event::PromptLogprobs(lps) => {
                    let lp = prompt_logprobs(tokenizer, &prompts[r], &lps);
                    (r * n..(r + 1) * n).all(|index| {
                        let text = echoes[r].clone();
                        tx.json(&chunk(one(index, text, Some(lp.clone()), None), None))
                    })
                }
                Event::Token {
                    choice,
                    text,
                    logprobs,
                    ..
                } => {
                    let index = r * n + choice;
                    if text.is_empty() && logprobs.is_none() {
                        continue;
                    }
                    let lp = logprobs.map(|lp| legacy_logprobs(tokenizer, &[lp], offsets[index]));
                    offsets[index] += text.len();
                    tx.json(&chunk(one(index, text, lp, None), None))
                }
                Event::Finished {
                    choice,
                    reason,
                    text,
                } => {
                    let index = r * n + choice;
                    tx.json(&chunk(one(index, text, None, Some(reason.as_str())), None))
                }
                Event::Done(u) => {
                    usage.add(u);
                    done += 1;
                    if done == requests {
                        if include_usage {
                            tx.json(&chunk(Vec::new(), Some(usage.into())));
                        }
                        tx.done();
                        return;
                    }
                    true
                }
                Event::Error(e) => {
                    tx.error(&generation::failure(e));
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    }))
}

fn encode(tokenizer: &Tokenizer, text: &str, add_bos: bool) -> Result<Vec<u32>, ApiError> {
    tokenizer
        .encode(text, add_bos)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

/// The model's FIM tokens and the suffix's ids, for a completion with a `suffix`; a 400
/// naming `suffix` where the model has no FIM tokens, `echo` where it is asked for too (the
/// prompt is no longer the text before the completion).
fn fill_in_the_middle(
    tokenizer: &Tokenizer,
    suffix: &str,
    echo: bool,
) -> Result<(FimTokens, Vec<u32>), ApiError> {
    let tokens = tokenizer.fim().ok_or_else(|| {
        ApiError::invalid(
            "suffix",
            "this model has no fill-in-the-middle tokens (<|fim_prefix|>, <fim_prefix>, <PRE>, …): 'suffix' needs a code model that has them",
        )
    })?;
    if echo {
        return Err(ApiError::invalid(
            "echo",
            "'echo' cannot be combined with 'suffix'",
        ));
    }
    let ids = tokenizer
        .encode(suffix, false)
        .map_err(|e| ApiError::invalid("suffix", e.to_string()))?;
    Ok((tokens, ids))
}
