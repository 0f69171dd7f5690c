//! The products part of the conformance suite: every weight format against float64, a row's
//! result independent of its batch, the fused residual, weights loaded together (a stack)
//! against separate ones, weights split into parts against whole ones, the GPU's int8
//! products against the CPU's, and norms and SwiGLU that quantize their results in one pass
//! against the separate kernels.

use super::*;

pub(crate) fn reference_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c]))
                .sum();
        }
    }
    out
}

pub(crate) fn matmul_matches_float64_for_every_format_and_shape(be: &dyn Backend, b: Bounds) {
    let mut r = rng(1);
    for format in FORMATS {
        // K = 96: an odd number of 32-blocks (the tiled kernels stage blocks in pairs).
        for (n, k) in [(67, 576), (33, 256), (19, 96)] {
            if !format.fits(k) {
                continue;
            }
            let (w, exact) = weight(be, &mut r, format, n, k);
            for m in [1, 2, 5, 8, 9, 70] {
                let x = random(&mut r, m * k);
                let got = be
                    .download(&be.matmul(&upload(be, m, k, &x), &w).expect("matmul"))
                    .expect("download");
                let bound = if format.is_quantized() {
                    b.matmul_quantized
                } else {
                    b.matmul_float
                };
                let e = rel_err(&got, &reference_matmul(&x, &exact, m, k, n));
                assert!(e < bound, "{format} {m}x{k} · {n}x{k}: {e} ≥ {bound}");
            }
        }
    }
}

pub(crate) fn a_rows_product_does_not_depend_on_its_batch(be: &dyn Backend, _: Bounds) {
    let mut r = rng(2);
    for format in [
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G128),
        QuantFormat::Lut4(Codebook::Iq4nl),
        QuantFormat::Q8,
        QuantFormat::F16,
    ] {
        // K = 2176: 68 blocks, more than one round of the decode kernel (32 blocks each),
        // the last one partial.
        for k in [576, 2176] {
            if format.fits(k) {
                row_alone_and_in_batches(be, &mut r, format, k);
            }
        }
    }
}

fn row_alone_and_in_batches(be: &dyn Backend, r: &mut ChaCha8Rng, format: QuantFormat, k: usize) {
    let n = 45;
    let (w, _) = weight(be, r, format, n, k);
    let batch = random(r, 40 * k);
    let run = |rows: &[f32]| {
        let m = rows.len() / k;
        be.download(&be.matmul(&upload(be, m, k, rows), &w).expect("matmul"))
            .expect("download")
    };
    let alone = run(&batch[..k]);
    for m in [3, 8, 9, 16, 40] {
        let among = run(&batch[..m * k]);
        assert_eq!(
            alone,
            among[..n],
            "{format}: row 0 alone vs in a batch of {m}"
        );
    }
    let many = be
        .matmul_many(&upload(be, 1, k, &batch[..k]), &[&w, &w])
        .expect("matmul_many");
    for t in many {
        assert_eq!(
            be.download(&t).expect("download"),
            alone,
            "{format} matmul_many"
        );
    }
}

/// The residual connection fused into the product (the GPU adds it in the int8 epilogue)
/// gives exactly the product and then `add`, decode and tiled, for every kind.
pub(crate) fn matmul_add_equals_matmul_then_add(be: &dyn Backend, _: Bounds) {
    let mut r = rng(11);
    let (k, n) = (576, 67);
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G64),
        QuantFormat::F16,
    ] {
        let (w, _) = weight(be, &mut r, format, n, k);
        for m in [1, 3, 8, 9, 70] {
            let x = upload(be, m, k, &random(&mut r, m * k));
            let residual = upload(be, m, n, &random(&mut r, m * n));
            let fused = be.matmul_add(&x, &w, &residual).expect("matmul_add");
            let product = be.matmul(&x, &w).expect("matmul");
            let unfused = be.add(&product, &residual).expect("add");
            assert_eq!(
                be.download(&fused).expect("download"),
                be.download(&unfused).expect("download"),
                "{format} m={m}"
            );
        }
        let x = upload(be, 2, k, &random(&mut r, 2 * k));
        let wrong = upload(be, 2, n + 1, &random(&mut r, 2 * (n + 1)));
        assert!(
            be.matmul_add(&x, &w, &wrong).is_err(),
            "{format}: residual shape"
        );
    }
}

