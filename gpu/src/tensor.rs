//! Activations ([`Tensor`]) and weight matrices ([`Weight`]) as a backend holds them.
//!
//! Both are 2-D and row-major. A backend owns the storage; the model only passes handles
//! around, so the same model code drives the CPU backend now and the wgpu backend later.

use crate::cpu::packed::PackedWeight;
use crate::error::{shape_err, Error, Result};
use crate::quant::{QTensor, QuantFormat};
use crate::wgpu::buffers::DeviceTensor;
use crate::wgpu::weights::DeviceWeight;

/// Where a tensor's values live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Host memory, f32, row-major.
    Host(Vec<f32>),
    /// A GPU buffer of the wgpu backend, f32, row-major.
    Device(DeviceTensor),
}

/// An activation matrix of `rows × cols` f32 values (one row per token).
#[derive(Debug, Clone)]
pub struct Tensor {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl Tensor {
    /// Wraps host values; `data.len()` must be `rows * cols`.
    pub fn from_host(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "Tensor::from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        Ok(Self {
            rows,
            cols,
            storage: Storage::Host(data),
        })
    }

    /// Wraps a GPU buffer holding at least `rows * cols` values.
    pub fn from_device(rows: usize, cols: usize, buffer: DeviceTensor) -> Self {
        Self {
            rows,
            cols,
            storage: Storage::Device(buffer),
        }
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage, for backends.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Host values, or an error if the tensor lives elsewhere.
    pub fn host(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Device(_) => Err(Error::ForeignStorage("wgpu")),
        }
    }

    /// The same values as `rows × cols` (row-major, so a row of `k·c` values becomes `k`
    /// rows of `c`: heads as rows). Moves the storage; copies nothing.
    pub fn reshape(self, rows: usize, cols: usize) -> Result<Self> {
        if rows * cols != self.rows * self.cols {
            return Err(shape_err(
                "reshape",
                format!("{}x{} into {rows}x{cols}", self.rows, self.cols),
            ));
        }
        Ok(Self {
            rows,
            cols,
            storage: self.storage,
        })
    }

    /// Consumes the tensor and returns its host values.
    pub fn into_host(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Device(_) => Err(Error::ForeignStorage("wgpu")),
        }
    }
}

/// How a backend keeps a weight matrix.
#[derive(Debug)]
pub enum WeightStorage {
    /// Host memory, in the weight's own format (kernels dequantize on the fly).
    Host(QTensor),
    /// Host memory, an integer format in the CPU's interleaved layout.
    HostPacked(PackedWeight),
    /// GPU buffers of the wgpu backend, in the weight's own format.
    Device(DeviceWeight),
}

/// A weight matrix of `rows × cols` (`N × K`): a linear layer computes `y = x · Wᵀ`.
#[derive(Debug)]
pub struct Weight {
    rows: usize,
    cols: usize,
    storage: WeightStorage,
}

impl Weight {
    /// Wraps storage; the backend that made it vouches for its size.
    pub fn new(rows: usize, cols: usize, storage: WeightStorage) -> Self {
        Self {
            rows,
            cols,
            storage,
        }
    }

    /// Output features (N).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (K).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage, for backends.
    pub fn storage(&self) -> &WeightStorage {
        &self.storage
    }

    /// Row `r` decoded to f32, for a weight in host memory.
    pub fn host_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        match &self.storage {
            WeightStorage::Host(q) => q.dequantize_row(r, out),
            WeightStorage::HostPacked(p) => p.dequantize_row(r, out),
            WeightStorage::Device(_) => return Err(Error::ForeignStorage("wgpu")),
        }
        Ok(())
    }

    /// The format the weight is kept in.
    pub fn format(&self) -> QuantFormat {
        match &self.storage {
            WeightStorage::Host(q) => q.format,
            WeightStorage::HostPacked(p) => p.format,
            WeightStorage::Device(d) => d.format,
        }
    }

    /// Bytes this weight occupies in its backend's memory.
    pub fn resident_bytes(&self) -> usize {
        match &self.storage {
            WeightStorage::Host(q) => q.resident_bytes(),
            WeightStorage::HostPacked(p) => p.resident_bytes(),
            WeightStorage::Device(d) => d.bytes,
        }
    }
}
