import StrictJSON
import Testing

@Suite("strict JSON")
struct JSONParserTests {
    @Test(
        "duplicate keys are refused at any depth, after unescaping",
        arguments: [
            #"{"a": 1, "a": 2}"#,
            #"{"x": {"b": 1, "b": 1}}"#,
            #"[{"k": 1}, {"k": 2, "k": 3}]"#,
            #"{"a": 1, "\u0061": 2}"#,
            #"{"😀": 1, "\ud83d\ude00": 2}"#,
        ])
    func duplicates(_ text: String) {
        do {
            _ = try JSONParser.parse(text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.code == .duplicateKey)
        }
    }

    @Test("the same key in sibling objects is fine")
    func siblings() throws {
        let v = try JSONParser.parse(#"{"a": {"k": 1}, "b": {"k": 2}, "c": ["k", "k"]}"#)
        #expect(v.objectValue?["b"]?.objectValue?["k"] == .int(2))
    }

    @Test("strict syntax", arguments: ["{'a': 1}", "[1, 2,]", #"{"a": 1} x"#, "", "   ", #"{"a": NaN}"#, "{\"a\": 1", "tru"])
    func refusesLoose(_ text: String) {
        #expect(throws: JSONError.self) { try JSONParser.parse(text) }
    }

    @Test("numbers keep their range")
    func numbers() throws {
        let v = try JSONParser.parse("[0, -1, 9223372036854775807, 18446744073709551614, 1.5, -9223372036854775808]")
        #expect(v.arrayValue == [.int(0), .int(-1), .int(Int64.max), .uint(18_446_744_073_709_551_614), .double(1.5), .int(Int64.min)])
        #expect(throws: JSONError.self) { try JSONParser.parse("[18446744073709551616]") }
    }

    @Test("whitespace around the document and invalid UTF-8")
    func edges() throws {
        #expect(try JSONParser.parse(" \t\n{}\r\n ") == .object(JSONObject()))
        let bad: [UInt8] = [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D]
        do {
            _ = try bad.withUnsafeBytes { try JSONParser.parse($0) }
            Issue.record("accepted invalid UTF-8")
        } catch {
            #expect((error as? JSONError)?.code == .invalidUTF8)
        }
    }

    @Test("nesting is bounded")
    func depth() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONError.self) { try JSONParser.parse(deep) }
    }

    @Test("writing and reading back gives the same value")
    func roundTrip() throws {
        let v: JSONValue = ["name": "a\"b\\c\n\u{1}é😀", "n": [1, -2, 3.25, 1e300], "o": ["x": nil, "t": true]]
        #expect(try JSONParser.parse(v.serialized()) == v)
        #expect(try JSONParser.parse(v.serialized(pretty: true)) == v)
    }
}

@Suite("strict JSON at scale")
struct JSONScaleTests {
    @Test("a hostile header with 100,000 keys cannot stall the parser (key bookkeeping is linear)")
    func manyKeys() throws {
        let text = "{" + (0..<100_000).map { "\"key\($0)\": \($0)" }.joined(separator: ", ") + "}"
        let clock = ContinuousClock()
        let start = clock.now
        let value = try JSONParser.parse(text)
        let elapsed = clock.now - start
        #expect(value.objectValue?.count == 100_000)
        // Quadratic key bookkeeping took minutes here; linear takes about a second in a debug build.
        #expect(elapsed < .seconds(20), "took \(elapsed)")
        let duplicate = String(text.dropLast()) + ", \"key99999\": 0}"
        #expect(throws: JSONError.self) { try JSONParser.parse(duplicate) }
    }
}
