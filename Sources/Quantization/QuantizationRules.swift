import TensorCore

/// Which tensors a conversion to int8 quantises, and how.
///
/// By default a tensor is quantised when it is a floating-point tensor of rank 2 or more with
/// at least ``minimumElementCount`` values and its name matches none of the keep patterns.
/// Biases, norms and other 1-D tensors, small tensors, the time and position embeddings and the
/// first and last convolutions of the UNet and VAE stay unquantised (`Docs/quantization.md`).
public struct QuantizationRules: Sendable {
    /// Patterns kept unquantised unless the caller clears them. Canonical names first, then the
    /// LDM spellings of the same tensors.
    public static let defaultKeepPatterns = [
        "*time_embedding*", "*add_embedding*", "*position_embedding*", "*positional_embedding*",
        "*conv_in.weight", "*conv_out.weight", "*quant_conv.weight",
        "*time_embed.*", "*label_emb.*", "*input_blocks.0.0.weight", "*diffusion_model.out.2.weight",
    ]

    /// What happens to one tensor.
    public enum Decision: Hashable, Sendable {
        case quantize(Int8BlockLayout)
        /// Left unquantised, and why (`rank < 2`, `small`, `not floating point`, or the pattern).
        case keep(reason: String)
    }

    /// Values per scale.
    public var blockSize: Int
    /// Tensors with fewer values stay unquantised.
    public var minimumElementCount: Int
    /// Names matching any of these stay unquantised (``Glob`` patterns).
    public var keepPatterns: [String]

    /// - Parameters:
    ///   - keep: extra patterns (`--keep GLOB`) added to the defaults.
    public init(blockSize: Int = Int8BlockLayout.defaultBlockSize, minimumElementCount: Int = 1024, keep: [String] = [], includeDefaults: Bool = true)
    {
        self.blockSize = blockSize
        self.minimumElementCount = minimumElementCount
        keepPatterns = (includeDefaults ? Self.defaultKeepPatterns : []) + keep
    }

    /// Decides for one tensor.
    public func decision(for descriptor: TensorDescriptor) -> Decision {
        guard descriptor.dtype.isConvertibleFloat else { return .keep(reason: "not floating point") }
        guard descriptor.shape.rank >= 2 else { return .keep(reason: "rank \(descriptor.shape.rank)") }
        guard descriptor.elementCount >= minimumElementCount else { return .keep(reason: "small (\(descriptor.elementCount) values)") }
        if let pattern = keepPatterns.first(where: { Glob.matches($0, descriptor.name) }) {
            return .keep(reason: "kept by \(pattern)")
        }
        guard let layout = try? Int8BlockLayout(shape: descriptor.shape, blockSize: blockSize) else {
            return .keep(reason: "shape \(descriptor.shape) has no int8 layout")
        }
        return .quantize(layout)
    }

    /// The dtype of a floating-point tensor left unquantised in an int8 conversion: F16 for
    /// matrices and kernels, F32 for biases, norms and scalars (exact, and negligible in size).
    public static func keptDType(for descriptor: TensorDescriptor) -> DType {
        guard descriptor.dtype.isConvertibleFloat else { return descriptor.dtype }
        return descriptor.shape.rank >= 2 ? .f16 : .f32
    }
}
