import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Deterministic values in [-1, 1).
private func values(_ count: Int, seed: UInt64) -> [Float] {
    var state = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state >> 11) % 1_000_000) / 1_000_000
    }
}

/// Workspace.linear and conv2d with run-time adapters against the same layer with the change
/// merged into its weight (W + scale · up · down, or W + scale · ΔW).
@Suite("run-time adapters in the layers")
struct RuntimeAdapterTests {
    /// The layer's output with `weight`, computed by the engine without adapters.
    private func reference(_ name: String, shape: [Int], weight: [Float], bias: [Float], x: FloatTensor, stride: Int, padding: Int) throws -> [Float]
    {
        let store = MemoryStore()
        store.add(name + ".weight", shape: shape, values: weight)
        store.add(name + ".bias", shape: [shape[0]], values: bias)
        let ws = Workspace(weights: WeightProvider(store: store))
        return shape.count == 2 ? try ws.linear(x, name).scalars : try ws.conv2d(x, name, stride: stride, padding: .init(padding)).scalars
    }

    @Test(
        "low-rank and dense changes equal the merged weight",
        arguments: [
            // shape of the weight, input shape, stride, padding, rank
            ([24, 20], [7, 20], 1, 0, 3), ([16, 12, 1, 1], [12, 9, 9], 1, 0, 4), ([16, 12, 3, 3], [12, 10, 10], 1, 1, 4),
            ([16, 16, 3, 3], [16, 24, 24], 1, 1, 4), ([16, 8, 3, 3], [8, 11, 9], 2, 1, 2), ([32, 32, 3, 3], [32, 16, 16], 1, 1, 8),
            ([16, 16, 3, 3], [16, 32, 32], 1, 1, 8), ([32, 32, 3, 3], [32, 8, 8], 1, 1, 4),  // Winograd for the layer and for the down factor
        ])
    func matchesMerged(_ shape: [Int], _ input: [Int], _ stride: Int, _ padding: Int, _ rank: Int) throws {
        let out = shape[0], inner = shape.dropFirst().reduce(1, *)
        let w = values(out * inner, seed: 1), b = values(out, seed: 2)
        let x = FloatTensor(shape: input, values: values(input.reduce(1, *), seed: 3))
        let downShape = [rank] + Array(shape.dropFirst())
        let down = values(rank * inner, seed: 4), up = values(out * rank, seed: 5)
        let dense = values(out * inner, seed: 6).map { $0 * 0.1 }, biasChange = values(out, seed: 7)
        let scale: Float = 0.35
        var merged = w
        for o in 0..<out {
            for i in 0..<inner {
                var s: Float = 0
                for r in 0..<rank { s += up[o * rank + r] * down[r * inner + i] }
                merged[o * inner + i] += scale * s + 0.5 * dense[o * inner + i]
            }
        }
        let expected = try reference(
            "layer", shape: shape, weight: merged, bias: zip(b, biasChange).map { $0 + 0.25 * $1 }, x: x, stride: stride, padding: padding)

        let store = MemoryStore()
        store.add("m.layer.weight", shape: shape, values: w)
        store.add("m.layer.bias", shape: [out], values: b)
        let table = RuntimeAdapterTable([
            "m.layer.weight": [
                .init(change: .lowRank(down: down, downShape: downShape, up: up, upShape: [out, rank]), scale: scale),
                .init(change: .dense(dense), scale: 0.5),
            ],
            "m.layer.bias": [.init(change: .dense(biasChange), scale: 0.25)],
        ])
        try table.validate { store.descriptor(named: $0)?.shape.dimensions }
        let ws = Workspace(weights: WeightProvider(store: store, prefix: "m."), adapters: table)
        let y = shape.count == 2 ? try ws.linear(x, "layer") : try ws.conv2d(x, "layer", stride: stride, padding: .init(padding))
        // Sums of a few hundred products of values up to a few units: float rounding, relative to the largest output.
        let magnitude = expected.map { abs($0) }.max() ?? 1
        let c = TensorComparison(y.scalars, expected, shape: y.shape, tolerance: 2e-6 * max(magnitude, 1))
        print("\(shape) rank \(rank): \(c)")
        #expect(c.firstBadIndex == nil, "\(c)")
        // Without the table the output is the base layer's, far from the merged one.
        let plain = try reference("layer", shape: shape, weight: w, bias: b, x: x, stride: stride, padding: padding)
        #expect(TensorComparison(plain, expected, shape: y.shape, tolerance: 1e-2).firstBadIndex != nil)
    }

