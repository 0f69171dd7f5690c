//! Quantized matmul throughput probe:
//! `cargo run --release -p lowbit-gpu --example qmatmul_speed`.
use lowbit_gpu::cpu::qdot::available_dots;
use lowbit_gpu::cpu::qmatmul::qmatmul_with;
use lowbit_gpu::quant::{quantize, GroupSize, QuantFormat, QuantizeOptions};
use std::time::Instant;

fn main() {
    let formats = [
        QuantFormat::Q8,
        QuantFormat::Q4(GroupSize::G32),
        QuantFormat::Q4M(GroupSize::G32),
    ];
    for &(m, k, n) in &[
        (1usize, 576usize, 1536usize),
        (1, 576, 49152),
        (512, 576, 1536),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
            .collect();
        for f in formats {
            let q = quantize(&w, n, k, f, &QuantizeOptions::default()).expect("shapes fit");
            for (name, dot) in available_dots().into_iter().take(2) {
                let reps = if m == 1 { 2000 * 576 / n.max(576) } else { 5 };
                let t = Instant::now();
                for _ in 0..reps.max(3) {
                    std::hint::black_box(qmatmul_with(&x, &q, dot));
                }
                let s = t.elapsed().as_secs_f64() / reps.max(3) as f64;
                println!(
                    "{m}x{k}x{n} {f} {name}: {:.3} ms, {:.1} GB/s of weights, {:.1} GOP/s",
                    s * 1e3,
                    q.resident_bytes() as f64 / s / 1e9,
                    2.0 * (m * k * n) as f64 / s / 1e9
                );
            }
        }
    }
}
