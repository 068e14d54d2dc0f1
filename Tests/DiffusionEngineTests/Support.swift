import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// Paths of the committed fixtures.
enum Fixture {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let diffusers = root.appendingPathComponent("tiny-sd1/diffusers")
    static let golden = root.appendingPathComponent("golden")

    static func safetensors(_ relative: String, in base: URL = golden) throws -> SafetensorsFile {
        try SafetensorsFile(path: base.appendingPathComponent(relative).path)
    }
}

extension TensorStore {
    /// A tensor's values as `Float`.
    func floats(_ name: String) throws -> [Float] { try tensor(named: name).floats() }

    /// An I64 tensor's values.
    func int64s(_ name: String) throws -> [Int] {
        let view = try tensor(named: name)
        try #require(view.dtype == .i64)
        return view.bytes.withUnsafeBytes { raw in
            (0..<view.descriptor.elementCount).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))) }
        }
    }
}

/// The result of comparing two tensors: shape, max abs and relative error, first bad index.
struct TensorComparison: CustomStringConvertible {
    var shape: [Int]
    var maxAbsoluteError: Float
    var maxRelativeError: Float
    /// Index of the first element whose error exceeds the tolerance, if any.
    var firstBadIndex: Int?
    var tolerance: Float

    var description: String {
        var s = "shape \(shape): max abs error \(maxAbsoluteError), max rel error \(maxRelativeError) (tolerance \(tolerance))"
        if let firstBadIndex { s += ", first bad index \(firstBadIndex)" }
        return s
    }

    /// Compares `actual` with `expected` element by element with an absolute tolerance.
    init(_ actual: [Float], _ expected: [Float], shape: [Int], tolerance: Float) {
        self.shape = shape
        self.tolerance = tolerance
        maxAbsoluteError = 0
        maxRelativeError = 0
        firstBadIndex = actual.count == expected.count ? nil : 0
        for i in 0..<min(actual.count, expected.count) {
            let e = abs(actual[i] - expected[i])
            if !(e <= tolerance), firstBadIndex == nil { firstBadIndex = i }
            if e.isNaN { maxAbsoluteError = .nan; continue }
            maxAbsoluteError = max(maxAbsoluteError, e)
            maxRelativeError = max(maxRelativeError, e / max(abs(expected[i]), 1e-6))
        }
    }
}

