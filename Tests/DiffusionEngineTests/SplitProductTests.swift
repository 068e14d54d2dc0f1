import CEngineKernels
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Products with an F16 weight on AMX tiles in split bfloat16 (`CEngineKernels/gemm_amx.c`,
/// ``GEMM/multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``). Where the processor has no AMX
/// (or `WEIGHTPACK_AMX=0`, or a narrower family is forced) the entry point refuses (-1) and the
/// layers keep their float products, which these tests check too, so each run asserts something.
@Suite("split bfloat16 products on AMX")
struct SplitProductTests {
    /// What the split arithmetic promises for each element: the three products of the parts
    /// leave out at most 3 × 2⁻¹⁸ of each `|a b|` (the `lo lo` term and the two remainders the
    /// parts do not hold), below 2⁻¹⁶; the float sums of the 3k products add float's
    /// reassociation bound. So `|error| ≤ (2⁻¹⁶ + γ(3k + 2)) Σ|a b|`.
    static func bound(terms k: Int) -> Double { 0x1p-16 + Reassociation.gamma(3 * k + 2) }

    /// An operand pair for the product's three forms: A as floats (a Winograd transform, a
    /// linear layer's input) or F16 (a convolution's weight), B as floats (a convolution's
    /// columns) or the transpose of F16 rows (a linear layer's weight).
    enum Form: String, CaseIterable {
        case floatsByFloats, halvesByFloats, floatsByTransposedHalves
    }

    /// Within ``bound(terms:)`` of the exact product on shapes with every edge (rows and columns
    /// not multiples of 16 or 32, so partial tiles go through the edge buffer; depth beyond one
    /// block of 512 and not a multiple of 32; more rows than one packed block of A holds), with
    /// leading dimensions longer than the rows (their extra floats untouched), stored and
    /// accumulated, on one thread and with the rows split over the workers.
    @Test(arguments: [[13, 70, 777], [32, 32, 32], [1, 1, 1], [50, 300, 40], [100, 129, 500], [33, 17, 257], [1100, 20, 1000]])
    func productsAreWithinTheSplitBound(_ shape: [Int]) throws {
        let (m, n, k) = (shape[0], shape[1], shape[2])
        for form in Form.allCases {
            let lda = k + 3, ldb = form == .floatsByTransposedHalves ? k + 5 : n + 7, ldc = n + 2
            var random = TestRandom(seed: UInt64(m * 31 + n * 7 + k + 1000 * Form.allCases.firstIndex(of: form)!))
            let aFloats = random.values(m * lda, scale: 2)
            let aHalves = aFloats.map { Float16($0).bitPattern }
            let bCount = form == .floatsByTransposedHalves ? n * ldb : k * ldb
            let bFloats = random.values(bCount, scale: 3)
            let bHalves = bFloats.map { Float16($0).bitPattern }
            let aValue: (Int, Int) -> Double =
                form == .halvesByFloats
                ? { i, p in Double(Float(Float16(bitPattern: aHalves[i * lda + p]))) } : { i, p in Double(aFloats[i * lda + p]) }
            let bValue: (Int, Int) -> Double =
                form == .floatsByTransposedHalves
                ? { p, j in Double(Float(Float16(bitPattern: bHalves[j * ldb + p]))) } : { p, j in Double(bFloats[p * ldb + j]) }
            let (reference, magnitude) = F16ProductTests.exactProduct(m, n, k, a: aValue, b: bValue)
            func product(_ c: UnsafeMutablePointer<Float>, accumulate: Bool) {
                aFloats.withUnsafeBufferPointer { af in
                    aHalves.withUnsafeBufferPointer { ah in
                        bFloats.withUnsafeBufferPointer { bf in
                            bHalves.withUnsafeBufferPointer { bh in
                                let a: GEMM.SplitOperand = form == .halvesByFloats ? .halves(ah.baseAddress!) : .floats(af.baseAddress!)
                                let b: GEMM.SplitOperand =
                                    form == .floatsByTransposedHalves ? .transposedHalves(bh.baseAddress!) : .floats(bf.baseAddress!)
                                GEMM.multiplySplit(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, accumulate: accumulate)
                            }
                        }
                    }
                }
            }
            guard GEMM.splitF16Products else {
                var c = [Float](repeating: 7, count: m * ldc)
                let status = aFloats.withUnsafeBufferPointer { a in
                    bFloats.withUnsafeBufferPointer { b in
                        wp_gemm_amx_split(
                            Int64(m), Int64(n), Int64(k), a.baseAddress!, 0, Int64(lda), b.baseAddress!, 0, Int64(ldb), &c, Int64(ldc), 0)
                    }
                }
                #expect(status == -1)
                #expect(c.allSatisfy { $0 == 7 })
                return
            }
            let label = "\(form.rawValue) \(m)x\(n)x\(k)"
            for (serial, accumulate) in [(true, false), (false, false), (true, true)] {
                let out = UnsafeMutablePointer<Float>.allocate(capacity: m * ldc)
                defer { out.deallocate() }
                out.initialize(repeating: accumulate ? 1 : .nan, count: m * ldc)
                if serial { Parallel.serially { product(out, accumulate: accumulate) } } else { product(out, accumulate: accumulate) }
                let c = Array(UnsafeBufferPointer(start: out, count: m * ldc))
                let values = (0..<m).flatMap { i in c[(i * ldc)..<(i * ldc + n)] }
                let shift = accumulate ? 1.0 : 0
                let g = Self.bound(terms: k + 1)
                var firstBad: Int?
                for i in values.indices {
                    let exact = reference[i] + shift, scale = magnitude[i] + shift
                    let error = abs(Double(values[i]) - exact)
                    if !(error <= g * scale + Double(Float.leastNormalMagnitude)), firstBad == nil { firstBad = i }
                }
                #expect(firstBad == nil, "\(label) serial \(serial) accumulate \(accumulate): element \(firstBad ?? -1) beyond the split bound")
                let padding = accumulate ? Float(1) : .nan
                #expect(
                    (0..<m).allSatisfy { i in c[(i * ldc + n)..<(i * ldc + ldc)].allSatisfy { $0.bitPattern == padding.bitPattern } },
                    "\(label): wrote past a row")
            }
        }
    }

    /// The arithmetic is the split one, to the bit: a float needing more than 16 significant
    /// bits keeps its first 16 (`1 + 2⁻¹⁰ + 2⁻²⁰` becomes `1 + 2⁻¹⁰`: `hi` is 1, `lo` the
    /// bfloat16 nearest `2⁻¹⁰ + 2⁻²⁰`), an F16 value and a float of 16 bits are kept whole, and
    /// the `lo lo` product is left out (`(1 + 2⁻⁸)(1 + 2⁻⁸)·…` below). A mutation that drops a
    /// part, or a float route, fails these.
    @Test func theSplitArithmeticIsWhatRuns() throws {
        guard GEMM.splitF16Products else { return }
        func product(_ a: Float, _ b: Float) -> Float {
            var c: Float = .nan
            let status = [a].withUnsafeBufferPointer { a in
                [b].withUnsafeBufferPointer { b in wp_gemm_amx_split(1, 1, 1, a.baseAddress!, 0, 1, b.baseAddress!, 0, 1, &c, 1, 0) }
            }
            #expect(status == 0)
            return c
        }
        #expect(product(1 + 0x1p-10 + 0x1p-20, 1) == 1 + 0x1p-10)
        #expect(product(1, 1 + 0x1p-10 + 0x1p-20) == 1 + 0x1p-10)
        // 16 significant bits survive whole (hi 8, lo 8).
        #expect(product(1 + 0x1p-7 + 0x1p-15, 3) == (1 + 0x1p-7 + 0x1p-15) * 3)
        // hi·hi + hi·lo + lo·hi of (1 + 2⁻⁹)², with lo = 2⁻⁹ on both sides: the 2⁻¹⁸ term is dropped.
        #expect(product(1 + 0x1p-9, 1 + 0x1p-9) == 1 + 0x1p-8)
        // An F16 weight's value is exact in its two parts (hi 1, lo 2⁻¹⁰): times a bfloat16 value
        // the product is exact.
        let h = [Float16(1 + 0x1p-10).bitPattern]
        var c: Float = .nan
        let b: [Float] = [1 + 3 * 0x1p-7]
        #expect(wp_gemm_amx_split(1, 1, 1, h, 1, 1, b, 0, 1, &c, 1, 0) == 0)
        #expect(c == (1 + 0x1p-10) * (1 + 3 * 0x1p-7))
    }

    /// Each element of C is its own sum over the depth in a fixed order: a row's result does
    /// not depend on how many rows the product has or where it sits, and a column's not on how
    /// many columns (bit for bit), so splitting the rows over the workers or lowering a
    /// convolution's pixels in blocks cannot change a result.
    @Test func anElementDoesNotDependOnTheRestOfTheProduct() throws {
        guard GEMM.splitF16Products else { return }
        let (m, n, k) = (70, 90, 600)
        var random = TestRandom(seed: 77)
        let a = random.values(m * k).map { Float16($0).bitPattern }, b = random.values(k * n)
        var whole = [Float](repeating: 0, count: m * n)
        #expect(wp_gemm_amx_split(Int64(m), Int64(n), Int64(k), a, 1, Int64(k), b, 0, Int64(n), &whole, Int64(n), 0) == 0)
        for (row, column) in [(0, 0), (17, 33), (69, 89), (40, 64)] {
            var one = [Float](repeating: 0, count: 1)
            let status = a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    wp_gemm_amx_split(1, 1, Int64(k), a.baseAddress! + row * k, 1, Int64(k), b.baseAddress! + column, 0, Int64(n), &one, 1, 0)
                }
            }
            #expect(status == 0)
            #expect(one[0].bitPattern == whole[row * n + column].bitPattern, "row \(row), column \(column)")
        }
    }

    /// Sizes and leading dimensions that do not fit are refused before anything is read; an
    /// empty depth gives zeros (or leaves C as it was when accumulating).
    @Test func badShapesAreRefusedAndAnEmptyDepthGivesZeros() {
        let a = [Float](repeating: 1, count: 64), h = [UInt16](repeating: Float16(1).bitPattern, count: 64)
        var c = [Float](repeating: 5, count: 64)
        #expect(wp_gemm_amx_split(-1, 4, 4, a, 0, 4, a, 0, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_amx_split(4, 4, 4, a, 0, 3, a, 0, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_amx_split(4, 4, 4, a, 0, 4, a, 0, 3, &c, 4, 0) == -3)
        #expect(wp_gemm_amx_split(4, 4, 4, a, 0, 4, a, 0, 4, &c, 3, 0) == -3)
        #expect(wp_gemm_amx_split(4, 8, 4, a, 0, 4, h, 1, 3, &c, 8, 0) == -3)
        #expect(wp_gemm_amx_split(4, 4, -4, a, 0, 4, a, 0, 4, &c, 4, 0) == -3)
        #expect(c.allSatisfy { $0 == 5 })
        guard GEMM.splitF16Products else {
            #expect(wp_gemm_amx_split(4, 4, 4, a, 0, 4, a, 0, 4, &c, 4, 0) == -1)
            #expect(c.allSatisfy { $0 == 5 })
            return
        }
        #expect(wp_gemm_amx_split(4, 4, 0, a, 0, 4, a, 0, 4, &c, 4, 1) == 0)
        #expect(c.allSatisfy { $0 == 5 })
        #expect(wp_gemm_amx_split(4, 4, 0, a, 0, 4, a, 0, 4, &c, 4, 0) == 0)
        #expect(c[0..<16].allSatisfy { $0 == 0 } && c[16...].allSatisfy { $0 == 5 })
    }

    /// The back end's account agrees with the entry point, and AMX needs the AVX-512 family.
    @Test func availabilityIsReportedAsItIs() {
        let backend = ComputeBackend.current
        #expect(backend.splitF16Products == (wp_amx_products() != 0))
        if backend.splitF16Products { #expect(backend.kernels == .avx512 && backend.amxTiles && backend.bf16Products) }
        #expect(backend.description.contains("split bfloat16") == backend.splitF16Products)
        if ProcessInfo.processInfo.environment["WEIGHTPACK_AMX"] == "0" { #expect(!backend.splitF16Products) }
    }

    /// Layers with an F16 weight take the split products on AMX, for any number of rows or
    /// pixels: a linear layer (tokens on both sides of 256), a pointwise convolution and an
    /// im2col one (a stride-2 downsampler) give bit for bit what `multiplySplit` gives on the same
    /// operands plus the bias, and within the split bound of the weight converted to F32. Without
    /// AMX the same layers match the converted weight within float's reassociation.
    @Test(arguments: [5, 77, 300])
    func linearLayersTakeTheSplitProducts(_ tokens: Int) throws {
        let inF = 72, outF = 136
        var random = TestRandom(seed: UInt64(tokens) + 900)
        let weights = random.values(outF * inF, scale: 0.3), bias = random.values(outF)
        let (half, full) = F16ProductTests.halfAndConverted("fc", shape: [outF, inF], weights: weights, bias: bias)
        let input = random.values(tokens * inF)
        func run(_ store: MemoryStore) throws -> [Float] { try F16ProductTests.runLinear(store, input: input, tokens: tokens, inF: inF) }
        let engine = try run(half), converted = try run(full)
        expectClose(engine, converted, shape: [tokens, outF], tolerance: 1e-4, "linear, \(tokens) tokens")
        guard GEMM.splitSuits(m: tokens, n: outF) else { return }
        var expected = [Float](repeating: 0, count: tokens * outF)
        let halves = weights.map { Float16($0).bitPattern }
        input.withUnsafeBufferPointer { x in
            halves.withUnsafeBufferPointer { w in
                expected.withUnsafeMutableBufferPointer { c in
                    Parallel.serially {
                        GEMM.multiplySplit(
                            m: tokens, n: outF, k: inF, a: .floats(x.baseAddress!), lda: inF, b: .transposedHalves(w.baseAddress!), ldb: inF,
                            c: c.baseAddress!, ldc: outF)
                    }
                    Kernels.addRowBias(c.baseAddress!, rows: tokens, columns: outF, bias: bias)
                }
            }
        }
        #expect(engine.map(\.bitPattern) == expected.map(\.bitPattern), "the layer's result is the split product's")
        #expect(engine != converted, "the split products are not float's")
    }

    /// Convolutions with an F16 weight on AMX: pointwise and im2col (a stride-2 downsampler, and
    /// an 8x8 3x3 layer) are the split product of the weight as stored and the lowered input,
    /// bit for bit; a 3x3 layer large enough for Winograd multiplies the transform of the weight
    /// in split bfloat16, within a split bound of the converted weight's result and not equal to
    /// it. Elsewhere, within float's reassociation of the converted weight.
    @Test(arguments: [[1, 1, 20], [3, 2, 24], [3, 1, 8], [3, 1, 32]])
    func convolutionsTakeTheSplitProducts(_ geometry: [Int]) throws {
        let (kernel, stride, size) = (geometry[0], geometry[1], geometry[2])
        let inC = 24, outC = 40
        var random = TestRandom(seed: UInt64(kernel * 1000 + stride * 100 + size))
        let weights = random.values(outC * inC * kernel * kernel, scale: 0.2), bias = random.values(outC)
        let (half, full) = F16ProductTests.halfAndConverted("conv", shape: [outC, inC, kernel, kernel], weights: weights, bias: bias)
        let g = Convolution.Geometry(
            inChannels: inC, height: size, width: size, outChannels: outC, kernelHeight: kernel, kernelWidth: kernel, stride: stride,
            padding: .init(kernel / 2))
        let input = random.values(inC * size * size)
        func run(_ store: MemoryStore) throws -> [Float] {
            try F16ProductTests.runConvolution(store, input: input, inC: inC, size: size, kernel: kernel, stride: stride)
        }
        let engine = try run(half), converted = try run(full)
        let plane = g.outHeight * g.outWidth
        guard GEMM.splitSuits(m: outC, n: plane) else {
            expectClose(engine, converted, shape: [outC, g.outHeight, g.outWidth], tolerance: 1e-5, "conv \(geometry)")
            return
        }
        #expect(engine != converted, "conv \(geometry): the split products are not float's")
        if Convolution.usesWinograd(g) {
            // Winograd's transforms amplify rounding (float's too): the split products add a
            // tenth of the F16 weight's own error (RMS), not more than a quarter of it.
            let original = MemoryStore()
            original.add("conv.weight", shape: [outC, inC, kernel, kernel], values: weights, dtype: .f32)
            original.add("conv.bias", shape: [outC], values: bias, dtype: .f32)
            let exact = try run(original)
            func rms(_ a: [Float], _ b: [Float]) -> Double {
                (zip(a, b).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +) / Double(a.count)).squareRoot()
            }
            let added = rms(engine, converted), stored = rms(converted, exact)
            #expect(added <= 0.25 * stored, "conv \(geometry): split adds \(added) RMS to the F16 weight's \(stored)")
            return
        }
        expectClose(engine, converted, shape: [outC, g.outHeight, g.outWidth], tolerance: 1e-4, "conv \(geometry)")
        let halves = weights.map { Float16($0).bitPattern }
        var columns = [Float](repeating: 0, count: g.patchSize * plane), expected = [Float](repeating: 0, count: outC * plane)
        input.withUnsafeBufferPointer { x in
            columns.withUnsafeMutableBufferPointer { col in
                if g.isPointwise {
                    col.baseAddress!.update(from: x.baseAddress!, count: inC * plane)
                } else {
                    Convolution.im2col(x.baseAddress!, geometry: g, pixels: 0..<plane, into: col.baseAddress!)
                }
            }
        }
        halves.withUnsafeBufferPointer { w in
            columns.withUnsafeBufferPointer { col in
                expected.withUnsafeMutableBufferPointer { c in
                    Parallel.serially {
                        GEMM.multiplySplit(
                            m: outC, n: plane, k: g.patchSize, a: .halves(w.baseAddress!), lda: g.patchSize, b: .floats(col.baseAddress!),
                            ldb: plane, c: c.baseAddress!, ldc: plane)
                    }
                    Kernels.addChannelBias(c.baseAddress!, channels: outC, plane: plane, bias: bias)
                }
            }
        }
        #expect(engine.map(\.bitPattern) == expected.map(\.bitPattern), "conv \(geometry): the layer's result is the split product's")
    }
}
