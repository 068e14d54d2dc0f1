import StrictJSON

/// The shape of a Stable Diffusion VAE (diffusers' `AutoencoderKL`) and its latent scaling.
public struct AutoencoderKLConfiguration: Sendable, Hashable {
    public var inChannels: Int
    public var outChannels: Int
    public var latentChannels: Int
    /// Channels of each resolution level, finest first (`(128, 256, 512, 512)` for SD).
    public var blockOutChannels: [Int]
    /// Residual blocks per encoder level (the decoder has one more).
    public var layersPerBlock: Int
    public var normGroups: Int
    /// Epsilon of every group norm (1e-6 in diffusers' VAE).
    public var normEpsilon: Float
    /// Latents are divided by this before decoding and multiplied after encoding:
    /// 0.18215 for SD 1.x and 2.x, 0.13025 for SDXL.
    public var scalingFactor: Float
    /// Subtracted after encoding and added before decoding, where a model has one (else 0).
    public var shiftFactor: Float
    /// Whether `quant_conv` and `post_quant_conv` (1x1 convolutions) exist.
    public var useQuantConv: Bool
    public var usePostQuantConv: Bool
    /// Whether the middle blocks have their self-attention layer.
    public var midBlockAttention: Bool
    /// The image size the model was trained at; tiled decoding uses tiles of this size.
    public var sampleSize: Int

