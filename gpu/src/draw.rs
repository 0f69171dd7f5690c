//! Sampling a logits row where it lives (on a GPU: [`crate::Backend::read_logits`] reads back
//! one token id instead of a vocabulary), for the sampler that needs the whole distribution:
//! temperature alone, with min-p or not (OpenAI's defaults: no top-k, top-p 1). The host
//! draws `u` from the sequence's own random stream; the device returns the token at `u` of
//! the row's cumulative weights. This file is the definition, and the host's version of it.

use crate::backend::argmax;

/// Lanes of the walk: token `i` is on lane `i % DRAW_LANES`; the walk takes the lanes in
/// order and each lane's tokens in increasing index (head.wgsl `sample`: one thread per lane,
/// so every thread reads consecutive tokens of its warp's). Any fixed order of the tokens
/// gives the same distribution; this one keeps the device's reads coalesced.
pub const DRAW_LANES: usize = 256;

/// One row to sample: token `i` weighs `exp((lᵢ − max) · inv_temperature)` (`max` the row's
/// largest finite logit), 0 where the logit is not finite or the weight is below
/// `min_weight` (min-p: the most likely token weighs exactly 1); the token drawn is the one
/// at `u · Σ weights` of the cumulative weights in [`DRAW_LANES`]' order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowDraw {
    /// The logits row (an index among the step's logits rows).
    pub row: usize,
    /// Uniform in `[0, 1)`.
    pub u: f32,
    pub inv_temperature: f32,
    pub min_weight: f32,
}

impl RowDraw {
    fn weight(&self, v: f32, max: f32) -> f32 {
        let w = ((v - max) * self.inv_temperature).exp();
        if v.is_finite() && w >= self.min_weight {
            w
        } else {
            0.0
        }
    }
}

/// The token `draw` picks from `values` (its row's logits); a row without a finite logit
/// gives its [`argmax`], as the sampler does.
pub fn draw_row(values: &[f32], draw: &RowDraw) -> u32 {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return argmax(values);
    }
    let order = || (0..DRAW_LANES).flat_map(|lane| (lane..values.len()).step_by(DRAW_LANES));
    let total: f64 = order()
        .map(|i| f64::from(draw.weight(values[i], max)))
        .sum();
    let mut r = f64::from(draw.u) * total;
    let mut last = None;
    for i in order() {
        let w = f64::from(draw.weight(values[i], max));
        if w > 0.0 {
            if r < w {
                return i as u32;
            }
            r -= w;
            last = Some(i as u32);
        }
    }
    // Rounding carried the draw past the end: the last token with weight.
    last.unwrap_or_else(|| argmax(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(u: f32) -> RowDraw {
        RowDraw {
            row: 0,
            u,
            inv_temperature: 1.0,
            min_weight: 0.0,
        }
    }

    #[test]
    fn the_walk_takes_lanes_in_order_and_skips_what_weighs_nothing() {
        // Tokens 0 and 256 share lane 0, so the walk is 0, 256, 1, 2, …
        let mut values = vec![f32::NEG_INFINITY; 300];
        values[0] = 0.0;
        values[256] = 0.0;
        values[1] = 0.0;
        values[2] = f32::NAN;
        // Three tokens of weight 1: thirds of [0, 1).
        assert_eq!(draw_row(&values, &draw(0.0)), 0);
        assert_eq!(draw_row(&values, &draw(0.34)), 256);
        assert_eq!(draw_row(&values, &draw(0.99)), 1);
        let floor = RowDraw {
            min_weight: 0.5,
            ..draw(0.99)
        };
        values[256] = -1.0; // weight e⁻¹ < 0.5: dropped by min-p
        assert_eq!(draw_row(&values, &floor), 1);
        assert_eq!(draw_row(&values, &RowDraw { u: 0.4, ..floor }), 0);
    }

    #[test]
    fn rows_without_a_finite_logit_give_the_argmax() {
        let values = [f32::NEG_INFINITY, f32::NAN, f32::INFINITY];
        assert_eq!(draw_row(&values, &draw(0.5)), argmax(&values));
    }
}
