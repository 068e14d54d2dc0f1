import CEngineKernels
import Quantization
import TestSupport
import Testing

@testable import DiffusionEngine

/// The engine's vectorised ggml block decoders (CEngineKernels/ggml.c) against `GGMLBlocks`
/// (itself bit-exact against gguf-py): the same bits for every byte pattern a block may hold,
/// under the kernel family in use (`.ci/run` runs this suite under each one the processor has).
@Suite("ggml block decoders")
struct GGMLKernelTests {
    static let decoded: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    @Test(arguments: decoded)
    func theDecodersGiveGGMLBlocksBits(_ type: GGMLType) throws {
        #expect(wp_ggml_decodes(Int32(type.rawValue)) != 0)
        // Random bytes: every scale bit pattern (subnormal, infinite and NaN halves included)
        // and every code, over 200 blocks.
        let blocks = 200
        var random = TestRandom(seed: 97 + UInt64(type.rawValue))
        var bytes = (0..<(blocks * type.blockBytes)).map { _ in UInt8(truncatingIfNeeded: Int((random.next() + 1) * 128)) }
        // A few blocks with finite, ordinary scales (the common case) as well.
        for b in stride(from: 0, to: blocks, by: 3) { bytes[b * type.blockBytes + (type == .q6_K ? 209 : 1)] = 0x2C }
        let count = blocks * type.blockValues
        var expected = [Float](repeating: 0, count: count), actual = [Float](repeating: .nan, count: count)
        try bytes.withUnsafeBytes { raw in
            try expected.withUnsafeMutableBufferPointer { try GGMLBlocks.dequantize(raw, type: type, count: count, into: $0.baseAddress!) }
            let status = actual.withUnsafeMutableBufferPointer {
                wp_dequantize_ggml(Int32(type.rawValue), raw.baseAddress!, blocks, $0.baseAddress!)
            }
            #expect(status == 0)
        }
        var differing = 0
        for i in 0..<count where actual[i].bitPattern != expected[i].bitPattern && !(actual[i].isNaN && expected[i].isNaN) {
            differing += 1
        }
        #expect(differing == 0, "\(type.name): \(differing) of \(count) values differ under \(ComputeBackend.current.kernels)")
    }

    /// `wp_dequantize_int8` (explicit 8- and 16-lane widening in the AVX2 and AVX-512 copies)
    /// against `Int8Quantizer.dequantize`: the same bits for every int8 code and scale pattern
    /// (subnormal, zero and infinite halves; NaN scales give NaN either way), with row lengths
    /// that leave partial vectors and a partial last block (72 = 2·32 + 8, 50, 7), and rows
    /// taken from the middle of the tensor.
    @Test(arguments: [(72, 32), (50, 32), (7, 32), (256, 64)])
    func theInt8DecoderGivesTheQuantizersBits(_ rowLength: Int, _ blockSize: Int) throws {
        let rows = 9
        let layout = try Int8BlockLayout(rows: rows, rowLength: rowLength, blockSize: blockSize)
        var random = TestRandom(seed: 31 + UInt64(rowLength))
        var bytes = (0..<layout.byteCount).map { _ in UInt8(truncatingIfNeeded: Int((random.next() + 1) * 128)) }
        // Ordinary scales in most blocks (0x2C00 = 0.0625), random halves in the rest.
        for k in stride(from: 0, to: layout.scaleCount, by: 2) {
            bytes[layout.scaleOffset + 2 * k] = 0
            bytes[layout.scaleOffset + 2 * k + 1] = 0x2C
        }
        let first = 2, count = 6
        var expected = [Float](repeating: 0, count: count * rowLength), actual = [Float](repeating: .nan, count: count * rowLength)
        try bytes.withUnsafeBytes { raw in
            try expected.withUnsafeMutableBufferPointer {
                try Int8Quantizer.dequantize(raw, layout: layout, rows: first..<(first + count), into: $0.baseAddress!)
            }
            actual.withUnsafeMutableBufferPointer {
                wp_dequantize_int8(
                    raw.baseAddress!.assumingMemoryBound(to: Int8.self), raw.baseAddress! + layout.scaleOffset, rowLength, blockSize,
                    layout.blocksPerRow, first, count, $0.baseAddress!)
            }
        }
        var differing = 0
        for i in expected.indices where actual[i].bitPattern != expected[i].bitPattern && !(actual[i].isNaN && expected[i].isNaN) {
            differing += 1
        }
        #expect(differing == 0, "rows of \(rowLength): \(differing) of \(expected.count) values differ under \(ComputeBackend.current.kernels)")
    }

    @Test func typesDecodedElsewhereAreRefused() {
        for type in [GGMLType.f32, .f16, .q2_K, .q3_K, .iq4_NL] {
            #expect(wp_ggml_decodes(Int32(type.rawValue)) == 0)
            var out = [Float](repeating: 0, count: 256)
            let bytes = [UInt8](repeating: 0, count: 256)
            let status = bytes.withUnsafeBytes { raw in
                out.withUnsafeMutableBufferPointer { wp_dequantize_ggml(Int32(type.rawValue), raw.baseAddress!, 1, $0.baseAddress!) }
            }
            #expect(status == -1)
        }
    }
}
