import TensorCore

/// Text-to-image generation with classifier-free guidance: prompt → tokens → text embeddings
/// (conditional and unconditional) → denoising loop → VAE decode.
/// Matches diffusers' StableDiffusionPipeline and StableDiffusionXLPipeline, https://github.com/huggingface/diffusers/blob/main/src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py
///
/// Not thread-safe: the networks keep scratch buffers; one pipeline serves one generation at a time.
public final class StableDiffusionPipeline {
    /// SDXL's second text encoder and its tokenizer.
    public struct SecondTextEncoder {
        public var tokenizer: CLIPTokenizer
        public var model: CLIPTextModel
        /// Pad id for this tokenizer when it differs from its own (`0` for OpenCLIP's `!`).
        public var padTokenID: Int?
        /// The weight name of the `[projection, hidden]` text projection, with the store prefix.
        public var projectionName: String
        public init(tokenizer: CLIPTokenizer, model: CLIPTextModel, padTokenID: Int? = nil, projectionName: String) {
            self.tokenizer = tokenizer
            self.model = model
            self.padTokenID = padTokenID
            self.projectionName = projectionName
        }
    }

    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextModel
    public let secondTextEncoder: SecondTextEncoder?
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL
    /// The folder's or family's scheduler configuration.
    public var schedulerConfiguration: SchedulerConfiguration
    /// Pad id override for the first tokenizer (SD 2.x pads with `!`, id 0).
    public var padTokenID: Int?
    /// SDXL base: an empty negative prompt gives zero embeddings (`force_zeros_for_empty_prompt`).
    public var forceZerosForEmptyPrompt: Bool

    /// The recorder installed on every network (text encoders, UNet, VAE), or `nil`; setting it
    /// installs it on all of them (see ``ActivationRecorder``).
    public var activationRecorder: ActivationRecorder? {
        get { unet.activationRecorder }
        set {
            textEncoder.activationRecorder = newValue
            secondTextEncoder?.model.activationRecorder = newValue
            unet.activationRecorder = newValue
            vae.activationRecorder = newValue
        }
    }

    public init(
        tokenizer: CLIPTokenizer, textEncoder: CLIPTextModel, secondTextEncoder: SecondTextEncoder? = nil,
        unet: UNet2DConditionModel, vae: AutoencoderKL, schedulerConfiguration: SchedulerConfiguration,
        padTokenID: Int? = nil, forceZerosForEmptyPrompt: Bool = false
    ) {
        self.tokenizer = tokenizer
        self.textEncoder = textEncoder
        self.secondTextEncoder = secondTextEncoder
        self.unet = unet
        self.vae = vae
        self.schedulerConfiguration = schedulerConfiguration
        self.padTokenID = padTokenID
        self.forceZerosForEmptyPrompt = forceZerosForEmptyPrompt
    }

    /// What to generate.
    public struct Request: Sendable {
        public var prompt: String
        public var negativePrompt: String = ""
        public var steps: Int = 20
        public var guidanceScale: Float = 7.5
        public var seed: UInt64 = 0
        /// Image size in pixels (multiples of 8).
        public var width: Int = 512
        public var height: Int = 512
        /// `nil` takes the configuration's class (PNDM when it names none).
        public var scheduler: SchedulerKind? = nil
        public var predictionType: PredictionType? = nil
        public var timestepSpacing: TimestepSpacing? = nil
        /// Karras sigmas for Euler and DPM++ 2M; `nil` keeps the configuration's `use_karras_sigmas`.
        public var useKarrasSigmas: Bool? = nil
        /// Unscaled standard-normal initial noise `[4, h, w]` (diffusers' `latents=`); `nil` draws
        /// it from the seed.
        public var latents: FloatTensor? = nil
        /// The arithmetic of the UNet's matrix products during the denoising loop (the text
        /// encoder and the VAE compute in float either way). ``ComputePrecision/bf16`` needs
        /// ``ComputeBackend/bf16Products``, ``ComputePrecision/int8`` ``ComputeBackend/int8Products``.
        public var computePrecision: ComputePrecision = .f32

        public init(prompt: String) { self.prompt = prompt }
    }

    /// The prompt's conditioning: `[2, tokens, width]` embeddings (unconditional first, as the
    /// guidance batch), and SDXL's pooled embeddings and time ids.
    public struct Conditioning {
        public var tokens: (conditional: [Int], unconditional: [Int])
        /// `[2, tokens, width]`: row 0 unconditional, row 1 conditional.
        public var embeddings: FloatTensor
        public var added: UNet2DConditionModel.AddedConditions?
    }

