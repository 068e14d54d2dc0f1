import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

/// The blocks stable-diffusion.cpp's `convert` makes of `values` (rows of `rowLength`, importance
/// ones), which the writers must write.
func unitImportanceBlocks(_ values: [Float], rowLength: Int, type: GGMLType) throws -> [UInt8] {
    try GGMLWeightedGoldenTests.quantize(values, rowLength: rowLength, type: type, importance: [Float](repeating: 1, count: rowLength))
}

/// Goldens of `Fixtures/gguf/weighted.gguf` (`Fixtures/generate/make_weighted_goldens.py`): the
/// blocks ggml's `ggml_quantize_chunk` makes with an importance vector (ones, as
/// stable-diffusion.cpp's `convert` passes, and a spread one), and stable-diffusion.cpp's own Q4_K.
@Suite("ggml's importance-weighted quantisers, byte for byte")
struct GGMLWeightedGoldenTests {
    static let written = GGMLType.quantizable.map { $0.name.lowercased() }

    let file: GGUFFile

    init() throws {
        file = try GGUFFile(path: ggufFixtures.appendingPathComponent("weighted.gguf").path)
    }

    /// Our blocks of `values` (rows of `rowLength`) with `importance`.
    static func quantize(_ values: [Float], rowLength: Int, type: GGMLType, importance: [Float]?) throws -> [UInt8] {
        // A generous buffer when the values are not whole blocks (the call must refuse them).
        let size = type.byteCount(values: values.count) ?? 4 * values.count
        var ours = [UInt8](repeating: 0, count: size)
        try values.withUnsafeBufferPointer { src in
            try ours.withUnsafeMutableBytes { out in
                if let importance {
                    try importance.withUnsafeBufferPointer { qw in
                        _ = try GGMLBlocks.quantize(
                            src.baseAddress!, rows: values.count / rowLength, rowLength: rowLength, type: type, importance: qw.baseAddress!,
                            into: out.baseAddress!)
                    }
                } else {
                    _ = try GGMLBlocks.quantize(
                        src.baseAddress!, rows: values.count / rowLength, rowLength: rowLength, type: type, importance: nil, into: out.baseAddress!)
                }
            }
        }
        return ours
    }

    /// Indices of the blocks that differ.
    static func differingBlocks(_ ours: [UInt8], _ theirs: [UInt8], blockBytes size: Int) -> [Int] {
        stride(from: 0, to: Swift.max(ours.count, theirs.count), by: size).filter { o in
            o + size > ours.count || o + size > theirs.count || ours[o..<(o + size)] != theirs[o..<(o + size)]
        }.map { $0 / size }
    }

    @Test("every block equals ggml's with unit and with spread importance", arguments: written)
    func weighted(tag: String) throws {
        var compared = 0
        for source in ["wide", "narrow"] {
            let values = try file.tensor(named: "source.\(source)").floats()
            let rowLength = try #require(file.descriptor(named: "source.\(source)")?.shape.dimensions.last)
            for importance in ["ones", "spread"] {
                let name = "ggml.\(tag).\(importance).\(source)"
                guard file.descriptor(named: name) != nil, let view = try file.ggmlTensor(named: name) else { continue }
                let qw = try file.tensor(named: "importance.\(importance).\(source)").floats()
                #expect(qw.count == rowLength)
                let ours = try Self.quantize(values, rowLength: rowLength, type: view.type, importance: qw)
                let theirs = view.bytes.withUnsafeBytes { Array($0) }
                let bad = Self.differingBlocks(ours, theirs, blockBytes: view.type.blockBytes)
                #expect(bad.isEmpty, "\(name): \(bad.count) of \(theirs.count / view.type.blockBytes) blocks differ, first \(bad.first ?? -1)")
                compared += 1
            }
        }
        #expect(compared >= 2)
    }

    @Test("the weighted search is not the reference one (the goldens tell them apart)", arguments: ["q4_0", "q4_k", "q6_k"])
    func weightedDiffersFromReference(tag: String) throws {
        let view = try #require(try file.ggmlTensor(named: "ggml.\(tag).ones.wide"))
        let values = try file.tensor(named: "source.wide").floats()
        let reference = try Self.quantize(values, rowLength: 512, type: view.type, importance: nil)
        let theirs = view.bytes.withUnsafeBytes { Array($0) }
        #expect(!Self.differingBlocks(reference, theirs, blockBytes: view.type.blockBytes).isEmpty)
    }

