import TensorCore

/// How an int8 tensor is laid out: the tensor seen as `rows × rowLength` (a weight
/// `[out, in, kh, kw]` is `out` rows of `in·kh·kw`), each row cut into blocks of `blockSize`
/// consecutive values (the last block of a row may be shorter), one f16 scale per block.
///
/// The stored bytes are the `rows · rowLength` int8 values, row-major, then zero padding up to
/// `scaleOffset` (a multiple of 64), then the `rows · blocksPerRow` scales as little-endian
/// binary16 (`Formats/wpk.md`, "Quantised tensors"). A value is `Float(q) · Float(scale)`.
public struct Int8BlockLayout: Hashable, Sendable, CustomStringConvertible {
    /// The name of the scheme in `.wpk` headers.
    public static let schemeName = "int8-block"
    /// The default block size: 32 values, which is also GGUF's Q8_0 block.
    public static let defaultBlockSize = 32

    public let rows: Int
    public let rowLength: Int
    public let blockSize: Int

    /// - Parameters:
    ///   - rows: the first dimension (output channels).
    ///   - rowLength: the product of the other dimensions.
    ///   - blockSize: values per scale, at least 1; `rowLength` (or more) means one scale per row.
    /// - Throws: ``QuantizationError`` when a size is negative or the byte count overflows.
    public init(rows: Int, rowLength: Int, blockSize: Int) throws(QuantizationError) {
        guard rows >= 0, rowLength >= 0, blockSize >= 1 else {
            throw QuantizationError(.invalidLayout, "int8 layout \(rows)×\(rowLength) with blocks of \(blockSize) is not valid")
        }
        let (count, o1) = rows.multipliedReportingOverflow(by: rowLength)
        let (scales, o2) = rows.multipliedReportingOverflow(by: Self.blocks(rowLength, blockSize))
        let (scaleBytes, o3) = scales.multipliedReportingOverflow(by: 2)
        let (padded, o4) = count.addingReportingOverflow(63)
        let (_, o5) = padded.addingReportingOverflow(scaleBytes)
        guard !o1, !o2, !o3, !o4, !o5 else {
            throw QuantizationError(.invalidLayout, "int8 layout \(rows)×\(rowLength) overflows")
        }
        self.rows = rows
        self.rowLength = rowLength
        self.blockSize = blockSize
    }

    /// The layout for a tensor of `shape` (rank at least 1): rows along the first dimension.
    public init(shape: Shape, blockSize: Int = Int8BlockLayout.defaultBlockSize) throws(QuantizationError) {
        guard shape.rank >= 1 else { throw QuantizationError(.invalidLayout, "a scalar cannot be block-quantised") }
        let rows = shape[0]
        try self.init(rows: rows, rowLength: rows == 0 ? 0 : shape.count / rows, blockSize: blockSize)
    }

    /// Values in the tensor.
    public var elementCount: Int { rows * rowLength }
    /// Scales per row.
    public var blocksPerRow: Int { Self.blocks(rowLength, blockSize) }

    private static func blocks(_ length: Int, _ size: Int) -> Int { length == 0 ? 0 : (length - 1) / size + 1 }
    /// Scales in the tensor.
    public var scaleCount: Int { rows * blocksPerRow }
    /// Where the scales start, from the tensor's first byte (64-byte aligned).
    public var scaleOffset: Int { (elementCount + 63) / 64 * 64 }
    /// Bytes the tensor occupies: int8 values, padding, scales.
    public var byteCount: Int { scaleOffset + scaleCount * 2 }

    public var description: String { "int8 \(rows)×\(rowLength), blocks of \(blockSize)" }
}
