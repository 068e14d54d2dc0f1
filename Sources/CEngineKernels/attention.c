// Fused attention for the AVX-512 family: for a block of 8 query rows of one head, the scores
// against every key, their softmax and the weighted sum of the values, with the scores kept in a
// per-worker buffer of 8 rows (128 KiB for 4096 keys, resident in L2) instead of a chunk of rows
// going through a general GEMM, memory, a softmax and a second GEMM. See Docs/engine.md,
// "Fused attention".
//
// Layout: `wp_attention_pack` writes one head's keys transposed in blocks of 48 keys (`[c][48]`
// each, keys rounded up to 16, zero past `keys`) and its values padded (`vp[j][c]`, rows of
// `dp` = d rounded up to 16, zero past `d`). The score tile is 8 rows x 48 keys: 24 accumulators,
// 3 loads and 8 broadcasts per 24 fused multiply-adds; the weighted sum's tile 8 rows x 48
// columns, the same. The row maxima are taken as the scores are stored; the probabilities are
// left unnormalised (exp(s - max)) and each output row is multiplied by 1 / its sum at the end,
// which saves the softmax's maximum and scaling passes. Each row's arithmetic is independent of
// the other rows of its block and of how the caller chunks the queries.
#include "CEngineKernels.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define ROWS 8
#define INLINE static inline __attribute__((always_inline))

static int64_t roundUp16(int64_t n) { return (n + 15) / 16 * 16; }

size_t wp_attention_scratch_floats(int64_t keys, int64_t d) {
    if (keys <= 0 || d <= 0) return 0;
    const int64_t kp = roundUp16(keys), dp = roundUp16(d);
    return (size_t)(d * kp + keys * dp + ROWS * kp);
}

int wp_attention_fused(void) {
#if defined(__x86_64__)
    return wp_selected_kernels() == WP_KERNELS_AVX512;
#else
    return 0;
#endif
}

// The core's L2 cache in bytes (glibc reads it from CPUID), or 1 MiB, the smallest of the
// AVX-512 processors, when the system does not say. Read once.
static int64_t level2Bytes(void) {
    static _Atomic int64_t cached = 0;
    int64_t bytes = cached;
    if (bytes == 0) {
        const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
        bytes = reported > 0 ? (int64_t)reported : (int64_t)1 << 20;
        cached = bytes;
    }
    return bytes;
}

int wp_attention_fused_fits(int64_t keys, int64_t d) {
    if (!wp_attention_fused() || keys <= 0 || d <= 0 || keys > ((int64_t)1 << 24) || d > ((int64_t)1 << 16)) return 0;
    const int64_t packedBytes = (d * roundUp16(keys) + keys * roundUp16(d)) * (int64_t)sizeof(float);
    return packedBytes <= level2Bytes() / 4 * 3;
}

void wp_attention_pack(const float *k, int64_t kStride, const float *v, int64_t vStride, int64_t keys, int64_t d,
                       float *scratch) {
    const int64_t kp = roundUp16(keys), dp = roundUp16(d);
    float *kt = scratch, *vp = scratch + d * kp;
    // Blocks of 48 keys (the last 16 or 32 wide), each `[c][width]`: the block of key `j` starts
    // at `kt + j * d`, and a score tile reads it front to back.
    for (int64_t j0 = 0; j0 < kp; j0 += 48) {
        const int64_t width = kp - j0 < 48 ? kp - j0 : 48;
        float *block = kt + j0 * d;
        for (int64_t c = 0; c < d; c++)
            for (int64_t j = 0; j < width; j++) block[c * width + j] = j0 + j < keys ? k[(j0 + j) * kStride + c] : 0;
    }
    for (int64_t j = 0; j < keys; j++) {
        memcpy(vp + j * dp, v + j * vStride, (size_t)d * sizeof(float));
        for (int64_t c = d; c < dp; c++) vp[j * dp + c] = 0;
    }
}

#if defined(__x86_64__)
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Lanes of a 16-float vector starting at `first` that lie below `limit`.
INLINE __mmask16 lanesBelow(int64_t first, int64_t limit) {
    const int64_t n = limit - first;
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// exp(x) for x <= 0 (a score minus its row's maximum): Cody-Waite range reduction and Cephes'
// expf polynomial, as `wp_softmax_row`, with `VSCALEFPS` applying the power of two (below
// -87.3 the result is that of -87.3, about 1e-38, where the softmax row gives 0 only for
// -infinity).
TARGET INLINE __m512 expNonPositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.33654f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}

// `row[j] = exp(scale * row[j] - shift)` for `count` floats; returns their sum (16 partial sums).
TARGET INLINE float expRow(float *row, int64_t count, float scale, float shift) {
    const __m512 s = _mm512_set1_ps(scale), t = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; j += 16) {
        const __mmask16 m = lanesBelow(j, count);
        const __m512 e = expNonPositive(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, row + j), s, t));
        _mm512_mask_storeu_ps(row + j, m, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(sum);
}

