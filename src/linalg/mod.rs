//! Spectra of symmetric operators: Lanczos with full reorthogonalisation (Ritz
//! values, vectors and *true* residuals), Hutchinson and Hutch++ trace
//! estimates with confidence intervals, stochastic Lanczos quadrature, and
//! exact trace/diagonal by unit vectors. All randomness is seeded
//! ([`crate::rng::Rng`]), so every result is reproducible.

pub mod tridiagonal;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{dot, Matrix};
use serde::Serialize;

pub use tridiagonal::{tridiagonal_eigen, tridiagonal_ql};

/// A symmetric linear operator `v -> A v` on `R^dim`.
pub trait SymOp: Sync {
    fn dim(&self) -> usize;
    /// `out = A v` (`out` has length `dim`).
    fn apply(&self, v: &[f64], out: &mut [f64]);
}

/// A dense symmetric matrix as an operator.
pub struct DenseSym<'a>(pub &'a Matrix<f64>);

impl SymOp for DenseSym<'_> {
    fn dim(&self) -> usize {
        self.0.rows()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(self.0.row(i), v);
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (u, &v) in y.iter_mut().zip(x) {
        *u += a * v;
    }
}

/// Removes the components along `basis` (twice: classical Gram-Schmidt repeated).
fn orthogonalize(w: &mut [f64], basis: &[Vec<f64>]) {
    for _ in 0..2 {
        for b in basis {
            let c = dot(b, w);
            axpy(w, -c, b);
        }
    }
}

/// Which end(s) of the spectrum to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Largest(usize),
    Smallest(usize),
    BothEnds { largest: usize, smallest: usize },
}

#[derive(Clone, Debug)]
pub struct LanczosOptions {
    /// Maximum Krylov dimension.
    pub max_iter: usize,
    /// Stop when every wanted Ritz pair has `||A y - l y|| <= tol * ||A||_est`.
    pub tol: f64,
    pub seed: u64,
    /// Check convergence every this many iterations.
    pub check_every: usize,
}

impl Default for LanczosOptions {
    fn default() -> Self {
        Self {
            max_iter: 300,
            tol: 1e-10,
            seed: 0,
            check_every: 5,
        }
    }
}

/// Ritz pairs from [`lanczos`], wanted ones only, largest first then smallest ascending.
#[derive(Clone, Debug, Serialize)]
pub struct LanczosResult {
    pub values: Vec<f64>,
    #[serde(skip)]
    pub vectors: Vec<Vec<f64>>,
    /// True residual norms `||A y - l y||`, recomputed with the operator.
    pub residuals: Vec<f64>,
    /// Operator applications (of the operator the residuals are computed with).
    pub iterations: usize,
    /// Applications of a cheaper approximation of the operator that built the Krylov
    /// space ([`lanczos_mixed`]; 0 for [`lanczos`]).
    pub approx_products: usize,
    pub converged: bool,
    /// `max |Ritz value|`, the estimate of `||A||` used in the tolerance.
    pub norm_estimate: f64,
}

impl LanczosResult {
    /// `|l_i| - residual_i`: a floating-point lower bound on the magnitude of an
    /// eigenvalue of `A` (an eigenvalue lies within `residual` of `l`), so
    /// `certified_lower_bound(i) > bound` proves `||A|| > bound`.
    pub fn certified_lower_bound(&self, i: usize) -> f64 {
        self.values[i].abs() - self.residuals[i]
    }
}

fn wanted(which: Which, k: usize) -> Vec<usize> {
    // Indices into ascending eigenvalues of T_k.
    let (l, s) = match which {
        Which::Largest(l) => (l, 0),
        Which::Smallest(s) => (0, s),
        Which::BothEnds { largest, smallest } => (largest, smallest),
    };
    let mut idx: Vec<usize> = (0..l.min(k)).map(|i| k - 1 - i).collect();
    for i in 0..s.min(k) {
        if !idx.contains(&i) {
            idx.push(i);
        }
    }
    idx
}

