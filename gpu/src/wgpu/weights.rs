//! Weights on the GPU: uploaded once, still quantized, in the struct-of-arrays layout the
//! kernels read (quant/qtensor.rs), split by rows where a tensor is larger than one binding
//! may be. Weights that multiply the same activations (a layer's Q/K/V, its gate/up) may be
//! uploaded as one stack, so that their products run as one dispatch (linear.rs).

use super::device::Gpu;
use super::kernels::WeightDims;
use crate::error::{Error, Result};
use crate::quant::qtensor::words_per_row;
use crate::quant::{Codebook, QTensor, QuantFormat};
use ::wgpu::util::DeviceExt;
use lowbit_shaders::WeightKind;
use std::sync::Arc;

/// Rows `row_start..row_start + rows` of a weight, in buffers of their own.
#[derive(Debug)]
pub struct WeightPart {
    pub row_start: u32,
    pub rows: u32,
    pub words: ::wgpu::Buffer,
    /// f16 scales in pairs per u32 (absent for the float formats).
    pub scales: Option<::wgpu::Buffer>,
    /// f16 mins in pairs per u32 (Q4M only).
    pub mins: Option<::wgpu::Buffer>,
}

/// A weight matrix resident on the GPU: rows `stack_row..stack_row + rows` of its buffers,
/// which it shares with the other weights of its stack (or, alone, all of them).
#[derive(Debug)]
pub struct DeviceWeight {
    pub format: QuantFormat,
    pub kind: WeightKind,
    pub dims: WeightDims,
    pub parts: Arc<Vec<WeightPart>>,
    pub stack_row: u32,
    pub rows: u32,
    /// Rows of the buffers (the whole stack's).
    pub stack_rows: u32,
    /// This weight's own bytes (a stack's are its weights' sum).
    pub bytes: usize,
}

impl DeviceWeight {
    /// Whether the weight shares its buffers with others.
    pub fn is_stacked(&self) -> bool {
        self.rows != self.stack_rows
    }
}

/// Whether `ws` are a whole stack, in its order: their products are then one dispatch.
pub fn whole_stack(ws: &[&DeviceWeight]) -> bool {
    let Some(first) = ws.first() else {
        return false;
    };
    let mut next_row = 0;
    for w in ws {
        if !Arc::ptr_eq(&w.parts, &first.parts) || w.stack_row != next_row {
            return false;
        }
        next_row += w.rows;
    }
    ws.len() > 1 && ws.len() <= MAX_STACK && next_row == first.stack_rows
}

/// Most weights in one stack: a product writes at most three outputs (products.wgsl).
pub const MAX_STACK: usize = 3;

/// The kernels' name for a format.
pub fn kind_of(format: QuantFormat) -> WeightKind {
    match format {
        QuantFormat::F32 => WeightKind::F32,
        QuantFormat::F16 => WeightKind::F16,
        QuantFormat::Q8 => WeightKind::Q8,
        QuantFormat::Q4(_) => WeightKind::Q4,
        QuantFormat::Q4M(_) => WeightKind::Q4M,
        QuantFormat::Lut4(Codebook::Fp4) => WeightKind::Fp4,
        QuantFormat::Lut4(Codebook::Iq4nl) => WeightKind::Iq4nl,
    }
}

fn f16_words(values: &[half::f16]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|pair| {
            let lo = u32::from(pair[0].to_bits());
            let hi = pair.get(1).map_or(0, |h| u32::from(h.to_bits()));
            lo | (hi << 16)
        })
        .collect()
}

fn buffer(gpu: &Gpu, label: &str, words: &[u32]) -> ::wgpu::Buffer {
    // A binding cannot be empty.
    let fallback = [0u32; 4];
    let contents: &[u32] = if words.is_empty() { &fallback } else { words };
    gpu.device
        .create_buffer_init(&::wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(contents),
            usage: ::wgpu::BufferUsages::STORAGE,
        })
}

