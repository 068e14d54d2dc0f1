import MappedIO
import StrictJSON
import TensorCore

/// Writes `.wpk` files (`Formats/wpk.md`) in one streaming pass: the header space is reserved
/// first, each tensor is converted, hashed (and optionally compressed) as it is written, and the
/// header is filled in at the end. Written atomically.
public enum WPKWriter {
    public struct Options: Sendable {
        /// Store floating-point tensors as zstd-compressed byte planes.
        public var compress = false
        /// The zstd level for `compress`.
        public var compressionLevel: Int32 = 3
        /// Told, after each tensor written as f16, how many finite values became infinite
        /// (only when there were any).
        public var float16Overflow: (@Sendable (_ tensor: String, _ count: Int) -> Void)?
        public init(compress: Bool = false, compressionLevel: Int32 = 3, float16Overflow: (@Sendable (String, Int) -> Void)? = nil) {
            self.compress = compress
            self.compressionLevel = compressionLevel
            self.float16Overflow = float16Overflow
        }
    }

    /// Writes `tensors` with the header `metadata` object (its `tool` and `conversion` fields
    /// are the caller's) to `path`.
    ///
    /// - Returns: the entries written, for reporting.
    @discardableResult
    public static func write(
        _ tensors: [OutputTensor], metadata: JSONObject, to path: String, overwrite: Bool,
        options: Options = Options(), progress: (any ProgressReporter)? = nil,
        finalizeMetadata: ((inout JSONObject) throws -> Void)? = nil
    ) throws(FormatError) -> [WPKTensorEntry] {
        var metadata = metadata
        var names = Set<String>()
        var total = 0
        for t in tensors {
            guard !t.name.isEmpty else { throw FormatError(.invalidArgument, "a tensor has an empty name", path: path) }
            guard names.insert(t.name).inserted else {
                throw FormatError(.duplicateTensor, "tensor '\(t.name)' appears twice", path: path, tensor: t.name)
            }
            total += try t.byteCount()
        }
        // Reserve the header: the table with every number at its widest, and room for what
        // `finalizeMetadata` adds (a source record: name, format, size, SHA-256).
        let finalizeReserve = finalizeMetadata == nil ? 0 : 512
        let placeholder = tensors.map { t in
            WPKTensorEntry(
                descriptor: TensorDescriptor(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: 0),
                offset: Int.max, length: Int.max, checksum: .max,
                encoding: t.dtype.isConvertibleFloat && options.compress ? .zstdByteGroup(width: 8, size: Int.max, rawChecksum: .max) : .raw,
                sourceName: t.sourceName, sourceDType: t.sourceDType)
        }
        let reserved = headerText(metadata: metadata, entries: placeholder).count + finalizeReserve
        let dataOffset = (WPKLayout.preambleSize + reserved + WPKLayout.alignment - 1) / WPKLayout.alignment * WPKLayout.alignment
        do {
            let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
            try writer.writeZeros(dataOffset)
            progress?.begin(total: total)
            var entries: [WPKTensorEntry] = []
            entries.reserveCapacity(tensors.count)
            for t in tensors {
                try writer.pad(toMultipleOf: WPKLayout.alignment)
                let offset = writer.position - dataOffset
                let encoding: WPKEncoding
                let checksum: UInt64
                var overflow = 0
                if options.compress, t.dtype.isConvertibleFloat, let width = t.dtype.byteWidth, t.shape.count > 0 {
                    (encoding, checksum, overflow) = try writeCompressed(t, width: width, level: options.compressionLevel, to: writer)
                } else {
                    let emitted = try TensorEmitter.emit(t, to: writer)
                    (checksum, overflow) = (emitted.checksum, emitted.float16Overflow)
                    encoding = .raw
                }
                if overflow > 0 { options.float16Overflow?(t.sourceName, overflow) }
                let size = try t.byteCount()
                entries.append(WPKTensorEntry(
                    descriptor: TensorDescriptor(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: size),
                    offset: offset, length: writer.position - dataOffset - offset, checksum: checksum, encoding: encoding,
                    sourceName: t.sourceName, sourceDType: t.sourceDType))
                progress?.advance(by: size)
            }
            let dataLength = writer.position - dataOffset
            try finalizeMetadata?(&metadata)
            var header = headerText(metadata: metadata, entries: entries)
            precondition(header.count <= reserved, "header outgrew its reservation")
            header.append(contentsOf: repeatElement(0x20, count: reserved - header.count))
            var preamble = WPKLayout.magic
            append(&preamble, WPKLayout.majorVersion)
            append(&preamble, WPKLayout.minorVersion)
            append(&preamble, UInt32(0))
            append(&preamble, UInt64(WPKLayout.preambleSize))
            append(&preamble, UInt64(header.count))
            append(&preamble, UInt64(dataOffset))
            append(&preamble, UInt64(dataLength))
            append(&preamble, header.withUnsafeBytes { XXHash64.hash($0) })
            append(&preamble, UInt64(0))
            let block = preamble + header
            try block.withUnsafeBytes { try writer.overwrite($0, at: 0) }
            try writer.commit()
            progress?.finish()
            return entries
        } catch let error as IOError {
            throw FormatError(error)
        } catch let error as FormatError {
            throw error.inFile(path)
        } catch {
            throw FormatError(.io, "\(error)", path: path)
        }
    }

