//! The engine on the real model: a request's tokens (and its prompt's log-probabilities) do
//! not depend on what else is in its batch, on how the budget chunked its prompt, on
//! prefix-cache hits, on preemption, or on speculative decoding.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use lowbit::engine::blocks::BlockManager;
use lowbit::engine::speculative::SpeculativeConfig;
use lowbit::engine::{
    Event, GenerationRequest, LlamaStep, SamplingParams, Scheduler, SchedulerConfig,
};
use lowbit::metrics::Metrics;
use lowbit::model::{BatchSeq, Llama, ModelSource, QuantPolicy};
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
    speculative: SpeculativeConfig,
}

/// Prompt lookup with 5 drafts from suffixes of 1 to 3 tokens (1: many drafts, most wrong,
/// so rejection is exercised as much as acceptance).
const SPECULATING: SpeculativeConfig = SpeculativeConfig {
    tokens: 5,
    ngram_min: 1,
    ngram_max: 3,
    max_running: 64,
};

/// A generated token and its logprobs (when asked).
type Token = (u32, Option<lowbit_gpu::TokenLogprobs>);

/// A request's prompt, sampling and prompt logprobs asked (alternatives).
type Ask = (Vec<u32>, SamplingParams, Option<usize>);

/// What one run gave: each request's generated tokens and prompt logprobs, and the
/// preemptions.
struct Ran {
    tokens: Vec<Vec<Token>>,
    prompts: Vec<Option<Vec<lowbit_gpu::TokenLogprobs>>>,
    preemptions: u64,
    /// Draft tokens verified, and accepted.
    drafted: u64,
    accepted: u64,
}

/// Runs `asks` together through one scheduler, each asking for `logprobs` alternatives.
fn run(
    asks: &[Ask],
    max_tokens: usize,
    s: &Setup,
    backend: Arc<dyn Backend>,
    logprobs: Option<usize>,
) -> Ran {
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
            speculative: s.speculative,
        },
        BlockManager::new(s.blocks, DEFAULT_BLOCK_TOKENS, s.prefix_cache),
        Arc::new(tokenizer),
        metrics.clone(),
    );
    let mut rxs = Vec::new();
    for (p, sampling, prompt_logprobs) in asks {
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
                min_tokens: 0,
                logprobs,
                prompt_logprobs: *prompt_logprobs,
                deadline: None,
                grammar: None,
            },
            tx,
        );
        rxs.push(rx);
    }
    while sched.has_work() {
        sched.step();
    }
    assert!(sched.blocks().all_released());
    let mut ran = Ran {
        tokens: Vec::new(),
        prompts: Vec::new(),
        preemptions: metrics.num_preemptions_total.get(),
        drafted: metrics.spec_decode_num_draft_tokens_total.get(),
        accepted: metrics.spec_decode_num_accepted_tokens_total.get(),
    };
    for (mut rx, ask) in rxs.into_iter().zip(asks) {
        let (mut toks, mut prompt) = (Vec::new(), None);
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Token {
                    token, logprobs, ..
                } => toks.push((token, logprobs)),
                Event::PromptLogprobs(lps) => prompt = Some(lps),
                _ => {}
            }
        }
        assert_eq!(toks.len(), max_tokens);
        assert_eq!(prompt.is_some(), ask.2.is_some());
        ran.tokens.push(toks);
        ran.prompts.push(prompt);
    }
    ran
}

/// The log-probabilities of each token of `prompt` after the first, with `top` alternatives,
/// from one forward of the whole prompt asking every position's logits (as perplexity does).
fn whole_prompt_logprobs(
    backend: Arc<dyn Backend>,
    prompt: &[u32],
    top: usize,
) -> Vec<lowbit_gpu::TokenLogprobs> {
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let model = Llama::load(&source, backend, &QuantPolicy::as_stored()).unwrap();
    let blocks = prompt.len().div_ceil(DEFAULT_BLOCK_TOKENS);
    let spec = model.kv_pool_spec(DEFAULT_BLOCK_TOKENS, blocks, lowbit_gpu::KvDtype::F32);
    let mut pool = model.new_kv_pool(spec).unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let seq = BatchSeq {
        tokens: prompt,
        pos_start: 0,
        blocks: &table,
        window_blocks: &[],
        logits: 0..prompt.len() - 1,
    };
    let logits = model.forward(&[seq], &mut pool).unwrap();
    (0..prompt.len() - 1)
        .map(|j| lowbit_gpu::token_logprobs(logits.row(j), prompt[j + 1], top))
        .collect()
}

