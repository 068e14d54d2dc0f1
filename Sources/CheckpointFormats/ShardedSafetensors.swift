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
    /// The largest shard index read (64 MiB: an index of a million tensors is about 60 MB).
    public static let maximumIndexSize = 64 << 20

    /// Reads the index and maps every shard it names.
    ///
    /// - Throws: `.invalidHeaderJSON`/`.invalidMetadata` for a malformed index,
    ///   `.tensorNotFound` when a shard lacks a tensor the index places in it,
    ///   `.duplicateTensor` when two shards hold the same name, shard errors as they come.
    public init(indexPath: String) throws(FormatError) {
        self.indexPath = indexPath
        let index: MappedFile
        do {
            try FileCheck.requireRegularFile(indexPath)
            index = try MappedFile(path: indexPath)
        } catch { throw FormatError(error) }
        guard index.size <= Self.maximumIndexSize else {
            throw FormatError(.tooLarge, "shard index is \(index.size) bytes, more than \(Self.maximumIndexSize >> 20) MiB", path: indexPath)
        }
        let root: JSONValue
        do {
            root = try index.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }
        } catch {
            throw FormatError(error.code == .duplicateKey ? .duplicateKey : .invalidHeaderJSON, "index is not valid JSON: \(error.message)", path: indexPath)
        }
        let shardIndex = try ShardIndex(root, indexPath: indexPath)
        var opened: [SafetensorsFile] = []
        for file in shardIndex.files.indices { opened.append(try SafetensorsFile(path: shardIndex.path(of: file))) }
        let (owner, all) = try shardIndex.assemble(opened)
        var meta = shardIndex.metadata
        for shard in opened {
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
