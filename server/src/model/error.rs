//! Errors of model loading: each names the file, and the field or tensor, that is wrong.

use super::gguf::GgufError;

/// A model that cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A malformed or unsupported GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A problem with a whole file (cannot read, not safetensors, …).
    #[error("{path}: {what}")]
    File { path: String, what: String },
    /// A missing or invalid configuration field.
    #[error("{path}: field '{field}': {what}")]
    Field {
        path: String,
        field: String,
        what: String,
    },
    /// A missing tensor or one of the wrong shape or type.
    #[error("{path}: tensor '{name}': {what}")]
    Tensor {
        path: String,
        name: String,
        what: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template is missing or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A compute-layer error while loading or running the model.
    #[error(transparent)]
    Compute(#[from] lowbit_gpu::Error),
}

/// Result alias of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn field(
        path: impl std::fmt::Display,
        field: &str,
        what: impl Into<String>,
    ) -> Self {
        Self::Field {
            path: path.to_string(),
            field: field.to_string(),
            what: what.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl std::fmt::Display,
        name: &str,
        what: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.to_string(),
            name: name.to_string(),
            what: what.into(),
        }
    }

    pub(crate) fn file(path: impl std::fmt::Display, what: impl Into<String>) -> Self {
        Self::File {
            path: path.to_string(),
            what: what.into(),
        }
    }
}
