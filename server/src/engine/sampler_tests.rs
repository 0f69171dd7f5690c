//! Sampler tests: the one-pass filters against a full sort, drawn frequencies, penalties,
//! log-probabilities.

use super::*;

fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        seed,
        ..SamplingParams::default()
    }
}

#[test]
fn penalties_and_bias_steer_greedy_choice() {
    let logits = [1.0f32, 3.0, 2.9, 0.5];
    let mut history = TokenHistory::new(&[0], true);
    history.push(1);
    let mut plain = Sampler::new(SamplingParams::default());
    assert_eq!(plain.sample_with(&logits, &history), 1);
    let mut presence = Sampler::new(SamplingParams {
        presence_penalty: 0.2,
        ..SamplingParams::default()
    });
    assert_eq!(presence.sample_with(&logits, &history), 2);
    history.push(1);
    let mut freq = Sampler::new(SamplingParams {
        frequency_penalty: 0.06,
        ..SamplingParams::default()
    });
    assert_eq!(freq.sample_with(&logits, &history), 2);
    let mut rep = Sampler::new(SamplingParams {
        repetition_penalty: 1.1,
        ..SamplingParams::default()
    });
    assert_eq!(rep.sample_with(&logits, &history), 2);
    let mut bias = Sampler::new(SamplingParams {
        logit_bias: vec![(3, 100.0), (99, 5.0)],
        ..SamplingParams::default()
    });
    assert_eq!(bias.sample_with(&logits, &history), 3);
}

#[test]
fn the_repetition_penalty_applies_once_to_a_token_of_both_prompt_and_output() {
    // 3 / 1.05 = 2.857 stays above 2.8; penalized twice, 3 / 1.05² = 2.72 would not.
    let logits = [3.0f32, 2.8];
    let mut history = TokenHistory::new(&[0], true);
    history.push(0);
    let mut rep = Sampler::new(SamplingParams {
        repetition_penalty: 1.05,
        ..SamplingParams::default()
    });
    assert_eq!(rep.sample_with(&logits, &history), 0);
}

#[test]
fn greedy_takes_the_first_maximum() {
    let mut s = Sampler::new(SamplingParams::default());
    assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
}

#[test]
fn same_seed_same_tokens_and_other_seed_differs() {
    let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
    let run = |seed| {
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0, seed));
        (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn top_k_top_p_and_min_p_only_return_allowed_tokens() {
    // Probabilities after softmax at T=1: token 3 ≈ 0.64, 2 ≈ 0.24, 1 ≈ 0.09, 0 ≈ 0.03.
    let logits = [0.0f32, 1.0, 2.0, 3.0];
    let mut k2 = Sampler::new(params(1.0, 2, 1.0, 0.0, 1));
    let mut p70 = Sampler::new(params(1.0, 0, 0.7, 0.0, 2));
    let mut m30 = Sampler::new(params(1.0, 0, 1.0, 0.3, 3));
    let mut seen_k = std::collections::HashSet::new();
    for _ in 0..400 {
        seen_k.insert(k2.sample(&logits));
        assert!([2, 3].contains(&p70.sample(&logits)));
        assert!([2, 3].contains(&m30.sample(&logits)));
    }
    assert_eq!(seen_k, [2u32, 3].into_iter().collect());
}

/// The filters as first written (a float64 softmax over the whole sorted vocabulary): the
/// kept tokens with their probabilities, and how close the top-p cut came to moving.
fn reference_distribution(logits: &[f32], p: &SamplingParams) -> (Vec<(u32, f64)>, f64) {
    let t = f64::from(p.temperature);
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i as u32, f64::from(v) / t))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let sum: f64 = cand.iter().map(|c| (c.1 - max).exp()).sum();
    for c in &mut cand {
        c.1 = (c.1 - max).exp() / sum;
    }
    let mut margin = f64::INFINITY;
    if p.top_p < 1.0 {
        let (mut acc, mut keep) = (0.0, cand.len());
        for (i, c) in cand.iter().enumerate() {
            acc += c.1;
            margin = margin.min((acc - f64::from(p.top_p)).abs());
            if acc >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    let floor = cand[0].1 * f64::from(p.min_p);
    for c in &cand[1..] {
        margin = margin.min((c.1 / floor.max(1e-300) - 1.0).abs());
    }
    let first = cand[0];
    cand.retain(|c| c.1 >= floor);
    if cand.is_empty() {
        cand.push(first);
    }
    let kept: f64 = cand.iter().map(|c| c.1).sum();
    (
        cand.into_iter().map(|(i, q)| (i, q / kept)).collect(),
        margin,
    )
}

/// The new sampler's kept tokens as normalized probabilities, by token id.
fn distribution(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let mut scratch = Scratch::default();
    let mut out: Vec<(u32, f64)> = match kept(p, logits, &mut scratch) {
        Some(Kept::Dense { weights, .. }) => weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0.0)
            .map(|(i, &w)| (i as u32, f64::from(w)))
            .collect(),
        Some(Kept::Ranked(top)) => top.iter().map(|&(i, w)| (i, f64::from(w))).collect(),
        None => Vec::new(),
    };
    let total: f64 = out.iter().map(|c| c.1).sum();
    out.iter_mut().for_each(|c| c.1 /= total);
    out
}

