import CEngineKernels

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Elementwise and reduction kernels over raw `Float` pointers. Work over large tensors is
/// split across processors with ``Parallel``; small calls run inline.
enum Kernels {
    // MARK: Activations

    /// The activations the networks use.
    enum Activation: Sendable, Equatable {
        /// `x * sigmoid(x)`.
        case silu
        /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (PyTorch's default `gelu`).
        case gelu
        /// OpenAI CLIP's `x * sigmoid(1.702 x)`.
        case quickGELU
    }

    static func apply(_ activation: Activation, _ x: UnsafeMutablePointer<Float>, count: Int) {
        let p = SharedPointer(x)
        Parallel.forRanges(count) { r in
            let x = p.pointer
            switch activation {
            case .silu:
                mapVectors(x + r.lowerBound, count: r.count) { v in silu(v) }
            case .gelu:
                for i in r { let v = x[i]; x[i] = 0.5 * v * (1 + erff(v * 0.70710678118654752)) }
            case .quickGELU:
                mapVectors(x + r.lowerBound, count: r.count) { v in v / (1 + exp(-1.702 * v)) }
            }
        }
    }

    // MARK: Vector helpers
    //
    // Written as plain loops over scalars that LLVM vectorises for any x86-64 target (no calls,
    // selects for min/max, integer bit tricks); the standard library's generic SIMD operations
    // other than + - * / are lane-by-lane loops and are avoided.

    /// `exp(x)`: Cody-Waite range reduction and Cephes' `expf` polynomial, branch-free (within
    /// 2 ulp of `expf` on [-87.3, 88]; inputs are clamped to that range, so it gives about
    /// 2^-126 for anything smaller and saturates at `exp(88)` instead of overflowing; NaN gives
    /// NaN). Reference: Cephes `expf.c`, https://www.netlib.org/cephes/
    @inline(__always)
    static func exp(_ x: Float) -> Float {
        var x = x < -87.33654 ? -87.33654 : x
        x = x > 88 ? 88 : x
        // n = round(x / ln 2) by adding 1.5 * 2^23, which also leaves n in the low mantissa bits.
        let biased = x * 1.44269504088896341 + 12_582_912
        let n = biased - 12_582_912
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p: Float = 1.9875691500e-4
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let e = p * (r * r) + r + 1
        // 2^n for n in -126...127, built in the exponent field.
        let exponent = (biased.bitPattern &- 0x4B40_0000 &+ 127) &<< 23
        return e * Float(bitPattern: exponent)
    }

    /// ``exp(_:)-(Float)`` on 16 lanes at once, the same operations lane by lane.
    @inline(__always)
    static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        var x = x
        x.replace(with: -87.33654, where: x .< -87.33654)
        x.replace(with: 88, where: x .> 88)
        let biased = x * 1.44269504088896341 + 12_582_912
        let n = biased - 12_582_912
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p = SIMD16<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let e = p * (r * r) + r + 1
        let exponent = (unsafeBitCast(biased, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        return e * unsafeBitCast(exponent, to: SIMD16<Float>.self)
    }

    /// `erf(x)` on 16 lanes: Abramowitz and Stegun 7.1.26 (|error| ≤ 1.5e-7 in exact
    /// arithmetic; 4.2e-7 in float32 against the double-precision `erf`, `KernelTests`),
    /// `1 - (a1 t + … + a5 t⁵) exp(-x²)` with `t = 1 / (1 + p|x|)`, odd in `x`.
    /// Reference: Handbook of Mathematical Functions, eq. 7.1.26.
    @inline(__always)
    static func erf(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let a = x.replacing(with: -x, where: x .< 0)
        let t = 1 / (1 + 0.3275911 * a)
        var p = SIMD16<Float>(repeating: 1.061405429)
        p = p * t - 1.453152027
        p = p * t + 1.421413741
        p = p * t - 0.284496736
        p = p * t + 0.254829592
        let y = 1 - p * t * exp(-(a * a))
        return y.replacing(with: -y, where: x .< 0)
    }

    /// `x / (1 + exp(-x))`.
    @inline(__always)
    static func silu(_ x: Float) -> Float { x / (1 + exp(-x)) }

    /// Applies `body` to `count` floats at `x` in place.
    @inline(__always)
    static func mapVectors(_ x: UnsafeMutablePointer<Float>, count: Int, _ body: (Float) -> Float) {
        for i in 0..<count { x[i] = body(x[i]) }
    }

    /// The sum of `x[i] - shift` and of its squares over `count` floats, in double precision
    /// from 8-lane single-precision partial sums of at most 1024 elements.
    @inline(__always)
    static func sum(_ x: UnsafePointer<Float>, count: Int, minus shift: Float = 0) -> (sum: Double, squares: Double) {
        var total: Double = 0, squares: Double = 0
        let c = SIMD8<Float>(repeating: shift)
        var i = 0
        while i < count {
            let end = min(count, i + 1024)
            var a = SIMD8<Float>(), b = SIMD8<Float>()
            while i + 8 <= end {
                let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) - c
                a += v
                b += v * v
                i += 8
            }
            var t: Double = 0, q: Double = 0
            for lane in 0..<8 { t += Double(a[lane]); q += Double(b[lane]) }
            while i < end { let v = x[i] - shift; t += Double(v); q += Double(v * v); i += 1 }
            total += t
            squares += q
        }
        return (total, squares)
    }

