/* SimAM forward and backward on the CPU for (B, C, H, W) tensors of float32 or bfloat16, contiguous
 * (NCHW: one row of n = H*W values per sample and channel) or channels_last (NHWC: per sample, n
 * positions of C channels). Work is spread over OpenMP threads by rows (NCHW) or by sample and
 * channel block (NHWC); each is computed by one thread in a fixed order, so results do not depend on
 * the thread count. Built and loaded by simam_native.py; the formulas are in simam_fused.py. */
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

/* ---------------------------------------------------------------- bfloat16 and channels_last
 * bfloat16 values are read as float32 (the top 16 bits) and written back rounded to nearest even,
 * NaN as 0x7FC0, as torch rounds them; the arithmetic is float32 as in the other kernels. */
static inline float bf16_load(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : (uint16_t)rounded;
}

static inline float f32_load(float v) { return v; }
static inline float f32_round(float v) { return v; }

/* NCHW rows of bfloat16: as simam_forward_f32 / simam_backward_f32, with the sigmoid recomputed in
 * the backward's second pass (dx cannot hold it at full precision) */
void simam_forward_bf16(const uint16_t *x, uint16_t *y, float *mu_out, float *k_out,
                        int64_t rows, int64_t n, float lambda, int threads) {
    const float inv_n = 1.0f / (float)n;
    const float inv_var = 1.0f / (float)(n > 1 ? n - 1 : 1);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const uint16_t *xr = x + row * n;
        uint16_t *yr = y + row * n;
        float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+:sum)
        for (int64_t i = 0; i < n; ++i) sum += bf16_load(xr[i]);
        const float mu = sum * inv_n;
#pragma omp simd reduction(+:sq)
        for (int64_t i = 0; i < n; ++i) sq += (bf16_load(xr[i]) - mu) * (bf16_load(xr[i]) - mu);
        const float k = 1.0f / (4.0f * (sq * inv_var + lambda));
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            const float xv = bf16_load(xr[i]), d = xv - mu;
            yr[i] = bf16_round(xv * sigmoid_pos(k * d * d + 0.5f));
        }
        mu_out[row] = mu;
        k_out[row] = k;
    }
}

void simam_backward_bf16(const uint16_t *x, const uint16_t *g, const float *mu_in, const float *k_in, uint16_t *dx,
                         int64_t rows, int64_t n, int threads) {
    const float c_a = 4.0f / (float)(n > 1 ? n - 1 : 1);
    const float c_b = 2.0f / (float)n;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const uint16_t *xr = x + row * n, *gr = g + row * n;
        uint16_t *dr = dx + row * n;
        const float mu = mu_in[row], k = k_in[row];
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+:a, b)
        for (int64_t i = 0; i < n; ++i) {
            const float xv = bf16_load(xr[i]), d = xv - mu;
            const float s = sigmoid_pos(k * d * d + 0.5f);
            const float td = bf16_load(gr[i]) * s * xv * (1.0f - s) * d;
            b += td;
            a += td * d;
        }
        const float ca = c_a * k * k * a, cb = c_b * k * b;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            const float xv = bf16_load(xr[i]), d = xv - mu;
            const float s = sigmoid_pos(k * d * d + 0.5f), gs = bf16_load(gr[i]) * s;
            dr[i] = bf16_round(gs + 2.0f * d * (k * (gs * xv * (1.0f - s)) - ca) - cb);
        }
    }
}

/* channels_last (NHWC): sample b holds n positions of C contiguous channels. A task is one sample
 * and a block of up to CBLOCK channels; its loops run over the positions, vectorised over the
 * channels, in a fixed order (results do not depend on the thread count). */
#define CBLOCK 64

