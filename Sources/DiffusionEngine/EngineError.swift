/// An error raised by the engine: a missing or mis-shaped weight, a configuration it cannot run,
/// a tokenizer file it cannot read.
public struct EngineError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case missingTensor, shapeMismatch, unsupportedDType, invalidConfiguration
            case invalidTokenizer, missingResource, invalidInput, readFailed
        }
        fileprivate let value: Value
        /// A weight the network needs is not in the store.
        public static let missingTensor = Code(value: .missingTensor)
        /// A weight or an input has a shape the network cannot use.
        public static let shapeMismatch = Code(value: .shapeMismatch)
        /// A weight is stored in a dtype the engine cannot compute with.
        public static let unsupportedDType = Code(value: .unsupportedDType)
        /// A configuration (a `config.json`, a preset with changed fields) the engine cannot run.
        public static let invalidConfiguration = Code(value: .invalidConfiguration)
        /// A tokenizer vocabulary or merges file that is malformed or inconsistent.
        public static let invalidTokenizer = Code(value: .invalidTokenizer)
        /// A package resource (the bundled BPE vocabulary) is missing or corrupt.
        public static let missingResource = Code(value: .missingResource)
        /// An input (token ids, latents, an image) the network cannot take.
        public static let invalidInput = Code(value: .invalidInput)
        /// A file the engine reads itself (tokenizer or configuration file) cannot be read.
        public static let readFailed = Code(value: .readFailed)
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    /// The file involved, where there is one.
    public var path: String?
    /// The tensor involved, where there is one.
    public var tensorName: String?
    /// The underlying error, kept when a lower layer failed.
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, path: String? = nil, tensorName: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.tensorName = tensorName
        self.underlying = underlying
    }

    public var description: String {
        var text = message
        if let tensorName { text += " (tensor '\(tensorName)')" }
        if let path { text += " (\(path))" }
        if let underlying { text += ": \(underlying)" }
        return text
    }
}
