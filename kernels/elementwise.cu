// Elementwise and per-row kernels shared by the forward pass, the structure
// (masks D(p), stacked G(p) and B(q,p)) and the HVPs. Matrices are row-major.
// "Stacked" matrices hold one r x c block per sample: row s*r + a belongs to sample s.
// Every kernel has an f32 and an f64 entry point (suffix _f32 / _f64) and uses
// 64-bit indices, since a Hessian block can have more than 2^31 entries.

#define GRID_STRIDE_LOOP(i, n)                                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

// m[i, :] += row.
template <typename T>
__device__ void add_row_vector(T* m, const T* row, long long rows, long long cols)
{
    GRID_STRIDE_LOOP(i, rows * cols) { m[i] += row[i % cols]; }
}

// x[i] *= d[i] (applies D(p) = diag(act'(z(p))) to a batch of row vectors).
template <typename T>
__device__ void mul_elementwise(T* x, const T* d, long long n)
{
    GRID_STRIDE_LOOP(i, n) { x[i] *= d[i]; }
}

// out[i] += alpha * x[i].
template <typename T>
__device__ void axpy(T* out, const T* x, T alpha, long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] += alpha * x[i]; }
}

// Stacked S ((m r) x c): S[(s r + a), j] *= D[s, j]  (right-multiplication by diag(D_s)).
template <typename T>
__device__ void scale_stacked_cols(T* S, const T* D, long long m, long long r, long long c)
{
    GRID_STRIDE_LOOP(i, m * r * c)
    {
        long long j = i % c;
        long long s = i / (r * c);
        S[i] *= D[s * c + j];
    }
}

// S (rows x c): S[row, j] *= d[row]  (left-multiplication by diag(D_s) for stacked blocks,
// with D flattened as (m r)).
template <typename T>
__device__ void scale_rows(T* S, const T* d, long long rows, long long c)
{
    GRID_STRIDE_LOOP(i, rows * c) { S[i] *= d[i / c]; }
}

// out ((m k) x k) = m copies of the k x k identity (G(L-1) = I_K for every sample).
template <typename T>
__device__ void identity_stack(T* out, long long m, long long k)
{
    GRID_STRIDE_LOOP(i, m * k * k)
    {
        long long b = i % k;
        long long a = (i / k) % k;
        out[i] = a == b ? T(1) : T(0);
    }
}

// out ((m d) x d): out_s = diag(D[s, :])  (B(p+1, p) = D(p)).
template <typename T>
__device__ void diag_stack(T* out, const T* D, long long m, long long d)
{
    GRID_STRIDE_LOOP(i, m * d * d)
    {
        long long b = i % d;
        long long a = (i / d) % d;
        long long s = i / (d * d);
        out[i] = a == b ? D[s * d + a] : T(0);
    }
}

// out[s] = sum_j X[s, j]^2 + add (in order; one thread per row).
template <typename T>
__device__ void row_sq_norms(const T* X, long long m, long long n, T add, T* out)
{
    GRID_STRIDE_LOOP(s, m)
    {
        T acc = T(0);
        const T* x = X + s * n;
        for (long long j = 0; j < n; ++j) acc += x[j] * x[j];
        out[s] = acc + add;
    }
}

// out[j] += alpha * sum_i X[i, j], summed in row order (one thread per column: deterministic).
template <typename T>
__device__ void column_sums(const T* X, long long rows, long long cols, T alpha, T* out)
{
    GRID_STRIDE_LOOP(j, cols)
    {
        T acc = T(0);
        for (long long i = 0; i < rows; ++i) acc += X[i * cols + j];
        out[j] += alpha * acc;
    }
}

// Per-sample outer products (Kronecker expansion), out (m x wa wb):
//   out[s, b wb + e] = A~[s, b] B~[s, e],
// where A~ = [A, 1] when aug_a (the bias coordinate of x~(p) = [x(p); 1]), likewise B~.
template <typename T>
__device__ void row_outer(const T* A, long long na, int aug_a, const T* B, long long nb, int aug_b,
                          long long m, T* out)
{
    long long wa = na + (aug_a ? 1 : 0);
    long long wb = nb + (aug_b ? 1 : 0);
    GRID_STRIDE_LOOP(i, m * wa * wb)
    {
        long long s = i / (wa * wb);
        long long rem = i % (wa * wb);
        long long b = rem / wb;
        long long e = rem % wb;
        T va = b < na ? A[s * na + b] : T(1);
        T vb = e < nb ? B[s * nb + e] : T(1);
        out[i] = va * vb;
    }
}

