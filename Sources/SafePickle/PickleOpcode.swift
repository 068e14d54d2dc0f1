/// Every pickle opcode of protocols 0 to 5 (CPython `pickletools`), by byte value.
public enum PickleOpcode: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case mark = 0x28, stop = 0x2E, pop = 0x30, popMark = 0x31, dup = 0x32
    case float = 0x46, int = 0x49, binInt = 0x4A, binInt1 = 0x4B, long = 0x4C, binInt2 = 0x4D
    case none = 0x4E, persID = 0x50, binPersID = 0x51, reduce = 0x52, string = 0x53
    case binString = 0x54, shortBinString = 0x55, unicode = 0x56, binUnicode = 0x58
    case append = 0x61, build = 0x62, global = 0x63, dict = 0x64, appends = 0x65, get = 0x67
    case binGet = 0x68, inst = 0x69, longBinGet = 0x6A, list = 0x6C, obj = 0x6F, put = 0x70
    case binPut = 0x71, longBinPut = 0x72, setItem = 0x73, tuple = 0x74, setItems = 0x75
    case emptyDict = 0x7D, emptyList = 0x5D, emptyTuple = 0x29, binFloat = 0x47
    case binBytes = 0x42, shortBinBytes = 0x43
    case proto = 0x80, newObj = 0x81, ext1 = 0x82, ext2 = 0x83, ext4 = 0x84
    case tuple1 = 0x85, tuple2 = 0x86, tuple3 = 0x87, newTrue = 0x88, newFalse = 0x89
    case long1 = 0x8A, long4 = 0x8B, shortBinUnicode = 0x8C, binUnicode8 = 0x8D, binBytes8 = 0x8E
    case emptySet = 0x8F, addItems = 0x90, frozenSet = 0x91, newObjEx = 0x92, stackGlobal = 0x93
    case memoize = 0x94, frame = 0x95, byteArray8 = 0x96, nextBuffer = 0x97, readonlyBuffer = 0x98

    /// The name `pickletools` gives the opcode.
    public var name: String {
        switch self {
        case .mark: "MARK"
        case .stop: "STOP"
        case .pop: "POP"
        case .popMark: "POP_MARK"
        case .dup: "DUP"
        case .float: "FLOAT"
        case .int: "INT"
        case .binInt: "BININT"
        case .binInt1: "BININT1"
        case .long: "LONG"
        case .binInt2: "BININT2"
        case .none: "NONE"
        case .persID: "PERSID"
        case .binPersID: "BINPERSID"
        case .reduce: "REDUCE"
        case .string: "STRING"
        case .binString: "BINSTRING"
        case .shortBinString: "SHORT_BINSTRING"
        case .unicode: "UNICODE"
        case .binUnicode: "BINUNICODE"
        case .append: "APPEND"
        case .build: "BUILD"
        case .global: "GLOBAL"
        case .dict: "DICT"
        case .appends: "APPENDS"
        case .get: "GET"
        case .binGet: "BINGET"
        case .inst: "INST"
        case .longBinGet: "LONG_BINGET"
        case .list: "LIST"
        case .obj: "OBJ"
        case .put: "PUT"
        case .binPut: "BINPUT"
        case .longBinPut: "LONG_BINPUT"
        case .setItem: "SETITEM"
        case .tuple: "TUPLE"
        case .setItems: "SETITEMS"
        case .emptyDict: "EMPTY_DICT"
        case .emptyList: "EMPTY_LIST"
        case .emptyTuple: "EMPTY_TUPLE"
        case .binFloat: "BINFLOAT"
        case .binBytes: "BINBYTES"
        case .shortBinBytes: "SHORT_BINBYTES"
        case .proto: "PROTO"
        case .newObj: "NEWOBJ"
        case .ext1: "EXT1"
        case .ext2: "EXT2"
        case .ext4: "EXT4"
        case .tuple1: "TUPLE1"
        case .tuple2: "TUPLE2"
        case .tuple3: "TUPLE3"
        case .newTrue: "NEWTRUE"
        case .newFalse: "NEWFALSE"
        case .long1: "LONG1"
        case .long4: "LONG4"
        case .shortBinUnicode: "SHORT_BINUNICODE"
        case .binUnicode8: "BINUNICODE8"
        case .binBytes8: "BINBYTES8"
        case .emptySet: "EMPTY_SET"
        case .addItems: "ADDITEMS"
        case .frozenSet: "FROZENSET"
        case .newObjEx: "NEWOBJ_EX"
        case .stackGlobal: "STACK_GLOBAL"
        case .memoize: "MEMOIZE"
        case .frame: "FRAME"
        case .byteArray8: "BYTEARRAY8"
        case .nextBuffer: "NEXT_BUFFER"
        case .readonlyBuffer: "READONLY_BUFFER"
        }
    }

    public var description: String { name }

    /// Opcodes the machine refuses: they call importable code in ways a state dict never needs
    /// (`INST`, `OBJ`, `NEWOBJ_EX`), consult process-wide registries (`EXT*`), use the
    /// text persistent-id form torch never writes (`PERSID`), or need out-of-band buffers.
    public var isForbidden: Bool {
        switch self {
        case .inst, .obj, .ext1, .ext2, .ext4, .persID, .newObjEx, .nextBuffer, .readonlyBuffer: true
        default: false
        }
    }

    /// The shape of the argument that follows the opcode byte.
    enum ArgumentKind {
        case none
        case uint8, uint16, int32, uint32, uint64, float64BigEndian
        /// A length (of the given width) followed by that many bytes.
        case counted1, counted4, counted8
        /// A signed 4-byte length (negative refused) followed by that many bytes.
        case signedCounted4
        /// One newline-terminated line.
        case line
        /// Two newline-terminated lines.
        case twoLines
    }

    var argumentKind: ArgumentKind {
        switch self {
        case .binInt1, .binGet, .binPut, .proto, .ext1: .uint8
        case .binInt2, .ext2: .uint16
        case .binInt, .ext4: .int32
        case .longBinGet, .longBinPut: .uint32
        case .frame: .uint64
        case .binFloat: .float64BigEndian
        case .shortBinString, .shortBinBytes, .shortBinUnicode, .long1: .counted1
        case .binUnicode, .binBytes: .counted4
        case .binString, .long4: .signedCounted4
        case .binUnicode8, .binBytes8, .byteArray8: .counted8
        case .int, .long, .float, .string, .unicode, .get, .put, .persID: .line
        case .global, .inst: .twoLines
        default: .none
        }
    }
}