    @Test("Q8_0 ignores the importance, as ggml does")
    func q8Ignores() throws {
        let values = try file.tensor(named: "source.wide").floats()
        let qw = try file.tensor(named: "importance.spread.wide").floats()
        #expect(
            try Self.quantize(values, rowLength: 512, type: .q8_0, importance: qw)
                == Self.quantize(values, rowLength: 512, type: .q8_0, importance: nil))
    }

    /// `sdcpp-q4_k-pair.gguf`: stable-diffusion.cpp's `convert` to Q4_K of a [320, 768] weight whose
    /// f16 values the file also keeps as `to_v` (Fixtures/README.md, "Finding").
    @Test("unit importance reproduces stable-diffusion.cpp's Q4_K convert, every block")
    func sdcppQ4K() throws {
        let pair = try GGUFFile(path: ggufFixtures.appendingPathComponent("sdcpp-q4_k-pair.gguf").path)
        let prefix = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
        let blocks = try #require(try pair.ggmlTensor(named: prefix + "to_k.weight"))
        let values = try pair.tensor(named: prefix + "to_v.weight").floats()
        #expect(values.count == 320 * 768)
        let ours = try Self.quantize(values, rowLength: 768, type: .q4_K, importance: [Float](repeating: 1, count: 768))
        let theirs = blocks.bytes.withUnsafeBytes { Array($0) }
        #expect(theirs.count == 960 * 144)
        #expect(ours == theirs, "\(Self.differingBlocks(ours, theirs, blockBytes: 144).count) of 960 blocks differ")
        let reference = try Self.quantize(values, rowLength: 768, type: .q4_K, importance: nil)
        #expect(Self.differingBlocks(reference, theirs, blockBytes: 144).count > 900, "the reference quantiser is not what convert runs")
    }

    /// The same through the GGUF writer (what `export --format gguf --dtype q4_k` runs) and the
    /// `.wpk` writer (`convert --dtype q4_k`): no importance set means stable-diffusion.cpp's ones.
    @Test("the GGUF and .wpk writers write stable-diffusion.cpp's Q4_K blocks")
    func writersMatchSDCpp() throws {
        let pair = try GGUFFile(path: ggufFixtures.appendingPathComponent("sdcpp-q4_k-pair.gguf").path)
        let prefix = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
        let theirs = try #require(try pair.ggmlTensor(named: prefix + "to_k.weight")).bytes.withUnsafeBytes { Array($0) }
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q4_k.gguf").path
        let tensor = GGUFWriter.Tensor(
            name: prefix + "to_k.weight", shape: Shape([320, 768]), ggmlType: .q4_K, load: { try pair.tensor(named: prefix + "to_v.weight") })
        _ = try GGUFWriter.write([tensor], metadata: [("general.architecture", .string("sd1"))], to: path, overwrite: false)
        let written = try GGUFFile(path: path)
        let ours = try #require(try written.ggmlTensor(named: prefix + "to_k.weight")).bytes.withUnsafeBytes { Array($0) }
        #expect(ours == theirs, "GGUF: \(Self.differingBlocks(ours, theirs, blockBytes: 144).count) of 960 blocks differ")

        let wpkPath = folder.appendingPathComponent("q4_k.wpk").path
        var out = OutputTensor(
            name: prefix + "to_k.weight", dtype: .u8, shape: Shape([320, 768]), sourceName: prefix + "to_v.weight", sourceDType: .f16,
            load: { try pair.tensor(named: prefix + "to_v.weight") })
        out.ggml = WPKBlockStorage(type: .q4_K, rowLength: 768)
        _ = try WPKWriter.write([out], metadata: JSONObject(), to: wpkPath, overwrite: false)
        let wpk = try WPKFile(path: wpkPath)
        let stored = try #require(try wpk.ggmlTensor(named: prefix + "to_k.weight")).bytes.withUnsafeBytes { Array($0) }
        #expect(stored == theirs, "wpk: \(Self.differingBlocks(stored, theirs, blockBytes: 144).count) of 960 blocks differ")
    }

    @Test("importance that is negative, NaN or of the wrong layout is one clear error")
    func invalidImportance() throws {
        let values = [Float](repeating: 0.5, count: 64)
        var qw = [Float](repeating: 1, count: 32)
        qw[3] = -1
        #expect(throws: QuantizationError.self) { try Self.quantize(values, rowLength: 32, type: .q4_0, importance: qw) }
        qw[3] = .nan
        #expect(throws: QuantizationError.self) { try Self.quantize(values, rowLength: 32, type: .q4_0, importance: qw) }
        #expect(throws: QuantizationError.self) {
            try Self.quantize([Float](repeating: 0.5, count: 48), rowLength: 48, type: .q4_0, importance: [Float](repeating: 1, count: 48))
        }
        var bad = [Float](repeating: 0.5, count: 512)
        bad[300] = .infinity
        #expect(throws: QuantizationError.self) { try Self.quantize(bad, rowLength: 512, type: .q4_K, importance: nil) }
    }

    @Test("splitting rows over workers changes no byte (a tensor large enough to be split)", arguments: ["q4_0", "q4_k", "q5_1"])
    func parallelRows(tag: String) throws {
        let type = try #require(GGMLType.quantizable.first { $0.name.lowercased() == tag })
        let wide = try file.tensor(named: "source.wide").floats()
        let qw = try file.tensor(named: "importance.spread.wide").floats()
        // 96 rows of 512 (the six golden rows repeated, each copy scaled): 49152 values.
        var values: [Float] = []
        for k in 0..<16 { values += wide.map { $0 * Float(k + 1) / 4 } }
        let whole = try Self.quantize(values, rowLength: 512, type: type, importance: qw)
        var byRow: [UInt8] = []
        for r in 0..<96 {
            byRow += try Self.quantize(Array(values[(r * 512)..<((r + 1) * 512)]), rowLength: 512, type: type, importance: qw)
        }
        #expect(whole == byRow)
        let wholeRef = try Self.quantize(values, rowLength: 512, type: type, importance: nil)
        var byRowRef: [UInt8] = []
        for r in 0..<96 { byRowRef += try Self.quantize(Array(values[(r * 512)..<((r + 1) * 512)]), rowLength: 512, type: type, importance: nil) }
        #expect(wholeRef == byRowRef)
    }
}
