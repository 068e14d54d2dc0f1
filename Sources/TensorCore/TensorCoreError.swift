/// An error raised by the tensor core: a shape whose size overflows, a conversion that is
/// not defined, a buffer of the wrong length.
public struct TensorCoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case overflow, negativeDimension, misalignedSubByte, unsupportedConversion, lengthMismatch
            case tooManyDimensions
        }
        fileprivate let value: Value
        /// Element or byte count does not fit in 64 bits.
        public static let overflow = Code(value: .overflow)
        /// A dimension below zero.
        public static let negativeDimension = Code(value: .negativeDimension)
        /// A sub-byte dtype whose element count does not fill whole bytes.
        public static let misalignedSubByte = Code(value: .misalignedSubByte)
        /// No conversion between the two dtypes.
        public static let unsupportedConversion = Code(value: .unsupportedConversion)
        /// A buffer whose byte length does not match its shape and dtype.
        public static let lengthMismatch = Code(value: .lengthMismatch)
        /// More dimensions than any tensor we accept has.
        public static let tooManyDimensions = Code(value: .tooManyDimensions)
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
