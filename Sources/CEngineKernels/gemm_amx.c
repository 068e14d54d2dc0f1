// Products with an F16 weight on AMX tiles, in split bfloat16: each float operand is written as
// the sum of two bfloat16 values, `x = hi + lo` (`hi` x rounded to bfloat16, `lo` the rest
// rounded), and `A B` is computed as `hi(A) hi(B) + hi(A) lo(B) + lo(A) hi(B)`, each product of
// two bfloat16 values exact in float and every sum a float sum (`TDPBF16PS`). An F16 value has
// 11 significant bits, so its two parts hold it exactly; a float keeps 16 of its 24 (relative
// error at most 2^-17), and the dropped `lo lo` term is at most 2^-18 of a product. Both are
// far below the 2^-12 (typical) with which an F16 weight already stands for the float it was
// made from, which is why only products with an F16 weight take this route (GEMM.swift): the
// arithmetic is matched to the weight's own precision. Three bfloat16 products on AMX (1 TFLOP/s
// a core for bfloat16 here) cost well under one float product on AVX-512 (about 150 GFLOP/s).
//
// Blocking: `k` in equal blocks of at most KC (whole chunks of 32, one tile's depth); `m` in
// blocks of as many rows as A's 1 MiB buffer holds at that depth (MC x KC values: 512 rows at
// depth 512, 800 at 320), packed once per `k` block (two 1 KiB tiles, hi and lo, per 16 rows and
// 32 of depth); B packed 32 columns at a time (VNNI order: 16 pairs of depth x 16 columns per
// tile, hi and lo) into a buffer of at most 64 KiB, reused by every row block; C in blocks of
// 32 x 32 (four accumulator tiles) over the packed rows. Tails of every dimension are zero-padded in the packing; C's partial blocks go through a
// buffer. The tile state is configured on each call and released after it.
#define _GNU_SOURCE
#include "CEngineKernels.h"
#include "transpose16.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#endif

// The deepest `k` block (the depth is cut into equal blocks of at most this, whole chunks of 32)
// and the most rows packed at a time: A's packed block is then at most 1 MiB (half of L2).
#define KC 512
#define MC 512

static pthread_once_t amxOnce = PTHREAD_ONCE_INIT;
static int amxAvailable = 0;
static int amxDisabled = 0;

#if defined(__x86_64__)
// Linux keeps the 8 KiB tile state off until a process asks for it (ARCH_REQ_XCOMP_PERM with
// XFEATURE_XTILEDATA); without the permission the first tile instruction faults.
#define WP_ARCH_REQ_XCOMP_PERM 0x1023
#define WP_XFEATURE_XTILEDATA 18

static int processorHasAMX(void) {
    unsigned int eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0), "c"(0));
    if (eax < 7) return 0;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const int tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;
    if (!tile || !bf16) return 0;
    // The operating system must save the tile configuration and data (XCR0 bits 17 and 18).
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return 0;
    return syscall(SYS_arch_prctl, WP_ARCH_REQ_XCOMP_PERM, WP_XFEATURE_XTILEDATA) == 0;
}
#endif

static void detectAMX(void) {
    const char *value = getenv("WEIGHTPACK_AMX");
    amxDisabled = value && strcmp(value, "0") == 0;
#if defined(__x86_64__)
    // The split route also rounds with AVX512_BF16 (`VCVTNEPS2BF16`): bf16 products available.
    amxAvailable = wp_bf16_products() && processorHasAMX();
#endif
}

int wp_amx_processor(void) {
    pthread_once(&amxOnce, detectAMX);
    return amxAvailable;
}

int wp_amx_products(void) {
    pthread_once(&amxOnce, detectAMX);
    return amxAvailable && !amxDisabled;
}

// The calling thread's packed A (MC rows x KC, hi and lo) and B (KC x 32, hi and lo), allocated
// on its first product and freed when the thread ends.
typedef struct {
    uint16_t *a;
    uint16_t *b;
} amx_buffers;

static pthread_key_t amxKey;
static pthread_once_t amxKeyOnce = PTHREAD_ONCE_INIT;

static void freeAMXBuffers(void *value) {
    amx_buffers *b = value;
    free(b->a);
    free(b->b);
    free(b);
}

static void createAMXKey(void) { (void)pthread_key_create(&amxKey, freeAMXBuffers); }

