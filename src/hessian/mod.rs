//! Exact second-order structure of MLP losses.
//!
//! * [`structure`]: per-sample `D(p)`, `G(p)`, `A`, `r`, `delta(p)`, `B(q,p)`, `F`;
//! * [`dense`]: dense Gauss-Newton / H-term / full Hessian, per block or whole;
//! * [`hvp`]: matrix-free Hessian-vector products (R-operator, batched);
//! * [`gn_norm`]: exact per-sample Gauss-Newton norms through `K x K` problems;
//! * [`gpu`]: the same hot paths on a CUDA device (f32 and f64).
//!
//! Models with BatchNorm are not covered analytically; their HVPs come from the
//! autodiff tape (`autodiff::hvp`).

pub mod dense;
pub mod directional;
pub mod gn_norm;
pub mod gpu;
pub mod hvp;
pub mod network;
pub mod small_eig;
pub mod structure;

pub use dense::{dense_hessian, hessian_block, Part};
pub use gn_norm::{per_sample_gn_norms, per_sample_gn_norms_with_curvature, GnNorms};
pub use hvp::{hvp, hvp_multi, HessianOperator};
pub use structure::{BatchStructure, ParamLayout};
