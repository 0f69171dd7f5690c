//! The sliding-window layers' own KV pool on real models: a tiny random Gemma 3 (five
//! sliding layers of six, a window of four positions), gpt-oss (sliding, global, sliding,
//! with sinks) and a one-layer Gemma 2 (every layer sliding) give the same tokens and log-probabilities, to the bit, whether
//! their sliding layers share the main pool (every position kept) or keep a pool of their
//! own that blocks slide back into — alone or batched, chunked, with prefix hits, forks and
//! preemption; on the CPU and on the GPU (lavapipe in CI).
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use lowbit::engine::blocks::BlockManager;
use lowbit::engine::kv_blocks::KvBlocks;
use lowbit::engine::kv_sizing::{kv_pools, window_pool_blocks, KvBudget};
use lowbit::engine::speculative::SpeculativeConfig;
use lowbit::engine::{
    Event, GenerationRequest, LlamaStep, SamplingParams, Scheduler, SchedulerConfig,
};
use lowbit::metrics::Metrics;
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{WgpuBackend, WgpuOptions};
use lowbit_gpu::{Backend, KvDtype, DEFAULT_BLOCK_TOKENS};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

/// How one run keeps its keys and values.
#[derive(Debug, Clone, Copy)]
struct Setup {
    budget: usize,
    /// Main pool blocks, and the window pool's (`None`: one pool of every layer).
    blocks: usize,
    window_blocks: Option<usize>,
    prefix_cache: bool,
}

/// A generated token and its log-probabilities.
type Token = (u32, Option<lowbit_gpu::TokenLogprobs>);

/// One request: its prompt, choices and sampling.
struct Ask {
    prompt: Vec<u32>,
    n: usize,
    sampling: SamplingParams,
}

fn load(path: &Path, backend: &Arc<dyn Backend>) -> Llama {
    let source = ModelSource::open(path).unwrap();
    Llama::load(&source, backend.clone(), &QuantPolicy::as_stored()).unwrap()
}

/// Runs `asks` together; returns each request's choices' tokens and the preemptions.
fn run(
    path: &Path,
    backend: &Arc<dyn Backend>,
    asks: &[Ask],
    max_tokens: usize,
    s: Setup,
) -> (Vec<Vec<Vec<Token>>>, u64) {
    let model = load(path, backend);
    let bt = DEFAULT_BLOCK_TOKENS;
    let manager = |blocks| BlockManager::new(blocks, bt, s.prefix_cache);
    let (pool, blocks) = match s.window_blocks {
        Some(wb) => {
            let (window, _) = model.window_pool_layers().unwrap();
            let (main, win) = model
                .split_kv_pool_specs(bt, s.blocks, wb, KvDtype::F32)
                .unwrap();
            (
                model.new_split_kv_pool(main, win).unwrap(),
                KvBlocks::with_window(manager(s.blocks), manager(wb), window),
            )
        }
        None => {
            let spec = model.kv_pool_spec(bt, s.blocks, KvDtype::F32);
            (model.new_kv_pool(spec).unwrap(), manager(s.blocks).into())
        }
    };
    let metrics = Metrics::new();
    let mut sched = Scheduler::new(
        LlamaStep { model, pool },
        SchedulerConfig {
            max_batch_tokens: s.budget,
            max_concurrent_sequences: 64,
            max_model_len: 512,
            eos: vec![1],
            speculative: SpeculativeConfig::OFF,
        },
        blocks,
        Arc::new(ModelSource::open(path).unwrap().tokenizer().unwrap()),
        metrics.clone(),
    );
    let mut rxs = Vec::new();
    for a in asks {
        let (tx, rx) = unbounded_channel();
        sched.add(
            GenerationRequest {
                id: String::new(),
                prompt: a.prompt.clone(),
                n: a.n,
                max_tokens,
                sampling: a.sampling.clone(),
                stop: Vec::new(),
                stop_token_ids: Vec::new(),
                ignore_eos: true,
                min_tokens: 0,
                logprobs: Some(2),
                prompt_logprobs: None,
                deadline: None,
                grammar: None,
            },
            tx,
        );
        rxs.push((rx, a.n));
    }
    let mut slid = s.window_blocks.is_none();
    while sched.has_work() {
        sched.step();
        let b = sched.blocks();
        slid |= b.window().is_some_and(|w| w.in_use() < b.main().in_use());
    }
    assert!(slid, "{s:?}: no window block was given back");
    assert!(sched.blocks().all_released(), "{s:?}");
    let mut out = Vec::new();
    for (mut rx, n) in rxs {
        let mut choices = vec![Vec::new(); n];
        while let Ok(e) = rx.try_recv() {
            if let Event::Token {
                choice,
                token,
                logprobs,
                ..
            } = e
            {
                choices[choice].push((token, logprobs));
            }
        }
        assert!(choices.iter().all(|c| c.len() == max_tokens), "{s:?}");
        out.push(choices);
    }
    (out, metrics.num_preemptions_total.get())
}