#[test]
fn filters_keep_the_tokens_and_probabilities_of_a_full_sort() {
    use rand_chacha::rand_core::RngCore;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut checked = 0;
    for case in 0..400 {
        let vocab = [3usize, 50, 1000, 5000][case % 4];
        let spread = [0.5f32, 3.0, 12.0][case % 3];
        let mut logits: Vec<f32> = (0..vocab)
            .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * spread)
            .collect();
        // Ties and excluded values.
        if vocab > 10 {
            logits[3] = logits[7];
            logits[5] = f32::NEG_INFINITY;
            logits[6] = f32::NAN;
        }
        let p = params(
            [0.3f32, 1.0, 1.7][case % 3],
            [0usize, 1, 2, 40, 2000][(case / 3) % 5],
            [1.0f32, 0.95, 0.5, 0.05][(case / 5) % 4],
            [0.0f32, 0.05, 0.3][(case / 7) % 3],
            case as u64,
        );
        if p.top_k == 1 {
            continue;
        }
        let (want, margin) = reference_distribution(&logits, &p);
        if margin < 1e-5 {
            continue; // a cut within rounding of moving: either answer is right
        }
        let mut got = distribution(&logits, &p);
        got.sort_by_key(|c| c.0);
        let mut want = want;
        want.sort_by_key(|c| c.0);
        let ids = |d: &[(u32, f64)]| d.iter().map(|c| c.0).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "case {case}: {p:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-5, "case {case}: {g:?} vs {w:?}");
        }
        checked += 1;
    }
    assert!(checked > 250, "only {checked} cases checked");
}

#[test]
fn top_k_is_exact_whatever_the_subset_it_bounds_from_holds() {
    // The subset that bounds the top k (every eighth token) holding the largest logits
    // (the bound is then exactly the k-th largest), the smallest, or ties with the rest.
    let shapes: [fn(usize) -> f32; 3] = [
        |i| {
            if i % 8 == 0 {
                5.0 + i as f32 * 1e-3
            } else {
                -(i as f32) * 1e-3
            }
        },
        |i| {
            if i % 8 == 0 {
                -5.0
            } else {
                (i as f32 * 0.37).sin()
            }
        },
        |i| if i % 3 == 0 { 1.0 } else { 0.5 },
    ];
    for shape in shapes {
        for (vocab, k) in [(1000usize, 40usize), (1000, 125), (5000, 2), (5000, 300)] {
            let logits: Vec<f32> = (0..vocab).map(shape).collect();
            let p = params(1.0, k, 1.0, 0.0, 1);
            let mut got: Vec<u32> = distribution(&logits, &p).iter().map(|c| c.0).collect();
            let mut want: Vec<u32> = reference_distribution(&logits, &p)
                .0
                .iter()
                .map(|c| c.0)
                .collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "V {vocab}, k {k}");
        }
    }
}

#[test]
fn a_flat_distribution_keeps_its_whole_nucleus() {
    // Every token equally likely: the nucleus is the lightest-possible case for the
    // top-p pruning (each weight is total / V), and ties go to the lower ids.
    for (vocab, top_p, keep) in [(1000usize, 0.5f32, 500usize), (49_152, 0.9, 44_237)] {
        let logits = vec![0.25f32; vocab];
        let got = distribution(&logits, &params(1.0, 0, top_p, 0.0, 1));
        assert_eq!(got.len(), keep, "V {vocab}, top-p {top_p}");
        assert!(got.iter().map(|c| c.0).eq(0..keep as u32));
    }
}

