import CFileSync
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that it appears under its final name whole or not at all.
///
/// Bytes go to an unnamed temporary file in the target's folder (`O_TMPFILE`; where the file
/// system lacks it, a named one, `.NAME.tmp-XXXXXX`: see ``TemporaryName``), their write-back to
/// the disk started as they gather; `commit()` flushes, `fsync`s, gives it the target's name and
/// syncs the folder. Without `commit()`
/// (an error, a thrown conversion) the temporary is removed when the writer goes away.
/// A target that is a folder, or one of this process's inputs (``InputFiles``), is refused
/// whatever `overwrite` says. Writes are buffered; `position` is the logical offset of the
/// next byte.
public final class AtomicFileWriter {
    public let path: String
    /// The named temporary file, or `nil` while the data is in an unnamed (`O_TMPFILE`) one.
    public let temporaryPath: String?
    private let overwrite: Bool
    private var fd: FileDescriptor?
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private var committed = false
    /// Bytes written so far (including buffered ones).
    public private(set) var position = 0
    /// Bytes handed to the kernel so far, and how many of them it has been asked to write back.
    private var flushedBytes = 0
    private var writeBackStarted = 0
    /// Written bytes that start their write-back to the disk together (Linux).
    private let writeBackChunk: Int
    /// How many ranges the kernel has accepted to write back early (0 where the call is missing).
    public private(set) var writeBackRequests = 0

    /// Creates the temporary file next to `path`.
    ///
    /// - Parameter overwrite: when `false`, an existing `path` is refused now with `.exists`,
    ///   and again at commit time (the final link never replaces a file that appeared meanwhile).
    /// - Parameter writeBackChunk: once this many written bytes have gathered, the kernel is
    ///   asked to start writing them to the disk (Linux), so that `commit()`'s `fsync` waits for
    ///   the last of them only. Measured on the full-size SD 1.5 `convert --dtype f16`: 4.3–4.5 s
    ///   wall without, 3.3–3.6 s with 32 MiB chunks (`Docs/performance.md`).
    /// - Throws: `.outputIsFolder` when `path` names a folder (or ends in `/`), `.outputIsInput`
    ///   when it is one of this process's inputs, `.exists`, `.cannotCreate`, `.noSpace`.
    public init(path: String, overwrite: Bool, bufferSize: Int = 8 << 20, writeBackChunk: Int = 32 << 20) throws(IOError) {
        self.path = path
        self.overwrite = overwrite
        self.writeBackChunk = max(1, writeBackChunk)
        try Self.checkTarget(path, overwrite: overwrite)
        let (folder, template) = TemporaryName.template(for: path)
        let unnamed = Self.openUnnamed(in: folder)
        let raw: Int32
        if unnamed >= 0 {
            raw = unnamed
            temporaryPath = nil
        } else {
            var bytes = Array(template.utf8CString)
            raw = bytes.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard raw >= 0 else {
                let errno = Errno(rawValue: Glibc.errno)
                throw IOError(errno == .noSpace || errno == .diskQuotaExceeded ? .noSpace : .cannotCreate, path: path, call: "mkstemp", errno: errno)
            }
            temporaryPath = bytes.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
        fd = FileDescriptor(rawValue: raw)
        _ = fchmod(raw, 0o644 & ~Self.currentUmask())
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 64)
    }

    /// Refuses a target that is a folder, an input, or (without `overwrite`) exists.
    static func checkTarget(_ path: String, overwrite: Bool) throws(IOError) {
        if path.hasSuffix("/") { throw IOError(.outputIsFolder, path: path, call: "open", detail: "the name ends in /") }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        var target = info
        if (info.st_mode & S_IFMT) == S_IFLNK, stat(path, &target) != 0 { target = info }
        if (target.st_mode & S_IFMT) == S_IFDIR { throw IOError(.outputIsFolder, path: path, call: "open") }
        try InputFiles.refuseOverwriting(path)
        if !overwrite { throw IOError(.exists, path: path, call: "open") }
    }

    /// An unnamed file in `folder` (`O_TMPFILE`), or -1 where the file system has none.
    private static func openUnnamed(in folder: String) -> Int32 {
        // O_TMPFILE is (__O_TMPFILE | O_DIRECTORY) on Linux; the C macro does not import.
        let tmpfile: Int32 = 0o20_000_000 | O_DIRECTORY
        while true {
            let fd = Glibc.open(folder, tmpfile | O_RDWR | O_CLOEXEC, 0o644)
            if fd >= 0 || Glibc.errno != EINTR { return fd }
        }
    }

