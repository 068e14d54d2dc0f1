// int8 products for `--compute int8`: a weight stored as int8 blocks (32 values per scale along
// its input dimension) times activations quantised the same way as they arrive, with AVX-512
// VNNI's byte dot products (`VPDPBUSD`: four u8 x s8 products summed into each 32-bit lane).
// The arithmetic is ggml's Q8_0 x Q8_0 (what stable-diffusion.cpp runs for q8_0 weights): every
// 32-value block of an activation row gets its own scale (amax / 127, values rounded to nearest
// even), each block's integer dot product is exact, and the block sums are scaled and added in
// float. See Docs/engine.md, "int8 compute".
//
// Layouts. Activations are packed in tiles of 32 rows (pixels or tokens): per tile and block,
// 8 groups of 32 lanes x 4 bytes (lane = row, the 4 bytes = 4 consecutive values of that row,
// stored as q + 128 so the unsigned operand of VPDPBUSD holds them), then the tile's scales,
// one float per row and block. The weight is read where it is stored (rows of `k` int8 values)
// and broadcast 4 bytes at a time; since the activations carry +128, each block's sum is
// corrected by 128 x (sum of the weight block's values), made once per weight with its float
// scales (`wp_q8_weight_aux`).
#include "CEngineKernels.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define TILE_ROWS 32
#define BLOCK 32
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int vnni = 0;

static void detect(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    vnni = wp_selected_kernels() == WP_KERNELS_AVX512 && __builtin_cpu_supports("avx512vnni");
#endif
}

int wp_q8_products(void) {
    pthread_once(&once, detect);
    return vnni;
}

size_t wp_q8_activation_bytes(int64_t rows, int64_t k) {
    if (rows <= 0 || k <= 0 || k % BLOCK) return 0;
    size_t tiles = (size_t)(rows + TILE_ROWS - 1) / TILE_ROWS, blocks = (size_t)k / BLOCK;
    return tiles * blocks * (TILE_ROWS * BLOCK + TILE_ROWS * sizeof(float));
}

// Where tile `t`'s bytes and scales start.
static inline uint8_t *tileBytes(void *packed, size_t t, size_t blocks) {
    return (uint8_t *)packed + t * blocks * (TILE_ROWS * BLOCK + TILE_ROWS * sizeof(float));
}
static inline float *tileScales(void *packed, size_t t, size_t blocks) {
    return (float *)(tileBytes(packed, t, blocks) + blocks * TILE_ROWS * BLOCK);
}

// 16 rows' values of one block, quantised: `x[j]` holds value j of the block for the 16 rows.
// Writes the rows' scales and their bytes (4 values per 32-bit lane, +128) for groups 0..7.
TARGET static void quantizeColumnBlock(const __m512 x[BLOCK], __mmask16 live, float *scales, uint8_t *bytes) {
    __m512 amax = _mm512_setzero_ps();
    for (int j = 0; j < BLOCK; j++) amax = _mm512_max_ps(amax, _mm512_abs_ps(x[j]));
    amax = _mm512_maskz_mov_ps(live, amax);
    const __m512 scale = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
    const __mmask16 nonzero = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 inverse = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(127.0f), amax);
    _mm512_storeu_ps(scales, scale);
    const __m512i bias = _mm512_set1_epi32(128), low = _mm512_set1_epi32(0xFF);
    for (int g = 0; g < BLOCK / 4; g++) {
        __m512i word = _mm512_setzero_si512();
        for (int b = 0; b < 4; b++) {
            // Nearest even (the default rounding mode); |x| * 127 / amax <= 127 up to rounding.
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x[4 * g + b], inverse));
            q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
            word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_and_si512(_mm512_add_epi32(q, bias), low), 8 * b));
        }
        _mm512_storeu_si512((void *)(bytes + g * TILE_ROWS * 4), word);
    }
}

