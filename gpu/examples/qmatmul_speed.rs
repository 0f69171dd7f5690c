//! Quantized matmul throughput probe:
//! `cargo run --release -p lowbit-gpu --example qmatmul_speed [FORMAT VARIANT M K N REPS]`
//! (no arguments: a standard sweep).
use lowbit_gpu::cpu::packed::PackedWeight;
use lowbit_gpu::cpu::qdot::{available_gemms, GemmOut, QuantizedActs};
use lowbit_gpu::cpu::qmatmul::packed_matmul_with;
use lowbit_gpu::quant::{quantize, Codebook, GroupSize, QuantFormat, QuantizeOptions};
use std::time::Instant;

fn probe(f: QuantFormat, variant: Option<&str>, m: usize, k: usize, n: usize, reps: usize) {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
        .collect();
    let q = quantize(&w, n, k, f, &QuantizeOptions::default()).expect("shapes fit");
    let q = PackedWeight::pack(&q).expect("an integer format");
    for (name, gemm) in available_gemms() {
        if variant.is_some_and(|v| v != name) {
            continue;
        }
        // The fastest call: on a shared machine the mean mostly measures the neighbours.
        let mut s = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(packed_matmul_with(&x, &q, gemm));
            s = s.min(t.elapsed().as_secs_f64());
        }
        // The kernel alone, on this thread: no activation quantization, task split or copy.
        let acts = QuantizedActs::quantize(&x, k);
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        let mut out = vec![0.0f32; m * q.row_groups() * 8];
        let mut kernel = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            gemm(
                &q,
                0..q.row_groups(),
                &rows,
                GemmOut::packed(&mut out, q.row_groups() * 8),
            );
            kernel = kernel.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&mut out);
        }
        let gops = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        println!(
            "{m}x{k}x{n} {f} {name}: {:.3} ms (fastest of {reps}), {:.1} GB/s of weights, {:.1} GOP/s; kernel alone on one thread {:.1} GOP/s",
            s * 1e3,
            q.resident_bytes() as f64 / s / 1e9,
            gops(s),
            gops(kernel)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 6 {
        let f = QuantFormat::parse(&args[0]).expect("format");
        let num = |i: usize| args[i].parse::<usize>().expect("number");
        probe(f, Some(&args[1]), num(2), num(3), num(4), num(5));
        return;
    }
    let formats = [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G32),
        QuantFormat::Lut4(Codebook::Fp4),
    ];
    for &(m, k, n) in &[
        (1usize, 576usize, 1536usize),
        (1, 576, 49152),
        (512, 576, 1536),
    ] {
        for f in formats {
            let reps = if m == 1 {
                (2000 * 576 / n.max(576)).max(3)
            } else {
                5
            };
            probe(f, None, m, k, n, reps);
        }
    }
}