/// Where the Lanczos vectors live: host memory ([`HostSpace`]) or a device (the CUDA
/// Hessian operator's space in `hessian::gpu`). The space owns the Krylov basis, so a
/// device keeps it contiguous and orthogonalises with two GEMVs.
pub trait KrylovSpace {
    type Vector;
    fn dim(&self) -> usize;
    /// Room for `n` basis vectors (called once, before the first [`KrylovSpace::push`]).
    fn reserve(&mut self, n: usize) -> Result<()>;
    fn upload(&self, v: &[f64]) -> Result<Self::Vector>;
    fn to_host(&self, v: &Self::Vector) -> Result<Vec<f64>>;
    /// `A v`.
    fn apply(&self, v: &Self::Vector) -> Result<Self::Vector>;
    fn dot(&self, a: &Self::Vector, b: &Self::Vector) -> Result<f64>;
    /// `s v`.
    fn scaled(&self, v: &Self::Vector, s: f64) -> Result<Self::Vector>;
    /// Appends a unit vector to the basis.
    fn push(&mut self, v: Self::Vector) -> Result<()>;
    fn basis_len(&self) -> usize;
    fn basis(&self, j: usize) -> &Self::Vector;
    /// Removes the components of `w` along the basis (Gram-Schmidt, twice).
    fn orthogonalize(&self, w: &mut Self::Vector) -> Result<()>;
    /// `sum_t coefs[t] basis[t]` over the first `coefs.len()` basis vectors.
    fn combine(&self, coefs: &[f64]) -> Result<Self::Vector>;
    /// `||av - l y||`.
    fn residual(&self, av: &Self::Vector, y: &Self::Vector, l: f64) -> Result<f64>;
}

/// Lanczos vectors in host memory around a [`SymOp`].
pub struct HostSpace<'a> {
    op: &'a dyn SymOp,
    basis: Vec<Vec<f64>>,
}

impl<'a> HostSpace<'a> {
    pub fn new(op: &'a dyn SymOp) -> Self {
        Self { op, basis: vec![] }
    }
}

impl KrylovSpace for HostSpace<'_> {
    type Vector = Vec<f64>;
    fn dim(&self) -> usize {
        self.op.dim()
    }
    fn reserve(&mut self, n: usize) -> Result<()> {
        self.basis.reserve(n);
        Ok(())
    }
    fn upload(&self, v: &[f64]) -> Result<Vec<f64>> {
        Ok(v.to_vec())
    }
    fn to_host(&self, v: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(v.clone())
    }
    fn apply(&self, v: &Vec<f64>) -> Result<Vec<f64>> {
        let mut w = vec![0.0; v.len()];
        self.op.apply(v, &mut w);
        Ok(w)
    }
    fn dot(&self, a: &Vec<f64>, b: &Vec<f64>) -> Result<f64> {
        Ok(dot(a, b))
    }
    fn scaled(&self, v: &Vec<f64>, s: f64) -> Result<Vec<f64>> {
        Ok(v.iter().map(|x| x * s).collect())
    }
    fn push(&mut self, v: Vec<f64>) -> Result<()> {
        self.basis.push(v);
        Ok(())
    }
    fn basis_len(&self) -> usize {
        self.basis.len()
    }
    fn basis(&self, j: usize) -> &Vec<f64> {
        &self.basis[j]
    }
    fn orthogonalize(&self, w: &mut Vec<f64>) -> Result<()> {
        orthogonalize(w, &self.basis);
        Ok(())
    }
    fn combine(&self, coefs: &[f64]) -> Result<Vec<f64>> {
        let mut y = vec![0.0; self.dim()];
        for (c, b) in coefs.iter().zip(&self.basis) {
            axpy(&mut y, *c, b);
        }
        Ok(y)
    }
    fn residual(&self, av: &Vec<f64>, y: &Vec<f64>, l: f64) -> Result<f64> {
        Ok(av
            .iter()
            .zip(y)
            .map(|(a, b)| (a - l * b).powi(2))
            .sum::<f64>()
            .sqrt())
    }
}

/// A unit vector orthogonal to the space's basis, from seeded Gaussian draws.
fn random_unit_in<S: KrylovSpace>(space: &S, rng: &mut Rng) -> Result<Option<S::Vector>> {
    for _ in 0..5 {
        let v: Vec<f64> = (0..space.dim()).map(|_| rng.normal()).collect();
        let mut v = space.upload(&v)?;
        space.orthogonalize(&mut v)?;
        let n = space.dot(&v, &v)?.sqrt();
        if n > 1e-8 {
            return Ok(Some(space.scaled(&v, 1.0 / n)?));
        }
    }
    Ok(None)
}

/// Lanczos with full reorthogonalisation.
pub fn lanczos(op: &dyn SymOp, which: Which, opts: &LanczosOptions) -> Result<LanczosResult> {
    lanczos_in(&mut HostSpace::new(op), which, opts)
}

