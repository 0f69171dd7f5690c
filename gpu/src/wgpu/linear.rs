//! `x · Wᵀ`. Integer weights take int8 activations by default (dynamic quantization, the CPU
//! backend's arithmetic, int8.wgsl); float weights, and every weight under
//! `Activations::F32`, take f32 activations (matvec.wgsl, matmul.wgsl). Each path has a
//! decode kernel for up to eight rows and a tiled one beyond, summing in the same order, so
//! the choice never changes a row's result.

use super::buffers::DeviceTensor;
use super::encoder::grid;
use super::kernels::{
    Int8Params, Kernel, MatmulParams, Outputs, WeightDims, MATMUL_TILE, MATVEC_GROUP,
    MATVEC_MAX_ROWS, MATVEC_ROWS_PER_GROUP,
};
use super::quantize::Int8Activations;
use super::weights::{whole_stack, DeviceWeight};
use super::{device_of, weight_of, Activations, WgpuBackend};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Tensor, Weight};
use std::sync::Arc;

impl WgpuBackend {
    fn uses_int8(&self, w: &DeviceWeight) -> bool {
        self.options.activations == Activations::Int8 && w.kind.is_integer()
    }

    pub(super) fn linear(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        let mut out = self.linear_many(x, &[w])?;
        out.pop().ok_or(crate::error::Error::Internal(
            "linear_many returned nothing",
        ))
    }

    /// `x · Wᵀ + residual`: int8 products add the residual in their epilogue (one dispatch
    /// less, the same numbers as the product and then `add`); the others add it after.
    pub(super) fn linear_add(&self, x: &Tensor, w: &Weight, residual: &Tensor) -> Result<Tensor> {
        let wd = weight_of(w)?;
        let (m, n) = (x.rows(), w.rows());
        if !self.uses_int8(wd) || m == 0 || n == 0 || x.cols() != w.cols() {
            let y = self.linear(x, w)?;
            return crate::Backend::add(self, &y, residual);
        }
        if (residual.rows(), residual.cols()) != (m, n) {
            return Err(shape_err(
                "matmul_add",
                format!(
                    "product {m}x{n} vs residual {}x{}",
                    residual.rows(),
                    residual.cols()
                ),
            ));
        }
        let rd = device_of(residual)?;
        let out = self.alloc(m, n)?;
        let q = self.int8_of(x)?;
        let target = Target {
            first_row: wd.stack_row,
            outs: &[(&out, wd.rows)],
            residual: Some((rd.buffer(), rd.bytes())),
        };
        self.int8_product(&q, m, x.cols(), wd, &target)?;
        Ok(self.tensor(m, n, out))
    }

    /// `x · Wᵢᵀ` for weights sharing `x`: activations are quantized once for all of them, and
    /// a whole stack in its order (a layer's Q/K/V, gate/up; weights.rs) is one product.
    pub(super) fn linear_many(&self, x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
        let mut wds = Vec::with_capacity(ws.len());
        for w in ws {
            if x.cols() != w.cols() {
                return Err(shape_err(
                    "matmul",
                    format!("x has {} columns, W has {}", x.cols(), w.cols()),
                ));
            }
            wds.push(weight_of(w)?);
        }
        let m = x.rows();
        let outs = wds
            .iter()
            .map(|wd| self.alloc(m, wd.rows as usize))
            .collect::<Result<Vec<_>>>()?;
        // Each product's weights, as a range of `ws`: the whole stack at once, or one each.
        let products: Vec<std::ops::Range<usize>> = if whole_stack(&wds) {
            std::iter::once(0..wds.len()).collect()
        } else {
            (0..wds.len()).map(|i| i..i + 1).collect()
        };
        let mut quantized: Option<Arc<Int8Activations>> = None;
        for weights in products {
            let wd = wds[weights.start];
            let targets: Vec<(&DeviceTensor, u32)> =
                weights.clone().map(|i| (&outs[i], wds[i].rows)).collect();
            if m == 0 || targets.iter().all(|&(_, n)| n == 0) {
                continue;
            }
            let target = Target {
                first_row: wd.stack_row,
                outs: &targets,
                residual: None,
            };
            if self.uses_int8(wd) {
                if quantized.is_none() {
                    quantized = Some(self.int8_of(x)?);
                }
                if let Some(q) = &quantized {
                    self.int8_product(q, m, x.cols(), wd, &target)?;
                }
            } else {
                self.float_product(device_of(x)?, m, x.cols(), wd, &target)?;
            }
        }
        Ok(outs
            .into_iter()
            .zip(&wds)
            .map(|(out, wd)| self.tensor(m, wd.rows as usize, out))
            .collect())
    }

    /// Weight rows per decode workgroup for `m` activation rows: the option's, halved until
    /// one thread per output (rows · m) fits the workgroup.
    fn decode_rows(&self, m: usize) -> u32 {
        let mut rows = self.options.decode_rows;
        while rows > 2 && rows as usize * m > MATVEC_GROUP as usize {
            rows /= 2;
        }
        rows
    }

