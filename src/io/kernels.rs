//! CUDA C sources embedded at build time.
//!
//! `build.rs` embeds every `kernels/*.cu` and `kernels/*.cuh` file of the crate into
//! [`KERNEL_SOURCES`] as `(file name, source text)` pairs sorted by file name. The CUDA
//! backend compiles them at run time with NVRTC, so the binary needs no CUDA toolkit at
//! build time and no files beside it at run time.

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// All embedded kernel sources `(file name, source)`, sorted by file name.
pub fn kernel_sources() -> &'static [(&'static str, &'static str)] {
    KERNEL_SOURCES
}

/// Source of one embedded kernel file (`"activation.cu"`), if present.
pub fn kernel_source(name: &str) -> Option<&'static str> {
    KERNEL_SOURCES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| KERNEL_SOURCES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_lists_activation_kernels() {
        assert!(KERNEL_SOURCES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(KERNEL_SOURCES
            .iter()
            .all(|(n, _)| n.ends_with(".cu") || n.ends_with(".cuh")));
        let src = kernel_source("activation.cu").expect("kernels/activation.cu is embedded");
        for act in ["relu", "leaky_relu", "tanh", "identity"] {
            for ty in ["f32", "f64"] {
                let name = format!("act_deriv_{act}_{ty}(");
                assert!(src.contains(&name), "activation.cu lacks {name}");
                assert!(src.contains(&format!(
                    "extern \"C\" __global__ void act_deriv_{act}_{ty}"
                )));
            }
        }
        assert!(src.contains("act_second_deriv_tanh_f64("));
        assert!(kernel_source("no_such_kernel.cu").is_none());
    }
}
