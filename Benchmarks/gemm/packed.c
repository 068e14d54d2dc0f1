// Issue 12, item 2: would our own packed GEMM beat oneDNN's, so that F16/int8 weights could be
// decoded straight into its panels? A plain BLIS-style AVX-512 kernel (14 x 32 tile: 28 zmm
// accumulators, broadcast A, two vectors of B; A and B packed per KC x MC / KC x NC block)
// against dnnl_sgemm on the engine's product shapes, one thread, best of 5 each, interleaved.
// Blocking from the command line (KC MC NC, default 512 168 4096). See Docs/engine.md,
// "Where item 2 stands".
//   clang -O3 packed.c -o packed -ldnnl -lm && OMP_NUM_THREADS=1 ./packed [KC MC NC]
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <oneapi/dnnl/dnnl.h>

#define MR 14
#define NR 32
static int KC = 512, MC = 168, NC = 4096;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float filled(long i) { return (float)((i * 7919) % 2001 - 1000) / 1000.0f; }

// A row-major m x k (lda); pack rows [i0,i0+mc) cols [p0,p0+kc) into panels of MR: [panel][k][MR]
static void packA(const float *a, long lda, long i0, long mc, long p0, long kc, float *ap) {
    for (long ir = 0; ir < mc; ir += MR) {
        long rows = mc - ir < MR ? mc - ir : MR;
        float *dst = ap + ir * kc;
        for (long p = 0; p < kc; p++) {
            for (long r = 0; r < rows; r++) dst[p * MR + r] = a[(i0 + ir + r) * lda + p0 + p];
            for (long r = rows; r < MR; r++) dst[p * MR + r] = 0;
        }
    }
}
// B row-major k x n (ldb) or transposed (B[p][j] = bt[j*ldb + p]); panels of NR: [panel][k][NR]
static void packB(const float *b, long ldb, int trans, long p0, long kc, long j0, long nc, float *bp) {
    for (long jr = 0; jr < nc; jr += NR) {
        long cols = nc - jr < NR ? nc - jr : NR;
        float *dst = bp + jr * kc;
        if (!trans) {
            for (long p = 0; p < kc; p++) {
                const float *src = b + (p0 + p) * ldb + j0 + jr;
                if (cols == NR) memcpy(dst + p * NR, src, NR * 4);
                else { for (long c = 0; c < cols; c++) dst[p*NR+c] = src[c]; for (long c = cols; c < NR; c++) dst[p*NR+c] = 0; }
            }
        } else {
            for (long c = 0; c < NR; c++) {
                if (c < cols) { const float *src = b + (j0 + jr + c) * ldb + p0; for (long p = 0; p < kc; p++) dst[p * NR + c] = src[p]; }
                else for (long p = 0; p < kc; p++) dst[p * NR + c] = 0;
            }
        }
    }
}

__attribute__((target("avx512f,fma")))
static void kernel(long kc, const float *restrict ap, const float *restrict bp, float *c, long ldc, int accumulate, long rows, long cols) {
    __m512 c0[MR], c1[MR];
    for (int i = 0; i < MR; i++) { c0[i] = _mm512_setzero_ps(); c1[i] = _mm512_setzero_ps(); }
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
        ap += MR; bp += NR;
    }
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    for (int i = 0; i < MR; i++) {
        if (i >= rows) break;
        float *row = c + i * ldc;
        if (accumulate) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, row));
            c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, row + 16));
        }
        _mm512_mask_storeu_ps(row, m0, c0[i]);
        _mm512_mask_storeu_ps(row + 16, m1, c1[i]);
    }
}

static void gemm(long m, long n, long k, const float *a, long lda, const float *b, long ldb, int transB, float *c, long ldc, float *ap, float *bp) {
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            packB(b, ldb, transB, pc, kc, jc, nc, bp);
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                packA(a, lda, ic, mc, pc, kc, ap);
                for (long jr = 0; jr < nc; jr += NR)
                    for (long ir = 0; ir < mc; ir += MR)
                        kernel(kc, ap + ir * kc, bp + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc, pc > 0,
                               mc - ir < MR ? mc - ir : MR, nc - jr < NR ? nc - jr : NR);
            }
        }
    }
}

// The core's float FMA peak: 24 independent chains of 16-lane FMAs.
__attribute__((target("avx512f,fma"))) static double peak(void) {
    __m512 acc[24], a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i);
    long iters = 50000000;
    double t = now();
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    double dt = now() - t;
    float s = 0;
    for (int i = 0; i < 24; i++) s += _mm512_reduce_add_ps(acc[i]);
    return iters * 24.0 * 32 / dt / 1e9 + (s == 12345.0f ? 1e-9 : 0);
}

int main(int argc, char **argv) {
    printf("float FMA peak of one core: %.1f GFLOP/s\n", peak());
    if (argc > 3) { KC = atoi(argv[1]); MC = atoi(argv[2]); NC = atoi(argv[3]); }
    static const long shapes[][4] = {{4096, 1280, 1280, 1}, {4096, 320, 320, 1}, {4096, 2560, 320, 1}, {4096, 320, 1280, 1},
                                     {1280, 256, 11520, 0}, {1280, 64, 11520, 0}, {640, 1024, 640, 0}, {320, 1024, 320, 0}, {1024, 640, 640, 1}};
    float *ap = aligned_alloc(64, sizeof(float) * 4096 * 1024), *bp = aligned_alloc(64, sizeof(float) * 8192 * 1024);
    double tOwn = 0, tDnnl = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2]; int tb = shapes[s][3];
        float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * n * k), *c = malloc(sizeof(float) * m * n), *c2 = malloc(sizeof(float) * m * n);
        for (long i = 0; i < m * k; i++) a[i] = filled(i);
        for (long i = 0; i < n * k; i++) b[i] = filled(i + 17);
        double best1 = INFINITY, best2 = INFINITY;
        for (int r = 0; r < 5; r++) {
            double t = now();
            dnnl_sgemm('N', tb ? 'T' : 'N', m, n, k, 1, a, k, b, tb ? k : n, 0, c, n);
            best1 = fmin(best1, now() - t);
            t = now();
            gemm(m, n, k, a, k, b, tb ? k : n, tb, c2, n, ap, bp);
            best2 = fmin(best2, now() - t);
        }
        double err = 0; for (long i = 0; i < m * n; i++) err = fmax(err, fabs(c[i] - c2[i]));
        double flops = 2.0 * m * n * k;
        tOwn += best2; tDnnl += best1;
        printf("%5ld x %5ld x %5ld %c  dnnl %6.1f  own %6.1f GFLOP/s  own/dnnl time %.3f  maxdiff %.2g\n", m, n, k, tb ? 'T' : 'N', flops / best1 / 1e9, flops / best2 / 1e9, best2 / best1, err);
        free(a); free(b); free(c); free(c2);
    }
    printf("sum of the best times, own / dnnl: %.3f\n", tOwn / tDnnl);
    return 0;
}
