//! Attention against float64, batch and chunking invariance, block copies, bad tables, the
//! f16 pool.
use super::*;
use crate::kv::KvDtype;

const SHAPE: AttentionShape<'static> = AttentionShape {
    n_heads: 6,
    n_kv_heads: 2,
    head_dim: 32,
    // 1 / sqrt(32), as `AttentionShape::new` computes it (sqrt is not a const fn).
    scale: 0.176_776_7,
    softcap: 0.0,
    window: 0,
    sinks: None,
};
/// 64 + 16 columns: the AVX-512 weighted sum and its narrower tail.
const WIDE_SHAPE: AttentionShape<'static> = AttentionShape {
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 80,
    scale: 0.111_803_4,
    softcap: 0.0,
    window: 0,
    sinks: None,
};

/// Gemma's variations: a sliding window that starts inside blocks, a soft cap, another scale.
const WINDOWED: AttentionShape<'static> = AttentionShape {
    window: 21,
    softcap: 2.0,
    scale: 0.3,
    ..SHAPE
};

fn random(seed: &mut u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (*seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// One sequence's whole history: queries, keys and values for positions `0..ctx`.
struct History {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    blocks: Vec<u32>,
}

/// Naive float64 causal attention of the query at `pos` over positions `0..=pos` (its
/// window's, where the shape has one), scores scaled and soft-capped as the shape says.
fn reference_row(h: &History, pos: usize, shape: AttentionShape) -> Vec<f64> {
    let (hd, kv_dim, q_dim) = (shape.head_dim, shape.kv_dim(), shape.q_dim());
    let group = shape.n_heads / shape.n_kv_heads;
    let first = shape.first_seen(pos);
    let cap = f64::from(shape.softcap);
    let mut out = vec![0.0f64; q_dim];
    for head in 0..shape.n_heads {
        let kvh = head / group;
        let scores: Vec<f64> = (first..=pos)
            .map(|j| {
                let s = (0..hd)
                    .map(|d| {
                        f64::from(h.q[pos * q_dim + head * hd + d])
                            * f64::from(h.k[j * kv_dim + kvh * hd + d])
                    })
                    .sum::<f64>()
                    * f64::from(shape.scale);
                if cap > 0.0 {
                    cap * (s / cap).tanh()
                } else {
                    s
                }
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        for (i, s) in scores.iter().enumerate() {
            let j = first + i;
            let p = (s - max).exp() / total;
            for d in 0..hd {
                out[head * hd + d] += p * f64::from(h.v[j * kv_dim + kvh * hd + d]);
            }
        }
    }
    out
}

/// Runs one step: sequence `i` contributes positions `steps[i]` (a range of its history).
fn run_step(
    histories: &[History],
    steps: &[(usize, std::ops::Range<usize>)],
    kv: &mut HostKv,
    spec: &KvPoolSpec,
    shape: AttentionShape,
) -> Vec<f32> {
    let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
    let (mut q, mut k, mut v, mut spans) = (vec![], vec![], vec![], vec![]);
    for (i, r) in steps {
        let h = &histories[*i];
        spans.push(SeqSpan {
            row_start: q.len() / q_dim,
            len: r.len(),
            pos_start: r.start,
            blocks: &h.blocks,
        });
        q.extend_from_slice(&h.q[r.start * q_dim..r.end * q_dim]);
        k.extend_from_slice(&h.k[r.start * kv_dim..r.end * kv_dim]);
        v.extend_from_slice(&h.v[r.start * kv_dim..r.end * kv_dim]);
    }
    attention(1, &q, &k, &v, &spans, kv, spec, shape).unwrap()
}

fn setup(
    ctxs: &[usize],
    block_tokens: usize,
    shape: AttentionShape,
) -> (Vec<History>, HostKv, KvPoolSpec) {
    setup_pool(ctxs, block_tokens, shape, KvDtype::F32)
}

fn setup_pool(
    ctxs: &[usize],
    block_tokens: usize,
    shape: AttentionShape,
    dtype: KvDtype,
) -> (Vec<History>, HostKv, KvPoolSpec) {
    let mut seed = 7u32;
    let total: usize = ctxs.iter().map(|c| c.div_ceil(block_tokens)).sum();
    let spec = KvPoolSpec {
        layers: 2,
        kv_dim: shape.kv_dim(),
        head_dim: shape.head_dim,
        block_tokens,
        blocks: total + 5,
        dtype,
    };
    // Blocks handed out scattered and interleaved between sequences, in reverse.
    let mut ids: Vec<u32> = (0..spec.blocks as u32).rev().collect();
    ids.retain(|b| b % 3 != 1 || *b > total as u32);
    ids.extend((0..spec.blocks as u32).filter(|b| b % 3 == 1 && *b <= total as u32));
    let mut next = ids.into_iter();
    let histories = ctxs
        .iter()
        .map(|&ctx| History {
            q: random(&mut seed, ctx * shape.q_dim()),
            k: random(&mut seed, ctx * shape.kv_dim()),
            v: random(&mut seed, ctx * shape.kv_dim()),
            blocks: (0..ctx.div_ceil(block_tokens))
                .map(|_| next.next().unwrap())
                .collect(),
        })
        .collect();
    let kv = HostKv::zeroed(&spec);
    (histories, kv, spec)
}

/// [`attend_with`] on the best kernel, whatever the pool's value type.
#[allow(clippy::too_many_arguments)]
fn attend(
    layer: usize,
    q: &[f32],
    seqs: &[SeqSpan<'_>],
    kv: &HostKv,
    spec: &KvPoolSpec,
    shape: AttentionShape,
    heads_per_task: usize,
) -> Result<Vec<f32>> {
    with_host_kv!(kv, d => attend_with(best_kernel(), layer, q, seqs, d, spec, shape, heads_per_task))
}

/// Each fused kernel's output (name, rows) for one pool.
fn outputs_of_every_kernel<E: KvElem>(
    kv: &HostKvData<E>,
    (q, spans): (&[f32], &[SeqSpan<'_>]),
    spec: &KvPoolSpec,
    shape: AttentionShape,
    heads: usize,
) -> Vec<(&'static str, Vec<f32>)> {
    fused_kernels::<E>()
        .into_iter()
        .map(|(name, k)| {
            let out = attend_with(k, 1, q, spans, kv, spec, shape, heads);
            (name, out.unwrap())
        })
        .collect()
}

fn kernel_outputs(
    kv: &HostKv,
    batch: (&[f32], &[SeqSpan<'_>]),
    spec: &KvPoolSpec,
    shape: AttentionShape,
    heads: usize,
) -> Vec<(&'static str, Vec<f32>)> {
    with_host_kv!(kv, d => outputs_of_every_kernel(d, batch, spec, shape, heads))
}

/// The queries of `steps` (sequence, positions) as one ragged batch, with its spans.
fn step_queries<'a>(
    hs: &'a [History],
    steps: &[(usize, std::ops::Range<usize>)],
    shape: AttentionShape,
) -> (Vec<f32>, Vec<SeqSpan<'a>>) {
    let q_dim = shape.q_dim();
    let (mut q, mut spans) = (vec![], vec![]);
    for (i, r) in steps {
        spans.push(SeqSpan {
            row_start: q.len() / q_dim,
            len: r.len(),
            pos_start: r.start,
            blocks: &hs[*i].blocks,
        });
        q.extend_from_slice(&hs[*i].q[r.start * q_dim..r.end * q_dim]);
    }
    (q, spans)
}

#[test]
fn ragged_batch_over_scattered_blocks_matches_float64() {
    for (shape, bt) in [
        (SHAPE, 8),
        (SHAPE, 16),
        (SHAPE, 32),
        (WIDE_SHAPE, 16),
        (WINDOWED, 8),
        (WINDOWED, 16),
    ] {
        // A long prefill from scratch, a decode row after 10 cached positions, a continued
        // prefill after 30, a single first token.
        let (hs, mut kv, spec) = setup(&[150, 11, 50, 1], bt, shape);
        run_step(&hs, &[(1, 0..10), (2, 0..30)], &mut kv, &spec, shape);
        let steps = [(0, 0..150), (1, 10..11), (2, 30..50), (3, 0..1)];
        let out = run_step(&hs, &steps, &mut kv, &spec, shape);
        let q_dim = shape.q_dim();
        let (mut num, mut den, mut row) = (0.0f64, 0.0f64, 0);
        for (i, r) in &steps {
            for pos in r.clone() {
                let want = reference_row(&hs[*i], pos, shape);
                for (g, w) in out[row * q_dim..(row + 1) * q_dim].iter().zip(&want) {
                    num += (f64::from(*g) - w).powi(2);
                    den += w * w;
                }
                row += 1;
            }
        }
        let e = (num / den).sqrt();
        assert!(e < 1e-5, "{shape:?}, block tokens {bt}: relative error {e}");
    }
}

#[test]
fn a_rows_output_does_not_depend_on_chunking_or_batch() {
    for (shape, bt) in [(SHAPE, 16), (SHAPE, 8), (WIDE_SHAPE, 16), (WINDOWED, 16)] {
        let (hs, mut kv, spec) = setup(&[70, 40], bt, shape);
        let q_dim = shape.q_dim();
        let step = |kv: &mut HostKv, steps: &[(usize, std::ops::Range<usize>)]| {
            run_step(&hs, steps, kv, &spec, shape)
        };
        // Sequence 0 in one prefill, sequence 1 alongside it.
        let whole = step(&mut kv, &[(0, 0..70), (1, 0..40)]);
        // Sequence 0 again in chunks of 3, 20 and one row at a time, alone.
        let mut pieces = Vec::new();
        pieces.extend(step(&mut kv, &[(0, 0..3)]));
        pieces.extend(step(&mut kv, &[(0, 3..23)]));
        for p in 23..70 {
            pieces.extend(step(&mut kv, &[(0, p..p + 1)]));
        }
        assert_eq!(
            &whole[..70 * q_dim],
            &pieces[..],
            "{shape:?}, block tokens {bt}"
        );
    }
}

#[test]
fn a_task_per_head_and_a_task_per_kv_head_give_the_same_bits() {
    // Group sizes 3 and 2: decode tiles of three and two rows, prefill tiles of four.
    for (shape, bt) in [(SHAPE, 16), (SHAPE, 8), (WIDE_SHAPE, 16), (WINDOWED, 8)] {
        let (hs, mut kv, spec) = setup(&[70, 13, 40], bt, shape);
        run_step(&hs, &[(1, 0..12), (2, 0..33)], &mut kv, &spec, shape);
        // Writes the last rows' keys and values; then both splits read the same pool.
        let steps = [(0, 0..70), (1, 12..13), (2, 33..40)];
        let by_pool = run_step(&hs, &steps, &mut kv, &spec, shape);
        let (q, spans) = step_queries(&hs, &steps, shape);
        let group = shape.n_heads / shape.n_kv_heads;
        let per_head = attend(1, &q, &spans, &kv, &spec, shape, 1).unwrap();
        let per_group = attend(1, &q, &spans, &kv, &spec, shape, group).unwrap();
        assert_eq!(per_head, per_group, "{shape:?}, block tokens {bt}");
        assert_eq!(per_head, by_pool, "{shape:?}, block tokens {bt}");
    }
}

#[test]
fn copied_blocks_attend_like_the_originals() {
    let (mut hs, mut kv, spec) = setup(&[20], 16, SHAPE);
    run_step(&hs, &[(0, 0..19)], &mut kv, &spec, SHAPE);
    let before = run_step(&hs, &[(0, 19..20)], &mut kv, &spec, SHAPE);
    let spare = (0..spec.blocks as u32)
        .filter(|b| !hs[0].blocks.contains(b))
        .take(2)
        .collect::<Vec<_>>();
    let pairs: Vec<(u32, u32)> = hs[0].blocks.iter().copied().zip(spare.clone()).collect();
    copy_blocks(&mut kv, &spec, &pairs).unwrap();
    // Poison the originals in every layer: the copies alone must give the same output.
    let orig = hs[0].blocks.clone();
    let HostKv::F32(data) = &mut kv else {
        panic!("an f32 pool");
    };
    for b in &orig {
        for layer in 0..spec.layers {
            let at = head_offset(&spec, layer, *b, 0);
            let n = spec.kv_dim * spec.block_tokens;
            data.k[at..at + n].iter_mut().for_each(|x| *x = f32::NAN);
            data.v[at..at + n].iter_mut().for_each(|x| *x = f32::NAN);
        }
    }
    hs[0].blocks = spare;
    let after = run_step(&hs, &[(0, 19..20)], &mut kv, &spec, SHAPE);
    assert_eq!(before, after);
    assert!(copy_blocks(&mut kv, &spec, &[(0, spec.blocks as u32)]).is_err());
}

/// (Checked by the backend, `checks::attention`, before the kernel runs.)
#[test]
fn tables_too_short_or_outside_the_pool_are_errors() {
    use crate::backend::Backend;
    let (mut hs, _, spec) = setup(&[20], 16, SHAPE);
    hs[0].blocks.truncate(1);
    let be = crate::cpu::CpuBackend::new();
    let mut pool = be.new_kv_pool(spec).unwrap();
    let q = Tensor::from_host(20, SHAPE.q_dim(), vec![0.0; 20 * SHAPE.q_dim()]).unwrap();
    let k = Tensor::from_host(20, SHAPE.kv_dim(), vec![0.0; 20 * SHAPE.kv_dim()]).unwrap();
    let span = SeqSpan {
        row_start: 0,
        len: 20,
        pos_start: 0,
        blocks: &hs[0].blocks,
    };
    let attend =
        |pool: &mut crate::kv::KvPool, span| be.attention(0, &q, &k, &k, &[span], pool, SHAPE);
    assert!(attend(&mut pool, span).is_err());
    let bad = [0u32, spec.blocks as u32];
    let span = SeqSpan {
        blocks: &bad,
        ..span
    };
    assert!(attend(&mut pool, span).is_err());
    // Given back (`NO_BLOCK`) is an error where a row sees the block, not before its window.
    let given_back = [crate::kv::NO_BLOCK, 1];
    let span = SeqSpan {
        blocks: &given_back,
        ..span
    };
    assert!(attend(&mut pool, span).is_err());
    let windowed = AttentionShape { window: 3, ..SHAPE };
    let decode = SeqSpan {
        row_start: 0,
        len: 1,
        pos_start: 19,
        blocks: &given_back,
    };
    let q1 = Tensor::from_host(1, SHAPE.q_dim(), vec![0.0; SHAPE.q_dim()]).unwrap();
    let k1 = Tensor::from_host(1, SHAPE.kv_dim(), vec![0.0; SHAPE.kv_dim()]).unwrap();
    let out = be.attention(0, &q1, &k1, &k1, &[decode], &mut pool, windowed);
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn sum_matches_float64_on_ragged_lengths() {
    for n in [0, 1, 15, 16, 17, 64, 100] {
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f64 = a.iter().map(|x| f64::from(*x)).sum();
        assert!((f64::from(sum(&a)) - want).abs() < 1e-5, "n={n}");
    }
}

#[test]
fn every_kernel_gives_the_same_bits() {
    // Decode tiles of one to three rows (a task per head or per group), prefill tiles of four,
    // contexts that end inside a block, 8- and 16-token blocks, 64 + 16 columns.
    let cases = [(SHAPE, 16), (SHAPE, 8), (WIDE_SHAPE, 16), (WINDOWED, 16)];
    for ((shape, bt), dtype) in cases
        .into_iter()
        .flat_map(|c| [(c, KvDtype::F32), (c, KvDtype::F16)])
    {
        let (hs, mut kv, spec) = setup_pool(&[70, 13, 40, 33], bt, shape, dtype);
        run_step(
            &hs,
            &[(1, 0..12), (2, 0..33), (3, 0..32)],
            &mut kv,
            &spec,
            shape,
        );
        let steps = [(0, 0..70), (1, 12..13), (2, 33..40), (3, 32..33)];
        run_step(&hs, &steps, &mut kv, &spec, shape);
        let (q, spans) = step_queries(&hs, &steps, shape);
        let group = shape.n_heads / shape.n_kv_heads;
        for heads in [1, group] {
            let outs = kernel_outputs(&kv, (&q, &spans), &spec, shape, heads);
            for (name, out) in &outs[1..] {
                assert!(
                    out == &outs[0].1,
                    "{name} vs {}: {shape:?}, {dtype:?}, block tokens {bt}, {heads} heads per task",
                    outs[0].0
                );
            }
        }
    }
}

#[test]
fn an_f16_pool_attends_exactly_like_an_f32_pool_of_rounded_values() {
    // Widening f16 to f32 is exact, so storing f16 changes only the rounding on write: an
    // f32 pool given the rounded keys and values must give the same bits, on every kernel.
    let round = |x: &mut Vec<f32>| {
        x.iter_mut()
            .for_each(|x| *x = half::f16::from_f32(*x).to_f32())
    };
    for (shape, bt) in [(SHAPE, 16), (SHAPE, 8), (WIDE_SHAPE, 16)] {
        let (hs, mut half_kv, spec16) = setup_pool(&[70, 13, 40], bt, shape, KvDtype::F16);
        let (mut rounded, mut full_kv, spec32) = setup_pool(&[70, 13, 40], bt, shape, KvDtype::F32);
        for h in &mut rounded {
            round(&mut h.k);
            round(&mut h.v);
        }
        let steps = [(0, 0..70), (1, 0..13), (2, 0..40)];
        let a = run_step(&hs, &steps, &mut half_kv, &spec16, shape);
        let b = run_step(&rounded, &steps, &mut full_kv, &spec32, shape);
        assert!(a == b, "{shape:?}, block tokens {bt}");
        let (q, spans) = step_queries(&hs, &[(1, 12..13), (2, 39..40)], shape);
        let group = shape.n_heads / shape.n_kv_heads;
        let halves = kernel_outputs(&half_kv, (&q, &spans), &spec16, shape, group);
        let fulls = kernel_outputs(&full_kv, (&q, &spans), &spec32, shape, group);
        for ((name, x), (_, y)) in halves.iter().zip(&fulls) {
            assert!(x == y, "{name}: {shape:?}, block tokens {bt}");
        }
    }
}

#[test]
fn f16_pool_copies_and_bytes() {
    let (hs, mut kv, spec) = setup_pool(&[20], 16, SHAPE, KvDtype::F16);
    assert_eq!(
        spec.bytes_per_block() * 2,
        KvPoolSpec {
            dtype: KvDtype::F32,
            ..spec
        }
        .bytes_per_block()
    );
    run_step(&hs, &[(0, 0..19)], &mut kv, &spec, SHAPE);
    let before = run_step(&hs, &[(0, 19..20)], &mut kv, &spec, SHAPE);
    let spare: Vec<u32> = (0..spec.blocks as u32)
        .filter(|b| !hs[0].blocks.contains(b))
        .take(2)
        .collect();
    let pairs: Vec<(u32, u32)> = hs[0].blocks.iter().copied().zip(spare.clone()).collect();
    copy_blocks(&mut kv, &spec, &pairs).unwrap();
    let moved = [History {
        blocks: spare,
        q: hs[0].q.clone(),
        k: hs[0].k.clone(),
        v: hs[0].v.clone(),
    }];
    // Re-running the last position rewrites its own key and value (the same rounded bits).
    let after = run_step(&moved, &[(0, 19..20)], &mut kv, &spec, SHAPE);
    assert_eq!(before, after);
}
