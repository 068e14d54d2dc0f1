import TensorCore

/// Quantise and dequantise kernels of ggml's block types.
///
/// Dequantisation matches `gguf.quants.dequantize` of the `gguf` Python package (0.19.0)
/// bit for bit (the same f32 operations in the same order, never fused); quantisation matches
/// ggml's reference quantisers (`quantize_row_*_ref` in ggml's `ggml-quants.c`, as
/// stable-diffusion.cpp 0.4.7 builds it). Goldens: `Fixtures/generate/make_gguf_fixtures.py`.
public enum GGMLBlocks {
    /// IQ4_NL's 16 non-linear levels (ggml `kvalues_iq4nl`).
    static let iq4Levels: [Int8] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    /// Decodes `count` values of `type` (a whole number of blocks) from `source` into `output`.
    ///
    /// - Throws: ``QuantizationError/Code/unsupportedDType`` for a type WeightPack cannot decode,
    ///   ``QuantizationError/Code/lengthMismatch`` when `source` is shorter than the blocks.
    /// - Complexity: O(count).
    public static func dequantize(
        _ source: UnsafeRawBufferPointer, type: GGMLType, count: Int, into output: UnsafeMutablePointer<Float>
    ) throws(QuantizationError) {
        guard type.isReadable else {
            throw QuantizationError(.unsupportedDType, "unsupported type \(type.name)")
        }
        guard let bytes = type.byteCount(values: count), bytes <= source.count else {
            throw QuantizationError(.lengthMismatch, "\(source.count) bytes do not hold \(count) \(type.name) values")
        }
        guard count > 0, let base = source.baseAddress else { return }
        let blocks = count / type.blockValues
        let size = type.blockBytes
        switch type {
        case .f32:
            for i in 0..<count { output[i] = Float(bitPattern: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
        case .f16:
            for i in 0..<count { output[i] = Float(halfBits: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
        case .bf16:
            for i in 0..<count { output[i] = Float(bfloat16Bits: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
        case .f64:
            for i in 0..<count { output[i] = Float(Double(bitPattern: base.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self).littleEndian)) }
        case .i8:
            for i in 0..<count { output[i] = Float(base.load(fromByteOffset: i, as: Int8.self)) }
        case .i16:
            for i in 0..<count { output[i] = Float(Int16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
        case .i32:
            for i in 0..<count { output[i] = Float(Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
        case .i64:
            for i in 0..<count { output[i] = Float(Int64(littleEndian: base.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        default:
            let kernel: (UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void
            switch type {
            case .q4_0: kernel = q4_0
            case .q4_1: kernel = q4_1
            case .q5_0: kernel = q5_0
            case .q5_1: kernel = q5_1
            case .q8_0: kernel = q8_0
            case .q2_K: kernel = q2_K
            case .q3_K: kernel = q3_K
            case .q4_K: kernel = q4_K
            case .q5_K: kernel = q5_K
            case .q6_K: kernel = q6_K
            case .iq4_NL: kernel = iq4_NL
            case .iq4_XS: kernel = iq4_XS
            case .tq1_0: kernel = tq1_0
            case .tq2_0: kernel = tq2_0
            case .mxfp4: kernel = mxfp4
            default: preconditionFailure("readable type \(type) without a kernel")
            }
            let values = type.blockValues
            for b in 0..<blocks { kernel(base + b * size, output + b * values) }
        }
    }

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(halfBits: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always) static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
        p.load(fromByteOffset: offset, as: UInt8.self)
    }

    // Each kernel computes exactly what gguf-py's `dequantize_blocks` computes, in f32.

    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<16 {
            let q = byte(p, 2 + j)
            y[j] = d * Float(Int(q & 0x0F) - 8)
            y[j + 16] = d * Float(Int(q >> 4) - 8)
        }
    }

    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        for j in 0..<16 {
            let q = byte(p, 4 + j)
            y[j] = d * Float(q & 0x0F) + m
            y[j + 16] = d * Float(q >> 4) + m
        }
    }

    static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qh = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(p, 6 + j)
            let lo = UInt32(q & 0x0F) | ((qh >> UInt32(j)) & 1) << 4
            let hi = UInt32(q >> 4) | ((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = d * Float(Int(lo) - 16)
            y[j + 16] = d * Float(Int(hi) - 16)
        }
    }

    static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        let qh = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(p, 8 + j)
            let lo = UInt32(q & 0x0F) | ((qh >> UInt32(j)) & 1) << 4
            let hi = UInt32(q >> 4) | ((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = d * Float(lo) + m
            y[j + 16] = d * Float(hi) + m
        }
    }

    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<32 { y[j] = Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }

    /// Q2_K: scales[16], qs[64], d, dmin.
    static func q2_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 80), dmin = half(p, 82)
        for half in 0..<2 {
            for shift in 0..<4 {
                for part in 0..<2 {
                    let start = half * 128 + shift * 32 + part * 16
                    let sc = byte(p, start / 16)
                    let dl = d * Float(sc & 0x0F), ml = dmin * Float(sc >> 4)
                    let q = p + 16 + half * 32 + part * 16
                    let out = y + start
                    for l in 0..<16 {
                        out[l] = dl * Float((q.load(fromByteOffset: l, as: UInt8.self) >> UInt8(2 * shift)) & 3) - ml
                    }
                }
            }
        }
    }

    /// Q3_K: hmask[32], qs[64], scales[12], d.
    static func q3_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 108)
        for half in 0..<2 {
            for shift in 0..<4 {
                for part in 0..<2 {
                    let start = half * 128 + shift * 32 + part * 16
                    let k = start / 16
                    let low = (byte(p, 96 + k % 8) >> UInt8(4 * (k / 8))) & 0x0F
                    let high = (byte(p, 96 + 8 + k % 4) >> UInt8(2 * (k / 4))) & 0x03
                    let dl = d * Float(Int(low | high << 4) - 32)
                    let mask = UInt8(start / 32)
                    let out = y + start
                    for l in 0..<16 {
                        let lane = part * 16 + l
                        let q = Int((byte(p, 32 + half * 32 + lane) >> UInt8(2 * shift)) & 3)
                        let bit = Int((byte(p, lane) >> mask) & 1)
                        out[l] = dl * Float(q - ((bit ^ 1) << 2))
                    }
                }
            }
        }
    }

    /// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block's 12 scale bytes.
    @inline(__always) static func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (UInt8, UInt8) {
        if j < 4 {
            return (byte(s, j) & 0x3F, byte(s, j + 4) & 0x3F)
        }
        let k = j - 4
        return ((byte(s, 8 + k) & 0x0F) | ((byte(s, k) >> 2) & 0x30), (byte(s, 8 + k) >> 4) | ((byte(s, 4 + k) >> 2) & 0x30))
    }

    /// Q4_K: d, dmin, scales[12], qs[128].
    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        for chunk in 0..<4 {
            for nibble in 0..<2 {
                let sub = chunk * 2 + nibble
                let (sc, m) = scaleMin(p + 4, sub)
                let dl = d * Float(sc), ml = dmin * Float(m)
                for l in 0..<32 {
                    let q = (byte(p, 16 + chunk * 32 + l) >> UInt8(4 * nibble)) & 0x0F
                    y[sub * 32 + l] = dl * Float(q) - ml
                }
            }
        }
    }

    /// Q5_K: d, dmin, scales[12], qh[32], qs[128].
    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        for chunk in 0..<4 {
            for nibble in 0..<2 {
                let sub = chunk * 2 + nibble
                let (sc, m) = scaleMin(p + 4, sub)
                let dl = d * Float(sc), ml = dmin * Float(m)
                for l in 0..<32 {
                    let low = (byte(p, 48 + chunk * 32 + l) >> UInt8(4 * nibble)) & 0x0F
                    let high = (byte(p, 16 + l) >> UInt8(sub)) & 1
                    y[sub * 32 + l] = dl * Float(low | high << 4) - ml
                }
            }
        }
    }

    /// Q6_K: ql[128], qh[64], scales[16] (int8), d.
    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 208)
        for half in 0..<2 {
            let ql = p + half * 64, qh = p + 128 + half * 32
            for quarter in 0..<4 {
                // Values 32·quarter ..< 32·quarter + 32 of this half: nibble quarter / 2 of
                // ql[32·(quarter % 2) + l], bits 2·quarter of qh[l].
                let base = half * 128 + quarter * 32
                let lowShift = UInt8(4 * (quarter / 2)), highShift = UInt8(2 * quarter)
                for part in 0..<2 {
                    let dl = d * Float(p.load(fromByteOffset: 192 + (base + part * 16) / 16, as: Int8.self))
                    let out = y + base + part * 16
                    for l in 0..<16 {
                        let lane = part * 16 + l
                        let low = (ql.load(fromByteOffset: (quarter % 2) * 32 + lane, as: UInt8.self) >> lowShift) & 0x0F
                        let high = (qh.load(fromByteOffset: lane, as: UInt8.self) >> highShift) & 0x03
                        out[l] = dl * Float(Int(low | high << 4) - 32)
                    }
                }
            }
        }
    }

    static func iq4_NL(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<16 {
            let q = byte(p, 2 + j)
            y[j] = d * Float(iq4Levels[Int(q & 0x0F)])
            y[j + 16] = d * Float(iq4Levels[Int(q >> 4)])
        }
    }

    /// IQ4_XS: d, scales_h (u16), scales_l[4], qs[128].
    static func iq4_XS(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let high = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        for sub in 0..<8 {
            let low = (byte(p, 4 + sub / 2) >> UInt8(4 * (sub % 2))) & 0x0F
            let h = UInt8((high >> UInt16(2 * sub)) & 3)
            let dl = d * Float(Int(low | h << 4) - 32)
            for l in 0..<32 {
                let q = (byte(p, 8 + sub * 16 + l % 16) >> UInt8(4 * (l / 16))) & 0x0F
                y[sub * 32 + l] = dl * Float(iq4Levels[Int(q)])
            }
        }
    }

    /// TQ2_0: qs[64], d. Value `128c + 32s + l` is bits `2s` of `qs[32c + l]`, minus 1.
    static func tq2_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 64)
        for c in 0..<2 {
            for s in 0..<4 {
                for l in 0..<32 {
                    let q = Int((byte(p, 32 * c + l) >> UInt8(2 * s)) & 3) - 1
                    y[128 * c + 32 * s + l] = d * Float(q)
                }
            }
        }
    }

