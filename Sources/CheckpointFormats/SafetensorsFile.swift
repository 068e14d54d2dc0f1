import MappedIO
import StrictJSON
import TensorCore

/// A `.safetensors` file, memory-mapped and validated as the reference crate validates it
/// (https://github.com/huggingface/safetensors, `Metadata::validate`), with duplicate keys
/// rejected explicitly. Tensors are served zero-copy from the mapping; data need not be aligned.
public final class SafetensorsFile: TensorStore, @unchecked Sendable {
    /// The largest header the reference crate accepts.
    public static let maximumHeaderSize = 100_000_000

    public let path: String
    public let file: MappedFile
    /// Bytes of the JSON header (the `N` of the layout).
    public let headerLength: Int
    /// Every tensor in data-offset order.
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    public var formatName: String { "safetensors" }
    private let ranges: [String: Range<Int>]
    private let byName: [String: Int]

    /// Maps and validates `path`.
    ///
    /// - Throws: `FormatError` with the code of the first rule the file breaks, or `.io`.
    public init(path: String) throws(FormatError) {
        self.path = path
        do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
        let header: SafetensorsHeader
        do {
            header = try file.withUnsafeBytes { (raw) throws(FormatError) in try SafetensorsHeader(validating: raw) }
        } catch {
            throw error.inFile(path)
        }
        headerLength = header.headerLength
        metadata = header.metadata
        tensors = header.entries.map(\.descriptor)
        let dataStart = 8 + header.headerLength
        ranges = Dictionary(uniqueKeysWithValues: header.entries.map {
            ($0.descriptor.name, (dataStart + $0.dataRange.lowerBound)..<(dataStart + $0.dataRange.upperBound))
        })
        byName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    public func descriptor(named name: String) -> TensorDescriptor? {
        byName[name].map { tensors[$0] }
    }

    /// The tensor's bytes, zero-copy from the mapping.
    public func tensor(named name: String) throws(FormatError) -> TensorView {
        guard let index = byName[name], let range = ranges[name], let bytes = file.bytes(in: range) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        return TensorView(descriptor: tensors[index], bytes: bytes)
    }

    /// The absolute byte range of a tensor's data in the file.
    public func fileRange(of name: String) -> Range<Int>? { ranges[name] }
}

/// The validated header of a safetensors file.
public struct SafetensorsHeader: Sendable {
    public struct Entry: Sendable {
        public var descriptor: TensorDescriptor
        /// Offsets relative to the start of the data section.
        public var dataRange: Range<Int>
    }

    public let headerLength: Int
    public let metadata: [String: String]
    /// Entries sorted by data offset.
    public let entries: [Entry]

