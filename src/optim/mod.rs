//! [`methods`]: the curvature-aware training methods (SAM, ASAM, gradient-norm and
//! Hessian-trace penalties) that plug into the minibatch training loop of `crate::train`.
//!
//! Full-batch deterministic optimisers for landscape experiments: L-BFGS with a weak
//! Wolfe line search and a documented stopping rule, and a Newton-CG polish that
//! uses exact Hessian-vector products.
//!
//! Both work on an [`Objective`] (value and gradient at a point, in `f64`), and
//! Newton-CG on a [`SecondOrder`] objective that can also hand out its Hessian at a
//! point as a [`SymOp`]. Everything is sequential in the iteration and deterministic:
//! the same start gives the same iterates bit for bit (given the objective is).

pub mod lbfgs;
pub mod methods;

pub use lbfgs::{lbfgs, newton_cg, LbfgsConfig, NewtonCgConfig, OptimResult, StopReason};

use crate::linalg::SymOp;

/// A smooth function `R^n -> R` with its gradient.
pub trait Objective {
    fn dim(&self) -> usize;
    /// `(f(x), grad f(x))`.
    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>);
}

/// An [`Objective`] with exact Hessian-vector products.
pub trait SecondOrder: Objective {
    /// Calls `f` with the Hessian at `x` as an operator (it may cache work shared by
    /// many products, such as a forward pass).
    fn with_hessian(&self, x: &[f64], f: &mut dyn FnMut(&dyn SymOp));
}
