import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Weights converted once for the providers of a batch run on several cores (issue 12, item 2),
/// and the run-time-dispatched conversions themselves.
@Suite("shared weight conversions")
struct SharedConversionTests {
    static func store(_ dtype: DType) -> MemoryStore {
        var random = TestRandom(seed: 51)
        let store = MemoryStore()
        store.add("a.weight", shape: [64, 40], values: random.values(64 * 40), dtype: dtype)
        store.add("b.weight", shape: [30, 50], values: random.values(30 * 50), dtype: dtype)
        return store
    }

    /// Two providers (as the UNet's two cores) read each weight whole and by blocks of rows:
    /// each tensor is converted once, both read the same values as a private conversion, and
    /// nothing stays held afterwards.
    /// In one chunk, and in chunks of 100 floats (rounded to whole rows for int8) that both
    /// providers convert between them.
    @Test(arguments: ["f16", "bf16", "int8"], [100, 1 << 19])
    func twoProvidersShareOneConversion(_ kind: String, _ chunk: Int) throws {
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store: any TensorStore =
            kind == "int8"
            ? try Int8ParityTests.int8(Self.store(.f32), in: folder, name: "shared.wpk")
            : Self.store(kind == "f16" ? .f16 : .bf16)
        if kind == "int8" { #expect(WeightProvider(store: store).isQuantized("a.weight")) }
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1, chunkFloats: chunk)
        let expectedA = try WeightProvider(store: store).floats("a.weight")
        let expectedB = try WeightProvider(store: store).floats("b.weight")
        let results = UnsafeSendableBox(UnsafeMutablePointer<[Float]>.allocate(capacity: 4))
        results.value.initialize(repeating: [], count: 4)
        defer { results.value.deinitialize(count: 4); results.value.deallocate() }
        let box = UnsafeSendableBox((store, shared))
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let provider = WeightProvider(store: box.value.0)
            provider.sharedConversions = box.value.1
            results.value[2 * i] = (try? provider.floats("a.weight")) ?? []
            var blocks = [Float]()
            try? provider.withRowBlocks("b.weight", rowsPerBlock: 7) { rows, p in
                blocks += Array(UnsafeBufferPointer(start: p, count: rows.count * 50))
            }
            results.value[2 * i + 1] = blocks
        }
        for i in 0..<2 {
            #expect(results.value[2 * i] == expectedA)
            #expect(results.value[2 * i + 1] == expectedB)
        }
        #expect(shared.conversions == 2 && shared.reuses == 2, "converted \(shared.conversions), reused \(shared.reuses)")
        #expect(shared.floatsHeld == 0)
    }

    /// A tensor over the budget, or under the minimum, is not shared: the provider converts it
    /// privately and gets the same values.
    @Test func overBudgetOrSmallFallsBackToPrivateConversion() throws {
        let store = Self.store(.f16)
        for shared in [
            SharedConvertedWeights(consumers: 2, budgetFloats: 100, minimumFloats: 1),
            SharedConvertedWeights(consumers: 2, minimumFloats: 1 << 20),
        ] {
            let provider = WeightProvider(store: store)
            provider.sharedConversions = shared
            #expect(try provider.floats("a.weight") == (try WeightProvider(store: store).floats("a.weight")))
            #expect(shared.conversions == 0 && shared.floatsHeld == 0)
        }
    }

    /// The UNet's cores drift apart: the leading one finds the budget full and converts a tensor
    /// privately; the lagging one must then convert it privately too, not start a copy that
    /// would wait for a consumer that has already passed it and stay held to the end of the run.
    @Test func aTensorOnePassedPrivatelyIsNotSharedLater() throws {
        let store = Self.store(.f16)
        // Room for "a" (2,560 floats) or "b" (1,500), not both.
        let shared = SharedConvertedWeights(consumers: 2, budgetFloats: 3_000, minimumFloats: 1)
        let leading = WeightProvider(store: store), lagging = WeightProvider(store: store)
        leading.sharedConversions = shared
        lagging.sharedConversions = shared
        let expectedA = try WeightProvider(store: store).floats("a.weight")
        let expectedB = try WeightProvider(store: store).floats("b.weight")
        #expect(try leading.floats("a.weight") == expectedA)
        #expect(shared.floatsHeld == 2_560)  // waits for the lagging provider
        #expect(try leading.floats("b.weight") == expectedB)  // over budget: private
        #expect(shared.floatsHeld == 2_560)
        #expect(try lagging.floats("a.weight") == expectedA)
        #expect(shared.floatsHeld == 0)
        #expect(try lagging.floats("b.weight") == expectedB)  // private as well
        #expect(shared.floatsHeld == 0, "an orphaned copy of b.weight is held")
        #expect(shared.conversions == 1 && shared.reuses == 1 && shared.peakFloatsHeld == 2_560)
    }

    /// A tensor larger than the whole budget is shared block by block: each block of rows is
    /// converted once for both providers while there is room, privately by both when there is
    /// not, and every block reaches both with the right values.
    @Test(arguments: [DType.f16, .bf16])
    func aTensorOverTheBudgetIsSharedBlockByBlock(_ dtype: DType) throws {
        let store = Self.store(dtype)
        // a.weight is 64 × 40 = 2,560 floats in blocks of 7 rows (280 floats) and a last row
        // (40): the first three blocks fit in 1,000, the next six do not, the last row does.
        let shared = SharedConvertedWeights(consumers: 2, budgetFloats: 1_000, minimumFloats: 1)
        let expected = try WeightProvider(store: store).floats("a.weight")
        let leading = WeightProvider(store: store), lagging = WeightProvider(store: store)
        leading.sharedConversions = shared
        lagging.sharedConversions = shared
        for provider in [leading, lagging] {
            var values = [Float]()
            var starts = [Int]()
            try provider.withRowBlocks("a.weight", rowsPerBlock: 7) { rows, p in
                starts.append(rows.lowerBound)
                values += Array(UnsafeBufferPointer(start: p, count: rows.count * 40))
            }
            #expect(values == expected)
            #expect(starts == Array(stride(from: 0, to: 64, by: 7)))
        }
        #expect(shared.conversions == 4 && shared.reuses == 4, "converted \(shared.conversions), reused \(shared.reuses)")
        #expect(shared.floatsHeld == 0 && shared.peakFloatsHeld == 880)
    }

    /// A copy's buffer is reused for the next tensor only when every provider is done reading
    /// it: here the second provider finishes with `a` and converts `b` while the first is still
    /// reading `a`; the first must still see `a`'s values.
    @Test func aBufferIsReusedOnlyAfterEveryReaderIsDone() throws {
        let store = Self.store(.f16)
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let expectedA = try WeightProvider(store: store).floats("a.weight")
        let expectedB = try WeightProvider(store: store).floats("b.weight")
        let reading = DispatchSemaphore(value: 0), converted = DispatchSemaphore(value: 0)
        let results = Locked<[Int: [Float]]>([:])
        let box = UnsafeSendableBox((store, shared))
        @Sendable func run(_ i: Int) {
            let provider = WeightProvider(store: box.value.0)
            provider.sharedConversions = box.value.1
            if i == 0 {
                let a = try? provider.withFloats("a.weight") { p -> [Float] in
                    reading.signal()
                    converted.wait()  // the other provider has read `a` and converted `b`
                    return Array(UnsafeBufferPointer(start: p, count: 64 * 40))
                }
                results.withLock { $0[0] = a ?? [] }
                results.withLock { $0[2] = (try? provider.floats("b.weight")) ?? [] }
            } else {
                reading.wait()
                results.withLock { $0[1] = (try? provider.floats("a.weight")) ?? [] }
                results.withLock { $0[3] = (try? provider.floats("b.weight")) ?? [] }
                converted.signal()
            }
        }
        // Two threads of their own: a worker pool busy with other tests could run the two
        // one after the other, and the first waits for the second.
        let done = DispatchSemaphore(value: 0)
        for i in 0..<2 {
            Thread {
                run(i)
                done.signal()
            }.start()
        }
        done.wait()
        done.wait()
        let r = results.withLock { $0 }
        #expect(r[0] == expectedA, "the first reader's copy of a.weight was overwritten")
        #expect(r[1] == expectedA && r[2] == expectedB && r[3] == expectedB)
        #expect(shared.floatsHeld == 0 && shared.floatsAllocated <= 2_560 + 1_500)
    }

    /// The Winograd-transformed weights of a 3x3 convolution, made once for two providers (the
    /// UNet's two cores) straight from the stored weight, in chunks of 5 output channels that
    /// both make between them: every block reaches both providers with the transform of the
    /// weight's float values, each block is made once, and nothing stays held. The transforms
    /// of a chunk and of a whole block are separate float products whose kernels may sum the
    /// nine taps in another order, hence a tolerance of a few units in the last place.
    @Test(arguments: ["f32", "f16", "int8"])
    func winogradWeightsAreTransformedOnceForBothProviders(_ kind: String) throws {
        let outC = 24, inC = 32
        var random = TestRandom(seed: 52)
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = try Self.store(
            "conv.weight", shape: [outC, inC, 3, 3], values: random.values(outC * inC * 9), as: kind, in: folder)
        if kind == "int8" { #expect(WeightProvider(store: store).isQuantized("conv.weight")) }
        // What each block must hold: the private transform of the weight's values.
        let weight = try WeightProvider(store: store).floats("conv.weight")
        func expected(_ rows: Range<Int>) -> [Float] {
            let stride = Convolution.matrixStride(rows.count * inC)
            var u = [Float](repeating: 0, count: 36 * stride)
            weight.withUnsafeBufferPointer { w in
                Convolution.transformWeights(
                    w.baseAddress! + rows.lowerBound * inC * 9, outChannels: rows.count, inChannels: inC, into: &u, stride: stride)
            }
            return (0..<36).flatMap { xi in u[(xi * stride)..<(xi * stride + rows.count * inC)] }
        }
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let results = Locked<[Int: [(Range<Int>, [Float])]]>([:])
        let box = UnsafeSendableBox((store, shared))
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let provider = WeightProvider(store: box.value.0)
            provider.sharedConversions = box.value.1
            var blocks: [(Range<Int>, [Float])] = []
            try? provider.withWinogradWeights("conv.weight", outChannels: outC, inChannels: inC, rowsPerBlock: 16, rowsPerChunk: 5) {
                rows, operand, stride in
                guard let u = operand.floats else { return }
                blocks.append((rows, (0..<36).flatMap { xi in Array(UnsafeBufferPointer(start: u + xi * stride, count: rows.count * inC)) }))
            }
            results.withLock { $0[i] = blocks }
        }
        for i in 0..<2 {
            let blocks = results.withLock { $0[i] } ?? []
            #expect(blocks.map(\.0) == [0..<16, 16..<24], "provider \(i) got blocks \(blocks.map(\.0))")
            for (rows, values) in blocks {
                let reference = expected(rows)
                let worst = zip(values, reference).map { abs($0 - $1) / max(abs($1), 1e-3) }.max() ?? .infinity
                #expect(values.count == reference.count && worst < 1e-5, "provider \(i), rows \(rows): relative error \(worst)")
            }
        }
        #expect(shared.conversions == 2 && shared.reuses == 2, "made \(shared.conversions), reused \(shared.reuses)")
        #expect(shared.floatsHeld == 0)
    }

    /// A store holding one weight `name` as `kind`: "f32", "f16" (the values rounded to halves)
    /// or "int8" (a `.wpk` quantised by the default rules, written into `folder`).
    static func store(_ name: String, shape: [Int], values: [Float], as kind: String, in folder: URL) throws -> any TensorStore {
        let f32 = MemoryStore()
        f32.add(name, shape: shape, values: values, dtype: .f32)
        switch kind {
        case "int8": return try Int8ParityTests.int8(f32, in: folder, name: "\(kind)-\(UUID().uuidString).wpk")
        case "f16":
            let half = MemoryStore()
            half.add(name, shape: shape, values: values, dtype: .f16)
            return half
        default: return f32
        }
    }

    /// `conv` (3x3, padding 1) of `input` through a workspace reading `provider`.
    static func convolve(_ input: [Float], shape: [Int], with provider: WeightProvider) throws -> [Float] {
        let ws = Workspace(weights: provider)
        let x = ws.pool.take(shape)
        x.base.update(from: input, count: input.count)
        let y = try ws.conv2d(x, "conv", padding: .init(1))
        return Array(UnsafeBufferPointer(start: y.base, count: y.count))
    }

    /// A Winograd convolution (32x32, 64 tiles) run by two workspaces at once whose providers
    /// share: both outputs match one workspace's without sharing (the per-core path: convert,
    /// then transform into its own scratch), and the transformed weights were made once.
    @Test(arguments: ["f32", "f16"])
    func aWinogradConvolutionOnTwoCoresMatchesOneCore(_ kind: String) throws {
        let inC = 16, outC = 24, size = 32
        var random = TestRandom(seed: 54)
        let store = MemoryStore()
        let dtype: DType = kind == "f16" ? .f16 : .f32
        store.add("conv.weight", shape: [outC, inC, 3, 3], values: random.values(outC * inC * 9, scale: 0.1), dtype: dtype)
        store.add("conv.bias", shape: [outC], values: random.values(outC), dtype: dtype)
        let g = Convolution.Geometry(
            inChannels: inC, height: size, width: size, outChannels: outC, kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))
        #expect(Convolution.usesWinograd(g))
        let input = random.values(inC * size * size)
        let expected = try Self.convolve(input, shape: [inC, size, size], with: WeightProvider(store: store))
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let results = Locked<[Int: [Float]]>([:])
        let box = UnsafeSendableBox((store, shared))
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let provider = WeightProvider(store: box.value.0)
            provider.sharedConversions = box.value.1
            let y = (try? Parallel.serially { try Self.convolve(input, shape: [inC, size, size], with: provider) }) ?? []
            results.withLock { $0[i] = y }
        }
        for i in 0..<2 {
            expectClose(results.withLock { $0[i] } ?? [], expected, shape: [outC, size, size], tolerance: 1e-5, "core \(i)")
        }
        // The transformed weights, and for F16 the bias converted too.
        let made = kind == "f16" ? 2 : 1
        #expect(shared.conversions == made && shared.reuses == made && shared.floatsHeld == 0, "made \(shared.conversions), reused \(shared.reuses)")
    }

    /// Without room in the shared budget each provider transforms the weight into its own
    /// scratch, with the same values, and nothing is shared or held.
    @Test func winogradWeightsOverTheBudgetAreTransformedPrivately() throws {
        var random = TestRandom(seed: 53)
        let store = MemoryStore()
        store.add("conv.weight", shape: [8, 8, 3, 3], values: random.values(8 * 8 * 9), dtype: .f16)
        let shared = SharedConvertedWeights(consumers: 2, budgetFloats: 100, minimumFloats: 1)
        let provider = WeightProvider(store: store)
        provider.sharedConversions = shared
        let weight = try WeightProvider(store: store).floats("conv.weight")
        let stride = Convolution.matrixStride(64)
        var expected = [Float](repeating: 0, count: 36 * stride)
        weight.withUnsafeBufferPointer {
            Convolution.transformWeights($0.baseAddress!, outChannels: 8, inChannels: 8, into: &expected, stride: stride)
        }
        var calls = 0
        try provider.withWinogradWeights("conv.weight", outChannels: 8, inChannels: 8, rowsPerBlock: 8) { rows, operand, s in
            calls += 1
            #expect(rows == 0..<8 && s == stride)
            guard let u = operand.floats else {
                Issue.record("a private block came as bfloat16")
                return
            }
            for xi in 0..<36 {
                let values = Array(UnsafeBufferPointer(start: u + xi * s, count: 64))
                #expect(values == Array(expected[(xi * stride)..<(xi * stride + 64)]))
            }
        }
        #expect(calls == 1 && shared.conversions == 0 && shared.floatsHeld == 0)
    }

    /// The dispatched F16 and BF16 conversions against TensorCore's, over every 16-bit pattern
    /// (infinities, NaNs, subnormals, both zeros), in the family in use (`WEIGHTPACK_KERNELS`).
    @Test(arguments: [DType.f16, .bf16])
    func conversionsMatchTensorCoreForEveryBitPattern(_ dtype: DType) throws {
        let bits = (0..<65_536).map { UInt16($0) }
        let raw = bits.withUnsafeBytes { Array($0) }
        var expected = [Float](repeating: 0, count: bits.count)
        try raw.withUnsafeBytes { src in
            try expected.withUnsafeMutableBufferPointer { try ElementConversion.widen(src, dtype: dtype, into: $0, count: bits.count) }
        }
        let store = MemoryStore()
        store.add("t", shape: [bits.count], values: [Float](repeating: 0, count: bits.count), dtype: dtype)
        // Write the raw patterns through a store of that dtype and read them back converted.
        let view = try store.tensor(named: "t")
        view.bytes.withUnsafeBytes { dst in
            raw.withUnsafeBytes { UnsafeMutableRawBufferPointer(mutating: dst).copyMemory(from: $0) }
        }
        let converted = try WeightProvider(store: store).floats("t")
        var mismatches = 0
        for i in 0..<bits.count where converted[i].bitPattern != expected[i].bitPattern {
            // NaNs may differ in payload only.
            if !(converted[i].isNaN && expected[i].isNaN) { mismatches += 1 }
        }
        #expect(mismatches == 0, "\(dtype.name): \(mismatches) patterns differ under \(ComputeBackend.current.kernels)")
    }
}
