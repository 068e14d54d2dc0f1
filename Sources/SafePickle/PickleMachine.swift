/// A pickle virtual machine that never imports or calls anything.
///
/// It runs the opcodes of protocols 0 to 5 over a byte buffer and builds a `PickleDocument`:
/// `GLOBAL`/`STACK_GLOBAL` become opaque `PickleGlobal` symbols, `REDUCE`/`NEWOBJ` become
/// `PickleCall` records, `BUILD` records a state, `BINPERSID` records the persistent id.
/// `INST`, `OBJ`, `EXT1/2/4`, `PERSID`, `NEWOBJ_EX`, `NEXT_BUFFER` and `READONLY_BUFFER`
/// are refused. `FRAME` boundaries are enforced. Every resource is bounded by `PickleLimits`.
public struct PickleMachine: Sendable {
    public var limits: PickleLimits
    /// The unpickler the pickle is meant for: how the globals it records resolve.
    public var context: UnpicklerContext

    public init(limits: PickleLimits = .default, context: UnpicklerContext = .pickle) {
        self.limits = limits
        self.context = context
    }

    /// Runs one pickle starting at `start` up to and including its `STOP`.
    ///
    /// - Returns: the document; its `endOffset` is the offset just after `STOP` (concatenated
    ///   pickles follow there).
    /// - Throws: `PickleError` for malformed input, refused opcodes and exceeded limits.
    /// - Complexity: O(input bytes + opcodes); memory O(values).
    public func load(_ input: UnsafeRawBufferPointer, from start: Int = 0) throws(PickleError) -> PickleDocument {
        var run = Run(input: input, start: start, limits: limits, context: context)
        return try run.execute()
    }

