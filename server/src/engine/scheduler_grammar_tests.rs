//! Scheduler tests of structured outputs (a grammar per choice), on the fake model of
//! scheduler_tests.rs, whose token `t` is the byte `t` and whose end of sequence is 0.

use super::fake::{collect, prompt, reference, request, run_all, scheduler, Outcome, VOCAB};
use super::*;
use crate::engine::grammar::{Grammars, OutputFormat};
use tokio::sync::mpsc::unbounded_channel;

/// The fake's vocabulary as bytes: 0 the end of sequence, every other id its own byte.
pub(super) fn grammars() -> Grammars {
    let mut bytes = vec![b"\xff<eos>".to_vec()];
    bytes.extend((1..VOCAB as u8).map(|b| vec![b]));
    Grammars::from_token_bytes(bytes, vec![0])
}

pub(super) fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 999},
            "tag": {"enum": ["red", "green"]},
            "ok": {"type": "boolean"}
        },
        "required": ["id", "tag", "ok"],
        "additionalProperties": false
    })
}

/// Whether `text` is an object the schema accepts.
fn valid(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    v.as_object().is_some_and(|o| {
        o.len() == 3
            // ("-0" is an integer to JSON schema; serde_json reads it as a float.)
            && o["id"].as_f64().is_some_and(|x| x.fract() == 0.0 && (0.0..=999.0).contains(&x))
            && (o["tag"] == "red" || o["tag"] == "green")
            && o["ok"].is_boolean()
    })
}

/// Runs `asks` (prompt seed, constrained, temperature) together through a pool of `blocks`
/// blocks of 4, `budget` rows a step, on the host or where the logits live.
/// Also the preemptions.
fn run(
    asks: &[(u32, bool, f32)],
    blocks: usize,
    budget: usize,
    on_device: bool,
) -> (Vec<Outcome>, u64) {
    let g = grammars();
    let grammar = g.compile(&OutputFormat::JsonSchema(schema())).unwrap();
    let mut s = scheduler(blocks, 4, budget, false);
    s.model.on_device = on_device;
    let mut rxs = Vec::new();
    for &(seed, constrained, temperature) in asks {
        let mut req = request(&prompt(seed, 9), 48, 2);
        req.sampling.temperature = temperature;
        req.sampling.seed = u64::from(seed);
        req.grammar = constrained.then(|| grammar.clone());
        let (tx, rx) = unbounded_channel();
        s.add(req, tx);
        rxs.push(rx);
    }
    run_all(&mut s);
    assert!(s.blocks.all_released());
    let outcomes = rxs.iter_mut().map(|rx| collect(rx, 2)).collect();
    (outcomes, s.metrics.num_preemptions_total.get())
}

/// Every constrained choice is valid JSON under its schema and ends there (finish `stop`,
/// no end-of-sequence token needed); its text is the same alone, beside other requests,
/// chunked, preempted, and where the logits live (read back whole: the mask is the host's);
/// unconstrained requests beside it are untouched.
#[test]
fn constrained_choices_follow_their_schema_in_any_batch() {
    let asks = [
        (1, true, 1.0),
        (2, false, 0.0),
        (3, true, 0.0),
        (4, true, 0.7),
    ];
    let alone: Vec<Outcome> = asks
        .iter()
        .map(|a| run(&[*a], 128, 64, false).0.remove(0))
        .collect();
    for (a, o) in asks.iter().zip(&alone) {
        for c in 0..2 {
            if a.1 {
                assert!(valid(&o.texts[c]), "{:?}: {}", a, o.texts[c]);
                assert_eq!(o.reasons[c], Some(FinishReason::Stop));
            } else {
                assert_eq!(o.texts[c], reference(&prompt(a.0, 9), 48));
            }
        }
    }
    // Sampled choices differ (the mask leaves room to sample), greedy ones agree.
    assert_ne!(alone[0].texts[0], alone[0].texts[1]);
    assert_eq!(alone[2].texts[0], alone[2].texts[1]);
    // Together: a roomy pool; chunks of 5 rows; on a device; 15 blocks of 4 (preempted: a
    // choice of 9 + 48 tokens needs 15).
    let configs = [
        (128, 64, false),
        (128, 5, false),
        (128, 64, true),
        (15, 64, false),
    ];
    for (blocks, budget, on_device) in configs {
        let (together, preemptions) = run(&asks, blocks, budget, on_device);
        assert_eq!(preemptions > 0, blocks == 15);
        for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(
                t.texts, a.texts,
                "request {i}: {blocks} blocks, {budget} rows, device {on_device}"
            );
            assert_eq!(t.reasons, a.reasons);
        }
    }
}

