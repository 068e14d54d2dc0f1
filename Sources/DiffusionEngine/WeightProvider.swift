import Quantization
import TensorCore

/// Reads a network's weights from any ``TensorStore`` as `Float`, one tensor at a time.
///
/// F32 tensors at 4-byte-aligned addresses are handed out in place (zero copy from a mapping);
/// F16, BF16 and F64 tensors, and unaligned F32 ones, are converted into a scratch buffer that
/// is reused for the next tensor, so the whole model is never expanded at once. Int8 tensors of
/// a ``QuantizedTensorStore`` are dequantised the same way, tile by tile of rows spread over the
/// processors, straight from the store's (mapped) bytes. Names are looked up as `prefix + name`.
///
/// Weights in a file mapping are handed back to the kernel once a layer is done with them
/// (``releasesPagesAfterUse``): the page cache keeps them, so the next pass maps them again
/// with minor faults, but the process's resident set holds only the layers in use, not the
/// whole model.
///
/// Not thread-safe: a provider belongs to one network and is used from one thread at a time.
public final class WeightProvider {
    /// Where the weights come from.
    public let store: any TensorStore
    /// Prepended to every name (`text_model.`, `first_stage_model.`, or empty).
    public let prefix: String
    /// The store, when it can hold int8 tensors.
    private let quantizedStore: (any QuantizedTensorStore)?

    /// Whether tensors read from a file mapping have their pages dropped from the resident set
    /// after use (tensors of at least ``pageReleaseMinimumBytes``). On by default.
    public var releasesPagesAfterUse = true

    /// Smaller tensors stay resident: a system call per bias is not worth a few pages.
    public static let pageReleaseMinimumBytes = 1 << 20

    /// Scratch buffers, one per nesting level of ``withFloats(_:shape:_:)``.
    private var scratch: [FloatTensor] = []
    private var depth = 0

    /// - Parameters:
    ///   - store: any tensor store (safetensors, checkpoint, `.wpk`, an in-memory store).
    ///   - prefix: prepended to each weight name.
    public init(store: any TensorStore, prefix: String = "") {
        self.store = store
        self.prefix = prefix
        quantizedStore = store as? any QuantizedTensorStore
    }

