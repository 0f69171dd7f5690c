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