/// Uploads `w`, split into parts of at most `max_binding` bytes per array.
pub fn upload(gpu: &Gpu, w: &QTensor, max_binding: u64) -> Result<DeviceWeight> {
    let (rows, cols) = (w.rows, w.cols);
    if !cols.is_multiple_of(8) {
        return Err(Error::Unsupported(format!(
            "the GPU kernels read rows in 8-value units; a {} row of {cols} values is not",
            w.format
        )));
    }
    let wpr = words_per_row(w.format, cols);
    let gpr = if w.format.is_quantized() {
        cols / w.format.group()
    } else {
        0
    };
    let group_shift = (w.format.group().max(32) / 32).trailing_zeros();
    // Scales of a part start on a whole u32 when the part's first row has an even index of
    // groups: keep every part's row count even unless it is the last.
    let row_bytes = (wpr * 4) as u64;
    let mut rows_per_part = (max_binding / row_bytes.max(1)).max(1) as usize;
    if rows_per_part < rows && rows_per_part > 1 {
        rows_per_part &= !1;
    }
    let has_mins = matches!(w.format, QuantFormat::Q4M(_));
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = rows_per_part.min(rows - start);
        let words = &w.words[start * wpr..(start + n) * wpr];
        let groups = start * gpr..(start + n) * gpr;
        if gpr % 2 == 1 && start % 2 == 1 {
            return Err(Error::Internal("a weight part starts inside an f16 pair"));
        }
        let scales =
            (gpr > 0).then(|| buffer(gpu, "scales", &f16_words(&w.scales[groups.clone()])));
        let mins = has_mins.then(|| buffer(gpu, "mins", &f16_words(&w.mins[groups])));
        parts.push(WeightPart {
            row_start: start as u32,
            rows: n as u32,
            words: buffer(gpu, "weights", words),
            scales,
            mins,
        });
        start += n;
    }
    Ok(DeviceWeight {
        format: w.format,
        kind: kind_of(w.format),
        dims: WeightDims {
            words_per_row: wpr as u32,
            groups_per_row: gpr as u32,
            group_shift,
            first_row: 0,
        },
        parts: Arc::new(parts),
        stack_row: 0,
        rows: rows as u32,
        stack_rows: rows as u32,
        bytes: w.resident_bytes(),
    })
}

/// Uploads `ws` (two or three weights of one format and width) as one stack: their rows one
/// after the other in shared buffers, one [`DeviceWeight`] each.
pub fn upload_stack(gpu: &Gpu, ws: &[QTensor], max_binding: u64) -> Result<Vec<DeviceWeight>> {
    let Some(first) = ws.first() else {
        return Ok(Vec::new());
    };
    if ws.len() > MAX_STACK
        || ws
            .iter()
            .any(|w| w.format != first.format || w.cols != first.cols)
    {
        return Err(Error::Internal(
            "a weight stack takes at most three weights of one format and width",
        ));
    }
    let stacked = QTensor {
        format: first.format,
        rows: ws.iter().map(|w| w.rows).sum(),
        cols: first.cols,
        words: ws.iter().flat_map(|w| w.words.iter().copied()).collect(),
        scales: ws.iter().flat_map(|w| w.scales.iter().copied()).collect(),
        mins: ws.iter().flat_map(|w| w.mins.iter().copied()).collect(),
    };
    let whole = upload(gpu, &stacked, max_binding)?;
    let mut stack_row = 0;
    Ok(ws
        .iter()
        .map(|w| {
            let member = DeviceWeight {
                format: whole.format,
                kind: whole.kind,
                dims: whole.dims,
                parts: Arc::clone(&whole.parts),
                stack_row,
                rows: w.rows as u32,
                stack_rows: whole.stack_rows,
                bytes: w.resident_bytes(),
            };
            stack_row += w.rows as u32;
            member
        })
        .collect())
}