    /// The int8 form of `full`, if the store holds it quantised.
    private func quantized(_ full: String) throws(EngineError) -> QuantizedTensorView? {
        guard let quantizedStore else { return nil }
        do { return try quantizedStore.quantizedTensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
    }

    /// Whether `prefix + name` is stored as int8.
    public func isQuantized(_ name: String) -> Bool { ((try? quantized(prefix + name)) ?? nil) != nil }

    /// Whether the store has `prefix + name`.
    public func contains(_ name: String) -> Bool { store.descriptor(named: prefix + name) != nil }

    /// The descriptor of `prefix + name`.
    /// - Throws: ``EngineError/Code/missingTensor``.
    public func descriptor(_ name: String) throws(EngineError) -> TensorDescriptor {
        guard let d = store.descriptor(named: prefix + name) else {
            throw EngineError(.missingTensor, "weight missing from the \(store.formatName) store", tensorName: prefix + name)
        }
        return d
    }

    /// The shape of `prefix + name`.
    public func shape(_ name: String) throws(EngineError) -> [Int] { try descriptor(name).shape.dimensions }

    /// Calls `body` with the tensor's values as `Float`; the pointer must not escape.
    ///
    /// - Parameter shape: when given, the tensor must have exactly this shape.
    /// - Throws: ``EngineError`` for a missing tensor, another shape, or a dtype that is not
    ///   a float type; errors from `body` pass through.
    func withFloats<R>(_ name: String, shape expected: [Int]? = nil, _ body: (UnsafePointer<Float>) throws -> R) throws -> R {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        if let expected, descriptor.shape.dimensions != expected {
            throw EngineError(.shapeMismatch, "weight has shape \(descriptor.shape), expected \(Shape(expected))", tensorName: full)
        }
        guard [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            throw EngineError(.unsupportedDType, "weight is \(descriptor.dtype.name); the engine computes with F32, F16, BF16 or F64 weights", tensorName: full)
        }
        if let q = try quantized(full) {
            let count = q.layout.elementCount
            guard count > 0 else {
                let empty = [Float](repeating: 0, count: 1)
                return try empty.withUnsafeBufferPointer { try body($0.baseAddress!) }
            }
            let buffer = takeScratch(count)
            defer { depth -= 1 }
            try Self.dequantize(q, into: buffer.base, name: full)
            release(q.bytes)
            return try body(buffer.base)
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        let count = descriptor.elementCount
        defer { release(view.bytes) }
        return try view.bytes.withUnsafeBytes { raw throws -> R in
            guard let base = raw.baseAddress, count > 0 else {
                let empty = [Float](repeating: 0, count: 1)
                return try empty.withUnsafeBufferPointer { try body($0.baseAddress!) }
            }
            if descriptor.dtype == .f32, Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
                return try body(base.assumingMemoryBound(to: Float.self))
            }
            let buffer = takeScratch(count)
            defer { depth -= 1 }
            try Self.widen(raw, dtype: descriptor.dtype, count: count, into: buffer.base, name: full)
            return try body(buffer.base)
        }
    }

    /// The rows per block ``withRowBlocks(_:rowsPerBlock:_:)`` should use for `name` so that a
    /// converted block holds at most `scratchFloats` floats: every row when the tensor is F32
    /// (read in place, no scratch), else as many rows as fit (at least one).
    func rowsPerBlock(_ name: String, scratchFloats: Int) throws -> Int {
        let descriptor = try self.descriptor(name)
        let rows = max(1, descriptor.shape.dimensions.first ?? 1)
        if descriptor.dtype == .f32, try quantized(prefix + name) == nil { return rows }
        let rowLength = max(1, descriptor.elementCount / rows)
        return max(1, min(rows, scratchFloats / rowLength))
    }

    /// Calls `body` with the tensor as consecutive blocks of at most `rowsPerBlock` rows of its
    /// first dimension (the output channels of a linear or convolution weight), in order, each
    /// as `Float`: F32 in place; F16, BF16 and F64 converted, and int8 dequantised, block by
    /// block into one scratch of `rowsPerBlock` rows, so a quantised or half-precision model is
    /// never expanded a whole tensor at a time. The pointer must not escape.
    /// - Throws: as ``withFloats(_:shape:_:)``.
    func withRowBlocks(_ name: String, rowsPerBlock requested: Int, _ body: (Range<Int>, UnsafePointer<Float>) throws -> Void) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        let rows = descriptor.shape.dimensions.first ?? 1
        let rowLength = rows == 0 ? 0 : descriptor.elementCount / rows
        guard descriptor.shape.rank >= 1, rows > 0, rowLength > 0, requested < rows else {
            return try withFloats(name) { try body(0..<rows, $0) }
        }
        guard [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            return try withFloats(name) { try body(0..<rows, $0) }   // throws the dtype error
        }
        let per = max(1, requested)
        func blocks(_ each: (Range<Int>) throws -> Void) rethrows {
            var start = 0
            while start < rows {
                let block = start..<min(rows, start + per)
                try each(block)
                start = block.upperBound
            }
        }
        if let q = try quantized(full) {
            guard q.layout.rows == rows, q.layout.rowLength == rowLength else {
                return try withFloats(name) { try body(0..<rows, $0) }
            }
            let buffer = takeScratch(per * rowLength)
            defer { depth -= 1 }
            try blocks { block in
                try Self.dequantize(q, rows: block, into: buffer.base, name: full)
                try body(block, buffer.base)
            }
            release(q.bytes)
            return
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        defer { release(view.bytes) }
        try view.bytes.withUnsafeBytes { raw throws in
            guard let base = raw.baseAddress, let width = descriptor.dtype.byteWidth else { return }
            if descriptor.dtype == .f32, Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
                let floats = base.assumingMemoryBound(to: Float.self)
                try blocks { block in try body(block, floats + block.lowerBound * rowLength) }
                return
            }
            let buffer = takeScratch(per * rowLength)
            defer { depth -= 1 }
            try blocks { block in
                let bytes = UnsafeRawBufferPointer(rebasing: raw[(block.lowerBound * rowLength * width)..<(block.upperBound * rowLength * width)])
                try Self.widen(bytes, dtype: descriptor.dtype, count: block.count * rowLength, into: buffer.base, name: full)
                try body(block, buffer.base)
            }
        }
    }

    /// The tensor's values as a new array (for small tensors: biases, norms).
    func floats(_ name: String, shape expected: [Int]? = nil) throws -> [Float] {
        try withFloats(name, shape: expected) { p in
            let n = try descriptor(name).elementCount
            return Array(UnsafeBufferPointer(start: p, count: n))
        }
    }

