//! The exact-Hessian hot paths on a CUDA device: per-sample structure, per-sample GN
//! norms (K x K route), dense GN / H-term / full Hessian assembly and analytic HVPs.
//!
//! Each function mirrors its CPU twin and uses the same formulas and notation
//! (`structure.rs`, `gn_norm.rs`, `dense.rs`, `hvp.rs`): structure-aware work runs in
//! the hand-written kernels of `kernels/*.cu` ([`Kernels`]); plain large GEMMs, batched
//! per-sample products included, run on cuBLAS. Generic over `f32` and `f64`; the host
//! interface stays `f64` (the model, the data, the results).

use super::dense::Part;
use super::gn_norm::GnNorms;
use super::structure::{check_model, ParamLayout};
use crate::backend::cuda::kernels::Kernels;
use crate::backend::cuda::{launch_activation, CudaDevice, CudaScalar, Operand};
use crate::error::{Error, Result};
use crate::linalg::SymOp;
use crate::nn::{Activation, LossKind, Mlp};
use crate::tensor::{Matrix, Scalar};
use cudarc::driver::CudaSlice;

/// Samples per chunk of the per-sample GN norms (bounds device memory).
pub const GPU_GN_CHUNK: usize = 16_384;

/// An MLP's parameters in device memory (no BatchNorm).
pub struct GpuModel<T> {
    pub widths: Vec<usize>,
    pub bias: bool,
    pub activation: Activation,
    pub slope: f64,
    pub loss: LossKind,
    /// `W(p)`, `d_p x n_p` row-major.
    weights: Vec<CudaSlice<T>>,
    /// `b(p)`, length `d_p`.
    biases: Vec<Option<CudaSlice<T>>>,
}

fn cast<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

impl<T: CudaScalar> GpuModel<T> {
    pub fn upload(dev: &CudaDevice, model: &Mlp<f64>) -> Result<Self> {
        check_model(model)?;
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for l in &model.layers {
            weights.push(dev.upload_slice(&cast::<T>(l.weight.as_slice()))?);
            biases.push(match &l.bias {
                Some(b) => Some(dev.upload_slice(&cast::<T>(b.as_slice()))?),
                None => None,
            });
        }
        Ok(Self {
            widths: model.config.widths(),
            bias: model.config.bias,
            activation: model.config.activation,
            slope: model.config.leaky_slope,
            loss: model.config.loss,
            weights,
            biases,
        })
    }
    pub fn num_layers(&self) -> usize {
        self.weights.len()
    }
    pub fn classes(&self) -> usize {
        *self.widths.last().expect("widths")
    }
    /// Input width `n_p` and output width `d_p` of layer `p`.
    fn dims(&self, p: usize) -> (usize, usize) {
        (self.widths[p], self.widths[p + 1])
    }
}

/// Forward and backward quantities of `m` samples on the device (see `structure.rs`).
pub struct GpuStructure<T> {
    pub m: usize,
    /// `x(p)`, `m x n_p`, `p = 0..L` (`x(0)` is the data).
    pub inputs: Vec<CudaSlice<T>>,
    /// `z(p)`, `m x d_p`; the last holds the logits.
    pub pre: Vec<CudaSlice<T>>,
    /// `act'(z(p))`, hidden layers.
    pub dact: Vec<CudaSlice<T>>,
    /// `act''(z(p))`, hidden layers, only for smooth activations.
    pub ddact: Vec<CudaSlice<T>>,
    pub labels: CudaSlice<u32>,
    /// `r = dl/dz(L-1)`, `m x K`.
    pub residual: CudaSlice<T>,
    pub losses: CudaSlice<T>,
    /// `C_s` with `A_s = C_s C_s^T`, stacked `K x K` (empty unless requested).
    pub cfac: Option<CudaSlice<T>>,
    /// `G(p)` stacked `(m K) x d_p` (empty unless requested).
    pub g: Vec<CudaSlice<T>>,
    /// `delta(p) = G(p)^T r`, `m x d_p` (empty unless requested).
    pub delta: Vec<CudaSlice<T>>,
}

/// What [`GpuStructure::new`] computes beyond the forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    pub g: bool,
    pub cfac: bool,
    pub delta: bool,
}

/// Uploads `x` (as `T`) and the labels after the same checks as the CPU path.
fn upload_data<T: CudaScalar>(
    dev: &CudaDevice,
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
) -> Result<(CudaSlice<T>, CudaSlice<u32>)> {
    check_model(model)?;
    super::structure::check_samples(model, x, labels)?;
    let xs = dev.upload_slice(&cast::<T>(x.as_slice()))?;
    let ys: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
    Ok((xs, dev.upload_slice(&ys)?))
}