    deinit {
        buffer.deallocate()
        if !committed {
            if let fd { try? fd.close() }
            if let temporaryPath { unlink(temporaryPath) }
        }
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
        guard let fd else { throw IOError(.writeFailed, path: path, call: "write") }
        do {
            _ = try fd.writeAll(bytes)
        } catch {
            throw IOError.from(error, path: path, call: "write", fallback: .writeFailed)
        }
        flushedBytes += bytes.count
        startWriteBack(fd)
    }

    /// Asks the kernel to start writing the flushed bytes to the disk once a chunk of them has
    /// gathered, without waiting for it (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, Linux), so
    /// that the disk works while the caller computes the next bytes and `commit()`'s `fsync`
    /// does not find gigabytes of dirty pages waiting. Durability still comes from that `fsync`
    /// alone; a file system that does not support the call just leaves the work to it.
    private func startWriteBack(_ fd: FileDescriptor) {
        guard flushedBytes - writeBackStarted >= writeBackChunk else { return }
        if wp_start_write_back(fd.rawValue, Int64(writeBackStarted), Int64(flushedBytes - writeBackStarted)) == 0 { writeBackRequests += 1 }
        writeBackStarted = flushedBytes
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

    /// A path that opens the bytes written so far (flushed first), for checking the file before
    /// ``commit()``: the named temporary, or `/proc/self/fd/N` for an unnamed one. Valid until
    /// the writer commits or goes away; what is opened through it must not be written.
    public func readablePath() throws(IOError) -> String {
        try flush()
        guard let fd else { throw IOError(.writeFailed, path: path, call: "open") }
        return temporaryPath ?? "/proc/self/fd/\(fd.rawValue)"
    }

    /// Flushes, syncs and gives the temporary file the name `path`.
    public func commit() throws(IOError) {
        try flush()
        guard let fd else { throw IOError(.writeFailed, path: path, call: "commit") }
        if fsync(fd.rawValue) != 0 {
            throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "fsync", fallback: .syncFailed)
        }
        // Inputs opened since the writer was made are known now: check once more.
        try Self.checkTarget(path, overwrite: overwrite)
        let named: String
        if let temporaryPath {
            named = temporaryPath
        } else if !overwrite {
            // link(2) fails with EEXIST rather than replacing a file that appeared meanwhile.
            try Self.linkUnnamed(fd, to: path)
            try closeDescriptor(fd)
            committed = true
            Self.syncFolder(of: path)
            return
        } else {
            named = try Self.linkUnnamedToFreshName(fd, beside: path)
        }
        try closeDescriptor(fd)
        if overwrite {
            guard rename(named, path) == 0 else {
                let error = IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "rename", fallback: .renameFailed)
                unlink(named)
                throw error
            }
        } else {
            guard link(named, path) == 0 else {
                let error = IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "link", fallback: .renameFailed)
                unlink(named)
                throw error
            }
            unlink(named)
        }
        committed = true
        Self.syncFolder(of: path)
    }

    private func closeDescriptor(_ fd: FileDescriptor) throws(IOError) {
        self.fd = nil
        do { try fd.close() } catch {
            throw IOError.from(error, path: path, call: "close", fallback: .writeFailed)
        }
    }

    /// Gives the unnamed file behind `fd` the name `path` (failing if it exists).
    private static func linkUnnamed(_ fd: FileDescriptor, to path: String) throws(IOError) {
        guard linkat(AT_FDCWD, "/proc/self/fd/\(fd.rawValue)", AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0 else {
            throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "linkat", fallback: .renameFailed)
        }
    }

    /// Names the unnamed file behind `fd` `.NAME.tmp-XXXXXX` beside `path` and returns that name.
    private static func linkUnnamedToFreshName(_ fd: FileDescriptor, beside path: String) throws(IOError) -> String {
        for _ in 0..<100 {
            let candidate = TemporaryName.random(for: path)
            if linkat(AT_FDCWD, "/proc/self/fd/\(fd.rawValue)", AT_FDCWD, candidate, AT_SYMLINK_FOLLOW) == 0 { return candidate }
            if Glibc.errno != EEXIST {
                throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "linkat", fallback: .renameFailed)
            }
        }
        throw IOError(.cannotCreate, path: path, call: "linkat", detail: "no free temporary name")
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
