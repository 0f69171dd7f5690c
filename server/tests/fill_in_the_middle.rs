//! Fill in the middle: `/v1/completions` with a `suffix` on a model with FIM tokens (a tiny
//! random Llama whose vocabulary ends with StarCoder's `<fim_prefix>`, `<fim_suffix>`,
//! `<fim_middle>`), through the real router and engine. The completion is the one its prompt
//! `[BOS] <fim_prefix> prompt <fim_suffix> suffix <fim_middle>` gets as token ids; `echo`
//! with a suffix is refused; a GGUF file's `tokenizer.ggml.fim_*_token_id` keys name the
//! tokens where their names are unknown.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{post, send, start_with, BAD};
use common::tiny_model::{TinyConfig, TinyModel};
use lowbit::model::tokenizer::FimTokens;
use lowbit::model::ModelSource;
use serde_json::{json, Value};
use std::path::Path;

const NAME: &str = "tiny-coder";

fn request(prompt: Value, extra: Value) -> String {
    let mut v = json!({
        "model": NAME,
        "prompt": prompt,
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": true,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn texts(reply: &Value) -> Vec<String> {
    reply["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

fn tiny_coder(dir: &Path, name: &str, controls: &[&str], keys: Option<u32>) -> std::path::PathBuf {
    let cfg = TinyConfig {
        vocab: 128,
        ..TinyConfig::default()
    };
    let model = TinyModel::random(cfg, 50, true);
    let mut bytes = common::with_tokenizer_and_controls(&model.gguf_bytes(), cfg.vocab, controls);
    if let Some(first) = keys {
        use lowbit::model::gguf::{GgufFile, GgufWriter, MetaValue};
        let base = GgufFile::from_bytes(Path::new("t.gguf"), bytes).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in base.metadata() {
            w.meta(k, v.clone());
        }
        for (k, id) in [("pre", first), ("suf", first + 1), ("mid", first + 2)] {
            w.meta(
                &format!("tokenizer.ggml.fim_{k}_token_id"),
                MetaValue::U32(id),
            );
        }
        for t in base.tensors() {
            let raw = base.raw_tensor(t).unwrap();
            w.tensor(&t.name, &t.dims, t.dtype, raw.data.to_vec());
        }
        bytes = w.to_bytes();
    }
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suffix_prompts_the_middle_with_the_models_fim_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_coder(
        dir.path(),
        "starcoder",
        &["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
        None,
    );
    let tokenizer = ModelSource::open(&path).unwrap().tokenizer().unwrap();
    let fim = tokenizer.fim().unwrap();
    assert_eq!(
        fim,
        FimTokens {
            prefix: 124,
            suffix: 126,
            middle: 125
        }
    );
    // <fim_pad> ends generation, as in llama.cpp.
    assert!(tokenizer.eos().contains(&127));
    let app = start_with(&path, &["--served-model-name", NAME]).await;

    let (prefix, suffix) = ("hi(x, y", "!!return x");
    let ids = |t: &str| tokenizer.encode(t, false).unwrap();
    let bos = tokenizer.bos().filter(|_| tokenizer.adds_bos());
    assert_eq!(bos, Some(0));
    let want_prompt = fim.prompt(bos, &ids(prefix), &ids(suffix));
    assert_eq!(want_prompt[..2], [0, 124]);
    assert_eq!(*want_prompt.last().unwrap(), 125);

    let filled = post(
        &app,
        "/v1/completions",
        request(json!(prefix), json!({"suffix": suffix})),
    )
    .await;
    let by_ids = post(
        &app,
        "/v1/completions",
        request(json!(want_prompt), json!({})),
    )
    .await;
    assert_eq!(texts(&filled), texts(&by_ids));
    assert_eq!(filled["usage"]["prompt_tokens"], want_prompt.len());
    assert!(!texts(&filled)[0].is_empty());
    // Without the suffix the same prefix is another prompt.
    let plain = post(&app, "/v1/completions", request(json!(prefix), json!({}))).await;
    assert_eq!(plain["usage"]["prompt_tokens"], ids(prefix).len() + 1);

    // Several prompts share the suffix; token-id prompts are prefixes as given.
    let prefixes = ["hi", "x = 1"];
    let many = post(
        &app,
        "/v1/completions",
        request(json!(prefixes), json!({"suffix": ""})),
    )
    .await;
    for (i, p) in prefixes.iter().enumerate() {
        let alone = post(
            &app,
            "/v1/completions",
            request(json!(fim.prompt(bos, &ids(p), &[])), json!({})),
        )
        .await;
        assert_eq!(texts(&many)[i], texts(&alone)[0], "{p}");
    }
    let as_ids = post(
        &app,
        "/v1/completions",
        request(json!(ids(prefix)), json!({"suffix": suffix})),
    )
    .await;
    assert_eq!(texts(&as_ids), texts(&filled));

    send(
        &app,
        "POST",
        "/v1/completions",
        Some(&request(
            json!(prefix),
            json!({"suffix": suffix, "echo": true}),
        )),
        None,
    )
    .await
    .assert_error(400, BAD, Some("echo"), None);
}

/// A file that names its FIM tokens by id (`tokenizer.ggml.fim_*_token_id`) uses those, and
/// so does the lowbit file `lowbit quantize` makes of it; ids outside the vocabulary are
/// ignored.
#[test]
fn gguf_keys_name_the_fim_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_coder(dir.path(), "keyed", &[], Some(90));
    let tokenizer = ModelSource::open(&path).unwrap().tokenizer().unwrap();
    let keyed = Some(FimTokens {
        prefix: 90,
        suffix: 91,
        middle: 92,
    });
    assert_eq!(tokenizer.fim(), keyed);
    let out = dir.path().join("keyed.safetensors");
    let o = common::lowbit(&[
        "quantize",
        "--model",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quant",
        "q8",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let quantized = ModelSource::open(&out).unwrap().tokenizer().unwrap();
    assert_eq!(quantized.fim(), keyed);
    let outside = tiny_coder(dir.path(), "outside", &[], Some(127));
    let outside = ModelSource::open(&outside).unwrap().tokenizer().unwrap();
    assert_eq!(outside.fim(), None);
    let plain = tiny_coder(dir.path(), "plain", &[], None);
    assert_eq!(
        ModelSource::open(&plain)
            .unwrap()
            .tokenizer()
            .unwrap()
            .fim(),
        None
    );
}
