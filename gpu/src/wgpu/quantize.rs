//! Int8 activations (dynamic quantization, quantize.wgsl): a tensor's values as int8 per
//! 32-block with their scales, which the integer products read. They are made by the plain
//! quantize kernel just before a product, or, with int8 activations, by RMSNorm and SwiGLU in
//! the same pass as their f32 result: the int8 form then travels with the tensor they return
//! ([`DeviceTensor::int8`]) and the layer's products skip a dispatch each (three per layer:
//! its two norms and its SwiGLU). Both ways give the same bits (tested).

use super::buffers::DeviceTensor;
use super::encoder::grid;
use super::kernels::{Kernel, QuantizeParams, ELEMENT_GROUP};
use super::{device_of, Activations, WgpuBackend};
use crate::checks;
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Values per quantization block.
const BLOCK: usize = 32;

/// An `rows × cols` activation in quantize.wgsl's layout, in one u32 buffer: every row's
/// packed int8 words, then each block's scale d, c = d·Σq and Σq.
#[derive(Debug)]
pub struct Int8Activations {
    pub buffer: DeviceTensor,
    rows: usize,
    cols: usize,
    pub base_d: u32,
    pub base_c: u32,
    pub base_s: u32,
}

impl Int8Activations {
    /// Words of the layout for `rows × cols` values.
    fn words(rows: usize, cols: usize) -> usize {
        rows * cols / 4 + 3 * (rows * cols / BLOCK)
    }

    fn new(buffer: DeviceTensor, rows: usize, cols: usize) -> Self {
        let (words, blocks) = (rows * cols / 4, rows * cols / BLOCK);
        Self {
            buffer,
            rows,
            cols,
            base_d: words as u32,
            base_c: (words + blocks) as u32,
            base_s: (words + 2 * blocks) as u32,
        }
    }

    fn params(&self, grid_x: u32, eps: f32) -> QuantizeParams {
        QuantizeParams {
            k: self.cols as u32,
            m: self.rows as u32,
            base_d: self.base_d,
            base_c: self.base_c,
            base_s: self.base_s,
            grid_x,
            eps,
            _pad: 0,
        }
    }
}

impl WgpuBackend {
    /// Whether RMSNorm and SwiGLU quantize their results as they write them: products take
    /// int8 activations, an integer weight is loaded (a float model would never read them),
    /// rows are whole blocks, and the option is on.
    fn quantizes_results(&self, cols: usize) -> bool {
        self.options.fuse_quantize
            && self.options.activations == Activations::Int8
            && self.integer_weights.load(Ordering::Relaxed)
            && cols > 0
            && cols.is_multiple_of(BLOCK)
    }

    /// `x`'s int8 form: the one made with its values, or quantized now.
    pub(super) fn int8_of(&self, x: &Tensor) -> Result<Arc<Int8Activations>> {
        let (m, k) = (x.rows(), x.cols());
        let xd = device_of(x)?;
        if let Some(q) = xd.int8().filter(|q| (q.rows, q.cols) == (m, k)) {
            return Ok(Arc::clone(q));
        }
        let q = Int8Activations::new(self.alloc(Int8Activations::words(m, k), 1)?, m, k);
        let blocks = (m * k / BLOCK) as u32;
        let groups = grid(blocks.div_ceil(ELEMENT_GROUP));
        let params = q.params(groups.0 * ELEMENT_GROUP, 0.0);
        self.recorder()?.dispatch(
            self.kernel(Kernel::Quantize)?,
            &[
                (xd.buffer(), xd.bytes()),
                (&self.dummy_read, 256),
                (&self.dummy_write, 256),
                (q.buffer.buffer(), q.buffer.bytes()),
            ],
            &params,
            groups,
        );
        Ok(Arc::new(q))
    }

    /// RMSNorm that also quantizes its result, where [`Self::quantizes_results`] says so.
    pub(super) fn norm_quantizing(
        &self,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<Option<Tensor>> {
        if !self.quantizes_results(x.cols()) {
            return Ok(None);
        }
        checks::norm_weight(x, weight)?;
        self.quantizing(Kernel::RmsNormQuantize, x, weight, eps)
            .map(Some)
    }

    /// SwiGLU that also quantizes its result, where [`Self::quantizes_results`] says so.
    pub(super) fn silu_mul_quantizing(&self, gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        if !self.quantizes_results(gate.cols()) {
            return Ok(None);
        }
        checks::same_shape("silu_mul", gate, up)?;
        self.quantizing(Kernel::SiluMulQuantize, gate, up, 0.0)
            .map(Some)
    }

    /// GeGLU that also quantizes its result, where [`Self::quantizes_results`] says so.
    pub(super) fn gelu_mul_quantizing(&self, gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        if !self.quantizes_results(gate.cols()) {
            return Ok(None);
        }
        checks::same_shape("gelu_mul", gate, up)?;
        self.quantizing(Kernel::GeluMulQuantize, gate, up, 0.0)
            .map(Some)
    }

    /// Runs one of quantize.wgsl's producing entries: its f32 result, with the int8 form
    /// attached.
    fn quantizing(&self, kernel: Kernel, a: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, cols) = (a.rows(), a.cols());
        let (ad, bd) = (device_of(a)?, device_of(b)?);
        let out = self.alloc(rows, cols)?;
        if rows == 0 {
            return Ok(self.tensor(rows, cols, out));
        }
        let q = Int8Activations::new(
            self.alloc(Int8Activations::words(rows, cols), 1)?,
            rows,
            cols,
        );
        let (groups, grid_x) = if kernel == Kernel::RmsNormQuantize {
            // One workgroup per row.
            let g = grid(rows as u32);
            (g, g.0)
        } else {
            // One thread per block.
            let g = grid(((rows * cols / BLOCK) as u32).div_ceil(ELEMENT_GROUP));
            (g, g.0 * ELEMENT_GROUP)
        };
        self.recorder()?.dispatch(
            self.kernel(kernel)?,
            &[
                (ad.buffer(), ad.bytes()),
                (bd.buffer(), bd.bytes()),
                (out.buffer(), out.bytes()),
                (q.buffer.buffer(), q.buffer.bytes()),
            ],
            &q.params(grid_x, eps),
            groups,
        );
        Ok(self.tensor(rows, cols, out.with_int8(q)))
    }
}
