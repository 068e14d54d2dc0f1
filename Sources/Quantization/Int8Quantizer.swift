import TensorCore

/// Quantise and dequantise kernels of the ``Int8BlockLayout`` scheme, 16 lanes at a time.
///
/// Quantising a block: `amax = max|x|`, `scale = f16(amax / 127)`, `q = clamp(round(x / scale),
/// −127, 127)` (round half to even), so the stored scale is exactly the one dequantising uses.
/// A block of zeros (or one whose scale underflows binary16) stores scale 0 and zeros.
public enum Int8Quantizer {
    /// The largest block maximum whose scale still fits binary16.
    public static let maximumMagnitude: Float = float16GreatestFiniteMagnitude * 127

    /// Quantises rows `rows` of `values` (the whole tensor, row-major, `layout.elementCount`
    /// floats) into `payload` (int8, indexed like `values`) and `scales` (f16 bits, row-major
    /// `rows × blocksPerRow`), and measures the error.
    ///
    /// - Throws: ``QuantizationError/Code/nonFinite`` or ``QuantizationError/Code/scaleOverflow``.
    /// - Complexity: O(rows · rowLength).
    public static func quantize(
        _ values: UnsafePointer<Float>, layout: Int8BlockLayout, rows: Range<Int>,
        payload: UnsafeMutablePointer<Int8>, scales: UnsafeMutablePointer<UInt16>
    ) throws(QuantizationError) -> ErrorAccumulator {
        var total = ErrorAccumulator()
        let n = layout.rowLength, b = layout.blockSize, perRow = layout.blocksPerRow
        for r in rows {
            for k in 0..<perRow {
                let start = r * n + k * b
                let count = Swift.min(b, n - k * b)
                let block = values + start
                let amax = absoluteMaximum(block, count)
                guard amax.isFinite else {
                    throw QuantizationError(.nonFinite, "row \(r) holds NaN or infinite values, which int8 cannot represent")
                }
                guard amax <= maximumMagnitude else {
                    throw QuantizationError(.scaleOverflow, "row \(r) holds |x| = \(amax), beyond what an f16 block scale can reach")
                }
                let scaleBits = (amax / 127).halfBits
                let scale = Float(halfBits: scaleBits)
                scales[r * perRow + k] = scaleBits
                total.merge(quantizeBlock(block, count, scale: scale, into: payload + start))
            }
        }
        return total
    }

    /// Quantises a whole tensor of f32 values into a new buffer laid out as the layout says
    /// (values, padding, scales).
    public static func quantize(
        _ values: UnsafeBufferPointer<Float>, layout: Int8BlockLayout
    ) throws(QuantizationError) -> (buffer: OwnedBuffer, metrics: QuantizationMetrics) {
        guard values.count == layout.elementCount else {
            throw QuantizationError(.lengthMismatch, "\(values.count) values for \(layout)")
        }
        let buffer = OwnedBuffer(byteCount: layout.byteCount)
        buffer.mutableBytes.initializeMemory(as: UInt8.self, repeating: 0)
        guard let base = buffer.mutableBytes.baseAddress, let source = values.baseAddress else {
            return (buffer, ErrorAccumulator().metrics)
        }
        let accumulator = try quantize(
            source, layout: layout, rows: 0..<layout.rows,
            payload: base.assumingMemoryBound(to: Int8.self),
            scales: (base + layout.scaleOffset).assumingMemoryBound(to: UInt16.self))
        return (buffer, accumulator.metrics)
    }

    /// Writes the f32 values of rows `rows` into `output` (row `r` at `output + (r − rows.lowerBound)·rowLength`).
    ///
    /// - Parameters:
    ///   - payload: the tensor's int8 values (all rows).
    ///   - scales: the tensor's f16 scales (all rows), at any alignment.
    /// - Complexity: O(rows · rowLength).
    public static func dequantize(
        payload: UnsafePointer<Int8>, scales: UnsafeRawPointer, layout: Int8BlockLayout, rows: Range<Int>,
        into output: UnsafeMutablePointer<Float>
    ) {
        let n = layout.rowLength, b = layout.blockSize, perRow = layout.blocksPerRow
        for r in rows {
            let out = output + (r - rows.lowerBound) * n
            for k in 0..<perRow {
                let bits = scales.loadUnaligned(fromByteOffset: (r * perRow + k) * 2, as: UInt16.self)
                let scale = Float(halfBits: UInt16(littleEndian: bits))
                let count = Swift.min(b, n - k * b)
                dequantizeBlock(payload + r * n + k * b, count, scale: scale, into: out + k * b)
            }
        }
    }

