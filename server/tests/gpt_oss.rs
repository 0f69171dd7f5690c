//! gpt-oss as a tiny random GGUF model (`common/tiny_gpt_oss.rs`): attention sinks, biased
//! Q/K/V and output projections, every other layer in a sliding window, YaRN, and a mixture
//! of experts stored in MXFP4 with biases and the clamped SwiGLU — against the float64 forward
//! on the CPU and the GPU; what lowbit reads from the file; bad files named. llama.cpp's
//! logits for the same file: `architectures.rs`.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_checks::{cpu, gpu, matches_reference_from_gguf};
use common::tiny_model::{all_logits, flat};
use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use common::tiny_moe::{TINY_EXPERTS, TINY_EXPERTS_USED};
use lowbit::model::config::Activation;
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use std::path::{Path, PathBuf};

const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

fn tiny(seed: u64) -> TinyModel {
    let cfg = TinyConfig {
        arch: TinyArch::GptOss,
        ffn: 32,
        layers: 3,
        ..TinyConfig::default()
    };
    TinyModel::random(cfg, seed, false)
}

/// The o200k_harmony control tokens a gpt-oss vocabulary ends with, in this order.
const HARMONY: [&str; 7] = [
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
];

/// The tiny gpt-oss with a small byte-level vocabulary ending in [`HARMONY`] and gpt-oss's
/// own chat template.
fn harmony_gguf(dir: &Path) -> PathBuf {
    let vocab = 128;
    let model = TinyModel::random(
        TinyConfig {
            vocab,
            ..tiny(63).cfg
        },
        63,
        false,
    );
    let bytes = common::with_tokenizer_and_controls(&model.gguf_bytes(), vocab, &HARMONY);
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/chat_templates/openai-gpt-oss-120b.jinja"),
    )
    .unwrap();
    let bytes = common::with_meta(
        &bytes,
        "tokenizer.chat_template",
        lowbit::model::gguf::MetaValue::String(template),
    );
    // Room for the template's system and developer messages (≈ 450 byte-level tokens).
    let bytes = common::with_meta(
        &bytes,
        "gpt-oss.context_length",
        lowbit::model::gguf::MetaValue::U32(1024),
    );
    let path = dir.join("harmony.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write_gguf(dir: &Path, model: &TinyModel) -> PathBuf {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, model.gguf_bytes()).unwrap();
    path
}

/// Every expert as stored (MXFP4 as Q8) with int8 activations, against float64: measured
/// 0.024 on both backends — the tiny experts' gates and ups are made wide, so that the clamp
/// bites, and every layer is quantized (the other tiny models quantize layer 0 only).
const STORED_REL_TOL: f64 = 4e-2;
/// The GPU as stored against the CPU as stored: the same integer products (measured 6.9e-7).
const BACKENDS_REL_TOL: f64 = 1e-5;

/// GGUF on the CPU (whole and in pieces that cross the window's edge), on the GPU in f32 and
/// as stored; and as stored, the GPU's logits the CPU's.
#[test]
fn gpt_oss_matches_float64_reference_on_the_cpu_and_the_gpu() {
    let model = tiny(60);
    let gpu = gpu();
    let pieces = [3, 1, 5, 1, 1];
    matches_reference_from_gguf(&model, &TOKENS, &pieces, &gpu, STORED_REL_TOL, "gpt-oss");
    let dir = tempfile::tempdir().unwrap();
    let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
    let stored = |backend| Llama::load(&source, backend, &QuantPolicy::as_stored()).unwrap();
    let on_cpu: Vec<f64> = all_logits(&stored(cpu()), &TOKENS)
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let e = common::rel_err(&all_logits(&stored(gpu), &TOKENS), &on_cpu);
    assert!(e < BACKENDS_REL_TOL, "gpu against cpu, as stored: {e}");
    let want = flat(model.reference_logits(&TOKENS));
    assert!(common::rel_err(&all_logits(&stored(cpu()), &TOKENS), &want) < STORED_REL_TOL);
}

