// Row softmax, compiled for each kernel family and chosen by wp_selected_kernels(). The same
// arithmetic as the Swift `Kernels.softmaxRow` / `Kernels.exp` it replaces in attention: Cody-Waite
// range reduction and Cephes' expf polynomial (https://www.netlib.org/cephes/), branch-free
// so that it vectorises; 16 partial maxima and sums (a fixed order, whatever the family).
#include "CEngineKernels.h"
#include "exp.h"

#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

// The maximum and exp passes of the softmax: `row` holds exp(x - max) afterwards and the result
// is 1 / their sum, or 0 when every entry is -infinity (then `row` is left as it was).
INLINE float softmaxExp(float *restrict row, size_t count) {
    float lanes[16];
    for (int l = 0; l < 16; l++) lanes[l] = -INFINITY;
    size_t j = 0;
    for (; j + 16 <= count; j += 16) {
        for (int l = 0; l < 16; l++) {
            float v = row[j + l];
            lanes[l] = v > lanes[l] ? v : lanes[l];
        }
    }
    float maximum = -INFINITY;
    for (int l = 0; l < 16; l++) maximum = lanes[l] > maximum ? lanes[l] : maximum;
    for (; j < count; j++) maximum = row[j] > maximum ? row[j] : maximum;
    if (maximum == -INFINITY) return 0;
    float partial[16];
    for (int l = 0; l < 16; l++) partial[l] = 0;
    j = 0;
    for (; j + 16 <= count; j += 16) {
        for (int l = 0; l < 16; l++) {
            float v = row[j + l];
            float e = wp_exp_branch_free(v - maximum);
            e = v == -INFINITY ? 0.0f : e;
            row[j + l] = e;
            partial[l] += e;
        }
    }
    float sum = 0;
    for (int l = 0; l < 16; l++) sum += partial[l];
    for (; j < count; j++) {
        float v = row[j];
        float p = v == -INFINITY ? 0.0f : wp_exp_branch_free(v - maximum);
        row[j] = p;
        sum += p;
    }
    return 1.0f / sum;
}

INLINE void softmaxBody(float *restrict row, size_t count) {
    const float inverse = softmaxExp(row, count);
    if (inverse == 0) {
        memset(row, 0, count * sizeof(float));
        return;
    }
    for (size_t j = 0; j < count; j++) row[j] *= inverse;
}

static void softmaxBaseline(float *row, size_t count) { softmaxBody(row, count); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void softmaxAVX2(float *row, size_t count) { softmaxBody(row, count); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void softmaxAVX512(float *row, size_t count) { softmaxBody(row, count); }
#define PICK(name) (wp_selected_kernels() == WP_KERNELS_AVX512 ? name##AVX512 : wp_selected_kernels() == WP_KERNELS_AVX2 ? name##AVX2 : name##Baseline)
#else
#define PICK(name) name##Baseline
#endif

void wp_softmax_row(float *row, size_t count) { PICK(softmax)(row, count); }

#if defined(__x86_64__)
// The softmax of `row`, then each value rounded to bfloat16 (VCVTNE2PS2BF16, nearest even) and
// written over the row's first `2 * count` bytes: what `wp_softmax_row` followed by the bf16
// products' rounding gives, without the second pass. Each store lands on bytes already read.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
static void softmaxBF16(float *row, size_t count) {
    const float inverse = softmaxExp(row, count);
    uint16_t *target = (uint16_t *)row;
    if (inverse == 0) {
        memset(target, 0, count * sizeof(uint16_t));
        return;
    }
    const __m512 scale = _mm512_set1_ps(inverse);
    size_t j = 0;
    for (; j + 32 <= count; j += 32) {
        __m512 low = _mm512_mul_ps(_mm512_loadu_ps(row + j), scale);
        __m512 high = _mm512_mul_ps(_mm512_loadu_ps(row + j + 16), scale);
        _mm512_storeu_si512((void *)(target + j), (__m512i)_mm512_cvtne2ps_pbh(high, low));
    }
    for (; j < count; j += 16) {
        size_t left = count - j;
        __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + j), scale));
        _mm256_mask_storeu_epi16((void *)(target + j), mask, (__m256i)h);
    }
}
#endif

int wp_softmax_row_bf16(float *row, size_t count) {
#if defined(__x86_64__)
    if (!wp_bf16_products()) return -1;
    softmaxBF16(row, count);
    return 0;
#else
    (void)row;
    (void)count;
    return -1;
#endif
}
