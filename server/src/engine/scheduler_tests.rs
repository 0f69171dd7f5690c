//! Scheduler tests on a fake model that reads its tokens back through the block tables
//! (`scheduler_fake.rs`).

use super::fake::*;
use super::*;
use tokio::sync::mpsc::unbounded_channel;

#[test]
fn chunked_prefill_and_batched_decode_give_the_reference_tokens() {
    let mut s = scheduler(64, 4, 7, true);
    let mut rxs = Vec::new();
    for r in 0..6 {
        let (tx, rx) = unbounded_channel();
        s.add(request(&prompt(r, 3 + 5 * r as usize), 9, 1), tx);
        rxs.push((r, rx));
    }
    run_all(&mut s);
    for (r, mut rx) in rxs {
        let o = collect(&mut rx, 1);
        assert_eq!(o.texts[0], reference(&prompt(r, 3 + 5 * r as usize), 9));
        assert_eq!(o.reasons[0], Some(FinishReason::Length));
        assert_eq!(o.usage.unwrap().completion_tokens, 9);
    }
    // The budget held every step, and prompts were split into chunks.
    assert!(s.model.rows_per_step.iter().all(|&r| r <= 7));
    assert!(s.blocks.all_released());
}

#[test]
fn preemption_frees_blocks_and_resumes_with_identical_output() {
    // 10 blocks of 4: not enough for four requests of up to 26 positions at once.
    let mut s = scheduler(10, 4, 64, false);
    let mut rxs = Vec::new();
    for r in 0..4 {
        let (tx, rx) = unbounded_channel();
        s.add(request(&prompt(r, 10), 16, 1), tx);
        rxs.push((r, rx));
    }
    run_all(&mut s);
    assert!(s.metrics.num_preemptions_total.get() > 0);
    for (r, mut rx) in rxs {
        assert_eq!(collect(&mut rx, 1).texts[0], reference(&prompt(r, 10), 16));
    }
    assert!(s.blocks.all_released());
}

/// Forks that find no block for their partial block's copy wait holding nothing: when they
/// held their shared prompt blocks, four `n = 2` requests in 12 blocks ended with nothing
/// running and the queue's head waiting for blocks the forks behind it held.
#[test]
fn waiting_forks_hold_no_blocks_so_a_full_pool_cannot_deadlock() {
    let mut s = scheduler(12, 4, 64, false);
    let mut rxs = Vec::new();
    for (r, temperature) in [(1, 1.0), (2, 0.0), (3, 0.0), (4, 0.7)] {
        let mut req = request(&prompt(r, 9), 60, 2);
        req.sampling.temperature = temperature;
        req.sampling.seed = u64::from(r);
        let (tx, rx) = unbounded_channel();
        s.add(req, tx);
        rxs.push((r, temperature, rx));
    }
    run_all(&mut s);
    assert!(s.metrics.num_preemptions_total.get() > 0);
    for (r, temperature, mut rx) in rxs {
        let o = collect(&mut rx, 2);
        assert!(o.reasons.iter().all(Option::is_some));
        if temperature == 0.0 {
            // 48 positions of context: 39 tokens after the prompt of 9.
            assert_eq!(o.texts, vec![reference(&prompt(r, 9), 39); 2]);
            assert_eq!(o.reasons, vec![Some(FinishReason::Length); 2]);
        }
    }
    assert!(s.blocks.all_released());
}

