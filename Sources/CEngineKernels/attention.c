// Fused attention for the AVX-512 family: for a block of 8 query rows of one head, the scores
// against every key, their softmax and the weighted sum of the values, with the scores kept in a
// per-worker buffer of 8 rows (128 KiB for 4096 keys, resident in L2) instead of a chunk of rows
// going through a general GEMM, memory, a softmax and a second GEMM. See Docs/engine.md,
// "Fused attention".
//
// Layout: `wp_attention_pack` writes one head's keys transposed in blocks of 48 keys (`[c][48]`
// each, keys rounded up to 16, zero past `keys`) and its values padded (`vp[j][c]`, rows of
// `dp` = d rounded up to 16). The scores of rows 2i and 2i + 1 are stored interleaved
// (`p[i][2j + (r & 1)]`), so that one 64-bit broadcast gives both rows' probability of a key.
// The score tile is 8 rows x 48 keys: 24 accumulators, 3 loads and 8 broadcasts per 24 fused
// multiply-adds; the weighted sum's tile 8 rows x 48 columns, the same. Where the width is 8
// past a multiple of 16 and below 48 (SD 1.5's 40), the last 8 columns are not padded to a
// whole vector: the values' last 16 floats hold them duplicated (`v[32], v[32], v[33], ...`) and
// one accumulator per pair of rows takes both rows' sums of those columns, 20 multiply-adds per
// key instead of 24. The row maxima are taken as the scores are stored; the probabilities are
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

// Whether the last 8 of `d` columns go through the pair accumulators (see the top).
static int pairedColumns(int64_t d) { return d % 16 == 8 && d < 48; }

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

int64_t wp_attention_key_block(int64_t keys, int64_t d) {
    if (!wp_attention_fused() || keys <= 0 || d <= 0 || keys > ((int64_t)1 << 24) || d > ((int64_t)1 << 16)) return 0;
    if (wp_attention_fused_fits(keys, d)) return keys;
    // Packed bytes per key: its column of the transposed keys and its padded row of values.
    const int64_t perKey = (d + roundUp16(d)) * (int64_t)sizeof(float);
    const int64_t most = level2Bytes() / 4 * 3 / perKey / 48 * 48;
    // Blocks of fewer keys lose to the products (measured: the VAE's head of 512 in blocks of 384
    // keys, 1.0-1.6x their time); equal blocks otherwise, in 48s.
    if (most < 1024) return 0;
    const int64_t blocks = (keys + most - 1) / most;
    return ((keys + blocks - 1) / blocks + 47) / 48 * 48;
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
    const int64_t whole = pairedColumns(d) ? d - 8 : d;
    for (int64_t j = 0; j < keys; j++) {
        memcpy(vp + j * dp, v + j * vStride, (size_t)whole * sizeof(float));
        if (whole < d) {
            for (int64_t c = 0; c < 8; c++) vp[j * dp + whole + 2 * c] = vp[j * dp + whole + 2 * c + 1] = v[j * vStride + whole + c];
        } else {
            for (int64_t c = d; c < dp; c++) vp[j * dp + c] = 0;
        }
    }
}

