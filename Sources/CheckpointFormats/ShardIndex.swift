import StrictJSON
import TensorCore

/// The `weight_map` of a shard index (`*.safetensors.index.json`, `pytorch_model.bin.index.json`):
/// the shard files in the order they are first named, and which file each tensor is in.
struct ShardIndex {
    let indexPath: String
    /// Shard file names, each a plain name in the index's folder.
    let files: [String]
    /// Every tensor the index places, with the position of its file in `files`.
    let placement: [(tensor: String, file: Int)]
    /// The index's own `metadata` object, values as strings.
    let metadata: [String: String]

    /// - Throws: `.invalidHeaderJSON` when there is no `weight_map` object or an entry is not a
    ///   file name in the index's folder.
    init(_ root: JSONValue, indexPath: String) throws(FormatError) {
        self.indexPath = indexPath
        guard case .object(let object) = root, case .object(let weightMap)? = object["weight_map"] else {
            throw FormatError(.invalidHeaderJSON, "index has no weight_map object", path: indexPath)
        }
        var meta: [String: String] = [:]
        if case .object(let m)? = object["metadata"] {
            for (k, v) in m { meta[k] = v.stringValue ?? v.serialized() }
        }
        var files: [String] = []
        var fileIndex: [String: Int] = [:]
        var placement: [(tensor: String, file: Int)] = []
        for (tensor, value) in weightMap {
            guard case .string(let name) = value, !name.contains("/"), name != "..", name != ".", !name.isEmpty else {
                throw FormatError(
                    .invalidHeaderJSON, "weight_map entry for '\(tensor)' is not a file name in the index's folder", path: indexPath, tensor: tensor)
            }
            if fileIndex[name] == nil {
                fileIndex[name] = files.count
                files.append(name)
            }
            placement.append((tensor, fileIndex[name]!))
        }
        self.files = files
        self.placement = placement
        metadata = meta
    }

    /// The path of shard `file`, beside the index.
    func path(of file: Int) -> String {
        let folder = indexPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return folder.isEmpty ? files[file] : folder + "/" + files[file]
    }

    /// Which shard holds each tensor, and all their descriptors in shard order.
    ///
    /// - Throws: `.tensorNotFound` when a shard lacks a tensor the index places in it,
    ///   `.duplicateTensor` when two shards hold the same name.
    func assemble(_ shards: [any TensorStore]) throws(FormatError) -> (owner: [String: Int], tensors: [TensorDescriptor]) {
        for (tensor, file) in placement where shards[file].descriptor(named: tensor) == nil {
            throw FormatError(.tensorNotFound, "index places '\(tensor)' in \(files[file]), which lacks it", path: indexPath, tensor: tensor)
        }
        var owner: [String: Int] = [:]
        var all: [TensorDescriptor] = []
        for (i, shard) in shards.enumerated() {
            for d in shard.tensors {
                guard owner[d.name] == nil else {
                    throw FormatError(.duplicateTensor, "tensor '\(d.name)' is in two shards", path: indexPath, tensor: d.name)
                }
                owner[d.name] = i
                all.append(d)
            }
        }
        return (owner, all)
    }
}
