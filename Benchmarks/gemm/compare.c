// sgemm throughput of oneDNN (dnnl_sgemm) and OpenBLAS (cblas_sgemm) on the engine's shapes,
// interleaved in one process so both see the same load. Built and run by Benchmarks/gemm.sh.
//   compare THREADS   (THREADS: OpenMP threads for oneDNN; OpenBLAS follows OPENBLAS_NUM_THREADS)
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <dlfcn.h>

char *openblas_get_corename(void);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    void (*setThreads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (setThreads) setThreads(threads);
    // (m, n, k, transposeB): SD 1.5 UNet/VAE shapes as the engine calls them.
    struct { int m, n, k, tb; const char *what; } shapes[] = {
        {1024, 1024, 1024, 0, "square"},
        {320, 4096, 2880, 0, "conv 3x3 im2col 320ch 64x64"},
        {1280, 256, 11520, 0, "conv 3x3 im2col 1280ch 16x16"},
        {640, 256, 640, 0, "Winograd block product 640ch"},
        {4096, 320, 320, 1, "linear 4096 tokens 320->320"},
        {4096, 2560, 320, 1, "linear 4096 tokens 320->2560 (GEGLU)"},
        {4096, 320, 1280, 1, "linear 4096 tokens 1280->320"},
        {256, 4096, 40, 1, "attention q k^T chunk 256"},
        {256, 40, 4096, 0, "attention p v chunk 256"},
    };
    printf("OpenBLAS core %s, oneDNN ISA 0x%x, %d threads\n", openblas_get_corename(), (unsigned)dnnl_get_effective_cpu_isa(), threads);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int m = shapes[s].m, n = shapes[s].n, k = shapes[s].k, tb = shapes[s].tb;
        float *a = malloc(4L * m * k), *b = malloc(4L * k * n), *c = malloc(4L * m * n);
        for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < (long)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        int ldb = tb ? k : n;
        double bestBlas = 1e9, bestDnnl = 1e9;
        for (int r = 0; r < 5; r++) {
            double t = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1, a, k, b, ldb, 0, c, n);
            t = now() - t;
            if (t < bestBlas) bestBlas = t;
            t = now();
            dnnl_sgemm('N', tb ? 'T' : 'N', m, n, k, 1, a, k, b, ldb, 0, c, n);
            t = now() - t;
            if (t < bestDnnl) bestDnnl = t;
        }
        double flop = 2.0 * m * n * k;
        printf("%-40s %5dx%5dx%5d  OpenBLAS %6.1f GFLOP/s  oneDNN %6.1f GFLOP/s  time oneDNN/OpenBLAS %.2f\n",
               shapes[s].what, m, n, k, flop / bestBlas / 1e9, flop / bestDnnl / 1e9, bestDnnl / bestBlas);
        free(a); free(b); free(c);
    }
    return 0;
}
