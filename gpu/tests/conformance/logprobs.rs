//! Log-probabilities a readback computes (`LogprobRow`; on the GPU head.wgsl's `log_sum` and
//! `top_k` over the logits as the model gave them), against `log softmax` in float64.

use super::*;
use lowbit_gpu::{LogitAdjust, LogprobRow, RowDraw};

/// `v − ln Σ exp` over the row's finite values, in float64 (−∞ for a row without any).
fn reference_logprob(row: &[f32], v: f32) -> f64 {
    let finite = || row.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v));
    let max = finite().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let log_sum = finite().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    f64::from(v) - log_sum
}

/// Every row's chosen token (its draw, else its argmax) and its top alternatives get
/// `log softmax` of the logits as given, penalties and bias notwithstanding, within
/// 2·10⁻⁵ + 10⁻⁶·|ref| (float32 sums over up to 70,000 values); the alternatives are the
/// host's top k of the unchanged row, by id. Rows with NaN and infinities, a row without a
/// finite value (−∞ throughout), ties, widths of one lane round and several; given tokens
/// (a prompt's next ones) instead of the chosen ones, one past the row's end (−∞); a row out
/// of range is an error.
pub(crate) fn logprobs_are_a_log_softmax_of_the_logits_as_given(be: &dyn Backend, _: Bounds) {
    let mut r = rng(23);
    for cols in [300, 3000, 70_000] {
        let rows = 6;
        let mut values: Vec<f32> = random(&mut r, rows * cols)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        values[cols + 3] = f32::NAN;
        values[cols + 4] = f32::INFINITY;
        values[cols + 5] = f32::NEG_INFINITY;
        values[4 * cols..5 * cols].fill(f32::NEG_INFINITY);
        // Row 5: three tokens tied at the top.
        for t in [17, 40, 41] {
            values[5 * cols + t] = 20.0;
        }
        let x = upload(be, rows, cols, &values);
        let row = |r: usize| &values[r * cols..(r + 1) * cols];
        // Rows 0 and 2 choose by their argmax after a bias that moves it; rows 1, 3 and 4 draw.
        let adjust: Vec<LogitAdjust> = [0, 2]
            .iter()
            .map(|&r| LogitAdjust {
                row: r,
                token: 5,
                positive_scale: 1.0,
                negative_scale: 1.0,
                subtract: 0.0,
                add: 100.0,
            })
            .collect();
        let draws: Vec<RowDraw> = [(1, 0.3), (3, 0.7), (4, 0.5)]
            .iter()
            .map(|&(row, u)| RowDraw {
                row,
                u,
                inv_temperature: 1.0,
                min_weight: 0.0,
                top_p: 1.0,
            })
            .collect();
        // Rows 6 and 7 report given tokens (a prompt's next ones): row 1's and row 2's
        // logits again, the second past the row's end.
        let given = [(6, 1, 2, 7), (7, 2, 1, cols as u32 + 5)];
        let mut logprobs: Vec<LogprobRow> = [(0, 5), (1, 0), (2, 1), (3, 20), (4, 3), (5, 4)]
            .iter()
            .map(|&(row, top)| LogprobRow::chosen(row, top))
            .collect();
        logprobs.extend(given.iter().map(|&(_, row, top, token)| LogprobRow {
            row,
            top,
            token: Some(token),
        }));
        let ask = LogitsRequest {
            draws: &draws,
            adjust: &adjust,
            logprobs: &logprobs,
            top: &[2],
            k: 3,
            ..LogitsRequest::default()
        };
        let got = be.read_logits(&x, &ask).expect("read_logits");
        assert_eq!(got.logprobs.len(), logprobs.len());
        assert_eq!(
            [got.ids[0], got.ids[2]],
            [5, 5],
            "the bias moved the argmax"
        );
        let close = |g: f32, want: f64, what: &str| {
            let ok = if want == f64::NEG_INFINITY {
                g == f32::NEG_INFINITY
            } else {
                (f64::from(g) - want).abs() <= 2e-5 + 1e-6 * want.abs()
            };
            assert!(ok, "cols {cols}, {what}: {g} vs {want}");
        };
        for (l, lp) in logprobs.iter().zip(&got.logprobs) {
            let chosen = l.token.unwrap_or_else(|| {
                draws
                    .iter()
                    .zip(&got.drawn)
                    .find(|(d, _)| d.row == l.row)
                    .map_or(got.ids[l.row], |(_, &t)| t)
            });
            assert_eq!(lp.token, chosen, "cols {cols}, row {}", l.row);
            let v = row(l.row)
                .get(chosen as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            close(
                lp.logprob,
                reference_logprob(row(l.row), v),
                &format!("row {} token {chosen}", l.row),
            );
            let want_top = lowbit_gpu::top_k(row(l.row), l.top);
            let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
            let want_ids: Vec<u32> = want_top.iter().map(|t| t.0).collect();
            assert_eq!(ids, want_ids, "cols {cols}, row {} alternatives", l.row);
            for (&(id, g), &(_, v)) in lp.top.iter().zip(&want_top) {
                close(
                    g,
                    reference_logprob(row(l.row), v),
                    &format!("row {} alternative {id}", l.row),
                );
            }
        }
        for &(at, _, _, token) in &given {
            assert_eq!(
                got.logprobs[at].token, token,
                "cols {cols}: the given token"
            );
        }
        assert_eq!(got.logprobs[7].logprob, f32::NEG_INFINITY, "past the end");
        // The biased token is chosen, at its unbiased (small) probability.
        assert!(got.logprobs[0].logprob < got.logprobs[0].top[0].1);
        // No finite value: −∞ throughout, no alternatives.
        assert_eq!(got.logprobs[4].logprob, f32::NEG_INFINITY);
        assert!(got.logprobs[4].top.is_empty());
        assert_eq!(
            got.logprobs[5].top.iter().map(|t| t.0).collect::<Vec<_>>()[..3],
            [17, 40, 41]
        );
        // The rest of the readback is what it is without logprobs.
        let without = LogitsRequest {
            logprobs: &[],
            ..ask
        };
        let plain = be.read_logits(&x, &without).expect("read_logits");
        assert_eq!((&plain.ids, &plain.top), (&got.ids, &got.top));
        assert_eq!(plain.drawn, got.drawn);
        assert!(plain.logprobs.is_empty());
    }
    let x = upload(be, 2, 40, &random(&mut r, 80));
    let only_tokens = [LogprobRow::chosen(1, 0), LogprobRow::chosen(0, 0)];
    let ask = LogitsRequest {
        logprobs: &only_tokens,
        ..LogitsRequest::default()
    };
    let got = be.read_logits(&x, &ask).expect("read_logits");
    let tokens: Vec<u32> = got.logprobs.iter().map(|l| l.token).collect();
    assert_eq!(tokens, [got.ids[1], got.ids[0]]);
    assert!(got.logprobs.iter().all(|l| l.top.is_empty()));
    let bad = [LogprobRow::chosen(2, 1)];
    let ask = LogitsRequest {
        logprobs: &bad,
        ..LogitsRequest::default()
    };
    assert!(be.read_logits(&x, &ask).is_err());
}