/// [`lanczos`] in any [`KrylovSpace`]: the Krylov basis, the products and the
/// reorthogonalisation stay in the space; only the tridiagonal problem is on the host.
pub fn lanczos_in<S: KrylovSpace>(
    space: &mut S,
    which: Which,
    opts: &LanczosOptions,
) -> Result<LanczosResult> {
    let ritz = krylov_ritz(space, which, opts, None)?;
    certify_in(space, ritz)
}

/// The wanted Ritz pairs of a Krylov run, before their residuals are computed.
struct RitzPairs<V> {
    values: Vec<f64>,
    vectors: Vec<V>,
    /// Each unit Ritz vector's coefficients in the Krylov basis, in basis order.
    coefficients: Vec<Vec<f64>>,
    /// Whether the Lanczos estimates met the tolerance.
    estimated_converged: bool,
    matvecs: usize,
    /// `max |Ritz value|` over all Ritz values of `T_k`.
    anorm: f64,
    tol: f64,
}

/// Lanczos iterations from `start` (a random unit vector when `None`) until every
/// wanted Ritz pair's estimate `beta_k |s_k|` meets `opts.tol * ||A||_est` or the
/// Krylov dimension reaches `opts.max_iter`; returns the normalised Ritz vectors.
fn krylov_ritz<S: KrylovSpace>(
    space: &mut S,
    which: Which,
    opts: &LanczosOptions,
    start: Option<&[f64]>,
) -> Result<RitzPairs<S::Vector>> {
    let n = space.dim();
    let count = match which {
        Which::Largest(l) | Which::Smallest(l) => l,
        // The two ends may overlap in small dimensions; each end must fit.
        Which::BothEnds { largest, smallest } => largest.max(smallest),
    };
    if n == 0 {
        return Err(Error::InvalidArgument(
            "Lanczos on an empty operator".into(),
        ));
    }
    if count == 0 {
        return Err(Error::InvalidArgument(
            "Lanczos: ask for at least one eigenvalue".into(),
        ));
    }
    if count > n {
        return Err(Error::InvalidArgument(format!(
            "asked for {count} eigenvalues of a {n} x {n} operator"
        )));
    }
    if opts.tol.is_nan() || opts.tol <= 0.0 {
        return Err(Error::InvalidArgument(
            "Lanczos tolerance must be positive".into(),
        ));
    }
    let max_iter = opts.max_iter.clamp(count, n);
    space.reserve(max_iter + 1)?;
    let mut rng = Rng::new(opts.seed);
    let first = match start {
        Some(v) if v.len() == n && norm(v) > 0.0 && norm(v).is_finite() => {
            let u = space.upload(v)?;
            space.scaled(&u, 1.0 / norm(v))?
        }
        Some(_) => {
            return Err(Error::InvalidArgument(
                "Lanczos: the start vector must be finite, nonzero and of the operator's size"
                    .into(),
            ))
        }
        None => random_unit_in(space, &mut rng)?
            .ok_or_else(|| Error::InvalidArgument("Lanczos: no random start vector".into()))?,
    };
    space.push(first)?;
    let (mut alpha, mut beta) = (Vec::<f64>::new(), Vec::<f64>::new());
    let mut matvecs = 0;
    let mut done = false;
    let non_finite = || Error::NonFiniteInput("the operator returned NaN or Inf".into());
    loop {
        let j = space.basis_len() - 1;
        let mut w = space.apply(space.basis(j))?;
        matvecs += 1;
        if !space.dot(&w, &w)?.is_finite() {
            return Err(non_finite());
        }
        let a = space.dot(space.basis(j), &w)?;
        alpha.push(a);
        space.orthogonalize(&mut w)?;
        let b = space.dot(&w, &w)?.sqrt();
        let k = alpha.len();
        let check =
            k == max_iter || k % opts.check_every.max(1) == 0 || b <= 1e-12 * a.abs().max(1e-300);
        if check && k >= count {
            let (vals, vecs) = tridiagonal_eigen(&alpha, &beta);
            let anorm = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let ok = wanted(which, k)
                .iter()
                .all(|&i| b * vecs.get(k - 1, i).abs() <= opts.tol * anorm.max(1e-300));
            if ok || k == max_iter {
                done = ok;
                break;
            }
        }
        if k == max_iter {
            break;
        }
        if b <= 1e-12 * a.abs().max(1.0) {
            // Invariant subspace: continue with a fresh direction orthogonal to the basis.
            match random_unit_in(space, &mut rng)? {
                Some(v) => {
                    beta.push(0.0);
                    space.push(v)?;
                }
                None => break,
            }
        } else {
            beta.push(b);
            let q = space.scaled(&w, 1.0 / b)?;
            space.push(q)?;
        }
    }
    let k = alpha.len();
    let (vals, vecs) = tridiagonal_eigen(&alpha, &beta[..k - 1]);
    let anorm = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut values = Vec::new();
    let mut vectors = Vec::new();
    let mut coefficients = Vec::new();
    for i in wanted(which, k) {
        let coefs: Vec<f64> = (0..k).map(|t| vecs.get(t, i)).collect();
        let y = space.combine(&coefs)?;
        let yn = space.dot(&y, &y)?.sqrt();
        values.push(vals[i]);
        vectors.push(space.scaled(&y, 1.0 / yn)?);
        coefficients.push(coefs.iter().map(|c| c / yn).collect());
    }
    Ok(RitzPairs {
        values,
        vectors,
        coefficients,
        estimated_converged: done,
        matvecs,
        anorm,
        tol: opts.tol,
    })
}

