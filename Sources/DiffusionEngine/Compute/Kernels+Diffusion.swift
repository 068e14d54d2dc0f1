import CEngineKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Kernels the UNet and the samplers add to ``Kernels``.
extension Kernels {
    /// diffusers' `get_timestep_embedding` (max period 10000, scale 1) computed in float32 as
    /// torch does: `[sin(t f_i), cos(t f_i)]` with `f_i = exp(-ln(10000) i / (half - shift))`,
    /// halves swapped when `flipSinToCos`.
    static func timestepEmbedding(_ t: Float, dimension: Int, flipSinToCos: Bool, frequencyShift: Float, into y: UnsafeMutablePointer<Float>) {
        let half = dimension / 2
        let logPeriod = Float(-log(10000.0))
        for i in 0..<half {
            let exponent = logPeriod * Float(i) / (Float(half) - frequencyShift)
            let angle = t * expf(exponent)
            let s = sinf(angle), c = cosf(angle)
            if flipSinToCos {
                y[i] = c; y[half + i] = s
            } else {
                y[i] = s; y[half + i] = c
            }
        }
        if dimension % 2 == 1 { y[dimension - 1] = 0 }
    }

    /// GEGLU: `y[r, j] = x[r, j] * gelu(x[r, F + j])` for a `[rows, 2F]` input; with a `bias`
    /// of `2F` floats (the projection's, left to this pass), `x[r, k] + bias[k]` in place of
    /// every `x[r, k]`, rounded as when the bias was added to `x` first.
    static func geglu(
        _ x: UnsafePointer<Float>, rows: Int, features: Int, bias: UnsafePointer<Float>? = nil, into y: UnsafeMutablePointer<Float>
    ) {
        let xs = SharedPointer(x), ys = SharedPointer(y), bs = bias.map { SharedPointer($0) }
        Parallel.forRanges(rows, grain: max(1, 16_384 / max(features, 1))) { r in
            wp_geglu_rows(
                xs.pointer + r.lowerBound * 2 * features, Int64(r.count), Int64(features), bs?.pointer,
                ys.pointer + r.lowerBound * features)
        }
    }

    /// Nearest-neighbour resize of `[channels, height, width]` to `[channels, outHeight, outWidth]`
    /// with PyTorch's `interpolate(mode="nearest")` index rule `floor(i * in / out)`.
    static func resizeNearest(
        _ x: UnsafePointer<Float>, channels: Int, height: Int, width: Int,
        outHeight: Int, outWidth: Int, into y: UnsafeMutablePointer<Float>
    ) {
        if outHeight == 2 * height && outWidth == 2 * width {
            upsampleNearest2x(x, channels: channels, height: height, width: width, into: y)
            return
        }
        let xs = SharedPointer(x), ys = SharedPointer(y)
        let scaleY = Float(height) / Float(outHeight), scaleX = Float(width) / Float(outWidth)
        Parallel.forRanges(channels * outHeight, grain: max(1, 16_384 / max(outWidth, 1))) { r in
            for row in r {
                let c = row / outHeight, i = row % outHeight
                let sy = min(Int(Float(i) * scaleY), height - 1)
                let source = xs.pointer + (c * height + sy) * width
                let target = ys.pointer + row * outWidth
                for j in 0..<outWidth { target[j] = source[min(Int(Float(j) * scaleX), width - 1)] }
            }
        }
    }
}
