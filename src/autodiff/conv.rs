//! 2-D convolution as three tape operations that are closed under
//! differentiation, computed by implicit-GEMM kernels (no im2col matrix).
//!
//! Layout: images are NHWC matrices, one row per pixel `(i, y, x)` (row
//! `(i H + y) W + x`) and one column per channel. The weight is PyTorch's
//! `C_out x (C_in k k)` matrix, column `c k k + ky k + kx`. With the tap
//! `t = ky k + kx` and `src_t(m)` the input row read by output row `m` at tap
//! `t` (none in the zero padding):
//!
//! * `conv(X, W)[m, o]        = sum_t sum_c X[src_t(m), c] W[o, c k k + t]`
//! * `conv_data(D, W)[r, c]   = sum_t sum_o D[m_t(r), o] W[o, c k k + t]`, with
//!   `m_t(r)` the output row whose tap `t` reads input row `r`: the adjoint of
//!   `conv(., W)` (the input gradient);
//! * `conv_weight(X, D)[o, c k k + t] = sum_m X[src_t(m), c] D[m, o]`: the
//!   adjoint of `conv(X, .)` (the weight gradient).
//!
//! Each is linear in each argument, and the vector-Jacobian products of each
//! are again among the three, so double backward (exact HVPs) works through
//! them. The im2col route materialises a matrix `k^2` times the input and copies
//! it once more when the GEMM packs it; here each output tile gathers its input
//! rows through a precomputed per-tap row table, so the input stays in cache.
//!
//! Determinism: every output element of `conv` and `conv_data` is one
//! thread's sum in a fixed order (taps, then channels); `conv_weight` sums over
//! fixed blocks of rows and then adds the block sums in block order. The split
//! never depends on the thread count. The AVX-512 and AVX2 kernels both use
//! fused multiply-adds in the same order, so they give identical bits; the
//! portable fallback (no FMA) rounds differently.

// Register tiles are indexed by constant loop bounds so that LLVM unrolls them
// and keeps the accumulators in registers.
#![allow(clippy::needless_range_loop)]

use crate::tensor::Scalar;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A table entry with no source row (zero padding).
const NONE: u32 = u32::MAX;

/// Output rows per parallel task of `conv` / `conv_data`.
const ROW_BLOCK: usize = 384;
/// Rows per fixed partial sum of `conv_weight` (and per cache-resident sub-block).
const WEIGHT_BLOCK: usize = 4096;
const WEIGHT_SUB: usize = 256;

/// The geometry of one convolution over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn rows_in(&self) -> usize {
        self.n * self.h * self.w
    }
    pub fn rows_out(&self) -> usize {
        self.n * self.ho() * self.wo()
    }
    pub fn taps(&self) -> usize {
        self.k * self.k
    }
}

/// A convolution's shape with its per-tap row tables.
#[derive(Debug)]
pub struct ConvGeom {
    pub shape: ConvShape,
    /// `fwd[t * rows_out + m]`: the input row read by output row `m` at tap `t`.
    fwd: Vec<u32>,
    /// `bwd[t * rows_in + r]`: the output row that reads input row `r` at tap `t`.
    bwd: Vec<u32>,
}

impl ConvGeom {
    /// Builds the tables. Panics on an impossible shape (callers validate
    /// architectures before building networks).
    pub fn new(shape: ConvShape) -> Self {
        let ConvShape {
            n,
            h,
            w,
            k,
            stride: s,
            pad: p,
            ..
        } = shape;
        assert!(
            k >= 1 && s >= 1 && h + 2 * p >= k && w + 2 * p >= k,
            "conv geometry: {shape:?}"
        );
        let (ho, wo) = (shape.ho(), shape.wo());
        let (mo, mi) = (shape.rows_out(), shape.rows_in());
        assert!(mo.max(mi) < NONE as usize, "conv geometry too large");
        let mut fwd = vec![NONE; k * k * mo];
        let mut bwd = vec![NONE; k * k * mi];
        for ky in 0..k {
            for kx in 0..k {
                let t = ky * k + kx;
                for i in 0..n {
                    for oy in 0..ho {
                        let y = (oy * s + ky) as isize - p as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for ox in 0..wo {
                            let x = (ox * s + kx) as isize - p as isize;
                            if x < 0 || x >= w as isize {
                                continue;
                            }
                            let m = (i * ho + oy) * wo + ox;
                            let r = (i * h + y as usize) * w + x as usize;
                            fwd[t * mo + m] = r as u32;
                            bwd[t * mi + r] = m as u32;
                        }
                    }
                }
            }
        }
        Self { shape, fwd, bwd }
    }

