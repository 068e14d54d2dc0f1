// Scalar bit-level conversions between f32, f16 and bf16, written so that the compiler can
// turn the bulk loops into SIMD code (no branches on the element value, only selects).
// Rounding is round-to-nearest-even. NaN stays NaN and infinities stay infinite; the NaN bit
// patterns produced match PyTorch's CPU conversions (c10 `fp16_ieee_from_fp32_value` and
// `round_to_nearest_even`): f16 NaN is `sign | 0x7E00`, bf16 NaN is `0x7FC0`.

/// Converts an f32 bit pattern to f16 bits, rounding to nearest even.
@inlinable @inline(__always)
public func halfBits(fromFloatBits x: UInt32) -> UInt16 {
    let sign = (x >> 16) & 0x8000
    let magnitude = x & 0x7FFF_FFFF
    // Normal results: rebias the exponent (-112 << 23, written as a wrapping add) and round.
    let mantissaOdd = (magnitude >> 13) & 1
    let normal = (magnitude &+ 0xC800_0FFF &+ mantissaOdd) >> 13
    // Subnormal results: let the FPU round by adding 0.5 (2^-1), whose ulp is 2^-24.
    let subnormal = (Float(bitPattern: magnitude) + Float(bitPattern: 0x3F00_0000)).bitPattern &- 0x3F00_0000
    let special: UInt32 = magnitude > 0x7F80_0000 ? 0x7E00 : 0x7C00
    var result = magnitude < 0x3880_0000 ? subnormal : normal
    result = magnitude >= 0x4780_0000 ? special : result
    return UInt16(truncatingIfNeeded: result | sign)
}

/// Converts f16 bits to the f32 bit pattern (exact).
@inlinable @inline(__always)
public func floatBits(fromHalfBits h: UInt16) -> UInt32 {
    let sign = UInt32(h & 0x8000) << 16
    let shifted = UInt32(h & 0x7FFF) << 13
    let exponent = shifted & 0x0F80_0000
    let rebiased = shifted &+ 0x3800_0000
    // Infinity and NaN: exponent all ones; widen with the payload kept.
    let special = rebiased &+ 0x3800_0000
    // Zero and subnormals: let the FPU normalise.
    let subnormal = (Float(bitPattern: rebiased &+ 0x0080_0000) - Float(bitPattern: 0x3880_0000)).bitPattern
    var result = exponent == 0 ? subnormal : rebiased
    result = exponent == 0x0F80_0000 ? special : result
    return result | sign
}

/// Converts an f32 bit pattern to bf16 bits, rounding to nearest even (NaN becomes `0x7FC0`).
@inlinable @inline(__always)
public func bfloat16Bits(fromFloatBits x: UInt32) -> UInt16 {
    let isNaN = (x & 0x7FFF_FFFF) > 0x7F80_0000
    let rounded = (x &+ 0x7FFF &+ ((x >> 16) & 1)) >> 16
    return isNaN ? 0x7FC0 : UInt16(truncatingIfNeeded: rounded)
}

/// Converts bf16 bits to the f32 bit pattern (exact).
@inlinable @inline(__always)
public func floatBits(fromBFloat16Bits b: UInt16) -> UInt32 { UInt32(b) << 16 }

extension Float {
    /// The value of an IEEE binary16 bit pattern.
    @inlinable public init(halfBits: UInt16) { self.init(bitPattern: floatBits(fromHalfBits: halfBits)) }
    /// The value of a bfloat16 bit pattern.
    @inlinable public init(bfloat16Bits: UInt16) { self.init(bitPattern: floatBits(fromBFloat16Bits: bfloat16Bits)) }
    /// This value rounded to binary16, as bits.
    @inlinable public var halfBits: UInt16 { TensorCore.halfBits(fromFloatBits: bitPattern) }
    /// This value rounded to bfloat16, as bits.
    @inlinable public var bfloat16Bits: UInt16 { TensorCore.bfloat16Bits(fromFloatBits: bitPattern) }
}

/// The largest finite binary16 value.
public let float16GreatestFiniteMagnitude: Float = 65504
