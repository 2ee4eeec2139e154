//! Curvature-aware training methods (DESIGN.md section 13, seed 003): each turns one
//! minibatch into the gradient that the optimiser of [`crate::train`] (SGD with momentum
//! and weight decay, or Adam) then steps with, so every method runs on every optimiser and
//! every architecture that implements [`TrainModel`] (MLPs and the network engine).
//!
//! Notation: `L_B(w)` is the mean loss of the batch `B` in training mode (BatchNorm with the
//! batch statistics), `g = grad L_B(w)`, `H = hess L_B(w)`, `||.||` the Euclidean norm over
//! all trainable tensors (accumulated in f64 in parameter-vector order).
//!
//! * **SAM** (Foret et al. 2021): `eps = rho g / ||g||`; the step uses `grad L_B(w + eps)`.
//! * **ASAM** (Kwon et al. 2021): `eps = rho T^2 g / ||T g||` with `T = diag(|w| + eta)` on
//!   every tensor whose state-dict name contains `weight` (linear and convolution weights,
//!   and the BatchNorm scale, as in the ASAM reference code) and `T = 1` on the others
//!   (biases); `eta = 0.01` by default.
//! * **m-sharpness** (`chunk = Some(m)`): the batch is split into consecutive chunks of `m`
//!   samples; chunk `c` gets its own `eps_c` from its own gradient, and the step uses
//!   `sum_c (n_c / n) grad L_c(w + eps_c)`.
//! * **Gradient-norm penalty** (Zhao et al. 2022): `L + lambda ||g||`, whose gradient is
//!   `g + lambda H g / ||g||`. Exact: `grad ||g||` by double backward through the tape.
//!   Finite-difference form (their eq.): `(1 - a) g(w) + a g(w + r g / ||g||)` with
//!   `a = lambda / r`, i.e. `g + lambda (g(w + r u) - g(w)) / r`, `u = g / ||g||`.
//! * **Hessian-trace penalty**: `L + lambda tr_K(H)` with the Hutchinson estimate
//!   `tr_K(H) = (1/K) sum_k v_k^T H v_k` over `K` Rademacher probes drawn per step
//!   (`Rng::derived(seed ^ TRACE_STREAM, step)`). Exact gradient: `grad (v^T H v)` is a third
//!   derivative, obtained by differentiating the recorded double-backward HVP on the tape.
//!   Approximation (`TraceForm::FiniteDifference { step: h }`): the central second
//!   difference of the gradient along each probe,
//!   `grad (v^T H v) ~ [g(w + s v) + g(w - s v) - 2 g(w)] / s^2`, `s = h ||w|| / ||v||`,
//!   whose error is `O(s^2)` (Taylor: `g(w + s v) = g + s H v + s^2/2 T[v, v] + s^3/6 ...`,
//!   and `grad (v^T H v) = T[v, v]`); it is the gradient of the antithetic weight-noise
//!   smoothing `(L(w + s v) + L(w - s v) - 2 L(w)) / s^2`. It needs two extra first-order
//!   passes per probe instead of a third-order pass through the whole recorded graph.
//!
//! Conventions: a zero gradient (or a zero `||T g||`) gives `eps = 0` and a zero penalty
//! gradient. BatchNorm: only the first pass at `w` on the whole batch (or, with chunks,
//! the merged statistics of the chunks' first passes) yields the batch statistics that
//! update the running averages; every perturbed or taped pass is discarded, so the second
//! pass of SAM never touches the running statistics. With `rho = 0` SAM evaluates the
//! gradient at `w + 0 = w` with the plain routine, so it reproduces the plain step bit for
//! bit; a penalty with `lambda = 0` adds `0 * (penalty gradient)` to the plain gradient.

use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::BatchStats;
use crate::rng::Rng;
use crate::tensor::{Matrix, Scalar};
use crate::train::{StepStats, TrainModel};
use serde::{Deserialize, Serialize};

/// Stream of the trace-penalty probes, xored into the training seed.
pub const TRACE_STREAM: u64 = 0x7ace_9e7a_17b0_0003;

