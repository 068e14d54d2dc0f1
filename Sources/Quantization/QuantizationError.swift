/// An error of the Quantization module: a code, a message and, where there is one, the tensor.
public struct QuantizationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong; a struct over a private enum so codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case invalidLayout, lengthMismatch, unsupportedDType, nonFinite, scaleOverflow, invalidImportance
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }
        /// Sizes or block size that do not describe a tensor.
        public static let invalidLayout = Code(.invalidLayout)
        /// Buffers shorter than the layout needs.
        public static let lengthMismatch = Code(.lengthMismatch)
        /// A dtype that cannot be quantised (only F32, F16, BF16 and F64 can).
        public static let unsupportedDType = Code(.unsupportedDType)
        /// NaN or infinite values, which int8 cannot represent.
        public static let nonFinite = Code(.nonFinite)
        /// A block whose scale does not fit binary16 (|x| beyond 65504 · 127).
        public static let scaleOverflow = Code(.scaleOverflow)
        /// An importance vector with a negative, NaN or infinite value.
        public static let invalidImportance = Code(.invalidImportance)
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    public var tensor: String?

    public init(_ code: Code, _ message: String, tensor: String? = nil) {
        self.code = code
        self.message = message
        self.tensor = tensor
    }

    public var description: String { tensor.map { "\($0): \(message)" } ?? message }
}
