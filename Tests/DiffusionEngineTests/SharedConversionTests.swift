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
