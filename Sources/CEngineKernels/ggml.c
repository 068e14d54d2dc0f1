// Decoding of ggml's block types, compiled for each kernel family and chosen by
// wp_selected_kernels() (see convert.c for the pattern). Each body computes exactly what
// `GGMLBlocks` in Sources/Quantization computes (gguf-py's `dequantize_blocks`, in f32, with
// the same operations in the same order and never fused), so every family gives the same bits
// (`GGMLKernelTests`); the compiler vectorises the plain loops for each instruction set.
#include "CEngineKernels.h"
#include "half.h"

#include <string.h>

#pragma clang fp contract(off)

#define INLINE static inline __attribute__((always_inline))

INLINE float half(const unsigned char *p) { return wp_half_to_float(wp_load16(p)); }

INLINE void q4_0(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p);
    for (int j = 0; j < 16; j++) {
        const unsigned char q = p[2 + j];
        y[j] = d * (float)((int)(q & 0x0F) - 8);
        y[j + 16] = d * (float)((int)(q >> 4) - 8);
    }
}

INLINE void q4_1(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p), m = half(p + 2);
    for (int j = 0; j < 16; j++) {
        const unsigned char q = p[4 + j];
        y[j] = d * (float)(q & 0x0F) + m;
        y[j + 16] = d * (float)(q >> 4) + m;
    }
}

INLINE void q5_0(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p);
    uint32_t qh;
    memcpy(&qh, p + 2, 4);
    for (int j = 0; j < 16; j++) {
        const unsigned char q = p[6 + j];
        const uint32_t lo = (uint32_t)(q & 0x0F) | ((qh >> j) & 1u) << 4;
        const uint32_t hi = (uint32_t)(q >> 4) | ((qh >> (j + 16)) & 1u) << 4;
        y[j] = d * (float)((int)lo - 16);
        y[j + 16] = d * (float)((int)hi - 16);
    }
}

INLINE void q5_1(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p), m = half(p + 2);
    uint32_t qh;
    memcpy(&qh, p + 4, 4);
    for (int j = 0; j < 16; j++) {
        const unsigned char q = p[8 + j];
        const uint32_t lo = (uint32_t)(q & 0x0F) | ((qh >> j) & 1u) << 4;
        const uint32_t hi = (uint32_t)(q >> 4) | ((qh >> (j + 16)) & 1u) << 4;
        y[j] = d * (float)lo + m;
        y[j + 16] = d * (float)hi + m;
    }
}

INLINE void q8_0(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)p[2 + j] * d;
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block's 12 scale bytes.
INLINE void scaleMin(const unsigned char *s, int j, unsigned char *scale, unsigned char *min) {
    if (j < 4) {
        *scale = s[j] & 0x3F;
        *min = s[j + 4] & 0x3F;
    } else {
        const int k = j - 4;
        *scale = (unsigned char)((s[8 + k] & 0x0F) | ((s[k] >> 2) & 0x30));
        *min = (unsigned char)((s[8 + k] >> 4) | ((s[4 + k] >> 2) & 0x30));
    }
}

/// The scales and mins of sub-blocks 2·chunk and 2·chunk + 1 of a Q4_K / Q5_K block.
INLINE void chunkScales(const unsigned char *p, float d, float dmin, int chunk, float *dl0, float *ml0, float *dl1, float *ml1) {
    unsigned char sc0, m0, sc1, m1;
    scaleMin(p + 4, 2 * chunk, &sc0, &m0);
    scaleMin(p + 4, 2 * chunk + 1, &sc1, &m1);
    *dl0 = d * (float)sc0;
    *ml0 = dmin * (float)m0;
    *dl1 = d * (float)sc1;
    *ml1 = dmin * (float)m1;
}

INLINE void q4_K(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p), dmin = half(p + 2);
    for (int chunk = 0; chunk < 4; chunk++) {
        float dl0, ml0, dl1, ml1;
        chunkScales(p, d, dmin, chunk, &dl0, &ml0, &dl1, &ml1);
        const unsigned char *restrict qs = p + 16 + chunk * 32;
        float *restrict out = y + chunk * 64;
        // Low nibbles are sub-block 2·chunk, high nibbles 2·chunk + 1.
        for (int l = 0; l < 32; l++) out[l] = dl0 * (float)(qs[l] & 0x0F) - ml0;
        for (int l = 0; l < 32; l++) out[32 + l] = dl1 * (float)(qs[l] >> 4) - ml1;
    }
}

