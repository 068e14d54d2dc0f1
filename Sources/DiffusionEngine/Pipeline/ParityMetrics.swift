#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How far a candidate tensor is from a reference: the figures `verify` reports.
public struct ParityMetrics: Sendable, Hashable {
    public var count: Int
    public var maxAbsoluteError: Double
    public var meanAbsoluteError: Double
    /// Signal-to-noise ratio in dB: `10 log10(Σ ref² / Σ (ref - cand)²)`; +inf when identical.
    public var snr: Double
    /// Peak signal-to-noise ratio in dB for the given peak: `10 log10(peak² / MSE)`.
    public var psnr: Double
    /// Whether either side has NaN or infinity.
    public var nonFinite: Bool

    /// Compares two equally long arrays.
    ///
    /// - Parameter peak: the signal's range for PSNR (1 for images in [0, 1]); `nil` takes the
    ///   reference's max minus min.
    public init(reference: [Float], candidate: [Float], peak: Double? = nil) {
        precondition(reference.count == candidate.count, "comparing \(reference.count) with \(candidate.count) values")
        count = reference.count
        var maxError = 0.0, sumError = 0.0, squares = 0.0, signal = 0.0
        var lo = Double.infinity, hi = -Double.infinity
        var bad = false
        for i in 0..<reference.count {
            let r = Double(reference[i]), c = Double(candidate[i])
            if !r.isFinite || !c.isFinite { bad = true; continue }
            let e = abs(r - c)
            maxError = max(maxError, e)
            sumError += e
            squares += e * e
            signal += r * r
            lo = min(lo, r); hi = max(hi, r)
        }
        nonFinite = bad
        maxAbsoluteError = bad ? .infinity : maxError
        meanAbsoluteError = count > 0 ? sumError / Double(count) : 0
        let mse = count > 0 ? squares / Double(count) : 0
        let range = peak ?? (hi > lo ? hi - lo : 1)
        if bad {
            snr = -.infinity; psnr = -.infinity
        } else {
            snr = squares == 0 ? .infinity : 10 * log10(signal / squares)
            psnr = mse == 0 ? .infinity : 10 * log10(range * range / mse)
        }
    }

    /// Mean structural similarity of two `[H, W, C]` images in [0, 1]: Wang et al.'s SSIM with an
    /// 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, over the windows that fit inside the
    /// image, averaged over channels. Images smaller than the window use one window of their size.
    public static func ssim(reference: FloatTensor, candidate: FloatTensor) -> Double {
        precondition(reference.shape == candidate.shape && reference.shape.count == 3, "SSIM needs two [H, W, C] images of one shape")
        let (h, w, channels) = (reference.shape[0], reference.shape[1], reference.shape[2])
        let size = min(11, h, w), radius = Double(size - 1) / 2
        var kernel = [Double](repeating: 0, count: size * size)
        var total = 0.0
        for y in 0..<size {
            for x in 0..<size {
                let dy = Double(y) - radius, dx = Double(x) - radius
                let v = exp(-(dx * dx + dy * dy) / (2 * 1.5 * 1.5))
                kernel[y * size + x] = v
                total += v
            }
        }
        for i in kernel.indices { kernel[i] /= total }
        let c1 = 0.01 * 0.01, c2 = 0.03 * 0.03
        var sum = 0.0, windows = 0
        for c in 0..<channels {
            for y0 in 0...(h - size) {
                for x0 in 0...(w - size) {
                    var ma = 0.0, mb = 0.0, aa = 0.0, bb = 0.0, ab = 0.0
                    for y in 0..<size {
                        for x in 0..<size {
                            let k = kernel[y * size + x]
                            let index = ((y0 + y) * w + x0 + x) * channels + c
                            let a = Double(reference.base[index]), b = Double(candidate.base[index])
                            ma += k * a; mb += k * b; aa += k * a * a; bb += k * b * b; ab += k * a * b
                        }
                    }
                    let va = aa - ma * ma, vb = bb - mb * mb, cov = ab - ma * mb
                    sum += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
                    windows += 1
                }
            }
        }
        return windows > 0 ? sum / Double(windows) : 1
    }
}
