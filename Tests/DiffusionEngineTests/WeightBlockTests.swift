import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Linear and convolution layers reading their weights block by block of output channels
/// (``WeightProvider/withRowBlocks(_:rowsPerBlock:_:)``): F16 and int8 weights converted a few
/// rows at a time, and Winograd's transformed weights bounded per block, give the same result
/// as the whole tensor at once.
@Suite("weights in blocks of rows")
struct WeightBlockTests {
    /// The layers under test: a linear layer, a 3x3 convolution on im2col (small image), one
    /// on Winograd (90 output tiles), a strided one and a pointwise one.
    static func store(dtype: DType) -> MemoryStore {
        var random = TestRandom(seed: 41)
        let store = MemoryStore()
        store.add("fc.weight", shape: [37, 50], values: random.values(37 * 50, scale: 0.2), dtype: dtype)
        store.add("fc.bias", shape: [37], values: random.values(37), dtype: dtype)
        store.add("small.weight", shape: [20, 9, 3, 3], values: random.values(20 * 81, scale: 0.2), dtype: dtype)
        store.add("small.bias", shape: [20], values: random.values(20), dtype: dtype)
        store.add("wino.weight", shape: [24, 16, 3, 3], values: random.values(24 * 16 * 9, scale: 0.1), dtype: dtype)
        store.add("wino.bias", shape: [24], values: random.values(24), dtype: dtype)
        store.add("down.weight", shape: [19, 16, 3, 3], values: random.values(19 * 16 * 9, scale: 0.1), dtype: dtype)
        store.add("point.weight", shape: [21, 16, 1, 1], values: random.values(21 * 16, scale: 0.3), dtype: dtype)
        return store
    }

