/// 2-D convolution of one image by lowering to matrix products: each block of output pixels is
/// gathered into a column matrix (im2col) of bounded size and multiplied by the weight matrix
/// with `sgemm`. A 1x1, stride-1, unpadded convolution is a single product with no copy.
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

    /// Output pixels per column block for `geometry`.
    static func blockPixels(_ g: Geometry) -> Int {
        let pixels = g.outHeight * g.outWidth
        return max(1, min(pixels, columnBudget / max(g.patchSize, 1)))
    }

    /// `output[outC, outH*outW] = weight[outC, patch] * columns + bias`.
    ///
    /// - Parameters:
    ///   - columns: scratch of at least `patchSize * blockPixels(geometry)` floats (unused for
    ///     pointwise convolutions).
    static func forward(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, columns: UnsafeMutablePointer<Float>?
    ) {
        let pixels = g.outHeight * g.outWidth
        if g.isPointwise {
            GEMM.multiply(m: g.outChannels, n: pixels, k: g.inChannels,
                          a: weight, lda: g.inChannels, b: input, ldb: pixels, c: output, ldc: pixels)
        } else {
            guard let columns else { preconditionFailure("convolution needs a column buffer") }
            let block = blockPixels(g)
            var start = 0
            while start < pixels {
                let n = min(block, pixels - start)
                im2col(input, geometry: g, pixels: start..<(start + n), into: columns)
                GEMM.multiply(m: g.outChannels, n: n, k: g.patchSize,
                              a: weight, lda: g.patchSize, b: columns, ldb: n,
                              c: output + start, ldc: pixels)
                start += n
            }
        }
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
                var p = pixels.lowerBound
                while p < pixels.upperBound {
                    let oy = p / outWidth
                    let ox0 = p % outWidth
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
                }
            }
        }
    }
}
