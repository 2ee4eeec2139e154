//! `landscape`: exact curvature of neural-network loss landscapes.
//!
//! Conventions (see README): an MLP with `L` weight matrices computes
//! `z(p) = W(p) x(p) + b(p)`, `x(p+1) = act(z(p))`, logits `z(L)`. The parameter
//! vector is `[vec(W1), b1, vec(W2), b2, ...]` with `vec` the row-major flatten
//! of the `(out x in)` matrix (PyTorch's `named_parameters()` order). Samples are
//! rows: a batch of inputs is an `n x d` matrix.

pub mod autodiff;
pub mod backend;
pub mod data;
pub mod dist;
pub mod error;
pub mod experiments;
pub mod hessian;
pub mod io;
pub mod linalg;
pub mod memory;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod tensor;
pub mod theory;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{MatRef, Matrix, Scalar};
