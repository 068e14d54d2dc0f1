/// An error from reading, checking, converting or merging an adapter (LoRA, LyCORIS module,
/// textual-inversion embedding). Every code is a property of the input, so the command line
/// maps all of them to exit 65 (malformed or refused input).
public struct AdapterError: Error, Sendable, CustomStringConvertible {
    /// What went wrong; a struct over a private enum so codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String {
            case notAnAdapter = "not an adapter"
            case malformed = "malformed adapter"
            case rankMismatch = "rank mismatch"
            case badAlpha = "bad alpha"
            case duplicateModule = "duplicate module"
            case wrongFamily = "wrong base family"
            case unmatchedModule = "unmatched module"
            case shapeMismatch = "shape mismatch"
            case tooLarge = "too large"
            case inexpressible = "inexpressible in the target dialect"
            case badScale = "bad scale"
        }
        fileprivate let value: Value
        public var description: String { value.rawValue }

        /// No tensor looks like an adapter module or an embedding.
        public static let notAnAdapter = Code(value: .notAnAdapter)
        /// A module lacks a tensor its kind needs, or a tensor has an impossible rank or dtype.
        public static let malformed = Code(value: .malformed)
        /// A module's factors disagree on their inner size (for example up and down ranks).
        public static let rankMismatch = Code(value: .rankMismatch)
        /// An alpha of zero, NaN or infinity, or not a single number.
        public static let badAlpha = Code(value: .badAlpha)
        /// Two modules (often in two naming dialects) modify the same base tensor.
        public static let duplicateModule = Code(value: .duplicateModule)
        /// The adapter was made for another model family than the base it is applied to.
        public static let wrongFamily = Code(value: .wrongFamily)
        /// A module matches no tensor of the base model.
        public static let unmatchedModule = Code(value: .unmatchedModule)
        /// A module's product does not have the shape of the tensor it modifies.
        public static let shapeMismatch = Code(value: .shapeMismatch)
        /// A declared size is beyond the bounds this library accepts.
        public static let tooLarge = Code(value: .tooLarge)
        /// The requested naming dialect cannot express this adapter (LoHa as PEFT keys).
        public static let inexpressible = Code(value: .inexpressible)
        /// A scale that is not a finite number.
        public static let badScale = Code(value: .badScale)
    }

    public var code: Code
    public var message: String
    /// The adapter tensor or module concerned, where there is one.
    public var tensor: String?
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, tensor: String? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.tensor = tensor
        self.underlying = underlying
    }

    public var description: String { message }
}