/// True residuals `||A y - l y||` of the Ritz pairs, each with one product by the
/// space's operator; converged when every one is within `10 tol ||A||_est`.
fn certify_in<S: KrylovSpace>(space: &S, ritz: RitzPairs<S::Vector>) -> Result<LanczosResult> {
    let mut vectors = Vec::new();
    let mut residuals = Vec::new();
    let mut conv = ritz.estimated_converged;
    let mut matvecs = ritz.matvecs;
    for (y, &l) in ritz.vectors.iter().zip(&ritz.values) {
        let av = space.apply(y)?;
        matvecs += 1;
        let r = space.residual(&av, y, l)?;
        if !r.is_finite() {
            return Err(Error::NonFiniteInput(
                "the operator returned NaN or Inf".into(),
            ));
        }
        conv &= r <= ritz.tol.max(1e-14) * ritz.anorm.max(1e-300) * 10.0;
        vectors.push(space.to_host(y)?);
        residuals.push(r);
    }
    Ok(LanczosResult {
        values: ritz.values,
        vectors,
        residuals,
        iterations: matvecs,
        approx_products: 0,
        converged: conv,
        norm_estimate: ritz.anorm,
    })
}

/// Relative accuracy asked of the approximate operator's Krylov stage of
/// [`lanczos_mixed`]: f32 Hessian-vector products carry relative errors near
/// `3e-5` (measured on the ConvNet), so a tighter stage cannot pay off.
pub const APPROX_STAGE_TOL: f64 = 1e-4;

/// An operator that keeps a copy of every product it computes, in order.
struct Recorded<'a> {
    op: &'a dyn SymOp,
    products: std::sync::Mutex<Vec<Vec<f64>>>,
}

impl SymOp for Recorded<'_> {
    fn dim(&self) -> usize {
        self.op.dim()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        self.op.apply(v, out);
        self.products
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(out.to_vec());
    }
}

