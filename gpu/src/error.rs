//! The error type of the compute layer.

/// Errors raised by backends and format decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operands whose shapes do not fit the operation; a bug in the caller, reported not panicked.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// Raw tensor bytes that do not match the declared dtype and shape.
    #[error("tensor data for {dtype:?} {rows}x{cols} must be {expected} bytes, got {actual}")]
    DataSize {
        dtype: crate::SourceDType,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    /// A row length that the block format cannot split into whole blocks.
    #[error("{dtype:?} stores blocks of {block} values; a row of {cols} is not a whole number of blocks")]
    PartialBlock {
        dtype: crate::SourceDType,
        block: usize,
        cols: usize,
    },
    /// A broken internal invariant, reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A request the backend cannot run (an unsupported size or setting).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The GPU or its driver failed: no adapter, a lost device, an allocation or a kernel
    /// that failed.
    #[error("GPU: {0}")]
    Device(String),
    /// A tensor that lives on a different backend than the one asked to use it.
    #[error("tensor storage belongs to another backend ({0})")]
    ForeignStorage(&'static str),
}

/// Result alias of the compute layer.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Shape {
        op,
        detail: detail.into(),
    }
}