    /// The geometry of `shape`, shared process-wide (tables depend only on it).
    pub fn cached(shape: ConvShape) -> Arc<Self> {
        static CACHE: OnceLock<Mutex<HashMap<ConvShape, Arc<ConvGeom>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(g) = cache.lock().expect("conv cache").get(&shape) {
            return g.clone();
        }
        let g = Arc::new(Self::new(shape));
        let mut c = cache.lock().expect("conv cache");
        if c.len() >= 64 {
            c.clear();
        }
        c.insert(shape, g.clone());
        g
    }
}

/// Which kernel family the processor allows (detected once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvIsa {
    Avx512,
    Avx2,
    Portable,
}

/// The kernel family used: the best the processor has, unless
/// `LANDSCAPE_CONV_ISA=avx2|portable` asks for a lower one (for tests).
pub fn conv_isa() -> ConvIsa {
    static ISA: OnceLock<ConvIsa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("LANDSCAPE_CONV_ISA").ok();
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = crate::backend::cpu::avx512_enabled();
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match forced.as_deref() {
                Some("portable") => ConvIsa::Portable,
                Some("avx2") if avx2 => ConvIsa::Avx2,
                _ if avx512 && forced.is_none() => ConvIsa::Avx512,
                _ if avx2 => ConvIsa::Avx2,
                _ => ConvIsa::Portable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = forced;
            ConvIsa::Portable
        }
    })
}

/// Every kernel family this processor can run (best first).
pub fn available_isas() -> Vec<ConvIsa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("fma") {
            if crate::backend::cpu::avx512_enabled() {
                v.push(ConvIsa::Avx512);
            }
            if is_x86_feature_detected!("avx2") {
                v.push(ConvIsa::Avx2);
            }
        }
    }
    v.push(ConvIsa::Portable);
    v
}

/// `a * b + c`, fused where the kernel family has FMA.
#[inline(always)]
fn madd<T: Scalar, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `B` (`taps x ka x nb`, row-major) in panels of `NR` columns:
/// `[panel][tap][ka][NR]`, zero-padded.
fn pack_panels<T: Scalar>(taps: usize, ka: usize, nb: usize, nr: usize, b: &[T]) -> Vec<T> {
    let np = nb.div_ceil(nr);
    let mut out = vec![T::ZERO; np * taps * ka * nr];
    for pnl in 0..np {
        let cols = (nb - pnl * nr).min(nr);
        for t in 0..taps {
            for c in 0..ka {
                let dst = ((pnl * taps + t) * ka + c) * nr;
                let src = (t * ka + c) * nb + pnl * nr;
                out[dst..dst + cols].copy_from_slice(&b[src..src + cols]);
            }
        }
    }
    out
}

/// Arguments of the gather-GEMM `out[m, :] = sum_t sum_c a[src_t(m), c] b_t[c, :]`.
struct TapGemm<'a, T> {
    rows: usize,
    taps: usize,
    table: &'a [u32],
    a: &'a [T],
    ka: usize,
    /// `b` packed by [`pack_panels`] with the kernel's `NR`.
    panels: &'a [T],
    nb: usize,
}

