/// 2-D convolution of one image by lowering to matrix products. 3x3 stride-1 convolutions with
/// padding 1 use Winograd F(4x4, 3x3) (`Convolution+Winograd.swift`); otherwise each block of
/// output pixels is gathered into a column matrix (im2col) of bounded size and multiplied by the
/// weight matrix with `sgemm`. A 1x1, stride-1, unpadded convolution is a single product with no
/// copy.
enum Convolution {
    /// Padding on each side, in pixels (PyTorch `padding=p` is `.init(p)`; diffusers' stride-2
    /// downsampler pads right and bottom by one).
    struct Padding: Equatable, Sendable {
        var top: Int, left: Int, bottom: Int, right: Int
        init(_ p: Int) { top = p; left = p; bottom = p; right = p }
        init(top: Int, left: Int, bottom: Int, right: Int) {
            self.top = top; self.left = left; self.bottom = bottom; self.right = right
        }
    }

    struct Geometry: Equatable, Sendable {
        var inChannels: Int, height: Int, width: Int
        var outChannels: Int, kernelHeight: Int, kernelWidth: Int
        var stride: Int, padding: Padding

        var outHeight: Int { (height + padding.top + padding.bottom - kernelHeight) / stride + 1 }
        var outWidth: Int { (width + padding.left + padding.right - kernelWidth) / stride + 1 }
        /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
        var patchSize: Int { inChannels * kernelHeight * kernelWidth }
        var isPointwise: Bool {
            kernelHeight == 1 && kernelWidth == 1 && stride == 1 && padding == Padding(0)
        }
    }

    /// Floats the column buffer may hold (16 MiB); bounds memory at any image size.
    static let columnBudget = 4 << 20

    /// Output pixels per column block for `geometry`. The scratch `forward` needs is
    /// `patchSize * blockPixels(geometry)` floats (for the Winograd path, a block size that
    /// covers ``winogradScratchCount(_:)``).
    static func blockPixels(_ g: Geometry) -> Int {
        if usesWinograd(g) {
            let patch = max(g.patchSize, 1)
            return (winogradScratchCount(g) + patch - 1) / patch
        }
        return im2colBlockPixels(g)
    }

    /// Output pixels per im2col column block: the column buffer stays within ``columnBudget``.
    static func im2colBlockPixels(_ g: Geometry) -> Int {
        let pixels = g.outHeight * g.outWidth
        return max(1, min(pixels, columnBudget / max(g.patchSize, 1)))
    }

    /// Floats of scratch `forward` needs for `geometry` (none for a pointwise convolution).
    static func scratchCount(_ g: Geometry) -> Int {
        g.isPointwise ? 0 : g.patchSize * blockPixels(g)
    }

    /// `output[outC, outH*outW] = weight[outC, patch] * columns + bias (+ residual)`.
    ///
    /// 3x3 stride-1 convolutions with padding 1 and at least 8 channels each side go through
    /// Winograd F(4x4, 3x3) (``winogradForward(_:geometry:weight:bias:residual:output:scratch:)``),
    /// other convolutions through blocked im2col.
    /// - Parameters:
    ///   - columns: scratch of at least ``scratchCount(_:)`` floats (unused for pointwise
    ///     convolutions).
    ///   - residual: a tensor of the output's shape added to the result; must not overlap
    ///     `input` or `output`.
    static func forward(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, columns: UnsafeMutablePointer<Float>?,
        residual: UnsafePointer<Float>? = nil, splitProducts: Bool = false
    ) {
        if usesWinograd(g) {
            guard let columns else { preconditionFailure("convolution needs a scratch buffer") }
            winogradForward(
                input, geometry: g, weight: weight, bias: bias, residual: residual, output: output, scratch: columns,
                splitProducts: splitProducts)
        } else {
            loweredForward(input, geometry: g, weight: weight, bias: bias, output: output, columns: columns, residual: residual)
        }
    }

    /// The im2col + GEMM convolution (any geometry); `columns` holds
    /// `patchSize * im2colBlockPixels(geometry)` floats.
    static func loweredForward(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, columns: UnsafeMutablePointer<Float>?,
        residual: UnsafePointer<Float>? = nil
    ) {
        loweredForward(input, geometry: g, weight: .floats(weight), bias: bias, output: output, columns: columns, residual: residual)
    }

