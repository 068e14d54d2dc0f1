// Products with an F16 weight, one thread: the split bfloat16 products on AMX tiles
// (`wp_gemm_amx_split`, CEngineKernels/gemm_amx.c) against the float products the engine runs
// without AMX (our F16 products reading the weight as stored, `wp_gemm_f16_weight` and
// `wp_gemm_f16_weight_linear`, up to 256 rows or pixels; oneDNN's `dnnl_sgemm` on the weight
// converted to floats beyond, as `GEMM.f16WeightMaximumRows` decides), on the shapes of an SD 1.5
// UNet step at 512 px: linear layers (C = X Wᵀ), im2col and pointwise convolutions (C = W B) and
// Winograd products (C = U V, U the float transform of an F16 weight, against float tiles or
// sgemm as `GEMM.multiplyInFloat` picks). Operands cycle through copies (at most 256 MiB) so the
// weight comes from memory as in the step. Prints each side's GFLOP/s (for the split products the
// float multiply-adds they stand for), their time ratio, and the largest difference of the two
// results relative to Σ|a b|. Built and run by Benchmarks/gemm-split.sh.
//   split [ROUNDS]
#include "CEngineKernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// IEEE half from a float in [-4, 4] (round to nearest; no subnormals or overflow arise here).
static uint16_t half(float x) {
    union { float f; uint32_t u; } v = {x};
    const uint32_t sign = (v.u >> 16) & 0x8000;
    int32_t exponent = (int32_t)((v.u >> 23) & 0xFF) - 127 + 15;
    uint32_t mantissa = v.u & 0x7FFFFF;
    if (exponent <= 0) return (uint16_t)sign;
    uint32_t h = sign | ((uint32_t)exponent << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}

static float widen(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    union { uint32_t u; float f; } v = {exponent ? sign | ((exponent - 15 + 127) << 23) | (mantissa << 13) : sign};
    return v.f;
}

// GEMM.f32TilesSuit (Sources/DiffusionEngine/Compute/GEMM.swift): a float product the engine
// runs on our tiles rather than oneDNN's sgemm.
static int tilesSuit(long m, long n, long k) {
    if (m < 160 || k < 320 || n % 64 != 0) return 0;
    return (n == 64 && k <= 640) || (n >= 4096 && k <= 480 && m <= 480);
}

enum { LINEAR, CONVOLUTION, WINOGRAD };

typedef struct {
    int kind;
    long m, n, k;
} shape;

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (!wp_amx_products()) {
        fprintf(stderr, "split: no AMX tiles here (or WEIGHTPACK_AMX=0, or a narrower family forced)\n");
        return 2;
    }
    // SD 1.5 at 512 px, one batch element (the guidance pair runs one per core).
    const shape shapes[] = {
        {LINEAR, 4096, 320, 320},      {LINEAR, 4096, 2560, 320},    {LINEAR, 4096, 320, 1280},    {LINEAR, 1024, 640, 640},
        {LINEAR, 1024, 5120, 640},     {LINEAR, 256, 1280, 1280},    {LINEAR, 256, 10240, 1280},   {LINEAR, 77, 1280, 768},
        {CONVOLUTION, 1280, 256, 11520}, {CONVOLUTION, 1280, 256, 23040}, {CONVOLUTION, 1280, 64, 11520}, {CONVOLUTION, 1280, 64, 23040},
        {CONVOLUTION, 640, 256, 5760}, {CONVOLUTION, 320, 1024, 2880}, {CONVOLUTION, 1280, 256, 1280}, {WINOGRAD, 320, 256, 320},
        {WINOGRAD, 640, 64, 640},      {WINOGRAD, 320, 4096, 320},   {WINOGRAD, 640, 1024, 640},   {WINOGRAD, 364, 64, 1280},
    };
    const char *names[] = {"linear", "convolution", "Winograd"};
    printf("%-12s %20s %12s %12s %8s %12s\n", "product", "m x n x k", "split", "float", "time", "difference");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const shape sh = shapes[s];
        const long m = sh.m, n = sh.n, k = sh.k;
        // The weight: W[n][k] for a linear layer, W[m][k] otherwise; the data: X[m][k] or B[k][n].
        const long weightCount = sh.kind == LINEAR ? n * k : m * k, dataCount = sh.kind == LINEAR ? m * k : k * n;
        long copies = (256L << 20) / (weightCount * 6 + 1);
        copies = copies < 1 ? 1 : copies > 36 ? 36 : copies;
        uint16_t *halves = malloc(sizeof(uint16_t) * weightCount * copies);
        float *widened = malloc(sizeof(float) * weightCount * copies);
        float *data = malloc(sizeof(float) * dataCount), *c = malloc(sizeof(float) * m * n), *d = malloc(sizeof(float) * m * n);
        if (!halves || !widened || !data || !c || !d) return 1;
        srand(7);
        for (long i = 0; i < weightCount * copies; i++) {
            halves[i] = half(((float)rand() / (float)RAND_MAX * 2 - 1) * 0.2f);
            widened[i] = widen(halves[i]);
        }
        for (long i = 0; i < dataCount; i++) data[i] = (float)rand() / (float)RAND_MAX * 2 - 1;
        double split = 1e30, plain = 1e30;
        long copy = 0;
        for (int r = 0; r < rounds; r++) {
            const long reps = 2e9 / (2.0 * m * n * k) + 1;
            double t0 = now();
            for (long q = 0; q < reps; q++, copy = (copy + 1) % copies) {
                const uint16_t *wh = halves + copy * weightCount;
                const float *wf = widened + copy * weightCount;
                if (sh.kind == LINEAR) wp_gemm_amx_split(m, n, k, data, 0, k, wh, 1, k, c, n, 0);
                else if (sh.kind == CONVOLUTION) wp_gemm_amx_split(m, n, k, wh, 1, k, data, 0, n, c, n, 0);
                else wp_gemm_amx_split(m, n, k, wf, 0, k, data, 0, n, c, n, 0);
            }
            double t = (now() - t0) / reps;
            split = t < split ? t : split;
            t0 = now();
            for (long q = 0; q < reps; q++, copy = (copy + 1) % copies) {
                const uint16_t *wh = halves + copy * weightCount;
                const float *wf = widened + copy * weightCount;
                if (sh.kind == LINEAR) {
                    if (m <= 256) wp_gemm_f16_weight_linear(m, n, k, data, k, wh, k, d, n);
                    else wp_sgemm(0, 1, m, n, k, 1, data, k, wf, k, 0, d, n, 1);
                } else if (sh.kind == CONVOLUTION) {
                    if (n <= 256) wp_gemm_f16_weight(m, n, k, wh, k, data, n, d, n, 0);
                    else wp_sgemm(0, 0, m, n, k, 1, wf, k, data, n, 0, d, n, 1);
                } else if (tilesSuit(m, n, k)) {
                    wp_gemm_f32_tiles(m, n, k, wf, k, data, n, d, n, 0);
                } else {
                    wp_sgemm(0, 0, m, n, k, 1, wf, k, data, n, 0, d, n, 1);
                }
            }
            t = (now() - t0) / reps;
            plain = t < plain ? t : plain;
        }
        // The two results of the last copy used, against Σ|a b| of each element.
        copy = (copy + copies - 1) % copies;
        const float *wf = widened + copy * weightCount;
        const uint16_t *wh = halves + copy * weightCount;
        if (sh.kind == LINEAR) wp_gemm_amx_split(m, n, k, data, 0, k, wh, 1, k, c, n, 0);
        else wp_gemm_amx_split(m, n, k, sh.kind == WINOGRAD ? (const void *)wf : (const void *)wh, sh.kind != WINOGRAD, k, data, 0, n, c, n, 0);
        if (sh.kind == LINEAR) wp_sgemm(0, 1, m, n, k, 1, data, k, wf, k, 0, d, n, 1);
        else wp_sgemm(0, 0, m, n, k, 1, wf, k, data, n, 0, d, n, 1);
        double worst = 0;
        for (long i = 0; i < (m < 64 ? m : 64); i++)
            for (long j = 0; j < n; j++) {
                double sum = 0;
                for (long p = 0; p < k; p++) {
                    const double a = sh.kind == LINEAR ? data[i * k + p] : wf[i * k + p];
                    const double b = sh.kind == LINEAR ? wf[j * k + p] : data[p * n + j];
                    sum += fabs(a * b);
                }
                const double e = fabs((double)c[i * n + j] - (double)d[i * n + j]) / sum;
                worst = e > worst ? e : worst;
            }
        const double flops = 2.0 * m * n * k;
        printf("%-12s %6ld x %5ld x %5ld %7.1f GF/s %7.1f GF/s %8.2f %12.2g\n", names[sh.kind], m, n, k, flops / split * 1e-9,
               flops / plain * 1e-9, split / plain, worst);
        fflush(stdout);
        free(halves), free(widened), free(data), free(c), free(d);
    }
    return 0;
}
