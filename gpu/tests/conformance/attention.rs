//! The attention part of the conformance suite: the paged pool written and read through
//! scattered block tables, against a float64 reference, and the invariances (chunking,
//! batch, block copies) every backend must keep.

use super::*;
use lowbit_gpu::KvDtype;

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

/// One sequence's whole history: queries, keys and values for positions `0..ctx`.
struct History {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    blocks: Vec<u32>,
}

fn reference_attention_row(h: &History, pos: usize) -> Vec<f64> {
    reference_attention_row_in(h, pos, SHAPE)
}

/// The float64 reference of one row: scores scaled by `shape.scale`, soft-capped, over the
/// positions of its window (all of `0..=pos` without one), each head's sink (`sinks`, where
/// the shape has them) one more term of its softmax.
fn reference_attention_row_in(h: &History, pos: usize, shape: AttentionShape) -> Vec<f64> {
    let sinks = shape
        .sinks
        .map(|_| SINKS.map(f64::from).to_vec())
        .unwrap_or_default();
    let (hd, kv_dim, q_dim) = (shape.head_dim, shape.kv_dim(), shape.q_dim());
    let group = shape.n_heads / shape.n_kv_heads;
    let first = if shape.window == 0 {
        0
    } else {
        (pos + 1).saturating_sub(shape.window)
    };
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
        let sink = sinks.get(head).copied();
        let max = scores
            .iter()
            .chain(&sink)
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().chain(&sink).map(|s| (s - max).exp()).sum();
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

/// Histories for sequences of `ctxs` positions, with blocks handed out scattered, interleaved
/// between sequences and in reverse, and a pool with spare blocks.
fn histories(ctxs: &[usize], block_tokens: usize) -> (Vec<History>, KvPoolSpec) {
    histories_in(ctxs, block_tokens, KvDtype::F32)
}

/// Keys and values as a pool of `dtype` holds them (f16: rounded to nearest even).
fn stored(values: &[f32], dtype: KvDtype) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => values.to_vec(),
        KvDtype::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
    }
}

/// [`histories`] for a pool of `dtype`.
fn histories_in(ctxs: &[usize], block_tokens: usize, dtype: KvDtype) -> (Vec<History>, KvPoolSpec) {
    let mut r = rng(7);
    let total: usize = ctxs.iter().map(|c| c.div_ceil(block_tokens)).sum();
    let spec = KvPoolSpec {
        layers: 2,
        kv_dim: SHAPE.kv_dim(),
        head_dim: SHAPE.head_dim,
        block_tokens,
        blocks: total + 5,
        dtype,
    };
    let mut ids: Vec<u32> = (0..spec.blocks as u32).rev().collect();
    ids.retain(|b| b % 3 != 1 || *b > total as u32);
    ids.extend((0..spec.blocks as u32).filter(|b| b % 3 == 1 && *b <= total as u32));
    let mut next = ids.into_iter();
    let hs = ctxs
        .iter()
        .map(|&ctx| History {
            q: random(&mut r, ctx * SHAPE.q_dim()),
            k: random(&mut r, ctx * SHAPE.kv_dim()),
            v: random(&mut r, ctx * SHAPE.kv_dim()),
            blocks: (0..ctx.div_ceil(block_tokens))
                .map(|_| next.next().expect("enough blocks"))
                .collect(),
        })
        .collect();
    (hs, spec)
}

/// The rows of one attention call: sequence `i` contributes positions `steps[i]`.
struct StepBatch<'a> {
    q: lowbit_gpu::Tensor,
    k: lowbit_gpu::Tensor,
    v: lowbit_gpu::Tensor,
    spans: Vec<SeqSpan<'a>>,
    positions: Vec<u32>,
}

fn step_batch<'a>(
    be: &dyn Backend,
    hs: &'a [History],
    steps: &[(usize, std::ops::Range<usize>)],
) -> StepBatch<'a> {
    let (q_dim, kv_dim) = (SHAPE.q_dim(), SHAPE.kv_dim());
    let (mut q, mut k, mut v, mut spans) = (vec![], vec![], vec![], vec![]);
    let mut positions = Vec::new();
    for (i, r) in steps {
        let h = &hs[*i];
        spans.push(SeqSpan {
            row_start: q.len() / q_dim,
            len: r.len(),
            pos_start: r.start,
            blocks: &h.blocks,
        });
        positions.extend(r.clone().map(|p| p as u32));
        q.extend_from_slice(&h.q[r.start * q_dim..r.end * q_dim]);
        k.extend_from_slice(&h.k[r.start * kv_dim..r.end * kv_dim]);
        v.extend_from_slice(&h.v[r.start * kv_dim..r.end * kv_dim]);
    }
    let rows = q.len() / q_dim;
    StepBatch {
        q: upload(be, rows, q_dim, &q),
        k: upload(be, rows, kv_dim, &k),
        v: upload(be, rows, kv_dim, &v),
        spans,
        positions,
    }
}

