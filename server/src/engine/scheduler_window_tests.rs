//! The scheduler with a sliding-window pool, on the fake model: its rows read their window
//! back from the window pool's tables too, so a block given back too early, a missing copy
//! or a wrong prefix hit there changes the output.

use super::fake::{collect, prompt, reference, request, windowed_scheduler, Fake};
use super::*;
use tokio::sync::mpsc::unbounded_channel;

const BT: usize = 4;
const WINDOW: usize = 6;

/// Steps until done, checking after each that the window pool never holds more than the
/// sequences' windows and chunks need; returns whether some step held fewer window blocks
/// than main ones (blocks were given back).
fn run_checked(s: &mut Scheduler<Fake>, budget: usize) -> bool {
    let mut slid = false;
    for _ in 0..10_000 {
        if !s.has_work() {
            return slid;
        }
        s.step();
        let window = s.blocks.window().expect("a window pool");
        let bound = s.running.len() * (WINDOW.div_ceil(BT) + 2) + budget.div_ceil(BT);
        assert!(
            window.in_use() <= bound,
            "{} window blocks in use, at most {bound} needed",
            window.in_use()
        );
        slid |= window.in_use() < s.blocks.main().in_use();
    }
    panic!("the scheduler did not finish");
}

#[test]
fn window_blocks_slide_back_and_the_tokens_stay_the_reference() {
    for prefix in [false, true] {
        let budget = 7;
        let mut s = windowed_scheduler(128, Some((64, WINDOW)), BT, budget, prefix);
        let mut rxs = Vec::new();
        for r in 0..6u32 {
            let (tx, rx) = unbounded_channel();
            // Every other prompt shares its head with the one before (prefix hits).
            let p = prompt(r / 2, 9 + 4 * r as usize);
            s.add(request(&p, 25, 1), tx);
            rxs.push((p, rx));
        }
        assert!(
            run_checked(&mut s, budget),
            "no window block was given back"
        );
        for (p, mut rx) in rxs {
            assert_eq!(collect(&mut rx, 1).texts[0], reference(&p, 25));
        }
        assert!(s.blocks.all_released());
        if prefix {
            assert!(s.metrics.prefix_cache_hits_total.get() > 0);
        }
    }
}

#[test]
fn prefix_hits_take_the_window_pools_blocks_or_stop_short_of_them() {
    let shared = prompt(9, 22);
    let mut longer = shared.clone();
    longer.extend([5, 6, 7]);
    // Roomy: the first request's window blocks slid back into the cache, and the second
    // finds them (five whole blocks of four and the head of the sixth, as with one pool).
    let mut s = windowed_scheduler(64, Some((32, WINDOW)), BT, 64, true);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&shared, 5, 1), tx);
    run_checked(&mut s, 64);
    let (tx, mut rx2) = unbounded_channel();
    s.add(request(&longer, 5, 1), tx);
    run_checked(&mut s, 64);
    assert_eq!(collect(&mut rx, 1).texts[0], reference(&shared, 5));
    let second = collect(&mut rx2, 1);
    assert_eq!(second.texts[0], reference(&longer, 5));
    assert_eq!(second.usage.unwrap().cached_tokens, 22);
    assert!(s.blocks.all_released());

    // A window pool of eight blocks: an unrelated request in between evicts the cached
    // window blocks, so the hit stops where the window pool can no longer serve it (the
    // main pool still holds the whole chain), and the tokens are the same.
    let mut s = windowed_scheduler(64, Some((8, WINDOW)), BT, 64, true);
    let (tx, _rx) = unbounded_channel();
    s.add(request(&shared, 5, 1), tx);
    run_checked(&mut s, 64);
    let (tx, _rx) = unbounded_channel();
    s.add(request(&prompt(3, 20), 8, 1), tx);
    run_checked(&mut s, 64);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&longer, 5, 1), tx);
    run_checked(&mut s, 64);
    let third = collect(&mut rx, 1);
    assert_eq!(third.texts[0], reference(&longer, 5));
    assert!(third.usage.unwrap().cached_tokens < 22);
    assert!(s.blocks.all_released());
}

