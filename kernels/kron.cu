// Kronecker-structured dense Hessian assembly (src/hessian/dense.rs has the CPU twin).
//
// Curvature block (q, p), q <= p, in "pair" layout: rows (a dp + c), columns (b np~ + e),
//   pair[(a,c),(b,e)] = sum_s M_s(q,p)[a,c] x~_s(q)[b] x~_s(p)[e],
// and the parameter layout of layer l is [vec(W(l)) (row-major, a n_l + b), b(l) (d_l n_l + a)].
// Cross block of the H-term (W(q) rows, layer p < q columns), transposed pair layout:
//   pairT[(b,c),(a,e)] = sum_s B_s(q,p)[b,c] delta_s(q)[a] x~_s(p)[e].

#define GRID_STRIDE_LOOP(i, n)                                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

// out ((m k) x d): out_s = C_s^T G_s for C (m x k x k) and G stacked (m k) x d.
template <typename T>
__device__ void cg_factor(const T* C, const T* G, long long m, int k, long long d, T* out)
{
    GRID_STRIDE_LOOP(i, m * k * d)
    {
        long long j = i % d;
        long long a = (i / d) % k;
        long long s = i / (d * k);
        const T* cs = C + s * k * k;
        T acc = T(0);
        for (int t = 0; t < k; ++t) acc += cs[t * k + a] * G[(s * k + t) * d + j];
        out[i] = acc;
    }
}

// Local index of [W(l) | b(l)][a, b] inside layer l (b == n is the bias column).
__device__ __forceinline__ long long local_index(long long a, long long b, long long d, long long n)
{
    return b < n ? a * n + b : d * n + a;
}

// Writes rows [row0, row0 + rows) of a pair-layout curvature block into H (P x P),
// scaled by `scale`; `mirror` also writes the transposed entry (off-diagonal blocks).
template <typename T>
__device__ void scatter_curvature(const T* pair, long long row0, long long rows, long long dq,
                                  long long dp, long long nq, long long np, int bias, T* H,
                                  long long P, long long off_q, long long off_p, T scale,
                                  int mirror)
{
    long long nqa = nq + (bias ? 1 : 0);
    long long npa = np + (bias ? 1 : 0);
    long long cols = nqa * npa;
    GRID_STRIDE_LOOP(i, rows * cols)
    {
        long long row = row0 + i / cols;
        long long col = i % cols;
        long long a = row / dp, c = row % dp;
        long long b = col / npa, e = col % npa;
        long long r = off_q + local_index(a, b, dq, nq);
        long long cc = off_p + local_index(c, e, dp, np);
        T v = scale * pair[i];
        H[r * P + cc] = v;
        if (mirror) H[cc * P + r] = v;
    }
}

// Adds rows [row0, row0 + rows) of a transposed-pair cross block into H and its mirror.
template <typename T>
__device__ void scatter_cross(const T* pairT, long long row0, long long rows, long long dq,
                              long long dp, long long nq, long long np, int bias, T* H,
                              long long P, long long off_q, long long off_p, T scale)
{
    long long npa = np + (bias ? 1 : 0);
    long long cols = dq * npa;
    GRID_STRIDE_LOOP(i, rows * cols)
    {
        long long row = row0 + i / cols;
        long long col = i % cols;
        long long b = row / dp, c = row % dp;
        long long a = col / npa, e = col % npa;
        long long r = off_q + a * nq + b;
        long long cc = off_p + local_index(c, e, dp, np);
        T v = scale * pairT[i];
        H[r * P + cc] += v;
        H[cc * P + r] += v;
    }
}

// Lower-triangle pair index t = a (a + 1) / 2 + c (c <= a) -> (a, c).
__device__ __forceinline__ void tri_decode(long long t, long long* a, long long* c)
{
    long long r = (long long)((sqrt(8.0 * (double)t + 1.0) - 1.0) * 0.5);
    while ((r + 1) * (r + 2) / 2 <= t) ++r;
    while (r * (r + 1) / 2 > t) --r;
    *a = r;
    *c = t - r * (r + 1) / 2;
}

