// Winograd F(4x4, 3x3) input and output transforms, compiled for each kernel family and chosen
// by wp_selected_kernels(). The arithmetic (and its order) is that of the Swift reference,
// `Convolution.transformInput` / `transformOutput`; see Convolution+Winograd.swift for the
// derivation (Lavin & Gray 2016, interpolation points 0, ±1, ±2, ∞).
#include "CEngineKernels.h"

#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE void inputBody(const float *restrict input, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi,
                      int64_t tileLo, int64_t tileHi, float *restrict v, int64_t plane, float *restrict scratch) {
    const int64_t tilesWide = (width + 3) / 4;
    const int64_t n = tileHi - tileLo;
    const int64_t rowLength = 4 * tilesWide + 2;
    const int64_t firstRow = tileLo / tilesWide, lastRow = (tileHi - 1) / tilesWide;
    float *restrict rows = scratch;
    float *restrict t = scratch + 6 * rowLength;
    for (int64_t c = channelLo; c < channelHi; c++) {
        const float *channel = input + c * height * width;
        for (int64_t ty = firstRow; ty <= lastRow; ty++) {
            for (int64_t k = 0; k < 6; k++) {
                int64_t y = 4 * ty - 1 + k;
                float *row = rows + k * rowLength;
                if (y < 0 || y >= height) {
                    memset(row, 0, (size_t)rowLength * sizeof(float));
                } else {
                    row[0] = 0;
                    memcpy(row + 1, channel + y * width, (size_t)width * sizeof(float));
                    memset(row + 1 + width, 0, (size_t)(rowLength - 1 - width) * sizeof(float));
                }
            }
            const float *d0 = rows, *d1 = rows + rowLength, *d2 = rows + 2 * rowLength;
            const float *d3 = rows + 3 * rowLength, *d4 = rows + 4 * rowLength, *d5 = rows + 5 * rowLength;
            float *t0 = t, *t1 = t + rowLength, *t2 = t + 2 * rowLength;
            float *t3 = t + 3 * rowLength, *t4 = t + 4 * rowLength, *t5 = t + 5 * rowLength;
            for (int64_t x = 0; x < rowLength; x++) {
                float a1 = d1[x], a2 = d2[x], a3 = d3[x], a4 = d4[x];
                t0[x] = 4 * d0[x] - 5 * a2 + a4;
                t1[x] = -4 * (a1 + a2) + a3 + a4;
                t2[x] = 4 * (a1 - a2) - a3 + a4;
                t3[x] = 2 * (a3 - a1) - a2 + a4;
                t4[x] = 2 * (a1 - a3) - a2 + a4;
                t5[x] = 4 * a1 - 5 * a3 + d5[x];
            }
            int64_t lo = tileLo > ty * tilesWide ? tileLo : ty * tilesWide;
            int64_t hi = tileHi < (ty + 1) * tilesWide ? tileHi : (ty + 1) * tilesWide;
            for (int64_t i = 0; i < 6; i++) {
                const float *line = t + i * rowLength;
                float *target = v + (i * 6) * plane + c * n - tileLo;
                for (int64_t tile = lo; tile < hi; tile++) {
                    const float *s = line + 4 * (tile - ty * tilesWide);
                    float a1 = s[1], a2 = s[2], a3 = s[3], a4 = s[4];
                    float *o = target + tile;
                    o[0] = 4 * s[0] - 5 * a2 + a4;
                    o[plane] = -4 * (a1 + a2) + a3 + a4;
                    o[2 * plane] = 4 * (a1 - a2) - a3 + a4;
                    o[3 * plane] = 2 * (a3 - a1) - a2 + a4;
                    o[4 * plane] = 2 * (a1 - a3) - a2 + a4;
                    o[5 * plane] = 4 * a1 - 5 * a3 + s[5];
                }
            }
        }
    }
}

