/* SimAM forward and backward for float32 (B, C, H, W) tensors in contiguous (NCHW) layout on the
 * CPU: one row of n = H*W values per sample and channel, rows spread over OpenMP threads (each row
 * is computed by one thread in a fixed order, so results do not depend on the thread count).
 * Built and loaded by simam_native.py; the formulas are those of simam_fused.py's docstring. */
#include <stdint.h>
#include <string.h>

/* sigmoid(z) for z >= 1/2 (z = k d^2 + 1/2, k > 0), inline so that the loops vectorise:
 * exp(-z) = 2^m p(r) with m = round(-z log2(e)), r = -z - m ln(2) in [-ln(2)/2, ln(2)/2] (ln(2) in
 * two parts) and p the degree-6 Taylor polynomial of exp (relative error < 2e-7 on that range).
 * -z is clamped at -87 (exp(-87) ~ 1.6e-38 is still a normal float; the sigmoid is 1 there). */
static inline float sigmoid_pos(float z) {
    float w = -z < -87.0f ? -87.0f : -z;
    float m = __builtin_roundf(w * 1.44269504088896341f);
    float r = (w - m * 0.693145751953125f) - m * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return 1.0f / (1.0f + p * scale);
}

/* y = x sigmoid(k (x - mu)^2 + 1/2); writes y and the per-row mu and k = 1 / (4 (var + lambda)) */
void simam_forward_f32(const float *x, float *y, float *mu_out, float *k_out,
                       int64_t rows, int64_t n, float lambda, int threads) {
    const float inv_n = 1.0f / (float)n;
    const float inv_var = 1.0f / (float)(n > 1 ? n - 1 : 1);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const float *xr = x + row * n;
        float *yr = y + row * n;
        float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+:sum)
        for (int64_t i = 0; i < n; ++i) sum += xr[i];
        const float mu = sum * inv_n;
#pragma omp simd reduction(+:sq)
        for (int64_t i = 0; i < n; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
        const float k = 1.0f / (4.0f * (sq * inv_var + lambda));
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            const float d = xr[i] - mu;
            yr[i] = xr[i] * sigmoid_pos(k * d * d + 0.5f);
        }
        mu_out[row] = mu;
        k_out[row] = k;
    }
}

/* dx = g s + 2 d (k t - 4 k^2 A / (n-1)) - 2 k B / n with s, t, A, B as in simam_fused.py; dx may
 * not alias x or g (it holds s between the two passes over a row) */
void simam_backward_f32(const float *x, const float *g, const float *mu_in, const float *k_in, float *dx,
                        int64_t rows, int64_t n, int threads) {
    const float c_a = 4.0f / (float)(n > 1 ? n - 1 : 1);
    const float c_b = 2.0f / (float)n;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const float *xr = x + row * n, *gr = g + row * n;
        float *dr = dx + row * n;
        const float mu = mu_in[row], k = k_in[row];
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+:a, b)
        for (int64_t i = 0; i < n; ++i) {
            const float d = xr[i] - mu;
            const float s = sigmoid_pos(k * d * d + 0.5f);
            const float td = gr[i] * s * xr[i] * (1.0f - s) * d;
            b += td;
            a += td * d;
            dr[i] = s;
        }
        const float ca = c_a * k * k * a, cb = c_b * k * b;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            const float d = xr[i] - mu, s = dr[i], gs = gr[i] * s;
            dr[i] = gs + 2.0f * d * (k * (gs * xr[i] * (1.0f - s)) - ca) - cb;
        }
    }
}