    // MARK: Elementwise arithmetic

    /// `y += x`.
    static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        let xs = SharedPointer(x), ys = SharedPointer(y)
        Parallel.forRanges(count) { r in
            wp_add_rows(xs.pointer + r.lowerBound, 1, Int64(r.count), nil, ys.pointer + r.lowerBound)
        }
    }

    /// `x[i, j] += y[i, j] + bias[j]` for `[rows, columns]` matrices (`x += y` without a bias):
    /// a linear layer's result and its bias added to the residual stream in one pass, `y + bias`
    /// rounded first as when the bias was added to `y` in a pass of its own.
    static func addRows(
        _ y: UnsafePointer<Float>, rows: Int, columns: Int, bias: UnsafePointer<Float>?, into x: UnsafeMutablePointer<Float>
    ) {
        let ys = SharedPointer(y), xs = SharedPointer(x), bs = bias.map { SharedPointer($0) }
        Parallel.forRanges(rows, grain: max(1, 16_384 / max(columns, 1))) { r in
            wp_add_rows(ys.pointer + r.lowerBound * columns, Int64(r.count), Int64(columns), bs?.pointer, xs.pointer + r.lowerBound * columns)
        }
    }

    /// `y *= s`.
    static func scale(_ y: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        let ys = SharedPointer(y)
        Parallel.forRanges(count) { r in
            let y = ys.pointer
            for i in r { y[i] *= s }
        }
    }

    /// Adds `bias[j]` to every row of a `[rows, columns]` matrix.
    static func addRowBias(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: UnsafePointer<Float>) {
        let ys = SharedPointer(y), bs = SharedPointer(bias)
        Parallel.forRanges(rows, grain: max(1, 16_384 / max(columns, 1))) { r in
            let y = ys.pointer, b = bs.pointer
            for i in r {
                let row = y + i * columns
                for j in 0..<columns { row[j] += b[j] }
            }
        }
    }

    /// Adds `bias[c]` to every element of channel `c` in a `[channels, plane]` tensor.
    static func addChannelBias(_ y: UnsafeMutablePointer<Float>, channels: Int, plane: Int, bias: UnsafePointer<Float>) {
        let ys = SharedPointer(y), bs = SharedPointer(bias)
        Parallel.forRanges(channels, grain: max(1, 16_384 / max(plane, 1))) { r in
            let y = ys.pointer, b = bs.pointer
            for c in r {
                let row = y + c * plane
                let v = b[c]
                for j in 0..<plane { row[j] += v }
            }
        }
    }

    /// Transposes a `[rows, columns]` matrix into `[columns, rows]`.
    /// In C per kernel family (`wp_transpose_rows`: 16 x 16 tiles in registers on AVX-512, where
    /// the scalar copy ran at about 1.5 GB/s), over ranges of 16 rows.
    static func transpose(_ x: UnsafePointer<Float>, rows: Int, columns: Int, into y: UnsafeMutablePointer<Float>) {
        let xs = SharedPointer(x), ys = SharedPointer(y)
        let block = 16
        let rowBlocks = (rows + block - 1) / block
        Parallel.forRanges(rowBlocks, grain: max(1, 65_536 / max(columns * block, 1))) { r in
            wp_transpose_rows(
                xs.pointer, Int64(rows), Int64(columns), Int64(r.lowerBound * block), Int64(min(rows, r.upperBound * block)), ys.pointer)
        }
    }

    // MARK: Normalisation

