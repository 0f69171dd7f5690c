//! The Llama-family transformer: token embedding, `n_layers` pre-norm blocks of grouped-query
//! attention with RoPE and a SwiGLU MLP, a final RMSNorm and the output head. Qwen adds Q/K/V
//! biases (Qwen2) or per-head Q/K norms (Qwen3); Gemma a GeGLU MLP, scaled embeddings, norms
//! after each sub-block (Gemma 2/3), soft caps (Gemma 2) and sliding-window layers with their
//! own RoPE base (Gemma 3) — each a flag of [`LlamaConfig`], one forward for all.
//!
//! Quirk: llama.cpp's GGUF conversion permutes the rows of `attn_q`/`attn_k` so that RoPE
//! rotates adjacent pairs; Hugging Face weights rotate the two halves of each head. The
//! config's `rope_style` records which one the loaded weights expect.
//!
//! The forward takes a ragged batch: several sequences' new tokens stacked in one matrix, each
//! with its own start position and block table in the backend's paged KV pool, so that
//! decoding many sequences reads every weight once per step.

use super::calibrate::Calibration;
use super::config::{Activation, LlamaConfig, SWIGLU_OAI_LIMIT};
use super::error::{ModelError, Result};
use super::ffn::{load_mlp, together, Ffn, LoadVector, Mlp};
use super::moe::MoeFfn;
use super::quant_policy::{QuantPolicy, TensorPlan};
use super::source::ModelSource;
pub use super::step_io::{BatchSeq, LinearInput, Logits, MixedReadback, MixedRows, Observer};
pub use super::tensor_list::{expected_tensors, TensorRole};
use lowbit_gpu::QTensor;
use lowbit_gpu::{Backend, KvDtype, KvPool, KvPoolSpec, Rope, SeqSpan, Tensor, Weight};
use std::borrow::Cow;
use std::sync::Arc;

mod kv_pools;

/// One transformer block.
#[derive(Debug)]
struct Block {
    /// `None` where the block norms only after its sub-blocks (OLMo 2/3).
    attn_norm: Option<Tensor>,
    q: Weight,
    k: Weight,
    v: Weight,
    /// Q, K and V biases (Qwen2).
    qkv_bias: Option<[Tensor; 3]>,
    /// RMSNorm weights of the queries and the keys: per head (Qwen3), or over each row's
    /// whole projection where the config says `qk_norm_whole` (OLMo 2/3).
    qk_norm: Option<[Tensor; 2]>,
    o: Weight,
    /// The output projection's bias (gpt-oss).
    o_bias: Option<Tensor>,
    /// One sink logit per query head (gpt-oss).
    sinks: Option<Tensor>,
    ffn_norm: Option<Tensor>,
    ffn: Ffn,
    /// RMSNorm weights of the attention and MLP outputs before their residual adds (Gemma 2/3).
    post_norms: Option<[Tensor; 2]>,
}

/// What a step reads back of its logits rows.
#[derive(Debug, Clone)]
enum Readback {
    Logits,
    Argmax,
    /// Every row's argmax, and what [`MixedReadback`] lists.
    Mixed(MixedReadback),
}

enum StepOutput {
    Logits(Logits),
    Argmax(Vec<u32>),
    Mixed(MixedRows),
}

