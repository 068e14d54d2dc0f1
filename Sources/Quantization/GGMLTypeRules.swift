import TensorCore

/// Which ggml type each tensor of a conversion to a block type (`--dtype q4_k`) gets.
///
/// In order: a `GLOB=TYPE` override that matches the name wins (as stable-diffusion.cpp's
/// `--tensor-type-rules`); otherwise tensors that are not floating point keep their dtype, and
/// 1-D tensors (biases, norms), small tensors, norms, embeddings, the time and class embeddings
/// and `conv_in`/`conv_out` (``QuantizationRules/defaultKeepPatterns`` and
/// ``keepPatterns``) stay F16 (matrices) or F32 (1-D); everything else gets the target type. A
/// tensor whose row length does not divide into the chosen type's block falls back to the
/// nearest type at least as precise whose block fits (``fallback(for:)``), and to F16 only when no
/// block type fits; every fallback is recorded in the decision.
public struct GGMLTypeRules: Sendable {
    /// What a row is, for the block-fit check.
    public enum Rows: Sendable {
        /// GGUF's rows: the last dimension (ggml's `ne[0]`), as stable-diffusion.cpp reads them.
        case lastDimension
        /// The engine's rows: everything but the first dimension (a convolution's `in·kh·kw`),
        /// as `.wpk` stores them (`Formats/wpk.md`).
        case allButFirstDimension
    }

    /// One `GLOB=TYPE` override.
    public struct Override: Sendable, Hashable {
        public var pattern: String
        public var type: GGMLType

        /// Parses `GLOB=TYPE` (`*attn*=q8_0`, `*.proj_in.weight=f16`).
        ///
        /// - Throws: ``QuantizationError/Code/invalidLayout`` for text without `=`, an empty
        ///   pattern, or a type WeightPack does not write.
        public init(parsing text: String) throws(QuantizationError) {
            guard let equals = text.lastIndex(of: "="), equals != text.startIndex else {
                throw QuantizationError(.invalidLayout, "'\(text)' is not GLOB=TYPE")
            }
            let name = String(text[text.index(after: equals)...])
            guard let type = GGMLType(name: name), GGMLTypeRules.writable.contains(type) else {
                throw QuantizationError(
                    .invalidLayout,
                    "'\(name)' in '\(text)' is not a type WeightPack writes (\(GGMLTypeRules.writable.map { $0.name.lowercased() }.joined(separator: ", ")))"
                )
            }
            self.init(pattern: String(text[..<equals]), type: type)
        }

        public init(pattern: String, type: GGMLType) {
            self.pattern = pattern
            self.type = type
        }
    }

    /// What happens to one tensor.
    public struct Decision: Sendable, Hashable {
        /// The type written (for kept tensors F16, F32 or the source's own plain type).
        public var type: GGMLType
        /// The type asked for when ``type`` is a fallback.
        public var fallbackFrom: GGMLType?
        /// Why, in a few words (`kept by *norm*`, `rank 1`, `rows of 320 do not fit Q4_K's 256`).
        public var reason: String?

        public init(type: GGMLType, fallbackFrom: GGMLType? = nil, reason: String? = nil) {
            self.type = type
            self.fallbackFrom = fallbackFrom
            self.reason = reason
        }
    }

    /// Types a rule or override may name.
    public static let writable: [GGMLType] = [.f32, .f16, .bf16] + GGMLType.quantizable

    /// Extra patterns kept unquantised by default besides ``QuantizationRules/defaultKeepPatterns``.
    public static let keepPatterns = ["*norm*", "*token_embedding*", "*embeddings.*", "*class_embedding*"]

    public var target: GGMLType
    public var overrides: [Override]
    public var rows: Rows
    /// Tensors with fewer values stay unquantised.
    public var minimumElementCount: Int
    public var keep: [String]

    public init(
        target: GGMLType, overrides: [Override] = [], rows: Rows, minimumElementCount: Int = 1024, keep: [String] = [], includeDefaults: Bool = true
    ) {
        self.target = target
        self.overrides = overrides
        self.rows = rows
        self.minimumElementCount = minimumElementCount
        self.keep = (includeDefaults ? QuantizationRules.defaultKeepPatterns + Self.keepPatterns : []) + keep
    }

    /// The type tried when `type`'s block does not fit a row: a 32-value type at least as
    /// precise for the k-quants (as llama.cpp's quantiser falls back), none for 32-value types.
    public static func fallback(for type: GGMLType) -> GGMLType? {
        switch type {
        case .q2_K, .q3_K: .q4_0
        case .q4_K: .q5_0
        case .q5_K: .q5_1
        case .q6_K: .q8_0
        default: nil
        }
    }

    /// The row length of `shape` under `rows`.
    public func rowLength(of shape: Shape) -> Int {
        guard let last = shape.dimensions.last else { return 1 }
        switch rows {
        case .lastDimension: return last
        case .allButFirstDimension: return shape.dimensions.dropFirst().reduce(1, *)
        }
    }

    /// Decides for one tensor.
    public func decision(for descriptor: TensorDescriptor) -> Decision {
        let kept: GGMLType = descriptor.shape.rank >= 2 ? .f16 : .f32
        guard descriptor.dtype.isConvertibleFloat else {
            return Decision(type: GGMLType(plain: descriptor.dtype) ?? .f32, reason: "not floating point")
        }
        if let o = overrides.first(where: { Glob.matches($0.pattern, descriptor.name) }) {
            return fitted(o.type, descriptor, reason: "\(o.pattern)=\(o.type.name.lowercased())")
        }
        guard descriptor.shape.rank >= 2 else { return Decision(type: .f32, reason: "rank \(descriptor.shape.rank)") }
        guard descriptor.elementCount >= minimumElementCount else {
            return Decision(type: kept, reason: "small (\(descriptor.elementCount) values)")
        }
        if let pattern = keep.first(where: { Glob.matches($0, descriptor.name) }) {
            return Decision(type: kept, reason: "kept by \(pattern)")
        }
        return fitted(target, descriptor, reason: nil)
    }

    private func fitted(_ type: GGMLType, _ descriptor: TensorDescriptor, reason: String?) -> Decision {
        let n = rowLength(of: descriptor.shape)
        var candidate: GGMLType? = type
        while let t = candidate {
            if n > 0, n % t.blockValues == 0 {
                if t == type { return Decision(type: t, reason: reason) }
                return Decision(type: t, fallbackFrom: type, reason: "rows of \(n) do not fit \(type.name)'s \(type.blockValues)")
            }
            candidate = Self.fallback(for: t)
        }
        return Decision(type: .f16, fallbackFrom: type, reason: "rows of \(n) fit no block type")
    }
}
