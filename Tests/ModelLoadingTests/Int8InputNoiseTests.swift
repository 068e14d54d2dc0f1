import Foundation
import Quantization
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine
@testable import ModelLoading

/// The quality budget's prediction of int8 compute: the noise quantising a layer's inputs adds
/// (recorded by the calibration, ``ChannelEnergy/int8InputNoise``), its share of each int8 or
/// Q8_0 layer's predicted error (``Sensitivity/Candidate/inputError``), and its measured worth in
/// the image (``Int8InputGain``).
@Suite("int8 compute in the quality budget's prediction")
struct Int8InputNoiseTests {
    /// Each value's squared error when `row` (whole blocks of 32) is quantised as the int8
    /// products quantise their inputs: scale amax / 127, nearest even, clamped to ±127. Written
    /// here from the definition, apart from the recorder's C code.
    static func blockNoise(_ row: [Float]) -> [Double] {
        var out = [Double](repeating: 0, count: row.count)
        for start in stride(from: 0, to: row.count, by: 32) {
            let amax = row[start..<(start + 32)].map { abs($0) }.max()!
            guard amax > 0 else { continue }
            let scale = amax / 127, inverse = 127 / amax
            for j in start..<(start + 32) {
                let q = max(-127, min(127, (row[j] * inverse).rounded(.toNearestOrEven)))
                let e = Double(row[j]) - Double(scale) * Double(q)
                out[j] = e * e
            }
        }
        return out
    }

    static func values(_ count: Int, seed: UInt64) -> [Float] {
        var random = SplitMix(seed: seed)
        // A spread of magnitudes, and an outlier now and then (as activations have).
        return (0..<count).map { i in Float(random.uniform() * 2 - 1) * (i % 37 == 5 ? 40 : 1) }
    }

    @Test("a linear layer records each input channel's mean squared quantisation error over its rows, only under the prefix asked for")
    func linearNoise() throws {
        let (rows, channels) = (5, 96)
        let store = ArrayStore()
        store.add("unet.layer.weight", shape: [4, channels], values: Self.values(4 * channels, seed: 1))
        store.add("text.layer.weight", shape: [4, channels], values: Self.values(4 * channels, seed: 1))
        let x = Self.values(rows * channels, seed: 2)
        let recorder = ActivationRecorder(int8NoisePrefix: "unet.")
        for prefix in ["unet.", "text."] {
            let ws = Workspace(weights: WeightProvider(store: store, prefix: prefix), recorder: recorder)
            _ = try ws.linear(FloatTensor(shape: [rows, channels], values: x), "layer", bias: false)
        }
        var expected = [Double](repeating: 0, count: channels)
        for r in 0..<rows {
            for (j, e) in Self.blockNoise(Array(x[(r * channels)..<((r + 1) * channels)])).enumerated() { expected[j] += e / Double(rows) }
        }
        let statistics = recorder.statistics()
        let noise = try #require(statistics["unet.layer.weight"]?.int8InputNoise)
        #expect(noise.count == channels)
        let worst = zip(noise, expected).map { abs($0 - $1) / max($1, 1e-30) }.max() ?? .infinity
        #expect(worst < 1e-9, "relative difference \(worst)")
        // Not every value rounds exactly: there is something to predict.
        #expect(noise.contains { $0 > 0 })
        // The text encoder's layer has its mean squares and no noise.
        #expect(statistics["text.layer.weight"]?.meanSquares.count == channels)
        #expect(statistics["text.layer.weight"]?.int8InputNoise == nil)
        // A recorder not asked records none.
        let plain = ActivationRecorder()
        _ = try Workspace(weights: WeightProvider(store: store, prefix: "unet."), recorder: plain)
            .linear(FloatTensor(shape: [rows, channels], values: x), "layer", bias: false)
        #expect(plain.statistics()["unet.layer.weight"]?.int8InputNoise == nil)
    }