/// Expects `actual` to match `expected` within `tolerance`, reporting the comparison.
@discardableResult
func expectClose(
    _ actual: [Float], _ expected: [Float], shape: [Int], tolerance: Float,
    _ label: String = "", sourceLocation: SourceLocation = #_sourceLocation
) -> TensorComparison {
    let c = TensorComparison(actual, expected, shape: shape, tolerance: tolerance)
    #expect(actual.count == expected.count, "\(label): \(actual.count) values, expected \(expected.count)", sourceLocation: sourceLocation)
    #expect(c.firstBadIndex == nil, "\(label): \(c)", sourceLocation: sourceLocation)
    return c
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> Float {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(z >> 40) / Float(1 << 23) - 1
    }
    mutating func values(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
}

/// One UNet forward pass on a golden file's inputs (`sample`, `encoder_hidden_states`,
/// `<key>.timestep`, and SDXL's `text_embeds` and `time_ids` when it has them), compared with
/// diffusers' `<key>.out` at 1e-3 max abs.
@discardableResult
func expectUNetMatchesGolden(_ model: UNet2DConditionModel, _ golden: SafetensorsFile, key: String, label: String) throws -> TensorComparison {
    let c = model.configuration
    let sample = FloatTensor(shape: [2, c.inChannels, 8, 8], values: try golden.floats("sample"))
    let context = FloatTensor(shape: [2, 77, c.crossAttentionDimension], values: try golden.floats("encoder_hidden_states"))
    var added: UNet2DConditionModel.AddedConditions?
    if let pooled = golden.descriptor(named: "text_embeds") {
        added = .init(
            textEmbeddings: FloatTensor(shape: pooled.shape.dimensions, values: try golden.floats("text_embeds")),
            timeIDs: FloatTensor(shape: [2, 6], values: try golden.floats("time_ids")))
    }
    let t = try golden.int64s("\(key).timestep")[0]
    let out = try model.predict(sample, timestep: Float(t), encoderHiddenStates: context, added: added)
    #expect(out.shape == [2, c.outChannels, 8, 8])
    let comparison = expectClose(out.scalars, try golden.floats("\(key).out"), shape: out.shape, tolerance: 1e-3, "\(label) \(key).out")
    print("\(label) UNet \(key): \(comparison)")
    return comparison
}

// MARK: Tolerances that reflect float reassociation

/// Error bounds for results that a BLAS (or any kernel) may sum in any order.
///
/// A float sum or dot product of `n` terms computed in any order, with or without fused
/// multiply-adds, differs from the exact value by at most `γ(n) · Σ|terms|`, where
/// `γ(n) = n·u / (1 − n·u)` and `u = 2⁻²⁴` (Higham, *Accuracy and Stability of Numerical
/// Algorithms*, 2nd ed., §3.1). The bound holds for every kernel family a library may pick
/// (SSE3, AVX2, AVX-512, blocked or not), so a test built on it does not depend on which one
/// ran, yet a wrong index or a dropped block (errors of the order of `Σ|terms|` itself) still
/// fails it.
enum Reassociation {
    static let unitRoundoff = 0x1p-24

    /// `γ(n)`.
    static func gamma(_ n: Int) -> Double {
        let nu = Double(n) * unitRoundoff
        return nu / (1 - nu)
    }
}

/// Expects each `actual[i]` to lie within `factor · γ(terms) · magnitude[i]` (plus the final
/// rounding to `Float`, `u·|reference[i]|`) of the exact `reference[i]` (computed in `Double`).
/// `magnitude[i]` is `Σ|terms|` of element `i`: the same computation on absolute values.
@discardableResult
func expectWithinReassociationBound(
    _ actual: [Float], reference: [Double], magnitude: [Double], terms: Int, factor: Double = 1,
    _ label: String = "", sourceLocation: SourceLocation = #_sourceLocation
) -> (worstRatio: Double, firstBad: Int?) {
    #expect(actual.count == reference.count && reference.count == magnitude.count, "\(label): sizes differ", sourceLocation: sourceLocation)
    let g = factor * Reassociation.gamma(terms)
    var worst = 0.0
    var firstBad: Int?
    for i in 0..<min(actual.count, reference.count, magnitude.count) {
        let bound = g * magnitude[i] + Reassociation.unitRoundoff * abs(reference[i]) + Double(Float.leastNormalMagnitude)
        let error = abs(Double(actual[i]) - reference[i])
        if !(error <= bound), firstBad == nil { firstBad = i }
        worst = max(worst, error / bound)
    }
    #expect(
        firstBad == nil,
        "\(label): element \(firstBad ?? -1) is \(firstBad.map { Double(actual[$0]) - reference[$0] } ?? 0) from the exact value, beyond the reassociation bound (worst error/bound \(worst))",
        sourceLocation: sourceLocation)
    return (worst, firstBad)
}

/// One input for ``runLayers(_:_:_:)``: the layer's name, the input's values and shape. A
/// 2-D input runs the linear layer `name`; a 3-D one the convolution, padded by half its kernel.
struct LayerInput: Sendable {
    let name: String, values: [Float], shape: [Int]
}

/// Runs each layer on one workspace over `provider`, serially (as one core of the UNet's pair
/// does), with its products in `precision`; returns each output's values.
func runLayers(_ provider: WeightProvider, _ precision: ComputePrecision, _ layers: [LayerInput]) throws -> [[Float]] {
    try GEMM.withPrecision(precision) {
        try Parallel.serially {
            let ws = Workspace(weights: provider)
            return try layers.map { layer in
                let x = ws.pool.take(layer.shape)
                x.base.update(from: layer.values, count: layer.values.count)
                let y: FloatTensor
                if layer.shape.count == 2 {
                    y = try ws.linear(x, layer.name)
                } else {
                    let kernel = try provider.shape(layer.name + ".weight")[2]
                    y = try ws.conv2d(x, layer.name, padding: .init(kernel / 2))
                }
                return Array(UnsafeBufferPointer(start: y.base, count: y.count))
            }
        }
    }
}

/// ``runLayers(_:_:_:)`` on two workspaces at once (as the UNet's two cores), each over its own
/// provider of `store` sharing `shared`; returns each one's outputs (empty where it threw).
func runLayersOnTwoSharingCores(
    _ store: any TensorStore, _ shared: SharedConvertedWeights, _ precision: ComputePrecision, _ layers: [LayerInput]
) -> [[[Float]]] {
    let results = Locked<[Int: [[Float]]]>([:])
    let box = UnsafeSendableBox((store, shared))
    DispatchQueue.concurrentPerform(iterations: 2) { i in
        let provider = WeightProvider(store: box.value.0)
        provider.sharedConversions = box.value.1
        let outputs = (try? runLayers(provider, precision, layers)) ?? []
        results.withLock { $0[i] = outputs }
    }
    return (0..<2).map { results.withLock { $0 }[$0] ?? [] }
}
