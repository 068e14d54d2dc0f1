#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

/// Writes a file so that it appears under its final name whole or not at all.
///
/// Bytes go to a temporary file in the target's folder (`.NAME.tmp-XXXXXX`); `commit()`
/// flushes, `fsync`s, renames it over the target and syncs the folder. Without `commit()`
/// (an error, a thrown conversion) the temporary file is removed when the writer goes away.
/// Writes are buffered; `position` is the logical offset of the next byte.
public final class AtomicFileWriter {
    public let path: String
    public let temporaryPath: String
    private let overwrite: Bool
    private var fd: FileDescriptor?
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private var committed = false
    /// Bytes written so far (including buffered ones).
    public private(set) var position = 0

    /// Creates the temporary file next to `path`.
    ///
    /// - Parameter overwrite: when `false`, an existing `path` is refused now with `.exists`,
    ///   and again at commit time (the rename never replaces a file that appeared meanwhile).
    public init(path: String, overwrite: Bool, bufferSize: Int = 8 << 20) throws(IOError) {
        self.path = path
        self.overwrite = overwrite
        if !overwrite, Self.exists(path) {
            throw IOError(.exists, path: path, call: "open")
        }
        let file = FilePath(path)
        let folder = file.removingLastComponent()
        let name = file.lastComponent?.string ?? "output"
        let folderString = folder.isEmpty ? "." : folder.string
        var template = Array("\(folderString)/.\(name).tmp-XXXXXX".utf8CString)
        let raw = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard raw >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw IOError(errno == .noSpace || errno == .diskQuotaExceeded ? .noSpace : .cannotCreate, path: path, call: "mkstemp", errno: errno)
        }
        temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        fd = FileDescriptor(rawValue: raw)
        _ = fchmod(raw, 0o644 & ~Self.currentUmask())
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 64)
    }

    deinit {
        buffer.deallocate()
        if !committed {
            if let fd { try? fd.close() }
            unlink(temporaryPath)
        }
    }

    private static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    private static func currentUmask() -> mode_t {
        let mask = umask(0o022)
        umask(mask)
        return mask
    }

    /// Appends bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(IOError) {
        guard bytes.count > 0 else { return }
        if buffered + bytes.count > buffer.count {
            try flush()
        }
        if bytes.count >= buffer.count {
            try writeThrough(bytes)
        } else {
            (buffer.baseAddress! + buffered).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            buffered += bytes.count
        }
        position += bytes.count
    }

    /// Appends the bytes of an array or string's UTF-8.
    public func write(_ bytes: some Sequence<UInt8>) throws(IOError) {
        let array = Array(bytes)
        let result = array.withUnsafeBytes { raw in Result { () throws(IOError) in try write(raw) } }
        try result.get()
    }

    /// Appends `count` zero bytes (padding).
    public func writeZeros(_ count: Int) throws(IOError) {
        var left = count
        let zeros = [UInt8](repeating: 0, count: min(count, 4096))
        while left > 0 {
            let n = min(left, zeros.count)
            let result = zeros.withUnsafeBytes { raw in
                Result { () throws(IOError) in try write(UnsafeRawBufferPointer(rebasing: raw[0..<n])) }
            }
            try result.get()
            left -= n
        }
    }

    /// Pads with zeros until `position` is a multiple of `alignment`.
    public func pad(toMultipleOf alignment: Int) throws(IOError) {
        let rem = position % alignment
        if rem != 0 { try writeZeros(alignment - rem) }
    }

    /// Lets `body` fill `count` bytes of the write buffer directly (no extra copy); `body`
    /// must initialise every byte.
    public func withUnsafeOutputBuffer(count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        if count > buffer.count {
            let temporary = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
            defer { temporary.deallocate() }
            try body(temporary)
            try write(UnsafeRawBufferPointer(temporary))
            return
        }
        if buffered + count > buffer.count { try flush() }
        try body(UnsafeMutableRawBufferPointer(rebasing: buffer[buffered..<(buffered + count)]))
        buffered += count
        position += count
    }

    private func flush() throws(IOError) {
        guard buffered > 0 else { return }
        try writeThrough(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<buffered]))
        buffered = 0
    }

    private func writeThrough(_ bytes: UnsafeRawBufferPointer) throws(IOError) {
        guard let fd else { throw IOError(.writeFailed, path: temporaryPath, call: "write") }
        do {
            _ = try fd.writeAll(bytes)
        } catch {
            throw IOError.from(error, path: path, call: "write", fallback: .writeFailed)
        }
    }

    /// Replaces bytes already written at `offset` (flushing first); `position` does not move.
    public func overwrite(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(IOError) {
        try flush()
        guard let fd, offset >= 0, offset + bytes.count <= position else {
            throw IOError(.writeFailed, path: path, call: "pwrite")
        }
        do {
            _ = try fd.writeAll(toAbsoluteOffset: Int64(offset), bytes)
        } catch {
            throw IOError.from(error, path: path, call: "pwrite", fallback: .writeFailed)
        }
    }

    /// Flushes, syncs and renames the temporary file to `path`.
    public func commit() throws(IOError) {
        try flush()
        guard let fd else { throw IOError(.writeFailed, path: path, call: "commit") }
        if fsync(fd.rawValue) != 0 {
            throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "fsync", fallback: .syncFailed)
        }
        do { try fd.close() } catch {
            throw IOError.from(error, path: path, call: "close", fallback: .writeFailed)
        }
        self.fd = nil
        if overwrite {
            guard rename(temporaryPath, path) == 0 else {
                throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "rename", fallback: .renameFailed)
            }
        } else {
            // link(2) fails with EEXIST rather than replacing a file that appeared meanwhile.
            guard link(temporaryPath, path) == 0 else {
                throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "link", fallback: .renameFailed)
            }
            unlink(temporaryPath)
        }
        committed = true
        Self.syncFolder(of: path)
    }

    /// Syncs the folder holding `path` so a rename survives a crash (best effort).
    static func syncFolder(of path: String) {
        let folder = FilePath(path).removingLastComponent()
        let dirfd = open(folder.isEmpty ? "." : folder.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            _ = fsync(dirfd)
            close(dirfd)
        }
    }
}
