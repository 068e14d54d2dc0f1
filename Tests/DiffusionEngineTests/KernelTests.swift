import CEngineKernels
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// The compute kernels against naive reference loops.
@Suite("Compute kernels")
struct KernelTests {
    /// Small buffers are 64-byte aligned; from 8 MiB on, 2 MiB aligned (huge pages), and every
    /// byte is usable either way.
    @Test func tensorStorageIsAlignedForItsSize() {
        for (count, alignment) in [(1, 64), (1000, 64), ((8 << 20) / 4 - 1, 64), ((8 << 20) / 4, 2 << 20), (3 << 20, 2 << 20)] {
            let t = FloatTensor(shape: [count])
            #expect(Int(bitPattern: t.base) % alignment == 0, "\(count) floats at \(t.base)")
            t.withUnsafeMutableBufferPointer { p in
                p[count - 1] = 2
                p[0] = 1
            }
            #expect(t.base[0] == 1 && t.base[count - 1] == (count == 1 ? 1 : 2))
        }
    }

    // MARK: GEMM

    struct GEMMCase: Sendable, CustomTestStringConvertible {
        var m: Int, n: Int, k: Int, transposeA: Bool, transposeB: Bool
        var testDescription: String { "\(m)x\(n)x\(k) tA=\(transposeA) tB=\(transposeB)" }
    }

    @Test(arguments: [
        GEMMCase(m: 1, n: 1, k: 1, transposeA: false, transposeB: false),
        GEMMCase(m: 7, n: 5, k: 3, transposeA: false, transposeB: true),
        GEMMCase(m: 33, n: 17, k: 65, transposeA: true, transposeB: false),
        GEMMCase(m: 64, n: 96, k: 128, transposeA: true, transposeB: true),
    ])
    func gemmMatchesNaiveProduct(_ c: GEMMCase) {
        var random = TestRandom(seed: 11)
        let a = random.values(c.m * c.k), b = random.values(c.k * c.n)
        var out = [Float](repeating: 0, count: c.m * c.n)
        GEMM.multiply(
            m: c.m, n: c.n, k: c.k, a: a, lda: c.transposeA ? c.m : c.k, transposeA: c.transposeA,
            b: b, ldb: c.transposeB ? c.k : c.n, transposeB: c.transposeB, c: &out, ldc: c.n)
        var expected = [Float](repeating: 0, count: c.m * c.n)
        for i in 0..<c.m {
            for j in 0..<c.n {
                var s: Double = 0
                for p in 0..<c.k {
                    let av = c.transposeA ? a[p * c.m + i] : a[i * c.k + p]
                    let bv = c.transposeB ? b[j * c.k + p] : b[p * c.n + j]
                    s += Double(av) * Double(bv)
                }
                expected[i * c.n + j] = Float(s)
            }
        }
        expectClose(out, expected, shape: [c.m, c.n], tolerance: 1e-4, "gemm")
    }

    // MARK: Convolution

    struct ConvolutionCase: Sendable, CustomTestStringConvertible {
        var inC: Int, h: Int, w: Int, outC: Int, kernel: Int, stride: Int
        var padding: Convolution.Padding
        var testDescription: String { "\(inC)x\(h)x\(w) -> \(outC) k\(kernel) s\(stride) pad \(padding)" }
    }

