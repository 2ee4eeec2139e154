//! Typed launchers for the hand-written kernels in `kernels/*.cu`, one method per
//! kernel; each doc comment repeats the formula the kernel computes. Matrices are
//! row-major; "stacked" buffers hold one `r x c` block per sample (rows `s r .. (s+1) r`).

use super::{cuda_err, CudaDevice, CudaScalar};
use crate::error::Result;
use crate::nn::{Activation, LossKind};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use std::marker::PhantomData;

/// Kernel launchers for element type `T` on one device.
pub struct Kernels<'d, T> {
    pub dev: &'d CudaDevice,
    _t: PhantomData<T>,
}

type In<'a, 'b, T> = &'a CudaView<'b, T>;
type Out<'a, 'b, T> = &'a mut CudaViewMut<'b, T>;

fn i64_of(v: usize) -> i64 {
    v as i64
}

macro_rules! launch {
    ($self:ident, $file:literal, $base:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let f = $self
            .dev
            .function($file, &format!(concat!($base, "_{}"), T::SUFFIX))?;
        let cfg: LaunchConfig = $cfg;
        let mut b = $self.dev.stream().launch_builder(&f);
        $( b.arg($arg); )*
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(concat!("kernel ", $base)))
    }};
}

impl<'d, T: CudaScalar> Kernels<'d, T> {
    pub fn new(dev: &'d CudaDevice) -> Self {
        Self {
            dev,
            _t: PhantomData,
        }
    }

    /// `m[i, :] += row` for the `rows x cols` matrix `m`.
    pub fn add_row_vector(&self, m: Out<T>, row: In<T>, rows: usize, cols: usize) -> Result<()> {
        let (r, c) = (i64_of(rows), i64_of(cols));
        launch!(
            self,
            "elementwise.cu",
            "add_row_vector",
            CudaDevice::grid(rows * cols),
            [m, row, &r, &c]
        )
    }

    /// `x[i] *= d[i]` for `i < n`.
    pub fn mul_elementwise(&self, x: Out<T>, d: In<T>, n: usize) -> Result<()> {
        let n64 = i64_of(n);
        launch!(
            self,
            "elementwise.cu",
            "mul_elementwise",
            CudaDevice::grid(n),
            [x, d, &n64]
        )
    }

    /// `out[i] += alpha x[i]` for `i < n`.
    pub fn axpy(&self, out: Out<T>, x: In<T>, alpha: T, n: usize) -> Result<()> {
        let n64 = i64_of(n);
        launch!(
            self,
            "elementwise.cu",
            "axpy",
            CudaDevice::grid(n),
            [out, x, &alpha, &n64]
        )
    }

    /// Stacked `S` (`(m r) x c`): `S_s <- S_s diag(D[s, :])`.
    pub fn scale_stacked_cols(
        &self,
        s: Out<T>,
        d: In<T>,
        m: usize,
        r: usize,
        c: usize,
    ) -> Result<()> {
        let (m64, r64, c64) = (i64_of(m), i64_of(r), i64_of(c));
        launch!(
            self,
            "elementwise.cu",
            "scale_stacked_cols",
            CudaDevice::grid(m * r * c),
            [s, d, &m64, &r64, &c64]
        )
    }

    /// `S[row, :] *= d[row]` for the `rows x c` matrix `S`.
    pub fn scale_rows(&self, s: Out<T>, d: In<T>, rows: usize, c: usize) -> Result<()> {
        let (r64, c64) = (i64_of(rows), i64_of(c));
        launch!(
            self,
            "elementwise.cu",
            "scale_rows",
            CudaDevice::grid(rows * c),
            [s, d, &r64, &c64]
        )
    }

    /// `m` stacked copies of `I_k` (`(m k) x k`).
    pub fn identity_stack(&self, out: Out<T>, m: usize, k: usize) -> Result<()> {
        let (m64, k64) = (i64_of(m), i64_of(k));
        launch!(
            self,
            "elementwise.cu",
            "identity_stack",
            CudaDevice::grid(m * k * k),
            [out, &m64, &k64]
        )
    }

