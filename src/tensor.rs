//! Dense row-major matrices generic over `f32`/`f64`, strided views, and GEMM.
//!
//! `Matrix<T>` owns a contiguous row-major buffer. `MatRef<'a, T>` is a strided
//! read-only view: a transpose is a view with swapped strides, so GEMM never
//! copies to transpose.
//!
//! # GEMM kernels
//! Every dense product of the engine goes through [`gemm_par`] / [`matmul_new`], which
//! hand it to one of two kernels, chosen once per dtype ([`GemmKernel::for_dtype`]):
//! - `matrixmultiply` (single-threaded kernels): large products are split over rayon
//!   by *row blocks of C*; each output element is computed by one thread with the same
//!   accumulation order over the inner dimension (matrixmultiply's `kc` does not
//!   depend on the row count), so results are bit-identical for any thread count;
//! - the `gemm` crate (faer's GEMM), called once per product with its own rayon
//!   parallelism over tiles of C: its inner-dimension blocking depends on the product's
//!   shape only, never on the thread count, so results are again bit-identical for any
//!   thread count (tested below), but they differ in the last bits from
//!   matrixmultiply's.
//!
//! The default ("auto") choice is measured (docs/benchmarks.md, "GEMM kernels", and
//! `cargo bench --bench gemm`): matrixmultiply on Intel processors with AVX-512 (its
//! AVX-512 dgemm ran at 80 GFLOP/s on the Intel dev kind, where the `gemm` crate was
//! not measured), the `gemm` crate (with its AVX-512 kernels where the processor has
//! them) everywhere else: 1.45-1.6x matrixmultiply's dgemm on the AVX2 EPYC; on the
//! AVX-512 EPYC (Zen 4) 1.1-1.7x on the engine's narrow products (GN-norm and HVP
//! shapes) in both dtypes, equal at square 1536, and the three MLP targets of
//! `benches/cpu_rounds.sh` met in more rounds through it. Both kernels pick their
//! SIMD code from the processor at run time, so results are reproducible for a seed
//! and thread count on one machine kind, not across kinds; the provenance of every
//! result records the kernels (`gemm_kernels_description`).
//! `LANDSCAPE_GEMM=matrixmultiply|gemm|auto` overrides the choice for both dtypes.

use rayon::prelude::*;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// Floating-point element type (`f32` or `f64`).
pub trait Scalar:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + bytemuck::Pod
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + std::fmt::Display
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// `"f32"` or `"f64"`, the safetensors dtype name.
    const DTYPE: &'static str;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    /// `self * a + b` with one rounding (a fused multiply-add).
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn max(self, other: Self) -> Self {
        if self >= other {
            self
        } else {
            other
        }
    }
    /// The kernel that computes this dtype's products (cached after the first call).
    fn gemm_kernel() -> GemmKernel;
    /// `C <- alpha * A B + beta * C` on raw strided buffers (matrixmultiply).
    ///
    /// # Safety
    /// Pointers and strides must describe valid `m x k`, `k x n`, `m x n` matrices,
    /// and `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_scalar {
    ($t:ty, $name:literal, $gemm:path) => {
        impl Scalar for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: &'static str = $name;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            fn gemm_kernel() -> GemmKernel {
                static KERNEL: std::sync::OnceLock<GemmKernel> = std::sync::OnceLock::new();
                *KERNEL.get_or_init(|| GemmKernel::for_dtype($name))
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}
impl_scalar!(f32, "f32", matrixmultiply::sgemm);
impl_scalar!(f64, "f64", matrixmultiply::dgemm);

/// The kernel behind [`gemm_par`] and [`matmul_new`] (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// `matrixmultiply` 0.3, split over rayon by row blocks of C.
    Matrixmultiply,
    /// The `gemm` crate 0.19 (faer's GEMM), with its own rayon parallelism.
    Gemm,
}

/// The environment variable that overrides the kernel choice.
pub const GEMM_ENV: &str = "LANDSCAPE_GEMM";

impl GemmKernel {
    /// The name used in `LANDSCAPE_GEMM` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Matrixmultiply => "matrixmultiply",
            GemmKernel::Gemm => "gemm",
        }
    }

    /// Parses `LANDSCAPE_GEMM`'s value: `None` for `auto`.
    pub fn parse(v: &str) -> Result<Option<Self>, String> {
        match v.trim() {
            "auto" | "" => Ok(None),
            "matrixmultiply" => Ok(Some(GemmKernel::Matrixmultiply)),
            "gemm" => Ok(Some(GemmKernel::Gemm)),
            other => Err(format!(
                "{GEMM_ENV}={other:?}: expected matrixmultiply, gemm or auto"
            )),
        }
    }

    /// Checks `LANDSCAPE_GEMM` (for the CLI, which reports a bad value as an error;
    /// the library treats a bad value as `auto`).
    pub fn check_env() -> Result<(), String> {
        match std::env::var(GEMM_ENV) {
            Ok(v) => Self::parse(&v).map(|_| ()),
            Err(_) => Ok(()),
        }
    }

    /// The measured default for `dtype` ("f32" or "f64") on this processor, unless
    /// `LANDSCAPE_GEMM` names a kernel.
    pub fn for_dtype(dtype: &str) -> Self {
        if let Ok(Ok(Some(k))) = std::env::var(GEMM_ENV).map(|v| Self::parse(&v)) {
            return k;
        }
        Self::auto(dtype)
    }

    /// The measured default (module docs): matrixmultiply on Intel processors with
    /// AVX-512, `gemm` everywhere else.
    pub fn auto(_dtype: &str) -> Self {
        if intel_with_avx512() {
            GemmKernel::Matrixmultiply
        } else {
            GemmKernel::Gemm
        }
    }
}

/// Whether this is an Intel processor with AVX-512 (the kind where matrixmultiply's
/// AVX-512 kernels were measured and the `gemm` crate was not).
fn intel_with_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::is_x86_feature_detected!("avx512f") {
            return false;
        }
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0 exists on every x86-64 processor.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
        &vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernels in use, e.g. `"f64: gemm, f32: matrixmultiply"`.
