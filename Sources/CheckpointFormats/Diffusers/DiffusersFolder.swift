import MappedIO
import StrictJSON
import TensorCore

/// A diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, …) read as
/// one store: each component's tensors appear under `<component>.` + the name its file uses.
/// Component weights may be safetensors (single or sharded with an index), or PyTorch `.bin`
/// files read through ``TorchCheckpoint``, plain or as a `variant` (`*.fp16.safetensors`).
public final class DiffusersFolder: TensorStore, @unchecked Sendable {
    /// One component's weights.
    public struct ComponentFile: Sendable {
        public var component: String
        /// The weights file (or shard index) inside the folder, relative.
        public var file: String
        public var store: any TensorStore
    }

    public let path: String
    public let components: [ComponentFile]
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    /// The small text files of the folder (configs, tokenizer files), relative path → bytes,
    /// kept so an export can write them back.
    public let auxiliaryFiles: [(path: String, bytes: [UInt8])]
    public var formatName: String { "diffusers" }
    private let owner: [String: (Int, String)]

    /// Components whose weights are read (others, such as a safety checker, are too).
    static let weightFileStems = ["diffusion_pytorch_model", "model", "pytorch_model"]
    static let auxiliaryNames = [
        "config.json", "scheduler_config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "tokenizer.json", "added_tokens.json", "preprocessor_config.json", "generation_config.json",
    ]
    /// The largest configuration or tokenizer file read (16 MiB; CLIP's `tokenizer.json` is 2 MB):
    /// a larger one is an error (`.tooLarge`), never silently left out.
    public static let maximumAuxiliarySize = 16 << 20

