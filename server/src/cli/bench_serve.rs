//! `lowbit bench serve`: a load generator for any OpenAI-compatible server (lowbit itself,
//! llama-server, vLLM), so that servers compare on the same load.
//!
//! At each concurrency level, that many clients each send streaming chat requests one after
//! the other until the level's request count is reached. Prompts have a fixed length (distinct
//! words per request, so no prompt is a prefix of another unless `--shared-prefix-tokens` asks
//! for a common system prompt) and outputs a fixed length (`max_tokens` with `ignore_eos`).
//! Reported per level: aggregate output tokens/s and requests/s over the level's wall time,
//! time to first token and inter-token latency percentiles, errors.
//!
//! `--score` sends scoring requests instead, as lm-evaluation-harness's loglikelihood does:
//! `/v1/completions` with the prompt, `echo`, `logprobs: 1` and `max_tokens: 1`, not streamed;
//! reported: prompt tokens scored per second and the request latency (in the TTFT columns).

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `lowbit bench serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Base URL of the server (`http://127.0.0.1:8000`).
    #[arg(long)]
    url: String,
    /// Concurrent streams per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Requests per level (default: 4 × the level's concurrency, at least 8).
    #[arg(long)]
    requests: Option<usize>,
    /// Approximate prompt length in tokens (words of the prompt).
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Output tokens per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// A system prompt of about this many tokens shared by every request (prefix caching).
    #[arg(long, default_value_t = 0)]
    shared_prefix_tokens: usize,
    /// Sampling temperature of every request (0: greedy; OpenAI's default is 1).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// The model id to ask for (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// API key, sent as a bearer token.
    #[arg(long, env = "LOWBIT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Scoring requests (prompt log-probabilities) instead of chats.
    #[arg(long)]
    score: bool,
    /// Structured outputs: every chat asks for JSON valid under the JSON schema in this file
    /// (`response_format: json_schema`); a reply that does not parse counts as an error.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// What one request measured.
#[derive(Debug, Default)]
struct Sample {
    ttft: Option<f64>,
    gaps: Vec<f64>,
    /// Chunks that carried text.
    tokens: usize,
    /// Output tokens by the server's last chunk (`usage`), where it sent one.
    usage_tokens: Option<usize>,
    /// Prompt tokens scored (`--score`).
    scored_tokens: usize,
    /// The reply's text and whether it ended with `finish_reason: stop`.
    text: String,
    stopped: bool,
    error: Option<String>,
}

impl Sample {
    /// Output tokens: the server's count, or else the chunks with text.
    fn output_tokens(&self) -> usize {
        self.usage_tokens.unwrap_or(self.tokens)
    }
}

/// Results of one level.
#[derive(Debug, serde::Serialize)]
struct Level {
    concurrency: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    output_tokens: usize,
    output_tokens_per_second: f64,
    /// `--score`: prompt tokens whose log-probabilities came back, per second.
    scored_tokens_per_second: f64,
    requests_per_second: f64,
    ttft_ms: Percentiles,
    inter_token_ms: Percentiles,
    first_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1e3;
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// Words that are one token each in common BPE vocabularies.
const WORDS: &[&str] = &[
    " the", " house", " river", " small", " green", " light", " city", " water", " stone",
    " paper", " music", " table", " window", " bread", " story", " field", " morning", " road",
    " friend", " letter", " garden", " cloud", " horse", " winter",
];

/// `n` words drawn from a per-`seed` stream (splitmix64), so that prompts of different seeds
/// differ from their first words on and no server can reuse one's cache for another.
fn words(seed: usize, n: usize) -> String {
    let mut x = seed as u64;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            WORDS[((z ^ (z >> 31)) % WORDS.len() as u64) as usize]
        })
        .collect()
}