pub fn gemm_kernels_description() -> String {
    format!(
        "f64: {}, f32: {}",
        f64::gemm_kernel().name(),
        f32::gemm_kernel().name()
    )
}

/// `C <- alpha * A B + beta * C` through the `gemm` crate (`C` row-major with row
/// stride `rsc`), `threads > 1` letting it split the tiles of C over the rayon pool.
///
/// # Safety
/// As for [`Scalar::gemm_raw`]; with `beta == 0`, `c` may be uninitialised.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate_raw<T: Scalar>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: *mut T,
    rsc: isize,
    threads: usize,
) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // The gemm crate computes dst <- alpha_g dst + beta_g lhs rhs (its alpha scales the
    // destination); read_dst = false never reads dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            rsc,
            beta != T::ZERO,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// Owned dense row-major matrix: element `(i, j)` is `data[i * cols + j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

/// Read-only strided view: element `(i, j)` is at `data[i * rs + j * cs]`
/// (offsets relative to the view's origin inside `data`).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl<T: Scalar> Matrix<T> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![T::ZERO; rows * cols],
        }
    }
    pub fn filled(rows: usize, cols: usize, v: T) -> Self {
        Self {
            rows,
            cols,
            data: vec![v; rows * cols],
        }
    }
    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = T::ONE;
        }
        m
    }
    /// Wraps a row-major buffer. Panics if `data.len() != rows * cols` (a programming error).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<T>) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "Matrix::from_vec: buffer length does not match shape"
        );
        Self { rows, cols, data }
    }
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }
    /// Column vector (`n x 1`).
    pub fn col_vector(v: Vec<T>) -> Self {
        let n = v.len();
        Self::from_vec(n, 1, v)
    }
    /// Row vector (`1 x n`).
    pub fn row_vector(v: Vec<T>) -> Self {
        let n = v.len();
        Self::from_vec(1, n, v)
    }
    pub fn scalar(v: T) -> Self {
        Self::from_vec(1, 1, vec![v])
    }
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }
    #[inline]
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> T {
        self.data[i * self.cols + j]
    }
    #[inline]
    pub fn set(&mut self, i: usize, j: usize, v: T) {
        self.data[i * self.cols + j] = v;
    }
    #[inline]
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        let c = self.cols;
        &mut self.data[i * c..(i + 1) * c]
    }
    /// Value of a `1 x 1` matrix.
    pub fn item(&self) -> T {
        assert_eq!(self.len(), 1, "item() on a non-scalar matrix");
        self.data[0]
    }
    pub fn view(&self) -> MatRef<'_, T> {
        MatRef {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.cols as isize,
            cs: 1,
        }
    }
    /// Transposed view (no copy).
    pub fn t(&self) -> MatRef<'_, T> {
        self.view().t()
    }
    /// Rows `start..end` as a contiguous view.
    pub fn rows_view(&self, start: usize, end: usize) -> MatRef<'_, T> {
        assert!(start <= end && end <= self.rows);
        MatRef {
            data: &self.data[start * self.cols..end * self.cols],
            rows: end - start,
            cols: self.cols,
            rs: self.cols as isize,
            cs: 1,
        }
    }
    /// Copies the given rows (in the given order) into a new matrix.
    pub fn select_rows(&self, idx: &[usize]) -> Self {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Self::from_vec(idx.len(), self.cols, data)
    }
    /// Same buffer, new shape (row-major reinterpretation).
    pub fn reshape(self, rows: usize, cols: usize) -> Self {
        Self::from_vec(rows, cols, self.data)
    }
    pub fn map(&self, f: impl Fn(T) -> T) -> Self {
        Self {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }
    /// [`Matrix::map`] split over rayon for large matrices (elementwise, so the
    /// result does not depend on the split).
    pub fn par_map(&self, f: impl Fn(T) -> T + Sync + Send) -> Self {
        if self.data.len() < 2 * PAR_ELEMENTWISE_MIN {
            return self.map(f);
        }
        Self {
            rows: self.rows,
            cols: self.cols,
            data: self
                .data
                .par_iter()
                .with_min_len(PAR_ELEMENTWISE_MIN)
                .map(|&x| f(x))
                .collect(),
        }
    }
    /// [`Matrix::zip_map`] split over rayon for large matrices.
    pub fn par_zip_map(&self, other: &Self, f: impl Fn(T, T) -> T + Sync + Send) -> Self {
        assert_eq!(self.shape(), other.shape(), "zip_map: shape mismatch");
        if self.data.len() < 2 * PAR_ELEMENTWISE_MIN {
            return self.zip_map(other, f);
        }
        Self {
            rows: self.rows,
            cols: self.cols,
            data: self
                .data
                .par_iter()
                .zip(other.data.par_iter())
                .with_min_len(PAR_ELEMENTWISE_MIN)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }
    pub fn zip_map(&self, other: &Self, f: impl Fn(T, T) -> T) -> Self {
        assert_eq!(self.shape(), other.shape(), "zip_map: shape mismatch");
        Self {
            rows: self.rows,
            cols: self.cols,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }
    pub fn scale(&self, s: T) -> Self {
        self.map(|x| x * s)
    }
    /// `self += s * other`.
    pub fn axpy(&mut self, s: T, other: &Self) {
        assert_eq!(self.shape(), other.shape(), "axpy: shape mismatch");
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a += s * b;
        }
    }
    /// Sum of all entries, accumulated in order in f64.
    pub fn sum_f64(&self) -> f64 {
        self.data.iter().map(|x| x.to_f64()).sum()
    }
    pub fn frobenius_norm(&self) -> f64 {
        self.data
            .iter()
            .map(|x| {
                let v = x.to_f64();
                v * v
            })
            .sum::<f64>()
            .sqrt()
    }
    pub fn max_abs(&self) -> f64 {
        self.data
            .iter()
            .fold(0.0f64, |m, x| m.max(x.to_f64().abs()))
    }
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
    /// Materialised transpose.
    pub fn transpose(&self) -> Self {
        self.t().to_owned()
    }
    /// Converts element type through f64.
    pub fn cast<U: Scalar>(&self) -> Matrix<U> {
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&x| U::from_f64(x.to_f64())).collect(),
        }
    }
    /// Column sums as a `1 x cols` row vector (rows summed in order).
    pub fn sum_rows(&self) -> Self {
        let mut out = vec![T::ZERO; self.cols];
        for i in 0..self.rows {
            for (o, &v) in out.iter_mut().zip(self.row(i)) {
                *o += v;
            }
        }
        Self::row_vector(out)
    }
    /// Row sums as a `rows x 1` column vector.
    pub fn sum_cols(&self) -> Self {
        Self::col_vector(
            (0..self.rows)
                .map(|i| self.row(i).iter().copied().sum())
                .collect(),
        )
    }
}