    /// Stacked `diag(D[s, :])` (`(m d) x d`).
    pub fn diag_stack(&self, out: Out<T>, d_vals: In<T>, m: usize, d: usize) -> Result<()> {
        let (m64, d64) = (i64_of(m), i64_of(d));
        launch!(
            self,
            "elementwise.cu",
            "diag_stack",
            CudaDevice::grid(m * d * d),
            [out, d_vals, &m64, &d64]
        )
    }

    /// `out[s] = ||X[s, :]||^2 + add`.
    pub fn row_sq_norms(&self, x: In<T>, m: usize, n: usize, add: T, out: Out<T>) -> Result<()> {
        let (m64, n64) = (i64_of(m), i64_of(n));
        launch!(
            self,
            "elementwise.cu",
            "row_sq_norms",
            CudaDevice::grid(m),
            [x, &m64, &n64, &add, out]
        )
    }

    /// `out[j] += alpha sum_i X[i, j]` (rows summed in order).
    pub fn column_sums(
        &self,
        x: In<T>,
        rows: usize,
        cols: usize,
        alpha: T,
        out: Out<T>,
    ) -> Result<()> {
        let (r64, c64) = (i64_of(rows), i64_of(cols));
        launch!(
            self,
            "elementwise.cu",
            "column_sums",
            CudaDevice::grid(cols),
            [x, &r64, &c64, &alpha, out]
        )
    }

    /// Per-sample Kronecker expansion `out[s, b wb + e] = A~[s, b] B~[s, e]`, where `X~`
    /// appends a constant 1 column when `aug_x` (the bias coordinate).
    #[allow(clippy::too_many_arguments)]
    pub fn row_outer(
        &self,
        a: In<T>,
        na: usize,
        aug_a: bool,
        b: In<T>,
        nb: usize,
        aug_b: bool,
        m: usize,
        out: Out<T>,
    ) -> Result<()> {
        let (na64, nb64, m64) = (i64_of(na), i64_of(nb), i64_of(m));
        let (ia, ib) = (i32::from(aug_a), i32::from(aug_b));
        let n = m * (na + usize::from(aug_a)) * (nb + usize::from(aug_b));
        launch!(
            self,
            "elementwise.cu",
            "row_outer",
            CudaDevice::grid(n),
            [a, &na64, &ia, b, &nb64, &ib, &m64, out]
        )
    }

    /// HVP backward step through a hidden activation, in place:
    /// `rgx <- act''(z) rz gx + act'(z) rgx`, `gx <- act'(z) gx`.
    #[allow(clippy::too_many_arguments)]
    pub fn hvp_hidden(
        &self,
        z: In<T>,
        d1: In<T>,
        rz: In<T>,
        gx: Out<T>,
        rgx: Out<T>,
        act: Activation,
        n: usize,
    ) -> Result<()> {
        let kind: i32 = match act {
            Activation::Tanh => 2,
            Activation::Sigmoid => 3,
            Activation::Softplus => 4,
            _ => 0,
        };
        let n64 = i64_of(n);
        launch!(
            self,
            "elementwise.cu",
            "hvp_hidden",
            CudaDevice::grid(n),
            [z, d1, rz, gx, rgx, &kind, &n64]
        )
    }

