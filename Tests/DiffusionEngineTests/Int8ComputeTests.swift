import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// `generate --compute int8`: products whose weight is stored as int8 blocks take their input
/// quantised 32 values per scale and sum each block's byte products in integers (AVX512_VNNI,
/// `CEngineKernels/q8.c`). Where the processor lacks AVX512_VNNI (or the kernels are narrowed by
/// `WEIGHTPACK_KERNELS`) the mode is refused, and these tests check the refusal instead.
@Suite("int8 products")
struct Int8ComputeTests {
    /// The quantisation the kernel applies to each block of 32 input values, in the kernel's
    /// float arithmetic: scale amax / 127, values x · (127 / amax) rounded to nearest even.
    static func quantized(_ block: ArraySlice<Float>) -> (scale: Float, values: [Int]) {
        let amax = block.reduce(Float(0)) { max($0, abs($1)) }
        let inverse: Float = amax > 0 ? 127 / amax : 0
        return (amax / 127, block.map { max(-127, min(127, Int(($0 * inverse).rounded(.toNearestOrEven)))) })
    }

    /// A `.wpk` holding `name` as ggml Q8_0 blocks along its rows, opened.
    static func q8_0(_ name: String, shape: [Int], values: [Float], in folder: URL) throws -> WPKFile {
        let source = MemoryStore()
        source.add(name, shape: shape, values: values, dtype: .f32)
        var t = OutputTensor(name: name, dtype: .u8, shape: Shape(shape), sourceName: name, sourceDType: .f32) {
            try source.tensor(named: name)
        }
        t.ggml = WPKBlockStorage(type: .q8_0, rowLength: values.count / shape[0])
        let path = folder.appendingPathComponent("q8_0-\(UUID().uuidString).wpk").path
        try WPKWriter.write([t], metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: false)
        return try WPKFile(path: path)
    }

