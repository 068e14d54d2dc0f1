import SafePickle
import Testing

/// Bytes of a `BINUNICODE` string.
func str(_ s: String) -> [UInt8] {
    let b = Array(s.utf8)
    return [0x58] + withUnsafeBytes(of: UInt32(b.count).littleEndian, Array.init) + b
}

func run(_ bytes: [UInt8], limits: PickleLimits = .default) throws(PickleError) -> PickleDocument {
    try PickleMachine(limits: limits).load(bytes)
}

func errorCode(_ bytes: [UInt8], limits: PickleLimits = .default) -> PickleError.Code? {
    do throws(PickleError) {
        _ = try run(bytes, limits: limits)
        return nil
    } catch {
        return error.code
    }
}

@Suite("pickle machine: values")
struct PickleMachineValueTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var expected: PickleValue
        var testDescription: String { name }
    }

    static let scalars: [Case] = [
        Case(name: "NONE", bytes: [0x80, 2, 0x4E, 0x2E], expected: .none),
        Case(name: "NEWTRUE", bytes: [0x80, 2, 0x88, 0x2E], expected: .bool(true)),
        Case(name: "NEWFALSE", bytes: [0x80, 2, 0x89, 0x2E], expected: .bool(false)),
        Case(name: "BININT1", bytes: [0x80, 2, 0x4B, 200, 0x2E], expected: .int(200)),
        Case(name: "BININT2", bytes: [0x80, 2, 0x4D, 0xE9, 0x03, 0x2E], expected: .int(1001)),
        Case(name: "BININT negative", bytes: [0x80, 2, 0x4A, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E], expected: .int(-1)),
        Case(name: "LONG1 8 bytes", bytes: [0x80, 2, 0x8A, 8, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x2E], expected: .int(Int64.min)),
        Case(name: "LONG1 empty", bytes: [0x80, 2, 0x8A, 0, 0x2E], expected: .int(0)),
        Case(
            name: "LONG1 torch magic", bytes: [0x80, 2, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E],
            expected: .bigInt([0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19])),
        Case(name: "INT I01", bytes: Array("I01\n.".utf8), expected: .bool(true)),
        Case(name: "INT decimal", bytes: Array("I-42\n.".utf8), expected: .int(-42)),
        Case(name: "LONG big", bytes: Array("L18446744073709551616L\n.".utf8), expected: .bigInt([0, 0, 0, 0, 0, 0, 0, 0, 1])),
        Case(name: "BINFLOAT", bytes: [0x80, 2, 0x47, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0, 0x2E], expected: .float(1.5)),
        Case(name: "FLOAT", bytes: Array("F0.25\n.".utf8), expected: .float(0.25)),
        Case(name: "BINUNICODE", bytes: [0x80, 2] + str("état") + [0x2E], expected: .string("état")),
        Case(name: "SHORT_BINUNICODE", bytes: [0x80, 4, 0x8C, 2, 0x68, 0x69, 0x2E], expected: .string("hi")),
        Case(name: "SHORT_BINSTRING", bytes: [0x80, 2, 0x55, 2, 0x68, 0x69, 0x2E], expected: .string("hi")),
        Case(name: "STRING", bytes: Array("S'a\\nb\\x41'\n.".utf8), expected: .string("a\nbA")),
        Case(name: "UNICODE", bytes: Array("Vcaf\\u00e9\n.".utf8), expected: .string("café")),
        Case(name: "SHORT_BINBYTES", bytes: [0x80, 3, 0x43, 2, 1, 2, 0x2E], expected: .bytes([1, 2])),
        Case(name: "BINBYTES8", bytes: [0x80, 4, 0x8E, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0x2E], expected: .bytes([9])),
        Case(name: "GLOBAL", bytes: Array("cos\nsystem\n.".utf8), expected: .global(PickleGlobal(module: "os", name: "system"))),
    ]

    @Test("scalars and symbols", arguments: scalars)
    func scalar(_ c: Case) throws {
        let doc = try run(c.bytes)
        #expect(doc[doc.root] == c.expected)
    }

    @Test("dicts, lists, tuples, memo and marks")
    func containers() throws {
        // {'a': [1, 2, (3,)], 'b': <memo 0 = the list>}
        var bytes: [UInt8] = [0x80, 2, 0x7D, 0x28] + str("a") + [0x5D, 0x71, 0x00, 0x28, 0x4B, 1, 0x4B, 2, 0x4B, 3, 0x85, 0x65]
        bytes += str("b") + [0x68, 0x00, 0x75, 0x2E]
        let doc = try run(bytes)
        let items = doc.items(of: doc.root)
        #expect(items.count == 2)
        #expect(doc.string(items[0].key) == "a")
        #expect(items[0].value == items[1].value)  // memo GET returns the same value, not a copy
        let list = doc.elements(of: items[0].value)
        #expect(list.count == 3)
        #expect(doc.integer(list[1]) == 2)
        #expect(doc.sequence(list[2]).map { $0.map { doc.integer($0) } } == [3])
    }

    @Test("REDUCE, NEWOBJ and BUILD become symbols; OrderedDict() is a dict")
    func symbolicCalls() throws {
        // OrderedDict(); SETITEM 'k' 1; BUILD {'x': 1}
        var bytes: [UInt8] = [0x80, 2] + Array("ccollections\nOrderedDict\n".utf8) + [0x29, 0x52]
        bytes += str("k") + [0x4B, 1, 0x73, 0x7D] + str("x") + [0x4B, 1, 0x73, 0x62, 0x2E]
        let doc = try run(bytes)
        #expect(doc[doc.root] == .dict(ordered: true))
        #expect(doc.items(of: doc.root).count == 1)
        #expect(doc.states[doc.root] != nil)
        // cls() via NEWOBJ, then a persistent id
        let newobj: [UInt8] = [0x80, 2] + Array("cm\nC\n".utf8) + [0x29, 0x81, 0x28] + str("storage") + [0x74, 0x51, 0x86, 0x2E]
        let doc2 = try run(newobj)
        let pair = try #require(doc2.sequence(doc2.root))
        #expect(doc2.call(pair[0])?.kind == .newObject)
        #expect(doc2.persistentValues == [pair[1]])
        #expect(doc2.globals.map(\.qualifiedName) == ["m.C"])
    }

    @Test("concatenated pickles: endOffset points at the next one")
    func endOffset() throws {
        let bytes: [UInt8] = [0x80, 2, 0x4B, 1, 0x2E, 0x80, 2, 0x4B, 2, 0x2E]
        let first = try PickleMachine().load(bytes)
        #expect(first.endOffset == 5)
        let second = try PickleMachine().load(bytes, from: first.endOffset)
        #expect(second[second.root] == .int(2))
    }

    @Test("a cyclic list is built and freed without recursion")
    func cycle() throws {
        // l = []; l.append(l)
        let doc = try run([0x80, 2, 0x5D, 0x71, 0, 0x68, 0, 0x61, 0x2E])
        #expect(doc.elements(of: doc.root) == [doc.root])
    }
}