/// `a` and `b` within `tolerance` (logprob and alternatives' values; the same tokens).
fn assert_close(
    a: &[lowbit_gpu::TokenLogprobs],
    b: &[lowbit_gpu::TokenLogprobs],
    tolerance: f32,
    what: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.token, y.token, "{what}: position {j}");
        assert!(
            (x.logprob - y.logprob).abs() <= tolerance,
            "{what}: {x:?} vs {y:?}"
        );
        let ids = |t: &lowbit_gpu::TokenLogprobs| t.top.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(ids(x), ids(y), "{what}: position {j}");
        for (p, q) in x.top.iter().zip(&y.top) {
            assert!((p.1 - q.1).abs() <= tolerance, "{what}: {x:?} vs {y:?}");
        }
    }
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
    // Every third request asks for its prompt's logprobs (so it does not use the prefix cache).
    let prompts: Vec<Ask> = questions
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
            let prompt_logprobs = (i % 3 == 0).then_some(2);
            (tok.encode(&text, false).unwrap(), sampling, prompt_logprobs)
        })
        .collect();
    let max_tokens = 20;
    let roomy = Setup {
        budget: 512,
        blocks: 256,
        prefix_cache: false,
        speculative: SpeculativeConfig::OFF,
    };
    // Each request alone, no cache, whole prompts in one step.
    let alone: Vec<Ran> = prompts
        .iter()
        .map(|p| run(std::slice::from_ref(p), max_tokens, &roomy, cpu(), None))
        .collect();
    // A prompt's logprobs are those of one forward asking every position's logits.
    for (p, a) in prompts.iter().zip(&alone).step_by(3) {
        let want = whole_prompt_logprobs(cpu(), &p.0, 2);
        assert_close(a.prompts[0].as_ref().unwrap(), &want, 1e-6, "cpu");
    }
    // All 16 together, in every configuration.
    for setup in [
        roomy,
        // Chunks of 7 rows shared among prefills and decodes, prefix hits on the system prompt.
        Setup {
            budget: 7,
            blocks: 256,
            prefix_cache: true,
            speculative: SpeculativeConfig::OFF,
        },
        // A pool too small for all 16: sequences are preempted and recomputed.
        Setup {
            budget: 64,
            blocks: 24,
            prefix_cache: false,
            speculative: SpeculativeConfig::OFF,
        },
        // The greedy half speculates, with prefix hits, in chunks of 40 rows, and in a pool
        // small enough to preempt.
        Setup {
            budget: 40,
            blocks: 256,
            prefix_cache: true,
            speculative: SPECULATING,
        },
        Setup {
            budget: 64,
            blocks: 24,
            prefix_cache: false,
            speculative: SPECULATING,
        },
    ] {
        let together = run(&prompts, max_tokens, &setup, cpu(), None);
        if setup.blocks == 24 {
            assert!(together.preemptions > 0, "the small pool should preempt");
        }
        if setup.speculative.enabled() {
            assert!(together.accepted > 0, "no draft accepted");
            assert!(together.accepted < together.drafted, "no draft rejected");
        }
        for (i, a) in alone.iter().enumerate() {
            let what = format!(
                "request {i}, budget {}, blocks {}",
                setup.budget, setup.blocks
            );
            assert_eq!(a.tokens[0], together.tokens[i], "{what}");
            assert_eq!(a.prompts[0], together.prompts[i], "{what}: prompt logprobs");
        }
    }
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// The same on the wgpu backend (lavapipe in CI, so fewer and shorter requests): alone and
/// together, chunked by a budget of 7 with prefix hits, the tokens (and the prompt logprobs,
/// computed on the GPU) are the same.
#[test]
fn on_the_gpu_tokens_do_not_depend_on_batch_chunking_or_prefix_hits() {
    let gpu = Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default())
            .expect("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers)"),
    ) as Arc<dyn Backend>;
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let tok = source.tokenizer().unwrap();
    let prompts: Vec<Ask> = [
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
        let prompt_logprobs = [Some(3), None, None, Some(0)][i];
        (tok.encode(&text, false).unwrap(), sampling, prompt_logprobs)
    })
    .collect();
    let roomy = Setup {
        budget: 512,
        blocks: 64,
        prefix_cache: false,
        speculative: SpeculativeConfig::OFF,
    };
    // With logprobs: computed on the GPU for the rows chosen there, from whole rows for the
    // top-k one; a row's are the same in any batch, to the bit.
    let alone: Vec<Ran> = prompts
        .iter()
        .map(|p| run(std::slice::from_ref(p), 6, &roomy, gpu.clone(), Some(2)))
        .collect();
    // The prompt's logprobs computed on the GPU (log-sum-exp there) are the host's over the
    // GPU's whole rows, to float32 rounding.
    let want = whole_prompt_logprobs(gpu.clone(), &prompts[0].0, 3);
    assert_close(alone[0].prompts[0].as_ref().unwrap(), &want, 1e-4, "gpu");
    let chunked = Setup {
        budget: 7,
        blocks: 64,
        prefix_cache: true,
        speculative: SpeculativeConfig::OFF,
    };
    let together = run(&prompts, 6, &chunked, gpu, Some(2));
    for (i, a) in alone.iter().enumerate() {
        assert!(a.tokens[0].iter().all(|t| t.1.is_some()));
        assert_eq!(a.tokens[0], together.tokens[i], "request {i}");
        assert_eq!(
            a.prompts[0], together.prompts[i],
            "request {i}: prompt logprobs"
        );
    }
}

