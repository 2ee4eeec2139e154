// Loss-side factors of every sample, one thread per sample (K is small).
//
// kind 0: cross-entropy on softmax p = softmax(z):
//   loss = log(sum_j exp z_j) - z_y,  r = p - onehot(y),  A = diag(p) - p p^T,
//   square-root factor C = diag(s) - p s^T with s = sqrt(p), so A = C C^T (s^T s = 1).
// kind 1: MSE sum_j (z_j - onehot_j)^2:  r = 2 (z - onehot),  A = 2 I,  C = sqrt(2) I.
// Conventions match src/hessian/structure.rs (loss_derivatives, curvature_factor).

#define SAMPLE_LOOP(s, m)                                                                \
    for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < (long long)(m); \
         s += (long long)blockDim.x * gridDim.x)

// Residuals r (m x k), per-sample losses (m) and, when cfac != 0, the factors C (m x k x k).
template <typename T>
__device__ void loss_top(const T* z, const unsigned int* y, long long m, int k, int kind, T* r,
                         T* loss, T* cfac)
{
    SAMPLE_LOOP(s, m)
    {
        const T* zs = z + s * k;
        T* rs = r + s * k;
        unsigned int ys = y[s];
        if (kind == 0) {
            T mx = zs[0];
            for (int j = 1; j < k; ++j) mx = zs[j] > mx ? zs[j] : mx;
            T sum = T(0);
            for (int j = 0; j < k; ++j) sum += exp(zs[j] - mx);
            loss[s] = log(sum) + mx - zs[ys];
            for (int j = 0; j < k; ++j) rs[j] = exp(zs[j] - mx) / sum - (j == (int)ys ? T(1) : T(0));
            if (cfac) {
                T* c = cfac + s * (long long)k * k;
                for (int a = 0; a < k; ++a) {
                    T pa = exp(zs[a] - mx) / sum;
                    for (int b = 0; b < k; ++b) {
                        T sb = sqrt(exp(zs[b] - mx) / sum);
                        c[a * k + b] = (a == b ? sqrt(pa) : T(0)) - pa * sb;
                    }
                }
            }
        } else {
            T acc = T(0);
            for (int j = 0; j < k; ++j) {
                T e = zs[j] - (j == (int)ys ? T(1) : T(0));
                acc += e * e;
                rs[j] = T(2) * e;
            }
            loss[s] = acc;
            if (cfac) {
                T* c = cfac + s * (long long)k * k;
                for (int a = 0; a < k; ++a)
                    for (int b = 0; b < k; ++b) c[a * k + b] = a == b ? sqrt(T(2)) : T(0);
            }
        }
    }
}

// Top of the HVP R-pass: r (m x k) and A R{z} (m x k) for directions rz (m x k).
template <typename T>
__device__ void hvp_top(const T* z, const unsigned int* y, const T* rz, long long m, int k, int kind,
                        T* r, T* arz)
{
    SAMPLE_LOOP(s, m)
    {
        const T* zs = z + s * k;
        const T* u = rz + s * k;
        unsigned int ys = y[s];
        if (kind == 0) {
            T mx = zs[0];
            for (int j = 1; j < k; ++j) mx = zs[j] > mx ? zs[j] : mx;
            T sum = T(0);
            for (int j = 0; j < k; ++j) sum += exp(zs[j] - mx);
            T pu = T(0);
            for (int j = 0; j < k; ++j) pu += exp(zs[j] - mx) / sum * u[j];
            for (int j = 0; j < k; ++j) {
                T pj = exp(zs[j] - mx) / sum;
                arz[s * k + j] = pj * u[j] - pj * pu;
                r[s * k + j] = pj - (j == (int)ys ? T(1) : T(0));
            }
        } else {
            for (int j = 0; j < k; ++j) {
                arz[s * k + j] = T(2) * u[j];
                r[s * k + j] = T(2) * (zs[j] - (j == (int)ys ? T(1) : T(0)));
            }
        }
    }
}

#define INSTANTIATE(T, SUF)                                                                     \
    extern "C" __global__ void loss_top_##SUF(const T* z, const unsigned int* y, long long m,   \
                                              int k, int kind, T* r, T* loss, T* cfac)          \
    {                                                                                           \
        loss_top<T>(z, y, m, k, kind, r, loss, cfac);                                           \
    }                                                                                           \
    extern "C" __global__ void hvp_top_##SUF(const T* z, const unsigned int* y, const T* rz,    \
                                             long long m, int k, int kind, T* r, T* arz)        \
    {                                                                                           \
        hvp_top<T>(z, y, rz, m, k, kind, r, arz);                                               \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