/// Random weights, quantized to `format`, one per row count.
pub(crate) fn host_weights(
    r: &mut ChaCha8Rng,
    format: QuantFormat,
    rows: &[usize],
    k: usize,
) -> Vec<QTensor> {
    let opts = QuantizeOptions {
        method: QuantMethod::Rtn,
        importance: None,
    };
    rows.iter()
        .map(|&n| quantize(&random(r, n * k), n, k, format, &opts).expect("quantize"))
        .collect()
}

pub(crate) fn products(be: &dyn Backend, x: &Tensor, ws: &[&Weight]) -> Vec<Vec<f32>> {
    be.matmul_many(x, ws)
        .expect("matmul_many")
        .iter()
        .map(|t| be.download(t).expect("download"))
        .collect()
}

/// Weights loaded together (a layer's Q/K/V, its gate/up: one product on the GPU) multiply
/// exactly as the same weights loaded one by one: the whole stack, any other selection or
/// order of it, each weight alone and with a residual, decode and tiled.
pub(crate) fn weights_loaded_together_multiply_as_separate_ones(be: &dyn Backend, _: Bounds) {
    let mut r = rng(12);
    let k = 576;
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G64),
        QuantFormat::F16,
        QuantFormat::F32,
    ] {
        for rows in [&[67usize, 21, 21][..], &[45, 45]] {
            let qs = host_weights(&mut r, format, rows, k);
            let apart: Vec<Weight> = qs
                .iter()
                .map(|q| be.load_weight(q.clone()).expect("load_weight"))
                .collect();
            let together = be.load_weights_together(qs).expect("load_weights_together");
            let shapes: Vec<(usize, usize)> =
                together.iter().map(|w| (w.rows(), w.cols())).collect();
            let want_shapes: Vec<(usize, usize)> = rows.iter().map(|&n| (n, k)).collect();
            assert_eq!(shapes, want_shapes, "{format}");
            let apart: Vec<&Weight> = apart.iter().collect();
            let together: Vec<&Weight> = together.iter().collect();
            for m in [1, 3, 8, 9, 70] {
                let what = format!("{format} {rows:?} m={m}");
                let x = upload(be, m, k, &random(&mut r, m * k));
                let want = products(be, &x, &apart);
                assert_eq!(products(be, &x, &together), want, "{what}: the whole stack");
                let reversed: Vec<&Weight> = together.iter().rev().copied().collect();
                let want_reversed: Vec<Vec<f32>> = want.iter().rev().cloned().collect();
                assert_eq!(
                    products(be, &x, &reversed),
                    want_reversed,
                    "{what}: reversed"
                );
                assert_eq!(
                    products(be, &x, &together[1..]),
                    want[1..],
                    "{what}: the last ones"
                );
                for (i, (w, alone)) in together.iter().zip(&apart).enumerate() {
                    let got = be
                        .download(&be.matmul(&x, w).expect("matmul"))
                        .expect("download");
                    assert_eq!(got, want[i], "{what}: weight {i} alone");
                    let residual = upload(be, m, w.rows(), &random(&mut r, m * w.rows()));
                    let with = |w| {
                        be.download(&be.matmul_add(&x, w, &residual).expect("matmul_add"))
                            .expect("download")
                    };
                    assert_eq!(with(w), with(alone), "{what}: weight {i} with a residual");
                }
            }
        }
    }
}