    /// Every layer's output with the default budgets (one block for these sizes) and with
    /// budgets small enough to force several blocks.
    static func outputs(_ store: any TensorStore, blocked: Bool) throws -> [[Float]] {
        let ws = Workspace(weights: WeightProvider(store: store))
        if blocked {
            ws.weightBlockFloats = 50 * 3  // 3 rows of the linear weight
            ws.winogradWeightFloats = 36 * 16 * 8  // 8 output channels of transformed weights
        }
        var random = TestRandom(seed: 42)
        let tokens = FloatTensor(shape: [6, 50], values: random.values(6 * 50))
        let small = FloatTensor(shape: [9, 5, 7], values: random.values(9 * 35))
        let image = FloatTensor(shape: [16, 40, 36], values: random.values(16 * 40 * 36))
        #expect(
            Convolution.usesWinograd(
                .init(
                    inChannels: 16, height: 40, width: 36, outChannels: 24,
                    kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))))
        return [
            try ws.linear(tokens, "fc").scalars,
            try ws.conv2d(small, "small", padding: .init(1)).scalars,
            try ws.conv2d(image, "wino", padding: .init(1)).scalars,
            try ws.conv2d(image, "down", stride: 2, padding: .init(1)).scalars,
            try ws.conv2d(image, "point", padding: .init(0)).scalars,
        ]
    }

    /// The exact result of each layer of ``outputs(_:blocked:)`` (in `Double`, from the weights
    /// as the engine reads them: F16 rounded, int8 dequantised) and the magnitude and term count
    /// of its error bound (see ``Reassociation``).
    static func references(_ store: any TensorStore) throws -> [(exact: [Double], magnitude: [Double], terms: Int)] {
        let provider = WeightProvider(store: store)
        var random = TestRandom(seed: 42)
        let tokens = random.values(6 * 50), small = random.values(9 * 35), image = random.values(16 * 40 * 36)
        func linear() throws -> ([Double], [Double], Int) {
            let w = try provider.floats("fc.weight"), b = try provider.floats("fc.bias")
            var exact = [Double](), magnitude = [Double]()
            for r in 0..<6 {
                for o in 0..<37 {
                    var s = Double(b[o]), m = abs(Double(b[o]))
                    for i in 0..<50 {
                        let t = Double(tokens[r * 50 + i]) * Double(w[o * 50 + i])
                        s += t; m += abs(t)
                    }
                    exact.append(s); magnitude.append(m)
                }
            }
            return (exact, magnitude, 51)
        }
        func conv(
            _ x: [Float], _ shape: (c: Int, h: Int, w: Int), _ name: String, kernel: Int, stride: Int, padding: Int,
            hasBias: Bool
        ) throws -> ([Double], [Double], Int) {
            let wShape = try provider.shape(name + ".weight")
            let outC = wShape[0]
            let w = try provider.floats(name + ".weight")
            let b = hasBias ? try provider.floats(name + ".bias") : [Float](repeating: 0, count: outC)
            let outH = (shape.h + 2 * padding - kernel) / stride + 1, outW = (shape.w + 2 * padding - kernel) / stride + 1
            var exact = [Double](), magnitude = [Double]()
            for o in 0..<outC {
                for oy in 0..<outH {
                    for ox in 0..<outW {
                        var s = Double(b[o]), m = abs(Double(b[o]))
                        for c in 0..<shape.c {
                            for ky in 0..<kernel {
                                for kx in 0..<kernel {
                                    let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                                    guard iy >= 0, iy < shape.h, ix >= 0, ix < shape.w else { continue }
                                    let t = Double(x[(c * shape.h + iy) * shape.w + ix]) * Double(w[((o * shape.c + c) * kernel + ky) * kernel + kx])
                                    s += t; m += abs(t)
                                }
                            }
                        }
                        exact.append(s); magnitude.append(m)
                    }
                }
            }
            return (exact, magnitude, shape.c * kernel * kernel + 1)
        }
        let wino = try conv(image, (16, 40, 36), "wino", kernel: 3, stride: 1, padding: 1, hasBias: true)
        let winoWeights = try provider.floats("wino.weight"), winoBias = try provider.floats("wino.bias")
        let winoMagnitude = winogradMagnitude(image, channels: 16, height: 40, width: 36, weight: winoWeights, outChannels: 24, bias: winoBias)
        return [
            try linear(),
            try conv(small, (9, 5, 7), "small", kernel: 3, stride: 1, padding: 1, hasBias: true),
            // Winograd sums over the input channels as a product does, between transforms of at
            // most 32 roundings in all (input 6, weights 8, output 10, bias and residual 2, with
            // margin); its magnitude is the same algorithm run on absolute values.
            (wino.0, winoMagnitude, 16 + 32),
            try conv(image, (16, 40, 36), "down", kernel: 3, stride: 2, padding: 1, hasBias: false),
            try conv(image, (16, 40, 36), "point", kernel: 1, stride: 1, padding: 0, hasBias: false),
        ]
    }

    /// `Σ|terms|` of Winograd F(4x4, 3x3) for a 3x3, padding-1 convolution: `|Aᵀ| (Σ_c |G||g||Gᵀ| ⊙
    /// |Bᵀ||d||B|) |A| + |bias|` per output pixel, with the transform matrices of Lavin & Gray
    /// (interpolation points 0, ±1, ±2, ∞), written out here independently of the engine's code.
    static func winogradMagnitude(
        _ x: [Float], channels: Int, height: Int, width: Int,
        weight: [Float], outChannels: Int, bias: [Float]
    ) -> [Double] {
        let bt: [[Double]] = [
            [4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1],
        ]
        let g: [[Double]] = [
            [1.0 / 4, 0, 0], [-1.0 / 6, -1.0 / 6, -1.0 / 6], [-1.0 / 6, 1.0 / 6, -1.0 / 6],
            [1.0 / 24, 1.0 / 12, 1.0 / 6], [1.0 / 24, -1.0 / 12, 1.0 / 6], [0, 0, 1],
        ]
        let at: [[Double]] = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
        /// `|L| X |R|ᵀ` for `L` of `p x q`, `X` of `q x q`.
        func sandwich(_ l: [[Double]], _ xm: [[Double]]) -> [[Double]] {
            let p = l.count, q = xm.count
            var t = [[Double]](repeating: [Double](repeating: 0, count: q), count: p)
            for i in 0..<p { for j in 0..<q { for k in 0..<q { t[i][j] += abs(l[i][k]) * xm[k][j] } } }
            var r = [[Double]](repeating: [Double](repeating: 0, count: p), count: p)
            for i in 0..<p { for j in 0..<p { for k in 0..<q { r[i][j] += t[i][k] * abs(l[j][k]) } } }
            return r
        }
        let tilesHigh = (height + 3) / 4, tilesWide = (width + 3) / 4
        var out = [Double](repeating: 0, count: outChannels * height * width)
        var u = [[[Double]]]()  // [o * channels + c]: |G||g||G|ᵀ
        for o in 0..<outChannels {
            for c in 0..<channels {
                let f = (0..<3).map { ky in (0..<3).map { kx in abs(Double(weight[((o * channels + c) * 3 + ky) * 3 + kx])) } }
                u.append(sandwich(g, f))
            }
        }
        for ty in 0..<tilesHigh {
            for tx in 0..<tilesWide {
                let v = (0..<channels).map { c in
                    let d = (0..<6).map { i in
                        (0..<6).map { j -> Double in
                            let y = 4 * ty - 1 + i, xx = 4 * tx - 1 + j
                            return y >= 0 && y < height && xx >= 0 && xx < width ? abs(Double(x[(c * height + y) * width + xx])) : 0
                        }
                    }
                    return sandwich(bt, d)
                }
                for o in 0..<outChannels {
                    var s = [[Double]](repeating: [Double](repeating: 0, count: 6), count: 6)
                    for c in 0..<channels { for i in 0..<6 { for j in 0..<6 { s[i][j] += u[o * channels + c][i][j] * v[c][i][j] } } }
                    let y = sandwich(at, s)
                    for i in 0..<4 where 4 * ty + i < height {
                        for j in 0..<4 where 4 * tx + j < width {
                            out[(o * height + 4 * ty + i) * width + 4 * tx + j] = y[i][j] + abs(Double(bias[o]))
                        }
                    }
                }
            }
        }
        return out
    }

    /// Blocked and whole results are each within the reassociation bound of the exact result.
    /// They are not compared with each other bit for bit: splitting the output channels changes
    /// the shapes of the products, and with them which kernels (and summation orders) a BLAS
    /// picks.
    @Test(arguments: ["f32", "f16", "int8"])
    func blocksGiveTheWholeTensorsResult(_ kind: String) throws {
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store: any TensorStore =
            switch kind {
            case "f16": Self.store(dtype: .f16)
            case "int8": try Int8ParityTests.int8(Self.store(dtype: .f32), in: folder, name: "blocks.wpk")
            default: Self.store(dtype: .f32)
            }
        let provider = WeightProvider(store: store)
        if kind == "int8" { #expect(provider.isQuantized("fc.weight") && provider.isQuantized("wino.weight")) }
        // The small budget really splits F16 and int8 weights (F32 is read in place, whole,
        // except where Winograd's transformed weights are bounded).
        let linearRows = try provider.rowsPerBlock("fc.weight", scratchFloats: 50 * 3)
        #expect(kind == "f32" ? linearRows == 37 : linearRows == 3)
        let whole = try Self.outputs(store, blocked: false)
        let blocked = try Self.outputs(store, blocked: true)
        let references = try Self.references(store)
        let names = ["linear", "3x3 im2col", "3x3 winograd", "3x3 stride 2", "1x1"]
        let weightNames = ["fc.weight", "small.weight", "wino.weight", "down.weight", "point.weight"]
        for (i, name) in names.enumerated() {
            let r = references[i]
            // An F16 weight (also one an int8 file keeps) may take the split bfloat16 products on
            // AMX, whose bound is 2⁻¹⁶ of Σ|a b| plus float's (SplitProductTests).
            let split = try GEMM.splitF16Products && provider.isStoredAsF16(weightNames[i])
            let factor = split ? SplitProductTests.bound(terms: r.terms) / Reassociation.gamma(r.terms) : 1
            let w = expectWithinReassociationBound(
                whole[i], reference: r.exact, magnitude: r.magnitude, terms: r.terms, factor: factor, "\(kind) \(name) whole")
            let b = expectWithinReassociationBound(
                blocked[i], reference: r.exact, magnitude: r.magnitude, terms: r.terms, factor: factor, "\(kind) \(name) blocks")
            print("\(kind) \(name): worst error/bound whole \(w.worstRatio), blocks \(b.worstRatio)")
        }
    }
}
