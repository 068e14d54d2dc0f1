import Testing

@testable import DiffusionEngine

/// Winograd F(4x4, 3x3) convolution against a direct double-precision reference.
@Suite("Winograd convolution")
struct WinogradTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var inC: Int, h: Int, w: Int, outC: Int
        /// Block budget in floats (small values force several tile blocks, split tile rows).
        var budget: Int = Convolution.winogradBlockBudget
        var testDescription: String { "\(inC)x\(h)x\(w) -> \(outC), budget \(budget)" }
    }

    static func direct(_ x: [Float], _ weight: [Float], _ bias: [Float], _ c: Case) -> [Float] {
        var expected = [Float](repeating: 0, count: c.outC * c.h * c.w)
        for o in 0..<c.outC {
            for oy in 0..<c.h {
                for ox in 0..<c.w {
                    var s = Double(bias[o])
                    for ci in 0..<c.inC {
                        for ky in 0..<3 {
                            for kx in 0..<3 {
                                let iy = oy - 1 + ky, ix = ox - 1 + kx
                                guard iy >= 0, iy < c.h, ix >= 0, ix < c.w else { continue }
                                s += Double(x[(ci * c.h + iy) * c.w + ix]) * Double(weight[((o * c.inC + ci) * 3 + ky) * 3 + kx])
                            }
                        }
                    }
                    expected[(o * c.h + oy) * c.w + ox] = Float(s)
                }
            }
        }
        return expected
    }

    @Test(arguments: [
        Case(inC: 8, h: 8, w: 8, outC: 8),
        Case(inC: 9, h: 13, w: 17, outC: 12),
        Case(inC: 16, h: 1, w: 5, outC: 10),
        Case(inC: 32, h: 6, w: 3, outC: 64),
        Case(inC: 8, h: 37, w: 30, outC: 8, budget: 1),  // 64-tile blocks over 80 tiles
        Case(inC: 12, h: 70, w: 46, outC: 9, budget: 1),  // blocks start mid tile row
    ])
    func matchesDirectConvolution(_ c: Case) {
        var random = TestRandom(seed: 21)
        let g = Convolution.Geometry(
            inChannels: c.inC, height: c.h, width: c.w, outChannels: c.outC,
            kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))
        #expect(Convolution.supportsWinograd(g))
        let x = random.values(c.inC * c.h * c.w)
        let weight = random.values(c.outC * c.inC * 9, scale: 1 / Float(c.inC * 9).squareRoot())
        let bias = random.values(c.outC)
        var out = [Float](repeating: .nan, count: c.outC * c.h * c.w)
        var scratch = [Float](repeating: .nan, count: Convolution.winogradScratchCount(g, budget: c.budget))
        Convolution.winogradForward(
            x, geometry: g, weight: weight, bias: bias, residual: nil,
            output: &out, scratch: &scratch, budget: c.budget)
        expectClose(out, Self.direct(x, weight, bias, c), shape: [c.outC, c.h, c.w], tolerance: 1e-4, "winograd")
    }

    @Test func addsTheResidualInPlace() {
        var random = TestRandom(seed: 22)
        let c = Case(inC: 16, h: 11, w: 9, outC: 16)
        let g = Convolution.Geometry(
            inChannels: c.inC, height: c.h, width: c.w, outChannels: c.outC,
            kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))
        let x = random.values(c.inC * c.h * c.w)
        let weight = random.values(c.outC * c.inC * 9, scale: 0.1)
        let bias = random.values(c.outC)
        let residual = random.values(c.outC * c.h * c.w)
        var out = residual
        #expect(Convolution.supportsWinograd(g))
        var scratch = [Float](repeating: 0, count: Convolution.winogradScratchCount(g))
        out.withUnsafeMutableBufferPointer { o in
            Convolution.winogradForward(
                x, geometry: g, weight: weight, bias: bias, residual: UnsafePointer(o.baseAddress!),
                output: o.baseAddress!, scratch: &scratch)
        }
        let expected = zip(Self.direct(x, weight, bias, c), residual).map { $0 + $1 }
        expectClose(out, expected, shape: [c.outC, c.h, c.w], tolerance: 1e-4, "winograd + residual")
    }
}