/// How the gradient-norm penalty's gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GradNormForm {
    /// `H g / ||g||` by double backward.
    Exact,
    /// Zhao et al.'s finite difference with radius `r`.
    FiniteDifference { radius: f64 },
}

/// How the trace penalty's gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceForm {
    /// Third derivative through the tape.
    Exact,
    /// Central second difference of the gradient, relative step `h` (`s = h ||w|| / ||v||`).
    FiniteDifference { step: f64 },
}

/// A training method: what gradient one minibatch gives the optimiser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum TrainMethod {
    /// The batch gradient (the plain code path of [`crate::train`]).
    #[default]
    Plain,
    Sam {
        rho: f64,
        chunk: Option<usize>,
    },
    Asam {
        rho: f64,
        eta: f64,
        chunk: Option<usize>,
    },
    GradNormPenalty {
        lambda: f64,
        form: GradNormForm,
    },
    TracePenalty {
        lambda: f64,
        probes: usize,
        form: TraceForm,
    },
}

/// Passes through the network per training step, in units of one pass over the whole
/// batch (m-sharpness chunks add up to whole passes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passes {
    pub forward: usize,
    /// First-order backward passes.
    pub backward: usize,
    /// Backward passes through a recorded backward graph (Hessian-vector products).
    pub double_backward: usize,
    /// Backward passes through a recorded double-backward graph (third derivatives).
    pub triple_backward: usize,
}

impl TrainMethod {
    pub fn is_plain(&self) -> bool {
        *self == TrainMethod::Plain
    }