/// A loaded Llama-family model bound to a backend.
pub struct Llama {
    config: LlamaConfig,
    backend: Arc<dyn Backend>,
    embed: Weight,
    /// `None` when the output head is the (tied) embedding.
    output: Option<Weight>,
    output_norm: Tensor,
    blocks: Vec<Block>,
    rope: Rope,
    /// The RoPE of sliding-window layers where it is not `rope` (Gemma 3).
    sliding_rope: Option<Rope>,
    /// The format each weight matrix got.
    plans: Vec<TensorPlan>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Llama {
    /// Loads every tensor through `backend`, one at a time, checking each one's shape and
    /// giving each weight matrix the format `policy` asks for.
    pub fn load(
        source: &ModelSource,
        backend: Arc<dyn Backend>,
        policy: &QuantPolicy,
    ) -> Result<Self> {
        Self::load_calibrated(source, backend, policy, None)
    }

    /// As [`Llama::load`], quantizing with activation statistics (GPTQ) where given.
    pub fn load_calibrated(
        source: &ModelSource,
        backend: Arc<dyn Backend>,
        policy: &QuantPolicy,
        calibration: Option<&Calibration>,
    ) -> Result<Self> {
        let c = source.config()?;
        let path = source.path().display().to_string();
        let separate_output = !c.tied_embeddings || source.has_tensor("output.weight");
        Self::assemble(
            c,
            backend,
            separate_output,
            |name, rows, cols| {
                let (r, k) = source.tensor_shape(name)?;
                if (r, k) != (rows, cols) {
                    return Err(ModelError::tensor(
                        &path,
                        &source.file_tensor_name(name),
                        format!("shape {r}x{k}, expected {rows}x{cols}"),
                    ));
                }
                source.quantized_tensor(name, policy, calibration.and_then(|c| c.hessian(name)))
            },
            |name, len| {
                let values = source.vector(name)?;
                if values.len() != len {
                    return Err(ModelError::tensor(
                        &path,
                        &source.file_tensor_name(name),
                        format!("{} values, expected {len}", values.len()),
                    ));
                }
                // A NaN or infinite norm weight, bias or sink would poison every logit (and
                // the backends would not agree on how).
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(ModelError::tensor(
                        &path,
                        &source.file_tensor_name(name),
                        format!("value {i} is {}", values[i]),
                    ));
                }
                Ok(values)
            },
        )
    }

