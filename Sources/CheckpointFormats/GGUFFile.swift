import MappedIO
import Quantization
import TensorCore

/// A GGUF metadata value (ggml-org/ggml `docs/gguf.md`, `gguf_type`).
public indirect enum GGUFValue: Sendable, Equatable {
    case unsigned(UInt64, type: UInt32)
    case signed(Int64, type: UInt32)
    case float(Double, type: UInt32)
    case bool(Bool)
    case string(String)
    /// An array: its element type, its length, and the elements when there are at most
    /// ``GGUFFile/Limits/materializedArrayLength`` of them (larger arrays are validated, not kept).
    case array(elementType: UInt32, count: Int, values: [GGUFValue]?)

    /// The value as an integer, for any integer type.
    public var integer: Int64? {
        switch self {
        case .unsigned(let v, _): v <= UInt64(Int64.max) ? Int64(v) : nil
        case .signed(let v, _): v
        default: nil
        }
    }

    /// A short text form, for `TensorStore.metadata`.
    public var text: String {
        switch self {
        case .unsigned(let v, _): String(v)
        case .signed(let v, _): String(v)
        case .float(let v, _): String(v)
        case .bool(let b): b ? "true" : "false"
        case .string(let s): s
        case .array(_, let count, let values):
            if let values, count <= 16 { "[" + values.map(\.text).joined(separator: ", ") + "]" } else { "[\(count) values]" }
        }
    }
}

/// A `.gguf` file (GGUF version 2 or 3, little-endian), memory-mapped and validated before any
/// tensor byte is touched; plain tensors are served zero-copy, block tensors (``GGMLType``) as
/// zero-copy ``GGMLTensorView``s or dequantised F32.
///
/// Two dialects are read (`Formats/gguf.md`): stable-diffusion.cpp's whole-model files, whose
/// tensor names are the LDM single file's, and ComfyUI-GGUF's UNet-only files, whose names lack
/// the `model.diffusion_model.` prefix and whose `general.architecture` names the family. The
/// reader gives ComfyUI-GGUF's names the prefix back, so every file presents the names the LDM
/// single file would have, and applies `comfy.gguf.orig_shape.<name>` to reshaped tensors.
public final class GGUFFile: GGMLTensorStore, @unchecked Sendable {
    public let path: String
    public let file: MappedFile
    public let header: GGUFHeader
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    public var formatName: String { "gguf" }
    private let byName: [String: Int]

    /// Maps and validates `path`.
    ///
    /// - Throws: `FormatError` with the code of the first rule the file breaks, or `.io`.
    public init(path: String) throws(FormatError) {
        self.path = path
        do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
        do {
            header = try file.withUnsafeBytes { (raw) throws(FormatError) in try GGUFHeader(validating: raw) }
        } catch {
            throw error.inFile(path)
        }
        tensors = header.entries.map(\.descriptor)
        byName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
        var metadata: [String: String] = [:]
        for (key, value) in header.metadata { metadata[key] = value.text }
        metadata["gguf.dialect"] = header.dialect.rawValue
        self.metadata = metadata
    }

    public func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    /// The stored entry of a tensor (its ggml type, stored name and dimensions, file range).
    public func entry(named name: String) -> GGUFHeader.Entry? { byName[name].map { header.entries[$0] } }

    /// The tensor: zero-copy for plain types, dequantised to F32 (a new buffer) for block types.
    public func tensor(named name: String) throws(FormatError) -> TensorView {
        guard let index = byName[name], let bytes = file.bytes(in: header.entries[index].fileRange) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        let entry = header.entries[index]
        guard entry.type.isBlockQuantized else {
            return TensorView(descriptor: entry.descriptor, bytes: bytes)
        }
        do {
            return try view(entry, bytes).dequantized()
        } catch {
            throw FormatError(error.code == .unsupportedDType ? .unsupportedDType : .tensorInvalidInfo, error.message, path: path, tensor: name)
        }
    }

    /// The blocks of a block-type tensor, zero-copy; `nil` for plain types.
    public func ggmlTensor(named name: String) throws(FormatError) -> GGMLTensorView? {
        guard let index = byName[name], let bytes = file.bytes(in: header.entries[index].fileRange) else {
            throw FormatError(.tensorNotFound, "no tensor '\(name)'", path: path, tensor: name)
        }
        let entry = header.entries[index]
        guard entry.type.isBlockQuantized else { return nil }
        do {
            return try view(entry, bytes)
        } catch {
            throw FormatError(.tensorInvalidInfo, error.message, path: path, tensor: name)
        }
    }