    /// Checks the hyper-parameters against the batch size (`bn`: the model has BatchNorm).
    pub fn validate(&self, batch_size: usize, bn: bool) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{name} must be a finite number >= 0, got {v}"
                )))
            }
        };
        let check_chunk = |chunk: Option<usize>| -> Result<()> {
            if let Some(m) = chunk {
                if m == 0 || m > batch_size || !batch_size.is_multiple_of(m) {
                    return bad(format!(
                        "--sam-chunk {m} must be between 1 and the batch size {batch_size} and divide it"
                    ));
                }
                if bn && m < 2 {
                    return bad("--sam-chunk must be at least 2 with BatchNorm".into());
                }
            }
            Ok(())
        };
        match *self {
            TrainMethod::Plain => Ok(()),
            TrainMethod::Sam { rho, chunk } => {
                nonneg("--sam rho", rho)?;
                check_chunk(chunk)
            }
            TrainMethod::Asam { rho, eta, chunk } => {
                nonneg("--asam rho", rho)?;
                if !(eta.is_finite() && eta > 0.0) {
                    return bad(format!("--asam-eta must be positive and finite, got {eta}"));
                }
                check_chunk(chunk)
            }
            TrainMethod::GradNormPenalty { lambda, form } => {
                nonneg("--grad-norm-penalty lambda", lambda)?;
                if let GradNormForm::FiniteDifference { radius } = form {
                    if !(radius.is_finite() && radius > 0.0) {
                        return bad(format!(
                            "--grad-norm-fd radius must be positive and finite, got {radius}"
                        ));
                    }
                }
                Ok(())
            }
            TrainMethod::TracePenalty {
                lambda,
                probes,
                form,
            } => {
                nonneg("--trace-penalty lambda", lambda)?;
                if probes == 0 {
                    return bad("--trace-probes must be at least 1".into());
                }
                if let TraceForm::FiniteDifference { step } = form {
                    if !(step.is_finite() && step > 0.0) {
                        return bad(format!(
                            "--trace-fd step must be positive and finite, got {step}"
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Passes per step (see [`Passes`]).
    pub fn passes(&self) -> Passes {
        let p = |forward, backward, double_backward, triple_backward| Passes {
            forward,
            backward,
            double_backward,
            triple_backward,
        };
        match *self {
            TrainMethod::Plain => p(1, 1, 0, 0),
            TrainMethod::Sam { .. } | TrainMethod::Asam { .. } => p(2, 2, 0, 0),
            TrainMethod::GradNormPenalty { form, .. } => match form {
                // The plain gradient, then a taped forward, backward and double backward.
                GradNormForm::Exact => p(2, 2, 1, 0),
                GradNormForm::FiniteDifference { .. } => p(2, 2, 0, 0),
            },
            TrainMethod::TracePenalty { probes, form, .. } => match form {
                TraceForm::Exact => p(2, 2, probes, 1),
                TraceForm::FiniteDifference { .. } => p(1 + 2 * probes, 1 + 2 * probes, 0, 0),
            },
        }
    }
}

/// The outcome of one method step: the batch loss at `w` (size-weighted over chunks), the
/// gradient for the optimiser, and the batch statistics for the running averages.
pub struct MethodGrad<T: Scalar> {
    pub loss: T,
    pub grads: Vec<Matrix<T>>,
    pub stats: StepStats<T>,
}

fn norm_f64<T: Scalar>(ms: &[Matrix<T>]) -> f64 {
    let mut s = 0.0;
    for m in ms {
        for &v in m.as_slice() {
            let v = v.to_f64();
            s += v * v;
        }
    }
    s.sqrt()
}

/// The SAM (`eta = None`) or ASAM (`eta = Some((eta, is_weight))`) perturbation
/// `eps = rho T^2 g / ||T g||` (`T = I` for SAM), computed in f64 and rounded to `T`.
/// Zero when `||T g|| = 0`.
pub fn sam_perturbation<T: Scalar>(
    params: &[&Matrix<T>],
    grads: &[Matrix<T>],
    rho: f64,
    asam: Option<(f64, &[bool])>,
) -> Vec<Matrix<T>> {
    assert_eq!(params.len(), grads.len(), "sam_perturbation: tensor count");
    let scale = |i: usize, w: T| -> f64 {
        match asam {
            Some((eta, is_weight)) if is_weight[i] => w.to_f64().abs() + eta,
            _ => 1.0,
        }
    };
    let mut n2 = 0.0;
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        for (&w, &gv) in p.as_slice().iter().zip(g.as_slice()) {
            let tg = scale(i, w) * gv.to_f64();
            n2 += tg * tg;
        }
    }
    let n = n2.sqrt();
    params
        .iter()
        .zip(grads)
        .enumerate()
        .map(|(i, (p, g))| {
            let (r, c) = g.shape();
            if !(n > 0.0 && n.is_finite()) {
                return Matrix::zeros(r, c);
            }
            let data = p
                .as_slice()
                .iter()
                .zip(g.as_slice())
                .map(|(&w, &gv)| {
                    let t = scale(i, w);
                    T::from_f64(rho * t * t * gv.to_f64() / n)
                })
                .collect();
            Matrix::from_vec(r, c, data)
        })
        .collect()
}

/// The batch gradient at `w + delta` (training mode), leaving the model's parameters
/// exactly as they were; its batch statistics are discarded.
pub fn grad_at<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    delta: &[Matrix<T>],
    x: &Matrix<T>,
    labels: &[usize],
) -> Result<Vec<Matrix<T>>> {
    let saved: Vec<Matrix<T>> = model.params_mut().iter().map(|m| (**m).clone()).collect();
    for (p, d) in model.params_mut().into_iter().zip(delta) {
        for (a, &b) in p.as_mut_slice().iter_mut().zip(d.as_slice()) {
            *a += b;
        }
    }
    let out = model.train_grad(x, labels);
    for (p, s) in model.params_mut().into_iter().zip(saved) {
        *p = s;
    }
    Ok(out?.1)
}

/// `a + c b` elementwise, tensor by tensor.
fn axpy<T: Scalar>(a: &mut [Matrix<T>], c: f64, b: &[Matrix<T>]) {
    let c = T::from_f64(c);
    for (x, y) in a.iter_mut().zip(b) {
        for (u, &v) in x.as_mut_slice().iter_mut().zip(y.as_slice()) {
            *u += c * v;
        }
    }
}

/// Consecutive chunks of `m` rows of `n`; with BatchNorm a remainder of one row joins the
/// previous chunk (a one-sample batch has no variance).
fn chunk_ranges(n: usize, m: usize, bn: bool) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> =
        (0..n).step_by(m).map(|s| s..(s + m).min(n)).collect();
    if bn && out.len() > 1 && out.last().is_some_and(|r| r.len() < 2) {
        let last = out.pop().expect("non-empty");
        out.last_mut().expect("non-empty").end = last.end;
    }
    out
}

/// Batch statistics of the union of the chunks (exact: size-weighted means, and the
/// biased variance `sum_c n_c (var_c + (mean_c - mean)^2) / n`).
fn merge_stats<T: Scalar>(parts: &[StepStats<T>]) -> StepStats<T> {
    let Some(first) = parts.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|l| {
            let layer: Vec<&BatchStats<T>> = parts.iter().filter_map(|p| p[l].as_ref()).collect();
            if layer.len() != parts.len() {
                return None;
            }
            let total: usize = layer.iter().map(|s| s.count).sum();
            let (r, c) = layer[0].mean.shape();
            let mut mean = vec![0.0; r * c];
            for s in &layer {
                let w = s.count as f64 / total as f64;
                for (m, &v) in mean.iter_mut().zip(s.mean.as_slice()) {
                    *m += w * v.to_f64();
                }
            }
            let mut var = vec![0.0; r * c];
            for s in &layer {
                let w = s.count as f64 / total as f64;
                for ((o, (&v, &mu)), &m) in var
                    .iter_mut()
                    .zip(s.var.as_slice().iter().zip(s.mean.as_slice()))
                    .zip(&mean)
                {
                    let d = mu.to_f64() - m;
                    *o += w * (v.to_f64() + d * d);
                }
            }
            Some(BatchStats {
                mean: Matrix::from_vec(r, c, mean.into_iter().map(T::from_f64).collect()),
                var: Matrix::from_vec(r, c, var.into_iter().map(T::from_f64).collect()),
                count: total,
            })
        })
        .collect()
}

/// Rademacher probes with the shapes of `like`.
fn rademacher<T: Scalar>(like: &[Matrix<T>], rng: &mut Rng) -> Vec<Matrix<T>> {
    like.iter()
        .map(|m| {
            let (r, c) = m.shape();
            let data = (0..r * c)
                .map(|_| {
                    if rng.next_u64() >> 63 == 0 {
                        T::ONE
                    } else {
                        -T::ONE
                    }
                })
                .collect();
            Matrix::from_vec(r, c, data)
        })
        .collect()
}

fn tape_sum<'t, T: Scalar>(terms: impl IntoIterator<Item = Var<'t, T>>) -> Option<Var<'t, T>> {
    terms.into_iter().reduce(|a, b| a.add(b))
}