#if defined(__x86_64__)
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Lanes of a 16-float vector starting at `first` that lie below `limit`.
INLINE __mmask16 lanesBelow(int64_t first, int64_t limit) {
    const int64_t n = limit - first;
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// 2^y for y <= 0 (a score minus its row's maximum, times log2(e)): y = n + f with n an integer
// and |f| <= 1/2, 2^f from a degree-6 polynomial (fitted for relative error on [-1/2, 1/2]: at
// most 1.3 ulp evaluated in float), and `VSCALEFPS` applying 2^n, zero where `keep` is clear.
// Below -126 the result is that of -126, about 1e-38, where the softmax row gives 0 only for
// -infinity. 13 operations for 16 values, against 18 for `exp` by Cody-Waite reduction and
// Cephes' polynomial (`wp_softmax_row`): this pass was a fifth of the kernel.
TARGET INLINE __m512 exp2NonPositive(__m512 y, __mmask16 keep) {
    y = _mm512_max_ps(y, _mm512_set1_ps(-126.0f));
    const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(y, n);
    __m512 p = _mm512_set1_ps(1.5345800784e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399932068e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6184890717e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503286421e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718246e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, n);
}

// `p[i] = exp(scale * (p[i] - maximum[i % 2]))` over two interleaved rows of `keys` scores,
// computed as 2^(p[i] * scale * log2(e) - maximum * scale * log2(e)) (rows whose flag in `live`
// is 0 get zeros); their two sums into `sums`.
TARGET INLINE void expPair(float *p, int64_t keys, float scale, const float maximum[2], const int live[2], float sums[2]) {
    const double log2e = 1.44269504088896340736;
    const float t0 = (float)(scale * log2e * maximum[0]), t1 = (float)(scale * log2e * maximum[1]);
    const __m512 s = _mm512_set1_ps((float)(scale * log2e));
    const __m512 t = _mm512_setr_ps(t0, t1, t0, t1, t0, t1, t0, t1, t0, t1, t0, t1, t0, t1, t0, t1);
    const __mmask16 rows = (__mmask16)((live[0] ? 0x5555 : 0) | (live[1] ? 0xAAAA : 0));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < 2 * keys; i += 16) {
        const __mmask16 m = lanesBelow(i, 2 * keys);
        const __m512 e = exp2NonPositive(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, p + i), s, t), m & rows);
        _mm512_mask_storeu_ps(p + i, m, e);
        sum = _mm512_add_ps(sum, e);
    }
    sums[0] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0x5555, sum));
    sums[1] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0xAAAA, sum));
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
    const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i high = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < nv; v++) maxima[r] = _mm512_mask_max_ps(maxima[r], lanesBelow(j + 16 * v, keys), maxima[r], acc[r][v]);
    for (int r = 0; r < ROWS; r += 2) {
        float *pair = scores + r * kp + 2 * j;
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(pair + 32 * v, _mm512_permutex2var_ps(acc[r][v], low, acc[r + 1][v]));
            _mm512_storeu_ps(pair + 32 * v + 16, _mm512_permutex2var_ps(acc[r][v], high, acc[r + 1][v]));
        }
    }
}

// How a tile's sums reach the output rows: `out = (out · alpha[r] + sum) · inverse[r]`, or
// `sum · inverse[r]` for the first block of keys (out not read).
typedef struct {
    const float *inverse, *alpha;
    int first;
} Finish;

// `value` (columns `c ..< c + 16` of row `r`, the lanes of `m`) finished into `at`.
TARGET INLINE void finishStore(float *at, __mmask16 m, __m512 value, Finish f, int r) {
    if (!f.first) value = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, at), _mm512_set1_ps(f.alpha[r]), value);
    _mm512_mask_storeu_ps(at, m, _mm512_mul_ps(value, _mm512_set1_ps(f.inverse[r])));
}