@Suite("pickle machine: refusals and limits")
struct PickleMachineLimitTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var code: PickleError.Code
        var testDescription: String { "\(name) → \(code)" }
    }

    static let refusals: [Case] = [
        Case(name: "INST", bytes: Array("(ios\nsystem\n.".utf8), code: .forbiddenOpcode),
        Case(name: "OBJ", bytes: Array("(cos\nsystem\no.".utf8), code: .forbiddenOpcode),
        Case(name: "EXT1", bytes: [0x80, 2, 0x82, 1, 0x2E], code: .forbiddenOpcode),
        Case(name: "EXT2", bytes: [0x80, 2, 0x83, 1, 0, 0x2E], code: .forbiddenOpcode),
        Case(name: "EXT4", bytes: [0x80, 2, 0x84, 1, 0, 0, 0, 0x2E], code: .forbiddenOpcode),
        Case(name: "PERSID", bytes: Array("P0\n.".utf8), code: .forbiddenOpcode),
        Case(name: "NEWOBJ_EX", bytes: [0x80, 4, 0x4E, 0x29, 0x7D, 0x92, 0x2E], code: .forbiddenOpcode),
        Case(name: "NEXT_BUFFER", bytes: [0x80, 5, 0x97, 0x2E], code: .forbiddenOpcode),
        Case(name: "READONLY_BUFFER", bytes: [0x80, 5, 0x43, 0, 0x98, 0x2E], code: .forbiddenOpcode),
        Case(name: "unknown opcode", bytes: [0x80, 2, 0xFF, 0x2E], code: .unknownOpcode),
        Case(name: "no STOP", bytes: [0x80, 2, 0x4E], code: .truncated),
        Case(name: "empty", bytes: [], code: .truncated),
        Case(name: "BININT cut", bytes: [0x80, 2, 0x4A, 1, 2], code: .truncated),
        Case(name: "PROTO 6", bytes: [0x80, 6, 0x4E, 0x2E], code: .invalidProtocol),
        Case(name: "PROTO twice", bytes: [0x80, 2, 0x80, 2, 0x4E, 0x2E], code: .invalidProtocol),
        Case(name: "POP on empty", bytes: [0x80, 2, 0x30, 0x2E], code: .stackUnderflow),
        Case(name: "STOP on empty", bytes: [0x80, 2, 0x2E], code: .stackUnderflow),
        Case(name: "TUPLE without MARK", bytes: [0x80, 2, 0x4E, 0x74, 0x2E], code: .missingMark),
        Case(name: "TUPLE2 with one value", bytes: [0x80, 2, 0x4E, 0x86, 0x2E], code: .stackUnderflow),
        Case(name: "SETITEM on a list", bytes: [0x80, 2, 0x5D, 0x4E, 0x4E, 0x73, 0x2E], code: .invalidOperand),
        Case(name: "APPEND on a dict", bytes: [0x80, 2, 0x7D, 0x4E, 0x61, 0x2E], code: .invalidOperand),
        Case(name: "SETITEMS odd", bytes: [0x80, 2, 0x7D, 0x28, 0x4E, 0x75, 0x2E], code: .invalidOperand),
        Case(name: "REDUCE with a list", bytes: [0x80, 2, 0x4E, 0x5D, 0x52, 0x2E], code: .invalidOperand),
        Case(name: "STACK_GLOBAL of ints", bytes: [0x80, 4, 0x4B, 1, 0x4B, 2, 0x93, 0x2E], code: .invalidOperand),
        Case(name: "BINGET never PUT", bytes: [0x80, 2, 0x68, 7, 0x2E], code: .missingMemo),
        Case(name: "invalid UTF-8", bytes: [0x80, 2, 0x58, 1, 0, 0, 0, 0xFF, 0x2E], code: .invalidValue),
        Case(name: "bad INT literal", bytes: Array("Ixyz\n.".utf8), code: .invalidValue),
        Case(name: "BINSTRING negative length", bytes: [0x80, 2, 0x54, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E], code: .invalidValue),
        // Huge declared lengths fail before any allocation.
        Case(name: "BINUNICODE 4 GiB", bytes: [0x80, 2, 0x58, 0xFF, 0xFF, 0xFF, 0xFF, 0x61, 0x2E], code: .truncated),
        Case(name: "BINUNICODE8 2^63", bytes: [0x80, 4, 0x8D, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x2E], code: .truncated),
        Case(name: "BINBYTES8 u64 max", bytes: [0x80, 4, 0x8E] + [UInt8](repeating: 0xFF, count: 8) + [0x2E], code: .truncated),
        Case(name: "BYTEARRAY8 2^40", bytes: [0x80, 5, 0x96, 0, 0, 0, 0, 0, 1, 0, 0, 0x2E], code: .truncated),
        Case(name: "LONG4 1 GiB", bytes: [0x80, 2, 0x8B, 0, 0, 0, 0x40, 0x2E], code: .truncated),
        Case(name: "FRAME past end", bytes: [0x80, 4, 0x95, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x4E, 0x2E], code: .truncated),
        // BINBYTES whose bytes cross the end of their FRAME (cpython#154848 divergence).
        Case(
            name: "literal crossing FRAME", bytes: [0x80, 4, 0x95, 5, 0, 0, 0, 0, 0, 0, 0, 0x42, 4, 0, 0, 0, 1, 2, 3, 4, 0x2E],
            code: .frameViolation),
        Case(
            name: "FRAME inside FRAME", bytes: [0x80, 4, 0x95, 12, 0, 0, 0, 0, 0, 0, 0, 0x95, 1, 0, 0, 0, 0, 0, 0, 0, 0x4E, 0x2E, 0x4E, 0x2E],
            code: .frameViolation),
    ]

    @Test("refused and malformed input", arguments: refusals)
    func refused(_ c: Case) {
        #expect(errorCode(c.bytes) == c.code)
    }

    @Test("consecutive frames are fine")
    func frames() throws {
        let bytes: [UInt8] = [0x80, 4, 0x95, 2, 0, 0, 0, 0, 0, 0, 0, 0x4B, 7, 0x95, 1, 0, 0, 0, 0, 0, 0, 0, 0x2E]
        let doc = try run(bytes)
        #expect(doc[doc.root] == .int(7))
    }

    @Test("a million MARKs stop at the mark limit")
    func deepMarks() {
        let bytes: [UInt8] = [0x80, 2] + [UInt8](repeating: 0x28, count: 1_000_000) + [0x2E]
        #expect(errorCode(bytes) == .limitExceeded)
    }

    @Test("a million EMPTY_LISTs stop at the stack limit")
    func wideStack() {
        let bytes: [UInt8] = [0x80, 2] + [UInt8](repeating: 0x5D, count: 1_000_001) + [0x2E]
        #expect(errorCode(bytes) == .limitExceeded)
    }

    @Test("a million nested lists stop at the nesting limit")
    func deepLists() {
        let n = 1_000_000
        let bytes: [UInt8] = [0x80, 2] + [UInt8](repeating: 0x5D, count: n) + [UInt8](repeating: 0x61, count: n - 1) + [0x2E]
        var limits = PickleLimits()
        limits.maximumStackDepth = 2_000_000
        #expect(errorCode(bytes, limits: limits) == .limitExceeded)
    }

    @Test("nested tuples deeper than the limit are refused; under it they load and free without recursion")
    func nestedTuples() throws {
        let deep: [UInt8] = [0x80, 2, 0x29] + [UInt8](repeating: 0x85, count: 5_000) + [0x2E]
        #expect(errorCode(deep) == .limitExceeded)
        var limits = PickleLimits()
        limits.maximumNesting = 2_000_000
        let deeper: [UInt8] = [0x80, 2, 0x29] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2E]
        let doc = try run(deeper, limits: limits)
        #expect(doc.values.count == 1_000_001)
    }

    @Test("billion laughs: memo GETs share one value instead of copying")
    func billionLaughs() throws {
        // x = ['lol']; then 30 times: x = [x, x] (memo PUT 0 / GET 0)
        var bytes: [UInt8] = [0x80, 2, 0x5D] + str("lol") + [0x61, 0x71, 0]
        for _ in 0..<30 {
            bytes += [0x30, 0x5D, 0x68, 0, 0x61, 0x68, 0, 0x61, 0x71, 0]
        }
        bytes += [0x2E]
        let doc = try run(bytes)
        #expect(doc.values.count < 100)
    }

    @Test("opcode, memo and value limits")
    func counters() {
        var limits = PickleLimits()
        limits.maximumOpcodes = 10
        #expect(errorCode([0x80, 2] + [UInt8](repeating: 0x4E, count: 20) + [0x2E], limits: limits) == .limitExceeded)
        limits = PickleLimits()
        limits.maximumMemoEntries = 3
        #expect(errorCode([0x80, 2, 0x4E, 0x71, 0, 0x71, 1, 0x71, 2, 0x71, 3, 0x2E], limits: limits) == .limitExceeded)
        limits = PickleLimits()
        limits.maximumValues = 5
        #expect(errorCode([0x80, 2] + [UInt8](repeating: 0x4E, count: 6) + [0x2E], limits: limits) == .limitExceeded)
        limits = PickleLimits()
        limits.maximumLiteralBytes = 2
        #expect(errorCode([0x80, 2] + str("abc") + [0x2E], limits: limits) == .limitExceeded)
    }

    @Test("errors carry the offset of the failing opcode")
    func offsets() {
        do throws(PickleError) {
            _ = try run([0x80, 2, 0x4E, 0x4E, 0x69])
            Issue.record("accepted")
        } catch {
            #expect(error.offset == 4)
            #expect(error.description.contains("byte 4"))
        }
    }
}
