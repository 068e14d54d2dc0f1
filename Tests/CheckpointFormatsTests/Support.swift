import CheckpointFormats
import Foundation
import TensorCore

/// Bytes of `count` deterministic pseudo-random elements of `dtype` (floats are finite).
func sampleBytes(_ dtype: DType, count: Int, seed: UInt64 = 1) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    var out: [UInt8] = []
    let width = dtype.byteWidth ?? 1
    for _ in 0..<count {
        switch dtype {
        case .f32:
            let v = Float(Int64(bitPattern: next()) % 2_000_000) / 1_000_000
            withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 }
        case .f16:
            let v = Float(Int64(bitPattern: next()) % 2000) / 1000
            withUnsafeBytes(of: v.halfBits.littleEndian) { out += $0 }
        case .bf16:
            let v = Float(Int64(bitPattern: next()) % 2000) / 1000
            withUnsafeBytes(of: v.bfloat16Bits.littleEndian) { out += $0 }
        case .f64:
            let v = Double(Int64(bitPattern: next()) % 2_000_000) / 1_000_000
            withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 }
        case .bool:
            out.append(UInt8(next() & 1))
        default:
            let r = next()
            withUnsafeBytes(of: r.littleEndian) { out += $0.prefix(width) }
        }
    }
    return out
}

/// Every dtype a file can carry whole bytes of.
let byteDTypes: [DType] = DType.allCases.filter { $0.byteWidth != nil }

extension TensorView {
    var byteArray: [UInt8] { bytes.withUnsafeBytes { Array($0) } }
}