// Rows adjacent (im2col columns: a row's values `strideValue` apart): each block of 16 rows is
// 32 plain loads. Blocks outermost, so consecutive tiles read consecutive bytes of each line.
TARGET static void quantizeColumnsAVX512(const float *a, int64_t rows, int64_t k, int64_t strideValue, void *packed) {
    const size_t blocks = (size_t)k / BLOCK, tiles = (size_t)(rows + TILE_ROWS - 1) / TILE_ROWS;
    for (size_t kb = 0; kb < blocks; kb++) {
        for (size_t t = 0; t < tiles; t++) {
            uint8_t *bytes = tileBytes(packed, t, blocks) + kb * TILE_ROWS * BLOCK;
            float *scales = tileScales(packed, t, blocks) + kb * TILE_ROWS;
            for (int half = 0; half < 2; half++) {
                const int64_t first = (int64_t)t * TILE_ROWS + half * 16;
                const int64_t live = rows - first < 0 ? 0 : (rows - first > 16 ? 16 : rows - first);
                const __mmask16 mask = live == 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);
                const float *base = a + first + (int64_t)kb * BLOCK * strideValue;
                __m512 x[BLOCK];
                for (int j = 0; j < BLOCK; j++) x[j] = live ? _mm512_maskz_loadu_ps(mask, base + j * strideValue) : _mm512_setzero_ps();
                quantizeColumnBlock(x, mask, scales + half * 16, bytes + half * 64);
            }
        }
    }
}

// Values adjacent (a linear layer's input rows, `strideRow` apart): one row's block at a time,
// its 8 words of 4 bytes stored to their lanes.
TARGET static void quantizeRowsAVX512(const float *a, int64_t rows, int64_t k, int64_t strideRow, void *packed) {
    const size_t blocks = (size_t)k / BLOCK, tiles = (size_t)(rows + TILE_ROWS - 1) / TILE_ROWS;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (size_t t = 0; t < tiles; t++) {
        uint8_t *bytes = tileBytes(packed, t, blocks);
        float *scales = tileScales(packed, t, blocks);
        // Lanes past the last row: zero values (stored as 128) and zero scales.
        const int64_t live = rows - (int64_t)t * TILE_ROWS < TILE_ROWS ? rows - (int64_t)t * TILE_ROWS : TILE_ROWS;
        if (live < TILE_ROWS) {
            memset(bytes, 0x80, blocks * TILE_ROWS * BLOCK);
            memset(scales, 0, blocks * TILE_ROWS * sizeof(float));
        }
        for (int64_t lane = 0; lane < live; lane++) {
            const float *row = a + ((int64_t)t * TILE_ROWS + lane) * strideRow;
            for (size_t kb = 0; kb < blocks; kb++) {
                const __m512 x0 = _mm512_loadu_ps(row + kb * BLOCK), x1 = _mm512_loadu_ps(row + kb * BLOCK + 16);
                const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
                const float inverse = amax > 0 ? 127.0f / amax : 0.0f;
                scales[kb * TILE_ROWS + lane] = amax / 127.0f;
                const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
                const __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x0, _mm512_set1_ps(inverse))), lo), hi);
                const __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x1, _mm512_set1_ps(inverse))), lo), hi);
                const __m256i q = _mm256_xor_si256(
                    _mm256_set_m128i(_mm512_cvtepi32_epi8(q1), _mm512_cvtepi32_epi8(q0)), flip);
                uint8_t *out = bytes + kb * TILE_ROWS * BLOCK + lane * 4;
                uint32_t words[8];
                _mm256_storeu_si256((__m256i *)words, q);
                for (int g = 0; g < 8; g++) memcpy(out + g * TILE_ROWS * 4, &words[g], 4);
            }
        }
    }
}