    /// What a generation reports while it runs (the `trace` command records these).
    public enum Event {
        /// The schedule the loop will run, before anything else: `timesteps.count` steps follow.
        case schedule(timesteps: [Float])
        case conditioning(Conditioning)
        /// The initial latents as the loop starts (after scaling by the initial sigma).
        case initialLatents(FloatTensor)
        /// After loop iteration `index` at `timestep`: the guided noise prediction and the new latents.
        case step(index: Int, timestep: Float, noisePrediction: FloatTensor, latents: FloatTensor)
        /// The decoded image `[H, W, 3]` in [0, 1].
        case image(FloatTensor)
    }

    /// The result of ``generate(_:observer:)``.
    public struct Output {
        public var conditioning: Conditioning
        public var initialLatents: FloatTensor
        public var timesteps: [Float]
        public var latents: FloatTensor
        /// `[H, W, 3]` in [0, 1].
        public var image: FloatTensor
    }

    /// The scheduler kind a request runs.
    public func schedulerKind(for request: Request) -> SchedulerKind {
        request.scheduler ?? schedulerConfiguration.kind ?? .pndm
    }

    /// The scheduler a request runs: its kind, steps and every override the request carries,
    /// over this pipeline's configuration (which the request never changes).
    public func scheduler(for request: Request) throws(EngineError) -> any Scheduler {
        var configuration = schedulerConfiguration
        if let karras = request.useKarrasSigmas { configuration.useKarrasSigmas = karras }
        return try SchedulerFactory.make(
            schedulerKind(for: request), configuration: configuration, steps: request.steps,
            predictionType: request.predictionType, timestepSpacing: request.timestepSpacing)
    }

    /// Runs the whole cascade.
    ///
    /// - Parameter observer: called with every intermediate, in order.
    /// - Throws: ``EngineError`` for invalid sizes, latents or configurations, and any network failure.
    /// - Complexity: `steps` UNet passes with a batch of 2 (3 for PNDM's repeated step: steps + 1).
    public func generate(_ request: Request, observer: ((Event) -> Void)? = nil) throws(EngineError) -> Output {
        let factor = vae.configuration.downsamplingFactor
        try request.validate(downsamplingFactor: factor)
        guard request.width > 0, request.height > 0, request.width % factor == 0, request.height % factor == 0 else {
            throw EngineError(.invalidInput, "image size \(request.width)x\(request.height) is not a positive multiple of \(factor)")
        }
        let shape = [unet.configuration.inChannels == 4 ? 4 : vae.configuration.latentChannels, request.height / factor, request.width / factor]
        guard unet.configuration.inChannels == vae.configuration.latentChannels else {
            throw EngineError(
                .invalidConfiguration,
                "a UNet with \(unet.configuration.inChannels) input channels needs an image or mask input (inpainting), which generate does not take")
        }
        try UNet2DConditionModel.checkAvailable(request.computePrecision)
        let precision = unet.computePrecision
        unet.computePrecision = request.computePrecision
        defer { unet.computePrecision = precision }
        var generator = TorchGenerator(seed: request.seed)
        let noise: FloatTensor
        if let given = request.latents {
            let s = given.shape
            guard s == shape || s == [1] + shape else {
                throw EngineError(
                    .invalidInput, "latents have shape \(s), expected \(shape) or \([1] + shape) for \(request.width)x\(request.height)")
            }
            noise = FloatTensor(shape: shape, values: given.scalars)
        } else {
            noise = generator.randn(shape)
        }
        let scheduler = try scheduler(for: request)
        observer?(.schedule(timesteps: scheduler.timesteps))
        let conditioning = try encode(prompt: request.prompt, negativePrompt: request.negativePrompt, width: request.width, height: request.height)
        observer?(.conditioning(conditioning))
        var latents = noise.scalars.map { $0 * scheduler.initialNoiseSigma }
        let initial = FloatTensor(shape: shape, values: latents)
        observer?(.initialLatents(initial))
        for (index, t) in scheduler.timesteps.enumerated() {
            let guided = try guidedNoise(
                latents: latents, shape: shape, scale: scheduler.inputScale(at: index), timestep: t,
                conditioning: conditioning, guidanceScale: request.guidanceScale)
            latents = scheduler.step(guided, at: index, sample: latents, generator: &generator)
            observer?(
                .step(
                    index: index, timestep: t, noisePrediction: FloatTensor(shape: shape, values: guided),
                    latents: FloatTensor(shape: shape, values: latents)))
        }
        let final = FloatTensor(shape: shape, values: latents)
        unet.releaseScratch()  // the UNet's step-to-step buffers are not needed by the decode
        let image = try vae.decodeImage(latents: final)
        observer?(.image(image))
        return Output(conditioning: conditioning, initialLatents: initial, timesteps: scheduler.timesteps, latents: final, image: image)
    }

