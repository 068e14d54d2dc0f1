// Run-time CPU detection, WEIGHTPACK_KERNELS, and the oneDNN matrix product.
#define _GNU_SOURCE
#include "CEngineKernels.h"

#include <dlfcn.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <oneapi/dnnl/dnnl.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static wp_kernels processor = WP_KERNELS_BASELINE;
static wp_kernels selected = WP_KERNELS_BASELINE;
static wp_request_status request = WP_REQUEST_NONE;
static char requestText[32];
static int bf16Products = 0;
static int amxProducts = 0;
static void (*setThreads)(int);
static int (*maxThreads)(void);

static wp_kernels detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the operating system saves the wider registers.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return WP_KERNELS_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        return WP_KERNELS_AVX2;
    }
#endif
    return WP_KERNELS_BASELINE;
}

// AVX512_BF16's dot products, which oneDNN's bf16 product uses (without them it emulates them).
static int detectBF16(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

static void initialise(void) {
    processor = detect();
    selected = processor;
    const char *value = getenv("WEIGHTPACK_KERNELS");
    if (value && *value) {
        strncpy(requestText, value, sizeof requestText - 1);
        wp_kernels wanted;
        if (strcmp(value, "avx512") == 0) wanted = WP_KERNELS_AVX512;
        else if (strcmp(value, "avx2") == 0) wanted = WP_KERNELS_AVX2;
        else if (strcmp(value, "baseline") == 0) wanted = WP_KERNELS_BASELINE;
        else { request = WP_REQUEST_UNKNOWN; goto done; }
        if (wanted > processor) request = WP_REQUEST_CLAMPED;
        else { request = WP_REQUEST_HONOURED; selected = wanted; }
    }
done:
    // oneDNN reads the limit once, before its first product: set it now. Its lowest family is
    // SSE4.1; below that (or on another architecture) it runs its reference code.
    switch (selected) {
    case WP_KERNELS_AVX512: dnnl_set_max_cpu_isa(dnnl_cpu_isa_all); break;
    case WP_KERNELS_AVX2: dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx2); break;
    case WP_KERNELS_BASELINE: dnnl_set_max_cpu_isa(dnnl_cpu_isa_sse41); break;
    }
    bf16Products = selected == WP_KERNELS_AVX512 && detectBF16();
    amxProducts = bf16Products && dnnl_get_effective_cpu_isa() == dnnl_cpu_isa_avx512_core_amx;
    // oneDNN in Debian threads with OpenMP (libgomp, loaded with it); the thread count is a
    // per-thread setting, reached here without linking the OpenMP library directly.
    setThreads = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    maxThreads = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
}

void wp_backend_init(void) { pthread_once(&once, initialise); }

wp_kernels wp_processor_kernels(void) { wp_backend_init(); return processor; }
wp_kernels wp_selected_kernels(void) { wp_backend_init(); return selected; }
wp_request_status wp_request(void) { wp_backend_init(); return request; }
const char *wp_request_text(void) { wp_backend_init(); return requestText; }

void wp_dnnl_version(int *major, int *minor, int *patch) {
    const dnnl_version_t *v = dnnl_version();
    *major = v->major; *minor = v->minor; *patch = v->patch;
}

const char *wp_dnnl_isa_name(void) {
    wp_backend_init();
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "SSE4.1";
    case dnnl_cpu_isa_avx: return "AVX";
    case dnnl_cpu_isa_avx2: return "AVX2";
    case dnnl_cpu_isa_avx2_vnni: return "AVX2-VNNI";
    case dnnl_cpu_isa_avx512_core: return "AVX-512";
    case dnnl_cpu_isa_avx512_core_vnni: return "AVX-512-VNNI";
    case dnnl_cpu_isa_avx512_core_bf16: return "AVX-512-BF16";
    case dnnl_cpu_isa_avx512_core_amx: return "AMX";
    case dnnl_cpu_isa_all: return "all";
    default: return "other";
    }
}