    /// Opens the folder at `path`.
    ///
    /// - Parameters:
    ///   - variant: prefer `*.<variant>.*` weight files (`fp16`); without it, plain files are
    ///     preferred and a variant is used where a component has nothing else.
    ///   - allowUnsafeGlobals: passed to ``TorchCheckpoint`` for `.bin` components.
    /// - Throws: `.unrecognizedFormat` when no component has weights, or a component's error.
    public init(path: String, variant: String? = nil, allowUnsafeGlobals: Bool = false) throws(FormatError) {
        var root = path
        while root.count > 1, root.hasSuffix("/") { root.removeLast() }
        self.path = root
        var aux: [(String, [UInt8])] = []
        var meta: [String: String] = [:]
        var listed: [String] = []
        if let index = try Self.readSmall(root + "/model_index.json") {
            aux.append(("model_index.json", index))
            let value: JSONValue
            do { value = try index.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) } } catch {
                throw FormatError(.invalidHeaderJSON, "model_index.json is not valid JSON: \(error)", path: root + "/model_index.json")
            }
            guard let object = value.objectValue else {
                throw FormatError(.invalidHeaderJSON, "model_index.json is not an object", path: root + "/model_index.json")
            }
            if let name = object["_class_name"]?.stringValue { meta["diffusers.pipeline"] = name }
            if let version = object["_diffusers_version"]?.stringValue { meta["diffusers.version"] = version }
            for (key, entry) in object where !key.hasPrefix("_") {
                if let pair = entry.arrayValue, pair.count == 2, pair[0] != .null { listed.append(key) }
            }
        }
        let folders = (listFolder(root) ?? []).filter { isFolder(root + "/" + $0) && !$0.hasPrefix(".") }
        let componentNames = listed.isEmpty ? folders : folders.filter { listed.contains($0) }
        var opened: [ComponentFile] = []
        for name in componentNames {
            let folder = root + "/" + name
            for file in listFolder(folder) ?? [] where Self.auxiliaryNames.contains(file) {
                if let bytes = try Self.readSmall(folder + "/" + file) { aux.append((name + "/" + file, bytes)) }
            }
            if let (file, store) = try Self.openWeights(in: folder, variant: variant, allowUnsafeGlobals: allowUnsafeGlobals) {
                opened.append(ComponentFile(component: name, file: name + "/" + file, store: store))
            }
        }
        guard !opened.isEmpty else {
            throw FormatError(
                .unrecognizedFormat,
                "no component of this diffusers folder has weights (looked for \(Self.weightFileStems.joined(separator: ", ")) files)", path: root)
        }
        var all: [TensorDescriptor] = []
        var owner: [String: (Int, String)] = [:]
        for (i, c) in opened.enumerated() {
            for d in c.store.tensors {
                let name = c.component + "." + d.name
                guard owner[name] == nil else { throw FormatError(.duplicateTensor, "tensor '\(name)' appears twice", path: root, tensor: name) }
                owner[name] = (i, d.name)
                var renamed = d
                renamed.name = name
                all.append(renamed)
            }
            meta["diffusers.\(c.component).file"] = c.file
        }
        components = opened
        tensors = all
        metadata = meta
        auxiliaryFiles = aux
        self.owner = owner
    }

    public func descriptor(named name: String) -> TensorDescriptor? {
        guard let (i, inner) = owner[name], var d = components[i].store.descriptor(named: inner) else { return nil }
        d.name = name
        return d
    }

    public func tensor(named name: String) throws -> TensorView {
        guard let (i, inner) = owner[name] else { throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name) }
        let view = try components[i].store.tensor(named: inner)
        var d = view.descriptor
        d.name = name
        return TensorView(descriptor: d, bytes: view.bytes)
    }

    /// The scheduler configuration, if the folder has one.
    public var schedulerConfig: JSONObject? { jsonFile("scheduler/scheduler_config.json") }

    /// A parsed JSON auxiliary file.
    public func jsonFile(_ relative: String) -> JSONObject? {
        guard let bytes = auxiliaryFiles.first(where: { $0.path == relative })?.bytes else { return nil }
        return (try? JSONParser.parse(bytes))?.objectValue
    }

    // MARK: - Choosing weight files

    /// The weights of one component folder: the file name and its store, or `nil` when none.
    static func openWeights(in folder: String, variant: String?, allowUnsafeGlobals: Bool) throws(FormatError) -> (String, any TensorStore)? {
        let files = Set(listFolder(folder) ?? [])
        var variants: [String?] = []
        if let variant { variants.append(variant) }
        variants.append(nil)
        for name in files.sorted() {
            // Any other variant present (fp16, bf16, …) comes last.
            let parts = name.split(separator: ".")
            if parts.count >= 3, weightFileStems.contains(String(parts[0])), !variants.contains(String(parts[1])) {
                variants.append(String(parts[1]))
            }
        }
        for v in variants {
            let infix = v.map { ".\($0)" } ?? ""
            for stem in weightFileStems {
                let single = stem + infix + ".safetensors"
                if files.contains(single) { return (single, try SafetensorsFile(path: folder + "/" + single)) }
                let index = stem + ".safetensors.index" + infix + ".json"
                let indexAlt = stem + infix + ".safetensors.index.json"
                for i in [indexAlt, index] where files.contains(i) { return (i, try ShardedSafetensors(indexPath: folder + "/" + i)) }
            }
            for stem in weightFileStems {
                let bin = stem + infix + ".bin"
                if files.contains(bin) {
                    try requireRegularFile(folder + "/" + bin)
                    return (bin, try TorchCheckpoint(path: folder + "/" + bin, allowUnsafeGlobals: allowUnsafeGlobals))
                }
                for i in [stem + infix + ".bin.index.json", stem + ".bin.index" + infix + ".json"] where files.contains(i) {
                    return (i, try ShardedTorchCheckpoint(indexPath: folder + "/" + i, allowUnsafeGlobals: allowUnsafeGlobals))
                }
            }
        }
        return nil
    }

    /// The bytes of a small text file, or `nil` when there is no such file.
    ///
    /// - Throws: `.tooLarge` beyond ``maximumAuxiliarySize``; `.io` for a file that exists but
    ///   cannot be read, or is a FIFO, socket or device (refused before it is opened).
    static func readSmall(_ path: String) throws(FormatError) -> [UInt8]? {
        let size: Int
        do throws(IOError) {
            switch try FileCheck.kind(of: path) {
            case .regularFile(let bytes): size = bytes
            case .directory: return nil
            case .other: throw IOError(.notRegularFile, path: path, call: "stat")
            }
        } catch {
            if error.code == .notFound { return nil }
            throw FormatError(error)
        }
        guard size <= maximumAuxiliarySize else {
            throw FormatError(
                .tooLarge, "\(size) bytes, more than the \(maximumAuxiliarySize >> 20) MiB a configuration or tokenizer file may have", path: path)
        }
        let file: MappedFile
        do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
        guard file.size <= maximumAuxiliarySize else {
            throw FormatError(
                .tooLarge, "\(file.size) bytes, more than the \(maximumAuxiliarySize >> 20) MiB a configuration or tokenizer file may have",
                path: path)
        }
        return file.withUnsafeBytes { Array($0) }
    }

    /// Refuses a weight file that is not a regular file before a reader opens it.
    static func requireRegularFile(_ path: String) throws(FormatError) {
        do { try FileCheck.requireRegularFile(path) } catch { throw FormatError(error) }
    }
}
