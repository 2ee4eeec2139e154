//! Curvature of any [`Network`] through the autodiff tape: the loss over a
//! dataset with a stated BatchNorm mode, its gradient, exact Hessian-vector
//! products by double backward, per-tensor Hessian blocks, the exact Fisher
//! (Gauss-Newton) trace from per-sample Jacobians, and batch-gradient norms.
//!
//! BatchNorm modes (DESIGN.md section 11):
//! * `Eval`: running statistics; the loss is the mean of the per-sample losses.
//! * `Train { batch: B }`: the samples form fixed consecutive batches of `B`
//!   (a last partial batch of at least 2 samples is kept), each normalised by
//!   its own statistics; the loss is the mean of the batch losses.
//!
//! Work is split into fixed chunks (64 samples in eval mode, one BN batch in
//! train mode) independent of the thread count; chunk results are summed in
//! chunk order, so every result is bit-identical for any `--threads`.

use crate::autodiff::{hvp as tape_hvp, hvp_on, record_gradient, Recorded, Tape, Var};
use crate::error::{Error, Result};
use crate::linalg::SymOp;
use crate::nn::{LossKind, Mode, Network};
use crate::tensor::{Matrix, Scalar};
use rayon::prelude::*;
use serde::Serialize;
use std::ops::Range;

/// Every chunk's `(value, vector)` of a [`NetObjective`] reduction, in chunk order.
type ChunkResults = Vec<(f64, Vec<f64>)>;

/// Samples per chunk in evaluation mode.
const EVAL_CHUNK: usize = 64;

/// How BatchNorm layers normalise while the curvature is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum BnMode {
    Eval,
    Train { batch: usize },
}

/// The loss of a network over a fixed dataset, as a function of the parameters.
pub struct NetObjective<'a> {
    net: &'a Network<f64>,
    x: &'a Matrix<f64>,
    labels: &'a [usize],
    mode: BnMode,
    chunks: Vec<Range<usize>>,
    weights: Vec<f64>,
}

