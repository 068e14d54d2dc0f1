// Row-wise elementwise work of the UNet's blocks, compiled for each kernel family and chosen by
// wp_selected_kernels(): GEGLU (`value * gelu(gate)`, with Abramowitz and Stegun's erf, as
// Swift's `Kernels.erf`), layer normalisation (sums in double precision, 8 partial sums per
// pass in a fixed order whatever the family) and group norm's scale, shift and SiLU. In Swift these ran at SSE width in the portable
// build, layer norm's double sums one element at a time and group norm's SiLU called libm's
// `expf` per element.
#include "CEngineKernels.h"
#include "exp.h"

#include <math.h>

#define INLINE static inline __attribute__((always_inline))

// erf(x): Abramowitz and Stegun 7.1.26, `1 - (a1 t + … + a5 t⁵) exp(-x²)` with
// `t = 1 / (1 + p|x|)`, odd in x (|error| ≤ 1.5e-7 in exact arithmetic).
INLINE float erfAS(float x) {
    const float a = fabsf(x);
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float y = 1.0f - p * t * wp_exp_branch_free(-(a * a));
    return x < 0 ? -y : y;
}

INLINE void gegluBody(const float *restrict x, int64_t rows, int64_t features, float *restrict y) {
    for (int64_t i = 0; i < rows; i++) {
        const float *value = x + i * 2 * features, *gate = value + features;
        float *out = y + i * features;
        for (int64_t j = 0; j < features; j++) {
            const float g = gate[j];
            out[j] = value[j] * (0.5f * g * (1.0f + erfAS(g * 0.70710678118654752f)));
        }
    }
}

// Sum of `x[j] - shift` over `count` floats in double: 8 partial sums, then added in order.
INLINE double sumMinus(const float *restrict x, int64_t count, double shift, int squares) {
    double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= count; j += 8) {
        for (int l = 0; l < 8; l++) {
            const double d = (double)x[j + l] - shift;
            partial[l] += squares ? d * d : d;
        }
    }
    double total = 0;
    for (int l = 0; l < 8; l++) total += partial[l];
    for (; j < count; j++) {
        const double d = (double)x[j] - shift;
        total += squares ? d * d : d;
    }
    return total;
}

// `x` and `y` may be the same rows (each row is read whole before it is written).
INLINE void layerNormBody(const float *x, float *y, int64_t rows, int64_t features, float epsilon,
                          const float *restrict weight, const float *restrict bias) {
    for (int64_t i = 0; i < rows; i++) {
        const float *row = x + i * features;
        float *out = y + i * features;
        const double mean = sumMinus(row, features, 0, 0) / (double)features;
        const double variance = sumMinus(row, features, mean, 1) / (double)features;
        const float inverse = (float)(1.0 / sqrt(variance + (double)epsilon));
        const float m = (float)mean;
        for (int64_t j = 0; j < features; j++) out[j] = (row[j] - m) * inverse * weight[j] + bias[j];
    }
}

// `y = x * scale + shift`, then SiLU (`v / (1 + exp(-v))`) when asked: group norm's last pass.
// The product is rounded before the shift is added, as in the Swift code this replaced, not fused
// into one multiply-add. Measured: with the multiply-add (AVX2 and AVX-512 copies; the baseline
// has none), the tiny test UNet with a LoRA applied at run time moved 4 to 10 times further from
// the same LoRA merged (1.6e-4 against 1.6e-5 L2-relative) and `verify BASE MERGED --lora`
// stopped passing. A likely reason: for a group of almost constant values `scale` is up to
// 1 / sqrt(epsilon) (1000) and `x * scale` and `shift` nearly cancel, so the exact form passes
// on input differences that the rounded product absorbs.
INLINE void scaleShiftBody(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
#pragma clang fp contract(off)
    if (silu) {
        for (int64_t i = 0; i < count; i++) {
            const float v = x[i] * scale + shift;
            y[i] = v / (1.0f + wp_exp_branch_free(-v));
        }
    } else {
        for (int64_t i = 0; i < count; i++) y[i] = x[i] * scale + shift;
    }
}

static void scaleShiftBaseline(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    scaleShiftBody(x, y, count, scale, shift, silu);
}
static void gegluBaseline(const float *x, int64_t rows, int64_t features, float *y) { gegluBody(x, rows, features, y); }
static void layerNormBaseline(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *w,
                              const float *b) {
    layerNormBody(x, y, rows, features, epsilon, w, b);
}
#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
AVX2 static void gegluAVX2(const float *x, int64_t rows, int64_t features, float *y) { gegluBody(x, rows, features, y); }
AVX512 static void gegluAVX512(const float *x, int64_t rows, int64_t features, float *y) { gegluBody(x, rows, features, y); }
AVX2 static void layerNormAVX2(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *w,
                               const float *b) {
    layerNormBody(x, y, rows, features, epsilon, w, b);
}
AVX512 static void layerNormAVX512(const float *x, float *y, int64_t rows, int64_t features, float epsilon,
                                   const float *w, const float *b) {
    layerNormBody(x, y, rows, features, epsilon, w, b);
}
AVX2 static void scaleShiftAVX2(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    scaleShiftBody(x, y, count, scale, shift, silu);
}
AVX512 static void scaleShiftAVX512(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    scaleShiftBody(x, y, count, scale, shift, silu);
}
#define PICK(name) (wp_selected_kernels() == WP_KERNELS_AVX512 ? name##AVX512 : wp_selected_kernels() == WP_KERNELS_AVX2 ? name##AVX2 : name##Baseline)
#else
#define PICK(name) name##Baseline
#endif

void wp_geglu_rows(const float *x, int64_t rows, int64_t features, float *y) { PICK(geglu)(x, rows, features, y); }

void wp_layer_norm_rows(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *weight,
                        const float *bias) {
    PICK(layerNorm)(x, y, rows, features, epsilon, weight, bias);
}

void wp_scale_shift(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    PICK(scaleShift)(x, y, count, scale, shift, silu);
}