    /// Dequantises from a buffer laid out as `layout` says (values, padding, scales).
    public static func dequantize(
        _ bytes: UnsafeRawBufferPointer, layout: Int8BlockLayout, rows: Range<Int>, into output: UnsafeMutablePointer<Float>
    ) throws(QuantizationError) {
        guard bytes.count >= layout.byteCount, rows.lowerBound >= 0, rows.upperBound <= layout.rows else {
            throw QuantizationError(.lengthMismatch, "\(bytes.count) bytes for \(layout), rows \(rows)")
        }
        guard let base = bytes.baseAddress else { return }
        dequantize(payload: base.assumingMemoryBound(to: Int8.self), scales: base + layout.scaleOffset, layout: layout, rows: rows, into: output)
    }

    // MARK: - Blocks

    @inline(__always)
    static func absoluteMaximum(_ p: UnsafePointer<Float>, _ count: Int) -> Float {
        var m = SIMD8<Float>(repeating: 0)
        var poison = SIMD8<Float>(repeating: 0)
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 8 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            let magnitude = v.replacing(with: -v, where: v .< 0)
            m = m.replacing(with: magnitude, where: magnitude .> m)
            poison += v * 0  // NaN if any value is NaN or infinite
            i += 8
        }
        var result = m.max()
        var tail: Float = 0
        while i < count {
            let v = p[i]
            result = Swift.max(result, Swift.abs(v))
            tail += v * 0
            i += 1
        }
        let bad = poison.sum() + tail
        return bad.isNaN ? .nan : result
    }

    /// Quantises one block with `scale`; returns the error it took.
    @inline(__always)
    static func quantizeBlock(_ p: UnsafePointer<Float>, _ count: Int, scale: Float, into q: UnsafeMutablePointer<Int8>) -> ErrorAccumulator {
        var acc = ErrorAccumulator()
        let inverse: Float = scale == 0 ? 0 : 1 / scale
        let magic = SIMD8<Float>(repeating: 12_582_912)  // 1.5 · 2^23: adding it rounds to an integer, half to even
        let lo = SIMD8<Float>(repeating: -127), hi = SIMD8<Float>(repeating: 127)
        var signal = SIMD8<Float>(repeating: 0), noise = signal, dot = signal, recon = signal, worst = signal
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 8 <= count {
            let x = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            // The values are finite here (the block's maximum was checked), so compare-and-blend
            // clamps exactly; the standard library's generic pointwiseMin/Max is not inlined
            // and went lane by lane (half of the quantiser's time).
            let scaled = x * inverse
            let clamped = scaled.replacing(with: lo, where: scaled .< lo).replacing(with: hi, where: scaled .> hi)
            let rounded = clamped + magic
            let integers = SIMD8<Int32>(truncatingIfNeeded: unsafeBitCast(rounded, to: SIMD8<UInt32>.self) &- 0x4B40_0000)
            UnsafeMutableRawPointer(q + i).storeBytes(of: SIMD8<Int8>(truncatingIfNeeded: integers), as: SIMD8<Int8>.self)
            let y = (rounded - magic) * scale
            let e = x - y
            signal += x * x; noise += e * e; dot += x * y; recon += y * y
            let magnitude = e.replacing(with: -e, where: e .< 0)
            worst = worst.replacing(with: magnitude, where: magnitude .> worst)
            i += 8
        }
        acc.signal = Double(signal.sum()); acc.noise = Double(noise.sum()); acc.dot = Double(dot.sum()); acc.reconstructed = Double(recon.sum())
        acc.maxAbsoluteError = Double(worst.max())
        acc.count = i
        while i < count {
            let x = p[i]
            let v = Swift.min(Swift.max(x * inverse, -127), 127)
            let r = (v + 12_582_912) - 12_582_912
            q[i] = Int8(r)
            acc.add(x, r * scale)
            i += 1
        }
        return acc
    }

    @inline(__always)
    static func dequantizeBlock(_ q: UnsafePointer<Int8>, _ count: Int, scale: Float, into out: UnsafeMutablePointer<Float>) {
        var i = 0
        let s = SIMD16<Float>(repeating: scale)
        while i + 16 <= count {
            let v = UnsafeRawPointer(q + i).loadUnaligned(as: SIMD16<Int8>.self)
            let f = SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: v)) * s
            UnsafeMutableRawPointer(out + i).storeBytes(of: f, as: SIMD16<Float>.self)
            i += 16
        }
        while i < count {
            out[i] = Float(q[i]) * scale
            i += 1
        }
    }
}
