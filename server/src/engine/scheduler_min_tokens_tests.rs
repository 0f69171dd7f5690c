//! `min_tokens` on the fake model of scheduler_tests.rs (token `t` is the byte `t`, the end
//! of sequence is 0): with a logit bias that makes the end (or a stop token) the best choice
//! from the first token on, a choice still gives exactly `min_tokens` tokens and then ends
//! there, alike where the logits live and on the host; a stop string is not matched in the
//! text of the first `min_tokens - 1` tokens (vLLM's rule).

use super::fake::{collect, prompt, reference, request, run_all, scheduler};
use super::*;
use tokio::sync::mpsc::unbounded_channel;

/// Each request's text, finish reason and completion tokens (the ending one included).
fn run(
    device: bool,
    requests: Vec<GenerationRequest>,
) -> Vec<(String, Option<FinishReason>, usize)> {
    let mut s = scheduler(64, 4, 64, true);
    s.model.on_device = device;
    let mut rxs = Vec::new();
    for r in requests {
        let (tx, rx) = unbounded_channel();
        s.add(r, tx);
        rxs.push(rx);
    }
    run_all(&mut s);
    assert!(s.blocks.all_released());
    rxs.iter_mut()
        .map(|rx| {
            let o = collect(rx, 1);
            let tokens = o.usage.map_or(0, |u| u.completion_tokens);
            (o.texts[0].clone(), o.reasons[0], tokens)
        })
        .collect()
}

#[test]
fn min_tokens_hold_back_the_end_and_the_stop_tokens() {
    let make = |min_tokens: usize, temperature: f32| {
        let mut eos = request(&prompt(3, 5), 12, 1);
        eos.sampling.temperature = temperature;
        eos.sampling.seed = 4;
        eos.sampling.logit_bias = vec![(0, 100.0)];
        eos.min_tokens = min_tokens;
        let mut stop = request(&prompt(7, 5), 12, 1);
        stop.sampling.temperature = temperature;
        stop.sampling.logit_bias = vec![(5, 100.0)];
        stop.stop_token_ids = vec![5];
        stop.min_tokens = min_tokens;
        vec![eos, stop]
    };
    for temperature in [0.0, 0.9] {
        let without = run(false, make(0, temperature));
        let ended_at_once = |(_, why, n): &(String, Option<FinishReason>, usize)| {
            *n == 1 && *why == Some(FinishReason::Stop)
        };
        assert!(without.iter().all(ended_at_once), "{without:?}");
        for min_tokens in [1, 4] {
            let host = run(false, make(min_tokens, temperature));
            for (text, why, n) in &host {
                // The ending token counts in the usage, as OpenAI counts it.
                assert_eq!(
                    (text.len(), *n, *why),
                    (min_tokens, min_tokens + 1, Some(FinishReason::Stop))
                );
                assert!(!text.contains(['\0', '\u{5}']), "{text:?}");
            }
            assert_eq!(
                run(true, make(min_tokens, temperature)),
                host,
                "T {temperature}"
            );
        }
    }
}

#[test]
fn stop_strings_wait_for_min_tokens() {
    let p = prompt(5, 6);
    let greedy = reference(&p, 10);
    assert!(!greedy.contains('\0'), "{greedy:?}");
    // The first token's text as a stop string: it ends the reply at once without min_tokens.
    let stop = greedy[..1].to_string();
    for min_tokens in [0, 3] {
        let mut r = request(&p, 10, 1);
        r.stop = vec![stop.clone()];
        r.min_tokens = min_tokens;
        let (text, why, _) = run(false, vec![r]).remove(0);
        // Matching starts with the text of token `min_tokens` (index min_tokens - 1).
        let from = min_tokens.saturating_sub(1);
        let want = match greedy[from..].find(&stop) {
            Some(at) => (greedy[..from + at].to_string(), FinishReason::Stop),
            None => (greedy.clone(), FinishReason::Length),
        };
        assert_eq!(
            (text, why),
            (want.0, Some(want.1)),
            "min_tokens {min_tokens}"
        );
    }
}
