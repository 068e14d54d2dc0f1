// The single-precision FMA peak of one core: 12 independent chains of 512-bit (or, with
// `avx2`, 256-bit) fused multiply-adds, nothing else in the loop. Run it on one core, then on
// each core at once (Benchmarks/profile.sh), to get the ceiling the achieved GFLOP/s of
// Docs/performance.md are compared with.
//   peak [avx2]
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA12(r) \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "2\n vfmadd231ps %%" r "0, %%" r "1, %%" r "3\n" \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "4\n vfmadd231ps %%" r "0, %%" r "1, %%" r "5\n" \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "6\n vfmadd231ps %%" r "0, %%" r "1, %%" r "7\n" \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "8\n vfmadd231ps %%" r "0, %%" r "1, %%" r "9\n" \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "10\n vfmadd231ps %%" r "0, %%" r "1, %%" r "11\n" \
    "vfmadd231ps %%" r "0, %%" r "1, %%" r "12\n vfmadd231ps %%" r "0, %%" r "1, %%" r "13\n"

int main(int argc, char **argv) {
    const int avx2 = argc > 1 && strcmp(argv[1], "avx2") == 0;
    const long iterations = 200000000;
    double best = 0;
    for (int round = 0; round < 3; round++) {
        const double start = now();
        if (avx2) {
            __asm__ volatile("vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n mov %0, %%rcx\n"
                             "1:\n" FMA12("ymm") "dec %%rcx\n jnz 1b\n"
                             :
                             : "r"(iterations)
                             : "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                               "xmm10", "xmm11", "xmm12", "xmm13");
        } else {
            __asm__ volatile("vxorps %%zmm0, %%zmm0, %%zmm0\n vxorps %%zmm1, %%zmm1, %%zmm1\n mov %0, %%rcx\n"
                             "1:\n" FMA12("zmm") "dec %%rcx\n jnz 1b\n"
                             :
                             : "r"(iterations)
                             : "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                               "xmm10", "xmm11", "xmm12", "xmm13");
        }
        const double rate = iterations * 12.0 * (avx2 ? 16 : 32) / (now() - start) / 1e9;
        if (rate > best) best = rate;
    }
    printf("%.1f GFLOP/s FMA peak, one core, %s\n", best, avx2 ? "256-bit" : "512-bit");
    return 0;
}