    private func view(_ entry: GGUFHeader.Entry, _ bytes: TensorBytes) throws(QuantizationError) -> GGMLTensorView {
        try GGMLTensorView(descriptor: entry.descriptor, type: entry.type, bytes: bytes, rowLength: entry.storedShape.dimensions.last)
    }

    /// The absolute byte range of a tensor's data in the file.
    public func fileRange(of name: String) -> Range<Int>? { entry(named: name)?.fileRange }
}

/// The validated header of a GGUF file: metadata, tensor table, data section.
public struct GGUFHeader: Sendable {
    /// Bounds the reader enforces before reading or allocating anything.
    public enum Limits {
        public static let tensorCount = 1 << 20
        public static let metadataCount = 1 << 20
        /// Longest string value (metadata strings such as chat templates).
        public static let stringLength = 1 << 24
        /// Longest key or tensor name.
        public static let nameLength = 1 << 16
        public static let arrayLength = 1 << 28
        /// Arrays inside arrays, at most this deep.
        public static let nesting = 3
        /// Arrays up to this length are kept in ``GGUFValue/array(elementType:count:values:)``.
        public static let materializedArrayLength = 4096
        public static let alignment = 1 << 20
        /// ggml's `GGML_MAX_DIMS`.
        public static let dimensions = 4
    }

    /// Which program's conventions the file follows.
    public enum Dialect: String, Sendable {
        /// Whole-model files with LDM tensor names (stable-diffusion.cpp's `convert`).
        case stableDiffusionCPP = "stable-diffusion.cpp"
        /// UNet-only files without the `model.diffusion_model.` prefix (ComfyUI-GGUF).
        case comfyUI = "comfyui-gguf"
        /// Anything else: names as stored.
        case generic
    }

    /// `general.architecture` values ComfyUI-GGUF writes for image models.
    public static let comfyArchitectures: Set<String> = [
        "sd1", "sd2", "sdxl", "sd3", "flux", "aura", "ltxv", "hyvid", "wan", "cosmos", "lumina2", "mochi", "hidream", "chroma", "qwen_image",
    ]
    static let ldmPrefixes = ["model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.", "text_encoders."]
    public static let comfyPrefix = "model.diffusion_model."

    public struct Entry: Sendable {
        /// The tensor as presented: name (prefixed for ComfyUI-GGUF), logical shape, and for
        /// block types dtype F32 and the dequantised size.
        public var descriptor: TensorDescriptor
        /// The name as stored.
        public var storedName: String
        /// The shape as stored (ggml's `ne` reversed).
        public var storedShape: Shape
        public var type: GGMLType
        /// Offset from the start of the data section.
        public var offset: Int
        /// Stored bytes.
        public var byteCount: Int
        /// Absolute byte range in the file.
        public var fileRange: Range<Int>
    }

    public let version: UInt32
    public let alignment: Int
    /// Metadata in file order.
    public let metadata: [(String, GGUFValue)]
    public let entries: [Entry]
    /// Where the data section starts.
    public let dataOffset: Int
    public let dialect: Dialect

    public func value(_ key: String) -> GGUFValue? { metadata.first { $0.0 == key }?.1 }