impl<'a, T: Scalar> MatRef<'a, T> {
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Transposed view.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> T {
        self.data[(i as isize * self.rs + j as isize * self.cs) as usize]
    }
    /// Row `i` as a slice when the view's rows are contiguous (`None` for a transposed view).
    #[inline]
    pub fn row_slice(&self, i: usize) -> Option<&'a [T]> {
        if self.cs != 1 || self.cols == 0 {
            return None;
        }
        let start = (i as isize * self.rs) as usize;
        Some(&self.data[start..start + self.cols])
    }
    pub fn to_owned(&self) -> Matrix<T> {
        Matrix::from_fn(self.rows, self.cols, |i, j| self.get(i, j))
    }
    /// Rows `start..end` of the view.
    fn sub_rows(&self, start: usize, end: usize) -> Self {
        if start == end {
            return Self {
                data: &self.data[..0],
                rows: 0,
                cols: self.cols,
                rs: self.rs,
                cs: self.cs,
            };
        }
        let off = start as isize * self.rs;
        // Strides are non-negative in every view we create.
        Self {
            data: &self.data[off as usize..],
            rows: end - start,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Elements per task of the parallel elementwise maps (below twice this, serial).
const PAR_ELEMENTWISE_MIN: usize = 1 << 15;

/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_GEMM_MIN_WORK: usize = 1 << 18;

/// Whether a kernel may split its work over the rayon pool.
///
/// Counts of the dense-product work done through the GEMM layer ([`gemm_par`],
/// [`matmul_new`]) and the convolution kernels (`autodiff::conv`), for `landscape
/// bench`'s achieved GFLOP/s: `2 m n k` per product (a multiply-add is 2 FLOPs). Off
/// unless [`flop_count::start`] is called; one relaxed atomic add per product when on.
pub mod flop_count {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static ON: AtomicBool = AtomicBool::new(false);
    static FLOPS: AtomicU64 = AtomicU64::new(0);

    /// Starts counting from zero.
    pub fn start() {
        FLOPS.store(0, Ordering::Relaxed);
        ON.store(true, Ordering::Relaxed);
    }

    /// Stops counting and returns the FLOPs counted since [`start`].
    pub fn stop() -> f64 {
        ON.store(false, Ordering::Relaxed);
        FLOPS.swap(0, Ordering::Relaxed) as f64
    }

    /// Records a product of `m x k` by `k x n`.
    #[inline]
    pub fn add(m: usize, k: usize, n: usize) {
        if ON.load(Ordering::Relaxed) {
            let f = 2u64
                .saturating_mul(m as u64)
                .saturating_mul(k as u64)
                .saturating_mul(n as u64);
            FLOPS.fetch_add(f, Ordering::Relaxed);
        }
    }
}

/// Callers that already run in parallel over sample blocks pass `Seq` so that
/// each block's GEMMs stay on its thread (no nested synchronisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    Seq,
    Rayon,
}

/// `C <- alpha * A B + beta * C` with `A: m x k`, `B: k x n`, `C: m x n` (row-major, owned).
///
/// Shapes are checked (a mismatch is a programming error and panics). The
/// product is split over rayon in row blocks of `C`; see the module docs for
/// why this is deterministic.
pub fn gemm<T: Scalar>(alpha: T, a: MatRef<'_, T>, b: MatRef<'_, T>, beta: T, c: &mut Matrix<T>) {
    gemm_par(Par::Rayon, alpha, a, b, beta, c)
}

/// [`gemm`] with explicit parallelism. Results are bit-identical for `Seq` and `Rayon`
/// and for any thread count.
pub fn gemm_par<T: Scalar>(
    par: Par,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut Matrix<T>,
) {
    gemm_with(T::gemm_kernel(), par, alpha, a, b, beta, c)
}

/// [`gemm_par`] through the named kernel instead of the dtype's chosen one (for
/// benchmarks and tests of both kernels).
pub fn gemm_with<T: Scalar>(
    kernel: GemmKernel,
    par: Par,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut Matrix<T>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "gemm: inner dimensions differ ({m}x{k} * {}x{n})",
        b.rows
    );
    assert_eq!(c.shape(), (m, n), "gemm: output shape mismatch");
    if m == 0 || n == 0 {
        return;
    }
    flop_count::add(m, k, n);
    if k == 0 {
        for x in c.as_mut_slice() {
            *x = if beta == T::ZERO { T::ZERO } else { *x * beta };
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let work = m * n * k;
    let serial = par == Par::Seq || threads <= 1 || work < PARALLEL_GEMM_MIN_WORK;
    if kernel == GemmKernel::Gemm {
        // SAFETY: views were bounds-checked at construction; c is a distinct buffer.
        unsafe {
            gemm_crate_raw(
                m,
                k,
                n,
                alpha,
                a,
                b,
                beta,
                c.as_mut_slice().as_mut_ptr(),
                n as isize,
                if serial { 1 } else { threads },
            )
        };
        return;
    }
    if serial || m < 2 {
        gemm_serial(alpha, a, b, beta, c.as_mut_slice(), n);
        return;
    }
    // Row blocks: a few per thread for load balance, at least 8 rows each.
    let block = m.div_ceil(threads * 2).max(8);
    c.as_mut_slice()
        .par_chunks_mut(block * n)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let r0 = bi * block;
            let r1 = r0 + chunk.len() / n;
            gemm_serial(alpha, a.sub_rows(r0, r1), b, beta, chunk, n);
        });
}

