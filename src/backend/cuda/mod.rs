//! The CUDA backend: cudarc with dynamic loading, so the crate builds and its CPU
//! path runs on machines without CUDA.
//!
//! * [`CudaDevice`] owns a context, one stream, a cuBLAS handle and a lazily filled
//!   module store: each `kernels/*.cu` file (embedded by `build.rs`) is compiled by
//!   NVRTC for the device's own architecture the first time one of its kernels is
//!   launched, then cached for the life of the device.
//! * [`DeviceMatrix`] is a row-major `rows x cols` matrix in device memory.
//! * [`CudaDevice::gemm`] / [`CudaDevice::gemm_batched`] run row-major GEMMs on
//!   cuBLAS (column-major): row-major `C = op(A) op(B)` is computed as
//!   `C^T = op(B)^T op(A)^T`, which reads the same memory with no copies.
//! * [`CudaBackend`] implements the [`Backend`](super::Backend) trait on top.
//!
//! Without a driver library or a device, [`CudaDevice::open`] returns
//! `Error::Cuda("no CUDA device found ...")` rather than letting cudarc panic.

pub mod compile;
pub mod kernels;

use super::Backend;
use crate::error::{Error, Result};
use crate::nn::Activation;
use crate::tensor::{Matrix, Scalar};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use compile::{compile_all_kernels, nvrtc_available};

/// Turns any cudarc error into [`Error::Cuda`] with context.
pub(crate) fn cuda_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Cuda(format!("CUDA {what} failed: {e:?}"))
}

/// Element types the CUDA kernels are instantiated for (`_f32` / `_f64` entry points).
pub trait CudaScalar: Scalar + DeviceRepr + ValidAsZeroBits + Unpin {
    /// Kernel name suffix.
    const SUFFIX: &'static str;
    /// Relative accuracy used by iterative kernels (Jacobi sweeps).
    const EPS: Self;
    /// cuBLAS GEMM, strided-batched when `cfg.batch_size > 1`.
    ///
    /// # Safety
    /// The buffers must hold the matrices `cfg` describes.
    unsafe fn blas_gemm<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
        blas: &CudaBlas,
        cfg: StridedBatchedConfig<Self>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<()>;
}

macro_rules! impl_cuda_scalar {
    ($t:ty, $suf:literal, $eps:expr) => {
        impl CudaScalar for $t {
            const SUFFIX: &'static str = $suf;
            const EPS: Self = $eps;
            unsafe fn blas_gemm<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
                blas: &CudaBlas,
                cfg: StridedBatchedConfig<Self>,
                a: &A,
                b: &B,
                c: &mut C,
            ) -> Result<()> {
                let r = if cfg.batch_size == 1 {
                    blas.gemm(cfg.gemm, a, b, c)
                } else {
                    blas.gemm_strided_batched(cfg, a, b, c)
                };
                r.map_err(cuda_err("cuBLAS GEMM"))
            }
        }
    };
}
impl_cuda_scalar!(f32, "f32", f32::EPSILON);
impl_cuda_scalar!(f64, "f64", f64::EPSILON);

/// A row-major `rows x cols` matrix in device memory.
pub struct DeviceMatrix<T> {
    pub data: CudaSlice<T>,
    pub rows: usize,
    pub cols: usize,
}

impl<T> DeviceMatrix<T> {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shape of one GEMM operand as stored (row-major `rows x cols`), and whether to transpose it.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub rows: usize,
    pub cols: usize,
    pub trans: bool,
    /// Leading dimension (elements between consecutive rows); `cols` for a dense matrix.
    pub ld: usize,
}

impl Operand {
    pub fn new(rows: usize, cols: usize, trans: bool) -> Self {
        Self {
            rows,
            cols,
            trans,
            ld: cols,
        }
    }
    /// A `rows x cols` window of a matrix whose rows are `ld` elements apart.
    pub fn strided(rows: usize, cols: usize, trans: bool, ld: usize) -> Self {
        Self {
            rows,
            cols,
            trans,
            ld,
        }
    }
    /// `(rows, cols)` of `op(X)`.
    fn op_shape(self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
}

fn to_int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Unsupported(format!(
            "{what} = {v} exceeds cuBLAS's 32-bit dimension limit"
        ))
    })
}

/// One CUDA device: context, stream, cuBLAS handle and the compiled-module store.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: &'static str,
    name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

/// The message every "no GPU" path reports.
pub const NO_DEVICE: &str = "no CUDA device found";