// A convolution's patches quantised straight from its input (im2col and quantisation in one
// pass, no float columns): row r is output pixel `firstPixel + r`, its values the patch in the
// weight's flattened (channel, kernel row, kernel column) order, zero outside the image.
TARGET static void quantizePatchesAVX512(const float *input, const wp_q8_geometry *g, int64_t firstPixel, int64_t rows, void *packed) {
    const int64_t area = g->kernelHeight * g->kernelWidth, k = g->channels * area;
    const size_t blocks = (size_t)k / BLOCK, tiles = (size_t)(rows + TILE_ROWS - 1) / TILE_ROWS;
    const int64_t plane = g->height * g->width;
    // Blocks outermost: one block's few channels and kernel taps are swept over every pixel in
    // order, so the input is read in streams the prefetcher follows and each line is reused by
    // the neighbouring taps (pixel-major order read from ~30 channel planes at once and stalled
    // on their misses).
    for (size_t kb = 0; kb < blocks; kb++) {
        int64_t cs[BLOCK], kys[BLOCK], kxs[BLOCK];
        {
            const int64_t start = (int64_t)kb * BLOCK;
            int64_t c = start / area, ky = (start % area) / g->kernelWidth, kx = start % g->kernelWidth;
            for (int j = 0; j < BLOCK; j++) {
                cs[j] = c, kys[j] = ky, kxs[j] = kx;
                if (++kx == g->kernelWidth) {
                    kx = 0;
                    if (++ky == g->kernelHeight) ky = 0, c++;
                }
            }
        }
        for (size_t t = 0; t < tiles; t++) {
            for (int half = 0; half < 2; half++) {
                const int64_t first = (int64_t)t * TILE_ROWS + half * 16;
                const int64_t live = rows - first < 0 ? 0 : (rows - first > 16 ? 16 : rows - first);
                const __mmask16 mask = live == 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);
                const int64_t p0 = firstPixel + first, oy0 = p0 / g->outWidth, ox0 = p0 % g->outWidth;
                // One output row and stride 1: each value is 16 adjacent input floats.
                const int oneRow = g->stride == 1 && ox0 + 16 <= g->outWidth;
                __m512 x[BLOCK];
                if (!live) {
                    for (int j = 0; j < BLOCK; j++) x[j] = _mm512_setzero_ps();
                } else if (oneRow) {
                    for (int j = 0; j < BLOCK; j++) {
                        const int64_t iy = oy0 - g->padTop + kys[j], ix0 = ox0 - g->padLeft + kxs[j];
                        if (iy < 0 || iy >= g->height) {
                            x[j] = _mm512_setzero_ps();
                            continue;
                        }
                        // Lanes whose column lies inside the row: ix0 + lane in [0, width).
                        const int64_t lo = ix0 < 0 ? -ix0 : 0, hi = g->width - ix0 < 16 ? g->width - ix0 : 16;
                        const __mmask16 inside = hi > lo ? (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1)) : 0;
                        x[j] = _mm512_maskz_loadu_ps(inside & mask, input + cs[j] * plane + iy * g->width + ix0);
                    }
                } else {
                    // Pixel coordinates per lane, for gathers.
                    int32_t ys[16], xs[16];
                    for (int lane = 0; lane < 16; lane++) {
                        ys[lane] = (int32_t)((p0 + lane) / g->outWidth);
                        xs[lane] = (int32_t)((p0 + lane) % g->outWidth);
                    }
                    const __m512i oy = _mm512_mullo_epi32(_mm512_loadu_si512(ys), _mm512_set1_epi32((int)g->stride));
                    const __m512i ox = _mm512_mullo_epi32(_mm512_loadu_si512(xs), _mm512_set1_epi32((int)g->stride));
                    for (int j = 0; j < BLOCK; j++) {
                        const __m512i iy = _mm512_add_epi32(oy, _mm512_set1_epi32((int)(kys[j] - g->padTop)));
                        const __m512i ix = _mm512_add_epi32(ox, _mm512_set1_epi32((int)(kxs[j] - g->padLeft)));
                        const __mmask16 inside = mask & _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512())
                                                 & _mm512_cmplt_epi32_mask(iy, _mm512_set1_epi32((int)g->height))
                                                 & _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512())
                                                 & _mm512_cmplt_epi32_mask(ix, _mm512_set1_epi32((int)g->width));
                        const __m512i index = _mm512_add_epi32(_mm512_mullo_epi32(iy, _mm512_set1_epi32((int)g->width)), ix);
                        x[j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), inside, index, input + cs[j] * plane, 4);
                    }
                }
                quantizeColumnBlock(x, mask, tileScales(packed, t, blocks) + kb * TILE_ROWS + half * 16,
                                    tileBytes(packed, t, blocks) + kb * TILE_ROWS * BLOCK + half * 64);
            }
        }
    }
}

