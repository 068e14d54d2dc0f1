import Glibc

/// The name, dtype and shape of a tensor as a store holds it.
public struct TensorDescriptor: Hashable, Sendable {
    /// The name as the file stores it.
    public var name: String
    public var dtype: DType
    public var shape: Shape
    /// Bytes of the tensor's logical (uncompressed, contiguous) data.
    public var byteCount: Int

    public init(name: String, dtype: DType, shape: Shape, byteCount: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.byteCount = byteCount
    }

    /// The number of elements.
    public var elementCount: Int { shape.count }
}

/// Bytes owned by someone else (a mapping, a decompressed buffer) that stay valid while this
/// value exists.
public struct TensorBytes: @unchecked Sendable {
    /// Keeps the memory alive: a mapping or an allocation.
    public let owner: AnyObject?
    private let buffer: UnsafeRawBufferPointer

    /// Wraps memory kept alive by `owner`.
    public init(owner: AnyObject?, buffer: UnsafeRawBufferPointer) {
        self.owner = owner
        self.buffer = buffer
    }

    /// Copies `bytes` into memory this value owns.
    public init(copying bytes: UnsafeRawBufferPointer) {
        let storage = OwnedBuffer(byteCount: bytes.count)
        if bytes.count > 0 {
            storage.mutableBytes.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        }
        self.init(owner: storage, buffer: UnsafeRawBufferPointer(storage.mutableBytes))
    }

    public var count: Int { buffer.count }

    /// Calls `body` with the bytes; the pointer must not escape the closure.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(owner) {} }
        return try body(buffer)
    }
}

/// Memory that can hand its pages back to the kernel after use and read them again on demand:
/// a read-only file mapping. Owners of ``TensorBytes`` may conform.
public protocol PageReleasing: AnyObject {
    /// Drops the pages behind `bytes` (and the rest of the first and last page) from the
    /// process's resident set; a hint, and views of other memory are ignored.
    func adviseDone(with bytes: UnsafeRawBufferPointer)
}

extension TensorBytes {
    /// Whether the bytes are in memory that can give its pages back (``PageReleasing``).
    public var canReleasePages: Bool { owner is any PageReleasing }

    /// Drops these bytes' pages from the resident set when their owner can read them again
    /// (a file mapping); does nothing for heap memory.
    public func releasePages() {
        guard let owner = owner as? any PageReleasing else { return }
        withUnsafeBytes { owner.adviseDone(with: $0) }
    }
}

/// A heap allocation of raw bytes, 64-byte aligned, freed when the last reference goes.
public final class OwnedBuffer: @unchecked Sendable {
    /// Exactly the requested bytes (the allocation behind them may be larger).
    public let mutableBytes: UnsafeMutableRawBufferPointer
    private let allocation: UnsafeMutableRawBufferPointer
    /// Whether `allocation` came from `posix_memalign` (freed with `free`).
    private let isMalloced: Bool

    /// Allocates `byteCount` bytes; traps when the system has none (for sizes the program
    /// chose, not ones a file declares).
    public init(byteCount: Int) {
        allocation = UnsafeMutableRawBufferPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        mutableBytes = UnsafeMutableRawBufferPointer(rebasing: allocation[0..<byteCount])
        isMalloced = false
    }

    /// Allocates `byteCount` bytes, or gives `nil` when the system refuses them: for sizes an
    /// input file declares, which must end in an error, not a trap. (With Linux's default
    /// overcommit a request larger than memory and swap is refused; a smaller one is granted
    /// lazily, page by page as it is written.)
    public init?(checkedByteCount byteCount: Int) {
        guard byteCount >= 0 else { return nil }
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, 64, max(byteCount, 1)) == 0, let pointer else { return nil }
        allocation = UnsafeMutableRawBufferPointer(start: pointer, count: max(byteCount, 1))
        mutableBytes = UnsafeMutableRawBufferPointer(rebasing: allocation[0..<byteCount])
        isMalloced = true
    }

    deinit {
        if isMalloced { free(allocation.baseAddress) } else { allocation.deallocate() }
    }

    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(mutableBytes)[0..<mutableBytes.count])
    }
}

/// A tensor's descriptor and its bytes (row-major, little-endian, contiguous).
public struct TensorView: Sendable {
    public let descriptor: TensorDescriptor
    public let bytes: TensorBytes

    public init(descriptor: TensorDescriptor, bytes: TensorBytes) {
        precondition(bytes.count == descriptor.byteCount, "tensor bytes do not match the descriptor")
        self.descriptor = descriptor
        self.bytes = bytes
    }

    public var name: String { descriptor.name }
    public var dtype: DType { descriptor.dtype }
    public var shape: Shape { descriptor.shape }

    /// Statistics of the values.
    public func statistics() throws(TensorCoreError) -> TensorStatistics {
        let descriptor = self.descriptor
        return try bytes.withUnsafeBytes { (raw) throws(TensorCoreError) in
            try TensorStatistics(bytes: raw, dtype: descriptor.dtype, count: descriptor.elementCount)
        }
    }

    /// The values widened to `Float` (allocates `count` floats).
    public func floats() throws(TensorCoreError) -> [Float] {
        let count = descriptor.elementCount
        let dtype = descriptor.dtype
        return try [Float](unsafeUninitializedCapacity: count) { (out, initialized) throws(TensorCoreError) in
            try bytes.withUnsafeBytes { (raw) throws(TensorCoreError) in
                try ElementConversion.widen(raw, dtype: dtype, into: out, count: count)
            }
            initialized = count
        }
    }
}

/// Anything that holds named tensors: a safetensors file, a checkpoint, a `.wpk` file, a
/// diffusers folder. The engine and the converters consume this, never a file format.
public protocol TensorStore: AnyObject, Sendable {
    /// A short name of the format (`safetensors`, `ckpt`, `wpk`, …).
    var formatName: String { get }
    /// Every tensor, in the store's own order.
    var tensors: [TensorDescriptor] { get }
    /// Free-form string metadata the store carries.
    var metadata: [String: String] { get }
    /// The descriptor of the tensor called `name`, if there is one.
    func descriptor(named name: String) -> TensorDescriptor?
    /// The tensor called `name`; zero-copy where the format allows.
    func tensor(named name: String) throws -> TensorView
    /// The name `name` had in the file this store was made from: a `.wpk` records its source's
    /// names, a renaming store knows its recipes. `name` itself for a store that renames nothing;
    /// `nil` when the store has no such tensor.
    func sourceName(of name: String) -> String?
    /// The element type `name` is stored in, which differs from its descriptor's when the store
    /// decodes on read (int8 blocks of a `.wpk` read as F32). `nil` when there is no such tensor.
    func storedDType(of name: String) -> DType?
}

extension TensorStore {
    public func descriptor(named name: String) -> TensorDescriptor? {
        tensors.first { $0.name == name }
    }

    public func sourceName(of name: String) -> String? { descriptor(named: name) == nil ? nil : name }

    public func storedDType(of name: String) -> DType? { descriptor(named: name)?.dtype }
}
