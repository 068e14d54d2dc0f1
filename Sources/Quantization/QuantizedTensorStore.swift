import TensorCore

/// An int8 tensor as a store holds it: its logical descriptor (the dtype it dequantises to),
/// its layout and the bytes that layout describes (values, padding, scales), borrowed from the
/// store (for a `.wpk` file, straight from the mapping).
public struct QuantizedTensorView: Sendable {
    /// The tensor as ``TensorStore/tensor(named:)`` presents it (dequantised F32).
    public let descriptor: TensorDescriptor
    public let layout: Int8BlockLayout
    /// `layout.byteCount` bytes.
    public let bytes: TensorBytes
    /// The error measured when it was quantised, if the store recorded it.
    public let metrics: QuantizationMetrics?

    public init(descriptor: TensorDescriptor, layout: Int8BlockLayout, bytes: TensorBytes, metrics: QuantizationMetrics?) throws(QuantizationError) {
        guard bytes.count >= layout.byteCount, layout.elementCount == descriptor.elementCount else {
            throw QuantizationError(.lengthMismatch, "\(bytes.count) bytes do not hold \(layout)", tensor: descriptor.name)
        }
        self.descriptor = descriptor
        self.layout = layout
        self.bytes = bytes
        self.metrics = metrics
    }

    /// Writes the f32 values of rows `rows` into `output`.
    public func dequantize(rows: Range<Int>, into output: UnsafeMutablePointer<Float>) throws(QuantizationError) {
        let layout = self.layout
        try bytes.withUnsafeBytes { (raw) throws(QuantizationError) in
            try Int8Quantizer.dequantize(raw, layout: layout, rows: rows, into: output)
        }
    }

    /// The whole tensor as a new F32 view.
    public func dequantized() throws(QuantizationError) -> TensorView {
        let buffer = OwnedBuffer(byteCount: layout.elementCount * 4)
        if let base = buffer.mutableBytes.baseAddress {
            try dequantize(rows: 0..<layout.rows, into: base.assumingMemoryBound(to: Float.self))
        }
        let d = TensorDescriptor(name: descriptor.name, dtype: .f32, shape: descriptor.shape, byteCount: layout.elementCount * 4)
        return TensorView(descriptor: d, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
    }
}

/// A ``TensorStore`` some of whose tensors are int8. ``TensorStore/tensor(named:)`` still
/// serves every tensor (quantised ones dequantised to F32); consumers that can compute with int8
/// (the engine, GGUF export) ask here first.
public protocol QuantizedTensorStore: TensorStore {
    /// The int8 form of `name`, or `nil` when that tensor is not quantised.
    func quantizedTensor(named name: String) throws -> QuantizedTensorView?
}