fn tiny_file(dir: &Path, arch: TinyArch, layers: usize, seed: u64) -> std::path::PathBuf {
    let gpt_oss = arch == TinyArch::GptOss;
    let cfg = TinyConfig {
        arch,
        layers,
        tied: !gpt_oss,
        ffn: if gpt_oss { 32 } else { 96 },
        ..TinyConfig::default()
    };
    // (gpt-oss's experts are MXFP4 either way, as in gpt_oss.rs.)
    let model = TinyModel::random(cfg, seed, !gpt_oss);
    let path = dir.join(format!("{arch:?}.gguf"));
    std::fs::write(
        &path,
        common::with_tokenizer(&model.gguf_bytes(), cfg.vocab),
    )
    .unwrap();
    path
}

/// Prompts of 20 to 44 tokens (two and three blocks), pairs sharing their first 20; a
/// greedy request with two choices (forks), the others sampled.
fn asks(count: usize) -> Vec<Ask> {
    (0..count)
        .map(|i| {
            let shared = (0..20).map(|j| 2 + ((i / 2) * 13 + j * 7) as u32 % 97);
            let own = (0..4 + 8 * i).map(|j| 2 + (i * 5 + j * 11) as u32 % 97);
            Ask {
                prompt: shared.chain(own).collect(),
                n: if i == 1 { 2 } else { 1 },
                sampling: if i == 1 {
                    SamplingParams::default()
                } else {
                    SamplingParams {
                        temperature: 0.9,
                        seed: i as u64,
                        ..SamplingParams::default()
                    }
                },
            }
        })
        .collect()
}

fn same_tokens_with_a_window_pool(backend: Arc<dyn Backend>, count: usize, max_tokens: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Gemma 2 of one layer slides on every layer: its main pool holds no layer.
    let models = [
        (TinyArch::Gemma3, 6, 61),
        (TinyArch::GptOss, 3, 62),
        (TinyArch::Gemma2, 1, 66),
    ];
    for (arch, layers, seed) in models {
        let path = tiny_file(dir.path(), arch, layers, seed);
        let asks = asks(count);
        let one_pool = Setup {
            budget: 512,
            blocks: 64,
            window_blocks: None,
            prefix_cache: false,
        };
        // Each request alone in one pool: the reference.
        let alone: Vec<_> = asks
            .iter()
            .map(|a| {
                let one = std::slice::from_ref(a);
                run(&path, &backend, one, max_tokens, one_pool).0.remove(0)
            })
            .collect();
        for setup in [
            // Together, chunked by 7 rows, with prefix hits on the shared heads.
            Setup {
                budget: 7,
                blocks: 64,
                window_blocks: Some(32),
                prefix_cache: true,
            },
            // A window pool too small for every sequence's window: preemption.
            Setup {
                budget: 64,
                blocks: 64,
                window_blocks: Some(5),
                prefix_cache: false,
            },
        ] {
            let (together, preempted) = run(&path, &backend, &asks, max_tokens, setup);
            if setup.window_blocks == Some(5) {
                assert!(
                    preempted > 0,
                    "{arch:?}: the small window pool should preempt"
                );
            }
            for (i, a) in alone.iter().enumerate() {
                assert_eq!(a, &together[i], "{arch:?}, request {i}, {setup:?}");
            }
        }
    }
}

#[test]
fn on_the_cpu_a_window_pool_changes_no_token() {
    same_tokens_with_a_window_pool(Arc::new(CpuBackend::new()), 4, 40);
}

/// Fewer and shorter requests on lavapipe.
#[test]
fn on_the_gpu_a_window_pool_changes_no_token() {
    let gpu = WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default())
        .expect("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers)");
    same_tokens_with_a_window_pool(Arc::new(gpu), 3, 30);
}

/// `memory` for 8 sequences of the server's default chunks, window pool on.
fn budget(memory: u64) -> KvBudget {
    KvBudget {
        memory,
        tokens: None,
        dtype: KvDtype::F32,
        block_tokens: DEFAULT_BLOCK_TOKENS,
        max_sequences: 8,
        max_batch_tokens: 512,
        prefix_caching: true,
        window_pool: true,
    }
}