impl<T: CudaScalar> GpuStructure<T> {
    /// Forward pass, masks, loss factors and (on request) `G(p)`, `C` and `delta(p)`
    /// for the `m` samples in `x` (`m x n_0`, consumed).
    pub fn new(
        dev: &CudaDevice,
        gm: &GpuModel<T>,
        x: CudaSlice<T>,
        labels: CudaSlice<u32>,
        m: usize,
        needs: Needs,
    ) -> Result<Self> {
        let kern = Kernels::<T>::new(dev);
        let nl = gm.num_layers();
        let k = gm.classes();
        let slope = T::from_f64(gm.slope);
        let mut inputs = vec![x];
        let mut pre = Vec::with_capacity(nl);
        let mut dact = Vec::new();
        let mut ddact = Vec::new();
        for p in 0..nl {
            let (n, d) = gm.dims(p);
            let mut z = dev.zeros_slice::<T>(m * d)?;
            dev.gemm(
                T::ONE,
                &inputs[p],
                Operand::new(m, n, false),
                &gm.weights[p],
                Operand::new(d, n, true),
                T::ZERO,
                &mut z,
                (m, d),
            )?;
            if let Some(b) = &gm.biases[p] {
                kern.add_row_vector(&mut z.as_view_mut(), &b.as_view(), m, d)?;
            }
            if p + 1 < nl {
                let mut xa = dev.zeros_slice::<T>(m * d)?;
                launch_activation(dev, "fwd", gm.activation, slope, &z, &mut xa, m * d)?;
                let mut da = dev.zeros_slice::<T>(m * d)?;
                launch_activation(dev, "deriv", gm.activation, slope, &z, &mut da, m * d)?;
                if !gm.activation.is_piecewise_linear() {
                    let mut dd = dev.zeros_slice::<T>(m * d)?;
                    launch_activation(
                        dev,
                        "second_deriv",
                        gm.activation,
                        slope,
                        &z,
                        &mut dd,
                        m * d,
                    )?;
                    ddact.push(dd);
                }
                inputs.push(xa);
                dact.push(da);
            }
            pre.push(z);
        }
        let mut residual = dev.zeros_slice::<T>(m * k)?;
        let mut losses = dev.zeros_slice::<T>(m)?;
        let mut cfac = if needs.cfac {
            Some(dev.zeros_slice::<T>(m * k * k)?)
        } else {
            None
        };
        kern.loss_top(
            &pre[nl - 1].as_view(),
            &labels.as_view(),
            m,
            k,
            gm.loss,
            &mut residual.as_view_mut(),
            &mut losses.as_view_mut(),
            cfac.as_mut().map(|c| c.as_view_mut()).as_mut(),
        )?;
        let mut g = Vec::new();
        if needs.g {
            // G(L-1) = I_K; G(p) = G(p+1) W(p+1) D(p).
            let mut stack: Vec<Option<CudaSlice<T>>> = (0..nl).map(|_| None).collect();
            let mut top = dev.zeros_slice::<T>(m * k * k)?;
            kern.identity_stack(&mut top.as_view_mut(), m, k)?;
            stack[nl - 1] = Some(top);
            for p in (0..nl - 1).rev() {
                let (n1, d1) = gm.dims(p + 1);
                let mut gp = dev.zeros_slice::<T>(m * k * n1)?;
                dev.gemm(
                    T::ONE,
                    stack[p + 1].as_ref().expect("built top-down"),
                    Operand::new(m * k, d1, false),
                    &gm.weights[p + 1],
                    Operand::new(d1, n1, false),
                    T::ZERO,
                    &mut gp,
                    (m * k, n1),
                )?;
                kern.scale_stacked_cols(&mut gp.as_view_mut(), &dact[p].as_view(), m, k, n1)?;
                stack[p] = Some(gp);
            }
            g = stack.into_iter().map(|s| s.expect("all layers")).collect();
        }
        let mut delta = Vec::new();
        if needs.delta {
            let mut stack: Vec<Option<CudaSlice<T>>> = (0..nl).map(|_| None).collect();
            stack[nl - 1] = Some(residual.clone());
            for p in (0..nl - 1).rev() {
                let (n1, d1) = gm.dims(p + 1);
                let mut dp = dev.zeros_slice::<T>(m * n1)?;
                dev.gemm(
                    T::ONE,
                    stack[p + 1].as_ref().expect("built top-down"),
                    Operand::new(m, d1, false),
                    &gm.weights[p + 1],
                    Operand::new(d1, n1, false),
                    T::ZERO,
                    &mut dp,
                    (m, n1),
                )?;
                kern.mul_elementwise(&mut dp.as_view_mut(), &dact[p].as_view(), m * n1)?;
                stack[p] = Some(dp);
            }
            delta = stack.into_iter().map(|s| s.expect("all layers")).collect();
        }
        Ok(Self {
            m,
            inputs,
            pre,
            dact,
            ddact,
            labels,
            residual,
            losses,
            cfac,
            g,
            delta,
        })
    }
}

/// Per-sample GN results left on the device (see [`gpu_gn_norms_resident`]).
pub struct GnNormsDevice<T> {
    pub norms: CudaSlice<T>,
    pub ranks: CudaSlice<i32>,
    pub losses: CudaSlice<T>,
}

/// Per-sample `||GN_i||_2`, ranks and losses of `m` samples already on the device
/// (`x` is `m x n_0`, copied on the device; the model has `K <= 32` classes):
/// `M_i = sum_p (||x_i(p)||^2 + [bias]) G_i(p) G_i(p)^T`, then Jacobi on `C_i^T M_i C_i`.
pub fn gpu_gn_norms_resident<T: CudaScalar>(
    dev: &CudaDevice,
    gm: &GpuModel<T>,
    x: &CudaSlice<T>,
    labels: &CudaSlice<u32>,
    m: usize,
) -> Result<GnNormsDevice<T>> {
    let k = gm.classes();
    if k > 32 {
        return Err(Error::Unsupported(format!(
            "GPU per-sample GN norms support up to 32 classes (the model has {k}); use --device cpu"
        )));
    }
    let kern = Kernels::<T>::new(dev);
    let nl = gm.num_layers();
    let rank_tol = T::from_f64(if T::DTYPE == "f64" { 1e-12 } else { 1e-5 });
    let copy = crate::backend::cuda::cuda_err("device copy");
    let xs = dev.stream().clone_dtod(x).map_err(copy)?;
    let ys = dev
        .stream()
        .clone_dtod(labels)
        .map_err(crate::backend::cuda::cuda_err("device copy"))?;
    let needs = Needs {
        g: true,
        cfac: true,
        delta: false,
    };
    let st = GpuStructure::new(dev, gm, xs, ys, m, needs)?;
    let mut mm = dev.zeros_slice::<T>(m * k * k)?;
    let mut coef = dev.zeros_slice::<T>(m)?;
    let add = if gm.bias { T::ONE } else { T::ZERO };
    for p in 0..nl {
        let n = gm.widths[p];
        kern.row_sq_norms(&st.inputs[p].as_view(), m, n, add, &mut coef.as_view_mut())?;
        if p + 1 == nl {
            kern.add_scaled_identity(&mut mm.as_view_mut(), m, k, &coef.as_view())?;
        } else {
            let d = gm.widths[p + 1];
            kern.gram_accumulate(
                &st.g[p].as_view(),
                m,
                k,
                d,
                &coef.as_view(),
                &mut mm.as_view_mut(),
            )?;
        }
    }
    let mut norms = dev.zeros_slice::<T>(m)?;
    let mut ranks = dev.zeros_slice::<i32>(m)?;
    let cf = st.cfac.as_ref().expect("requested");
    kern.gn_norm_jacobi(
        &mm.as_view(),
        &cf.as_view(),
        m,
        k,
        rank_tol,
        &mut norms.as_view_mut(),
        &mut ranks.as_view_mut(),
    )?;
    Ok(GnNormsDevice {
        norms,
        ranks,
        losses: st.losses,
    })
}