/// One `MR x NR` output tile of [`TapGemm`] (rows `m0..m0+rows`, panel `pnl`).
///
/// # Safety
/// `out` points at row `m0`, column `pnl NR` of an output with row stride
/// `g.nb`; `zero` holds at least `g.ka` zeros.
#[inline(always)]
unsafe fn tap_tile<T: Scalar, const MR: usize, const NR: usize, const FMA: bool>(
    g: &TapGemm<'_, T>,
    zero: *const T,
    m0: usize,
    rows: usize,
    pnl: usize,
    out: *mut T,
) {
    let mut acc = [[T::ZERO; NR]; MR];
    let bp = g.panels.as_ptr().add(pnl * g.taps * g.ka * NR);
    for t in 0..g.taps {
        let mut ptr = [zero; MR];
        for (i, p) in ptr.iter_mut().enumerate() {
            if i < rows {
                let s = *g.table.get_unchecked(t * g.rows + m0 + i);
                if s != NONE {
                    *p = g.a.as_ptr().add(s as usize * g.ka);
                }
            }
        }
        let bt = bp.add(t * g.ka * NR);
        for c in 0..g.ka {
            let b = bt.add(c * NR);
            for i in 0..MR {
                let ai = *ptr[i].add(c);
                for j in 0..NR {
                    acc[i][j] = madd::<T, FMA>(ai, *b.add(j), acc[i][j]);
                }
            }
        }
    }
    // A copy with constant indices keeps `acc` in registers above.
    let mut tile = [[T::ZERO; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            tile[i][j] = acc[i][j];
        }
    }
    let cols = (g.nb - pnl * NR).min(NR);
    for (i, row) in tile.iter().enumerate().take(rows) {
        std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * g.nb), cols);
    }
}

/// Rows `r0..r1` of [`TapGemm`] into `out` (those rows only).
#[inline(always)]
unsafe fn tap_rows<T: Scalar, const MR: usize, const NR: usize, const FMA: bool>(
    g: &TapGemm<'_, T>,
    r0: usize,
    r1: usize,
    out: *mut T,
) {
    let zero = vec![T::ZERO; g.ka];
    let np = g.nb.div_ceil(NR);
    let mut m0 = r0;
    while m0 < r1 {
        let rows = (r1 - m0).min(MR);
        for pnl in 0..np {
            let o = out.add((m0 - r0) * g.nb + pnl * NR);
            tap_tile::<T, MR, NR, FMA>(g, zero.as_ptr(), m0, rows, pnl, o);
        }
        m0 += MR;
    }
}

/// One `MR x NR` tile of `sum_m xs[m, c0..c0+MR]^T ds[m, o0..o0+NR]` added into
/// `acc` (`ldc` apart), over `len` rows of the packed sub-block.
///
/// # Safety
/// `xs` rows are `kx` long with `c0 + MR <= kx`; `ds` rows are `kd` long with
/// `o0 + NR <= kd`; `acc` has room for the tile.
#[inline(always)]
unsafe fn weight_tile<T: Scalar, const MR: usize, const NR: usize, const FMA: bool>(
    xs: *const T,
    kx: usize,
    ds: *const T,
    kd: usize,
    len: usize,
    acc_out: *mut T,
    ldc: usize,
) {
    let mut acc = [[T::ZERO; NR]; MR];
    for m in 0..len {
        let xr = xs.add(m * kx);
        let dr = ds.add(m * kd);
        for i in 0..MR {
            let ai = *xr.add(i);
            for j in 0..NR {
                acc[i][j] = madd::<T, FMA>(ai, *dr.add(j), acc[i][j]);
            }
        }
    }
    let mut tile = [[T::ZERO; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            tile[i][j] = acc[i][j];
        }
    }
    for (i, row) in tile.iter().enumerate() {
        let dst = acc_out.add(i * ldc);
        for (j, v) in row.iter().enumerate() {
            *dst.add(j) += *v;
        }
    }
}

