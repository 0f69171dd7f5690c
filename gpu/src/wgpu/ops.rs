//! The row-wise and element-wise operations: embedding gather, RMSNorm, RoPE, add,
//! SwiGLU, row selection and scattered adds.

use super::encoder::grid;
use super::kernels::{
    ElementwiseParams, EmbedParams, HeadParams, Kernel, NormParams, RopeParams, ELEMENT_GROUP,
    TOP_K_MAX,
};
use super::{device_of, weight_of, WgpuBackend};
use crate::backend::{LogitsRequest, Rope, RopeStyle, ScatteredRows};
use crate::checks;
use crate::draw::{LogitAdjust, RowDraw};
use crate::error::{shape_err, Result};
use crate::tensor::{Tensor, Weight};

/// head.wgsl's NONE: a draw from a row without a finite logit.
const NO_TOKEN: u32 = u32::MAX;

/// A grid of one thread per element: workgroups and the threads per grid row.
fn element_grid(n: usize) -> ((u32, u32), u32) {
    let g = grid((n as u32).div_ceil(ELEMENT_GROUP));
    (g, g.0 * ELEMENT_GROUP)
}

/// [`element_grid`] and the element-wise kernels' parameters for `n` values in rows of `cols`.
fn element_params(n: usize, cols: usize, value: f32) -> ((u32, u32), ElementwiseParams) {
    let (groups, grid_x) = element_grid(n);
    let params = ElementwiseParams {
        n: n as u32,
        grid_x,
        cols: cols as u32,
        value,
    };
    (groups, params)
}

