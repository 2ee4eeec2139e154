//! L-BFGS (Nocedal and Wright 2006, Algorithm 7.4/7.5) and a truncated Newton-CG.
//!
//! **Stopping rule of [`lbfgs`]** (checked in this order after every accepted step,
//! and at the start):
//! 1. `f <= loss_tol`: [`StopReason::LossBelow`] (the loss reached the threshold);
//! 2. `||g||_2 <= grad_rtol * max(||g_0||_2, 1e-300)`: [`StopReason::GradientSmall`]
//!    (a stationary point to the stated relative precision);
//! 3. `f_{k-window} - f_k <= ftol * max(|f_k|, 1e-300)`: [`StopReason::NoProgress`]
//!    (relative decrease over the last `window` iterations below `ftol`);
//! 4. the line search cannot find a step that decreases `f`: [`StopReason::LineSearchFailed`]
//!    (at the limit of floating-point precision);
//! 5. `max_iter` iterations: [`StopReason::IterationCap`]. Such a run is *still
//!    descending* and must not be reported as a minimum ([`StopReason::is_converged`]).
//!
//! The line search enforces the weak Wolfe conditions (`c1 = 1e-4`, `c2 = 0.9`) by
//! bracketing and bisection (Lewis and Overton 2013), so every accepted pair has
//! `s^T y > 0` and the inverse-Hessian approximation stays positive definite.

use super::{Objective, SecondOrder};
use crate::linalg::SymOp;
use crate::tensor::dot;
use serde::Serialize;

/// Why an optimiser stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    LossBelow,
    GradientSmall,
    NoProgress,
    LineSearchFailed,
    /// The iteration cap: still descending, not a minimum.
    IterationCap,
}

