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
/// (the row's draw if it has one, else its argmax) and of its `top` most likely tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogprobRow {
    /// The logits row (an index among the step's logits rows).
    pub row: usize,
    pub top: usize,
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
    let max = row
        .iter()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = row
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(exp_nonpositive(v - max)))
        .sum();
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

/// The token a readback chooses for logits row `row`: its draw (the first listed) if it has
/// one, else its argmax (`ids`, every row's).
pub fn chosen_token(row: usize, ids: &[u32], draws: &[RowDraw], drawn: &[u32]) -> u32 {
    draws
        .iter()
        .zip(drawn)
        .find(|(d, _)| d.row == row)
        .map_or(ids[row], |(_, &t)| t)
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

    #[test]
    fn the_chosen_token_is_the_rows_draw_else_its_argmax() {
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
        assert_eq!(chosen_token(0, &ids, &draws, &drawn), 30);
        assert_eq!(chosen_token(1, &ids, &draws, &drawn), 8);
        assert_eq!(chosen_token(2, &ids, &draws, &drawn), 20);
    }
}
