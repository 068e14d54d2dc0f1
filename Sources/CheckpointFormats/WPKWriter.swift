import Dispatch
import MappedIO
import Quantization
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
        /// Header bytes kept free for what `beforeCommit` adds.
        public var headerReserve = 0
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
        finalizeMetadata: ((inout JSONObject) throws -> Void)? = nil,
        beforeCommit: ((_ readablePath: String, _ entries: [WPKTensorEntry]) throws -> JSONObject?)? = nil
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
        let finalizeReserve = (finalizeMetadata == nil ? 0 : 512) + max(0, options.headerReserve)
        let placeholder = tensors.map { t in
            WPKTensorEntry(
                descriptor: TensorDescriptor(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: 0),
                offset: Int.max, length: Int.max, checksum: .max,
                encoding: t.dtype.isConvertibleFloat && options.compress ? .zstdByteGroup(width: 8, size: Int.max, rawChecksum: .max) : .raw,
                sourceName: t.sourceName, sourceDType: t.sourceDType,
                quantization: t.quantization.map { _ in WPKQuantization.widest },
                blocks: t.ggml.map { _ in WPKBlockStorage.widest })
        }
        for t in tensors {
            if let g = t.ggml {
                guard g.rowLength > 0, g.rowLength % g.type.blockValues == 0, t.shape.count % g.rowLength == 0 else {
                    throw FormatError(
                        .invalidArgument, "rows of \(g.rowLength) do not fit \(g.type.name) for '\(t.name)' of shape \(t.shape)", path: path,
                        tensor: t.name)
                }
            }
        }
        // 1.2 when a tensor holds ggml blocks, 1.1 when one is int8, else 1.0, so older readers
        // open every file they can decode.
        let minor: UInt16 = tensors.contains { $0.ggml != nil } ? 2 : tensors.contains { $0.quantization != nil } ? 1 : 0
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
                var quantization: WPKQuantization?
                var blocks: WPKBlockStorage?
                if let g = t.ggml {
                    var stored = g
                    (checksum, stored.metrics) = try writeBlocks(t, storage: g, to: writer)
                    blocks = stored
                    encoding = .raw
                } else if let layout = t.quantization {
                    let metrics: QuantizationMetrics
                    (checksum, metrics) = try writeQuantized(t, layout: layout, to: writer)
                    quantization = WPKQuantization(layout: layout, metrics: metrics)
                    encoding = .raw
                } else if options.compress, t.dtype.isConvertibleFloat, let width = t.dtype.byteWidth, t.shape.count > 0 {
                    (encoding, checksum, overflow) = try writeCompressed(t, width: width, level: options.compressionLevel, to: writer)
                } else {
                    let emitted = try TensorEmitter.emit(t, to: writer)
                    (checksum, overflow) = (emitted.checksum, emitted.float16Overflow)
                    encoding = .raw
                }
                if overflow > 0 { options.float16Overflow?(t.sourceName, overflow) }
                let size = try t.byteCount()
                let descriptor =
                    quantization == nil && blocks == nil
                    ? TensorDescriptor(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: size)
                    : TensorDescriptor(name: t.name, dtype: .f32, shape: t.shape, byteCount: t.shape.count * 4)
                entries.append(
                    WPKTensorEntry(
                        descriptor: descriptor,
                        offset: offset, length: writer.position - dataOffset - offset, checksum: checksum, encoding: encoding,
                        sourceName: t.sourceName, sourceDType: t.sourceDType, quantization: quantization, blocks: blocks))
                progress?.advance(by: size)
            }
            let dataLength = writer.position - dataOffset
            try finalizeMetadata?(&metadata)
            var header = headerText(metadata: metadata, entries: entries)
            precondition(header.count <= reserved, "header outgrew its reservation")
            header.append(contentsOf: repeatElement(0x20, count: reserved - header.count))
            var preamble = WPKLayout.magic
            append(&preamble, WPKLayout.majorVersion)
            // 1.0 when nothing is quantised, so readers of 1.0 still open the file.
            append(&preamble, minor)
            append(&preamble, UInt32(0))
            append(&preamble, UInt64(WPKLayout.preambleSize))
            append(&preamble, UInt64(header.count))
            append(&preamble, UInt64(dataOffset))
            append(&preamble, UInt64(dataLength))
            append(&preamble, header.withUnsafeBytes { XXHash64.hash($0) })
            append(&preamble, UInt64(0))
            let block = preamble + header
            try block.withUnsafeBytes { try writer.overwrite($0, at: 0) }
            // The file is whole but unnamed: `beforeCommit` may open and check it, and add
            // metadata into the reserved room (the checksum changes, the layout does not).
            if let beforeCommit, let additions = try beforeCommit(try writer.readablePath(), entries) {
                for (key, value) in additions { metadata[key] = value }
                var amended = headerText(metadata: metadata, entries: entries)
                guard amended.count <= reserved else {
                    throw FormatError(.invalidArgument, "the metadata added before commit outgrew the \(reserved)-byte header", path: path)
                }
                amended.append(contentsOf: repeatElement(0x20, count: reserved - amended.count))
                var checksum: [UInt8] = []
                append(&checksum, amended.withUnsafeBytes { XXHash64.hash($0) })
                try amended.withUnsafeBytes { try writer.overwrite($0, at: WPKLayout.preambleSize) }
                try checksum.withUnsafeBytes { try writer.overwrite($0, at: 48) }  // the header's XXH64 (Formats/wpk.md)
            }
            try writer.commit()
            progress?.finish()
            return entries
        } catch {
            throw FormatError.writing(error, to: path)
        }
    }

    /// Copies a tensor's stored blocks when they are of the wanted type, or widens it to f32
    /// and quantises it as stable-diffusion.cpp's `convert` does (ggml's weighted searches, with
    /// the tensor's importance or ones, rows of `storage.rowLength`); returns the XXH64 of the bytes written
    /// and the error (`nil` for copied blocks, whose error the source recorded or not).
    private static func writeBlocks(
        _ t: OutputTensor, storage: WPKBlockStorage, to writer: AtomicFileWriter
    ) throws(FormatError) -> (UInt64, QuantizationMetrics?) {
        let count = t.shape.count
        let size = try t.byteCount()
        do {
            if let view = try t.blocks?(), view.type == storage.type, view.descriptor.elementCount == count, view.bytes.count == size {
                let checksum = view.bytes.withUnsafeBytes { XXHash64.hash($0) }
                try view.bytes.withUnsafeBytes { try writer.write($0) }
                return (checksum, view.metrics)
            }
            let floats = try t.load().floats()
            guard floats.count == count else {
                throw FormatError(.tensorInvalidInfo, "tensor '\(t.name)' has \(floats.count) values, expected \(count)", tensor: t.name)
            }
            var checksum: UInt64 = 0
            var accumulator = ErrorAccumulator()
            try floats.withUnsafeBufferPointer { p in
                try writer.withUnsafeOutputBuffer(count: size) { out in
                    accumulator = try GGMLBlocks.quantizeAsConvert(
                        p.baseAddress!, count: count, rowLength: storage.rowLength, type: storage.type, importance: t.importance,
                        into: out.baseAddress!)
                    checksum = XXHash64.hash(UnsafeRawBufferPointer(out))
                }
            }
            return (checksum, accumulator.metrics)
        } catch let error as FormatError {
            throw error.inTensor(t.name)
        } catch let error as QuantizationError {
            throw FormatError(.unsupportedConversion, error.message, tensor: t.name)
        } catch {
            throw FormatError(.io, "\(error)", tensor: t.name)
        }
    }

    /// Quantises a tensor to int8 (rows spread over the processors) straight into the writer's
    /// output, and returns the XXH64 of the layout's bytes and the error measured. An F32 source
    /// aligned to 4 bytes is read in place; other sources are widened to f32 first.
    private static func writeQuantized(
        _ t: OutputTensor, layout: Int8BlockLayout, to writer: AtomicFileWriter
    ) throws(FormatError) -> (UInt64, QuantizationMetrics) {
        guard layout.elementCount == t.shape.count, t.sourceDType.isConvertibleFloat else {
            throw FormatError(.unsupportedConversion, "cannot quantise \(t.sourceDType.name) \(t.shape) as \(layout)", tensor: t.name)
        }
        let view = try TensorEmitter.load(t)
        let mapped = view.bytes.owner as? MappedFile
        return try view.bytes.withUnsafeBytes { (source) throws(FormatError) -> (UInt64, QuantizationMetrics) in
            defer { mapped?.adviseDone(with: source) }
            var widened: OwnedBuffer?
            let floats: UnsafePointer<Float>
            if t.sourceDType == .f32, source.count >= layout.elementCount * 4, let base = source.baseAddress,
                Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0
            {
                floats = base.assumingMemoryBound(to: Float.self)
            } else {
                let buffer = OwnedBuffer(byteCount: max(1, layout.elementCount) * 4)  // never a nil base
                let target = buffer.mutableBytes.bindMemory(to: Float.self)
                do throws(TensorCoreError) {
                    try ElementConversion.widen(source, dtype: t.sourceDType, into: target, count: layout.elementCount)
                } catch {
                    throw FormatError(.unsupportedConversion, error.message, tensor: t.name)
                }
                widened = buffer
                floats = UnsafePointer(target.baseAddress!)
            }
            defer { withExtendedLifetime(widened) {} }
            var checksum: UInt64 = 0
            var total = ErrorAccumulator()
            var failure: QuantizationError?
            do {
                try writer.withUnsafeOutputBuffer(count: layout.byteCount) { out in
                    // The payload and the scales are written whole; only the gap between them is not.
                    (out.baseAddress! + layout.elementCount).initializeMemory(
                        as: UInt8.self, repeating: 0, count: layout.scaleOffset - layout.elementCount)
                    let parts = max(1, min(8, layout.rows / 16))
                    let results = Locked<[Result<ErrorAccumulator, QuantizationError>?]>(Array(repeating: nil, count: parts))
                    let input = UnsafeSendablePointer(UnsafeRawPointer(floats)), target = UnsafeSendablePointer(UnsafeRawPointer(out.baseAddress!))
                    DispatchQueue.concurrentPerform(iterations: parts) { p in
                        let rows = (layout.rows * p / parts)..<(layout.rows * (p + 1) / parts)
                        let payload = UnsafeMutableRawPointer(mutating: target.pointer)
                        let result = Result { () throws(QuantizationError) -> ErrorAccumulator in
                            try Int8Quantizer.quantize(
                                input.pointer.assumingMemoryBound(to: Float.self), layout: layout, rows: rows,
                                payload: payload.assumingMemoryBound(to: Int8.self),
                                scales: (payload + layout.scaleOffset).assumingMemoryBound(to: UInt16.self))
                        }
                        results.withLock { $0[p] = result }
                    }
                    for r in results.withLock({ $0 }) {
                        switch r {
                        case .success(let a): total.merge(a)
                        case .failure(let error): failure = error
                        case nil: break
                        }
                    }
                    // Nothing of a failed tensor reaches the file: the write that follows is skipped.
                    if let failure { throw failure }
                    checksum = XXHash64.hash(UnsafeRawBufferPointer(out))
                }
            } catch let error as QuantizationError {
                throw FormatError(.unsupportedConversion, "cannot quantise: \(error.message)", tensor: t.name)
            } catch let error as IOError {
                throw FormatError(error)
            } catch {
                throw FormatError(.io, "\(error)", tensor: t.name)
            }
            return (checksum, total.metrics)
        }
    }

    /// Converts a tensor into memory, compresses its byte planes and writes them (or the raw
    /// bytes when compression does not pay).
    private static func writeCompressed(
        _ t: OutputTensor, width: Int, level: Int32, to writer: AtomicFileWriter
    ) throws(FormatError) -> (WPKEncoding, UInt64, Int) {
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
            if let q = e.quantization {
                row["dtype"] = .string(DType.i8.name)
                row["quantization"] = .object(q.headerObject)
            }
            if let b = e.blocks {
                row["dtype"] = .string(DType.u8.name)
                row["quantization"] = .object(b.headerObject)
            }
            if case .zstdByteGroup(let width, let size, let rawChecksum) = e.encoding {
                row["encoding"] = [
                    "kind": "zstd-bytegroup", "width": JSONValue(width), "size": JSONValue(size), "raw_checksum": .string(hex(rawChecksum)),
                ]
            }
            return .object(row)
        }
        let root: JSONValue = ["metadata": .object(metadata), "tensors": .array(rows)]
        return Array(root.serialized().utf8)
    }
}

