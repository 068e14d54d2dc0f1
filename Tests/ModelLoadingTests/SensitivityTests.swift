import Foundation
import Quantization
import TensorCore
import Testing

@testable import DiffusionEngine
@testable import ModelLoading

/// Issue 14's measuring core: the activation recorder, the calibration run and the predicted
/// per-tensor error (`Sensitivity`). Run in release (`-Xswiftc -enable-testing`) for speed.
@Suite("calibration statistics and predicted per-tensor error")
struct SensitivityTests {
    // MARK: (a) the recorder

    @Test("A linear layer records the per-input-channel mean squares of its rows, summed over calls")
    func recorderLinear() throws {
        let store = ArrayStore()
        store.add("layer.weight", shape: [2, 3], values: [1, 0, 0, 0, 1, 0])
        let recorder = ActivationRecorder()
        let ws = Workspace(weights: WeightProvider(store: store, prefix: ""), recorder: recorder)
        _ = try ws.linear(FloatTensor(shape: [2, 3], values: [1, 2, 3, 4, -5, 6]), "layer", bias: false)
        // (1² + 4²)/2, (2² + 5²)/2, (3² + 6²)/2
        #expect(recorder.statistics()["layer.weight"] == ChannelEnergy(meanSquares: [8.5, 14.5, 22.5], samples: 2))
        _ = try ws.linear(FloatTensor(shape: [1, 3], values: [0, 0, 3]), "layer", bias: false)
        // (1 + 16 + 0)/3, (4 + 25 + 0)/3, (9 + 36 + 9)/3
        let s = try #require(recorder.statistics()["layer.weight"])
        #expect(s.samples == 3)
        #expect(zip(s.meanSquares, [17.0 / 3, 29.0 / 3, 18]).allSatisfy { abs($0 - $1) < 1e-12 })
        // No recorder: nothing recorded (and the product is the same).
        let quiet = Workspace(weights: WeightProvider(store: store, prefix: ""))
        #expect(quiet.recorder == nil)
    }

    @Test("A convolution records mean squares over its real input pixels, zero padding not counted, under the weight's full name")
    func recorderConvolution() throws {
        let store = ArrayStore()
        store.add("net.conv.weight", shape: [1, 2, 3, 3], values: [Float](repeating: 0.5, count: 18))
        let recorder = ActivationRecorder()
        let ws = Workspace(weights: WeightProvider(store: store, prefix: "net."), recorder: recorder)
        // Channel 0: 1, 2, 3, 4; channel 1: 0, 0, 0, 2 (a 2×2 image, padded by 1 on every side).
        _ = try ws.conv2d(FloatTensor(shape: [2, 2, 2], values: [1, 2, 3, 4, 0, 0, 0, 2]), "conv", padding: .init(1))
        #expect(recorder.statistics() == ["net.conv.weight": ChannelEnergy(meanSquares: [30.0 / 4, 4.0 / 4], samples: 4)])
    }

    // MARK: Calibration of the tiny fixture