    /// Validates a whole file's bytes; each rule has its own `FormatError` code (`Formats/gguf.md`).
    public init(validating bytes: UnsafeRawBufferPointer) throws(FormatError) {
        var reader = GGUFReader(BinaryReader(bytes))
        guard let magic = reader.binary.getBytes(at: 0, count: 4), magic.elementsEqual("GGUF".utf8) else {
            throw FormatError(.badMagic, "not a GGUF file (no 'GGUF' magic)")
        }
        reader.binary.offset = 4
        let version = try reader.u32("the version")
        guard version == 2 || version == 3 else {
            if version.byteSwapped == 2 || version.byteSwapped == 3 {
                throw FormatError(.unsupportedVersion, "big-endian GGUF files are not supported")
            }
            throw FormatError(.unsupportedVersion, "unsupported GGUF version \(version) (2 and 3 are read)")
        }
        let tensorCount = try reader.count("the tensor count", limit: Limits.tensorCount, minimumBytesEach: 32)
        let metadataCount = try reader.count("the metadata count", limit: Limits.metadataCount, minimumBytesEach: 13)
        var metadata: [(String, GGUFValue)] = []
        var keys = Set<String>()
        for _ in 0..<metadataCount {
            let key = try reader.string("a metadata key", limit: Limits.nameLength)
            guard keys.insert(key).inserted else {
                throw FormatError(.duplicateKey, "metadata key '\(key)' appears twice")
            }
            let type = try reader.u32("the type of '\(key)'")
            metadata.append((key, try reader.value(type: type, depth: 0, key: key)))
        }
        var alignment = 32
        if let value = metadata.first(where: { $0.0 == "general.alignment" })?.1 {
            guard case .unsigned(let a, let type) = value, type == 4, a > 0, a <= UInt64(Limits.alignment), a & (a - 1) == 0 else {
                throw FormatError(
                    .ggufInvalidAlignment, "general.alignment is \(value.text); it must be a uint32 power of two up to \(Limits.alignment)")
            }
            alignment = Int(a)
        }
        var raw: [(name: String, shape: [Int], type: GGMLType, offset: Int, size: Int)] = []
        raw.reserveCapacity(tensorCount)
        for _ in 0..<tensorCount {
            let name = try reader.string("a tensor name", limit: Limits.nameLength)
            guard !name.isEmpty else { throw FormatError(.invalidTensorEntry, "a tensor has an empty name") }
            let rank = try reader.u32("the dimension count of '\(name)'")
            guard rank >= 1, rank <= UInt32(Limits.dimensions) else {
                throw FormatError(.ggufInvalidDimensions, "tensor '\(name)' has \(rank) dimensions (1 to \(Limits.dimensions))", tensor: name)
            }
            var ne: [Int] = []
            for _ in 0..<Int(rank) {
                let d = try reader.u64("a dimension of '\(name)'")
                guard d <= UInt64(Int64.max) else {
                    throw FormatError(.validationOverflow, "tensor '\(name)' has dimension \(d)", tensor: name)
                }
                ne.append(Int(d))
            }
            // The product in PyTorch order, left to right, as every consumer of the shape computes
            // it (a 0 dimension after an overflowing pair does not hide the overflow).
            let count: Int
            do { count = try Shape(ne.reversed()).elementCount() } catch {
                throw FormatError(.validationOverflow, "tensor '\(name)': element count overflows", tensor: name)
            }
            let type = GGMLType(rawValue: try reader.u32("the type of '\(name)'"))
            guard type.isKnown else {
                throw FormatError(.unknownDType, "tensor '\(name)' has unknown ggml type id \(type.rawValue)", tensor: name)
            }
            guard type.isReadable else {
                throw FormatError(.unsupportedDType, "tensor '\(name)': unsupported type \(type.name)", tensor: name)
            }
            guard ne[0] % type.blockValues == 0 else {
                throw FormatError(
                    .ggufBlockMisfit, "tensor '\(name)': rows of \(ne[0]) do not divide into \(type.name) blocks of \(type.blockValues)", tensor: name
                )
            }
            guard let size = type.byteCount(values: count) else {
                throw FormatError(.validationOverflow, "tensor '\(name)': byte size overflows", tensor: name)
            }
            let offset = try reader.u64("the offset of '\(name)'")
            guard offset <= UInt64(Int.max) else {
                throw FormatError(.ggufTensorPastEnd, "tensor '\(name)' starts at \(offset), beyond any file", tensor: name)
            }
            guard Int(offset) % alignment == 0 else {
                throw FormatError(.invalidOffset, "tensor '\(name)' starts at \(offset), not a multiple of the alignment \(alignment)", tensor: name)
            }
            raw.append((name, Array(ne.reversed()), type, Int(offset), size))
        }
        let headerEnd = reader.binary.offset
        let (padded, overflow) = headerEnd.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw FormatError(.validationOverflow, "header size overflows") }
        let dataOffset = padded / alignment * alignment

        // Names: the dialect decides whether ComfyUI-GGUF's stripped names get their prefix back.
        let architecture: String? = if case .string(let s)? = metadata.first(where: { $0.0 == "general.architecture" })?.1 { s } else { nil }
        let hasLDMNames = raw.contains { t in Self.ldmPrefixes.contains { t.name.hasPrefix($0) } }
        let dialect: Dialect =
            hasLDMNames
            ? .stableDiffusionCPP
            : (architecture.map(Self.comfyArchitectures.contains) ?? false) ? .comfyUI : .generic
        let values = Dictionary(metadata, uniquingKeysWith: { a, _ in a })