    fn int8_product(
        &self,
        q: &Int8Activations,
        m: usize,
        k: usize,
        wd: &DeviceWeight,
        target: &Target<'_>,
    ) -> Result<()> {
        let kernels = (
            Kernel::Int8Matvec {
                kind: wd.kind,
                m: m as u32,
                rows: self.decode_rows(m),
            },
            Kernel::Int8Matmul { kind: wd.kind },
        );
        let x = (q.buffer.buffer(), q.buffer.bytes());
        self.product(kernels, x, m, wd, target, |d| Int8Params {
            dims: d.dims,
            out: d.out,
            k: k as u32,
            rows: d.rows,
            m: m as u32,
            tiles_n: d.tiles_n,
            tiles_m: d.tiles_m,
            base_d: q.base_d,
            base_c: q.base_c,
            base_s: q.base_s,
            add_residual: u32::from(target.residual.is_some()),
            _pad: [0; 3],
        })
    }

    fn float_product(
        &self,
        xd: &DeviceTensor,
        m: usize,
        k: usize,
        wd: &DeviceWeight,
        target: &Target<'_>,
    ) -> Result<()> {
        let kernels = (
            Kernel::Matvec {
                kind: wd.kind,
                m: m as u32,
                rows: self.decode_rows(m),
            },
            Kernel::Matmul { kind: wd.kind },
        );
        let x = (xd.buffer(), xd.bytes());
        self.product(kernels, x, m, wd, target, |d| MatmulParams {
            dims: d.dims,
            out: d.out,
            k: k as u32,
            rows: d.rows,
            m: m as u32,
            tiles_n: d.tiles_n,
            tiles_m: d.tiles_m,
            _pad: [0; 3],
        })
    }

    /// Dispatches the decode kernel (up to eight rows) or the tiled one over the parts of
    /// `wd`'s buffers that hold `target`'s rows, with `params(dispatch)` as each uniform.
    fn product<P: bytemuck::Pod>(
        &self,
        (decode_kernel, tiled_kernel): (Kernel, Kernel),
        x: (&::wgpu::Buffer, u64),
        m: usize,
        wd: &DeviceWeight,
        target: &Target<'_>,
        params: impl Fn(&Dispatch) -> P,
    ) -> Result<()> {
        let widths: Vec<u32> = target.outs.iter().map(|&(_, n)| n).collect();
        let n: u32 = widths.iter().sum();
        let (seg1, seg2) = match widths[..] {
            [a, b, _] => (a, a + b),
            [a, _] => (a, n),
            [_] => (n, n),
            _ => return Err(Error::Internal("a product writes one to three outputs")),
        };
        let decode = m <= MATVEC_MAX_ROWS;
        let per_group = match decode_kernel {
            Kernel::Matvec { rows, .. } | Kernel::Int8Matvec { rows, .. } => rows,
            _ => MATVEC_ROWS_PER_GROUP,
        };
        let pipeline = self.kernel(if decode { decode_kernel } else { tiled_kernel })?;
        let output = |i: usize| {
            target
                .outs
                .get(i)
                .map_or((&self.dummy_write, 256), |(t, _)| (t.buffer(), t.bytes()))
        };
        let (first, end) = (target.first_row, target.first_row + n);
        let mut rec = self.recorder()?;
        for part in wd.parts.iter() {
            let lo = first.max(part.row_start);
            let hi = end.min(part.row_start + part.rows);
            if lo >= hi {
                continue;
            }
            let rows = hi - lo;
            let tiles_n = rows.div_ceil(MATMUL_TILE);
            let tiles_m = (m as u32).div_ceil(MATMUL_TILE);
            let groups = if decode {
                grid(rows.div_ceil(per_group))
            } else {
                grid(tiles_n * tiles_m)
            };
            let dispatch = Dispatch {
                dims: WeightDims {
                    first_row: lo - part.row_start,
                    ..wd.dims
                },
                out: Outputs {
                    n,
                    offset: lo - first,
                    seg1,
                    seg2,
                },
                rows,
                tiles_n,
                tiles_m,
            };
            rec.dispatch(
                pipeline.clone(),
                &[
                    (&part.words, part.words.size()),
                    self.scales_or_dummy(part.scales.as_ref()),
                    self.scales_or_dummy(part.mins.as_ref()),
                    x,
                    output(0),
                    target.residual.unwrap_or((&self.dummy_read, 256)),
                    output(1),
                    output(2),
                ],
                &params(&dispatch),
                groups,
            );
        }
        Ok(())
    }
}

/// What a product computes: buffer rows `first_row..` of a weight (or a whole stack), into
/// one output per weight, each with its column count, in row order.
struct Target<'a> {
    first_row: u32,
    outs: &'a [(&'a DeviceTensor, u32)],
    /// Added in the epilogue (int8 products of one weight only).
    residual: Option<(&'a ::wgpu::Buffer, u64)>,
}

/// One dispatch of a product: the rows of one buffer part it computes.
struct Dispatch {
    dims: WeightDims,
    out: Outputs,
    rows: u32,
    tiles_n: u32,
    tiles_m: u32,
}