fn gemm_serial<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
    n: usize,
) {
    let (m, k) = (a.rows, a.cols);
    debug_assert_eq!(c.len(), m * n);
    // SAFETY: views were bounds-checked at construction; c is a distinct mutable buffer.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs,
            a.cs,
            b.data.as_ptr(),
            b.rs,
            b.cs,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `A B` as a new matrix, without zeroing the output first: the kernel writes
/// every element (`beta = 0` never reads `C`). The same row-block split as
/// [`gemm`], so the result is bit-identical to it.
pub fn matmul_new<T: Scalar>(par: Par, a: MatRef<'_, T>, b: MatRef<'_, T>) -> Matrix<T> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "matmul: inner dimensions differ ({m}x{k} * {}x{n})",
        b.rows
    );
    if m == 0 || n == 0 || k == 0 {
        return Matrix::zeros(m, n);
    }
    flop_count::add(m, k, n);
    let mut data: Vec<T> = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let serial = par == Par::Seq || threads <= 1 || m * n * k < PARALLEL_GEMM_MIN_WORK;
    if T::gemm_kernel() == GemmKernel::Gemm {
        // SAFETY: the buffer has capacity m n and beta = 0 never reads it; views were
        // bounds-checked at construction.
        unsafe {
            gemm_crate_raw(
                m,
                k,
                n,
                T::ONE,
                a,
                b,
                T::ZERO,
                data.as_mut_ptr(),
                n as isize,
                if serial { 1 } else { threads },
            );
            data.set_len(m * n);
        }
        return Matrix::from_vec(m, n, data);
    }
    // Raw address so the row blocks can be written from several threads.
    let base = data.as_mut_ptr() as usize;
    let run = |r0: usize, r1: usize| {
        let sub = a.sub_rows(r0, r1);
        // SAFETY: rows r0..r1 of the m x n output are written by this call only;
        // the buffer has capacity m n; views were bounds-checked at construction.
        unsafe {
            T::gemm_raw(
                r1 - r0,
                k,
                n,
                T::ONE,
                sub.data.as_ptr(),
                sub.rs,
                sub.cs,
                b.data.as_ptr(),
                b.rs,
                b.cs,
                T::ZERO,
                (base as *mut T).add(r0 * n),
                n as isize,
                1,
            );
        }
    };
    if serial || m < 2 {
        run(0, m);
    } else {
        let block = m.div_ceil(threads * 2).max(8);
        (0..m.div_ceil(block)).into_par_iter().for_each(|bi| {
            let r0 = bi * block;
            run(r0, (r0 + block).min(m));
        });
    }
    // SAFETY: every element was written by the kernel above (beta = 0).
    unsafe { data.set_len(m * n) };
    Matrix::from_vec(m, n, data)
}

/// `A B` as a new matrix.
pub fn matmul<T: Scalar>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Matrix<T> {
    let mut c = Matrix::zeros(a.rows, b.cols);
    gemm(T::ONE, a, b, T::ZERO, &mut c);
    c
}

/// Sums `parts` in index order (fixed-order reduction for determinism).
pub fn sum_in_order<T: Scalar>(parts: Vec<Matrix<T>>) -> Option<Matrix<T>> {
    let mut it = parts.into_iter();
    let mut acc = it.next()?;
    for p in it {
        acc.axpy(T::ONE, &p);
    }
    Some(acc)
}

/// Splits `0..n` into consecutive blocks of `block` indices (the last may be shorter).
/// Per-sample work is mapped over these blocks in parallel and the partial results
/// are combined with [`sum_in_order`], so the result depends only on `block`, never
/// on scheduling.
pub fn sample_blocks(n: usize, block: usize) -> Vec<std::ops::Range<usize>> {
    assert!(block > 0);
    (0..n.div_ceil(block))
        .map(|b| b * block..((b + 1) * block).min(n))
        .collect()
}

/// Maps `f` over fixed sample blocks in parallel and sums the results in block order.
pub fn par_block_sum<T: Scalar, F>(n: usize, block: usize, f: F) -> Option<Matrix<T>>
where
    F: Fn(std::ops::Range<usize>) -> Matrix<T> + Sync + Send,
{
    let parts: Vec<Matrix<T>> = sample_blocks(n, block).into_par_iter().map(f).collect();
    sum_in_order(parts)
}

