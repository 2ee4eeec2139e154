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
    write_atomic_parts(path, &[bytes])
}

/// Files kept by [`capture_writes`]: path and content, in the order first written.
pub type CapturedFiles = Vec<(std::path::PathBuf, Vec<u8>)>;

thread_local! {
    /// The files written on this thread inside [`capture_writes`].
    static CAPTURE: std::cell::RefCell<Option<CapturedFiles>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every [`write_atomic`] on this thread kept instead of written: the
/// files (path and last content of each, in the order first written) come back with
/// `f`'s value. An MPI work item that writes files (a sphere run's folder) runs inside
/// it on whichever rank, and rank 0 writes the files with [`write_captured`].
pub fn capture_writes<T>(f: impl FnOnce() -> T) -> (T, CapturedFiles) {
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let v = f();
    let files = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    (v, files.unwrap_or_default())
}

/// Writes files kept by [`capture_writes`] (creating their folders; rank 0 only).
pub fn write_captured(files: &[(std::path::PathBuf, Vec<u8>)]) -> Result<()> {
    if !crate::dist::is_root() {
        return Ok(());
    }
    for (path, bytes) in files {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic(path, bytes)?;
    }
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
    write_atomic_parts_with(path, &[bytes], mid_write)
}

/// [`write_atomic`] of the concatenation of `parts`, written one after another without
/// first joining them (a dense Hessian's hundreds of MiB go from the matrix to the file).
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> Result<()> {
    // Inside `capture_writes` the file (joined) is kept for the caller instead.
    let captured = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let Some(files) = c.as_mut() else {
            return false;
        };
        let bytes = parts.concat();
        match files.iter_mut().find(|f| f.0 == path) {
            Some(f) => f.1 = bytes,
            None => files.push((path.to_path_buf(), bytes)),
        }
        true
    });
    if captured {
        return Ok(());
    }
    // Under MPI only rank 0 writes outputs (see `crate::dist`).
    if !crate::dist::is_root() {
        return Ok(());
    }
    write_atomic_parts_with(path, parts, || checkpoint::test_point("output-write"))?;
    checkpoint::test_log_write(path);
    remove_stale_temps(path);
    Ok(())
}

/// [`write_atomic_with`] of the concatenation of `parts`; `mid_write` runs after the
/// first half of the bytes.
fn write_atomic_parts_with(path: &Path, parts: &[&[u8]], mid_write: impl FnOnce()) -> Result<()> {
    use std::io::Write;
    let tmp = temp_path(path)?;
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut before_hook = total / 2;
        let mut mid_write = Some(mid_write);
        for part in parts {
            let head = before_hook.min(part.len());
            f.write_all(&part[..head])?;
            before_hook -= head;
            if before_hook == 0 {
                if let Some(hook) = mid_write.take() {
                    f.flush()?;
                    hook();
                }
            }
            f.write_all(&part[head..])?;
        }
        if let Some(hook) = mid_write.take() {
            f.flush()?;
            hook();
        }
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

/// Bytes the output probe writes and syncs: a full disk fails there, before the long
/// work, rather than at the end of it.
const PROBE_BYTES: usize = 64 << 10;

/// Checks before long work that `path` can be written: its folder exists (it is
/// created if missing), a file can be created there, and [`PROBE_BYTES`] can be written
/// and synced to it (a full disk is refused here). A one-line error otherwise.
pub fn probe_output(path: &Path) -> Result<()> {
    probe_output_sized(path, 0)
}

/// [`probe_output`], and the file system holding `path` has at least `expected_bytes`
/// free (the size of an output known in advance, e.g. a dense Hessian).
pub fn probe_output_sized(path: &Path, expected_bytes: u64) -> Result<()> {
    if !crate::dist::is_root() {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a folder, not a file path",
            ),
        ));
    }
    if let Some(free) = free_bytes(dir) {
        check_free_space(
            path,
            expected_bytes.saturating_add(PROBE_BYTES as u64),
            free,
        )?;
    }
    let probe = temp_path(path)?;
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("cannot write here: {e}")),
        )
    })
}

/// [`probe_output`] for an output folder: creates it and probes a file inside.
pub fn probe_dir(dir: &Path) -> Result<()> {
    if dir.is_file() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "is a file, not a folder"),
        ));
    }
    probe_output(&dir.join(".landscape-probe"))
}

/// Refuses to start when `needed` bytes exceed the `free` bytes of `path`'s file system.
pub fn check_free_space(path: &Path, needed: u64, free: u64) -> Result<()> {
    if needed > free {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "cannot write here: the output needs {:.2} MiB but its file system has {:.2} MiB free",
                    needed as f64 / (1u64 << 20) as f64,
                    free as f64 / (1u64 << 20) as f64
                ),
            ),
        ));
    }
    Ok(())
}

/// Free bytes (available to this user) of the file system holding `dir`, if known.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod capture_tests {
    use super::*;

    /// Streamed writes (`write_atomic_parts`, used by `write_safetensors`) are captured
    /// like plain ones: nothing reaches the disk, and the captured bytes are the join.
    #[test]
    fn streamed_writes_are_captured_whole() {
        let path = std::env::temp_dir().join(format!("landscape-cap-{}.bin", std::process::id()));
        let ((), files) = capture_writes(|| {
            write_atomic_parts(&path, &[b"ab", b"", b"cde"]).unwrap();
            write_atomic(&path.with_extension("txt"), b"x").unwrap();
        });
        assert!(!path.exists());
        assert_eq!(files.len(), 2);
        assert_eq!(files[0], (path.clone(), b"abcde".to_vec()));
    }
}
