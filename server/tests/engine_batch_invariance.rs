//! The engine on the real model: a request's tokens do not depend on what else is in its
//! batch, on how the budget chunked its prompt, on prefix-cache hits, or on preemption.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use lowbit::engine::blocks::BlockManager;
use lowbit::engine::{
    Event, GenerationRequest, LlamaStep, SamplingParams, Scheduler, SchedulerConfig,
};
use lowbit::metrics::Metrics;
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{WgpuBackend, WgpuOptions};
use lowbit_gpu::Backend;
use lowbit_gpu::DEFAULT_BLOCK_TOKENS;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

struct Setup {
    budget: usize,
    blocks: usize,
    prefix_cache: bool,
}

/// A generated token and its logprobs (when asked).
type Token = (u32, Option<lowbit_gpu::TokenLogprobs>);

/// Runs `prompts` together through one scheduler, each asking for `logprobs` alternatives;
/// returns each one's generated tokens.
fn run(
    prompts: &[(Vec<u32>, SamplingParams)],
    max_tokens: usize,
    s: &Setup,
    backend: Arc<dyn Backend>,
    logprobs: Option<usize>,
) -> (Vec<Vec<Token>>, u64) {
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    let model = Llama::load(&source, backend, &QuantPolicy::as_stored()).unwrap();
    let spec = model.kv_pool_spec(DEFAULT_BLOCK_TOKENS, s.blocks, lowbit_gpu::KvDtype::F32);
    let pool = model.new_kv_pool(spec).unwrap();
    let metrics = Metrics::new();
    let mut sched = Scheduler::new(
        LlamaStep { model, pool },
        SchedulerConfig {
            max_batch_tokens: s.budget,
            max_concurrent_sequences: 64,
            max_model_len: 2048,
            eos: tokenizer.eos().to_vec(),
        },
        BlockManager::new(s.blocks, DEFAULT_BLOCK_TOKENS, s.prefix_cache),
        Arc::new(tokenizer),
        metrics.clone(),
    );
    let mut rxs = Vec::new();
    for (p, sampling) in prompts {
        let (tx, rx) = unbounded_channel();
        sched.add(
            GenerationRequest {
                id: String::new(),
                prompt: p.clone(),
                n: 1,
                max_tokens,
                sampling: sampling.clone(),
                stop: Vec::new(),
                stop_token_ids: Vec::new(),
                ignore_eos: true,
                logprobs,
                prompt_logprobs: None,
                deadline: None,
            },
            tx,
        );
        rxs.push(rx);
    }
    while sched.has_work() {
        sched.step();
    }
    assert!(sched.blocks().all_released());
    let outs = rxs
        .into_iter()
        .map(|mut rx| {
            let mut toks = Vec::new();
            while let Ok(e) = rx.try_recv() {
                if let Event::Token {
                    token, logprobs, ..
                } = e
                {
                    toks.push((token, logprobs));
                }
            }
            assert_eq!(toks.len(), max_tokens);
            toks
        })
        .collect();
    (outs, metrics.num_preemptions_total.get())
}

#[test]
fn tokens_do_not_depend_on_batch_chunking_prefix_hits_or_preemption() {
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let tok = source.tokenizer().unwrap();
    let system = "You are a careful assistant who answers in one short sentence about geography and history.";
    let questions = [
        "What is the capital of France?",
        "Name a river in Egypt.",
        "Who built the pyramids?",
        "What is the tallest mountain?",
        "Where is Kyoto?",
        "Which ocean is the largest?",
        "What language is spoken in Brazil?",
        "Name a desert in Asia.",
        "What is the capital of Peru?",
        "Where is the Danube?",
        "Who was Napoleon?",
        "What is Iceland known for?",
        "Name a city in Canada.",
        "What is the longest river?",
        "Where is Timbuktu?",
        "What is the capital of Japan?",
    ];
    let prompts: Vec<(Vec<u32>, SamplingParams)> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let text = format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
            // Half greedy, half seeded sampling.
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.95,
                    seed: i as u64,
                    ..SamplingParams::default()
                }
            };
            (tok.encode(&text, false).unwrap(), sampling)
        })
        .collect();
    let max_tokens = 20;
    let roomy = Setup {
        budget: 512,
        blocks: 256,
        prefix_cache: false,
    };
    // Each request alone, no cache, whole prompts in one step.
    let alone: Vec<Vec<Token>> = prompts
        .iter()
        .map(|p| {
            run(std::slice::from_ref(p), max_tokens, &roomy, cpu(), None)
                .0
                .remove(0)
        })
        .collect();
    // All 16 together, in every configuration.
    for setup in [
        roomy,
        // Chunks of 7 rows shared among prefills and decodes, prefix hits on the system prompt.
        Setup {
            budget: 7,
            blocks: 256,
            prefix_cache: true,
        },
        // A pool too small for all 16: sequences are preempted and recomputed.
        Setup {
            budget: 64,
            blocks: 24,
            prefix_cache: false,
        },
    ] {
        let (together, preemptions) = run(&prompts, max_tokens, &setup, cpu(), None);
        if setup.blocks == 24 {
            assert!(preemptions > 0, "the small pool should preempt");
        }
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(
                a, b,
                "request {i}, budget {}, blocks {}",
                setup.budget, setup.blocks
            );
        }
    }
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// The same on the wgpu backend (lavapipe in CI, so fewer and shorter requests): alone and
/// together, chunked by a budget of 7 with prefix hits, the tokens are the same.
#[test]
fn on_the_gpu_tokens_do_not_depend_on_batch_chunking_or_prefix_hits() {
    let gpu = Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default())
            .expect("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers)"),
    ) as Arc<dyn Backend>;
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let tok = source.tokenizer().unwrap();
    let prompts: Vec<(Vec<u32>, SamplingParams)> = [
        "Where is Kyoto?",
        "Name a river in Egypt.",
        "Who was Napoleon?",
        "What is rice?",
    ]
    .iter()
    .enumerate()
    .map(|(i, q)| {
        let text = format!("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
        // Greedy (ids read back), sampling through top-p (a token drawn on the GPU), with a
        // presence penalty (the logits changed on the GPU, then drawn from), after a top-k
        // filter (the top k read back).
        let sampling = match i {
            0 => SamplingParams::default(),
            1 => SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                seed: 3,
                ..SamplingParams::default()
            },
            2 => SamplingParams {
                temperature: 0.8,
                presence_penalty: 0.5,
                seed: 4,
                ..SamplingParams::default()
            },
            _ => SamplingParams {
                temperature: 0.9,
                top_k: 40,
                seed: 5,
                ..SamplingParams::default()
            },
        };
        (tok.encode(&text, false).unwrap(), sampling)
    })
    .collect();
    let roomy = Setup {
        budget: 512,
        blocks: 64,
        prefix_cache: false,
    };
    // With logprobs: computed on the GPU for the rows chosen there, from whole rows for the
    // top-k one; a row's are the same in any batch, to the bit.
    let alone: Vec<Vec<Token>> = prompts
        .iter()
        .map(|p| {
            run(std::slice::from_ref(p), 6, &roomy, gpu.clone(), Some(2))
                .0
                .remove(0)
        })
        .collect();
    let chunked = Setup {
        budget: 7,
        blocks: 64,
        prefix_cache: true,
    };
    let (together, _) = run(&prompts, 6, &chunked, gpu, Some(2));
    assert!(alone.iter().flatten().all(|t| t.1.is_some()));
    assert_eq!(alone, together);
}