    public init(
        inChannels: Int = 3, outChannels: Int = 3, latentChannels: Int = 4,
        blockOutChannels: [Int] = [128, 256, 512, 512], layersPerBlock: Int = 2, normGroups: Int = 32,
        normEpsilon: Float = 1e-6, scalingFactor: Float = 0.18215, shiftFactor: Float = 0,
        useQuantConv: Bool = true, usePostQuantConv: Bool = true, midBlockAttention: Bool = true,
        sampleSize: Int = 512
    ) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.latentChannels = latentChannels
        self.blockOutChannels = blockOutChannels
        self.layersPerBlock = layersPerBlock
        self.normGroups = normGroups
        self.normEpsilon = normEpsilon
        self.scalingFactor = scalingFactor
        self.shiftFactor = shiftFactor
        self.useQuantConv = useQuantConv
        self.usePostQuantConv = usePostQuantConv
        self.midBlockAttention = midBlockAttention
        self.sampleSize = sampleSize
    }

    /// SD 1.x (and 2.x): scaling factor 0.18215.
    public static let sd15 = AutoencoderKLConfiguration()
    /// SD 2.x: the same VAE as SD 1.x (768-px models use 768-px tiles).
    public static let sd21 = AutoencoderKLConfiguration(sampleSize: 768)
    /// SDXL: the same architecture, scaling factor 0.13025, 1024-px tiles.
    public static let sdxl = AutoencoderKLConfiguration(scalingFactor: 0.13025, sampleSize: 1024)

    /// How many times the encoder halves the resolution (3 for SD: 8x smaller latents).
    public var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }

    /// Reads diffusers' `vae/config.json`.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` for missing fields, block types
    ///   other than `DownEncoderBlock2D`/`UpDecoderBlock2D`, or an activation other than SiLU.
    public init(json: JSONValue) throws(EngineError) {
        guard let o = json.objectValue else {
            throw EngineError(.invalidConfiguration, "VAE configuration is not a JSON object")
        }
        let fields = ConfigurationFields(object: o, subject: "VAE configuration")
        func int(_ key: String, _ fallback: Int) throws(EngineError) -> Int { try fields.int(key, fallback) }
        func float(_ key: String, _ fallback: Float) throws(EngineError) -> Float { try fields.float(key, fallback) }
        var blocks = [64]
        if let v = o["block_out_channels"], v != .null {
            guard let a = v.arrayValue, a.count <= Self.limits.levels.upperBound else {
                throw EngineError(.invalidConfiguration, "VAE block_out_channels is not a list of at most \(Self.limits.levels.upperBound) integers")
            }
            blocks = []
            for element in a {
                guard let n = element.nonNegativeInt else {
                    throw EngineError(.invalidConfiguration, "VAE block_out_channels holds \(element.typeName) \(element.serialized().prefix(40))")
                }
                blocks.append(n)
            }
        }
        if let act = o["act_fn"]?.stringValue, act != "silu" {
            throw EngineError(.invalidConfiguration, "unsupported VAE activation '\(act)'")
        }
        for (key, expected) in [("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")] {
            if let types = o[key]?.arrayValue, types.contains(where: { $0.stringValue != expected }) {
                throw EngineError(.invalidConfiguration, "unsupported VAE \(key) (only \(expected))")
            }
        }
        self.init(
            inChannels: try int("in_channels", 3), outChannels: try int("out_channels", 3),
            latentChannels: try int("latent_channels", 4), blockOutChannels: blocks,
            layersPerBlock: try int("layers_per_block", 1), normGroups: try int("norm_num_groups", 32),
            scalingFactor: try float("scaling_factor", 0.18215), shiftFactor: try float("shift_factor", 0),
            useQuantConv: o["use_quant_conv"]?.boolValue ?? true,
            usePostQuantConv: o["use_post_quant_conv"]?.boolValue ?? true,
            midBlockAttention: o["mid_block_add_attention"]?.boolValue ?? true,
            sampleSize: try int("sample_size", 512))
        try validate()
    }

    /// Reads diffusers' `vae/config.json` from its text.
    public init(jsonText: String) throws(EngineError) {
        try self.init(json: try ConfigurationFields.parse(jsonText, name: "VAE"))
    }

    /// The bounds every VAE configuration must keep (Docs/limits.md).
    public struct Limits: Sendable {
        public var levels = 1...8
        public var channels = 1...8192
        public var imageChannels = 1...64
        public var latentChannels = 1...64
        public var layersPerBlock = 1...16
        public var normGroups = 1...1024
        /// Pixels per side the model was trained at (512 for SD 1.x, 1024 for SDXL).
        public var sampleSize = 1...8192
        /// Magnitude of `scaling_factor` and `shift_factor`.
        public var factorMagnitude: Float = 1000
    }
    public static let limits = Limits()

    /// Checks that every number is inside ``limits`` and the sizes fit together.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` naming the first field out of bounds.
    public func validate() throws(EngineError) {
        let l = Self.limits
        func check(_ value: Int, _ range: ClosedRange<Int>, _ field: String) throws(EngineError) {
            try ConfigurationFields.check(value, range, field, in: "VAE")
        }
        try check(blockOutChannels.count, l.levels, "level count (block_out_channels)")
        for c in blockOutChannels { try check(c, l.channels, "block_out_channels entry") }
        try check(inChannels, l.imageChannels, "in_channels")
        try check(outChannels, l.imageChannels, "out_channels")
        try check(latentChannels, l.latentChannels, "latent_channels")
        try check(layersPerBlock, l.layersPerBlock, "layers_per_block")
        try check(normGroups, l.normGroups, "norm_num_groups")
        try check(sampleSize, l.sampleSize, "sample_size")
        guard blockOutChannels.allSatisfy({ $0 % normGroups == 0 }) else {
            throw EngineError(.invalidConfiguration, "VAE channels \(blockOutChannels) do not split into \(normGroups) groups")
        }
        guard scalingFactor.isFinite, scalingFactor != 0, abs(scalingFactor) <= l.factorMagnitude else {
            throw EngineError(.invalidConfiguration, "VAE scaling factor must be finite, non-zero and at most \(l.factorMagnitude) in magnitude")
        }
        guard shiftFactor.isFinite, abs(shiftFactor) <= l.factorMagnitude else {
            throw EngineError(.invalidConfiguration, "VAE shift factor must be finite and at most \(l.factorMagnitude) in magnitude")
        }
        guard normEpsilon.isFinite, normEpsilon > 0, normEpsilon < 1 else {
            throw EngineError(.invalidConfiguration, "VAE norm epsilon \(normEpsilon) is not in (0, 1)")
        }
    }
}