/// One decoded opcode with its argument.
struct PickleInstruction {
    enum Argument {
        case none
        case integer(Int)
        case float(Double)
        /// Byte range of a counted literal or of one line (newline excluded).
        case bytes(Range<Int>)
        case lines(Range<Int>, Range<Int>)
    }

    var opcode: PickleOpcode
    var offset: Int
    var argument: Argument
}

/// Decodes opcodes and arguments from a buffer, bounds-checked, enforcing `FRAME` boundaries:
/// inside a frame no opcode or argument may cross the frame's end, and a new frame may only
/// start where the previous one ended (CPython's `_Unframer` rules; the C unpickler's laxer
/// behaviour is the divergence of cpython#154848, which we refuse rather than imitate).
///
/// With `enforcesFrames` off it reads as CPython's C unpickler (`_pickle.c` `load_frame`,
/// what `torch.load` runs) does: a `FRAME` only requires its length to be available and its
/// boundaries mean nothing. The globals scanner reads that way, so it sees every opcode the
/// C unpickler would run even where the frame-respecting machine refuses the pickle.
struct PickleReader {
    let input: UnsafeRawBufferPointer
    private(set) var position: Int
    /// End of the current frame, or `nil` outside frames.
    private(set) var frameEnd: Int?
    let maximumLiteralBytes: Int
    let enforcesFrames: Bool

    init(_ input: UnsafeRawBufferPointer, position: Int, maximumLiteralBytes: Int, enforcesFrames: Bool = true) {
        self.input = input
        self.position = position
        self.maximumLiteralBytes = maximumLiteralBytes
        self.enforcesFrames = enforcesFrames
    }

    var isAtEnd: Bool { position >= input.count }

    /// Reserves `count` bytes at the current position and returns their range.
    private mutating func take(_ count: Int, opcodeOffset: Int, what: @autoclosure () -> String) throws(PickleError) -> Range<Int> {
        let available = input.count - position
        if let frameEnd, count > frameEnd - position {
            throw PickleError(.frameViolation, "\(what()) of \(count) bytes crosses the end of its FRAME at byte \(frameEnd)", at: opcodeOffset)
        }
        guard count >= 0, count <= available else {
            throw PickleError(.truncated, "\(what()) needs \(count) bytes but only \(max(0, available)) remain", at: opcodeOffset)
        }
        let range = position..<(position + count)
        position += count
        return range
    }

    private func byte(_ i: Int) -> UInt8 { input[i] }

    private func littleEndian(_ range: Range<Int>) -> UInt64 {
        var value: UInt64 = 0
        for i in range.reversed() { value = value << 8 | UInt64(input[i]) }
        return value
    }

