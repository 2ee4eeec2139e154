//! Landscape experiments built on the exact-Hessian engine.
//!
//! * [`geometry`]: directions, 1-D/2-D surfaces, curvature maps, mode-connecting curves;
//! * [`sample_size`]: sample-size convergence of the loss (the seed experiment) with
//!   exact Hessian increments and an exact Taylor decomposition away from the optimum;
//! * [`method_compare`]: the training-methods comparison table (SAM, ASAM, penalties);
//! * [`sphere`]: scale-invariant networks trained on the sphere (seed 001), its three regimes.

pub mod geometry;
pub mod margins;
pub mod method_compare;
pub mod sample_size;
pub mod sphere;
pub mod wide;
