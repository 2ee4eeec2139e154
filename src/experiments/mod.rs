//! Landscape experiments built on the exact-Hessian engine.
//!
//! * [`sample_size`]: sample-size convergence of the loss (the seed experiment) with
//!   exact Hessian increments and an exact Taylor decomposition away from the optimum.

pub mod sample_size;
