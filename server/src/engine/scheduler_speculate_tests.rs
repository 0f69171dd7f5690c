//! Speculative decoding in the scheduler, on the fake model set to repeat itself with a
//! period (so prompt lookup predicts most tokens and misses every fifth): the tokens,
//! finish reasons and usage are plain decoding's, whatever ends the choice.

use super::tests::{collect, prompt, reference_with, request, run_all, scheduler, Fake, Outcome};
use super::*;
use tokio::sync::mpsc::unbounded_channel;

const PERIOD: usize = 3;

fn speculating(tokens: usize) -> SpeculativeConfig {
    SpeculativeConfig {
        tokens,
        ngram_min: 1,
        ngram_max: 3,
        max_running: 64,
    }
}

/// Runs `reqs` together on the periodic fake: what each received, and the scheduler.
fn run(
    reqs: &[GenerationRequest],
    spec: SpeculativeConfig,
    blocks: usize,
    budget: usize,
) -> (Vec<Outcome>, Scheduler<Fake>) {
    let mut s = scheduler(blocks, 4, budget, true);
    s.model.period = PERIOD;
    s.cfg.speculative = spec;
    let mut rxs = Vec::new();
    for r in reqs {
        let (tx, rx) = unbounded_channel();
        s.add(r.clone(), tx);
        rxs.push(rx);
    }
    run_all(&mut s);
    assert!(s.blocks.all_released());
    let outcomes = rxs.iter_mut().map(|rx| collect(rx, 1)).collect();
    (outcomes, s)
}

fn same(a: &Outcome, b: &Outcome) {
    assert_eq!(a.texts, b.texts);
    assert_eq!(a.reasons, b.reasons);
    assert_eq!(
        a.usage.map(|u| u.completion_tokens),
        b.usage.map(|u| u.completion_tokens)
    );
}

#[test]
fn drafts_give_plain_decodings_tokens_in_fewer_steps() {
    let reqs: Vec<GenerationRequest> = (0..4)
        .map(|r| request(&prompt(r, 5 + 3 * r as usize), 20 + r as usize, 1))
        .collect();
    let (plain, plain_s) = run(&reqs, SpeculativeConfig::OFF, 64, 64);
    let (spec, spec_s) = run(&reqs, speculating(4), 64, 64);
    for (r, (a, b)) in plain.iter().zip(&spec).enumerate() {
        let want = reference_with(&reqs[r].prompt, reqs[r].max_tokens, PERIOD);
        assert_eq!(a.texts[0], want);
        same(a, b);
    }
    let m = &spec_s.metrics;
    let (drafted, accepted) = (
        m.spec_decode_num_draft_tokens_total.get(),
        m.spec_decode_num_accepted_tokens_total.get(),
    );
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted}"
    );
    assert!(m.spec_decode_num_drafts_total.get() > 0);
    // Accepted tokens by position add up to the accepted ones, the first position most.
    let at = |p: &str| {
        m.spec_decode_num_accepted_tokens_per_pos_total
            .with_label_values(&[p])
            .get()
    };
    assert_eq!((0..4).map(|p| at(&p.to_string())).sum::<u64>(), accepted);
    assert!(at("0") >= at("3"));
    // Each row is computed once: an accepted draft's keys and values are kept, and the only
    // rows beyond plain decoding's are the rejected drafts'.
    let rows = |s: &Scheduler<Fake>| s.model.rows_per_step.iter().sum::<usize>() as u64;
    assert_eq!(rows(&spec_s), rows(&plain_s) + drafted - accepted);
    // Every accepted token is a step saved; the budget held.
    let steps = |s: &Scheduler<Fake>| s.model.rows_per_step.len() as u64;
    assert!(steps(&spec_s) < steps(&plain_s));
    assert!(spec_s.model.rows_per_step.iter().all(|&r| r <= 64));
    assert_eq!(
        m.generation_tokens_total.get(),
        plain_s.metrics.generation_tokens_total.get()
    );
}