    /// Group normalisation of a `[channels, plane]` tensor (PyTorch `GroupNorm`, biased
    /// variance), optionally followed by SiLU; `x` and `y` may be the same buffer.
    static func groupNorm(
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
        channels: Int, plane: Int, groups: Int, epsilon: Float,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, silu: Bool = false
    ) {
        precondition(channels % groups == 0, "\(channels) channels in \(groups) groups")
        let perGroup = channels / groups
        let xs = SharedPointer(x), ys = SharedPointer(y), ws = SharedPointer(weight), bs = SharedPointer(bias)
        Parallel.forEach(min(groups, Parallel.workerCount)) { worker in
            let workers = min(groups, Parallel.workerCount)
            let g0 = groups * worker / workers, g1 = groups * (worker + 1) / workers
            let x = xs.pointer, y = ys.pointer, w = ws.pointer, b = bs.pointer
            for g in g0..<g1 {
                let start = g * perGroup * plane
                let n = perGroup * plane
                // Two passes (the mean, then the centred sum of squares), 16 lanes at a time,
                // partial sums gathered in double precision.
                let mean = sum(x + start, count: n).sum / Double(n)
                let centred = sum(x + start, count: n, minus: Float(mean))
                // Var = E[(x - m')²] - (E[x - m'])² with m' = Float(mean), exact up to rounding.
                let offset = centred.sum / Double(n)
                let variance = max(0, centred.squares / Double(n) - offset * offset)
                let inverse = Float(1 / (variance + Double(epsilon)).squareRoot())
                let m = Float(mean)
                for c in (g * perGroup)..<((g + 1) * perGroup) {
                    let scale = w[c] * inverse
                    let shift = b[c] - m * scale
                    wp_scale_shift(x + c * plane, y + c * plane, Int64(plane), scale, shift, silu ? 1 : 0)
                }
            }
        }
    }

    /// Layer normalisation over the last dimension of a `[rows, features]` matrix; `x` and `y`
    /// may be the same buffer.
    static func layerNorm(
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
        rows: Int, features: Int, epsilon: Float,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>
    ) {
        let xs = SharedPointer(x), ys = SharedPointer(y), ws = SharedPointer(weight), bs = SharedPointer(bias)
        Parallel.forRanges(rows, grain: max(1, 16_384 / max(features, 1))) { r in
            let offset = r.lowerBound * features
            wp_layer_norm_rows(
                xs.pointer + offset, ys.pointer + offset, Int64(r.count), Int64(features), epsilon, ws.pointer, bs.pointer)
        }
    }

    /// Softmax of each row of a `[rows, columns]` matrix in place.
    static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int) {
        let xs = SharedPointer(x)
        Parallel.forRanges(rows, grain: max(1, 8_192 / max(columns, 1))) { r in
            for i in r { softmaxRow(xs.pointer + i * columns, count: columns) }
        }
    }

    /// Softmax of one row in place: the maximum, then `exp(x - max)` and its sum in one pass,
    /// then the scaling. Masked entries (-infinity) give exactly 0; a row of only masked entries
    /// gives zeros (PyTorch yields NaN there; we never build such rows). C
    /// (`wp_softmax_row`, Sources/CEngineKernels/softmax.c: ``exp(_:)-(Float)``'s polynomial,
    /// 16 partial maxima and sums), compiled once per kernel family and picked at run time, so the
    /// portable build keeps AVX2 or AVX-512 code for attention's largest elementwise cost.
    @inline(__always)
    static func softmaxRow(_ row: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { wp_softmax_row(row, count) }
    }

    /// ``softmaxRow(_:count:)`` with the results rounded to bfloat16 (nearest even, as the bf16
    /// products round their operands) and written as `count` bfloat16 over the row's first half
    /// (`wp_softmax_row_bf16`). The processor must have ``ComputeBackend/bf16Products``.
    static func softmaxRowBF16(_ row: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        let status = wp_softmax_row_bf16(row, count)
        precondition(status == 0, "bfloat16 softmax on a processor without AVX512_BF16")
    }

    // MARK: Resampling

    /// Nearest-neighbour 2x upsampling of a `[channels, height, width]` tensor into
    /// `[channels, 2 height, 2 width]`.
    static func upsampleNearest2x(_ x: UnsafePointer<Float>, channels: Int, height: Int, width: Int, into y: UnsafeMutablePointer<Float>) {
        let xs = SharedPointer(x), ys = SharedPointer(y)
        let outWidth = width * 2
        Parallel.forRanges(channels * height, grain: max(1, 16_384 / max(width * 4, 1))) { r in
            let x = xs.pointer, y = ys.pointer
            for row in r {
                let c = row / height, i = row % height
                let source = x + row * width
                let target = y + (c * 2 * height + 2 * i) * outWidth
                for j in 0..<width {
                    let v = source[j]
                    target[2 * j] = v
                    target[2 * j + 1] = v
                }
                (target + outWidth).update(from: target, count: outWidth)
            }
        }
    }
}
