import DiffusionEngine
import StrictJSON
import TensorCore

/// A calibration run: the whole cascade run a few times with an ``ActivationRecorder``
/// installed, giving the per-input-channel mean squares every linear and convolution layer's
/// inputs had. ``Sensitivity`` weights each weight's rounding error by them to predict the
/// error a storage type causes in the layer's output (issue 14).
public enum Calibration {
    /// What the calibration runs: every prompt with every seed, at one size, for a few steps.
    public struct Settings: Sendable, Hashable {
        public var prompts: [String]
        public var seeds: [UInt64]
        /// Image size in pixels (a multiple of the VAE's downsampling factor).
        public var width: Int
        public var height: Int
        /// Denoising steps per generation (DDIM, so the timesteps spread evenly over the schedule).
        public var steps: Int
        public var guidanceScale: Float

        public init(prompts: [String], seeds: [UInt64] = [0], width: Int, height: Int, steps: Int = 4, guidanceScale: Float = 7.5) {
            self.prompts = prompts
            self.seeds = seeds
            self.width = width
            self.height = height
            self.steps = steps
            self.guidanceScale = guidanceScale
        }

        /// Three short prompts of different kinds of picture (an object, a landscape, a face).
        public static let defaultPrompts = [
            "a red bicycle leaning against a brick wall",
            "a misty mountain lake at sunrise, oil painting",
            "close-up portrait of an old fisherman, detailed face",
        ]

        /// The scheduler every calibration generation runs.
        public static let scheduler = SchedulerKind.ddim

        /// The defaults for `model`: ``defaultPrompts``, seed 0, four steps, guidance 7.5, and
        /// 256 pixels a side (a 512-pixel model's at half size; the model's own size when smaller,
        /// as the tiny fixtures').
        public static func defaults(for model: StableDiffusionModel) -> Settings {
            let factor = max(1, model.pipeline.vae.configuration.downsamplingFactor)
            let side = max(factor, min(model.defaultSize, 256) / factor * factor)
            return Settings(prompts: defaultPrompts, seeds: [0], width: side, height: side, steps: 4, guidanceScale: 7.5)
        }

        /// Every field (and the scheduler), for the recipe.
        public var json: JSONValue {
            .object(
                JSONObject([
                    ("prompts", .array(prompts.map { .string($0) })),
                    ("seeds", .array(seeds.map { .uint($0) })),
                    ("width", .int(Int64(width))),
                    ("height", .int(Int64(height))),
                    ("steps", .int(Int64(steps))),
                    ("guidance_scale", .double(Double(guidanceScale))),
                    ("scheduler", .string(Self.scheduler.rawValue)),
                ]))
        }
    }

    /// The most generations (prompts × seeds) one calibration runs.
    public static let maximumGenerations = 256

    /// Runs the whole cascade (text encoders, the UNet over the steps, the VAE decoder, and the
    /// VAE encoder on the decoded image when the model has one) for every prompt × seed with a
    /// recorder installed, and returns the statistics keyed by the canonical tensor names of
    /// `model` (those of `model.canonical.store`, which the conversion plan uses).
    ///
    /// Weights no layer reads through the engine's products (embedding tables, SDXL's text
    /// projection, a text encoder's last layer where the family conditions on the penultimate
    /// one) have no statistics.
    ///
    /// - Parameters:
    ///   - int8InputNoise: also record, for the UNet's layers that take the int8 products, the
    ///     error quantising their inputs adds (``ChannelEnergy/int8InputNoise``), for a
    ///     prediction of ``ComputePrecision/int8``.
    ///   - progress: called after each stage (text encoding, each step, decoding,
    ///     encoding) with the stages done and the total, on the calling thread.
    /// - Throws: ``ModelLoadingError/Code/invalidCalibration`` for no prompts or seeds or too
    ///   many generations; the engine's errors for sizes or steps it does not take.
    public static func run(
        _ model: StableDiffusionModel, settings: Settings, int8InputNoise: Bool = false,
        progress: ((_ done: Int, _ total: Int) -> Void)? = nil
    ) throws -> ActivationStatistics {
        guard !settings.prompts.isEmpty, !settings.seeds.isEmpty else {
            throw ModelLoadingError(.invalidCalibration, "calibration needs at least one prompt and one seed", path: model.canonical.path)
        }
        let (generations, overflow) = settings.prompts.count.multipliedReportingOverflow(by: settings.seeds.count)
        guard !overflow, generations <= maximumGenerations else {
            throw ModelLoadingError(
                .invalidCalibration,
                "\(settings.prompts.count) prompts × \(settings.seeds.count) seeds is more than \(maximumGenerations) generations",
                path: model.canonical.path)
        }
        let pipeline = model.pipeline
        let encodes = pipeline.vae.weights.contains("encoder.conv_in.weight")
        // Stages per generation: text, each step, decode, and encode when there is an encoder.
        let perGeneration = settings.steps + 2 + (encodes ? 1 : 0)
        let total = generations * max(perGeneration, 1)
        var done = 0
        func advance() {
            done += 1
            progress?(done, total)
        }

        // The UNet is the network ``ComputePrecision/int8`` applies to.
        let recorder = ActivationRecorder(int8NoisePrefix: int8InputNoise ? "unet." : nil)
        let previous = pipeline.activationRecorder
        pipeline.activationRecorder = recorder
        defer { pipeline.activationRecorder = previous }
        progress?(0, total)
        for prompt in settings.prompts {
            for seed in settings.seeds {
                var request = StableDiffusionPipeline.Request(prompt: prompt)
                request.seed = seed
                request.steps = settings.steps
                request.guidanceScale = settings.guidanceScale
                request.width = settings.width
                request.height = settings.height
                request.scheduler = Settings.scheduler
                let output = try pipeline.generate(request) { event in
                    switch event {
                    case .conditioning, .step, .image: advance()
                    default: break
                    }
                }
                if encodes {
                    // The decoded image back through the encoder: `[H, W, 3]` in [0, 1] to `[3, H, W]` in [-1, 1].
                    let pixels = output.image.scalars
                    let (h, w, c) = (output.image.shape[0], output.image.shape[1], output.image.shape[2])
                    var planar = [Float](repeating: 0, count: pixels.count)
                    for y in 0..<h {
                        for i in 0..<w {
                            for k in 0..<c { planar[(k * h + y) * w + i] = pixels[(y * w + i) * c + k] * 2 - 1 }
                        }
                    }
                    if c == pipeline.vae.configuration.inChannels { _ = try pipeline.vae.encode(FloatTensor(shape: [c, h, w], values: planar)) }
                    advance()
                }
            }
        }
        let store = model.canonical.store
        var channels: [String: ChannelEnergy] = [:]
        for (name, energy) in recorder.statistics() {
            // The engine reads the canonical store under each network's prefix, so its names are
            // the canonical names; anything else (never expected) is left out.
            guard let d = store.descriptor(named: name), d.shape.rank >= 2, d.shape[1] == energy.meanSquares.count else { continue }
            channels[name] = energy
        }
        return ActivationStatistics(channels: channels, settings: settings)
    }
}

/// What a calibration measured: per weight (canonical name), the mean squares of its layer's
/// inputs per input channel.
public struct ActivationStatistics: Sendable {
    public var channels: [String: ChannelEnergy]
    public var settings: Calibration.Settings

    public init(channels: [String: ChannelEnergy], settings: Calibration.Settings) {
        self.channels = channels
        self.settings = settings
    }
}