INLINE void q5_K(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p), dmin = half(p + 2);
    const unsigned char *restrict qh = p + 16;
    for (int chunk = 0; chunk < 4; chunk++) {
        float dl0, ml0, dl1, ml1;
        chunkScales(p, d, dmin, chunk, &dl0, &ml0, &dl1, &ml1);
        const unsigned char *restrict qs = p + 48 + chunk * 32;
        float *restrict out = y + chunk * 64;
        const int s0 = 2 * chunk, s1 = 2 * chunk + 1;
        // Sub-block 2·chunk: low nibbles and bit 2·chunk of qh; 2·chunk + 1: high nibbles and the next bit.
        for (int l = 0; l < 32; l++) out[l] = dl0 * (float)((unsigned)(qs[l] & 0x0F) | ((unsigned)(qh[l] >> s0) & 1u) << 4) - ml0;
        for (int l = 0; l < 32; l++) out[32 + l] = dl1 * (float)((unsigned)(qs[l] >> 4) | ((unsigned)(qh[l] >> s1) & 1u) << 4) - ml1;
    }
}

INLINE void q6_K(const unsigned char *restrict p, float *restrict y) {
    const float d = half(p + 208);
    for (int h = 0; h < 2; h++) {
        const unsigned char *ql = p + h * 64, *qh = p + 128 + h * 32;
        for (int quarter = 0; quarter < 4; quarter++) {
            const int base = h * 128 + quarter * 32;
            const int lowShift = 4 * (quarter / 2), highShift = 2 * quarter;
            for (int part = 0; part < 2; part++) {
                const float dl = d * (float)(int8_t)p[192 + (base + part * 16) / 16];
                float *out = y + base + part * 16;
                for (int l = 0; l < 16; l++) {
                    const int lane = part * 16 + l;
                    const unsigned low = (ql[(quarter % 2) * 32 + lane] >> lowShift) & 0x0F;
                    const unsigned high = (qh[lane] >> highShift) & 0x03;
                    out[l] = dl * (float)((int)(low | high << 4) - 32);
                }
            }
        }
    }
}

/// Block bytes and values of each type decoded here (0: not decoded here).
static void typeSize(int type, size_t *bytes, size_t *values) {
    switch (type) {
    case 2: *bytes = 18; *values = 32; return;    // Q4_0
    case 3: *bytes = 20; *values = 32; return;    // Q4_1
    case 6: *bytes = 22; *values = 32; return;    // Q5_0
    case 7: *bytes = 24; *values = 32; return;    // Q5_1
    case 8: *bytes = 34; *values = 32; return;    // Q8_0
    case 12: *bytes = 144; *values = 256; return; // Q4_K
    case 13: *bytes = 176; *values = 256; return; // Q5_K
    case 14: *bytes = 210; *values = 256; return; // Q6_K
    default: *bytes = 0; *values = 0;
    }
}

#define BODY(suffix)                                                                                  \
    static void decode##suffix(int type, const unsigned char *s, size_t blocks, float *y) {           \
        size_t bytes, values;                                                                          \
        typeSize(type, &bytes, &values);                                                               \
        switch (type) {                                                                                \
        case 2: for (size_t b = 0; b < blocks; b++) q4_0(s + b * bytes, y + b * values); break;       \
        case 3: for (size_t b = 0; b < blocks; b++) q4_1(s + b * bytes, y + b * values); break;       \
        case 6: for (size_t b = 0; b < blocks; b++) q5_0(s + b * bytes, y + b * values); break;       \
        case 7: for (size_t b = 0; b < blocks; b++) q5_1(s + b * bytes, y + b * values); break;       \
        case 8: for (size_t b = 0; b < blocks; b++) q8_0(s + b * bytes, y + b * values); break;       \
        case 12: for (size_t b = 0; b < blocks; b++) q4_K(s + b * bytes, y + b * values); break;      \
        case 13: for (size_t b = 0; b < blocks; b++) q5_K(s + b * bytes, y + b * values); break;      \
        case 14: for (size_t b = 0; b < blocks; b++) q6_K(s + b * bytes, y + b * values); break;      \
        default: break;                                                                                \
        }                                                                                              \
    }

BODY(Baseline)
#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) BODY(AVX2)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) BODY(AVX512)
#endif

int wp_ggml_decodes(int type) {
    size_t bytes, values;
    typeSize(type, &bytes, &values);
    return bytes != 0;
}

int wp_dequantize_ggml(int type, const void *source, size_t blocks, float *target) {
    if (!wp_ggml_decodes(type)) return -1;
#if defined(__x86_64__)
    switch (wp_selected_kernels()) {
    case WP_KERNELS_AVX512: decodeAVX512(type, source, blocks, target); return 0;
    case WP_KERNELS_AVX2: decodeAVX2(type, source, blocks, target); return 0;
    default: break;
    }
#endif
    decodeBaseline(type, source, blocks, target);
    return 0;
}
