import CEngineKernels
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Products that read F16 weights as stored (`CEngineKernels/gemm_f16.c`, issue 12, item 2):
/// the AVX-512 family has them; the other families convert the weight and call `sgemm` as
/// before, which these tests check too, so each kernel family CI runs asserts something.
@Suite("products reading F16 weights")
struct F16ProductTests {
    /// Every multiply-add in float from the exactly widened halves: within the reassociation
    /// bound of the exact product, on shapes with every edge (rows not a multiple of the six a
    /// tile takes, columns not of 64 or 16, depth beyond one block of 384 and not a multiple of
    /// 16), with leading dimensions longer than the rows (whose extra floats stay untouched), on
    /// one thread and with the rows split over the workers.
    @Test(arguments: [[13, 70, 777], [6, 64, 384], [1, 1, 1], [50, 300, 40], [100, 129, 500]])
    func productsMatchTheExactProduct(_ shape: [Int]) throws {
        let (m, n, k) = (shape[0], shape[1], shape[2])
        let lda = k + 3, ldb = n + 5, ldc = n + 2
        var random = TestRandom(seed: UInt64(m * 7 + n * 3 + k))
        let halves = random.values(m * lda, scale: 2).map { Float16($0).bitPattern }
        let b = random.values(k * ldb, scale: 3)
        guard GEMM.f16WeightProducts else {
            var c = [Float](repeating: 7, count: m * ldc)
            #expect(wp_gemm_f16_weight(Int64(m), Int64(n), Int64(k), halves, Int64(lda), b, Int64(ldb), &c, Int64(ldc), 0) == -1)
            #expect(c.allSatisfy { $0 == 7 })
            return
        }
        let weight = { (i: Int, p: Int) in Double(Float(Float16(bitPattern: halves[i * lda + p]))) }
        let (reference, magnitude) = Self.exactProduct(m, n, k, a: weight, b: { p, j in Double(b[p * ldb + j]) })
        halves.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                let (a, b) = (a.baseAddress!, b.baseAddress!)
                Self.expectProduct(m, n, k, ldc: ldc, reference: reference, magnitude: magnitude, "\(m)x\(n)x\(k)") { out in
                    GEMM.multiplyF16Weight(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: out, ldc: ldc)
                }
            }
        }
        // Accumulating adds to what C holds.
        var c = [Float](repeating: 1, count: m * ldc)
        #expect(wp_gemm_f16_weight(Int64(m), Int64(n), Int64(k), halves, Int64(lda), b, Int64(ldb), &c, Int64(ldc), 1) == 0)
        let shifted = reference.map { $0 + 1 }
        let values = (0..<m).flatMap { i in c[(i * ldc)..<(i * ldc + n)] }
        expectWithinReassociationBound(values, reference: shifted, magnitude: magnitude.map { $0 + 1 }, terms: k + 1, "accumulated")
    }

    /// A linear layer's orientation, `C = X Wᵀ` with W's rows in half precision: within the
    /// reassociation bound of the exact product on the same edges (tokens not a multiple of six,
    /// outputs not of 64 or 16, depth beyond 384 and not a multiple of 16), one thread and split.
    @Test(arguments: [[13, 70, 777], [6, 64, 384], [1, 1, 1], [77, 320, 40], [100, 129, 500]])
    func linearProductsMatchTheExactProduct(_ shape: [Int]) throws {
        let (m, n, k) = (shape[0], shape[1], shape[2])
        let ldx = k + 1, ldw = k + 4, ldc = n + 3
        var random = TestRandom(seed: UInt64(m * 5 + n * 11 + k))
        let x = random.values(m * ldx, scale: 3)
        let halves = random.values(n * ldw, scale: 2).map { Float16($0).bitPattern }
        guard GEMM.f16WeightProducts else {
            var c = [Float](repeating: 7, count: m * ldc)
            #expect(wp_gemm_f16_weight_linear(Int64(m), Int64(n), Int64(k), x, Int64(ldx), halves, Int64(ldw), &c, Int64(ldc)) == -1)
            #expect(c.allSatisfy { $0 == 7 })
            return
        }
        let weight = { (p: Int, j: Int) in Double(Float(Float16(bitPattern: halves[j * ldw + p]))) }
        let (reference, magnitude) = Self.exactProduct(m, n, k, a: { i, p in Double(x[i * ldx + p]) }, b: weight)
        x.withUnsafeBufferPointer { x in
            halves.withUnsafeBufferPointer { w in
                let (x, w) = (x.baseAddress!, w.baseAddress!)
                Self.expectProduct(m, n, k, ldc: ldc, reference: reference, magnitude: magnitude, "linear \(m)x\(n)x\(k)") { out in
                    GEMM.multiplyF16Linear(m: m, n: n, k: k, x: x, ldx: ldx, w: w, ldw: ldw, c: out, ldc: ldc)
                }
            }
        }
    }

    /// A linear layer with an F16 weight, with few tokens (read as stored on AVX-512) and with
    /// more (converted, as in every family): what the same weight converted to F32 gives.
    @Test(arguments: [5, 77, 300])
    func linearLayersReadingF16WeightsMatchConvertedOnes(_ tokens: Int) throws {
        let inF = 72, outF = 136
        var random = TestRandom(seed: UInt64(tokens))
        let weights = random.values(outF * inF, scale: 0.3), bias = random.values(outF)
        let (half, full) = Self.halfAndConverted("fc", shape: [outF, inF], weights: weights, bias: bias)
        let input = random.values(tokens * inF)
        func run(_ store: MemoryStore) throws -> [Float] { try Self.runLinear(store, input: input, tokens: tokens, inF: inF) }
        // On AMX the split bfloat16 products take it (SplitProductTests): 2⁻¹⁶ of Σ|a b| rather than float's reassociation.
        let tolerance: Float = GEMM.splitSuits(m: tokens, n: outF) ? 1e-4 : 1e-5
        expectClose(try run(half), try run(full), shape: [tokens, outF], tolerance: tolerance, "linear, \(tokens) tokens")
    }

    /// Sizes and leading dimensions that do not fit are refused before anything is read; an
    /// empty depth gives zeros (or leaves C as it was when accumulating).
    @Test func badShapesAreRefusedAndAnEmptyDepthGivesZeros() {
        let a = [UInt16](repeating: Float16(1).bitPattern, count: 64), b = [Float](repeating: 1, count: 64)
        var c = [Float](repeating: 5, count: 64)
        #expect(wp_gemm_f16_weight(-1, 4, 4, a, 4, b, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_f16_weight(4, 4, 4, a, 3, b, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_f16_weight(4, 4, 4, a, 4, b, 3, &c, 4, 0) == -3)
        #expect(wp_gemm_f16_weight(4, 4, 4, a, 4, b, 4, &c, 3, 0) == -3)
        #expect(wp_gemm_f16_weight_linear(4, 4, 4, b, 3, a, 4, &c, 4) == -3)
        #expect(wp_gemm_f16_weight_linear(4, 4, 4, b, 4, a, 3, &c, 4) == -3)
        #expect(wp_gemm_f16_weight_linear(4, 4, -4, b, 4, a, 4, &c, 4) == -3)
        #expect(c.allSatisfy { $0 == 5 })
        guard GEMM.f16WeightProducts else { return }
        #expect(wp_gemm_f16_weight(4, 4, 0, a, 4, b, 4, &c, 4, 1) == 0)
        #expect(c.allSatisfy { $0 == 5 })
        #expect(wp_gemm_f16_weight(4, 4, 0, a, 4, b, 4, &c, 4, 0) == 0)
        #expect(c[0..<16].allSatisfy { $0 == 0 } && c[16...].allSatisfy { $0 == 5 })
        c = [Float](repeating: 5, count: 64)
        #expect(wp_gemm_f16_weight_linear(4, 4, 0, b, 4, a, 4, &c, 4) == 0)
        #expect(c[0..<16].allSatisfy { $0 == 0 } && c[16...].allSatisfy { $0 == 5 })
    }

    /// A convolution whose F16 weight the products read as stored (im2col at 8x8, a stride-2
    /// downsampler, a pointwise one) gives what the same weight converted to F32 gives, with
    /// its bias, under every kernel family (elsewhere than AVX-512 through the conversion).
    @Test(arguments: [[3, 1, 8], [3, 2, 16], [1, 1, 12]])
    func convolutionsReadingF16WeightsMatchConvertedOnes(_ geometry: [Int]) throws {
        let (kernel, stride, size) = (geometry[0], geometry[1], geometry[2])
        let inC = 24, outC = 40
        var random = TestRandom(seed: UInt64(kernel * 100 + stride * 10 + size))
        let weights = random.values(outC * inC * kernel * kernel, scale: 0.2), bias = random.values(outC)
        let (half, full) = Self.halfAndConverted("conv", shape: [outC, inC, kernel, kernel], weights: weights, bias: bias)
        let g = Convolution.Geometry(
            inChannels: inC, height: size, width: size, outChannels: outC, kernelHeight: kernel, kernelWidth: kernel, stride: stride,
            padding: .init(kernel / 2))
        #expect(!Convolution.usesWinograd(g))
        let input = random.values(inC * size * size)
        func run(_ store: MemoryStore) throws -> [Float] {
            try Self.runConvolution(store, input: input, inC: inC, size: size, kernel: kernel, stride: stride)
        }
        let tolerance: Float = GEMM.splitSuits(m: outC, n: g.outHeight * g.outWidth) ? 1e-4 : 1e-5
        expectClose(try run(half), try run(full), shape: [outC, g.outHeight, g.outWidth], tolerance: tolerance, "conv \(geometry)")
    }

    /// The weight `<name>.weight` as F16 in one store and as the same values converted to F32 in
    /// another, each with the F32 bias `<name>.bias`.
    static func halfAndConverted(_ name: String, shape: [Int], weights: [Float], bias: [Float]) -> (half: MemoryStore, converted: MemoryStore) {
        let half = MemoryStore(), converted = MemoryStore()
        half.add(name + ".weight", shape: shape, values: weights, dtype: .f16)
        converted.add(name + ".weight", shape: shape, values: weights.map { Float(Float16($0)) }, dtype: .f32)
        for store in [half, converted] { store.add(name + ".bias", shape: [shape[0]], values: bias, dtype: .f32) }
        return (half, converted)
    }

    /// The linear layer `fc` of `store` on `input` (`tokens` rows of `inF`), on one thread.
    static func runLinear(_ store: MemoryStore, input: [Float], tokens: Int, inF: Int) throws -> [Float] {
        try Parallel.serially {
            let ws = Workspace(weights: WeightProvider(store: store))
            let x = ws.pool.take([tokens, inF])
            x.base.update(from: input, count: input.count)
            let y = try ws.linear(x, "fc")
            return Array(UnsafeBufferPointer(start: y.base, count: y.count))
        }
    }

    /// The convolution `conv` of `store` on `input` (`inC × size × size`), padded by half its
    /// kernel, on one thread.
    static func runConvolution(_ store: MemoryStore, input: [Float], inC: Int, size: Int, kernel: Int, stride: Int) throws -> [Float] {
        try Parallel.serially {
            let ws = Workspace(weights: WeightProvider(store: store))
            let x = ws.pool.take([inC, size, size])
            x.base.update(from: input, count: input.count)
            let y = try ws.conv2d(x, "conv", stride: stride, padding: .init(kernel / 2))
            return Array(UnsafeBufferPointer(start: y.base, count: y.count))
        }
    }

    /// The exact `m × n` product of `a(i, p)` and `b(p, j)` over `k` terms, and `Σ|terms|` of each element.
    static func exactProduct(
        _ m: Int, _ n: Int, _ k: Int, a: (Int, Int) -> Double, b: (Int, Int) -> Double
    ) -> (reference: [Double], magnitude: [Double]) {
        var reference = [Double](repeating: 0, count: m * n), magnitude = reference
        for i in 0..<m {
            for j in 0..<n {
                for p in 0..<k {
                    let term = a(i, p) * b(p, j)
                    reference[i * n + j] += term
                    magnitude[i * n + j] += abs(term)
                }
            }
        }
        return (reference, magnitude)
    }

    /// Runs `product` into `m` rows of `ldc` floats filled with NaN, on one thread and then split
    /// over the workers: each row's first `n` floats within the reassociation bound of the exact
    /// product, the rest untouched.
    static func expectProduct(
        _ m: Int, _ n: Int, _ k: Int, ldc: Int, reference: [Double], magnitude: [Double], _ label: String,
        _ product: @escaping (UnsafeMutablePointer<Float>) -> Void
    ) {
        for serial in [true, false] {
            let out = UnsafeMutablePointer<Float>.allocate(capacity: m * ldc)
            defer { out.deallocate() }
            out.initialize(repeating: .nan, count: m * ldc)
            if serial { Parallel.serially { product(out) } } else { product(out) }
            let c = Array(UnsafeBufferPointer(start: out, count: m * ldc))
            let values = (0..<m).flatMap { i in c[(i * ldc)..<(i * ldc + n)] }
            expectWithinReassociationBound(values, reference: reference, magnitude: magnitude, terms: k, "\(label) serial \(serial)")
            #expect((0..<m).allSatisfy { i in c[(i * ldc + n)..<(i * ldc + ldc)].allSatisfy(\.isNaN) }, "\(label): wrote past a row")
        }
    }
}