impl<'a> NetObjective<'a> {
    pub fn new(
        net: &'a Network<f64>,
        x: &'a Matrix<f64>,
        labels: &'a [usize],
        mode: BnMode,
    ) -> Result<Self> {
        net.check_input(x)?;
        let n = labels.len();
        if n == 0 || x.rows() != n {
            return Err(Error::Shape(format!(
                "{} samples and {} labels",
                x.rows(),
                n
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= net.arch.classes) {
            return Err(Error::Shape(format!(
                "label {bad} is out of range for a model with {} outputs",
                net.arch.classes
            )));
        }
        let (chunks, weights) = match mode {
            BnMode::Eval => {
                let chunks = crate::tensor::sample_blocks(n, EVAL_CHUNK);
                let w = chunks.iter().map(|r| r.len() as f64 / n as f64).collect();
                (chunks, w)
            }
            BnMode::Train { batch } => {
                if !net.arch.has_batchnorm() {
                    return Err(Error::InvalidArgument(
                        "--bn-mode train applies to networks with BatchNorm only".into(),
                    ));
                }
                if batch < 2 {
                    return Err(Error::InvalidArgument(
                        "the BatchNorm batch size must be at least 2".into(),
                    ));
                }
                let chunks = crate::tensor::sample_blocks(n, batch);
                if chunks.last().is_some_and(|r| r.len() < 2) {
                    return Err(Error::InvalidArgument(format!(
                        "{n} samples leave a last BatchNorm batch of 1 sample (batch size {batch}): choose --samples or --bn-batch-size so that it has at least 2"
                    )));
                }
                let w = vec![1.0 / chunks.len() as f64; chunks.len()];
                (chunks, w)
            }
        };
        Ok(Self {
            net,
            x,
            labels,
            mode,
            chunks,
            weights,
        })
    }

    pub fn dim(&self) -> usize {
        self.net.num_params()
    }

    pub fn mode(&self) -> BnMode {
        self.mode
    }

    fn tape_mode(&self) -> Mode {
        match self.mode {
            BnMode::Eval => Mode::Eval,
            BnMode::Train { .. } => Mode::Train,
        }
    }

    fn chunk(&self, r: &Range<usize>) -> (Matrix<f64>, &[usize]) {
        (
            self.x.rows_view(r.start, r.end).to_owned(),
            &self.labels[r.clone()],
        )
    }

    /// Runs `f` on every chunk in parallel and sums the weighted results in chunk order.
    /// With several MPI ranks the chunks are work items; `key` is the fingerprint
    /// ([`crate::dist::fingerprint`]) of the vectors `f` depends on (parameters,
    /// direction), which rank 0 checks.
    fn reduce<F>(&self, len: usize, key: u64, f: F) -> (f64, Vec<f64>)
    where
        F: Fn(&Matrix<f64>, &[usize]) -> (f64, Vec<f64>) + Sync,
    {
        self.reduce_chunks(len, key, |r| {
            let (xb, yb) = self.chunk(r);
            f(&xb, yb)
        })
    }

    /// [`NetObjective::reduce`] with `f` given each chunk's sample range.
    fn reduce_chunks<F>(&self, len: usize, key: u64, f: F) -> (f64, Vec<f64>)
    where
        F: Fn(&Range<usize>) -> (f64, Vec<f64>) + Sync,
    {
        let run = |r: &Range<usize>| f(r);
        if crate::dist::distributed() && self.chunks.len() > 1 {
            // Several MPI ranks: work items of `t` consecutive chunks (`t` threads per
            // process, the chunks in parallel inside an item); rank 0 gathers every
            // chunk's result in chunk order, sums them below as one process does, and
            // sends the sums; the items carry the fingerprint `key`.
            let group = rayon::current_num_threads().max(1);
            let items = self.chunks.len().div_ceil(group);
            let (total, acc) = crate::dist::map_reduce(
                items,
                |i| {
                    let end = ((i + 1) * group).min(self.chunks.len());
                    let part: Vec<(f64, Vec<f64>)> =
                        self.chunks[i * group..end].par_iter().map(run).collect();
                    Ok::<_, Error>((key, part))
                },
                |groups: Vec<(u64, ChunkResults)>| {
                    if groups.iter().any(|g| g.0 != key) {
                        return Err(Error::InvalidArgument(
                            "a work item was computed from other parameters or another direction than rank 0's: the ranks' computations diverged (run every rank on the same kind of CPU with the same build and --threads)".into(),
                        ));
                    }
                    Ok(self.sum_chunks(len, groups.into_iter().flat_map(|g| g.1).collect()))
                },
            )
            .expect("with several ranks an error ends the job");
            return (total, acc);
        }
        let parts: Vec<(f64, Vec<f64>)> = self.chunks.par_iter().map(run).collect();
        self.sum_chunks(len, parts)
    }

    /// The weighted sum of the chunks' results, in chunk order.
    fn sum_chunks(&self, len: usize, parts: Vec<(f64, Vec<f64>)>) -> (f64, Vec<f64>) {
        let mut total = 0.0;
        let mut acc = vec![0.0; len];
        for ((s, v), &w) in parts.iter().zip(&self.weights) {
            total += w * s;
            for (a, b) in acc.iter_mut().zip(v) {
                *a += w * b;
            }
        }
        (total, acc)
    }

    /// Loss at `params` (parameter-vector order, one matrix per tensor).
    pub fn loss_at(&self, params: &[Matrix<f64>]) -> f64 {
        let mode = self.tape_mode();
        let key = crate::dist::fingerprint(params.iter().map(|m| m.as_slice()));
        self.reduce(0, key, |xb, yb| {
            let tape = Tape::new();
            let p: Vec<Var<f64>> = params.iter().map(|m| tape.constant(m.clone())).collect();
            (self.net.loss_tape(&p, xb, yb, mode).0.item(), Vec::new())
        })
        .0
    }

    /// Loss and flat gradient at the network's parameters.
    pub fn loss_and_grad(&self) -> (f64, Vec<f64>) {
        self.loss_and_grad_at(&self.net.params)
    }

    /// Loss and flat gradient at `params`.
    pub fn loss_and_grad_at(&self, params: &[Matrix<f64>]) -> (f64, Vec<f64>) {
        let mode = self.tape_mode();
        let key = crate::dist::fingerprint(params.iter().map(|m| m.as_slice()));
        self.reduce(self.dim(), key, |xb, yb| {
            let tape = Tape::new();
            let p: Vec<Var<f64>> = params.iter().map(|m| tape.param(m.clone())).collect();
            let (l, _) = self.net.loss_tape(&p, xb, yb, mode);
            let g = tape.grad(l, &p);
            (l.item(), flatten(g.iter().map(|v| v.value().clone())))
        })
    }

    /// `H v` at the network's parameters (exact, by double backward).
    pub fn hvp(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.dim(), "hvp: direction length");
        let dirs = unflatten(v, &self.net.params);
        let mode = self.tape_mode();
        let key = crate::dist::fingerprint([v]);
        self.reduce(self.dim(), key, |xb, yb| {
            let (_, _, hv) = tape_hvp(&self.net.params, &dirs, |_t, p| {
                self.net.loss_tape(p, xb, yb, mode).0
            });
            (0.0, flatten(hv.into_iter()))
        })
        .1
    }

    /// Per-batch gradient norms over fixed consecutive batches of `batch`
    /// samples (a last partial batch is kept when it has at least 2 samples in
    /// train mode, 1 in eval mode). In train mode each batch is normalised by its
    /// own statistics. The gradient is of each batch's mean loss.
    pub fn batch_gradient_norms(&self, batch: usize) -> Result<Vec<f64>> {
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "--grad-norms needs a batch size >= 1".into(),
            ));
        }
        let mode = self.tape_mode();
        let min = if mode == Mode::Train { 2 } else { 1 };
        let blocks: Vec<Range<usize>> = crate::tensor::sample_blocks(self.labels.len(), batch)
            .into_iter()
            .filter(|r| r.len() >= min)
            .collect();
        Ok(blocks
            .par_iter()
            .map(|r| {
                let (xb, yb) = self.chunk(r);
                let tape = Tape::new();
                let p = self.net.params_on_tape(&tape);
                let (l, _) = self.net.loss_tape(&p, &xb, yb, mode);
                let g = tape.grad(l, &p);
                g.iter()
                    .map(|v| v.value().as_slice().iter().map(|x| x * x).sum::<f64>())
                    .sum::<f64>()
                    .sqrt()
            })
            .collect())
    }

    /// Exact trace of the Gauss-Newton (Fisher) matrix `J^T A J` of the loss:
    /// in eval mode `(1/n) sum_i tr(J_i^T A_i J_i)` with `J_i` sample `i`'s logit
    /// Jacobian; in train mode the same per batch with the batch's Jacobian,
    /// averaged over batches. `A = diag(p) - p p^T` (CE, the model's own
    /// predictive distribution, no sampled labels) or `2 I` (MSE).
    /// Computed as `sum_{i,k} ||J^T (e_i c_{ik})||^2` with `A_i = C_i C_i^T`, one
    /// backward pass per sample and class: exact, not a Hutchinson estimate.
    pub fn fisher_trace(&self) -> f64 {
        let mode = self.tape_mode();
        let kind = self.net.arch.loss;
        let chunks: Vec<Range<usize>> = match self.mode {
            BnMode::Eval => (0..self.labels.len()).map(|i| i..i + 1).collect(),
            BnMode::Train { .. } => self.chunks.clone(),
        };
        let weights: Vec<f64> = match self.mode {
            BnMode::Eval => vec![1.0 / self.labels.len() as f64; chunks.len()],
            BnMode::Train { .. } => self.weights.clone(),
        };
        let one = |r: &Range<usize>| {
            let (xb, _) = self.chunk(r);
            let nb = r.len();
            let tape = Tape::new();
            let p = self.net.params_on_tape(&tape);
            let z = self.net.forward_tape(&p, &xb, mode).logits;
            let zv = z.value().clone();
            let k = zv.cols();
            let mut total = 0.0;
            for i in 0..nb {
                let c = curvature_factor(kind, zv.row(i));
                for col in 0..k {
                    let mut cot = Matrix::zeros(nb, k);
                    for a in 0..k {
                        cot.set(i, a, c[a * k + col]);
                    }
                    let g = tape.vjp(z, tape.constant(cot), &p);
                    total += g
                        .iter()
                        .map(|v| v.value().as_slice().iter().map(|x| x * x).sum::<f64>())
                        .sum::<f64>();
                }
            }
            // A chunk's loss is the mean over its nb samples (nb = 1 in eval mode).
            total / nb as f64
        };
        let parts: Vec<f64> = if crate::dist::distributed() && chunks.len() > 1 {
            // Several MPI ranks: work items of 4 chunks per thread, in parallel inside;
            // rank 0 gathers the chunks' values in chunk order for the sum below.
            let group = 4 * rayon::current_num_threads().max(1);
            let key = crate::dist::fingerprint(self.net.params.iter().map(|m| m.as_slice()));
            crate::dist::map_reduce(
                chunks.len().div_ceil(group),
                |i| {
                    let end = ((i + 1) * group).min(chunks.len());
                    Ok::<_, Error>((key, chunks[i * group..end].par_iter().map(one).collect()))
                },
                |groups: Vec<(u64, Vec<f64>)>| {
                    if groups.iter().any(|g| g.0 != key) {
                        return Err(Error::InvalidArgument(
                            "a rank's copy of the network differs from rank 0's: the ranks' computations diverged".into(),
                        ));
                    }
                    Ok(groups.into_iter().flat_map(|g| g.1).collect())
                },
            )
            .expect("with several ranks an error ends the job")
        } else {
            chunks.par_iter().map(one).collect()
        };
        parts.iter().zip(&weights).map(|(t, w)| t * w).sum()
    }
}