// Dot products of the 8 rows with keys `j ..< j + 16 * nv`, stored and folded into the running
// maxima (lanes at or past `keys` left out); the scale is applied in the exp pass.
TARGET INLINE void scoreTile(const int nv, const float *const q[ROWS], const float *kt, int64_t kp, int64_t d,
                             int64_t j, int64_t keys, float *scores, __m512 maxima[ROWS]) {
    __m512 acc[ROWS][3];
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    const float *column = kt + j * d;
    for (int64_t c = 0; c < d; c++, column += 16 * nv) {
        __m512 k[3];
        for (int v = 0; v < nv; v++) k[v] = _mm512_loadu_ps(column + 16 * v);
        for (int r = 0; r < ROWS; r++) {
            const __m512 b = _mm512_set1_ps(q[r][c]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(b, k[v], acc[r][v]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        for (int v = 0; v < nv; v++) {
            const __m512 s = acc[r][v];
            _mm512_storeu_ps(scores + r * kp + j + 16 * v, s);
            maxima[r] = _mm512_mask_max_ps(maxima[r], lanesBelow(j + 16 * v, keys), maxima[r], s);
        }
    }
}

// Output columns `c0 ..< c0 + 16 * nv` of the valid rows: Σ_j p[r][j] vp[j] times 1 / sum.
TARGET INLINE void sumTile(const int nv, const float *p, int64_t kp, const float *vp, int64_t dp, int64_t keys,
                           int64_t c0, int64_t d, int64_t rows, const float inverse[ROWS], float *out, int64_t outStride) {
    __m512 acc[ROWS][3];
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    const float *line = vp + c0;
    for (int64_t j = 0; j < keys; j++, line += dp) {
        __m512 x[3];
        for (int v = 0; v < nv; v++) x[v] = _mm512_loadu_ps(line + 16 * v);
        for (int r = 0; r < ROWS; r++) {
            const __m512 b = _mm512_set1_ps(p[r * kp + j]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(b, x[v], acc[r][v]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        if (r >= rows) break;
        const __m512 s = _mm512_set1_ps(inverse[r]);
        for (int v = 0; v < nv; v++) {
            const int64_t c = c0 + 16 * v;
            _mm512_mask_storeu_ps(out + r * outStride + c, lanesBelow(c, d), _mm512_mul_ps(acc[r][v], s));
        }
    }
}

// One block of at most 8 rows. Rows past `rows` repeat the last row's query and are not stored.
TARGET static void blockAVX512(const float *q, int64_t qStride, int64_t rows, const float *kt, const float *vp,
                               int64_t keys, int64_t d, float scale, float *scores, float *out, int64_t outStride) {
    const int64_t kp = roundUp16(keys), dp = roundUp16(d);
    const float *rowsOfQ[ROWS];
    __m512 maxima[ROWS];
    for (int r = 0; r < ROWS; r++) {
        rowsOfQ[r] = q + (r < rows ? r : rows - 1) * qStride;
        maxima[r] = _mm512_set1_ps(-INFINITY);
    }
    int64_t j = 0;
    for (; j + 48 <= kp; j += 48) scoreTile(3, rowsOfQ, kt, kp, d, j, keys, scores, maxima);
    if (kp - j == 32) scoreTile(2, rowsOfQ, kt, kp, d, j, keys, scores, maxima);
    if (kp - j == 16) scoreTile(1, rowsOfQ, kt, kp, d, j, keys, scores, maxima);

    float inverse[ROWS];
    for (int r = 0; r < ROWS; r++) {
        float *row = scores + r * kp;
        const float maximum = _mm512_reduce_max_ps(maxima[r]);
        if (r >= rows || maximum == -INFINITY) {
            // Not stored, or a row of only -infinity scores: zeros (as `wp_softmax_row`).
            memset(row, 0, (size_t)keys * sizeof(float));
            inverse[r] = 0;
            continue;
        }
        inverse[r] = 1.0f / expRow(row, keys, scale, scale * maximum);
    }

    for (int64_t c0 = 0; c0 < dp;) {
        const int64_t left = (dp - c0) / 16;
        if (left >= 3) {
            sumTile(3, scores, kp, vp, dp, keys, c0, d, rows, inverse, out, outStride);
            c0 += 48;
        } else if (left == 2) {
            sumTile(2, scores, kp, vp, dp, keys, c0, d, rows, inverse, out, outStride);
            c0 += 32;
        } else {
            sumTile(1, scores, kp, vp, dp, keys, c0, d, rows, inverse, out, outStride);
            c0 += 16;
        }
    }
}
#endif

int wp_attention_rows(const float *q, int64_t qStride, int64_t rows, float *scratch, int64_t keys, int64_t d,
                      float scale, float *out, int64_t outStride) {
#if defined(__x86_64__)
    if (!wp_attention_fused() || keys <= 0 || d <= 0) return -1;
    const int64_t kp = roundUp16(keys), dp = roundUp16(d);
    const float *kt = scratch, *vp = scratch + d * kp;
    float *scores = scratch + d * kp + keys * dp;
    for (int64_t i = 0; i < rows; i += ROWS) {
        const int64_t n = rows - i < ROWS ? rows - i : ROWS;
        blockAVX512(q + i * qStride, qStride, n, kt, vp, keys, d, scale, scores, out + i * outStride, outStride);
    }
    return 0;
#else
    (void)q, (void)qStride, (void)rows, (void)scratch, (void)keys, (void)d, (void)scale, (void)out, (void)outStride;
    return -1;
#endif
}
