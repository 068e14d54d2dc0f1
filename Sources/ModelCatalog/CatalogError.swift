/// An error from the model catalog: a model that cannot be mapped, a tensor a recipe needs
/// that is missing or has the wrong shape, or damaged catalog data.
public struct CatalogError: Error, Sendable, CustomStringConvertible {
    /// What went wrong; a struct over a private enum so codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String {
            case catalogData = "catalog data"
            case missingTensor = "missing tensor"
            case shapeMismatch = "shape mismatch"
            case unmappable = "cannot map"
            case unsupportedLayout = "unsupported layout"
            case noEMA = "no EMA weights"
        }
        fileprivate let value: Value
        public var description: String { value.rawValue }
        /// The bundled architecture data is missing or malformed (our bug).
        public static let catalogData = Code(value: .catalogData)
        /// A tensor a map needs is not in the source.
        public static let missingTensor = Code(value: .missingTensor)
        /// A tensor has a shape a map cannot handle.
        public static let shapeMismatch = Code(value: .shapeMismatch)
        /// A model or tensor has no place in the requested layout.
        public static let unmappable = Code(value: .unmappable)
        /// A layout description (for example from a `.wpk` header) is not one we know.
        public static let unsupportedLayout = Code(value: .unsupportedLayout)
        /// EMA weights were asked for and the model has none.
        public static let noEMA = Code(value: .noEMA)
    }

    public var code: Code
    public var message: String
    /// The tensor concerned, where there is one.
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