/// Exact `||GN_i||_2`, rank and loss of every row of `x` on the device (K x K route,
/// as [`super::gn_norm::per_sample_gn_norms`]); computed in `T`, reported in `f64`.
pub fn gpu_gn_norms<T: CudaScalar>(
    dev: &CudaDevice,
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
) -> Result<GnNorms> {
    check_model(model)?;
    model.check_input(x)?;
    if x.rows() == 0 {
        return Err(Error::InvalidArgument("no samples".into()));
    }
    let gm = GpuModel::<T>::upload(dev, model)?;
    let mut out = GnNorms {
        norms: Vec::with_capacity(x.rows()),
        ranks: Vec::with_capacity(x.rows()),
        a_norms: vec![],
        losses: Vec::with_capacity(x.rows()),
    };
    for start in (0..x.rows()).step_by(GPU_GN_CHUNK) {
        let end = (start + GPU_GN_CHUNK).min(x.rows());
        let m = end - start;
        let xc = x.rows_view(start, end).to_owned();
        let (xs, ys) = upload_data::<T>(dev, model, &xc, &labels[start..end])?;
        let r = gpu_gn_norms_resident(dev, &gm, &xs, &ys, m)?;
        let n_h: Vec<T> = dev.download_slice(&r.norms, m)?;
        let r_h: Vec<i32> = dev.download_slice(&r.ranks, m)?;
        let l_h: Vec<T> = dev.download_slice(&r.losses, m)?;
        out.norms.extend(n_h.iter().map(|v| v.to_f64()));
        out.ranks.extend(r_h.iter().map(|&v| v.max(0) as usize));
        out.losses.extend(l_h.iter().map(|v| v.to_f64()));
    }
    Ok(out)
}

/// Work statistics of a dense assembly.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct AssemblyStats {
    /// Floating-point operations in the GEMMs (2 per multiply-add).
    pub gemm_flops: f64,
    /// Device memory the assembly held at its peak (approximate), bytes.
    pub peak_bytes: usize,
}

/// Device bytes for `n` elements of `T`.
fn bytes_of<T>(n: usize) -> usize {
    n * std::mem::size_of::<T>()
}

/// Largest number of rows `r` with `r * row_len` elements under `budget` bytes (at least 1).
fn rows_under<T>(budget: usize, row_len: usize, max: usize) -> usize {
    (budget / bytes_of::<T>(row_len.max(1))).clamp(1, max.max(1))
}

/// `out (R x S) = left^T right` over all `n` samples, where `left` is `n x R` on the
/// device and `right` (`mc x S`) is built per sample chunk by `build_right(c0, c1, buf)`;
/// `scatter(pair, r0, rows)` receives each slice of output rows. Chunks are summed in
/// order (deterministic).
#[allow(clippy::too_many_arguments)]
fn accumulate_outer<T: CudaScalar>(
    dev: &CudaDevice,
    left: &CudaSlice<T>,
    n: usize,
    r: usize,
    s: usize,
    budget: usize,
    stats: &mut AssemblyStats,
    mut build_right: impl FnMut(usize, usize, &mut CudaSlice<T>) -> Result<()>,
    mut scatter: impl FnMut(&CudaSlice<T>, usize, usize) -> Result<()>,
) -> Result<()> {
    let slice_rows = rows_under::<T>(budget / 2, s, r);
    let chunk = rows_under::<T>(budget / 2, s, n);
    let mut pair = dev.zeros_slice::<T>(slice_rows * s)?;
    let mut right = dev.zeros_slice::<T>(chunk * s)?;
    stats.peak_bytes = stats
        .peak_bytes
        .max(bytes_of::<T>(slice_rows * s + chunk * s));
    for r0 in (0..r).step_by(slice_rows) {
        let rs = slice_rows.min(r - r0);
        for c0 in (0..n).step_by(chunk) {
            let c1 = (c0 + chunk).min(n);
            build_right(c0, c1, &mut right)?;
            let lv = left.slice(c0 * r + r0..);
            dev.gemm(
                T::ONE,
                &lv,
                Operand::strided(c1 - c0, rs, true, r),
                &right,
                Operand::new(c1 - c0, s, false),
                if c0 == 0 { T::ZERO } else { T::ONE },
                &mut pair,
                (rs, s),
            )?;
            stats.gemm_flops += 2.0 * rs as f64 * s as f64 * (c1 - c0) as f64;
        }
        scatter(&pair, r0, rs)?;
    }
    Ok(())
}

