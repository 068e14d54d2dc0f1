import StrictJSON
import TensorCore

/// How one tensor is stored, beyond its descriptor: the bytes it takes, the dtype it had before
/// conversion, and its int8 or ggml block quantisation record.
public struct StoredTensorRecord: Sendable, Hashable {
    /// Bytes the tensor takes in the file (compressed or quantised size).
    public var storedByteCount: Int
    /// The dtype the tensor had in the source it was converted from.
    public var sourceDType: DType?
    /// Set for an int8 tensor (its block layout and the error it took).
    public var quantization: WPKQuantization?
    /// Set for a tensor stored as ggml blocks (its type, row length, fallback and error).
    public var blocks: WPKBlockStorage?

    public init(storedByteCount: Int, sourceDType: DType?, quantization: WPKQuantization?, blocks: WPKBlockStorage? = nil) {
        self.storedByteCount = storedByteCount
        self.sourceDType = sourceDType
        self.quantization = quantization
        self.blocks = blocks
    }
}

/// A store that carries more than tensors: a structured header (a `.wpk` records the detection,
/// the source layout and the conversion), small files beside the weights (a diffusers folder's
/// configurations and tokenizers) and per-tensor storage records. Code above the formats asks
/// these questions through the protocol, never by downcasting to a concrete store.
public protocol RecordedTensorStore: TensorStore {
    /// The structured header; empty for formats without one.
    var headerMetadata: JSONObject { get }
    /// Small text files that belong with the weights, relative path → bytes.
    var auxiliaryFiles: [(path: String, bytes: [UInt8])] { get }
    /// How `name` is stored; `nil` when the store records nothing about it.
    func storageRecord(of name: String) -> StoredTensorRecord?
}

extension RecordedTensorStore {
    public var headerMetadata: JSONObject { JSONObject() }
    public var auxiliaryFiles: [(path: String, bytes: [UInt8])] { [] }
    public func storageRecord(of name: String) -> StoredTensorRecord? { nil }

    /// An auxiliary JSON file parsed as an object (`nil` when absent or not an object).
    public func auxiliaryJSON(_ path: String) -> JSONObject? {
        guard let bytes = auxiliaryFiles.first(where: { $0.path == path })?.bytes else { return nil }
        return (try? JSONParser.parse(bytes))?.objectValue
    }
}

extension TensorStore {
    /// This store's records, or `nil` for a store that keeps none (a plain safetensors file).
    public var records: (any RecordedTensorStore)? { self as? any RecordedTensorStore }
}

extension WPKFile: RecordedTensorStore {
    /// The diffusers configuration and tokenizer files recorded at conversion.
    public var auxiliaryFiles: [(path: String, bytes: [UInt8])] {
        var files: [(path: String, bytes: [UInt8])] = []
        for (path, value) in headerMetadata["diffusers_files"]?.objectValue ?? JSONObject() {
            if let text = value.stringValue { files.append((path, Array(text.utf8))) }
        }
        return files
    }

    public func storageRecord(of name: String) -> StoredTensorRecord? {
        entry(named: name).map {
            StoredTensorRecord(storedByteCount: $0.length, sourceDType: $0.sourceDType, quantization: $0.quantization, blocks: $0.blocks)
        }
    }

    public func sourceName(of name: String) -> String? {
        guard let e = entry(named: name) else { return nil }
        return e.sourceName ?? name
    }

    public func storedDType(of name: String) -> DType? {
        guard let e = entry(named: name) else { return nil }
        return e.quantization == nil ? e.descriptor.dtype : .i8
    }
}

extension DiffusersFolder: RecordedTensorStore {}
