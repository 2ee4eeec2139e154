// Exact per-sample Gauss-Newton norms through the K x K route (src/hessian/gn_norm.rs):
//   M_s = F_s F_s^T = sum_p (||x_s(p)||^2 + [bias]) G_s(p) G_s(p)^T       (gram_accumulate)
//   ||GN_s||_2 = lambda_max(C_s^T M_s C_s),  A_s = C_s C_s^T            (gn_norm_jacobi)
// The K x K eigenproblem is solved per thread by cyclic Jacobi rotations.

// M (m x k x k) += coef[s] * G_s G_s^T for G stacked (m k) x d; one block per sample,
// threads over the lower-triangle pairs (a, b); each dot product is summed in order.
template <typename T>
__device__ void gram_accumulate(const T* G, long long m, int k, long long d, const T* coef, T* M)
{
    int npairs = k * (k + 1) / 2;
    for (long long s = blockIdx.x; s < m; s += gridDim.x) {
        T c = coef[s];
        for (int t = threadIdx.x; t < npairs; t += blockDim.x) {
            // Decode t -> (a, b), b <= a.
            int a = 0;
            while ((a + 1) * (a + 2) / 2 <= t) ++a;
            int b = t - a * (a + 1) / 2;
            const T* ga = G + (s * k + a) * d;
            const T* gb = G + (s * k + b) * d;
            T acc = T(0);
            for (long long j = 0; j < d; ++j) acc += ga[j] * gb[j];
            T* ms = M + s * (long long)k * k;
            ms[a * k + b] += c * acc;
            if (a != b) ms[b * k + a] += c * acc;
        }
    }
}

// M (m x k x k) += coef[s] * I (the last layer, where G(L-1) = I_K).
template <typename T>
__device__ void add_scaled_identity(T* M, long long m, int k, const T* coef)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < m * k;
         i += (long long)blockDim.x * gridDim.x) {
        long long s = i / k;
        int a = (int)(i % k);
        M[s * k * k + a * k + a] += coef[s];
    }
}

// Largest eigenvalue (clamped at 0) and numerical rank (eigenvalues above rank_tol * max)
// of S_s = C_s^T M_s C_s, one thread per sample, k <= MAXK. Cyclic Jacobi sweeps until the
// off-diagonal mass is below (tol * ||S||_F)^2.
template <typename T, int MAXK>
__device__ void gn_norm_jacobi(const T* M, const T* C, long long m, int k, T tol, T rank_tol,
                               T* norms, int* ranks)
{
    for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < m;
         s += (long long)blockDim.x * gridDim.x) {
        T S[MAXK * MAXK];
        const T* ms = M + s * (long long)k * k;
        const T* cs = C + s * (long long)k * k;
        for (int a = 0; a < k; ++a)
            for (int b = 0; b <= a; ++b) {
                T acc = T(0);
                for (int t = 0; t < k; ++t) {
                    T inner = T(0);
                    for (int u = 0; u < k; ++u) inner += ms[t * k + u] * cs[u * k + b];
                    acc += cs[t * k + a] * inner;
                }
                S[a * MAXK + b] = acc;
                S[b * MAXK + a] = acc;
            }
        T frob = T(0);
        for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b) frob += S[a * MAXK + b] * S[a * MAXK + b];
        T thresh = tol * tol * frob;
        for (int sweep = 0; sweep < 64; ++sweep) {
            T off = T(0);
            for (int a = 0; a < k; ++a)
                for (int b = a + 1; b < k; ++b) off += T(2) * S[a * MAXK + b] * S[a * MAXK + b];
            if (off <= thresh) break;
            for (int p = 0; p < k; ++p)
                for (int q = p + 1; q < k; ++q) {
                    T apq = S[p * MAXK + q];
                    if (apq == T(0)) continue;
                    T theta = (S[q * MAXK + q] - S[p * MAXK + p]) / (T(2) * apq);
                    T t = (theta >= T(0) ? T(1) : T(-1)) / (fabs(theta) + sqrt(theta * theta + T(1)));
                    T c = T(1) / sqrt(t * t + T(1));
                    T sn = t * c;
                    for (int r = 0; r < k; ++r) {
                        T x = S[r * MAXK + p], y = S[r * MAXK + q];
                        S[r * MAXK + p] = c * x - sn * y;
                        S[r * MAXK + q] = sn * x + c * y;
                    }
                    for (int r = 0; r < k; ++r) {
                        T x = S[p * MAXK + r], y = S[q * MAXK + r];
                        S[p * MAXK + r] = c * x - sn * y;
                        S[q * MAXK + r] = sn * x + c * y;
                    }
                }
        }
        T top = S[0];
        for (int a = 1; a < k; ++a) top = S[a * MAXK + a] > top ? S[a * MAXK + a] : top;
        int rank = 0;
        T floor_v = rank_tol * (top > T(0) ? top : -top);
        for (int a = 0; a < k; ++a) rank += S[a * MAXK + a] > floor_v ? 1 : 0;
        norms[s] = top > T(0) ? top : T(0);
        ranks[s] = rank;
    }
}

#define INSTANTIATE(T, SUF)                                                                       \
    extern "C" __global__ void gram_accumulate_##SUF(const T* G, long long m, int k, long long d, \
                                                     const T* coef, T* M)                         \
    {                                                                                             \
        gram_accumulate<T>(G, m, k, d, coef, M);                                                  \
    }                                                                                             \
    extern "C" __global__ void add_scaled_identity_##SUF(T* M, long long m, int k, const T* coef) \
    {                                                                                             \
        add_scaled_identity<T>(M, m, k, coef);                                                    \
    }                                                                                             \
    extern "C" __global__ void gn_norm_jacobi_k16_##SUF(const T* M, const T* C, long long m,      \
                                                        int k, T tol, T rank_tol, T* norms,       \
                                                        int* ranks)                               \
    {                                                                                             \
        gn_norm_jacobi<T, 16>(M, C, m, k, tol, rank_tol, norms, ranks);                           \
    }                                                                                             \
    extern "C" __global__ void gn_norm_jacobi_k32_##SUF(const T* M, const T* C, long long m,      \
                                                        int k, T tol, T rank_tol, T* norms,       \
                                                        int* ranks)                               \
    {                                                                                             \
        gn_norm_jacobi<T, 32>(M, C, m, k, tol, rank_tol, norms, ranks);                           \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
