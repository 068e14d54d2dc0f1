import Quantization
import StrictJSON
import TensorCore

// The quantisation records of a `.wpk` header (`Formats/wpk.md`, "Quantised tensors"): each
// is written and read here, so the two sides cannot drift apart.

extension WPKQuantization {
    /// The int8-block `quantization` object of a header row.
    var headerObject: JSONObject {
        var object = JSONObject()
        object["scheme"] = .string(Int8BlockLayout.schemeName)
        object["block_size"] = JSONValue(layout.blockSize)
        object["rows"] = JSONValue(layout.rows)
        object["row_length"] = JSONValue(layout.rowLength)
        object["scale_dtype"] = "F16"
        object["scale_offset"] = JSONValue(layout.scaleOffset)
        object["dequantized_dtype"] = "F32"
        if let metrics { object["error"] = metrics.headerValue }
        return object
    }
}

extension WPKBlockStorage {
    /// The ggml `quantization` object of a header row.
    var headerObject: JSONObject {
        var object = JSONObject()
        object["scheme"] = .string(WPKBlockStorage.schemeName)
        object["type"] = .string(type.name)
        object["row_length"] = JSONValue(rowLength)
        object["dequantized_dtype"] = "F32"
        if let fallbackFrom { object["fallback_from"] = .string(fallbackFrom.name) }
        if let metrics { object["error"] = metrics.headerValue }
        return object
    }
}

extension WPKFile {
    /// An int8 tensor (format 1.1): dtype `I8`, raw, `length` equal to its layout's bytes.
    static func parseQuantizedEntry(
        name: String, dtype: DType, shape: Shape, fields f: JSONObject, quantization q: JSONObject,
        offset: Int, length: Int, checksum: UInt64
    ) throws(FormatError) -> WPKTensorEntry {
        func bad(_ what: String) -> FormatError { FormatError(.corruptHeader, "tensor '\(name)': \(what)", tensor: name) }
        func unsupported(_ what: String) -> FormatError {
            FormatError(.unsupportedVersion, "tensor '\(name)' \(what), which this reader cannot decode", tensor: name)
        }
        // Names of things a later version may define are refused as unsupported, by name;
        // anything else that does not fit is a corrupt header.
        guard case .string(let scheme)? = q["scheme"] else { throw bad("int8 quantization has no scheme name") }
        if scheme == WPKBlockStorage.schemeName {
            return try parseBlockEntry(
                name: name, dtype: dtype, shape: shape, fields: f, quantization: q, offset: offset, length: length, checksum: checksum)
        }
        guard scheme == Int8BlockLayout.schemeName else { throw unsupported("uses quantisation scheme '\(scheme)'") }
        guard case .string(let scaleDType)? = q["scale_dtype"] else { throw bad("int8-block quantization has no scale_dtype name") }
        guard scaleDType == "F16" else { throw unsupported("stores its int8-block scales as '\(scaleDType)' (only F16 is defined)") }
        if let value = q["dequantized_dtype"], value != .null {
            guard case .string(let dequantized) = value else { throw bad("dequantized_dtype is not a name") }
            guard dequantized == "F32" else { throw unsupported("dequantises to '\(dequantized)' (only F32 is defined)") }
        }
        guard dtype == .i8 else { throw bad("an int8-block tensor must have dtype I8, not \(dtype.name)") }
        guard f["encoding"] == nil || f["encoding"]?.objectValue?["kind"]?.stringValue == "raw" else {
            throw bad("an int8-block tensor must be stored raw")
        }
        guard shape.rank >= 1 else { throw bad("a 0-rank tensor cannot be int8-block quantised") }
        guard let blockSize = q["block_size"]?.nonNegativeInt, blockSize >= 1 else { throw bad("int8-block block_size must be a positive integer") }
        guard let rows = q["rows"]?.nonNegativeInt, let rowLength = q["row_length"]?.nonNegativeInt else {
            throw bad("int8-block rows and row_length must be non-negative integers")
        }
        guard let scaleOffset = q["scale_offset"]?.nonNegativeInt else { throw bad("int8-block scale_offset must be a non-negative integer") }
        let layout: Int8BlockLayout
        do { layout = try Int8BlockLayout(rows: rows, rowLength: rowLength, blockSize: blockSize) } catch { throw bad(error.message) }
        let (floatBytes, overflow) = shape.count.multipliedReportingOverflow(by: 4)
        guard !overflow else { throw bad("shape \(shape) is too large") }
        guard rows == shape[0], layout.elementCount == shape.count else { throw bad("int8 layout \(rows)×\(rowLength) does not fit shape \(shape)") }
        guard scaleOffset == layout.scaleOffset else {
            throw bad("scale_offset \(scaleOffset), expected \(layout.scaleOffset) (the \(layout.elementCount) int8 values padded to 64 bytes)")
        }
        guard length == layout.byteCount else {
            throw bad(
                "stores \(length) bytes but \(layout) needs \(layout.byteCount) (\(layout.scaleCount) scales after offset \(layout.scaleOffset))")
        }
        let metrics = try QuantizationMetrics(headerValue: q["error"], count: shape.count, bad: bad)
        return dequantizedEntry(
            name: name, shape: shape, floatBytes: floatBytes, fields: f, offset: offset, length: length, checksum: checksum,
            quantization: WPKQuantization(layout: layout, metrics: metrics))
    }