#[test]
fn prefix_hits_reuse_blocks_and_change_nothing() {
    let shared = prompt(9, 22);
    let mut outputs = Vec::new();
    for prefix in [true, false] {
        let mut s = scheduler(64, 4, 64, prefix);
        let (tx, mut rx) = unbounded_channel();
        s.add(request(&shared, 5, 1), tx);
        run_all(&mut s);
        let first = collect(&mut rx, 1);
        let mut longer = shared.clone();
        longer.extend([5, 6, 7]);
        let (tx, mut rx) = unbounded_channel();
        s.add(request(&longer, 5, 1), tx);
        run_all(&mut s);
        let second = collect(&mut rx, 1);
        let cached = second.usage.unwrap().cached_tokens;
        if prefix {
            // The whole shared prompt: five whole blocks of four, and the head of the sixth
            // (copied from the first request's block, whose tail holds its generated tokens).
            assert_eq!(cached, 22);
            assert_eq!(s.metrics.prefix_cache_hits_total.get(), 22);
        } else {
            assert_eq!(cached, 0);
        }
        assert_eq!(first.texts[0], reference(&shared, 5));
        assert_eq!(second.texts[0], reference(&longer, 5));
        outputs.push((first.texts, second.texts));
        assert!(s.blocks.all_released());
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_request_needing_every_block_gives_up_its_partial_hit_instead_of_waiting() {
    // Four blocks of four. The first request leaves two cached blocks; the second shares
    // the head of the first of them but needs all four blocks, so the block its partial hit
    // would copy from must be handed out instead (found in review: it used to wait for ever).
    let mut s = scheduler(4, 4, 64, true);
    let a = prompt(5, 8);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&a, 1, 1), tx);
    run_all(&mut s);
    collect(&mut rx, 1);
    assert_eq!(s.blocks.main().cached(), 2);
    let mut b = prompt(6, 15);
    b[..2].copy_from_slice(&a[..2]);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&b, 1, 1), tx);
    run_all(&mut s);
    let o = collect(&mut rx, 1);
    assert_eq!(o.texts[0], reference(&b, 1));
    assert_eq!(o.usage.unwrap().cached_tokens, 0);
    assert_eq!(s.metrics.prefix_cache_hits_total.get(), 0);
    assert_eq!(
        s.metrics.prefix_cache_queries_total.get(),
        (a.len() + b.len()) as u64
    );
    assert!(s.blocks.all_released());
}

#[test]
fn choices_share_the_prompt_blocks_and_copy_the_partial_one() {
    let mut s = scheduler(64, 4, 64, true);
    let p = prompt(3, 10); // two full blocks and a partial one
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&p, 6, 3), tx);
    s.step(); // the prompt, then the forks
    assert_eq!(s.running.len(), 3);
    let full0 = s.running[0].blocks.main[0];
    assert_eq!(s.blocks.main().refs(full0), 3);
    assert_eq!(s.copies.main.len(), 2);
    run_all(&mut s);
    let o = collect(&mut rx, 3);
    for t in &o.texts {
        assert_eq!(t, &reference(&p, 6));
    }
    assert_eq!(o.usage.unwrap().completion_tokens, 18);
    assert!(s.blocks.all_released());
}

#[test]
fn a_dropped_receiver_cancels_and_frees_blocks_in_one_step() {
    let mut s = scheduler(64, 4, 64, true);
    let (tx, rx) = unbounded_channel();
    s.add(request(&prompt(1, 12), 50, 1), tx);
    let (tx2, mut rx2) = unbounded_channel();
    s.add(request(&prompt(2, 5), 3, 1), tx2);
    s.step();
    s.step();
    assert!(s.blocks.main().in_use() > 0);
    drop(rx);
    s.step();
    run_all(&mut s);
    assert_eq!(collect(&mut rx2, 1).texts[0], reference(&prompt(2, 5), 3));
    assert_eq!(s.requests(), 0);
    assert!(s.blocks.all_released());
    assert_eq!(
        s.metrics
            .request_success_total
            .with_label_values(&["abort"])
            .get(),
        1
    );
}

#[test]
fn stop_strings_end_a_choice_and_are_not_emitted() {
    let p = prompt(4, 6);
    let full = reference(&p, 30);
    let stop = full[5..8].to_string();
    let at = full.find(&stop).unwrap();
    let mut s = scheduler(64, 4, 64, true);
    let (tx, mut rx) = unbounded_channel();
    let mut req = request(&p, 30, 1);
    req.stop = vec![stop];
    s.add(req, tx);
    run_all(&mut s);
    let o = collect(&mut rx, 1);
    assert_eq!(o.texts[0], full[..at]);
    assert_eq!(o.reasons[0], Some(FinishReason::Stop));
    assert!(s.blocks.all_released());
}

#[test]
fn expired_deadlines_fail_the_request_and_free_its_blocks() {
    let mut s = scheduler(64, 4, 64, true);
    let (tx, mut rx) = unbounded_channel();
    let mut req = request(&prompt(5, 8), 100, 1);
    req.deadline = Some(Instant::now());
    s.add(req, tx);
    run_all(&mut s);
    assert_eq!(collect(&mut rx, 1).error, Some(EngineFailure::Timeout));
    assert!(s.blocks.all_released());
}