/// What lowbit reads from a gpt-oss file: llama.cpp's layout and defaults (even layers slide,
/// half-split RoPE with YaRN on every layer, the renormalized softmax of the chosen experts).
#[test]
fn the_config_is_read_as_llama_cpp_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(61);
    let c = ModelSource::open(&write_gguf(dir.path(), &model))
        .unwrap()
        .config()
        .unwrap();
    assert!(c.gpt_oss && c.attention_bias);
    assert_eq!(c.gemma.activation, Activation::SwigluOai);
    assert_eq!(c.gemma.sliding_layers, [true, false, true]);
    assert_eq!(c.gemma.sliding_window, common::tiny_model::TINY_WINDOW);
    assert_eq!(c.gemma.sliding_rope_theta, None);
    assert_eq!(c.rope_style, lowbit_gpu::RopeStyle::HalfSplit);
    assert!(matches!(
        c.rope_scaling,
        lowbit::model::config::RopeScaling::Yarn { .. }
    ));
    let moe = c.moe.unwrap();
    assert_eq!(
        (moe.experts, moe.experts_used, moe.expert_ffn_size),
        (TINY_EXPERTS, TINY_EXPERTS_USED, 32)
    );
    assert!(moe.normalize);
}

/// A file without a piece gpt-oss needs is refused naming the piece and the file.
#[test]
fn bad_gpt_oss_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let exact = |name: &'static str| move |t: &str| t == name;
    type Dropped<'a> = &'a dyn Fn(&str) -> bool;
    let cases: [(Dropped<'_>, &str); 5] = [
        (&exact("blk.1.attn_sinks.weight"), "blk.1.attn_sinks.weight"),
        (&exact("blk.0.attn_output.bias"), "blk.0.attn_output.bias"),
        (
            &|t: &str| t.starts_with("blk.2.ffn_up.") && t.ends_with(".bias"),
            "blk.2.ffn_up_exps.bias",
        ),
        (&exact("blk.0.ffn_gate_inp.bias"), "blk.0.ffn_gate_inp.bias"),
        (
            &exact("blk.1.post_attention_norm.weight"),
            "blk.1.post_attention_norm.weight",
        ),
    ];
    for (dropped, named) in cases {
        let mut model = tiny(62);
        model.tensors.retain(|t| !dropped(&t.name));
        let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
        let err = Llama::load(&source, cpu(), &QuantPolicy::as_stored())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(named) && err.contains("tiny.gguf"),
            "{named}: {err}"
        );
    }
    // A sink that is not a number.
    let mut model = tiny(62);
    let sinks = model
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_sinks.weight")
        .unwrap();
    sinks.values[2] = f32::NAN;
    let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
    let err = Llama::load(&source, cpu(), &QuantPolicy::as_stored())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_sinks.weight") && err.contains("NaN"),
        "{err}"
    );
    let bytes = common::without_meta(&tiny(62).gguf_bytes(), "gpt-oss.attention.sliding_window");
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = ModelSource::open(&path)
        .and_then(|s| s.config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gpt-oss.attention.sliding_window"), "{err}");
}

/// A harmony vocabulary (as llama.cpp treats o200k_harmony): replies end at `<|return|>` or
/// `<|call|>`, not at the `<|end|>` that closes the thinking; decoded text keeps the markers
/// a chat reply is split by, and leaves out the other control tokens.
#[test]
fn a_harmony_vocabulary_ends_at_return_and_keeps_its_markers() {
    let dir = tempfile::tempdir().unwrap();
    let source = ModelSource::open(&harmony_gguf(dir.path())).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    let id =
        |t: &str| 128 - HARMONY.len() as u32 + HARMONY.iter().position(|h| *h == t).unwrap() as u32;
    for (t, ends) in [("<|return|>", true), ("<|call|>", true), ("<|end|>", false)] {
        assert_eq!(
            tokenizer.eos().contains(&id(t)),
            ends,
            "{t}: {:?}",
            tokenizer.eos()
        );
    }
    let hi = tokenizer.encode("hi", false).unwrap();
    let mut ids = vec![0, id("<|channel|>")];
    ids.extend(&hi);
    ids.extend([id("<|message|>"), 1]);
    ids.extend(&hi);
    ids.push(id("<|end|>"));
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        "<|channel|>hi<|message|>hi<|end|>"
    );
}