    /// ``loweredForward(_:geometry:weight:bias:output:columns:residual:)`` with the weight as a
    /// product operand (possibly rounded to bfloat16 already).
    static func loweredForward(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        weight: GEMM.Operand, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, columns: UnsafeMutablePointer<Float>?,
        residual: UnsafePointer<Float>? = nil
    ) {
        let pixels = g.outHeight * g.outWidth
        if g.isPointwise {
            GEMM.multiply(
                m: g.outChannels, n: pixels, k: g.inChannels,
                a: weight, lda: g.inChannels, b: .floats(input), ldb: pixels, c: output, ldc: pixels)
        } else {
            guard let columns else { preconditionFailure("convolution needs a column buffer") }
            let block = im2colBlockPixels(g)
            var start = 0
            while start < pixels {
                let n = min(block, pixels - start)
                im2col(input, geometry: g, pixels: start..<(start + n), into: columns)
                GEMM.multiply(
                    m: g.outChannels, n: n, k: g.patchSize,
                    a: weight, lda: g.patchSize, b: .floats(columns), ldb: n,
                    c: output + start, ldc: pixels)
                start += n
            }
        }
        if let bias { Kernels.addChannelBias(output, channels: g.outChannels, plane: pixels, bias: bias) }
        if let residual { Kernels.add(residual, into: output, count: g.outChannels * pixels) }
    }

    /// Whether a convolution of `geometry` goes through im2col and its whole lowered input
    /// (`patchSize` × every output pixel) fits `budget` floats: the input can then be lowered
    /// once (``im2col(_:geometry:pixels:into:)`` of all pixels) and multiplied by the weight in
    /// as many blocks of output channels as wanted (``lowered(columns:geometry:weight:bias:output:)``),
    /// which is what a weight converted block by block needs.
    static func lowersInOneBlock(_ g: Geometry, budget: Int = columnBudget) -> Bool {
        !g.isPointwise && !usesWinograd(g) && g.outHeight * g.outWidth <= budget / max(g.patchSize, 1)
    }

    /// The product half of ``loweredForward(_:geometry:weight:bias:output:columns:residual:)``
    /// for a geometry that ``lowersInOneBlock(_:)``: `columns` already holds the whole input
    /// lowered; `weight`, `bias` and `output` are those of `geometry.outChannels` channels.
    static func lowered(
        columns: UnsafePointer<Float>, geometry g: Geometry,
        weight: GEMM.Operand, bias: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>
    ) {
        let pixels = g.outHeight * g.outWidth
        GEMM.multiply(
            m: g.outChannels, n: pixels, k: g.patchSize,
            a: weight, lda: g.patchSize, b: .floats(columns), ldb: pixels, c: output, ldc: pixels)
        if let bias { Kernels.addChannelBias(output, channels: g.outChannels, plane: pixels, bias: bias) }
    }

    /// Gathers the patches of output pixels `pixels` into `columns[patchSize, pixels.count]`.
    static func im2col(_ input: UnsafePointer<Float>, geometry g: Geometry, pixels: Range<Int>, into columns: UnsafeMutablePointer<Float>) {
        let n = pixels.count
        let kernelArea = g.kernelHeight * g.kernelWidth
        let src = SharedPointer(input), dst = SharedPointer(columns)
        let outWidth = g.outWidth
        Parallel.forRanges(g.patchSize, grain: max(1, 32_768 / max(n, 1))) { rows in
            for row in rows {
                let c = row / kernelArea
                let ky = (row % kernelArea) / g.kernelWidth
                let kx = row % g.kernelWidth
                let channel = src.pointer + c * g.height * g.width
                let target = dst.pointer + row * n
                // Output row by output row: the first may start mid-row, the last end mid-row.
                var p = pixels.lowerBound
                var oy = p / outWidth
                var ox0 = p - oy * outWidth
                while p < pixels.upperBound {
                    let ox1 = min(outWidth, ox0 + (pixels.upperBound - p))
                    let t = target + (p - pixels.lowerBound)
                    let iy = oy * g.stride - g.padding.top + ky
                    if iy < 0 || iy >= g.height {
                        t.update(repeating: 0, count: ox1 - ox0)
                    } else {
                        let line = channel + iy * g.width
                        if g.stride == 1 {
                            // ix = ox - left + kx must lie in 0..<width.
                            let shift = kx - g.padding.left
                            let lo = min(max(ox0, -shift), ox1)
                            let hi = max(min(ox1, g.width - shift), lo)
                            if lo > ox0 { t.update(repeating: 0, count: lo - ox0) }
                            if hi > lo { (t + (lo - ox0)).update(from: line + lo + shift, count: hi - lo) }
                            if ox1 > hi { (t + (hi - ox0)).update(repeating: 0, count: ox1 - hi) }
                        } else {
                            for ox in ox0..<ox1 {
                                let ix = ox * g.stride - g.padding.left + kx
                                t[ox - ox0] = (ix >= 0 && ix < g.width) ? line[ix] : 0
                            }
                        }
                    }
                    p += ox1 - ox0
                    oy += 1
                    ox0 = 0
                }
            }
        }
    }
}