    @Test("Calibrating the tiny model gives statistics for every weight a q4_K conversion quantises, one per input channel")
    func calibrationCoversQuantisedWeights() throws {
        // With its own configuration (64 pixels); from the single file alone it would be the
        // family's 512 pixels, calibrated at 256.
        let model = try StableDiffusionModel(path: tinySD1, configurationFolder: tinySD1Configuration)
        #expect(try Calibration.Settings.defaults(for: StableDiffusionModel(path: tinySD1)).width == 256)
        var settings = Calibration.Settings.defaults(for: model)
        #expect(model.defaultSize == 64 && settings.width == 64 && settings.height == 64)
        #expect(settings.prompts.count == 3 && settings.seeds == [0] && settings.steps == 4)
        settings.prompts = Array(settings.prompts.prefix(2))
        var calls: [(Int, Int)] = []
        let statistics = try Calibration.run(model, settings: settings) { calls.append(($0, $1)) }
        // Text, 4 steps, decode, encode per generation.
        #expect(calls.last.map { $0.0 == $0.1 && $0.1 == 2 * 7 } == true)
        #expect(statistics.settings == settings)
        #expect(model.pipeline.activationRecorder == nil)  // removed after the run
        let store = model.canonical.store
        let rules = GGMLTypeRules(target: .q4_K, rows: .allButFirstDimension)
        var quantised = 0
        for d in store.tensors where d.shape.rank == 2 || d.shape.rank == 4 {
            guard rules.decision(for: d).type.isBlockQuantized else { continue }
            quantised += 1
            let energy = try #require(statistics.channels[d.name], "no statistics for \(d.name)")
            #expect(energy.meanSquares.count == d.shape[1], "\(d.name)")
            #expect(energy.samples > 0 && energy.meanSquares.allSatisfy { $0.isFinite && $0 >= 0 }, "\(d.name)")
        }
        #expect(quantised > 300)
        // Every key is a canonical tensor of the store.
        #expect(statistics.channels.keys.allSatisfy { store.descriptor(named: $0) != nil })
        // The JSON for the recipe carries every field.
        let json = try #require(settings.json.objectValue)
        #expect(Set(json.keys).isSuperset(of: ["prompts", "seeds", "width", "height", "steps", "guidance_scale"]))
    }

