/// Relative paths a file records for files beside it (a `.wpk`'s `diffusers_files`, a shard
/// index's `weight_map`), checked before anything is read or written under them: a recorded
/// path must stay inside the folder it is written to.
public enum RelativePath {
    /// The longest recorded path accepted, in bytes (a component is at most 255, as on Linux).
    public static let maximumLength = 1024

    /// Whether `path` is a plain relative path: not empty, not absolute, every component a
    /// real name (no `..`, `.` or empty component, so no `//` or trailing `/`), no backslash,
    /// no control character (C0, DEL, C1) and no NUL, at most ``maximumLength`` bytes.
    public static func isSafe(_ path: String) -> Bool {
        guard !path.isEmpty, path.utf8.count <= maximumLength, !path.hasPrefix("/") else { return false }
        for scalar in path.unicodeScalars {
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\\" { return false }
        }
        for component in path.split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty || component == "." || component == ".." || component.utf8.count > 255 { return false }
        }
        return true
    }

    /// Refuses an unsafe recorded path with `.unsafePath`.
    ///
    /// - Parameter what: what records it, for the message (`"diffusers_files"`).
    public static func validate(_ path: String, recordedIn what: String) throws(FormatError) {
        guard isSafe(path) else {
            throw FormatError(.unsafePath, "\(what) names '\(path)', which is not a plain relative path inside the output folder")
        }
    }
}