/// The dense mean Hessian part over the rows of `x` (`P x P`, parameter order), assembled
/// on the device in `T` and left there. Fails before allocating when it cannot fit.
pub fn gpu_dense_hessian_device<T: CudaScalar>(
    dev: &CudaDevice,
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
) -> Result<(CudaSlice<T>, AssemblyStats)> {
    let layout = ParamLayout::of(model);
    let ptot = layout.total;
    let (free, _) = dev.memory()?;
    let need = bytes_of::<T>(ptot * ptot);
    // Room for the structure and the GEMM work buffers beside the output.
    if need + (1 << 30) > free {
        return Err(Error::InvalidArgument(format!(
            "the dense Hessian of P = {ptot} parameters needs {:.2} GiB in {} but the GPU has {:.2} GiB free; use the matrix-free mode (--top/--bottom/--trace without --dense) or --dtype f32",
            need as f64 / (1u64 << 30) as f64,
            T::DTYPE,
            free as f64 / (1u64 << 30) as f64
        )));
    }
    let budget = ((free - need) / 2).clamp(64 << 20, 8 << 30);
    let n = x.rows();
    let (xs, ys) = upload_data::<T>(dev, model, x, labels)?;
    let gm = GpuModel::<T>::upload(dev, model)?;
    let nl = gm.num_layers();
    let k = gm.classes();
    let smooth = !gm.activation.is_piecewise_linear();
    let gn = matches!(part, Part::Full | Part::Gn);
    let hterm = matches!(part, Part::Full | Part::Hterm);
    let needs = Needs {
        g: gn,
        cfac: gn,
        delta: hterm,
    };
    let st = GpuStructure::new(dev, &gm, xs, ys, n, needs)?;
    let kern = Kernels::<T>::new(dev);
    let mut h = dev.zeros_slice::<T>(ptot * ptot)?;
    let mut stats = AssemblyStats::default();
    let scale = T::from_f64(1.0 / n as f64);
    let bias = gm.bias;
    // C^T G(p) for every layer (the Gauss-Newton factor rows).
    let mut cg = Vec::new();
    if gn {
        let cf = st.cfac.as_ref().expect("requested");
        for p in 0..nl {
            let d = gm.widths[p + 1];
            let mut o = dev.zeros_slice::<T>(n * k * d)?;
            kern.cg_factor(
                &cf.as_view(),
                &st.g[p].as_view(),
                n,
                k,
                d,
                &mut o.as_view_mut(),
            )?;
            cg.push(o);
        }
    }
    // c_s = act''(z(s)) .* (delta(s+1) W(s+1)) for the smooth-activation term.
    let mut c_smooth = Vec::new();
    if hterm && smooth {
        for s in 0..nl - 1 {
            let (n1, d1) = gm.dims(s + 1);
            let mut c = dev.zeros_slice::<T>(n * n1)?;
            dev.gemm(
                T::ONE,
                &st.delta[s + 1],
                Operand::new(n, d1, false),
                &gm.weights[s + 1],
                Operand::new(d1, n1, false),
                T::ZERO,
                &mut c,
                (n, n1),
            )?;
            kern.mul_elementwise(&mut c.as_view_mut(), &st.ddact[s].as_view(), n * n1)?;
            c_smooth.push(c);
        }
    }
    for q in 0..nl {
        for p in q..nl {
            let (nq, dq) = gm.dims(q);
            let (np, dp) = gm.dims(p);
            let r = dq * dp;
            let curvature = gn || (hterm && smooth && p < nl - 1);
            if curvature {
                // M_s(q, p) stacked n x (dq dp).
                let mut mstack = dev.zeros_slice::<T>(n * r)?;
                if gn {
                    dev.gemm_batched(
                        T::ONE,
                        &cg[q],
                        Operand::new(k, dq, true),
                        k * dq,
                        &cg[p],
                        Operand::new(k, dp, false),
                        k * dp,
                        T::ZERO,
                        &mut mstack,
                        (dq, dp),
                        dq * dp,
                        n,
                    )?;
                    stats.gemm_flops += 2.0 * (n * k * dq * dp) as f64;
                }
                if hterm && smooth {
                    for (s, c_s) in c_smooth.iter().enumerate().skip(p.max(q)) {
                        add_smooth_term(
                            dev,
                            &kern,
                            &gm,
                            &st,
                            c_s,
                            s,
                            q,
                            p,
                            &mut mstack,
                            &mut stats,
                        )?;
                    }
                }
                let (xq, xp) = (&st.inputs[q], &st.inputs[p]);
                if q == p {
                    // Symmetric in (a, c) and in (b, e): a quarter of the GEMM work.
                    let na = nq + usize::from(bias);
                    let (r_sym, s_sym) = (dq * (dq + 1) / 2, na * (na + 1) / 2);
                    let mut packed = dev.zeros_slice::<T>(n * r_sym)?;
                    kern.pack_lower_pairs(&mstack.as_view(), n, dq, &mut packed.as_view_mut())?;
                    drop(mstack);
                    accumulate_outer(
                        dev,
                        &packed,
                        n,
                        r_sym,
                        s_sym,
                        budget,
                        &mut stats,
                        |c0, c1, buf| {
                            kern.row_outer_sym(
                                &xq.slice(c0 * nq..c1 * nq),
                                nq,
                                bias,
                                c1 - c0,
                                &mut buf.as_view_mut(),
                            )
                        },
                        |pair, r0, rows| {
                            kern.scatter_curvature_sym(
                                &pair.as_view(),
                                r0,
                                rows,
                                dq,
                                nq,
                                bias,
                                &mut h.as_view_mut(),
                                ptot,
                                layout.offsets[q],
                                scale,
                            )
                        },
                    )?;
                } else {
                    let s_cols = (nq + usize::from(bias)) * (np + usize::from(bias));
                    accumulate_outer(
                        dev,
                        &mstack,
                        n,
                        r,
                        s_cols,
                        budget,
                        &mut stats,
                        |c0, c1, buf| {
                            kern.row_outer(
                                &xq.slice(c0 * nq..c1 * nq),
                                nq,
                                bias,
                                &xp.slice(c0 * np..c1 * np),
                                np,
                                bias,
                                c1 - c0,
                                &mut buf.as_view_mut(),
                            )
                        },
                        |pair, r0, rows| {
                            kern.scatter_curvature(
                                &pair.as_view(),
                                r0,
                                rows,
                                (dq, dp, nq, np),
                                bias,
                                &mut h.as_view_mut(),
                                ptot,
                                (layout.offsets[q], layout.offsets[p]),
                                scale,
                                true,
                            )
                        },
                    )?;
                }
            }
            if hterm && p > q {
                add_cross_block(
                    dev, &kern, &gm, &st, p, q, &layout, budget, &mut h, scale, &mut stats,
                )?;
            }
        }
    }
    dev.synchronize()?;
    Ok((h, stats))
}