/// The partial weight gradient of rows `r0..r1`: a padded `rows x o_pad`
/// matrix whose row for (tap `t`, channel `c`) is `t * stride + c`; returns
/// `(part, stride, o_pad)`.
#[inline(always)]
unsafe fn weight_rows<T: Scalar, const MR: usize, const NR: usize, const FMA: bool>(
    geom: &ConvGeom,
    x: &[T],
    d: &[T],
    r0: usize,
    r1: usize,
) -> (Vec<T>, usize, usize) {
    let sh = geom.shape;
    let (ci, co, taps, mo) = (sh.c_in, sh.c_out, sh.taps(), sh.rows_out());
    // Few input channels (the first layer): all taps side by side in one
    // group, so the tile rows are not mostly padding.
    let fold = ci < MR;
    let (groups, width) = if fold { (1, taps * ci) } else { (taps, ci) };
    let wp = width.div_ceil(MR) * MR;
    let op = co.div_ceil(NR) * NR;
    let mut part = vec![T::ZERO; groups * wp * op];
    let mut xs = vec![T::ZERO; WEIGHT_SUB * wp];
    let mut ds = vec![T::ZERO; WEIGHT_SUB * op];
    let mut s0 = r0;
    while s0 < r1 {
        let len = (r1 - s0).min(WEIGHT_SUB);
        for m in 0..len {
            ds[m * op..m * op + co].copy_from_slice(&d[(s0 + m) * co..(s0 + m + 1) * co]);
        }
        for grp in 0..groups {
            for m in 0..len {
                let row = &mut xs[m * wp..m * wp + width];
                let tap_range = if fold { 0..taps } else { grp..grp + 1 };
                for (slot, t) in tap_range.enumerate() {
                    let dst = &mut row[slot * ci..(slot + 1) * ci];
                    match geom.fwd[t * mo + s0 + m] {
                        NONE => dst.fill(T::ZERO),
                        r => dst.copy_from_slice(&x[r as usize * ci..(r as usize + 1) * ci]),
                    }
                }
            }
            for c0 in (0..wp).step_by(MR) {
                for o0 in (0..op).step_by(NR) {
                    weight_tile::<T, MR, NR, FMA>(
                        xs.as_ptr().add(c0),
                        wp,
                        ds.as_ptr().add(o0),
                        op,
                        len,
                        part.as_mut_ptr().add((grp * wp + c0) * op + o0),
                        op,
                    );
                }
            }
        }
        s0 += len;
    }
    // Row of (tap t, channel c) in `part`: t * stride + c.
    let stride = if fold { ci } else { wp };
    (part, stride, op)
}

macro_rules! isa_variants {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*), $ret:ty) => {
        /// Dispatches to the kernel of `isa`.
        ///
        /// # Safety
        /// The processor supports `isa`; the arguments satisfy the kernel's contract.
        unsafe fn $name<T: Scalar>(isa: ConvIsa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512<T: Scalar>($($arg: $ty),*) -> $ret {
                    if T::DTYPE == "f32" {
                        $inner::<T, 12, 32, true>($($arg),*)
                    } else {
                        $inner::<T, 12, 16, true>($($arg),*)
                    }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Scalar>($($arg: $ty),*) -> $ret {
                    if T::DTYPE == "f32" {
                        $inner::<T, 6, 16, true>($($arg),*)
                    } else {
                        $inner::<T, 6, 8, true>($($arg),*)
                    }
                }
                // SAFETY: callers pass an `isa` the processor supports (`conv_isa`,
                // or `available_isas` in tests).
                match isa {
                    ConvIsa::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                    ConvIsa::Avx2 => return unsafe { avx2::<T>($($arg),*) },
                    ConvIsa::Portable => {}
                }
            }
            // SAFETY: the portable kernel has no feature requirements.
            unsafe { $inner::<T, 4, 8, false>($($arg),*) }
        }
    };
}

