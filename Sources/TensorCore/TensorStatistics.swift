/// Summary statistics of a tensor's values.
///
/// `min`, `max`, `mean` and `std` are over finite values only (population standard
/// deviation, accumulated in `Double`); NaN and infinities are counted separately. For a
/// tensor with no finite values they are NaN.
public struct TensorStatistics: Hashable, Sendable {
    public var count: Int = 0
    public var finiteCount: Int = 0
    public var min: Double = .nan
    public var max: Double = .nan
    public var mean: Double = .nan
    public var std: Double = .nan
    public var nanCount: Int = 0
    public var infinityCount: Int = 0
    public var zeroCount: Int = 0
    /// Finite values whose magnitude exceeds the largest binary16 value (65504): they become
    /// infinite when stored as f16.
    public var beyondFloat16Count: Int = 0

    public init() {}

    /// Computes statistics of `count` elements of `dtype` stored at `bytes` (any alignment).
    ///
    /// - Throws: `unsupportedConversion` for dtypes whose values cannot be read as numbers.
    /// - Complexity: O(count), streaming through a fixed-size buffer.
    public init(bytes: UnsafeRawBufferPointer, dtype: DType, count: Int) throws(TensorCoreError) {
        var accumulator = Accumulator()
        let chunk = 16_384
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunk)
        defer { buffer.deallocate() }
        guard let width = dtype.byteWidth else {
            throw TensorCoreError(.unsupportedConversion, "cannot read \(dtype.name) values as numbers")
        }
        var start = 0
        while start < count {
            let n = Swift.min(chunk, count - start)
            let slice = UnsafeRawBufferPointer(rebasing: bytes[(start * width)..<((start + n) * width)])
            try ElementConversion.widen(slice, dtype: dtype, into: buffer, count: n)
            accumulator.add(UnsafeBufferPointer(rebasing: buffer[0..<n]))
            start += n
        }
        self = accumulator.statistics
    }

    /// Computes statistics of `values`.
    public init(values: UnsafeBufferPointer<Float>) {
        var accumulator = Accumulator()
        let chunk = 16_384
        var start = 0
        while start < values.count {
            let end = Swift.min(values.count, start + chunk)
            accumulator.add(UnsafeBufferPointer(rebasing: values[start..<end]))
            start = end
        }
        self = accumulator.statistics
    }
}

/// Streaming accumulator: per chunk, a vectorised pass for counts, extremes and the sum, and a
/// second pass (the chunk is in cache) for the squared deviations; chunks are merged with
/// Chan et al.'s parallel update, which keeps the variance accurate for large tensors.
struct Accumulator {
    private var n: Double = 0
    private var mean: Double = 0
    private var m2: Double = 0
    private var lo: Float = .infinity
    private var hi: Float = -.infinity
    private var total = 0
    private var nans = 0
    private var infinities = 0
    private var zeros = 0
    private var beyond = 0

    mutating func add(_ values: UnsafeBufferPointer<Float>) {
        typealias V = SIMD16<Float>
        let lanes = V.scalarCount
        let whole = values.count / lanes * lanes
        var vMin = V(repeating: .infinity), vMax = V(repeating: -.infinity)
        var vSum = SIMD16<Double>()
        var vFinite = SIMD16<Int32>(), vNaN = SIMD16<Int32>(), vZero = SIMD16<Int32>(), vBeyond = SIMD16<Int32>()
        let base = UnsafeRawPointer(values.baseAddress!)
        var i = 0
        // Counters are Int32 per lane: at most chunk/16 increments each, far from overflow.
        while i < whole {
            let v = base.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let finite = (v - v) .== V(repeating: 0)  // inf - inf and NaN - NaN are NaN
            let isNaN = v .!= v
            let beyondHalf = (v .> V(repeating: float16GreatestFiniteMagnitude)) .| (v .< V(repeating: -float16GreatestFiniteMagnitude))
            vFinite &+= SIMD16<Int32>(repeating: 0).replacing(with: 1, where: finite)
            vNaN &+= SIMD16<Int32>(repeating: 0).replacing(with: 1, where: isNaN)
            vZero &+= SIMD16<Int32>(repeating: 0).replacing(with: 1, where: v .== V(repeating: 0))
            vBeyond &+= SIMD16<Int32>(repeating: 0).replacing(with: 1, where: finite .& beyondHalf)
            let clean = V(repeating: 0).replacing(with: v, where: finite)
            vMin = vMin.replacing(with: v, where: finite .& (v .< vMin))
            vMax = vMax.replacing(with: v, where: finite .& (v .> vMax))
            vSum += widen(clean)
            i += lanes
        }
        var finiteCount = Int(vFinite.wrappedSum())
        var nanCount = Int(vNaN.wrappedSum())
        var zeroCount = Int(vZero.wrappedSum())
        var beyondCount = Int(vBeyond.wrappedSum())
        var chunkMin = vMin.min(), chunkMax = vMax.max()
        var sum = vSum.sum()
        while i < values.count {
            let v = values[i]
            if v.isNaN { nanCount += 1 }
            if v == 0 { zeroCount += 1 }
            if v.isFinite {
                finiteCount += 1
                if abs(v) > float16GreatestFiniteMagnitude { beyondCount += 1 }
                chunkMin = Swift.min(chunkMin, v)
                chunkMax = Swift.max(chunkMax, v)
                sum += Double(v)
            }
            i += 1
        }
        total += values.count
        nans += nanCount
        infinities += values.count - finiteCount - nanCount
        zeros += zeroCount
        beyond += beyondCount
        guard finiteCount > 0 else { return }
        lo = Swift.min(lo, chunkMin)
        hi = Swift.max(hi, chunkMax)
        let chunkN = Double(finiteCount)
        let chunkMean = sum / chunkN
        // Second pass over the chunk for the squared deviations from the chunk mean.
        var vM2 = SIMD16<Double>()
        let m = SIMD16<Double>(repeating: chunkMean)
        i = 0
        while i < whole {
            let v = base.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let finite = (v - v) .== V(repeating: 0)
            let weight = widen(V(repeating: 0).replacing(with: 1, where: finite))
            let d = widen(V(repeating: 0).replacing(with: v, where: finite)) - m
            vM2 += d * d * weight
            i += lanes
        }
        var chunkM2 = vM2.sum()
        while i < values.count {
            let v = values[i]
            if v.isFinite { let d = Double(v) - chunkMean; chunkM2 += d * d }
            i += 1
        }
        let combined = n + chunkN
        let delta = chunkMean - mean
        mean += delta * chunkN / combined
        m2 += chunkM2 + delta * delta * n * chunkN / combined
        n = combined
    }

    @inline(__always)
    private func widen(_ v: SIMD16<Float>) -> SIMD16<Double> {
        var d = SIMD16<Double>()
        for lane in 0..<16 { d[lane] = Double(v[lane]) }
        return d
    }

    var statistics: TensorStatistics {
        var s = TensorStatistics()
        s.count = total
        s.finiteCount = Int(n)
        s.nanCount = nans
        s.infinityCount = infinities
        s.zeroCount = zeros
        s.beyondFloat16Count = beyond
        if n > 0 {
            s.min = Double(lo)
            s.max = Double(hi)
            s.mean = mean
            s.std = (m2 / n).squareRoot()
        }
        return s
    }
}