/// `grad ||g||` of the batch loss, by double backward (zero when `g = 0`).
pub fn grad_norm_penalty_grad<T: Scalar, M: TrainModel<T>>(
    model: &M,
    x: &Matrix<T>,
    labels: &[usize],
) -> Vec<Matrix<T>> {
    let tape = Tape::new();
    let (params, loss, _) = model.record_train_loss(&tape, x, labels);
    let g = tape.grad(loss, &params);
    let sq = tape_sum(g.iter().map(|gi| gi.dot(*gi))).expect("a model has parameters");
    if sq.item().to_f64() <= 0.0 {
        return params
            .iter()
            .map(|p| {
                let (r, c) = p.shape();
                Matrix::zeros(r, c)
            })
            .collect();
    }
    let n = sq.sqrt();
    tape.grad(n, &params)
        .iter()
        .map(|v| v.value().clone())
        .collect()
}

/// The Hutchinson estimate `(1/K) sum_k v_k^T H v_k` of the batch loss's Hessian trace
/// over the probes `vs`, and its exact gradient (third derivative through the tape).
pub fn trace_penalty_grad<T: Scalar, M: TrainModel<T>>(
    model: &M,
    x: &Matrix<T>,
    labels: &[usize],
    vs: &[Vec<Matrix<T>>],
) -> (f64, Vec<Matrix<T>>) {
    let tape = Tape::new();
    let (params, loss, _) = model.record_train_loss(&tape, x, labels);
    let g = tape.grad(loss, &params);
    let mut qs = Vec::with_capacity(vs.len());
    for v in vs {
        let vc: Vec<Var<T>> = v.iter().map(|m| tape.constant(m.clone())).collect();
        let s = tape_sum(g.iter().zip(&vc).map(|(gi, vi)| gi.dot(*vi))).expect("parameters");
        let hv = tape.grad(s, &params);
        qs.push(tape_sum(hv.iter().zip(&vc).map(|(h, vi)| h.dot(*vi))).expect("parameters"));
    }
    let tr = tape_sum(qs)
        .expect("at least one probe")
        .scale(T::from_f64(1.0 / vs.len() as f64));
    let value = tr.item().to_f64();
    let grads = tape
        .grad(tr, &params)
        .iter()
        .map(|v| v.value().clone())
        .collect();
    (value, grads)
}

