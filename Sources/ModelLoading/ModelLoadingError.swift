/// Why a model could not be opened, assembled, converted or verified. Errors of the layers below
/// (``FormatError``, ``CatalogError``, ``EngineError``) pass through unchanged.
public struct ModelLoadingError: Error, CustomStringConvertible, Sendable {
    /// What went wrong; new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable {
            case notAModel, missingConfiguration, noTensors, invalidLatents, missingFile, invalidCalibration, budgetUnreachable
        }
        private let value: Value

        /// The input is not a Stable Diffusion model the engine can run.
        public static let notAModel = Code(value: .notAModel)
        /// A configuration the model needs is neither in the input nor derivable, or is unusable.
        public static let missingConfiguration = Code(value: .missingConfiguration)
        /// The input holds no tensors at all.
        public static let noTensors = Code(value: .noTensors)
        /// An initial-noise (`latents`) file without a usable tensor.
        public static let invalidLatents = Code(value: .invalidLatents)
        /// A file or folder named by the caller does not exist.
        public static let missingFile = Code(value: .missingFile)
        /// Calibration settings that cannot run (no prompts or seeds, no steps, a size the
        /// model cannot take), or activation statistics that do not fit the weights they name.
        public static let invalidCalibration = Code(value: .invalidCalibration)
        /// A quality budget (`--dtype auto`) that no storage mix meets, as predicted or as measured.
        public static let budgetUnreachable = Code(value: .budgetUnreachable)

        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    /// The file or folder concerned.
    public var path: String?
    /// The error this one wraps.
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, path: String? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.underlying = underlying
    }

    public var description: String { (path.map { "\($0): " } ?? "") + message }
}
