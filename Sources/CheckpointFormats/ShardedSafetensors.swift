import MappedIO
import StrictJSON
import TensorCore

/// A model split over several safetensors files, described by a `*.safetensors.index.json`
/// (`{"metadata": {...}, "weight_map": {tensor: shard file}}`).
public final class ShardedSafetensors: TensorStore, @unchecked Sendable {
    public let indexPath: String
    public let shards: [SafetensorsFile]
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    public var formatName: String { "safetensors" }
    private let owner: [String: Int]

    /// Reads the index and maps every shard it names.
    ///
    /// - Throws: `.invalidHeaderJSON`/`.invalidMetadata` for a malformed index,
    ///   `.tensorNotFound` when a shard lacks a tensor the index places in it,
    ///   `.duplicateTensor` when two shards hold the same name, shard errors as they come.
    public init(indexPath: String) throws(FormatError) {
        self.indexPath = indexPath
        let index: MappedFile
        do { index = try MappedFile(path: indexPath) } catch { throw FormatError(error) }
        let root: JSONValue
        do {
            root = try index.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }
        } catch {
            throw FormatError(error.code == .duplicateKey ? .duplicateKey : .invalidHeaderJSON, "index is not valid JSON: \(error.message)", path: indexPath)
        }
        guard case .object(let object) = root, case .object(let weightMap)? = object["weight_map"] else {
            throw FormatError(.invalidHeaderJSON, "index has no weight_map object", path: indexPath)
        }
        var meta: [String: String] = [:]
        if case .object(let m)? = object["metadata"] {
            for (k, v) in m { meta[k] = v.stringValue ?? v.serialized() }
        }
        let folder = indexPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        var files: [String] = []
        var fileIndex: [String: Int] = [:]
        var placement: [(tensor: String, file: Int)] = []
        for (tensor, value) in weightMap {
            guard case .string(let name) = value, !name.contains("/"), name != "..", !name.isEmpty else {
                throw FormatError(.invalidHeaderJSON, "weight_map entry for '\(tensor)' is not a file name in the index's folder", path: indexPath, tensor: tensor)
            }
            if fileIndex[name] == nil {
                fileIndex[name] = files.count
                files.append(name)
            }
            placement.append((tensor, fileIndex[name]!))
        }
        var opened: [SafetensorsFile] = []
        for name in files {
            opened.append(try SafetensorsFile(path: folder.isEmpty ? name : folder + "/" + name))
        }
        for (tensor, file) in placement where opened[file].descriptor(named: tensor) == nil {
            throw FormatError(.tensorNotFound, "index places '\(tensor)' in \(files[file]), which lacks it", path: indexPath, tensor: tensor)
        }
        var owner: [String: Int] = [:]
        var all: [TensorDescriptor] = []
        for (i, shard) in opened.enumerated() {
            for d in shard.tensors {
                guard owner[d.name] == nil else {
                    throw FormatError(.duplicateTensor, "tensor '\(d.name)' is in two shards", path: indexPath, tensor: d.name)
                }
                owner[d.name] = i
                all.append(d)
            }
            for (k, v) in shard.metadata where meta[k] == nil { meta[k] = v }
        }
        shards = opened
        tensors = all
        metadata = meta
        self.owner = owner
    }

    public func descriptor(named name: String) -> TensorDescriptor? { owner[name].flatMap { shards[$0].descriptor(named: name) } }

    public func tensor(named name: String) throws(FormatError) -> TensorView {
        guard let i = owner[name] else { throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: indexPath, tensor: name) }
        return try shards[i].tensor(named: name)
    }
}