pub fn run(args: BenchServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: BenchServeArgs) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        // A fresh connection per request (cheap on loopback): a server that closes idle
        // keep-alive connections (llama-server does) must not turn into client errors.
        .pool_max_idle_per_host(0)
        .build()?;
    let base = args.url.trim_end_matches('/').to_string();
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let mut req = client.get(format!("{base}/v1/models"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let v: Value = req
                .send()
                .await
                .with_context(|| format!("GET {base}/v1/models"))?
                .json()
                .await?;
            v["data"][0]["id"]
                .as_str()
                .context("/v1/models lists no model")?
                .to_string()
        }
    };
    let system = (args.shared_prefix_tokens > 0).then(|| {
        format!(
            "You are a helpful assistant.{}",
            words(0, args.shared_prefix_tokens)
        )
    });
    let response_format = match &args.json_schema {
        None => Value::Null,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}})
        }
    };
    let mut levels = Vec::new();
    let mut next_seed = 1usize;
    for &c in &args.concurrency {
        if c == 0 {
            bail!("--concurrency levels must be positive");
        }
        let total = args.requests.unwrap_or((4 * c).max(8));
        let counter = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..c {
            let (client, counter, base, model, auth, system, response_format) = (
                client.clone(),
                counter.clone(),
                base.clone(),
                model.clone(),
                auth.clone(),
                system.clone(),
                response_format.clone(),
            );
            let (prompt_tokens, max_tokens, seed0, temperature, score) = (
                args.prompt_tokens,
                args.max_tokens,
                next_seed,
                args.temperature,
                args.score,
            );
            workers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = counter.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return samples;
                    }
                    if score {
                        let prompt = format!(
                            "{}Tell a story about{}",
                            system.as_deref().unwrap_or(""),
                            words(seed0 + i, prompt_tokens)
                        );
                        let body = json!({
                            "model": model,
                            "prompt": prompt,
                            "echo": true,
                            "logprobs": 1,
                            "max_tokens": 1,
                            "temperature": 0,
                        });
                        samples.push(score_one(&client, &base, auth.as_deref(), &body).await);
                        continue;
                    }
                    let mut messages = Vec::new();
                    if let Some(s) = &system {
                        messages.push(json!({"role": "system", "content": s}));
                    }
                    messages.push(json!({"role": "user", "content": format!("Tell a story about{}", words(seed0 + i, prompt_tokens))}));
                    let mut body = json!({
                        "model": model,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": temperature,
                        "ignore_eos": true,
                        "stream": true,
                        // The server's own count of output tokens (a chunk can carry several
                        // tokens, or none while a character or stop string is held back).
                        "stream_options": {"include_usage": true},
                    });
                    if response_format.is_null() {
                        samples.push(one(&client, &base, auth.as_deref(), &body).await);
                        continue;
                    }
                    body["response_format"] = response_format.clone();
                    let mut sample = one(&client, &base, auth.as_deref(), &body).await;
                    // A complete structured reply must parse (one cut by max_tokens cannot).
                    if sample.error.is_none()
                        && sample.stopped
                        && serde_json::from_str::<Value>(&sample.text).is_err()
                    {
                        sample.error = Some(format!("the reply is not JSON: {}", sample.text));
                    }
                    samples.push(sample);
                }
            }));
        }
        let mut samples = Vec::new();
        for w in workers {
            samples.extend(w.await.context("a load worker failed")?);
        }
        next_seed += total;
        let seconds = start.elapsed().as_secs_f64();
        let errors: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
        let output_tokens: usize = samples.iter().map(Sample::output_tokens).sum();
        let scored_tokens: usize = samples.iter().map(|s| s.scored_tokens).sum();
        let level = Level {
            concurrency: c,
            requests: samples.len(),
            errors: errors.len(),
            seconds,
            output_tokens,
            output_tokens_per_second: output_tokens as f64 / seconds,
            scored_tokens_per_second: scored_tokens as f64 / seconds,
            requests_per_second: (samples.len() - errors.len()) as f64 / seconds,
            ttft_ms: percentiles(samples.iter().filter_map(|s| s.ttft).collect()),
            inter_token_ms: percentiles(samples.iter().flat_map(|s| s.gaps.clone()).collect()),
            first_error: errors.first().and_then(|s| s.error.clone()),
        };
        if !args.json {
            if levels.is_empty() {
                let (rate, first) = if args.score {
                    ("scored tok/s", "latency p50/p95/p99 ms")
                } else {
                    ("out tok/s", "TTFT p50/p95/p99 ms")
                };
                println!(
                    "{:>7} {:>8} {:>6} {:>12} {:>7} {:>22} {:>21}",
                    "streams", "requests", "errors", rate, "req/s", first, "ITL p50/p95/p99 ms"
                );
            }
            let p = |x: Percentiles| format!("{:.0}/{:.0}/{:.0}", x.p50, x.p95, x.p99);
            let q = |x: Percentiles| format!("{:.1}/{:.1}/{:.1}", x.p50, x.p95, x.p99);
            let rate = if args.score {
                level.scored_tokens_per_second
            } else {
                level.output_tokens_per_second
            };
            println!(
                "{:>7} {:>8} {:>6} {:>12.1} {:>7.2} {:>22} {:>21}",
                level.concurrency,
                level.requests,
                level.errors,
                rate,
                level.requests_per_second,
                p(level.ttft_ms),
                q(level.inter_token_ms)
            );
            if let Some(e) = &level.first_error {
                println!("        first error: {e}");
            }
        }
        levels.push(level);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "url": base,
                "model": model,
                "prompt_tokens": args.prompt_tokens,
                "max_tokens": args.max_tokens,
                "shared_prefix_tokens": args.shared_prefix_tokens,
                "temperature": args.temperature,
                "score": args.score,
                "levels": levels,
            }))?
        );
    }
    Ok(())
}