    /// TQ1_0: qs[48], qh[4], d. Base-3 digits: byte · 3^k (mod 256), then `(x · 3) >> 8`, minus 1.
    static func tq1_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 52)
        let powers: [UInt8] = [1, 3, 9, 27, 81]
        @inline(__always) func trit(_ b: UInt8, _ k: Int) -> Float {
            let x = b &* powers[k]
            return Float(Int((UInt16(x) * 3) >> 8) - 1)
        }
        for k in 0..<5 {
            for l in 0..<32 { y[32 * k + l] = d * trit(byte(p, l), k) }
        }
        for k in 0..<5 {
            for l in 0..<16 { y[160 + 16 * k + l] = d * trit(byte(p, 32 + l), k) }
        }
        for k in 0..<4 {
            for l in 0..<4 { y[240 + 4 * k + l] = d * trit(byte(p, 48 + l), k) }
        }
    }

    /// MXFP4's e2m1 values, doubled (ggml `kvalues_mxfp4`).
    static let mxfp4Levels: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]

    /// MXFP4: e (E8M0, halved), qs[16].
    static func mxfp4(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let e = UInt32(byte(p, 0))
        let d = Float(bitPattern: e < 2 ? UInt32(0x0020_0000) << e : (e - 1) << 23)
        for l in 0..<16 {
            let q = byte(p, 1 + l)
            y[l] = d * Float(mxfp4Levels[Int(q & 0x0F)])
            y[16 + l] = d * Float(mxfp4Levels[Int(q >> 4)])
        }
    }
}
