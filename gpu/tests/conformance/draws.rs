//! Draws of a token from a logits row's whole distribution (`RowDraw`; on the GPU head.wgsl's
//! `sample`, elsewhere the host's `draw_row`), against the distribution computed in float64;
//! choices made from logits changed by penalties and bias (`LogitAdjust`, head.wgsl's
//! `adjust`) against the host's changes.

use super::*;
use lowbit_gpu::{LogitAdjust, RowDraw};

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

/// Penalties and logit bias (`LogitAdjust`) change the logits every choice is made from —
/// argmax, top k, draws — as the host changes them, while whole rows come back as the model
/// gave them; a change past a row's end is ignored, one to a row the logits lack is an error.
pub(crate) fn choices_are_made_from_adjusted_logits(be: &dyn Backend, _: Bounds) {
    let mut r = rng(17);
    let (rows, cols) = (3, 4099);
    let values = random(&mut r, rows * cols);
    let x = upload(be, rows, cols, &values);
    let argmax_of = |row: usize| lowbit_gpu::argmax(&values[row * cols..(row + 1) * cols]);
    let change = |row: usize, token: u32| LogitAdjust {
        row,
        token,
        positive_scale: 1.0,
        negative_scale: 1.0,
        subtract: 0.0,
        add: 0.0,
    };
    let mut adjust = vec![
        // Row 0: a bias lifts token 7 to the top.
        LogitAdjust {
            add: 20.0,
            ..change(0, 7)
        },
        // Past the row's end: ignored.
        LogitAdjust {
            add: 50.0,
            ..change(0, cols as u32 + 3)
        },
        // Row 2: its argmax banned (−∞, as `min_tokens` bans the end of sequence), a
        // frequency/presence penalty on the runner-up: the third becomes the argmax.
        LogitAdjust {
            add: f32::NEG_INFINITY,
            ..change(2, argmax_of(2))
        },
        LogitAdjust {
            subtract: 5.0,
            ..change(2, lowbit_gpu::top_k(&values[2 * cols..], 2)[1].0)
        },
    ];
    // Row 1: a repetition penalty of 1.3 on 40 tokens, its argmax among them.
    for t in (0..40).map(|j| j * 97).chain([argmax_of(1)]) {
        adjust.push(LogitAdjust {
            positive_scale: 1.0 / 1.3,
            negative_scale: 1.3,
            ..change(1, t)
        });
    }
    adjust.dedup_by_key(|a| (a.row, a.token));
    let draws: Vec<RowDraw> = (0..rows)
        .map(|row| RowDraw {
            row,
            u: 0.5,
            inv_temperature: 1.0,
            min_weight: 0.0,
            top_p: 0.9,
        })
        .collect();
    let ask = LogitsRequest {
        full: &[1, 2],
        top: &[0, 1, 2],
        k: 10,
        draws: &draws,
        adjust: &adjust,
        ..LogitsRequest::default()
    };
    let got = be.read_logits(&x, &ask).expect("read_logits");
    let changed = lowbit_gpu::adjusted_rows(&values, cols, &adjust);
    let row = |v: &[f32], r: usize| v[r * cols..(r + 1) * cols].to_vec();
    let ids: Vec<u32> = (0..rows)
        .map(|r| lowbit_gpu::argmax(&row(&changed, r)))
        .collect();
    assert_eq!(got.ids, ids);
    assert_eq!(got.ids[0], 7);
    assert_eq!(got.ids[2], lowbit_gpu::top_k(&values[2 * cols..], 3)[2].0);
    for (r, top) in got.top.iter().enumerate() {
        let want = lowbit_gpu::top_k(&row(&changed, r), 10);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, want.iter().map(|t| t.0).collect::<Vec<_>>(), "row {r}");
        for (g, w) in top.iter().zip(&want) {
            assert!(
                (g.1 - w.1).abs() <= 1e-6 * w.1.abs(),
                "row {r}: {g:?} vs {w:?}"
            );
        }
    }
    let drawn: Vec<u32> = draws
        .iter()
        .map(|d| lowbit_gpu::draw_row(&row(&changed, d.row), d))
        .collect();
    assert_eq!(got.drawn, drawn);
    let whole: Vec<f32> = [1, 2].iter().flat_map(|&r| row(&values, r)).collect();
    assert_eq!(got.full, whole, "whole rows unchanged");
    let ask = LogitsRequest {
        adjust: &[change(3, 0)],
        ..LogitsRequest::default()
    };
    assert!(be.read_logits(&x, &ask).is_err());
}
