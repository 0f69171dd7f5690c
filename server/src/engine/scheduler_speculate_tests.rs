//! Speculative decoding in the scheduler, on the fake model set to repeat itself with a
//! period (so prompt lookup predicts most tokens and misses every fifth): the tokens,
//! finish reasons and usage are plain decoding's, whatever ends the choice.

use super::fake::{
    collect, prompt, reference_with, request, run_all, scheduler, token_events, Fake, Outcome,
};
use super::grammar_tests::{grammars, schema};
use super::*;
use crate::engine::grammar::OutputFormat;
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

/// Runs `reqs` plain, then speculating with `spec`, and asserts each request received the
/// same: the speculating run's outcomes and scheduler.
fn speculated_as_plain(
    reqs: &[GenerationRequest],
    spec: SpeculativeConfig,
    blocks: usize,
    budget: usize,
) -> (Vec<Outcome>, Scheduler<Fake>) {
    let (plain, _) = run(reqs, SpeculativeConfig::OFF, blocks, budget);
    let (speculated, s) = run(reqs, spec, blocks, budget);
    for (a, b) in plain.iter().zip(&speculated) {
        same(a, b);
    }
    (speculated, s)
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
    let (spec, s) = speculated_as_plain(&reqs, speculating(5), 64, 64);
    assert!(s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    assert_eq!(spec[2].texts[0], full[..7]);
    assert_eq!(spec[4].reasons[0], Some(FinishReason::Stop));
    assert!(spec[4].texts[0].len() < 11);
}

/// Sampled, with logprobs, penalized, with `min_tokens`, constrained by a grammar: each
/// row's choice is made as plain decoding makes it, after the tokens before it, drawing the
/// next number of the same stream.
fn host_chosen_requests() -> Vec<GenerationRequest> {
    let p = prompt(3, 8);
    let mut reqs = Vec::new();
    for (k, temperature) in [0.0, 0.3, 1.0].into_iter().enumerate() {
        let mut r = request(&p, 16, 1);
        r.sampling.temperature = temperature;
        r.sampling.seed = k as u64;
        reqs.push(r);
    }
    let mut logprobs = request(&p, 16, 1);
    logprobs.logprobs = Some(2);
    reqs.push(logprobs);
    let mut penalized = request(&p, 16, 1);
    penalized.sampling.presence_penalty = 0.5;
    penalized.sampling.temperature = 0.3;
    reqs.push(penalized);
    let mut min_tokens = request(&p, 16, 1);
    min_tokens.min_tokens = 6;
    min_tokens.stop_token_ids = vec![u32::from(b'a'), u32::from(b'e')];
    reqs.push(min_tokens);
    let g = grammars();
    for temperature in [0.0, 0.8] {
        let mut r = request(&prompt(5, 9), 40, 1);
        r.grammar = Some(g.compile(&OutputFormat::JsonSchema(schema())).unwrap());
        r.sampling.temperature = temperature;
        r.sampling.seed = 11;
        reqs.push(r);
    }
    reqs
}

/// A request's tokens, each with its logprobs if asked.
type TokenEvents = Vec<(u32, Option<TokenLogprobs>)>;

/// Every request's token events (tokens and logprobs), and the scheduler.
fn run_events(
    reqs: &[GenerationRequest],
    spec: SpeculativeConfig,
    on_device: bool,
) -> (Vec<TokenEvents>, Scheduler<Fake>) {
    let mut s = scheduler(64, 4, 64, true);
    s.model.period = PERIOD;
    s.model.on_device = on_device;
    s.cfg.speculative = spec;
    let mut rxs = Vec::new();
    for r in reqs {
        let (tx, rx) = unbounded_channel();
        s.add(r.clone(), tx);
        rxs.push(rx);
    }
    run_all(&mut s);
    assert!(s.blocks.all_released());
    (rxs.iter_mut().map(token_events).collect(), s)
}

#[test]
fn choices_made_on_the_host_speculate_and_keep_plain_decodings_tokens_and_logprobs() {
    let reqs = host_chosen_requests();
    let (plain, _) = run_events(&reqs, SpeculativeConfig::OFF, false);
    let (spec, s) = run_events(&reqs, speculating(4), false);
    assert_eq!(plain, spec);
    assert!(plain[3].iter().all(|t| t.1.is_some()));
    assert!(s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    // Each request speculated: more drafts than the greedy ones alone make.
    let (_, greedy) = run_events(&reqs[..1], speculating(4), false);
    assert!(
        s.metrics.spec_decode_num_drafts_total.get()
            > 2 * greedy.metrics.spec_decode_num_drafts_total.get()
    );
}

#[test]
fn where_choices_are_made_on_a_device_only_plain_greedy_ones_speculate() {
    let reqs = host_chosen_requests();
    let (plain, _) = run_events(&reqs, SpeculativeConfig::OFF, true);
    let (spec, s) = run_events(&reqs, speculating(4), true);
    assert_eq!(plain, spec);
    let (_, greedy) = run_events(&reqs[..1], speculating(4), true);
    assert!(greedy.metrics.spec_decode_num_drafts_total.get() > 0);
    assert_eq!(
        s.metrics.spec_decode_num_drafts_total.get(),
        greedy.metrics.spec_decode_num_drafts_total.get()
    );
}

#[test]
fn drafts_in_a_pool_that_preempts_keep_plain_decodings_tokens() {
    // 12 blocks of 4 for four requests of up to 27 positions: sequences are preempted and
    // recomputed; drafts take only blocks left free once the step is planned (blocks.rs's
    // test: never a cached one), and the tokens stay plain decoding's.
    let reqs: Vec<GenerationRequest> = (0..4).map(|r| request(&prompt(r, 9), 18, 1)).collect();
    let (_, spec_s) = speculated_as_plain(&reqs, speculating(4), 12, 64);
    assert!(spec_s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    assert!(spec_s.metrics.num_preemptions_total.get() > 0);
}

#[test]
fn drafts_use_only_the_rows_the_step_has_left() {
    // A budget of 6 rows, three decoding sequences: each decodes every step; drafts share
    // the 3 rows left over.
    let reqs: Vec<GenerationRequest> = (0..3).map(|r| request(&prompt(r, 5), 20, 1)).collect();
    let (_, s) = speculated_as_plain(&reqs, speculating(5), 64, 6);
    assert!(s.metrics.spec_decode_num_accepted_tokens_total.get() > 0);
    assert!(s.model.rows_per_step.iter().all(|&r| r <= 6));
}

#[test]
fn a_budget_of_one_row_and_a_crowded_batch_turn_drafts_off() {
    let reqs: Vec<GenerationRequest> = (0..3).map(|r| request(&prompt(r, 6), 10, 1)).collect();
    let (_, s) = speculated_as_plain(&reqs, speculating(4), 64, 1);
    assert_eq!(s.metrics.spec_decode_num_drafts_total.get(), 0);
    let crowded = SpeculativeConfig {
        max_running: 2,
        ..speculating(4)
    };
    let (_, c) = speculated_as_plain(&reqs, crowded, 64, 64);
    // Three run together to the end (same prompt length and max_tokens): never two or fewer.
    assert_eq!(c.metrics.spec_decode_num_drafts_total.get(), 0);
}