// Output columns `c0 ..< c0 + 16 * nv` of the valid rows: Σ_j p[r][j] vp[j], finished.
TARGET INLINE void sumTile(const int nv, const float *p, int64_t kp, const float *vp, int64_t dp, int64_t keys,
                           int64_t c0, int64_t d, int64_t rows, Finish finish, float *out, int64_t outStride) {
    __m512 acc[ROWS][3];
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    const float *line = vp + c0;
    for (int64_t j = 0; j < keys; j++, line += dp) {
        __m512 x[3];
        for (int v = 0; v < nv; v++) x[v] = _mm512_loadu_ps(line + 16 * v);
        for (int r = 0; r < ROWS; r++) {
            const __m512 b = _mm512_set1_ps(p[(r & ~1) * kp + 2 * j + (r & 1)]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(b, x[v], acc[r][v]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        if (r >= rows) break;
        for (int v = 0; v < nv; v++) {
            const int64_t c = c0 + 16 * v;
            finishStore(out + r * outStride + c, lanesBelow(c, d), acc[r][v], finish, r);
        }
    }
}

// Every column of the valid rows where `pairedColumns(d)`: the `nv` (0 to 2) whole vectors as
// `sumTile`, the last 8 columns with one accumulator per pair of rows (lanes 2c and 2c + 1: the
// two rows' column `16 * nv + c`), from a 64-bit broadcast of the two rows' probabilities and the
// values' duplicated last 16 floats.
TARGET INLINE void pairTile(const int nv, const float *p, int64_t kp, const float *vp, int64_t dp, int64_t keys,
                            int64_t rows, Finish finish, float *out, int64_t outStride) {
    __m512 acc[ROWS][2], both[ROWS / 2];
    for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int i = 0; i < ROWS / 2; i++) both[i] = _mm512_setzero_ps();
    const float *line = vp;
    for (int64_t j = 0; j < keys; j++, line += dp) {
        __m512 x[2];
        for (int v = 0; v < nv; v++) x[v] = _mm512_loadu_ps(line + 16 * v);
        const __m512 last = _mm512_loadu_ps(line + 16 * nv);
        for (int i = 0; i < ROWS / 2; i++) {
            const float *pair = p + 2 * i * kp + 2 * j;
            for (int v = 0; v < nv; v++) {
                acc[2 * i][v] = _mm512_fmadd_ps(_mm512_set1_ps(pair[0]), x[v], acc[2 * i][v]);
                acc[2 * i + 1][v] = _mm512_fmadd_ps(_mm512_set1_ps(pair[1]), x[v], acc[2 * i + 1][v]);
            }
            double both64;
            memcpy(&both64, pair, sizeof both64);
            both[i] = _mm512_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(both64)), last, both[i]);
        }
    }
    const __m512i split = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int i = 0; i < ROWS / 2; i++) {
        const int r = 2 * i;
        if (r >= rows) break;
        for (int v = 0; v < nv; v++) {
            finishStore(out + r * outStride + 16 * v, 0xFFFF, acc[r][v], finish, r);
            if (r + 1 < rows) finishStore(out + (r + 1) * outStride + 16 * v, 0xFFFF, acc[r + 1][v], finish, r + 1);
        }
        // Lanes 0-7: row r's last 8 columns; 8-15: row r + 1's (its row pointer 8 floats back,
        // so that lane 8 lands on column c).
        const int64_t c = 16 * nv;
        const __mmask16 lanes = r + 1 < rows ? 0xFFFF : 0x00FF;
        float *atR = out + r * outStride + c, *atNext = out + (r + 1) * outStride + c - 8;
        __m512 last = _mm512_permutexvar_ps(split, both[i]);
        if (!finish.first) {
            const __m512 old = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(0x00FF, atR), lanes & 0xFF00, atNext);
            const __m512 alpha = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(finish.alpha[r]), _mm512_set1_ps(finish.alpha[r + 1]));
            last = _mm512_fmadd_ps(old, alpha, last);
        }
        last = _mm512_mul_ps(last, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(finish.inverse[r]), _mm512_set1_ps(finish.inverse[r + 1])));
        _mm512_mask_storeu_ps(atR, 0x00FF, last);
        if (r + 1 < rows) _mm512_mask_storeu_ps(atNext, 0xFF00, last);
    }
}