/// Panel width of the kernel family in use (the packing must match it).
fn panel_width<T: Scalar>(isa: ConvIsa) -> usize {
    match (isa, T::DTYPE == "f32") {
        (ConvIsa::Avx512, true) => 32,
        (ConvIsa::Avx512, false) => 16,
        (ConvIsa::Avx2, true) => 16,
        (ConvIsa::Avx2, false) => 8,
        (ConvIsa::Portable, _) => 8,
    }
}

isa_variants!(tap_block, tap_rows, (g: &TapGemm<'_, T>, r0: usize, r1: usize, out: *mut T), ());

isa_variants!(weight_block, weight_rows, (geom: &ConvGeom, x: &[T], d: &[T], r0: usize, r1: usize), (Vec<T>, usize, usize));

/// Runs a [`TapGemm`] over all its rows, in parallel over fixed row blocks.
fn tap_gemm<T: Scalar>(isa: ConvIsa, g: &TapGemm<'_, T>) -> Vec<T> {
    let len = g.rows * g.nb;
    if len == 0 {
        return vec![T::ZERO; len];
    }
    let mut out: Vec<T> = Vec::with_capacity(len);
    // Raw address so that row blocks can be written from several threads.
    let base = out.as_mut_ptr() as usize;
    let run = |r0: usize, r1: usize| {
        // SAFETY: rows r0..r1 are written by this call only, inside the capacity.
        unsafe { tap_block(isa, g, r0, r1, (base as *mut T).add(r0 * g.nb)) }
    };
    let work = g.rows * g.taps * g.ka * g.nb;
    if work < 1 << 18 || rayon::current_num_threads() <= 1 {
        run(0, g.rows);
    } else {
        (0..g.rows.div_ceil(ROW_BLOCK))
            .into_par_iter()
            .for_each(|bi| run(bi * ROW_BLOCK, ((bi + 1) * ROW_BLOCK).min(g.rows)));
    }
    // SAFETY: every tile stores all its valid rows and columns: all len slots.
    unsafe { out.set_len(len) };
    out
}

/// The weight as per-tap matrices: `b[t][c][o] = W[o, c k k + t]`, or with
/// `transposed` the per-tap transposes `b[t][o][c] = W[o, c k k + t]`.
fn weight_per_tap<T: Scalar>(sh: &ConvShape, w: &[T], transposed: bool) -> Vec<T> {
    let (ci, co, kk) = (sh.c_in, sh.c_out, sh.taps());
    let mut b = vec![T::ZERO; kk * ci * co];
    for o in 0..co {
        for c in 0..ci {
            for t in 0..kk {
                let at = if transposed {
                    (t * co + o) * ci + c
                } else {
                    (t * ci + c) * co + o
                };
                b[at] = w[o * ci * kk + c * kk + t];
            }
        }
    }
    b
}

/// `conv(X, W)`: `X` is `rows_in x C_in`, `W` is `C_out x C_in k k`; the
/// result is `rows_out x C_out` (see the module docs).
/// Each of the three ops is an implicit GEMM of `rows_out x (c_in k^2)` by
/// `(c_in k^2) x c_out` (padding taps included), counted as such.
fn count_flops(sh: &ConvShape) {
    crate::tensor::flop_count::add(sh.rows_out(), sh.c_in * sh.taps(), sh.c_out);
}

pub fn conv_forward<T: Scalar>(geom: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    count_flops(&geom.shape);
    conv_forward_isa(conv_isa(), geom, x, w)
}

fn conv_forward_isa<T: Scalar>(isa: ConvIsa, geom: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let sh = &geom.shape;
    assert_eq!(x.len(), sh.rows_in() * sh.c_in, "conv: input size");
    assert_eq!(w.len(), sh.c_out * sh.c_in * sh.taps(), "conv: weight size");
    let nr = panel_width::<T>(isa);
    let panels = pack_panels(
        sh.taps(),
        sh.c_in,
        sh.c_out,
        nr,
        &weight_per_tap(sh, w, false),
    );
    tap_gemm(
        isa,
        &TapGemm {
            rows: sh.rows_out(),
            taps: sh.taps(),
            table: &geom.fwd,
            a: x,
            ka: sh.c_in,
            panels: &panels,
            nb: sh.c_out,
        },
    )
}

/// `conv_data(D, W)`: the input gradient, `rows_in x C_in`, of an output
/// gradient `D` (`rows_out x C_out`).
pub fn conv_data<T: Scalar>(geom: &ConvGeom, d: &[T], w: &[T]) -> Vec<T> {
    count_flops(&geom.shape);
    conv_data_isa(conv_isa(), geom, d, w)
}

fn conv_data_isa<T: Scalar>(isa: ConvIsa, geom: &ConvGeom, d: &[T], w: &[T]) -> Vec<T> {
    let sh = &geom.shape;
    assert_eq!(
        d.len(),
        sh.rows_out() * sh.c_out,
        "conv_data: gradient size"
    );
    assert_eq!(
        w.len(),
        sh.c_out * sh.c_in * sh.taps(),
        "conv_data: weight size"
    );
    let nr = panel_width::<T>(isa);
    let panels = pack_panels(
        sh.taps(),
        sh.c_out,
        sh.c_in,
        nr,
        &weight_per_tap(sh, w, true),
    );
    tap_gemm(
        isa,
        &TapGemm {
            rows: sh.rows_in(),
            taps: sh.taps(),
            table: &geom.bwd,
            a: d,
            ka: sh.c_out,
            panels: &panels,
            nb: sh.c_in,
        },
    )
}

/// `conv_weight(X, D)`: the weight gradient, `C_out x C_in k k`, of an output
/// gradient `D` (`rows_out x C_out`) at input `X` (`rows_in x C_in`).
pub fn conv_weight<T: Scalar>(geom: &ConvGeom, x: &[T], d: &[T]) -> Vec<T> {
    count_flops(&geom.shape);
    conv_weight_isa(conv_isa(), geom, x, d)
}

fn conv_weight_isa<T: Scalar>(isa: ConvIsa, geom: &ConvGeom, x: &[T], d: &[T]) -> Vec<T> {
    let sh = &geom.shape;
    assert_eq!(x.len(), sh.rows_in() * sh.c_in, "conv_weight: input size");
    assert_eq!(
        d.len(),
        sh.rows_out() * sh.c_out,
        "conv_weight: gradient size"
    );
    let mo = sh.rows_out();
    let blocks = mo.div_ceil(WEIGHT_BLOCK).max(1);
    let run = |b: usize| {
        let (r0, r1) = (b * WEIGHT_BLOCK, ((b + 1) * WEIGHT_BLOCK).min(mo));
        // SAFETY: `isa` is supported (conv_isa / available_isas); sizes were checked above.
        unsafe { weight_block(isa, geom, x, d, r0, r1) }
    };
    let parts: Vec<(Vec<T>, usize, usize)> = if blocks == 1 {
        vec![run(0)]
    } else {
        (0..blocks).into_par_iter().map(run).collect()
    };
    // Block sums added in block order: independent of the thread count.
    let mut it = parts.into_iter();
    let (mut acc, cp, op) = it.next().expect("at least one block");
    for (p, _, _) in it {
        for (a, b) in acc.iter_mut().zip(&p) {
            *a += *b;
        }
    }
    let (ci, co, kk) = (sh.c_in, sh.c_out, sh.taps());
    let mut w = vec![T::ZERO; co * ci * kk];
    for t in 0..kk {
        for c in 0..ci {
            for o in 0..co {
                w[o * ci * kk + c * kk + t] = acc[(t * cp + c) * op + o];
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_forward(g: &ConvGeom, x: &[f64], w: &[f64]) -> Vec<f64> {
        let sh = g.shape;
        let (mo, kk) = (sh.rows_out(), sh.taps());
        let mut y = vec![0.0; mo * sh.c_out];
        for m in 0..mo {
            for t in 0..kk {
                let r = g.fwd[t * mo + m];
                if r == NONE {
                    continue;
                }
                for c in 0..sh.c_in {
                    for o in 0..sh.c_out {
                        y[m * sh.c_out + o] +=
                            x[r as usize * sh.c_in + c] * w[o * sh.c_in * kk + c * kk + t];
                    }
                }
            }
        }
        y
    }

    fn vals(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f64) / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn kernels_match_naive_sums_and_are_adjoint() {
        let shapes = [
            (2, 3, 7, 5, 7, 3, 1, 1),
            (1, 1, 5, 5, 3, 3, 2, 1),
            (3, 7, 6, 6, 20, 1, 2, 0),
            (2, 17, 9, 9, 33, 3, 2, 1),
            (1, 2, 7, 7, 1, 5, 1, 2),
            // More rows than one parallel block and one weight block.
            (9, 5, 30, 30, 9, 3, 1, 1),
        ];
        for &(n, ci, h, w, co, k, s, p) in &shapes {
            let sh = ConvShape {
                n,
                c_in: ci,
                h,
                w,
                c_out: co,
                k,
                stride: s,
                pad: p,
            };
            let g = ConvGeom::new(sh);
            let x = vals(sh.rows_in() * ci, 1);
            let wt = vals(co * ci * k * k, 2);
            let d = vals(sh.rows_out() * co, 3);
            let yr = naive_forward(&g, &x, &wt);
            let mut fused: Option<(Vec<f64>, Vec<f64>, Vec<f64>)> = None;
            for isa in available_isas() {
                let y = conv_forward_isa(isa, &g, &x, &wt);
                for (a, b) in y.iter().zip(&yr) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "{isa:?} {sh:?}: {a} vs {b}"
                    );
                }
                // <D, conv(X, W)> = <conv_data(D, W), X> = <conv_weight(X, D), W>.
                let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
                let gx = conv_data_isa(isa, &g, &d, &wt);
                let gw = conv_weight_isa(isa, &g, &x, &d);
                let lhs = dot(&d, &y);
                assert!(
                    (lhs - dot(&gx, &x)).abs() <= 1e-10 * lhs.abs().max(1.0),
                    "{isa:?} {sh:?}"
                );
                assert!(
                    (lhs - dot(&gw, &wt)).abs() <= 1e-10 * lhs.abs().max(1.0),
                    "{isa:?} {sh:?}"
                );
                // The FMA families sum in the same order: identical bits.
                if isa != ConvIsa::Portable {
                    match &fused {
                        None => fused = Some((y, gx, gw)),
                        Some((y0, gx0, gw0)) => {
                            assert!(
                                y == *y0 && gx == *gx0 && gw == *gw0,
                                "{isa:?} {sh:?}: bits differ"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn single_precision_kernels_match_double() {
        let sh = ConvShape {
            n: 3,
            c_in: 6,
            h: 9,
            w: 8,
            c_out: 37,
            k: 3,
            stride: 2,
            pad: 1,
        };
        let g = ConvGeom::new(sh);
        let x = vals(sh.rows_in() * sh.c_in, 4);
        let wt = vals(sh.c_out * sh.c_in * 9, 5);
        let d = vals(sh.rows_out() * sh.c_out, 6);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        for isa in available_isas() {
            let pairs = [
                (
                    conv_forward_isa(isa, &g, &x, &wt),
                    conv_forward_isa(isa, &g, &f(&x), &f(&wt)),
                ),
                (
                    conv_data_isa(isa, &g, &d, &wt),
                    conv_data_isa(isa, &g, &f(&d), &f(&wt)),
                ),
                (
                    conv_weight_isa(isa, &g, &x, &d),
                    conv_weight_isa(isa, &g, &f(&x), &f(&d)),
                ),
            ];
            for (a64, a32) in pairs {
                let scale = a64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (a, b) in a64.iter().zip(&a32) {
                    assert!((a - *b as f64).abs() <= 1e-5 * scale, "{isa:?}: {a} vs {b}");
                }
            }
        }
    }
}
