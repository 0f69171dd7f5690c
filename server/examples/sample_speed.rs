//! Time to choose one sampled token from a vocabulary of logits, per filter setting:
//! `cargo run --release -p lowbit --example sample_speed [VOCAB] [REPS]` (default SmolLM2's
//! 49,152 tokens). The logits are a model-like mix: a few likely tokens over a long flat tail.
use lowbit::engine::sampler::{Sampler, SamplingParams};
use lowbit_gpu::token_logprobs as logprobs;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let vocab: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(49_152);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    // A deterministic spread: most tokens between −8 and 0, one in a hundred far above.
    let logits: Vec<f32> = (0..vocab)
        .map(|i| {
            let base = ((i as f32 * 0.37).sin() - 1.0) * 4.0;
            if i % 100 == 7 {
                base + 12.0
            } else {
                base
            }
        })
        .collect();
    let settings = [
        ("temperature 1 (OpenAI's default)", 1.0, 0, 1.0, 0.0),
        ("temperature 0.7, top-p 0.9", 0.7, 0, 0.9, 0.0),
        ("temperature 1, top-k 40", 1.0, 40, 1.0, 0.0),
        ("temperature 1, min-p 0.05", 1.0, 0, 1.0, 0.05),
    ];
    for (name, temperature, top_k, top_p, min_p) in settings {
        let mut s = Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        });
        // The fastest call: on a shared machine the mean mostly measures the neighbours.
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(s.sample(std::hint::black_box(&logits)));
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{name}: {:.1} us a token ({vocab} logits)", best * 1e6);
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps.min(100) {
        let t = Instant::now();
        std::hint::black_box(logprobs(std::hint::black_box(&logits), 3, 5));
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("logprobs with 5 alternatives: {:.1} us a token", best * 1e6);
}
