import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Every file this process has open as an input, so that no writer can replace one.
///
/// `MappedFile` registers each file it maps (device, inode and resolved path) for as long as
/// the mapping lives. The atomic writers ask `refuseOverwriting(_:)` before they start and
/// again before they rename, so an output that is an open input — the same path, a hard link
/// to it, a symbolic link to it, or a folder that holds it — is refused whatever `--force`
/// says. A file whose readers are all gone may be written again (a long-running program that
/// rewrites a model it read earlier).
public enum InputFiles {
    struct Entry: Hashable {
        var device: UInt64
        var inode: UInt64
        /// The resolved absolute path (no symbolic links), for the folder-contains-input test.
        var resolvedPath: String
    }

    /// Keeps one input registered while it lives.
    public final class Registration: Sendable {
        let entry: Entry
        init(_ entry: Entry) { self.entry = entry }
        deinit { InputFiles.remove(entry) }
    }

    private static let entries = Mutex<[Entry: Int]>([:])

    /// Registers `path` (a file or a folder) as an input until the returned value goes away;
    /// `nil` when the path cannot be resolved (it cannot be an existing output either).
    public static func register(_ path: String) -> Registration? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return register(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), path: path)
    }

    static func register(device: UInt64, inode: UInt64, path: String) -> Registration? {
        guard let resolved = resolve(path) else { return nil }
        let entry = Entry(device: device, inode: inode, resolvedPath: resolved)
        entries.withLock { $0[entry, default: 0] += 1 }
        return Registration(entry)
    }

    static func remove(_ entry: Entry) {
        entries.withLock { table in
            if let count = table[entry], count > 1 { table[entry] = count - 1 } else { table[entry] = nil }
        }
    }

    /// Throws `.outputIsInput` when writing `output` would replace an open input: `output` is
    /// (a link to) an input file, or a folder that holds one.
    public static func refuseOverwriting(_ output: String) throws(IOError) {
        var info = stat()
        guard stat(output, &info) == 0 else { return }
        let device = UInt64(info.st_dev), inode = UInt64(info.st_ino)
        let known = entries.withLock { Array($0.keys) }
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
