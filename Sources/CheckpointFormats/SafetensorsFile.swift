import MappedIO
import StrictJSON
import TensorCore

#if canImport(Glibc)
import Glibc
#endif

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
    /// Absolute byte ranges of the tensors' data, in the order of `tensors`.
    private let ranges: [Range<Int>]
    private let byName: [String: Int]

    /// Maps and validates `path`.
    ///
    /// - Throws: `FormatError` with the code of the first rule the file breaks, or `.io`
    ///   (a missing, unreadable or non-regular file).
    /// - Complexity: O(header + n log n) for n tensors; memory proportional to the tensors.
    public init(path: String) throws(FormatError) {
        self.path = path
        do {
            try FileCheck.requireRegularFile(path)
            file = try MappedFile(path: path)
        } catch { throw FormatError(error) }
        let header: SafetensorsHeader
        do {
            header = try file.withUnsafeBytes { (raw) throws(FormatError) in try SafetensorsHeader(validating: raw) }
        } catch {
            throw error.inFile(path)
        }
        headerLength = header.headerLength
        metadata = header.metadata
        let dataStart = 8 + header.headerLength
        tensors = header.entries.map(\.descriptor)
        ranges = header.entries.map { (dataStart + $0.dataRange.lowerBound)..<(dataStart + $0.dataRange.upperBound) }
        byName = header.indexByName
    }

    public func descriptor(named name: String) -> TensorDescriptor? {
        byName[name].map { tensors[$0] }
    }

    /// The tensor's bytes, zero-copy from the mapping.
    public func tensor(named name: String) throws(FormatError) -> TensorView {
        guard let index = byName[name], let bytes = file.bytes(in: ranges[index]) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        return TensorView(descriptor: tensors[index], bytes: bytes)
    }

    /// The absolute byte range of a tensor's data in the file.
    public func fileRange(of name: String) -> Range<Int>? { byName[name].map { ranges[$0] } }
}

/// The validated header of a safetensors file.
public struct SafetensorsHeader: Sendable {
    public struct Entry: Sendable {
        public var descriptor: TensorDescriptor
        /// Offsets relative to the start of the data section.
        public var dataRange: Range<Int>
    }

    /// The deepest nesting a header may have: the reference parses with serde_json, which
    /// refuses the 128th nested container (its recursion limit).
    public static let maximumDepth = 127

    public let headerLength: Int
    public let metadata: [String: String]
    /// Entries sorted by data offset.
    public let entries: [Entry]
    /// The position in `entries` of each tensor name.
    public let indexByName: [String: Int]

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
        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        var readIndex: [String: Int] = [:]
        do {
            try Self.readHeader(headerBytes, metadata: &metadata, entries: &entries, index: &readIndex)
        } catch let error as JSONError {
            switch error.code {
            case .invalidUTF8: throw FormatError(.invalidHeaderUTF8, "header is not valid UTF-8")
            default: throw FormatError(.invalidHeaderJSON, "header is not valid JSON: \(error.message)")
            }
        } catch let error as FormatError {
            throw error
        } catch {
            throw FormatError(.invalidHeaderJSON, "header is not valid JSON: \(error)")
        }
        // Data-offset order (files are usually written in it already: then nothing moves, and
        // the name index built while reading is reused as it is).
        func before(_ a: Entry, _ b: Entry) -> Bool {
            (a.dataRange.lowerBound, a.dataRange.upperBound, a.descriptor.name) < (b.dataRange.lowerBound, b.dataRange.upperBound, b.descriptor.name)
        }
        if !zip(entries, entries.dropFirst()).allSatisfy({ !before($1, $0) }) {
            var order = Array(entries.indices)
            order.sort { before(entries[$0], entries[$1]) }
            var position = [Int](repeating: 0, count: order.count)
            for (sorted, original) in order.enumerated() { position[original] = sorted }
            entries = order.map { entries[$0] }
            readIndex = readIndex.mapValues { position[$0] }
        }
        var expectedStart = 0
        for entry in entries {
            let name = entry.descriptor.name
            guard entry.dataRange.lowerBound == expectedStart else {
                let what = entry.dataRange.lowerBound > expectedStart ? "leaves a hole before it" : "overlaps the tensor before it"
                throw FormatError(
                    .invalidOffset, "tensor '\(name)' starts at \(entry.dataRange.lowerBound) and \(what) (expected \(expectedStart))", tensor: name)
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
            let detail =
                !overflow && end < bytes.count
                ? "\(bytes.count - end) bytes follow the last tensor"
                : "the tensors need \(overflow ? "more than Int.max" : String(end)) bytes but the file has \(bytes.count)"
            throw FormatError(.incompleteBuffer, "data section is not exactly covered: \(detail)")
        }
        self.headerLength = n
        self.metadata = metadata
        self.entries = entries
        self.indexByName = readIndex
    }