int wp_q8_quantize_patches(const float *input, const wp_q8_geometry *g, int64_t firstPixel, int64_t rows, void *packed) {
    if (!wp_q8_products()) return -1;
    if (rows <= 0 || firstPixel < 0 || g->channels <= 0 || g->kernelHeight <= 0 || g->kernelWidth <= 0 || g->stride <= 0
        || g->height <= 0 || g->width <= 0 || g->outWidth <= 0)
        return -2;
    if ((g->channels * g->kernelHeight * g->kernelWidth) % BLOCK) return -2;
    // Per-lane arithmetic is 32-bit: the input plane and pixel numbers must fit.
    if (g->height * g->width > INT32_MAX / 2 || firstPixel + rows > INT32_MAX / 2) return -2;
    quantizePatchesAVX512(input, g, firstPixel, rows, packed);
    return 0;
}

int wp_q8_quantize(const float *a, int64_t rows, int64_t k, int64_t strideRow, int64_t strideValue, void *packed) {
    if (!wp_q8_products()) return -1;
    if (rows <= 0 || k <= 0 || k % BLOCK) return -2;
    if (strideRow == 1) quantizeColumnsAVX512(a, rows, k, strideValue, packed);
    else if (strideValue == 1) quantizeRowsAVX512(a, rows, k, strideRow, packed);
    else return -2;
    return 0;
}

TARGET static void auxAVX512(const int8_t *values, const uint16_t *scales, int64_t rows, int64_t k, int64_t blocksPerRow,
                             float *scaleOut, int32_t *correction) {
    const int64_t blocks = k / BLOCK;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t kb = 0; kb < blocks; kb++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(values + r * k + kb * BLOCK));
            // Sums of (q + 128) over each 8 bytes, then 128 x (sum of q) = 128 x (that - 32 x 128).
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, flip), _mm256_setzero_si256());
            const int64_t sum = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2)
                                + _mm256_extract_epi64(s, 3) - BLOCK * 128;
            correction[r * blocks + kb] = (int32_t)(128 * sum);
            scaleOut[r * blocks + kb] = _cvtsh_ss(scales[r * blocksPerRow + kb]);
        }
    }
}

int wp_q8_weight_aux(const int8_t *values, const void *scales, int64_t rows, int64_t k, int64_t blocksPerRow, float *scaleOut,
                     int32_t *correction) {
    if (!wp_q8_products()) return -1;
    if (rows < 0 || k <= 0 || k % BLOCK || blocksPerRow < k / BLOCK) return -2;
    auxAVX512(values, (const uint16_t *)scales, rows, k, blocksPerRow, scaleOut, correction);
    return 0;
}

// Stores 16 rows x 4 columns (`f[j]`: column j's 16 rows) to rows `ldcRow` apart, columns
// adjacent: transposed in registers, then one 16-byte store per row (masked to `cols` columns
// and `live` rows).
TARGET static void storeRows(float *c, int64_t ldcRow, const __m512 f[4], int cols, int live) {
    const __m512 t0 = _mm512_unpacklo_ps(f[0], f[1]), t1 = _mm512_unpackhi_ps(f[0], f[1]);
    const __m512 t2 = _mm512_unpacklo_ps(f[2], f[3]), t3 = _mm512_unpackhi_ps(f[2], f[3]);
    // u[i]'s 128-bit lane L holds row 4L + i.
    const __m512 u[4] = {_mm512_shuffle_ps(t0, t2, 0x44), _mm512_shuffle_ps(t0, t2, 0xEE), _mm512_shuffle_ps(t1, t3, 0x44),
                         _mm512_shuffle_ps(t1, t3, 0xEE)};
    const __mmask8 columns = (__mmask8)((1u << cols) - 1);
    for (int r = 0; r < live; r++) {
        const __m512 v = u[r & 3];
        __m128 row;
        switch (r >> 2) {
        case 0: row = _mm512_extractf32x4_ps(v, 0); break;
        case 1: row = _mm512_extractf32x4_ps(v, 1); break;
        case 2: row = _mm512_extractf32x4_ps(v, 2); break;
        default: row = _mm512_extractf32x4_ps(v, 3); break;
        }
        _mm_mask_storeu_ps(c + r * ldcRow, columns, row);
    }
}

