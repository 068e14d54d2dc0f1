import CheckpointFormats
import Foundation
import Testing
import TensorCore
@testable import DiffusionEngine

/// Linear and convolution layers reading their weights block by block of output channels
/// (``WeightProvider/withRowBlocks(_:rowsPerBlock:_:)``): F16 and int8 weights converted a few
/// rows at a time, and Winograd's transformed weights bounded per block, give the same result
/// as the whole tensor at once.
@Suite("weights in blocks of rows")
struct WeightBlockTests {
    /// The layers under test: a linear layer, a 3x3 convolution on im2col (small image), one
    /// on Winograd (90 output tiles), a strided one and a pointwise one.
    static func store(dtype: DType) -> MemoryStore {
        var random = TestRandom(seed: 41)
        let store = MemoryStore()
        store.add("fc.weight", shape: [37, 50], values: random.values(37 * 50, scale: 0.2), dtype: dtype)
        store.add("fc.bias", shape: [37], values: random.values(37), dtype: dtype)
        store.add("small.weight", shape: [20, 9, 3, 3], values: random.values(20 * 81, scale: 0.2), dtype: dtype)
        store.add("small.bias", shape: [20], values: random.values(20), dtype: dtype)
        store.add("wino.weight", shape: [24, 16, 3, 3], values: random.values(24 * 16 * 9, scale: 0.1), dtype: dtype)
        store.add("wino.bias", shape: [24], values: random.values(24), dtype: dtype)
        store.add("down.weight", shape: [19, 16, 3, 3], values: random.values(19 * 16 * 9, scale: 0.1), dtype: dtype)
        store.add("point.weight", shape: [21, 16, 1, 1], values: random.values(21 * 16, scale: 0.3), dtype: dtype)
        return store
    }

    /// Every layer's output with the default budgets (one block for these sizes) and with
    /// budgets small enough to force several blocks.
    static func outputs(_ store: any TensorStore, blocked: Bool) throws -> [[Float]] {
        let ws = Workspace(weights: WeightProvider(store: store))
        if blocked {
            ws.weightBlockFloats = 50 * 3          // 3 rows of the linear weight
            ws.winogradWeightFloats = 36 * 16 * 8  // 8 output channels of transformed weights
        }
        var random = TestRandom(seed: 42)
        let tokens = FloatTensor(shape: [6, 50], values: random.values(6 * 50))
        let small = FloatTensor(shape: [9, 5, 7], values: random.values(9 * 35))
        let image = FloatTensor(shape: [16, 40, 36], values: random.values(16 * 40 * 36))
        #expect(Convolution.usesWinograd(.init(inChannels: 16, height: 40, width: 36, outChannels: 24,
                                                kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))))
        return [
            try ws.linear(tokens, "fc").scalars,
            try ws.conv2d(small, "small", padding: .init(1)).scalars,
            try ws.conv2d(image, "wino", padding: .init(1)).scalars,
            try ws.conv2d(image, "down", stride: 2, padding: .init(1)).scalars,
            try ws.conv2d(image, "point", padding: .init(0)).scalars,
        ]
    }

    @Test(arguments: ["f32", "f16", "int8"])
    func blocksGiveTheWholeTensorsResult(_ kind: String) throws {
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store: any TensorStore = switch kind {
        case "f16": Self.store(dtype: .f16)
        case "int8": try Int8ParityTests.int8(Self.store(dtype: .f32), in: folder, name: "blocks.wpk")
        default: Self.store(dtype: .f32)
        }
        let provider = WeightProvider(store: store)
        if kind == "int8" { #expect(provider.isQuantized("fc.weight") && provider.isQuantized("wino.weight")) }
        // The small budget really splits F16 and int8 weights (F32 is read in place, whole,
        // except where Winograd's transformed weights are bounded).
        let linearRows = try provider.rowsPerBlock("fc.weight", scratchFloats: 50 * 3)
        #expect(kind == "f32" ? linearRows == 37 : linearRows == 3)
        let whole = try Self.outputs(store, blocked: false)
        let blocked = try Self.outputs(store, blocked: true)
        let names = ["linear", "3x3 im2col", "3x3 winograd", "3x3 stride 2", "1x1"]
        for (i, name) in names.enumerated() {
            let c = expectClose(blocked[i], whole[i], shape: [whole[i].count], tolerance: 1e-5, "\(kind) \(name)")
            print("\(kind) \(name), blocks vs whole: \(c)")
        }
    }
}