/// Lanczos whose Krylov space is first built with `approx`, a cheaper
/// approximation of the operator `exact` (the Hessian in f32 arithmetic), and
/// whose results are `exact`'s:
/// 1. Lanczos with full reorthogonalisation on `approx` until the Ritz estimates
///    meet `max(opts.tol, APPROX_STAGE_TOL) * ||A||_est`;
/// 2. Lanczos on `exact` from the normalised sum of those Ritz vectors (rich in
///    the wanted directions, so few exact products are needed) until its
///    estimates meet `opts.tol * ||A||_est`;
/// 3. each Ritz vector `y = sum_t c_t q_t` of stage 2 is certified with the
///    exact products already made, `A y = sum_t c_t (A q_t)` (linearity; the
///    same vector as a fresh product up to rounding): the value is the Rayleigh
///    quotient `l = y^T A y` and the residual `||A y - l y||`, so `[l - r, l + r]`
///    holds an eigenvalue of `exact` whatever the approximation's error.
///
/// `approx` is taken by value and dropped after its stage, so memory it holds
/// (kept recordings) is free for `exact`'s. `iterations` counts the products by
/// `exact`, `approx_products` those by `approx`;
/// `converged` when every residual is within `10 opts.tol ||A||_est` (as [`lanczos`]).
pub fn lanczos_mixed<A: SymOp>(
    approx: A,
    exact: &dyn SymOp,
    which: Which,
    opts: &LanczosOptions,
) -> Result<LanczosResult> {
    if approx.dim() != exact.dim() {
        return Err(Error::Shape(format!(
            "mixed Lanczos: operators of sizes {} and {}",
            approx.dim(),
            exact.dim()
        )));
    }
    let stage = LanczosOptions {
        tol: opts.tol.max(APPROX_STAGE_TOL),
        ..opts.clone()
    };
    let rough = krylov_ritz(&mut HostSpace::new(&approx), which, &stage, None)?;
    // The approximation's memory (kept recordings) is freed before the exact stage.
    drop(approx);
    let mut start = vec![0.0; exact.dim()];
    for y in &rough.vectors {
        axpy(&mut start, 1.0, y);
    }
    let recorded = Recorded {
        op: exact,
        products: std::sync::Mutex::new(Vec::new()),
    };
    let fine = krylov_ritz(&mut HostSpace::new(&recorded), which, opts, Some(&start))?;
    let products = recorded
        .products
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let mut values = Vec::new();
    let mut residuals = Vec::new();
    let mut conv = fine.estimated_converged;
    for (y, coefs) in fine.vectors.iter().zip(&fine.coefficients) {
        let mut ay = vec![0.0; exact.dim()];
        for (c, aq) in coefs.iter().zip(&products) {
            axpy(&mut ay, *c, aq);
        }
        let l = dot(y, &ay);
        let r = ay
            .iter()
            .zip(y)
            .map(|(a, b)| (a - l * b).powi(2))
            .sum::<f64>()
            .sqrt();
        if !r.is_finite() {
            return Err(Error::NonFiniteInput(
                "the operator returned NaN or Inf".into(),
            ));
        }
        conv &= r <= opts.tol.max(1e-14) * fine.anorm.max(1e-300) * 10.0;
        values.push(l);
        residuals.push(r);
    }
    Ok(LanczosResult {
        values,
        vectors: fine.vectors,
        residuals,
        iterations: fine.matvecs,
        approx_products: rough.matvecs,
        converged: conv,
        norm_estimate: fine.anorm,
    })
}

/// `||A||_2 = max(|lambda_max|, |lambda_min|)` of a symmetric operator by Lanczos at both ends.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorNorm {
    pub norm: f64,
    pub lambda_max: f64,
    pub lambda_min: f64,
    /// True residual of the Ritz pair that gives the norm; `norm - residual` is a certified lower bound.
    pub residual: f64,
    pub converged: bool,
}

/// [`OperatorNorm`] of `op` (Lanczos with both ends, one Ritz value each).
pub fn operator_norm(op: &dyn SymOp, opts: &LanczosOptions) -> Result<OperatorNorm> {
    let r = lanczos(
        op,
        Which::BothEnds {
            largest: 1,
            smallest: 1,
        },
        opts,
    )?;
    let (hi, lo) = (r.values[0], *r.values.last().expect("two ends"));
    let (hi_res, lo_res) = (r.residuals[0], *r.residuals.last().expect("two ends"));
    let (norm, residual) = if hi.abs() >= lo.abs() {
        (hi.abs(), hi_res)
    } else {
        (lo.abs(), lo_res)
    };
    Ok(OperatorNorm {
        norm,
        lambda_max: hi,
        lambda_min: lo,
        residual,
        converged: r.converged,
    })
}

/// A trace estimate with a 95% confidence interval.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEstimate {
    pub estimate: f64,
    pub std_error: f64,
    pub ci95: (f64, f64),
    pub matvecs: usize,
    pub method: String,
}

/// Two-sided 97.5% Student-t quantile for `df` degrees of freedom.
pub fn t_quantile_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        31..=60 => 2.042 - (df - 30) as f64 * (2.042 - 2.000) / 30.0,
        61..=120 => 2.000 - (df - 60) as f64 * (2.000 - 1.980) / 60.0,
        _ => 1.96,
    }
}

fn check_finite(v: &[f64]) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFiniteInput(
            "the operator returned NaN or Inf".into(),
        ))
    }
}

fn rademacher(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n)
        .map(|_| if rng.next_u64() >> 63 == 1 { 1.0 } else { -1.0 })
        .collect()
}