impl CudaDevice {
    /// Opens device `ordinal`; a clean [`Error::Cuda`] when there is no driver or device.
    pub fn open(ordinal: usize) -> Result<Self> {
        // Without libcuda, cudarc's first driver call panics: check first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda(format!(
                "{NO_DEVICE} (the CUDA driver library libcuda.so is not installed)"
            )));
        }
        let count = CudaContext::device_count()
            .map_err(|e| Error::Cuda(format!("{NO_DEVICE} (the CUDA driver reports {e:?})")))?;
        if count <= 0 {
            return Err(Error::Cuda(format!(
                "{NO_DEVICE} (the driver lists 0 devices)"
            )));
        }
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!(
                "CUDA device {ordinal} does not exist ({count} found)"
            )));
        }
        if !nvrtc_available() {
            return Err(Error::Cuda(
                "a CUDA device is present but NVRTC (libnvrtc.so) was not found; add its directory to LD_LIBRARY_PATH".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("context creation"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability query"))?;
        // NVRTC wants a &'static str; one small leak per opened device.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("cuBLAS initialisation"))?;
        Ok(Self {
            ctx,
            stream,
            blas,
            arch,
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Device name as the driver reports it (e.g. "NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NVRTC architecture kernels are compiled for (`compute_90` on Hopper).
    pub fn arch(&self) -> &str {
        self.arch
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(cuda_err("memory query"))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Kernel `name` from `kernels/<file>`, compiling the file on first use.
    pub fn function(&self, file: &'static str, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("lock").get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().expect("lock");
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile::compile_kernel_file(file, self.arch)?;
                    let m = self.ctx.load_module(ptx).map_err(cuda_err("module load"))?;
                    modules.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel {name} not found in {file}: {e:?}")))?;
        self.functions
            .lock()
            .expect("lock")
            .insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Launch shape for a grid-stride loop over `n` items (256 threads per block).
    pub fn grid(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub fn upload<T: CudaScalar>(&self, m: &Matrix<T>) -> Result<DeviceMatrix<T>> {
        Ok(DeviceMatrix {
            data: self.upload_slice(m.as_slice())?,
            rows: m.rows(),
            cols: m.cols(),
        })
    }

    pub fn upload_slice<T: DeviceRepr + ValidAsZeroBits>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        if v.is_empty() {
            // Zero-length device allocations are not allowed: keep one dummy element.
            return self.zeros_slice(1);
        }
        self.stream
            .clone_htod(v)
            .map_err(cuda_err("host-to-device copy"))
    }

    pub fn download<T: CudaScalar>(&self, m: &DeviceMatrix<T>) -> Result<Matrix<T>> {
        let v = self.download_slice(&m.data, m.len())?;
        Ok(Matrix::from_vec(m.rows, m.cols, v))
    }

    /// The first `len` elements of a device buffer.
    pub fn download_slice<T: DeviceRepr, S: DevicePtr<T>>(
        &self,
        s: &S,
        len: usize,
    ) -> Result<Vec<T>> {
        let mut v = self
            .stream
            .clone_dtoh(s)
            .map_err(cuda_err("device-to-host copy"))?;
        v.truncate(len);
        Ok(v)
    }

    /// A zero-filled device buffer of `n` elements (at least one is allocated).
    pub fn zeros_slice<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| Error::Cuda(format!("CUDA allocation of {n} elements failed: {e:?}")))
    }

    pub fn zeros<T: CudaScalar>(&self, rows: usize, cols: usize) -> Result<DeviceMatrix<T>> {
        Ok(DeviceMatrix {
            data: self.zeros_slice(rows * cols)?,
            rows,
            cols,
        })
    }

    /// Row-major `C <- alpha op(A) op(B) + beta C` on cuBLAS; `c` is `(rows, cols)` of C.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm<T: CudaScalar, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
        &self,
        alpha: T,
        a: &A,
        ad: Operand,
        b: &B,
        bd: Operand,
        beta: T,
        c: &mut C,
        cd: (usize, usize),
    ) -> Result<()> {
        self.gemm_batched(alpha, a, ad, 0, b, bd, 0, beta, c, cd, 0, 1)
    }

    /// Strided-batched row-major GEMM: `C_i <- alpha op(A_i) op(B_i) + beta C_i` for
    /// `i < batch`, with `X_i` starting `i * stride_x` elements in (stride 0 broadcasts).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_batched<T: CudaScalar, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
        &self,
        alpha: T,
        a: &A,
        ad: Operand,
        stride_a: usize,
        b: &B,
        bd: Operand,
        stride_b: usize,
        beta: T,
        c: &mut C,
        cd: (usize, usize),
        stride_c: usize,
        batch: usize,
    ) -> Result<()> {
        let (m, k) = ad.op_shape();
        let (k2, n) = bd.op_shape();
        if k != k2 || cd != (m, n) {
            return Err(Error::Shape(format!(
                "GEMM: op(A) is {m}x{k}, op(B) is {k2}x{n}, C is {}x{}",
                cd.0, cd.1
            )));
        }
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Column-major view: C^T (n x m) = op(B)^T (n x k) op(A)^T (k x m).
        let cfg = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: op(bd.trans),
                transb: op(ad.trans),
                m: to_int(n, "GEMM n")?,
                n: to_int(m, "GEMM m")?,
                k: to_int(k.max(1), "GEMM k")?,
                alpha: if k == 0 { T::ZERO } else { alpha },
                lda: to_int(bd.ld.max(1), "ldb")?,
                ldb: to_int(ad.ld.max(1), "lda")?,
                beta,
                ldc: to_int(n, "ldc")?,
            },
            batch_size: to_int(batch, "batch")?,
            stride_a: stride_b as i64,
            stride_b: stride_a as i64,
            stride_c: stride_c as i64,
        };
        unsafe { T::blas_gemm(&self.blas, cfg, b, a, c) }
    }
}

/// [`Backend`] on a CUDA device: buffers are [`DeviceMatrix`] values.
pub struct CudaBackend {
    pub device: Arc<CudaDevice>,
}

impl CudaBackend {
    pub fn new(device: Arc<CudaDevice>) -> Self {
        Self { device }
    }
}

fn activation_name(act: Activation) -> &'static str {
    match act {
        Activation::Relu => "relu",
        Activation::LeakyRelu => "leaky_relu",
        Activation::Tanh => "tanh",
        Activation::Sigmoid => "sigmoid",
        Activation::Softplus => "softplus",
        Activation::Identity => "identity",
    }
}

/// Launches `act_<kind>_<act>_<ty>(z, out, n[, slope])` from `activation.cu`.
pub fn launch_activation<T: CudaScalar>(
    dev: &CudaDevice,
    kind: &str,
    act: Activation,
    slope: T,
    z: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
    n: usize,
) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let name = format!("act_{kind}_{}_{}", activation_name(act), T::SUFFIX);
    let f = dev.function("activation.cu", &name)?;
    let n64 = n as u64;
    let mut b = dev.stream.launch_builder(&f);
    b.arg(z).arg(out).arg(&n64);
    if act == Activation::LeakyRelu {
        b.arg(&slope);
    }
    unsafe { b.launch(CudaDevice::grid(n)) }
        .map(|_| ())
        .map_err(cuda_err("kernel launch"))
}

