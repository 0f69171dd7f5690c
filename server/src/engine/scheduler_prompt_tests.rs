//! Scheduler tests of prompt log-probabilities (`echo` with `logprobs`), on the fake model of
//! scheduler_tests.rs.

use super::fake::{collect, next, prompt, reference, request, run_all, scheduler, VOCAB};
use super::*;
use tokio::sync::mpsc::unbounded_channel;

/// The fake's log-probabilities of each prompt token after the first: its row at position
/// `j` is 1.0 at `next` of the tokens through `j`, 0 elsewhere.
fn fake_prompt_logprobs(prompt: &[u32], top: usize) -> Vec<TokenLogprobs> {
    (1..prompt.len())
        .map(|j| {
            let mut row = vec![0.0f32; VOCAB];
            row[next(&prompt[..j]) as usize] = 1.0;
            lowbit_gpu::token_logprobs(&row, prompt[j], top)
        })
        .collect()
}

/// Every prompt position's log-probability arrives once, in order, before the first token,
/// on the host and where the logits live: through chunks of a few rows, a prompt the prefix
/// cache holds (not used: its logits are needed), `n` choices, `max_tokens` 0, a one-token
/// prompt, and requests beside it that ask nothing.
#[test]
fn prompt_logprobs_cover_every_position_once_through_chunks_and_the_prefix_cache() {
    for on_device in [false, true] {
        let mut s = scheduler(64, 4, 6, true);
        s.model.on_device = on_device;
        s.prompt_rows_per_step = 4;
        let cached = prompt(1, 13);
        let (tx, mut rx) = unbounded_channel();
        s.add(request(&cached, 2, 1), tx);
        run_all(&mut s);
        assert_eq!(collect(&mut rx, 1).prompt_logprobs, None);
        s.model.prompt_rows_per_step.clear();

        // (prompt, top alternatives, max_tokens, n); `None`: no prompt logprobs.
        let asks = [
            (cached.clone(), Some(2), 3, 2),
            (prompt(2, 11), Some(0), 0, 1),
            (prompt(3, 9), None, 4, 1),
            (prompt(4, 1), Some(3), 2, 1),
            (prompt(5, 17), Some(5), 0, 3),
        ];
        let mut rxs = Vec::new();
        for (p, top, max_tokens, n) in &asks {
            let (tx, rx) = unbounded_channel();
            let mut r = request(p, *max_tokens, *n);
            r.prompt_logprobs = *top;
            s.add(r, tx);
            rxs.push(rx);
        }
        run_all(&mut s);
        assert!(s.blocks.all_released());
        for ((p, top, max_tokens, n), rx) in asks.iter().zip(&mut rxs) {
            let o = collect(rx, *n);
            let want = top.map(|k| fake_prompt_logprobs(p, k));
            assert_eq!(
                o.prompt_logprobs,
                want,
                "device {on_device}, prompt of {}",
                p.len()
            );
            for c in 0..*n {
                assert_eq!(o.texts[c], reference(p, *max_tokens));
                assert_eq!(o.reasons[c], Some(FinishReason::Length));
            }
            let usage = o.usage.expect("done");
            assert_eq!(usage.completion_tokens, max_tokens * n);
            if top.is_some() {
                assert_eq!(usage.cached_tokens, 0, "the prefix cache is bypassed");
            }
        }
        // Each position's row read once, at most 4 a step.
        let rows = &s.model.prompt_rows_per_step;
        assert_eq!(rows.iter().sum::<usize>(), 12 + 10 + 16, "{rows:?}");
        assert!(rows.iter().all(|&r| r <= 4), "{rows:?}");
    }
}

/// A prompt preempted half-way through its log-probabilities keeps those it has and reads
/// each remaining position once when it is computed again.
#[test]
fn a_preempted_prompt_reads_each_position_once() {
    // 7 blocks of 4; the first request grows to 5 blocks and preempts the second, still in
    // its prompt (3 positions a step).
    let mut s = scheduler(7, 4, 5, false);
    s.prompt_rows_per_step = 3;
    let long = prompt(6, 6);
    let (tx, mut first) = unbounded_channel();
    s.add(request(&long, 14, 1), tx);
    let logged = prompt(7, 17);
    let (tx, mut second) = unbounded_channel();
    let mut r = request(&logged, 2, 1);
    r.prompt_logprobs = Some(1);
    s.add(r, tx);
    run_all(&mut s);
    assert!(s.metrics.num_preemptions_total.get() > 0, "no preemption");
    assert!(s.blocks.all_released());
    assert_eq!(collect(&mut first, 1).texts[0], reference(&long, 14));
    let o = collect(&mut second, 1);
    assert_eq!(o.texts[0], reference(&logged, 2));
    assert_eq!(o.prompt_logprobs, Some(fake_prompt_logprobs(&logged, 1)));
    assert_eq!(s.model.prompt_rows_per_step.iter().sum::<usize>(), 16);
}
