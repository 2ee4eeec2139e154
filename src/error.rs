//! Library error type. The binary turns these into one-line messages.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is malformed: names the file, what is wrong and where.
    #[error("{path}: {what} (at {location})")]
    MalformedData {
        path: PathBuf,
        what: String,
        location: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Shapes or configuration that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An option value or combination that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A model file that cannot be read as an MLP.
    #[error("model file {path}: {what}")]
    Model { path: PathBuf, what: String },
    /// Training produced a non-finite value.
    #[error("non-finite {what} at epoch {epoch}, step {step}: training stopped (try a smaller learning rate)")]
    NonFinite {
        what: String,
        epoch: usize,
        step: usize,
    },
    /// Input values that are not finite (NaN/Inf) where numbers are required.
    #[error("non-finite value: {0}")]
    NonFiniteInput(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No usable CUDA device, or a CUDA driver/NVRTC/cuBLAS call failed.
    #[error("{0}")]
    Cuda(String),
    /// A checkpoint that cannot be written, found or used.
    #[error(transparent)]
    Checkpoint(#[from] crate::io::checkpoint::CheckpointError),
    /// A stop signal arrived; the state is in the checkpoint folder.
    #[error("interrupted by {signal} at {position}; checkpoint written to {}: continue with the same command and --resume {}", .dir.display(), .dir.display())]
    Interrupted {
        signal: String,
        position: String,
        dir: PathBuf,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn malformed(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        location: impl Into<String>,
    ) -> Self {
        Error::MalformedData {
            path: path.into(),
            what: what.into(),
            location: location.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
