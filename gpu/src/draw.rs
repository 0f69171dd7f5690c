//! Sampling a logits row where it lives (on a GPU: [`crate::Backend::read_logits`] reads back
//! one token id instead of a vocabulary), for the sampler that needs the whole distribution:
//! temperature with top-p and min-p (OpenAI's parameters; no top-k filter). The host draws
//! `u` from the sequence's own random stream; the device returns the token at `u` of the
//! kept tokens' cumulative weights. Penalties and logit bias reach the device as per-token
//! changes ([`LogitAdjust`]) made before any choice. This file is the definition, and the
//! host's version of it.

use crate::backend::argmax;

/// Lanes of the walk: token `i` is on lane `i % DRAW_LANES`; the walk takes the lanes in
/// order and each lane's tokens in increasing index (head.wgsl `sample`: one thread per lane,
/// so every thread reads consecutive tokens of its warp's). Any fixed order of the tokens
/// gives the same distribution; this one keeps the device's reads coalesced.
pub const DRAW_LANES: usize = 256;

/// One row to sample: token `i` weighs `wᵢ = exp((lᵢ − max) · inv_temperature)` (`max` the
/// row's largest finite logit; 0 where the logit is not finite). Top-p keeps the tokens whose
/// logit is at least the nucleus floor: the largest logit `L` with `Σ_{lᵢ ≥ L} wᵢ ≥ top_p ·
/// Σ wᵢ` (the fewest most likely tokens reaching `top_p` of the mass, every token tied with
/// the last one kept too); min-p then drops weights below `min_weight` (the most likely token
/// weighs exactly 1). The token drawn is the one at `u · Σ kept` of the kept tokens'
/// cumulative weights in [`DRAW_LANES`]' order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowDraw {
    /// The logits row (an index among the step's logits rows).
    pub row: usize,
    /// Uniform in `[0, 1)`.
    pub u: f32,
    pub inv_temperature: f32,
    pub min_weight: f32,
    /// 1 keeps every token.
    pub top_p: f32,
}

impl RowDraw {
    /// A token's weight before the filters.
    fn raw_weight(&self, v: f32, max: f32) -> f32 {
        if v.is_finite() {
            ((v - max) * self.inv_temperature).exp()
        } else {
            0.0
        }
    }

    /// The nucleus floor of `values` (module docs); −∞ keeps every finite logit.
    fn nucleus_floor(&self, values: &[f32], max: f32) -> f32 {
        if self.top_p >= 1.0 {
            return f32::NEG_INFINITY;
        }
        let mut ranked: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        ranked.sort_unstable_by(|a, b| b.total_cmp(a));
        let total: f64 = ranked
            .iter()
            .map(|&v| f64::from(self.raw_weight(v, max)))
            .sum();
        let target = f64::from(self.top_p) * total;
        let mut acc = 0.0;
        for &v in &ranked {
            acc += f64::from(self.raw_weight(v, max));
            if acc >= target {
                return v;
            }
        }
        f32::NEG_INFINITY
    }
}

/// A change to one logit before the choice: the sampler's penalties and logit bias, made
/// where the logits live. `v → v·scale − subtract + add`, `scale` being `positive_scale` for
/// v > 0 and `negative_scale` otherwise (the repetition penalty r: 1/r and r; 1 for none);
/// each step is skipped where it changes nothing, so the float steps are the host's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitAdjust {
    /// The logits row (an index among the step's logits rows).
    pub row: usize,
    pub token: u32,
    pub positive_scale: f32,
    pub negative_scale: f32,
    pub subtract: f32,
    pub add: f32,
}

impl LogitAdjust {
    /// The adjusted logit.
    pub fn apply(&self, v: f32) -> f32 {
        let mut v = v;
        let scale = if v > 0.0 {
            self.positive_scale
        } else {
            self.negative_scale
        };
        if scale != 1.0 {
            v *= scale;
        }
        if self.subtract != 0.0 {
            v -= self.subtract;
        }
        if self.add != 0.0 {
            v += self.add;
        }
        v
    }
}

/// `rows` (rows of `cols` logits) with `adjust` applied; changes past a row's end are
/// ignored, as the sampler ignores them.
pub fn adjusted_rows(rows: &[f32], cols: usize, adjust: &[LogitAdjust]) -> Vec<f32> {
    let mut out = rows.to_vec();
    for a in adjust {
        if (a.token as usize) < cols {
            if let Some(v) = out.get_mut(a.row * cols + a.token as usize) {
                *v = a.apply(*v);
            }
        }
    }
    out
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
    let floor = draw.nucleus_floor(values, max);
    let weight = |v: f32| {
        let w = draw.raw_weight(v, max);
        // total_cmp: the device compares order keys, which put −0 below +0.
        if v.total_cmp(&floor).is_ge() && w >= draw.min_weight {
            f64::from(w)
        } else {
            0.0
        }
    };
    let order = || (0..DRAW_LANES).flat_map(|lane| (lane..values.len()).step_by(DRAW_LANES));
    let total: f64 = order().map(|i| weight(values[i])).sum();
    let mut r = f64::from(draw.u) * total;
    let mut last = None;
    for i in order() {
        let w = weight(values[i]);
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
            top_p: 1.0,
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
    fn top_p_keeps_the_fewest_likeliest_tokens_and_their_ties() {
        // Weights 1, 1, e⁻¹, e⁻¹, e⁻²: mass 2.87.
        let values = [0.0, -1.0, 0.0, -2.0, -1.0];
        let nucleus = |top_p: f32| {
            let d = RowDraw { top_p, ..draw(0.0) };
            (0..1000)
                .map(|j| {
                    draw_row(
                        &values,
                        &RowDraw {
                            u: j as f32 / 1000.0,
                            ..d
                        },
                    )
                })
                .collect::<std::collections::BTreeSet<u32>>()
        };
        // 0.5 of the mass: the first token reaches it; its tie at logit 0 comes too.
        assert_eq!(nucleus(0.5), [0, 2].into());
        // 0.75: past both zeros (0.70), so the logit −1 pair joins.
        assert_eq!(nucleus(0.75), [0, 1, 2, 4].into());
        assert_eq!(nucleus(1.0), [0, 1, 2, 3, 4].into());
    }

    #[test]
    fn rows_without_a_finite_logit_give_the_argmax() {
        let values = [f32::NEG_INFINITY, f32::NAN, f32::INFINITY];
        assert_eq!(draw_row(&values, &draw(0.5)), argmax(&values));
    }
}
