import CEngineKernels

/// 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4x4, 3x3): every 4x4
/// block of output pixels is computed from a 6x6 input tile with 36 multiplications per channel
/// pair instead of 144, so the matrix products do a quarter of im2col's arithmetic.
/// Transforms as in Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016),
/// https://arxiv.org/abs/1509.09308 (interpolation points 0, ±1, ±2, ∞).
///
/// `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` per tile, summed over input channels; the sum over
/// channels of the 36 element-wise products is 36 matrix products
/// `M[ξ] (outC x tiles) = U[ξ] (outC x inC) · V[ξ] (inC x tiles)`.
/// Tiles are processed in blocks so the transformed input and products stay within
/// ``winogradBlockBudget`` floats at any image size.
extension Convolution {
    /// Floats the transformed input and the products of one tile block may hold (32 MiB).
    static let winogradBlockBudget = 8 << 20

    /// Whether Winograd F(4x4, 3x3) can compute `g`: 3x3, stride 1, padding 1, and enough
    /// channels on both sides for the matrix products to be worth it.
    static func supportsWinograd(_ g: Geometry) -> Bool {
        g.kernelHeight == 3 && g.kernelWidth == 3 && g.stride == 1 && g.padding == Padding(1)
            && g.inChannels >= 8 && g.outChannels >= 8
    }

    /// Output tiles below which `forward` prefers im2col: the weight transform writes and the
    /// products read 36 floats per filter (four times the weights) whatever the image size, so
    /// on small images it costs more than the arithmetic it saves. Measured on one core
    /// (`EngineBench unet-convolutions`): 1280->1280 at 8x8 (4 tiles) 0.067 s Winograd vs
    /// 0.022 s im2col; at 16x16 (16 tiles) 0.079 vs 0.073 s; at 32x32 (64 tiles) 640->640
    /// 0.035 vs 0.072 s.
    static let winogradMinimumTiles = 64

    /// Whether `forward` computes `g` with Winograd F(4x4, 3x3).
    static func usesWinograd(_ g: Geometry) -> Bool {
        supportsWinograd(g) && ((g.height + 3) / 4) * ((g.width + 3) / 4) >= winogradMinimumTiles
    }

    /// Output tiles per block for `g` (at least 64, so the products stay efficient).
    static func winogradBlockTiles(_ g: Geometry, budget: Int = winogradBlockBudget) -> Int {
        let tiles = ((g.height + 3) / 4) * ((g.width + 3) / 4)
        let perTile = 36 * (g.inChannels + g.outChannels)
        return max(1, min(tiles, max(64, budget / perTile)))
    }

    /// Floats of scratch the Winograd path needs: the transformed weights, then one block's
    /// transformed input and products.
    static func winogradScratchCount(_ g: Geometry, budget: Int = winogradBlockBudget) -> Int {
        let block = winogradBlockTiles(g, budget: budget)
        return 36 * (matrixStride(g.outChannels * g.inChannels) + matrixStride(g.inChannels * block) + matrixStride(g.outChannels * block))
    }

    /// The distance in floats between two of the 36 matrices of `count` floats: padded to 16
    /// mod 32 floats so the 36 streams a transform reads or writes at once never sit a multiple
    /// of 4 KiB apart (which would map them all to the same L1 set).
    @inline(__always)
    static func matrixStride(_ count: Int) -> Int { (count + 31) / 32 * 32 + 16 }

    /// `output = conv3x3(input) + bias (+ residual)`; `scratch` holds
    /// ``winogradScratchCount(_:budget:)`` floats for the same `budget`. `residual` may be
    /// `output` itself (not `input`).
    static func winogradForward(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, residual: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        budget: Int = winogradBlockBudget, splitProducts: Bool = false
    ) {
        let uStride = matrixStride(g.outChannels * g.inChannels)
        transformWeights(weight, outChannels: g.outChannels, inChannels: g.inChannels, into: scratch, stride: uStride)
        winogradProducts(
            input, geometry: g, transformed: .floats(scratch), stride: uStride, bias: bias, residual: residual, output: output,
            scratch: scratch + 36 * uStride, budget: budget, splitProducts: splitProducts)
    }

