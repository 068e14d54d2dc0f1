import StrictJSON

/// The shape of a Stable Diffusion UNet (diffusers' `UNet2DConditionModel`): levels, widths,
/// attention heads and the SDXL additional embedding.
public struct UNetConfiguration: Sendable, Hashable {
    /// 4 for text-to-image, 9 for inpainting, 8 for depth or pix2pix models.
    public var inChannels: Int
    public var outChannels: Int
    /// Channels of each resolution level, finest first (`(320, 640, 1280, 1280)` for SD 1.x).
    public var blockOutChannels: [Int]
    /// Whether each down level has cross-attention (`CrossAttnDownBlock2D`); up levels mirror it.
    public var downBlockCrossAttention: [Bool]
    /// Whether each up level has cross-attention (`CrossAttnUpBlock2D`), coarsest first.
    public var upBlockCrossAttention: [Bool]
    /// Residual blocks per down level (the up levels have one more).
    public var layersPerBlock: Int
    /// Attention heads of each down level. diffusers' `attention_head_dim` is this number of
    /// heads (a historical misnomer); `num_attention_heads`, when given, takes precedence.
    public var attentionHeads: [Int]
    /// Transformer blocks in each down level's attention (SDXL: `(1, 2, 10)`); the middle block
    /// uses the last, the up levels the reverse.
    public var transformerLayersPerBlock: [Int]
    /// Transformer blocks in each up level, coarsest first, when not the reverse of the down levels.
    public var reverseTransformerLayersPerBlock: [Int]?
    /// Width of the text embeddings (768 SD 1.x, 1024 SD 2.x, 2048 SDXL).
    public var crossAttentionDimension: Int
    /// Linear `proj_in`/`proj_out` (SD 2.x, SDXL) instead of 1x1 convolutions (SD 1.x).
    public var useLinearProjection: Bool
    public var normGroups: Int
    public var normEpsilon: Float
    /// Sinusoidal embedding options (`flip_sin_to_cos`, `freq_shift`).
    public var flipSinToCos: Bool
    public var frequencyShift: Float
    /// Whether the middle block exists (`UNetMidBlock2DCrossAttn`).
    public var hasMiddleBlock: Bool
    /// SDXL's `addition_embed_type = "text_time"`: width of each micro-conditioning value's
    /// sinusoidal embedding (256 for SDXL), else `nil`.
    public var additionTimeEmbeddingDimension: Int?
    /// Input width of `add_embedding.linear_1` (SDXL: 1280 pooled + 6 x 256 = 2816).
    public var projectionClassEmbeddingsInputDimension: Int?
    /// The latent size the model was trained at (64 for 512 px).
    public var sampleSize: Int