/// `Mstack_i += G_s(q)_i^T diag(c_s,i) G_s(p)_i` with `G_s(t) = dz(s)/dz(t)`, built
/// top-down as stacks `(n d_s) x d_t`: `G_s(s) = I`, `G_s(t) = G_s(t+1) W(t+1) D(t)`.
#[allow(clippy::too_many_arguments)]
fn add_smooth_term<T: CudaScalar>(
    dev: &CudaDevice,
    kern: &Kernels<T>,
    gm: &GpuModel<T>,
    st: &GpuStructure<T>,
    c_s: &CudaSlice<T>,
    s: usize,
    q: usize,
    p: usize,
    mstack: &mut CudaSlice<T>,
    stats: &mut AssemblyStats,
) -> Result<()> {
    let n = st.m;
    let ds = gm.widths[s + 1];
    let mut cur = dev.zeros_slice::<T>(n * ds * ds)?;
    kern.identity_stack(&mut cur.as_view_mut(), n, ds)?;
    let mut at_p = None;
    let mut t = s;
    let gq = loop {
        let dt = gm.widths[t + 1];
        if t == p {
            at_p = Some(cur.clone());
        }
        if t == q {
            break cur;
        }
        // G_s(t-1) = G_s(t) W(t) D(t-1).
        let (nt, _) = gm.dims(t);
        let mut next = dev.zeros_slice::<T>(n * ds * nt)?;
        dev.gemm(
            T::ONE,
            &cur,
            Operand::new(n * ds, dt, false),
            &gm.weights[t],
            Operand::new(dt, nt, false),
            T::ZERO,
            &mut next,
            (n * ds, nt),
        )?;
        kern.scale_stacked_cols(
            &mut next.as_view_mut(),
            &st.dact[t - 1].as_view(),
            n,
            ds,
            nt,
        )?;
        cur = next;
        t -= 1;
    };
    let mut gp = at_p.expect("p <= s");
    let (dq, dp) = (gm.widths[q + 1], gm.widths[p + 1]);
    kern.scale_rows(&mut gp.as_view_mut(), &c_s.as_view(), n * ds, dp)?;
    dev.gemm_batched(
        T::ONE,
        &gq,
        Operand::new(ds, dq, true),
        ds * dq,
        &gp,
        Operand::new(ds, dp, false),
        ds * dp,
        T::ONE,
        mstack,
        (dq, dp),
        dq * dp,
        n,
    )?;
    stats.gemm_flops += 2.0 * (n * ds * dq * dp) as f64;
    Ok(())
}

/// Adds the H-term cross block with rows `W(qq)` and columns layer `pp < qq` (and its
/// mirror): `(1/n) sum_i delta_i(qq)[a] B_i(qq,pp)[b,c] x~_i(pp)[e]`, with
/// `B(pp+1, pp) = D(pp)` and `B(s+1, pp) = D(s) W(s) B(s, pp)` built as stacked batches.
#[allow(clippy::too_many_arguments)]
fn add_cross_block<T: CudaScalar>(
    dev: &CudaDevice,
    kern: &Kernels<T>,
    gm: &GpuModel<T>,
    st: &GpuStructure<T>,
    qq: usize,
    pp: usize,
    layout: &ParamLayout,
    budget: usize,
    h: &mut CudaSlice<T>,
    scale: T,
    stats: &mut AssemblyStats,
) -> Result<()> {
    let n = st.m;
    let bias = gm.bias;
    let (npp, dpp) = gm.dims(pp);
    let (nqq, dqq) = gm.dims(qq);
    let mut bstack = dev.zeros_slice::<T>(n * dpp * dpp)?;
    kern.diag_stack(&mut bstack.as_view_mut(), &st.dact[pp].as_view(), n, dpp)?;
    for s in pp + 1..qq {
        let (ns, ds) = gm.dims(s);
        let mut next = dev.zeros_slice::<T>(n * ds * dpp)?;
        dev.gemm_batched(
            T::ONE,
            &gm.weights[s],
            Operand::new(ds, ns, false),
            0,
            &bstack,
            Operand::new(ns, dpp, false),
            ns * dpp,
            T::ZERO,
            &mut next,
            (ds, dpp),
            ds * dpp,
            n,
        )?;
        kern.scale_rows(&mut next.as_view_mut(), &st.dact[s].as_view(), n * ds, dpp)?;
        stats.gemm_flops += 2.0 * (n * ds * ns * dpp) as f64;
        bstack = next;
    }
    let r = nqq * dpp;
    let s_cols = dqq * (npp + usize::from(bias));
    let (dl, xp) = (&st.delta[qq], &st.inputs[pp]);
    accumulate_outer(
        dev,
        &bstack,
        n,
        r,
        s_cols,
        budget,
        stats,
        |c0, c1, buf| {
            kern.row_outer(
                &dl.slice(c0 * dqq..c1 * dqq),
                dqq,
                false,
                &xp.slice(c0 * npp..c1 * npp),
                npp,
                bias,
                c1 - c0,
                &mut buf.as_view_mut(),
            )
        },
        |pair, r0, rows| {
            kern.scatter_cross(
                &pair.as_view(),
                r0,
                rows,
                (dqq, dpp, nqq, npp),
                bias,
                &mut h.as_view_mut(),
                layout.total,
                (layout.offsets[qq], layout.offsets[pp]),
                scale,
            )
        },
    )
}