    /// The guided noise prediction for one latent: `uncond + g (cond - uncond)` from a batch of two
    /// UNet passes on `latents * scale`.
    public func guidedNoise(
        latents: [Float], shape: [Int], scale: Float, timestep: Float, conditioning: Conditioning,
        guidanceScale: Float
    ) throws(EngineError) -> [Float] {
        let n = latents.count
        let prediction = try noisePrediction(latents: latents, shape: shape, scale: scale, timestep: timestep, conditioning: conditioning)
        return (0..<n).map { i in
            let u = prediction.base[i], c = prediction.base[n + i]
            return u + guidanceScale * (c - u)
        }
    }

    /// The UNet's raw prediction `[2, channels, h, w]` (unconditional, conditional) for one latent
    /// scaled by `scale`: the single pass `verify` compares.
    public func noisePrediction(
        latents: [Float], shape: [Int], scale: Float, timestep: Float,
        conditioning: Conditioning
    ) throws(EngineError) -> FloatTensor {
        let n = latents.count
        let batch = FloatTensor(shape: [2] + shape)
        for i in 0..<n {
            let v = latents[i] * scale
            batch.base[i] = v
            batch.base[n + i] = v
        }
        return try unet.predict(batch, timestep: timestep, encoderHiddenStates: conditioning.embeddings, added: conditioning.added)
    }

    // MARK: Text

    /// The conditioning for a prompt and its negative prompt.
    ///
    /// - Parameters:
    ///   - width, height: SDXL's micro-conditioning (original and target size; crop 0, 0).
    public func encode(prompt: String, negativePrompt: String, width: Int, height: Int) throws(EngineError) -> Conditioning {
        let conditional = tokenizer.encode(prompt, padTokenID: padTokenID)
        let unconditional = tokenizer.encode(negativePrompt, padTokenID: padTokenID)
        guard let second = secondTextEncoder else {
            let embeddings = try textEncoder.encode([unconditional, conditional])
            return Conditioning(tokens: (conditional, unconditional), embeddings: embeddings, added: nil)
        }
        // SDXL: both encoders' penultimate states side by side; the second one's pooled projection.
        let first = try penultimate(textEncoder, [unconditional, conditional])
        let ids2 = [
            second.tokenizer.encode(negativePrompt, padTokenID: second.padTokenID),
            second.tokenizer.encode(prompt, padTokenID: second.padTokenID),
        ]
        let other = try penultimate(second.model, ids2)
        let final = try second.model.hiddenState(ids2, layers: second.model.configuration.layerCount, finalLayerNorm: true)
        let pooled = second.model.pooledOutput(final, tokens: ids2)
        let projected = try project(pooled, second)
        let (d1, d2) = (first.shape[2], other.shape[2])
        let tokens = first.shape[1]
        let embeddings = FloatTensor(shape: [2, tokens, d1 + d2])
        for b in 0..<2 {
            for t in 0..<tokens {
                let row = embeddings.base + (b * tokens + t) * (d1 + d2)
                row.update(from: first.base + (b * tokens + t) * d1, count: d1)
                (row + d1).update(from: other.base + (b * tokens + t) * d2, count: d2)
            }
        }
        if forceZerosForEmptyPrompt && negativePrompt.isEmpty {
            embeddings.base.update(repeating: 0, count: tokens * (d1 + d2))
            projected.base.update(repeating: 0, count: projected.shape[1])
        }
        let ids: [Float] = [Float(height), Float(width), 0, 0, Float(height), Float(width)]
        let timeIDs = FloatTensor(shape: [2, 6], values: ids + ids)
        return Conditioning(
            tokens: (conditional, unconditional), embeddings: embeddings,
            added: .init(textEmbeddings: projected, timeIDs: timeIDs))
    }

    private func penultimate(_ model: CLIPTextModel, _ ids: [[Int]]) throws(EngineError) -> FloatTensor {
        try model.hiddenState(ids, layers: model.configuration.layerCount - 1, finalLayerNorm: false)
    }

    /// `pooled @ text_projection^T` for each row.
    private func project(_ pooled: FloatTensor, _ second: SecondTextEncoder) throws(EngineError) -> FloatTensor {
        let provider = WeightProvider(store: second.model.weights.store)
        let shape = try provider.shape(second.projectionName)
        let hidden = pooled.shape[1]
        guard shape.count == 2, shape[1] == hidden else {
            throw EngineError(.shapeMismatch, "text projection \(shape) does not fit width \(hidden)", tensorName: second.projectionName)
        }
        let out = FloatTensor(shape: [pooled.shape[0], shape[0]])
        do {
            try provider.withFloats(second.projectionName) { w in
                GEMM.multiply(
                    m: pooled.shape[0], n: shape[0], k: hidden, a: pooled.base, lda: hidden,
                    b: w, ldb: hidden, transposeB: true, c: out.base, ldc: shape[0])
            }
        } catch let error as EngineError { throw error } catch {
            throw EngineError(.invalidInput, "text projection failed", underlying: error)
        }
        return out
    }
}