#[test]
fn drawn_frequencies_follow_the_kept_distribution() {
    let logits: Vec<f32> = (0..40).map(|i| (i as f32 * 0.7).sin() * 2.0).collect();
    for p in [
        params(1.0, 0, 1.0, 0.0, 11),
        params(0.8, 0, 0.9, 0.0, 12),
        params(1.3, 10, 0.95, 0.1, 13),
        params(1.0, 0, 1.0, 0.2, 14),
    ] {
        let (want, _) = reference_distribution(&logits, &p);
        let mut s = Sampler::new(p.clone());
        let n = 40_000;
        let mut counts = std::collections::HashMap::new();
        for _ in 0..n {
            *counts.entry(s.sample(&logits)).or_insert(0usize) += 1;
        }
        assert!(
            counts.keys().all(|t| want.iter().any(|w| w.0 == *t)),
            "{p:?}"
        );
        for (t, q) in &want {
            let f = counts.get(t).copied().unwrap_or(0) as f64 / n as f64;
            assert!((f - q).abs() < 0.01, "{p:?}: token {t} {f} vs {q}");
        }
    }
}

#[test]
fn sampling_frequencies_follow_the_softmax() {
    let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
    let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0, 9));
    let n = 20_000;
    let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
    let freq = ones as f64 / n as f64;
    assert!((freq - 0.75).abs() < 0.02, "{freq}");
}