static amx_buffers *amxThreadBuffers(void) {
    pthread_once(&amxKeyOnce, createAMXKey);
    amx_buffers *b = pthread_getspecific(amxKey);
    if (b) return b;
    b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->a = aligned_alloc(64, sizeof(uint16_t) * 2 * MC * KC);
    b->b = aligned_alloc(64, sizeof(uint16_t) * 2 * KC * 32);
    if (!b->a || !b->b || pthread_setspecific(amxKey, b) != 0) {
        freeAMXBuffers(b);
        return NULL;
    }
    return b;
}

#if defined(__x86_64__)
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma,amx-tile,amx-bf16")))

typedef struct __attribute__((packed)) {
    uint8_t palette;
    uint8_t startRow;
    uint8_t reserved[14];
    uint16_t bytesPerRow[16];
    uint8_t rows[16];
} tile_config;

// Sixteen floats to their bfloat16 parts: `hi` rounded to nearest even, `lo` the remainder
// (exact in float) rounded the same way.
AMX_TARGET static inline void split16(__m512 x, __m256i *hi, __m256i *lo) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
    const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    *hi = h;
    *lo = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, back));
}

// Sixteen values of a row (`count` of them, the rest zero) as floats: F32 or F16.
AMX_TARGET static inline __m512 load16(const void *row, int half, int64_t at, int64_t count) {
    const __mmask16 mask = count >= 16 ? (__mmask16)0xFFFF : count > 0 ? (__mmask16)((1u << count) - 1) : 0;
    if (half) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + at));
    return _mm512_maskz_loadu_ps(mask, (const float *)row + at);
}

// Rows `m0 ..< m0 + rows` of A, depth `k0 ..< k0 + depth`, packed: per 16 rows and 32 of depth a
// hi tile then a lo tile (16 rows of 32 bfloat16), rows past `rows` and depth past `depth` zero.
// The rows are read 16 ahead (one group) by prefetches: a weight's rows lie far apart (tens of
// KiB for SD's 3x3 convolutions), too many streams for the hardware prefetcher to follow.
AMX_TARGET static void packA(const void *a, int half, int64_t lda, int64_t m0, int64_t rows, int64_t k0, int64_t depth,
                             int64_t chunks, uint16_t *out) {
    const int64_t groups = (rows + 15) / 16;
    const int64_t elementBytes = half ? 2 : 4;
    const int64_t lines = (depth * elementBytes + 63) / 64;
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t r = 0; r < 16; r++) {
            const int64_t row = g * 16 + r;
            const char *source = row < rows ? (const char *)a + ((m0 + row) * lda + k0) * elementBytes : NULL;
            if (row + 16 < rows) {
                const char *ahead = (const char *)a + ((m0 + row + 16) * lda + k0) * elementBytes;
                for (int64_t l = 0; l < lines; l++) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
            }
            for (int64_t c = 0; c < chunks; c++) {
                uint16_t *hiTile = out + ((g * chunks + c) * 2) * 512;
                uint16_t *loTile = hiTile + 512;
                __m256i h0 = _mm256_setzero_si256(), l0 = h0, h1 = h0, l1 = h0;
                if (source) {
                    const int64_t at = 32 * c;
                    split16(load16(source, half, at, depth - at), &h0, &l0);
                    split16(load16(source, half, at + 16, depth - at - 16), &h1, &l1);
                }
                _mm256_store_si256((__m256i *)(hiTile + r * 32), h0);
                _mm256_store_si256((__m256i *)(hiTile + r * 32 + 16), h1);
                _mm256_store_si256((__m256i *)(loTile + r * 32), l0);
                _mm256_store_si256((__m256i *)(loTile + r * 32 + 16), l1);
            }
        }
    }
}

// Two rows of bfloat16 parts interleaved into VNNI pairs: 32-bit element j = even[j] | odd[j] << 16.
AMX_TARGET static inline __m512i pairs(__m256i even, __m256i odd) {
    return _mm512_or_si512(_mm512_cvtepu16_epi32(even), _mm512_slli_epi32(_mm512_cvtepu16_epi32(odd), 16));
}