        var entries: [Entry] = []
        entries.reserveCapacity(raw.count)
        var names = Set<String>()
        for t in raw {
            let name = dialect == .comfyUI ? Self.comfyPrefix + t.name : t.name
            guard names.insert(name).inserted else {
                throw FormatError(.duplicateTensor, "tensor '\(name)' appears twice", tensor: name)
            }
            let stored = Shape(t.shape)
            var logical = stored
            if let original = values["comfy.gguf.orig_shape." + t.name] {
                logical = try Self.originalShape(original, of: t.name, count: stored.count)
            }
            let (start, o1) = dataOffset.addingReportingOverflow(t.offset)
            let (end, o2) = start.addingReportingOverflow(t.size)
            guard !o1, !o2, end <= bytes.count else {
                throw FormatError(
                    .ggufTensorPastEnd, "tensor '\(name)' (\(t.size) bytes at \(t.offset)) runs past the end of the \(bytes.count)-byte file",
                    tensor: name)
            }
            let dtype = t.type.plainDType ?? .f32
            let logicalBytes = t.type.isBlockQuantized ? stored.count * 4 : t.size
            entries.append(
                Entry(
                    descriptor: TensorDescriptor(name: name, dtype: dtype, shape: logical, byteCount: logicalBytes),
                    storedName: t.name, storedShape: stored, type: t.type, offset: t.offset, byteCount: t.size, fileRange: start..<end))
        }
        let ordered = entries.indices.sorted { (entries[$0].offset, entries[$0].byteCount) < (entries[$1].offset, entries[$1].byteCount) }
        var previousEnd = 0
        var previousName = ""
        for i in ordered {
            let e = entries[i]
            guard e.offset >= previousEnd else {
                throw FormatError(.ggufTensorOverlap, "tensor '\(e.descriptor.name)' overlaps '\(previousName)'", tensor: e.descriptor.name)
            }
            if e.byteCount > 0 {
                previousEnd = e.offset + e.byteCount
                previousName = e.descriptor.name
            }
        }
        self.version = version
        self.alignment = alignment
        self.metadata = metadata
        self.entries = entries
        self.dataOffset = dataOffset
        self.dialect = dialect
    }

    /// ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>`: an integer array (it writes INT32) in
    /// PyTorch order whose product is the stored element count.
    static func originalShape(_ value: GGUFValue, of name: String, count: Int) throws(FormatError) -> Shape {
        guard case .array(_, let n, let items?) = value, n >= 1, n <= 8 else {
            throw FormatError(.ggufInvalidOriginalShape, "comfy.gguf.orig_shape.\(name) is not an array of 1 to 8 integers", tensor: name)
        }
        var dims: [Int] = []
        var product = 1
        for item in items {
            guard let d = item.integer, d >= 0 else {
                throw FormatError(.ggufInvalidOriginalShape, "comfy.gguf.orig_shape.\(name) holds \(item.text), not a dimension", tensor: name)
            }
            let (p, overflow) = product.multipliedReportingOverflow(by: Int(d))
            guard !overflow else { throw FormatError(.ggufInvalidOriginalShape, "comfy.gguf.orig_shape.\(name) overflows", tensor: name) }
            product = p
            dims.append(Int(d))
        }
        guard product == count else {
            throw FormatError(
                .ggufInvalidOriginalShape, "comfy.gguf.orig_shape.\(name) \(dims) has \(product) values; the tensor has \(count)", tensor: name)
        }
        return Shape(dims)
    }
}

/// Cursor over GGUF's little-endian header, every read bounds-checked.
struct GGUFReader {
    var binary: BinaryReader
    init(_ binary: BinaryReader) { self.binary = binary }

    mutating func u32(_ what: String) throws(FormatError) -> UInt32 {
        guard let v = binary.readInteger(as: UInt32.self) else { throw truncated(what) }
        return v
    }

    mutating func u64(_ what: String) throws(FormatError) -> UInt64 {
        guard let v = binary.readInteger(as: UInt64.self) else { throw truncated(what) }
        return v
    }

    func truncated(_ what: String) -> FormatError {
        FormatError(.ggufTruncated, "the file ends inside \(what) (at byte \(binary.offset) of \(binary.bytes.count))")
    }

