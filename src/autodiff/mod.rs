//! Reverse-mode automatic differentiation with a recordable backward pass.
//!
//! [`tape`] holds the primitive operations and the backward walk; [`ops`]
//! composes them into the losses and layers that MLPs need (softmax
//! cross-entropy, MSE, BatchNorm1d, weight decay).

pub mod batchnorm;
pub mod conv;
pub mod index_map;
pub mod ops;
pub mod tape;

pub use conv::{ConvGeom, ConvShape};
pub use index_map::{IndexMap, NO_SOURCE};
pub use tape::{hvp, hvp_on, record_gradient, Recorded, Tape, Var};