int wp_sgemm(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
             float *c, int64_t ldc, int threads) {
    wp_backend_init();
    if (setThreads && maxThreads && threads > 0 && maxThreads() != threads) setThreads(threads);
    const double start = wp_profiling() ? wp_profile_clock() : 0;
    dnnl_status_t status = dnnl_sgemm(transposeA ? 'T' : 'N', transposeB ? 'T' : 'N', m, n, k, alpha,
                                      a, lda, b, ldb, beta, c, ldc);
    if (start > 0) wp_profile_add(0, (transposeA ? 1 : 0) | (transposeB ? 2 : 0), m, n, k, wp_profile_clock() - start);
    return status == dnnl_success ? 0 : (int)status;
}

// Declared by oneDNN 2.6's library (exported, `DNNL_API`) but not by its public header: the
// same row-major product as dnnl_sgemm with bfloat16 operands and float accumulation and result.
typedef uint16_t wp_bf16;
dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K, float alpha,
                                    const wp_bf16 *A, dnnl_dim_t lda, const wp_bf16 *B, dnnl_dim_t ldb, float beta,
                                    float *C, dnnl_dim_t ldc);

int wp_bf16_products(void) { wp_backend_init(); return bf16Products; }

// Rows of floats to bfloat16, rounded to nearest even by VCVTNEPS2BF16 (which, whatever MXCSR
// says, reads subnormal inputs as zero and keeps NaNs quiet); the tail of each row through the
// same instruction under a mask.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void rowsToBF16(const float *source, int64_t rows, int64_t columns, int64_t ld, wp_bf16 *target, int64_t targetLd) {
    for (int64_t r = 0; r < rows; r++) {
        const float *s = source + r * ld;
        wp_bf16 *t = target + r * targetLd;
        int64_t c = 0;
        for (; c + 32 <= columns; c += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + c + 16), _mm512_loadu_ps(s + c));
            _mm512_storeu_si512((void *)(t + c), (__m512i)v);
        }
        for (; c < columns; c += 16) {
            int64_t left = columns - c;
            __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, s + c));
            _mm256_mask_storeu_epi16((void *)(t + c), mask, (__m256i)h);
        }
    }
}

// Per-thread buffers for the converted operands, grown as needed and freed when the thread ends
// (the dispatch pool retires idle workers).
typedef struct {
    wp_bf16 *buffer[2];
    size_t capacity[2];
    float *widened[2];
    size_t widenedCapacity[2];
} operand_buffers;

static pthread_key_t buffersKey;
static pthread_once_t buffersOnce = PTHREAD_ONCE_INIT;

static void freeBuffers(void *value) {
    operand_buffers *b = value;
    free(b->buffer[0]);
    free(b->buffer[1]);
    free(b->widened[0]);
    free(b->widened[1]);
    free(b);
}

static void createBuffersKey(void) { (void)pthread_key_create(&buffersKey, freeBuffers); }

static operand_buffers *threadBuffers(void) {
    pthread_once(&buffersOnce, createBuffersKey);
    operand_buffers *b = pthread_getspecific(buffersKey);
    if (!b) {
        b = calloc(1, sizeof *b);
        if (b && pthread_setspecific(buffersKey, b) != 0) { free(b); b = NULL; }
    }
    return b;
}

// `*buffer` holding at least rows x columns elements of `size` bytes, reallocated (64-byte
// aligned) when it holds fewer; NULL when the count overflows or memory is short.
static void *growBuffer(void **buffer, size_t *capacity, size_t size, int64_t rows, int64_t columns) {
    size_t count;
    if (rows < 0 || columns < 0 || __builtin_mul_overflow((size_t)rows, (size_t)columns, &count)) return NULL;
    if (count == 0) count = 1;
    if (count > *capacity) {
        size_t bytes;
        if (__builtin_mul_overflow(count, size, &bytes) || bytes > SIZE_MAX - 63) return NULL;
        free(*buffer);
        *buffer = aligned_alloc(64, (bytes + 63) / 64 * 64);
        *capacity = *buffer ? count : 0;
    }
    return *buffer;
}