    /// Runs one pickle held in an array.
    public func load(_ bytes: [UInt8], from start: Int = 0) throws(PickleError) -> PickleDocument {
        let result: Result<PickleDocument, PickleError> = bytes.withUnsafeBytes { raw in
            do throws(PickleError) { return .success(try load(raw, from: start)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}

/// The state of one run.
private struct Run {
    let input: UnsafeRawBufferPointer
    let start: Int
    let limits: PickleLimits
    let context: UnpicklerContext
    var reader: PickleReader
    var document = PickleDocument()
    var stack: [PickleValueID] = []
    /// Stack heights at each open `MARK`.
    var marks: [Int] = []
    var memo: [Int: PickleValueID] = [:]
    /// Nesting depth of each value, parallel to `document.values`.
    var depth: [Int32] = []
    /// Values plus container elements created so far.
    var budgetUsed = 0
    var offset = 0

    init(input: UnsafeRawBufferPointer, start: Int, limits: PickleLimits, context: UnpicklerContext) {
        self.input = input
        self.start = start
        self.limits = limits
        self.context = context
        self.reader = PickleReader(input, position: start, maximumLiteralBytes: limits.maximumLiteralBytes)
    }

    // MARK: errors and limits

    func fail(_ code: PickleError.Code, _ message: String) -> PickleError {
        PickleError(code, message, at: offset)
    }

    mutating func charge(_ count: Int = 1) throws(PickleError) {
        budgetUsed += count
        if budgetUsed > limits.maximumValues {
            throw fail(.limitExceeded, "more than \(limits.maximumValues) values")
        }
    }

    // MARK: arena

    mutating func make(_ value: PickleValue, depth childDepth: Int32 = 0) throws(PickleError) -> PickleValueID {
        try charge()
        let d = childDepth + 1
        if Int(d) > limits.maximumNesting {
            throw fail(.limitExceeded, "values nested deeper than \(limits.maximumNesting)")
        }
        document.values.append(value)
        depth.append(d)
        return PickleValueID(document.values.count - 1)
    }

    func maxDepth(_ ids: [PickleValueID]) -> Int32 {
        var d: Int32 = 0
        for id in ids { d = max(d, depth[id.index]) }
        return d
    }

    mutating func deepen(_ target: PickleValueID, containing child: PickleValueID) throws(PickleError) {
        let d = depth[child.index] + 1
        if d > depth[target.index] {
            if Int(d) > limits.maximumNesting {
                throw fail(.limitExceeded, "values nested deeper than \(limits.maximumNesting)")
            }
            depth[target.index] = d
        }
    }

    // MARK: stack

    mutating func push(_ id: PickleValueID) throws(PickleError) {
        if stack.count >= limits.maximumStackDepth {
            throw fail(.limitExceeded, "stack deeper than \(limits.maximumStackDepth)")
        }
        stack.append(id)
    }

    mutating func pushNew(_ value: PickleValue, depth d: Int32 = 0) throws(PickleError) {
        try push(try make(value, depth: d))
    }

    /// The lowest stack index the current opcode may pop (everything above the last mark).
    var floor: Int { marks.last ?? 0 }

    mutating func pop(_ opcode: PickleOpcode) throws(PickleError) -> PickleValueID {
        guard stack.count > floor else {
            throw fail(.stackUnderflow, "\(opcode.name) on an empty stack")
        }
        return stack.removeLast()
    }

    func top(_ opcode: PickleOpcode) throws(PickleError) -> PickleValueID {
        guard stack.count > floor else {
            throw fail(.stackUnderflow, "\(opcode.name) on an empty stack")
        }
        return stack[stack.count - 1]
    }

    /// Pops everything down to the last mark, and the mark.
    mutating func popMark(_ opcode: PickleOpcode) throws(PickleError) -> [PickleValueID] {
        guard let mark = marks.popLast() else {
            throw fail(.missingMark, "\(opcode.name) without a MARK")
        }
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    // MARK: literals

    func bytes(_ range: Range<Int>) -> [UInt8] {
        Array(UnsafeRawBufferPointer(rebasing: input[range]))
    }

    func utf8(_ range: Range<Int>, _ opcode: PickleOpcode) throws(PickleError) -> String {
        let raw = UnsafeRawBufferPointer(rebasing: input[range])
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw fail(.invalidValue, "\(opcode.name) is not valid UTF-8")
        }
        return s
    }

    func utf8(_ bytes: [UInt8], _ opcode: PickleOpcode) throws(PickleError) -> String {
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw fail(.invalidValue, "\(opcode.name) is not valid UTF-8")
        }
        return s
    }

    func ascii(_ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: input[range]), as: UTF8.self)
    }

    /// Two's-complement little-endian bytes as an int value.
    mutating func integerValue(littleEndian raw: [UInt8]) throws(PickleError) -> PickleValue {
        if raw.isEmpty { return .int(0) }
        if raw.count <= 8 {
            var v: UInt64 = 0
            for b in raw.reversed() { v = v << 8 | UInt64(b) }
            let shift = UInt64(64 - 8 * raw.count)
            return .int(Int64(bitPattern: v << shift) >> Int64(shift))
        }
        return .bigInt(PickleIntegers.minimal(raw))
    }

    /// A protocol-0 decimal integer literal.
    mutating func decimal(_ text: String, _ opcode: PickleOpcode) throws(PickleError) -> PickleValue {
        if text.utf8.count > limits.maximumIntegerDigits {
            throw fail(.limitExceeded, "\(opcode.name) literal longer than \(limits.maximumIntegerDigits) digits")
        }
        if let v = Int64(text) { return .int(v) }
        guard let bytes = PickleIntegers.parseDecimal(text) else {
            throw fail(.invalidValue, "\(opcode.name) literal '\(text.prefix(40))' is not an integer")
        }
        return .bigInt(bytes)
    }

    /// A text memo index, read as CPython reads it (`PythonInteger.parseDecimalLine`).
    func memoIndex(_ range: Range<Int>, _ opcode: PickleOpcode) throws(PickleError) -> Int {
        guard let v = PythonInteger.parseDecimalLine(UnsafeRawBufferPointer(rebasing: input[range])), v >= 0 else {
            throw fail(.invalidValue, "\(opcode.name) index '\(ascii(range).prefix(40))' is not a non-negative integer")
        }
        return v
    }

    mutating func memoGet(_ index: Int, _ opcode: PickleOpcode) throws(PickleError) {
        guard let id = memo[index] else {
            throw fail(.missingMemo, "\(opcode.name) \(index) of a memo entry never stored")
        }
        try push(id)
    }

    mutating func memoPut(_ index: Int, _ opcode: PickleOpcode) throws(PickleError) {
        let id = try top(opcode)
        if memo[index] == nil, memo.count >= limits.maximumMemoEntries {
            throw fail(.limitExceeded, "more than \(limits.maximumMemoEntries) memo entries")
        }
        memo[index] = id
    }

    // MARK: containers

    mutating func appendItems(_ items: [PickleValueID], to target: PickleValueID, _ opcode: PickleOpcode) throws(PickleError) {
        try charge(items.count)
        switch document.values[target.index] {
        case .list:
            document.containers[target.index, default: []].append(contentsOf: items)
        case .call:
            document.appended[target.index, default: []].append(contentsOf: items)
        default:
            throw fail(.invalidOperand, "\(opcode.name) on a \(document.values[target.index].kindName), not a list")
        }
        for item in items { try deepen(target, containing: item) }
    }

    mutating func setItems(_ flat: [PickleValueID], on target: PickleValueID, _ opcode: PickleOpcode) throws(PickleError) {
        guard flat.count % 2 == 0 else {
            throw fail(.invalidOperand, "\(opcode.name) with an odd number of keys and values")
        }
        switch document.values[target.index] {
        case .dict, .call:
            try charge(flat.count)
            document.containers[target.index, default: []].append(contentsOf: flat)
        default:
            throw fail(.invalidOperand, "\(opcode.name) on a \(document.values[target.index].kindName), not a dict")
        }
        for item in flat { try deepen(target, containing: item) }
    }

    mutating func makeTuple(_ items: [PickleValueID]) throws(PickleError) -> PickleValueID {
        try charge(items.count)
        return try make(.tuple(items), depth: maxDepth(items))
    }

    // MARK: the loop

    mutating func execute() throws(PickleError) -> PickleDocument {
        var opcodes = 0
        while true {
            offset = reader.position
            opcodes += 1
            if opcodes > limits.maximumOpcodes {
                throw fail(.limitExceeded, "more than \(limits.maximumOpcodes) opcodes")
            }
            if reader.isAtEnd {
                throw fail(.truncated, "pickle ends without STOP")
            }
            let instruction = try reader.next()
            let op = instruction.opcode
            if op.isForbidden {
                throw fail(.forbiddenOpcode, "opcode \(op.name) is not accepted (it can call or resolve arbitrary code)")
            }
            switch (op, instruction.argument) {
            case (.proto, .integer(let version)):
                guard offset == start else {
                    throw fail(.invalidProtocol, "PROTO is not the first opcode")
                }
                guard version <= 5 else {
                    throw fail(.invalidProtocol, "unsupported pickle protocol \(version)")
                }
                document.protocolVersion = version
            case (.frame, _):
                break  // boundaries are enforced by the reader
            case (.stop, _):
                let root = try pop(op)
                document.root = root
                document.endOffset = reader.position
                return document

            case (.mark, _):
                if marks.count >= limits.maximumMarkDepth {
                    throw fail(.limitExceeded, "more than \(limits.maximumMarkDepth) open MARKs")
                }
                marks.append(stack.count)
            case (.pop, _):
                if stack.count > floor {
                    stack.removeLast()
                } else if !marks.isEmpty {
                    marks.removeLast()
                } else {
                    throw fail(.stackUnderflow, "POP on an empty stack")
                }
            case (.popMark, _):
                _ = try popMark(op)
            case (.dup, _):
                try push(try top(op))

            // Scalars
            case (.none, _):
                try pushNew(.none)
            case (.newTrue, _):
                try pushNew(.bool(true))
            case (.newFalse, _):
                try pushNew(.bool(false))
            case (.binInt, .integer(let v)), (.binInt1, .integer(let v)), (.binInt2, .integer(let v)):
                try pushNew(.int(Int64(v)))
            case (.int, .bytes(let range)):
                let text = ascii(range)
                if text == "00" {
                    try pushNew(.bool(false))
                } else if text == "01" {
                    try pushNew(.bool(true))
                } else {
                    try pushNew(try decimal(text, op))
                }
            case (.long, .bytes(let range)):
                var text = ascii(range)
                if text.hasSuffix("L") { text.removeLast() }
                try pushNew(try decimal(text, op))
            case (.long1, .bytes(let range)), (.long4, .bytes(let range)):
                if range.count > limits.maximumIntegerDigits {
                    throw fail(.limitExceeded, "\(op.name) of \(range.count) bytes exceeds \(limits.maximumIntegerDigits)")
                }
                try pushNew(try integerValue(littleEndian: bytes(range)))
            case (.float, .bytes(let range)):
                guard let v = Double(ascii(range)) else {
                    throw fail(.invalidValue, "FLOAT literal is not a number")
                }
                try pushNew(.float(v))
            case (.binFloat, .float(let v)):
                try pushNew(.float(v))

            // Strings and bytes
            case (.binUnicode, .bytes(let range)), (.shortBinUnicode, .bytes(let range)), (.binUnicode8, .bytes(let range)),
                (.binString, .bytes(let range)), (.shortBinString, .bytes(let range)):
                try pushNew(.string(try utf8(range, op)))
            case (.unicode, .bytes(let range)):
                guard let s = PickleText.rawUnicodeEscape(UnsafeRawBufferPointer(rebasing: input[range])) else {
                    throw fail(.invalidValue, "UNICODE literal has a bad escape")
                }
                try pushNew(.string(s))
            case (.string, .bytes(let range)):
                guard let raw = PickleText.quotedString(UnsafeRawBufferPointer(rebasing: input[range])) else {
                    throw fail(.invalidValue, "STRING literal is not a quoted string")
                }
                try pushNew(.string(try utf8(raw, op)))
            case (.binBytes, .bytes(let range)), (.shortBinBytes, .bytes(let range)), (.binBytes8, .bytes(let range)),
                (.byteArray8, .bytes(let range)):
                try charge(range.count / 64)
                try pushNew(.bytes(bytes(range)))

            // Containers
            case (.emptyTuple, _):
                try push(try makeTuple([]))
            case (.tuple, _):
                let items = try popMark(op)
                try push(try makeTuple(items))
            case (.tuple1, _), (.tuple2, _), (.tuple3, _):
                let n = op == .tuple1 ? 1 : op == .tuple2 ? 2 : 3
                guard stack.count - floor >= n else {
                    throw fail(.stackUnderflow, "\(op.name) needs \(n) values")
                }
                let items = Array(stack[(stack.count - n)...])
                stack.removeLast(n)
                try push(try makeTuple(items))
            case (.emptyList, _):
                try pushNew(.list)
            case (.list, _):
                let items = try popMark(op)
                let id = try make(.list, depth: maxDepth(items))
                try charge(items.count)
                document.containers[id.index] = items
                try push(id)
            case (.append, _):
                let item = try pop(op)
                try appendItems([item], to: try top(op), op)
            case (.appends, _):
                let items = try popMark(op)
                try appendItems(items, to: try top(op), op)
            case (.emptyDict, _):
                try pushNew(.dict(ordered: false))
            case (.dict, _):
                let items = try popMark(op)
                let id = try make(.dict(ordered: false))
                try push(id)
                try setItems(items, on: id, op)
            case (.setItem, _):
                let value = try pop(op)
                let key = try pop(op)
                try setItems([key, value], on: try top(op), op)
            case (.setItems, _):
                let items = try popMark(op)
                try setItems(items, on: try top(op), op)
            case (.emptySet, _):
                try pushNew(.set)
            case (.addItems, _):
                let items = try popMark(op)
                let target = try top(op)
                guard case .set = document.values[target.index] else {
                    throw fail(.invalidOperand, "ADDITEMS on a \(document.values[target.index].kindName), not a set")
                }
                try charge(items.count)
                document.containers[target.index, default: []].append(contentsOf: items)
                for item in items { try deepen(target, containing: item) }
            case (.frozenSet, _):
                let items = try popMark(op)
                try charge(items.count)
                try pushNew(.frozenSet(items), depth: maxDepth(items))

            // Memo
            case (.get, .bytes(let range)):
                try memoGet(try memoIndex(range, op), op)
            case (.binGet, .integer(let i)), (.longBinGet, .integer(let i)):
                try memoGet(i, op)
            case (.put, .bytes(let range)):
                try memoPut(try memoIndex(range, op), op)
            case (.binPut, .integer(let i)), (.longBinPut, .integer(let i)):
                try memoPut(i, op)
            case (.memoize, _):
                try memoPut(memo.count, op)

            // Symbols: recorded, never resolved
            case (.global, .lines(let moduleRange, let nameRange)):
                let module = try utf8(moduleRange, op)
                let name = try utf8(nameRange, op)
                document.globals.append(
                    PickleGlobalReference(
                        module: module, name: name, offset: offset, opcode: op, protocolVersion: document.protocolVersion, context: context))
                try pushNew(.global(PickleGlobal(module: module, name: name)))
            case (.stackGlobal, _):
                let nameID = try pop(op)
                let moduleID = try pop(op)
                guard case .string(let module) = document.values[moduleID.index],
                    case .string(let name) = document.values[nameID.index]
                else {
                    throw fail(.invalidOperand, "STACK_GLOBAL operands are not two strings")
                }
                document.globals.append(
                    PickleGlobalReference(
                        module: module, name: name, offset: offset, opcode: op, protocolVersion: document.protocolVersion, context: context))
                try pushNew(.global(PickleGlobal(module: module, name: name)))
            case (.reduce, _):
                let arguments = try pop(op)
                let callable = try pop(op)
                guard case .tuple(let args) = document.values[arguments.index] else {
                    throw fail(.invalidOperand, "REDUCE arguments are a \(document.values[arguments.index].kindName), not a tuple")
                }
                if args.isEmpty, case .global(let g) = document.values[callable.index],
                    g.module == "collections", g.name == "OrderedDict"
                {
                    try pushNew(.dict(ordered: true))
                } else {
                    let call = PickleCall(kind: .reduce, callable: callable, arguments: arguments)
                    try pushNew(.call(call), depth: max(depth[callable.index], depth[arguments.index]))
                }
            case (.newObj, _):
                let arguments = try pop(op)
                let cls = try pop(op)
                guard case .tuple = document.values[arguments.index] else {
                    throw fail(.invalidOperand, "NEWOBJ arguments are a \(document.values[arguments.index].kindName), not a tuple")
                }
                let call = PickleCall(kind: .newObject, callable: cls, arguments: arguments)
                try pushNew(.call(call), depth: max(depth[cls.index], depth[arguments.index]))
            case (.build, _):
                let state = try pop(op)
                let target = try top(op)
                document.states[target] = state
                try deepen(target, containing: state)
            case (.binPersID, _):
                let pid = try pop(op)
                let id = try make(.persistent(pid), depth: depth[pid.index])
                document.persistentValues.append(id)
                try push(id)

            default:
                throw fail(.invalidValue, "malformed \(op.name)")
            }
        }
    }
}

/// Integer helpers for literals wider than 64 bits.
enum PickleIntegers {
    /// Drops redundant sign-extension bytes from two's-complement little-endian bytes.
    static func minimal(_ raw: [UInt8]) -> [UInt8] {
        var bytes = raw
        while bytes.count > 1 {
            let last = bytes[bytes.count - 1], next = bytes[bytes.count - 2]
            if (last == 0 && next & 0x80 == 0) || (last == 0xFF && next & 0x80 != 0) {
                bytes.removeLast()
            } else {
                break
            }
        }
        return bytes
    }