/// Names of the tensors ASAM scales: state-dict names containing `weight`.
fn weight_flags<T: Scalar, M: TrainModel<T>>(model: &M) -> Vec<bool> {
    model
        .param_names()
        .iter()
        .map(|n| n.contains("weight"))
        .collect()
}

/// SAM or ASAM on one batch, with optional m-sharpness chunks.
fn sam_step<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    rho: f64,
    asam_eta: Option<f64>,
    chunk: Option<usize>,
) -> Result<MethodGrad<T>> {
    let flags = asam_eta.map(|_| weight_flags(model));
    let asam = asam_eta.zip(flags.as_deref());
    let n = labels.len();
    let ranges = match chunk {
        Some(m) if m < n => chunk_ranges(n, m, model.has_batchnorm()),
        _ => std::iter::once(0..n).collect(),
    };
    if ranges.len() == 1 {
        let (loss, g, stats) = model.train_grad(x, labels)?;
        let eps = {
            let ps = model.params_mut();
            let refs: Vec<&Matrix<T>> = ps.iter().map(|m| &**m).collect();
            sam_perturbation(&refs, &g, rho, asam)
        };
        let grads = grad_at(model, &eps, x, labels)?;
        return Ok(MethodGrad { loss, grads, stats });
    }
    let mut loss = 0.0;
    let mut total: Option<Vec<Matrix<T>>> = None;
    let mut parts = Vec::with_capacity(ranges.len());
    for r in &ranges {
        let idx: Vec<usize> = r.clone().collect();
        let xc = x.select_rows(&idx);
        let yc = &labels[r.clone()];
        let (l, g, st) = model.train_grad(&xc, yc)?;
        let eps = {
            let ps = model.params_mut();
            let refs: Vec<&Matrix<T>> = ps.iter().map(|m| &**m).collect();
            sam_perturbation(&refs, &g, rho, asam)
        };
        let g2 = grad_at(model, &eps, &xc, yc)?;
        let w = r.len() as f64 / n as f64;
        loss += w * l.to_f64();
        match &mut total {
            None => {
                let mut z: Vec<Matrix<T>> = g2
                    .iter()
                    .map(|m| Matrix::zeros(m.rows(), m.cols()))
                    .collect();
                axpy(&mut z, w, &g2);
                total = Some(z);
            }
            Some(t) => axpy(t, w, &g2),
        }
        parts.push(st);
    }
    Ok(MethodGrad {
        loss: T::from_f64(loss),
        grads: total.expect("at least one chunk"),
        stats: merge_stats(&parts),
    })
}