    @Test("an im2col convolution records its patches' noise (padding included) per channel; one Winograd takes records none")
    func convolutionNoise() throws {
        let (c, h, w) = (32, 6, 5)
        let store = ArrayStore()
        store.add("unet.conv.weight", shape: [3, c, 3, 3], values: Self.values(3 * c * 9, seed: 3))
        store.add("unet.wide.weight", shape: [8, c, 3, 3], values: Self.values(8 * c * 9, seed: 3))
        let x = Self.values(c * h * w, seed: 4)
        let recorder = ActivationRecorder(int8NoisePrefix: "unet.")
        let ws = Workspace(weights: WeightProvider(store: store, prefix: "unet."), recorder: recorder)
        _ = try ws.conv2d(FloatTensor(shape: [c, h, w], values: x), "conv", padding: .init(1))
        // 32 x 32 and 8 outputs: 64 Winograd tiles, the threshold (float there even in int8 compute).
        let big = Self.values(c * 32 * 32, seed: 5)
        _ = try ws.conv2d(FloatTensor(shape: [c, 32, 32], values: big), "wide", padding: .init(1))
        // The patch of each output pixel in (channel, kernel row, kernel column) order.
        var expected = [Double](repeating: 0, count: c)
        for oy in 0..<h {
            for ox in 0..<w {
                var patch: [Float] = []
                for ch in 0..<c {
                    for ky in 0..<3 {
                        for kx in 0..<3 {
                            let iy = oy + ky - 1, ix = ox + kx - 1
                            patch.append(iy >= 0 && iy < h && ix >= 0 && ix < w ? x[(ch * h + iy) * w + ix] : 0)
                        }
                    }
                }
                for (j, e) in Self.blockNoise(patch).enumerated() { expected[j / 9] += e / Double(h * w * 9) }
            }
        }
        let statistics = recorder.statistics()
        let noise = try #require(statistics["unet.conv.weight"]?.int8InputNoise)
        #expect(noise.count == c)
        let worst = zip(noise, expected).map { abs($0 - $1) / max($1, 1e-30) }.max() ?? .infinity
        #expect(worst < 1e-9, "relative difference \(worst)")
        #expect(statistics["unet.wide.weight"]?.meanSquares.count == c)
        #expect(statistics["unet.wide.weight"]?.int8InputNoise == nil)
    }

    @Test(
        "the recorded noise is the error of the values the int8 product multiplies",
        .enabled(if: ComputeBackend.current.int8Products, "needs the int8 products (AVX512_VNNI)")
    )
    func noiseIsTheProductsError() throws {
        let (rows, k) = (40, 128)
        let x = Self.values(rows * k, seed: 6)
        var sums = [Double](repeating: 0, count: k)
        x.withUnsafeBufferPointer { a in
            sums.withUnsafeMutableBufferPointer {
                Int8Products.addNoise(a.baseAddress!, rows: rows, k: k, strideRow: k, strideValue: 1, into: $0.baseAddress!)
            }
        }
        // Unpack what the product reads: per tile of 32 rows and block of 32 values, 8 groups of
        // 32 lanes x 4 bytes (+128), then one scale per row and block.
        let bytes = Int8Products.packedBytes(rows: rows, k: k)
        let packed = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { packed.deallocate() }
        x.withUnsafeBufferPointer { Int8Products.quantize($0.baseAddress!, rows: rows, k: k, strideRow: k, strideValue: 1, into: packed) }
        let blocks = k / 32, tileBytes = blocks * (32 * 32 + 32 * 4)
        var measured = [Double](repeating: 0, count: k)
        for r in 0..<rows {
            let tile = packed + (r / 32) * tileBytes, lane = r % 32
            let scales = (tile + blocks * 32 * 32).assumingMemoryBound(to: Float.self)
            for j in 0..<k {
                let b = j / 32, g = (j % 32) / 4, byte = j % 4
                let q = Int(tile.load(fromByteOffset: b * 32 * 32 + g * 32 * 4 + lane * 4 + byte, as: UInt8.self)) - 128
                let e = Double(x[r * k + j]) - Double(scales[b * 32 + lane]) * Double(q)
                measured[j] += e * e
            }
        }
        let worst = zip(sums, measured).map { abs($0 - $1) / max($1, 1e-30) }.max() ?? .infinity
        #expect(worst < 1e-9, "relative difference \(worst)")
    }

