//! `x · Wᵀ`. Integer weights take int8 activations by default (dynamic quantization, the CPU
//! backend's arithmetic, int8.wgsl); float weights, and every weight under
//! `Activations::F32`, take f32 activations (matvec.wgsl, matmul.wgsl). Each path has a
//! decode kernel for up to eight rows and a tiled one beyond, summing in the same order, so
//! the choice never changes a row's result.

use super::buffers::DeviceTensor;
use super::encoder::grid;
use super::kernels::{
    Int8Params, Kernel, MatmulParams, QuantizeParams, ELEMENT_GROUP, MATMUL_TILE, MATVEC_MAX_ROWS,
    MATVEC_ROWS_PER_GROUP,
};
use super::weights::{DeviceWeight, WeightPart};
use super::{device_of, weight_of, Activations, WgpuBackend};
use crate::error::{shape_err, Result};
use crate::tensor::{Tensor, Weight};
use lowbit_shaders::WeightKind;

/// Activations quantized by quantize.wgsl: packed words, then block scales, c and Σq.
struct QuantizedX {
    buffer: DeviceTensor,
    base_d: u32,
    base_c: u32,
    base_s: u32,
}

impl WgpuBackend {
    fn uses_int8(&self, w: &DeviceWeight) -> bool {
        self.options.activations == Activations::Int8
            && matches!(w.kind, WeightKind::Q8 | WeightKind::Q4 | WeightKind::Q4M)
    }

    fn quantize_x(&self, x: &Tensor) -> Result<QuantizedX> {
        let (m, k) = (x.rows(), x.cols());
        let xd = device_of(x)?;
        let blocks = m * k / 32;
        let (base_d, base_c, base_s) = (m * k / 4, m * k / 4 + blocks, m * k / 4 + 2 * blocks);
        let buffer = self.alloc(m * k / 4 + 3 * blocks, 1)?;
        let (groups, grid_x) = {
            let g = grid((blocks as u32).div_ceil(ELEMENT_GROUP));
            (g, g.0 * ELEMENT_GROUP)
        };
        let params = QuantizeParams {
            k: k as u32,
            m: m as u32,
            base_d: base_d as u32,
            base_c: base_c as u32,
            base_s: base_s as u32,
            grid_x,
            _pad: [0; 2],
        };
        let pipeline = self.kernel(Kernel::Quantize)?;
        self.recorder()?.dispatch(
            pipeline,
            &[
                (xd.buffer(), xd.bytes()),
                (&self.dummy_read, 256),
                (buffer.buffer(), buffer.bytes()),
            ],
            &params,
            groups,
        );
        Ok(QuantizedX {
            buffer,
            base_d: base_d as u32,
            base_c: base_c as u32,
            base_s: base_s as u32,
        })
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
        let q = self.quantize_x(x)?;
        self.int8_product(&q, m, x.cols(), wd, &out, Some(rd))?;
        Ok(self.tensor(m, n, out))
    }

    /// `x · Wᵢᵀ` for weights sharing `x`: activations are quantized once for all of them.
    pub(super) fn linear_many(&self, x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
        let mut quantized: Option<QuantizedX> = None;
        let mut outs = Vec::with_capacity(ws.len());
        for w in ws {
            if x.cols() != w.cols() {
                return Err(shape_err(
                    "matmul",
                    format!("x has {} columns, W has {}", x.cols(), w.cols()),
                ));
            }
            let wd = weight_of(w)?;
            let (m, n) = (x.rows(), w.rows());
            let out = self.alloc(m, n)?;
            if m > 0 && n > 0 {
                if self.uses_int8(wd) {
                    if quantized.is_none() {
                        quantized = Some(self.quantize_x(x)?);
                    }
                    if let Some(q) = &quantized {
                        self.int8_product(q, m, x.cols(), wd, &out, None)?;
                    }
                } else {
                    self.float_product(device_of(x)?, m, x.cols(), wd, &out)?;
                }
            }
            outs.push(self.tensor(m, n, out));
        }
        Ok(outs)
    }

    fn int8_product(
        &self,
        q: &QuantizedX,
        m: usize,
        k: usize,
        wd: &DeviceWeight,
        out: &DeviceTensor,
        residual: Option<&DeviceTensor>,
    ) -> Result<()> {
        let kernels = (
            Kernel::Int8Matvec {
                kind: wd.kind,
                m: m as u32,
            },
            Kernel::Int8Matmul { kind: wd.kind },
        );
        let x = (q.buffer.buffer(), q.buffer.bytes());
        let res = residual.map(|r| (r.buffer(), r.bytes()));
        self.product(
            kernels,
            x,
            m,
            wd,
            (out, res),
            |part, n, tiles_n, tiles_m| Int8Params {
                dims: wd.dims,
                k: k as u32,
                rows: part.rows,
                out_stride: n,
                out_offset: part.row_start,
                m: m as u32,
                tiles_n,
                tiles_m,
                base_d: q.base_d,
                base_c: q.base_c,
                base_s: q.base_s,
                add_residual: u32::from(residual.is_some()),
                _pad: 0,
            },
        )
    }

    fn float_product(
        &self,
        xd: &DeviceTensor,
        m: usize,
        k: usize,
        wd: &DeviceWeight,
        out: &DeviceTensor,
    ) -> Result<()> {
        let kernels = (
            Kernel::Matvec {
                kind: wd.kind,
                m: m as u32,
            },
            Kernel::Matmul { kind: wd.kind },
        );
        let x = (xd.buffer(), xd.bytes());
        // matvec.wgsl reads the leading fields of the same parameters.
        self.product(
            kernels,
            x,
            m,
            wd,
            (out, None),
            |part, n, tiles_n, tiles_m| MatmulParams {
                dims: wd.dims,
                k: k as u32,
                rows: part.rows,
                out_stride: n,
                out_offset: part.row_start,
                m: m as u32,
                tiles_n,
                tiles_m,
                _pad: 0,
            },
        )
    }

    /// Dispatches the decode kernel (up to eight rows) or the tiled one over every part of
    /// `wd`, with `params(part, n, tiles_n, tiles_m)` as each dispatch's uniform.
    fn product<P: bytemuck::Pod>(
        &self,
        (decode_kernel, tiled_kernel): (Kernel, Kernel),
        x: (&::wgpu::Buffer, u64),
        m: usize,
        wd: &DeviceWeight,
        (out, residual): (&DeviceTensor, Option<(&::wgpu::Buffer, u64)>),
        params: impl Fn(&WeightPart, u32, u32, u32) -> P,
    ) -> Result<()> {
        let decode = m <= MATVEC_MAX_ROWS;
        let pipeline = self.kernel(if decode { decode_kernel } else { tiled_kernel })?;
        let n: u32 = wd.parts.iter().map(|p| p.rows).sum();
        let mut rec = self.recorder()?;
        for part in &wd.parts {
            let tiles_n = part.rows.div_ceil(MATMUL_TILE);
            let tiles_m = (m as u32).div_ceil(MATMUL_TILE);
            let groups = if decode {
                grid(part.rows.div_ceil(MATVEC_ROWS_PER_GROUP))
            } else {
                grid(tiles_n * tiles_m)
            };
            rec.dispatch(
                pipeline.clone(),
                &[
                    (&part.words, part.words.size()),
                    self.scales_or_dummy(part.scales.as_ref()),
                    self.scales_or_dummy(part.mins.as_ref()),
                    x,
                    (out.buffer(), out.bytes()),
                    residual.unwrap_or((&self.dummy_read, 256)),
                ],
                &params(part, n, tiles_n, tiles_m),
                groups,
            );
        }
        Ok(())
    }
}
