#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

/// Builds a folder so that it appears under its final name whole or not at all: files are
/// written into a temporary folder beside the target (`.NAME.tmp-XXXXXX`, each file itself
/// through ``AtomicFileWriter``), and `commit()` renames the folder into place. Without
/// `commit()` the temporary folder and everything in it is removed when the value goes away.
public final class AtomicFolder {
    public let path: String
    public let temporaryPath: String
    private let overwrite: Bool
    private var committed = false

    /// Creates the temporary folder next to `path`.
    ///
    /// - Parameter overwrite: when `false`, an existing `path` is refused with `.exists`; when
    ///   `true`, an existing folder is replaced at commit (moved aside, then removed).
    public init(path: String, overwrite: Bool) throws(IOError) {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.path = trimmed
        self.overwrite = overwrite
        var info = stat()
        if lstat(trimmed, &info) == 0 {
            if !overwrite { throw IOError(.exists, path: trimmed, call: "mkdtemp") }
            if (info.st_mode & S_IFMT) != S_IFDIR { throw IOError(.exists, path: trimmed, call: "mkdtemp") }
        }
        let file = FilePath(trimmed)
        let folder = file.removingLastComponent()
        let name = file.lastComponent?.string ?? "output"
        var template = Array("\(folder.isEmpty ? "." : folder.string)/.\(name).tmp-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else {
            let errno = Errno(rawValue: Glibc.errno)
            throw IOError(errno == .noSpace ? .noSpace : .cannotCreate, path: trimmed, call: "mkdtemp", errno: errno)
        }
        temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = chmod(temporaryPath, 0o755 & ~Self.currentUmask())
    }

    deinit {
        if !committed { Self.removeTree(temporaryPath) }
    }

    /// The temporary path of `relative` (creating its parent folders).
    public func prepare(_ relative: String) throws(IOError) -> String {
        let parts = relative.split(separator: "/")
        var current = temporaryPath
        for part in parts.dropLast() {
            guard part != "..", part != "." else { throw IOError(.cannotCreate, path: relative, call: "mkdir") }
            current += "/" + part
            if mkdir(current, 0o755) != 0, Glibc.errno != EEXIST {
                throw IOError(.cannotCreate, path: current, call: "mkdir", errno: Errno(rawValue: Glibc.errno))
            }
        }
        return temporaryPath + "/" + relative
    }

    /// Writes a small file whole.
    public func write(_ relative: String, bytes: [UInt8]) throws(IOError) {
        let writer = try AtomicFileWriter(path: try prepare(relative), overwrite: true)
        try writer.write(bytes)
        try writer.commit()
    }

    /// Renames the folder into place.
    public func commit() throws(IOError) {
        var info = stat()
        var aside: String?
        if lstat(path, &info) == 0 {
            guard overwrite else { throw IOError(.exists, path: path, call: "rename") }
            let moved = temporaryPath + ".old"
            guard rename(path, moved) == 0 else {
                throw IOError(.renameFailed, path: path, call: "rename", errno: Errno(rawValue: Glibc.errno))
            }
            aside = moved
        }
        guard rename(temporaryPath, path) == 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            if let aside { _ = rename(aside, path) }
            throw IOError(.renameFailed, path: path, call: "rename", errno: errno)
        }
        committed = true
        AtomicFileWriter.syncFolder(of: path)
        if let aside { Self.removeTree(aside) }
    }

    private static func currentUmask() -> mode_t {
        let mask = umask(0o022)
        umask(mask)
        return mask
    }

    /// Removes a folder and everything in it (best effort; symbolic links are removed, not followed).
    static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            if let dir = opendir(path) {
                var names: [String] = []
                while let entry = readdir(dir) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(cString: raw.bindMemory(to: CChar.self).baseAddress!) }
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(dir)
                for name in names { removeTree(path + "/" + name) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

/// Lists the entries of a folder (without `.` and `..`), sorted; `nil` when it cannot be read.
public func listFolder(_ path: String) -> [String]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(cString: raw.bindMemory(to: CChar.self).baseAddress!) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}

/// Whether `path` names a folder.
public func isFolder(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

/// Whether `path` names a regular file.
public func isRegularFile(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
}
