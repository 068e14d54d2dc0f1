import Quantization
import TensorCore

/// How one output tensor is made from source tensors: a rename, a reshape, a slice, a
/// concatenation or a transposition. Every operation moves bytes without touching values, so
/// a map and its inverse give back the source bit for bit.
public struct TensorRecipe: Sendable, Hashable {
    public enum Operation: Sendable, Hashable {
        /// The source as it is (a rename).
        case copy
        /// The source's bytes under another shape with the same element count (1×1 conv ↔ linear).
        case reshape
        /// Rows `start..<start+count` of the source's first dimension (OpenCLIP q/k/v).
        case rows(start: Int, count: Int)
        /// The sources stacked along the first dimension (q, k, v into `in_proj`).
        case concatenateRows
        /// The transpose of a 2-D source (`text_projection`).
        case transpose
        /// The integers `0..<n` as I64 with shape `[1, n]`, for a CLIP `position_ids` buffer the
        /// source lacks (no source tensor).
        case positionIDs
    }

    /// The output name.
    public var name: String
    public var dtype: DType
    public var shape: Shape
    /// The source tensors, in order.
    public var sources: [String]
    public var operation: Operation

    public init(name: String, dtype: DType, shape: Shape, sources: [String], operation: Operation) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.sources = sources
        self.operation = operation
    }

    public var descriptor: TensorDescriptor {
        TensorDescriptor(name: name, dtype: dtype, shape: shape, byteCount: (try? shape.byteCount(of: dtype)) ?? 0)
    }

    /// Makes the tensor from `store`.
    ///
    /// - Throws: `CatalogError` when a source is missing or no longer matches, or the store's error.
    public func materialize(from store: any TensorStore) throws -> TensorView {
        let out = descriptor
        switch operation {
        case .copy, .reshape:
            let view = try store.tensor(named: sources[0])
            guard view.dtype == dtype, view.descriptor.byteCount == out.byteCount else {
                throw CatalogError(
                    .shapeMismatch, "tensor '\(sources[0])' is \(view.dtype.name) \(view.shape), expected \(dtype.name) with \(shape.count) elements",
                    tensor: sources[0])
            }
            return TensorView(descriptor: out, bytes: view.bytes)
        case .rows(let start, let count):
            let view = try store.tensor(named: sources[0])
            guard view.dtype == dtype, view.shape.rank >= 1, start + count <= view.shape[0] else {
                throw CatalogError(.shapeMismatch, "tensor '\(sources[0])' has no rows \(start)..<\(start + count)", tensor: sources[0])
            }
            let rowBytes = view.descriptor.byteCount / max(view.shape[0], 1)
            let range = (start * rowBytes)..<((start + count) * rowBytes)
            let bytes = view.bytes.withUnsafeBytes { TensorBytes(copying: UnsafeRawBufferPointer(rebasing: $0[range])) }
            return TensorView(descriptor: out, bytes: bytes)
        case .concatenateRows:
            let buffer = OwnedBuffer(byteCount: out.byteCount)
            var offset = 0
            for source in sources {
                let view = try store.tensor(named: source)
                guard view.dtype == dtype, offset + view.descriptor.byteCount <= out.byteCount else {
                    throw CatalogError(.shapeMismatch, "tensor '\(source)' does not fit into '\(name)'", tensor: source)
                }
                view.bytes.withUnsafeBytes { raw in
                    if raw.count > 0 { (buffer.mutableBytes.baseAddress! + offset).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
                }
                offset += view.descriptor.byteCount
            }
            guard offset == out.byteCount else {
                throw CatalogError(.shapeMismatch, "the parts of '\(name)' hold \(offset) bytes, expected \(out.byteCount)", tensor: name)
            }
            return TensorView(descriptor: out, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
        case .transpose:
            let view = try store.tensor(named: sources[0])
            guard view.dtype == dtype, view.shape.rank == 2, shape.rank == 2, view.shape[0] == shape[1], view.shape[1] == shape[0],
                let width = dtype.byteWidth
            else { throw CatalogError(.shapeMismatch, "tensor '\(sources[0])' \(view.shape) cannot be transposed to \(shape)", tensor: sources[0]) }
            let rows = view.shape[0], columns = view.shape[1]
            let buffer = OwnedBuffer(byteCount: out.byteCount)
            view.bytes.withUnsafeBytes { raw in
                let destination = buffer.mutableBytes
                for r in 0..<rows {
                    for c in 0..<columns {
                        let from = (r * columns + c) * width, to = (c * rows + r) * width
                        for b in 0..<width { destination[to + b] = raw[from + b] }
                    }
                }
            }
            return TensorView(descriptor: out, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
        case .positionIDs:
            let n = shape.count
            let buffer = OwnedBuffer(byteCount: n * 8)
            for i in 0..<n { buffer.mutableBytes.storeBytes(of: Int64(i).littleEndian, toByteOffset: i * 8, as: Int64.self) }
            return TensorView(descriptor: out, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
        }
    }
}

/// A store seen through recipes: another naming of the same tensors, made on demand.
public final class RemappedStore: TensorStore, @unchecked Sendable {
    public let base: any TensorStore
    public let recipes: [TensorRecipe]
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    private let byName: [String: Int]

    public var formatName: String { base.formatName }

    public init(base: any TensorStore, recipes: [TensorRecipe], metadata: [String: String]? = nil) {
        self.base = base
        self.recipes = recipes
        tensors = recipes.map(\.descriptor)
        self.metadata = metadata ?? base.metadata
        var index: [String: Int] = [:]
        for (i, r) in recipes.enumerated() where index[r.name] == nil { index[r.name] = i }
        byName = index
    }

    public func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    /// The recipe that makes `name`.
    public func recipe(named name: String) -> TensorRecipe? { byName[name].map { recipes[$0] } }

    /// The first source tensor of `name`'s recipe (a made tensor such as `position_ids` has none: its own name).
    public func sourceName(of name: String) -> String? {
        guard let r = recipe(named: name) else { return nil }
        return r.sources.first ?? name
    }

    /// The base's stored dtype for a tensor copied or reshaped from one source, else the recipe's.
    public func storedDType(of name: String) -> DType? {
        guard let r = recipe(named: name) else { return nil }
        if r.sources.count == 1, [.copy, .reshape].contains(r.operation), let stored = base.storedDType(of: r.sources[0]) { return stored }
        return r.dtype
    }

    public func tensor(named name: String) throws -> TensorView {
        guard let i = byName[name] else { throw CatalogError(.missingTensor, "no tensor '\(name)'", tensor: name) }
        return try recipes[i].materialize(from: base)
    }
}

extension RemappedStore: QuantizedTensorStore, GGMLTensorStore {
    /// The int8 form of a tensor copied from an int8 source tensor (or reshaped, keeping its
    /// rows), so the engine dequantises it row block by row block instead of reading it whole.
    public func quantizedTensor(named name: String) throws -> QuantizedTensorView? {
        guard let r = recipe(named: name), r.sources.count == 1, [.copy, .reshape].contains(r.operation),
            let base = base as? any QuantizedTensorStore, let q = try base.quantizedTensor(named: r.sources[0])
        else { return nil }
        guard q.layout.rows == (r.shape.dimensions.first ?? 1), q.layout.elementCount == r.shape.count else { return nil }
        return try QuantizedTensorView(descriptor: r.descriptor, layout: q.layout, bytes: q.bytes, metrics: q.metrics)
    }

    /// The ggml blocks of a tensor copied, reshaped or sliced by rows from a block tensor of the
    /// base, zero-copy (a slice of the first dimension is a run of whole stored rows).
    public func ggmlTensor(named name: String) throws -> GGMLTensorView? {
        guard let r = recipe(named: name), r.sources.count == 1,
            let base = base as? any GGMLTensorStore, let view = try base.ggmlTensor(named: r.sources[0])
        else { return nil }
        switch r.operation {
        case .copy, .reshape:
            guard r.shape.count == view.descriptor.elementCount else { return nil }
            return try GGMLTensorView(descriptor: r.descriptor, type: view.type, bytes: view.bytes, rowLength: view.rowLength, metrics: view.metrics)
        case .rows(let start, let count):
            let first = view.descriptor.shape.dimensions.first ?? 1
            guard first > 0, view.rowLength > 0 else { return nil }
            let perRow = view.descriptor.elementCount / first
            guard perRow % view.rowLength == 0, start >= 0, count >= 0, start <= first - count else { return nil }
            let storedPerRow = perRow / view.rowLength
            let lower = start * storedPerRow * view.rowBytes, upper = (start + count) * storedPerRow * view.rowBytes
            let bytes = view.bytes.withUnsafeBytes { raw in
                TensorBytes(owner: view.bytes.owner, buffer: UnsafeRawBufferPointer(rebasing: raw[lower..<upper]))
            }
            return try GGMLTensorView(descriptor: r.descriptor, type: view.type, bytes: bytes, rowLength: view.rowLength, metrics: nil)
        default:
            return nil
        }
    }
}