/// [`gpu_dense_hessian_device`] downloaded to the host as `f64`.
pub fn gpu_dense_hessian<T: CudaScalar>(
    dev: &CudaDevice,
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
) -> Result<(Matrix<f64>, AssemblyStats)> {
    let (h, stats) = gpu_dense_hessian_device::<T>(dev, model, x, labels, part)?;
    let p = ParamLayout::of(model).total;
    let v: Vec<T> = dev.download_slice(&h, p * p)?;
    Ok((
        Matrix::from_vec(p, p, v.into_iter().map(|t| t.to_f64()).collect()),
        stats,
    ))
}

/// A Hessian part of the mean loss as a matrix-free operator on the device: the
/// forward pass is computed once; each product runs the R-operator passes of `hvp.rs`
/// as cuBLAS GEMMs plus the `hvp_top` / `hvp_hidden` kernels.
pub struct GpuHessianOperator<'d, T> {
    dev: &'d CudaDevice,
    gm: GpuModel<T>,
    st: GpuStructure<T>,
    layout: ParamLayout,
    part: Part,
}

impl<'d, T: CudaScalar> GpuHessianOperator<'d, T> {
    pub fn new(
        dev: &'d CudaDevice,
        model: &Mlp<f64>,
        x: &Matrix<f64>,
        labels: &[usize],
        part: Part,
    ) -> Result<Self> {
        let (xs, ys) = upload_data::<T>(dev, model, x, labels)?;
        let gm = GpuModel::<T>::upload(dev, model)?;
        let st = GpuStructure::new(dev, &gm, xs, ys, x.rows(), Needs::default())?;
        Ok(Self {
            dev,
            gm,
            st,
            layout: ParamLayout::of(model),
            part,
        })
    }

    pub fn dim(&self) -> usize {
        self.layout.total
    }

    /// `H v` (or `GN v`, `Hterm v`), `v` in parameter order.
    pub fn apply(&self, v: &[f64]) -> Result<Vec<f64>> {
        if v.len() != self.layout.total {
            return Err(Error::Shape(format!(
                "vector of length {} for a model with {} parameters",
                v.len(),
                self.layout.total
            )));
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(Error::NonFiniteInput(
                "HVP direction contains NaN or Inf".into(),
            ));
        }
        let vd = self.dev.upload_slice(&cast::<T>(v))?;
        let out = self.apply_device(&vd)?;
        let res: Vec<T> = self.dev.download_slice(&out, self.layout.total)?;
        Ok(res.into_iter().map(|t| t.to_f64()).collect())
    }

    /// `H v` for a device vector (length `P`), left on the device.
    pub fn apply_device(&self, vd: &CudaSlice<T>) -> Result<CudaSlice<T>> {
        let dev = self.dev;
        let kern = Kernels::<T>::new(dev);
        let gm = &self.gm;
        let st = &self.st;
        let lay = &self.layout;
        let nl = gm.num_layers();
        let m = st.m;
        let k = gm.classes();
        let wv = |p: usize| {
            let (n, d) = gm.dims(p);
            vd.slice(lay.offsets[p]..lay.offsets[p] + d * n)
        };
        // Forward R-pass: R{z(p)} = x(p) V(p)^T + vb(p) + R{x(p)} W(p)^T.
        let mut rx: Vec<Option<CudaSlice<T>>> = vec![None];
        let mut rz = Vec::with_capacity(nl);
        for p in 0..nl {
            let (n, d) = gm.dims(p);
            let mut z = dev.zeros_slice::<T>(m * d)?;
            dev.gemm(
                T::ONE,
                &st.inputs[p],
                Operand::new(m, n, false),
                &wv(p),
                Operand::new(d, n, true),
                T::ZERO,
                &mut z,
                (m, d),
            )?;
            if let Some(rxp) = &rx[p] {
                dev.gemm(
                    T::ONE,
                    rxp,
                    Operand::new(m, n, false),
                    &gm.weights[p],
                    Operand::new(d, n, true),
                    T::ONE,
                    &mut z,
                    (m, d),
                )?;
            }
            if lay.bias {
                let o = lay.offsets[p] + d * n;
                kern.add_row_vector(&mut z.as_view_mut(), &vd.slice(o..o + d), m, d)?;
            }
            if p + 1 < nl {
                let mut nx = z.clone();
                kern.mul_elementwise(&mut nx.as_view_mut(), &st.dact[p].as_view(), m * d)?;
                rx.push(Some(nx));
            }
            rz.push(z);
        }
        let mut r = dev.zeros_slice::<T>(m * k)?;
        let mut arz = dev.zeros_slice::<T>(m * k)?;
        kern.hvp_top(
            &st.pre[nl - 1].as_view(),
            &st.labels.as_view(),
            &rz[nl - 1].as_view(),
            m,
            k,
            gm.loss,
            &mut r.as_view_mut(),
            &mut arz.as_view_mut(),
        )?;
        let mut out = dev.zeros_slice::<T>(lay.total)?;
        // out[layer p] += sign (rg^T x(p) [+ gz^T R{x(p)}]), bias += sign sum_i rg.
        let add_grads = |out: &mut CudaSlice<T>,
                         rg: &CudaSlice<T>,
                         gz_rx: Option<(&CudaSlice<T>, &CudaSlice<T>)>,
                         p: usize,
                         sign: T|
         -> Result<()> {
            let (n, d) = gm.dims(p);
            let o = lay.offsets[p];
            {
                let mut ow = out.slice_mut(o..o + d * n);
                dev.gemm(
                    sign,
                    rg,
                    Operand::new(m, d, true),
                    &st.inputs[p],
                    Operand::new(m, n, false),
                    T::ONE,
                    &mut ow,
                    (d, n),
                )?;
                if let Some((gz, rxp)) = gz_rx {
                    dev.gemm(
                        sign,
                        gz,
                        Operand::new(m, d, true),
                        rxp,
                        Operand::new(m, n, false),
                        T::ONE,
                        &mut ow,
                        (d, n),
                    )?;
                }
            }
            if lay.bias {
                let ob = o + d * n;
                kern.column_sums(&rg.as_view(), m, d, sign, &mut out.slice_mut(ob..ob + d))?;
            }
            Ok(())
        };
        if matches!(self.part, Part::Gn | Part::Hterm) {
            let sign = if self.part == Part::Gn {
                T::ONE
            } else {
                -T::ONE
            };
            let mut rg = arz.clone();
            for p in (0..nl).rev() {
                add_grads(&mut out, &rg, None, p, sign)?;
                if p > 0 {
                    let (n, d) = gm.dims(p);
                    let mut below = dev.zeros_slice::<T>(m * n)?;
                    dev.gemm(
                        T::ONE,
                        &rg,
                        Operand::new(m, d, false),
                        &gm.weights[p],
                        Operand::new(d, n, false),
                        T::ZERO,
                        &mut below,
                        (m, n),
                    )?;
                    kern.mul_elementwise(
                        &mut below.as_view_mut(),
                        &st.dact[p - 1].as_view(),
                        m * n,
                    )?;
                    rg = below;
                }
            }
        }
        if matches!(self.part, Part::Full | Part::Hterm) {
            let mut rg = arz;
            let mut gz = r;
            for p in (0..nl).rev() {
                let gz_rx = rx[p].as_ref().map(|rxp| (&gz, rxp));
                add_grads(&mut out, &rg, gz_rx, p, T::ONE)?;
                if p > 0 {
                    let (n, d) = gm.dims(p);
                    let mut gx = dev.zeros_slice::<T>(m * n)?;
                    dev.gemm(
                        T::ONE,
                        &gz,
                        Operand::new(m, d, false),
                        &gm.weights[p],
                        Operand::new(d, n, false),
                        T::ZERO,
                        &mut gx,
                        (m, n),
                    )?;
                    let mut rgx = dev.zeros_slice::<T>(m * n)?;
                    dev.gemm(
                        T::ONE,
                        &gz,
                        Operand::new(m, d, false),
                        &wv(p),
                        Operand::new(d, n, false),
                        T::ZERO,
                        &mut rgx,
                        (m, n),
                    )?;
                    dev.gemm(
                        T::ONE,
                        &rg,
                        Operand::new(m, d, false),
                        &gm.weights[p],
                        Operand::new(d, n, false),
                        T::ONE,
                        &mut rgx,
                        (m, n),
                    )?;
                    kern.hvp_hidden(
                        &st.pre[p - 1].as_view(),
                        &st.dact[p - 1].as_view(),
                        &rz[p - 1].as_view(),
                        &mut gx.as_view_mut(),
                        &mut rgx.as_view_mut(),
                        gm.activation,
                        m * n,
                    )?;
                    rg = rgx;
                    gz = gx;
                }
            }
        }
        // Mean over the samples.
        let mut mean = dev.zeros_slice::<T>(lay.total)?;
        kern.axpy(
            &mut mean.as_view_mut(),
            &out.as_view(),
            T::from_f64(1.0 / m as f64),
            lay.total,
        )?;
        Ok(mean)
    }
}