/// One attention call of layer 1 (see [`step_batch`]).
fn attention_step(
    be: &dyn Backend,
    hs: &[History],
    steps: &[(usize, std::ops::Range<usize>)],
    pool: &mut lowbit_gpu::KvPool,
) -> Vec<f32> {
    attention_step_in(be, hs, steps, pool, SHAPE)
}

/// [`attention_step`] with `shape`'s scale, soft cap and window (its heads: [`SHAPE`]'s).
fn attention_step_in(
    be: &dyn Backend,
    hs: &[History],
    steps: &[(usize, std::ops::Range<usize>)],
    pool: &mut lowbit_gpu::KvPool,
    shape: AttentionShape,
) -> Vec<f32> {
    let b = step_batch(be, hs, steps);
    let out = be
        .attention(1, &b.q, &b.k, &b.v, &b.spans, pool, shape)
        .expect("attention");
    be.download(&out).expect("download")
}

/// One sink logit per head of [`SHAPE`]: below, among and far above the scores (8: the sink
/// takes most of the weight).
const SINKS: [f32; 6] = [-2.0, 0.0, 0.5, 1.5, -30.0, 8.0];

/// Gemma's variations: a sliding window (shorter than a sequence, longer than one GPU
/// attention chunk, one token), a soft cap and another scale; gpt-oss's attention sinks, over
/// a whole sequence (several GPU chunks, merged) and a window; against the float64 reference;
/// and a windowed row gives the same bits decoded alone as inside a prefill batch.
pub(crate) fn sliding_windows_and_soft_caps_match_float64(be: &dyn Backend, b: Bounds) {
    let variants = [
        (37, 0.0, SHAPE.scale, false),
        (300, 0.0, SHAPE.scale, false),
        (1, 0.0, SHAPE.scale, false),
        (0, 1.5, 0.5, false),
        (70, 2.0, 0.3, false),
        (0, 0.0, SHAPE.scale, true),
        (37, 0.0, SHAPE.scale, true),
    ];
    let sinks = upload(be, 1, SINKS.len(), &SINKS);
    for (window, softcap, scale, with_sinks) in variants {
        let shape = AttentionShape {
            window,
            softcap,
            scale,
            sinks: with_sinks.then_some(&sinks),
            ..SHAPE
        };
        let (hs, spec) = histories_in(&[600, 90, 1], 16, KvDtype::F32);
        let mut pool = be.new_kv_pool(spec).expect("pool");
        attention_step_in(be, &hs, &[(1, 0..80)], &mut pool, shape);
        let steps = [(0, 0..600), (1, 80..90), (2, 0..1)];
        let out = attention_step_in(be, &hs, &steps, &mut pool, shape);
        let mut want = Vec::new();
        for (i, r) in &steps {
            for pos in r.clone() {
                want.extend(reference_attention_row_in(&hs[*i], pos, shape));
            }
        }
        if with_sinks {
            // A sink per head or nothing: five for six heads is refused.
            let five = upload(be, 1, 5, &SINKS[..5]);
            let bad = AttentionShape {
                sinks: Some(&five),
                ..shape
            };
            let r = &hs[2];
            let (q, k, v) = (
                upload(be, 1, SHAPE.q_dim(), &r.q[..SHAPE.q_dim()]),
                upload(be, 1, SHAPE.kv_dim(), &r.k[..SHAPE.kv_dim()]),
                upload(be, 1, SHAPE.kv_dim(), &r.v[..SHAPE.kv_dim()]),
            );
            let span = SeqSpan {
                row_start: 0,
                len: 1,
                pos_start: 0,
                blocks: &r.blocks,
            };
            assert!(be
                .attention(1, &q, &k, &v, &[span], &mut pool, bad)
                .is_err());
        }
        let e = rel_err(&out, &want);
        assert!(
            e < b.attention,
            "window {window}, softcap {softcap}, sinks {with_sinks}: {e}"
        );
        // Position 599 of sequence 0 alone, after its first 599 positions are in the pool.
        let alone = attention_step_in(be, &hs, &[(0, 599..600)], &mut pool, shape);
        let q_dim = SHAPE.q_dim();
        assert_eq!(
            &out[599 * q_dim..600 * q_dim],
            &alone[..],
            "window {window}, softcap {softcap}: a row alone"
        );
    }
}

