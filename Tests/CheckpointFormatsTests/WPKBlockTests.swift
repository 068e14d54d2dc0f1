import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

@Suite(".wpk ggml block tensors")
struct WPKBlockTests {
    /// Writes `blocks.gguf`'s `source.wide` quantised to `type` and a pass-through of ggml's own
    /// Q6_K blocks; reads them back zero-copy.
    @Test("blocks are stored as ggml lays them out, 64-byte aligned, with their error", arguments: [GGMLType.q4_K, .q5_0, .q8_0, .q2_K])
    func roundTrip(type: GGMLType) throws {
        let golden = try GGUFFile(path: ggufFixtures.appendingPathComponent("blocks.gguf").path)
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("blocks.wpk").path
        let source = try #require(golden.descriptor(named: "source.wide"))
        var quantized = OutputTensor(name: "w", dtype: .u8, shape: source.shape, sourceName: source.name, sourceDType: .f32) {
            try golden.tensor(named: "source.wide")
        }
        quantized.ggml = WPKBlockStorage(type: type, rowLength: 768, fallbackFrom: type == .q5_0 ? .q4_K : nil)
        let stored = try #require(try golden.ggmlTensor(named: "ggml.q6_k.wide"))
        var copied = OutputTensor(name: "copied", dtype: .u8, shape: stored.descriptor.shape, sourceName: "ggml.q6_k.wide", sourceDType: .f32) {
            try golden.tensor(named: "ggml.q6_k.wide")
        }
        copied.ggml = WPKBlockStorage(type: .q6_K, rowLength: 768)
        copied.blocks = { try golden.ggmlTensor(named: "ggml.q6_k.wide") }
        let plain = OutputTensor(name: "bias", dtype: .f32, shape: [3], sourceName: "bias", sourceDType: .f32) {
            [Float(1), 2, 3].withUnsafeBytes {
                TensorView(descriptor: TensorDescriptor(name: "bias", dtype: .f32, shape: [3], byteCount: 12), bytes: TensorBytes(copying: $0))
            }
        }
        try WPKWriter.write([plain, quantized, copied], metadata: JSONObject(), to: path, overwrite: false)

        let file = try WPKFile(path: path)
        #expect(file.version.minor == 2)
        #expect(file.verifyChecksums().isEmpty)
        let entry = try #require(file.entry(named: "w"))
        #expect(entry.offset % 64 == 0)
        #expect(entry.blocks?.type == type)
        #expect(entry.blocks?.fallbackFrom == (type == .q5_0 ? .q4_K : nil))
        let metrics = try #require(entry.blocks?.metrics)
        #expect(metrics.snrDecibels != nil)
        let view = try #require(try file.ggmlTensor(named: "w"))
        // The same bytes as stable-diffusion.cpp's convert makes: ggml's weighted search with unit
        // importance over rows of 768 (checked against ggml in GGMLWeightedGoldenTests).
        let sourceValues = try golden.tensor(named: "source.wide").floats()
        #expect(view.bytes.withUnsafeBytes { Array($0) } == (try unitImportanceBlocks(sourceValues, rowLength: 768, type: type)))
        let values = try file.tensor(named: "w").floats()
        #expect(values == (try view.dequantized().floats()))
        #expect(file.descriptor(named: "w")?.dtype == .f32)
        // Copied blocks are the source's bytes, unchanged.
        let copy = try #require(try file.ggmlTensor(named: "copied"))
        #expect(copy.bytes.withUnsafeBytes { Array($0) } == stored.bytes.withUnsafeBytes { Array($0) })
        #expect(try file.tensor(named: "bias").floats() == [1, 2, 3])
    }

    @Test("rows that do not fit the type are refused before anything is written")
    func misfit() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var t = OutputTensor(name: "w", dtype: .u8, shape: [4, 96], sourceName: "w", sourceDType: .f32) {
            throw FormatError(.io, "not read")
        }
        t.ggml = WPKBlockStorage(type: .q4_K, rowLength: 96)
        let path = folder.appendingPathComponent("x.wpk").path
        #expect(throws: FormatError.self) { try WPKWriter.write([t], metadata: JSONObject(), to: path, overwrite: false) }
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
