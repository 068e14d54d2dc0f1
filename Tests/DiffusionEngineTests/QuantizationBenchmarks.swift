import CheckpointFormats
import Foundation
import Quantization
import TensorCore
import Testing

@testable import DiffusionEngine

#if canImport(Glibc)
import Glibc
#endif

/// Opt-in measurements for issue 7 on the full-size model (Docs/performance.md, "Quantisation
/// (issue 7)"). Each runs only when its environment variable names a file; build with
/// `-c release` for meaningful times.
@Suite("quantisation benchmarks (opt-in)")
struct QuantizationBenchmarks {
    static let environment = ProcessInfo.processInfo.environment

    /// `WEIGHTPACK_QUANT_BENCH=model.safetensors`: error and dequantisation speed of the int8
    /// block sizes over every tensor the default rules quantise.
    @Test(.enabled(if: environment["WEIGHTPACK_QUANT_BENCH"] != nil, "set WEIGHTPACK_QUANT_BENCH to a model file"))
    func blockSizes() throws {
        let store = try SafetensorsFile(path: Self.environment["WEIGHTPACK_QUANT_BENCH"]!)
        let rules = QuantizationRules()
        let schemes = [32, 64, 128, 0]  // 0: one scale per output channel
        var totals = [ErrorAccumulator](repeating: ErrorAccumulator(), count: schemes.count)
        var worst = [Double](repeating: .infinity, count: schemes.count)
        var seconds = [Double](repeating: 0, count: schemes.count)
        var bytes = [Int](repeating: 0, count: schemes.count)
        var parameters = 0, quantizedParameters = 0
        for d in store.tensors {
            parameters += d.elementCount
            guard case .quantize(let base) = rules.decision(for: d) else { continue }
            quantizedParameters += d.elementCount
            let values = try store.tensor(named: d.name).floats()
            var output = [Float](repeating: 0, count: values.count)
            for (i, block) in schemes.enumerated() {
                let layout = try Int8BlockLayout(rows: base.rows, rowLength: base.rowLength, blockSize: block == 0 ? max(base.rowLength, 1) : block)
                let (buffer, _) = try values.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
                let start = DispatchTime.now().uptimeNanoseconds
                try output.withUnsafeMutableBufferPointer {
                    try Int8Quantizer.dequantize(buffer.bytes, layout: layout, rows: 0..<layout.rows, into: $0.baseAddress!)
                }
                seconds[i] += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                bytes[i] += layout.byteCount
                let m = values.withUnsafeBufferPointer { r in
                    output.withUnsafeBufferPointer { c in
                        var a = ErrorAccumulator()
                        for k in 0..<r.count { a.add(r[k], c[k]) }
                        return a
                    }
                }
                totals[i].merge(m)
                worst[i] = min(worst[i], m.metrics.snrDecibels ?? .infinity)
            }
        }
        print("quantised \(quantizedParameters) of \(parameters) parameters (\(Double(quantizedParameters) / Double(parameters) * 100) %)")
        for (i, block) in schemes.enumerated() {
            let m = totals[i].metrics
            print(
                "block \(block == 0 ? "per-channel" : String(block)): stored \(bytes[i]) bytes, aggregate SNR \(m.snrDecibels ?? .infinity) dB, lowest tensor \(worst[i]) dB, cosine \(m.cosine), dequantise \(Double(totals[i].count) / seconds[i] / 1e9) G values/s (one thread)"
            )
        }
    }

    /// `WEIGHTPACK_UNET_BENCH=model.wpk`: one SD 1.5 UNet pass (batch 2, 64×64 latents) on the
    /// file's weights: time and the process's peak resident memory; the prediction is written to
    /// `<model>.unet-out.f32` for ``unetSNR()``.
    @Test(.enabled(if: environment["WEIGHTPACK_UNET_BENCH"] != nil, "set WEIGHTPACK_UNET_BENCH to a canonical .wpk"))
    func unetStep() throws {
        let path = Self.environment["WEIGHTPACK_UNET_BENCH"]!
        let file = try WPKFile(path: path)
        let model = try UNet2DConditionModel(store: file, configuration: .sd15, prefix: "unet.")
        var random = TestRandom(seed: 11)
        let sample = FloatTensor(shape: [2, 4, 64, 64], values: random.values(2 * 4 * 64 * 64))
        let context = FloatTensor(shape: [2, 77, 768], values: random.values(2 * 77 * 768))
        let start = DispatchTime.now().uptimeNanoseconds
        let out = try model.predict(sample, timestep: 500, encoderHiddenStates: context)
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        print("UNet step on \(path): \(elapsed) s, peak RSS \(usage.ru_maxrss / 1024) MiB")
        try out.scalars.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: path + ".unet-out.f32")) }
    }

    /// `WEIGHTPACK_UNET_COMPARE=reference.wpk,candidate.wpk,…`: SNR of each candidate's UNet
    /// prediction (written by ``unetStep()``) against the reference's.
    @Test(.enabled(if: environment["WEIGHTPACK_UNET_COMPARE"] != nil, "set WEIGHTPACK_UNET_COMPARE to reference,candidates"))
    func unetSNR() throws {
        let paths = Self.environment["WEIGHTPACK_UNET_COMPARE"]!.split(separator: ",").map(String.init)
        func load(_ p: String) throws -> [Float] {
            let data = try Data(contentsOf: URL(fileURLWithPath: p + ".unet-out.f32"))
            return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        let reference = try load(paths[0])
        for p in paths.dropFirst() {
            print("UNet single pass \(p) vs \(paths[0]): \(QuantizationMetrics.compare(reference: reference, candidate: try load(p)))")
        }
    }
}
