// Shared by the kernels' C files (not part of the module's public header): the branch-free
// `exp` of the softmax and of GEGLU's `erf`, Swift's `Kernels.exp` in C (Cody-Waite range
// reduction, Cephes' expf polynomial), inlined into each family's copy of its caller so that
// it vectorises there.
#pragma once
#include <stdint.h>
#include <string.h>

static inline __attribute__((always_inline)) float wp_exp_branch_free(float x) {
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.0f ? 88.0f : x;
    const float biased = x * 1.44269504088896341f + 12582912.0f;
    const float n = biased - 12582912.0f;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * (r * r) + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &biased, 4);
    uint32_t exponent = (bits - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &exponent, 4);
    return e * scale;
}