/// One scoring request (`--score`): its latency (as `ttft`) and the prompt tokens whose
/// log-probabilities came back (`null` for the first, which nothing precedes).
async fn score_one(
    client: &reqwest::Client,
    base: &str,
    auth: Option<&str>,
    body: &Value,
) -> Sample {
    let mut sample = Sample::default();
    let start = Instant::now();
    let sent = post(client, &format!("{base}/v1/completions"), auth, body).await;
    let v: Value = match sent {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                sample.error = Some(e.to_string());
                return sample;
            }
        },
        Err(e) => {
            sample.error = Some(e);
            return sample;
        }
    };
    sample.ttft = Some(start.elapsed().as_secs_f64());
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
    let scored = v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .map_or(0, |l| l.len());
    // The echoed prompt's tokens and the one generated: a server that did not echo them
    // scored nothing.
    if prompt == 0 || scored < prompt {
        sample.error = Some(format!(
            "{scored} token logprobs for a prompt of {prompt} tokens: not echoed"
        ));
        return sample;
    }
    sample.scored_tokens = prompt;
    sample.usage_tokens = v["usage"]["completion_tokens"].as_u64().map(|n| n as usize);
    sample
}

/// POSTs `body` as JSON with the bearer token; a failure or a non-2xx answer as its message
/// (the status and the server's error body).
async fn post(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    body: &Value,
) -> Result<reqwest::Response, String> {
    let mut req = client.post(url).json(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    Err(format!(
        "{status}: {}",
        resp.text().await.unwrap_or_default()
    ))
}

/// One streaming chat request: time to the first content chunk, gaps between chunks.
async fn one(client: &reqwest::Client, base: &str, auth: Option<&str>, body: &Value) -> Sample {
    let mut sample = Sample::default();
    let start = Instant::now();
    let resp = match post(client, &format!("{base}/v1/chat/completions"), auth, body).await {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(e);
            return sample;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut last: Option<Instant> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                sample.error = Some(e.to_string());
                return sample;
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return sample;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if v.get("error").is_some() {
                sample.error = Some(data.to_string());
                return sample;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                sample.usage_tokens = Some(n as usize);
            }
            if v["choices"][0]["finish_reason"] == "stop" {
                sample.stopped = true;
            }
            let content = v["choices"][0]["delta"]["content"].as_str();
            sample.text.push_str(content.unwrap_or(""));
            if content.is_some_and(|c| !c.is_empty()) {
                let now = Instant::now();
                match last {
                    None => sample.ttft = Some((now - start).as_secs_f64()),
                    Some(t) => sample.gaps.push((now - t).as_secs_f64()),
                }
                last = Some(now);
                sample.tokens += 1;
            }
        }
    }
    sample
}