INLINE void outputBody(const float *restrict m, int64_t plane, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi,
                       int64_t tileLo, int64_t tileHi, const float *bias, const float *residual, float *output, float *restrict scratch) {
    const int64_t tilesWide = (width + 3) / 4;
    const int64_t n = tileHi - tileLo;
    const int64_t firstRow = tileLo / tilesWide, lastRow = (tileHi - 1) / tilesWide;
    float *restrict w = scratch;                 // [6][4][tilesWide]
    float *restrict lines = w + 24 * tilesWide;  // 4 output rows of 4 * tilesWide pixels
    for (int64_t o = channelLo; o < channelHi; o++) {
        const float b = bias ? bias[o] : 0;
        for (int64_t ty = firstRow; ty <= lastRow; ty++) {
            int64_t lo = tileLo > ty * tilesWide ? tileLo : ty * tilesWide;
            int64_t hi = tileHi < (ty + 1) * tilesWide ? tileHi : (ty + 1) * tilesWide;
            int64_t count = hi - lo;
            int64_t first = lo - ty * tilesWide;
            for (int64_t i = 0; i < 6; i++) {
                const float *s = m + (i * 6) * plane + o * n + (lo - tileLo);
                const float *s0 = s, *s1 = s + plane, *s2 = s + 2 * plane, *s3 = s + 3 * plane, *s4 = s + 4 * plane, *s5 = s + 5 * plane;
                float *w0 = w + (i * 4) * tilesWide, *w1 = w0 + tilesWide, *w2 = w1 + tilesWide, *w3 = w2 + tilesWide;
                for (int64_t j = 0; j < count; j++) {
                    float a1 = s1[j], a2 = s2[j], a3 = s3[j], a4 = s4[j];
                    float p = a1 + a2, q = a1 - a2, r = a3 + a4, z = a3 - a4;
                    w0[j] = s0[j] + p + r;
                    w1[j] = q + 2 * z;
                    w2[j] = p + 4 * r;
                    w3[j] = q + 8 * z + s5[j];
                }
            }
            for (int64_t q = 0; q < 4; q++) {
                const float *r0 = w + q * tilesWide, *r1 = r0 + 4 * tilesWide, *r2 = r1 + 4 * tilesWide;
                const float *r3 = r2 + 4 * tilesWide, *r4 = r3 + 4 * tilesWide, *r5 = r4 + 4 * tilesWide;
                for (int64_t j = 0; j < count; j++) {
                    float a1 = r1[j], a2 = r2[j], a3 = r3[j], a4 = r4[j];
                    float p = a1 + a2, d = a1 - a2, r = a3 + a4, z = a3 - a4;
                    int64_t x = 4 * j + q;
                    lines[x] = r0[j] + p + r + b;
                    lines[4 * tilesWide + x] = d + 2 * z + b;
                    lines[8 * tilesWide + x] = p + 4 * r + b;
                    lines[12 * tilesWide + x] = d + 8 * z + r5[j] + b;
                }
            }
            int64_t x0 = 4 * first, x1 = 4 * (first + count) < width ? 4 * (first + count) : width;
            for (int64_t p = 0; p < 4; p++) {
                int64_t y = 4 * ty + p;
                if (y >= height) break;
                float *target = output + (o * height + y) * width;
                const float *source = lines + p * 4 * tilesWide;
                if (residual) {
                    const float *res = residual + (o * height + y) * width;
                    for (int64_t x = x0; x < x1; x++) target[x] = source[x - x0] + res[x];
                } else {
                    memcpy(target + x0, source, (size_t)(x1 - x0) * sizeof(float));
                }
            }
        }
    }
}

#define INPUT_ARGS const float *input, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi, \
                   int64_t tileLo, int64_t tileHi, float *v, int64_t plane, float *scratch
#define INPUT_PASS input, height, width, channelLo, channelHi, tileLo, tileHi, v, plane, scratch
#define OUTPUT_ARGS const float *m, int64_t plane, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi, \
                    int64_t tileLo, int64_t tileHi, const float *bias, const float *residual, float *output, float *scratch
#define OUTPUT_PASS m, plane, height, width, channelLo, channelHi, tileLo, tileHi, bias, residual, output, scratch

static void inputBaseline(INPUT_ARGS) { inputBody(INPUT_PASS); }
static void outputBaseline(OUTPUT_ARGS) { outputBody(OUTPUT_PASS); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void inputAVX2(INPUT_ARGS) { inputBody(INPUT_PASS); }
__attribute__((target("avx2,fma,f16c"))) static void outputAVX2(OUTPUT_ARGS) { outputBody(OUTPUT_PASS); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void inputAVX512(INPUT_ARGS) { inputBody(INPUT_PASS); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void outputAVX512(OUTPUT_ARGS) { outputBody(OUTPUT_PASS); }
#define PICK(name) (wp_selected_kernels() == WP_KERNELS_AVX512 ? name##AVX512 : wp_selected_kernels() == WP_KERNELS_AVX2 ? name##AVX2 : name##Baseline)
#else
#define PICK(name) name##Baseline
#endif

void wp_winograd_input(INPUT_ARGS) { PICK(input)(INPUT_PASS); }
void wp_winograd_output(OUTPUT_ARGS) { PICK(output)(OUTPUT_PASS); }