pub(crate) fn attention_over_scattered_blocks_matches_float64(be: &dyn Backend, b: Bounds) {
    for (dtype, bt) in [
        (KvDtype::F32, 8),
        (KvDtype::F32, 16),
        (KvDtype::F32, 32),
        (KvDtype::F16, 16),
    ] {
        // A long prefill from scratch (600 positions: three attention chunks on the GPU, the
        // last one partial), a decode row after 10 cached positions, a continued prefill
        // after 30, a single first token.
        let (hs, spec) = histories_in(&[600, 11, 50, 1], bt, dtype);
        let mut pool = be.new_kv_pool(spec).expect("pool");
        attention_step(be, &hs, &[(1, 0..10), (2, 0..30)], &mut pool);
        let steps = [(0, 0..600), (1, 10..11), (2, 30..50), (3, 0..1)];
        let out = attention_step(be, &hs, &steps, &mut pool);
        let mut want = Vec::new();
        for (i, r) in &steps {
            // The reference reads what the pool holds.
            let h = History {
                q: hs[*i].q.clone(),
                k: stored(&hs[*i].k, dtype),
                v: stored(&hs[*i].v, dtype),
                blocks: Vec::new(),
            };
            for pos in r.clone() {
                want.extend(reference_attention_row(&h, pos));
            }
        }
        let e = rel_err(&out, &want);
        assert!(
            e < b.attention,
            "{} pool, block tokens {bt}: {e}",
            dtype.name()
        );
    }
}

pub(crate) fn attention_does_not_depend_on_chunking_or_batch(be: &dyn Backend, _: Bounds) {
    for dtype in [KvDtype::F32, KvDtype::F16] {
        attention_does_not_depend_on_chunking_or_batch_in(be, dtype);
    }
}

fn attention_does_not_depend_on_chunking_or_batch_in(be: &dyn Backend, dtype: KvDtype) {
    let (hs, spec) = histories_in(&[70, 40], 16, dtype);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    let q_dim = SHAPE.q_dim();
    let whole = attention_step(be, &hs, &[(0, 0..70), (1, 0..40)], &mut pool);
    let mut pieces = Vec::new();
    pieces.extend(attention_step(be, &hs, &[(0, 0..3)], &mut pool));
    pieces.extend(attention_step(be, &hs, &[(0, 3..23)], &mut pool));
    for p in 23..70 {
        pieces.extend(attention_step(be, &hs, &[(0, p..p + 1)], &mut pool));
    }
    assert_eq!(&whole[..70 * q_dim], &pieces[..]);

    // Past one attention chunk (256 positions on the GPU): a 600-position prefill, the same
    // rows in two chunks of prefill, and its last row decoded beside a short sequence.
    let (hs, spec) = histories_in(&[600, 40], 16, dtype);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    let whole = attention_step(be, &hs, &[(0, 0..600)], &mut pool);
    let mut pieces = attention_step(be, &hs, &[(0, 0..300)], &mut pool);
    pieces.extend(attention_step(be, &hs, &[(0, 300..599)], &mut pool));
    let last = attention_step(be, &hs, &[(1, 0..40), (0, 599..600)], &mut pool);
    pieces.extend_from_slice(&last[40 * q_dim..]);
    assert_eq!(whole, pieces);
}

pub(crate) fn copied_blocks_attend_like_the_originals(be: &dyn Backend, _: Bounds) {
    for dtype in [KvDtype::F32, KvDtype::F16] {
        copied_blocks_attend_like_the_originals_in(be, dtype);
    }
}

fn copied_blocks_attend_like_the_originals_in(be: &dyn Backend, dtype: KvDtype) {
    let (mut hs, spec) = histories_in(&[20, 20], 16, dtype);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    attention_step(be, &hs, &[(0, 0..19)], &mut pool);
    let before = attention_step(be, &hs, &[(0, 19..20)], &mut pool);
    let spare: Vec<u32> = (0..spec.blocks as u32)
        .filter(|b| !hs[0].blocks.contains(b) && !hs[1].blocks.contains(b))
        .take(2)
        .collect();
    let pairs: Vec<(u32, u32)> = hs[0].blocks.iter().copied().zip(spare.clone()).collect();
    be.copy_blocks(&mut pool, &pairs).expect("copy_blocks");
    // Overwrite the originals with another sequence's keys and values: only the copies hold
    // sequence 0 now.
    hs[1].blocks = hs[0].blocks.clone();
    attention_step(be, &hs, &[(1, 0..20)], &mut pool);
    hs[0].blocks = spare;
    let after = attention_step(be, &hs, &[(0, 19..20)], &mut pool);
    assert_eq!(before, after);
    assert!(be
        .copy_blocks(&mut pool, &[(0, spec.blocks as u32)])
        .is_err());
}