#[test]
fn max_tokens_stop_strings_and_stop_tokens_end_a_speculating_choice_where_they_would() {
    let p = prompt(2, 6);
    let full = reference_with(&p, 40, PERIOD);
    let mut reqs = Vec::new();
    // Lengths that end inside a draft.
    for max_tokens in [1, 2, 7, 13] {
        reqs.push(request(&p, max_tokens, 1));
    }
    // A stop string first seen a few tokens in, and a stop token.
    let mut stopped = request(&p, 40, 1);
    stopped.stop = vec![full[9..11].to_string()];
    reqs.push(stopped);
    let mut stop_token = request(&p, 40, 1);
    stop_token.stop_token_ids = vec![u32::from(full.as_bytes()[12])];
    reqs.push(stop_token);
    let (plain, _) = run(&reqs, SpeculativeConfig::OFF, 64, 64);
    let (spec, s) = run(&reqs, speculating(5), 64, 64);
    assert!(s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    for (a, b) in plain.iter().zip(&spec) {
        same(a, b);
    }
    assert_eq!(spec[2].texts[0], full[..7]);
    assert_eq!(spec[4].reasons[0], Some(FinishReason::Stop));
    assert!(spec[4].texts[0].len() < 11);
}

#[test]
fn sampled_logprobs_penalized_and_constrained_choices_do_not_speculate() {
    let p = prompt(3, 8);
    let mut reqs = Vec::new();
    let mut sampled = request(&p, 12, 1);
    sampled.sampling.temperature = 0.7;
    reqs.push(sampled);
    let mut logprobs = request(&p, 12, 1);
    logprobs.logprobs = Some(2);
    reqs.push(logprobs);
    let mut penalized = request(&p, 12, 1);
    penalized.sampling.presence_penalty = 0.5;
    reqs.push(penalized);
    let mut min_tokens = request(&p, 12, 1);
    min_tokens.min_tokens = 3;
    reqs.push(min_tokens);
    let (plain, _) = run(&reqs, SpeculativeConfig::OFF, 64, 64);
    let (spec, s) = run(&reqs, speculating(4), 64, 64);
    assert_eq!(s.metrics.spec_decode_num_drafts_total.get(), 0);
    for (a, b) in plain.iter().zip(&spec) {
        same(a, b);
    }
}

#[test]
fn drafts_wait_for_free_blocks_and_never_preempt() {
    // 12 blocks of 4 for four requests of up to 27 positions: preemption happens anyway;
    // drafts only take blocks nobody else needs, and the tokens stay plain decoding's.
    let reqs: Vec<GenerationRequest> = (0..4).map(|r| request(&prompt(r, 9), 18, 1)).collect();
    let (plain, plain_s) = run(&reqs, SpeculativeConfig::OFF, 12, 64);
    let (spec, spec_s) = run(&reqs, speculating(4), 12, 64);
    for (a, b) in plain.iter().zip(&spec) {
        same(a, b);
    }
    assert!(spec_s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    assert!(
        spec_s.metrics.num_preemptions_total.get() <= plain_s.metrics.num_preemptions_total.get()
    );
}

#[test]
fn a_budget_of_one_row_and_a_crowded_batch_turn_drafts_off() {
    let reqs: Vec<GenerationRequest> = (0..3).map(|r| request(&prompt(r, 6), 10, 1)).collect();
    let (plain, _) = run(&reqs, SpeculativeConfig::OFF, 64, 1);
    let (spec, s) = run(&reqs, speculating(4), 64, 1);
    assert_eq!(s.metrics.spec_decode_num_drafts_total.get(), 0);
    let crowded = SpeculativeConfig {
        max_running: 2,
        ..speculating(4)
    };
    let (crowd, c) = run(&reqs, crowded, 64, 64);
    for ((a, b), d) in plain.iter().zip(&spec).zip(&crowd) {
        same(a, b);
        same(a, d);
    }
    // Three run together to the end (same prompt length and max_tokens): never two or fewer.
    assert_eq!(c.metrics.spec_decode_num_drafts_total.get(), 0);
}