/// A factor `C` (K x K, row-major) with `C C^T = A`, the Hessian of the
/// per-sample loss in the logits: CE `diag(p) - p p^T` (`C = diag(sqrt p) - p sqrt(p)^T`,
/// exact since `sum p = 1`), MSE `2 I` (`C = sqrt2 I`).
fn curvature_factor(kind: LossKind, z: &[f64]) -> Vec<f64> {
    let k = z.len();
    let mut c = vec![0.0; k * k];
    match kind {
        LossKind::CrossEntropy => {
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / s).collect();
            for a in 0..k {
                for b in 0..k {
                    let d = if a == b { p[a].sqrt() } else { 0.0 };
                    c[a * k + b] = d - p[a] * p[b].sqrt();
                }
            }
        }
        LossKind::Mse => {
            for a in 0..k {
                c[a * k + a] = std::f64::consts::SQRT_2;
            }
        }
    }
    c
}

/// The Hessian of a [`NetObjective`] as an operator on `R^P`.
impl SymOp for NetObjective<'_> {
    fn dim(&self) -> usize {
        NetObjective::dim(self)
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        out.copy_from_slice(&self.hvp(v));
    }
}

/// The Hessian of a [`NetObjective`] with every chunk's forward pass and first
/// backward pass recorded once, in precision `T`, and kept: each product then
/// records only the double-backward pass (about 0.64 of a full product's time on
/// the sphere ConvNet), for solvers that apply the Hessian many times
/// ([`crate::linalg::lanczos_mixed`]). The recording is made on the first product
/// and holds about half of a product's peak tape per chunk for *every* chunk
/// ([`LinearizedHessian::recorded_bytes`]).
///
/// In f64 the products are bit-identical to [`NetObjective::hvp`]. In f32 the
/// network, data and directions are rounded to f32 and each chunk's product is
/// computed in f32 (relative error near `3e-5` on the ConvNet), the chunks'
/// results summed in f64 in chunk order. With several MPI ranks nothing is kept:
/// each product records its chunks afresh (the same bits).
pub struct LinearizedHessian<'o, 'a, T: Scalar> {
    obj: &'o NetObjective<'a>,
    net: Network<T>,
    x: Matrix<T>,
    tapes: std::sync::OnceLock<Vec<std::sync::Mutex<Recorded<T>>>>,
}

