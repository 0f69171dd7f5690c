//! The naive float64 forward of a [`TinyModel`]: what lowbit's forward is checked against,
//! written from the architectures' definitions (Hugging Face's modelling code, llama.cpp's
//! graphs) rather than from lowbit's.

use super::tiny_granite::{
    GRANITE_ATTENTION_SCALE, GRANITE_EMBEDDING_SCALE, GRANITE_LOGIT_SCALE, GRANITE_RESIDUAL_SCALE,
};
use super::tiny_model::{
    TinyArch, TinyModel, GEMMA2_ATTN_SOFTCAP, GEMMA2_FINAL_SOFTCAP, GEMMA3_SLIDING_THETA,
    TINY_WINDOW,
};
use super::tiny_phi::{RopeRule, TINY_CONTEXT};

type Matrix = (usize, usize, Vec<f64>);

fn matvec(w: &Matrix, x: &[f64]) -> Vec<f64> {
    (0..w.0)
        .map(|r| (0..w.1).map(|k| w.2[r * w.1 + k] * x[k]).sum())
        .collect()
}

/// `cap · tanh(x / cap)`.
fn softcap(x: f64, cap: f64) -> f64 {
    cap * (x / cap).tanh()
}

/// GELU's tanh form (PyTorch's `gelu_pytorch_tanh`).
fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

impl TinyModel {
    pub(super) fn matrix(&self, name: &str) -> Matrix {
        let t = self.get(name);
        (t.rows, t.cols, t.values.iter().map(|&v| v as f64).collect())
    }

    fn optional(&self, name: &str) -> Option<Matrix> {
        self.tensors
            .iter()
            .any(|t| t.name == name)
            .then(|| self.matrix(name))
    }

