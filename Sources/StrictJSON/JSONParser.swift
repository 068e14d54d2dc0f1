/// An error from parsing JSON.
public struct JSONError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case invalidUTF8, syntax, duplicateKey, tooDeep, numberOutOfRange, tooLarge
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
        /// More values than the parser's budget (``JSONParser/Limits/maximumValues``).
        public static let tooLarge = Code(value: .tooLarge)
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

/// Parses JSON strictly into a ``JSONValue``: RFC 8259 syntax only, the whole input consumed but
/// for whitespace, valid UTF-8, nesting bounded, integers within 64 bits, duplicate object keys
/// refused at every depth (keys compared after unescaping, NUL bytes included: `"a\u0000x"` and
/// `"a"` are two keys), and at most ``Limits/maximumValues`` values, so the tree a hostile text
/// can make is bounded. Built on ``JSONReader``, which parsers that know their schema (the
/// safetensors header) use directly to keep only what they need.
public enum JSONParser {
    /// The deepest nesting accepted.
    public static let maximumDepth = 64

    /// What a parse may build.
    public struct Limits: Sendable {
        /// Containers nested deeper than this are refused (`.tooDeep`).
        public var maximumDepth: Int
        /// Values (scalars and containers) beyond this are refused (`.tooLarge`).
        public var maximumValues: Int
        public init(maximumDepth: Int = JSONParser.maximumDepth, maximumValues: Int = 16_000_000) {
            self.maximumDepth = maximumDepth
            self.maximumValues = maximumValues
        }
        /// 64 levels, 16 million values (about a gigabyte of tree at most).
        public static let standard = Limits()
    }

    /// Parses `bytes` as one JSON document.
    ///
    /// - Throws: `JSONError` with the code of the first rule the text breaks.
    /// - Complexity: O(n) time; memory proportional to the values kept (bounded by `limits`).
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: Limits = .standard) throws(JSONError) -> JSONValue {
        var builder = Builder(reader: try JSONReader(bytes, maximumDepth: limits.maximumDepth), budget: limits.maximumValues)
        let value = try builder.value(try builder.reader.next())
        guard try builder.reader.next() == .end else { throw JSONError(.syntax, "unexpected bytes after the JSON document") }
        return value
    }

    /// Parses bytes held in an array (a file read whole, a string's UTF-8).
    public static func parse(_ bytes: [UInt8], limits: Limits = .standard) throws(JSONError) -> JSONValue {
        let result = bytes.withUnsafeBytes { buffer in Result { () throws(JSONError) in try parse(buffer, limits: limits) } }
        return try result.get()
    }

    /// Parses a string.
    public static func parse(_ text: String, limits: Limits = .standard) throws(JSONError) -> JSONValue {
        try parse(Array(text.utf8), limits: limits)
    }

    @inline(__always)
    static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    private struct Builder {
        var reader: JSONReader
        var budget: Int

        mutating func value(_ token: JSONReader.Token) throws(JSONError) -> JSONValue {
            budget -= 1
            guard budget >= 0 else { throw JSONError(.tooLarge, "JSON text holds more values than the parser's limit") }
            switch token {
            case .null: return .null
            case .bool(let b): return .bool(b)
            case .int(let v): return .int(v)
            case .uint(let v): return .uint(v)
            case .double(let v): return .double(v)
            case .string(let s): return .string(s)
            case .beginArray:
                var items: [JSONValue] = []
                while true {
                    let next = try reader.next()
                    if next == .endArray { return .array(items) }
                    items.append(try value(next))
                }
            case .beginObject:
                var object = JSONObject()
                while true {
                    let next = try reader.next()
                    if next == .endObject { return .object(object) }
                    guard case .key(let key) = next else { throw JSONError(.syntax, "expected an object key") }
                    let item = try value(try reader.next())
                    guard object.appendNew(key, item) else {
                        throw JSONError(.duplicateKey, "duplicate key '\(key)' in a JSON object", key: key)
                    }
                }
            case .endArray, .endObject, .key, .end:
                throw JSONError(.syntax, "expected a JSON value")
            }
        }
    }
}
