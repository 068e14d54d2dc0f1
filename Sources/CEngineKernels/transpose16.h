// Shared by the kernels' C files (not part of the module's public header): a 16 x 16 float
// transpose in AVX-512 registers, inlined into each AVX-512 caller (rows.c's transposes,
// gemm_f16.c's packing of a linear layer's F16 weight).
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

// `out[x]` lane `i` = `in[i]` lane `x`: 32-bit and 64-bit interleaves within 128-bit lanes, then
// a 4 x 4 transpose of the lanes (`VSHUFF32X4`).
static inline __attribute__((always_inline, target("avx512f"))) void wp_transpose16(const __m512 in[16], __m512 out[16]) {
    __m512 t[16], u[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(in[2 * k], in[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(in[2 * k], in[2 * k + 1]);
    }
    // u[4k + m], lane L: element 4L + m of rows 4k ..< 4k + 4.
    for (int k = 0; k < 4; k++) {
        const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
        u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int m = 0; m < 4; m++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
        const __m512 w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
        out[m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        out[4 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        out[8 + m] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        out[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}
#endif