/// Drawing from a row's top values alone (what a GPU reads back) gives the tokens drawing from
/// the whole row gives, from the same seed: random rows, rows with ties at the k-th place and
/// non-finite values, every filter; and only where `top_k_readback` allows it.
#[test]
fn sampling_from_the_top_k_alone_draws_the_tokens_of_the_whole_row() {
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let vocab = 3000;
    let mut rows: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            (0..vocab)
                .map(|_| (r.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0)
                .collect()
        })
        .collect();
    rows.push(
        (0..vocab)
            .map(|i| if i % 7 == 0 { 2.0 } else { 0.5 })
            .collect(),
    );
    let mut special = rows[0].clone();
    special[3] = f32::INFINITY;
    special[9] = f32::NAN;
    special[10] = f32::NEG_INFINITY;
    rows.push(special);
    rows.push(vec![f32::NEG_INFINITY; vocab]);
    let mut checked = 0;
    for (n, row) in rows.iter().enumerate() {
        for (t, k, top_p, min_p) in [
            (1.0, 40, 1.0, 0.0),
            (0.7, 2, 1.0, 0.0),
            (1.3, 64, 0.9, 0.0),
            (0.5, 17, 0.5, 0.05),
            (2.0, 50, 1.0, 0.2),
        ] {
            let p = params(t, k, top_p, min_p, n as u64);
            let (mut whole, mut topped) = (Sampler::new(p.clone()), Sampler::new(p));
            assert_eq!(topped.top_k_readback(vocab, 64), Some(k));
            // A device reads back the largest k of the batch: more than this row's own.
            let top = lowbit_gpu::top_k(row, 64);
            let argmax = lowbit_gpu::argmax(row);
            for draw in 0..50 {
                assert_eq!(
                    topped.sample_top(&top, argmax),
                    whole.sample(row),
                    "row {n}, T {t}, k {k}, top-p {top_p}, min-p {min_p}, draw {draw}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 5 * 50);
    let sampler = |p: SamplingParams| Sampler::new(p).top_k_readback(vocab, 64);
    assert_eq!(sampler(params(0.0, 40, 1.0, 0.0, 0)), None, "greedy");
    assert_eq!(
        sampler(params(1.0, 1, 1.0, 0.0, 0)),
        None,
        "top-1 is greedy"
    );
    assert_eq!(sampler(params(1.0, 0, 1.0, 0.0, 0)), None, "no top-k");
    assert_eq!(
        sampler(params(1.0, 65, 1.0, 0.0, 0)),
        None,
        "past the maximum"
    );
    assert_eq!(
        Sampler::new(params(1.0, 40, 1.0, 0.0, 0)).top_k_readback(40, 64),
        None,
        "k as large as the vocabulary"
    );
}

/// A row drawn where its logits live carries the sampler's temperature, min-p and top-p and
/// the uniform `sample` would take next from the same stream; greedy rows, top-k filters
/// short of the vocabulary and adjusted logits are not drawn there.
#[test]
fn whole_row_draws_carry_the_parameters_and_the_streams_next_uniform() {
    let p = params(0.8, 0, 0.9, 0.05, 11);
    let mut drawn = Sampler::new(p.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..3 {
        let (u, inv_t, min_p, top_p) = drawn.whole_row_draw(100).expect("a draw");
        assert_eq!(f64::from(u), uniform(&mut rng));
        assert_eq!((inv_t, min_p, top_p), (1.0 / 0.8, 0.05, 0.9));
    }
    let draw = |p: SamplingParams| Sampler::new(p).whole_row_draw(100);
    assert!(
        draw(params(1.0, 100, 1.0, 0.0, 0)).is_some(),
        "k = vocabulary"
    );
    assert_eq!(draw(params(0.0, 0, 1.0, 0.0, 0)), None, "greedy");
    assert_eq!(draw(params(1.0, 1, 1.0, 0.0, 0)), None, "top-1");
    assert_eq!(draw(params(1.0, 40, 1.0, 0.0, 0)), None, "a top-k filter");
}

/// Penalties and logit bias become one change per token, the float steps `sample_with` takes
/// (so a device making them chooses from the same logits); a row whose logits are adjusted
/// reads back whole rows on the host, and its argmax, top k or draw from the changed logits
/// where a device changes them.
#[test]
fn penalties_and_bias_become_per_token_changes_made_where_the_logits_live() {
    use crate::engine::readback::{RowPlan, RowWant};
    let p = SamplingParams {
        repetition_penalty: 1.3,
        frequency_penalty: 0.4,
        presence_penalty: 0.25,
        logit_bias: vec![(5, 2.0), (9, -1.5)],
        ..params(0.9, 0, 1.0, 0.0, 3)
    };
    let mut history = TokenHistory::new(&[2, 7], true);
    for t in [7, 3, 3] {
        history.push(t);
    }
    let changes = Sampler::new(p.clone()).logit_adjustments(&history);
    let tokens: Vec<u32> = changes.iter().map(|c| c.token).collect();
    assert_eq!(tokens, [2, 3, 5, 7, 9]);
    let three = changes[1];
    assert_eq!(
        (three.positive_scale, three.negative_scale),
        (1.0 / 1.3, 1.3)
    );
    assert_eq!(three.subtract, 0.4 * 2.0 + 0.25);
    assert_eq!((changes[2].add, changes[2].positive_scale), (2.0, 1.0));
    // The host's adjusted logits are the changes applied: the same draws.
    let logits: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let changed = lowbit_gpu::adjusted_rows(&logits, logits.len(), &changes);
    let (mut with, mut on_changed) = (
        Sampler::new(p.clone()),
        Sampler::new(SamplingParams {
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            ..p.clone()
        }),
    );
    for _ in 0..50 {
        assert_eq!(
            with.sample_with(&logits, &history),
            on_changed.sample(&changed)
        );
    }
    // On the host: whole rows. On a device: the choice, with the changes.
    let whole = RowPlan::whole();
    assert_eq!(whole.want, RowWant::Logits);
    let mut s = Sampler::new(p.clone());
    assert_eq!(
        RowPlan::of(&mut s, &history, false, None, 12, 0, false),
        whole
    );
    let plan = RowPlan::of(&mut s, &history, false, None, 12, 64, true);
    assert!(matches!(plan.want, RowWant::Draw(..)), "{plan:?}");
    assert_eq!((plan.adjust, plan.logprobs), (changes, None));
    // Logprobs: computed on the device for a token chosen there, from the whole row
    // otherwise; a row still to fork is read whole.
    let plan = RowPlan::of(&mut s, &history, false, Some(3), 12, 64, true);
    assert!(matches!(plan.want, RowWant::Draw(..)), "{plan:?}");
    assert_eq!(plan.logprobs, Some(3));
    assert_eq!(
        RowPlan::of(&mut s, &history, false, Some(3), 12, 64, false),
        whole
    );
    assert_eq!(
        RowPlan::of(&mut s, &history, true, None, 12, 64, true),
        whole
    );
    let mut greedy = Sampler::new(SamplingParams {
        temperature: 0.0,
        ..p.clone()
    });
    let plan = RowPlan::of(&mut greedy, &history, false, Some(0), 12, 64, true);
    assert_eq!((plan.want, plan.logprobs), (RowWant::Argmax, Some(0)));
    let mut top = Sampler::new(SamplingParams { top_k: 4, ..p });
    let plan = RowPlan::of(&mut top, &history, false, None, 12, 64, true);
    assert_eq!(plan.want, RowWant::TopK(4));
    // The host chooses from a top k: its logprobs need the whole row.
    assert_eq!(
        RowPlan::of(&mut top, &history, false, Some(2), 12, 64, true),
        whole
    );
}
