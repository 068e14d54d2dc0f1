// Products with a weight stored as F16 (IEEE half), read where it is mapped: the F16 values
// widened exactly to float as the product packs them, every multiply-add in float. oneDNN's
// `sgemm` needs float operands, so an F16 weight had to be converted whole first, a pass that
// writes twice the weight's bytes for the product to read back: 1.1 to 1.5 times the F32
// product's time where the weight outweighs the data it meets (SD 1.5's im2col convolutions at
// 16 x 16 and 8 x 8, its linear layers at 256 tokens; `Benchmarks/gemm-slabs.sh`). Here the
// weight is read once, at half the F32 bytes, and widened a panel at a time into buffers that stay
// in L1 and L2.
//
// Both products compute C in tiles of 6 rows x 64 columns held in 24 accumulators (four vectors
// of a packed panel and one broadcast per row and `k`), `k` in blocks of 384, C added to after
// the first block. A convolution's `C = W B` (`wp_gemm_f16_weight`): W's rows are the tile's
// broadcast rows, widened six at a time (the next six prefetched meanwhile), over B's rows packed
// into panels of 64 columns, four panels at a time. A linear layer's `C = X Wᵀ`
// (`wp_gemm_f16_weight_linear`): X's rows are broadcast in place, over panels of 64 of W's rows
// widened and transposed in 16 x 16 register blocks (the next panel's rows prefetched by the
// tiles). AVX-512 only; the other families keep the conversion and `sgemm`.
//
// The convolution's product also runs with a float A (`wp_gemm_f32_tiles`: A's rows broadcast
// where they are), for the shapes where oneDNN 2.6's `sgemm` falls well below its own rate
// elsewhere: 64 columns (a Winograd product at 32 x 32, a convolution at 8 x 8) and 4096 or more
// columns with a depth and row count of at most 480 (pointwise convolutions of 320 channels at
// 64 x 64 and above). See `GEMM.f32TilesSuit` and Docs/engine.md.
#include "CEngineKernels.h"
#include "transpose16.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define ROWS 6
#define COLUMNS 64
#define DEPTH 384
// Panels of B per group: the group (at most 384 x 256 floats) stays in L2 while every six rows
// of A pass over it.
#define GROUP 4

// B's panels of the calling thread (GROUP panels of DEPTH x COLUMNS) and six widened rows,
// allocated on its first product and freed when the thread ends.
typedef struct {
    float *panels;
    float *rows;
} f16_buffers;

static pthread_key_t buffersKey;
static pthread_once_t buffersOnce = PTHREAD_ONCE_INIT;

static void freeBuffers(void *value) {
    f16_buffers *b = value;
    free(b->panels);
    free(b->rows);
    free(b);
}

static void createBuffersKey(void) { (void)pthread_key_create(&buffersKey, freeBuffers); }

// NULL when memory is short.
static f16_buffers *threadBuffers(void) {
    pthread_once(&buffersOnce, createBuffersKey);
    f16_buffers *b = pthread_getspecific(buffersKey);
    if (b) return b;
    b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->panels = aligned_alloc(64, sizeof(float) * GROUP * DEPTH * COLUMNS);
    b->rows = aligned_alloc(64, sizeof(float) * ROWS * DEPTH);
    if (!b->panels || !b->rows || pthread_setspecific(buffersKey, b) != 0) {
        freeBuffers(b);
        return NULL;
    }
    return b;
}

int wp_f16_weight_products(void) {
#if defined(__x86_64__)
    return wp_selected_kernels() == WP_KERNELS_AVX512;
#else
    return 0;
#endif
}

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// One row of the tile at one `k`: a broadcast of the row's value times the panel's four vectors.
#define TILE_ROW(r, k)                                                       \
    do {                                                                     \
        const __m512 a = _mm512_set1_ps(rows[(r) * rowStride + (k)]);        \
        c##r##0 = _mm512_fmadd_ps(a, b0, c##r##0);                           \
        c##r##1 = _mm512_fmadd_ps(a, b1, c##r##1);                           \
        c##r##2 = _mm512_fmadd_ps(a, b2, c##r##2);                           \
        c##r##3 = _mm512_fmadd_ps(a, b3, c##r##3);                           \
    } while (0)

