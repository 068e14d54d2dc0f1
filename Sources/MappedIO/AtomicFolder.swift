import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds a folder so that nothing of the user's is lost.
///
/// Files are written into a temporary folder beside the target (`.NAME.tmp-XXXXXX`, see
/// ``TemporaryName``; each file itself through ``AtomicFileWriter``). At `commit()`:
/// - a target that does not exist yet gets the whole folder at once (one rename);
/// - an existing target (only with `overwrite`, and only when it is empty or holds `marker`, the
///   file that says it is a folder of the kind being written) gets each written file renamed
///   over its counterpart, as `save_pretrained` does: files this writer did not write are left
///   alone, and nothing is ever deleted but the temporary folder.
/// A target that holds one of this process's inputs is refused (``InputFiles``), and so is a
/// target whose folders along a written path are symbolic links (a write must not land outside
/// the folder named). Without `commit()` the temporary folder is removed when the value goes away.
public final class AtomicFolder {
    public let path: String
    public let temporaryPath: String
    private let overwrite: Bool
    private let marker: String?
    private var committed = false

    /// Creates the temporary folder next to `path`.
    ///
    /// - Parameters:
    ///   - overwrite: when `false`, an existing `path` is refused with `.exists`.
    ///   - marker: with `overwrite`, an existing non-empty folder is written into only when it
    ///     holds this file (e.g. `model_index.json`); otherwise it is refused with `.refusedTarget`.
    public init(path: String, overwrite: Bool, marker: String? = nil) throws(IOError) {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.path = trimmed
        self.overwrite = overwrite
        self.marker = marker
        try Self.checkTarget(trimmed, overwrite: overwrite, marker: marker)
        var template = Array(TemporaryName.template(for: trimmed).template.utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else {
            let errno = Errno(rawValue: Glibc.errno)
            throw IOError(errno == .noSpace ? .noSpace : .cannotCreate, path: trimmed, call: "mkdtemp", errno: errno)
        }
        temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = chmod(temporaryPath, 0o755 & ~Self.currentUmask())
    }

    /// Refuses a target this writer may not write into.
    static func checkTarget(_ path: String, overwrite: Bool, marker: String?) throws(IOError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard overwrite else { throw IOError(.exists, path: path, call: "mkdtemp") }
        guard (info.st_mode & S_IFMT) == S_IFDIR else {
            throw IOError(.refusedTarget, path: path, call: "mkdtemp", detail: "exists and is not a folder; refusing to replace it with one")
        }
        try InputFiles.refuseOverwriting(path)
        let entries = listFolder(path) ?? []
        if let marker, !entries.isEmpty, !isRegularFile(path + "/" + marker) {
            throw IOError(
                .refusedTarget, path: path, call: "mkdtemp",
                detail:
                    "is a non-empty folder without \(marker), so not one this command wrote; refusing to write into it (name a new or empty folder)")
        }
    }

    deinit {
        if !committed { Self.removeTree(temporaryPath) }
    }

    /// The temporary path of `relative` (creating its parent folders).
    public func prepare(_ relative: String) throws(IOError) -> String {
        let parts = relative.split(separator: "/")
        guard !parts.isEmpty, !parts.contains(where: { $0 == ".." || $0 == "." }) else {
            throw IOError(.cannotCreate, path: relative, call: "mkdir", detail: "not a plain relative path")
        }
        var current = temporaryPath
        for part in parts.dropLast() {
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

    /// Puts the folder in place: renamed whole when the target is new, file by file into an
    /// existing target.
    public func commit() throws(IOError) {
        try Self.checkTarget(path, overwrite: overwrite, marker: marker)
        var info = stat()
        if lstat(path, &info) != 0 {
            guard rename(temporaryPath, path) == 0 else {
                throw IOError.from(Errno(rawValue: Glibc.errno), path: path, call: "rename", fallback: .renameFailed)
            }
            committed = true
            AtomicFileWriter.syncFolder(of: path)
            return
        }
        let files = Self.files(under: temporaryPath)
        // Check every destination before moving anything, so a refusal leaves the target as it was.
        for file in files {
            var folder = path
            for part in file.split(separator: "/").dropLast() {
                folder += "/" + part
                var entry = stat()
                if lstat(folder, &entry) == 0, (entry.st_mode & S_IFMT) != S_IFDIR {
                    throw IOError(
                        .refusedTarget, path: folder, call: "rename",
                        detail: "is not a folder (a symbolic link or a file); refusing to write through it")
                }
            }
            var entry = stat()
            if lstat(path + "/" + file, &entry) == 0, (entry.st_mode & S_IFMT) == S_IFDIR {
                throw IOError(.outputIsFolder, path: path + "/" + file, call: "rename")
            }
        }
        for file in files {
            var folder = path
            for part in file.split(separator: "/").dropLast() {
                folder += "/" + part
                if mkdir(folder, 0o755) != 0, Glibc.errno != EEXIST {
                    throw IOError(.cannotCreate, path: folder, call: "mkdir", errno: Errno(rawValue: Glibc.errno))
                }
            }
            guard rename(temporaryPath + "/" + file, path + "/" + file) == 0 else {
                throw IOError.from(Errno(rawValue: Glibc.errno), path: path + "/" + file, call: "rename", fallback: .renameFailed)
            }
            AtomicFileWriter.syncFolder(of: path + "/" + file)
        }
        committed = true
        Self.removeTree(temporaryPath)
    }

    /// The relative paths of the regular files under `root`, sorted.
    static func files(under root: String, relative: String = "") -> [String] {
        var found: [String] = []
        let folder = relative.isEmpty ? root : root + "/" + relative
        for name in listFolder(folder) ?? [] {
            let child = relative.isEmpty ? name : relative + "/" + name
            if isFolder(root + "/" + child) {
                found += files(under: root, relative: child)
            } else {
                found.append(child)
            }
        }
        return found
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
