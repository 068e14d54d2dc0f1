import Foundation
import TensorCore
import TestSupport
import Testing

@testable import ModelLoading

/// `inspect --stats`' vectorised statistics (CEngineKernels/statistics.c) against TensorCore's
/// `TensorStatistics`: the same counts and extremes exactly, the mean and standard deviation to
/// summation order, for every kind of value a tensor may hold, under the kernel family in use.
@Suite struct StatisticsKernelTests {
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var state = seed
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 250_000
        }
        var v = (0..<n).map { _ in next() }
        // Specials scattered through the chunks: NaN, both infinities, zeros, values beyond f16.
        for i in stride(from: 5, to: n, by: 97) { v[i] = .nan }
        for i in stride(from: 11, to: n, by: 389) { v[i] = i % 2 == 0 ? .infinity : -.infinity }
        for i in stride(from: 17, to: n, by: 53) { v[i] = 0 }
        for i in stride(from: 23, to: n, by: 1_021) { v[i] = i % 2 == 0 ? 70_000 : -1e6 }
        return v
    }

    @Test(arguments: [DType.f32, .f16, .bf16], [1, 4_095, 4_096, 10_000, 100_003])
    func theKernelAgreesWithTensorStatistics(_ dtype: DType, _ n: Int) throws {
        let store = MemoryStore()
        store.add("t", shape: [n], values: Self.values(n, seed: UInt64(n)), dtype: dtype)
        let view = try store.tensor(named: "t")
        let expected = try view.statistics()
        let actual = try Inspection.fastStatistics(view)
        #expect(actual.count == expected.count && actual.finiteCount == expected.finiteCount)
        #expect(actual.nanCount == expected.nanCount && actual.infinityCount == expected.infinityCount)
        #expect(actual.zeroCount == expected.zeroCount && actual.beyondFloat16Count == expected.beyondFloat16Count)
        #expect(actual.min == expected.min && actual.max == expected.max)
        #expect(abs(actual.mean - expected.mean) <= 1e-12 * max(1, abs(expected.mean)), "mean \(actual.mean) vs \(expected.mean)")
        #expect(abs(actual.std - expected.std) <= 1e-12 * max(1, expected.std), "std \(actual.std) vs \(expected.std)")
    }

    @Test func nothingFiniteGivesNaNFigures() throws {
        let store = MemoryStore()
        store.add("t", shape: [3], values: [.nan, .infinity, -.infinity], dtype: .f32)
        let s = try Inspection.fastStatistics(try store.tensor(named: "t"))
        #expect(s.finiteCount == 0 && s.nanCount == 1 && s.infinityCount == 2)
        #expect(s.min.isNaN && s.max.isNaN && s.mean.isNaN && s.std.isNaN)
    }
}
