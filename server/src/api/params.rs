//! From a request body to engine requests: JSON parsing with errors that name the parameter,
//! the checks OpenAI makes on values, and the mapping to [`GenerationRequest`].

use super::error::ApiError;
use super::openai::SamplingFields;
use crate::engine::{GenerationRequest, SamplingParams};
use serde::de::DeserializeOwned;
use std::time::Instant;

/// OpenAI parameters lowbit does not implement: a 400 that names them.
const UNSUPPORTED: &[&str] = &[
    // The legacy names of tools.
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "store",
    "metadata",
    "service_tier",
];

/// Fields of nested objects lowbit does not implement (legacy function calls in messages).
const NESTED_UNSUPPORTED: &[&str] = &["function_call", "audio", "refusal"];

/// Fields both endpoints accept (see [`SamplingFields`]).
const SHARED_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "stop_token_ids",
    "min_tokens",
    "stream",
    "stream_options",
    "max_tokens",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
];

/// Chat's own fields.
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "reasoning_effort",
    "prompt_cache_key",
    "safety_identifier",
];

/// `reasoning_effort` values (OpenAI's), passed to the chat template as `reasoning_effort`.
pub const REASONING_EFFORTS: &[&str] = &["none", "minimal", "low", "medium", "high"];

/// `reasoning_effort` checked, into the template variables unless they set it themselves.
pub fn reasoning_effort(
    param: &str,
    effort: Option<&str>,
    kwargs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApiError> {
    let Some(effort) = effort else {
        return Ok(());
    };
    if !REASONING_EFFORTS.contains(&effort) {
        return Err(ApiError::invalid(
            param,
            format!(
                "'{param}' must be one of {}, got '{effort}'",
                REASONING_EFFORTS.join(", ")
            ),
        ));
    }
    kwargs
        .entry("reasoning_effort")
        .or_insert_with(|| serde_json::Value::String(effort.to_string()));
    Ok(())
}

/// Completions' own fields.
pub const COMPLETION_FIELDS: &[&str] =
    &["model", "prompt", "logprobs", "echo", "best_of", "suffix"];

/// Most choices per prompt.
pub const MAX_N: i64 = 16;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most alternatives per token in chat (`top_logprobs`), OpenAI's limit.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most alternatives per token in completions (`logprobs`), OpenAI's limit.
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;

/// Parses a JSON body into `T`, rejecting unknown and unsupported top-level fields
/// (`own_fields`, plus the shared sampling fields when `sampling`), with the parameter named
/// in every error.
pub fn parse_body<T: DeserializeOwned>(
    body: &[u8],
    own_fields: &[&str],
    sampling: bool,
) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    for key in obj.keys() {
        if UNSUPPORTED.contains(&key.as_str()) {
            return Err(ApiError::unsupported(key));
        }
        let shared = sampling && SHARED_FIELDS.contains(&key.as_str());
        if !own_fields.contains(&key.as_str()) && !shared {
            return Err(ApiError {
                code: Some("unknown_parameter"),
                ..ApiError::invalid(key.clone(), format!("unknown parameter '{key}'"))
            });
        }
    }
    // serde loses the path of a field inside `flatten`: the shared fields are checked on
    // their own first, so their errors name them.
    if sampling {
        typed::<SamplingFields>(value.clone())?;
    }
    typed(value)
}

/// Deserializes a checked value into `T`, naming the failing field in the error.
pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // `unknown field `x`` or `missing field `x`` of an object: name the field itself.
        let field_of = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        };
        let unknown = field_of("unknown field `");
        let named = unknown.clone().or_else(|| field_of("missing field `"));
        // (serde_path_to_error ends the path with an unknown field's own name.)
        let top_level = path == "." || named.as_deref() == Some(path.as_str());
        let param = match named.as_deref() {
            Some(field) if top_level => field.to_string(),
            Some(field) if !path.ends_with(field) => format!("{path}.{field}"),
            _ => path,
        };
        match unknown.as_deref() {
            Some(field) if NESTED_UNSUPPORTED.contains(&field) => ApiError::unsupported(&param),
            // A request's own unknown field (`deny_unknown_fields`), as `parse_body` names one.
            Some(_) if top_level => ApiError {
                code: Some("unknown_parameter"),
                ..ApiError::invalid(param.clone(), format!("unknown parameter '{param}'"))
            },
            _ => ApiError::invalid(param.clone(), format!("'{param}': {inner}")),
        }
    })
}