static wp_bf16 *grow(operand_buffers *b, int which, int64_t rows, int64_t columns) {
    return growBuffer((void **)&b->buffer[which], &b->capacity[which], sizeof(wp_bf16), rows, columns);
}

int wp_round_bf16(const float *source, int64_t rows, int64_t columns, int64_t ld, uint16_t *target, int64_t targetLd) {
    wp_backend_init();
    if (!bf16Products) return -1;
    rowsToBF16(source, rows, columns, ld, target, targetLd);
    return 0;
}

int wp_gemm_bf16(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                 float *c, int64_t ldc, int threads) {
    return wp_gemm_bf16_rounded(transposeA, transposeB, m, n, k, alpha, a, NULL, lda, b, NULL, ldb, beta, c, ldc, threads);
}

// An operand of wp_gemm_bf16_rounded as bfloat16: `rounded` as it is, or `source` (rows of
// `columns`, `*ld` apart) rounded into the calling thread's buffer `which`, whose leading
// dimension replaces `*ld`. NULL when the buffer cannot be had.
static const wp_bf16 *operand(const float *source, const wp_bf16 *rounded, int64_t rows, int64_t columns, int64_t *ld, int which) {
    if (rounded) return rounded;
    operand_buffers *buffers = threadBuffers();
    wp_bf16 *buffer = buffers ? grow(buffers, which, rows, columns) : NULL;
    if (!buffer) return NULL;
    rowsToBF16(source, rows, columns, *ld, buffer, columns);
    *ld = columns > 0 ? columns : 1;
    return buffer;
}

// Rows of bfloat16 values as floats (exact): `rounded`'s widened, or else `source`'s rounded as
// rowsToBF16 rounds them and widened back.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void rowsToWidened(const float *source, const wp_bf16 *rounded, int64_t rows, int64_t columns, int64_t ld, float *target,
                          int64_t targetLd) {
    for (int64_t r = 0; r < rows; r++) {
        float *t = target + r * targetLd;
        for (int64_t c = 0; c < columns; c += 16) {
            int64_t left = columns - c;
            __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            __m256i h = rounded ? _mm256_maskz_loadu_epi16(mask, rounded + r * ld + c)
                                : (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, source + r * ld + c));
            __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_mask_storeu_ps(t + c, mask, _mm512_castsi512_ps(wide));
        }
    }
}

// An operand of wp_gemm_bf16_widened as floats holding bfloat16 values, in the calling thread's
// buffer `which` (rows of `columns`, replacing `*ld`). NULL when the buffer cannot be had.
static const float *widenedOperand(const float *source, const wp_bf16 *rounded, int64_t rows, int64_t columns, int64_t *ld, int which) {
    operand_buffers *buffers = threadBuffers();
    float *buffer = buffers ? growBuffer((void **)&buffers->widened[which], &buffers->widenedCapacity[which], sizeof(float), rows, columns) : NULL;
    if (!buffer) return NULL;
    rowsToWidened(source, rounded, rows, columns, *ld, buffer, columns);
    *ld = columns > 0 ? columns : 1;
    return buffer;
}

// The operands of a product as stored: op(A) is m x k, stored m rows of k or (transposed) k rows
// of m; likewise op(B), k x n.
typedef struct { int64_t rowsA, columnsA, rowsB, columnsB; } stored_shapes;

static stored_shapes storedShapes(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k) {
    return (stored_shapes){transposeA ? k : m, transposeA ? m : k, transposeB ? n : k, transposeB ? k : n};
}