// Diagonal blocks (q, q) are symmetric twice over: M_s(q,q) is symmetric in (a, c) and
// x~ x~^T in (b, e). Only the lower triangles are formed:
//   out[s, t(a,c)] = M[s, a d + c] for c <= a                       (pack_lower_pairs)
//   out[s, t(b,e)] = x~[s, b] x~[s, e] for e <= b                   (row_outer_sym)
// and each entry of the reduced pair block fills its (up to) four images in H
// (scatter_curvature_sym); coinciding images receive the same value.
template <typename T>
__device__ void pack_lower_pairs(const T* M, long long m, long long d, T* out)
{
    long long w = d * (d + 1) / 2;
    GRID_STRIDE_LOOP(i, m * w)
    {
        long long s = i / w, a, c;
        tri_decode(i % w, &a, &c);
        out[i] = M[s * d * d + a * d + c];
    }
}

template <typename T>
__device__ void row_outer_sym(const T* X, long long n, int aug, long long m, T* out)
{
    long long na = n + (aug ? 1 : 0);
    long long w = na * (na + 1) / 2;
    GRID_STRIDE_LOOP(i, m * w)
    {
        long long s = i / w, b, e;
        tri_decode(i % w, &b, &e);
        T vb = b < n ? X[s * n + b] : T(1);
        T ve = e < n ? X[s * n + e] : T(1);
        out[i] = vb * ve;
    }
}

template <typename T>
__device__ void scatter_curvature_sym(const T* pair, long long row0, long long rows, long long d,
                                      long long n, int bias, T* H, long long P, long long off,
                                      T scale)
{
    long long na = n + (bias ? 1 : 0);
    long long cols = na * (na + 1) / 2;
    GRID_STRIDE_LOOP(i, rows * cols)
    {
        long long a, c, b, e;
        tri_decode(row0 + i / cols, &a, &c);
        tri_decode(i % cols, &b, &e);
        T v = scale * pair[i];
        long long ab = off + local_index(a, b, d, n), ce = off + local_index(c, e, d, n);
        long long ae = off + local_index(a, e, d, n), cb = off + local_index(c, b, d, n);
        H[ab * P + ce] = v;
        H[ce * P + ab] = v;
        H[ae * P + cb] = v;
        H[cb * P + ae] = v;
    }
}

#define INSTANTIATE(T, SUF)                                                                      \
    extern "C" __global__ void cg_factor_##SUF(const T* C, const T* G, long long m, int k,       \
                                               long long d, T* out)                              \
    {                                                                                            \
        cg_factor<T>(C, G, m, k, d, out);                                                        \
    }                                                                                            \
    extern "C" __global__ void scatter_curvature_##SUF(                                          \
        const T* pair, long long row0, long long rows, long long dq, long long dp, long long nq, \
        long long np, int bias, T* H, long long P, long long off_q, long long off_p, T scale,    \
        int mirror)                                                                              \
    {                                                                                            \
        scatter_curvature<T>(pair, row0, rows, dq, dp, nq, np, bias, H, P, off_q, off_p, scale,  \
                             mirror);                                                            \
    }                                                                                            \
    extern "C" __global__ void scatter_cross_##SUF(                                              \
        const T* pairT, long long row0, long long rows, long long dq, long long dp, long long nq, \
        long long np, int bias, T* H, long long P, long long off_q, long long off_p, T scale)    \
    {                                                                                            \
        scatter_cross<T>(pairT, row0, rows, dq, dp, nq, np, bias, H, P, off_q, off_p, scale);    \
    }                                                                                            \
    extern "C" __global__ void pack_lower_pairs_##SUF(const T* M, long long m, long long d,      \
                                                      T* out)                                    \
    {                                                                                            \
        pack_lower_pairs<T>(M, m, d, out);                                                       \
    }                                                                                            \
    extern "C" __global__ void row_outer_sym_##SUF(const T* X, long long n, int aug, long long m, \
                                                   T* out)                                       \
    {                                                                                            \
        row_outer_sym<T>(X, n, aug, m, out);                                                     \
    }                                                                                            \
    extern "C" __global__ void scatter_curvature_sym_##SUF(                                      \
        const T* pair, long long row0, long long rows, long long d, long long n, int bias, T* H, \
        long long P, long long off, T scale)                                                     \
    {                                                                                            \
        scatter_curvature_sym<T>(pair, row0, rows, d, n, bias, H, P, off, scale);                \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
