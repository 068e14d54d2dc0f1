import SystemPackage
import TensorCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory. The mapping is released when the last
/// reference goes; views of its bytes hold it alive through `TensorBytes.owner`.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    /// The file's size when it was mapped.
    public let size: Int
    private let base: UnsafeRawPointer?
    /// Keeps the file known as an input while it is mapped (``InputFiles``).
    private let registration: InputFiles.Registration?

    /// Maps `path` read-only.
    ///
    /// - Throws: `IOError` with `.notFound`, `.permissionDenied`, `.isDirectory`, `.notRegularFile`
    ///   (a FIFO, socket or device) or `.mapFailed`.
    public init(path: String) throws(IOError) {
        self.path = path
        // Opened without blocking and refused unless a regular file: a FIFO never hangs us.
        let fd = try FileCheck.openRegularFileForReading(path)
        defer { try? fd.close() }
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else {
            throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "fstat", fallback: .readFailed)
        }
        registration = InputFiles.register(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), path: path)
        size = Int(info.st_size)
        if size == 0 {
            base = nil
            return
        }
        let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd.rawValue, 0)
        guard let address, address != MAP_FAILED else {
            throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "mmap", fallback: .mapFailed)
        }
        base = UnsafeRawPointer(address)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// All bytes of the file.
    public var bytes: TensorBytes {
        TensorBytes(owner: self, buffer: UnsafeRawBufferPointer(start: base, count: size))
    }

    /// The bytes in `range`, or `nil` when the range is not inside the file.
    public func bytes(in range: Range<Int>) -> TensorBytes? {
        guard range.lowerBound >= 0, range.upperBound <= size else { return nil }
        if range.isEmpty { return TensorBytes(owner: self, buffer: UnsafeRawBufferPointer(start: nil, count: 0)) }
        return TensorBytes(owner: self, buffer: UnsafeRawBufferPointer(start: base! + range.lowerBound, count: range.count))
    }

    /// Calls `body` with the whole mapping; the pointer must not escape.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(UnsafeRawBufferPointer(start: base, count: size))
    }

    /// Tells the kernel the mapping will be read front to back (a hint; failures are ignored).
    public func adviseSequential() {
        if let base { _ = madvise(UnsafeMutableRawPointer(mutating: base), size, MADV_SEQUENTIAL) }
    }

    /// Drops the pages behind `bytes` (a view of this mapping) from the resident set; views of
    /// other memory are ignored.
    public func adviseDone(with bytes: UnsafeRawBufferPointer) {
        guard let base, let start = bytes.baseAddress, start >= base, start + bytes.count <= base + size else { return }
        let offset = start - base
        adviseDone(with: offset..<(offset + bytes.count))
    }

    /// Tells the kernel a range will not be needed again soon, so its pages can be dropped
    /// from this process's resident set (a hint; failures are ignored).
    public func adviseDone(with range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        let end = min(size, range.upperBound)
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
    }
}

extension MappedFile: PageReleasing {}
