// Summary statistics of a tensor's values (`inspect --stats`), compiled for each kernel family
// and chosen by wp_selected_kernels(). The same figures as TensorCore's `TensorStatistics`
// accumulator, chunk by chunk: counts, extremes and the sum over finite values, then the
// squared deviations from the chunk's mean, chunks merged with Chan et al.'s update. Sums are
// reassociated within a chunk (so they vectorise); the counts, minimum and maximum are exact.
#include "CEngineKernels.h"
#include "half.h"

#include <math.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define CHUNK 4096
#define LANES 16

/// One chunk's values as floats (copied: any alignment).
INLINE void load(int dtype, const unsigned char *s, size_t n, float *restrict v) {
    if (dtype == 0) {
        memcpy(v, s, n * 4);
    } else if (dtype == 1) {
        for (size_t i = 0; i < n; i++) {
            v[i] = wp_half_to_float(wp_load16(s + 2 * i));
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)wp_load16(s + 2 * i) << 16;
            memcpy(v + i, &bits, 4);
        }
    }
}

INLINE void body(int dtype, const void *source, size_t count, wp_statistics *out) {
    const size_t width = dtype == 0 ? 4 : 2;
    float v[CHUNK] __attribute__((aligned(64)));
    int64_t finiteTotal = 0, nanTotal = 0, zeroTotal = 0, beyondTotal = 0;
    float lo = INFINITY, hi = -INFINITY;
    double n = 0, mean = 0, m2 = 0;
    for (size_t start = 0; start < count; start += CHUNK) {
        const size_t len = count - start < CHUNK ? count - start : CHUNK;
        load(dtype, (const unsigned char *)source + start * width, len, v);
        // 16 lanes of counts, extremes and sums, combined in lane order after the chunk, so
        // the loop vectorises (a min/max written as a select is not a reduction the compiler
        // recognises); each lane's sum runs in order.
        int32_t finiteLanes[LANES] = {0}, nanLanes[LANES] = {0}, zeroLanes[LANES] = {0}, beyondLanes[LANES] = {0};
        float lowLanes[LANES], highLanes[LANES];
        double sumLanes[LANES] = {0};
        for (int l = 0; l < LANES; l++) {
            lowLanes[l] = INFINITY;
            highLanes[l] = -INFINITY;
        }
        size_t i = 0;
        for (; i + LANES <= len; i += LANES) {
            for (int l = 0; l < LANES; l++) {
                const float x = v[i + l];
                const int isFinite = (x - x) == 0.0f; // inf - inf and NaN - NaN are NaN
                finiteLanes[l] += isFinite;
                nanLanes[l] += x != x;
                zeroLanes[l] += x == 0.0f;
                beyondLanes[l] += isFinite & (fabsf(x) > 65504.0f);
                const float low = isFinite ? x : INFINITY, high = isFinite ? x : -INFINITY;
                lowLanes[l] = low < lowLanes[l] ? low : lowLanes[l];
                highLanes[l] = high > highLanes[l] ? high : highLanes[l];
                sumLanes[l] += (double)(isFinite ? x : 0.0f);
            }
        }
        for (; i < len; i++) { // the tail goes to lane 0
            const float x = v[i];
            const int isFinite = (x - x) == 0.0f;
            finiteLanes[0] += isFinite;
            nanLanes[0] += x != x;
            zeroLanes[0] += x == 0.0f;
            beyondLanes[0] += isFinite & (fabsf(x) > 65504.0f);
            if (isFinite) {
                lowLanes[0] = x < lowLanes[0] ? x : lowLanes[0];
                highLanes[0] = x > highLanes[0] ? x : highLanes[0];
            }
            sumLanes[0] += (double)(isFinite ? x : 0.0f);
        }
        int64_t finite = 0, nans = 0, zeros = 0, beyond = 0;
        float chunkLo = INFINITY, chunkHi = -INFINITY;
        double sum = 0;
        for (int l = 0; l < LANES; l++) {
            finite += finiteLanes[l];
            nans += nanLanes[l];
            zeros += zeroLanes[l];
            beyond += beyondLanes[l];
            chunkLo = lowLanes[l] < chunkLo ? lowLanes[l] : chunkLo;
            chunkHi = highLanes[l] > chunkHi ? highLanes[l] : chunkHi;
            sum += sumLanes[l];
        }
        finiteTotal += finite;
        nanTotal += nans;
        zeroTotal += zeros;
        beyondTotal += beyond;
        if (finite == 0) continue;
        lo = chunkLo < lo ? chunkLo : lo;
        hi = chunkHi > hi ? chunkHi : hi;
        const double chunkN = (double)finite, chunkMean = sum / chunkN;
        double chunkM2 = 0;
        for (size_t i = 0; i < len; i++) {
#pragma clang fp reassociate(on)
            const float x = v[i];
            const int isFinite = (x - x) == 0.0f;
            const double d = isFinite ? (double)x - chunkMean : 0.0;
            chunkM2 += d * d;
        }
        const double combined = n + chunkN, delta = chunkMean - mean;
        mean += delta * chunkN / combined;
        m2 += chunkM2 + delta * delta * n * chunkN / combined;
        n = combined;
    }
    out->count = (int64_t)count;
    out->finite = finiteTotal;
    out->nan = nanTotal;
    out->zero = zeroTotal;
    out->beyond = beyondTotal;
    out->min = lo;
    out->max = hi;
    out->mean = mean;
    out->m2 = m2;
}

static void statisticsBaseline(int d, const void *s, size_t n, wp_statistics *o) { body(d, s, n, o); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void statisticsAVX2(int d, const void *s, size_t n, wp_statistics *o) { body(d, s, n, o); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void statisticsAVX512(int d, const void *s, size_t n, wp_statistics *o) { body(d, s, n, o); }
#endif

int wp_tensor_statistics(int dtype, const void *source, size_t count, wp_statistics *out) {
    if (dtype < 0 || dtype > 2) return -1;
#if defined(__x86_64__)
    switch (wp_selected_kernels()) {
    case WP_KERNELS_AVX512: statisticsAVX512(dtype, source, count, out); return 0;
    case WP_KERNELS_AVX2: statisticsAVX2(dtype, source, count, out); return 0;
    default: break;
    }
#endif
    statisticsBaseline(dtype, source, count, out);
    return 0;
}
