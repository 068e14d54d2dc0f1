#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file in `/dev/shm` (memory-backed) rewritten with every input, for readers that open a path.
/// One per process; removed when the process exits normally.
public final class ScratchFile: @unchecked Sendable {
    public let path: String

    /// - Parameter tag: names the file (`/dev/shm/weightpack-fuzz-<tag>-<pid>`).
    public init(tag: String) {
        let directory = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        path = "\(directory)/weightpack-fuzz-\(tag)-\(getpid())"
        ScratchFile.registered.append(path)
        if ScratchFile.registered.count == 1 {
            atexit { for p in ScratchFile.registered { unlink(p) } }
        }
    }

    /// A file at `path`, left in place at exit.
    init(path: String) {
        self.path = path
    }

    nonisolated(unsafe) private static var registered: [String] = []

    /// Replaces the file's contents with `bytes`. Traps only if the scratch file cannot be
    /// written, which is a problem of the machine, not of the input.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "cannot create \(path): errno \(errno)")
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0, errno == EINTR { continue }
            precondition(n > 0, "cannot write \(path): errno \(errno)")
            done += n
        }
    }
}