/// gpt-oss served: its harmony template renders the chat (the prompt ends with
/// `<|start|>assistant`, the reply's first token follows it), and a reply comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_oss_serves_a_chat_through_its_harmony_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = harmony_gguf(dir.path());
    let app = common::app::start_with(&path, &["--served-model-name", "tiny"]).await;
    let messages = serde_json::json!([{"role": "user", "content": "hi hi"}]);
    let tokens = common::app::post(
        &app,
        "/tokenize",
        serde_json::json!({"model": "tiny", "messages": messages}).to_string(),
    )
    .await;
    let ids: Vec<u64> = serde_json::from_value(tokens["tokens"].clone()).unwrap();
    assert_eq!(ids.len() as u64, tokens["count"].as_u64().unwrap());
    let r = common::app::post(
        &app,
        "/v1/chat/completions",
        serde_json::json!({
            "model": "tiny",
            "messages": messages,
            "max_tokens": 6,
            "temperature": 0,
        })
        .to_string(),
    )
    .await;
    assert_eq!(r["usage"]["prompt_tokens"], tokens["count"], "{r}");
    assert!(r["choices"][0]["message"]["content"].is_string(), "{r}");
}

/// gpt-oss calls tools in its own harmony syntax (`--tool-call-parser auto` picks it for its
/// template): constrained, the reply is a `commentary` message addressed to the function with
/// arguments valid under its schema, answered as OpenAI's `tool_calls`, whole and streamed.
/// (The random model is steered onto the commentary channel by a bias on its first letter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_oss_calls_tools_in_harmony() {
    let dir = tempfile::tempdir().unwrap();
    let app =
        common::app::start_with(&harmony_gguf(dir.path()), &["--served-model-name", "tiny"]).await;
    // 'c' of the byte-level vocabulary (`with_tokenizer_and_controls`: ids 2.. are '!'..'~').
    let c = 2 + u32::from(b'c' - b'!');
    let request = |stream: bool| {
        serde_json::json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {
                "name": "get_unit",
                "description": "The unit of temperature",
                "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                               "required": ["unit"]},
            }}],
            "tool_choice": "required",
            "logit_bias": {c.to_string(): 100},
            "max_tokens": 64,
            "temperature": 0,
            "logprobs": true,
            "stream": stream,
        })
        .to_string()
    };
    // `auto` (a call or a final answer) compiles and, steered the same way, calls too.
    let mut auto: serde_json::Value = serde_json::from_str(&request(false)).unwrap();
    auto["tool_choice"] = "auto".into();
    let r = common::app::post(&app, "/v1/chat/completions", auto.to_string()).await;
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    // Cut short inside the call: no call, the text addressed to the function as content.
    let mut cut: serde_json::Value = serde_json::from_str(&request(false)).unwrap();
    // 40 tokens of header (one a character, the markers one each), then 5 of arguments.
    cut["max_tokens"] = 45.into();
    let r = common::app::post(&app, "/v1/chat/completions", cut.to_string()).await;
    assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
    assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("{\"") && "{\"unit\": \"c\"}".starts_with(content),
        "{r}"
    );
    let r = common::app::post(&app, "/v1/chat/completions", request(false)).await;
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let call = &choice["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_unit", "{r}");
    let arguments: serde_json::Value =
        serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, serde_json::json!({"unit": "c"}), "{r}");
    assert!(choice["message"]["content"].is_null(), "{r}");
    // Harmony's own syntax (lowbit's generic format would open with `{`).
    let tokens: Vec<&str> = choice["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens[..2], ["<|channel|>", "c"], "{r}");

    let chunks = common::app::stream_chunks(&app, request(true)).await;
    let deltas: Vec<&serde_json::Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .map(|_| &c["choices"][0]["delta"]["tool_calls"][0])
        })
        .collect();
    let name: String = deltas
        .iter()
        .filter_map(|d| d["function"]["name"].as_str())
        .collect();
    let streamed: String = deltas
        .iter()
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect();
    assert_eq!(name, "get_unit");
    assert_eq!(streamed, call["arguments"].as_str().unwrap());
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .next_back();
    assert_eq!(finish, Some("tool_calls"));
}