// The same figures for ggml Q8_0 rows (`rowBytes` apart): blocks of an f16 scale then 32 int8.
TARGET static void auxQ80AVX512(const uint8_t *blocks, int64_t rows, int64_t k, int64_t rowBytes, float *scaleOut, int32_t *correction) {
    const int64_t count = k / BLOCK;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t kb = 0; kb < count; kb++) {
            const uint8_t *block = blocks + r * rowBytes + kb * (BLOCK + 2);
            const __m256i v = _mm256_loadu_si256((const __m256i *)(block + 2));
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, flip), _mm256_setzero_si256());
            const int64_t sum = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2)
                                + _mm256_extract_epi64(s, 3) - BLOCK * 128;
            uint16_t half;
            memcpy(&half, block, 2);
            correction[r * count + kb] = (int32_t)(128 * sum);
            scaleOut[r * count + kb] = _cvtsh_ss(half);
        }
    }
}

int wp_q8_weight_aux_q8_0(const void *blocks, int64_t rows, int64_t k, int64_t rowBytes, float *scaleOut, int32_t *correction) {
    if (!wp_q8_products()) return -1;
    if (rows < 0 || k <= 0 || k % BLOCK || rowBytes < k / BLOCK * (BLOCK + 2)) return -2;
    auxQ80AVX512((const uint8_t *)blocks, rows, k, rowBytes, scaleOut, correction);
    return 0;
}

// One tile: 32 rows x COLS weight rows over blocks [kb0, kb1), its sums kept in registers and
// added to (`add`) or written over C(r, j) at `c[r * ldcRow + j * ldcColumn]`; `live` rows of
// the 32 are real. With ldcRow != 1 the caller passes every block at once (add is 0).
#define TILE(COLS)                                                                                                                     \
    TARGET static void tile##COLS(const uint8_t *restrict bytes, const float *restrict rowScales, const int8_t *restrict w, int64_t ldw, \
                                  int64_t blockBytes,                                                                                  \
                                  const float *restrict wScale, const int32_t *restrict wCorr, int64_t blocks, int64_t kb0, int64_t kb1, \
                                  float *restrict c, int64_t ldcRow, int64_t ldcColumn, int live, int add) {                           \
        const __mmask16 m0 = live >= 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);                                                     \
        const __mmask16 m1 = live >= 32 ? 0xFFFF : live <= 16 ? 0 : (__mmask16)((1u << (live - 16)) - 1);                             \
        __m512 f0[COLS], f1[COLS];                                                                                                     \
        for (int j = 0; j < COLS; j++) {                                                                                               \
            f0[j] = add ? _mm512_maskz_loadu_ps(m0, c + j * ldcColumn) : _mm512_setzero_ps();                                          \
            f1[j] = add ? _mm512_maskz_loadu_ps(m1, c + 16 + j * ldcColumn) : _mm512_setzero_ps();                                     \
        }                                                                                                                              \
        for (int64_t kb = kb0; kb < kb1; kb++) {                                                                                       \
            /* The sums start at minus the weight block's correction, so they end corrected. */                                   \
            __m512i s0[COLS], s1[COLS];                                                                                                \
            for (int j = 0; j < COLS; j++) s0[j] = s1[j] = _mm512_set1_epi32(-wCorr[j * blocks + kb]);                                 \
            const uint8_t *pa = bytes + kb * TILE_ROWS * BLOCK;                                                                        \
            const int8_t *pw = w + kb * blockBytes;                                                                                    \
            _Pragma("GCC unroll 8") for (int g = 0; g < BLOCK / 4; g++) {                                                              \
                const __m512i a0 = _mm512_loadu_si512((const void *)(pa + g * 128));                                                   \
                const __m512i a1 = _mm512_loadu_si512((const void *)(pa + g * 128 + 64));                                              \
                _Pragma("GCC unroll 4") for (int j = 0; j < COLS; j++) {                                                               \
                    int32_t word;                                                                                                      \
                    memcpy(&word, pw + j * ldw + g * 4, 4);                                                                            \
                    const __m512i b = _mm512_set1_epi32(word);                                                                         \
                    s0[j] = _mm512_dpbusd_epi32(s0[j], a0, b);                                                                         \
                    s1[j] = _mm512_dpbusd_epi32(s1[j], a1, b);                                                                         \
                }                                                                                                                      \
            }                                                                                                                          \
            const __m512 d0 = _mm512_loadu_ps(rowScales + kb * TILE_ROWS), d1 = _mm512_loadu_ps(rowScales + kb * TILE_ROWS + 16);       \
            _Pragma("GCC unroll 4") for (int j = 0; j < COLS; j++) {                                                                   \
                const __m512 ws = _mm512_set1_ps(wScale[j * blocks + kb]);                                                             \
                f0[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[j]), _mm512_mul_ps(d0, ws), f0[j]);                                      \
                f1[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[j]), _mm512_mul_ps(d1, ws), f1[j]);                                      \
            }                                                                                                                          \
        }                                                                                                                              \
        if (ldcRow == 1) {                                                                                                             \
            for (int j = 0; j < COLS; j++) {                                                                                           \
                _mm512_mask_storeu_ps(c + j * ldcColumn, m0, f0[j]);                                                                   \
                if (m1) _mm512_mask_storeu_ps(c + 16 + j * ldcColumn, m1, f1[j]);                                                      \
            }                                                                                                                          \
        } else {                                                                                                                       \
            __m512 h0[4] = {0}, h1[4] = {0};                                                                                           \
            for (int j = 0; j < COLS; j++) {                                                                                           \
                h0[j] = f0[j];                                                                                                         \
                h1[j] = f1[j];                                                                                                         \
            }                                                                                                                          \
            storeRows(c, ldcRow, h0, COLS, live < 16 ? live : 16);                                                                     \
            if (live > 16) storeRows(c + 16 * ldcRow, ldcRow, h1, COLS, live - 16);                                                    \
        }                                                                                                                              \
    }
