import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

/// `OutputTensor.plan(from:ggmlRules:)` and `keepingStoredBlocks`: what a conversion to ggml
/// block types stores, and that blocks already in the decided type are copied, not requantised.
@Suite("block-type conversion plans")
struct BlockPlanTests {
    func bytes(_ view: GGMLTensorView?) -> [UInt8] { view?.bytes.withUnsafeBytes { Array($0) } ?? [] }

    @Test("stored blocks of the decided type are copied; other values are quantised as ggml quantises them")
    func copiesAndQuantises() throws {
        let golden = try GGUFFile(path: ggufFixtures.appendingPathComponent("blocks.gguf").path)
        let names: Set = ["ggml.q4_k.wide", "source.wide", "random.q4_k", "random.q8_0"]
        let rules = GGMLTypeRules(target: .q4_K, rows: .lastDimension, minimumElementCount: 0, includeDefaults: false)
        let plan = OutputTensor.plan(from: golden, ggmlRules: rules, include: { names.contains($0.name) })
        #expect(plan.count == 4)
        for t in plan {
            // Rows are the engine's whatever the rules say: all but the first dimension.
            #expect(t.ggml?.type == .q4_K && t.ggml?.rowLength == t.shape.count / t.shape.dimensions[0], "\(t.name)")
            #expect(t.blocks != nil)
        }
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("plan.wpk").path
        try WPKWriter.write(plan, metadata: JSONObject(), to: path, overwrite: false)
        let file = try WPKFile(path: path)
        #expect(file.verifyChecksums().isEmpty)
        // Copied: the source's own blocks, no error recorded (the GGUF recorded none).
        for name in ["ggml.q4_k.wide", "random.q4_k"] {
            #expect(bytes(try file.ggmlTensor(named: name)) == bytes(try golden.ggmlTensor(named: name)), "\(name)")
            #expect(file.entry(named: name)?.blocks?.metrics == nil)
        }
        // Quantised from the values as stable-diffusion.cpp's convert does: ggml's weighted
        // search with unit importance over rows of 768 (checked against ggml in GGMLWeightedGoldenTests).
        let values = try golden.tensor(named: "source.wide").floats()
        #expect(bytes(try file.ggmlTensor(named: "source.wide")) == (try unitImportanceBlocks(values, rowLength: 768, type: .q4_K)))
        #expect(file.entry(named: "source.wide")?.blocks?.metrics?.snrDecibels != nil)
        // Q8_0 blocks asked to be Q4_K are requantised from their values.
        #expect(file.entry(named: "random.q8_0")?.blocks?.type == .q4_K)
        #expect(file.entry(named: "random.q8_0")?.blocks?.metrics != nil)
    }

    @Test("the rules' kept tensors are F16 (matrices) and F32 (1-D); a misfit falls back and records it")
    func keptAndFallback() throws {
        let store = MemoryStore([
            ("w.norm.weight", .f32, [64, 64], sampleBytes(.f32, count: 4096)),
            ("bias", .f16, [64], sampleBytes(.f16, count: 64)),
            ("ids", .i64, [1, 8], sampleBytes(.i64, count: 8)),
            ("proj.weight", .f32, [64, 96], sampleBytes(.f32, count: 6144)),
            ("attn.weight", .f32, [64, 256], sampleBytes(.f32, count: 16384)),
        ])
        let rules = GGMLTypeRules(target: .q4_K, overrides: [try GGMLTypeRules.Override(parsing: "attn.*=q8_0")], rows: .allButFirstDimension)
        let plan = Dictionary(uniqueKeysWithValues: OutputTensor.plan(from: store, ggmlRules: rules).map { ($0.name, $0) })
        #expect(plan["w.norm.weight"]?.dtype == .f16 && plan["w.norm.weight"]?.ggml == nil)
        #expect(plan["bias"]?.dtype == .f32 && plan["bias"]?.ggml == nil)
        #expect(plan["ids"]?.dtype == .i64 && plan["ids"]?.ggml == nil)
        #expect(plan["proj.weight"]?.ggml == WPKBlockStorage(type: .q5_0, rowLength: 96, fallbackFrom: .q4_K))
        #expect(plan["attn.weight"]?.ggml == WPKBlockStorage(type: .q8_0, rowLength: 256))
        // A memory store holds no blocks.
        #expect(try plan["attn.weight"]?.blocks?() == nil)
    }

    @Test("keep: a GGUF's blocks stay blocks where the engine's rows hold them, else the dequantised F32")
    func keep() throws {
        let golden = try GGUFFile(path: ggufFixtures.appendingPathComponent("blocks.gguf").path)
        let names: Set = ["random.q4_k", "random.iq4_nl", "source.wide"]
        let plan = try OutputTensor.keepingStoredBlocks(
            OutputTensor.plan(from: golden, dtype: .keep, include: { names.contains($0.name) }),
            storedBlocks: { name in { try golden.ggmlTensor(named: name) } })
        let byName = Dictionary(uniqueKeysWithValues: plan.map { ($0.name, $0) })
        #expect(byName["random.q4_k"]?.ggml?.type == .q4_K)
        #expect(byName["random.iq4_nl"]?.ggml?.type == .iq4_NL)
        #expect(byName["source.wide"]?.ggml == nil && byName["source.wide"]?.dtype == .f32)
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("keep.wpk").path
        try WPKWriter.write(plan, metadata: JSONObject(), to: path, overwrite: false)
        let file = try WPKFile(path: path)
        for name in ["random.q4_k", "random.iq4_nl"] {
            #expect(bytes(try file.ggmlTensor(named: name)) == bytes(try golden.ggmlTensor(named: name)), "\(name)")
        }
    }
}