    /// Validates a whole file's bytes: header and the data section's coverage.
    ///
    /// The checks and their order follow the reference crate, each with its own code:
    /// `headerTooSmall`, `headerTooLarge`, `invalidHeaderLength`, `invalidHeaderUTF8`,
    /// `invalidHeaderJSON`, `duplicateKey`, `headerNotObject`, `invalidMetadata`,
    /// `unknownDType`, `invalidTensorEntry`, `invalidOffset`, `validationOverflow`,
    /// `misalignedSlice`, `tensorInvalidInfo`, `incompleteBuffer`.
    public init(validating bytes: UnsafeRawBufferPointer) throws(FormatError) {
        let reader = BinaryReader(bytes)
        guard let declared = reader.getInteger(at: 0, as: UInt64.self) else {
            throw FormatError(.headerTooSmall, "file is \(bytes.count) bytes, too small for a safetensors header")
        }
        guard declared <= UInt64(SafetensorsFile.maximumHeaderSize) else {
            throw FormatError(.headerTooLarge, "header length \(declared) exceeds the 100 MB limit")
        }
        let n = Int(declared)
        guard let headerBytes = reader.getBytes(at: 8, count: n) else {
            throw FormatError(.invalidHeaderLength, "header length \(n) runs past the end of the \(bytes.count)-byte file")
        }
        let root: JSONValue
        do {
            root = try JSONParser.parse(headerBytes)
        } catch {
            switch error.code {
            case .invalidUTF8: throw FormatError(.invalidHeaderUTF8, "header is not valid UTF-8")
            case .duplicateKey: throw FormatError(.duplicateKey, "header repeats the key '\(error.key ?? "?")'", tensor: error.key)
            default: throw FormatError(.invalidHeaderJSON, "header is not valid JSON: \(error.message)")
            }
        }
        guard case .object(let object) = root else {
            throw FormatError(.headerNotObject, "header is a JSON \(root.typeName), not an object")
        }
        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        entries.reserveCapacity(object.count)
        for (name, value) in object {
            if name == "__metadata__" {
                guard case .object(let map) = value else {
                    throw FormatError(.invalidMetadata, "__metadata__ is a \(value.typeName), not an object of strings")
                }
                for (key, item) in map {
                    guard case .string(let text) = item else {
                        throw FormatError(.invalidMetadata, "__metadata__ value for '\(key)' is a \(item.typeName), not a string")
                    }
                    metadata[key] = text
                }
                continue
            }
            entries.append(try Self.entry(name: name, value: value))
        }
        entries.sort { ($0.dataRange.lowerBound, $0.dataRange.upperBound, $0.descriptor.name) < ($1.dataRange.lowerBound, $1.dataRange.upperBound, $1.descriptor.name) }
        var expectedStart = 0
        for entry in entries {
            let name = entry.descriptor.name
            guard entry.dataRange.lowerBound == expectedStart else {
                let what = entry.dataRange.lowerBound > expectedStart ? "leaves a hole before it" : "overlaps the tensor before it"
                throw FormatError(.invalidOffset, "tensor '\(name)' starts at \(entry.dataRange.lowerBound) and \(what) (expected \(expectedStart))", tensor: name)
            }
            expectedStart = entry.dataRange.upperBound
            let size: Int
            do {
                size = try entry.descriptor.shape.byteCount(of: entry.descriptor.dtype)
            } catch {
                if error.code == .misalignedSubByte {
                    throw FormatError(.misalignedSlice, "tensor '\(name)': \(error.message)", tensor: name)
                }
                throw FormatError(.validationOverflow, "tensor '\(name)': \(error.message)", tensor: name)
            }
            guard size == entry.dataRange.count else {
                throw FormatError(
                    .tensorInvalidInfo,
                    "tensor '\(name)' has \(entry.dataRange.count) bytes but \(entry.descriptor.dtype.name) \(entry.descriptor.shape) needs \(size)",
                    tensor: name)
            }
        }
        let (end, overflow) = expectedStart.addingReportingOverflow(8 + n)
        guard !overflow, end == bytes.count else {
            let detail = !overflow && end < bytes.count
                ? "\(bytes.count - end) bytes follow the last tensor"
                : "the tensors need \(overflow ? "more than Int.max" : String(end)) bytes but the file has \(bytes.count)"
            throw FormatError(.incompleteBuffer, "data section is not exactly covered: \(detail)")
        }
        self.headerLength = n
        self.metadata = metadata
        self.entries = entries.map { entry in
            var e = entry
            e.descriptor.byteCount = entry.dataRange.count
            return e
        }
    }

    private static func entry(name: String, value: JSONValue) throws(FormatError) -> Entry {
        guard case .object(let fields) = value else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)' is a JSON \(value.typeName), not an object", tensor: name)
        }
        guard let dtypeValue = fields["dtype"], let shapeValue = fields["shape"], let offsetsValue = fields["data_offsets"] else {
            let missing = ["dtype", "shape", "data_offsets"].filter { fields[$0] == nil }.joined(separator: ", ")
            throw FormatError(.invalidTensorEntry, "tensor '\(name)' lacks \(missing)", tensor: name)
        }
        guard case .string(let dtypeName) = dtypeValue else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)': dtype is a \(dtypeValue.typeName), not a string", tensor: name)
        }
        guard let dtype = DType(name: dtypeName) else {
            throw FormatError(.unknownDType, "tensor '\(name)' has unknown dtype '\(dtypeName)'", tensor: name)
        }
        guard case .array(let dims) = shapeValue else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)': shape is a \(shapeValue.typeName), not an array", tensor: name)
        }
        var shape: [Int] = []
        for d in dims {
            switch d {
            case .int(let v) where v >= 0: shape.append(Int(v))
            case .uint: throw FormatError(.validationOverflow, "tensor '\(name)': dimension \(d.serialized()) overflows", tensor: name)
            default: throw FormatError(.invalidTensorEntry, "tensor '\(name)': shape holds \(d.serialized()), not a non-negative integer", tensor: name)
            }
        }
        guard shape.count <= Shape.maximumRank else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)' has \(shape.count) dimensions", tensor: name)
        }
        guard case .array(let offsets) = offsetsValue, offsets.count == 2 else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)': data_offsets must be an array of two integers", tensor: name)
        }
        var bounds: [Int] = []
        for o in offsets {
            switch o {
            case .int(let v) where v >= 0: bounds.append(Int(v))
            case .uint: throw FormatError(.invalidOffset, "tensor '\(name)': data offset \(o.serialized()) is beyond any file", tensor: name)
            default: throw FormatError(.invalidTensorEntry, "tensor '\(name)': data_offsets holds \(o.serialized()), not a non-negative integer", tensor: name)
            }
        }
        guard bounds[0] <= bounds[1] else {
            throw FormatError(.invalidOffset, "tensor '\(name)' ends (\(bounds[1])) before it begins (\(bounds[0]))", tensor: name)
        }
        return Entry(
            descriptor: TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: bounds[1] - bounds[0]),
            dataRange: bounds[0]..<bounds[1])
    }
}