    @Test("Settings that cannot run are refused with invalidCalibration")
    func badSettings() throws {
        let model = try StableDiffusionModel(path: tinySD1)
        var settings = Calibration.Settings.defaults(for: model)
        settings.prompts = []
        #expect {
            try Calibration.run(model, settings: settings)
        } throws: { ($0 as? ModelLoadingError)?.code == .invalidCalibration }
    }

    // MARK: (b) prediction against measurement

    /// Runs one weight of the tiny UNet as a layer on inputs whose channels have very different
    /// scales, with the weight as stored and quantised to `type`, and returns the measured
    /// relative output error, the weighted prediction and the unweighted (weight-space) one.
    func predictedAndMeasured(_ name: String, type: GGMLType) throws -> (measured: Double, predicted: Double, unweighted: Double) {
        let model = try CanonicalModel.open(tinySD1)
        let d = try #require(model.store.descriptor(named: name))
        let shape = d.shape.dimensions
        let w = try model.store.tensor(named: name).floats()
        let rows = shape[0], rowLength = w.count / rows, inputs = shape[1]
        // The weight quantised whole, row by row, with the project's quantiser.
        var q = [Float](repeating: 0, count: w.count)
        var block = [UInt8](repeating: 0, count: type.byteCount(values: rowLength)!)
        for r in 0..<rows {
            try w.withUnsafeBufferPointer { src in
                try block.withUnsafeMutableBytes { raw in
                    try q.withUnsafeMutableBufferPointer { out in
                        // As the writers quantise (and the prediction): ggml's searches with unit importance.
                        _ = try GGMLBlocks.quantizeAsConvert(
                            src.baseAddress! + r * rowLength, count: rowLength, rowLength: rowLength, type: type, importance: nil,
                            into: raw.baseAddress!)
                        try GGMLBlocks.dequantize(UnsafeRawBufferPointer(raw), type: type, count: rowLength, into: out.baseAddress! + r * rowLength)
                    }
                }
            }
        }
        let original = ArrayStore(), quantised = ArrayStore()
        original.add("layer.weight", shape: shape, values: w)
        quantised.add("layer.weight", shape: shape, values: q)
        // Inputs: Gaussian values shaped as the calibration's (2 × 77 token rows for a linear layer,
        // a 16×16 image for a convolution), each channel at its own scale: the 1/32 of the
        // channels where this type's rounding costs the most relative to the weight (the largest
        // Σ_i (W−Q(W))² / Σ_i W² over the channel's columns) 100× louder than the others, which
        // are spread over 10^(±0.5); outlier channels of trained networks are this kind of input.
        // For channels of random scales the weighted and unweighted predictions agree within
        // about 0.3 dB on this layer, as its random weights give the weighting nothing to find.
        var random = SplitMix(seed: 14)
        let kernel = rowLength / inputs
        let columnError = (0..<inputs).map { j in
            var noise = 0.0, signal = 0.0
            for r in 0..<rows {
                for k in 0..<kernel {
                    let i = r * rowLength + j * kernel + k
                    noise += Double(w[i] - q[i]) * Double(w[i] - q[i])
                    signal += Double(w[i]) * Double(w[i])
                }
            }
            return signal > 0 ? noise / signal : 0
        }
        let loudest = Set(columnError.indices.sorted { columnError[$0] > columnError[$1] }.prefix(max(1, inputs / 32)))
        let scales = (0..<inputs).map { j in Float(loudest.contains(j) ? 100 : pow(10, random.uniform() - 0.5)) }
        let x: FloatTensor
        if shape.count == 2 {
            let n = 2 * 77
            x = FloatTensor(shape: [n, inputs], values: (0..<(n * inputs)).map { i in random.gaussian() * scales[i % inputs] })
        } else {
            let plane = 16 * 16
            x = FloatTensor(shape: [inputs, 16, 16], values: (0..<(plane * inputs)).map { i in random.gaussian() * scales[i / plane] })
        }
        let recorder = ActivationRecorder()
        let run = { (store: ArrayStore, recorder: ActivationRecorder?) throws -> [Float] in
            let ws = Workspace(weights: WeightProvider(store: store, prefix: ""), recorder: recorder)
            return shape.count == 2
                ? try ws.linear(x, "layer", bias: false).scalars
                : try ws.conv2d(x, "layer", padding: .init(shape[2] / 2)).scalars
        }
        let y = try run(original, recorder), yq = try run(quantised, nil)
        var noise = 0.0, signal = 0.0
        for i in 0..<y.count {
            noise += Double(y[i] - yq[i]) * Double(y[i] - yq[i])
            signal += Double(y[i]) * Double(y[i])
        }
        let statistics = ActivationStatistics(
            channels: recorder.statistics(), settings: .init(prompts: ["synthetic"], width: 128, height: 128))
        let predicted = try Sensitivity.measure(
            original, names: ["layer.weight"], ladder: [.ggml(type)], rows: .allButFirstDimension, statistics: statistics, sampleRows: rows)
        let unweighted = try Sensitivity.measure(
            original, names: ["layer.weight"], ladder: [.ggml(type)], rows: .allButFirstDimension, statistics: nil, sampleRows: rows)
        #expect(predicted[0].weighted && !unweighted[0].weighted)
        let p = try #require(predicted[0].candidates.first { $0.storage == .ggml(type) })
        let u = try #require(unweighted[0].candidates.first { $0.storage == .ggml(type) })
        // The unweighted prediction is the plain weight-space error.
        #expect(abs(10 * log10(u.relativeError) + u.weightSNR) < 1e-9)
        return (noise / signal, p.relativeError, u.relativeError)
    }

    @Test(
        "Predicted relative output error is within 2 dB of the measured one for a linear and a 3×3 convolution of the tiny UNet, and closer than the unweighted weight error",
        arguments: [
            "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight",
            "unet.down_blocks.0.resnets.0.conv1.weight",
        ])
    func predictionAgainstMeasurement(name: String) throws {
        for type in [GGMLType.q4_0, .q8_0] {
            let r = try predictedAndMeasured(name, type: type)
            let (m, p, u) = (10 * log10(r.measured), 10 * log10(r.predicted), 10 * log10(r.unweighted))
            print("\(name) \(type.name): measured \(m) dB, predicted \(p) dB, unweighted \(u) dB")
            #expect(abs(m - p) <= 2, "\(name) \(type.name): measured \(m) dB, predicted \(p) dB")
            // Measurably better: the unweighted weight-space error misses by at least 0.25 dB more
            // (measured with ggml's searches at unit importance: weighted within 0.16 dB,
            // unweighted 0.47–1.67 dB off; the conv's 32 channels of 288 random weights each leave
            // the weighting little to find, 0.47 against 0.16 dB at Q4_0).
            #expect(abs(m - u) >= abs(m - p) + 0.25, "\(name) \(type.name): measured \(m), weighted \(p), unweighted \(u) dB")
        }
    }

    // MARK: (c) the ladder

    @Test("For every tensor of the tiny model, predicted error grows down the ladder: q8_0 < q5_K < q4_K < q3_K < q2_K (and q8_0 < q5_0 < q4_0)")
    func monotoneLadder() throws {
        let model = try StableDiffusionModel(path: tinySD1, configurationFolder: tinySD1Configuration)
        var settings = Calibration.Settings.defaults(for: model)
        settings.prompts = [settings.prompts[0]]
        let statistics = try Calibration.run(model, settings: settings)
        let store = model.canonical.store
        let rules = GGMLTypeRules(target: .q4_K, rows: .allButFirstDimension)
        let names = store.tensors.filter { ($0.shape.rank == 2 || $0.shape.rank == 4) && rules.decision(for: $0).type.isBlockQuantized }.map(\.name)
        let ladder: [StorageChoice] = [
            .ggml(.q8_0), .int8, .ggml(.q6_K), .ggml(.q5_K), .ggml(.q5_0), .ggml(.q4_K), .ggml(.q4_0), .ggml(.q3_K), .ggml(.q2_K),
        ]
        let options = try Sensitivity.measure(store, names: names, ladder: ladder, rows: .allButFirstDimension, statistics: statistics)
        #expect(options.map(\.name) == names)
        // Weighted wherever the layer saw something other than zeros (at 64 pixels the lowest
        // level's 1×1 maps normalise to zero before some convolutions).
        for o in options {
            #expect(o.weighted == statistics.channels[o.name]!.meanSquares.contains { $0 > 0 }, "\(o.name)")
        }
        #expect(options.filter(\.weighted).count > options.count * 9 / 10)
        try checkLadder(options, ladder: ladder, store: store, rows: .allButFirstDimension)
        // The one tiny weight whose rows (256) fit the k-quants has them all.
        #expect(options.contains { o in [GGMLType.q5_K, .q4_K, .q3_K, .q2_K].allSatisfy { t in o.candidates.contains { $0.storage == .ggml(t) } } })
    }

    func checkLadder(_ options: [Sensitivity.TensorOptions], ladder: [StorageChoice], store: any TensorStore, rows: GGMLTypeRules.Rows) throws {
        for o in options {
            let error = { (t: GGMLType) in o.candidates.first { $0.storage == .ggml(t) }?.relativeError }
            let d = try #require(store.descriptor(named: o.name))
            // F16 first and always there; sizes are what the writers store.
            #expect(o.candidates.first?.storage == .ggml(.f16))
            #expect(o.candidates.first?.bytes == 2 * d.elementCount)
            for c in o.candidates {
                switch c.storage {
                case .ggml(let t): #expect(c.bytes == t.byteCount(values: d.elementCount), "\(o.name) \(t.name)")
                case .int8: #expect(c.bytes == (try Int8BlockLayout(shape: d.shape)).byteCount, "\(o.name) int8")
                }
            }
            // An all-zero weight (the fixture has some) rounds exactly in every type.
            if error(.f16) == 0, error(.q8_0) == 0 {
                #expect(o.candidates.allSatisfy { $0.relativeError == 0 && $0.weightSNR == .infinity }, "\(o.name)")
                continue
            }
            // Every block type that fits the rows is there, and no other.
            let fit = GGMLTypeRules(target: .f16, rows: rows).rowLength(of: d.shape)
            for case .ggml(let t) in ladder where t.isBlockQuantized {
                #expect((error(t) != nil) == (fit % t.blockValues == 0), "\(o.name) \(t.name)")
            }
            for chain in [[GGMLType.q8_0, .q5_K, .q4_K, .q3_K, .q2_K], [.q8_0, .q5_0, .q4_0]] {
                let errors = chain.compactMap(error)
                #expect(
                    zip(errors, errors.dropFirst()).allSatisfy { $0 < $1 },
                    "\(o.name): \(zip(chain, chain.map(error)).map { "\($0.name) \($1 ?? .nan)" })")
            }
            if let f16 = error(.f16), let q8 = error(.q8_0) { #expect(f16 < q8, "\(o.name)") }
        }
    }

    @Test("GGUF rows: a convolution's block fit is decided on its last dimension, so only F16 remains for a 3×3 kernel")
    func ggufRows() throws {
        let model = try CanonicalModel.open(tinySD1)
        let conv = "unet.down_blocks.0.resnets.0.conv1.weight", linear = "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"
        let ladder: [StorageChoice] = [.ggml(.q8_0), .ggml(.q4_K)]
        let gguf = try Sensitivity.measure(model.store, names: [conv, linear], ladder: ladder, rows: .lastDimension, statistics: nil)
        #expect(gguf[0].candidates.map(\.storage) == [.ggml(.f16)])
        #expect(gguf[1].candidates.map(\.storage) == [.ggml(.f16), .ggml(.q8_0), .ggml(.q4_K)])
        let wpk = try Sensitivity.measure(model.store, names: [conv, linear], ladder: ladder, rows: .allButFirstDimension, statistics: nil)
        #expect(wpk[0].candidates.map(\.storage) == [.ggml(.f16), .ggml(.q8_0)])  // rows of 288: no k-quant
        // A linear weight's rows are the same either way: the same figures.
        #expect(wpk[1].candidates == gguf[1].candidates)
    }

    @Test("Statistics that do not fit the weight are refused")
    func mismatchedStatistics() throws {
        let model = try CanonicalModel.open(tinySD1)
        let name = "unet.down_blocks.0.resnets.0.conv1.weight"
        let statistics = ActivationStatistics(
            channels: [name: ChannelEnergy(meanSquares: [1, 2, 3], samples: 1)], settings: .init(prompts: ["x"], width: 64, height: 64))
        #expect {
            try Sensitivity.measure(model.store, names: [name], ladder: [.ggml(.q8_0)], rows: .allButFirstDimension, statistics: statistics)
        } throws: { ($0 as? ModelLoadingError)?.code == .invalidCalibration }
    }

    // MARK: Timing (the full size opt-in)

    /// Calibrates `model` with its default settings and measures every weight a q4_K
    /// conversion quantises over a ladder of eight storages (nine with F16), checking and
    /// timing both: wall time and this process's CPU time (the machine is shared).
    func timedCalibrationAndMeasure(_ model: StableDiffusionModel, label: String) throws -> (wall: Duration, cpu: Double) {
        let clock = ContinuousClock()
        let start = clock.now, cpuStart = processCPUSeconds()
        let settings = Calibration.Settings.defaults(for: model)
        let statistics = try Calibration.run(model, settings: settings)
        let calibrated = clock.now, cpuCalibrated = processCPUSeconds()
        let store = model.canonical.store
        let rules = GGMLTypeRules(target: .q4_K, rows: .allButFirstDimension)
        let quantised = store.tensors.filter { ($0.shape.rank == 2 || $0.shape.rank == 4) && rules.decision(for: $0).type.isBlockQuantized }
        for d in quantised {
            #expect(statistics.channels[d.name]?.meanSquares.count == d.shape[1], "\(d.name)")
        }
        let ladder: [StorageChoice] = [.ggml(.q8_0), .int8, .ggml(.q6_K), .ggml(.q5_K), .ggml(.q4_K), .ggml(.q4_0), .ggml(.q3_K), .ggml(.q2_K)]
        let options = try Sensitivity.measure(
            store, names: quantised.map(\.name), ladder: ladder, rows: .allButFirstDimension, statistics: statistics)
        let measured = clock.now, cpuMeasured = processCPUSeconds()
        try checkLadder(options, ladder: ladder, store: store, rows: .allButFirstDimension)
        let loadAverage = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first ?? "?"
        print(
            "\(label) (\(settings.width)x\(settings.height), \(settings.prompts.count) prompts, \(settings.steps) steps): calibration \(calibrated - start) wall, \(cpuCalibrated - cpuStart) s CPU; measure of \(options.count) tensors × \(ladder.count + 1) storages \(measured - calibrated) wall, \(cpuMeasured - cpuCalibrated) s CPU; load average \(loadAverage)"
        )
        return (measured - start, cpuMeasured - cpuStart)
    }

    @Test("Tiny SD 1.5: calibration with its default settings and the measure of every quantised weight, timed")
    func tinyTiming() throws {
        let model = try StableDiffusionModel(path: tinySD1, configurationFolder: tinySD1Configuration)
        let t = try timedCalibrationAndMeasure(model, label: "tiny SD 1.5")
        #expect(t.wall < .seconds(120))
    }

    static let fullSize = (ProcessInfo.processInfo.environment["WEIGHTPACK_BENCH_DIR"] ?? "/tmp/wpbench") + "/sd15-random.safetensors"
    static var fullSizeEnabled: Bool {
        ProcessInfo.processInfo.environment["WEIGHTPACK_FULLSIZE"] == "1" && FileManager.default.fileExists(atPath: fullSize)
    }

    @Test(
        "Full-size SD 1.5: calibration with the default settings and the measure of every quantised weight within 4 minutes of two cores",
        .enabled(if: SensitivityTests.fullSizeEnabled, "needs WEIGHTPACK_FULLSIZE=1 and /tmp/wpbench/sd15-random.safetensors"))
    func fullSizeTiming() throws {
        let model = try StableDiffusionModel(path: Self.fullSize)
        let t = try timedCalibrationAndMeasure(model, label: "full-size SD 1.5")
        // The target is 4 minutes on this 2-core machine; on a loaded machine the wall time says
        // more about the other jobs, so the check is on the CPU time two cores would spend.
        #expect(t.cpu / 2 < 240, "\(t.cpu) s CPU, \(t.wall) wall")
    }
}

