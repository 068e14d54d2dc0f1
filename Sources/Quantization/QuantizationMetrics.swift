/// The error a tensor took in quantisation, measured against its original values.
public struct QuantizationMetrics: Hashable, Sendable, CustomStringConvertible {
    /// Signal-to-noise ratio in decibels, `10·log10(Σx² / Σ(x − x̂)²)`; `nil` when there is no
    /// error at all (the ratio is infinite).
    public var snrDecibels: Double?
    /// The largest `|x − x̂|`.
    public var maxAbsoluteError: Double
    /// `Σx·x̂ / (‖x‖·‖x̂‖)`; 1 when both are all zero.
    public var cosine: Double
    /// Values compared.
    public var count: Int

    public init(snrDecibels: Double?, maxAbsoluteError: Double, cosine: Double, count: Int) {
        self.snrDecibels = snrDecibels
        self.maxAbsoluteError = maxAbsoluteError
        self.cosine = cosine
        self.count = count
    }

    /// Compares `candidate` with `reference` element by element.
    ///
    /// - Complexity: O(n).
    public static func compare(reference: UnsafeBufferPointer<Float>, candidate: UnsafeBufferPointer<Float>) -> QuantizationMetrics {
        precondition(reference.count == candidate.count, "compared buffers differ in length")
        var accumulator = ErrorAccumulator()
        for i in 0..<reference.count { accumulator.add(reference[i], candidate[i]) }
        return accumulator.metrics
    }

    /// Compares two arrays of the same length.
    public static func compare(reference: [Float], candidate: [Float]) -> QuantizationMetrics {
        reference.withUnsafeBufferPointer { r in candidate.withUnsafeBufferPointer { c in compare(reference: r, candidate: c) } }
    }

    public var description: String {
        let snr = snrDecibels.map { String(Double(Int(($0 * 100).rounded())) / 100) + " dB" } ?? "exact"
        return "SNR \(snr), max abs \(maxAbsoluteError), cosine \(cosine)"
    }
}

/// Running sums for ``QuantizationMetrics``, mergeable across blocks and threads.
public struct ErrorAccumulator: Sendable {
    public var signal: Double = 0
    public var noise: Double = 0
    public var dot: Double = 0
    public var reconstructed: Double = 0
    public var maxAbsoluteError: Double = 0
    public var count = 0

    public init() {}

    @inline(__always)
    public mutating func add(_ x: Float, _ y: Float) {
        let a = Double(x), b = Double(y), e = a - b
        signal += a * a
        noise += e * e
        dot += a * b
        reconstructed += b * b
        maxAbsoluteError = Swift.max(maxAbsoluteError, Swift.abs(e))
        count += 1
    }

    public mutating func merge(_ other: ErrorAccumulator) {
        signal += other.signal
        noise += other.noise
        dot += other.dot
        reconstructed += other.reconstructed
        maxAbsoluteError = Swift.max(maxAbsoluteError, other.maxAbsoluteError)
        count += other.count
    }

    public var metrics: QuantizationMetrics {
        let snr: Double? = noise == 0 ? nil : (signal == 0 ? -Double.infinity : 10 * log10(signal / noise))
        let norms = (signal * reconstructed).squareRoot()
        let cosine = norms == 0 ? (signal == 0 && reconstructed == 0 ? 1 : 0) : dot / norms
        return QuantizationMetrics(snrDecibels: snr, maxAbsoluteError: maxAbsoluteError, cosine: cosine, count: count)
    }
}

/// `log10` without Foundation.
@inline(__always)
func log10(_ x: Double) -> Double {
    // ln(x)/ln(10) via the exponent and a series on the mantissa: exact enough for decibels.
    guard x > 0, x.isFinite else { return x == 0 ? -.infinity : (x.isNaN ? .nan : .infinity) }
    let e = Double(x.exponent)
    let m = x.significand  // in [1, 2)
    // ln(m) = 2·atanh((m−1)/(m+1)), series converges fast for m in [1, 2).
    let t = (m - 1) / (m + 1), t2 = t * t
    var term = t, sum = 0.0
    var k = 1.0
    while k < 60 {
        sum += term / k
        term *= t2
        k += 2
    }
    let ln = 2 * sum + e * 0.693_147_180_559_945_3
    return ln / 2.302_585_092_994_045_7
}
