import TensorCore

/// GGUF's `Q8_0` blocks (ggml `block_q8_0`): 32 values as an f16 scale `d` then 32 int8 `qs`,
/// 34 bytes; a value is `qs[j] · d` (`ggml-common.h`, ggml-org/ggml).
public enum Q8_0 {
    public static let blockValues = 32
    public static let blockBytes = 34

    /// Bytes for `count` values (a multiple of 32).
    public static func byteCount(values count: Int) -> Int { count / blockValues * blockBytes }

    /// Whether an int8 tensor can be written as Q8_0 without requantising: blocks of 32 that
    /// never straddle a row, rows that are GGUF's innermost dimension (rank-2 tensors).
    public static func canRepack(_ layout: Int8BlockLayout, shape: Shape) -> Bool {
        layout.blockSize == blockValues && layout.rowLength % blockValues == 0 && shape.rank == 2
    }

    /// Interleaves an int8 tensor's scales and values into Q8_0 blocks (lossless).
    ///
    /// - Parameter bytes: the tensor laid out as `layout` says; `canRepack` must hold.
    public static func repack(_ bytes: UnsafeRawBufferPointer, layout: Int8BlockLayout, into output: UnsafeMutableRawPointer) {
        precondition(layout.blockSize == blockValues && layout.rowLength % blockValues == 0, "layout is not Q8_0-compatible")
        let blocks = layout.elementCount / blockValues
        guard let base = bytes.baseAddress else { return }
        for k in 0..<blocks {
            let scale = base.loadUnaligned(fromByteOffset: layout.scaleOffset + 2 * k, as: UInt16.self)
            output.storeBytes(of: scale, toByteOffset: k * blockBytes, as: UInt16.self)
            (output + k * blockBytes + 2).copyMemory(from: base + k * blockValues, byteCount: blockValues)
        }
    }

    /// Quantises `count` f32 values (a multiple of 32) into Q8_0 blocks exactly as ggml's
    /// reference quantiser does (`quantize_row_q8_0_ref`): `d = amax / 127` in f32, each value
    /// multiplied by `1 / d` (f32) and rounded half away from zero, `d` stored as f16.
    ///
    /// - Throws: ``QuantizationError/Code/nonFinite`` for NaN or infinities,
    ///   ``QuantizationError/Code/scaleOverflow`` when a block's scale does not fit binary16.
    public static func quantize(
        _ values: UnsafePointer<Float>, count: Int, into output: UnsafeMutableRawPointer
    ) throws(QuantizationError) -> ErrorAccumulator {
        precondition(count % blockValues == 0, "Q8_0 needs a multiple of 32 values")
        for k in 0..<(count / blockValues) {
            let amax = Int8Quantizer.absoluteMaximum(values + k * blockValues, blockValues)
            guard amax.isFinite else { throw QuantizationError(.nonFinite, "NaN or infinite values cannot be written as Q8_0") }
            guard amax <= Int8Quantizer.maximumMagnitude else { throw QuantizationError(.scaleOverflow, "|x| = \(amax) is beyond a Q8_0 scale") }
        }
        return try GGMLBlocks.quantize(values, count: count, type: .q8_0, into: output)
    }
}
