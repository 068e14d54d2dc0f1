// Row-wise elementwise work of the UNet's blocks, compiled for each kernel family and chosen by
// wp_selected_kernels(): transposes (16 x 16 tiles in registers on AVX-512), GEGLU
// (`value * gelu(gate)`, with Abramowitz and Stegun's erf, as Swift's `Kernels.erf`), layer
// normalisation (sums in double precision, 8 partial sums per pass in a fixed order whatever the
// family) and group norm's scale, shift and SiLU. In Swift these ran at SSE width in the
// portable build, layer norm's double sums one element at a time, group norm's SiLU called
// libm's `expf` per element, and the transpose's scalar copy moved about 1.5 GB/s.
#include "CEngineKernels.h"
#include "exp.h"
#include "transpose16.h"

#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// With a bias (the projection's, left to this pass), `value + bias[j]` and `gate + bias[F + j]`
// rounded before use, as when the bias was added to the projection's result first.
INLINE void gegluBody(const float *restrict x, int64_t rows, int64_t features, const float *restrict bias,
                      float *restrict y) {
    for (int64_t i = 0; i < rows; i++) {
        const float *value = x + i * 2 * features, *gate = value + features;
        float *out = y + i * features;
        if (bias) {
            for (int64_t j = 0; j < features; j++) {
                const float g = gate[j] + bias[features + j];
                out[j] = (value[j] + bias[j]) * (0.5f * g * (1.0f + erfAS(g * 0.70710678118654752f)));
            }
        } else {
            for (int64_t j = 0; j < features; j++) {
                const float g = gate[j];
                out[j] = value[j] * (0.5f * g * (1.0f + erfAS(g * 0.70710678118654752f)));
            }
        }
    }
}

// `x[i][j] += y[i][j] + bias[j]` (`x += y` without a bias): a layer's result and its bias added
// to the residual stream in one pass, `y + bias` rounded first as when the bias was added to the
// result in a pass of its own.
INLINE void addRowsBody(const float *restrict y, int64_t rows, int64_t columns, const float *restrict bias,
                        float *restrict x) {
    for (int64_t i = 0; i < rows; i++) {
        const float *in = y + i * columns;
        float *out = x + i * columns;
        if (bias) {
            for (int64_t j = 0; j < columns; j++) out[j] += in[j] + bias[j];
        } else {
            for (int64_t j = 0; j < columns; j++) out[j] += in[j];
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

// Rows `begin ..< end` of `x[rows][columns]` into `y[columns][rows]`, in 32 x 32 blocks.
INLINE void transposeBody(const float *restrict x, int64_t rows, int64_t columns, int64_t begin, int64_t end,
                          float *restrict y) {
    for (int64_t i0 = begin; i0 < end; i0 += 32) {
        const int64_t i1 = end - i0 < 32 ? end : i0 + 32;
        for (int64_t j0 = 0; j0 < columns; j0 += 32) {
            const int64_t j1 = columns - j0 < 32 ? columns : j0 + 32;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0; j < j1; j++) y[j * rows + i] = x[i * columns + j];
        }
    }
}

static void transposeBaseline(const float *x, int64_t rows, int64_t columns, int64_t begin, int64_t end, float *y) {
    transposeBody(x, rows, columns, begin, end, y);
}
static void scaleShiftBaseline(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    scaleShiftBody(x, y, count, scale, shift, silu);
}
static void gegluBaseline(const float *x, int64_t rows, int64_t features, const float *b, float *y) {
    gegluBody(x, rows, features, b, y);
}
static void addRowsBaseline(const float *y, int64_t rows, int64_t columns, const float *b, float *x) {
    addRowsBody(y, rows, columns, b, x);
}
static void layerNormBaseline(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *w,
                              const float *b) {
    layerNormBody(x, y, rows, features, epsilon, w, b);
}
#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
AVX2 static void gegluAVX2(const float *x, int64_t rows, int64_t features, const float *b, float *y) {
    gegluBody(x, rows, features, b, y);
}
AVX512 static void gegluAVX512(const float *x, int64_t rows, int64_t features, const float *b, float *y) {
    gegluBody(x, rows, features, b, y);
}
AVX2 static void addRowsAVX2(const float *y, int64_t rows, int64_t columns, const float *b, float *x) {
    addRowsBody(y, rows, columns, b, x);
}
AVX512 static void addRowsAVX512(const float *y, int64_t rows, int64_t columns, const float *b, float *x) {
    addRowsBody(y, rows, columns, b, x);
}
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
AVX2 static void transposeAVX2(const float *x, int64_t rows, int64_t columns, int64_t begin, int64_t end, float *y) {
    transposeBody(x, rows, columns, begin, end, y);
}
// 16 x 16 tiles in registers (`wp_transpose16`); the edges as the other families.
AVX512 static void transposeAVX512(const float *x, int64_t rows, int64_t columns, int64_t begin, int64_t end, float *y) {
    const int64_t fullColumns = columns / 16 * 16;
    int64_t i0 = begin;
    for (; i0 + 16 <= end; i0 += 16) {
        for (int64_t j0 = 0; j0 < fullColumns; j0 += 16) {
            __m512 r[16], out[16];
            for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(x + (i0 + k) * columns + j0);
            wp_transpose16(r, out);
            for (int k = 0; k < 16; k++) _mm512_storeu_ps(y + (j0 + k) * rows + i0, out[k]);
        }
        for (int64_t i = i0; i < i0 + 16; i++)
            for (int64_t j = fullColumns; j < columns; j++) y[j * rows + i] = x[i * columns + j];
    }
    transposeBody(x, rows, columns, i0, end, y);
}
#define PICK(name) (wp_selected_kernels() == WP_KERNELS_AVX512 ? name##AVX512 : wp_selected_kernels() == WP_KERNELS_AVX2 ? name##AVX2 : name##Baseline)
#else
#define PICK(name) name##Baseline
#endif

void wp_geglu_rows(const float *x, int64_t rows, int64_t features, const float *bias, float *y) {
    PICK(geglu)(x, rows, features, bias, y);
}

void wp_add_rows(const float *y, int64_t rows, int64_t columns, const float *bias, float *x) {
    PICK(addRows)(y, rows, columns, bias, x);
}

void wp_transpose_rows(const float *x, int64_t rows, int64_t columns, int64_t begin, int64_t end, float *y) {
    PICK(transpose)(x, rows, columns, begin, end, y);
}

void wp_layer_norm_rows(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *weight,
                        const float *bias) {
    PICK(layerNorm)(x, y, rows, features, epsilon, weight, bias);
}

void wp_scale_shift(const float *x, float *y, int64_t count, float scale, float shift, int silu) {
    PICK(scaleShift)(x, y, count, scale, shift, silu);
}