fn mean_ci(samples: &[f64], shift: f64, scale: f64, method: &str, matvecs: usize) -> TraceEstimate {
    let m = samples.len();
    let mean = samples.iter().sum::<f64>() / m as f64;
    let var = if m > 1 {
        samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (m - 1) as f64
    } else {
        f64::INFINITY
    };
    let se = scale * (var / m as f64).sqrt();
    let est = shift + scale * mean;
    let t = t_quantile_975(m.saturating_sub(1));
    TraceEstimate {
        estimate: est,
        std_error: se,
        ci95: (est - t * se, est + t * se),
        matvecs,
        method: method.into(),
    }
}

/// Hutchinson's estimator with `probes` Rademacher vectors: `tr A ~ mean z^T A z`.
pub fn hutchinson(op: &dyn SymOp, probes: usize, seed: u64) -> Result<TraceEstimate> {
    if probes < 2 {
        return Err(Error::InvalidArgument(
            "Hutchinson needs at least 2 probes for an interval".into(),
        ));
    }
    let n = op.dim();
    let mut rng = Rng::new(seed);
    let zs: Vec<Vec<f64>> = (0..probes).map(|_| rademacher(n, &mut rng)).collect();
    let azs = apply_many(op, &zs)?;
    let samples: Vec<f64> = zs.iter().zip(&azs).map(|(z, az)| dot(z, az)).collect();
    Ok(mean_ci(&samples, 0.0, 1.0, "hutchinson", probes))
}

/// `A v` for every `v` of `vs`, in order; each product a work item that may run on any
/// MPI rank (`crate::dist::map_items`), so the products do not depend on the rank count.
/// An error at the first product with a non-finite entry.
pub fn apply_many(op: &dyn SymOp, vs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    crate::dist::map_items(
        vs.len(),
        |i| {
            let mut out = vec![0.0; op.dim()];
            op.apply(&vs[i], &mut out);
            check_finite(&out)?;
            Ok::<_, Error>(out)
        },
        || {},
    )
}

/// Hutchinson estimates of the traces of several diagonal blocks at once: with
/// Rademacher `z` on the whole space, `z_b^T (A z)_b` is unbiased for `tr A_bb`
/// (the cross terms have mean zero), so `probes` products serve every block.
pub fn block_hutchinson(
    op: &dyn SymOp,
    blocks: &[std::ops::Range<usize>],
    probes: usize,
    seed: u64,
) -> Result<Vec<TraceEstimate>> {
    if probes < 2 {
        return Err(Error::InvalidArgument(
            "Hutchinson needs at least 2 probes for an interval".into(),
        ));
    }
    let n = op.dim();
    if blocks.iter().any(|b| b.end > n) {
        return Err(Error::Shape(
            "a block runs past the operator's dimension".into(),
        ));
    }
    let mut rng = Rng::new(seed);
    let mut az = vec![0.0; n];
    let mut samples = vec![Vec::with_capacity(probes); blocks.len()];
    for _ in 0..probes {
        let z = rademacher(n, &mut rng);
        op.apply(&z, &mut az);
        check_finite(&az)?;
        for (s, b) in samples.iter_mut().zip(blocks) {
            s.push(dot(&z[b.clone()], &az[b.clone()]));
        }
    }
    Ok(samples
        .iter()
        .map(|s| {
            mean_ci(
                s,
                0.0,
                1.0,
                "hutchinson (shared probes over blocks)",
                probes,
            )
        })
        .collect())
}

/// Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with about `matvecs` products:
/// `Q = orth(A S)` from `s = matvecs/3` sketch vectors, `tr(Q^T A Q)` exactly, plus
/// Hutchinson on `(I - QQ^T) A (I - QQ^T)`; the interval comes from the residual part.
pub fn hutch_pp(op: &dyn SymOp, matvecs: usize, seed: u64) -> Result<TraceEstimate> {
    let n = op.dim();
    let s = (matvecs / 3).max(1).min(n);
    let g = matvecs.saturating_sub(2 * s).max(2);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(s);
    // The products of each stage are independent: one batch each (see `apply_many`).
    let sketch: Vec<Vec<f64>> = (0..s).map(|_| rademacher(n, &mut rng)).collect();
    for buf in apply_many(op, &sketch)? {
        let mut v = buf.clone();
        orthogonalize(&mut v, &q);
        let nv = norm(&v);
        if nv > 1e-10 * norm(&buf).max(1e-300) {
            v.iter_mut().for_each(|x| *x /= nv);
            q.push(v);
        }
    }
    let mut exact = 0.0;
    for (v, buf) in q.iter().zip(apply_many(op, &q)?) {
        exact += dot(v, &buf);
    }
    let zs: Vec<Vec<f64>> = (0..g)
        .map(|_| {
            let mut z = rademacher(n, &mut rng);
            orthogonalize(&mut z, &q);
            z
        })
        .collect();
    let samples: Vec<f64> = zs
        .iter()
        .zip(apply_many(op, &zs)?)
        .map(|(z, buf)| dot(z, &buf))
        .collect();
    Ok(mean_ci(&samples, exact, 1.0, "hutch++", 2 * q.len() + g))
}

