// Activation derivatives for the diagonal factors D(p) = diag(act'(z(p))).
//
// Every kernel is elementwise over n entries with a grid-stride loop:
//   act_deriv_<act>_<ty>(const T* z, T* out, unsigned long long n[, T slope])
// computes out[i] = act'(z[i]) and
//   act_second_deriv_<act>_<ty>(z, out, n)
// computes out[i] = act''(z[i]) for tanh, sigmoid and softplus (the piecewise-linear
// activations have act'' = 0).
//
// Conventions match the CPU engine (src/nn/activation.rs):
//   relu:        [z > 0]            (the tie z == 0 gives 0; a measure-zero choice)
//   leaky_relu:  z > 0 ? 1 : slope  (the tie gives slope)
//   tanh:        1 - tanh(z)^2
//   sigmoid:     s (1 - s), s = 1 / (1 + exp(-z));  act'' = s (1 - s) (1 - 2 s)
//   softplus:    s = 1 / (1 + exp(-z));              act'' = s (1 - s)
//   identity:    1
// `out` may alias `z` (in-place). Plain CUDA C for NVRTC: no includes needed.

#define GRID_STRIDE_LOOP(i, n)                                                     \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

extern "C" __global__ void act_deriv_relu_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0f ? 1.0f : 0.0f; }
}

extern "C" __global__ void act_deriv_relu_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0 ? 1.0 : 0.0; }
}

extern "C" __global__ void act_deriv_leaky_relu_f32(const float* z, float* out, unsigned long long n,
                                                    float slope)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0f ? 1.0f : slope; }
}

extern "C" __global__ void act_deriv_leaky_relu_f64(const double* z, double* out, unsigned long long n,
                                                    double slope)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0 ? 1.0 : slope; }
}

extern "C" __global__ void act_deriv_tanh_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float t = tanhf(z[i]);
        out[i] = 1.0f - t * t;
    }
}

extern "C" __global__ void act_deriv_tanh_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double t = tanh(z[i]);
        out[i] = 1.0 - t * t;
    }
}

extern "C" __global__ void act_deriv_identity_f32(const float* z, float* out, unsigned long long n)
{
    (void)z;
    GRID_STRIDE_LOOP(i, n) { out[i] = 1.0f; }
}

extern "C" __global__ void act_deriv_identity_f64(const double* z, double* out, unsigned long long n)
{
    (void)z;
    GRID_STRIDE_LOOP(i, n) { out[i] = 1.0; }
}

// act''(z) = -2 tanh(z) (1 - tanh(z)^2), for the diagonal H-term of smooth activations.
extern "C" __global__ void act_second_deriv_tanh_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float t = tanhf(z[i]);
        out[i] = -2.0f * t * (1.0f - t * t);
    }
}

extern "C" __global__ void act_second_deriv_tanh_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double t = tanh(z[i]);
        out[i] = -2.0 * t * (1.0 - t * t);
    }
}

// Forward activations out[i] = act(z[i]) for the backend trait (out may alias z).
extern "C" __global__ void act_fwd_relu_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0f ? z[i] : 0.0f; }
}
extern "C" __global__ void act_fwd_relu_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0 ? z[i] : 0.0; }
}
extern "C" __global__ void act_fwd_leaky_relu_f32(const float* z, float* out, unsigned long long n,
                                                  float slope)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0f ? z[i] : slope * z[i]; }
}
extern "C" __global__ void act_fwd_leaky_relu_f64(const double* z, double* out, unsigned long long n,
                                                  double slope)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i] > 0.0 ? z[i] : slope * z[i]; }
}
extern "C" __global__ void act_fwd_tanh_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = tanhf(z[i]); }
}
extern "C" __global__ void act_fwd_tanh_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = tanh(z[i]); }
}
extern "C" __global__ void act_fwd_identity_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i]; }
}
extern "C" __global__ void act_fwd_identity_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = z[i]; }
}

// Sigmoid and softplus (smooth: forward, act', act'').

__device__ __forceinline__ float sigmoid_f32(float z)
{
    if (z >= (float)0) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}
extern "C" __global__ void act_fwd_sigmoid_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = sigmoid_f32(z[i]); }
}
extern "C" __global__ void act_deriv_sigmoid_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float s = sigmoid_f32(z[i]);
        out[i] = s * (1.0f - s);
    }
}
extern "C" __global__ void act_second_deriv_sigmoid_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float s = sigmoid_f32(z[i]);
        out[i] = s * (1.0f - s) * (1.0f - (float)2 * s);
    }
}
extern "C" __global__ void act_fwd_softplus_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float v = z[i];
        out[i] = (v > (float)0 ? v : (float)0) + log1pf(expf(-fabs(v)));
    }
}
extern "C" __global__ void act_deriv_softplus_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = sigmoid_f32(z[i]); }
}
extern "C" __global__ void act_second_deriv_softplus_f32(const float* z, float* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        float s = sigmoid_f32(z[i]);
        out[i] = s * (1.0f - s);
    }
}

__device__ __forceinline__ double sigmoid_f64(double z)
{
    if (z >= (double)0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}
extern "C" __global__ void act_fwd_sigmoid_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = sigmoid_f64(z[i]); }
}
extern "C" __global__ void act_deriv_sigmoid_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double s = sigmoid_f64(z[i]);
        out[i] = s * (1.0 - s);
    }
}
extern "C" __global__ void act_second_deriv_sigmoid_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double s = sigmoid_f64(z[i]);
        out[i] = s * (1.0 - s) * (1.0 - (double)2 * s);
    }
}
extern "C" __global__ void act_fwd_softplus_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double v = z[i];
        out[i] = (v > (double)0 ? v : (double)0) + log1p(exp(-fabs(v)));
    }
}
extern "C" __global__ void act_deriv_softplus_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n) { out[i] = sigmoid_f64(z[i]); }
}
extern "C" __global__ void act_second_deriv_softplus_f64(const double* z, double* out, unsigned long long n)
{
    GRID_STRIDE_LOOP(i, n)
    {
        double s = sigmoid_f64(z[i]);
        out[i] = s * (1.0 - s);
    }
}