/// Dot product with eight independent accumulators (so the compiler can use
/// SIMD lanes); the summation order is fixed, so results are reproducible.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [0.0f64; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Matrix<f64>, b: &Matrix<f64>) -> Matrix<f64> {
        Matrix::from_fn(a.rows(), b.cols(), |i, j| {
            (0..a.cols()).map(|k| a.get(i, k) * b.get(k, j)).sum()
        })
    }

    #[test]
    fn gemm_transposes_match_naive() {
        let a = Matrix::from_fn(37, 29, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let b = Matrix::from_fn(29, 31, |i, j| ((i * 5 + j) % 13) as f64 * 0.5);
        let c = matmul(a.view(), b.view());
        assert_eq!(c, naive(&a, &b));
        let at = a.transpose();
        let bt = b.transpose();
        assert_eq!(matmul(at.t(), bt.t()), c);
    }

    /// `sum_k a_ik b_kj` with compensated (Neumaier) summation of exactly formed
    /// products (two-product by FMA), and `sum_k |a_ik b_kj|` for the error bound.
    fn compensated(a: &Matrix<f64>, b: &Matrix<f64>, i: usize, j: usize) -> (f64, f64) {
        let (mut s, mut comp, mut abs) = (0.0f64, 0.0f64, 0.0f64);
        let mut add = |x: f64| {
            let t = s + x;
            comp += if s.abs() >= x.abs() {
                (s - t) + x
            } else {
                (x - t) + s
            };
            s = t;
        };
        for k in 0..a.cols() {
            let p = a.get(i, k) * b.get(k, j);
            let e = a.get(i, k).mul_add(b.get(k, j), -p);
            add(p);
            add(e);
            abs += p.abs();
        }
        (s + comp, abs)
    }

    fn pseudo(rows: usize, cols: usize, seed: usize) -> Matrix<f64> {
        Matrix::from_fn(rows, cols, |i, j| {
            let h = (i * 7919 + j * 104729 + seed * 1299709) % 1000003;
            (h as f64 / 1000003.0 - 0.5) * (1.0 + (j % 5) as f64)
        })
    }

    /// Every shape class the kernels special-case (tiny outputs, vectors, k <= 2,
    /// tall-skinny, square, transposed views): both kernels agree with a compensated
    /// reference within `k u sum|a b|` per element (f64) and `k u32` (f32), where
    /// `u` is the unit roundoff, with `alpha`/`beta` applied.
    #[test]
    fn gemm_kernels_match_a_compensated_reference() {
        let shapes = [
            (1, 1, 1),
            (3, 2, 4),
            (1, 300, 17),
            (17, 300, 1),
            (9, 1000, 7),
            (70, 2, 90),
            (128, 513, 65),
            (301, 64, 3),
            (150, 257, 160),
        ];
        for kernel in [GemmKernel::Matrixmultiply, GemmKernel::Gemm] {
            for (si, &(m, k, n)) in shapes.iter().enumerate() {
                for transposed in [false, true] {
                    let a = pseudo(m, k, si);
                    let b = pseudo(k, n, si + 50);
                    let (at, bt) = (a.transpose(), b.transpose());
                    let (av, bv) = if transposed {
                        (at.t(), bt.t())
                    } else {
                        (a.view(), b.view())
                    };
                    let c0 = pseudo(m, n, si + 99);
                    let mut c = c0.clone();
                    gemm_with(kernel, Par::Rayon, 0.75, av, bv, -0.5, &mut c);
                    let mut c32 = Matrix::from_fn(m, n, |i, j| c0.get(i, j) as f32);
                    let (a32, b32) = (
                        Matrix::from_fn(m, k, |i, j| a.get(i, j) as f32),
                        Matrix::from_fn(k, n, |i, j| b.get(i, j) as f32),
                    );
                    gemm_with(
                        kernel,
                        Par::Rayon,
                        0.75,
                        a32.view(),
                        b32.view(),
                        -0.5,
                        &mut c32,
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let (exact, abs) = compensated(&a, &b, i, j);
                            let want = 0.75 * exact - 0.5 * c0.get(i, j);
                            let scale = 0.75 * abs + 0.5 * c0.get(i, j).abs();
                            let err = (c.get(i, j) - want).abs();
                            assert!(
                                err <= (k + 2) as f64 * f64::EPSILON * scale,
                                "{kernel:?} f64 {m}x{k}x{n} t={transposed} ({i},{j}): {err:e} vs scale {scale:e}"
                            );
                            // f32 inputs are rounded, so compare with the f32 bound
                            // (input rounding included).
                            let err32 = (c32.get(i, j) as f64 - want).abs();
                            assert!(
                                err32 <= (k + 4) as f64 * f32::EPSILON as f64 * scale,
                                "{kernel:?} f32 {m}x{k}x{n} ({i},{j}): {err32:e} vs scale {scale:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Both kernels give the same bits for 1, 2, 3 and 4 threads, `Seq` or `Rayon`,
    /// for products large enough to be split; `matmul_new` equals `gemm_par`.
    #[test]
    fn gemm_results_do_not_depend_on_the_thread_count() {
        let a = Matrix::from_fn(300, 200, |i, j| ((i * 31 + j * 17) % 97) as f64 / 7.0 - 3.0);
        let b = Matrix::from_fn(200, 150, |i, j| {
            ((i * 13 + j * 29) % 89) as f64 / 11.0 - 2.0
        });
        for kernel in [GemmKernel::Matrixmultiply, GemmKernel::Gemm] {
            let run = |threads: usize, par: Par| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut c = Matrix::from_fn(300, 150, |i, j| (i + j) as f64);
                    gemm_with(kernel, par, 1.5, a.view(), b.view(), 0.25, &mut c);
                    c
                })
            };
            let reference = run(1, Par::Seq);
            for threads in 1..=4 {
                for par in [Par::Seq, Par::Rayon] {
                    assert_eq!(
                        run(threads, par).as_slice(),
                        reference.as_slice(),
                        "{kernel:?} {threads} threads {par:?}"
                    );
                }
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (fresh, par) = pool.install(|| {
            let mut c = Matrix::zeros(300, 150);
            gemm_par(Par::Rayon, 1.0, a.view(), b.view(), 0.0, &mut c);
            (matmul_new(Par::Rayon, a.view(), b.view()), c)
        });
        assert_eq!(fresh.as_slice(), par.as_slice());
    }

    #[test]
    fn gemm_kernel_names_parse() {
        assert_eq!(GemmKernel::parse("gemm"), Ok(Some(GemmKernel::Gemm)));
        assert_eq!(
            GemmKernel::parse("matrixmultiply"),
            Ok(Some(GemmKernel::Matrixmultiply))
        );
        assert_eq!(GemmKernel::parse("auto"), Ok(None));
        assert!(GemmKernel::parse("blas")
            .unwrap_err()
            .contains("LANDSCAPE_GEMM"));
    }
}

/// Compressed sparse rows of one orientation.
#[derive(Clone, Debug)]
struct Csr {
    indptr: Vec<usize>,
    /// Column indices as `u32`: a quarter less memory traffic per nonzero than `usize`.
    indices: Vec<u32>,
    values: Vec<f64>,
    /// Row `i`'s nonzeros with column in chunk `c` (columns `c * CSR_CHUNK ..`) are
    /// `chunk_ptr[i * (chunks + 1) + c] .. chunk_ptr[i * (chunks + 1) + c + 1]`: the
    /// blocked kernel walks one chunk of `b`'s rows at a time so they stay in L1.
    // Read by the x86-64 kernels only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    chunk_ptr: Vec<usize>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    chunks: usize,
}

/// Appends the nonzeros of `row` (column index and value) without a branch per entry:
/// every entry is written to the spare capacity and the length advances only past
/// nonzeros (image rows mix zeros and nonzeros unpredictably).
fn push_nonzeros(row: &[f64], indices: &mut Vec<u32>, values: &mut Vec<f64>) {
    indices.reserve(row.len());
    values.reserve(row.len());
    let base = indices.len();
    debug_assert_eq!(base, values.len());
    let mut n = 0;
    {
        let idx_spare = &mut indices.spare_capacity_mut()[..row.len()];
        let val_spare = &mut values.spare_capacity_mut()[..row.len()];
        for (j, &v) in row.iter().enumerate() {
            idx_spare[n].write(j as u32);
            val_spare[n].write(v);
            n += (v != 0.0) as usize;
        }
    }
    // SAFETY: the first `n` spare slots of both vectors were written above (each slot
    // below the final `n` was written when `n` passed it), and capacity covers them.
    unsafe {
        indices.set_len(base + n);
        values.set_len(base + n);
    }
}

/// Rows of the dense operand per chunk of the blocked sparse kernel (64 rows of 64
/// doubles are 32 KiB, inside a 48 KiB L1 data cache).
const CSR_CHUNK: usize = 64;

impl Csr {
    fn from_dense(m: &Matrix<f64>) -> Self {
        Self::from_view(m.view())
    }

    fn from_view(m: MatRef<'_, f64>) -> Self {
        let nnz: usize = (0..m.rows())
            .map(|i| match m.row_slice(i) {
                Some(r) => r.iter().filter(|&&v| v != 0.0).count(),
                None => (0..m.cols()).filter(|&j| m.get(i, j) != 0.0).count(),
            })
            .sum();
        Self::from_view_with_nnz(m, nnz)
    }

    /// [`Csr::from_view`] when the number of nonzeros `nnz` is already known.
    fn from_view_with_nnz(m: MatRef<'_, f64>, nnz: usize) -> Self {
        let mut indptr = Vec::with_capacity(m.rows() + 1);
        // Exact capacity (plus one row of slack for the branchless writes): no regrowth.
        let mut indices = Vec::with_capacity(nnz + m.cols());
        let mut values = Vec::with_capacity(nnz + m.cols());
        indptr.push(0);
        for i in 0..m.rows() {
            let strided;
            let row: &[f64] = match m.row_slice(i) {
                Some(r) => r,
                None => {
                    strided = (0..m.cols()).map(|j| m.get(i, j)).collect::<Vec<_>>();
                    &strided
                }
            };
            push_nonzeros(row, &mut indices, &mut values);
            indptr.push(indices.len());
        }
        let chunks = m.cols().div_ceil(CSR_CHUNK);
        let mut chunk_ptr = Vec::with_capacity(m.rows() * (chunks + 1));
        for i in 0..m.rows() {
            let (s, e) = (indptr[i], indptr[i + 1]);
            let mut t = s;
            for c in 0..chunks {
                chunk_ptr.push(t);
                while t < e && (indices[t] as usize) < (c + 1) * CSR_CHUNK {
                    t += 1;
                }
            }
            chunk_ptr.push(e);
        }
        Self {
            indptr,
            indices,
            values,
            chunk_ptr,
            chunks,
        }
    }

    /// `out[i, :] = sum_{j in row i} s_ij b[j, :]` (`out` is `rows x d`), with AVX-512 or
    /// AVX2+FMA code when the processor (and, for AVX-512, the build) has it.
    fn mul_rows(&self, b: &Matrix<f64>) -> Matrix<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::backend::cpu::avx512_enabled() {
                // SAFETY: the feature was just detected.
                return unsafe { self.mul_rows_avx512(b) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                return unsafe { self.mul_rows_avx2(b) };
            }
        }
        self.mul_rows_portable(b)
    }

    /// The AVX2 + FMA kernel: the same cache blocking and the same sums as the AVX-512
    /// kernel (each output a chain of fused multiply-adds over its nonzeros in column
    /// order), so the two give bit-identical results; 32 columns (eight registers) per
    /// tile, then four at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_rows_avx2(&self, b: &Matrix<f64>) -> Matrix<f64> {
        let rows = self.indptr.len() - 1;
        let d = b.cols();
        let mut out: Matrix<f64> = Matrix::zeros(rows, d);
        let (wide, narrow) = (d / 32 * 32, d / 4 * 4);
        let bs = b.as_slice();
        // Chunk by chunk and row by row, all column tiles of the row in turn: the
        // second tile reads the other half of the same rows of `b` and the same
        // nonzeros just read by the first (a third faster at d = 64 than tile by tile
        // over the whole matrix, which read everything twice from L2).
        for c in 0..self.chunks {
            for i in 0..rows {
                let (s, e) = self.chunk_range(i, c);
                if s == e {
                    continue;
                }
                let row = out.row_mut(i);
                for c0 in (0..wide).step_by(32) {
                    self.tile_generic::<32>(bs, d, row, c0, s, e);
                }
                for c0 in (wide..narrow).step_by(4) {
                    self.tile_generic::<4>(bs, d, row, c0, s, e);
                }
            }
        }
        self.fma_tail_columns(b, &mut out, narrow);
        out
    }

    /// Columns `c0 .. c0 + W` of output row `row` plus the nonzeros `s..e` times the
    /// matching rows of `b` (`bs`, row length `d`), written with arrays the compiler
    /// vectorises (fused multiply-adds in nonzero order).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn tile_generic<const W: usize>(
        &self,
        bs: &[f64],
        d: usize,
        row: &mut [f64],
        c0: usize,
        s: usize,
        e: usize,
    ) {
        let dst: &mut [f64; W] = (&mut row[c0..c0 + W]).try_into().expect("tile");
        let mut acc = *dst;
        for t in s..e {
            let j = self.indices[t] as usize;
            let src: &[f64; W] = bs[j * d + c0..j * d + c0 + W].try_into().expect("tile");
            let x = self.values[t];
            for k in 0..W {
                acc[k] = x.mul_add(src[k], acc[k]);
            }
        }
        *dst = acc;
    }

    /// Row `i`'s nonzeros in column chunk `c`: positions `s..e` of `indices`/`values`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn chunk_range(&self, i: usize, c: usize) -> (usize, usize) {
        let at = i * (self.chunks + 1) + c;
        (self.chunk_ptr[at], self.chunk_ptr[at + 1])
    }

    /// Columns `c0..` of `out = X b` one at a time, fused multiply-adds in column order.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn fma_tail_columns(&self, b: &Matrix<f64>, out: &mut Matrix<f64>, c0: usize) {
        let d = b.cols();
        let bs = b.as_slice();
        for i in 0..self.indptr.len() - 1 {
            let (s, e) = (self.indptr[i], self.indptr[i + 1]);
            for c in c0..d {
                let mut acc = 0.0f64;
                for t in s..e {
                    acc = self.values[t].mul_add(bs[self.indices[t] as usize * d + c], acc);
                }
                out.set(i, c, acc);
            }
        }
    }

    /// The AVX-512 kernel, blocked for the cache: for each chunk of [`CSR_CHUNK`] rows
    /// of `b` (kept in L1), every output row is loaded into registers (64 columns in
    /// eight, then eight at a time), its nonzeros in that chunk are added by fused
    /// multiply-adds, and it is stored back. Each output is summed in column order of
    /// the nonzeros, so results are reproducible.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul_rows_avx512(&self, b: &Matrix<f64>) -> Matrix<f64> {
        let rows = self.indptr.len() - 1;
        let d = b.cols();
        let mut out: Matrix<f64> = Matrix::zeros(rows, d);
        let mut c0 = 0;
        while c0 + 64 <= d {
            // SAFETY: avx512f is enabled on this function; c0 + 64 <= d.
            unsafe { self.blocked_tile::<8>(b, &mut out, c0) };
            c0 += 64;
        }
        while c0 + 8 <= d {
            // SAFETY: as above, c0 + 8 <= d.
            unsafe { self.blocked_tile::<1>(b, &mut out, c0) };
            c0 += 8;
        }
        self.fma_tail_columns(b, &mut out, c0);
        out
    }

    /// Columns `c0 .. c0 + 8 R` of `out += X b`, chunk by chunk (see [`Csr::mul_rows_avx512`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn blocked_tile<const R: usize>(
        &self,
        b: &Matrix<f64>,
        out: &mut Matrix<f64>,
        c0: usize,
    ) {
        use std::arch::x86_64::*;
        let rows = self.indptr.len() - 1;
        let d = b.cols();
        assert!(c0 + 8 * R <= d && out.cols() == d && out.rows() == rows);
        let bs = b.as_slice();
        for c in 0..self.chunks {
            for i in 0..rows {
                let (s, e) = self.chunk_range(i, c);
                if s == e {
                    continue;
                }
                let dst = &mut out.row_mut(i)[c0..c0 + 8 * R];
                let mut acc = [_mm512_setzero_pd(); R];
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: dst holds 8 R values.
                    *a = unsafe { _mm512_loadu_pd(dst.as_ptr().add(8 * k)) };
                }
                for t in s..e {
                    let j = self.indices[t] as usize;
                    let src = &bs[j * d + c0..j * d + c0 + 8 * R];
                    let x = _mm512_set1_pd(self.values[t]);
                    for (k, a) in acc.iter_mut().enumerate() {
                        // SAFETY: src holds 8 R values.
                        *a = _mm512_fmadd_pd(
                            x,
                            unsafe { _mm512_loadu_pd(src.as_ptr().add(8 * k)) },
                            *a,
                        );
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    // SAFETY: dst holds 8 R values.
                    unsafe { _mm512_storeu_pd(dst.as_mut_ptr().add(8 * k), *a) };
                }
            }
        }
    }

    /// Columns go in tiles of 16 held in registers across the row's nonzeros, two
    /// interleaved accumulator sets (even and odd nonzeros, added at the end) so the
    /// FMA chains overlap; each output is summed in a fixed order.
    #[inline(always)]
    fn mul_rows_portable(&self, b: &Matrix<f64>) -> Matrix<f64> {
        const TILE: usize = 16;
        let rows = self.indptr.len() - 1;
        let d = b.cols();
        let bs = b.as_slice();
        let mut out = Matrix::zeros(rows, d);
        for i in 0..rows {
            let (s, e) = (self.indptr[i], self.indptr[i + 1]);
            let (idx, val) = (&self.indices[s..e], &self.values[s..e]);
            let row = out.row_mut(i);
            let mut c0 = 0;
            while c0 + TILE <= d {
                let mut acc0 = [0.0f64; TILE];
                let mut acc1 = [0.0f64; TILE];
                let mut t = 0;
                while t + 1 < idx.len() {
                    let (j0, x0, j1, x1) =
                        (idx[t] as usize, val[t], idx[t + 1] as usize, val[t + 1]);
                    let b0: &[f64; TILE] = bs[j0 * d + c0..j0 * d + c0 + TILE]
                        .try_into()
                        .expect("tile");
                    let b1: &[f64; TILE] = bs[j1 * d + c0..j1 * d + c0 + TILE]
                        .try_into()
                        .expect("tile");
                    for k in 0..TILE {
                        acc0[k] += x0 * b0[k];
                        acc1[k] += x1 * b1[k];
                    }
                    t += 2;
                }
                if t < idx.len() {
                    let (j0, x0) = (idx[t] as usize, val[t]);
                    let b0: &[f64; TILE] = bs[j0 * d + c0..j0 * d + c0 + TILE]
                        .try_into()
                        .expect("tile");
                    for k in 0..TILE {
                        acc0[k] += x0 * b0[k];
                    }
                }
                for k in 0..TILE {
                    row[c0 + k] = acc0[k] + acc1[k];
                }
                c0 += TILE;
            }
            for (c, o) in row.iter_mut().enumerate().skip(c0) {
                *o = idx
                    .iter()
                    .zip(val)
                    .map(|(&j, &x)| x * bs[j as usize * d + c])
                    .sum();
            }
        }
        out
    }
}

