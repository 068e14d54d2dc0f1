import StrictJSON

/// The shape of a CLIP text transformer and how Stable Diffusion reads its output.
public struct CLIPTextConfiguration: Sendable, Hashable {
    /// The activation of the feed-forward layers.
    public enum Activation: String, Sendable, Hashable {
        /// OpenAI CLIP (SD 1.x): `x * sigmoid(1.702 x)`.
        case quickGELU = "quick_gelu"
        /// OpenCLIP (SD 2.x, SDXL's second encoder): exact GELU.
        case gelu = "gelu"
    }

    public var vocabularySize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    /// Transformer layers the weights hold.
    public var layerCount: Int
    public var headCount: Int
    /// Positions of the position embedding (77).
    public var maximumPositions: Int
    public var activation: Activation
    public var layerNormEpsilon: Float
    /// Final layers left out, as diffusers' `clip_skip`: 0 uses every layer, 1 the output of
    /// the penultimate layer (what A1111 calls "clip skip 2"). The final layer norm is applied
    /// to whichever layer's output is used, as diffusers does.
    public var skippedLayers: Int
    /// The id that ends a prompt (for the pooled output).
    public var endTokenID: Int

    public init(
        vocabularySize: Int = 49408, hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int,
        maximumPositions: Int = 77, activation: Activation, layerNormEpsilon: Float = 1e-5,
        skippedLayers: Int = 0, endTokenID: Int = 49407
    ) {
        self.vocabularySize = vocabularySize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.maximumPositions = maximumPositions
        self.activation = activation
        self.layerNormEpsilon = layerNormEpsilon
        self.skippedLayers = skippedLayers
        self.endTokenID = endTokenID
    }

    /// SD 1.x: OpenAI CLIP ViT-L/14's text tower (12 layers, width 768, quick-GELU).
    public static let sd15 = CLIPTextConfiguration(hiddenSize: 768, intermediateSize: 3072, layerCount: 12, headCount: 12, activation: .quickGELU)

    /// SD 2.x: OpenCLIP ViT-H/14's text tower as diffusers ships it: 23 of its 24 layers (the
    /// penultimate-layer output SD 2 conditions on), width 1024, GELU. For weights that still
    /// hold all 24 layers, set `layerCount` to 24 and `skippedLayers` to 1.
    public static let sd21 = CLIPTextConfiguration(hiddenSize: 1024, intermediateSize: 4096, layerCount: 23, headCount: 16, activation: .gelu)

    /// Reads a transformers `CLIPTextConfig` (`text_encoder/config.json`), or the `text_config`
    /// of a full `CLIPConfig`.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` for missing fields, an unknown
    ///   activation or inconsistent sizes.
    public init(json: JSONValue) throws(EngineError) {
        guard let outer = json.objectValue else {
            throw EngineError(.invalidConfiguration, "text encoder configuration is not a JSON object")
        }
        let object = outer["text_config"]?.objectValue ?? outer
        let fields = ConfigurationFields(object: object, subject: "text encoder configuration")
        func int(_ key: String, default value: Int? = nil) throws(EngineError) -> Int {
            guard let n = try fields.int(key) ?? value else {
                throw EngineError(.invalidConfiguration, "text encoder configuration needs a non-negative integer '\(key)'")
            }
            return n
        }
        let activationName = object["hidden_act"]?.stringValue ?? "quick_gelu"
        guard let activation = Activation(rawValue: activationName) else {
            throw EngineError(.invalidConfiguration, "unsupported text encoder activation '\(activationName)'")
        }
        self.init(
            vocabularySize: try int("vocab_size", default: 49408),
            hiddenSize: try int("hidden_size"),
            intermediateSize: try int("intermediate_size"),
            layerCount: try int("num_hidden_layers"),
            headCount: try int("num_attention_heads"),
            maximumPositions: try int("max_position_embeddings", default: 77),
            activation: activation,
            layerNormEpsilon: try fields.float("layer_norm_eps", 1e-5),
            endTokenID: try int("eos_token_id", default: 49407))
        try validate()
    }

    /// Reads a transformers `CLIPTextConfig` from JSON text.
    public init(jsonText: String) throws(EngineError) {
        try self.init(json: try ConfigurationFields.parse(jsonText, name: "text encoder"))
    }

    /// The bounds every text encoder configuration must keep (Docs/limits.md).
    public struct Limits: Sendable {
        public var vocabularySize = 1...1_000_000
        public var hiddenSize = 1...16384
        public var intermediateSize = 1...65536
        public var layerCount = 1...128
        public var headCount = 1...256
        public var maximumPositions = 1...4096
    }
    public static let limits = Limits()

    /// Checks that every number is inside ``limits`` and the sizes fit together.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` naming the first field out of bounds.
    public func validate() throws(EngineError) {
        let l = Self.limits
        func check(_ value: Int, _ range: ClosedRange<Int>, _ field: String) throws(EngineError) {
            try ConfigurationFields.check(value, range, field, in: "text encoder")
        }
        try check(vocabularySize, l.vocabularySize, "vocab_size")
        try check(hiddenSize, l.hiddenSize, "hidden_size")
        try check(intermediateSize, l.intermediateSize, "intermediate_size")
        try check(layerCount, l.layerCount, "num_hidden_layers")
        try check(headCount, l.headCount, "num_attention_heads")
        try check(maximumPositions, l.maximumPositions, "max_position_embeddings")
        guard endTokenID >= 0, endTokenID < vocabularySize else {
            throw EngineError(.invalidConfiguration, "text encoder eos_token_id \(endTokenID) is not an id of its \(vocabularySize)-token vocabulary")
        }
        guard hiddenSize % headCount == 0 else {
            throw EngineError(.invalidConfiguration, "hidden size \(hiddenSize) does not split into \(headCount) heads")
        }
        guard skippedLayers >= 0, skippedLayers < layerCount else {
            throw EngineError(.invalidConfiguration, "cannot skip \(skippedLayers) of \(layerCount) layers")
        }
        guard layerNormEpsilon.isFinite, layerNormEpsilon > 0, layerNormEpsilon < 1 else {
            throw EngineError(.invalidConfiguration, "text encoder layer_norm_eps \(layerNormEpsilon) is not in (0, 1)")
        }
    }
}