// One `k` of the 6 x 64 tile. The 24 accumulators are named variables, not an array indexed in a
// loop, so that every compiler keeps them in registers (gcc did not with the array).
#define TILE_STEP(k)                                                                   \
    do {                                                                               \
        const __m512 b0 = _mm512_load_ps(panel + (k) * COLUMNS);                       \
        const __m512 b1 = _mm512_load_ps(panel + (k) * COLUMNS + 16);                  \
        const __m512 b2 = _mm512_load_ps(panel + (k) * COLUMNS + 32);                  \
        const __m512 b3 = _mm512_load_ps(panel + (k) * COLUMNS + 48);                  \
        TILE_ROW(0, k);                                                                \
        TILE_ROW(1, k);                                                                \
        TILE_ROW(2, k);                                                                \
        TILE_ROW(3, k);                                                                \
        TILE_ROW(4, k);                                                                \
        TILE_ROW(5, k);                                                                \
    } while (0)

// C's tile (`height` rows, `width` columns) from `depth` values of six float rows (`rowStride`
// apart; rows past `height` are read but their sums dropped, so they must be readable) and a
// panel; stored, or added to C when `add`. While it runs, one cache line a `k` of the next six
// F16 rows (`next`, rows `nextStride` bytes apart, `nextLines` lines each) is prefetched.
AVX512 static void tile(int64_t depth, const float *rows, int64_t rowStride, const float *panel, float *c, int64_t ldc, int height,
                        int width, int add, const char *next, int64_t nextStride, int64_t nextLines) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    __m512 c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00, c52 = c00, c53 = c00;
    int64_t k = 0;
    if (next) {
        const int64_t lines = ROWS * nextLines < depth ? ROWS * nextLines : depth;
        const char *line = next;
        int64_t inRow = 0;
        for (; k < lines; k++) {
            _mm_prefetch(line, _MM_HINT_T0);
            line += 64;
            if (++inRow == nextLines) {
                inRow = 0;
                line += nextStride - nextLines * 64;
            }
            TILE_STEP(k);
        }
    }
    for (; k < depth; k++) TILE_STEP(k);
    const __m512 acc[ROWS][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                                 {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}};
    for (int r = 0; r < height; r++) {
        float *out = c + r * ldc;
        for (int j = 0; j < 4 && 16 * j < width; j++) {
            const int left = width - 16 * j;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            __m512 v = acc[r][j];
            if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out + 16 * j));
            _mm512_mask_storeu_ps(out + 16 * j, mask, v);
        }
    }
}

// Rows `k0 ..< k0 + depth` of B into panels of 64 columns, `depth` x 64 floats each, zero-padded.
AVX512 static void packPanels(const float *b, int64_t ldb, int64_t n, int64_t k0, int64_t depth, float *panels) {
    for (int64_t n0 = 0, p = 0; n0 < n; n0 += COLUMNS, p++) {
        float *panel = panels + p * depth * COLUMNS;
        const int64_t width = n - n0 < COLUMNS ? n - n0 : COLUMNS;
        for (int64_t k = 0; k < depth; k++) {
            const float *source = b + (k0 + k) * ldb + n0;
            for (int j = 0; j < 4; j++) {
                const int64_t left = width - 16 * j;
                const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
                _mm512_store_ps(panel + k * COLUMNS + 16 * j, _mm512_maskz_loadu_ps(mask, source + 16 * j));
            }
        }
    }
}

// Six rows of A (`height` of them; the rest zero), columns `k0 ..< k0 + depth`, widened to float.
AVX512 static void widenRows(const uint16_t *a, int64_t lda, int height, int64_t k0, int64_t depth, float *rows) {
    for (int r = 0; r < ROWS; r++) {
        float *out = rows + r * depth;
        if (r >= height) {
            memset(out, 0, sizeof(float) * (size_t)depth);
            continue;
        }
        const uint16_t *source = a + r * lda + k0;
        int64_t k = 0;
        for (; k + 16 <= depth; k += 16) _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(source + k))));
        if (k < depth) {
            const __mmask16 mask = (__mmask16)((1u << (depth - k)) - 1);
            _mm512_mask_storeu_ps(out + k, mask, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, source + k)));
        }
    }
}