extension WPKBlockStorage {
    /// The `scheme` name of ggml block tensors in a `.wpk` header.
    public static let schemeName = "ggml"

    /// A placeholder whose header text is at least as long as any real one's.
    static let widest = WPKBlockStorage(
        type: .iq2_XXS, rowLength: 1_000_000_000_000_000_000, fallbackFrom: .iq2_XXS,
        metrics: QuantizationMetrics(snrDecibels: -1.2345678e-38, maxAbsoluteError: -1.2345678e-38, cosine: -1.2345678e-38, count: 0))
}

extension WPKQuantization {
    /// A placeholder whose header text is at least as long as any real one's.
    static let widest = WPKQuantization(
        layout: try! Int8BlockLayout(rows: 1_000_000_000_000_000_000, rowLength: 1, blockSize: Int.max),
        metrics: QuantizationMetrics(snrDecibels: -1.2345678e-38, maxAbsoluteError: -1.2345678e-38, cosine: -1.2345678e-38, count: 0))
}

extension JSONValue {
    /// A figure at float precision, written with the shortest decimal that reads back to it.
    static func compact(_ value: Double) -> JSONValue {
        guard value.isFinite else { return .null }
        return .double(Double(String(Float(value))) ?? value)
    }
}

/// A read-only pointer handed to `concurrentPerform` workers that touch disjoint rows.
private struct UnsafeSendablePointer: @unchecked Sendable {
    let pointer: UnsafeRawPointer
    init(_ pointer: UnsafeRawPointer) { self.pointer = pointer }
}