pub(crate) fn bad_block_tables_are_errors(be: &dyn Backend, _: Bounds) {
    let (mut hs, spec) = histories(&[20], 16);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    let (q, k) = (
        upload(be, 20, SHAPE.q_dim(), &vec![0.0; 20 * SHAPE.q_dim()]),
        upload(be, 20, SHAPE.kv_dim(), &vec![0.0; 20 * SHAPE.kv_dim()]),
    );
    hs[0].blocks.truncate(1);
    let span = SeqSpan {
        row_start: 0,
        len: 20,
        pos_start: 0,
        blocks: &hs[0].blocks,
    };
    assert!(be
        .attention(0, &q, &k, &k, &[span], &mut pool, SHAPE)
        .is_err());
    let outside = [0u32, spec.blocks as u32];
    let span = SeqSpan {
        blocks: &outside,
        ..span
    };
    assert!(be
        .attention(0, &q, &k, &k, &[span], &mut pool, SHAPE)
        .is_err());
    assert!(
        be.attention(2, &q, &k, &k, &[], &mut pool, SHAPE).is_err(),
        "layer 2 of 2"
    );
}

/// One attention call of layer 1 as [`attention_step`], q and k rotated at each row's
/// position: by `rope_attention` (`fused`) or by `rope` and then `attention`.
fn rope_step(
    be: &dyn Backend,
    hs: &[History],
    steps: &[(usize, std::ops::Range<usize>)],
    pool: &mut lowbit_gpu::KvPool,
    rope: &Rope,
    fused: bool,
) -> Vec<f32> {
    let b = step_batch(be, hs, steps);
    let out = if fused {
        be.rope_attention(
            1,
            (&b.q, &b.k, &b.v),
            &b.positions,
            rope,
            &b.spans,
            pool,
            SHAPE,
        )
        .expect("rope_attention")
    } else {
        let q = be.rope(&b.q, &b.positions, rope).expect("rope");
        let k = be.rope(&b.k, &b.positions, rope).expect("rope");
        be.attention(1, &q, &k, &b.v, &b.spans, pool, SHAPE)
            .expect("attention")
    };
    be.download(&out).expect("download")
}

/// RoPE inside attention (the GPU rotates q and the new keys as its kernels read them) gives
/// the results of `rope` and then `attention`: both pairings, both pool types, a prefill past
/// one attention chunk, decode rows over the rotated keys the pool holds, a continued prefill.
pub(crate) fn rope_attention_equals_rope_then_attention(be: &dyn Backend, _: Bounds) {
    let hd = SHAPE.head_dim;
    let ropes = [RopeStyle::Interleaved, RopeStyle::HalfSplit]
        .into_iter()
        .flat_map(|style| {
            [
                rope_of(style, hd),
                partial_rope_of(style, hd, hd * 3 / 4, 1.2),
            ]
        });
    for rope in ropes {
        let style = rope.style;
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let (hs, spec) = histories_in(&[300, 20], 16, dtype);
            let run = |fused: bool| {
                let mut pool = be.new_kv_pool(spec).expect("pool");
                let mut out =
                    rope_step(be, &hs, &[(0, 0..290), (1, 0..7)], &mut pool, &rope, fused);
                for p in 290..300 {
                    out.extend(rope_step(
                        be,
                        &hs,
                        &[(1, 7 + p - 290..8 + p - 290), (0, p..p + 1)],
                        &mut pool,
                        &rope,
                        fused,
                    ));
                }
                out
            };
            assert_eq!(
                run(true),
                run(false),
                "{style:?}, {} pairs, {} pool",
                rope.rotated_pairs(),
                dtype.name()
            );
        }
    }
    let (hs, spec) = histories(&[4], 16);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    let rope = rope_of(RopeStyle::Interleaved, SHAPE.head_dim);
    let q = upload(be, 4, SHAPE.q_dim(), &hs[0].q[..4 * SHAPE.q_dim()]);
    let k = upload(be, 4, SHAPE.kv_dim(), &hs[0].k[..4 * SHAPE.kv_dim()]);
    let span = SeqSpan {
        row_start: 0,
        len: 4,
        pos_start: 0,
        blocks: &hs[0].blocks,
    };
    assert!(
        be.rope_attention(
            0,
            (&q, &k, &k),
            &[0, 1, 2],
            &rope,
            &[span],
            &mut pool,
            SHAPE
        )
        .is_err(),
        "positions for three rows of four"
    );
}

