import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// The engine computing with ggml block weights (issue 13): linear and convolution layers read
/// Q4_0…Q6_K blocks from a `.wpk` mapping row block by row block, and give what the same layers
/// give on the blocks decoded whole (by ``GGMLTensorView/dequantized()``, the reader every other
/// consumer uses) and held as F32.
@Suite("ggml block weights in the engine")
struct GGMLWeightTests {
    /// A linear layer and three convolutions whose rows (`in·kh·kw`) divide into 256-value
    /// k-blocks: 512, 2304 (256·3·3) and 256.
    static func source() -> MemoryStore {
        var random = TestRandom(seed: 1313)
        let store = MemoryStore()
        store.add("fc.weight", shape: [37, 512], values: random.values(37 * 512, scale: 0.05))
        store.add("fc.bias", shape: [37], values: random.values(37))
        store.add("conv.weight", shape: [20, 256, 3, 3], values: random.values(20 * 2304, scale: 0.02))
        store.add("conv.bias", shape: [20], values: random.values(20))
        store.add("down.weight", shape: [19, 256, 3, 3], values: random.values(19 * 2304, scale: 0.02))
        store.add("point.weight", shape: [21, 256, 1, 1], values: random.values(21 * 256, scale: 0.05))
        return store
    }

    /// `source()` written to a `.wpk` with every weight in `type` blocks (biases F32), and opened.
    static func blocks(_ type: GGMLType, in folder: URL) throws -> WPKFile {
        let store = source()
        let plan = store.tensors.map { d -> OutputTensor in
            let rank = d.shape.rank
            var t = OutputTensor(name: d.name, dtype: rank >= 2 ? .u8 : .f32, shape: d.shape, sourceName: d.name, sourceDType: .f32) {
                try store.tensor(named: d.name)
            }
            if rank >= 2 { t.ggml = WPKBlockStorage(type: type, rowLength: d.elementCount / d.shape[0]) }
            return t
        }
        let path = folder.appendingPathComponent("\(type.name).wpk").path
        try WPKWriter.write(plan, metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: false)
        return try WPKFile(path: path)
    }

    /// The block tensors of `file` decoded whole into F32, the rest copied.
    static func decoded(_ file: WPKFile) throws -> MemoryStore {
        let store = MemoryStore()
        for d in file.tensors {
            let values = try (try file.ggmlTensor(named: d.name)?.dequantized() ?? file.tensor(named: d.name)).floats()
            store.add(d.name, shape: d.shape.dimensions, values: values)
        }
        return store
    }

    static func outputs(_ store: any TensorStore, blocked: Bool) throws -> [[Float]] {
        let ws = Workspace(weights: WeightProvider(store: store))
        if blocked {
            ws.weightBlockFloats = 2304 * 3  // 3 output channels of a convolution, 13 rows of the linear weight
            ws.winogradWeightFloats = 36 * 256 * 8
        }
        var random = TestRandom(seed: 1314)
        let tokens = FloatTensor(shape: [5, 512], values: random.values(5 * 512))
        let image = FloatTensor(shape: [256, 9, 10], values: random.values(256 * 90))
        return [
            try ws.linear(tokens, "fc").scalars,
            try ws.conv2d(image, "conv", padding: .init(1)).scalars,
            try ws.conv2d(image, "down", stride: 2, padding: .init(1)).scalars,
            try ws.conv2d(image, "point", padding: .init(0)).scalars,
        ]
    }

    @Test("layers on blocks equal layers on the blocks decoded whole", arguments: GGMLType.quantizable)
    func layersComputeWithBlocks(type: GGMLType) throws {
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = try Self.blocks(type, in: folder)
        let provider = WeightProvider(store: file)
        #expect(provider.blockType("conv.weight") == type)
        #expect(provider.isQuantized("fc.weight"))
        #expect(provider.blockType("fc.bias") == nil)
        // The small budget really splits the weights into blocks of rows.
        #expect(try provider.rowsPerBlock("conv.weight", scratchFloats: 2304 * 3) == 3)
        let reference = try Self.outputs(try Self.decoded(file), blocked: false)
        // One block per weight at the default budget, and several blocks: the same values
        // either way; only the products' summation order may differ (a BLAS picks its blocking
        // and thread split at run time, so not even one block is bit-for-bit repeatable), while a
        // wrongly decoded block would be off by the order of the values themselves.
        let whole = try Self.outputs(file, blocked: false)
        let blocked = try Self.outputs(file, blocked: true)
        for (label, outputs) in [("one block", whole), ("blocks", blocked)] {
            for (i, (a, b)) in zip(outputs, reference).enumerated() {
                let scale = b.map { abs($0) }.max() ?? 1
                let worst = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
                #expect(a.count == b.count && worst <= 1e-5 * max(scale, 1), "\(type.name) \(label) layer \(i): max difference \(worst)")
            }
        }
        // And the quantisation is real: the outputs differ from the F32 source's.
        let exact = try Self.outputs(Self.source(), blocked: false)
        let m = QuantizationMetrics.compare(reference: exact[0], candidate: whole[0])
        #expect(m.maxAbsoluteError > 0, "\(type.name)")
        #expect((m.snrDecibels ?? 0) > 8, "\(type.name): \(m)")
    }

    @Test func sharedConversionsDecodeBlocksOnce() throws {
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = try Self.blocks(.q4_K, in: folder)
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let a = WeightProvider(store: file), b = WeightProvider(store: file)
        a.sharedConversions = shared
        b.sharedConversions = shared
        let plain = try WeightProvider(store: Self.decoded(file)).floats("conv.weight")
        let first = try a.floats("conv.weight"), second = try b.floats("conv.weight")
        #expect(first == plain && second == plain)
        #expect(shared.conversions == 1 && shared.reuses == 1)
    }
}