    public init(
        inChannels: Int = 4, outChannels: Int = 4, blockOutChannels: [Int] = [320, 640, 1280, 1280],
        downBlockCrossAttention: [Bool] = [true, true, true, false], upBlockCrossAttention: [Bool]? = nil,
        layersPerBlock: Int = 2, attentionHeads: [Int] = [8, 8, 8, 8], transformerLayersPerBlock: [Int]? = nil,
        reverseTransformerLayersPerBlock: [Int]? = nil, crossAttentionDimension: Int = 768,
        useLinearProjection: Bool = false, normGroups: Int = 32, normEpsilon: Float = 1e-5,
        flipSinToCos: Bool = true, frequencyShift: Float = 0, hasMiddleBlock: Bool = true,
        additionTimeEmbeddingDimension: Int? = nil, projectionClassEmbeddingsInputDimension: Int? = nil,
        sampleSize: Int = 64
    ) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.blockOutChannels = blockOutChannels
        self.downBlockCrossAttention = downBlockCrossAttention
        self.upBlockCrossAttention = upBlockCrossAttention ?? downBlockCrossAttention.reversed()
        self.layersPerBlock = layersPerBlock
        self.attentionHeads = attentionHeads
        self.transformerLayersPerBlock = transformerLayersPerBlock ?? Array(repeating: 1, count: blockOutChannels.count)
        self.reverseTransformerLayersPerBlock = reverseTransformerLayersPerBlock
        self.crossAttentionDimension = crossAttentionDimension
        self.useLinearProjection = useLinearProjection
        self.normGroups = normGroups
        self.normEpsilon = normEpsilon
        self.flipSinToCos = flipSinToCos
        self.frequencyShift = frequencyShift
        self.hasMiddleBlock = hasMiddleBlock
        self.additionTimeEmbeddingDimension = additionTimeEmbeddingDimension
        self.projectionClassEmbeddingsInputDimension = projectionClassEmbeddingsInputDimension
        self.sampleSize = sampleSize
    }

    /// SD 1.x: 320/640/1280/1280, 8 heads, cross-attention 768, 1x1-convolution projections.
    public static let sd15 = UNetConfiguration()
    /// SD 2.x: heads of 64 channels (5/10/20/20), cross-attention 1024, linear projections.
    public static let sd21 = UNetConfiguration(
        attentionHeads: [5, 10, 20, 20], crossAttentionDimension: 1024,
        useLinearProjection: true, sampleSize: 96)
    /// SDXL base: three levels 320/640/1280, transformer depths 0/2/10, cross-attention 2048,
    /// the text-and-time additional embedding.
    public static let sdxl = UNetConfiguration(
        blockOutChannels: [320, 640, 1280], downBlockCrossAttention: [false, true, true],
        attentionHeads: [5, 10, 20], transformerLayersPerBlock: [1, 2, 10],
        crossAttentionDimension: 2048, useLinearProjection: true,
        additionTimeEmbeddingDimension: 256, projectionClassEmbeddingsInputDimension: 2816,
        sampleSize: 128)

    /// Width of the timestep embedding (`4 * blockOutChannels[0]`).
    public var timeEmbeddingDimension: Int { 4 * blockOutChannels[0] }

    /// Transformer depth of each up level, coarsest first.
    public var upTransformerLayers: [Int] { reverseTransformerLayersPerBlock ?? transformerLayersPerBlock.reversed() }

    /// Reads diffusers' `unet/config.json`.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` for block types, embeddings or
    ///   attention variants the engine does not run (class embeddings, dual cross-attention, …).
    public init(json: JSONValue) throws(EngineError) {
        guard let o = json.objectValue else {
            throw EngineError(.invalidConfiguration, "UNet configuration is not a JSON object")
        }
        let fields = ConfigurationFields(object: o, subject: "UNet configuration")
        func present(_ key: String) -> JSONValue? { fields.present(key) }
        func int(_ key: String, _ fallback: Int) throws(EngineError) -> Int { try fields.int(key, fallback) }
        func float(_ key: String, _ fallback: Float) throws(EngineError) -> Float { try fields.float(key, fallback) }
        /// A list of strings or integers, refused whole (not filtered) when an entry is of another type.
        func list<T>(_ key: String, _ item: (JSONValue) -> T?) throws(EngineError) -> [T]? {
            guard let v = present(key) else { return nil }
            guard let a = v.arrayValue, a.count <= UNetConfiguration.limits.levels.upperBound else {
                throw EngineError(
                    .invalidConfiguration,
                    "UNet configuration field '\(key)' is not a list of at most \(UNetConfiguration.limits.levels.upperBound) entries")
            }
            var values: [T] = []
            for element in a {
                guard let value = item(element) else {
                    throw EngineError(
                        .invalidConfiguration, "UNet configuration field '\(key)' holds \(element.typeName) \(element.serialized().prefix(40))")
                }
                values.append(value)
            }
            return values
        }
        /// An integer or a list of integers, one per level.
        func perLevel(_ key: String, levels: Int) throws(EngineError) -> [Int]? {
            guard let v = present(key) else { return nil }
            if let n = v.nonNegativeInt { return Array(repeating: n, count: levels) }
            guard let a = v.arrayValue, a.count <= UNetConfiguration.limits.levels.upperBound else {
                throw EngineError(.invalidConfiguration, "UNet configuration field '\(key)' is neither an integer nor a short list")
            }
            let values = a.compactMap(\.nonNegativeInt)
            guard values.count == a.count, values.count == levels else {
                throw EngineError(.invalidConfiguration, "UNet configuration field '\(key)' needs \(levels) non-negative integers")
            }
            return values
        }
        let blocks = try list("block_out_channels", \.nonNegativeInt) ?? [320, 640, 1280, 1280]
        let levels = blocks.count
        let downTypes =
            try list("down_block_types", \.stringValue)
            ?? ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
        let upTypes =
            try list("up_block_types", \.stringValue)
            ?? ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
        guard downTypes.count == levels, upTypes.count == levels else {
            throw EngineError(.invalidConfiguration, "UNet has \(levels) levels but \(downTypes.count) down and \(upTypes.count) up block types")
        }
        let down = try downTypes.map { (t: String) throws(EngineError) -> Bool in
            switch t {
            case "CrossAttnDownBlock2D": return true
            case "DownBlock2D": return false
            default: throw EngineError(.invalidConfiguration, "unsupported UNet down block type '\(t)'")
            }
        }
        let up = try upTypes.map { (t: String) throws(EngineError) -> Bool in
            switch t {
            case "CrossAttnUpBlock2D": return true
            case "UpBlock2D": return false
            default: throw EngineError(.invalidConfiguration, "unsupported UNet up block type '\(t)'")
            }
        }
        let midType = present("mid_block_type")?.stringValue ?? "UNetMidBlock2DCrossAttn"
        guard midType == "UNetMidBlock2DCrossAttn" else {
            throw EngineError(.invalidConfiguration, "unsupported UNet middle block type '\(midType)'")
        }
        for (key, allowed) in [
            ("act_fn", ["silu"]), ("time_embedding_type", ["positional"]),
            ("resnet_time_scale_shift", ["default"]), ("attention_type", ["default"]),
        ] {
            if let v = present(key)?.stringValue, !allowed.contains(v) {
                throw EngineError(.invalidConfiguration, "unsupported UNet \(key) '\(v)'")
            }
        }
        for key in ["class_embed_type", "num_class_embeds", "encoder_hid_dim", "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act"]
        where present(key) != nil {
            throw EngineError(.invalidConfiguration, "unsupported UNet option '\(key)'")
        }
        for key in ["dual_cross_attention", "only_cross_attention", "upcast_attention", "center_input_sample"]
        where present(key)?.boolValue == true {
            // upcast_attention only changes precision of a float16 computation; at fp32 it is a no-op.
            if key == "upcast_attention" { continue }
            throw EngineError(.invalidConfiguration, "unsupported UNet option '\(key)'")
        }
        var additionDimension: Int? = nil
        if let t = present("addition_embed_type")?.stringValue {
            guard t == "text_time" else { throw EngineError(.invalidConfiguration, "unsupported UNet addition_embed_type '\(t)'") }
            additionDimension = try int("addition_time_embed_dim", 256)
        }
        let headCounts = try perLevel("num_attention_heads", levels: levels)
        let headDims = try perLevel("attention_head_dim", levels: levels)
        let heads = headCounts ?? headDims ?? Array(repeating: 8, count: levels)
        var reverse: [Int]? = nil
        if let v = present("reverse_transformer_layers_per_block"), let rows = v.arrayValue {
            guard rows.count == levels else {
                throw EngineError(.invalidConfiguration, "reverse_transformer_layers_per_block needs \(levels) entries")
            }
            // One list per up level; the engine supports a constant depth within a level.
            reverse = try rows.map { (row: JSONValue) throws(EngineError) -> Int in
                if let n = row.nonNegativeInt { return n }
                guard let first = row.arrayValue?.first?.nonNegativeInt, row.arrayValue!.allSatisfy({ $0.nonNegativeInt == first }) else {
                    throw EngineError(.invalidConfiguration, "unsupported reverse_transformer_layers_per_block")
                }
                return first
            }
        }
        let projection: Int? = additionDimension == nil ? nil : try int("projection_class_embeddings_input_dim", 0)
        self.init(
            inChannels: try int("in_channels", 4), outChannels: try int("out_channels", 4), blockOutChannels: blocks,
            downBlockCrossAttention: down, upBlockCrossAttention: up, layersPerBlock: try int("layers_per_block", 2),
            attentionHeads: heads,
            transformerLayersPerBlock: try perLevel("transformer_layers_per_block", levels: levels),
            reverseTransformerLayersPerBlock: reverse,
            crossAttentionDimension: try int("cross_attention_dim", 1280),
            useLinearProjection: present("use_linear_projection")?.boolValue ?? false,
            normGroups: try int("norm_num_groups", 32),
            normEpsilon: try float("norm_eps", 1e-5),
            flipSinToCos: present("flip_sin_to_cos")?.boolValue ?? true,
            frequencyShift: try float("freq_shift", 0),
            additionTimeEmbeddingDimension: additionDimension,
            projectionClassEmbeddingsInputDimension: projection,
            sampleSize: try int("sample_size", 64))
        try validate()
    }

    /// Reads diffusers' `unet/config.json` from its text.
    public init(jsonText: String) throws(EngineError) {
        try self.init(json: try ConfigurationFields.parse(jsonText, name: "UNet"))
    }

    /// The bounds every UNet configuration must keep (Docs/limits.md): generous for every
    /// published model (SDXL: 3 levels of at most 1280 channels, 10 transformer blocks), small
    /// enough that no size computed from them overflows or asks for unbounded memory.
    public struct Limits: Sendable {
        public var levels = 1...8
        public var channels = 1...8192
        public var inputChannels = 1...64
        public var layersPerBlock = 1...16
        public var heads = 1...256
        public var transformerLayers = 0...64
        public var crossAttentionDimension = 1...16384
        public var normGroups = 1...1024
        public var additionTimeEmbeddingDimension = 1...4096
        public var projectionInputDimension = 1...65536
        /// Latent pixels per side the model was trained at (64 for 512 px; SDXL 128).
        public var sampleSize = 1...512
    }
    public static let limits = Limits()

    /// Checks that every number is inside ``limits`` and that the sizes fit together.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` naming the first field out of bounds.
    public func validate() throws(EngineError) {
        let l = Self.limits
        func check(_ value: Int, _ range: ClosedRange<Int>, _ field: String) throws(EngineError) {
            try ConfigurationFields.check(value, range, field, in: "UNet")
        }
        let levels = blockOutChannels.count
        try check(levels, l.levels, "level count (block_out_channels)")
        for c in blockOutChannels { try check(c, l.channels, "block_out_channels entry") }
        try check(inChannels, l.inputChannels, "in_channels")
        try check(outChannels, l.inputChannels, "out_channels")
        try check(layersPerBlock, l.layersPerBlock, "layers_per_block")
        for h in attentionHeads { try check(h, l.heads, "attention head count") }
        for t in transformerLayersPerBlock + (reverseTransformerLayersPerBlock ?? []) {
            try check(t, l.transformerLayers, "transformer_layers_per_block entry")
        }
        try check(crossAttentionDimension, l.crossAttentionDimension, "cross_attention_dim")
        try check(normGroups, l.normGroups, "norm_num_groups")
        try check(sampleSize, l.sampleSize, "sample_size")
        if let d = additionTimeEmbeddingDimension { try check(d, l.additionTimeEmbeddingDimension, "addition_time_embed_dim") }
        if let d = projectionClassEmbeddingsInputDimension { try check(d, l.projectionInputDimension, "projection_class_embeddings_input_dim") }
        guard normEpsilon.isFinite, normEpsilon > 0, normEpsilon < 1 else {
            throw EngineError(.invalidConfiguration, "UNet norm_eps \(normEpsilon) is not in (0, 1)")
        }
        guard frequencyShift.isFinite, abs(frequencyShift) <= 1e4 else {
            throw EngineError(.invalidConfiguration, "UNet freq_shift \(frequencyShift) is outside -10000...10000")
        }
        guard downBlockCrossAttention.count == levels, upBlockCrossAttention.count == levels,
            attentionHeads.count == levels, transformerLayersPerBlock.count == levels,
            (reverseTransformerLayersPerBlock?.count ?? levels) == levels
        else {
            throw EngineError(.invalidConfiguration, "UNet per-level settings do not all have \(levels) entries")
        }
        guard blockOutChannels.allSatisfy({ $0 % normGroups == 0 }) else {
            throw EngineError(.invalidConfiguration, "UNet channels \(blockOutChannels) do not split into \(normGroups) groups")
        }
        for (c, h) in zip(blockOutChannels, attentionHeads) where c % h != 0 {
            throw EngineError(.invalidConfiguration, "UNet level of \(c) channels does not split into \(h) heads")
        }
        guard blockOutChannels[0] % 2 == 0 else {
            throw EngineError(.invalidConfiguration, "UNet first level's \(blockOutChannels[0]) channels are odd (the time embedding halves them)")
        }
    }
}