#define SIMAM_NHWC(SUFFIX, T, LOAD, ROUND)                                                          \
void simam_forward_nhwc_##SUFFIX(const T *x, T *y, float *mu_out, float *k_out,                    \
                                 int64_t batch, int64_t channels, int64_t n, float lambda, int threads) { \
    const float inv_n = 1.0f / (float)n;                                                            \
    const float inv_var = 1.0f / (float)(n > 1 ? n - 1 : 1);                                        \
    const int64_t blocks = (channels + CBLOCK - 1) / CBLOCK;                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (int64_t task = 0; task < batch * blocks; ++task) {                                         \
        const int64_t b = task / blocks, c0 = (task % blocks) * CBLOCK;                            \
        const int64_t cw = channels - c0 < CBLOCK ? channels - c0 : CBLOCK;                         \
        const T *xb = x + b * n * channels + c0;                                                    \
        T *yb = y + b * n * channels + c0;                                                          \
        float sum[CBLOCK], sq[CBLOCK], mu[CBLOCK], k[CBLOCK];                                       \
        for (int64_t c = 0; c < cw; ++c) sum[c] = sq[c] = 0.0f;                                     \
        for (int64_t p = 0; p < n; ++p) {                                                           \
            const T *xp = xb + p * channels;                                                        \
            _Pragma("omp simd")                                                                     \
            for (int64_t c = 0; c < cw; ++c) sum[c] += LOAD(xp[c]);                                 \
        }                                                                                           \
        for (int64_t c = 0; c < cw; ++c) mu[c] = sum[c] * inv_n;                                    \
        for (int64_t p = 0; p < n; ++p) {                                                           \
            const T *xp = xb + p * channels;                                                        \
            _Pragma("omp simd")                                                                     \
            for (int64_t c = 0; c < cw; ++c) sq[c] += (LOAD(xp[c]) - mu[c]) * (LOAD(xp[c]) - mu[c]); \
        }                                                                                           \
        for (int64_t c = 0; c < cw; ++c) k[c] = 1.0f / (4.0f * (sq[c] * inv_var + lambda));          \
        for (int64_t p = 0; p < n; ++p) {                                                           \
            const T *xp = xb + p * channels;                                                        \
            T *yp = yb + p * channels;                                                              \
            _Pragma("omp simd")                                                                     \
            for (int64_t c = 0; c < cw; ++c) {                                                      \
                const float xv = LOAD(xp[c]), d = xv - mu[c];                                       \
                yp[c] = ROUND(xv * sigmoid_pos(k[c] * d * d + 0.5f));                               \
            }                                                                                       \
        }                                                                                           \
        for (int64_t c = 0; c < cw; ++c) {                                                          \
            mu_out[b * channels + c0 + c] = mu[c];                                                  \
            k_out[b * channels + c0 + c] = k[c];                                                    \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
                                                                                                    \
void simam_backward_nhwc_##SUFFIX(const T *x, const T *g, const float *mu_in, const float *k_in, T *dx, \
                                  int64_t batch, int64_t channels, int64_t n, int threads) {        \
    const float c_a = 4.0f / (float)(n > 1 ? n - 1 : 1);                                            \
    const float c_b = 2.0f / (float)n;                                                              \
    const int64_t blocks = (channels + CBLOCK - 1) / CBLOCK;                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (int64_t task = 0; task < batch * blocks; ++task) {                                         \
        const int64_t b = task / blocks, c0 = (task % blocks) * CBLOCK;                            \
        const int64_t cw = channels - c0 < CBLOCK ? channels - c0 : CBLOCK;                         \
        const int64_t base = b * n * channels + c0;                                                 \
        float mu[CBLOCK], k[CBLOCK], a[CBLOCK], bb[CBLOCK], ca[CBLOCK], cb[CBLOCK];                 \
        for (int64_t c = 0; c < cw; ++c) {                                                          \
            mu[c] = mu_in[b * channels + c0 + c];                                                   \
            k[c] = k_in[b * channels + c0 + c];                                                     \
            a[c] = bb[c] = 0.0f;                                                                    \
        }                                                                                           \
        for (int64_t p = 0; p < n; ++p) {                                                           \
            const T *xp = x + base + p * channels, *gp = g + base + p * channels;                   \
            _Pragma("omp simd")                                                                     \
            for (int64_t c = 0; c < cw; ++c) {                                                      \
                const float xv = LOAD(xp[c]), d = xv - mu[c];                                       \
                const float s = sigmoid_pos(k[c] * d * d + 0.5f);                                   \
                const float td = LOAD(gp[c]) * s * xv * (1.0f - s) * d;                             \
                bb[c] += td;                                                                        \
                a[c] += td * d;                                                                     \
            }                                                                                       \
        }                                                                                           \
        for (int64_t c = 0; c < cw; ++c) {                                                          \
            ca[c] = c_a * k[c] * k[c] * a[c];                                                       \
            cb[c] = c_b * k[c] * bb[c];                                                             \
        }                                                                                           \
        for (int64_t p = 0; p < n; ++p) {                                                           \
            const T *xp = x + base + p * channels, *gp = g + base + p * channels;                   \
            T *dp = dx + base + p * channels;                                                       \
            _Pragma("omp simd")                                                                     \
            for (int64_t c = 0; c < cw; ++c) {                                                      \
                const float xv = LOAD(xp[c]), d = xv - mu[c];                                       \
                const float s = sigmoid_pos(k[c] * d * d + 0.5f), gs = LOAD(gp[c]) * s;             \
                dp[c] = ROUND(gs + 2.0f * d * (k[c] * (gs * xv * (1.0f - s)) - ca[c]) - cb[c]);     \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

SIMAM_NHWC(f32, float, f32_load, f32_round)
SIMAM_NHWC(bf16, uint16_t, bf16_load, bf16_round)
