// F16 weights in a product, four ways, on one thread (as each core runs its element in a UNet
// step): F32 weights read by `dnnl_sgemm` where they are; F16 weights converted whole to F32
// first (the engine's way with more than 256 rows); F16 weights converted a slab at a time into
// a buffer that stays in L2, each slab multiplied as soon as it is made (rows of a linear layer's
// weight; columns of a convolution's, accumulating); and the engine's own products reading the
// F16 weight as stored (`CEngineKernels/gemm_f16.c`, linked in). Weights are cycled through
// copies that do not fit the cache, as a step meets them. Built and run by
// Benchmarks/gemm-slabs.sh.
//   slabs [SLAB_KIB] [ROUNDS]
#include "CEngineKernels.h"

#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,f16c"))) static void toFloat(const uint16_t *h, long count, float *f) {
    long i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < count; i++) f[i] = _cvtsh_ss(h[i]);
}

// Rows [0, rows) columns [k0, k0 + kb) of h[rows][ld] into f[rows][kb].
__attribute__((target("avx512f,f16c"))) static void toFloatColumns(const uint16_t *h, long rows, long ld, long k0, long kb, float *f) {
    for (long r = 0; r < rows; r++) toFloat(h + r * ld + k0, kb, f + r * kb);
}

__attribute__((target("f16c"))) static uint16_t toHalf(float f) { return _cvtss_sh(f, 0); }

int main(int argc, char **argv) {
    long slabFloats = (argc > 1 ? atol(argv[1]) : 768) * 256;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    // (m, n, k, transposeB): C[m][n] = A[m][k] B[k][n]; with transposeB the weight is B, stored
    // [n][k] (a linear layer); without, the weight is A, stored [m][k] (a convolution's, columns B).
    struct { int m, n, k, tb; const char *what; } shapes[] = {
        {256, 1280, 1280, 1, "linear 256 tokens 1280->1280"},
        {256, 10240, 1280, 1, "linear 256 tokens 1280->10240 (GEGLU)"},
        {256, 1280, 5120, 1, "linear 256 tokens 5120->1280"},
        {1024, 5120, 640, 1, "linear 1024 tokens 640->5120 (GEGLU)"},
        {1024, 640, 2560, 1, "linear 1024 tokens 2560->640"},
        {4096, 2560, 320, 1, "linear 4096 tokens 320->2560 (GEGLU)"},
        {1280, 256, 11520, 0, "conv 3x3 im2col 1280ch 16x16"},
        {1280, 64, 11520, 0, "conv 3x3 im2col 1280ch 8x8"},
        {1280, 64, 23040, 0, "conv 3x3 im2col 2560->1280 8x8"},
        {640, 256, 5760, 0, "conv 3x3 stride 2 640ch to 16x16"},
        {1280, 256, 1280, 0, "conv 1x1 1280ch 16x16"},
    };
    printf("slab %ld KiB, best of %d rounds, one thread\n", slabFloats / 256, rounds);
    float *slab = aligned_alloc(64, 4 * slabFloats + 64);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const long m = shapes[s].m, n = shapes[s].n, k = shapes[s].k;
        const int tb = shapes[s].tb;
        const long weightCount = tb ? n * k : m * k, inputCount = tb ? m * k : k * n;
        // Enough copies to pass 512 MiB of F32 weights in a cycle.
        int copies = (int)((512L << 20) / (4 * weightCount));
        if (copies < 2) copies = 2;
        if (copies > 16) copies = 16;
        float **w32 = malloc(sizeof(float *) * copies);
        uint16_t **w16 = malloc(sizeof(uint16_t *) * copies);
        for (int c = 0; c < copies; c++) {
            w32[c] = aligned_alloc(64, 4 * weightCount);
            w16[c] = aligned_alloc(64, 2 * weightCount);
            for (long i = 0; i < weightCount; i++) {
                w32[c][i] = (float)((i * 7 + c) % 11 - 5) * 0.01f;
                w16[c][i] = toHalf(w32[c][i]);
            }
        }
        float *whole = aligned_alloc(64, 4 * weightCount);
        float *x = aligned_alloc(64, 4 * inputCount), *y = aligned_alloc(64, 4 * m * n);
        for (long i = 0; i < inputCount; i++) x[i] = (float)(i % 13 - 6) * 0.1f;
        double best[4] = {1e9, 1e9, 1e9, 1e9};
        const double flops = 2.0 * m * n * k;
        for (int r = 0; r < rounds; r++) {
            for (int variant = 0; variant < 4; variant++) {
                double t0 = now();
                for (int c = 0; c < copies; c++) {
                    if (variant == 0) {
                        if (tb) dnnl_sgemm('N', 'T', m, n, k, 1, x, k, w32[c], k, 0, y, n);
                        else dnnl_sgemm('N', 'N', m, n, k, 1, w32[c], k, x, n, 0, y, n);
                    } else if (variant == 1) {
                        toFloat(w16[c], weightCount, whole);
                        if (tb) dnnl_sgemm('N', 'T', m, n, k, 1, x, k, whole, k, 0, y, n);
                        else dnnl_sgemm('N', 'N', m, n, k, 1, whole, k, x, n, 0, y, n);
                    } else if (variant == 3) {
                        const int status = tb ? wp_gemm_f16_weight_linear(m, n, k, x, k, w16[c], k, y, n)
                                              : wp_gemm_f16_weight(m, n, k, w16[c], k, x, n, y, n, 0);
                        if (status != 0) {
                            fprintf(stderr, "F16 products unavailable here (status %d)\n", status);
                            return 1;
                        }
                    } else if (tb && k * 64 <= slabFloats) {
                        // Rows of the weight: whole output columns of C.
                        long rows = slabFloats / k / 16 * 16;
                        for (long n0 = 0; n0 < n; n0 += rows) {
                            long nb = n - n0 < rows ? n - n0 : rows;
                            toFloat(w16[c] + n0 * k, nb * k, slab);
                            dnnl_sgemm('N', 'T', m, nb, k, 1, x, k, slab, k, 0, y + n0, n);
                        }
                    } else {
                        // Columns of the weight (its input channels): C accumulates.
                        const long rowsOfWeight = tb ? n : m;
                        long kb = slabFloats / rowsOfWeight / 16 * 16;
                        if (kb < 16) kb = 16;
                        for (long k0 = 0; k0 < k; k0 += kb) {
                            long b = k - k0 < kb ? k - k0 : kb;
                            toFloatColumns(w16[c], rowsOfWeight, k, k0, b, slab);
                            if (tb) dnnl_sgemm('N', 'T', m, n, b, 1, x + k0, k, slab, b, k0 ? 1 : 0, y, n);
                            else dnnl_sgemm('N', 'N', m, n, b, 1, slab, b, x + k0 * n, n, k0 ? 1 : 0, y, n);
                        }
                    }
                }
                double t = (now() - t0) / copies;
                if (t < best[variant]) best[variant] = t;
            }
        }
        printf("%-40s f32 %7.2f ms (%5.1f GFLOP/s)  f16 whole %.2fx  f16 slabs %.2fx  f16 as stored %.2fx\n", shapes[s].what,
               best[0] * 1e3, flops / best[0] / 1e9, best[1] / best[0], best[2] / best[0], best[3] / best[0]);
        for (int c = 0; c < copies; c++) { free(w32[c]); free(w16[c]); }
        free(w32); free(w16); free(whole); free(x); free(y);
    }
    free(slab);
    return 0;
}