    @Test("factors that do not fit, and targets the engine reads directly, are refused before running")
    func validation() {
        let shapes: [String: [Int]] = [
            "u.conv.weight": [8, 4, 3, 3], "u.lin.weight": [8, 4], "u.norm.weight": [8], "t.embeddings.token_embedding.weight": [10, 4],
        ]
        func check(_ entries: [String: [RuntimeAdapterTable.Entry]]) -> EngineError.Code? {
            do { try RuntimeAdapterTable(entries).validate { shapes[$0] }; return nil } catch { return error.code }
        }
        let low = { (ds: [Int], us: [Int]) in
            RuntimeAdapterTable.Entry(
                change: .lowRank(
                    down: [Float](repeating: 0, count: ds.reduce(1, *)), downShape: ds, up: [Float](repeating: 0, count: us.reduce(1, *)), upShape: us
                ), scale: 1)
        }
        #expect(check(["u.conv.weight": [low([2, 4, 3, 3], [8, 2])]]) == nil)
        #expect(check(["u.lin.weight": [low([2, 4], [8, 2])]]) == nil)
        #expect(check(["u.conv.weight": [low([2, 4, 1, 1], [8, 2])]]) == .shapeMismatch)  // another kernel
        #expect(check(["u.lin.weight": [low([2, 4], [8, 3])]]) == .shapeMismatch)  // ranks differ
        #expect(check(["u.lin.weight": [.init(change: .dense([1, 2]), scale: 1)]]) == .shapeMismatch)
        #expect(check(["u.norm.weight": [.init(change: .dense([Float](repeating: 0, count: 8)), scale: 1)]]) == .invalidInput)
        #expect(check(["t.embeddings.token_embedding.weight": [.init(change: .dense([Float](repeating: 0, count: 40)), scale: 1)]]) == .invalidInput)
        #expect(check(["u.missing.weight": [low([2, 4], [8, 2])]]) == .missingTensor)
    }

    @Test("added tokens expand as diffusers' maybe_convert_prompt and get ids after the vocabulary")
    func addedTokens() throws {
        let tokenizer = try CLIPTokenizer.bundled()
        let ids = try tokenizer.addTokens(["<cat>", "<cat>_1", "<cat>_2"])
        #expect(ids == [49408, 49409, 49410])
        let a = tokenizer.tokenize("a <cat> on a mat")
        let plainA = tokenizer.tokenize("a"), plainRest = tokenizer.tokenize(" on a mat")
        #expect(a == plainA + ids + plainRest)
        #expect(tokenizer.tokenize("x<cat>_1y").contains(49409) && !tokenizer.tokenize("x<cat>_1y").contains(49408))
        #expect(tokenizer.tokens(ids) == ["<cat>", "<cat>_1", "<cat>_2"])
        #expect(throws: EngineError.self) { try tokenizer.addTokens(["cat</w>"]) }
        #expect(throws: EngineError.self) { try tokenizer.addTokens(["<cat>"]) }
        // Truncation counts the expanded ids.
        let long = tokenizer.encode(String(repeating: "a ", count: 73) + "<cat>")
        #expect(long.count == 77 && long[74] == 49408 && long[75] == 49409 && long[76] == tokenizer.endTokenID)
    }
}
