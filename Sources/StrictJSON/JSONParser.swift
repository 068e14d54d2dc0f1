import CJSONC

/// An error from parsing JSON.
public struct JSONError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case invalidUTF8, syntax, duplicateKey, tooDeep, numberOutOfRange
        }
        fileprivate let value: Value
        /// The text is not valid UTF-8.
        public static let invalidUTF8 = Code(value: .invalidUTF8)
        /// Not JSON.
        public static let syntax = Code(value: .syntax)
        /// An object names the same key twice.
        public static let duplicateKey = Code(value: .duplicateKey)
        /// Nesting beyond the parser's limit.
        public static let tooDeep = Code(value: .tooDeep)
        /// An integer beyond the 64-bit range.
        public static let numberOutOfRange = Code(value: .numberOutOfRange)
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    /// The duplicated key, for `duplicateKey`.
    public var key: String?

    public init(_ code: Code, _ message: String, key: String? = nil) {
        self.code = code
        self.message = message
        self.key = key
    }

    public var description: String { message }
}

/// Parses JSON strictly with json-c: RFC 8259 syntax only (json-c's strict mode), the whole
/// input consumed but for whitespace, valid UTF-8, nesting bounded, and — which json-c does
/// not do on its own — duplicate object keys rejected at every depth.
public enum JSONParser {
    /// The deepest nesting accepted.
    public static let maximumDepth = 64

