// Float products, one thread: oneDNN's `dnnl_sgemm` against the engine's own tiles
// (`wp_gemm_f32_tiles`, CEngineKernels/gemm_f16.c, linked in), C = A B with no transposes, on
// the Winograd products and pointwise convolutions of SD 1.5's UNet step and on a grid around
// them. Operands cycle through copies (up to 36, as a Winograd product's 36 matrices do, and at
// most 256 MiB). Prints each side's GFLOP/s, ours over oneDNN's time, the largest difference of
// the results, and whether `GEMM.f32TilesSuit`'s rule picks ours (keep the two in step). Built
// and run by Benchmarks/gemm-tiles.sh.
//   tiles [ROUNDS]
#include "CEngineKernels.h"

#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// GEMM.f32TilesSuit (Sources/DiffusionEngine/Compute/GEMM.swift).
static int suits(long m, long n, long k) {
    if (m < 160 || k < 320 || n % 64 != 0) return 0;
    return (n == 64 && k <= 640) || (n >= 4096 && k <= 480 && m <= 480);
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 3;
    long shapes[96][3];
    int count = 0;
    // SD 1.5 at 512 px, one batch element: Winograd products at 64x64, 32x32, 16x16 and 8x8
    // (columns = tiles), pointwise convolutions (columns = pixels).
    const long step[][3] = {{640, 64, 640}, {640, 64, 320}, {320, 256, 320}, {320, 4096, 320}, {364, 64, 1280}, {640, 182, 640},
                            {640, 1024, 640}, {1280, 256, 1280}, {320, 242, 640}, {320, 4096, 640}, {1280, 64, 2560}};
    for (size_t i = 0; i < sizeof step / sizeof step[0]; i++, count++)
        for (int j = 0; j < 3; j++) shapes[count][j] = step[i][j];
    const long M[] = {320, 640, 1280}, N[] = {64, 256, 1024, 4096, 9216, 16384}, K[] = {320, 480, 640, 1280};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 6; b++)
            for (int c = 0; c < 4; c++, count++) shapes[count][0] = M[a], shapes[count][1] = N[b], shapes[count][2] = K[c];
    printf("best of %d rounds, one thread\n", rounds);
    for (int s = 0; s < count; s++) {
        const long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        int copies = (int)((256L << 20) / (4 * (m * k + k * n)));
        if (copies < 2) copies = 2;
        if (copies > 36) copies = 36;
        float **a = malloc(sizeof(float *) * copies), **b = malloc(sizeof(float *) * copies);
        for (int c = 0; c < copies; c++) {
            a[c] = aligned_alloc(64, 4 * m * k);
            b[c] = aligned_alloc(64, 4 * k * n);
            for (long i = 0; i < m * k; i++) a[c][i] = (float)((i * 7 + c) % 11 - 5) * 0.01f;
            for (long i = 0; i < k * n; i++) b[c][i] = (float)((i * 5 + c) % 13 - 6) * 0.1f;
        }
        float *theirs = aligned_alloc(64, 4 * m * n), *ours = aligned_alloc(64, 4 * m * n);
        double best[2] = {1e9, 1e9};
        for (int r = 0; r < rounds; r++)
            for (int v = 0; v < 2; v++) {
                const double t0 = now();
                for (int c = 0; c < copies; c++) {
                    if (v == 0) {
                        dnnl_sgemm('N', 'N', m, n, k, 1, a[c], k, b[c], n, 0, theirs, n);
                    } else if (wp_gemm_f32_tiles(m, n, k, a[c], k, b[c], n, ours, n, 0) != 0) {
                        fprintf(stderr, "our tiles are not available here (AVX-512 family needed)\n");
                        return 1;
                    }
                }
                const double t = (now() - t0) / copies;
                if (t < best[v]) best[v] = t;
            }
        double largest = 0;
        for (long i = 0; i < m * n; i++) largest = fmax(largest, fabs((double)theirs[i] - ours[i]));
        const double flops = 2.0 * m * n * k;
        printf("%5ld x %5ld x %5ld  oneDNN %6.1f GFLOP/s  ours %6.1f GFLOP/s  ours/oneDNN %.2f  largest difference %.1e%s\n", m, n, k,
               flops / best[0] / 1e9, flops / best[1] / 1e9, best[1] / best[0], largest, suits(m, n, k) ? "  (ours chosen)" : "");
        for (int c = 0; c < copies; c++) free(a[c]), free(b[c]);
        free(a), free(b), free(theirs), free(ours);
    }
    return 0;
}
