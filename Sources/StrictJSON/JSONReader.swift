/// A strict, streaming JSON reader (RFC 8259): hands out one token at a time and keeps no tree,
/// so a caller that knows the shape it expects (a safetensors header) builds only what it keeps,
/// and refuses anything else at the first unexpected token.
///
/// What it enforces on its own: the grammar (no trailing commas, single quotes, comments, `NaN`
/// or bare words), nesting no deeper than `maximumDepth`, integers within 64 bits, finite
/// numbers, escapes that are well formed (no lone surrogate), no raw control character inside a
/// string, valid UTF-8 and nothing but whitespace after the document. Keys are whole strings,
/// NUL bytes included. Duplicate keys are for the caller to detect (it has the keys).
///
/// Memory: the container stack (at most `maximumDepth` bytes) and the current token.
public struct JSONReader {
    /// One token of the document.
    public enum Token: Equatable, Sendable {
        case beginObject, endObject, beginArray, endArray
        /// An object key (the reader has consumed the colon after it).
        case key(String)
        case string(String)
        /// An integer that fits `Int64`.
        case int(Int64)
        /// A non-negative integer above `Int64.max`.
        case uint(UInt64)
        case double(Double)
        case bool(Bool)
        case null
        /// The document is complete and only whitespace followed it.
        case end

        /// A short name of the JSON type a value token starts, for messages.
        public var typeName: String {
            switch self {
            case .beginObject: "object"
            case .beginArray: "array"
            case .string: "string"
            case .int, .uint, .double: "number"
            case .bool: "boolean"
            case .null: "null"
            case .key: "key"
            case .endObject, .endArray, .end: "end"
            }
        }
    }

    private enum State {
        case topValue, arrayFirst, arrayValue, objectFirst, objectKey, objectValue, afterValue, done
    }

    public let bytes: UnsafeRawBufferPointer
    /// The offset of the next byte to read.
    public private(set) var offset = 0
    public let maximumDepth: Int
    private var containers: [Bool] = []  // true: object
    private var state = State.topValue
    private var scratch: [UInt8] = []

    /// A reader over `bytes`, which must outlive it.
    ///
    /// - Throws: `.invalidUTF8` when the text is not UTF-8, `.syntax` when it is empty.
    public init(_ bytes: UnsafeRawBufferPointer, maximumDepth: Int = JSONParser.maximumDepth) throws(JSONError) {
        self.bytes = bytes
        self.maximumDepth = maximumDepth
        guard bytes.count > 0 else { throw JSONError(.syntax, "empty JSON text") }
        if let bad = Self.firstInvalidUTF8(bytes) {
            throw JSONError(.invalidUTF8, "JSON text is not valid UTF-8 (byte \(bad))")
        }
    }

    /// Nesting of the containers open at this point.
    public var depth: Int { containers.count }

    /// The next token.
    public mutating func next() throws(JSONError) -> Token {
        while true {
            skipWhitespace()
            switch state {
            case .done:
                guard offset == bytes.count else { throw error("unexpected bytes after the JSON document") }
                return .end
            case .afterValue:
                guard offset < bytes.count else { throw JSONError(.syntax, "JSON text ends early") }
                let byte = bytes[offset]
                let inObject = containers[containers.count - 1]
                if byte == UInt8(ascii: ",") {
                    offset += 1
                    state = inObject ? .objectKey : .arrayValue
                    continue
                }
                if byte == (inObject ? UInt8(ascii: "}") : UInt8(ascii: "]")) {
                    return close()
                }
                throw error(inObject ? "expected ',' or '}'" : "expected ',' or ']'")
            case .objectFirst, .objectKey:
                guard offset < bytes.count else { throw JSONError(.syntax, "JSON text ends early") }
                if state == .objectFirst, bytes[offset] == UInt8(ascii: "}") { return close() }
                guard bytes[offset] == UInt8(ascii: "\"") else { throw error("expected an object key") }
                let key = try readString()
                skipWhitespace()
                guard offset < bytes.count, bytes[offset] == UInt8(ascii: ":") else { throw error("expected ':' after an object key") }
                offset += 1
                state = .objectValue
                return .key(key)
            case .arrayFirst:
                guard offset < bytes.count else { throw JSONError(.syntax, "JSON text ends early") }
                if bytes[offset] == UInt8(ascii: "]") { return close() }
                return try readValue()
            case .topValue, .arrayValue, .objectValue:
                return try readValue()
            }
        }
    }

    /// Reads and discards one whole value (the next token must start one), checking its syntax
    /// and keeping nothing.
    public mutating func skipValue() throws(JSONError) {
        let start = depth
        switch try next() {
        case .beginObject, .beginArray:
            while depth > start {
                if try next() == .end { throw JSONError(.syntax, "JSON text ends early") }
            }
        case .endObject, .endArray, .key, .end:
            throw error("expected a value")
        default:
            break
        }
    }