#[test]
fn forks_and_preemption_keep_both_pools_consistent() {
    // Choices fork from a prompt ending mid-block (the partial block copied in both pools).
    let mut s = windowed_scheduler(64, Some((32, WINDOW)), BT, 64, true);
    let p = prompt(4, 10);
    let (tx, mut rx) = unbounded_channel();
    s.add(request(&p, 20, 3), tx);
    run_checked(&mut s, 64);
    for t in collect(&mut rx, 3).texts {
        assert_eq!(t, reference(&p, 20));
    }
    assert!(s.blocks.all_released());

    // A window pool too small for four sequences' windows: sequences are preempted (for
    // window blocks, not main ones) and recomputed, with the same tokens.
    let budget = 16;
    let mut s = windowed_scheduler(128, Some((9, WINDOW)), BT, budget, false);
    let mut rxs = Vec::new();
    for r in 0..4u32 {
        let (tx, rx) = unbounded_channel();
        let p = prompt(10 + r, 6 + r as usize);
        s.add(request(&p, 30, 1), tx);
        rxs.push((p, rx));
    }
    run_checked(&mut s, budget);
    assert!(
        s.metrics.num_preemptions_total.get() > 0,
        "nothing preempted"
    );
    for (p, mut rx) in rxs {
        assert_eq!(collect(&mut rx, 1).texts[0], reference(&p, 30));
    }
    assert!(s.blocks.all_released());
}

/// Random loads on random pools (each large enough for one sequence, so that every request
/// can finish): every choice gets the reference tokens and every block of both pools comes
/// back, whatever the window, the chunking, the prefix hits, forks and preemptions.
#[test]
fn random_loads_on_random_window_pools_give_the_reference_tokens() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut pick = |lo: usize, hi: usize| lo + rng.next_u32() as usize % (hi - lo + 1);
    let (mut preempted, mut hits) = (0, 0);
    for round in 0..60 {
        let window = pick(1, 12);
        let budget = pick(1, 24);
        let (longest_prompt, longest_output) = (40, 30);
        let one_sequence = (longest_prompt + longest_output + budget).div_ceil(BT);
        let main = pick(one_sequence + 1, 4 * one_sequence);
        let least_window = window.div_ceil(BT) + 2 + budget.div_ceil(BT) + 1;
        let window_blocks = pick(least_window, 3 * least_window);
        let prefix = round % 3 != 0;
        let mut s = windowed_scheduler(main, Some((window_blocks, window)), BT, budget, prefix);
        let mut rxs = Vec::new();
        for r in 0..pick(1, 8) {
            // Heads shared among requests of the same family.
            let mut p = prompt(pick(0, 2) as u32, pick(1, 24));
            p.extend(prompt(100 + r as u32, pick(1, longest_prompt - 24)));
            let (n, max_tokens) = (pick(1, 3), pick(1, longest_output));
            let (tx, rx) = unbounded_channel();
            s.add(request(&p, max_tokens, n), tx);
            rxs.push((p, n, max_tokens, rx));
        }
        for _ in 0..20_000 {
            if !s.has_work() {
                break;
            }
            s.step();
        }
        assert!(!s.has_work(), "round {round}: the scheduler did not finish");
        for (p, n, max_tokens, mut rx) in rxs {
            for t in collect(&mut rx, n).texts {
                assert_eq!(t, reference(&p, max_tokens), "round {round}");
            }
        }
        assert!(s.blocks.all_released(), "round {round}");
        preempted += s.metrics.num_preemptions_total.get();
        hits += s.metrics.prefix_cache_hits_total.get();
    }
    assert!(
        preempted > 0 && hits > 0,
        "{preempted} preemptions, {hits} hit tokens"
    );
}
