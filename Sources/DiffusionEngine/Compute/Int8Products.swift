import CEngineKernels

/// The products of ``ComputePrecision/int8``: an int8 block weight (``Int8Weight``) times
/// activations quantised as they arrive, 32 values per scale (`CEngineKernels/q8.c`, AVX512_VNNI).
/// Both halves split their work over the ``Parallel`` workers unless the thread runs serially.
enum Int8Products {
    /// Activation rows per packed tile (`TILE_ROWS` in `q8.c`), and bytes per tile and block of 32.
    static let tileRows = 32
    private static let bytesPerTileBlock = 32 * 32 + 32 * 4

    /// Whether a linear layer with `k` inputs takes the int8 products (with an int8 block weight).
    static func takes(linearInputs k: Int) -> Bool { k % 32 == 0 }

    /// Whether a convolution of geometry `g` takes the int8 products (with an int8 block
    /// weight): patches of whole blocks, and not a convolution Winograd takes (those stay float).
    static func takes(_ g: Convolution.Geometry) -> Bool { g.patchSize % 32 == 0 && !Convolution.usesWinograd(g) }

    /// Bytes ``quantize(_:rows:k:strideRow:strideValue:into:)`` writes.
    static func packedBytes(rows: Int, k: Int) -> Int { Int(wp_q8_activation_bytes(Int64(rows), Int64(k))) }

    /// Quantises `rows` rows of `k` values (`k` a multiple of 32; row r's value j at
    /// `a[r * strideRow + j * strideValue]`, one of the strides 1) into `packed`
    /// (``packedBytes(rows:k:)`` bytes).
    static func quantize(
        _ a: UnsafePointer<Float>, rows: Int, k: Int, strideRow: Int, strideValue: Int, into packed: UnsafeMutableRawPointer
    ) {
        let tiles = (rows + tileRows - 1) / tileRows
        let tileBytes = (k / 32) * bytesPerTileBlock
        let source = SharedPointer(a), target = UnsafeSendableBox(packed)
        // Each tile is packed on its own, at its own offset: tiles split over the workers.
        Parallel.forRanges(tiles, grain: max(1, 4096 / max(k / 32, 1))) { range in
            let first = range.lowerBound * tileRows, count = min(rows, range.upperBound * tileRows) - first
            let status = wp_q8_quantize(
                source.pointer + first * strideRow, Int64(count), Int64(k), Int64(strideRow), Int64(strideValue),
                target.value + range.lowerBound * tileBytes)
            precondition(status == 0, "int8 quantisation failed (\(status)) for \(rows) x \(k)")
        }
    }

    /// ``quantize(_:rows:k:strideRow:strideValue:into:)`` of the im2col rows of output pixels
    /// `pixels` of the convolution `g` of `input`, read straight from the input (no float
    /// columns): `g.patchSize` must be a multiple of 32.
    static func quantizePatches(
        _ input: UnsafePointer<Float>, geometry g: Convolution.Geometry, pixels: Range<Int>, into packed: UnsafeMutableRawPointer
    ) {
        let rows = pixels.count, k = g.patchSize
        let tiles = (rows + tileRows - 1) / tileRows
        let tileBytes = (k / 32) * bytesPerTileBlock
        var geometry = wp_q8_geometry(
            channels: Int64(g.inChannels), height: Int64(g.height), width: Int64(g.width), kernelHeight: Int64(g.kernelHeight),
            kernelWidth: Int64(g.kernelWidth), stride: Int64(g.stride), padTop: Int64(g.padding.top), padLeft: Int64(g.padding.left),
            outWidth: Int64(g.outWidth))
        let source = SharedPointer(input), target = UnsafeSendableBox(packed)
        withUnsafePointer(to: &geometry) { shape in
            let shape = UnsafeSendableBox(shape)
            Parallel.forRanges(tiles, grain: max(1, 4096 / max(k / 32, 1))) { range in
                let first = range.lowerBound * tileRows, count = min(rows, range.upperBound * tileRows) - first
                let status = wp_q8_quantize_patches(
                    source.pointer, shape.value, Int64(pixels.lowerBound + first), Int64(count), target.value + range.lowerBound * tileBytes)
                precondition(status == 0, "int8 quantisation of patches failed (\(status)) for \(rows) x \(k)")
            }
        }
    }

    /// `c(r, j) (+)= A(r) · W(j)` for the `rows` quantised rows in `packed` and every row `j` of
    /// `weight`, with `c(r, j)` at `c[r * ldcRow + j * ldcColumn]` (one of the two 1).
    static func multiply(
        rows: Int, packed: UnsafeRawPointer, weight w: Int8Weight,
        c: UnsafeMutablePointer<Float>, ldcRow: Int, ldcColumn: Int, accumulate: Bool = false
    ) {
        let blocks = w.k / 32
        let output = SharedPointer(c), activations = UnsafeSendableBox(packed), weight = UnsafeSendableBox(w)
        // Weight rows split over the workers, in multiples of the kernel's four.
        let groups = (w.rows + 3) / 4
        Parallel.forRanges(groups, grain: max(1, (1 << 22) / max(rows * w.k * 4, 1))) { range in
            let w = weight.value
            let first = range.lowerBound * 4, count = min(w.rows, range.upperBound * 4) - first
            let status = wp_q8_gemm(
                Int64(rows), Int64(count), Int64(w.k), activations.value, w.values + first * w.rowBytes, Int64(w.rowBytes),
                Int64(w.blockBytes), w.scales + first * blocks, w.corrections + first * blocks, output.pointer + first * ldcColumn,
                Int64(ldcRow), Int64(ldcColumn), accumulate ? 1 : 0)
            precondition(status == 0, "int8 product failed (\(status)) for \(rows) x \(w.rows) x \(w.k)")
        }
    }

    /// Adds to `sums` (`k` entries) each value's squared quantisation error, as
    /// ``quantize(_:rows:k:strideRow:strideValue:into:)`` would quantise the rows (any processor).
    static func addNoise(_ a: UnsafePointer<Float>, rows: Int, k: Int, strideRow: Int, strideValue: Int, into sums: UnsafeMutablePointer<Double>) {
        let status = wp_q8_noise(a, Int64(rows), Int64(k), Int64(strideRow), Int64(strideValue), sums)
        precondition(status == 0, "int8 noise failed (\(status)) for \(rows) x \(k)")
    }

    /// ``addNoise(_:rows:k:strideRow:strideValue:into:)`` of every output pixel's patch of the
    /// convolution `g` of `input` (`sums` has `g.patchSize` entries).
    static func addPatchNoise(_ input: UnsafePointer<Float>, geometry g: Convolution.Geometry, into sums: UnsafeMutablePointer<Double>) {
        var geometry = wp_q8_geometry(
            channels: Int64(g.inChannels), height: Int64(g.height), width: Int64(g.width), kernelHeight: Int64(g.kernelHeight),
            kernelWidth: Int64(g.kernelWidth), stride: Int64(g.stride), padTop: Int64(g.padding.top), padLeft: Int64(g.padding.left),
            outWidth: Int64(g.outWidth))
        let status = wp_q8_noise_patches(input, &geometry, 0, Int64(g.outHeight * g.outWidth), sums)
        precondition(status == 0, "int8 patch noise failed (\(status)) for \(g)")
    }
}