    @Test(arguments: [
        ConvolutionCase(inC: 3, h: 9, w: 7, outC: 5, kernel: 3, stride: 1, padding: .init(1)),
        ConvolutionCase(inC: 4, h: 8, w: 8, outC: 6, kernel: 1, stride: 1, padding: .init(0)),
        ConvolutionCase(inC: 5, h: 10, w: 9, outC: 3, kernel: 3, stride: 2, padding: .init(top: 0, left: 0, bottom: 1, right: 1)),
        ConvolutionCase(inC: 2, h: 6, w: 11, outC: 4, kernel: 3, stride: 1, padding: .init(0)),
        ConvolutionCase(inC: 3, h: 5, w: 5, outC: 2, kernel: 5, stride: 1, padding: .init(2)),
    ])
    func convolutionMatchesNaiveLoops(_ c: ConvolutionCase) {
        var random = TestRandom(seed: 12)
        let g = Convolution.Geometry(
            inChannels: c.inC, height: c.h, width: c.w, outChannels: c.outC,
            kernelHeight: c.kernel, kernelWidth: c.kernel, stride: c.stride, padding: c.padding)
        let x = random.values(c.inC * c.h * c.w), weight = random.values(c.outC * g.patchSize), bias = random.values(c.outC)
        var out = [Float](repeating: .nan, count: c.outC * g.outHeight * g.outWidth)
        var columns = [Float](repeating: 0, count: g.patchSize * Convolution.blockPixels(g))
        Convolution.forward(x, geometry: g, weight: weight, bias: bias, output: &out, columns: &columns)
        var expected = [Float](repeating: 0, count: out.count)
        for o in 0..<c.outC {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    var s = Double(bias[o])
                    for ci in 0..<c.inC {
                        for ky in 0..<c.kernel {
                            for kx in 0..<c.kernel {
                                let iy = oy * c.stride - c.padding.top + ky, ix = ox * c.stride - c.padding.left + kx
                                guard iy >= 0, iy < c.h, ix >= 0, ix < c.w else { continue }
                                s += Double(x[(ci * c.h + iy) * c.w + ix]) * Double(weight[((o * c.inC + ci) * c.kernel + ky) * c.kernel + kx])
                            }
                        }
                    }
                    expected[(o * g.outHeight + oy) * g.outWidth + ox] = Float(s)
                }
            }
        }
        expectClose(out, expected, shape: [c.outC, g.outHeight, g.outWidth], tolerance: 1e-4, "conv")
    }

    @Test func im2colBlocksSmallerThanTheImageGiveTheSameResult() {
        // A patch size large enough that the column budget forces several blocks.
        var random = TestRandom(seed: 13)
        let g = Convolution.Geometry(
            inChannels: 512, height: 40, width: 40, outChannels: 4, kernelHeight: 3, kernelWidth: 3,
            stride: 1, padding: .init(1))
        #expect(Convolution.blockPixels(g) < 1600)
        let x = random.values(512 * 1600), weight = random.values(4 * g.patchSize, scale: 0.05)
        var blocked = [Float](repeating: 0, count: 4 * 1600)
        var columns = [Float](repeating: 0, count: g.patchSize * Convolution.blockPixels(g))
        Convolution.forward(x, geometry: g, weight: weight, bias: nil, output: &blocked, columns: &columns)
        // Reference: one full im2col and one product.
        var full = [Float](repeating: 0, count: g.patchSize * 1600)
        Convolution.im2col(x, geometry: g, pixels: 0..<1600, into: &full)
        var expected = [Float](repeating: 0, count: 4 * 1600)
        GEMM.multiply(m: 4, n: 1600, k: g.patchSize, a: weight, lda: g.patchSize, b: full, ldb: 1600, c: &expected, ldc: 1600)
        expectClose(blocked, expected, shape: [4, 40, 40], tolerance: 1e-4, "blocked conv")
    }

    @Test func anInputLoweredOnceServesEveryBlockOfOutputChannels() {
        // What `Workspace.conv2d` does for a weight converted block by block: one im2col of the
        // whole input, then a product per block of output channels, each with its bias slice.
        var random = TestRandom(seed: 15)
        let g = Convolution.Geometry(
            inChannels: 12, height: 11, width: 9, outChannels: 10, kernelHeight: 3, kernelWidth: 3,
            stride: 2, padding: .init(1))
        let plane = g.outHeight * g.outWidth
        #expect(Convolution.lowersInOneBlock(g))
        let x = random.values(12 * 99), weight = random.values(10 * g.patchSize, scale: 0.1), bias = random.values(10)
        var whole = [Float](repeating: 0, count: 10 * plane)
        var columns = [Float](repeating: 0, count: Convolution.scratchCount(g))
        Convolution.forward(x, geometry: g, weight: weight, bias: bias, output: &whole, columns: &columns)
        var lowered = [Float](repeating: 0, count: g.patchSize * plane)
        Convolution.im2col(x, geometry: g, pixels: 0..<plane, into: &lowered)
        var blocked = [Float](repeating: .nan, count: 10 * plane)
        for block in [0..<3, 3..<7, 7..<10] {
            var part = g
            part.outChannels = block.count
            weight.withUnsafeBufferPointer { w in
                bias.withUnsafeBufferPointer { b in
                    blocked.withUnsafeMutableBufferPointer { y in
                        Convolution.lowered(
                            columns: lowered, geometry: part, weight: .floats(w.baseAddress! + block.lowerBound * g.patchSize),
                            bias: b.baseAddress! + block.lowerBound, output: y.baseAddress! + block.lowerBound * plane)
                    }
                }
            }
        }
        expectClose(blocked, whole, shape: [10, g.outHeight, g.outWidth], tolerance: 1e-5, "lowered once, multiplied in blocks")
        // The budget decides: a lowered input of budget + 1 floats is lowered once only under a
        // larger budget.
        let pixels = g.outHeight * g.outWidth
        #expect(!Convolution.lowersInOneBlock(g, budget: g.patchSize * pixels - 1))
        #expect(Convolution.lowersInOneBlock(g, budget: g.patchSize * pixels))
    }

    // MARK: Normalisation and softmax

    @Test(arguments: [(32, 16, 32), (64, 49, 32), (6, 5, 3)])
    func groupNormMatchesDefinition(_ channels: Int, _ plane: Int, _ groups: Int) {
        var random = TestRandom(seed: 14)
        let x = random.values(channels * plane, scale: 3).map { $0 + 0.5 }
        let w = random.values(channels), b = random.values(channels)
        for silu in [false, true] {
            var y = [Float](repeating: 0, count: x.count)
            Kernels.groupNorm(x, into: &y, channels: channels, plane: plane, groups: groups, epsilon: 1e-6, weight: w, bias: b, silu: silu)
            var expected = [Float](repeating: 0, count: x.count)
            let per = channels / groups
            for g in 0..<groups {
                let slice = x[(g * per * plane)..<((g + 1) * per * plane)].map(Double.init)
                let mean = slice.reduce(0, +) / Double(slice.count)
                let variance = slice.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(slice.count)
                for c in (g * per)..<((g + 1) * per) {
                    for j in 0..<plane {
                        var v = (Double(x[c * plane + j]) - mean) / (variance + 1e-6).squareRoot() * Double(w[c]) + Double(b[c])
                        if silu { v = v / (1 + exp(-v)) }
                        expected[c * plane + j] = Float(v)
                    }
                }
            }
            expectClose(y, expected, shape: [channels, plane], tolerance: 1e-5, "group norm silu=\(silu)")
        }
    }

    /// Group norm's last pass (`wp_scale_shift`) rounds `x * scale` before adding `shift`, as the
    /// Swift code it replaced did, in every kernel family: a fused multiply-add there moved a
    /// run-time LoRA 4-10x further from the merged model (rows.c). Values near the group's mean
    /// with a scale of 1000 (a near-constant group), where the two forms differ.
    @Test func groupNormScaleShiftRoundsTheProductFirst() {
        var random = TestRandom(seed: 19)
        let mean: Float = 0.37, scale: Float = 1000.3, shift = 0.25 - mean * 1000.3
        let x = random.values(4096, scale: 1e-3).map { $0 + mean }
        let rounded = x.map { $0 * scale + shift }
        #expect(zip(x, rounded).contains { shift.addingProduct($0, scale) != $1 }, "the inputs tell the two forms apart")
        var y = [Float](repeating: .nan, count: x.count)
        wp_scale_shift(x, &y, Int64(x.count), scale, shift, 0)
        let differing = zip(y, rounded).filter { $0 != $1 }.count
        #expect(differing == 0, "\(differing) of \(x.count) values differ (\(ComputeBackend.current.kernels))")
        wp_scale_shift(x, &y, Int64(x.count), scale, shift, 1)
        let silu = rounded.map { Double($0) / (1 + exp(-Double($0))) }
        let worst = zip(y, silu).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0
        #expect(worst <= 1e-6, "SiLU: worst error \(worst)")
    }

    /// Widths that fill the C kernel's 8 partial sums (24), leave a tail (27) and are SD 1.5's
    /// (320, with a mean far from zero), into another buffer and in place.
    @Test(arguments: [24, 27, 320])
    func layerNormMatchesDefinition(_ features: Int) {
        var random = TestRandom(seed: 15)
        let rows = 9
        let x = random.values(rows * features, scale: 2).map { $0 + (features == 320 ? 40 : 0) }
        let w = random.values(features), b = random.values(features)
        var y = [Float](repeating: 0, count: x.count)
        Kernels.layerNorm(x, into: &y, rows: rows, features: features, epsilon: 1e-5, weight: w, bias: b)
        var expected = [Float](repeating: 0, count: x.count)
        for i in 0..<rows {
            let r = x[(i * features)..<((i + 1) * features)].map(Double.init)
            let mean = r.reduce(0, +) / Double(features)
            let variance = r.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(features)
            for j in 0..<features {
                expected[i * features + j] = Float((r[j] - mean) / (variance + 1e-5).squareRoot() * Double(w[j]) + Double(b[j]))
            }
        }
        expectClose(y, expected, shape: [rows, features], tolerance: 1e-5, "layer norm")
        var inPlace = x
        inPlace.withUnsafeMutableBufferPointer { p in
            Kernels.layerNorm(p.baseAddress!, into: p.baseAddress!, rows: rows, features: features, epsilon: 1e-5, weight: w, bias: b)
        }
        #expect(inPlace == y, "in place")
    }

    @Test func softmaxRowsSumToOneAndMatchDefinition() {
        var random = TestRandom(seed: 16)
        let rows = 5, columns = 13
        var x = random.values(rows * columns, scale: 20)
        x[3] = -.infinity
        let original = x
        Kernels.softmaxRows(&x, rows: rows, columns: columns)
        var expected = [Float](repeating: 0, count: x.count)
        for i in 0..<rows {
            let r = original[(i * columns)..<((i + 1) * columns)].map(Double.init)
            let m = r.max()!
            let e = r.map { exp($0 - m) }
            let s = e.reduce(0, +)
            for j in 0..<columns { expected[i * columns + j] = Float(e[j] / s) }
        }
        expectClose(x, expected, shape: [rows, columns], tolerance: 1e-6, "softmax")
        #expect(x[3] == 0)
    }

    // MARK: Attention

    /// Attention of `queries` rows against `keys` keys for each head, in double precision.
    static func referenceAttention(
        q: [Float], k: [Float], v: [Float], queries: Int, keys: Int, heads: Int, d: Int, scale: Float, causal: Bool
    ) -> [Float] {
        let width = heads * d
        var expected = [Float](repeating: 0, count: queries * width)
        for h in 0..<heads {
            for i in 0..<queries {
                var s = [Double](repeating: -.infinity, count: keys)
                for j in 0..<keys where !causal || j <= i {
                    var dot: Double = 0
                    for p in 0..<d { dot += Double(q[i * width + h * d + p]) * Double(k[j * width + h * d + p]) }
                    s[j] = dot * Double(scale)
                }
                let m = s.max()!
                let e = s.map { exp($0 - m) }
                let sum = e.reduce(0, +)
                for p in 0..<d {
                    var acc: Double = 0
                    for j in 0..<keys { acc += e[j] / sum * Double(v[j * width + h * d + p]) }
                    expected[i * width + h * d + p] = Float(acc)
                }
            }
        }
        return expected
    }

    /// `Attention.forward` on `packed` (the fused kernels where they run) or BLAS.
    static func attention(
        q: [Float], k: [Float], v: [Float], queries: Int, keys: Int, heads: Int, d: Int, scale: Float,
        causal: Bool = false, chunk: Int, packed: Bool, keyBlockLimit: Int = .max
    ) -> [Float] {
        let width = heads * d
        var out = [Float](repeating: .nan, count: queries * width)
        var scores = [Float](
            repeating: .nan,
            count: Attention.scratchCount(queries: queries, keys: keys, heads: heads, headDimension: d, chunk: chunk, packed: packed))
        Attention.forward(
            q: q, qStride: width, k: k, kStride: width, v: v, vStride: width, out: &out, outStride: width,
            queries: queries, keys: keys, heads: heads, headDimension: d, scale: scale,
            causal: causal, chunk: chunk, scores: &scores, packed: packed, keyBlockLimit: keyBlockLimit)
        return out
    }

    /// Both product paths (BLAS, and the fused kernels of attention.c where the AVX-512 family
    /// is selected), causal (always BLAS) or not, against a double-precision reference, for head
    /// widths that fill, straddle and exceed 16-float vectors (8, 40 as in SD 1.5, 72), 50
    /// tokens (not a multiple of the 8-row or 16-key blocks) and several chunk sizes.
    @Test(arguments: [false, true], [false, true])
    func chunkedAttentionEqualsUnchunked(_ causal: Bool, _ packed: Bool) {
        for d in [8, 40, 72] {
            var random = TestRandom(seed: 17)
            let tokens = 50, heads = 3, width = heads * d
            let q = random.values(tokens * width), k = random.values(tokens * width), v = random.values(tokens * width)
            let scale = 1 / Float(d).squareRoot()
            func run(chunk: Int) -> [Float] {
                Self.attention(
                    q: q, k: k, v: v, queries: tokens, keys: tokens, heads: heads, d: d, scale: scale, causal: causal,
                    chunk: chunk, packed: packed)
            }
            let whole = run(chunk: tokens)
            let expected = Self.referenceAttention(
                q: q, k: k, v: v, queries: tokens, keys: tokens, heads: heads, d: d, scale: scale, causal: causal)
            expectClose(whole, expected, shape: [tokens, width], tolerance: 1e-5, "attention d \(d) packed \(packed)")
            for chunk in [1, 7, 16] {
                expectClose(run(chunk: chunk), whole, shape: [tokens, width], tolerance: 1e-6, "d \(d) chunk \(chunk)")
            }
        }
    }

    /// The fused kernels on the shapes their tiles split unevenly: queries not a multiple of 8
    /// rows (nor of the pairs of rows whose scores are interleaved: 37, 13, 9, 5, 11), keys not of
    /// the 48-key score tile (77 as in cross-attention: 48 + 32 padded to 80; 16; 100: 48 + 48 +
    /// 16), widths not of the 48-column sum tile, with the last 8 columns in the pair accumulators
    /// (8, 24, 40) or padded (56); scores far below zero (where
    /// the padded keys' zero scores, if they entered the row maximum, would underflow every
    /// exponential) and far above it (where `exp` without the maximum would overflow).
    @Test func fusedAttentionMatchesTheReferenceOnUnevenShapes() {
        #expect(Attention.usesPackedKernels == (ComputeBackend.current.kernels == .avx512))
        for (queries, keys, heads, d, offset) in [
            (37, 77, 2, 40, Float(0)), (20, 16, 1, 64, 0), (9, 100, 3, 80, 0), (13, 77, 2, 40, -5), (13, 50, 1, 24, 5),
            (5, 33, 2, 8, 0), (11, 40, 1, 56, 0),
        ] {
            var random = TestRandom(seed: 18)
            let width = heads * d
            // Offsets on the queries and keys move every score by about ±offset²·d·scale (±158 at
            // d 40): beyond `exp`'s range either way. Scores that large carry float rounding of
            // about 6e-5 before any kernel sees them (BLAS and fused alike), hence the tolerance;
            // a row maximum taken over the padding would give the mean of the values instead.
            let q = random.values(queries * width).map { $0 + offset }, k = random.values(keys * width).map { $0 + abs(offset) }
            let v = random.values(keys * width)
            let scale = 1 / Float(d).squareRoot()
            #expect(Attention.fusedFits(keys: keys, headDimension: d) == Attention.usesPackedKernels)
            let fused = Self.attention(q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: scale, chunk: 16, packed: true)
            let expected = Self.referenceAttention(
                q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: scale, causal: false)
            expectClose(
                fused, expected, shape: [queries, width], tolerance: offset == 0 ? 1e-5 : 3e-4,
                "fused \(queries)x\(keys), d \(d), offset \(offset)")
        }
    }

    /// Heads too large for L2 go through the fused kernels one block of keys at a time, each
    /// row's maximum and sum carried between blocks and its sums so far rescaled when a later
    /// block has a larger maximum. Forced here with blocks of 48 and 96 keys (the last one
    /// partial), several pieces of rows per head, both widths with pair accumulators and
    /// without, and scores beyond `exp`'s range: against the double reference, and against the
    /// whole head in one block. In the families without the fused kernels there are no key
    /// blocks, the limit is ignored and the products give the same results.
    @Test func fusedAttentionInBlocksOfKeysMatchesTheReference() {
        if Attention.usesPackedKernels {
            #expect(Attention.fusedKeyBlock(keys: 4096, headDimension: 40) == 4096)
            let large = Attention.fusedKeyBlock(keys: 1 << 20, headDimension: 64)
            #expect(large > 0 && large % 48 == 0 && large < 1 << 20)
            #expect(!Attention.fusedFits(keys: large + 48, headDimension: 64))
        } else {
            #expect(Attention.fusedKeyBlock(keys: 4096, headDimension: 40) == 0)
        }
        for (queries, keys, heads, d, offset, block) in [
            (37, 200, 2, 40, Float(0), 48), (13, 150, 1, 64, 0, 96), (9, 100, 3, 80, 0, 48), (5, 97, 2, 8, 0, 48),
            (21, 130, 2, 40, -5, 48), (11, 145, 1, 72, 5, 96),
        ] {
            var random = TestRandom(seed: 19)
            let width = heads * d
            let q = random.values(queries * width).map { $0 + offset }, k = random.values(keys * width).map { $0 + abs(offset) }
            let v = random.values(keys * width)
            let scale = 1 / Float(d).squareRoot()
            let blocked = Self.attention(
                q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: scale, chunk: 8, packed: true,
                keyBlockLimit: block)
            let whole = Self.attention(q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: scale, chunk: 8, packed: true)
            let expected = Self.referenceAttention(
                q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: scale, causal: false)
            let tolerance: Float = offset == 0 ? 1e-5 : 3e-4
            expectClose(
                blocked, expected, shape: [queries, width], tolerance: tolerance, "blocks of \(block): \(queries)x\(keys), d \(d), offset \(offset)")
            expectClose(blocked, whole, shape: [queries, width], tolerance: tolerance, "blocks of \(block) against one block")
        }
    }

    /// The transpose around each transformer (16 x 16 register tiles on AVX-512, scalar blocks
    /// otherwise) is an exact copy, on shapes with whole tiles, partial tiles in either
    /// direction, and more rows than one worker's range (320 x 4096, SD 1.5's 64 x 64 level).
    @Test func transposeIsAnExactCopy() {
        for (rows, columns) in [(16, 16), (48, 64), (37, 53), (33, 17), (5, 40), (320, 4096)] {
            let x = (0..<rows * columns).map { Float($0) * 0.5 - 7 }
            var y = [Float](repeating: .nan, count: rows * columns)
            Kernels.transpose(x, rows: rows, columns: columns, into: &y)
            var wrong = 0
            for i in 0..<rows {
                for j in 0..<columns where y[j * rows + i] != x[i * columns + j] { wrong += 1 }
            }
            #expect(wrong == 0, "\(rows) x \(columns): \(wrong) elements wrong")
        }
    }

    @Test func attentionScoreMemoryIsBoundedAt4096Tokens() {
        // 512-px SD: 4096 latent tokens. One chunk of scores stays within the budget.
        let chunk = Attention.defaultChunk(queries: 4096, keys: 4096)
        #expect(chunk * 4096 <= Attention.scoreBudget)
        #expect(chunk < 4096)
    }

    // MARK: Elementwise

    @Test func activationsMatchDefinitions() {
        let x: [Float] = [-6, -2.5, -1, -0.1, 0, 0.3, 1, 2, 7]
        for (activation, reference) in [
            (Kernels.Activation.silu, { (v: Double) in v / (1 + exp(-v)) }),
            (.gelu, { (v: Double) in 0.5 * v * (1 + erf(v / 2.0.squareRoot())) }),
            (.quickGELU, { (v: Double) in v / (1 + exp(-1.702 * v)) }),
        ] {
            var y = x
            Kernels.apply(activation, &y, count: y.count)
            expectClose(y, x.map { Float(reference(Double($0))) }, shape: [x.count], tolerance: 1e-6, "\(activation)")
        }
    }

    /// The 16-lane `erf` against the double-precision one over [-6, 6], and GEGLU (vector body
    /// and scalar tail) against its definition.
    @Test func vectorErfAndGEGLUMatchDefinitions() {
        var worst: Double = 0
        var x = -6.0
        while x < 6 {
            let lanes = SIMD16<Float>((0..<16).map { Float(x + Double($0) * 0.0005) })
            let y = Kernels.erf(lanes)
            for l in 0..<16 { worst = max(worst, abs(Double(y[l]) - erf(Double(lanes[l])))) }
            x += 0.008
        }
        print("vector erf: max abs error \(worst) over [-6, 6]")
        #expect(worst <= 5e-7)
        #expect(Kernels.erf(SIMD16(repeating: .nan))[0].isNaN)
        #expect(Kernels.erf(SIMD16(repeating: .infinity))[3] == 1 && Kernels.erf(SIMD16(repeating: -.infinity))[5] == -1)
        var random = TestRandom(seed: 5)
        let rows = 3, features = 37  // two vectors and a 5-element tail per row
        let input = random.values(rows * 2 * features, scale: 4)
        var out = [Float](repeating: .nan, count: rows * features)
        Kernels.geglu(input, rows: rows, features: features, into: &out)
        var expected = [Float](repeating: 0, count: rows * features)
        for r in 0..<rows {
            for j in 0..<features {
                let v = Double(input[r * 2 * features + j]), g = Double(input[r * 2 * features + features + j])
                expected[r * features + j] = Float(v * 0.5 * g * (1 + erf(g / 2.0.squareRoot())))
            }
        }
        expectClose(out, expected, shape: [rows, features], tolerance: 1e-5, "geglu")
    }

    /// A projection's bias added in GEGLU's pass, or with the result into the residual stream,
    /// gives bit for bit what adding it in a pass of its own gave (the same roundings, in the
    /// same order), under whichever kernel family is selected.
    @Test func biasesAddedInTheNextPassMatchAPassOfTheirOwn() {
        var random = TestRandom(seed: 11)
        let rows = 5, features = 37
        let projection = random.values(rows * 2 * features, scale: 3), bias = random.values(2 * features, scale: 2)
        var biased = projection
        Kernels.addRowBias(&biased, rows: rows, columns: 2 * features, bias: bias)
        var separate = [Float](repeating: .nan, count: rows * features), fused = separate
        Kernels.geglu(biased, rows: rows, features: features, into: &separate)
        Kernels.geglu(projection, rows: rows, features: features, bias: bias, into: &fused)
        #expect(fused.map(\.bitPattern) == separate.map(\.bitPattern))
        #expect(!fused.contains { $0.isNaN })

        let columns = 2 * features
        let residual = random.values(rows * columns, scale: 5)
        var separateSum = residual, fusedSum = residual, plainSum = residual
        Kernels.add(biased, into: &separateSum, count: biased.count)
        Kernels.addRows(projection, rows: rows, columns: columns, bias: bias, into: &fusedSum)
        #expect(fusedSum.map(\.bitPattern) == separateSum.map(\.bitPattern))
        Kernels.addRows(projection, rows: rows, columns: columns, bias: nil, into: &plainSum)
        #expect(plainSum == zip(residual, projection).map { $0 + $1 })
    }

    @Test func elementwiseWorkSplitAcrossWorkersCoversEveryElement() {
        var y = [Float](repeating: 1, count: 1_000_003)
        let x = [Float](repeating: 2, count: y.count)
        Kernels.add(x, into: &y, count: y.count)
        #expect(y.allSatisfy { $0 == 3 })
    }

    @Test func nearestUpsamplingRepeatsEachPixel() {
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  // [2, 2, 3]
        var y = [Float](repeating: 0, count: 48)
        Kernels.upsampleNearest2x(x, channels: 2, height: 2, width: 3, into: &y)
        for c in 0..<2 {
            for i in 0..<4 {
                for j in 0..<6 { #expect(y[(c * 4 + i) * 6 + j] == x[(c * 2 + i / 2) * 3 + j / 2]) }
            }
        }
    }

    @Test func transposeRoundTrips() {
        var random = TestRandom(seed: 18)
        let x = random.values(37 * 70)
        var t = [Float](repeating: 0, count: x.count), back = [Float](repeating: 0, count: x.count)
        Kernels.transpose(x, rows: 37, columns: 70, into: &t)
        Kernels.transpose(t, rows: 70, columns: 37, into: &back)
        #expect(back == x)
        #expect(t[5 * 37 + 3] == x[3 * 70 + 5])
    }

    // MARK: Weights

    @Test(arguments: [DType.f32, .f16, .bf16])
    func weightProviderConvertsEachDType(_ dtype: DType) throws {
        var random = TestRandom(seed: 19)
        let values = random.values(300_000)
        let store = MemoryStore()
        store.add("w", shape: [300, 1000], values: values, dtype: dtype)
        let provider = WeightProvider(store: store)
        let got = try provider.floats("w", shape: [300, 1000])
        let tolerance: Float = dtype == .f32 ? 0 : dtype == .f16 ? 1e-3 : 1e-2
        expectClose(got, values, shape: [300, 1000], tolerance: tolerance, dtype.name)
        var rows = [Float](repeating: 0, count: 2000)
        try provider.gatherRows("w", indices: [299, 0], into: &rows)
        #expect(Array(rows[0..<1000]) == Array(got[299_000..<300_000]))
        #expect(Array(rows[1000...]) == Array(got[0..<1000]))
    }

    @Test func weightProviderReportsShapeAndDTypeErrors() throws {
        let store = MemoryStore()
        store.add("w", shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let provider = WeightProvider(store: store, prefix: "")
        let shape = #expect(throws: EngineError.self) { try provider.floats("w", shape: [3, 2]) }
        #expect(shape?.code == .shapeMismatch)
        let missing = #expect(throws: EngineError.self) { try provider.floats("nope") }
        #expect(missing?.code == .missingTensor)
        #expect(missing?.tensorName == "nope")
    }
}