/// CPU seconds this process has used (all threads).
func processCPUSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

/// The tiny model's own configuration files (its diffusers folder).
let tinySD1Configuration = URL(fileURLWithPath: tinySD1).deletingLastPathComponent().appendingPathComponent("diffusers").path

/// A store of F32 tensors held in memory.
final class ArrayStore: TensorStore, @unchecked Sendable {
    var formatName: String { "memory" }
    private(set) var tensors: [TensorDescriptor] = []
    var metadata: [String: String] { [:] }
    private var data: [String: TensorBytes] = [:]

    func add(_ name: String, shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count)
        let bytes = values.withUnsafeBytes { TensorBytes(copying: $0) }
        tensors.append(TensorDescriptor(name: name, dtype: .f32, shape: Shape(shape), byteCount: values.count * 4))
        data[name] = bytes
    }

    func tensor(named name: String) throws -> TensorView {
        guard let bytes = data[name], let d = tensors.first(where: { $0.name == name }) else {
            throw EngineError(.missingTensor, "no tensor", tensorName: name)
        }
        return TensorView(descriptor: d, bytes: bytes)
    }
}

/// A small deterministic generator (SplitMix64) for test inputs.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }
    /// Standard normal (Box–Muller).
    mutating func gaussian() -> Float {
        let u = max(uniform(), 1e-300), v = uniform()
        return Float((-2 * log(u)).squareRoot() * cos(2 * Double.pi * v))
    }
}
