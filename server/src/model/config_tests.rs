//! `LlamaConfig`'s unit tests: reading configs, their defaults, their round trip.

use super::*;

fn hf_config(extra: serde_json::Value) -> Result<LlamaConfig> {
    let mut json = serde_json::json!({
        "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "intermediate_size": 96, "vocab_size": 100, "max_position_embeddings": 32768
    });
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    LlamaConfig::from_hf_json(Path::new("config.json"), &json)
}

/// Mistral 7B v0.1's window on every layer (v0.2's null: none); Qwen2's only where
/// `use_sliding_window` is set, from `max_window_layers` on or as `layer_types` marks.
#[test]
fn hugging_face_windows_of_mistral_and_qwen() {
    let windows = |extra| {
        let c = hf_config(extra).unwrap();
        (c.gemma.sliding_window, c.gemma.sliding_layers)
    };
    let v01 = serde_json::json!({"model_type": "mistral", "sliding_window": 4096});
    assert_eq!(windows(v01), (4096, vec![true; 3]));
    let v02 = serde_json::json!({"model_type": "mistral", "sliding_window": null});
    assert_eq!(windows(v02), (0, vec![]));
    let off = serde_json::json!({"model_type": "qwen2", "sliding_window": 4096,
        "use_sliding_window": false, "max_window_layers": 1});
    assert_eq!(windows(off), (0, vec![]));
    let on = serde_json::json!({"model_type": "qwen2", "sliding_window": 4096,
        "use_sliding_window": true, "max_window_layers": 1});
    assert_eq!(windows(on), (4096, vec![false, true, true]));
    let typed = serde_json::json!({"model_type": "qwen3", "sliding_window": 512,
        "use_sliding_window": true, "layer_types":
        ["sliding_attention", "full_attention", "sliding_attention"]});
    assert_eq!(windows(typed), (512, vec![true, false, true]));
    let none = serde_json::json!({"model_type": "qwen2", "use_sliding_window": true});
    let err = hf_config(none).unwrap_err().to_string();
    assert!(err.contains("sliding_window"), "{err}");
}

/// SmolLM3's layers without RoPE: its flags (0: none) or every interval-th layer.
#[test]
fn smollm3_nope_layers_from_flags_or_interval() {
    let nope = |extra| hf_config(extra).map(|c| c.nope_layers);
    let flags = serde_json::json!({"model_type": "smollm3", "no_rope_layers": [1, 0, 1]});
    assert_eq!(nope(flags).unwrap(), [false, true, false]);
    let every = serde_json::json!({"model_type": "smollm3", "no_rope_layer_interval": 3});
    assert_eq!(nope(every).unwrap(), [false, false, true]);
    let bad = serde_json::json!({"model_type": "smollm3", "no_rope_layers": [1, 0]});
    let err = nope(bad).unwrap_err().to_string();
    assert!(err.contains("no_rope_layers"), "{err}");
    let llama = serde_json::json!({"model_type": "llama", "no_rope_layers": [1, 0, 1]});
    assert!(nope(llama).unwrap().is_empty());
}

/// A config written before Gemma's fields existed (format version 1) reads with all of
/// them off; one written now reads back equal.
#[test]
fn configs_without_gemma_fields_read_as_plain_llama() {
    let old = serde_json::json!({
        "hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
        "ffn_size": 96, "rms_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": {"type": "none"}, "rope_style": "half_split", "vocab_size": 100,
        "tied_embeddings": true, "context_length": 256, "qk_norm": true
    });
    let c: LlamaConfig = serde_json::from_value(old).unwrap();
    assert_eq!(c.gemma, GemmaAdditions::default());
    assert!(c.qk_norm && !c.has_gemma_features());
    let gemma = LlamaConfig {
        gemma: GemmaAdditions {
            activation: Activation::GeluTanh,
            sliding_window: 4,
            sliding_layers: vec![true, false],
            ..GemmaAdditions::default()
        },
        ..c
    };
    let back: LlamaConfig = serde_json::from_str(&serde_json::to_string(&gemma).unwrap()).unwrap();
    assert_eq!(back.gemma, gemma.gemma);
}

/// OLMo's windows: none for OLMo 2; OLMo 3's from `layer_types`, else every fourth layer
/// global, its window 4,096 where the config leaves it out, its sliding layers' RoPE plain
/// whatever the window; from GGUF, llama.cpp's default pattern of four.
#[test]
fn olmo_windows_from_both_formats() {
    let olmo2 = hf_config(serde_json::json!({"model_type": "olmo2"})).unwrap();
    assert!(olmo2.no_pre_norms && olmo2.qk_norm_whole && olmo2.gemma.post_norms);
    assert_eq!(olmo2.gemma.sliding_window, 0);
    assert!(olmo2.sliding_rope().is_none());
    let olmo3 = hf_config(
        serde_json::json!({"model_type": "olmo3", "num_hidden_layers": 8,
        "rope_theta": 500000.0}),
    )
    .unwrap();
    assert_eq!(olmo3.gemma.sliding_window, 4096);
    let global: Vec<usize> = (0..8).filter(|&l| !olmo3.is_sliding(l)).collect();
    assert_eq!(global, [3, 7]);
    assert_eq!(olmo3.gemma.sliding_rope_theta, Some(500000.0));

    let gguf = |window: Option<u32>| {
        use super::super::gguf::{GgufFile, GgufWriter, MetaValue};
        let mut w = GgufWriter::new();
        w.meta("general.architecture", MetaValue::String("olmo2".into()));
        for (k, v) in [
            ("olmo2.embedding_length", 64),
            ("olmo2.block_count", 8),
            ("olmo2.attention.head_count", 4),
            ("olmo2.feed_forward_length", 96),
            ("olmo2.vocab_size", 100),
        ] {
            w.meta(k, MetaValue::U32(v));
        }
        if let Some(n) = window {
            w.meta("olmo2.attention.sliding_window", MetaValue::U32(n));
        }
        let file = GgufFile::from_bytes(Path::new("t.gguf"), w.to_bytes()).unwrap();
        LlamaConfig::from_gguf(&file).unwrap()
    };
    assert_eq!(gguf(None).gemma.sliding_window, 0);
    let windowed = gguf(Some(4096));
    let global: Vec<usize> = (0..8).filter(|&l| !windowed.is_sliding(l)).collect();
    assert_eq!(global, [3, 7]);
    assert_eq!(windowed.gemma.sliding_rope_theta, Some(10_000.0));
}

/// gpt-oss comes from GGUF files only: its Hugging Face folder is refused by name.
#[test]
fn gpt_oss_folders_are_refused_naming_the_gguf_route() {
    let err = hf_config(serde_json::json!({"model_type": "gpt_oss"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_type") && err.contains("GGUF"), "{err}");
}