    /// Skips the rest of the container the reader is in (after its opening token or any value
    /// or key inside it), up to and including its closing token.
    public mutating func skipToEndOfContainer() throws(JSONError) {
        let start = depth
        while depth >= start {
            if try next() == .end { throw JSONError(.syntax, "JSON text ends early") }
        }
    }

    // MARK: - Tokens

    private mutating func close() -> Token {
        offset += 1
        let wasObject = containers.removeLast()
        state = containers.isEmpty ? .done : .afterValue
        return wasObject ? .endObject : .endArray
    }

    private mutating func valueDone() {
        state = containers.isEmpty ? .done : .afterValue
    }

    private mutating func open(object: Bool) throws(JSONError) -> Token {
        guard containers.count < maximumDepth else {
            throw JSONError(.tooDeep, "JSON nesting deeper than \(maximumDepth)")
        }
        offset += 1
        containers.append(object)
        state = object ? .objectFirst : .arrayFirst
        return object ? .beginObject : .beginArray
    }

    private mutating func readValue() throws(JSONError) -> Token {
        guard offset < bytes.count else { throw JSONError(.syntax, "JSON text ends early") }
        switch bytes[offset] {
        case UInt8(ascii: "{"): return try open(object: true)
        case UInt8(ascii: "["): return try open(object: false)
        case UInt8(ascii: "\""):
            let text = try readString()
            valueDone()
            return .string(text)
        case UInt8(ascii: "t"): try literal("true"); valueDone(); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); valueDone(); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); valueDone(); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let number = try readNumber()
            valueDone()
            return number
        default:
            throw error("expected a JSON value")
        }
    }

    private mutating func literal(_ word: String) throws(JSONError) {
        let count = word.utf8.count
        guard bytes.count - offset >= count else { throw error("invalid JSON literal") }
        for (i, b) in word.utf8.enumerated() where bytes[offset + i] != b {
            throw error("invalid JSON literal")
        }
        offset += count
        // `truex` is not `true` followed by garbage the grammar could accept.
        if offset < bytes.count, Self.isLetterOrDigit(bytes[offset]) { throw error("invalid JSON literal") }
    }

    private mutating func readNumber() throws(JSONError) -> Token {
        let start = offset
        var negative = false
        if bytes[offset] == UInt8(ascii: "-") {
            negative = true
            offset += 1
        }
        guard offset < bytes.count, Self.isDigit(bytes[offset]) else { throw error("a minus sign without digits") }
        var magnitude: UInt64 = 0
        var fits = true
        if bytes[offset] == UInt8(ascii: "0") {
            offset += 1
            if offset < bytes.count, Self.isDigit(bytes[offset]) { throw error("a number with a leading zero") }
        } else {
            while offset < bytes.count, Self.isDigit(bytes[offset]) {
                let (times, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times.addingReportingOverflow(UInt64(bytes[offset] - UInt8(ascii: "0")))
                if o1 || o2 { fits = false }
                magnitude = sum
                offset += 1
            }
        }
        var integral = true
        if offset < bytes.count, bytes[offset] == UInt8(ascii: ".") {
            integral = false
            offset += 1
            guard offset < bytes.count, Self.isDigit(bytes[offset]) else { throw error("a decimal point without digits") }
            while offset < bytes.count, Self.isDigit(bytes[offset]) { offset += 1 }
        }
        if offset < bytes.count, bytes[offset] == UInt8(ascii: "e") || bytes[offset] == UInt8(ascii: "E") {
            integral = false
            offset += 1
            if offset < bytes.count, bytes[offset] == UInt8(ascii: "+") || bytes[offset] == UInt8(ascii: "-") { offset += 1 }
            guard offset < bytes.count, Self.isDigit(bytes[offset]) else { throw error("an exponent without digits") }
            while offset < bytes.count, Self.isDigit(bytes[offset]) { offset += 1 }
        }
        if offset < bytes.count, Self.isLetterOrDigit(bytes[offset]) || bytes[offset] == UInt8(ascii: ".") {
            throw error("malformed number")
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<offset]), as: UTF8.self)
        if integral {
            if negative {
                guard fits, magnitude <= UInt64(Int64.max) + 1 else {
                    throw JSONError(.numberOutOfRange, "integer \(text.prefix(40)) at byte \(start) is beyond the 64-bit range")
                }
                return .int(magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude))
            }
            guard fits else {
                throw JSONError(.numberOutOfRange, "integer \(text.prefix(40)) at byte \(start) is beyond the 64-bit range")
            }
            return magnitude <= UInt64(Int64.max) ? .int(Int64(magnitude)) : .uint(magnitude)
        }
        guard let value = Double(text), value.isFinite else {
            throw JSONError(.numberOutOfRange, "number \(text.prefix(40)) at byte \(start) is beyond the range of a double")
        }
        return .double(value)
    }

    /// Reads a string token at its opening quote; returns it unescaped, NUL bytes included.
    private mutating func readString() throws(JSONError) -> String {
        let start = offset
        offset += 1
        let contentStart = offset
        // Fast path: no escape.
        while offset < bytes.count {
            let b = bytes[offset]
            if b == UInt8(ascii: "\"") {
                let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[contentStart..<offset]), as: UTF8.self)
                offset += 1
                return text
            }
            if b == UInt8(ascii: "\\") { break }
            if b < 0x20 { throw error("a raw control character in a string") }
            offset += 1
        }
        guard offset < bytes.count else {
            throw JSONError(.syntax, "a string that starts at byte \(start) never ends")
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[contentStart..<offset]))
        while offset < bytes.count {
            let b = bytes[offset]
            if b == UInt8(ascii: "\"") {
                offset += 1
                return String(decoding: scratch, as: UTF8.self)
            }
            if b < 0x20 { throw error("a raw control character in a string") }
            guard b == UInt8(ascii: "\\") else {
                scratch.append(b)
                offset += 1
                continue
            }
            guard offset + 1 < bytes.count else { break }
            let e = bytes[offset + 1]
            offset += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scratch.append(e)
            case UInt8(ascii: "n"): scratch.append(0x0A)
            case UInt8(ascii: "t"): scratch.append(0x09)
            case UInt8(ascii: "r"): scratch.append(0x0D)
            case UInt8(ascii: "b"): scratch.append(0x08)
            case UInt8(ascii: "f"): scratch.append(0x0C)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xDC00..<0xE000).contains(code) { throw error("a lone low surrogate escape") }
                if (0xD800..<0xDC00).contains(code) {
                    guard offset + 1 < bytes.count, bytes[offset] == UInt8(ascii: "\\"), bytes[offset + 1] == UInt8(ascii: "u") else {
                        throw error("a lone high surrogate escape")
                    }
                    offset += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw error("a high surrogate escape without its low half") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                Self.appendUTF8(code, to: &scratch)
            default:
                throw error("an invalid escape")
            }
        }
        throw JSONError(.syntax, "a string that starts at byte \(start) never ends")
    }

    private mutating func hex4() throws(JSONError) -> UInt32 {
        guard bytes.count - offset >= 4 else { throw error("a \\u escape without four hex digits") }
        var code: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[offset]
            let digit: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
            default: throw error("a \\u escape without four hex digits")
            }
            code = code << 4 | UInt32(digit)
            offset += 1
        }
        return code
    }

    private static func appendUTF8(_ code: UInt32, to out: inout [UInt8]) {
        switch code {
        case 0..<0x80:
            out.append(UInt8(code))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | code >> 6))
            out.append(UInt8(0x80 | code & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | code >> 12))
            out.append(UInt8(0x80 | code >> 6 & 0x3F))
            out.append(UInt8(0x80 | code & 0x3F))
        default:
            out.append(UInt8(0xF0 | code >> 18))
            out.append(UInt8(0x80 | code >> 12 & 0x3F))
            out.append(UInt8(0x80 | code >> 6 & 0x3F))
            out.append(UInt8(0x80 | code & 0x3F))
        }
    }

    private mutating func skipWhitespace() {
        while offset < bytes.count {
            switch bytes[offset] {
            case 0x20, 0x09, 0x0A, 0x0D: offset += 1
            default: return
            }
        }
    }

    private func error(_ what: String) -> JSONError {
        if offset >= bytes.count { return JSONError(.syntax, "JSON text ends early") }
        return JSONError(.syntax, "invalid JSON at byte \(offset): \(what)")
    }

    @inline(__always) private static func isDigit(_ b: UInt8) -> Bool { b &- UInt8(ascii: "0") < 10 }

    @inline(__always) private static func isLetterOrDigit(_ b: UInt8) -> Bool {
        isDigit(b) || (b | 0x20) &- UInt8(ascii: "a") < 26
    }

    /// The offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong
    /// form, no surrogate, nothing above U+10FFFF), or `nil`.
    public static func firstInvalidUTF8(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 0
        let n = bytes.count
        while i < n {
            let b0 = bytes[i]
            if b0 < 0x80 { i += 1; continue }
            let length: Int
            var low: UInt8 = 0x80, high: UInt8 = 0xBF
            switch b0 {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; high = 0x9F
            case 0xF0: length = 4; low = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; high = 0x8F
            default: return i
            }
            guard n - i >= length else { return i }
            let b1 = bytes[i + 1]
            guard b1 >= low, b1 <= high else { return i }
            for k in 2..<max(length, 2) where bytes[i + k] & 0xC0 != 0x80 { return i }
            i += length
        }
        return nil
    }
}
