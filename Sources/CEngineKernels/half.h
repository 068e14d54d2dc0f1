// Shared by the kernels' C files (not part of the module's public header).
#pragma once
#include <stdint.h>
#include <string.h>

/// One IEEE half to a float, bit by bit (no F16C): the exponent is rebiased from 15 to 127;
/// infinity and NaN keep an all-ones exponent; zero and subnormals are rescaled by a float
/// subtraction. Exact for every half.
static inline __attribute__((always_inline)) float wp_half_to_float(uint16_t h) {
    union { uint32_t u; float f; } o, magic = {.u = 113u << 23};
    const uint32_t shiftedExponent = 0x7c00u << 13;
    o.u = (uint32_t)(h & 0x7fff) << 13;
    uint32_t exponent = shiftedExponent & o.u;
    o.u += (127u - 15u) << 23;
    if (exponent == shiftedExponent) {
        o.u += (128u - 16u) << 23;
    } else if (exponent == 0) {
        o.u += 1u << 23;
        o.f -= magic.f;
    }
    o.u |= (uint32_t)(h & 0x8000) << 16;
    return o.f;
}

/// A little-endian 16-bit value at any alignment.
static inline __attribute__((always_inline)) uint16_t wp_load16(const unsigned char *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