fn check_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(
            param,
            format!("'{param}' must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// Validated sampling and stopping settings of one request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub n: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// vLLM's `min_tokens` (checked against `max_tokens` by [`request`]'s callers).
    pub min_tokens: usize,
    /// OpenAI's `user`: logged with the request, to trace abuse to an end user.
    pub user: Option<String>,
}

/// Checks the shared fields as OpenAI does and turns them into engine settings.
pub fn settings(f: &SamplingFields, vocab: usize) -> Result<Settings, ApiError> {
    check_range("temperature", f.temperature, 0.0, 2.0)?;
    if let Some(p) = f.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("'top_p' must be in (0, 1], got {p}"),
            ));
        }
    }
    check_range("presence_penalty", f.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0)?;
    check_range("min_p", f.min_p, 0.0, 1.0)?;
    if let Some(r) = f.repetition_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("'repetition_penalty' must be in (0, 10], got {r}"),
            ));
        }
    }
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("'n' must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("'top_k' must be -1, 0 or positive, got {k}"),
            ))
        }
    };
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, &v) in f.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("'logit_bias' key '{k}' is not a token id"),
            )
        })?;
        if id as usize >= vocab {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("'logit_bias' token {id} is outside the vocabulary of {vocab}"),
            ));
        }
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("'logit_bias' values must be in [-100, 100], got {v}"),
            ));
        }
        logit_bias.push((id, v));
    }
    let stop_token_ids = f.stop_token_ids.clone().unwrap_or_default();
    if let Some(&bad) = stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "stop_token_ids",
            format!("token {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    // Without a seed each request draws its own; with one, the same request samples the
    // same tokens.
    let seed = match f.seed {
        Some(s) => s as u64,
        None => rand_seed(),
    };
    Ok(Settings {
        n: n as usize,
        sampling: SamplingParams {
            // OpenAI's default temperature is 1.
            temperature: f.temperature.unwrap_or(1.0) as f32,
            top_k,
            // (0, 1] and (0, 10] stay above zero once narrowed.
            top_p: (f.top_p.unwrap_or(1.0) as f32).max(f32::MIN_POSITIVE),
            min_p: f.min_p.unwrap_or(0.0) as f32,
            seed,
            frequency_penalty: f.frequency_penalty.unwrap_or(0.0) as f32,
            presence_penalty: f.presence_penalty.unwrap_or(0.0) as f32,
            repetition_penalty: (f.repetition_penalty.unwrap_or(1.0) as f32).max(f32::MIN_POSITIVE),
            logit_bias,
        },
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        min_tokens: match f.min_tokens {
            None => 0,
            Some(m) if m >= 0 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    "min_tokens",
                    format!("'min_tokens' must be at least 0, got {m}"),
                ))
            }
        },
        user: f.user.clone(),
    })
}

/// A seed from the clock and a counter (no need for cryptographic randomness).
fn rand_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

/// `max_tokens` (or its other name): positive, default `default`.
pub fn max_tokens(param: &str, v: Option<i64>, default: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(m) if m >= 1 => Ok(m as usize),
        Some(m) => Err(ApiError::invalid(
            param,
            format!("'{param}' must be at least 1, got {m}"),
        )),
    }
}

/// One engine request from validated parts; a `min_tokens` above `max_tokens` is a 400.
pub fn request(
    id: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
    s: &Settings,
    logprobs: Option<usize>,
    timeout: Option<std::time::Duration>,
) -> Result<GenerationRequest, ApiError> {
    if s.min_tokens > max_tokens {
        return Err(ApiError::invalid(
            "min_tokens",
            format!(
                "'min_tokens' ({}) must not exceed 'max_tokens' ({max_tokens})",
                s.min_tokens
            ),
        ));
    }
    tracing::info!(
        request_id = %id,
        user = s.user.as_deref().unwrap_or(""),
        prompt_tokens = prompt.len(),
        max_tokens,
        n = s.n,
        "request parsed"
    );
    Ok(GenerationRequest {
        id: id.to_string(),
        prompt,
        n: s.n,
        max_tokens,
        sampling: s.sampling.clone(),
        stop: s.stop.clone(),
        stop_token_ids: s.stop_token_ids.clone(),
        ignore_eos: s.ignore_eos,
        min_tokens: s.min_tokens,
        logprobs,
        prompt_logprobs: None,
        deadline: timeout.map(|t| Instant::now() + t),
        grammar: None,
    })
}
