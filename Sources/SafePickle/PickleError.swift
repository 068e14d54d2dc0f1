/// An error from the pickle machine or the globals scanner: a stable code, a message, and
/// the byte offset (from the start of the buffer given to the machine) where it happened.
public struct PickleError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code. A struct over a private enum so codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case truncated, unknownOpcode, forbiddenOpcode, frameViolation, limitExceeded
            case stackUnderflow, missingMark, invalidOperand, missingMemo, invalidValue, invalidProtocol
        }
        fileprivate let value: Value
        public var description: String { value.rawValue }

        /// The input ends inside an opcode, its argument, or before `STOP`.
        public static let truncated = Code(value: .truncated)
        /// A byte that is not a pickle opcode.
        public static let unknownOpcode = Code(value: .unknownOpcode)
        /// An opcode we refuse by policy (`INST`, `OBJ`, `EXT*`, `PERSID`, `NEWOBJ_EX`, out-of-band buffers).
        public static let forbiddenOpcode = Code(value: .forbiddenOpcode)
        /// An opcode or argument crosses the end of a `FRAME`, or a frame starts inside another.
        public static let frameViolation = Code(value: .frameViolation)
        /// A `PickleLimits` bound was reached.
        public static let limitExceeded = Code(value: .limitExceeded)
        /// An opcode needs more values than the stack holds.
        public static let stackUnderflow = Code(value: .stackUnderflow)
        /// An opcode needs a `MARK` and there is none.
        public static let missingMark = Code(value: .missingMark)
        /// An opcode got a value of the wrong kind (e.g. `SETITEM` on a list, `STACK_GLOBAL` on an int).
        public static let invalidOperand = Code(value: .invalidOperand)
        /// A memo `GET` of an index never `PUT`.
        public static let missingMemo = Code(value: .missingMemo)
        /// A malformed literal: bad decimal, bad UTF-8, bad quoting.
        public static let invalidValue = Code(value: .invalidValue)
        /// `PROTO` with an unknown version, or not as the first opcode.
        public static let invalidProtocol = Code(value: .invalidProtocol)
    }

    public var code: Code
    public var message: String
    /// Byte offset of the opcode that failed.
    public var offset: Int

    public init(_ code: Code, _ message: String, at offset: Int) {
        self.code = code
        self.message = message
        self.offset = offset
    }

    public var description: String { "\(message) (at byte \(offset))" }
}