#[test]
fn greedy_steps_read_back_ids_and_a_sampled_or_logprobs_row_brings_the_logits() {
    let mut s = scheduler(64, 4, 64, true);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&prompt(1, 6), 5, 1), tx);
    run_all(&mut s);
    assert_eq!(collect(&mut rx, 1).texts[0], reference(&prompt(1, 6), 5));
    // One prefill step and four decode steps, all greedy.
    assert_eq!((s.model.rows_per_step.len(), s.model.argmax_steps), (5, 5));

    // Beside a request that asks for logprobs, the same greedy request's steps bring the
    // whole logits rows back, and its tokens do not change.
    let mut s = scheduler(64, 4, 64, true);
    let (tx, mut greedy) = unbounded_channel();
    s.add(request(&prompt(1, 6), 5, 1), tx);
    let (tx, mut with_logprobs) = unbounded_channel();
    let mut r = request(&prompt(2, 6), 5, 1);
    r.logprobs = Some(2);
    s.add(r, tx);
    run_all(&mut s);
    assert_eq!(
        collect(&mut greedy, 1).texts[0],
        reference(&prompt(1, 6), 5)
    );
    assert_eq!(
        collect(&mut with_logprobs, 1).texts[0],
        reference(&prompt(2, 6), 5)
    );
    assert_eq!(s.model.argmax_steps, 0);
    assert!(s.blocks.all_released());
}

/// A sampling row whose top-k filter comes first reads back only its top k where logits live
/// on a device, and draws the tokens it draws from whole rows (same seed; the fake's rows tie
/// every token but one, so ties at the k-th place decide); a greedy row beside it still reads
/// back only its id.
#[test]
fn a_top_k_row_reads_back_its_top_k_and_draws_the_same_tokens() {
    let run = |device: bool| {
        let mut s = scheduler(64, 4, 64, true);
        s.model.on_device = device;
        let (tx, mut sampled) = unbounded_channel();
        let mut r = request(&prompt(3, 6), 12, 1);
        r.sampling = SamplingParams {
            temperature: 0.7,
            top_k: 5,
            top_p: 0.9,
            seed: 42,
            ..SamplingParams::default()
        };
        r.ignore_eos = true;
        s.add(r, tx);
        let (tx, mut greedy) = unbounded_channel();
        s.add(request(&prompt(1, 6), 12, 1), tx);
        run_all(&mut s);
        assert!(s.blocks.all_released());
        let texts = (
            collect(&mut sampled, 1).texts[0].clone(),
            collect(&mut greedy, 1).texts[0].clone(),
        );
        (texts, s.model.top_rows, s.model.mixed_steps)
    };
    let (on_host, host_top_rows, _) = run(false);
    let (on_device, device_top_rows, mixed_steps) = run(true);
    assert_eq!(on_device, on_host);
    assert_eq!(on_device.1, reference(&prompt(1, 6), 12));
    assert_eq!(host_top_rows, 0);
    // Twelve tokens: the prefill's and eleven decode steps', each a mixed step.
    assert_eq!((device_top_rows, mixed_steps), (12, 12));
}

/// A row sampling from its whole distribution (temperature only, OpenAI's default) has its
/// token drawn where the logits live, with a uniform from its own seeded stream: the tokens
/// are `draw_row` of each step's row at the sampler's successive uniforms. On the host the
/// same request reads back whole rows and draws none there.
#[test]
fn a_whole_distribution_row_is_drawn_where_its_logits_live() {
    let params = SamplingParams {
        temperature: 1.0,
        seed: 7,
        ..SamplingParams::default()
    };
    let run = |device: bool| {
        let mut s = scheduler(64, 4, 64, true);
        s.model.on_device = device;
        let (tx, mut rx) = unbounded_channel();
        let mut r = request(&prompt(3, 6), 12, 1);
        r.sampling = params.clone();
        r.ignore_eos = true;
        s.add(r, tx);
        run_all(&mut s);
        assert!(s.blocks.all_released());
        (collect(&mut rx, 1).texts[0].clone(), s.model.draw_rows)
    };
    let (on_device, draw_rows) = run(true);
    assert_eq!(draw_rows, 12);
    let (_, host_draw_rows) = run(false);
    assert_eq!(host_draw_rows, 0);
    // The fake's row: 1.0 at `next(seen)`, 0 elsewhere.
    let mut sampler = Sampler::new(params);
    let mut seen = prompt(3, 6);
    let mut want = String::new();
    for _ in 0..12 {
        let mut row = vec![0.0f32; VOCAB];
        row[next(&seen) as usize] = 1.0;
        let (u, inv_temperature, min_weight, top_p) =
            sampler.whole_row_draw(VOCAB).expect("a whole-row draw");
        let token = lowbit_gpu::draw_row(
            &row,
            &lowbit_gpu::RowDraw {
                row: 0,
                u,
                inv_temperature,
                min_weight,
                top_p,
            },
        );
        seen.push(token);
        want.push(char::from_u32(token).unwrap_or('?'));
    }
    assert_eq!(on_device, want);
}