    /// Logits at every position of `tokens`, by a naive float64 forward (Hugging Face
    /// conventions: half-split RoPE on unpermuted weights). Gemma: embeddings times `√hidden`,
    /// GeGLU, post-norms, soft caps and sliding windows as [`TinyArch`] describes them.
    pub fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        self.reference_logits_within(tokens, TINY_CONTEXT)
    }

    /// [`Self::reference_logits`] of a model served for sequences of up to `context`
    /// positions (which LongRoPE's factors depend on).
    pub fn reference_logits_within(&self, tokens: &[u32], context: usize) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let arch = c.arch;
        let (h, hd) = (c.hidden, c.head_dim());
        let norm = |x: &[f64], g: &Matrix| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let inv = 1.0 / (ms + c.eps).sqrt();
            x.iter().zip(&g.2).map(|(v, g)| v * inv * g).collect()
        };
        // Hugging Face's `rotate_half` over the first `rotated` dimensions (partial rotary),
        // each frequency divided by its LongRoPE factor, sine and cosine times the attention
        // factor.
        let rule = RopeRule::of(arch, hd, c.rope_theta, context);
        // OLMo 3's sliding layers rotate plainly (YaRN is for its global layers).
        let plain = RopeRule::of(TinyArch::Llama, hd, c.rope_theta, context);
        let rope = |x: &mut [f64], pos: usize, theta: f64, rule: &RopeRule| {
            let (rd, m) = (rule.rotated, rule.attention_factor);
            for head in x.chunks_mut(hd) {
                for i in 0..rd / 2 {
                    let freq = theta.powf(-2.0 * i as f64 / rd as f64) / rule.divisors[i];
                    let (s, co) = (pos as f64 * freq).sin_cos();
                    let (a, b) = (head[i], head[i + rd / 2]);
                    head[i] = m * (a * co - b * s);
                    head[i + rd / 2] = m * (a * s + b * co);
                }
            }
        };
        let emb = self.matrix("token_embd.weight");
        let granite = arch.is_granite();
        let embed_scale = if arch.is_gemma() {
            (h as f64).sqrt()
        } else if granite {
            GRANITE_EMBEDDING_SCALE
        } else {
            1.0
        };
        let score_scale = if granite {
            GRANITE_ATTENTION_SCALE
        } else {
            1.0 / (hd as f64).sqrt()
        };
        let residual_scale = if granite { GRANITE_RESIDUAL_SCALE } else { 1.0 };
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| {
                emb.2[t as usize * h..(t as usize + 1) * h]
                    .iter()
                    .map(|v| v * embed_scale)
                    .collect()
            })
            .collect();
        for l in 0..c.layers {
            let n = |p: &str| format!("blk.{l}.{p}.weight");
            let (wq, wk, wv, wo) = (
                self.matrix(&n("attn_q")),
                self.matrix(&n("attn_k")),
                self.matrix(&n("attn_v")),
                self.matrix(&n("attn_output")),
            );
            // OLMo has no norms before its sub-blocks.
            let (an, fnm) = (
                self.optional(&n("attn_norm")),
                self.optional(&n(arch.ffn_norm_part())),
            );
            // gpt-oss: one more softmax term per head, with no value.
            let sinks = self.optional(&n("attn_sinks"));
            let pre_norm = |x: &[f64], g: &Option<Matrix>| match g {
                Some(g) => norm(x, g),
                None => x.to_vec(),
            };
            let dense = (!arch.is_moe()).then(|| {
                (
                    self.matrix(&n("ffn_gate")),
                    self.matrix(&n("ffn_up")),
                    self.matrix(&n("ffn_down")),
                )
            });
            let b = |p: &str| self.optional(&format!("blk.{l}.{p}.bias"));
            let (bq, bk, bv) = (b("attn_q"), b("attn_k"), b("attn_v"));
            let (nq, nk) = (
                self.optional(&n("attn_q_norm")),
                self.optional(&n("attn_k_norm")),
            );
            let (post_attn, post_ffn) = if arch.post_norms() {
                (
                    self.optional(&n("post_attention_norm")),
                    self.optional(&n("post_ffw_norm")),
                )
            } else {
                (None, None)
            };
            let sliding = arch.is_sliding(l);
            let theta = if sliding && arch == TinyArch::Gemma3 {
                GEMMA3_SLIDING_THETA
            } else {
                c.rope_theta
            };
            let layer_rule = if sliding && arch == TinyArch::Olmo3 {
                &plain
            } else {
                &rule
            };
            let add_bias = |x: &mut Vec<f64>, bias: &Option<Matrix>| {
                if let Some(b) = bias {
                    x.iter_mut().zip(&b.2).for_each(|(v, b)| *v += b);
                }
            };
            // OLMo norms the whole projection, the others each head.
            let head_norm = |x: &mut Vec<f64>, g: &Option<Matrix>| match g {
                Some(g) if arch.qk_norm_whole() => *x = norm(x, g),
                Some(g) => *x = x.chunks(hd).flat_map(|head| norm(head, g)).collect(),
                None => {}
            };
            let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, x) in xs.iter().enumerate() {
                let hx = pre_norm(x, &an);
                let mut q = matvec(&wq, &hx);
                let mut k = matvec(&wk, &hx);
                let mut v = matvec(&wv, &hx);
                add_bias(&mut q, &bq);
                add_bias(&mut k, &bk);
                add_bias(&mut v, &bv);
                head_norm(&mut q, &nq);
                head_norm(&mut k, &nk);
                if !arch.is_nope(l) {
                    rope(&mut q, pos, theta, layer_rule);
                    rope(&mut k, pos, theta, layer_rule);
                }
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let first = if sliding {
                    (pos + 1).saturating_sub(TINY_WINDOW)
                } else {
                    0
                };
                let mut attn = vec![0.0; c.heads * hd];
                for head in 0..c.heads {
                    let kvh = head / (c.heads / c.kv_heads);
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (first..=pos)
                        .map(|j| {
                            let s = q
                                .iter()
                                .zip(&ks[j][kvh * hd..(kvh + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                * score_scale;
                            if arch == TinyArch::Gemma2 {
                                softcap(s, GEMMA2_ATTN_SOFTCAP)
                            } else {
                                s
                            }
                        })
                        .collect();
                    let sink = sinks.as_ref().map(|s| s.2[head]);
                    let max = scores
                        .iter()
                        .chain(&sink)
                        .cloned()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                    for (i, p) in e.iter().enumerate() {
                        let j = first + i;
                        for d in 0..hd {
                            attn[head * hd + d] += p / sum * vs[j][kvh * hd + d];
                        }
                    }
                }
                let mut o = matvec(&wo, &attn);
                add_bias(&mut o, &b("attn_output"));
                if let Some(g) = &post_attn {
                    o = norm(&o, g);
                }
                x.iter_mut()
                    .zip(&o)
                    .for_each(|(a, b)| *a += residual_scale * b);
                let hx = pre_norm(x, &fnm);
                let Some((wg, wu, wd)) = &dense else {
                    let d = self.reference_experts(l, &hx);
                    x.iter_mut()
                        .zip(&d)
                        .for_each(|(a, b)| *a += residual_scale * b);
                    continue;
                };
                let g = matvec(wg, &hx);
                let u = matvec(wu, &hx);
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(&g, u)| {
                        if arch.is_gemma() {
                            gelu_tanh(g) * u
                        } else {
                            g / (1.0 + (-g).exp()) * u
                        }
                    })
                    .collect();
                let mut d = matvec(wd, &act);
                if let Some(g) = &post_ffn {
                    d = norm(&d, g);
                }
                x.iter_mut()
                    .zip(&d)
                    .for_each(|(a, b)| *a += residual_scale * b);
            }
        }
        let on = self.matrix("output_norm.weight");
        let out = if c.tied {
            emb
        } else {
            self.matrix("output.weight")
        };
        xs.iter()
            .map(|x| {
                let mut logits = matvec(&out, &norm(x, &on));
                if granite {
                    logits.iter_mut().for_each(|v| *v /= GRANITE_LOGIT_SCALE);
                }
                if arch == TinyArch::Gemma2 {
                    logits
                        .into_iter()
                        .map(|v| softcap(v, GEMMA2_FINAL_SOFTCAP))
                        .collect()
                } else {
                    logits
                }
            })
            .collect()
    }
}