    /// Parses an optionally signed decimal into two's-complement little-endian bytes.
    static func parseDecimal(_ text: String) -> [UInt8]? {
        var digits = Substring(text)
        var negative = false
        if digits.first == "-" { negative = true; digits = digits.dropFirst() } else if digits.first == "+" { digits = digits.dropFirst() }
        guard !digits.isEmpty else { return nil }
        var magnitude: [UInt8] = [0]  // little-endian base 256
        for ch in digits.utf8 {
            guard ch >= 0x30, ch <= 0x39 else { return nil }
            var carry = Int(ch - 0x30)
            for i in magnitude.indices {
                let v = Int(magnitude[i]) * 10 + carry
                magnitude[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
            while carry > 0 { magnitude.append(UInt8(carry & 0xFF)); carry >>= 8 }
        }
        magnitude.append(0)  // room for the sign bit
        if negative {
            var carry = 1
            for i in magnitude.indices {
                let v = Int(~magnitude[i]) + carry
                magnitude[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
        }
        return minimal(magnitude)
    }
}

/// Decoders for protocol-0 text literals.
enum PickleText {
    /// Python's `raw-unicode-escape`: bytes are Latin-1 except `\uXXXX` and `\UXXXXXXXX`,
    /// which are escapes only after an odd run of backslashes (the run's last backslash
    /// starts the escape; CPython `_PyUnicode_DecodeRawUnicodeEscapeStateful`).
    static func rawUnicodeEscape(_ raw: UnsafeRawBufferPointer) -> String? {
        var scalars = String.UnicodeScalarView()
        var i = 0
        while i < raw.count {
            let b = raw[i]
            if b == 0x5C {
                var run = 0
                while i + run < raw.count, raw[i + run] == 0x5C { run += 1 }
                let next = i + run
                if run % 2 == 0 || next >= raw.count || (raw[next] != 0x75 && raw[next] != 0x55) {
                    for _ in 0..<run { scalars.append("\\") }
                    i = next
                    continue
                }
                for _ in 0..<(run - 1) { scalars.append("\\") }
                i = next - 1
            }
            if b == 0x5C, i + 1 < raw.count, raw[i + 1] == 0x75 || raw[i + 1] == 0x55 {
                let width = raw[i + 1] == 0x75 ? 4 : 8
                guard i + 2 + width <= raw.count else { return nil }
                var v: UInt32 = 0
                for j in (i + 2)..<(i + 2 + width) {
                    guard let h = hexValue(raw[j]) else { return nil }
                    v = v << 4 | UInt32(h)
                }
                guard let scalar = Unicode.Scalar(v) else { return nil }
                scalars.append(scalar)
                i += 2 + width
            } else {
                scalars.append(Unicode.Scalar(b))
                i += 1
            }
        }
        return String(scalars)
    }

    /// A Python 2 `repr` of a byte string: quotes removed and backslash escapes decoded.
    static func quotedString(_ raw: UnsafeRawBufferPointer) -> [UInt8]? {
        guard raw.count >= 2, let q = raw.first, q == 0x27 || q == 0x22, raw[raw.count - 1] == q else { return nil }
        var out: [UInt8] = []
        var i = 1
        let end = raw.count - 1
        while i < end {
            let b = raw[i]
            guard b == 0x5C, i + 1 < end else { out.append(b); i += 1; continue }
            let e = raw[i + 1]
            i += 2
            switch e {
            case 0x6E: out.append(0x0A)  // n
            case 0x74: out.append(0x09)  // t
            case 0x72: out.append(0x0D)  // r
            case 0x61: out.append(0x07)  // a
            case 0x62: out.append(0x08)  // b
            case 0x66: out.append(0x0C)  // f
            case 0x76: out.append(0x0B)  // v
            case 0x30...0x37:  // octal, up to three digits
                var v = Int(e - 0x30)
                var n = 1
                while n < 3, i < end, raw[i] >= 0x30, raw[i] <= 0x37 { v = v * 8 + Int(raw[i] - 0x30); i += 1; n += 1 }
                out.append(UInt8(truncatingIfNeeded: v))
            case 0x78:  // x
                guard i + 2 <= end, let h = hexValue(raw[i]), let l = hexValue(raw[i + 1]) else { return nil }
                out.append(h << 4 | l)
                i += 2
            case 0x5C, 0x27, 0x22: out.append(e)
            default: out.append(0x5C); out.append(e)
            }
        }
        return out
    }

    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: b - 0x30
        case 0x61...0x66: b - 0x61 + 10
        case 0x41...0x46: b - 0x41 + 10
        default: nil
        }
    }
}
