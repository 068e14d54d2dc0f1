// dnnl_sgemm against dnnl_gemm_bf16bf16f32 (bfloat16 operands, float sums: what
// `generate --compute bf16` calls) on the engine's product shapes, best of 5 each, interleaved.
// The operands are rounded to bfloat16 before timing; the rounding's own cost is printed apart.
//   cc -O2 bf16.c -o bf16 -ldnnl -lm && OMP_NUM_THREADS=1 ./bf16 [M N K ...]
// With arguments, the shapes are those triples instead of the engine's.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <oneapi/dnnl/dnnl.h>

typedef uint16_t bf16;
// Exported by oneDNN 2.6 but not declared in its public header.
dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K, float alpha,
                                    const bf16 *A, dnnl_dim_t lda, const bf16 *B, dnnl_dim_t ldb, float beta,
                                    float *C, dnnl_dim_t ldc);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static bf16 rounded(float f) {
    union { float f; uint32_t u; } x = {f};
    return (bf16)((x.u + 0x7FFF + ((x.u >> 16) & 1)) >> 16);
}

static float filled(long i) { return (float)((i * 7919) % 2001 - 1000) / 1000.0f; }

int main(int argc, char **argv) {
    // m x n x k, B transposed as the engine's linear layers store it: SD 1.5 linear layers at
    // 4096 tokens, a 16x16 im2col convolution (1280 filters, 256 pixels, 11520 taps), a
    // Winograd product at 32x32, attention's two products (one head of 40).
    static long shapes[16][3] = {{4096, 1280, 1280}, {4096, 320, 320}, {1280, 256, 11520}, {640, 1024, 640}, {4096, 4096, 40}, {4096, 40, 4096}};
    size_t count = 6;
    if (argc > 1) {
        count = 0;
        for (int i = 1; i + 2 < argc && count < 16; i += 3, count++)
            for (int j = 0; j < 3; j++) shapes[count][j] = strtol(argv[i + j], NULL, 10);
    }
    for (size_t s = 0; s < count; s++) {
        long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * n * k), *c = malloc(sizeof(float) * m * n);
        bf16 *a16 = malloc(sizeof(bf16) * m * k), *b16 = malloc(sizeof(bf16) * n * k);
        for (long i = 0; i < m * k; i++) a[i] = filled(i);
        for (long i = 0; i < n * k; i++) b[i] = filled(i + 17);
        double bestF32 = INFINITY, bestBF16 = INFINITY, bestRound = INFINITY;
        for (int r = 0; r < 5; r++) {
            double t = now();
            dnnl_sgemm('N', 'T', m, n, k, 1, a, k, b, k, 0, c, n);
            bestF32 = fmin(bestF32, now() - t);
            t = now();
            for (long i = 0; i < m * k; i++) a16[i] = rounded(a[i]);
            for (long i = 0; i < n * k; i++) b16[i] = rounded(b[i]);
            bestRound = fmin(bestRound, now() - t);
            t = now();
            if (dnnl_gemm_bf16bf16f32('N', 'T', m, n, k, 1, a16, k, b16, k, 0, c, n) != dnnl_success) {
                printf("%ld x %ld x %ld: dnnl_gemm_bf16bf16f32 failed\n", m, n, k);
                return 1;
            }
            bestBF16 = fmin(bestBF16, now() - t);
        }
        double flops = 2.0 * m * n * k;
        printf("%5ld x %5ld x %5ld  f32 %6.1f GFLOP/s  bf16 %6.1f GFLOP/s  (%.2fx)  scalar rounding %.2f ms against %.2f ms of bf16 product\n",
               m, n, k, flops / bestF32 / 1e9, flops / bestBF16 / 1e9, bestF32 / bestBF16, bestRound * 1e3, bestBF16 * 1e3);
        free(a); free(b); free(c); free(a16); free(b16);
    }
    return 0;
}