    /// `wp_q8_quantize` + `wp_q8_gemm` on an int8 weight read where it is stored, against the
    /// block-wise product computed here exactly (integers per block, doubles across blocks):
    /// rows that leave a short last tile (45 of 32 + 13, 70), weight rows that leave a short
    /// last group of four (11, 9), inputs with rows adjacent (im2col columns) or values adjacent
    /// (a linear layer's rows), and 2240 values per row (two passes of the kernel's 2048). Only
    /// the float sums across blocks may differ (relative 1e-5 of the sum of the blocks' sizes).
    /// Also with the weight stored as ggml Q8_0 blocks (scales between the blocks' values).
    @Test(arguments: [
        (45, 11, 96, false, "int8"), (45, 11, 96, true, "int8"), (70, 9, 2240, true, "int8"), (70, 9, 2240, false, "int8"),
        (45, 11, 96, false, "q8_0"), (70, 9, 2240, true, "q8_0"),
    ])
    func productIsTheBlockwiseProductOfTheQuantisedOperands(_ rows: Int, _ n: Int, _ k: Int, _ rowsAdjacent: Bool, _ format: String) throws {
        guard ComputeBackend.current.int8Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.int8) }
            return
        }
        var random = TestRandom(seed: 71)
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let values = random.values(n * k, scale: 0.2)
        let store: any TensorStore =
            format == "q8_0"
            ? try Self.q8_0("w.weight", shape: [n, k], values: values, in: folder)
            : try SharedConversionTests.store("w.weight", shape: [n, k], values: values, as: "int8", in: folder)
        let a = random.values(rows * k, scale: 2)
        // The stored weight's values and scales, as the provider dequantises them per block.
        let dequantized = try WeightProvider(store: store).floats("w.weight")
        var output = [Float](repeating: .nan, count: rows * n)
        let provider = WeightProvider(store: store)
        let used = try provider.withInt8Weight("w.weight") { w in
            #expect(w.rows == n && w.k == k && w.blockBytes == (format == "q8_0" ? 34 : 32))
            func value(_ j: Int, _ b: Int, _ i: Int) -> Int { Int(w.values[j * w.rowBytes + b * w.blockBytes + i]) }
            var expected = [Double](repeating: 0, count: rows * n), bound = [Double](repeating: 0, count: rows * n)
            for r in 0..<rows {
                for b in 0..<(k / 32) {
                    let (da, qa) = Self.quantized(a[(r * k + b * 32)..<(r * k + b * 32 + 32)])
                    for j in 0..<n {
                        let dw = Double(w.scales[j * (k / 32) + b])
                        var sum = 0
                        for i in 0..<32 { sum += qa[i] * value(j, b, i) }
                        // The weight's values times its scale are the dequantised weight.
                        #expect(Float(value(j, b, 0)) * Float(dw) == dequantized[j * k + b * 32])
                        // 128 x the block's sum, which the kernel subtracts.
                        #expect(Int(w.corrections[j * (k / 32) + b]) == 128 * (0..<32).reduce(0) { $0 + value(j, b, $1) })
                        expected[r * n + j] += Double(da) * dw * Double(sum)
                        bound[r * n + j] += abs(Double(da) * dw * Double(sum))
                    }
                }
            }
            // The input laid out as asked: values adjacent (rows k apart), or rows adjacent.
            let input = rowsAdjacent ? (0..<(rows * k)).map { a[($0 % rows) * k + $0 / rows] } : a
            let packed = UnsafeMutableRawPointer.allocate(byteCount: Int8Products.packedBytes(rows: rows, k: k), alignment: 64)
            defer { packed.deallocate() }
            input.withUnsafeBufferPointer { p in
                Int8Products.quantize(
                    p.baseAddress!, rows: rows, k: k, strideRow: rowsAdjacent ? 1 : k, strideValue: rowsAdjacent ? rows : 1, into: packed)
            }
            output.withUnsafeMutableBufferPointer { c in
                // Rows adjacent in the output too when the input's were (a convolution's layout).
                if rowsAdjacent {
                    var transposed = [Float](repeating: .nan, count: rows * n)
                    transposed.withUnsafeMutableBufferPointer { t in
                        Int8Products.multiply(rows: rows, packed: packed, weight: w, c: t.baseAddress!, ldcRow: 1, ldcColumn: rows)
                    }
                    for r in 0..<rows { for j in 0..<n { c[r * n + j] = transposed[j * rows + r] } }
                } else {
                    Int8Products.multiply(rows: rows, packed: packed, weight: w, c: c.baseAddress!, ldcRow: n, ldcColumn: 1)
                }
            }
            var worst = 0.0
            for i in 0..<(rows * n) {
                let excess = abs(Double(output[i]) - expected[i]) - 1e-5 * bound[i] - 1e-30
                worst = max(worst, excess)
            }
            #expect(worst <= 0, "\(format) \(rows) x \(n) x \(k), rows adjacent \(rowsAdjacent): off the exact product by \(worst) beyond rounding")
        }
        #expect(used)
        #expect(!output.contains { $0.isNaN })
    }

    /// A convolution's patches quantised straight from its input (`wp_q8_quantize_patches`, what
    /// the int8 convolutions use) are byte for byte im2col's columns quantised: at 32x32 (16
    /// pixels of one output row at a time, plain loads), at 12x12 (16 pixels span two rows:
    /// gathers), with stride 2 and asymmetric padding, from a pixel range that starts mid-row
    /// and ends in a short tile.
    @Test(arguments: [(32, 32, 1, 1, 1, 0..<1024), (12, 12, 1, 1, 1, 0..<144), (15, 17, 2, 0, 1, 5..<61), (32, 32, 1, 1, 1, 37..<300)])
    func patchesQuantisedFromTheInputAreIm2colQuantised(
        _ height: Int, _ width: Int, _ stride: Int, _ top: Int, _ left: Int, _ pixels: Range<Int>
    ) throws {
        guard ComputeBackend.current.int8Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.int8) }
            return
        }
        var random = TestRandom(seed: 73)
        let channels = 32
        let g = Convolution.Geometry(
            inChannels: channels, height: height, width: width, outChannels: 8, kernelHeight: 3, kernelWidth: 3, stride: stride,
            padding: .init(top: top, left: left, bottom: 1, right: 1))
        #expect(pixels.upperBound <= g.outHeight * g.outWidth)
        let input = random.values(channels * height * width, scale: 3)
        let k = g.patchSize, n = pixels.count, bytes = Int8Products.packedBytes(rows: n, k: k)
        let direct = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let lowered = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer {
            direct.deallocate()
            lowered.deallocate()
        }
        direct.initializeMemory(as: UInt8.self, repeating: 0xAA, count: bytes)
        lowered.initializeMemory(as: UInt8.self, repeating: 0x55, count: bytes)
        var columns = [Float](repeating: .nan, count: k * n)
        input.withUnsafeBufferPointer { x in
            Int8Products.quantizePatches(x.baseAddress!, geometry: g, pixels: pixels, into: direct)
            columns.withUnsafeMutableBufferPointer { c in
                Convolution.im2col(x.baseAddress!, geometry: g, pixels: pixels, into: c.baseAddress!)
                Int8Products.quantize(c.baseAddress!, rows: n, k: k, strideRow: 1, strideValue: n, into: lowered)
            }
        }
        let differing = (0..<bytes).filter { direct.load(fromByteOffset: $0, as: UInt8.self) != lowered.load(fromByteOffset: $0, as: UInt8.self) }
        #expect(differing.isEmpty, "\(differing.count) of \(bytes) bytes differ, first at \(differing.first ?? -1)")
    }

    /// Layers under int8 compute with int8 weights: a linear layer, a 3x3 convolution at 32x32
    /// (which Winograd takes: it stays float Winograd in int8 compute, identical to float), one
    /// at 12x12 (im2col) and a 1x1 one, on two workspaces at once
    /// whose providers share (each weight's block figures made once for both) and on one alone.
    /// The cores agree exactly (the same integers, the same float order); against float compute
    /// with the same weights the outputs carry the inputs' quantisation: within 30 dB, and not
    /// identical (the integer path ran). A weight left unquantised (F16, under the quantiser's
    /// 1024 values) takes the float path: identical to float compute.
    @Test func layersComputeInInt8AndTheCoresAgree() throws {
        guard ComputeBackend.current.int8Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.int8) }
            return
        }
        var random = TestRandom(seed: 72)
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let f32 = MemoryStore()
        f32.add("lin.weight", shape: [300, 256], values: random.values(300 * 256, scale: 0.1), dtype: .f32)
        f32.add("lin.bias", shape: [300], values: random.values(300), dtype: .f32)
        f32.add("wino.weight", shape: [64, 32, 3, 3], values: random.values(64 * 32 * 9, scale: 0.1), dtype: .f32)
        f32.add("im2col.weight", shape: [64, 128, 3, 3], values: random.values(64 * 128 * 9, scale: 0.05), dtype: .f32)
        f32.add("point.weight", shape: [256, 320, 1, 1], values: random.values(256 * 320, scale: 0.1), dtype: .f32)
        f32.add("small.weight", shape: [16, 32], values: random.values(16 * 32, scale: 0.1), dtype: .f32)
        let store = try Int8ParityTests.int8(f32, in: folder, name: "layers.wpk")
        for name in ["lin", "wino", "im2col", "point"] { #expect(WeightProvider(store: store).isQuantized(name + ".weight")) }
        #expect(!WeightProvider(store: store).isQuantized("small.weight"))
        let layers = [
            LayerInput(name: "lin", values: random.values(70 * 256), shape: [70, 256]),
            LayerInput(name: "wino", values: random.values(32 * 32 * 32), shape: [32, 32, 32]),
            LayerInput(name: "im2col", values: random.values(128 * 12 * 12), shape: [128, 12, 12]),
            LayerInput(name: "point", values: random.values(320 * 8 * 8), shape: [320, 8, 8]),
            LayerInput(name: "small", values: random.values(70 * 32), shape: [70, 32]),
        ]
        let alone = try runLayers(WeightProvider(store: store), .int8, layers)
        let float = try runLayers(WeightProvider(store: store), .f32, layers)
        let names = ["linear", "winograd", "im2col", "pointwise", "unquantised linear"]
        #expect(alone.count == 5 && float.count == 5)
        for (layer, (int8, reference)) in zip(names, zip(alone, float)) {
            let quality = snr(reference, int8), same = int8 == reference
            print("int8 \(layer) against float compute on the same weights: \(quality) dB")
            if layer == "unquantised linear" {
                #expect(same, "an unquantised weight left the float path: \(quality) dB")
            } else if layer == "winograd" {
                // A convolution Winograd takes stays on it, in float, in int8 compute too.
                #expect(
                    Convolution.usesWinograd(
                        Convolution.Geometry(
                            inChannels: 32, height: 32, width: 32, outChannels: 64, kernelHeight: 3, kernelWidth: 3, stride: 1,
                            padding: Convolution.Padding(1))))
                #expect(same, "a Winograd-sized convolution left float Winograd: \(quality) dB")
            } else {
                #expect(quality >= 30 && !same, "\(layer): \(quality) dB, identical \(same)")
            }
        }
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let cores = runLayersOnTwoSharingCores(store, shared, .int8, layers)
        for i in 0..<2 {
            let same = cores[i] == alone
            #expect(same, "core \(i) differs from one core alone")
        }
        // The four int8 weights' block figures made once each, by one provider and used by the
        // other (an F16-stored bias's float copy may be shared too).
        #expect(shared.reuses == shared.conversions && shared.conversions >= 4 && shared.floatsHeld == 0, "made \(shared.conversions)")
    }

    /// Layers whose weights are ggml Q8_0 blocks (a q8_0 `.wpk`; GGUF files hold the same blocks)
    /// take the integer path too: a linear layer, a 3x3 and a 1x1 convolution against float
    /// compute on the same weights (30 dB at least, not identical).
    @Test func q8_0LayersComputeInInt8() throws {
        guard ComputeBackend.current.int8Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.int8) }
            return
        }
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = try GGMLWeightTests.blocks(.q8_0, in: folder)
        #expect(WeightProvider(store: store).hasInt8Weights)
        var random = TestRandom(seed: 74)
        let layers = [
            LayerInput(name: "fc", values: random.values(45 * 512), shape: [45, 512]),
            LayerInput(name: "conv", values: random.values(256 * 12 * 12), shape: [256, 12, 12]),
            LayerInput(name: "point", values: random.values(256 * 8 * 8), shape: [256, 8, 8]),
        ]
        let int8 = try runLayers(WeightProvider(store: store), .int8, layers)
        let float = try runLayers(WeightProvider(store: store), .f32, layers)
        #expect(int8.count == 3 && float.count == 3)
        for (layer, (a, b)) in zip(["linear", "3x3", "1x1"], zip(int8, float)) {
            let quality = snr(b, a), same = a == b
            print("q8_0 \(layer) in int8 against float compute: \(quality) dB")
            #expect(quality >= 30 && !same, "\(layer): \(quality) dB, identical \(same)")
        }
    }
}