    @Test("int8 and Q8_0 candidates carry Σ W² v / Σ W² s as their input error when predicting int8 compute, and nothing otherwise")
    func candidatesCarryTheInputError() throws {
        let (out, inputs) = (6, 64)
        let weights = Self.values(out * inputs, seed: 7)
        let store = ArrayStore()
        store.add("unet.l.weight", shape: [out, inputs], values: weights)
        let squares = (0..<inputs).map { 0.5 + Double($0 % 5) }, noise = (0..<inputs).map { 1e-5 * Double(1 + $0 % 3) }
        let statistics = ActivationStatistics(
            channels: ["unet.l.weight": ChannelEnergy(meanSquares: squares, samples: 10, int8InputNoise: noise)],
            settings: .init(prompts: ["x"], width: 64, height: 64))
        var added = 0.0, signal = 0.0
        for (j, w) in weights.enumerated() {
            added += Double(w) * Double(w) * noise[j % inputs]
            signal += Double(w) * Double(w) * squares[j % inputs]
        }
        let ladder: [StorageChoice] = [.int8, .ggml(.q8_0), .ggml(.q4_0)]
        for int8Inputs in [true, false] {
            let t = try #require(
                Sensitivity.measure(
                    store, names: ["unet.l.weight"], ladder: ladder, rows: .allButFirstDimension, statistics: statistics, int8Inputs: int8Inputs
                ).first)
            #expect(t.candidates.map(\.storage) == [.ggml(.f16)] + ladder)
            for c in t.candidates {
                let expected = int8Inputs && (c.storage == .int8 || c.storage == .ggml(.q8_0)) ? added / signal : 0
                #expect(abs(c.inputError - expected) <= 1e-12 * expected, "\(c.storage) with int8 inputs \(int8Inputs)")
                #expect(t.noise(c) == c.relativeError + c.inputError)
            }
        }
    }

    @Test(
        "in int8 compute the first attempt's prediction, with the inputs' measured worth, is within 3 dB of the proof (tiny fixture)",
        .enabled(if: ComputeBackend.current.int8Products, "needs the int8 products (AVX512_VNNI)")
    )
    func predictionHoldsInInt8Compute() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try StableDiffusionModel(path: tinySD1)
        var options = QualityBudget.Options(goal: .bytes(5_600_000))
        options.maxAttempts = 1
        let result = try QualityBudget.run(source, to: folder.appendingPathComponent("auto.wpk").path, options: options)
        let measured = try #require(result.int8Inputs)
        // Every UNet layer that takes the int8 products was measured: the UNet's 3x3
        // convolutions at 32x32 take Winograd and stay float, so not all of them.
        #expect(measured.tensors > 100)
        #expect(measured.int8PSNR < measured.floatPSNR)
        // Guidance amplifies the inputs' independent errors far beyond the weights' (measured
        // +10.8 dB here): the layer gains alone put the image 6 to 9 dB above the proof.
        #expect(measured.scale > 2, "scale \(measured.scale)")
        let first = try #require(result.attempts.first)
        #expect(abs(first.predictedPSNR - first.measuredPSNR) < 3, "predicted \(first.predictedPSNR), measured \(first.measuredPSNR)")
        let recipe = try #require(result.recipe.objectValue)
        #expect(recipe["predicts_int8_inputs"] == .bool(true))
        #expect(recipe["int8_inputs"]?.objectValue?["scale_db"] != nil)
        // The proof did compute in int8 (the file holds int8 weights).
        #expect(result.measured.objectValue?["compute"] == .string("int8"))
    }
}