/// The nonzeros of a matrix by rows only: for the one product `X B^T` (a forward pass
/// through the first layer), where [`CsrMatrix`] would also build the column copy.
#[derive(Clone, Debug)]
pub struct SparseRows {
    pub rows: usize,
    pub cols: usize,
    by_row: Csr,
}

impl SparseRows {
    /// The nonzeros of the view `m`, known to hold `nnz` of them (the caller counted them
    /// to decide on the sparse route; a wrong count only costs capacity, the entries are
    /// still found by scanning).
    pub fn from_view_with_nnz(m: MatRef<'_, f64>, nnz: usize) -> Self {
        Self {
            rows: m.rows(),
            cols: m.cols(),
            by_row: Csr::from_view_with_nnz(m, nnz),
        }
    }

    /// `X B^T` (`rows x d`) for `B` given as its transpose `bt` (`cols x d`, row-major).
    pub fn mul_transposed(&self, bt: &Matrix<f64>) -> Matrix<f64> {
        assert_eq!(bt.rows(), self.cols, "inner dimensions");
        self.by_row.mul_rows(bt)
    }
}

/// A sparse copy of a matrix for products with inputs that are mostly zeros (MNIST
/// pixels: about 80%), stored by rows and by columns. Products sum each output in a
/// fixed order, so results are reproducible.
#[derive(Clone, Debug)]
pub struct CsrMatrix {
    pub rows: usize,
    pub cols: usize,
    by_row: Csr,
    by_col: Csr,
}