    private mutating func line(opcodeOffset: Int, opcode: PickleOpcode) throws(PickleError) -> Range<Int> {
        let limit = frameEnd ?? input.count
        var i = position
        while i < limit, input[i] != 0x0A { i += 1 }
        guard i < limit else {
            if frameEnd != nil, i < input.count {
                throw PickleError(.frameViolation, "\(opcode.name) line crosses the end of its FRAME", at: opcodeOffset)
            }
            throw PickleError(.truncated, "\(opcode.name) line has no terminating newline", at: opcodeOffset)
        }
        let range = position..<i
        position = i + 1
        return range
    }

    /// Decodes the next instruction.
    mutating func next() throws(PickleError) -> PickleInstruction {
        let offset = position
        let code = try take(1, opcodeOffset: offset, what: "opcode")
        let byte = input[code.lowerBound]
        guard let opcode = PickleOpcode(rawValue: byte) else {
            throw PickleError(.unknownOpcode, "unknown opcode 0x\(String(byte, radix: 16))", at: offset)
        }
        let argument: PickleInstruction.Argument
        switch opcode.argumentKind {
        case .none:
            argument = .none
        case .uint8:
            argument = .integer(Int(littleEndian(try take(1, opcodeOffset: offset, what: opcode.name))))
        case .uint16:
            argument = .integer(Int(littleEndian(try take(2, opcodeOffset: offset, what: opcode.name))))
        case .int32:
            argument = .integer(Int(Int32(truncatingIfNeeded: littleEndian(try take(4, opcodeOffset: offset, what: opcode.name)))))
        case .uint32:
            argument = .integer(Int(littleEndian(try take(4, opcodeOffset: offset, what: opcode.name))))
        case .uint64:
            let raw = littleEndian(try take(8, opcodeOffset: offset, what: opcode.name))
            guard raw <= UInt64(Int.max) else {
                throw PickleError(.truncated, "\(opcode.name) declares \(raw) bytes but only \(input.count - position) remain", at: offset)
            }
            argument = .integer(Int(raw))
        case .float64BigEndian:
            let range = try take(8, opcodeOffset: offset, what: opcode.name)
            var bits: UInt64 = 0
            for i in range { bits = bits << 8 | UInt64(input[i]) }
            argument = .float(Double(bitPattern: bits))
        case .counted1, .counted4, .counted8, .signedCounted4:
            let width: Int
            switch opcode.argumentKind {
            case .counted1: width = 1
            case .counted4, .signedCounted4: width = 4
            default: width = 8
            }
            let raw = littleEndian(try take(width, opcodeOffset: offset, what: "\(opcode.name) length"))
            var length: UInt64 = raw
            if opcode.argumentKind == .signedCounted4 {
                let signed = Int32(truncatingIfNeeded: raw)
                guard signed >= 0 else {
                    throw PickleError(.invalidValue, "\(opcode.name) has negative length \(signed)", at: offset)
                }
                length = UInt64(signed)
            }
            let remaining = UInt64(input.count - position)
            guard length <= remaining else {
                if let frameEnd, length > UInt64(frameEnd - position) {
                    throw PickleError(
                        .frameViolation, "\(opcode.name) of \(length) bytes crosses the end of its FRAME at byte \(frameEnd)", at: offset)
                }
                throw PickleError(.truncated, "\(opcode.name) declares \(length) bytes but only \(remaining) remain", at: offset)
            }
            guard length <= UInt64(maximumLiteralBytes) else {
                throw PickleError(.limitExceeded, "\(opcode.name) of \(length) bytes exceeds the limit of \(maximumLiteralBytes)", at: offset)
            }
            argument = .bytes(try take(Int(length), opcodeOffset: offset, what: opcode.name))
        case .line:
            argument = .bytes(try line(opcodeOffset: offset, opcode: opcode))
        case .twoLines:
            let first = try line(opcodeOffset: offset, opcode: opcode)
            let second = try line(opcodeOffset: offset, opcode: opcode)
            argument = .lines(first, second)
        }
        if opcode == .frame, case .integer(let length) = argument {
            // A frame may begin only outside any frame, or exactly where the current one ends.
            guard !enforcesFrames || frameEnd == nil || frameEnd == offset + 9 else {
                throw PickleError(.frameViolation, "FRAME begins inside the previous frame", at: offset)
            }
            guard length <= input.count - position else {
                throw PickleError(.truncated, "FRAME declares \(length) bytes but only \(input.count - position) remain", at: offset)
            }
            frameEnd = length == 0 || !enforcesFrames ? nil : position + length
        } else if let end = frameEnd, position == end {
            frameEnd = nil
        }
        return PickleInstruction(opcode: opcode, offset: offset, argument: argument)
    }
}
