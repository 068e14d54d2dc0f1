import CZstd
import MappedIO
import Quantization
import StrictJSON
import TensorCore

/// The fixed parts of the `.wpk` layout (`Formats/wpk.md`).
public enum WPKLayout {
    public static let magic: [UInt8] = [0x89, 0x57, 0x50, 0x4B, 0x0D, 0x0A, 0x1A, 0x0A]
    public static let majorVersion: UInt16 = 1
    /// The newest minor version this code writes: 1.1 added int8 tensors (`quantization`),
    /// 1.2 ggml block tensors (`"scheme": "ggml"`).
    public static let minorVersion: UInt16 = 2
    public static let preambleSize = 64
    public static let alignment = 64
    public static let maximumHeaderSize = 256 << 20
}

/// How a tensor's bytes are stored in a `.wpk` file.
public enum WPKEncoding: Hashable, Sendable {
    case raw
    /// Byte planes of `width`-byte elements compressed with zstd; `size` logical bytes whose
    /// XXH64 is `rawChecksum`.
    case zstdByteGroup(width: Int, size: Int, rawChecksum: UInt64)
}

/// One row of the tensor table.
public struct WPKTensorEntry: Hashable, Sendable {
    public var descriptor: TensorDescriptor
    public var offset: Int
    public var length: Int
    public var checksum: UInt64
    public var encoding: WPKEncoding
    public var sourceName: String?
    public var sourceDType: DType?
    /// Set for an int8 tensor (format 1.1): `descriptor` is then the dequantised F32 view and
    /// the stored bytes are the layout's int8 values and scales.
    public var quantization: WPKQuantization? = nil
    /// Set for a ggml block tensor (format 1.2): `descriptor` is then the dequantised F32 view
    /// and the stored bytes are the blocks as ggml lays them out.
    public var blocks: WPKBlockStorage? = nil
}

/// How a ggml block tensor is stored (`Formats/wpk.md`, "ggml block tensors").
public struct WPKBlockStorage: Hashable, Sendable {
    public var type: GGMLType
    /// Values per stored row, a multiple of the type's block.
    public var rowLength: Int
    /// The type the conversion asked for, when ``type`` is a fallback.
    public var fallbackFrom: GGMLType?
    /// The error the tensor took when it was quantised, if recorded.
    public var metrics: QuantizationMetrics?

    public init(type: GGMLType, rowLength: Int, fallbackFrom: GGMLType? = nil, metrics: QuantizationMetrics? = nil) {
        self.type = type
        self.rowLength = rowLength
        self.fallbackFrom = fallbackFrom
        self.metrics = metrics
    }
}

/// How an int8 tensor is stored (`Formats/wpk.md`, "Quantised tensors").
public struct WPKQuantization: Hashable, Sendable {
    public var layout: Int8BlockLayout
    /// The error the tensor took when it was quantised (SNR, max abs, cosine), if recorded.
    public var metrics: QuantizationMetrics?

    public init(layout: Int8BlockLayout, metrics: QuantizationMetrics?) {
        self.layout = layout
        self.metrics = metrics
    }
}

/// A `.wpk` file, memory-mapped. Opening validates the preamble and the header and reads no
/// tensor data; raw tensors are served zero-copy, compressed ones are decompressed on request.
///
/// Int8 tensors (format 1.1) appear in ``tensors`` with their dequantised dtype, F32, and
/// ``tensor(named:)`` dequantises them into a new buffer, so every consumer of a
/// ``TensorStore`` reads them as floats; ``quantizedTensor(named:)`` gives the int8 values and
/// scales themselves, zero-copy, and ``entry(named:)`` the stored layout and error figures.
public final class WPKFile: QuantizedTensorStore, GGMLTensorStore, @unchecked Sendable {
    public let path: String
    public let file: MappedFile
    public let version: (major: UInt16, minor: UInt16)
    public let entries: [WPKTensorEntry]
    /// The header's `metadata` object.
    public let headerMetadata: JSONObject
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    public let dataOffset: Int
    public let dataLength: Int
    public var formatName: String { "wpk" }
    private let byName: [String: Int]