impl CsrMatrix {
    /// The nonzeros of `m`.
    pub fn from_dense(m: &Matrix<f64>) -> Self {
        Self {
            rows: m.rows(),
            cols: m.cols(),
            by_row: Csr::from_dense(m),
            by_col: Csr::from_dense(&m.transpose()),
        }
    }

    /// Fraction of stored entries.
    pub fn density(&self) -> f64 {
        self.by_row.values.len() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// `X B^T` (`rows x d`) for `B` given as its transpose `bt` (`cols x d`, row-major).
    pub fn mul_transposed(&self, bt: &Matrix<f64>) -> Matrix<f64> {
        assert_eq!(bt.rows(), self.cols, "inner dimensions");
        self.by_row.mul_rows(bt)
    }

    /// `A^T X` (`d x cols`) for `A` (`rows x d`): column `j` of `X` against `A`'s rows.
    pub fn t_mul(&self, a: &Matrix<f64>) -> Matrix<f64> {
        self.t_mul_transposed(a).transpose()
    }

    /// `X^T A` (`cols x d`), the transpose of [`CsrMatrix::t_mul`] without the copy.
    pub fn t_mul_transposed(&self, a: &Matrix<f64>) -> Matrix<f64> {
        assert_eq!(a.rows(), self.rows, "inner dimensions");
        self.by_col.mul_rows(a)
    }
}

#[cfg(test)]
mod csr_tests {
    use super::*;