/// The gradient of `method` on one batch. `seed` and `step` (the global step, 1-based)
/// seed the trace-penalty probes.
pub fn method_grad<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    method: &TrainMethod,
    seed: u64,
    step: u64,
) -> Result<MethodGrad<T>> {
    match *method {
        TrainMethod::Plain => {
            let (loss, grads, stats) = model.train_grad(x, labels)?;
            Ok(MethodGrad { loss, grads, stats })
        }
        TrainMethod::Sam { rho, chunk } => sam_step(model, x, labels, rho, None, chunk),
        TrainMethod::Asam { rho, eta, chunk } => sam_step(model, x, labels, rho, Some(eta), chunk),
        TrainMethod::GradNormPenalty { lambda, form } => {
            let (loss, mut grads, stats) = model.train_grad(x, labels)?;
            match form {
                GradNormForm::Exact => {
                    let pg = grad_norm_penalty_grad(model, x, labels);
                    axpy(&mut grads, lambda, &pg);
                }
                GradNormForm::FiniteDifference { radius } => {
                    let gn = norm_f64(&grads);
                    if gn > 0.0 && gn.is_finite() {
                        let delta: Vec<Matrix<T>> = grads
                            .iter()
                            .map(|m| {
                                let d = m
                                    .as_slice()
                                    .iter()
                                    .map(|&v| T::from_f64(radius * v.to_f64() / gn))
                                    .collect();
                                Matrix::from_vec(m.rows(), m.cols(), d)
                            })
                            .collect();
                        let g2 = grad_at(model, &delta, x, labels)?;
                        // g + (lambda / r) (g(w + r u) - g(w)).
                        let a = lambda / radius;
                        let base = grads.clone();
                        axpy(&mut grads, a, &g2);
                        axpy(&mut grads, -a, &base);
                    }
                }
            }
            Ok(MethodGrad { loss, grads, stats })
        }
        TrainMethod::TracePenalty {
            lambda,
            probes,
            form,
        } => {
            let (loss, mut grads, stats) = model.train_grad(x, labels)?;
            let mut rng = Rng::derived(seed ^ TRACE_STREAM, step);
            let vs: Vec<Vec<Matrix<T>>> =
                (0..probes).map(|_| rademacher(&grads, &mut rng)).collect();
            match form {
                TraceForm::Exact => {
                    let (_, pg) = trace_penalty_grad(model, x, labels, &vs);
                    axpy(&mut grads, lambda, &pg);
                }
                TraceForm::FiniteDifference { step: h } => {
                    let pg = trace_penalty_grad_fd(model, x, labels, &vs, &grads, h)?;
                    axpy(&mut grads, lambda, &pg);
                }
            }
            Ok(MethodGrad { loss, grads, stats })
        }
    }
}

/// The finite-difference approximation of the trace penalty's gradient (see the module
/// docs): `(1/K) sum_k [g(w + s v_k) + g(w - s v_k) - 2 g(w)] / s^2`, `s = h ||w|| / ||v_k||`
/// (`s = h / ||v_k||` when `w = 0`). `g` is the gradient at `w`.
pub fn trace_penalty_grad_fd<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    vs: &[Vec<Matrix<T>>],
    g: &[Matrix<T>],
    h: f64,
) -> Result<Vec<Matrix<T>>> {
    let wn = {
        let ps = model.params_mut();
        let owned: Vec<Matrix<T>> = ps.iter().map(|m| (**m).clone()).collect();
        norm_f64(&owned)
    };
    let mut out: Vec<Matrix<T>> = g
        .iter()
        .map(|m| Matrix::zeros(m.rows(), m.cols()))
        .collect();
    let k = vs.len() as f64;
    for v in vs {
        let vn = norm_f64(v);
        let s = h * if wn > 0.0 { wn } else { 1.0 } / vn;
        let scaled = |c: f64| -> Vec<Matrix<T>> {
            v.iter()
                .map(|m| {
                    let d = m
                        .as_slice()
                        .iter()
                        .map(|&e| T::from_f64(c * e.to_f64()))
                        .collect();
                    Matrix::from_vec(m.rows(), m.cols(), d)
                })
                .collect()
        };
        let gp = grad_at(model, &scaled(s), x, labels)?;
        let gm = grad_at(model, &scaled(-s), x, labels)?;
        let c = 1.0 / (k * s * s);
        for (((o, a), b), g0) in out.iter_mut().zip(&gp).zip(&gm).zip(g) {
            for (((o, &a), &b), &g0) in o
                .as_mut_slice()
                .iter_mut()
                .zip(a.as_slice())
                .zip(b.as_slice())
                .zip(g0.as_slice())
            {
                let (a, b, g0) = (a.to_f64(), b.to_f64(), g0.to_f64());
                *o += T::from_f64(c * ((a - g0) + (b - g0)));
            }
        }
    }
    Ok(out)
}