/// On a GPU the main pool's blocks of one layer stay within the adapter's largest binding
/// (lavapipe's 128 MiB: 32,768 blocks of the tiny Gemma's 4 KiB), where the memory would
/// have given it more; one pool of every layer in the same memory fits as before.
#[test]
fn on_the_gpu_the_main_pool_stays_within_a_binding() {
    let dir = tempfile::tempdir().unwrap();
    let gpu: Arc<dyn Backend> = Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default())
            .expect("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers)"),
    );
    let gemma = load(&tiny_file(dir.path(), TinyArch::Gemma3, 6, 65), &gpu);
    let budget = budget(1 << 30);
    let main = gemma
        .split_kv_pool_specs(DEFAULT_BLOCK_TOKENS, 1, 1, KvDtype::F32)
        .unwrap()
        .0;
    let bound = gpu.max_kv_blocks(&main);
    let pools = kv_pools(&gemma, &budget).unwrap();
    assert!(
        bound < (1 << 30) / main.bytes_per_block(),
        "the binding does not bind"
    );
    assert_eq!(pools.main.blocks, bound);
    assert!(pools.window.is_some());
    let one = kv_pools(
        &gemma,
        &KvBudget {
            window_pool: false,
            ..budget
        },
    )
    .unwrap();
    assert!(one.main.blocks <= bound);
}

/// The server's sizing: the window pool holds what the running sequences can need, the main
/// pool the rest of the budget (more blocks than one pool of every layer would have), and
/// `window_pool: false` or a model without sliding layers keeps one pool.
#[test]
fn the_kv_budget_splits_between_the_pools() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let gemma = load(&tiny_file(dir.path(), TinyArch::Gemma3, 6, 63), &backend);
    let llama = load(&tiny_file(dir.path(), TinyArch::Llama, 2, 64), &backend);
    let budget = budget(64 << 20);
    let single = |m: &Llama| {
        let all = m.kv_pool_spec(DEFAULT_BLOCK_TOKENS, 1, KvDtype::F32);
        (budget.memory / all.bytes_per_block() as u64) as usize
    };
    let split = kv_pools(&gemma, &budget).unwrap();
    let window = split.window.unwrap();
    assert_eq!((split.main.layers, window.layers), (1, 5));
    // A window of 4 positions: 8 · (1 + 2) + 32 blocks.
    assert_eq!(window.blocks, window_pool_blocks(4, &budget));
    assert_eq!(window.blocks, 56);
    assert!(split.main.blocks > 5 * single(&gemma), "{:?}", split.main);
    assert!(split.pool.bytes() as u64 <= budget.memory);
    assert!(split.blocks.window().is_some());
    for (model, window_pool) in [(&gemma, false), (&llama, true)] {
        let one = kv_pools(
            model,
            &KvBudget {
                window_pool,
                ..budget
            },
        )
        .unwrap();
        assert!(one.window.is_none() && one.blocks.window().is_none());
        assert_eq!(one.main.blocks, single(model));
    }
    // A budget of 100 blocks of every layer: the window pool would want 64 · 3 + 32, is
    // capped at 100, and the main pool keeps 100 too (a sequence it holds always fits
    // the window pool).
    let all = gemma.kv_pool_spec(DEFAULT_BLOCK_TOKENS, 100, KvDtype::F32);
    let small = kv_pools(
        &gemma,
        &KvBudget {
            memory: all.bytes() as u64,
            max_sequences: 64,
            ..budget
        },
    )
    .unwrap();
    assert_eq!(small.window.unwrap().blocks, 100);
    assert_eq!(small.main.blocks, 100);
    // Every layer sliding: a main pool of no layer, block ids for every sequence's context.
    let all_sliding = load(&tiny_file(dir.path(), TinyArch::Gemma2, 1, 67), &backend);
    let ids = kv_pools(&all_sliding, &budget).unwrap();
    let (main, window) = (ids.main, ids.window.unwrap());
    assert_eq!((main.layers, main.bytes(), window.layers), (0, 0, 1));
    let context = all_sliding.config().context_length;
    assert_eq!(main.blocks, 8 * context.div_ceil(16) + 32);
    assert_eq!(ids.pool.bytes(), window.bytes());
    // In tokens: the main pool holds them, the window pool what the sequences need.
    let tokens = kv_pools(
        &gemma,
        &KvBudget {
            tokens: Some(1000),
            ..budget
        },
    )
    .unwrap();
    assert_eq!(tokens.main.blocks, 1000usize.div_ceil(DEFAULT_BLOCK_TOKENS));
    assert_eq!(tokens.window.unwrap().blocks, 56);
}
