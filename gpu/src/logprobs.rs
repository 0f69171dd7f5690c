//! Log-probabilities of a logits row, as OpenAI's `logprobs` reports them: the chosen token's
//! `log softmax` and the most likely tokens' (its `top_logprobs`), from the logits as the model
//! gave them (before penalties, bias and temperature). Where logits live on a device,
//! [`crate::Backend::read_logits`] computes a row's log-sum-exp and its chosen token's logit
//! there and reads back those two numbers and the top few, not the vocabulary. This file is
//! the definition, and the host's version of it.

use crate::backend::top_k;
use crate::cpu::fastmath::exp_nonpositive;
use crate::draw::RowDraw;

/// A row whose log-probabilities a readback computes: of the token it chooses for the row
/// (the row's draw if it has one, else its argmax) or of a given one, and of its `top` most
/// likely tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogprobRow {
    /// The logits row (an index among the step's logits rows).
    pub row: usize,
    pub top: usize,
    /// The token whose log-probability to report instead of the chosen one: a prompt's next
    /// token (prompt log-probabilities, `echo` in OpenAI's completions).
    pub token: Option<u32>,
}

impl LogprobRow {
    /// The log-probabilities of the token a readback chooses for `row`.
    pub fn chosen(row: usize, top: usize) -> Self {
        Self {
            row,
            top,
            token: None,
        }
    }
}

/// A token's log-probability and the `top` most likely tokens'.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first, equal logits by lower id; finite logits only.
    pub top: Vec<(u32, f32)>,
}

/// `ln Σ exp(v)` over the row's finite values (−∞ if none), in float64 from the largest one
/// (the fast exponential's relative error, ≈ 2·10⁻⁷, is far below an f32 log-probability's
/// resolution).
pub fn log_sum_exp(row: &[f32]) -> f64 {
    // Eight lanes, so the compiler vectorizes both passes.
    let mut maxima = [f32::NEG_INFINITY; 8];
    for part in row.chunks(8) {
        for (m, &v) in maxima.iter_mut().zip(part) {
            *m = if v.is_finite() && v > *m { v } else { *m };
        }
    }
    let max = maxima.into_iter().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    // Float32 lanes over 256 values at a time (vectorized), those sums added in float64.
    let mut sum = 0.0f64;
    for block in row.chunks(256) {
        let mut lanes = [0.0f32; 8];
        for part in block.chunks(8) {
            for (l, &v) in lanes.iter_mut().zip(part) {
                let w = exp_nonpositive(v - max);
                *l += if v.is_finite() { w } else { 0.0 };
            }
        }
        sum += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
    }
    sum.ln() + f64::from(max)
}

/// The log-probabilities of `token` (−∞ past the row's end) and of the `top` most likely
/// tokens of `row`.
pub fn token_logprobs(row: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let logit = row
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    from_parts(log_sum_exp(row), token, logit, top_k(row, top))
}

/// [`TokenLogprobs`] from a row's [`log_sum_exp`], the chosen token's logit and the top
/// logits: each logit minus the log-sum (−∞ for every token of a row without a finite logit).
pub fn from_parts(log_sum: f64, token: u32, logit: f32, top: Vec<(u32, f32)>) -> TokenLogprobs {
    let lp = |v: f32| {
        if log_sum == f64::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            (f64::from(v) - log_sum) as f32
        }
    };
    TokenLogprobs {
        token,
        logprob: lp(logit),
        top: top.into_iter().map(|(i, v)| (i, lp(v))).collect(),
    }
}

/// The token whose log-probabilities `l` reports: its given token, else the one the readback
/// chooses for its row: the row's draw (the first listed) if it has one, else its argmax
/// (`ids`, every row's).
pub fn chosen_token(l: &LogprobRow, ids: &[u32], draws: &[RowDraw], drawn: &[u32]) -> u32 {
    l.token.unwrap_or_else(|| {
        draws
            .iter()
            .zip(drawn)
            .find(|(d, _)| d.row == l.row)
            .map_or(ids[l.row], |(_, &t)| t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_normalized_log_softmax_with_sorted_alternatives() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY, f32::NAN];
        let lp = token_logprobs(&logits, 0, 3);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6);
        // Finite logits only: two alternatives, most likely first.
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[0].1 - 0.75f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[1].0, 0);
        assert_eq!(token_logprobs(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert_eq!(token_logprobs(&logits, 9, 0).logprob, f32::NEG_INFINITY);
        // No finite logit: every log-probability is −∞ (not NaN).
        let none = token_logprobs(&[f32::NEG_INFINITY, f32::NAN], 1, 2);
        assert_eq!(none.logprob, f32::NEG_INFINITY);
        assert!(none.top.is_empty());
    }

    /// Over a vocabulary-sized row (float32 lanes per 256 values, their sums in float64),
    /// within 10⁻⁶ of the float64 log-sum-exp.
    #[test]
    fn log_sum_exp_of_a_long_row_is_float64_close() {
        let row: Vec<f32> = (0..70_001)
            .map(|i| ((i as f32 * 0.618).sin() * 9.0).floor() + (i % 5) as f32 * 0.1)
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want = row
            .iter()
            .map(|&v| (f64::from(v) - f64::from(max)).exp())
            .sum::<f64>()
            .ln()
            + f64::from(max);
        let got = log_sum_exp(&row);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn the_chosen_token_is_the_given_one_else_the_rows_draw_else_its_argmax() {
        let draw = |row| RowDraw {
            row,
            u: 0.5,
            inv_temperature: 1.0,
            min_weight: 0.0,
            top_p: 1.0,
        };
        let ids = [7, 8, 9];
        let draws = [draw(2), draw(0)];
        let drawn = [20, 30];
        let of = |row| LogprobRow::chosen(row, 0);
        assert_eq!(chosen_token(&of(0), &ids, &draws, &drawn), 30);
        assert_eq!(chosen_token(&of(1), &ids, &draws, &drawn), 8);
        assert_eq!(chosen_token(&of(2), &ids, &draws, &drawn), 20);
        for row in 0..3 {
            let given = LogprobRow {
                token: Some(3),
                ..of(row)
            };
            assert_eq!(chosen_token(&given, &ids, &draws, &drawn), 3);
        }
    }
}