    /// A ggml block tensor (format 1.2): dtype `U8`, raw, `length` the blocks' size.
    private static func parseBlockEntry(
        name: String, dtype: DType, shape: Shape, fields f: JSONObject, quantization q: JSONObject,
        offset: Int, length: Int, checksum: UInt64
    ) throws(FormatError) -> WPKTensorEntry {
        func bad(_ what: String) -> FormatError { FormatError(.corruptHeader, "tensor '\(name)': \(what)", tensor: name) }
        guard case .string(let typeName)? = q["type"] else { throw bad("ggml quantization has no type name") }
        guard let type = GGMLType(name: typeName), type.isBlockQuantized else {
            throw FormatError(.unsupportedVersion, "tensor '\(name)' uses ggml type '\(typeName)', which this reader cannot decode", tensor: name)
        }
        guard type.isReadable else { throw FormatError(.unsupportedDType, "tensor '\(name)': unsupported type \(type.name)", tensor: name) }
        if let value = q["dequantized_dtype"], value != .null {
            guard case .string(let dequantized) = value else { throw bad("dequantized_dtype is not a name") }
            guard dequantized == "F32" else {
                throw FormatError(
                    .unsupportedVersion, "tensor '\(name)' dequantises to '\(dequantized)' (only F32 is defined), which this reader cannot decode",
                    tensor: name)
            }
        }
        guard dtype == .u8 else { throw bad("a ggml block tensor must have dtype U8, not \(dtype.name)") }
        guard f["encoding"] == nil || f["encoding"]?.objectValue?["kind"]?.stringValue == "raw" else {
            throw bad("a ggml block tensor must be stored raw")
        }
        guard shape.rank >= 1 else { throw bad("a 0-rank tensor cannot hold ggml blocks") }
        guard let rowLength = q["row_length"]?.nonNegativeInt, rowLength > 0, rowLength % type.blockValues == 0, shape.count % rowLength == 0 else {
            throw bad("row_length must be a positive multiple of \(type.name)'s \(type.blockValues) that divides the \(shape.count) values")
        }
        guard let size = type.byteCount(values: shape.count), size == length else {
            throw bad(
                "stores \(length) bytes but \(shape) as \(type.name) needs \(type.byteCount(values: shape.count).map(String.init) ?? "more than Int.max")"
            )
        }
        let (floatBytes, overflow) = shape.count.multipliedReportingOverflow(by: 4)
        guard !overflow else { throw bad("shape \(shape) is too large") }
        var fallbackFrom: GGMLType?
        if let value = q["fallback_from"], value != .null {
            guard case .string(let text) = value, let t = GGMLType(name: text) else { throw bad("fallback_from is not a ggml type name") }
            fallbackFrom = t
        }
        let metrics = try QuantizationMetrics(headerValue: q["error"], count: shape.count, bad: bad)
        return dequantizedEntry(
            name: name, shape: shape, floatBytes: floatBytes, fields: f, offset: offset, length: length, checksum: checksum,
            blocks: WPKBlockStorage(type: type, rowLength: rowLength, fallbackFrom: fallbackFrom, metrics: metrics))
    }

    /// The entry of a quantised tensor: a dequantised F32 view of `floatBytes`, stored raw, with
    /// the source it records.
    private static func dequantizedEntry(
        name: String, shape: Shape, floatBytes: Int, fields f: JSONObject, offset: Int, length: Int, checksum: UInt64,
        quantization: WPKQuantization? = nil, blocks: WPKBlockStorage? = nil
    ) -> WPKTensorEntry {
        let (sourceName, sourceDType) = parseSource(f["source"])
        return WPKTensorEntry(
            descriptor: TensorDescriptor(name: name, dtype: .f32, shape: shape, byteCount: floatBytes),
            offset: offset, length: length, checksum: checksum, encoding: .raw,
            sourceName: sourceName, sourceDType: sourceDType, quantization: quantization, blocks: blocks)
    }
}

extension QuantizationMetrics {
    /// A quantised tensor's recorded error figures (`error`: absent, null, or an object with
    /// `max_abs`, `cosine` and an optional `snr_db`); `nil` when absent or null.
    init?(headerValue value: JSONValue?, count: Int, bad: (String) -> FormatError) throws(FormatError) {
        switch value {
        case .object(let e)?:
            guard let maxAbs = e["max_abs"]?.doubleValue, let cosine = e["cosine"]?.doubleValue,
                e["snr_db"] == nil || e["snr_db"] == .null || e["snr_db"]?.doubleValue != nil
            else { throw bad("malformed quantization error") }
            self.init(snrDecibels: e["snr_db"]?.doubleValue, maxAbsoluteError: maxAbs, cosine: cosine, count: count)
        case nil, .null?:
            return nil
        default:
            throw bad("malformed quantization error")
        }
    }

    /// The `error` object `init(headerValue:count:bad:)` reads.
    var headerValue: JSONValue {
        [
            "snr_db": snrDecibels.map { JSONValue.compact($0) } ?? .null,
            "max_abs": JSONValue.compact(maxAbsoluteError), "cosine": JSONValue.compact(cosine),
        ]
    }
}
