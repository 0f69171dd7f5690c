//! Quick matmul throughput probe: `cargo run --release -p lowbit-gpu --example matmul_speed`.
use lowbit_gpu::cpu::matmul;
use std::time::Instant;

fn main() {
    for &(m, k, n) in &[
        (512usize, 576usize, 1536usize),
        (1, 576, 1536),
        (255, 576, 49152),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        for (name, f) in matmul::available_variants() {
            let reps = if m == 1 { 200 } else { 3 };
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(f(&x, k, &w, n));
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m}x{k}x{n} {name}: {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
}