/// An f16 pool holds each value rounded to nearest even, on both backends: attention over
/// keys and values that are exactly halves (and one head of values at the rounding edges:
/// ties, subnormals, the largest half and past it) agrees between them to f32 rounding, and
/// both read the ties as the even neighbour.
#[test]
fn f16_pools_round_as_the_cpu_does() {
    let _turn = gpu_turn();
    let (cpu, gpu) = (cpu_backend(), wgpu_backend());
    let hd = 32;
    let spec = KvPoolSpec {
        layers: 1,
        kv_dim: hd,
        head_dim: hd,
        block_tokens: 16,
        blocks: 2,
        dtype: lowbit_gpu::KvDtype::F16,
    };
    let shape = AttentionShape::new(1, 1, hd);
    // One position: the output is exactly the stored values (softmax of one score is 1).
    let edges: Vec<f32> = vec![
        1.0 + 1.0 / 2048.0, // a tie between 1 and 1 + 2^-10: even, 1
        1.0 + 3.0 / 2048.0, // a tie: even, 1 + 2^-9
        1.0 + 1.0 / 4096.0, // below half an ulp: 1
        65504.0,            // the largest half
        65519.0,            // rounds down to it
        65520.0,            // rounds up, past it: infinity
        -65520.0,
        2f32.powi(-24),         // the smallest subnormal
        2f32.powi(-25),         // a tie with zero: 0
        2f32.powi(-25) * 1.5,   // rounds up to 2^-24
        3.0 * 2f32.powi(-25),   // a subnormal tie: even, 2^-23
        2f32.powi(-14) * 0.999, // just below the smallest normal
        2f32.powi(-14),         // the smallest normal
        -1.5e-7,
        1e-30,
        2e-31,
        0.1,
        -0.3,
        1234.5678,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e-5,
        -7.7e-6,
        0.5,
        0.25 + 1.0 / 8192.0,
        100.03,
        -2.0e4,
        6.0e-8,
        1.0,
        -1.0,
        42.0,
        0.333,
    ];
    assert_eq!(edges.len(), hd);
    let want: Vec<f32> = edges
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let run = |be: &dyn Backend| {
        let mut pool = be.new_kv_pool(spec).expect("an f16 pool");
        let q = upload(be, 1, hd, &vec![0.0; hd]);
        let k = upload(be, 1, hd, &vec![0.0; hd]);
        let v = upload(be, 1, hd, &edges);
        let span = SeqSpan {
            row_start: 0,
            len: 1,
            pos_start: 0,
            blocks: &[1],
        };
        let out = be
            .attention(0, &q, &k, &v, &[span], &mut pool, shape)
            .expect("attention");
        be.download(&out).expect("download")
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&run(cpu)), bits(&want), "cpu");
    assert_eq!(bits(&run(gpu)), bits(&want), "wgpu");
}

/// Decode steps whose positions advance (new RoPE rows, new row positions every step) bind
/// the same buffers step after step, so they find their bind groups cached instead of
/// creating a few per layer every token.
#[test]
fn decode_steps_at_advancing_positions_reuse_their_bind_groups() {
    let _turn = gpu_turn();
    let gpu = wgpu_backend();
    let be: &dyn Backend = gpu;
    let (hs, spec) = histories(&[40], 16);
    let mut pool = be.new_kv_pool(spec).expect("pool");
    let rope = rope_of(RopeStyle::HalfSplit, SHAPE.head_dim);
    rope_step(be, &hs, &[(0, 0..20)], &mut pool, &rope, true);
    let mut misses = 0;
    for p in 20..30 {
        rope_step(be, &hs, &[(0, p..p + 1)], &mut pool, &rope, true);
        let (_, now) = gpu.bind_group_counts().expect("counts");
        if p > 22 {
            assert_eq!(
                now, misses,
                "decode step at position {p} created bind groups"
            );
        }
        misses = now;
    }
}