    /// One streaming pass over the header's JSON: tensor entries and metadata are built as they
    /// are read and nothing else is kept, so memory is proportional to the tensors, not to what
    /// the text nests. Unknown fields of a tensor entry are skipped (the reference ignores them).
    private static func readHeader(
        _ bytes: UnsafeRawBufferPointer, metadata: inout [String: String], entries: inout [Entry],
        index: inout [String: Int]
    ) throws {
        var reader = try JSONReader(bytes, maximumDepth: maximumDepth)
        // Every tensor entry names "data_offsets" once: counting them (at memchr speed) sizes the
        // name index and the entries exactly, so a million names are hashed once, not at every growth.
        let expected = Self.occurrences(of: "\"data_offsets\"", in: bytes)
        index.reserveCapacity(expected)
        entries.reserveCapacity(expected)
        let first = try reader.next()
        guard first == .beginObject else {
            // Valid JSON that is not an object, or not JSON at all: read the rest to tell which.
            if case .beginArray = first { try reader.skipToEndOfContainer() }
            guard try reader.next() == .end else { throw JSONError(.syntax, "unexpected bytes after the JSON document") }
            throw FormatError(.headerNotObject, "header is a JSON \(first.typeName), not an object")
        }
        var sawMetadata = false
        while true {
            let token = try reader.next()
            if token == .endObject { break }
            guard case .key(let name) = token else { throw JSONError(.syntax, "expected an object key") }
            if name == "__metadata__" {
                guard !sawMetadata else { throw FormatError(.duplicateKey, "header repeats the key '__metadata__'", tensor: name) }
                sawMetadata = true
                try readMetadata(&reader, into: &metadata)
                continue
            }
            guard index.updateValue(entries.count, forKey: name) == nil else {
                throw FormatError(.duplicateKey, "header repeats the key '\(name)'", tensor: name)
            }
            entries.append(try readEntry(&reader, name: name))
        }
        guard try reader.next() == .end else { throw JSONError(.syntax, "unexpected bytes after the JSON document") }
    }

