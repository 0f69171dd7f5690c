//! Draws of a token from a logits row's whole distribution (`RowDraw`; on the GPU head.wgsl's
//! `sample`, elsewhere the host's `draw_row`), against the distribution computed in float64.

use super::*;
use lowbit_gpu::RowDraw;

/// Each token's interval of `[0, 1)` in the draw's order (gpu/src/draw.rs), in float64.
fn intervals(values: &[f32], d: &RowDraw) -> Vec<(u32, f64, f64)> {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let raw = |v: f32| {
        if v.is_finite() {
            ((f64::from(v) - f64::from(max)) * f64::from(d.inv_temperature)).exp()
        } else {
            0.0
        }
    };
    // Top-p's floor: the logit at which the mass, most likely first, reaches top_p.
    let mut ranked: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    ranked.sort_unstable_by(|a, b| b.total_cmp(a));
    let all: f64 = ranked.iter().map(|&v| raw(v)).sum();
    let mut acc = 0.0;
    let floor = if d.top_p >= 1.0 {
        f32::NEG_INFINITY
    } else {
        *ranked
            .iter()
            .find(|&&v| {
                acc += raw(v);
                acc >= f64::from(d.top_p) * all
            })
            .unwrap_or(&f32::NEG_INFINITY)
    };
    let weight = |v: f32| {
        let w = raw(v);
        if v >= floor && w >= f64::from(d.min_weight) {
            w
        } else {
            0.0
        }
    };
    let lanes = lowbit_gpu::draw::DRAW_LANES;
    let order: Vec<usize> = (0..lanes)
        .flat_map(|lane| (lane..values.len()).step_by(lanes))
        .collect();
    let total: f64 = order.iter().map(|&i| weight(values[i])).sum();
    let mut at = 0.0;
    order
        .iter()
        .filter(|&&i| weight(values[i]) > 0.0)
        .map(|&i| {
            let lo = at;
            at += weight(values[i]) / total;
            (i as u32, lo, at)
        })
        .collect()
}

/// For draws at evenly spaced u, every token is drawn N·p ± 2 times (so the distribution is
/// the row's at its temperature, top-p and min-p), and each draw is the token whose interval
/// holds u in the draw's order, except within 1e-5 of an interval's edge (float32 sums).
/// Rows of several widths (one round of a lane and two), rows with NaN and infinities, a row
/// with no finite value (its argmax), temperatures, min-p, top-p with logits tied at the
/// nucleus's edge (all kept).
pub(crate) fn draws_follow_each_rows_distribution(be: &dyn Backend, _: Bounds) {
    let mut r = rng(16);
    for (cols, n) in [(300, 600), (1000, 1000), (70_000, 48)] {
        let rows = 4;
        let mut values: Vec<f32> = random(&mut r, rows * cols)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        values[7] = f32::NAN;
        values[9] = f32::INFINITY;
        values[cols + 1] = f32::NEG_INFINITY;
        values[cols + 2] = 12.0;
        // Five tokens tied far above every other: top-p 0.3 ends inside them, so all five
        // stay (walked in lane order: 299 is on lane 43).
        for t in [10, 11, 100, 200, 299] {
            values[3 * cols + t] = 30.0;
        }
        let x = upload(be, rows, cols, &values);
        // (1/temperature, min-p, top-p) per row.
        let settings = [
            (1.0, 0.0, 1.0),
            (1.0 / 0.7, 0.0, 0.9),
            (1.0, 0.05, 0.6),
            (1.0 / 1.3, 0.0, 0.3),
        ];
        let draws: Vec<RowDraw> = (0..rows)
            .flat_map(|row| {
                let (inv_temperature, min_weight, top_p) = settings[row];
                (0..n).map(move |j| RowDraw {
                    row,
                    u: (j as f32 + 0.5) / n as f32,
                    inv_temperature,
                    min_weight,
                    top_p,
                })
            })
            .collect();
        let ask = LogitsRequest {
            draws: &draws,
            ..LogitsRequest::default()
        };
        let got = be.read_logits(&x, &ask).expect("read_logits").drawn;
        assert_eq!(got.len(), draws.len());
        for row in 0..rows {
            let row_values = &values[row * cols..(row + 1) * cols];
            let spans = intervals(row_values, &draws[row * n]);
            let mut counts = std::collections::HashMap::new();
            for (d, &token) in draws[row * n..(row + 1) * n]
                .iter()
                .zip(&got[row * n..(row + 1) * n])
            {
                *counts.entry(token).or_insert(0usize) += 1;
                let u = f64::from(d.u);
                let (want, lo, hi) = *spans
                    .iter()
                    .find(|s| u < s.2)
                    .unwrap_or_else(|| spans.last().expect("a token with weight"));
                let near_edge = (u - lo).abs() < 1e-5 || (hi - u).abs() < 1e-5;
                assert!(
                    token == want || near_edge,
                    "cols {cols} row {row} u {u}: drew {token}, its interval holds {want}"
                );
            }
            if row == 3 {
                let kept: Vec<u32> = spans.iter().map(|s| s.0).collect();
                assert_eq!(
                    kept,
                    [10, 11, 299, 100, 200],
                    "cols {cols}: the tied nucleus"
                );
            }
            for &(token, lo, hi) in &spans {
                let expected = (hi - lo) * n as f64;
                let drawn = counts.get(&token).copied().unwrap_or(0) as f64;
                assert!(
                    (drawn - expected).abs() <= 2.0,
                    "cols {cols} row {row} token {token}: drawn {drawn}, expected {expected:.2}"
                );
            }
        }
    }
    // A row without a finite value gives its argmax, as the sampler does.
    let x = upload(be, 1, 3, &[f32::NAN, f32::NEG_INFINITY, f32::INFINITY]);
    let d = [RowDraw {
        row: 0,
        u: 0.3,
        inv_temperature: 1.0,
        min_weight: 0.0,
        top_p: 0.5,
    }];
    let ask = LogitsRequest {
        draws: &d,
        ..LogitsRequest::default()
    };
    let got = be.read_logits(&x, &ask).expect("read_logits");
    assert_eq!(got.drawn, got.ids, "no finite logit");
    // A draw from a row the logits do not have is an error.
    let ask = LogitsRequest {
        draws: &[RowDraw { row: 1, ..d[0] }],
        ..LogitsRequest::default()
    };
    assert!(be.read_logits(&x, &ask).is_err());
}