    /// Copies rows `indices` of a `[rows, columns]` tensor (an embedding table) into `output`,
    /// converting only those rows.
    func gatherRows(_ name: String, indices: [Int], into output: UnsafeMutablePointer<Float>) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        guard descriptor.shape.rank == 2 else {
            throw EngineError(.shapeMismatch, "embedding table has shape \(descriptor.shape), expected two dimensions", tensorName: full)
        }
        let rows = descriptor.shape[0], columns = descriptor.shape[1]
        if let q = try quantized(full) {
            for (i, index) in indices.enumerated() {
                guard index >= 0 && index < rows else {
                    throw EngineError(.invalidInput, "token id \(index) outside the vocabulary of \(rows)", tensorName: full)
                }
                do { try q.dequantize(rows: index..<(index + 1), into: output + i * columns) } catch {
                    throw EngineError(.unsupportedDType, "cannot dequantise", tensorName: full, underlying: error)
                }
            }
            return
        }
        guard let width = descriptor.dtype.byteWidth, [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            throw EngineError(.unsupportedDType, "embedding table is \(descriptor.dtype.name)", tensorName: full)
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        try view.bytes.withUnsafeBytes { raw throws in
            for (i, index) in indices.enumerated() {
                guard index >= 0 && index < rows else {
                    throw EngineError(.invalidInput, "token id \(index) outside the vocabulary of \(rows)", tensorName: full)
                }
                let slice = UnsafeRawBufferPointer(rebasing: raw[(index * columns * width)..<((index + 1) * columns * width)])
                try Self.widen(slice, dtype: descriptor.dtype, count: columns, into: output + i * columns, name: full)
            }
        }
    }

    private func release(_ bytes: TensorBytes) {
        if releasesPagesAfterUse && bytes.count >= Self.pageReleaseMinimumBytes { bytes.releasePages() }
    }

    private func takeScratch(_ count: Int) -> FloatTensor {
        if depth == scratch.count { scratch.append(FloatTensor(shape: [count])) }
        if scratch[depth].capacity < count { scratch[depth] = FloatTensor(shape: [count]) }
        depth += 1
        return scratch[depth - 1]
    }

    /// Dequantises rows `rows` (all by default) of an int8 tensor into `output`, in tiles of
    /// rows spread over the processors.
    private static func dequantize(_ q: QuantizedTensorView, rows: Range<Int>? = nil, into output: UnsafeMutablePointer<Float>, name: String) throws(EngineError) {
        let layout = q.layout
        let rows = rows ?? 0..<layout.rows
        let out = SharedPointer(output)
        let grain = max(1, 65_536 / max(layout.rowLength, 1))
        try q.bytes.withUnsafeBytes { (raw) throws(EngineError) in
            guard raw.count >= layout.byteCount, let base = raw.baseAddress, rows.lowerBound >= 0, rows.upperBound <= layout.rows else {
                throw EngineError(.unsupportedDType, "int8 weight is shorter than its layout", tensorName: name)
            }
            let payload = base.assumingMemoryBound(to: Int8.self), scales = base + layout.scaleOffset
            let shared = UnsafeSendableBox((payload, scales))
            Parallel.forRanges(rows.count, grain: grain) { r in
                let tile = (rows.lowerBound + r.lowerBound)..<(rows.lowerBound + r.upperBound)
                Int8Quantizer.dequantize(
                    payload: shared.value.0, scales: shared.value.1, layout: layout, rows: tile,
                    into: out.pointer + r.lowerBound * layout.rowLength)
            }
        }
    }

    /// Converts in tiles spread over the processors.
    private static func widen(_ raw: UnsafeRawBufferPointer, dtype: DType, count: Int, into output: UnsafeMutablePointer<Float>, name: String) throws(EngineError) {
        guard let width = dtype.byteWidth else {
            throw EngineError(.unsupportedDType, "cannot read \(dtype.name)", tensorName: name)
        }
        let out = SharedPointer(output)
        let failed = UnsafeSendableBox(UnsafeMutablePointer<Bool>.allocate(capacity: 1))
        failed.value.initialize(to: false)
        defer { failed.value.deallocate() }
        Parallel.forRanges(count, grain: 65_536) { r in
            let source = UnsafeRawBufferPointer(rebasing: raw[(r.lowerBound * width)..<(r.upperBound * width)])
            let target = UnsafeMutableBufferPointer(start: out.pointer + r.lowerBound, count: r.count)
            do { try ElementConversion.widen(source, dtype: dtype, into: target, count: r.count) } catch { failed.value.pointee = true }
        }
        if failed.value.pointee {
            throw EngineError(.unsupportedDType, "cannot convert \(dtype.name) weights to F32", tensorName: name)
        }
    }
}
