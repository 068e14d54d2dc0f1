import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Checks an input path before it is opened for reading: opening a FIFO for reading blocks
/// until a writer appears (forever, for a hostile input), and a device or socket is no model.
public enum FileCheck {
    /// What a path names, after following symbolic links.
    public enum Kind: Sendable, Equatable {
        case regularFile(size: Int)
        case directory
        /// A FIFO, socket, character or block device.
        case other
    }

    /// What `path` names (following symbolic links), without opening it.
    ///
    /// - Throws: `IOError` `.notFound`, `.permissionDenied`, `.symlinkLoop` (`ELOOP`) or
    ///   `.readFailed` (any other `stat` failure).
    public static func kind(of path: String) throws(IOError) -> Kind {
        var info = stat()
        while stat(path, &info) != 0 {
            let code = Errno(rawValue: errno)
            if code == .interrupted { continue }
            if code == .notDirectory || code == .fileNameTooLong { throw IOError(.notFound, path: path, call: "stat", errno: code) }
            throw IOError.from(code, path: path, call: "stat", fallback: .readFailed)
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return .regularFile(size: Int(info.st_size))
        case S_IFDIR: return .directory
        default: return .other
        }
    }

    /// Refuses anything but a regular file (following symbolic links), before it is opened.
    ///
    /// - Throws: `IOError` `.notRegularFile` for a FIFO, socket or device, `.isDirectory`, or
    ///   what ``kind(of:)`` throws.
    public static func requireRegularFile(_ path: String) throws(IOError) {
        switch try kind(of: path) {
        case .regularFile: return
        case .directory: throw IOError(.isDirectory, path: path, call: "stat")
        case .other: throw IOError(.notRegularFile, path: path, call: "stat")
        }
    }

    /// Opens `path` read-only without ever blocking (`O_NONBLOCK`, so a FIFO opens at once),
    /// refuses it unless `fstat` says it is a regular file, then clears `O_NONBLOCK`. This is
    /// the race-free form of ``requireRegularFile(_:)`` for code that reads through a descriptor.
    ///
    /// - Returns: an open descriptor the caller closes.
    /// - Throws: `IOError` as ``requireRegularFile(_:)`` does, or `.readFailed`.
    public static func openRegularFileForReading(_ path: String) throws(IOError) -> FileDescriptor {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(
                FilePath(path), .readOnly, options: [.closeOnExec, .nonBlocking],
                retryOnInterrupt: true)
        } catch {
            throw IOError.from(error, path: path, call: "open", fallback: .readFailed)
        }
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else {
            let code = Errno(rawValue: errno)
            try? fd.close()
            throw IOError.from(code, path: path, call: "fstat", fallback: .readFailed)
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR:
            try? fd.close()
            throw IOError(.isDirectory, path: path, call: "open")
        default:
            try? fd.close()
            throw IOError(.notRegularFile, path: path, call: "open")
        }
        let flags = fcntl(fd.rawValue, F_GETFL)
        if flags >= 0 { _ = fcntl(fd.rawValue, F_SETFL, flags & ~O_NONBLOCK) }
        return fd
    }

    /// The first `count` bytes of the regular file at `path` (fewer when it is shorter), read
    /// through ``openRegularFileForReading(_:)``.
    ///
    /// - Throws: `IOError` as ``openRegularFileForReading(_:)`` does, or `.readFailed`.
    public static func readPrefix(of path: String, count: Int) throws(IOError) -> [UInt8] {
        let fd = try openRegularFileForReading(path)
        defer { try? fd.close() }
        var buffer = [UInt8](repeating: 0, count: max(count, 0))
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0 {
                let code = Errno(rawValue: errno)
                if code == .interrupted { continue }
                throw IOError(.readFailed, path: path, call: "read", errno: code)
            }
            if n == 0 { break }
            filled += n
        }
        return Array(buffer[0..<filled])
    }
}
