import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// `TorchGenerator` against `torch.randn(shape, generator=torch.Generator().manual_seed(S))`
/// (`Fixtures/golden/randn.safetensors`).
@Suite("torch-compatible CPU generator")
struct TorchGeneratorTests {
    static let cases: [(name: String, seed: UInt64, shape: [Int])] = [
        ("seed0.shape_1x4x8x8", 0, [1, 4, 8, 8]), ("seed42.shape_1x4x8x8", 42, [1, 4, 8, 8]),
        ("seed1234.shape_1x4x8x8", 1234, [1, 4, 8, 8]), ("seed42.shape_1x4x64x64", 42, [1, 4, 64, 64]),
        ("seed42.shape_1", 42, [1]), ("seed42.shape_7", 42, [7]), ("seed42.shape_15", 42, [15]),
        ("seed42.shape_16", 42, [16]), ("seed42.shape_17", 42, [17]), ("seed42.shape_33", 42, [33]),
    ]

    /// Largest difference in units in the last place.
    static func maxULP(_ a: [Float], _ b: [Float]) -> Int {
        zip(a, b).map { x, y in abs(Int(Int32(bitPattern: x.bitPattern)) - Int(Int32(bitPattern: y.bitPattern))) }.max() ?? 0
    }

    @Test("randn equals torch", arguments: 0..<cases.count)
    func randn(_ index: Int) throws {
        let c = Self.cases[index]
        let golden = try Fixture.safetensors("randn.safetensors")
        var generator = TorchGenerator(seed: c.seed)
        let values = generator.randn(c.shape).scalars
        let expected = try golden.floats(c.name)
        let comparison = expectClose(values, expected, shape: c.shape, tolerance: 2e-6, c.name)
        print("randn \(c.name): \(comparison), max ulp \(Self.maxULP(values, expected)), exact \(values == expected)")
        if c.shape.reduce(1, *) < 16 { #expect(values == expected, "the scalar path is exact") }
    }

    @Test func consecutiveDrawsContinueTheStream() throws {
        let golden = try Fixture.safetensors("randn.safetensors")
        var generator = TorchGenerator(seed: 42)
        let first = generator.randn([1, 4, 8, 8]).scalars, second = generator.randn([1, 4, 8, 8]).scalars
        expectClose(first, try golden.floats("seed42.two_draws.first_1x4x8x8"), shape: [256], tolerance: 2e-6, "first")
        expectClose(second, try golden.floats("seed42.two_draws.second_1x4x8x8"), shape: [256], tolerance: 2e-6, "second")
    }

    @Test func mersenneTwisterReferenceValue() {
        // std::mt19937 with the default seed 5489 gives 3499211612 first (C++ standard, [rand.predef]).
        var generator = TorchGenerator(seed: 5489)
        #expect(generator.nextUInt32() == 3_499_211_612)
    }
}