    /// Parses `bytes` as one JSON document.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSONValue {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw JSONError(.syntax, "empty JSON text")
        }
        guard String(validating: UnsafeBufferPointer(start: base.assumingMemoryBound(to: UInt8.self), count: bytes.count), as: UTF8.self) != nil else {
            throw JSONError(.invalidUTF8, "JSON text is not valid UTF-8")
        }
        guard bytes.count < Int32.max else { throw JSONError(.syntax, "JSON text too large") }
        guard let tokener = json_tokener_new_ex(Int32(maximumDepth)) else {
            throw JSONError(.syntax, "could not create JSON parser")
        }
        defer { json_tokener_free(tokener) }
        json_tokener_set_flags(tokener, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8)
        var root = json_tokener_parse_ex(tokener, base.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        var status = json_tokener_get_error(tokener)
        let consumed = Int(json_tokener_get_parse_end(tokener))
        if status == json_tokener_continue, consumed == bytes.count {
            // A bare top-level number or word has no closing byte: end it with a space.
            root = json_tokener_parse_ex(tokener, " ", 1)
            status = json_tokener_get_error(tokener)
        }
        guard status == json_tokener_success else {
            json_object_put(root)
            let reason = String(cString: json_tokener_error_desc(status))
            if status == json_tokener_error_depth {
                throw JSONError(.tooDeep, "JSON nesting deeper than \(maximumDepth)")
            }
            if status == json_tokener_continue {
                throw JSONError(.syntax, "JSON text ends early")
            }
            throw JSONError(.syntax, "invalid JSON at byte \(json_tokener_get_parse_end(tokener)): \(reason)")
        }
        defer { json_object_put(root) }
        // Everything after the document must be JSON whitespace.
        for i in consumed..<bytes.count where !isWhitespace(bytes[i]) {
            throw JSONError(.syntax, "unexpected bytes after the JSON document at byte \(i)")
        }
        // json-c keeps the last of duplicated keys; find them first.
        var scanner = DuplicateKeyScanner(bytes: bytes)
        try scanner.run()
        return try convert(root, depth: 0)
    }

    /// Parses a string.
    public static func parse(_ text: String) throws(JSONError) -> JSONValue {
        let bytes = Array(text.utf8)
        let result = bytes.withUnsafeBytes { buffer in Result { () throws(JSONError) in try parse(buffer) } }
        return try result.get()
    }

    @inline(__always)
    static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    private static func convert(_ object: OpaquePointer?, depth: Int) throws(JSONError) -> JSONValue {
        guard depth <= maximumDepth else { throw JSONError(.tooDeep, "JSON nesting deeper than \(maximumDepth)") }
        guard let object else { return .null }
        switch json_object_get_type(object) {
        case json_type_null:
            return .null
        case json_type_boolean:
            return .bool(json_object_get_boolean(object) != 0)
        case json_type_double:
            return .double(json_object_get_double(object))
        case json_type_int:
            let signed = json_object_get_int64(object)
            if signed < 0 {
                if signed == Int64.min && errno == ERANGE { throw JSONError(.numberOutOfRange, "integer below the 64-bit range") }
                return .int(signed)
            }
            errno = 0
            let unsigned = json_object_get_uint64(object)
            if unsigned == UInt64.max && errno == ERANGE { throw JSONError(.numberOutOfRange, "integer beyond the 64-bit range") }
            return unsigned <= UInt64(Int64.max) ? .int(Int64(unsigned)) : .uint(unsigned)
        case json_type_string:
            let length = Int(json_object_get_string_len(object))
            let pointer = json_object_get_string(object)!
            let text = pointer.withMemoryRebound(to: UInt8.self, capacity: length) {
                String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
            }
            return .string(text)
        case json_type_array:
            let count = json_object_array_length(object)
            var values: [JSONValue] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                values.append(try convert(json_object_array_get_idx(object, i), depth: depth + 1))
            }
            return .array(values)
        case json_type_object:
            var result = JSONObject()
            var iterator = json_object_iter_begin(object)
            var end = json_object_iter_end(object)
            while json_object_iter_equal(&iterator, &end) == 0 {
                let key = String(cString: json_object_iter_peek_name(&iterator))
                let value = try convert(json_object_iter_peek_value(&iterator), depth: depth + 1)
                result[key] = value
                json_object_iter_next(&iterator)
            }
            return .object(result)
        default:
            throw JSONError(.syntax, "unknown JSON value type")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A single pass over JSON text that json-c has already accepted, closing the gaps json-c
/// leaves even in strict mode: it reports the first key an object repeats (keys compared
/// after unescaping, so `"a"` and `"\u0061"` are the same key), and refuses single-quoted
/// strings, the words `NaN` and `Infinity`, and integers beyond 64 bits.
struct DuplicateKeyScanner {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private enum Frame {
        case object(Set<String>, expectingKey: Bool)
        case array
    }

    mutating func run() throws(JSONError) {
        var stack: [Frame] = []
        while offset < bytes.count {
            let byte = bytes[offset]
            switch byte {
            case UInt8(ascii: "{"):
                stack.append(.object([], expectingKey: true))
                offset += 1
            case UInt8(ascii: "["):
                stack.append(.array)
                offset += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = stack.popLast()
                offset += 1
            case UInt8(ascii: ","):
                if case .object(_, false)? = stack.last, case .object(let keys, _) = stack.removeLast() {
                    stack.append(.object(keys, expectingKey: true))
                }
                offset += 1
            case UInt8(ascii: "\""):
                let text = readString()
                if case .object(_, true)? = stack.last, case .object(var keys, _) = stack.removeLast() {
                    // Popped, so the set is uniquely referenced and grows in place.
                    guard keys.insert(text).inserted else {
                        throw JSONError(.duplicateKey, "duplicate key '\(text)' in a JSON object", key: text)
                    }
                    stack.append(.object(keys, expectingKey: false))
                }
            case 0x20, 0x09, 0x0A, 0x0D, UInt8(ascii: ":"):
                offset += 1
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"):
                // json-c accepts NaN and Infinity even in strict mode; JSON has only these words.
                let start = offset
                while offset < bytes.count, isLetter(bytes[offset]) { offset += 1 }
                let word = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<offset]), as: UTF8.self)
                guard ["true", "false", "null"].contains(word) else {
                    throw JSONError(.syntax, "invalid JSON literal '\(word)' at byte \(start)")
                }
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                let start = offset
                var integral = true
                while offset < bytes.count, isNumberByte(bytes[offset]) {
                    if [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[offset]) { integral = false }
                    offset += 1
                }
                if integral {
                    // json-c clamps integers beyond 64 bits without a word; refuse them.
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<offset]), as: UTF8.self)
                    guard Int64(text) != nil || UInt64(text) != nil else {
                        throw JSONError(.numberOutOfRange, "integer \(text.prefix(40)) at byte \(start) is beyond the 64-bit range")
                    }
                }
            default:
                // Single-quoted strings and other bytes json-c tolerates.
                throw JSONError(.syntax, "unexpected byte 0x\(String(byte, radix: 16)) at byte \(offset)")
            }
        }
    }

    private func isLetter(_ b: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
    }

    private func isNumberByte(_ b: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "+")
            || b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E")
    }

    /// Reads a string token starting at the opening quote and returns it unescaped.
    private mutating func readString() -> String {
        offset += 1
        var scalars = String.UnicodeScalarView()
        var raw: [UInt8] = []
        func flushRaw() {
            if !raw.isEmpty {
                scalars.append(contentsOf: String(decoding: raw, as: UTF8.self).unicodeScalars)
                raw.removeAll(keepingCapacity: true)
            }
        }
        var pendingHigh: UInt32?
        while offset < bytes.count {
            let b = bytes[offset]
            if b == UInt8(ascii: "\"") { offset += 1; break }
            if b == UInt8(ascii: "\\"), offset + 1 < bytes.count {
                let e = bytes[offset + 1]
                offset += 2
                switch e {
                case UInt8(ascii: "u"):
                    var code: UInt32 = 0
                    for _ in 0..<4 where offset < bytes.count {
                        code = code << 4 | UInt32(hexValue(bytes[offset]))
                        offset += 1
                    }
                    flushRaw()
                    if (0xD800..<0xDC00).contains(code) {
                        pendingHigh = code
                        continue
                    }
                    if let high = pendingHigh, (0xDC00..<0xE000).contains(code) {
                        let combined = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)
                        scalars.append(Unicode.Scalar(combined) ?? "\u{FFFD}")
                    } else {
                        scalars.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                    }
                    pendingHigh = nil
                    continue
                case UInt8(ascii: "n"): raw.append(0x0A)
                case UInt8(ascii: "t"): raw.append(0x09)
                case UInt8(ascii: "r"): raw.append(0x0D)
                case UInt8(ascii: "b"): raw.append(0x08)
                case UInt8(ascii: "f"): raw.append(0x0C)
                default: raw.append(e)
                }
                pendingHigh = nil
                continue
            }
            raw.append(b)
            offset += 1
        }
        flushRaw()
        return String(scalars)
    }

    private func hexValue(_ b: UInt8) -> UInt8 {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: 0
        }
    }
}
