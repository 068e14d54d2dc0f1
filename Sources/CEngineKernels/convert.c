// Weight conversions, compiled for each kernel family and chosen by wp_selected_kernels().
//
// Each public function dispatches to one of three copies of the same body, compiled with
// `__attribute__((target(...)))`: the body is an always-inline function, which the compiler
// inlines into (and vectorises for) each copy's instruction set.
#include "CEngineKernels.h"
#include "half.h"

#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define WP_X86 1
#endif

#define INLINE static inline __attribute__((always_inline))


INLINE void f16Body(const unsigned char *s, float *t, size_t count) {
    for (size_t i = 0; i < count; i++) t[i] = wp_half_to_float(wp_load16(s + 2 * i));
}

INLINE void bf16Body(const unsigned char *s, float *t, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint32_t bits = (uint32_t)wp_load16(s + 2 * i) << 16;
        memcpy(t + i, &bits, 4);
    }
}

INLINE void int8Block(const int8_t *q, float *out, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) out[i] = (float)q[i] * scale;
}

// 16 values widened per step as vectors (`__builtin_convertvector`: one instruction each in the
// AVX-512 copy, two in the AVX2 one); each value is still `(float)q * scale`, one rounding, so
// every family gives the same bits as `int8Block`.
typedef int8_t wp_i8x16 __attribute__((vector_size(16)));
typedef float wp_f32x16 __attribute__((vector_size(64)));
INLINE void int8BlockVectors(const int8_t *q, float *out, size_t n, float scale) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        wp_i8x16 w;
        memcpy(&w, q + i, sizeof w);
        const wp_f32x16 f = __builtin_convertvector(w, wp_f32x16) * scale;
        memcpy(out + i, &f, sizeof f);
    }
    int8Block(q + i, out + i, n - i, scale);
}

INLINE void int8Body(const int8_t *payload, const unsigned char *scales, size_t rowLength, size_t blockSize,
                     size_t blocksPerRow, size_t firstRow, size_t rows, float *target) {
    for (size_t r = 0; r < rows; r++) {
        size_t row = firstRow + r;
        const int8_t *q = payload + row * rowLength;
        float *out = target + r * rowLength;
        for (size_t k = 0; k < blocksPerRow; k++) {
            float scale = wp_half_to_float(wp_load16(scales + 2 * (row * blocksPerRow + k)));
            size_t start = k * blockSize, end = start + blockSize < rowLength ? start + blockSize : rowLength;
            int8BlockVectors(q + start, out + start, end - start, scale);
        }
    }
}

// --- baseline x86-64 (or any architecture) ---

static void f16Baseline(const void *s, float *t, size_t n) { f16Body(s, t, n); }
static void bf16Baseline(const void *s, float *t, size_t n) { bf16Body(s, t, n); }
static void int8Baseline(const int8_t *p, const void *sc, size_t rl, size_t bs, size_t bpr, size_t fr, size_t rows, float *t) {
    int8Body(p, sc, rl, bs, bpr, fr, rows, t);
}

#ifdef WP_X86
// --- AVX2 + FMA + F16C ---

__attribute__((target("avx2,fma,f16c")))
static void f16AVX2(const void *source, float *t, size_t n) {
    const unsigned char *s = source;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(t + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
    f16Body(s + 2 * i, t + i, n - i);
}
__attribute__((target("avx2,fma,f16c")))
static void bf16AVX2(const void *s, float *t, size_t n) { bf16Body(s, t, n); }
__attribute__((target("avx2,fma,f16c")))
static void int8AVX2(const int8_t *p, const void *sc, size_t rl, size_t bs, size_t bpr, size_t fr, size_t rows, float *t) {
    int8Body(p, sc, rl, bs, bpr, fr, rows, t);
}

// --- AVX-512 (F, BW, VL, DQ) ---

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void f16AVX512(const void *source, float *t, size_t n) {
    const unsigned char *s = source;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(t + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 2 * i))));
    f16Body(s + 2 * i, t + i, n - i);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void bf16AVX512(const void *s, float *t, size_t n) { bf16Body(s, t, n); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void int8AVX512(const int8_t *p, const void *sc, size_t rl, size_t bs, size_t bpr, size_t fr, size_t rows, float *t) {
    int8Body(p, sc, rl, bs, bpr, fr, rows, t);
}
#define PICK(name) (wp_selected_kernels() == WP_KERNELS_AVX512 ? name##AVX512 : wp_selected_kernels() == WP_KERNELS_AVX2 ? name##AVX2 : name##Baseline)
#else
#define PICK(name) name##Baseline
#endif

void wp_f16_to_f32(const void *source, float *target, size_t count) { PICK(f16)(source, target, count); }
void wp_bf16_to_f32(const void *source, float *target, size_t count) { PICK(bf16)(source, target, count); }
void wp_dequantize_int8(const int8_t *payload, const void *scales, size_t rowLength, size_t blockSize,
                        size_t blocksPerRow, size_t firstRow, size_t rows, float *target) {
    PICK(int8)(payload, scales, rowLength, blockSize, blocksPerRow, firstRow, rows, target);
}
