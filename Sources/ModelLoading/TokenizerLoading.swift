import DiffusionEngine
import Foundation

extension CLIPTokenizer {
    /// The tokenizer of `folder` (`vocab.json` + `merges.txt`, or `tokenizer.json`, as a
    /// diffusers model's `tokenizer/`), or the bundled CLIP vocabulary when `folder` is `nil`.
    ///
    /// - Throws: ``ModelLoadingError`` `.missingFile` when the folder or its files do not exist.
    public static func open(folder: String?) throws -> CLIPTokenizer {
        guard let folder else { return try CLIPTokenizer.bundled() }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
            throw ModelLoadingError(.missingFile, "no such tokenizer folder", path: folder)
        }
        let has = { (name: String) in FileManager.default.fileExists(atPath: folder + "/" + name) }
        guard (has("vocab.json") && has("merges.txt")) || has("tokenizer.json") else {
            throw ModelLoadingError(.missingFile, "holds neither vocab.json with merges.txt nor tokenizer.json", path: folder)
        }
        return try CLIPTokenizer(directory: URL(fileURLWithPath: folder))
    }
}
