//! `x · Wᵀ`: the decode kernel for up to eight rows, the tiled kernel beyond. Both sum in the
//! same order (matvec.wgsl), so the choice never changes a row's result.

use super::encoder::grid;
use super::kernels::{
    Kernel, MatmulParams, MatvecParams, MATMUL_TILE, MATVEC_MAX_ROWS, MATVEC_ROWS_PER_GROUP,
};
use super::{device_of, weight_of, WgpuBackend};
use crate::error::{shape_err, Result};
use crate::tensor::{Tensor, Weight};

impl WgpuBackend {
    pub(super) fn linear(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        if x.cols() != w.cols() {
            return Err(shape_err(
                "matmul",
                format!("x has {} columns, W has {}", x.cols(), w.cols()),
            ));
        }
        let (m, k, n) = (x.rows(), w.cols(), w.rows());
        let xd = device_of(x)?;
        let wd = weight_of(w)?;
        let out = self.alloc(m, n)?;
        if m == 0 || n == 0 {
            return Ok(self.tensor(m, n, out));
        }
        let decode = m <= MATVEC_MAX_ROWS;
        let pipeline = self.kernel(if decode {
            Kernel::Matvec {
                kind: wd.kind,
                m: m as u32,
            }
        } else {
            Kernel::Matmul { kind: wd.kind }
        })?;
        let mut rec = self.recorder()?;
        for part in &wd.parts {
            let buffers = [
                (&part.words, part.words.size()),
                self.scales_or_dummy(part.scales.as_ref()),
                self.scales_or_dummy(part.mins.as_ref()),
                (xd.buffer(), xd.bytes()),
                (out.buffer(), out.bytes()),
            ];
            if decode {
                let params = MatvecParams {
                    dims: wd.dims,
                    k: k as u32,
                    rows: part.rows,
                    out_stride: n as u32,
                    out_offset: part.row_start,
                };
                let groups = part.rows.div_ceil(MATVEC_ROWS_PER_GROUP);
                rec.dispatch(pipeline.clone(), &buffers, &params, grid(groups));
            } else {
                let tiles_n = part.rows.div_ceil(MATMUL_TILE);
                let tiles_m = (m as u32).div_ceil(MATMUL_TILE);
                let params = MatmulParams {
                    dims: wd.dims,
                    k: k as u32,
                    rows: part.rows,
                    out_stride: n as u32,
                    out_offset: part.row_start,
                    m: m as u32,
                    tiles_n,
                    tiles_m,
                    _pad: 0,
                };
                rec.dispatch(pipeline.clone(), &buffers, &params, grid(tiles_n * tiles_m));
            }
        }
        Ok(self.tensor(m, n, out))
    }
}