TILE(1)
TILE(2)
TILE(3)
TILE(4)

typedef void (*tileFunction)(const uint8_t *, const float *, const int8_t *, int64_t, int64_t, const float *, const int32_t *, int64_t,
                             int64_t, int64_t, float *, int64_t, int64_t, int, int);

TARGET static void gemmAVX512(int64_t rows, int64_t n, int64_t k, const void *packed, const int8_t *w, int64_t ldw, int64_t blockBytes,
                              const float *wScale,
                              const int32_t *wCorr, float *c, int64_t ldcRow, int64_t ldcColumn, int accumulate) {
    static const tileFunction tiles[5] = {0, tile1, tile2, tile3, tile4};
    const int64_t blocks = k / BLOCK, tileCount = (rows + TILE_ROWS - 1) / TILE_ROWS;
    // Blocks per pass: 2048 values keep four tiles' activations (256 KiB) in L2 while the
    // weight rows stream through L1; four tiles reuse each weight row. With rows of C apart
    // (a linear layer's output) every block goes in one pass, so C is written once.
    const int64_t blocksPerPass = ldcRow == 1 ? 64 : blocks, tilesPerPass = 4;
    for (int64_t kb0 = 0; kb0 < blocks; kb0 += blocksPerPass) {
        const int64_t kb1 = kb0 + blocksPerPass < blocks ? kb0 + blocksPerPass : blocks;
        const int add = accumulate || kb0 > 0;
        for (int64_t t0 = 0; t0 < tileCount; t0 += tilesPerPass) {
            const int64_t t1 = t0 + tilesPerPass < tileCount ? t0 + tilesPerPass : tileCount;
            for (int64_t n0 = 0; n0 < n; n0 += 4) {
                const int cols = n - n0 < 4 ? (int)(n - n0) : 4;
                for (int64_t t = t0; t < t1; t++) {
                    const int64_t first = t * TILE_ROWS;
                    const int live = rows - first >= TILE_ROWS ? TILE_ROWS : (int)(rows - first);
                    tiles[cols](tileBytes((void *)packed, (size_t)t, (size_t)blocks), tileScales((void *)packed, (size_t)t, (size_t)blocks),
                                w + n0 * ldw, ldw, blockBytes, wScale + n0 * blocks, wCorr + n0 * blocks, blocks, kb0, kb1,
                                c + first * ldcRow + n0 * ldcColumn, ldcRow, ldcColumn, live, add);
                }
            }
        }
    }
}