    /// How many times `needle` (at least one byte) occurs in `bytes`, found with `memchr` on its
    /// first byte.
    private static func occurrences(of needle: String, in bytes: UnsafeRawBufferPointer) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        let pattern = Array(needle.utf8)
        var count = 0
        var offset = 0
        pattern.withUnsafeBytes { p in
            while offset < bytes.count, let hit = memchr(base + offset, Int32(pattern[0]), bytes.count - offset) {
                let at = UnsafeRawPointer(hit) - base
                if bytes.count - at >= p.count, memcmp(base + at, p.baseAddress!, p.count) == 0 {
                    count += 1
                    offset = at + p.count
                } else {
                    offset = at + 1
                }
            }
        }
        return count
    }

    private static func readMetadata(_ reader: inout JSONReader, into metadata: inout [String: String]) throws {
        let open = try reader.next()
        guard open == .beginObject else {
            throw FormatError(.invalidMetadata, "__metadata__ is a \(open.typeName), not an object of strings")
        }
        while true {
            let token = try reader.next()
            if token == .endObject { return }
            guard case .key(let key) = token else { throw JSONError(.syntax, "expected an object key") }
            let item = try reader.next()
            guard case .string(let text) = item else {
                throw FormatError(.invalidMetadata, "__metadata__ value for '\(key)' is a \(item.typeName), not a string")
            }
            guard metadata.updateValue(text, forKey: key) == nil else {
                throw FormatError(.duplicateKey, "header repeats the key '\(key)'", tensor: key)
            }
        }
    }

    /// Reads an array of non-negative integers, refusing anything else at its first token.
    private static func readIntegers(
        _ reader: inout JSONReader, name: String, field: String, limit: Int,
        overflow: FormatError.Code
    ) throws -> [Int] {
        let open = try reader.next()
        guard open == .beginArray else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)': \(field) is a \(open.typeName), not an array", tensor: name)
        }
        var values: [Int] = []
        while true {
            let token = try reader.next()
            switch token {
            case .endArray:
                return values
            case .int(let v) where v >= 0:
                guard values.count < limit else {
                    throw FormatError(.invalidTensorEntry, "tensor '\(name)': \(field) has more than \(limit) entries", tensor: name)
                }
                values.append(Int(v))
            case .uint(let v):
                throw FormatError(overflow, "tensor '\(name)': \(field) value \(v) overflows", tensor: name)
            default:
                throw FormatError(
                    .invalidTensorEntry, "tensor '\(name)': \(field) holds a \(token.typeName), not a non-negative integer", tensor: name)
            }
        }
    }

    /// `data_offsets`: exactly two non-negative integers, read without an array.
    private static func readOffsets(_ reader: inout JSONReader, name: String) throws -> (Int, Int) {
        let open = try reader.next()
        guard open == .beginArray else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)': data_offsets is a \(open.typeName), not an array", tensor: name)
        }
        var values: (Int, Int) = (0, 0)
        var count = 0
        while true {
            let token = try reader.next()
            switch token {
            case .endArray:
                guard count == 2 else {
                    throw FormatError(.invalidTensorEntry, "tensor '\(name)': data_offsets must be an array of two integers", tensor: name)
                }
                return values
            case .int(let v) where v >= 0:
                guard count < 2 else {
                    throw FormatError(.invalidTensorEntry, "tensor '\(name)': data_offsets must be an array of two integers", tensor: name)
                }
                if count == 0 { values.0 = Int(v) } else { values.1 = Int(v) }
                count += 1
            case .uint(let v):
                throw FormatError(.invalidOffset, "tensor '\(name)': data_offsets value \(v) overflows", tensor: name)
            default:
                throw FormatError(
                    .invalidTensorEntry, "tensor '\(name)': data_offsets holds a \(token.typeName), not a non-negative integer", tensor: name)
            }
        }
    }

    private static func readEntry(_ reader: inout JSONReader, name: String) throws -> Entry {
        let open = try reader.next()
        guard open == .beginObject else {
            throw FormatError(.invalidTensorEntry, "tensor '\(name)' is a JSON \(open.typeName), not an object", tensor: name)
        }
        var dtype: DType?
        var shape: [Int]?
        var bounds: (Int, Int)?
        while true {
            let token = try reader.next()
            if token == .endObject { break }
            guard case .key(let field) = token else { throw JSONError(.syntax, "expected an object key") }
            func once<T>(_ value: T?) throws {
                guard value == nil else { throw FormatError(.duplicateKey, "tensor '\(name)' repeats the key '\(field)'", tensor: name) }
            }
            switch field {
            case "dtype":
                try once(dtype)
                let value = try reader.next()
                guard case .string(let dtypeName) = value else {
                    throw FormatError(.invalidTensorEntry, "tensor '\(name)': dtype is a \(value.typeName), not a string", tensor: name)
                }
                guard let known = DType(name: dtypeName) else {
                    throw FormatError(.unknownDType, "tensor '\(name)' has unknown dtype '\(dtypeName)'", tensor: name)
                }
                dtype = known
            case "shape":
                try once(shape)
                shape = try readIntegers(&reader, name: name, field: "shape", limit: Shape.maximumRank, overflow: .validationOverflow)
            case "data_offsets":
                try once(bounds)
                bounds = try readOffsets(&reader, name: name)
            default:
                try reader.skipValue()
            }
        }
        guard let dtype, let shape, let bounds else {
            let missing = [("dtype", dtype == nil), ("shape", shape == nil), ("data_offsets", bounds == nil)]
                .filter(\.1).map(\.0).joined(separator: ", ")
            throw FormatError(.invalidTensorEntry, "tensor '\(name)' lacks \(missing)", tensor: name)
        }
        guard bounds.0 <= bounds.1 else {
            throw FormatError(.invalidOffset, "tensor '\(name)' ends (\(bounds.1)) before it begins (\(bounds.0))", tensor: name)
        }
        return Entry(
            descriptor: TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: bounds.1 - bounds.0),
            dataRange: bounds.0..<bounds.1)
    }
}