/// Lanczos vectors on the device for a [`GpuHessianOperator`]: the basis is one
/// contiguous `(capacity x P)` buffer, so full reorthogonalisation is two GEMVs
/// (`c = Q w`, `w -= Q^T c`, twice) and Ritz vectors one GEMV; only scalars and the
/// final Ritz vectors cross to the host.
pub struct DeviceKrylov<'o, 'd, T> {
    op: &'o GpuHessianOperator<'d, T>,
    basis: Option<CudaSlice<T>>,
    rows: Vec<CudaSlice<T>>,
    len: usize,
}

impl<'o, 'd, T: CudaScalar> DeviceKrylov<'o, 'd, T> {
    pub fn new(op: &'o GpuHessianOperator<'d, T>) -> Self {
        Self {
            op,
            basis: None,
            rows: Vec::new(),
            len: 0,
        }
    }
    fn p(&self) -> usize {
        self.op.layout.total
    }
}

impl<T: CudaScalar> crate::linalg::KrylovSpace for DeviceKrylov<'_, '_, T> {
    type Vector = CudaSlice<T>;
    fn dim(&self) -> usize {
        self.p()
    }
    fn reserve(&mut self, n: usize) -> Result<()> {
        self.basis = Some(self.op.dev.zeros_slice::<T>(n * self.p())?);
        Ok(())
    }
    fn upload(&self, v: &[f64]) -> Result<CudaSlice<T>> {
        self.op.dev.upload_slice(&cast::<T>(v))
    }
    fn to_host(&self, v: &CudaSlice<T>) -> Result<Vec<f64>> {
        let h: Vec<T> = self.op.dev.download_slice(v, self.p())?;
        Ok(h.into_iter().map(|t| t.to_f64()).collect())
    }
    fn apply(&self, v: &CudaSlice<T>) -> Result<CudaSlice<T>> {
        self.op.apply_device(v)
    }
    fn dot(&self, a: &CudaSlice<T>, b: &CudaSlice<T>) -> Result<f64> {
        let dev = self.op.dev;
        let p = self.p();
        let mut c = dev.zeros_slice::<T>(1)?;
        dev.gemm(
            T::ONE,
            a,
            Operand::new(1, p, false),
            b,
            Operand::new(p, 1, false),
            T::ZERO,
            &mut c,
            (1, 1),
        )?;
        let h: Vec<T> = dev.download_slice(&c, 1)?;
        Ok(h[0].to_f64())
    }
    fn scaled(&self, v: &CudaSlice<T>, s: f64) -> Result<CudaSlice<T>> {
        let mut out = self.op.dev.zeros_slice::<T>(self.p())?;
        Kernels::<T>::new(self.op.dev).axpy(
            &mut out.as_view_mut(),
            &v.as_view(),
            T::from_f64(s),
            self.p(),
        )?;
        Ok(out)
    }
    fn push(&mut self, v: CudaSlice<T>) -> Result<()> {
        let p = self.p();
        let basis = self
            .basis
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("DeviceKrylov: reserve before push".into()))?;
        if (self.len + 1) * p > basis.len() {
            return Err(Error::InvalidArgument(
                "DeviceKrylov: basis capacity exceeded".into(),
            ));
        }
        let mut row = basis.slice_mut(self.len * p..(self.len + 1) * p);
        self.op
            .dev
            .stream()
            .memcpy_dtod(&v, &mut row)
            .map_err(crate::backend::cuda::cuda_err("device copy"))?;
        self.rows.push(v);
        self.len += 1;
        Ok(())
    }
    fn basis_len(&self) -> usize {
        self.len
    }
    fn basis(&self, j: usize) -> &CudaSlice<T> {
        &self.rows[j]
    }
    fn orthogonalize(&self, w: &mut CudaSlice<T>) -> Result<()> {
        let (dev, p, k) = (self.op.dev, self.p(), self.len);
        let Some(basis) = &self.basis else {
            return Ok(());
        };
        if k == 0 {
            return Ok(());
        }
        let mut c = dev.zeros_slice::<T>(k)?;
        for _ in 0..2 {
            dev.gemm(
                T::ONE,
                basis,
                Operand::new(k, p, false),
                &*w,
                Operand::new(p, 1, false),
                T::ZERO,
                &mut c,
                (k, 1),
            )?;
            dev.gemm(
                -T::ONE,
                basis,
                Operand::new(k, p, true),
                &c,
                Operand::new(k, 1, false),
                T::ONE,
                w,
                (p, 1),
            )?;
        }
        Ok(())
    }
    fn combine(&self, coefs: &[f64]) -> Result<CudaSlice<T>> {
        let (dev, p, k) = (self.op.dev, self.p(), coefs.len().min(self.len));
        let basis = self
            .basis
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("DeviceKrylov: empty basis".into()))?;
        let cd = dev.upload_slice(&cast::<T>(&coefs[..k]))?;
        let mut y = dev.zeros_slice::<T>(p)?;
        dev.gemm(
            T::ONE,
            basis,
            Operand::new(k, p, true),
            &cd,
            Operand::new(k, 1, false),
            T::ZERO,
            &mut y,
            (p, 1),
        )?;
        Ok(y)
    }
    fn residual(&self, av: &CudaSlice<T>, y: &CudaSlice<T>, l: f64) -> Result<f64> {
        let mut r = self.scaled(av, 1.0)?;
        Kernels::<T>::new(self.op.dev).axpy(
            &mut r.as_view_mut(),
            &y.as_view(),
            T::from_f64(-l),
            self.p(),
        )?;
        Ok(self.dot(&r, &r)?.max(0.0).sqrt())
    }
}