/// A prompt that SmolLM2 continues by copying its line twice more (greedy): prompt lookup's
/// drafts are mostly right.
fn copy_prompt() -> Vec<u32> {
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let tok = source.tokenizer().unwrap();
    let line = "Line: the quick brown fox jumps over the lazy dog near the old river bank.\n";
    let text = format!("{line}{line}Line:");
    tok.encode(&text, false).unwrap()
}

/// Speculation on the wgpu backend: the drafts' rows are computed in one step with the
/// token before them, and the tokens are plain greedy decoding's.
#[test]
fn on_the_gpu_speculation_gives_the_greedy_tokens() {
    let gpu = Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default())
            .expect("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers)"),
    ) as Arc<dyn Backend>;
    let ask: Vec<Ask> = vec![(copy_prompt(), SamplingParams::default(), None)];
    let mut setup = Setup {
        budget: 512,
        blocks: 64,
        prefix_cache: false,
        speculative: SpeculativeConfig::OFF,
    };
    let plain = run(&ask, 10, &setup, gpu.clone(), None);
    setup.speculative = SPECULATING;
    let speculated = run(&ask, 10, &setup, gpu, None);
    assert_eq!(plain.tokens, speculated.tokens);
    assert!(speculated.accepted > 0, "no draft accepted");
}

/// On the CPU: a copying answer, greedy and sampled, alone and together, with speculation is
/// plain decoding's (the seeded sample's tokens too, and with logprobs their logprobs), and
/// most greedy drafts are accepted.
#[test]
fn speculation_gives_plain_decodings_tokens_and_accepts_copied_text() {
    let sampled = SamplingParams {
        temperature: 0.8,
        seed: 7,
        ..SamplingParams::default()
    };
    let asks: Vec<Ask> = vec![
        (copy_prompt(), SamplingParams::default(), None),
        (copy_prompt(), sampled, None),
    ];
    let mut setup = Setup {
        budget: 512,
        blocks: 64,
        prefix_cache: true,
        speculative: SpeculativeConfig::OFF,
    };
    let plain = run(&asks, 24, &setup, cpu(), None);
    setup.speculative = SpeculativeConfig {
        ngram_min: 2,
        ..SPECULATING
    };
    let alone = run(&asks[..1], 24, &setup, cpu(), None);
    let together = run(&asks, 24, &setup, cpu(), None);
    assert_eq!(plain.tokens[0], alone.tokens[0]);
    assert_eq!(plain.tokens, together.tokens);
    let sampled_alone = run(&asks[1..], 24, &setup, cpu(), None);
    assert_eq!(plain.tokens[1], sampled_alone.tokens[0]);
    assert!(sampled_alone.accepted > 0, "no sampled draft accepted");
    let with_logprobs = run(&asks, 24, &setup, cpu(), Some(2));
    setup.speculative = SpeculativeConfig::OFF;
    assert_eq!(
        with_logprobs.tokens,
        run(&asks, 24, &setup, cpu(), Some(2)).tokens
    );
    assert!(with_logprobs.accepted > 0);
    assert!(
        alone.accepted * 2 > alone.drafted,
        "{} of {} drafts accepted",
        alone.accepted,
        alone.drafted
    );
    assert_eq!(plain.drafted, 0);
}