impl<'a> NetObjective<'a> {
    /// The Hessian operator in precision `T` with kept recordings ([`LinearizedHessian`]).
    pub fn linearized<T: Scalar>(&self) -> LinearizedHessian<'_, 'a, T> {
        LinearizedHessian {
            obj: self,
            net: self.net.cast::<T>(),
            x: self.x.cast::<T>(),
            tapes: std::sync::OnceLock::new(),
        }
    }
}

impl<T: Scalar> LinearizedHessian<'_, '_, T> {
    fn record(&self, r: &Range<usize>) -> Recorded<T> {
        let xb = self.x.rows_view(r.start, r.end).to_owned();
        let yb = &self.obj.labels[r.clone()];
        let mode = self.obj.tape_mode();
        record_gradient(&self.net.params, |_t, p| {
            self.net.loss_tape(p, &xb, yb, mode).0
        })
    }

    /// Bytes of the kept recordings (0 before the first product).
    pub fn recorded_bytes(&self) -> usize {
        self.tapes.get().map_or(0, |ts| {
            ts.iter()
                .map(|t| {
                    t.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .tape
                        .value_bytes()
                })
                .sum()
        })
    }

    /// `H v` in precision `T`, summed over the chunks in f64.
    pub fn hvp(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.obj.dim(), "hvp: direction length");
        let vt: Vec<T> = v.iter().map(|&a| T::from_f64(a)).collect();
        let dirs = unflatten(&vt, &self.net.params);
        let widen = |hv: Vec<Matrix<T>>| {
            let mut out = Vec::with_capacity(v.len());
            for m in hv {
                out.extend(m.as_slice().iter().map(|a| a.to_f64()));
            }
            out
        };
        if crate::dist::distributed() {
            let key = crate::dist::fingerprint([v]);
            return self
                .obj
                .reduce_chunks(v.len(), key, |r| {
                    (0.0, widen(hvp_on(&self.record(r), &dirs)))
                })
                .1;
        }
        let tapes = self.tapes.get_or_init(|| {
            self.obj
                .chunks
                .par_iter()
                .map(|r| std::sync::Mutex::new(self.record(r)))
                .collect()
        });
        let parts: Vec<(f64, Vec<f64>)> = tapes
            .par_iter()
            .map(|t| {
                let rec = t.lock().unwrap_or_else(|p| p.into_inner());
                (0.0, widen(hvp_on(&rec, &dirs)))
            })
            .collect();
        self.obj.sum_chunks(v.len(), parts).1
    }
}

