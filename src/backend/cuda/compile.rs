//! NVRTC compilation of the embedded kernels (`kernels/*.cu`, embedded by `build.rs`).
//!
//! Kernels are plain CUDA C with no includes, so NVRTC needs no toolkit headers.
//! [`compile_all_kernels`] needs only `libnvrtc`, no device: CI uses it to fail on any
//! compile error on a CPU-only machine.

use crate::error::{Error, Result};
use crate::io::kernels::{kernel_source, kernel_sources};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// Whether `libnvrtc` can be loaded (cudarc panics on first use when it cannot).
pub fn nvrtc_available() -> bool {
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one embedded kernel file for `arch` (e.g. `"compute_90"`).
pub fn compile_kernel_file(file: &str, arch: &'static str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(Error::Cuda(
            "NVRTC (libnvrtc.so) was not found; add its directory to LD_LIBRARY_PATH".into(),
        ));
    }
    let src = kernel_source(file)
        .ok_or_else(|| Error::Cuda(format!("no embedded kernel file named {file}")))?;
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(file.to_string()),
        // IEEE-exact division and square roots: results are compared with the CPU f64 path.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Cuda(format!(
            "NVRTC failed to compile {file} for {arch}:\n{}",
            log.to_string_lossy()
        )),
        other => Error::Cuda(format!("NVRTC failed on {file}: {other:?}")),
    })
}

/// Compiles every embedded `.cu` file for `arch`; returns `(file, PTX length)` pairs.
pub fn compile_all_kernels(arch: &'static str) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for (name, _) in kernel_sources() {
        if !name.ends_with(".cu") {
            continue;
        }
        let ptx = compile_kernel_file(name, arch)?;
        out.push((name.to_string(), ptx.to_src().len()));
    }
    Ok(out)
}