// `C = A B` with A's rows F16 (`half`, widened six at a time into `buffers->rows`) or float
// (`single`, broadcast where they are; the last rows, when fewer than six, copied beside zeros).
AVX512 static void productAVX512(int64_t m, int64_t n, int64_t k, const uint16_t *half, const float *single, int64_t lda,
                                 const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate, f16_buffers *buffers) {
    const int64_t elementBytes = half ? 2 : 4;
    for (int64_t k0 = 0; k0 < k; k0 += DEPTH) {
        const int64_t depth = k - k0 < DEPTH ? k - k0 : DEPTH;
        const int add = accumulate || k0 > 0;
        const int64_t nextLines = (depth * elementBytes + 63) / 64;
        for (int64_t g0 = 0; g0 < n; g0 += GROUP * COLUMNS) {
            const int64_t groupWidth = n - g0 < GROUP * COLUMNS ? n - g0 : GROUP * COLUMNS;
            packPanels(b + g0, ldb, groupWidth, k0, depth, buffers->panels);
            for (int64_t m0 = 0; m0 < m; m0 += ROWS) {
                const int height = m - m0 < ROWS ? (int)(m - m0) : ROWS;
                const float *rows = buffers->rows;
                int64_t rowStride = depth;
                if (half) {
                    widenRows(half + m0 * lda, lda, height, k0, depth, buffers->rows);
                } else if (height == ROWS) {
                    rows = single + m0 * lda + k0;
                    rowStride = lda;
                } else {
                    memset(buffers->rows, 0, sizeof(float) * (size_t)(ROWS * depth));
                    for (int r = 0; r < height; r++)
                        memcpy(buffers->rows + r * depth, single + (m0 + r) * lda + k0, sizeof(float) * (size_t)depth);
                }
                // The next six rows (when whole) are prefetched during the group's first tile.
                const char *next = m0 + 2 * ROWS > m ? NULL
                                   : half        ? (const char *)(half + (m0 + ROWS) * lda + k0)
                                                 : (const char *)(single + (m0 + ROWS) * lda + k0);
                for (int64_t n0 = 0, p = 0; n0 < groupWidth; n0 += COLUMNS, p++) {
                    const int width = groupWidth - n0 < COLUMNS ? (int)(groupWidth - n0) : COLUMNS;
                    tile(depth, rows, rowStride, buffers->panels + p * depth * COLUMNS, c + m0 * ldc + g0 + n0, ldc, height, width,
                         add, p == 0 ? next : NULL, lda * elementBytes, nextLines);
                }
            }
        }
    }
}

// Rows `n0 ..< n0 + width` (at most 64) of the F16 `w[n][ldw]`, columns `k0 ..< k0 + depth`,
// widened and transposed into one panel: `panel[k][j] = w[n0 + j][k0 + k]`, zero past `width`.
// 16 x 16 blocks: 16 rows' halves widened, then transposed in registers (`wp_transpose16`).
AVX512 static void packTransposedHalves(const uint16_t *w, int64_t ldw, int64_t n0, int64_t width, int64_t k0, int64_t depth,
                                        float *panel) {
    for (int64_t j0 = 0; j0 < COLUMNS; j0 += 16) {
        for (int64_t kk = 0; kk < depth; kk += 16) {
            const int64_t left = depth - kk < 16 ? depth - kk : 16;
            const __mmask16 mask = (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
            __m512 r[16], out[16];
            for (int i = 0; i < 16; i++)
                r[i] = j0 + i < width ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + (n0 + j0 + i) * ldw + k0 + kk))
                                      : _mm512_setzero_ps();
            // Row kk + x of the panel block is element x of every weight row.
            wp_transpose16(r, out);
            for (int x = 0; x < left; x++) _mm512_store_ps(panel + (kk + x) * COLUMNS + j0, out[x]);
        }
    }
}