// With AMX, oneDNN 2.6's bfloat16 product computes into a buffer of its own and then adds that
// into C one element at a time: about 1 ns per element of C whatever the depth
// (`Benchmarks/gemm-bf16.sh`), so a product of little depth, attention's q·kᵀ over a head of 40
// or 64, ran at a third to four fifths of dnnl_sgemm's speed. Such products take the operands
// rounded to bfloat16 and widened back to floats through dnnl_sgemm instead: the same products
// (a product of two bfloat16 values is exact in float), summed in float.
enum { WIDENED_MAX_DEPTH = 64 };

int wp_gemm_bf16_widened(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                         float beta, float *c, int64_t ldc, int threads) {
    wp_backend_init();
    if (!bf16Products) return -1;
    stored_shapes shape = storedShapes(transposeA, transposeB, m, n, k);
    int64_t ldWA = lda, ldWB = ldb;
    const float *wa = widenedOperand(a, a16, shape.rowsA, shape.columnsA, &ldWA, 0);
    const float *wb = widenedOperand(b, b16, shape.rowsB, shape.columnsB, &ldWB, 1);
    if (!wa || !wb) return -2;
    return wp_sgemm(transposeA, transposeB, m, n, k, alpha, wa, ldWA, wb, ldWB, beta, c, ldc, threads);
}

int wp_gemm_bf16_rounded(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                         float beta, float *c, int64_t ldc, int threads) {
    wp_backend_init();
    if (!bf16Products) return -1;
    if (amxProducts && k <= WIDENED_MAX_DEPTH)
        return wp_gemm_bf16_widened(transposeA, transposeB, m, n, k, alpha, a, a16, lda, b, b16, ldb, beta, c, ldc, threads);
    if (setThreads && maxThreads && threads > 0 && maxThreads() != threads) setThreads(threads);
    stored_shapes shape = storedShapes(transposeA, transposeB, m, n, k);
    int64_t ldRA = lda, ldRB = ldb;
    const wp_bf16 *ra = operand(a, a16, shape.rowsA, shape.columnsA, &ldRA, 0);
    const wp_bf16 *rb = operand(b, b16, shape.rowsB, shape.columnsB, &ldRB, 1);
    if (!ra || !rb) return -2;
    dnnl_status_t status = dnnl_gemm_bf16bf16f32(transposeA ? 'T' : 'N', transposeB ? 'T' : 'N', m, n, k, alpha,
                                                 ra, ldRA, rb, ldRB, beta, c, ldc);
    return status == dnnl_success ? 0 : (int)status;
}

static _Atomic int gemmThreads = 0;
static _Atomic int singleThreadedSections = 0;

int wp_gemm_threads(int fallback) {
    int value = atomic_load_explicit(&gemmThreads, memory_order_relaxed);
    if (value > 0) return value;
    static const char *names[] = {"WEIGHTPACK_GEMM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"};
    value = fallback;
    for (int i = 0; i < 3; i++) {
        const char *text = getenv(names[i]);
        if (!text || !*text) continue;
        char *end = NULL;
        long parsed = strtol(text, &end, 10);
        if (*end == 0 && parsed > 0) { value = parsed > 256 ? 256 : (int)parsed; break; }
    }
    if (value < 1) value = 1;
    int expected = 0;
    atomic_compare_exchange_strong(&gemmThreads, &expected, value);
    return atomic_load_explicit(&gemmThreads, memory_order_relaxed);
}

void wp_set_gemm_threads(int threads) {
    atomic_store_explicit(&gemmThreads, threads < 1 ? 1 : (threads > 256 ? 256 : threads), memory_order_relaxed);
}

void wp_single_threaded_enter(void) { atomic_fetch_add_explicit(&singleThreadedSections, 1, memory_order_relaxed); }
void wp_single_threaded_leave(void) { atomic_fetch_sub_explicit(&singleThreadedSections, 1, memory_order_relaxed); }
int wp_single_threaded(void) { return atomic_load_explicit(&singleThreadedSections, memory_order_relaxed) > 0; }
