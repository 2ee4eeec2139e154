//! The memory budget (`--memory-budget GiB`): every large allocation a command is about
//! to make is estimated *before* the work starts, for every architecture, and a plan over
//! the budget is refused with a one-line error that names its largest items.
//!
//! The estimates are of the dominant buffers only (the ones that grow with `P`, `P^2`,
//! the sample count or the Krylov dimension); small bookkeeping is not counted.
//!
//! * dense matrices: `rows * cols * 8` bytes ([`f64_matrix`]);
//! * Krylov bases with full reorthogonalisation: `(k + 1) * P * 8` ([`krylov_basis`]);
//! * the autodiff tape of a network: [`tape`], `TAPE_VALUES_PER_ACTIVATION * a * s * 8`
//!   with `a` the activation values per sample (every layer's output,
//!   [`crate::nn::Layout::activations_per_sample`]) and `s` the samples whose tapes are
//!   alive at once (chunk size times worker threads);
//! * the kept recordings of `hessian --krylov mixed`: [`recorded_tapes`],
//!   `RECORDED_VALUES_PER_ACTIVATION * a * n * 8` over all `n` samples.

use crate::error::{Error, Result};

/// Tape values per activation value of a double-backward HVP. Each layer records its
/// output, and BatchNorm/ReLU/pooling a few same-sized intermediates (forward, about
/// 3 per layer output); the backward pass records as many gradient values again, and
/// the R-pass of the HVP as many as both (so about 12). Measured peak resident memory of
/// `hessian --top 1` on the sphere ConvNet and ResNet-20 stays below this estimate
/// (tests/guard_rails.rs).
pub const TAPE_VALUES_PER_ACTIVATION: u64 = 12;

/// One buffer of a plan: what it is and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub what: String,
    pub bytes: u64,
}

/// A `rows x cols` f64 matrix.
pub fn f64_matrix(what: impl Into<String>, rows: usize, cols: usize) -> Allocation {
    Allocation {
        what: what.into(),
        bytes: (rows as u64).saturating_mul(cols as u64).saturating_mul(8),
    }
}

/// A Krylov basis of `k + 1` vectors of length `p` (Lanczos with full
/// reorthogonalisation keeps all of them).
pub fn krylov_basis(what: impl Into<String>, k: usize, p: usize) -> Allocation {
    f64_matrix(what, k.saturating_add(1), p)
}

/// The autodiff tapes alive at once: `samples` samples (chunk size times worker threads)
/// of a network with `activations_per_sample` activation values each, for an HVP
/// (double backward).
pub fn tape(what: impl Into<String>, activations_per_sample: usize, samples: usize) -> Allocation {
    Allocation {
        what: what.into(),
        bytes: (activations_per_sample as u64)
            .saturating_mul(samples as u64)
            .saturating_mul(TAPE_VALUES_PER_ACTIVATION)
            .saturating_mul(8),
    }
}

/// Tape values per activation value kept by a recorded forward and first backward
/// pass ([`crate::hessian::network::LinearizedHessian`]): measured 2.3 on the sphere
/// ConvNet (215 MB per 64 images in f64); 3 leaves a margin.
pub const RECORDED_VALUES_PER_ACTIVATION: u64 = 3;

/// The kept recordings of `samples` samples in f64 ([`RECORDED_VALUES_PER_ACTIVATION`]).
pub fn recorded_tapes(
    what: impl Into<String>,
    activations_per_sample: usize,
    samples: usize,
) -> Allocation {
    Allocation {
        what: what.into(),
        bytes: (activations_per_sample as u64)
            .saturating_mul(samples as u64)
            .saturating_mul(RECORDED_VALUES_PER_ACTIVATION)
            .saturating_mul(8),
    }
}

/// Samples whose tapes are alive at once when `n` samples are processed in chunks of
/// `chunk` by the worker threads.
pub fn samples_in_flight(n: usize, chunk: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.min(chunk.saturating_mul(threads)).max(1)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// A memory budget in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `gib` GiB (positive and finite).
    pub fn from_gib(gib: f64) -> Result<Self> {
        if !(gib > 0.0 && gib.is_finite()) {
            return Err(Error::InvalidArgument(
                "--memory-budget must be a positive number of GiB".into(),
            ));
        }
        Ok(Self {
            bytes: (gib * (1u64 << 30) as f64).min(u64::MAX as f64) as u64,
        })
    }

    pub fn bytes(self) -> u64 {
        self.bytes
    }

    /// Accepts `plan` (buffers alive at the same time) when their total fits; otherwise a
    /// one-line error naming the total, the budget and the largest items.
    pub fn check(self, plan: &[Allocation]) -> Result<()> {
        let total = plan.iter().fold(0u64, |acc, a| acc.saturating_add(a.bytes));
        if total <= self.bytes {
            return Ok(());
        }
        let mut items: Vec<&Allocation> = plan.iter().filter(|a| a.bytes > 0).collect();
        items.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.what.cmp(&b.what)));
        let named: Vec<String> = items
            .iter()
            .take(3)
            .map(|a| format!("{} {:.2} GiB", a.what, gib(a.bytes)))
            .collect();
        Err(Error::InvalidArgument(format!(
            "this run needs about {:.2} GiB ({}), over --memory-budget {:.2} GiB: use fewer samples, a smaller --max-iter, the matrix-free mode, or raise --memory-budget",
            gib(total),
            named.join(", "),
            gib(self.bytes)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_refusal() {
        assert_eq!(f64_matrix("h", 1000, 1000).bytes, 8_000_000);
        assert_eq!(krylov_basis("b", 9, 100).bytes, 8_000);
        assert_eq!(
            tape("t", 10, 3).bytes,
            10 * 3 * TAPE_VALUES_PER_ACTIVATION * 8
        );
        let b = MemoryBudget::from_gib(1.0).unwrap();
        let fits = [f64_matrix("a", 1 << 13, 1 << 13)]; // 0.5 GiB
        assert!(b.check(&fits).is_ok());
        let over = [
            f64_matrix("dense Hessian", 1 << 13, 1 << 13),
            f64_matrix("Lanczos basis", 1 << 13, 1 << 13),
            f64_matrix("tiny", 1, 1),
        ];
        let e = b.check(&over).unwrap_err().to_string();
        assert!(
            e.contains("1.00 GiB") && e.contains("dense Hessian 0.50 GiB"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert!(MemoryBudget::from_gib(f64::NAN).is_err());
        assert!(MemoryBudget::from_gib(0.0).is_err());
        assert!(MemoryBudget::from_gib(-1.0).is_err());
    }
}
