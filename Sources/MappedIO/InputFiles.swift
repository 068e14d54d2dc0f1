#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Every file this process has opened as an input, so that no writer can replace one.
///
/// `MappedFile` records each file it maps (device, inode and resolved path); a command can also
/// record its input argument before any tensor is read (`record(_:)`, a folder included). The
/// atomic writers ask `refuseOverwriting(_:)` before they start and again before they rename, so
/// an output that is the input — the same path, a hard link to it, a symbolic link to it, or a
/// folder that holds it — is refused whatever `--force` says.
public enum InputFiles {
    struct Entry: Hashable {
        var device: UInt64
        var inode: UInt64
        /// The resolved absolute path (no symbolic links), for the folder-contains-input test.
        var resolvedPath: String
    }

    private static let entries = Mutex<Set<Entry>>([])

    /// Records `path` (a file or a folder) as an input of this process. Paths that cannot be
    /// resolved are ignored: they cannot be an existing output either.
    public static func record(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        record(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), path: path)
    }

    static func record(device: UInt64, inode: UInt64, path: String) {
        guard let resolved = resolve(path) else { return }
        let entry = Entry(device: device, inode: inode, resolvedPath: resolved)
        entries.withLock { _ = $0.insert(entry) }
    }

    /// Throws `.outputIsInput` when writing `output` would replace an input of this process:
    /// `output` is (a link to) an input file, or a folder that holds an input, or an input
    /// folder itself or a folder inside one that is being replaced.
    public static func refuseOverwriting(_ output: String) throws(IOError) {
        var info = stat()
        guard stat(output, &info) == 0 else { return }
        let device = UInt64(info.st_dev), inode = UInt64(info.st_ino)
        let known = entries.withLock { $0 }
        if known.contains(where: { $0.device == device && $0.inode == inode }) {
            throw IOError(.outputIsInput, path: output, call: "open")
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR, let folder = resolve(output) else { return }
        let prefix = folder.hasSuffix("/") ? folder : folder + "/"
        if let held = known.first(where: { $0.resolvedPath.hasPrefix(prefix) }) {
            throw IOError(.outputIsInput, path: output, call: "open", detail: "it holds the input \(held.resolvedPath)")
        }
    }

    /// The absolute path of `path` with every symbolic link resolved, or `nil`.
    static func resolve(_ path: String) -> String? {
        guard let raw = realpath(path, nil) else { return nil }
        defer { free(raw) }
        return String(cString: raw)
    }
}