/// Exact trace by `dim` unit-vector products.
pub fn exact_trace(op: &dyn SymOp) -> f64 {
    exact_diag(op).iter().sum()
}

/// Exact diagonal by `dim` unit-vector products.
pub fn exact_diag(op: &dyn SymOp) -> Vec<f64> {
    let n = op.dim();
    let mut e = vec![0.0; n];
    let mut out = vec![0.0; n];
    (0..n)
        .map(|i| {
            e[i] = 1.0;
            op.apply(&e, &mut out);
            e[i] = 0.0;
            out[i]
        })
        .collect()
}

/// Stochastic Lanczos quadrature: per probe, the Ritz values (nodes) and squared
/// first eigenvector components (weights) of the Lanczos tridiagonal.
#[derive(Clone, Debug, Serialize)]
pub struct SpectralDensity {
    pub nodes: Vec<Vec<f64>>,
    pub weights: Vec<Vec<f64>>,
}

impl SpectralDensity {
    /// Gaussian-smoothed density on `grid` (integrates to about 1).
    pub fn density(&self, grid: &[f64], sigma: f64) -> Vec<f64> {
        let c = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt() * self.nodes.len() as f64);
        grid.iter()
            .map(|&x| {
                self.nodes
                    .iter()
                    .zip(&self.weights)
                    .map(|(ns, ws)| {
                        ns.iter()
                            .zip(ws)
                            .map(|(n, w)| w * (-(x - n).powi(2) / (2.0 * sigma * sigma)).exp())
                            .sum::<f64>()
                    })
                    .sum::<f64>()
                    * c
            })
            .collect()
    }
    /// `dim * mean_probe sum_i w_i l_i`.
    pub fn estimated_trace(&self, dim: usize) -> f64 {
        let per: Vec<f64> = self
            .nodes
            .iter()
            .zip(&self.weights)
            .map(|(n, w)| n.iter().zip(w).map(|(a, b)| a * b).sum())
            .collect();
        dim as f64 * per.iter().sum::<f64>() / per.len() as f64
    }
    /// Smallest and largest node.
    pub fn range(&self) -> (f64, f64) {
        let all = self.nodes.iter().flatten();
        all.clone()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }
}

/// SLQ with `probes` Rademacher start vectors and `steps` Lanczos steps each.
pub fn slq(op: &dyn SymOp, probes: usize, steps: usize, seed: u64) -> Result<SpectralDensity> {
    let n = op.dim();
    if probes == 0 || steps == 0 {
        return Err(Error::InvalidArgument(
            "SLQ needs at least one probe and one step".into(),
        ));
    }
    let steps = steps.min(n);
    let mut rng = Rng::new(seed ^ 0x51c);
    let mut out = SpectralDensity {
        nodes: vec![],
        weights: vec![],
    };
    let mut w = vec![0.0; n];
    for _ in 0..probes {
        let z = rademacher(n, &mut rng);
        let nz = norm(&z);
        let mut basis = vec![z.iter().map(|x| x / nz).collect::<Vec<f64>>()];
        let (mut alpha, mut beta) = (vec![], vec![]);
        for j in 0..steps {
            op.apply(&basis[j], &mut w);
            check_finite(&w)?;
            alpha.push(dot(&basis[j], &w));
            orthogonalize(&mut w, &basis);
            let b = norm(&w);
            if j + 1 == steps || b <= 1e-12 * alpha[j].abs().max(1e-300) {
                break;
            }
            beta.push(b);
            basis.push(w.iter().map(|x| x / b).collect());
        }
        let (vals, vecs) = tridiagonal_eigen(&alpha, &beta);
        out.weights
            .push((0..vals.len()).map(|i| vecs.get(0, i).powi(2)).collect());
        out.nodes.push(vals);
    }
    Ok(out)
}