    /// Maps and validates `path`.
    public init(path: String) throws(FormatError) {
        self.path = path
        do {
            try FileCheck.requireRegularFile(path)
            file = try MappedFile(path: path)
        } catch { throw FormatError(error) }
        let parsed: Parsed
        do {
            parsed = try file.withUnsafeBytes { (raw) throws(FormatError) in try Self.parse(raw) }
        } catch {
            throw error.inFile(path)
        }
        version = parsed.version
        entries = parsed.entries
        headerMetadata = parsed.metadata
        dataOffset = parsed.dataOffset
        dataLength = parsed.dataLength
        tensors = parsed.entries.map(\.descriptor)
        var strings: [String: String] = [:]
        if case .object(let map)? = parsed.metadata["strings"] {
            for (k, v) in map { if case .string(let s) = v { strings[k] = s } }
        }
        metadata = strings
        byName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    public func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    /// The table row of `name`.
    public func entry(named name: String) -> WPKTensorEntry? { byName[name].map { entries[$0] } }

    /// The stored bytes of a tensor (compressed ones as stored).
    public func storedBytes(of entry: WPKTensorEntry) -> TensorBytes {
        let start = dataOffset + entry.offset
        return file.bytes(in: start..<(start + entry.length))!  // validated on open
    }

    /// The tensor's values. An int8 tensor is dequantised to F32 into a new buffer (O(n)); use
    /// ``quantizedTensor(named:)`` to read it without expanding it.
    public func tensor(named name: String) throws(FormatError) -> TensorView {
        guard let entry = entry(named: name) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        let stored = storedBytes(of: entry)
        if entry.blocks != nil {
            do { return try blockView(entry, stored).dequantized() } catch {
                throw FormatError(.corruptHeader, error.message, path: path, tensor: name)
            }
        }
        if entry.quantization != nil {
            do { return try quantizedView(entry, stored).dequantized() } catch {
                throw FormatError(.corruptHeader, error.message, path: path, tensor: name)
            }
        }
        switch entry.encoding {
        case .raw:
            return TensorView(descriptor: entry.descriptor, bytes: stored)
        case .zstdByteGroup(let width, let size, _):
            let buffer = try stored.withUnsafeBytes { (raw) throws(FormatError) in
                try ByteGroupCodec.decode(raw, width: width, size: size)
            }
            return TensorView(descriptor: entry.descriptor, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
        }
    }

    /// The int8 values and scales of `name`, zero-copy from the mapping; `nil` when the tensor
    /// is not quantised.
    ///
    /// - Throws: `FormatError` (`tensorNotFound`) when there is no such tensor.
    public func quantizedTensor(named name: String) throws(FormatError) -> QuantizedTensorView? {
        guard let entry = entry(named: name) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        guard entry.quantization != nil else { return nil }
        do { return try quantizedView(entry, storedBytes(of: entry)) } catch {
            throw FormatError(.corruptHeader, error.message, path: path, tensor: name)
        }
    }

    /// The ggml blocks of `name`, zero-copy from the mapping; `nil` when the tensor is not a
    /// block tensor.
    ///
    /// - Throws: `FormatError` (`tensorNotFound`) when there is no such tensor.
    public func ggmlTensor(named name: String) throws(FormatError) -> GGMLTensorView? {
        guard let entry = entry(named: name) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        guard entry.blocks != nil else { return nil }
        do { return try blockView(entry, storedBytes(of: entry)) } catch {
            throw FormatError(.corruptHeader, error.message, path: path, tensor: name)
        }
    }

    private func blockView(_ entry: WPKTensorEntry, _ stored: TensorBytes) throws(QuantizationError) -> GGMLTensorView {
        let b = entry.blocks!
        return try GGMLTensorView(descriptor: entry.descriptor, type: b.type, bytes: stored, rowLength: b.rowLength, metrics: b.metrics)
    }

    private func quantizedView(_ entry: WPKTensorEntry, _ stored: TensorBytes) throws(QuantizationError) -> QuantizedTensorView {
        let q = entry.quantization!
        return try QuantizedTensorView(descriptor: entry.descriptor, layout: q.layout, bytes: stored, metrics: q.metrics)
    }

    /// A problem `check` found.
    public struct Damage: Sendable, Hashable {
        public var tensor: String
        public var reason: String
    }

    /// Recomputes every tensor checksum (and decompresses compressed tensors to check their
    /// logical checksum). The header checksum was checked on open.
    public func verifyChecksums(progress: (any ProgressReporter)? = nil) -> [Damage] {
        var damage: [Damage] = []
        progress?.begin(total: dataLength)
        for entry in entries {
            let stored = storedBytes(of: entry)
            let actual = stored.withUnsafeBytes { XXHash64.hash($0) }
            if actual != entry.checksum {
                damage.append(
                    Damage(
                        tensor: entry.descriptor.name,
                        reason: "checksum mismatch: stored data hashes to \(hex(actual)), header says \(hex(entry.checksum))"))
            } else if case .zstdByteGroup(let width, let size, let rawChecksum) = entry.encoding {
                do {
                    let decoded = try stored.withUnsafeBytes { (raw) throws(FormatError) in try ByteGroupCodec.decode(raw, width: width, size: size) }
                    let logical = XXHash64.hash(decoded.bytes)
                    if logical != rawChecksum {
                        damage.append(
                            Damage(
                                tensor: entry.descriptor.name, reason: "decompressed data hashes to \(hex(logical)), header says \(hex(rawChecksum))")
                        )
                    }
                } catch {
                    damage.append(Damage(tensor: entry.descriptor.name, reason: error.message))
                }
            }
            stored.withUnsafeBytes { file.adviseDone(with: $0) }
            progress?.advance(by: entry.length)
        }
        progress?.finish()
        return damage
    }

    // MARK: - Parsing

    struct Parsed {
        var version: (major: UInt16, minor: UInt16)
        var metadata: JSONObject
        var entries: [WPKTensorEntry]
        var dataOffset: Int
        var dataLength: Int
    }

    /// Validates the preamble and header of a whole `.wpk` file held in memory, as opening the
    /// file does; no tensor data is read (the fuzz target and its regression tests use this).
    ///
    /// - Throws: `FormatError` with the code of the first rule the bytes break.
    /// - Complexity: O(header bytes).
    public static func validate(bytes: UnsafeRawBufferPointer) throws(FormatError) {
        _ = try parse(bytes)
    }

    /// Validates the preamble and header of a whole file's bytes (no tensor data is read).
    static func parse(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> Parsed {
        let reader = BinaryReader(bytes)
        guard let magic = reader.getBytes(at: 0, count: 8), Array(magic) == WPKLayout.magic else {
            throw FormatError(.badMagic, "not a .wpk file (bad magic)")
        }
        guard let major = reader.getInteger(at: 8, as: UInt16.self), let minor = reader.getInteger(at: 10, as: UInt16.self),
            let flags = reader.getInteger(at: 12, as: UInt32.self), let headerOffset = reader.getInteger(at: 16, as: UInt64.self),
            let headerLength = reader.getInteger(at: 24, as: UInt64.self), let dataOffset64 = reader.getInteger(at: 32, as: UInt64.self),
            let dataLength64 = reader.getInteger(at: 40, as: UInt64.self), let headerChecksum = reader.getInteger(at: 48, as: UInt64.self)
        else {
            throw FormatError(.corruptHeader, "file ends inside the 64-byte preamble")
        }
        guard major == WPKLayout.majorVersion else {
            throw FormatError(.unsupportedVersion, "unsupported .wpk version \(major).\(minor) (this reader knows version 1)")
        }
        guard flags == 0 else { throw FormatError(.corruptHeader, "unknown flags 0x\(String(flags, radix: 16)) in the preamble") }
        guard headerOffset == UInt64(WPKLayout.preambleSize) else {
            throw FormatError(.corruptHeader, "header offset is \(headerOffset), expected 64")
        }
        guard headerLength <= UInt64(WPKLayout.maximumHeaderSize) else {
            throw FormatError(.corruptHeader, "header length \(headerLength) exceeds 256 MiB")
        }
        let h = Int(headerLength)
        guard dataOffset64 <= UInt64(Int.max), dataLength64 <= UInt64(Int.max) else {
            throw FormatError(.corruptHeader, "data offset or length out of range")
        }
        let dataOffset = Int(dataOffset64), dataLength = Int(dataLength64)
        guard dataOffset >= WPKLayout.preambleSize + h, dataOffset % WPKLayout.alignment == 0 else {
            throw FormatError(.corruptHeader, "data offset \(dataOffset) is not a 64-byte boundary after the header")
        }
        let (end, overflow) = dataOffset.addingReportingOverflow(dataLength)
        guard !overflow, end == bytes.count else {
            throw FormatError(
                .corruptHeader,
                "file is \(bytes.count) bytes but its preamble describes \(overflow ? "more than Int.max" : String(end)) (truncated or extended)")
        }
        let headerBytes = reader.getBytes(at: WPKLayout.preambleSize, count: h)!
        guard XXHash64.hash(headerBytes) == headerChecksum else {
            throw FormatError(.checksumMismatch, "header checksum mismatch: the header is damaged")
        }
        let root: JSONValue
        do { root = try JSONParser.parse(headerBytes) } catch {
            throw FormatError(.corruptHeader, "header is not valid JSON: \(error.message)")
        }
        guard case .object(let object) = root, case .object(let metadata)? = object["metadata"], case .array(let rows)? = object["tensors"] else {
            throw FormatError(.corruptHeader, "header lacks the metadata object or the tensors array")
        }
        if let files = metadata["diffusers_files"] {
            // Written back by a diffusers export: every path must stay inside its folder.
            guard case .object(let map) = files else { throw FormatError(.corruptHeader, "diffusers_files is not an object") }
            for (relative, text) in map {
                try RelativePath.validate(relative, recordedIn: "diffusers_files")
                guard case .string = text else { throw FormatError(.corruptHeader, "diffusers_files entry '\(relative)' is not a string") }
            }
        }
        var entries: [WPKTensorEntry] = []
        entries.reserveCapacity(rows.count)
        var names = Set<String>()
        for (i, row) in rows.enumerated() {
            let entry = try parseEntry(row, index: i, dataLength: dataLength)
            guard names.insert(entry.descriptor.name).inserted else {
                throw FormatError(.duplicateTensor, "tensor '\(entry.descriptor.name)' appears twice in the header", tensor: entry.descriptor.name)
            }
            entries.append(entry)
        }
        if minor < 2, let blocks = entries.first(where: { $0.blocks != nil }) {
            throw FormatError(
                .corruptHeader, "the preamble says version 1.\(minor), but tensor '\(blocks.descriptor.name)' holds ggml blocks (a 1.2 feature)",
                tensor: blocks.descriptor.name)
        }
        if minor == 0, let quantized = entries.first(where: { $0.quantization != nil }) {
            throw FormatError(
                .corruptHeader, "the preamble says version 1.0, but tensor '\(quantized.descriptor.name)' is int8-block quantised (a 1.1 feature)",
                tensor: quantized.descriptor.name)
        }
        let sorted = entries.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.length > b.offset {
            throw FormatError(.corruptHeader, "tensors '\(a.descriptor.name)' and '\(b.descriptor.name)' overlap", tensor: b.descriptor.name)
        }
        return Parsed(version: (major, minor), metadata: metadata, entries: entries, dataOffset: dataOffset, dataLength: dataLength)
    }

    private static func parseEntry(_ row: JSONValue, index: Int, dataLength: Int) throws(FormatError) -> WPKTensorEntry {
        guard case .object(let f) = row, case .string(let name)? = f["name"], !name.isEmpty else {
            throw FormatError(.corruptHeader, "tensor entry \(index) has no name")
        }
        func bad(_ what: String) -> FormatError { FormatError(.corruptHeader, "tensor '\(name)': \(what)", tensor: name) }
        guard case .string(let dtypeName)? = f["dtype"], let dtype = DType(name: dtypeName) else { throw bad("unknown or missing dtype") }
        guard case .array(let dims)? = f["shape"] else { throw bad("missing shape") }
        var dimensions: [Int] = []
        for d in dims {
            guard let v = d.nonNegativeInt else { throw bad("shape holds \(d.serialized())") }
            dimensions.append(v)
        }
        let shape: Shape
        let logical: Int
        do {
            shape = try Shape(validating: dimensions)
            logical = try shape.byteCount(of: dtype)
        } catch { throw bad(error.message) }
        guard let offset = f["offset"]?.nonNegativeInt, let length = f["length"]?.nonNegativeInt else { throw bad("missing offset or length") }
        guard offset % WPKLayout.alignment == 0 else { throw bad("offset \(offset) is not 64-byte aligned") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= dataLength else { throw bad("data [\(offset), +\(length)) runs past the data section") }
        guard case .string(let checksumText)? = f["checksum"], let checksum = parseChecksum(checksumText) else {
            throw bad("missing or malformed checksum")
        }
        if case .object(let q)? = f["quantization"] {
            return try parseQuantizedEntry(
                name: name, dtype: dtype, shape: shape, fields: f, quantization: q, offset: offset, length: length, checksum: checksum)
        } else if f["quantization"] != nil, f["quantization"] != .null {
            throw bad("malformed quantization")
        }
        var encoding = WPKEncoding.raw
        if case .object(let e)? = f["encoding"] {
            switch e["kind"]?.stringValue {
            case "raw": encoding = .raw
            case "zstd-bytegroup":
                guard let width = e["width"]?.nonNegativeInt, [2, 4, 8].contains(width), width == dtype.byteWidth,
                    let size = e["size"]?.nonNegativeInt, size == logical,
                    case .string(let raw)? = e["raw_checksum"], let rawChecksum = parseChecksum(raw)
                else { throw bad("malformed zstd-bytegroup encoding") }
                encoding = .zstdByteGroup(width: width, size: size, rawChecksum: rawChecksum)
            default: throw bad("unknown encoding")
            }
        }
        if encoding == .raw, length != logical {
            throw bad("stores \(length) bytes but \(dtype.name) \(shape) needs \(logical)")
        }
        var sourceName: String?, sourceDType: DType?
        if case .object(let s)? = f["source"] {
            sourceName = s["name"]?.stringValue
            sourceDType = s["dtype"]?.stringValue.flatMap(DType.init(name:))
        }
        return WPKTensorEntry(
            descriptor: TensorDescriptor(name: name, dtype: dtype, shape: shape, byteCount: logical),
            offset: offset, length: length, checksum: checksum, encoding: encoding,
            sourceName: sourceName, sourceDType: sourceDType)
    }

    /// The source name and dtype a tensor records (`source`), where it records them.
    static func parseSource(_ value: JSONValue?) -> (name: String?, dtype: DType?) {
        guard case .object(let s)? = value else { return (nil, nil) }
        return (s["name"]?.stringValue, s["dtype"]?.stringValue.flatMap(DType.init(name:)))
    }

    static func parseChecksum(_ text: String) -> UInt64? {
        guard text.hasPrefix("xxh64:"), text.count == 22 else { return nil }
        return UInt64(text.dropFirst(6), radix: 16)
    }
}

/// `xxh64:` and 16 hex digits.
func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return "xxh64:" + String(repeating: "0", count: 16 - digits.count) + digits
}