// One block of at most 8 rows against one block of keys (all of them, or one of several:
// `state` then holds each row's running maximum and sum, 2 floats a row, and `out` the sums so
// far, rescaled here as a larger maximum appears; `first` and `last` say which block this is).
// Rows past `rows` repeat the last row's query and are neither stored nor given state.
TARGET static void blockAVX512(const float *q, int64_t qStride, int64_t rows, const float *kt, const float *vp,
                               int64_t keys, int64_t d, float scale, float *scores, float *out, int64_t outStride,
                               float *state, int first, int last) {
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

    // A row of only -infinity scores so far gives zeros, as `wp_softmax_row`.
    float inverse[ROWS], alpha[ROWS];
    for (int r = 0; r < ROWS; r += 2) {
        float maximum[2], sums[2], before[2], sumBefore[2];
        int live[2];
        for (int h = 0; h < 2; h++) {
            const int kept = state && r + h < rows && !first;
            before[h] = kept ? state[2 * (r + h)] : -INFINITY;
            sumBefore[h] = kept ? state[2 * (r + h) + 1] : 0;
            const float blockMaximum = _mm512_reduce_max_ps(maxima[r + h]);
            maximum[h] = blockMaximum > before[h] ? blockMaximum : before[h];
            live[h] = maximum[h] != -INFINITY;
            if (!live[h]) maximum[h] = 0;
            // The earlier blocks' share rescaled to the new maximum (0 if there was none).
            alpha[r + h] = before[h] == -INFINITY ? 0 : expf(scale * (before[h] - maximum[h]));
        }
        expPair(scores + r * kp, keys, scale, maximum, live, sums);
        for (int h = 0; h < 2; h++) {
            const float sum = sumBefore[h] * alpha[r + h] + sums[h];
            if (state && r + h < rows) {
                state[2 * (r + h)] = live[h] ? maximum[h] : -INFINITY;
                state[2 * (r + h) + 1] = sum;
            }
            inverse[r + h] = !last ? 1.0f : (live[h] && sum > 0 ? 1.0f / sum : 0);
        }
    }

    const Finish finish = {inverse, alpha, first};
    if (pairedColumns(d)) {
        // A constant `nv` in each call, so that the accumulators stay in registers.
        if (d == 40) pairTile(2, scores, kp, vp, dp, keys, rows, finish, out, outStride);
        else if (d == 24) pairTile(1, scores, kp, vp, dp, keys, rows, finish, out, outStride);
        else pairTile(0, scores, kp, vp, dp, keys, rows, finish, out, outStride);
        return;
    }
    for (int64_t c0 = 0; c0 < dp;) {
        const int64_t left = (dp - c0) / 16;
        if (left >= 3) {
            sumTile(3, scores, kp, vp, dp, keys, c0, d, rows, finish, out, outStride);
            c0 += 48;
        } else if (left == 2) {
            sumTile(2, scores, kp, vp, dp, keys, c0, d, rows, finish, out, outStride);
            c0 += 32;
        } else {
            sumTile(1, scores, kp, vp, dp, keys, c0, d, rows, finish, out, outStride);
            c0 += 16;
        }
    }
}
#endif

int wp_attention_rows_block(const float *q, int64_t qStride, int64_t rows, float *scratch, int64_t keys, int64_t d,
                            float scale, float *out, int64_t outStride, float *state, int first, int last) {
#if defined(__x86_64__)
    if (!wp_attention_fused() || keys <= 0 || d <= 0) return -1;
    const int64_t kp = roundUp16(keys), dp = roundUp16(d);
    const float *kt = scratch, *vp = scratch + d * kp;
    float *scores = scratch + d * kp + keys * dp;
    const double start = wp_profiling() ? wp_profile_clock() : 0;
    for (int64_t i = 0; i < rows; i += ROWS) {
        const int64_t n = rows - i < ROWS ? rows - i : ROWS;
        blockAVX512(q + i * qStride, qStride, n, kt, vp, keys, d, scale, scores, out + i * outStride, outStride,
                    state ? state + 2 * i : NULL, state ? first : 1, state ? last : 1);
    }
    if (start > 0) wp_profile_add(1, state ? 1 : 0, rows, keys, d, wp_profile_clock() - start);
    return 0;
#else
    (void)q, (void)qStride, (void)rows, (void)scratch, (void)keys, (void)d, (void)scale, (void)out, (void)outStride;
    (void)state, (void)first, (void)last;
    return -1;
#endif
}

int wp_attention_rows(const float *q, int64_t qStride, int64_t rows, float *scratch, int64_t keys, int64_t d,
                      float scale, float *out, int64_t outStride) {
    return wp_attention_rows_block(q, qStride, rows, scratch, keys, d, scale, out, outStride, NULL, 1, 1);
}