    /// Floats of scratch ``winogradProducts(_:geometry:transformed:stride:bias:residual:output:scratch:budget:)``
    /// needs: one tile block's transformed input and products.
    static func winogradProductScratchCount(_ g: Geometry, budget: Int = winogradBlockBudget) -> Int {
        let block = winogradBlockTiles(g, budget: budget)
        return 36 * (matrixStride(g.inChannels * block) + matrixStride(g.outChannels * block))
    }

    /// ``winogradForward(_:geometry:weight:bias:residual:output:scratch:budget:)`` with the
    /// weights already transformed: `u` holds the 36 matrices `U[ξ]` (`outC × inC`) `stride`
    /// floats apart (``transformWeights(_:outChannels:inChannels:into:stride:)``; for a thread
    /// computing in bf16 they may be rounded to bfloat16 already), which may be shared with
    /// other cores (read only); `scratch` holds ``winogradProductScratchCount(_:budget:)`` floats.
    /// With `splitProducts` (the transform of an F16 weight, on AMX: ``GEMM/splitF16Products``)
    /// float `u` is multiplied in split bfloat16 (``GEMM/multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``).
    static func winogradProducts(
        _ input: UnsafePointer<Float>, geometry g: Geometry,
        transformed u: GEMM.Operand, stride uStride: Int, bias: UnsafePointer<Float>?, residual: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        budget: Int = winogradBlockBudget, splitProducts: Bool = false
    ) {
        let inC = g.inChannels, outC = g.outChannels
        let tilesHigh = (g.height + 3) / 4, tilesWide = (g.width + 3) / 4
        let tiles = tilesHigh * tilesWide
        let block = winogradBlockTiles(g, budget: budget)
        let v = scratch
        let m = v + 36 * matrixStride(inC * block)
        var start = 0
        while start < tiles {
            let n = min(block, tiles - start)
            let vStride = matrixStride(inC * n), mStride = matrixStride(outC * n)
            transformInput(input, geometry: g, tiles: start..<(start + n), into: v, stride: vStride)
            // The 36 products are independent: with two or more workers each runs its share on
            // one BLAS thread, which keeps both cores busy without BLAS's own synchronisation.
            let us = UnsafeSendableBox(u), vs = SharedPointer(v), ms = SharedPointer(m)
            GEMM.withSingleThreadedCalls {
                Parallel.forRanges(36, grain: 1) { r in
                    for xi in r {
                        if splitProducts, let floats = us.value.floats {
                            GEMM.multiplySplit(
                                m: outC, n: n, k: inC, a: .floats(floats + xi * uStride), lda: inC, b: .floats(vs.pointer + xi * vStride),
                                ldb: n, c: ms.pointer + xi * mStride, ldc: n)
                            continue
                        }
                        GEMM.multiply(
                            m: outC, n: n, k: inC,
                            a: us.value.advanced(by: xi * uStride), lda: inC,
                            b: .floats(vs.pointer + xi * vStride), ldb: n,
                            c: ms.pointer + xi * mStride, ldc: n)
                    }
                }
            }
            transformOutput(m, stride: mStride, geometry: g, tiles: start..<(start + n), bias: bias, residual: residual, into: output)
            start += n
        }
    }

    /// `G`: the six values each output of a 3-tap filter is interpolated at (rows: the points
    /// 0, 1, -1, 1/2, -1/2, ∞ of Lavin & Gray's F(4, 3), scaled as their `G`).
    static let interpolation: [[Float]] = [
        [1.0 / 4, 0, 0],
        [-1.0 / 6, -1.0 / 6, -1.0 / 6],
        [-1.0 / 6, 1.0 / 6, -1.0 / 6],
        [1.0 / 24, 1.0 / 12, 1.0 / 6],
        [1.0 / 24, -1.0 / 12, 1.0 / 6],
        [0, 0, 1],
    ]

    /// The weight transform as one matrix: `(G g Gᵀ)[i][j] = Σ_{r,s} G[i][r] G[j][s] g[r][s]`,
    /// so row `ξ = 6i + j` holds `G[i][r] · G[j][s]` at column `3r + s` (36 × 9, row-major).
    static let weightTransform: [Float] = {
        let g = interpolation
        var m = [Float](repeating: 0, count: 36 * 9)
        for i in 0..<6 {
            for j in 0..<6 {
                for r in 0..<3 {
                    for s in 0..<3 { m[(i * 6 + j) * 9 + r * 3 + s] = g[i][r] * g[j][s] }
                }
            }
        }
        return m
    }()