int wp_q8_gemm(int64_t rows, int64_t n, int64_t k, const void *packed, const int8_t *w, int64_t ldw, int64_t blockBytes,
               const float *wScale, const int32_t *wCorr, float *c, int64_t ldcRow, int64_t ldcColumn, int accumulate) {
    if (!wp_q8_products()) return -1;
    if (rows <= 0 || n <= 0 || k <= 0 || k % BLOCK || blockBytes < BLOCK || ldw < (k / BLOCK - 1) * blockBytes + BLOCK) return -2;
    if (ldcRow != 1 && ldcColumn != 1) return -2;
    // Accumulating into rows of C apart is not supported (one pass writes them).
    if (ldcRow != 1 && accumulate) return -2;
    gemmAVX512(rows, n, k, packed, w, ldw, blockBytes, wScale, wCorr, c, ldcRow, ldcColumn, accumulate);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The error of that quantisation, for the quality budget's prediction (`ActivationRecorder`):
// portable code, the same float arithmetic as the kernels above (scale amax / 127, values times
// 127 / amax rounded to nearest even and clamped to ±127), so it runs on any processor.

// Adds each value's squared error (value − scale × q) to `sums`, for one row of `k` values.
static void addRowNoise(const float *row, int64_t k, double *sums) {
    for (int64_t b = 0; b < k; b += BLOCK) {
        float amax = 0.0f;
        for (int j = 0; j < BLOCK; j++) {
            const float a = row[b + j] < 0 ? -row[b + j] : row[b + j];
            amax = a > amax ? a : amax;
        }
        if (!(amax > 0.0f)) continue;  // zeros quantise exactly
        const float inverse = 127.0f / amax, scale = amax / 127.0f;
        for (int j = 0; j < BLOCK; j++) {
            // Nearest even for |v| < 2^22 in float arithmetic: what VCVTPS2DQ does by default.
            const float v = row[b + j] * inverse;
            float q = (v + 0x1.8p23f) - 0x1.8p23f;
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            const double e = (double)row[b + j] - (double)scale * (double)q;
            sums[b + j] += e * e;
        }
    }
}

int wp_q8_noise(const float *a, int64_t rows, int64_t k, int64_t strideRow, int64_t strideValue, double *sums) {
    if (rows <= 0 || k <= 0 || k % BLOCK || strideRow <= 0 || strideValue <= 0) return -2;
    if (strideValue == 1) {
        for (int64_t r = 0; r < rows; r++) addRowNoise(a + r * strideRow, k, sums);
        return 0;
    }
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) return -3;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < k; j++) row[j] = a[r * strideRow + j * strideValue];
        addRowNoise(row, k, sums);
    }
    free(row);
    return 0;
}

int wp_q8_noise_patches(const float *input, const wp_q8_geometry *g, int64_t firstPixel, int64_t rows, double *sums) {
    if (rows <= 0 || firstPixel < 0 || g->channels <= 0 || g->kernelHeight <= 0 || g->kernelWidth <= 0 || g->stride <= 0
        || g->height <= 0 || g->width <= 0 || g->outWidth <= 0)
        return -2;
    const int64_t area = g->kernelHeight * g->kernelWidth, k = g->channels * area, plane = g->height * g->width;
    if (k % BLOCK) return -2;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) return -3;
    for (int64_t p = firstPixel; p < firstPixel + rows; p++) {
        const int64_t oy = p / g->outWidth, ox = p % g->outWidth;
        int64_t j = 0;
        for (int64_t c = 0; c < g->channels; c++) {
            for (int64_t ky = 0; ky < g->kernelHeight; ky++) {
                const int64_t iy = oy * g->stride - g->padTop + ky;
                for (int64_t kx = 0; kx < g->kernelWidth; kx++, j++) {
                    const int64_t ix = ox * g->stride - g->padLeft + kx;
                    row[j] = iy >= 0 && iy < g->height && ix >= 0 && ix < g->width ? input[c * plane + iy * g->width + ix] : 0.0f;
                }
            }
        }
        addRowNoise(row, k, sums);
    }
    free(row);
    return 0;
}
