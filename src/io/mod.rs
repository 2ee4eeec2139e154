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
//! * [`checkpoint`]: checkpoints of long runs (`--resume`), stop signals and exit statuses.
//! * [`kernels`]: `KERNEL_SOURCES`, every `kernels/*.cu`/`*.cuh` embedded by `build.rs`.

pub mod checkpoint;
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
/// never sees a half-written file and an existing file is replaced whole. Every output
/// file of the tool goes through here: a run killed at any moment leaves either the old
/// file, the new one, or no file under the final name, never a partial one (at most a
/// hidden temporary `.NAME.tmpPID` beside it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Under MPI only rank 0 writes outputs (see `crate::dist`).
    if !crate::dist::is_root() {
        return Ok(());
    }
    write_atomic_with(path, bytes, || checkpoint::test_point("output-write"))?;
    checkpoint::test_log_write(path);
    remove_stale_temps(path);
    Ok(())
}

/// Removes the temporary siblings of `path` (`.NAME.tmpPID`) left by processes that no
/// longer run (killed while writing it).
pub(crate) fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: `kill` with signal 0 only asks whether the process exists.
        let alive = pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The temporary sibling [`write_atomic`] writes before renaming onto `path`.
pub fn temp_path(path: &Path) -> Result<std::path::PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("not a file path: {}", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// [`write_atomic`] with `mid_write` called when half of the bytes are in the temporary
/// file (the fault-injection tests pause there; see [`checkpoint::test_point`]).
pub(crate) fn write_atomic_with(path: &Path, bytes: &[u8], mid_write: impl FnOnce()) -> Result<()> {
    use std::io::Write;
    let tmp = temp_path(path)?;
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])?;
        f.flush()?;
        mid_write();
        f.write_all(&bytes[half..])?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every file system allows it).
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Checks before long work that `path` can be written: its folder exists (it is
/// created if missing) and a file can be created there. A one-line error otherwise.
pub fn probe_output(path: &Path) -> Result<()> {
    if !crate::dist::is_root() {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if path.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{}: is a folder, not a file path",
            path.display()
        )));
    }
    let probe = temp_path(path)?;
    std::fs::File::create(&probe).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("cannot write here: {e}")),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