/// Weights larger than one binding are split into parts by rows; here parts of 4 KiB (a
/// few rows each) on weights of a few hundred rows, stacks whose weights start inside a part
/// among them: every product and gather equals the unsplit backend's, bit for bit.
#[test]
fn weights_split_into_parts_compute_as_whole_ones() {
    let _turn = gpu_turn();
    let whole = wgpu_backend();
    let split = open_gpu(WgpuOptions {
        weight_part_bytes: Some(4096),
        ..WgpuOptions::default()
    });
    let mut r = rng(13);
    let k = 576;
    for format in [
        QuantFormat::Q8,
        // Nine groups per row: parts must start on an even row (scales in f16 pairs).
        QuantFormat::Q4(GroupSize::G64),
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::F32,
    ] {
        let qs = host_weights(&mut r, format, &[67, 21, 21], k);
        let load = |be: &WgpuBackend| {
            let alone = be.load_weight(qs[0].clone()).expect("load_weight");
            let stack = be
                .load_weights_together(qs.clone())
                .expect("load_weights_together");
            (alone, stack)
        };
        let ((wa, ws), (sa, ss)) = (load(whole), load(&split));
        for m in [1, 5, 70] {
            let x = random(&mut r, m * k);
            let run = |be: &WgpuBackend, alone: &Weight, stack: &[Weight]| {
                let t = upload(be, m, k, &x);
                let mut out = products(be, &t, &stack.iter().collect::<Vec<_>>());
                out.push(
                    be.download(&be.matmul(&t, alone).expect("matmul"))
                        .expect("download"),
                );
                out.push(
                    be.download(&be.matmul(&t, &stack[2]).expect("matmul"))
                        .expect("download"),
                );
                out
            };
            assert_eq!(
                run(&split, &sa, &ss),
                run(whole, &wa, &ws),
                "{format} m={m}"
            );
        }
        let ids = [66u32, 0, 13, 14, 40];
        let gather = |be: &WgpuBackend, w: &Weight| {
            be.download(&be.embed(w, &ids).expect("embed"))
                .expect("download")
        };
        assert_eq!(gather(&split, &sa), gather(whole, &wa), "{format} embed");
        assert!(
            split.embed(&ss[1], &[0]).is_err(),
            "an embedding from a stack"
        );
    }
}

/// Int8 activations on the GPU are the CPU's dynamic quantization: the same integers, the
/// same float steps, so the two backends agree far more closely than either does with the
/// float64 product (only the division in the scale may round differently).
#[test]
fn int8_products_agree_with_the_cpu_backend() {
    let _turn = gpu_turn();
    let (cpu, gpu) = (cpu_backend(), wgpu_backend());
    let mut r = rng(8);
    for format in [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4(GroupSize::G64),
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G128),
        QuantFormat::Lut4(Codebook::Fp4),
        QuantFormat::Lut4(Codebook::Iq4nl),
    ] {
        for (n, k) in [(70, 768), (100, 1536), (4099, 576), (37, 224)] {
            if !format.fits(k) {
                continue;
            }
            let values = random(&mut r, n * k);
            let opts = QuantizeOptions {
                method: QuantMethod::Rtn,
                importance: None,
            };
            let q = quantize(&values, n, k, format, &opts).expect("quantize");
            let (wc, wg) = (
                cpu.load_weight(q.clone()).expect("load"),
                gpu.load_weight(q).expect("load"),
            );
            for m in [1, 4, 8, 9, 65] {
                let x = random(&mut r, m * k);
                let on = |be: &dyn Backend, w| {
                    be.download(&be.matmul(&upload(be, m, k, &x), w).expect("matmul"))
                        .expect("download")
                };
                let (c, g) = (on(cpu, &wc), on(gpu, &wg));
                let want: Vec<f64> = c.iter().map(|&v| f64::from(v)).collect();
                let e = rel_err(&g, &want);
                assert!(e < 1e-6, "{format} {n}x{k} m={m}: GPU vs CPU {e}");
            }
        }
    }
}

