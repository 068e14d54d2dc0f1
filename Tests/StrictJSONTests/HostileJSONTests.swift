import StrictJSON
import Testing

/// Issue 16: what the text says is what the parser returns (NUL bytes in keys included), and
/// no text can make it trap, hang or build an unbounded tree.
@Suite("strict JSON: hostile texts")
struct HostileJSONTests {
    private func code(_ text: String, limits: JSONParser.Limits = .standard) -> JSONError.Code? {
        do {
            _ = try JSONParser.parse(text, limits: limits)
            return nil
        } catch {
            return error.code
        }
    }

    @Test("keys that differ after a NUL byte are different keys")
    func nulKeysDoNotCollide() throws {
        let value = try JSONParser.parse(#"{"a\u0000x": 1, "a": 2}"#)
        let object = try #require(value.objectValue)
        #expect(object.keys == ["a\u{0}x", "a"])
        #expect(object["a\u{0}x"] == .int(1))
        #expect(object["a"] == .int(2))
    }

    @Test("a key with a NUL byte keeps every byte after it")
    func nulKeyIsWhole() throws {
        let object = try #require(try JSONParser.parse(#"{"x\u0000hidden": true}"#).objectValue)
        #expect(object.keys == ["x\u{0}hidden"])
        #expect(object.keys[0].utf8.count == 8)
    }

    @Test(
        "the same key with a NUL byte twice is a duplicate",
        arguments: [
            #"{"a\u0000": 1, "a\u0000": 2}"#,
            #"{"\u0000": 1, "\u0000": 2}"#,
            #"{"o": {"k\u0000z": 1, "k\u0000\u007a": 2}}"#,
        ])
    func nulDuplicates(_ text: String) {
        #expect(code(text) == .duplicateKey)
    }

    @Test("string values keep NUL bytes and survive a round trip")
    func nulValues() throws {
        let value = try JSONParser.parse(#"{"a\u0000b": "c\u0000d"}"#)
        #expect(value.objectValue?["a\u{0}b"] == .string("c\u{0}d"))
        #expect(try JSONParser.parse(value.serialized()) == value)
    }

    @Test(
        "malformed strings and escapes are syntax errors",
        arguments: [
            "[\"\\ud800\"]",  // lone high surrogate
            "[\"\\udc00\"]",  // lone low surrogate
            "[\"\\ud800\\u0041\"]",  // high surrogate with a non-surrogate after it
            "[\"\\u12\"]",  // short \u escape
            "[\"\\u12G4\"]",  // not hex
            "[\"\\x41\"]",  // not a JSON escape
            "[\"a\tb\"]",  // raw tab
            "[\"a\u{1}b\"]",  // raw control character
            "[\"abc",  // never ends
            "[\"abc\\",  // ends in an escape
            "{\"a\" 1}",  // no colon
            "{\"a\": 1,}",  // trailing comma in an object
            "{,}", "[,]", "[1,,2]", "{\"a\":}", "{1: 2}", "{\"a\":1 \"b\":2}",
            "[01]", "[-]", "[1.]", "[.5]", "[1e]", "[1e+]", "[+1]", "[0x10]", "[1.5.5]",
            "[truex]", "[nul]", "[True]", "[Infinity]", "[-Infinity]",
            "[1]]", "[1] [2]", "}", "]", ":", "\u{FEFF}[]",
        ])
    func syntax(_ text: String) {
        #expect(code(text) == .syntax, "\(text.debugDescription)")
    }

    @Test(
        "numbers beyond 64 bits or beyond a double are out of range",
        arguments: [
            "[18446744073709551616]", "[-9223372036854775809]", "[1e999]", "[-1e400]",
            "[99999999999999999999999999999999999999]",
        ])
    func outOfRange(_ text: String) {
        #expect(code(text) == .numberOutOfRange, "\(text)")
    }

    @Test("numbers at the edges of their ranges parse exactly")
    func numberEdges() throws {
        let v = try JSONParser.parse("[-0, 0, -9223372036854775808, 18446744073709551615, 5e-324, 1.7976931348623157e308, 1E2, 1e-2]")
        #expect(
            v.arrayValue == [
                .int(0), .int(0), .int(.min), .uint(.max), .double(.leastNonzeroMagnitude), .double(.greatestFiniteMagnitude), .double(100),
                .double(0.01),
            ])
    }

    @Test(
        "invalid UTF-8 anywhere is reported as such",
        arguments: [
            [0x5B, 0x22, 0xC0, 0x80, 0x22, 0x5D],  // overlong NUL
            [0x5B, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x5D],  // encoded surrogate
            [0x5B, 0x22, 0xF4, 0x90, 0x80, 0x80, 0x22, 0x5D],  // above U+10FFFF
            [0x5B, 0x22, 0xE2, 0x82, 0x22, 0x5D],  // truncated sequence
            [0x5B, 0x31, 0x5D, 0x80],  // stray continuation byte after the document
        ] as [[UInt8]])
    func invalidUTF8(_ bytes: [UInt8]) {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(JSONError) in try JSONParser.parse(raw) } }
        if case .failure(let error) = result {
            #expect(error.code == .invalidUTF8)
        } else {
            Issue.record("accepted \(bytes)")
        }
    }

    @Test("nesting: 64 levels parse, 65 are too deep, for arrays and objects")
    func depthBoundary() throws {
        _ = try JSONParser.parse(String(repeating: "[", count: 64) + String(repeating: "]", count: 64))
        #expect(code(String(repeating: "[", count: 65) + String(repeating: "]", count: 65)) == .tooDeep)
        let objects = String(repeating: "{\"a\":", count: 65) + "1" + String(repeating: "}", count: 65)
        #expect(code(objects) == .tooDeep)
        // Unbalanced deep input is refused at the limit, without reading on.
        #expect(code(String(repeating: "[", count: 1_000_000)) == .tooDeep)
    }

    @Test("the value budget bounds the tree a text can build")
    func valueBudget() throws {
        let text = "[" + Array(repeating: "[]", count: 1000).joined(separator: ",") + "]"
        #expect(code(text, limits: JSONParser.Limits(maximumValues: 1001)) == nil)
        #expect(code(text, limits: JSONParser.Limits(maximumValues: 1000)) == .tooLarge)
        let objects = "{" + (0..<100).map { "\"k\($0)\": {\"x\": [1, 2]}" }.joined(separator: ",") + "}"
        #expect(code(objects, limits: JSONParser.Limits(maximumValues: 400)) == .tooLarge)
        #expect(code(objects, limits: JSONParser.Limits(maximumValues: 401)) == nil)
    }

    @Test("the reader streams tokens and skips values without keeping them")
    func readerTokens() throws {
        let bytes = Array(#" {"a": [1, {"b": null}], "c\u0000": "d", "e": -2.5} "#.utf8)
        try bytes.withUnsafeBytes { raw in
            var reader = try JSONReader(raw)
            #expect(try reader.next() == .beginObject)
            #expect(try reader.next() == .key("a"))
            try reader.skipValue()
            #expect(try reader.next() == .key("c\u{0}"))
            #expect(try reader.next() == .string("d"))
            #expect(try reader.next() == .key("e"))
            #expect(try reader.next() == .double(-2.5))
            #expect(try reader.next() == .endObject)
            #expect(try reader.next() == .end)
            #expect(reader.depth == 0)
        }
    }

    @Test("documents that are a bare scalar parse", arguments: ["1", " -3 ", "\"x\"", "true", "null", "2.5e3"])
    func scalars(_ text: String) throws {
        _ = try JSONParser.parse(text)
    }

    @Test("a million-element array of small values parses in linear time")
    func largeFlat() throws {
        let text = "[" + Array(repeating: "0", count: 1_000_000).joined(separator: ",") + "]"
        let clock = ContinuousClock()
        let start = clock.now
        let value = try JSONParser.parse(text)
        #expect(value.arrayValue?.count == 1_000_000)
        #expect(clock.now - start < .seconds(30))
    }
}
