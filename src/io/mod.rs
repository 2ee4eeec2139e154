//! Files in and out: model files (safetensors), NumPy exports, results JSON with
//! provenance, and the embedded CUDA kernel sources.
//!
//! * [`model_file`]: `Mlp` <-> safetensors (`layers.{p}.weight`, ... plus a
//!   `landscape-mlp` metadata block), and import of PyTorch `nn.Sequential` state dicts.
//! * [`npy`]: `.npy` v1.0 writer/reader and [`npy::export_model`] (parameter vector,
//!   one file per tensor, `manifest.json`).
//! * [`provenance`]: who/what/when produced an output (version, git commit, argv, seed,
//!   dataset, config, threads, time).
//! * [`results`]: `{ "command", "results", "provenance" }` JSON result files.
//! * [`kernels`]: `KERNEL_SOURCES`, every `kernels/*.cu`/`*.cuh` embedded by `build.rs`.

pub mod kernels;
pub mod model_file;
pub mod network_file;
pub mod npy;
pub mod provenance;
pub mod results;

pub use model_file::{load_mlp, load_mlp_f64, read_metadata, save_mlp, ImportOptions};
pub use network_file::{load_network, save_network, NetworkImport};
pub use npy::{export_model, ExportFormat};
pub use provenance::Provenance;
pub use results::write_json;

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a sibling temporary file and a rename, so a reader
/// never sees a half-written file and an existing file is replaced whole.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("not a file path: {}", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
