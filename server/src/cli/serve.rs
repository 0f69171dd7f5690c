//! `lowbit serve`: the OpenAI-compatible server. Every flag is also a `LOWBIT_*` environment
//! variable (for containers).
//!
//! Start-up: the HTTP side listens at once (`/health` answers, `/ready` is 503) while the
//! engine thread loads the weights and allocates the KV pool; then `/ready` turns 200. On
//! SIGTERM or SIGINT the server drains: `/ready` and new requests get 503, in-flight requests
//! finish (up to `--shutdown-timeout`), and the process exits 0.

use super::{KvCacheDtypeArg, ModelArgs};
use crate::api::reasoning::ReasoningParser;
use crate::api::responses_store::ResponseStore;
use crate::api::tool_syntax::ToolCallParser;
use crate::api::{self, AppState, ServedModel};
use crate::engine::grammar::Grammars;
use crate::engine::kv_sizing::{kv_pools, KvBudget};
use crate::engine::speculative::SpeculativeConfig;
use crate::engine::{AdmissionLimits, EngineHandle, LlamaStep, Loaded, Scheduler, SchedulerConfig};
use crate::metrics::Metrics;
use crate::model::ModelSource;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lowbit_gpu::DEFAULT_BLOCK_TOKENS;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Arguments of `lowbit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 in containers).
    #[arg(long, env = "LOWBIT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "LOWBIT_PORT", default_value_t = 8000)]
    pub port: u16,
    /// API keys clients must send as `Authorization: Bearer <key>` (repeat the flag, or
    /// comma-separate them in LOWBIT_API_KEYS). None: no authentication.
    #[arg(
        long = "api-key",
        env = "LOWBIT_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// The model id in /v1/models and responses (repeat for aliases). Default: the file name.
    #[arg(long, env = "LOWBIT_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,
    /// Longest prompt + completion in tokens (default: the model's context, capped by the KV
    /// pool).
    #[arg(long, env = "LOWBIT_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// KV-cache size in bytes (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, env = "LOWBIT_KV_CACHE_MEMORY", value_parser = parse_bytes, default_value = "1GiB")]
    pub kv_cache_memory: u64,
    /// How the KV cache stores keys and values (f16: twice the tokens in the same memory).
    #[arg(long, env = "LOWBIT_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtypeArg::F32)]
    pub kv_cache_dtype: KvCacheDtypeArg,
    /// KV-cache size in tokens (overrides --kv-cache-memory).
    #[arg(long, env = "LOWBIT_MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Tokens (rows) in one forward step: decode rows plus prefill chunks.
    #[arg(long, env = "LOWBIT_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    #[arg(long, env = "LOWBIT_MAX_CONCURRENT_SEQUENCES", default_value_t = 64)]
    pub max_concurrent_sequences: usize,
    /// Requests waiting to start; more are refused with 429.
    #[arg(long, env = "LOWBIT_MAX_WAITING_REQUESTS", default_value_t = 256)]
    pub max_waiting_requests: usize,
    /// Prompt tokens of the waiting requests; more are refused with 429.
    #[arg(long, env = "LOWBIT_MAX_WAITING_TOKENS", default_value_t = 262_144)]
    pub max_waiting_tokens: usize,
    /// Turn off prefix caching (reuse of cached prompt blocks).
    #[arg(long, env = "LOWBIT_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// Keep sliding-window layers' keys and values in the main KV pool, every position of
    /// them (by default a model whose other layers see everything keeps its sliding layers
    /// in a pool of their own and gives back the blocks that slide out of the window).
    #[arg(long, env = "LOWBIT_NO_WINDOW_POOL")]
    pub no_window_pool: bool,
    /// Speculative decoding by prompt lookup: draft tokens per step at most (0: off). A
    /// request whose last tokens occurred before in its prompt or output proposes
    /// what followed them, checked in the same step; the output is plain decoding's.
    #[arg(long, env = "LOWBIT_SPECULATIVE_TOKENS", default_value_t = 0)]
    pub speculative_tokens: usize,
    /// Shortest suffix looked up for drafts.
    #[arg(long, env = "LOWBIT_PROMPT_LOOKUP_MIN", default_value_t = SpeculativeConfig::OFF.ngram_min)]
    pub prompt_lookup_min: usize,
    /// Longest suffix looked up for drafts (tried first).
    #[arg(long, env = "LOWBIT_PROMPT_LOOKUP_MAX", default_value_t = SpeculativeConfig::OFF.ngram_max)]
    pub prompt_lookup_max: usize,
    /// No request speculates in a step that starts with more sequences running than this (a
    /// full batch is compute-bound: rejected drafts would cost the others).
    #[arg(long, env = "LOWBIT_SPECULATIVE_MAX_RUNNING", default_value_t = SpeculativeConfig::OFF.max_running)]
    pub speculative_max_running: usize,
    /// Seconds a request may take before it fails with 504 (default: no limit).
    #[arg(long, env = "LOWBIT_REQUEST_TIMEOUT")]
    pub request_timeout: Option<f64>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LOWBIT_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, env = "LOWBIT_MAX_BODY_BYTES", value_parser = parse_bytes, default_value = "4MiB")]
    pub max_body_bytes: u64,
    /// Memory for responses kept for `previous_response_id` and `GET /v1/responses/{id}`
    /// (the oldest are dropped first; 0 keeps none).
    #[arg(long, env = "LOWBIT_RESPONSES_STORE_MEMORY", value_parser = parse_bytes, default_value = "64MiB")]
    pub responses_store_memory: u64,
    /// Origins allowed by CORS (repeat or comma-separate; default: CORS off).
    #[arg(long, env = "LOWBIT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Log line format.
    #[arg(long, env = "LOWBIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A Jinja chat template (a file, or the template itself) instead of the model's own.
    #[arg(long, env = "LOWBIT_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    /// Split a chat reply's `<think>…</think>` into `reasoning_content` (`auto`: where the
    /// chat template writes `</think>`, as Qwen3's and DeepSeek-R1's do).
    #[arg(long, env = "LOWBIT_REASONING_PARSER", value_enum, default_value_t = ReasoningParser::Auto)]
    pub reasoning_parser: ReasoningParser,
    /// How chats with `tools` are written and read: `auto` takes the chat template's own
    /// syntax where lowbit knows it (`hermes`: Qwen2.5/3, Hermes; `llama3_json`: Llama 3.x;
    /// `mistral`: Mistral's `[TOOL_CALLS]`), else `generic` (lowbit's JSON format, any template).
    #[arg(long, env = "LOWBIT_TOOL_CALL_PARSER", value_enum, default_value_t = ToolCallParser::Auto)]
    pub tool_call_parser: ToolCallParser,
}

/// The speculative-decoding flags, checked (and logged when on).
fn speculative_config(args: &ServeArgs) -> Result<SpeculativeConfig> {
    let cfg = SpeculativeConfig {
        tokens: args.speculative_tokens,
        ngram_min: args.prompt_lookup_min,
        ngram_max: args.prompt_lookup_max,
        max_running: args.speculative_max_running,
    };
    if cfg.tokens > 0 {
        if cfg.ngram_min == 0 || cfg.ngram_max < cfg.ngram_min {
            anyhow::bail!(
                "--prompt-lookup-min {} and --prompt-lookup-max {}: need 1 <= min <= max",
                cfg.ngram_min,
                cfg.ngram_max
            );
        }
        tracing::info!(
            draft_tokens = cfg.tokens,
            ngram = %format!("{}..={}", cfg.ngram_min, cfg.ngram_max),
            max_running = cfg.max_running,
            "speculative decoding by prompt lookup"
        );
    }
    Ok(cfg)
}

/// `--chat-template`: a file's text, or the value itself when no such file exists (as vLLM).
fn chat_template_arg(
    source: &ModelSource,
    tokenizer: &crate::model::Tokenizer,
    given: &str,
) -> Result<crate::model::ChatTemplate> {
    let path = std::path::Path::new(given);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("--chat-template: reading {}", path.display()))?
    } else {
        given.to_string()
    };
    source
        .chat_template_from(tokenizer, &text)
        .with_context(|| format!("--chat-template {given}"))
}

/// Bytes from `1073741824`, `512M`, `1GiB`, `64k`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    Ok((v * mult) as u64)
}

/// A server ready to be bound: the router, the engine (loading on its thread) and a channel
/// that says when loading ended and how.
pub struct Prepared {
    pub app: axum::Router,
    pub engine: EngineHandle,
    pub loaded: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
}

/// Opens the model's tokenizer and template, starts the engine thread (which loads the
/// weights and the KV pool) and builds the router. Needs no async runtime.
pub fn prepare(args: &ServeArgs) -> Result<Prepared> {
    // (Flags first: a wrong one is named before a model is read.)
    let speculative = speculative_config(args)?;
    let source = ModelSource::open(&args.model.model)?;
    let tokenizer = source.tokenizer()?;
    let template = match &args.chat_template {
        Some(given) => Some(chat_template_arg(&source, &tokenizer, given)?),
        None => match source.chat_template(&tokenizer) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("no chat template ({e}); /v1/chat/completions will answer 400");
                None
            }
        },
    };
    let config = source.config()?;
    let names = if args.served_model_name.is_empty() {
        vec![args
            .model
            .model
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())]
    } else {
        args.served_model_name.clone()
    };
    let metrics = Metrics::new();
    let limits = AdmissionLimits {
        max_waiting_requests: args.max_waiting_requests,
        max_waiting_tokens: args.max_waiting_tokens,
    };
    let eos = tokenizer.eos().to_vec();
    let decoder: Arc<dyn crate::engine::detok::TextDecoder> = Arc::new(tokenizer.clone());
    let model_args = args.model.clone();
    let kv_budget = KvBudget {
        memory: args.kv_cache_memory,
        tokens: args.max_total_tokens,
        dtype: args.kv_cache_dtype.into(),
        block_tokens: DEFAULT_BLOCK_TOKENS,
        max_sequences: args.max_concurrent_sequences,
        max_batch_tokens: args.max_batch_tokens,
        prefix_caching: !args.no_prefix_cache,
        window_pool: !args.no_window_pool,
    };
    let sched_limits = (
        args.max_batch_tokens,
        args.max_concurrent_sequences,
        args.max_model_len,
    );
    let engine_metrics = metrics.clone();
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let engine = EngineHandle::spawn(
        limits,
        metrics.clone(),
        move || {
            let source = ModelSource::open(&model_args.model)?;
            let mut model = model_args.load_model(&source)?;
            let kv = kv_pools(&model, &kv_budget)?;
            let spec = kv.main;
            let (max_batch_tokens, max_concurrent_sequences, max_model_len) = sched_limits;
            let pool_tokens = spec.tokens();
            let mut max_model_len = max_model_len.unwrap_or(config.context_length);
            if max_model_len > pool_tokens {
                tracing::warn!(
                    "max model length {max_model_len} exceeds the KV pool's {pool_tokens} tokens: capped (raise --kv-cache-memory)"
                );
                max_model_len = pool_tokens;
            }
            model.set_max_positions(max_model_len);
            if let crate::model::config::RopeScaling::LongRope {
                original_max_position,
                ..
            } = model.config().rope_scaling
            {
                // The list changes every output, and a KV-pool cap can move max_model_len
                // across the original context: say which one is in use, and why.
                let (list, rule) = if model.config().uses_long_rope_factors(max_model_len) {
                    ("long", "over")
                } else {
                    ("short", "within")
                };
                tracing::warn!(
                    "LongRoPE: the {list} factors, since the max model length {max_model_len} is {rule} the original context {original_max_position} (set --max-model-len to choose)"
                );
            }
            tracing::info!(
                backend = %model.backend().name(),
                weights_mb = model.weight_bytes() as f64 / 1e6,
                bits_per_weight = model.bits_per_weight(),
                matrices = %crate::model::quant_policy::conversion_summary(model.plans()),
                kv_blocks = spec.blocks,
                kv_tokens = pool_tokens,
                kv_mb = kv.pool.bytes() as f64 / 1e6,
                kv_window_blocks = kv.window.map_or(0, |w| w.blocks),
                kv_window_layers = kv.window.map_or(0, |w| w.layers),
                kv_dtype = spec.dtype.name(),
                max_model_len,
                "model loaded"
            );
            let vocab = model.config().vocab_size;
            let scheduler = Scheduler::new(
                LlamaStep {
                    model,
                    pool: kv.pool,
                },
                SchedulerConfig {
                    max_batch_tokens,
                    max_concurrent_sequences,
                    max_model_len,
                    eos,
                    speculative,
                },
                kv.blocks,
                decoder,
                engine_metrics,
            );
            Ok(Loaded {
                scheduler,
                max_model_len,
                vocab,
            })
        },
        move |r| {
            let _ = loaded_tx.send(r);
        },
    )
    .context("starting the engine thread")?;

    let reasoning = args
        .reasoning_parser
        .splits(template.as_ref().map(|t| t.source()));
    if reasoning {
        tracing::info!("chat replies: the thinking (<think>…</think>, or harmony's analysis channel) goes to reasoning_content (--reasoning-parser none to keep it in content)");
    }
    let tool_syntax = args.tool_call_parser.syntax(
        template.as_ref().map(|t| t.source()),
        crate::api::tool_syntax::mistral_marker(&tokenizer),
        crate::api::tool_harmony::HarmonyIds::of(&tokenizer),
    );
    if args.tool_call_parser == crate::api::tool_syntax::ToolCallParser::Openai
        && !matches!(
            tool_syntax,
            crate::api::tool_syntax::ToolSyntax::Harmony { .. }
        )
    {
        tracing::warn!("--tool-call-parser openai: the vocabulary lacks harmony's markers (<|channel|>, <|message|>, …); tools take lowbit's generic format");
    }
    tracing::info!(
        tool_call_parser = tool_syntax.name(),
        "chats with tools: {}",
        if tool_syntax.native() {
            "the chat template's own syntax"
        } else {
            "lowbit's generic JSON format"
        }
    );
    let state = AppState {
        engine: engine.clone(),
        model: Arc::new(ServedModel {
            names,
            reasoning,
            tool_syntax,
            grammars: Arc::new(Grammars::new(tokenizer.clone())),
            tokenizer,
            template,
            created: api::unix_now(),
        }),
        api_keys: Arc::new(
            args.api_keys
                .iter()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect(),
        ),
        max_body_bytes: args.max_body_bytes as usize,
        request_timeout: args.request_timeout.map(Duration::from_secs_f64),
        system_fingerprint: format!("lowbit-{}", env!("CARGO_PKG_VERSION")),
        responses: Arc::new(ResponseStore::with_metrics(
            args.responses_store_memory as usize,
            metrics.clone(),
        )),
        metrics,
    };
    Ok(Prepared {
        app: api::router(state, &args.cors_origin),
        engine,
        loaded: loaded_rx,
    })
}

pub fn run(args: ServeArgs) -> Result<()> {
    let start = Instant::now();
    let Prepared {
        app,
        engine,
        loaded: loaded_rx,
    } = prepare(&args)?;
    let addr = format!("{}:{}", args.host, args.port);
    let shutdown_timeout = Duration::from_secs_f64(args.shutdown_timeout.max(0.0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("lowbit: listening on http://{local} (loading the model)");
        let load_watch = tokio::spawn(async move {
            match loaded_rx.await {
                Ok(Ok(())) => {
                    eprintln!(
                        "lowbit: ready on http://{local} in {:.2}s",
                        start.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!("the engine thread ended while loading")),
            }
        });
        let drain_engine = engine.clone();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!(
                "lowbit: draining (up to {:.0}s)",
                shutdown_timeout.as_secs_f64()
            );
            drain_engine.begin_drain();
            let deadline = Instant::now() + shutdown_timeout;
            while drain_engine.health().in_flight > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = drained_tx.send(());
        });
        let server = tokio::spawn(async move { server.await });
        let mut drained_rx = drained_rx;
        tokio::select! {
            loaded = load_watch => match loaded {
                Ok(Ok(())) => {
                    let _ = (&mut drained_rx).await;
                }
                Ok(Err(e)) => return Err(e.context("loading the model")),
                Err(e) => return Err(anyhow::anyhow!("the loader task failed: {e}")),
            },
            // A signal while still loading: nothing is in flight, stop now.
            _ = &mut drained_rx => {}
        }
        // Drained (or timed out): give connections a moment to flush, then exit.
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        eprintln!("lowbit: stopped");
        Ok(())
    })
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