impl<T: Scalar> SymOp for LinearizedHessian<'_, '_, T> {
    fn dim(&self) -> usize {
        self.obj.dim()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        out.copy_from_slice(&LinearizedHessian::hvp(self, v));
    }
}

/// The diagonal block of one range of parameters: `v -> P H P v` restricted to the range.
pub struct BlockOp<'o, 'a> {
    pub obj: &'o NetObjective<'a>,
    pub range: Range<usize>,
}

impl SymOp for BlockOp<'_, '_> {
    fn dim(&self) -> usize {
        self.range.len()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        let mut full = vec![0.0; self.obj.dim()];
        full[self.range.clone()].copy_from_slice(v);
        let hv = self.obj.hvp(&full);
        out.copy_from_slice(&hv[self.range.clone()]);
    }
}

fn flatten(ms: impl Iterator<Item = Matrix<f64>>) -> Vec<f64> {
    let mut v = Vec::new();
    for m in ms {
        v.extend_from_slice(m.as_slice());
    }
    v
}

/// Splits a flat vector into matrices shaped like `like`.
pub fn unflatten<T: Scalar>(v: &[T], like: &[Matrix<T>]) -> Vec<Matrix<T>> {
    let mut off = 0;
    like.iter()
        .map(|m| {
            let n = m.len();
            let out = Matrix::from_vec(m.rows(), m.cols(), v[off..off + n].to_vec());
            off += n;
            out
        })
        .collect()
}