// `C[m][n] = X[m][k] W[n][k]ᵀ`: rows of X broadcast in place, W's rows in panels of 64.
AVX512 static void linearAVX512(int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx, const uint16_t *w, int64_t ldw,
                                float *c, int64_t ldc, float *panel, float *rows) {
    for (int64_t k0 = 0; k0 < k; k0 += DEPTH) {
        const int64_t depth = k - k0 < DEPTH ? k - k0 : DEPTH;
        for (int64_t n0 = 0; n0 < n; n0 += COLUMNS) {
            const int width = n - n0 < COLUMNS ? (int)(n - n0) : COLUMNS;
            packTransposedHalves(w, ldw, n0, width, k0, depth, panel);
            for (int64_t m0 = 0; m0 < m; m0 += ROWS) {
                const int height = m - m0 < ROWS ? (int)(m - m0) : ROWS;
                // Tile t prefetches rows 6t ..< 6t + 6 of the next panel's weight rows.
                const int64_t ahead = n0 + COLUMNS + m0;
                const char *next = m0 < COLUMNS && ahead + ROWS <= n ? (const char *)(w + ahead * ldw + k0) : NULL;
                if (height == ROWS) {
                    tile(depth, x + m0 * ldx + k0, ldx, panel, c + m0 * ldc + n0, ldc, height, width, k0 > 0, next, ldw * 2,
                         (depth * 2 + 63) / 64);
                } else {
                    // The last rows copied beside zeros: the tile reads six rows whatever `m` is.
                    memset(rows, 0, sizeof(float) * (size_t)(ROWS * depth));
                    for (int r = 0; r < height; r++) memcpy(rows + r * depth, x + (m0 + r) * ldx + k0, sizeof(float) * (size_t)depth);
                    tile(depth, rows, depth, panel, c + m0 * ldc + n0, ldc, height, width, k0 > 0, NULL, 0, 0);
                }
            }
        }
    }
}
#endif

// `C = A B` with A's rows F16 (`half`) or float (`single`): the checks, the empty depth, the
// thread's buffers and the profile record (`flags`) around `productAVX512`.
static int product(int64_t m, int64_t n, int64_t k, const uint16_t *half, const float *single, int64_t lda, const float *b, int64_t ldb,
                   float *c, int64_t ldc, int accumulate, int32_t flags) {
    if (m < 0 || n < 0 || k < 0 || lda < k || ldb < n || ldc < n) return -3;
    if (m == 0 || n == 0) return 0;
    if (!wp_f16_weight_products()) return -1;
#if defined(__x86_64__)
    if (k == 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
        return 0;
    }
    f16_buffers *buffers = threadBuffers();
    if (!buffers) return -2;
    const double start = wp_profiling() ? wp_profile_clock() : 0;
    productAVX512(m, n, k, half, single, lda, b, ldb, c, ldc, accumulate, buffers);
    if (start > 0) wp_profile_add(0, flags, m, n, k, wp_profile_clock() - start);
    return 0;
#else
    (void)half, (void)single, (void)b, (void)c, (void)accumulate, (void)flags;
    return -1;
#endif
}

int wp_gemm_f16_weight(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const float *b, int64_t ldb, float *c,
                       int64_t ldc, int accumulate) {
    return product(m, n, k, a, NULL, lda, b, ldb, c, ldc, accumulate, 4);
}

int wp_gemm_f32_tiles(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc,
                      int accumulate) {
    return product(m, n, k, NULL, a, lda, b, ldb, c, ldc, accumulate, 8);
}

int wp_gemm_f16_weight_linear(int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx, const uint16_t *w, int64_t ldw,
                              float *c, int64_t ldc) {
    if (m < 0 || n < 0 || k < 0 || ldx < k || ldw < k || ldc < n) return -3;
    if (m == 0 || n == 0) return 0;
    if (!wp_f16_weight_products()) return -1;
#if defined(__x86_64__)
    if (k == 0) {
        for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
        return 0;
    }
    f16_buffers *buffers = threadBuffers();
    if (!buffers) return -2;
    const double start = wp_profiling() ? wp_profile_clock() : 0;
    linearAVX512(m, n, k, x, ldx, w, ldw, c, ldc, buffers->panels, buffers->rows);
    if (start > 0) wp_profile_add(0, 6, m, n, k, wp_profile_clock() - start);
    return 0;
#else
    return -1;
#endif
}
