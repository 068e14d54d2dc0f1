import TensorCore

/// A tensor stored in one of ggml's block types, as a store holds it: its logical descriptor
/// (the F32 tensor it dequantises to), its type and the blocks, borrowed from the store (for a
/// GGUF or `.wpk` file, straight from the mapping).
///
/// Rows are the innermost dimension as stored (ggml's `ne[0]`, PyTorch's last): a tensor of
/// shape `[d0, …, dn]` has `rowLength = dn` and `rows = d0 · … · dn-1`, and each row is a whole
/// number of blocks, so any range of rows can be decoded on its own. A tensor stored reshaped
/// (ComfyUI-GGUF's `comfy.gguf.orig_shape`) keeps its logical shape in ``descriptor`` and the
/// stored row length in ``rowLength``; the values are the same in the same order.
public struct GGMLTensorView: Sendable {
    /// The tensor as ``TensorStore/tensor(named:)`` presents it (dequantised F32).
    public let descriptor: TensorDescriptor
    public let type: GGMLType
    /// `rows · rowLength / blockValues · blockBytes` bytes.
    public let bytes: TensorBytes
    /// The error measured when it was quantised, if the store recorded it.
    public let metrics: QuantizationMetrics?

    /// - Throws: ``QuantizationError/Code/invalidLayout`` when the rows do not divide into
    ///   blocks, ``QuantizationError/Code/lengthMismatch`` when `bytes` is not the blocks' size.
    public init(
        descriptor: TensorDescriptor, type: GGMLType, bytes: TensorBytes, rowLength: Int? = nil, metrics: QuantizationMetrics? = nil
    ) throws(QuantizationError) {
        guard type.isKnown, descriptor.shape.rank >= 1, let rowLength = rowLength ?? descriptor.shape.dimensions.last,
            rowLength > 0 ? (rowLength % type.blockValues == 0 && descriptor.elementCount % rowLength == 0) : descriptor.elementCount == 0
        else {
            throw QuantizationError(.invalidLayout, "shape \(descriptor.shape) does not divide into \(type.name) blocks", tensor: descriptor.name)
        }
        guard let size = type.byteCount(values: descriptor.elementCount), size == bytes.count else {
            throw QuantizationError(.lengthMismatch, "\(bytes.count) bytes do not hold \(descriptor.shape) as \(type.name)", tensor: descriptor.name)
        }
        self.descriptor = descriptor
        self.type = type
        self.bytes = bytes
        self.rowLength = rowLength
        self.metrics = metrics
    }

    /// Values per stored row (a multiple of the type's block).
    public let rowLength: Int
    /// Rows (all dimensions but the last, multiplied).
    public var rows: Int { rowLength == 0 ? 0 : descriptor.elementCount / rowLength }
    /// Bytes per row.
    public var rowBytes: Int { rowLength / type.blockValues * type.blockBytes }

    /// Writes the f32 values of rows `rows` into `output` (`rows.count · rowLength` floats).
    ///
    /// - Throws: ``QuantizationError/Code/unsupportedDType`` for a type WeightPack cannot decode.
    /// - Complexity: O(rows.count · rowLength); no allocation.
    public func dequantize(rows: Range<Int>, into output: UnsafeMutablePointer<Float>) throws(QuantizationError) {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= self.rows, "rows out of range")
        let type = self.type, rowBytes = self.rowBytes, rowLength = self.rowLength
        try bytes.withUnsafeBytes { (raw) throws(QuantizationError) in
            let slice = UnsafeRawBufferPointer(rebasing: raw[(rows.lowerBound * rowBytes)..<(rows.upperBound * rowBytes)])
            try GGMLBlocks.dequantize(slice, type: type, count: rows.count * rowLength, into: output)
        }
    }

    /// The whole tensor as a new F32 view.
    ///
    /// - Throws: as ``dequantize(rows:into:)``, or ``QuantizationError/Code/lengthMismatch`` when
    ///   the system refuses the memory.
    public func dequantized() throws(QuantizationError) -> TensorView {
        let count = descriptor.elementCount
        let (size, overflow) = count.multipliedReportingOverflow(by: 4)
        guard !overflow, let buffer = OwnedBuffer(checkedByteCount: size) else {
            throw QuantizationError(.lengthMismatch, "\(count) values do not fit in memory", tensor: descriptor.name)
        }
        if let base = buffer.mutableBytes.baseAddress, count > 0 {
            try dequantize(rows: 0..<rows, into: base.assumingMemoryBound(to: Float.self))
        }
        let d = TensorDescriptor(name: descriptor.name, dtype: .f32, shape: descriptor.shape, byteCount: size)
        return TensorView(descriptor: d, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
    }
}

/// A ``TensorStore`` some of whose tensors are in ggml block types. ``TensorStore/tensor(named:)``
/// still serves every tensor (block tensors dequantised to F32, in a new buffer); consumers that
/// can compute with the blocks (the engine) or copy them (GGUF and `.wpk` writers) ask here first.
public protocol GGMLTensorStore: TensorStore {
    /// The blocks of `name`, or `nil` when that tensor is not in a block type.
    func ggmlTensor(named name: String) throws -> GGMLTensorView?
}
