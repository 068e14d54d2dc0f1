// Row softmax, compiled for each kernel family and chosen by wp_selected_kernels(). The same
// arithmetic as the Swift `Kernels.softmaxRow` / `Kernels.exp` it replaces in attention: Cody-Waite
// range reduction and Cephes' expf polynomial (https://www.netlib.org/cephes/), branch-free
// so that it vectorises; 16 partial maxima and sums (a fixed order, whatever the family).
#include "CEngineKernels.h"

#include <math.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float expBranchFree(float x) {
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.0f ? 88.0f : x;
    const float biased = x * 1.44269504088896341f + 12582912.0f;
    const float n = biased - 12582912.0f;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * (r * r) + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &biased, 4);
    uint32_t exponent = (bits - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &exponent, 4);
    return e * scale;
}

INLINE void softmaxBody(float *restrict row, size_t count) {
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
    if (maximum == -INFINITY) {
        memset(row, 0, count * sizeof(float));
        return;
    }
    float partial[16];
    for (int l = 0; l < 16; l++) partial[l] = 0;
    j = 0;
    for (; j + 16 <= count; j += 16) {
        for (int l = 0; l < 16; l++) {
            float v = row[j + l];
            float e = expBranchFree(v - maximum);
            e = v == -INFINITY ? 0.0f : e;
            row[j + l] = e;
            partial[l] += e;
        }
    }
    float sum = 0;
    for (int l = 0; l < 16; l++) sum += partial[l];
    for (; j < count; j++) {
        float v = row[j];
        float p = v == -INFINITY ? 0.0f : expBranchFree(v - maximum);
        row[j] = p;
        sum += p;
    }
    const float inverse = 1.0f / sum;
    for (j = 0; j < count; j++) row[j] *= inverse;
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
