import MappedIO
import StrictJSON
import TensorCore

/// A model split over several files of one format, described by a shard index
/// (`{"metadata": {...}, "weight_map": {tensor: shard file}}`): `*.safetensors.index.json` over
/// safetensors files, `pytorch_model.bin.index.json` over PyTorch `.bin` files. One reader for
/// both: the index, the shard files beside it, which shard holds each tensor.
public final class ShardedStore<Shard: TensorStore>: TensorStore, @unchecked Sendable {
    public let indexPath: String
    public let shards: [Shard]
    public let tensors: [TensorDescriptor]
    /// The index's `metadata`, then each shard's own keys the index does not set.
    public let metadata: [String: String]
    public let formatName: String
    private let owner: [String: Int]
    /// The largest shard index read (64 MiB: an index of a million tensors is about 60 MB).
    public static var maximumIndexSize: Int { 64 << 20 }

    /// Reads the index and opens every shard it names with `open`.
    ///
    /// - Throws: `.tooLarge` for an index over ``maximumIndexSize``, `.invalidHeaderJSON`/
    ///   `.duplicateKey` for a malformed index, `.tensorNotFound` when a shard lacks a tensor the
    ///   index places in it, `.duplicateTensor` when two shards hold the same name, I/O and shard
    ///   errors as they come.
    init(indexPath: String, formatName: String, open: (String) throws(FormatError) -> Shard) throws(FormatError) {
        self.indexPath = indexPath
        self.formatName = formatName
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
            throw FormatError(
                error.code == .duplicateKey ? .duplicateKey : .invalidHeaderJSON, "index is not valid JSON: \(error.message)", path: indexPath)
        }
        let shardIndex = try ShardIndex(root, indexPath: indexPath)
        var opened: [Shard] = []
        for file in shardIndex.files.indices {
            let path = shardIndex.path(of: file)
            do { try FileCheck.requireRegularFile(path) } catch { throw FormatError(error) }
            opened.append(try open(path))
        }
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

    public func tensor(named name: String) throws -> TensorView {
        guard let i = owner[name] else { throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: indexPath, tensor: name) }
        return try shards[i].tensor(named: name)
    }
}

/// Safetensors shards described by a `*.safetensors.index.json`.
public typealias ShardedSafetensors = ShardedStore<SafetensorsFile>

/// PyTorch `.bin` shards described by a `pytorch_model.bin.index.json`.
public typealias ShardedTorchCheckpoint = ShardedStore<TorchCheckpoint>

extension ShardedStore where Shard == SafetensorsFile {
    /// Reads the index and maps every safetensors shard it names.
    public convenience init(indexPath: String) throws(FormatError) {
        try self.init(indexPath: indexPath, formatName: "safetensors") { (path) throws(FormatError) in try SafetensorsFile(path: path) }
    }
}

extension ShardedStore where Shard == TorchCheckpoint {
    /// Reads the index and opens every `.bin` shard it names (restricted unpickling unless
    /// `allowUnsafeGlobals`).
    public convenience init(indexPath: String, allowUnsafeGlobals: Bool) throws(FormatError) {
        try self.init(indexPath: indexPath, formatName: "ckpt") { (path) throws(FormatError) in
            try TorchCheckpoint(path: path, allowUnsafeGlobals: allowUnsafeGlobals)
        }
    }
}