impl WgpuBackend {
    pub(super) fn embed_rows(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let (vocab, dim) = (table.rows(), table.cols());
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(shape_err(
                "embed",
                format!("token id {bad} outside vocabulary of {vocab}"),
            ));
        }
        let w = weight_of(table)?;
        if w.is_stacked() {
            return Err(crate::error::Error::Unsupported(
                "an embedding table stored in a stack of weights".into(),
            ));
        }
        let out = self.alloc(ids.len(), dim)?;
        if ids.is_empty() {
            return Ok(self.tensor(0, dim, out));
        }
        let id_buf = self.alloc(ids.len(), 1)?;
        let pipeline = self.kernel(Kernel::Embed { kind: w.kind })?;
        let mut rec = self.recorder()?;
        rec.upload(id_buf.buffer(), 0, bytemuck::cast_slice(ids));
        let (groups, grid_x) = element_grid(ids.len() * dim / 8);
        for part in w.parts.iter() {
            let params = EmbedParams {
                dims: w.dims,
                k: dim as u32,
                row_start: part.row_start,
                rows: part.rows,
                tokens: ids.len() as u32,
                grid_x,
                _pad: [0; 3],
            };
            rec.dispatch(
                pipeline.clone(),
                &[
                    (&part.words, part.words.size()),
                    self.scales_or_dummy(part.scales.as_ref()),
                    self.scales_or_dummy(part.mins.as_ref()),
                    (id_buf.buffer(), id_buf.bytes()),
                    (out.buffer(), out.bytes()),
                    (&self.dummy_read, 256),
                    (&self.dummy_write, 256),
                    (&self.dummy_write, 256),
                ],
                &params,
                groups,
            );
        }
        Ok(self.tensor(ids.len(), dim, out))
    }

    pub(super) fn scales_or_dummy<'a>(
        &'a self,
        b: Option<&'a ::wgpu::Buffer>,
    ) -> (&'a ::wgpu::Buffer, u64) {
        match b {
            Some(b) => (b, b.size()),
            None => (&self.dummy_read, self.dummy_read.size()),
        }
    }

    pub(super) fn norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        if let Some(t) = self.norm_quantizing(x, weight, eps)? {
            return Ok(t);
        }
        self.norm_plain(x, weight, eps)
    }

    /// RMSNorm without the int8 form (a result no product reads: Gemma's post-norms).
    pub(super) fn norm_plain(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, cols) = (x.rows(), x.cols());
        checks::norm_weight(x, weight)?;
        let (xd, wd) = (device_of(x)?, device_of(weight)?);
        let out = self.alloc(rows, cols)?;
        if rows == 0 {
            return Ok(self.tensor(rows, cols, out));
        }
        let pipeline = self.kernel(Kernel::RmsNorm)?;
        let groups = grid(rows as u32);
        let params = NormParams {
            cols: cols as u32,
            rows: rows as u32,
            eps,
            grid_x: groups.0,
        };
        self.recorder()?.dispatch(
            pipeline,
            &[
                (xd.buffer(), xd.bytes()),
                (wd.buffer(), wd.bytes()),
                (out.buffer(), out.bytes()),
            ],
            &params,
            groups,
        );
        Ok(self.tensor(rows, cols, out))
    }

    pub(super) fn binary(
        &self,
        kernel: Kernel,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor> {
        checks::same_shape(op, a, b)?;
        self.elementwise(kernel, a, b, 0.0)
    }

    /// gpt-oss's clamped SwiGLU, `limit` its clamp.
    pub(super) fn swiglu_oai_values(
        &self,
        gate: &Tensor,
        up: &Tensor,
        limit: f32,
    ) -> Result<Tensor> {
        checks::same_shape("swiglu_oai", gate, up)?;
        self.elementwise(Kernel::SwigluOai, gate, up, limit)
    }

    /// A one-input element-wise kernel with its parameter (`scale`, `softcap`).
    pub(super) fn unary(&self, kernel: Kernel, x: &Tensor, value: f32) -> Result<Tensor> {
        self.elementwise(kernel, x, x, value)
    }

    /// `x + bias` on every row (`bias` is `1 × cols`).
    pub(super) fn add_row_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        checks::bias(x, bias)?;
        self.elementwise(Kernel::AddBias, x, bias, 0.0)
    }

    /// An element-wise kernel over `a`'s values, `b` read as its entry asks: an output of `a`'s
    /// shape.
    fn elementwise(&self, kernel: Kernel, a: &Tensor, b: &Tensor, value: f32) -> Result<Tensor> {
        let (ad, bd) = (device_of(a)?, device_of(b)?);
        let n = a.rows() * a.cols();
        let out = self.alloc(a.rows(), a.cols())?;
        if n == 0 {
            return Ok(self.tensor(a.rows(), a.cols(), out));
        }
        let pipeline = self.kernel(kernel)?;
        let (groups, params) = element_params(n, a.cols(), value);
        self.recorder()?.dispatch(
            pipeline,
            &[
                (ad.buffer(), ad.bytes()),
                (bd.buffer(), bd.bytes()),
                (out.buffer(), out.bytes()),
            ],
            &params,
            groups,
        );
        Ok(self.tensor(a.rows(), a.cols(), out))
    }

    /// Each row's argmax on the device; only the ids come back.
    pub(super) fn argmax_ids(&self, x: &Tensor) -> Result<Vec<u32>> {
        let (rows, cols) = (x.rows(), x.cols());
        if rows == 0 || cols == 0 {
            return Ok(vec![0; rows]);
        }
        let ids = self.head_reduce(Kernel::Argmax, x, 0, 1)?;
        Ok(ids.into_iter().map(f32::to_bits).collect())
    }

    /// Runs a head kernel (one workgroup per row of `x`) writing `width` words per row, and
    /// reads them back.
    fn head_reduce(&self, kernel: Kernel, x: &Tensor, k: usize, width: usize) -> Result<Vec<f32>> {
        let out = self.head_dispatch(kernel, x, k, width)?;
        crate::Backend::download(self, &self.tensor(x.rows(), width, out))
    }

    /// Records a head kernel over the rows of `x`, `width` words per row into a new buffer.
    fn head_dispatch(
        &self,
        kernel: Kernel,
        x: &Tensor,
        k: usize,
        width: usize,
    ) -> Result<super::DeviceTensor> {
        let rows = x.rows();
        let xd = device_of(x)?;
        let out = self.alloc(rows, width)?;
        let pipeline = self.kernel(kernel)?;
        let groups = grid(rows as u32);
        let params = HeadParams {
            cols: x.cols() as u32,
            rows: rows as u32,
            grid_x: groups.0,
            k: k as u32,
        };
        self.recorder()?.dispatch(
            pipeline,
            &[
                (xd.buffer(), xd.bytes()),
                (&self.dummy_read, self.dummy_read.size()),
                (out.buffer(), out.bytes()),
            ],
            &params,
            groups,
        );
        Ok(out)
    }

    /// A step's logits readback in one transfer: every row's argmax, the top k of the rows
    /// `want.top`, the draws, the log-probabilities and the whole rows `want.full` are computed
    /// into their own buffers, copied one after the other into one, and read back once (a GPU
    /// wait per step, not one per part).
    pub(super) fn read_logits_once(
        &self,
        raw: &Tensor,
        want: &LogitsRequest<'_>,
    ) -> Result<crate::backend::LogitsReadback> {
        let (rows, cols) = (raw.rows(), raw.cols());
        let (top, k) = (want.top, want.k);
        // The alternatives logprobs report, as many as the row asking most wants.
        let lp_k = want.logprobs.iter().map(|l| l.top).max().unwrap_or(0);
        if k.max(lp_k) > TOP_K_MAX || rows == 0 || cols == 0 {
            return crate::backend::read_logits_apart(self, raw, want);
        }
        want.check_rows(rows)?;
        // Whole rows and log-probabilities as the model gave them; every choice from the
        // changed logits.
        let whole = self.gather(raw, want.full)?;
        let adjusted = self.adjusted(raw, want.adjust)?;
        let x = adjusted.as_ref().unwrap_or(raw);
        let ids = self.head_dispatch(Kernel::Argmax, x, 0, 1)?;
        let tops = self.top_k_of(x, top, k)?;
        let drawn = self.draw_rows(x, want.draws)?;
        let log_sums = self.log_sums(raw, want, &ids, drawn.as_ref())?;
        let lp_rows: Vec<usize> = want.logprobs.iter().map(|l| l.row).collect();
        let lp_tops = self.top_k_of(raw, &lp_rows, lp_k)?;
        let parts: [(Option<&super::DeviceTensor>, usize); 6] = [
            (Some(&ids), rows),
            (tops.as_ref(), top.len() * (1 + 2 * k)),
            (drawn.as_ref(), want.draws.len()),
            (log_sums.as_ref(), 2 * want.logprobs.len()),
            (lp_tops.as_ref(), lp_rows.len() * (1 + 2 * lp_k)),
            (Some(device_of(&whole)?), want.full.len() * cols),
        ];
        let total: usize = parts.iter().filter(|p| p.0.is_some()).map(|p| p.1).sum();
        let staging = self.alloc(total, 1)?;
        {
            let mut rec = self.recorder()?;
            let mut at = 0u64;
            for (part, words) in parts {
                if let Some(t) = part {
                    let bytes = (words * 4) as u64;
                    rec.copy(t.buffer(), 0, staging.buffer(), at, bytes);
                    at += bytes;
                }
            }
        }
        let words = crate::Backend::download(self, &self.tensor(total, 1, staging))?;
        // The parts back, in the order they were copied.
        let mut rest = &words[..];
        let mut take = |(part, n): (Option<&super::DeviceTensor>, usize)| {
            let (head, tail) = rest.split_at(if part.is_some() { n } else { 0 });
            rest = tail;
            head
        };
        let [id_words, top_words, drawn_words, sum_words, lp_top_words, full_values] =
            parts.map(&mut take);
        let ids: Vec<u32> = id_words.iter().map(|v| v.to_bits()).collect();
        let pairs = |words: &[f32], k: usize, n: usize| {
            if words.is_empty() {
                Ok(vec![Vec::new(); n])
            } else {
                top_pairs(words, k)
            }
        };
        let top = pairs(top_words, k, top.len())?;
        // A row without a finite logit draws nothing: its argmax, as the sampler gives.
        let drawn: Vec<u32> = drawn_words
            .iter()
            .zip(want.draws)
            .map(|(w, d)| match w.to_bits() {
                NO_TOKEN => ids[d.row],
                t => t,
            })
            .collect();
        let lp_tops = pairs(lp_top_words, lp_k, lp_rows.len())?;
        let logprobs = want
            .logprobs
            .iter()
            .zip(sum_words.chunks(2))
            .zip(lp_tops)
            .map(|((l, sums), mut alternatives)| {
                alternatives.truncate(l.top);
                let token = crate::logprobs::chosen_token(l, &ids, want.draws, &drawn);
                crate::logprobs::from_parts(f64::from(sums[0]), token, sums[1], alternatives)
            })
            .collect();
        Ok(crate::backend::LogitsReadback {
            ids,
            full: full_values.to_vec(),
            top,
            drawn,
            logprobs,
        })
    }

    /// Records the top `k` of `rows` of `x` (None where there is nothing to rank).
    fn top_k_of(
        &self,
        x: &Tensor,
        rows: &[usize],
        k: usize,
    ) -> Result<Option<super::DeviceTensor>> {
        if rows.is_empty() || k == 0 {
            return Ok(None);
        }
        let picked = self.gather(x, rows)?;
        Ok(Some(self.head_dispatch(
            Kernel::TopK,
            &picked,
            k,
            1 + 2 * k,
        )?))
    }

    /// A copy of `x` with head.wgsl's `adjust` applied (None where nothing changes).
    fn adjusted(&self, x: &Tensor, adjust: &[LogitAdjust]) -> Result<Option<Tensor>> {
        if adjust.is_empty() {
            return Ok(None);
        }
        let (rows, cols) = (x.rows(), x.cols());
        let words = adjust.iter().flat_map(|a| {
            [
                f32::from_bits(a.row as u32),
                f32::from_bits(a.token),
                a.positive_scale,
                a.negative_scale,
                a.subtract,
                a.add,
            ]
        });
        let out = self.alloc(rows, cols)?;
        let xd = device_of(x)?;
        self.recorder()?
            .copy(xd.buffer(), 0, out.buffer(), 0, (rows * cols * 4) as u64);
        // One thread per change.
        let grid = element_grid(adjust.len());
        let items = self.head_items((adjust.len(), 6, words))?;
        self.head_over_items(Kernel::Adjust, x, &items, &out, grid)?;
        Ok(Some(self.tensor(rows, cols, out)))
    }

    /// Records head.wgsl's `sample` for `draws` (rows of `x`): one token word per draw.
    fn draw_rows(&self, x: &Tensor, draws: &[RowDraw]) -> Result<Option<super::DeviceTensor>> {
        if draws.is_empty() {
            return Ok(None);
        }
        let words = draws.iter().flat_map(|d| {
            [
                f32::from_bits(d.row as u32),
                d.u,
                d.inv_temperature,
                d.min_weight,
                d.top_p,
            ]
        });
        let out = self.alloc(draws.len(), 1)?;
        // One workgroup per draw.
        let groups = grid(draws.len() as u32);
        let items = self.head_items((draws.len(), 5, words))?;
        self.head_over_items(Kernel::Sample, x, &items, &out, (groups, groups.0))?;
        Ok(Some(out))
    }

    /// Uploads the items of a head.wgsl kernel: `count` of them, `per` words each (draws,
    /// changes, log-sums).
    fn head_items(
        &self,
        (count, per, words): (usize, usize, impl Iterator<Item = f32>),
    ) -> Result<Tensor> {
        crate::Backend::upload(self, count, per, words.collect())
    }

    /// Records a head.wgsl kernel over `x` and its `items`, writing into `out`.
    fn head_over_items(
        &self,
        kernel: Kernel,
        x: &Tensor,
        items: &Tensor,
        out: &super::DeviceTensor,
        (groups, grid_x): ((u32, u32), u32),
    ) -> Result<()> {
        let (id, xd) = (device_of(items)?, device_of(x)?);
        let head = HeadParams {
            cols: x.cols() as u32,
            rows: items.rows() as u32,
            grid_x,
            k: 0,
        };
        self.recorder()?.dispatch(
            self.kernel(kernel)?,
            &[
                (xd.buffer(), xd.bytes()),
                (id.buffer(), id.bytes()),
                (out.buffer(), out.bytes()),
            ],
            &head,
            groups,
        );
        Ok(())
    }

    /// Records head.wgsl's `log_sum` for the rows of `want.logprobs` (rows of `raw`, the
    /// logits as the model gave them): each row's log-sum-exp and its chosen token's logit, two
    /// words per row. The chosen token (the row's draw, else its argmax) is on the device
    /// only: it is copied into the row's item there; a given token is written with the item.
    fn log_sums(
        &self,
        raw: &Tensor,
        want: &LogitsRequest<'_>,
        ids: &super::DeviceTensor,
        drawn: Option<&super::DeviceTensor>,
    ) -> Result<Option<super::DeviceTensor>> {
        if want.logprobs.is_empty() {
            return Ok(None);
        }
        let words = want.logprobs.iter().flat_map(|l| {
            [
                f32::from_bits(l.row as u32),
                f32::from_bits(l.token.unwrap_or(NO_TOKEN)),
            ]
        });
        let items = self.head_items((want.logprobs.len(), 2, words))?;
        {
            let item_words = device_of(&items)?;
            let mut rec = self.recorder()?;
            for (i, l) in want.logprobs.iter().enumerate() {
                if l.token.is_some() {
                    continue;
                }
                let source = match (drawn, want.draws.iter().position(|d| d.row == l.row)) {
                    (Some(d), Some(j)) => (d, j),
                    _ => (ids, l.row),
                };
                let to = (8 * i + 4) as u64;
                rec.copy(
                    source.0.buffer(),
                    4 * source.1 as u64,
                    item_words.buffer(),
                    to,
                    4,
                );
            }
        }
        let out = self.alloc(want.logprobs.len(), 2)?;
        // One workgroup per row.
        let groups = grid(want.logprobs.len() as u32);
        self.head_over_items(Kernel::LogSum, raw, &items, &out, (groups, groups.0))?;
        Ok(Some(out))
    }

    pub(super) fn top_k_pairs(&self, x: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        let (rows, cols) = (x.rows(), x.cols());
        if k > TOP_K_MAX {
            let values = crate::Backend::download(self, x)?;
            return Ok(values
                .chunks(cols.max(1))
                .map(|row| crate::backend::top_k(row, k))
                .collect());
        }
        if rows == 0 || cols == 0 || k == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let words = self.head_reduce(Kernel::TopK, x, k, 1 + 2 * k)?;
        top_pairs(&words, k)
    }

    pub(super) fn gather(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows()) {
            return Err(shape_err("select_rows", format!("row {r} of {}", x.rows())));
        }
        let xd = device_of(x)?;
        let cols = x.cols();
        let out = self.alloc(rows.len(), cols)?;
        let n = rows.len() * cols;
        if n == 0 {
            return Ok(self.tensor(rows.len(), cols, out));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx_buf = self.alloc(idx.len(), 1)?;
        let pipeline = self.kernel(Kernel::GatherRows)?;
        let (groups, params) = element_params(n, cols, 0.0);
        let mut rec = self.recorder()?;
        rec.upload(idx_buf.buffer(), 0, bytemuck::cast_slice(&idx));
        rec.dispatch(
            pipeline,
            &[
                (xd.buffer(), xd.bytes()),
                (idx_buf.buffer(), idx_buf.bytes()),
                (out.buffer(), out.bytes()),
            ],
            &params,
            groups,
        );
        Ok(self.tensor(rows.len(), cols, out))
    }

    /// A copy of `base`, then one in-place dispatch per part.
    pub(super) fn scatter(&self, base: &Tensor, parts: &[ScatteredRows<'_>]) -> Result<Tensor> {
        checks::scattered(base, parts)?;
        let bd = device_of(base)?;
        let cols = base.cols();
        let out = self.alloc(base.rows(), cols)?;
        let pipeline = self.kernel(Kernel::ScatterAdd)?;
        // Buffers first: `alloc` may record (poisoning), so not while the recorder is held.
        let mut work = Vec::with_capacity(parts.len());
        for part in parts.iter().filter(|p| !p.rows.is_empty() && cols > 0) {
            let pairs: Vec<f32> = part
                .rows
                .iter()
                .zip(part.weights)
                .flat_map(|(&r, &w)| [f32::from_bits(r as u32), w])
                .collect();
            let buf = self.alloc(pairs.len(), 1)?;
            work.push((device_of(part.x)?, pairs, buf));
        }
        let mut rec = self.recorder()?;
        rec.copy(
            bd.buffer(),
            0,
            out.buffer(),
            0,
            (base.rows() * cols * 4) as u64,
        );
        for (xd, pairs, buf) in &work {
            let n = pairs.len() / 2 * cols;
            rec.upload(buf.buffer(), 0, bytemuck::cast_slice(pairs));
            let (groups, params) = element_params(n, cols, 0.0);
            rec.dispatch(
                pipeline.clone(),
                &[
                    (xd.buffer(), xd.bytes()),
                    (buf.buffer(), buf.bytes()),
                    (out.buffer(), out.bytes()),
                ],
                &params,
                groups,
            );
        }
        drop(rec);
        Ok(self.tensor(base.rows(), cols, out))
    }

    pub(super) fn rotate(&self, x: &Tensor, positions: &[u32], rope: &Rope) -> Result<Tensor> {
        let (rows, cols) = (x.rows(), x.cols());
        checks::rope(x, positions, rope)?;
        let xd = device_of(x)?;
        let out = self.alloc(rows, cols)?;
        if rows == 0 {
            return Ok(self.tensor(rows, cols, out));
        }
        let table = self.rope_table(positions, rope)?;
        let pipeline = self.kernel(Kernel::Rope)?;
        let (groups, grid_x) = element_grid(rows * cols / 2);
        let params = RopeParams {
            rows: rows as u32,
            cols: cols as u32,
            head_dim: rope.head_dim as u32,
            half_split: u32::from(rope.style == RopeStyle::HalfSplit),
            grid_x,
            rotated_pairs: rope.rotated_pairs() as u32,
            _pad: [0; 2],
        };
        self.recorder()?.dispatch(
            pipeline,
            &[
                (xd.buffer(), xd.bytes()),
                (table.buffer(), table.bytes()),
                (out.buffer(), out.bytes()),
            ],
            &params,
            groups,
        );
        Ok(self.tensor(rows, cols, out))
    }

    /// Each row's (cos, sin) per rotated pair ([`Rope::sin_cos`], as the CPU backend's),
    /// uploaded once for all the layers of a step.
    pub(super) fn rope_table(&self, positions: &[u32], rope: &Rope) -> Result<super::DeviceTensor> {
        let freq_bits = rope.table_key();
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| crate::error::Error::Internal("the wgpu step cache is poisoned"))?;
        if let Some((_, _, t)) = cache
            .rope
            .iter()
            .find(|(p, f, _)| p == positions && *f == freq_bits)
        {
            return Ok(t.clone());
        }
        // The older of two tables gives its buffer (uploads are ordered with the dispatches
        // already recorded, so those still read the values they were recorded with).
        let old = if cache.rope.len() == 2 {
            Some(cache.rope.remove(0).2)
        } else {
            None
        };
        let pairs = rope.rotated_pairs();
        let mut values = Vec::with_capacity(positions.len() * pairs * 2);
        for &pos in positions {
            for i in 0..pairs {
                let (s, c) = rope.sin_cos(pos, i);
                values.push(c);
                values.push(s);
            }
        }
        let t = self.upload_reusing(old, bytemuck::cast_slice(&values))?;
        cache.rope.push((positions.to_vec(), freq_bits, t.clone()));
        Ok(t)
    }
}

/// The (index, value) pairs of `top_k`'s rows of 1 + 2k words: a count, k indices, k values.
fn top_pairs(words: &[f32], k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    words
        .chunks(1 + 2 * k)
        .map(|row| {
            let kept = row[0].to_bits() as usize;
            if kept > k {
                return Err(crate::error::Error::Internal("top_k kept more than k"));
            }
            Ok((0..kept)
                .map(|j| (row[1 + j].to_bits(), row[1 + k + j]))
                .collect())
        })
        .collect()
}