// Backward R-pass through a hidden activation (full Hessian HVP), in place:
//   rgx <- act''(z) * rz * gx + act'(z) * rgx,   gx <- act'(z) * gx.
// act'' is nonzero for tanh (kind 2), sigmoid (3) and softplus (4).
template <typename T>
__device__ void hvp_hidden(const T* z, const T* d1, const T* rz, T* gx, T* rgx, int kind, long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        T d2 = T(0);
        if (kind == 2) {
            T t = tanh(z[i]);
            d2 = T(-2) * t * (T(1) - t * t);
        } else if (kind == 3 || kind == 4) {
            // sigmoid (3): s (1 - s) (1 - 2 s); softplus (4): s (1 - s).
            T s = T(1) / (T(1) + exp(-z[i]));
            d2 = s * (T(1) - s);
            if (kind == 3) d2 = d2 * (T(1) - T(2) * s);
        }
        rgx[i] = d2 * rz[i] * gx[i] + d1[i] * rgx[i];
        gx[i] = d1[i] * gx[i];
    }
}

#define INSTANTIATE(T, SUF)                                                                        \
    extern "C" __global__ void add_row_vector_##SUF(T* m, const T* row, long long rows,            \
                                                    long long cols)                                \
    {                                                                                              \
        add_row_vector<T>(m, row, rows, cols);                                                     \
    }                                                                                              \
    extern "C" __global__ void mul_elementwise_##SUF(T* x, const T* d, long long n)                \
    {                                                                                              \
        mul_elementwise<T>(x, d, n);                                                               \
    }                                                                                              \
    extern "C" __global__ void axpy_##SUF(T* out, const T* x, T alpha, long long n)                \
    {                                                                                              \
        axpy<T>(out, x, alpha, n);                                                                 \
    }                                                                                              \
    extern "C" __global__ void scale_stacked_cols_##SUF(T* S, const T* D, long long m, long long r, \
                                                        long long c)                               \
    {                                                                                              \
        scale_stacked_cols<T>(S, D, m, r, c);                                                      \
    }                                                                                              \
    extern "C" __global__ void scale_rows_##SUF(T* S, const T* d, long long rows, long long c)     \
    {                                                                                              \
        scale_rows<T>(S, d, rows, c);                                                              \
    }                                                                                              \
    extern "C" __global__ void identity_stack_##SUF(T* out, long long m, long long k)              \
    {                                                                                              \
        identity_stack<T>(out, m, k);                                                              \
    }                                                                                              \
    extern "C" __global__ void diag_stack_##SUF(T* out, const T* D, long long m, long long d)      \
    {                                                                                              \
        diag_stack<T>(out, D, m, d);                                                               \
    }                                                                                              \
    extern "C" __global__ void row_sq_norms_##SUF(const T* X, long long m, long long n, T add,     \
                                                  T* out)                                          \
    {                                                                                              \
        row_sq_norms<T>(X, m, n, add, out);                                                        \
    }                                                                                              \
    extern "C" __global__ void column_sums_##SUF(const T* X, long long rows, long long cols,       \
                                                 T alpha, T* out)                                  \
    {                                                                                              \
        column_sums<T>(X, rows, cols, alpha, out);                                                 \
    }                                                                                              \
    extern "C" __global__ void row_outer_##SUF(const T* A, long long na, int aug_a, const T* B,    \
                                               long long nb, int aug_b, long long m, T* out)       \
    {                                                                                              \
        row_outer<T>(A, na, aug_a, B, nb, aug_b, m, out);                                          \
    }                                                                                              \
    extern "C" __global__ void hvp_hidden_##SUF(const T* z, const T* d1, const T* rz, T* gx,       \
                                                T* rgx, int kind, long long n)                     \
    {                                                                                              \
        hvp_hidden<T>(z, d1, rz, gx, rgx, kind, n);                                                \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