/// With int8 activations, RMSNorm and SwiGLU quantize their results in the same pass
/// (quantize.wgsl's `rms_norm`, `silu_mul` and `gelu_mul`). On both feature paths their f32 results, and
/// the products that read them (decode and tiled, plain and with the residual), equal the
/// plain kernels' followed by a separate quantize, bit for bit, and each saves a dispatch.
#[test]
fn norm_and_glus_quantizing_in_one_pass_equal_the_separate_kernels() {
    let _turn = gpu_turn();
    let mut r = rng(14);
    for portable in [false, true] {
        let open = |fuse_quantize| {
            open_gpu(WgpuOptions {
                portable,
                fuse_quantize,
                ..WgpuOptions::default()
            })
        };
        let (fused, separate) = (open(true), open(false));
        for format in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G128),
        ] {
            for (m, k, n) in [(1, 576, 70), (5, 256, 33), (13, 1024, 40), (1, 4096, 8)] {
                if !format.fits(k) {
                    continue;
                }
                let q = host_weights(&mut r, format, &[n], k).remove(0);
                let (x, g) = (random(&mut r, m * k), random(&mut r, k));
                let (gate, up) = (random(&mut r, m * k), random(&mut r, m * k));
                let run = |be: &WgpuBackend| {
                    let w = be.load_weight(q.clone()).expect("load_weight");
                    let t = |rows, v: &[f32]| upload(be, rows, k, v);
                    be.take_host_times().expect("reset the counts");
                    let normed = be.rms_norm(&t(m, &x), &t(1, &g), 1e-5).expect("rms_norm");
                    let y = be.matmul(&normed, &w).expect("matmul");
                    let h = be.silu_mul(&t(m, &gate), &t(m, &up)).expect("silu_mul");
                    let z = be.matmul_add(&h, &w, &y).expect("matmul_add");
                    let h2 = be.gelu_mul(&t(m, &gate), &t(m, &up)).expect("gelu_mul");
                    let z2 = be.matmul_add(&h2, &w, &y).expect("matmul_add");
                    let values: Vec<Vec<f32>> = [&normed, &y, &h, &z, &h2, &z2]
                        .into_iter()
                        .map(|t| be.download(t).expect("download"))
                        .collect();
                    let dispatches = be.take_host_times().expect("counts").dispatches;
                    (values, dispatches)
                };
                let ((got, fewer), (want, more)) = (run(&fused), run(&separate));
                let what = format!("{format} m={m} k={k} portable={portable}");
                let names = [
                    "rms_norm",
                    "matmul",
                    "silu_mul",
                    "matmul_add",
                    "gelu_mul",
                    "matmul_add of gelu_mul",
                ];
                for (i, name) in names.iter().enumerate() {
                    let differ = got[i]
                        .iter()
                        .zip(&want[i])
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    assert!(
                        differ == 0 && got[i].len() == want[i].len(),
                        "{name}, {what}: {differ} of {} values differ",
                        want[i].len()
                    );
                }
                assert_eq!(fewer + 3, more, "dispatches, {what}");
            }
        }
    }
}

/// The weight rows a decode workgroup computes (`WgpuOptions::decode_rows`) spread the work
/// differently, not the arithmetic: 2, 4 and 16 give the default's bits for byte, nibble
/// and float formats, 1 to 8 activation rows, int8 and f32 activations, plain products and
/// products adding the residual, row counts that are multiples of none of them.
#[test]
fn decode_rows_per_workgroup_leave_every_bit() {
    let _turn = gpu_turn();
    let mut r = rng(21);
    for activations in [Activations::Int8, Activations::F32] {
        let open = |decode_rows| {
            open_gpu(WgpuOptions {
                activations,
                decode_rows,
                ..WgpuOptions::default()
            })
        };
        let backends = [open(8), open(2), open(4), open(16)];
        for format in [
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G32),
            QuantFormat::Q4M(GroupSize::G128),
            QuantFormat::F16,
        ] {
            let (n, k) = (37, 1024);
            let q = host_weights(&mut r, format, &[n], k).remove(0);
            for m in [1, 3, 5, 8] {
                let (x, residual) = (random(&mut r, m * k), random(&mut r, m * n));
                let run = |be: &WgpuBackend| {
                    let w = be.load_weight(q.clone()).expect("load_weight");
                    let y = be.matmul(&upload(be, m, k, &x), &w).expect("matmul");
                    let z = be
                        .matmul_add(&upload(be, m, k, &x), &w, &upload(be, m, n, &residual))
                        .expect("matmul_add");
                    let bits = |t| {
                        be.download(t)
                            .expect("download")
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<u32>>()
                    };
                    (bits(&y), bits(&z))
                };
                let want = run(&backends[0]);
                for (be, rows) in backends[1..].iter().zip([2, 4, 16]) {
                    assert_eq!(
                        run(be),
                        want,
                        "{format} m={m} {activations:?}, {rows} rows per workgroup"
                    );
                }
            }
        }
    }
    assert!(WgpuBackend::new(
        AdapterChoice::Any,
        WgpuOptions {
            decode_rows: 3,
            ..WgpuOptions::default()
        }
    )
    .is_err());
}
