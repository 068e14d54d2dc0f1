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
                for i in r { let v = x[i]; x[i] = v / (1 + expf(-v)) }
            case .gelu:
                for i in r { let v = x[i]; x[i] = 0.5 * v * (1 + erff(v * 0.70710678118654752)) }
            case .quickGELU:
                for i in r { let v = x[i]; x[i] = v / (1 + expf(-1.702 * v)) }
            }
        }
    }

    // MARK: Elementwise arithmetic

    /// `y += x`.
    static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        let xs = SharedPointer(x), ys = SharedPointer(y)
        Parallel.forRanges(count) { r in
            let x = xs.pointer, y = ys.pointer
            for i in r { y[i] += x[i] }
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
    static func transpose(_ x: UnsafePointer<Float>, rows: Int, columns: Int, into y: UnsafeMutablePointer<Float>) {
        let xs = SharedPointer(x), ys = SharedPointer(y)
        let block = 32
        let rowBlocks = (rows + block - 1) / block
        Parallel.forRanges(rowBlocks, grain: max(1, 65_536 / max(columns * block, 1))) { r in
            let x = xs.pointer, y = ys.pointer
            for rb in r {
                let i0 = rb * block, i1 = min(rows, i0 + block)
                var j0 = 0
                while j0 < columns {
                    let j1 = min(columns, j0 + block)
                    for i in i0..<i1 {
                        for j in j0..<j1 { y[j * rows + i] = x[i * columns + j] }
                    }
                    j0 = j1
                }
            }
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
                // Two passes in double precision: the mean, then the centred sum of squares.
                var sum: Double = 0
                for i in 0..<n { sum += Double(x[start + i]) }
                let mean = sum / Double(n)
                var squares: Double = 0
                for i in 0..<n { let d = Double(x[start + i]) - mean; squares += d * d }
                let inverse = Float(1 / (squares / Double(n) + Double(epsilon)).squareRoot())
                let m = Float(mean)
                for c in (g * perGroup)..<((g + 1) * perGroup) {
                    let scale = w[c] * inverse
                    let shift = b[c] - m * scale
                    let row = c * plane
                    if silu {
                        for j in 0..<plane {
                            let v = x[row + j] * scale + shift
                            y[row + j] = v / (1 + expf(-v))
                        }
                    } else {
                        for j in 0..<plane { y[row + j] = x[row + j] * scale + shift }
                    }
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
            let x = xs.pointer, y = ys.pointer, w = ws.pointer, b = bs.pointer
            for i in r {
                let row = i * features
                var sum: Double = 0
                for j in 0..<features { sum += Double(x[row + j]) }
                let mean = sum / Double(features)
                var squares: Double = 0
                for j in 0..<features { let d = Double(x[row + j]) - mean; squares += d * d }
                let inverse = Float(1 / (squares / Double(features) + Double(epsilon)).squareRoot())
                let m = Float(mean)
                for j in 0..<features { y[row + j] = (x[row + j] - m) * inverse * w[j] + b[j] }
            }
        }
    }

    /// Softmax of each row of a `[rows, columns]` matrix in place.
    static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int) {
        let xs = SharedPointer(x)
        Parallel.forRanges(rows, grain: max(1, 8_192 / max(columns, 1))) { r in
            for i in r { softmaxRow(xs.pointer + i * columns, count: columns) }
        }
    }

    @inline(__always)
    static func softmaxRow(_ row: UnsafeMutablePointer<Float>, count: Int) {
        var maximum = -Float.infinity
        for j in 0..<count where row[j] > maximum { maximum = row[j] }
        if maximum == -.infinity {
            // Every entry masked: PyTorch yields NaN here; we never build such rows.
            for j in 0..<count { row[j] = 0 }
            return
        }
        var sum: Float = 0
        for j in 0..<count {
            let e = expf(row[j] - maximum)
            row[j] = e
            sum += e
        }
        let inverse = 1 / sum
        for j in 0..<count { row[j] *= inverse }
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