    /// Converts a tensor into memory, compresses its byte planes and writes them (or the raw
    /// bytes when compression does not pay).
    private static func writeCompressed(_ t: OutputTensor, width: Int, level: Int32, to writer: AtomicFileWriter) throws(FormatError) -> (WPKEncoding, UInt64, Int) {
        let size = try t.byteCount()
        let logical = OwnedBuffer(byteCount: size)
        let view = try TensorEmitter.load(t)
        var overflow = 0
        try view.bytes.withUnsafeBytes { (source) throws(FormatError) in
            if t.dtype == .f16 { overflow = ElementConversion.float16OverflowCount(source, dtype: t.sourceDType, count: t.shape.count) }
            do throws(TensorCoreError) {
                try ElementConversion.convert(source, from: t.sourceDType, into: logical.mutableBytes, to: t.dtype, count: t.shape.count)
            } catch {
                throw FormatError(.unsupportedConversion, error.message, tensor: t.name)
            }
        }
        let rawChecksum = XXHash64.hash(logical.bytes)
        do {
            if let compressed = try ByteGroupCodec.encode(logical.bytes, width: width, level: level) {
                try writer.write(compressed.bytes)
                return (.zstdByteGroup(width: width, size: size, rawChecksum: rawChecksum), XXHash64.hash(compressed.bytes), overflow)
            }
            try writer.write(logical.bytes)
            return (.raw, rawChecksum, overflow)
        } catch let error as IOError {
            throw FormatError(error)
        } catch let error as FormatError {
            throw error.inTensor(t.name)
        } catch {
            throw FormatError(.io, "\(error)")
        }
    }

    private static func append<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    static func headerText(metadata: JSONObject, entries: [WPKTensorEntry]) -> [UInt8] {
        let rows: [JSONValue] = entries.map { e in
            var row = JSONObject()
            row["name"] = .string(e.descriptor.name)
            row["dtype"] = .string(e.descriptor.dtype.name)
            row["shape"] = .array(e.descriptor.shape.dimensions.map { JSONValue($0) })
            row["offset"] = JSONValue(e.offset)
            row["length"] = JSONValue(e.length)
            row["checksum"] = .string(hex(e.checksum))
            if let name = e.sourceName, let dtype = e.sourceDType, name != e.descriptor.name || dtype != e.descriptor.dtype {
                row["source"] = ["name": .string(name), "dtype": .string(dtype.name)]
            }
            if case .zstdByteGroup(let width, let size, let rawChecksum) = e.encoding {
                row["encoding"] = ["kind": "zstd-bytegroup", "width": JSONValue(width), "size": JSONValue(size), "raw_checksum": .string(hex(rawChecksum))]
            }
            return .object(row)
        }
        let root: JSONValue = ["metadata": .object(metadata), "tensors": .array(rows)]
        return Array(root.serialized().utf8)
    }
}