// Columns `n0 ..< n0 + width` (at most 32) of a row-major float B (`ldb` floats a row), depth
// `k0 ..< k0 + depth`, packed: per 32 of depth and 16 columns a hi tile then a lo tile, each 16
// rows of 16 pairs (depth 2p and 2p + 1 of one column per 32 bits); zero past the edges.
AMX_TARGET static void packBRows(const float *b, int64_t ldb, int64_t n0, int64_t width, int64_t k0, int64_t depth, int64_t chunks,
                                 uint16_t *out) {
    for (int64_t c = 0; c < chunks; c++) {
        for (int64_t h = 0; h < 2; h++) {
            uint16_t *hiTile = out + ((c * 2 + h) * 2) * 512;
            uint16_t *loTile = hiTile + 512;
            const int64_t columns = width - 16 * h;
            for (int64_t p = 0; p < 16; p++) {
                const int64_t k = 32 * c + 2 * p;
                const __m512 zero = _mm512_setzero_ps();
                const __m512 even = k < depth ? load16(b + (k0 + k) * ldb + n0, 0, 16 * h, columns) : zero;
                const __m512 odd = k + 1 < depth ? load16(b + (k0 + k + 1) * ldb + n0, 0, 16 * h, columns) : zero;
                __m256i he, le, ho, lo;
                split16(even, &he, &le);
                split16(odd, &ho, &lo);
                _mm512_store_si512((void *)(hiTile + p * 32), pairs(he, ho));
                _mm512_store_si512((void *)(loTile + p * 32), pairs(le, lo));
            }
        }
    }
}

// B = Wᵀ for an F16 `w[n][ldw]` (a linear layer's weight): rows `n0 ..< n0 + width` of W are
// columns of B. A row's 32 values of one chunk, split, are already 16 VNNI pairs; 16 such rows
// transposed as 32-bit elements make the tile.
AMX_TARGET static void packBTransposedHalves(const uint16_t *w, int64_t ldw, int64_t n0, int64_t width, int64_t k0, int64_t depth,
                                             int64_t chunks, uint16_t *out) {
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t at = 32 * c;
        for (int64_t h = 0; h < 2; h++) {
            __m512 hiRows[16], loRows[16], hiT[16], loT[16];
            for (int64_t j = 0; j < 16; j++) {
                const int64_t column = 16 * h + j;
                if (column >= width || at >= depth) {
                    hiRows[j] = loRows[j] = _mm512_setzero_ps();
                    continue;
                }
                const uint16_t *row = w + (n0 + column) * ldw + k0;
                __m256i h0, l0, h1, l1;
                split16(load16(row, 1, at, depth - at), &h0, &l0);
                split16(load16(row, 1, at + 16, depth - at - 16), &h1, &l1);
                hiRows[j] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1));
                loRows[j] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1));
            }
            wp_transpose16(hiRows, hiT);
            wp_transpose16(loRows, loT);
            uint16_t *hiTile = out + ((c * 2 + h) * 2) * 512;
            uint16_t *loTile = hiTile + 512;
            for (int p = 0; p < 16; p++) {
                _mm512_store_ps((float *)(hiTile + p * 32), hiT[p]);
                _mm512_store_ps((float *)(loTile + p * 32), loT[p]);
            }
        }
    }
}

// The three products of one chunk into the four accumulators (tiles 0-3: rows 0-15 / 16-31 x
// columns 0-15 / 16-31). Tiles 4, 5: A's two row groups; 6, 7: B's two column halves.
#define DOT4()                                                                                                       \
    do {                                                                                                             \
        _tile_dpbf16ps(0, 4, 6);                                                                                     \
        _tile_dpbf16ps(1, 4, 7);                                                                                     \
        _tile_dpbf16ps(2, 5, 6);                                                                                     \
        _tile_dpbf16ps(3, 5, 7);                                                                                     \
    } while (0)

// A 32 x 32 block of C from packed A (`a0`, `a1`: the two row groups' chunks) and packed B,
// `chunks` chunks deep. `load`: start from `c` (`ldc` floats a row) rather than zero.
AMX_TARGET static void block(const uint16_t *a0, const uint16_t *a1, const uint16_t *b, int64_t chunks, float *c, int64_t ldc, int load) {
    const size_t stride = (size_t)ldc * sizeof(float);
    if (load) {
        _tile_loadd(0, c, stride);
        _tile_loadd(1, c + 16, stride);
        _tile_loadd(2, c + 16 * ldc, stride);
        _tile_loadd(3, c + 16 * ldc + 16, stride);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t ch = 0; ch < chunks; ch++) {
        const uint16_t *aHi0 = a0 + ch * 1024, *aHi1 = a1 + ch * 1024;
        const uint16_t *bHi0 = b + (ch * 2) * 1024, *bHi1 = bHi0 + 1024;
        // hi(A) hi(B)
        _tile_loadd(4, aHi0, 64);
        _tile_loadd(5, aHi1, 64);
        _tile_loadd(6, bHi0, 64);
        _tile_loadd(7, bHi1, 64);
        DOT4();
        // hi(A) lo(B)
        _tile_loadd(6, bHi0 + 512, 64);
        _tile_loadd(7, bHi1 + 512, 64);
        DOT4();
        // lo(A) hi(B)
        _tile_loadd(4, aHi0 + 512, 64);
        _tile_loadd(5, aHi1 + 512, 64);
        _tile_loadd(6, bHi0, 64);
        _tile_loadd(7, bHi1, 64);
        DOT4();
    }
    _tile_stored(0, c, stride);
    _tile_stored(1, c + 16, stride);
    _tile_stored(2, c + 16 * ldc, stride);
    _tile_stored(3, c + 16 * ldc + 16, stride);
}