/// Lanczos with full reorthogonalisation entirely on the device ([`DeviceKrylov`]).
pub fn gpu_lanczos<T: CudaScalar>(
    op: &GpuHessianOperator<'_, T>,
    which: crate::linalg::Which,
    opts: &crate::linalg::LanczosOptions,
) -> Result<crate::linalg::LanczosResult> {
    crate::linalg::lanczos_in(&mut DeviceKrylov::new(op), which, opts)
}

impl<T: CudaScalar> SymOp for GpuHessianOperator<'_, T> {
    fn dim(&self) -> usize {
        self.layout.total
    }
    /// Failed products surface as NaN, which the Lanczos and trace routines reject.
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        match GpuHessianOperator::apply(self, v) {
            Ok(r) => out.copy_from_slice(&r),
            Err(_) => out.iter_mut().for_each(|o| *o = f64::NAN),
        }
    }
}

/// Mean loss and its gradient (parameter order) on the device: one forward pass and
/// the backward pass `dW(p) = delta(p)^T x(p) / m`, `db(p) = sum_i delta_i(p) / m`.
/// `x` is `m x n_0` on the device and is copied (the structure consumes its input).
pub fn gpu_loss_and_grad<T: CudaScalar>(
    dev: &CudaDevice,
    gm: &GpuModel<T>,
    x: &CudaSlice<T>,
    labels: &CudaSlice<u32>,
    m: usize,
) -> Result<(f64, Vec<f64>)> {
    let xs = dev
        .stream()
        .clone_dtod(x)
        .map_err(crate::backend::cuda::cuda_err("device copy"))?;
    let ys = dev
        .stream()
        .clone_dtod(labels)
        .map_err(crate::backend::cuda::cuda_err("device copy"))?;
    let needs = Needs {
        g: false,
        cfac: false,
        delta: true,
    };
    let st = GpuStructure::new(dev, gm, xs, ys, m, needs)?;
    let kern = Kernels::<T>::new(dev);
    let lay = ParamLayout::new(&gm.widths, gm.bias);
    let mut grad = dev.zeros_slice::<T>(lay.total)?;
    let inv = T::from_f64(1.0 / m as f64);
    for p in 0..gm.num_layers() {
        let (n, d) = gm.dims(p);
        let o = lay.offsets[p];
        {
            let mut gw = grad.slice_mut(o..o + d * n);
            dev.gemm(
                inv,
                &st.delta[p],
                Operand::new(m, d, true),
                &st.inputs[p],
                Operand::new(m, n, false),
                T::ZERO,
                &mut gw,
                (d, n),
            )?;
        }
        if gm.bias {
            let ob = o + d * n;
            kern.column_sums(
                &st.delta[p].as_view(),
                m,
                d,
                inv,
                &mut grad.slice_mut(ob..ob + d),
            )?;
        }
    }
    let losses: Vec<T> = dev.download_slice(&st.losses, m)?;
    let g: Vec<T> = dev.download_slice(&grad, lay.total)?;
    let loss = losses.iter().map(|v| v.to_f64()).sum::<f64>() / m as f64;
    Ok((loss, g.into_iter().map(|v| v.to_f64()).collect()))
}