/// Rows with penalties and logit bias, greedy and with a top-k filter, choose from logits
/// changed where they live and emit the tokens the host picks from whole rows, together and
/// a greedy one alone (a step of greedy rows alone still needs its changes); unpenalized,
/// the same requests give other tokens (the penalties bite).
#[test]
fn penalized_rows_choose_from_logits_changed_where_they_live() {
    let run = |device: bool, penalized: bool, top_ks: &[usize]| {
        let mut s = scheduler(64, 4, 64, true);
        s.model.on_device = device;
        let mut outs = Vec::new();
        for (i, &top_k) in top_ks.iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            let mut r = request(&prompt(4 + i as u32, 6), 10, 1);
            r.ignore_eos = true;
            r.sampling = SamplingParams {
                temperature: if top_k == 0 { 0.0 } else { 0.8 },
                top_k,
                seed: 9,
                ..SamplingParams::default()
            };
            if penalized {
                r.sampling.presence_penalty = 1.5;
                r.sampling.frequency_penalty = 0.5;
                r.sampling.logit_bias = vec![(b'q' as u32, 0.9)];
            }
            s.add(r, tx);
            outs.push(rx);
        }
        run_all(&mut s);
        assert!(s.blocks.all_released());
        let texts: Vec<String> = outs
            .iter_mut()
            .map(|rx| collect(rx, 1).texts[0].clone())
            .collect();
        (texts, s.model.adjusted_logits)
    };
    for top_ks in [&[0, 5][..], &[0]] {
        let (on_host, host_changes) = run(false, true, top_ks);
        let (on_device, device_changes) = run(true, true, top_ks);
        assert_eq!(on_device, on_host, "{top_ks:?}");
        assert_eq!(host_changes, 0);
        assert!(device_changes >= 10, "{top_ks:?}: {device_changes}");
        assert_ne!(
            run(true, false, top_ks).0,
            on_device,
            "the penalties change the tokens"
        );
    }
}

/// The logprobs of a row whose token is chosen where the logits live (greedy, a whole-row
/// draw) are computed there too, and no whole row comes back for it: each is `log softmax`
/// of the model's row at the token emitted; greedy and top-k rows emit the same tokens and
/// logprobs as on the host; a top-k row (its token chosen on the host) still reads its row.
#[test]
fn logprobs_are_computed_where_the_logits_live() {
    let settings = [(0.0, 0), (1.0, 0), (0.8, 5)];
    let run = |device: bool| {
        let mut s = scheduler(64, 4, 64, true);
        s.model.on_device = device;
        let mut outs = Vec::new();
        for (i, &(temperature, top_k)) in settings.iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            let mut r = request(&prompt(5 + i as u32, 6), 8, 1);
            r.ignore_eos = true;
            r.logprobs = Some(3);
            r.sampling = SamplingParams {
                temperature,
                top_k,
                seed: 11,
                ..SamplingParams::default()
            };
            s.add(r, tx);
            outs.push(rx);
        }
        run_all(&mut s);
        assert!(s.blocks.all_released());
        let events: Vec<_> = outs.iter_mut().map(token_events).collect();
        (events, s.model.full_rows, s.model.logprob_rows)
    };
    let (host, _, host_logprob_rows) = run(false);
    let (device, full_rows, logprob_rows) = run(true);
    assert_eq!(host_logprob_rows, 0);
    // Eight tokens each: the greedy and drawn rows' logprobs on the device, the top-k row's
    // from its whole row.
    assert_eq!((logprob_rows, full_rows), (16, 8));
    assert_eq!(device[0], host[0], "greedy");
    assert_eq!(device[2], host[2], "top k");
    for (i, events) in device.iter().enumerate() {
        assert_eq!(events.len(), 8);
        let mut seen = prompt(5 + i as u32, 6);
        for (token, lp) in events {
            // The fake's row: 1.0 at `next(seen)`, 0 elsewhere.
            let mut row = vec![0.0f32; VOCAB];
            row[next(&seen) as usize] = 1.0;
            let want = lowbit_gpu::token_logprobs(&row, *token, 3);
            assert_eq!(lp.as_ref(), Some(&want), "request {i}");
            seen.push(*token);
        }
    }
}