    /// A count, bounded by `limit` and by what the rest of the file can hold.
    mutating func count(_ what: String, limit: Int, minimumBytesEach: Int) throws(FormatError) -> Int {
        let n = try u64(what)
        guard n <= UInt64(limit) else { throw FormatError(.ggufCountLimit, "\(what) is \(n); at most \(limit) are read") }
        guard Int(n) <= binary.remaining / minimumBytesEach else {
            throw FormatError(.ggufTruncated, "\(what) is \(n), more than the rest of the file can hold")
        }
        return Int(n)
    }

    mutating func string(_ what: String, limit: Int) throws(FormatError) -> String {
        let n = try u64("the length of \(what)")
        guard n <= UInt64(limit) else { throw FormatError(.ggufStringTooLong, "\(what) is \(n) bytes long; at most \(limit) are read") }
        guard let bytes = binary.readBytes(count: Int(n)) else { throw truncated(what) }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw FormatError(.invalidHeaderUTF8, "\(what) is not valid UTF-8")
        }
        return s
    }

    static func scalarSize(_ type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: 1
        case 2, 3: 2
        case 4, 5, 6: 4
        case 10, 11, 12: 8
        default: nil
        }
    }

    mutating func value(type: UInt32, depth: Int, key: String) throws(FormatError) -> GGUFValue {
        switch type {
        case 0: guard let v = binary.readInteger(as: UInt8.self) else { throw truncated("'\(key)'") }; return .unsigned(UInt64(v), type: type)
        case 1: guard let v = binary.readInteger(as: Int8.self) else { throw truncated("'\(key)'") }; return .signed(Int64(v), type: type)
        case 2: guard let v = binary.readInteger(as: UInt16.self) else { throw truncated("'\(key)'") }; return .unsigned(UInt64(v), type: type)
        case 3: guard let v = binary.readInteger(as: Int16.self) else { throw truncated("'\(key)'") }; return .signed(Int64(v), type: type)
        case 4: return .unsigned(UInt64(try u32("'\(key)'")), type: type)
        case 5: guard let v = binary.readInteger(as: Int32.self) else { throw truncated("'\(key)'") }; return .signed(Int64(v), type: type)
        case 6: return .float(Double(Float(bitPattern: try u32("'\(key)'"))), type: type)
        case 7:
            guard let v = binary.readInteger(as: UInt8.self) else { throw truncated("'\(key)'") }
            return .bool(v != 0)
        case 8: return .string(try string("the value of '\(key)'", limit: GGUFHeader.Limits.stringLength))
        case 9:
            guard depth < GGUFHeader.Limits.nesting else {
                throw FormatError(.ggufNestingTooDeep, "'\(key)' nests arrays more than \(GGUFHeader.Limits.nesting) deep")
            }
            let elementType = try u32("the element type of '\(key)'")
            guard elementType <= 12 else {
                throw FormatError(.ggufUnknownValueType, "'\(key)' is an array of unknown value type \(elementType)")
            }
            let n = try u64("the length of '\(key)'")
            // Each element takes at least 1 byte (8 for a string or an array's length).
            let minimum = Self.scalarSize(elementType) ?? 8
            guard n <= UInt64(GGUFHeader.Limits.arrayLength) else {
                throw FormatError(.ggufArrayTooLong, "'\(key)' has \(n) elements; at most \(GGUFHeader.Limits.arrayLength) are read")
            }
            guard Int(n) <= binary.remaining / minimum else {
                throw FormatError(.ggufArrayTooLong, "'\(key)' has \(n) elements, more than the rest of the file can hold")
            }
            let count = Int(n)
            if let size = Self.scalarSize(elementType), count > GGUFHeader.Limits.materializedArrayLength {
                _ = binary.skip(count * size)
                return .array(elementType: elementType, count: count, values: nil)
            }
            var values: [GGUFValue] = []
            let keep = count <= GGUFHeader.Limits.materializedArrayLength
            if keep { values.reserveCapacity(count) }
            for _ in 0..<count {
                let v = try value(type: elementType, depth: depth + 1, key: key)
                if keep { values.append(v) }
            }
            return .array(elementType: elementType, count: count, values: keep ? values : nil)
        case 10: return .unsigned(try u64("'\(key)'"), type: type)
        case 11: return .signed(Int64(bitPattern: try u64("'\(key)'")), type: type)
        case 12: return .float(Double(bitPattern: try u64("'\(key)'")), type: type)
        default:
            throw FormatError(.ggufUnknownValueType, "'\(key)' has unknown value type \(type)")
        }
    }
}