    /// Builds the model from `matrix(name, rows, cols)` (a weight in its format, and how it
    /// got there) and `vector(name, len)` (norm weights), one tensor at a time, in the GGUF
    /// names: files and synthetic models ([`super::synthetic`]) both come through here.
    pub(crate) fn assemble(
        c: LlamaConfig,
        backend: Arc<dyn Backend>,
        separate_output: bool,
        mut matrix: impl FnMut(&str, usize, usize) -> Result<(QTensor, TensorPlan)>,
        mut vector: impl FnMut(&str, usize) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let (h, q_dim, kv_dim) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
        );
        let mut plans = Vec::new();
        let mut host_matrix = |name: &str, rows: usize, cols: usize| -> Result<QTensor> {
            let (q, plan) = matrix(name, rows, cols)?;
            plans.push(plan);
            Ok(q)
        };
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
            Ok(backend.load_weight(host_matrix(name, rows, cols)?)?)
        };
        let mut vector = |name: &str, len: usize| -> Result<Tensor> {
            Ok(backend.upload(1, len, vector(name, len)?)?)
        };
        let embed = matrix("token_embd.weight", c.vocab_size, h)?;
        let output = if separate_output {
            Some(matrix("output.weight", c.vocab_size, h)?)
        } else {
            None
        };
        let mut blocks = Vec::new();
        for i in 0..c.n_layers {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            let attn_norm = if c.no_pre_norms {
                None
            } else {
                Some(vector(&n("attn_norm"), h)?)
            };
            // Weights that multiply the same input load together (one product on the GPU).
            let [q, k, v] = together(
                &backend,
                vec![
                    host_matrix(&n("attn_q"), q_dim, h)?,
                    host_matrix(&n("attn_k"), kv_dim, h)?,
                    host_matrix(&n("attn_v"), kv_dim, h)?,
                ],
            )?;
            let qkv_bias = if c.attention_bias {
                let b = |part: &str| format!("blk.{i}.{part}.bias");
                Some([
                    vector(&b("attn_q"), q_dim)?,
                    vector(&b("attn_k"), kv_dim)?,
                    vector(&b("attn_v"), kv_dim)?,
                ])
            } else {
                None
            };
            let qk_norm = if c.qk_norm {
                let (q_len, k_len) = super::tensor_list::qk_norm_lens(&c);
                Some([
                    vector(&n("attn_q_norm"), q_len)?,
                    vector(&n("attn_k_norm"), k_len)?,
                ])
            } else {
                None
            };
            let o = backend.load_weight(host_matrix(&n("attn_output"), h, q_dim)?)?;
            let (o_bias, sinks) = if c.gpt_oss {
                (
                    Some(vector(&format!("blk.{i}.attn_output.bias"), h)?),
                    Some(vector(&n("attn_sinks"), c.n_heads)?),
                )
            } else {
                (None, None)
            };
            let ffn_norm = if c.no_pre_norms {
                None
            } else {
                Some(vector(&n(c.ffn_norm_part()), h)?)
            };
            let ffn = match &c.moe {
                None => Ffn::Dense(Box::new(load_mlp(
                    &backend,
                    &mut host_matrix,
                    None,
                    &n,
                    "",
                    c.ffn_size,
                    h,
                )?)),
                Some(moe) => Ffn::Experts(Box::new(MoeFfn::load(
                    &backend,
                    &mut host_matrix,
                    c.gpt_oss.then_some(&mut vector as &mut LoadVector<'_>),
                    i,
                    moe,
                    h,
                )?)),
            };
            let post_norms = if c.gemma.post_norms {
                Some([
                    vector(&n("post_attention_norm"), h)?,
                    vector(&n("post_ffw_norm"), h)?,
                ])
            } else {
                None
            };
            blocks.push(Block {
                post_norms,
                attn_norm,
                q,
                k,
                v,
                qkv_bias,
                qk_norm,
                o,
                o_bias,
                sinks,
                ffn_norm,
                ffn,
            });
        }
        let output_norm = vector("output_norm.weight", h)?;
        Ok(Self {
            plans,
            output_norm,
            rope: c.rope(),
            sliding_rope: c.sliding_rope(),
            config: c,
            backend,
            embed,
            output,
            blocks,
        })
    }

    /// Whether the output head is the token embedding.
    pub fn head_is_embedding(&self) -> bool {
        self.output.is_none()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Serves sequences of up to `max_positions` (the model's context unless called):
    /// LongRoPE takes its long factors where that exceeds its original context, as llama.cpp
    /// decides by its context size.
    pub fn set_max_positions(&mut self, max_positions: usize) {
        self.rope = self.config.rope_for(max_positions);
    }

    /// The format each weight matrix got, in load order.
    pub fn plans(&self) -> &[TensorPlan] {
        &self.plans
    }

    /// Storage bits per weight over all weight matrices.
    pub fn bits_per_weight(&self) -> f64 {
        let values: usize = self.plans.iter().map(|p| p.rows * p.cols).sum();
        self.plans.iter().map(|p| p.bytes).sum::<usize>() as f64 * 8.0 / values.max(1) as f64
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The shape of a KV pool of `blocks` blocks of `block_tokens` positions for this model.
    pub fn kv_pool_spec(&self, block_tokens: usize, blocks: usize, dtype: KvDtype) -> KvPoolSpec {
        KvPoolSpec {
            layers: self.config.n_layers,
            kv_dim: self.config.n_kv_heads * self.config.head_dim,
            head_dim: self.config.head_dim,
            block_tokens,
            blocks,
            dtype,
        }
    }

    /// Allocates a KV pool in the backend.
    pub fn new_kv_pool(&self, spec: KvPoolSpec) -> Result<KvPool> {
        Ok(self.backend.new_kv_pool(spec)?)
    }

    /// Bytes of weights resident in the backend.
    pub fn weight_bytes(&self) -> usize {
        self.block_bytes(None)
            + self.embed.resident_bytes()
            + self.output.as_ref().map_or(0, Weight::resident_bytes)
    }

    /// Bytes of weights one decode step of one sequence reads: every layer's matrices (of a
    /// mixture of experts, the router, the experts a token runs — an average expert's size
    /// each — and any shared expert) and the output head (the embedding is gathered by row,
    /// so only a tied head reads it whole).
    pub fn decode_weight_bytes(&self) -> usize {
        let head = self.output.as_ref().unwrap_or(&self.embed).resident_bytes();
        let used = self.config.moe.as_ref().map_or(0, |m| m.experts_used);
        self.block_bytes(Some(used)) + head
    }

    /// Every block's weights; with `experts_used`, a mixture of experts counts only that many
    /// of its experts.
    fn block_bytes(&self, experts_used: Option<usize>) -> usize {
        self.blocks
            .iter()
            .map(|b| {
                b.attention_bytes()
                    + match (&b.ffn, experts_used) {
                        (Ffn::Dense(mlp), _) => mlp.resident_bytes(),
                        (Ffn::Experts(moe), None) => moe.resident_bytes(),
                        (Ffn::Experts(moe), Some(used)) => moe.decode_bytes(used),
                    }
            })
            .sum()
    }

    /// Runs one step over a ragged batch and returns the logits each sequence asked for.
    /// Each sequence's new keys and values go into its blocks of `pool`.
    pub fn forward(&self, seqs: &[BatchSeq<'_>], pool: &mut KvPool) -> Result<Logits> {
        self.forward_observed(seqs, pool, &mut |_, _, _| {})
    }

    /// As [`Llama::forward`], returning only each logits row's argmax (the greedy choice):
    /// a GPU backend then reads back ids, not vocabularies.
    pub fn forward_argmax(&self, seqs: &[BatchSeq<'_>], pool: &mut KvPool) -> Result<Vec<u32>> {
        match self.run(seqs, pool, &mut |_, _, _| {}, Readback::Argmax)? {
            StepOutput::Argmax(ids) => Ok(ids),
            _ => Err(lowbit_gpu::Error::Internal("argmax step gave logits").into()),
        }
    }

    /// As [`Llama::forward`], returning every logits row's argmax, the whole rows and the top
    /// k values of the rows `what` lists: a batch mixing greedy and sampled sequences reads
    /// back ids for the first and, for the second, a few values where the sampler's top-k
    /// filter allows, vocabularies otherwise.
    pub fn forward_mixed(
        &self,
        seqs: &[BatchSeq<'_>],
        pool: &mut KvPool,
        what: &MixedReadback,
    ) -> Result<MixedRows> {
        match self.run(seqs, pool, &mut |_, _, _| {}, Readback::Mixed(what.clone()))? {
            StepOutput::Mixed(rows) => Ok(rows),
            _ => Err(lowbit_gpu::Error::Internal("mixed step gave another output").into()),
        }
    }

    /// As [`Llama::forward`], showing `observe` the input of every linear layer (layer index,
    /// which input, the activations): calibration collects its statistics this way.
    pub fn forward_observed(
        &self,
        seqs: &[BatchSeq<'_>],
        pool: &mut KvPool,
        observe: &mut Observer<'_>,
    ) -> Result<Logits> {
        match self.run(seqs, pool, observe, Readback::Logits)? {
            StepOutput::Logits(l) => Ok(l),
            _ => Err(lowbit_gpu::Error::Internal("logits step gave ids").into()),
        }
    }

    fn run(
        &self,
        seqs: &[BatchSeq<'_>],
        pool: &mut KvPool,
        observe: &mut Observer<'_>,
        readback: Readback,
    ) -> Result<StepOutput> {
        let mut result = None;
        // The backend decides where a step runs (the CPU backend: on a pool thread, so the
        // step's many parallel regions start from inside the pool).
        self.backend
            .run_step(&mut || result = Some(self.step(seqs, pool, observe, readback.clone())));
        result.unwrap_or_else(|| {
            Err(lowbit_gpu::Error::Internal("the backend did not run the step").into())
        })
    }

    fn step<'a>(
        &self,
        seqs: &[BatchSeq<'a>],
        pool: &mut KvPool,
        observe: &mut Observer<'_>,
        readback: Readback,
    ) -> Result<StepOutput> {
        let be = &*self.backend;
        let c = &self.config;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(seqs.len());
        let mut logit_rows = Vec::new();
        for s in seqs {
            if s.logits.end > s.tokens.len() || s.logits.start > s.logits.end {
                return Err(lowbit_gpu::Error::Shape {
                    op: "forward",
                    detail: format!("logits rows {:?} of {} tokens", s.logits, s.tokens.len()),
                }
                .into());
            }
            let row_start = tokens.len();
            spans.push(SeqSpan {
                row_start,
                len: s.tokens.len(),
                pos_start: s.pos_start,
                blocks: s.blocks,
            });
            tokens.extend_from_slice(s.tokens);
            positions.extend((s.pos_start..s.pos_start + s.tokens.len()).map(|p| p as u32));
            logit_rows.extend(s.logits.clone().map(|r| row_start + r));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(lowbit_gpu::Error::Shape {
                op: "forward",
                detail: format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                ),
            }
            .into());
        }

        let slots = self.kv_slots(pool)?;
        let window_spans: Vec<SeqSpan<'a>> = match pool.window() {
            Some(_) => seqs
                .iter()
                .zip(&spans)
                .map(|(s, span)| SeqSpan {
                    blocks: s.window_blocks,
                    ..*span
                })
                .collect(),
            None => Vec::new(),
        };

        let mut x = be.embed(&self.embed, &tokens)?;
        if let Some(factor) = c.gemma.embedding_scale {
            x = be.scale(&x, factor)?;
        }
        for (layer, block) in self.blocks.iter().enumerate() {
            let _span = tracing::trace_span!("block", layer).entered();
            let residual = &x;
            let h = self.pre_norm(&x, block.attn_norm.as_ref())?;
            let h = &*h;
            observe(layer, LinearInput::Attention, h);
            // Each sub-block's output projection adds the residual (a backend may fuse it).
            let slot = slots[layer];
            let layer_spans = if slot.window { &window_spans } else { &spans };
            let x_mid = self.attention(
                (layer, block),
                h,
                residual,
                &positions,
                (slot.index, layer_spans, kv_pools::slot_pool(pool, slot)?),
                observe,
            )?;

            let residual = &x_mid;
            let h = self.pre_norm(&x_mid, block.ffn_norm.as_ref())?;
            let h = &*h;
            observe(layer, LinearInput::Mlp, h);
            x = self.mlp((layer, block), h, residual, observe)?;
        }

        let _span = tracing::trace_span!("output").entered();
        // The norm is row-wise, so norming every row and then selecting equals the reverse;
        // this order lets calibration see the head's input for every row without asking for
        // (and paying for) every row's logits.
        let x = be.rms_norm(&x, &self.output_norm, c.rms_eps)?;
        observe(self.blocks.len(), LinearInput::Head, &x);
        let x = be.select_rows(&x, &logit_rows)?;
        let mut logits = be.matmul(&x, self.output.as_ref().unwrap_or(&self.embed))?;
        if let Some(s) = c.gemma.logit_scale {
            logits = be.scale(&logits, 1.0 / s)?;
        }
        if let Some(cap) = c.gemma.final_softcap {
            logits = be.softcap(&logits, cap)?;
        }
        Ok(match readback {
            Readback::Logits => StepOutput::Logits(Logits {
                vocab: c.vocab_size,
                data: be.download_owned(logits)?,
            }),
            Readback::Argmax => StepOutput::Argmax(be.argmax_rows(&logits)?),
            Readback::Mixed(what) => {
                let want = lowbit_gpu::LogitsRequest {
                    full: &what.full,
                    top: &what.top,
                    k: what.k,
                    draws: &what.draws,
                    adjust: &what.adjust,
                    logprobs: &what.logprobs,
                };
                let read = be.read_logits(&logits, &want)?;
                StepOutput::Mixed(MixedRows {
                    ids: read.ids,
                    logits: Logits {
                        vocab: c.vocab_size,
                        data: read.full,
                    },
                    top: read.top,
                    drawn: read.drawn,
                    logprobs: read.logprobs,
                })
            }
        })
    }

    /// A sub-block's input: `x` RMS-normed, or `x` itself where the block norms only after
    /// its sub-blocks (OLMo 2/3).
    fn pre_norm<'a>(&self, x: &'a Tensor, norm: Option<&Tensor>) -> Result<Cow<'a, Tensor>> {
        Ok(match norm {
            Some(norm) => Cow::Owned(self.backend.rms_norm(x, norm, self.config.rms_eps)?),
            None => Cow::Borrowed(x),
        })
    }

    /// `residual + attention(x)`.
    fn attention(
        &self,
        (layer, block): (usize, &Block),
        x: &Tensor,
        residual: &Tensor,
        positions: &[u32],
        (kv_layer, spans, pool): (usize, &[SeqSpan<'_>], &mut KvPool),
        observe: &mut Observer<'_>,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("attn").entered();
        let be = &*self.backend;
        let [mut q, mut k, mut v]: [Tensor; 3] = be
            .matmul_many(x, &[&block.q, &block.k, &block.v])?
            .try_into()
            .map_err(|_| lowbit_gpu::Error::Internal("matmul_many returned the wrong count"))?;
        if let Some([bq, bk, bv]) = &block.qkv_bias {
            q = be.add_bias(&q, bq)?;
            k = be.add_bias(&k, bk)?;
            v = be.add_bias(&v, bv)?;
        }
        if let Some([q_norm, k_norm]) = &block.qk_norm {
            let eps = self.config.rms_eps;
            if self.config.qk_norm_whole {
                q = be.rms_norm(&q, q_norm, eps)?;
                k = be.rms_norm(&k, k_norm, eps)?;
            } else {
                q = be.rms_norm_heads(q, q_norm, eps)?;
                k = be.rms_norm_heads(k, k_norm, eps)?;
            }
        }
        let mut shape: lowbit_gpu::AttentionShape<'_> = self.config.layer_attention(layer);
        shape.sinks = block.sinks.as_ref();
        let out = if self.config.is_nope(layer) {
            // A NoPE layer (SmolLM3) attends over unrotated queries and keys.
            be.attention(kv_layer, &q, &k, &v, spans, pool, shape)?
        } else {
            let rope = match &self.sliding_rope {
                Some(r) if self.config.is_sliding(layer) => r,
                _ => &self.rope,
            };
            be.rope_attention(kv_layer, (&q, &k, &v), positions, rope, spans, pool, shape)?
        };
        observe(layer, LinearInput::AttentionOutput, &out);
        let sum = self.project_add(
            &out,
            &block.o,
            block.post_norms.as_ref().map(|[a, _]| a),
            residual,
        )?;
        match &block.o_bias {
            // Row-wise, so after the residual add as well as before it.
            Some(bias) => Ok(be.add_bias(&sum, bias)?),
            None => Ok(sum),
        }
    }

    /// `residual + x · Wᵀ`, the product RMS-normed first where the block has a post-norm
    /// (Gemma 2/3) or scaled where the model scales its residual branches (Granite);
    /// otherwise a backend may add in the product's epilogue.
    fn project_add(
        &self,
        x: &Tensor,
        w: &Weight,
        post_norm: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let be = &*self.backend;
        Ok(match (post_norm, self.config.gemma.residual_scale) {
            (None, None) => be.matmul_add(x, w, residual)?,
            (Some(norm), _) => {
                be.rms_norm_add(&be.matmul(x, w)?, norm, self.config.rms_eps, residual)?
            }
            (None, Some(s)) => be.add(residual, &be.scale(&be.matmul(x, w)?, s)?)?,
        })
    }

    /// `residual + mlp(x)`.
    fn mlp(
        &self,
        (layer, block): (usize, &Block),
        x: &Tensor,
        residual: &Tensor,
        observe: &mut Observer<'_>,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("mlp").entered();
        let mlp = match &block.ffn {
            Ffn::Dense(mlp) => mlp,
            Ffn::Experts(moe) => return self.experts(layer, moe, x, residual, observe),
        };
        let gated = self.gated(mlp, x)?;
        observe(layer, LinearInput::MlpDown, &gated);
        let post_norm = block.post_norms.as_ref().map(|[_, f]| f);
        self.project_add(&gated, &mlp.down, post_norm, residual)
    }

    /// `act(gate(x)) * up(x)`: an MLP's input to its down projection.
    pub(super) fn gated(&self, mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
        let be = &*self.backend;
        let [mut gate, mut up]: [Tensor; 2] = be
            .matmul_many(x, &[&mlp.gate, &mlp.up])?
            .try_into()
            .map_err(|_| lowbit_gpu::Error::Internal("matmul_many returned the wrong count"))?;
        if let Some([gate_bias, up_bias, _]) = &mlp.biases {
            gate = be.add_bias(&gate, gate_bias)?;
            up = be.add_bias(&up, up_bias)?;
        }
        Ok(match self.config.gemma.activation {
            Activation::Silu => be.silu_mul(&gate, &up)?,
            Activation::GeluTanh => be.gelu_mul(&gate, &up)?,
            Activation::SwigluOai => be.swiglu_oai(&gate, &up, SWIGLU_OAI_LIMIT)?,
        })
    }
}

impl Block {
    fn attention_bytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o]
            .iter()
            .map(|w| w.resident_bytes())
            .sum()
    }
}