/// A grammar that has completed ends its choice on that token: no step is spent on an end
/// of sequence, and `ignore_eos` does not carry it past its end.
#[test]
fn a_completed_grammar_ends_the_choice_at_once() {
    let g = grammars();
    let grammar = g
        .compile(&OutputFormat::Choice(vec!["yes".into(), "no".into()]))
        .unwrap();
    let mut s = scheduler(64, 4, 64, false);
    let mut req = request(&prompt(5, 6), 50, 1);
    req.grammar = Some(grammar);
    req.ignore_eos = true;
    let (tx, mut rx) = unbounded_channel();
    s.add(req, tx);
    run_all(&mut s);
    let o = collect(&mut rx, 1);
    assert!(o.texts[0] == "yes" || o.texts[0] == "no", "{}", o.texts[0]);
    assert_eq!(o.reasons[0], Some(FinishReason::Stop));
    assert_eq!(o.usage.map(|u| u.completion_tokens), Some(o.texts[0].len()));
}

#[test]
fn drawing_before_masking_keeps_the_masked_distribution() {
    use crate::engine::sampler::{Sampler, SamplingParams, TokenHistory};
    let g = grammars();
    let abc = g
        .compile(&OutputFormat::Choice(vec![
            "a".into(),
            "b".into(),
            "c".into(),
        ]))
        .unwrap();
    // 'x' (refused) is the likeliest; the allowed a, b, c have weights 1 : e : e².
    let mut logits = vec![f32::NEG_INFINITY; VOCAB];
    for (t, l) in [(b'a', 0.0), (b'b', 1.0), (b'c', 2.0), (b'x', 3.0)] {
        logits[t as usize] = l;
    }
    let history = TokenHistory::new(&[], false);
    let draws = |params: SamplingParams| {
        let mut sampler = Sampler::new(params);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            let mut c = abc.start();
            let t = super::emit::choose(&mut sampler, &history, Some(&mut c), &logits).unwrap();
            counts[(t - u32::from(b'a')) as usize] += 1;
        }
        counts.map(|n| n as f64 / 20_000.0)
    };
    // Temperature alone: drawn first (x refused, then redrawn), the masked softmax's shares.
    let sampled = SamplingParams {
        temperature: 1.0,
        seed: 3,
        ..SamplingParams::default()
    };
    assert!(Sampler::new(sampled.clone()).draws_before_masking());
    let z = 1.0 + 1f64.exp() + 2f64.exp();
    let want = [1.0 / z, 1f64.exp() / z, 2f64.exp() / z];
    let got = draws(sampled);
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 0.015, "{got:?} vs {want:?}");
    }
    // Top-p cuts the masked distribution: masked first (c alone holds 0.67 ≥ 0.5).
    let nucleus = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        seed: 3,
        ..SamplingParams::default()
    };
    assert!(!Sampler::new(nucleus.clone()).draws_before_masking());
    assert_eq!(draws(nucleus), [0.0, 0.0, 1.0]);
    // Greedy: the allowed argmax.
    assert_eq!(draws(SamplingParams::default()), [0.0, 0.0, 1.0]);
}