    /// Residuals `r`, per-sample losses and (when `cfac` is given) the factors `C_s`
    /// with `A_s = C_s C_s^T`, from logits `z` (`m x k`) and labels.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_top(
        &self,
        z: In<T>,
        labels: &CudaView<u32>,
        m: usize,
        k: usize,
        loss: LossKind,
        r: Out<T>,
        losses: Out<T>,
        cfac: Option<Out<T>>,
    ) -> Result<()> {
        let (m64, k32) = (i64_of(m), k as i32);
        let kind: i32 = if loss == LossKind::CrossEntropy { 0 } else { 1 };
        let null: u64 = 0;
        let f = self
            .dev
            .function("loss.cu", &format!("loss_top_{}", T::SUFFIX))?;
        let mut b = self.dev.stream().launch_builder(&f);
        b.arg(z)
            .arg(labels)
            .arg(&m64)
            .arg(&k32)
            .arg(&kind)
            .arg(r)
            .arg(losses);
        match cfac {
            Some(c) => b.arg(c),
            None => b.arg(&null),
        };
        unsafe { b.launch(CudaDevice::grid(m)) }
            .map(|_| ())
            .map_err(cuda_err("kernel loss_top"))
    }

    /// Top of the HVP R-pass: `r` and `A R{z}` for directions `rz` (`m x k`).
    #[allow(clippy::too_many_arguments)]
    pub fn hvp_top(
        &self,
        z: In<T>,
        labels: &CudaView<u32>,
        rz: In<T>,
        m: usize,
        k: usize,
        loss: LossKind,
        r: Out<T>,
        arz: Out<T>,
    ) -> Result<()> {
        let (m64, k32) = (i64_of(m), k as i32);
        let kind: i32 = if loss == LossKind::CrossEntropy { 0 } else { 1 };
        launch!(
            self,
            "loss.cu",
            "hvp_top",
            CudaDevice::grid(m),
            [z, labels, rz, &m64, &k32, &kind, r, arz]
        )
    }

    /// `M_s += coef[s] G_s G_s^T` for `G` stacked `(m k) x d`, `M` stacked `k x k`.
    pub fn gram_accumulate(
        &self,
        g: In<T>,
        m: usize,
        k: usize,
        d: usize,
        coef: In<T>,
        mm: Out<T>,
    ) -> Result<()> {
        let (m64, k32, d64) = (i64_of(m), k as i32, i64_of(d));
        let cfg = LaunchConfig {
            grid_dim: (m.clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            "gn_norm.cu",
            "gram_accumulate",
            cfg,
            [g, &m64, &k32, &d64, coef, mm]
        )
    }

    /// `M_s += coef[s] I_k`.
    pub fn add_scaled_identity(&self, mm: Out<T>, m: usize, k: usize, coef: In<T>) -> Result<()> {
        let (m64, k32) = (i64_of(m), k as i32);
        launch!(
            self,
            "gn_norm.cu",
            "add_scaled_identity",
            CudaDevice::grid(m * k),
            [mm, &m64, &k32, coef]
        )
    }

    /// `norms[s] = max(lambda_max(C_s^T M_s C_s), 0)` and the rank (eigenvalues above
    /// `rank_tol * lambda_max`), by cyclic Jacobi; `k <= 32`.
    #[allow(clippy::too_many_arguments)]
    pub fn gn_norm_jacobi(
        &self,
        mm: In<T>,
        c: In<T>,
        m: usize,
        k: usize,
        rank_tol: T,
        norms: Out<T>,
        ranks: &mut CudaViewMut<i32>,
    ) -> Result<()> {
        let (m64, k32) = (i64_of(m), k as i32);
        let tol = T::EPS * T::from_f64(8.0);
        let name = if k <= 16 {
            "gn_norm_jacobi_k16"
        } else {
            "gn_norm_jacobi_k32"
        };
        let f = self
            .dev
            .function("gn_norm.cu", &format!("{name}_{}", T::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (m.div_ceil(64).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.dev.stream().launch_builder(&f);
        b.arg(mm)
            .arg(c)
            .arg(&m64)
            .arg(&k32)
            .arg(&tol)
            .arg(&rank_tol)
            .arg(norms)
            .arg(ranks);
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("kernel gn_norm_jacobi"))
    }

    /// Stacked `out_s = C_s^T G_s` (`(m k) x d`).
    pub fn cg_factor(
        &self,
        c: In<T>,
        g: In<T>,
        m: usize,
        k: usize,
        d: usize,
        out: Out<T>,
    ) -> Result<()> {
        let (m64, k32, d64) = (i64_of(m), k as i32, i64_of(d));
        launch!(
            self,
            "kron.cu",
            "cg_factor",
            CudaDevice::grid(m * k * d),
            [c, g, &m64, &k32, &d64, out]
        )
    }

    /// Writes pair-layout rows `[row0, row0 + rows)` of curvature block `(q, p)` into `H`
    /// (`P x P`) at parameter offsets `(off_q, off_p)`, times `scale`; `mirror` also writes
    /// the transposed entries.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_curvature(
        &self,
        pair: In<T>,
        row0: usize,
        rows: usize,
        dims: (usize, usize, usize, usize),
        bias: bool,
        h: Out<T>,
        p_total: usize,
        offs: (usize, usize),
        scale: T,
        mirror: bool,
    ) -> Result<()> {
        let (dq, dp, nq, np) = dims;
        let cols = (nq + usize::from(bias)) * (np + usize::from(bias));
        let a = [row0, rows, dq, dp, nq, np].map(i64_of);
        let (b32, m32) = (i32::from(bias), i32::from(mirror));
        let (pt, oq, op) = (i64_of(p_total), i64_of(offs.0), i64_of(offs.1));
        launch!(
            self,
            "kron.cu",
            "scatter_curvature",
            CudaDevice::grid(rows * cols),
            [
                pair, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &b32, h, &pt, &oq, &op, &scale,
                &m32
            ]
        )
    }

    /// Adds transposed-pair rows `[row0, row0 + rows)` of the H-term cross block
    /// (rows `W(q)`, columns layer `p < q`) into `H` and its mirror, times `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_cross(
        &self,
        pair_t: In<T>,
        row0: usize,
        rows: usize,
        dims: (usize, usize, usize, usize),
        bias: bool,
        h: Out<T>,
        p_total: usize,
        offs: (usize, usize),
        scale: T,
    ) -> Result<()> {
        let (dq, dp, nq, np) = dims;
        let cols = dq * (np + usize::from(bias));
        let a = [row0, rows, dq, dp, nq, np].map(i64_of);
        let b32 = i32::from(bias);
        let (pt, oq, op) = (i64_of(p_total), i64_of(offs.0), i64_of(offs.1));
        launch!(
            self,
            "kron.cu",
            "scatter_cross",
            CudaDevice::grid(rows * cols),
            [pair_t, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &b32, h, &pt, &oq, &op, &scale]
        )
    }

    /// Lower-triangle packing of stacked `d x d` blocks:
    /// `out[s, a (a + 1) / 2 + c] = M[s, a d + c]` for `c <= a`.
    pub fn pack_lower_pairs(&self, mm: In<T>, m: usize, d: usize, out: Out<T>) -> Result<()> {
        let (m64, d64) = (i64_of(m), i64_of(d));
        let n = m * d * (d + 1) / 2;
        launch!(
            self,
            "kron.cu",
            "pack_lower_pairs",
            CudaDevice::grid(n),
            [mm, &m64, &d64, out]
        )
    }

    /// Symmetric Kronecker expansion `out[s, b (b + 1) / 2 + e] = x~[s, b] x~[s, e]`, `e <= b`.
    pub fn row_outer_sym(
        &self,
        x: In<T>,
        n: usize,
        aug: bool,
        m: usize,
        out: Out<T>,
    ) -> Result<()> {
        let (n64, m64) = (i64_of(n), i64_of(m));
        let na = n + usize::from(aug);
        let ia = i32::from(aug);
        launch!(
            self,
            "kron.cu",
            "row_outer_sym",
            CudaDevice::grid(m * na * (na + 1) / 2),
            [x, &n64, &ia, &m64, out]
        )
    }

    /// Writes rows `[row0, row0 + rows)` of a doubly-reduced diagonal block `(q, q)`
    /// (rows `t(a, c)`, columns `t(b, e)`) into all four images in `H`, times `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_curvature_sym(
        &self,
        pair: In<T>,
        row0: usize,
        rows: usize,
        d: usize,
        n: usize,
        bias: bool,
        h: Out<T>,
        p_total: usize,
        off: usize,
        scale: T,
    ) -> Result<()> {
        let na = n + usize::from(bias);
        let cols = na * (na + 1) / 2;
        let a = [row0, rows, d, n].map(i64_of);
        let b32 = i32::from(bias);
        let (pt, o) = (i64_of(p_total), i64_of(off));
        launch!(
            self,
            "kron.cu",
            "scatter_curvature_sym",
            CudaDevice::grid(rows * cols),
            [pair, &a[0], &a[1], &a[2], &a[3], &b32, h, &pt, &o, &scale]
        )
    }
}