    /// A `rows x cols` matrix of normals with about `zeros` of its entries set to zero.
    fn mostly_zeros(
        rng: &mut crate::rng::Rng,
        rows: usize,
        cols: usize,
        zeros: f64,
    ) -> Matrix<f64> {
        Matrix::from_fn(rows, cols, |_, _| {
            let v = rng.normal();
            if rng.uniform() < zeros {
                0.0
            } else {
                v
            }
        })
    }

    #[test]
    fn sparse_products_match_dense_gemm() {
        let mut rng = crate::rng::Rng::new(4);
        for (rows, cols, d) in [
            (1, 1, 1),
            (7, 31, 3),
            (33, 50, 17),
            (64, 100, 40),
            (5, 50, 64),
            (9, 40, 139),
        ] {
            let x = mostly_zeros(&mut rng, rows, cols, 0.7);
            let b = Matrix::from_fn(d, cols, |_, _| rng.normal());
            let a = Matrix::from_fn(rows, d, |_, _| rng.normal());
            let csr = CsrMatrix::from_dense(&x);
            let mut want = Matrix::zeros(rows, d);
            gemm(1.0, x.view(), b.t(), 0.0, &mut want);
            let got = csr.mul_transposed(&b.transpose());
            let err = got.zip_map(&want, |u, v| (u - v).abs()).max_abs();
            assert!(err <= 1e-12 * (1.0 + want.max_abs()), "{err}");
            let mut want = Matrix::zeros(d, cols);
            gemm(1.0, a.t(), x.view(), 0.0, &mut want);
            let got = csr.t_mul(&a);
            let err = got.zip_map(&want, |u, v| (u - v).abs()).max_abs();
            assert!(err <= 1e-12 * (1.0 + want.max_abs()), "{err}");
        }
    }

    /// Every kernel the processor can run (portable, AVX2, AVX-512) against dense GEMM,
    /// whichever one the run-time dispatch would pick.
    #[test]
    fn every_sparse_kernel_matches_dense_gemm() {
        let mut rng = crate::rng::Rng::new(8);
        for (rows, cols, d) in [(3, 5, 2), (40, 150, 64), (17, 130, 75), (70, 9, 8)] {
            let x = mostly_zeros(&mut rng, rows, cols, 0.75);
            let bt = Matrix::from_fn(cols, d, |_, _| rng.normal());
            let mut want = Matrix::zeros(rows, d);
            gemm(1.0, x.view(), bt.view(), 0.0, &mut want);
            let csr = Csr::from_dense(&x);
            let check = |got: Matrix<f64>, name: &str| {
                let err = got.zip_map(&want, |u, v| (u - v).abs()).max_abs();
                assert!(err <= 1e-12 * (1.0 + want.max_abs()), "{name}: {err}");
            };
            check(csr.mul_rows_portable(&bt), "portable");
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    check(unsafe { csr.mul_rows_avx2(&bt) }, "avx2");
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was just detected.
                    let wide = unsafe { csr.mul_rows_avx512(&bt) };
                    if std::is_x86_feature_detected!("fma") {
                        // Same sums in the same order: bit-identical across the two.
                        // SAFETY: avx512f implies avx2; fma was just detected.
                        assert_eq!(wide, unsafe { csr.mul_rows_avx2(&bt) });
                    }
                    check(wide, "avx512");
                }
            }
        }
    }
}