impl StopReason {
    /// Whether the run ended at a point the rule accepts (anything but the cap).
    pub fn is_converged(self) -> bool {
        self != StopReason::IterationCap
    }
    pub fn name(self) -> &'static str {
        match self {
            StopReason::LossBelow => "loss_below",
            StopReason::GradientSmall => "gradient_small",
            StopReason::NoProgress => "no_progress",
            StopReason::LineSearchFailed => "line_search_failed",
            StopReason::IterationCap => "iteration_cap",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LbfgsConfig {
    pub max_iter: usize,
    /// Number of stored `(s, y)` pairs.
    pub memory: usize,
    pub loss_tol: f64,
    pub grad_rtol: f64,
    pub window: usize,
    pub ftol: f64,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            max_iter: 2000,
            memory: 20,
            loss_tol: f64::NEG_INFINITY,
            grad_rtol: 1e-10,
            window: 50,
            ftol: 1e-9,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OptimResult {
    #[serde(skip)]
    pub x: Vec<f64>,
    pub f: f64,
    pub grad_norm: f64,
    pub iterations: usize,
    /// Objective evaluations (value and gradient together).
    pub evaluations: usize,
    pub stop: StopReason,
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

/// Weak Wolfe line search along `d` from `x` (`f0`, `g0` known); returns the
/// accepted `(t, x_new, f_new, g_new)` or `None` when no decrease was found.
fn wolfe_search<O: Objective + ?Sized>(
    obj: &O,
    x: &[f64],
    f0: f64,
    g0: &[f64],
    d: &[f64],
    t0: f64,
    evals: &mut usize,
) -> Option<(f64, Vec<f64>, f64, Vec<f64>)> {
    let (c1, c2) = (1e-4, 0.9);
    let slope = dot(g0, d);
    if slope >= 0.0 || !slope.is_finite() {
        return None;
    }
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut t = t0;
    let mut best: Option<(f64, Vec<f64>, f64, Vec<f64>)> = None;
    for _ in 0..60 {
        let xt: Vec<f64> = x.iter().zip(d).map(|(a, b)| a + t * b).collect();
        let (ft, gt) = obj.value_grad(&xt);
        *evals += 1;
        if !ft.is_finite() || ft > f0 + c1 * t * slope {
            hi = t;
        } else {
            let decrease = ft < f0;
            if dot(&gt, d) < c2 * slope {
                if decrease {
                    best = Some((t, xt, ft, gt));
                }
                lo = t;
            } else {
                return Some((t, xt, ft, gt));
            }
        }
        t = if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            2.0 * lo
        };
        if hi.is_finite() && hi - lo <= 1e-16 * hi.max(1e-300) {
            break;
        }
    }
    // Armijo holds but the curvature condition could not be met: take the best decrease.
    best
}

/// Minimises `obj` from `x0` by L-BFGS; see the module docs for the stopping rule.
pub fn lbfgs<O: Objective + ?Sized>(obj: &O, x0: &[f64], cfg: &LbfgsConfig) -> OptimResult {
    let mut x = x0.to_vec();
    let (mut f, mut g) = obj.value_grad(&x);
    let mut evals = 1;
    let g0 = norm(&g).max(1e-300);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut f_hist = vec![f];
    let done = |f: f64, g: &[f64], f_hist: &[f64]| -> Option<StopReason> {
        if f <= cfg.loss_tol {
            return Some(StopReason::LossBelow);
        }
        if norm(g) <= cfg.grad_rtol * g0 {
            return Some(StopReason::GradientSmall);
        }
        let k = f_hist.len() - 1;
        if cfg.window > 0 && k >= cfg.window {
            let dec = f_hist[k - cfg.window] - f;
            if dec <= cfg.ftol * f.abs().max(1e-300) {
                return Some(StopReason::NoProgress);
            }
        }
        None
    };
    if !f.is_finite() {
        return OptimResult {
            grad_norm: norm(&g),
            x,
            f,
            iterations: 0,
            evaluations: evals,
            stop: StopReason::LineSearchFailed,
        };
    }
    for it in 0..cfg.max_iter {
        if let Some(stop) = done(f, &g, &f_hist) {
            return OptimResult {
                grad_norm: norm(&g),
                x,
                f,
                iterations: it,
                evaluations: evals,
                stop,
            };
        }
        // Two-loop recursion: d = -H_k g.
        let mut q = g.clone();
        let n = s_hist.len();
        let mut alpha = vec![0.0; n];
        for i in (0..n).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = if n > 0 {
            dot(&s_hist[n - 1], &y_hist[n - 1]) / dot(&y_hist[n - 1], &y_hist[n - 1])
        } else {
            1.0 / norm(&g).max(1e-300)
        };
        for qj in q.iter_mut() {
            *qj *= gamma;
        }
        for i in 0..n {
            let beta = rho[i] * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alpha[i] - beta) * sj;
            }
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut found = wolfe_search(obj, &x, f, &g, &d, 1.0, &mut evals);
        if found.is_none() && n > 0 {
            // Restart from steepest descent once.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            let gn = norm(&g).max(1e-300);
            d = g.iter().map(|v| -v / gn).collect();
            found = wolfe_search(obj, &x, f, &g, &d, 1.0, &mut evals);
        }
        let Some((_, xn, fnew, gnew)) = found else {
            return OptimResult {
                grad_norm: norm(&g),
                x,
                f,
                iterations: it,
                evaluations: evals,
                stop: StopReason::LineSearchFailed,
            };
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-300 && sy.is_finite() {
            if s_hist.len() == cfg.memory.max(1) {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            rho.push(1.0 / sy);
            s_hist.push(s);
            y_hist.push(yv);
        }
        x = xn;
        f = fnew;
        g = gnew;
        f_hist.push(f);
    }
    let stop = done(f, &g, &f_hist).unwrap_or(StopReason::IterationCap);
    OptimResult {
        grad_norm: norm(&g),
        x,
        f,
        iterations: cfg.max_iter,
        evaluations: evals,
        stop,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NewtonCgConfig {
    /// Newton steps.
    pub max_iter: usize,
    /// CG iterations per step.
    pub max_cg: usize,
    pub loss_tol: f64,
    /// Stop when `||g||_2 <= grad_atol`.
    pub grad_atol: f64,
}

impl Default for NewtonCgConfig {
    fn default() -> Self {
        Self {
            max_iter: 20,
            max_cg: 200,
            loss_tol: f64::NEG_INFINITY,
            grad_atol: 1e-14,
        }
    }
}

/// Truncated CG for `H d = -g`: stops at relative residual `eta` or on
/// non-positive curvature (then returns the current iterate, or `-g` if none).
fn cg_direction(h: &dyn SymOp, g: &[f64], eta: f64, max_cg: usize) -> (Vec<f64>, usize) {
    let n = g.len();
    let mut d = vec![0.0; n];
    let mut r: Vec<f64> = g.iter().map(|v| -v).collect();
    let mut p = r.clone();
    let mut rr = dot(&r, &r);
    let r0 = rr.sqrt();
    let mut hp = vec![0.0; n];
    for it in 0..max_cg {
        h.apply(&p, &mut hp);
        let php = dot(&p, &hp);
        if php <= 1e-300 * dot(&p, &p) || !php.is_finite() {
            if it == 0 {
                return (r, it + 1);
            }
            return (d, it + 1);
        }
        let a = rr / php;
        for i in 0..n {
            d[i] += a * p[i];
            r[i] -= a * hp[i];
        }
        let rr_new = dot(&r, &r);
        if rr_new.sqrt() <= eta * r0 {
            return (d, it + 1);
        }
        let b = rr_new / rr;
        for i in 0..n {
            p[i] = r[i] + b * p[i];
        }
        rr = rr_new;
    }
    (d, max_cg)
}

/// Newton-CG polish from `x0` with exact HVPs and a backtracking (Armijo) line search.
/// Stops at `f <= loss_tol`, `||g|| <= grad_atol`, when no step decreases `f`
/// ([`StopReason::LineSearchFailed`], the normal end at machine precision), or after
/// `max_iter` steps ([`StopReason::IterationCap`]).
pub fn newton_cg<O: SecondOrder + ?Sized>(
    obj: &O,
    x0: &[f64],
    cfg: &NewtonCgConfig,
) -> OptimResult {
    let mut x = x0.to_vec();
    let (mut f, mut g) = obj.value_grad(&x);
    let mut evals = 1;
    for it in 0..cfg.max_iter {
        let gn = norm(&g);
        if f <= cfg.loss_tol {
            return result(x, f, gn, it, evals, StopReason::LossBelow);
        }
        if gn <= cfg.grad_atol {
            return result(x, f, gn, it, evals, StopReason::GradientSmall);
        }
        let eta = gn.sqrt().min(0.5);
        let mut d = Vec::new();
        obj.with_hessian(&x, &mut |h: &dyn SymOp| {
            d = cg_direction(h, &g, eta, cfg.max_cg).0;
        });
        let slope = dot(&g, &d);
        if slope >= 0.0 || !slope.is_finite() {
            d = g.iter().map(|v| -v).collect();
        }
        let slope = dot(&g, &d);
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..50 {
            let xt: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            let (ft, gt) = obj.value_grad(&xt);
            evals += 1;
            if ft.is_finite() && ft <= f + 1e-4 * t * slope && ft < f {
                accepted = Some((xt, ft, gt));
                break;
            }
            t *= 0.5;
        }
        match accepted {
            Some((xn, fnew, gnew)) => {
                x = xn;
                f = fnew;
                g = gnew;
            }
            None => {
                return result(x, f, gn, it, evals, StopReason::LineSearchFailed);
            }
        }
    }
    let gn = norm(&g);
    let stop = if f <= cfg.loss_tol {
        StopReason::LossBelow
    } else if gn <= cfg.grad_atol {
        StopReason::GradientSmall
    } else {
        StopReason::IterationCap
    };
    result(x, f, gn, cfg.max_iter, evals, stop)
}

fn result(
    x: Vec<f64>,
    f: f64,
    grad_norm: f64,
    iterations: usize,
    evaluations: usize,
    stop: StopReason,
) -> OptimResult {
    OptimResult {
        x,
        f,
        grad_norm,
        iterations,
        evaluations,
        stop,
    }
}
