/// Bulk conversion of tensor elements between floating-point dtypes, and widening of any
/// numeric dtype to `Float` for statistics and compute.
///
/// Sources may be unaligned (safetensors does not align tensor data); destinations are
/// written with unaligned stores too, so any byte buffer works.
public enum ElementConversion {
    /// Whether `convert` supports this pair: any of F16, BF16, F32, F64 to any other, or a
    /// dtype to itself.
    public static func canConvert(from source: DType, to destination: DType) -> Bool {
        source == destination || (source.isConvertibleFloat && destination.isConvertibleFloat)
    }

    /// Converts `count` elements of `source` (dtype `from`) into `destination` (dtype `to`).
    ///
    /// F64 sources are rounded to F32 first, then to the narrower type.
    /// - Throws: `unsupportedConversion` for pairs `canConvert` refuses, `lengthMismatch`
    ///   when either buffer is shorter than `count` elements.
    /// - Complexity: O(count).
    public static func convert(
        _ source: UnsafeRawBufferPointer, from: DType,
        into destination: UnsafeMutableRawBufferPointer, to: DType,
        count: Int
    ) throws(TensorCoreError) {
        guard canConvert(from: from, to: to), let inWidth = from.byteWidth, let outWidth = to.byteWidth else {
            throw TensorCoreError(.unsupportedConversion, "cannot convert \(from.name) to \(to.name)")
        }
        guard source.count >= count * inWidth, destination.count >= count * outWidth else {
            throw TensorCoreError(.lengthMismatch, "buffer too short for \(count) elements")
        }
        if count == 0 { return }
        if from == to {
            destination.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: count * inWidth)
            return
        }
        let src = source.baseAddress!
        let dst = destination.baseAddress!
        switch (from, to) {
        case (.f32, .f16):
            // 16 lanes at a time with the same branch-free arithmetic as `halfBits(fromFloatBits:)`.
            let whole = count / 16 * 16
            var i = 0
            while i < whole {
                let x = src.loadUnaligned(fromByteOffset: i &* 4, as: SIMD16<UInt32>.self)
                dst.storeBytes(of: halfBits16(x), toByteOffset: i &* 2, as: SIMD16<UInt16>.self)
                i &+= 16
            }
            while i < count {
                let x = src.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)
                dst.storeBytes(of: halfBits(fromFloatBits: x), toByteOffset: i &* 2, as: UInt16.self)
                i &+= 1
            }
        case (.f32, .bf16):
            for i in 0..<count {
                let x = src.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)
                dst.storeBytes(of: bfloat16Bits(fromFloatBits: x), toByteOffset: i &* 2, as: UInt16.self)
            }
        case (.f16, .f32):
            for i in 0..<count {
                let h = src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)
                dst.storeBytes(of: floatBits(fromHalfBits: h), toByteOffset: i &* 4, as: UInt32.self)
            }
        case (.bf16, .f32):
            for i in 0..<count {
                let b = src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)
                dst.storeBytes(of: floatBits(fromBFloat16Bits: b), toByteOffset: i &* 4, as: UInt32.self)
            }
        default:
            // Every other pair goes through f32 one element at a time.
            for i in 0..<count {
                let value = loadFloat(src, index: i, dtype: from)
                storeFloat(value, dst, index: i, dtype: to)
            }
        }
    }

    /// Widens `count` elements of a numeric dtype to `Float`.
    ///
    /// Integers and booleans are converted by value (large 64-bit integers lose precision).
    /// - Throws: `unsupportedConversion` for fp8, sub-byte and complex dtypes.
    public static func widen(
        _ source: UnsafeRawBufferPointer, dtype: DType,
        into destination: UnsafeMutableBufferPointer<Float>, count: Int
    ) throws(TensorCoreError) {
        guard let width = dtype.byteWidth, dtype != .c64, !isFloat8(dtype) else {
            throw TensorCoreError(.unsupportedConversion, "cannot read \(dtype.name) values as numbers")
        }
        guard source.count >= count * width, destination.count >= count else {
            throw TensorCoreError(.lengthMismatch, "buffer too short for \(count) elements")
        }
        if count == 0 { return }
        let src = source.baseAddress!
        switch dtype {
        case .f32:
            UnsafeMutableRawPointer(destination.baseAddress!).copyMemory(from: src, byteCount: count * 4)
        case .f16:
            for i in 0..<count {
                destination[i] = Float(bitPattern: floatBits(fromHalfBits: src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)))
            }
        case .bf16:
            for i in 0..<count {
                destination[i] = Float(bitPattern: floatBits(fromBFloat16Bits: src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)))
            }
        default:
            for i in 0..<count { destination[i] = loadFloat(src, index: i, dtype: dtype) }
        }
    }

    /// How many of `count` finite values become infinite when rounded to f16 (magnitude at or
    /// above 65520): the values that blacken a VAE stored in half precision.
    ///
    /// Counts F32, F64 and BF16 sources; any other dtype has no such values and gives 0.
    public static func float16OverflowCount(_ source: UnsafeRawBufferPointer, dtype: DType, count: Int) -> Int {
        guard count > 0, let width = dtype.byteWidth, source.count >= count * width else { return 0 }
        let src = source.baseAddress!
        switch dtype {
        case .f32, .bf16:
            // Compare magnitudes as integers: finite values at or above 65520 (0x477FF000). A
            // branch-free integer reduction, which the compiler vectorises.
            // Signed 32-bit compares and a 32-bit count vectorise on every x86-64; counted in
            // blocks so the 32-bit count cannot wrap.
            var total = 0
            var start = 0
            while start < count {
                let end = min(count, start + (1 << 30))
                var block: Int32 = 0
                if dtype == .f32 {
                    for i in start..<end {
                        let m = Int32(bitPattern: src.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self) & 0x7FFF_FFFF)
                        block &+= (m > 0x477F_EFFF ? 1 : 0) & (m < 0x7F80_0000 ? 1 : 0)
                    }
                } else {
                    for i in start..<end {
                        let m = Int32(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self) & 0x7FFF) << 16)
                        block &+= (m > 0x477F_EFFF ? 1 : 0) & (m < 0x7F80_0000 ? 1 : 0)
                    }
                }
                total += Int(block)
                start = end
            }
            return total
        case .f64:
            var total = 0
            for i in 0..<count {
                let v = Double(bitPattern: src.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self))
                if v.isFinite && Float(v).halfBits & 0x7FFF == 0x7C00 { total += 1 }
            }
            return total
        default:
            return 0
        }
    }

    /// `halfBits(fromFloatBits:)` on 16 lanes.
    @inline(__always)
    static func halfBits16(_ x: SIMD16<UInt32>) -> SIMD16<UInt16> {
        typealias U = SIMD16<UInt32>
        let sign = (x &>> 16) & U(repeating: 0x8000)
        let magnitude = x & U(repeating: 0x7FFF_FFFF)
        let mantissaOdd = (magnitude &>> 13) & U(repeating: 1)
        let normal = (magnitude &+ U(repeating: 0xC800_0FFF) &+ mantissaOdd) &>> 13
        var asFloat = SIMD16<Float>()
        for lane in 0..<16 { asFloat[lane] = Float(bitPattern: magnitude[lane]) }
        let shifted = asFloat + SIMD16<Float>(repeating: 0.5)
        var subnormal = U()
        for lane in 0..<16 { subnormal[lane] = shifted[lane].bitPattern &- 0x3F00_0000 }
        let special = U(repeating: 0x7C00).replacing(with: 0x7E00, where: magnitude .> U(repeating: 0x7F80_0000))
        var result = normal.replacing(with: subnormal, where: magnitude .< U(repeating: 0x3880_0000))
        result.replace(with: special, where: magnitude .>= U(repeating: 0x4780_0000))
        return SIMD16<UInt16>(truncatingIfNeeded: result | sign)
    }

    private static func isFloat8(_ dtype: DType) -> Bool {
        switch dtype {
        case .f8E4M3, .f8E5M2, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ: true
        default: false
        }
    }

    @inline(__always)
    private static func loadFloat(_ p: UnsafeRawPointer, index i: Int, dtype: DType) -> Float {
        switch dtype {
        case .f32: Float(bitPattern: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
        case .f16: Float(halfBits: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
        case .bf16: Float(bfloat16Bits: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
        case .f64: Float(Double(bitPattern: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))
        case .bool: p.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0
        case .u8: Float(p.load(fromByteOffset: i, as: UInt8.self))
        case .i8: Float(p.load(fromByteOffset: i, as: Int8.self))
        case .i16: Float(Int16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: Int16.self)))
        case .u16: Float(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
        case .i32: Float(Int32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)))
        case .u32: Float(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
        case .i64: Float(Int64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)))
        case .u64: Float(UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))
        default: .nan
        }
    }

    @inline(__always)
    private static func storeFloat(_ v: Float, _ p: UnsafeMutableRawPointer, index i: Int, dtype: DType) {
        switch dtype {
        case .f32: p.storeBytes(of: v.bitPattern, toByteOffset: i * 4, as: UInt32.self)
        case .f16: p.storeBytes(of: v.halfBits, toByteOffset: i * 2, as: UInt16.self)
        case .bf16: p.storeBytes(of: v.bfloat16Bits, toByteOffset: i * 2, as: UInt16.self)
        case .f64: p.storeBytes(of: Double(v).bitPattern, toByteOffset: i * 8, as: UInt64.self)
        default: preconditionFailure("storeFloat into \(dtype)")
        }
    }
}
