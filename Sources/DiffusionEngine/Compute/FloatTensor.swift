#if canImport(Glibc)
import Glibc
#endif

/// A dense, row-major `Float` tensor the engine computes with: 64-byte aligned storage that
/// may be larger than the current shape, so a buffer can be reused for a smaller tensor.
///
/// The engine's activations use the PyTorch layouts: `[tokens, features]` for transformer
/// activations and `[channels, height, width]` (one image, NCHW without N) for convolutions.
public final class FloatTensor: @unchecked Sendable {
    /// The current dimensions.
    public private(set) var shape: [Int]
    /// The number of elements in the current shape.
    public private(set) var count: Int
    /// Elements the storage can hold.
    public let capacity: Int
    let base: UnsafeMutablePointer<Float>

    /// Allocates an uninitialised tensor.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        let count = shape.reduce(1, *)
        self.shape = shape
        self.count = count
        self.capacity = count
        base = Self.allocate(count)
    }

    private init(shape: [Int], capacity: Int) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.capacity = capacity
        base = Self.allocate(capacity)
    }

    /// Bytes from which storage is aligned to 2 MiB and marked for transparent huge pages.
    static let hugePageMinimumBytes = 8 << 20

    /// Storage for `count` floats: 64-byte aligned; from ``hugePageMinimumBytes`` on, aligned to
    /// 2 MiB and advised as huge-page memory (`MADV_HUGEPAGE`, which Linux honours when
    /// transparent huge pages are set to `madvise` or `always`), so the products that stream
    /// through a large buffer (a converted weight, im2col columns) take one TLB entry per 2 MiB
    /// rather than per 4 KiB, as they already do on a model file's page cache.
    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        let huge = bytes >= hugePageMinimumBytes
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: huge ? 2 << 20 : 64)
        #if os(Linux)
        if huge { _ = madvise(raw, bytes / (2 << 20) * (2 << 20), MADV_HUGEPAGE) }
        #endif
        return raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// A tensor holding a copy of `values`.
    public convenience init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "\(values.count) values for shape \(shape)")
        self.init(shape: shape)
        values.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: values.count) }
    }

    /// A zero-filled tensor.
    public static func zeros(_ shape: [Int]) -> FloatTensor {
        let t = FloatTensor(shape: shape)
        t.base.update(repeating: 0, count: t.count)
        return t
    }

    deinit { UnsafeMutableRawPointer(base).deallocate() }

    /// Changes the shape in place; the element count must fit the capacity.
    public func reshape(_ newShape: [Int]) {
        let n = newShape.reduce(1, *)
        precondition(n <= capacity && newShape.allSatisfy { $0 >= 0 }, "shape \(newShape) does not fit capacity \(capacity)")
        shape = newShape
        count = n
    }

    /// The values, copied into an array.
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: base, count: count)) }

    /// Calls `body` with the elements; the pointer must not escape the closure.
    public func withUnsafeBufferPointer<R, E: Error>(_ body: (UnsafeBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(UnsafeBufferPointer(start: base, count: count))
    }

    /// Calls `body` with the elements, writable; the pointer must not escape the closure.
    public func withUnsafeMutableBufferPointer<R, E: Error>(_ body: (UnsafeMutableBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(UnsafeMutableBufferPointer(start: base, count: count))
    }

    /// A copy with its own storage.
    public func copy() -> FloatTensor {
        let t = FloatTensor(shape: shape)
        t.base.update(from: base, count: count)
        return t
    }
}

/// A free list of tensors, so that a forward pass reuses a handful of buffers instead of
/// allocating one per layer. Not thread-safe: one pool per forward pass.
final class TensorPool {
    private var free: [FloatTensor] = []

    /// A tensor of `shape` (contents undefined), reusing the smallest free buffer that fits.
    func take(_ shape: [Int]) -> FloatTensor {
        let n = shape.reduce(1, *)
        var best: Int? = nil
        for (i, t) in free.enumerated() where t.capacity >= n {
            if best == nil || t.capacity < free[best!].capacity { best = i }
        }
        if let best {
            let t = free.remove(at: best)
            t.reshape(shape)
            return t
        }
        return FloatTensor(shape: shape)
    }

    /// Gives a tensor back for reuse; the caller must not use it afterwards.
    func recycle(_ tensor: FloatTensor) {
        precondition(!free.contains { $0 === tensor }, "tensor recycled twice")
        free.append(tensor)
    }

    /// Bytes held by free buffers.
    var cachedBytes: Int { free.reduce(0) { $0 + $1.capacity * 4 } }
}