impl<T: CudaScalar> Backend<T> for CudaBackend {
    type Buffer = DeviceMatrix<T>;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn upload(&self, m: &Matrix<T>) -> Result<DeviceMatrix<T>> {
        self.device.upload(m)
    }
    fn download(&self, b: &DeviceMatrix<T>) -> Result<Matrix<T>> {
        self.device.download(b)
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<DeviceMatrix<T>> {
        self.device.zeros(rows, cols)
    }
    fn shape(&self, b: &DeviceMatrix<T>) -> (usize, usize) {
        (b.rows, b.cols)
    }
    fn gemm(
        &self,
        alpha: T,
        a: &DeviceMatrix<T>,
        ta: bool,
        b: &DeviceMatrix<T>,
        tb: bool,
        beta: T,
        c: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        let cd = (c.rows, c.cols);
        self.device.gemm(
            alpha,
            &a.data,
            Operand::new(a.rows, a.cols, ta),
            &b.data,
            Operand::new(b.rows, b.cols, tb),
            beta,
            &mut c.data,
            cd,
        )
    }
    fn add_row_vector(&self, m: &mut DeviceMatrix<T>, row: &DeviceMatrix<T>) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        if row.len() != m.cols {
            return Err(Error::Shape(format!(
                "row vector of length {} added to a matrix with {} columns",
                row.len(),
                m.cols
            )));
        }
        let f = self
            .device
            .function("elementwise.cu", &format!("add_row_vector_{}", T::SUFFIX))?;
        let (r, c) = (m.rows as i64, m.cols as i64);
        let cfg = CudaDevice::grid(m.len());
        let mut b = self.device.stream.launch_builder(&f);
        b.arg(&mut m.data).arg(&row.data).arg(&r).arg(&c);
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("kernel launch"))
    }
    fn activation(
        &self,
        act: Activation,
        slope: T,
        z: &DeviceMatrix<T>,
    ) -> Result<DeviceMatrix<T>> {
        let mut out = self.device.zeros::<T>(z.rows, z.cols)?;
        launch_activation(
            &self.device,
            "fwd",
            act,
            slope,
            &z.data,
            &mut out.data,
            z.len(),
        )?;
        Ok(out)
    }
    fn activation_derivative(
        &self,
        act: Activation,
        slope: T,
        z: &DeviceMatrix<T>,
    ) -> Result<DeviceMatrix<T>> {
        let mut out = self.device.zeros::<T>(z.rows, z.cols)?;
        launch_activation(
            &self.device,
            "deriv",
            act,
            slope,
            &z.data,
            &mut out.data,
            z.len(),
        )?;
        Ok(out)
    }
}

/// Which device a command runs on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    Cpu,
    /// A CUDA GPU; an error when none is present.
    Cuda,
    /// CUDA when a device is present, else the CPU.
    Auto,
}

/// Resolves a [`DeviceChoice`]: `Some(device)` for CUDA, `None` for the CPU.
/// `Auto` falls back to the CPU (with the reason) when no device can be opened.
pub fn resolve_device(choice: DeviceChoice) -> Result<(Option<Arc<CudaDevice>>, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((None, None)),
        DeviceChoice::Cuda => Ok((Some(Arc::new(CudaDevice::open(0)?)), None)),
        DeviceChoice::Auto => match CudaDevice::open(0) {
            Ok(d) => Ok((Some(Arc::new(d)), None)),
            Err(e) => Ok((None, Some(e.to_string()))),
        },
    }
}
