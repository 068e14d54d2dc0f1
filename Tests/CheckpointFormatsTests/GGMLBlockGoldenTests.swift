import CheckpointFormats
import Foundation
import Quantization
import TensorCore
import Testing

/// Goldens of `Fixtures/gguf/blocks.gguf` (`Fixtures/generate/make_gguf_fixtures.py`): blocks made by
/// ggml's own quantiser, and gguf-py's dequantisation of them and of random blocks.
@Suite("ggml block types against ggml and gguf-py")
struct GGMLBlockGoldenTests {
    static let written = GGMLType.quantizable.map { $0.name.lowercased() }
    static let readable = written + ["iq4_nl", "iq4_xs", "tq1_0", "tq2_0", "mxfp4"]

    let file: GGUFFile

    init() throws {
        file = try GGUFFile(path: ggufFixtures.appendingPathComponent("blocks.gguf").path)
    }

    /// The f32 values of a plain tensor of the golden file.
    func floats(_ name: String) throws -> [Float] { try file.tensor(named: name).floats() }

    func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

    /// The first index where two arrays of bits differ, for messages.
    func firstDifference(_ a: [UInt32], _ b: [UInt32]) -> String {
        guard let i = a.indices.first(where: { $0 >= b.count || a[$0] != b[$0] }) else { return "none" }
        return "index \(i): \(Float(bitPattern: a[i])) vs \(i < b.count ? Float(bitPattern: b[i]) : .nan)"
    }

    @Test("dequantisation equals gguf-py bit for bit on random blocks", arguments: readable)
    func dequantizeRandom(tag: String) throws {
        let view = try #require(try file.ggmlTensor(named: "random.\(tag)"))
        let expected = bits(try floats("random.\(tag).dequantized"))
        let ours = bits(try view.dequantized().floats())
        #expect(ours.count == expected.count)
        #expect(ours == expected, "\(tag): first difference at \(firstDifference(ours, expected))")
    }

    @Test("dequantisation equals gguf-py bit for bit on ggml's blocks", arguments: written)
    func dequantizeGGML(tag: String) throws {
        for source in ["wide", "narrow"] {
            guard file.descriptor(named: "ggml.\(tag).\(source)") != nil, let view = try file.ggmlTensor(named: "ggml.\(tag).\(source)") else {
                continue
            }
            let expected = bits(try floats("dequantized.\(tag).\(source)"))
            let ours = bits(try view.dequantized().floats())
            #expect(ours == expected, "\(tag).\(source): first difference at \(firstDifference(ours, expected))")
        }
    }

    @Test("quantisation equals ggml's reference quantiser byte for byte", arguments: written)
    func quantize(tag: String) throws {
        var compared = 0
        for source in ["wide", "narrow"] {
            guard file.descriptor(named: "ggml.\(tag).\(source)") != nil, let view = try file.ggmlTensor(named: "ggml.\(tag).\(source)") else {
                continue
            }
            let values = try floats("source.\(source)")
            var ours = [UInt8](repeating: 0, count: view.bytes.count)
            try values.withUnsafeBufferPointer { src in
                try ours.withUnsafeMutableBytes { out in
                    _ = try GGMLBlocks.quantize(src.baseAddress!, count: values.count, type: view.type, into: out.baseAddress!)
                }
            }
            let theirs = view.bytes.withUnsafeBytes { Array($0) }
            let size = view.type.blockBytes
            let badBlocks = stride(from: 0, to: ours.count, by: size).filter { ours[$0..<($0 + size)] != theirs[$0..<($0 + size)] }
            #expect(
                badBlocks.isEmpty,
                "\(tag).\(source): \(badBlocks.count) of \(ours.count / size) blocks differ, first block \(badBlocks.first.map { $0 / size } ?? -1)")
            compared += 1
        }
        #expect(compared > 0)
    }

    @Test("the row-range API decodes any rows alone", arguments: ["q4_0", "q6_k", "q5_1"])
    func rowRanges(tag: String) throws {
        let view = try #require(try file.ggmlTensor(named: "ggml.\(tag).wide"))
        let whole = try view.dequantized().floats()
        var part = [Float](repeating: .nan, count: 3 * view.rowLength)
        try part.withUnsafeMutableBufferPointer { try view.dequantize(rows: 4..<7, into: $0.baseAddress!) }
        #expect(bits(part) == bits(Array(whole[(4 * view.rowLength)..<(7 * view.rowLength)])))
    }

    @Test("an IQ type without a decoder is one clear error")
    func unsupported() {
        #expect(GGMLType.iq2_XXS.isKnown)
        #expect(!GGMLType.iq2_XXS.isReadable)
        var out = [Float](repeating: 0, count: 256)
        let bytes = [UInt8](repeating: 0, count: 66)
        #expect(throws: QuantizationError.self) {
            try bytes.withUnsafeBytes { raw in
                try out.withUnsafeMutableBufferPointer { try GGMLBlocks.dequantize(raw, type: .iq2_XXS, count: 256, into: $0.baseAddress!) }
            }
        }
    }
}