AMX_TARGET static void productAMX(int64_t m, int64_t n, int64_t k, const void *a, int aHalf, int64_t lda, const void *b, int bTransposedHalf,
                                  int64_t ldb, float *c, int64_t ldc, int accumulate, amx_buffers *buffers) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.bytesPerRow[t] = 64;
    }
    _tile_loadconfig(&config);
    float edge[32 * 32] __attribute__((aligned(64)));
    // The depth in equal blocks of whole chunks, at most KC each (640 as 320 + 320, not 512 + 128).
    const int64_t blocks = (k + KC - 1) / KC;
    const int64_t blockDepth = ((k + blocks - 1) / blocks + 31) / 32 * 32;
    for (int64_t k0 = 0; k0 < k; k0 += blockDepth) {
        const int64_t depth = k - k0 < blockDepth ? k - k0 : blockDepth;
        const int64_t chunks = (depth + 31) / 32;
        const int add = accumulate || k0 > 0;
        // As many rows as the packed-A buffer holds at this depth (whole groups of 32), so a
        // shallow product repacks B for fewer row blocks.
        const int64_t blockRows = (MC * (KC / 32) / chunks) / 32 * 32;
        for (int64_t m0 = 0; m0 < m; m0 += blockRows) {
            const int64_t rows = m - m0 < blockRows ? m - m0 : blockRows;
            packA(a, aHalf, lda, m0, rows, k0, depth, chunks, buffers->a);
            for (int64_t n0 = 0; n0 < n; n0 += 32) {
                const int64_t width = n - n0 < 32 ? n - n0 : 32;
                if (bTransposedHalf) packBTransposedHalves(b, ldb, n0, width, k0, depth, chunks, buffers->b);
                else packBRows(b, ldb, n0, width, k0, depth, chunks, buffers->b);
                for (int64_t r0 = 0; r0 < rows; r0 += 32) {
                    const int64_t height = rows - r0 < 32 ? rows - r0 : 32;
                    const uint16_t *a0 = buffers->a + (r0 / 16) * chunks * 1024;
                    const uint16_t *a1 = a0 + chunks * 1024; // the next group: zero-padded, or unused when height <= 16
                    float *out = c + (m0 + r0) * ldc + n0;
                    if (height == 32 && width == 32) {
                        block(a0, a1, buffers->b, chunks, out, ldc, add);
                        continue;
                    }
                    // A partial block: through `edge`, C's part copied in and out.
                    for (int64_t i = 0; i < 32; i++)
                        for (int64_t j = 0; j < 32; j++) edge[i * 32 + j] = add && i < height && j < width ? out[i * ldc + j] : 0;
                    block(a0, height > 16 ? a1 : a0, buffers->b, chunks, edge, 32, 1);
                    for (int64_t i = 0; i < height; i++) memcpy(out + i * ldc, edge + i * 32, sizeof(float) * (size_t)width);
                }
            }
        }
    }
    _tile_release();
}
#endif

int wp_gemm_amx_split(int64_t m, int64_t n, int64_t k, const void *a, int aHalf, int64_t lda, const void *b, int bTransposedHalf,
                      int64_t ldb, float *c, int64_t ldc, int accumulate) {
    if (m < 0 || n < 0 || k < 0 || lda < k || ldc < n || (bTransposedHalf ? ldb < k : ldb < n)) return -3;
    if (m == 0 || n == 0) return 0;
    if (!wp_amx_products()) return -1;
#if defined(__x86_64__)
    if (k == 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
        return 0;
    }
    amx_buffers *buffers = amxThreadBuffers();
    if (!buffers) return -2;
    const double start = wp_profiling() ? wp_profile_clock() : 0;
    productAMX(m, n, k, a, aHalf != 0, lda, b, bTransposedHalf != 0, ldb, c, ldc, accumulate, buffers);
    if (start > 0) wp_profile_add(0, 16 | (bTransposedHalf ? 2 : 0), m, n, k, wp_profile_clock() - start);
    return 0;
#else
    (void)a, (void)b, (void)c, (void)accumulate;
    return -1;
#endif
}
