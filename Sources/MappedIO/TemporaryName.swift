import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The names of the temporary files and folders the atomic writers make beside a target.
///
/// A temporary is `.NAME.tmp-XXXXXX` in the target's folder, where NAME is the target's name
/// (cut short, at a character boundary, when the whole would exceed the 255-byte name limit)
/// and XXXXXX six random characters. Files are written unnamed (`O_TMPFILE`) where the file
/// system allows, so an interrupted write leaves nothing; elsewhere, and for folders, a killed
/// process can leave such a temporary behind, and it is safe to delete.
enum TemporaryName {
    /// The longest file name Linux file systems take (`NAME_MAX`).
    static let maximumNameBytes = 255
    /// The characters added around the target's name: `.` before, `.tmp-XXXXXX` after.
    static let suffix = ".tmp-"

    /// The folder holding `path` and the template `FOLDER/.NAME.tmp-XXXXXX` for `mkstemp`/`mkdtemp`.
    static func template(for path: String) -> (folder: String, template: String) {
        let file = FilePath(path)
        let folder = file.removingLastComponent()
        let folderString = folder.isEmpty ? "." : folder.string
        return (folderString, folderString + "/" + prefix(for: file.lastComponent?.string ?? "output") + "XXXXXX")
    }

    /// `.NAME.tmp-` with NAME shortened so that the prefix plus six characters fits in a name.
    static func prefix(for name: String) -> String {
        let budget = maximumNameBytes - 1 - suffix.utf8.count - 6
        var kept = Substring(name)
        while kept.utf8.count > budget { kept = kept.dropLast() }
        return "." + kept + suffix
    }

    /// A fresh random name `FOLDER/.NAME.tmp-XXXXXX` (not created).
    static func random(for path: String) -> String {
        let (folder, _) = template(for: path)
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let tail = String((0..<6).map { _ in letters.randomElement()! })
        return folder + "/" + prefix(for: FilePath(path).lastComponent?.string ?? "output") + tail
    }
}