    /// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for every filter `g = weight[o, c]` (`[outC, inC, 3, 3]`).
    ///
    /// The filters are the rows of a `[outC · inC, 9]` matrix and the transform is linear, so
    /// all of it is one float product, `U = T · weightᵀ` with ``weightTransform`` as `T` (36 × 9)
    /// and `stride` as `U`'s row stride: the 36 matrices come out laid out as the products read
    /// them. The work is writing `U` (four times the weights, 59 MB for 640 -> 640), which runs
    /// at memory speed either way: replacing the SIMD loops this was before changed
    /// `EngineBench unet-convolutions` by no more than its noise at 64x64 and 32x32 and took
    /// 2560 -> 1280 at 8x8 from 0.094 to 0.077 s on one core. Sharing `U` between the cores
    /// (``WeightProvider/withWinogradWeights(_:outChannels:inChannels:rowsPerBlock:rowsPerChunk:_:)``)
    /// is what saves time. Always float, also under `--compute bf16`.
    static func transformWeights(
        _ weight: UnsafePointer<Float>, outChannels: Int, inChannels: Int,
        into u: UnsafeMutablePointer<Float>, stride: Int
    ) {
        let filters = outChannels * inChannels
        guard filters > 0 else { return }
        weightTransform.withUnsafeBufferPointer { t in
            GEMM.multiplyInFloat(
                m: 36, n: filters, k: 9, a: t.baseAddress!, lda: 9, b: weight, ldb: 9, transposeB: true, c: u, ldc: stride)
        }
    }

    /// `V[ξ][c][t - tiles.lowerBound] = (Bᵀ d B)[ξ]` for the 6x6 input tile `d` of each tile `t`
    /// and channel `c` (zero outside the image).
    ///
    /// Per channel and tile row: the six input rows a tile row reads are copied with their zero
    /// padding, the vertical half of the transform runs along whole rows (contiguous, vectorised),
    /// then the horizontal half runs per tile. The loops are C (`wp_winograd_input`,
    /// Sources/CEngineKernels/winograd.c), compiled once per kernel family and picked at run time.
    static func transformInput(
        _ input: UnsafePointer<Float>, geometry g: Geometry, tiles: Range<Int>,
        into v: UnsafeMutablePointer<Float>, stride plane: Int
    ) {
        let inC = g.inChannels, height = g.height, width = g.width
        let rowLength = 4 * ((width + 3) / 4) + 2
        let xs = SharedPointer(input), vs = SharedPointer(v)
        Parallel.forRanges(inC, grain: 1) { channels in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 12 * rowLength) { buffer in
                wp_winograd_input(
                    xs.pointer, Int64(height), Int64(width), Int64(channels.lowerBound), Int64(channels.upperBound),
                    Int64(tiles.lowerBound), Int64(tiles.upperBound), vs.pointer, Int64(plane), buffer.baseAddress!)
            }
        }
    }

    /// `output[o] (+)= Aᵀ M[·][o][t] A + bias[o]` for each tile `t`, clipped at the image edge.
    ///
    /// Per output channel and tile row: the horizontal half of the transform runs across the
    /// tiles for each of the six rows (contiguous in the tile index), the vertical half combines
    /// those and writes four output rows. The loops are C (`wp_winograd_output`), compiled once
    /// per kernel family and picked at run time.
    static func transformOutput(
        _ m: UnsafePointer<Float>, stride plane: Int, geometry g: Geometry, tiles: Range<Int>,
        bias: UnsafePointer<Float>?, residual: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>
    ) {
        let outC = g.outChannels, height = g.height, width = g.width
        let tilesWide = (width + 3) / 4
        let ms = SharedPointer(m), ys = SharedPointer(output)
        let bs = bias.map { SharedPointer($0) }, rs = residual.map { SharedPointer($0) }
        Parallel.forRanges(outC, grain: 1) { channels in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 24 * tilesWide + 4 * (4 * tilesWide)) { buffer in
                wp_winograd_output(
                    ms.pointer, Int64(plane), Int64(height), Int64(width), Int64(channels.lowerBound), Int64(channels.upperBound),
                    Int64(tiles.lowerBound), Int64(tiles.upperBound), bs.map { UnsafePointer($0.pointer) }, rs.map { UnsafePointer($0.pointer) },
                    ys.pointer, buffer.baseAddress!)
            }
        }
    }
}
