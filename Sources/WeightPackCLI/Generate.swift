import Adapters
import ArgumentParser
import DiffusionEngine
import Foundation
import ModelLoading
import StrictJSON

#if canImport(Glibc)
import Glibc
#endif

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate an image with WeightPack's reference engine (CPU; fp32, or the precision the weights are stored in).",
        discussion: """
            Runs the text encoder, the denoising loop with classifier-free guidance and the VAE \
            decoder, as diffusers' StableDiffusionPipeline does, and writes an 8-bit RGB PNG with \
            the prompt and settings in text chunks. A diffusers folder's configurations are \
            honoured; a single file gets its family's published ones, or those of --config DIR. \
            --seed S gives the same initial noise as torch.Generator().manual_seed(S).

            --lora FILE[:SCALE] applies a LoRA, LyCORIS or full-diff adapter at run time (its \
            product added to each layer's output; nothing is merged), as diffusers' \
            load_lora_weights with that scale does. --embedding FILE adds a textual-inversion \
            embedding's tokens to the tokenizer (<tok>, <tok>_1, … as diffusers' \
            load_textual_inversion does; --token NAME renames it) and its vectors to the text \
            encoder; SDXL pairs go to each encoder.

            A model converted with --dtype int8 or q8_0 (or a q8_0 GGUF) runs its UNet's \
            products with those weights in integers by default where the processor has \
            AVX512_VNNI, as stable-diffusion.cpp runs q8_0: each layer's input quantised 32 \
            values per scale, exact byte dot products (about 0.7x the fp32 step's time on SD \
            1.5); other weights, attention, the text encoder and the VAE stay fp32. A model \
            whose UNet weights are all BF16 runs its products on bfloat16 operands by default \
            where the processor has AVX512_BF16. F16 weights (what convert writes by default) are \
            multiplied on AMX tiles where the processor has them, each value as two bfloat16 parts \
            summed in float: within 2^-16 of each product, far below the F16 weight's own rounding \
            (about 0.7x the F32 file's step on SD 1.5; WEIGHTPACK_AMX=0 keeps them in float). \
            --compute f32 keeps every other product in float; --compute bf16 rounds both operands of the UNet's products to bfloat16 and sums in \
            float whatever the storage (about 0.7x the fp32 time). \
            Both change the image a little (Docs/engine.md gives the measured PSNR); the PNG \
            records any compute other than f32.

            Exit codes: 0 done; 64 usage error; 65 unsupported or malformed model, or an adapter \
            or embedding refused for this model; 66 missing input; 69 --compute bf16 on a \
            processor without AVX512_BF16, or int8 without AVX512_VNNI; 73 output exists (without --force) or cannot be \
            created.
            """)

    @Argument(help: "The model (ckpt, safetensors, diffusers folder, .wpk).")
    var model: String

    @OptionGroup var generation: GenerationOptions

    @OptionGroup var adapters: RuntimeAdapterOptions

    @Option(name: .shortAndLong, help: "The PNG to write.")
    var output: String

    @Flag(help: "Replace the output if it exists.")
    var force = false

    @OptionGroup var computeOptions: ComputeOptions

    @OptionGroup var inputOptions: InputOptions

    func run() throws {
        try computeOptions.checkAvailable()
        try runReporting(verbose: inputOptions.verbose) {
            let engine = try generation.open(model, inputOptions: inputOptions, additions: try adapters.additions(inputOptions))
            var request = try generation.request(for: engine)
            request.computePrecision = computeOptions.precision(for: engine, verbose: inputOptions.verbose)
            let progress = StepProgress()
            let result = try engine.pipeline.generate(request, observer: progress.observe)
            progress.finish()
            try PNGImage.write(
                result.image,
                text: generation.textChunks(request, scheduler: engine.pipeline.schedulerKind(for: request), model: model, additions: adapters),
                to: output, overwrite: force)
            print(output)
        }
    }
}

// MARK: - Options shared by generate, trace and verify

struct GenerationOptions: ParsableArguments {
    @Option(help: "The prompt.")
    var prompt: String = "a photo of an astronaut riding a horse"

    @Option(help: "The negative prompt (empty by default).")
    var negativePrompt: String = ""

    @Option(help: "Denoising steps.")
    var steps: Int = 20

    @Option(parsing: .unconditional, help: "Classifier-free guidance scale (negative values are allowed, as in diffusers).")
    var guidance: Float = 7.5

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Seed of the initial noise (torch.Generator().manual_seed compatible).",
            discussion: "Any integer from -2^63 to 2^64-1; a negative seed means what it means to torch (-1 is 2^64-1)."))
    var seed: String = "0"

    /// `--seed` as the generator takes it (validated in `validate()`).
    var generatorSeed: UInt64 { GenerationLimits.torchSeed(seed) ?? 0 }

    @Option(help: "Image size in pixels, a multiple of 8 (default: the model's training size).")
    var size: Int?

    @Option(help: "Sampler: pndm, ddim, euler, euler-a, dpmpp-2m (default: the model's scheduler configuration).")
    var scheduler: SchedulerKind?

    @Option(help: "Initial noise: a safetensors file with one tensor 'latents' ([4,h,w] or [1,4,h,w]), unscaled standard normal.")
    var latents: String?

    @Option(help: "What the UNet predicts: epsilon or v (overrides the configuration; SD 2.x 768 models are v).")
    var predictionType: PredictionChoice?

    @Option(help: "Timestep spacing: leading, linspace, trailing (overrides the configuration).")
    var timestepSpacing: TimestepSpacing?

    @Flag(help: "Use Karras sigmas (Euler and DPM++ 2M).")
    var karras = false

    @Option(
        name: .customLong("config"),
        help: ArgumentHelp(
            "A diffusers folder (or a copy of its JSON files) whose configurations a single file lacks, such as attention head counts.",
            valueName: "DIR"))
    var configurationFolder: String?

    enum PredictionChoice: String, ExpressibleByArgument, CaseIterable {
        case epsilon, v
        var value: PredictionType { self == .v ? .vPrediction : .epsilon }
    }

    /// Every option against the documented bounds (Docs/limits.md), before anything is read.
    func validate() throws {
        let steps = GenerationLimits.steps, side = GenerationLimits.side, guidanceRange = GenerationLimits.guidance
        guard steps.contains(self.steps) else { throw ValidationError("--steps must be between \(steps.lowerBound) and \(steps.upperBound)") }
        if let size, !side.contains(size) || size % 8 != 0 {
            throw ValidationError("--size must be a multiple of 8 from \(side.lowerBound) to \(side.upperBound) pixels")
        }
        guard guidance.isFinite, guidanceRange.contains(guidance) else {
            throw ValidationError("--guidance must be a finite number from \(guidanceRange.lowerBound) to \(guidanceRange.upperBound)")
        }
        guard GenerationLimits.torchSeed(seed) != nil else {
            throw ValidationError("--seed must be an integer in \(GenerationLimits.seedRange)")
        }
    }

    /// Opens `path` for the engine, with `--config`'s configurations and the run-time adapters
    /// and embeddings in `additions`. Warns on stderr about tensors whose `.wpk` checksums fail.
    func open(_ path: String, inputOptions: InputOptions, additions: RuntimeAdditions = RuntimeAdditions()) throws -> StableDiffusionModel {
        let model = try StableDiffusionModel(
            path: path, options: inputOptions.modelInputOptions, configurationFolder: configurationFolder, additions: additions)
        for warning in model.integrityWarnings() { printWarning(warning) }
        return model
    }

    /// The request for `engine`: every setting, reading `--latents` if given.
    func request(for engine: StableDiffusionModel) throws -> StableDiffusionPipeline.Request {
        var r = StableDiffusionPipeline.Request(prompt: prompt)
        r.negativePrompt = negativePrompt
        r.steps = steps
        r.guidanceScale = guidance
        r.seed = generatorSeed
        let pixels = size ?? engine.defaultSize
        r.width = pixels
        r.height = pixels
        r.scheduler = scheduler
        r.predictionType = predictionType?.value
        r.timestepSpacing = timestepSpacing
        if karras { r.useKarrasSigmas = true }
        if let latents {
            let noise = try InitialNoise.read(latents)
            if let warning = InitialNoise.warning(for: noise) { printWarning(warning) }
            r.latents = noise
            let dims = noise.shape
            if size == nil, dims.count >= 2 {
                r.height = dims[dims.count - 2] * 8
                r.width = dims[dims.count - 1] * 8
            }
        }
        return r
    }

    /// The PNG text chunks: the prompt and every setting that decides the image.
    func textChunks(
        _ r: StableDiffusionPipeline.Request, scheduler: SchedulerKind, model: String, additions: RuntimeAdapterOptions? = nil
    ) -> [(String, String)] {
        var settings = JSONObject([
            ("steps", JSONValue(r.steps)), ("guidance", JSONValue(Double(r.guidanceScale))), ("seed", .uint(r.seed)),
            ("width", JSONValue(r.width)), ("height", JSONValue(r.height)), ("scheduler", JSONValue(scheduler.rawValue)),
            ("model", JSONValue(URL(fileURLWithPath: model).lastPathComponent)),
        ])
        if let p = r.predictionType { settings["prediction_type"] = JSONValue(p.rawValue) }
        if let s = r.timestepSpacing { settings["timestep_spacing"] = JSONValue(s.rawValue) }
        if let latents { settings["latents"] = JSONValue(URL(fileURLWithPath: latents).lastPathComponent) }
        if karras { settings["karras_sigmas"] = true }
        if r.computePrecision != .f32 { settings["compute"] = JSONValue(r.computePrecision.rawValue) }
        if let additions {
            if !additions.loras.isEmpty { settings["loras"] = .array(additions.loras.map { JSONValue(URL(fileURLWithPath: $0).lastPathComponent) }) }
            if !additions.embeddings.isEmpty {
                settings["embeddings"] = .array(additions.embeddings.map { JSONValue(URL(fileURLWithPath: $0).lastPathComponent) })
            }
        }
        return [
            ("prompt", r.prompt), ("negative_prompt", r.negativePrompt), ("parameters", JSONValue.object(settings).serialized()),
            ("Software", "weightpack \(WeightPackCommand.version)"),
        ]
    }
}

/// `--lora FILE[:SCALE]`, `--embedding FILE` and `--token NAME` (generate, trace, verify).
struct RuntimeAdapterOptions: ParsableArguments {
    @Option(
        name: .customLong("lora"),
        help: ArgumentHelp(
            "A LoRA, LyCORIS or full-diff adapter applied at run time, with an optional scale (default 1.0); repeatable.",
            discussion:
                "Its product is added to each layer's output as the engine runs; the weights are not merged. An adapter for another base family, or whose modules match no layer, is refused (exit 65).",
            valueName: "file[:scale]"))
    var loras: [String] = []

    @Option(
        name: .customLong("embedding"),
        help: ArgumentHelp(
            "A textual-inversion embedding whose token the prompt can use; repeatable.", valueName: "file"))
    var embeddings: [String] = []

    @Option(
        name: .customLong("token"),
        help: ArgumentHelp(
            "The prompt word of the --embedding at the same position (default: the file's own token, else its file name without the extension); repeatable.",
            valueName: "name"))
    var tokens: [String] = []

    func validate() throws {
        for argument in loras {
            do { _ = try ScaledAdapter.parse(argument) } catch { throw ValidationError("--lora: \(error.message)") }
        }
        guard tokens.count <= embeddings.count else {
            throw ValidationError(
                "--token is given \(tokens.count) times for \(embeddings.count) --embedding files; each --token names the --embedding at its position"
            )
        }
        for t in tokens where t.isEmpty || t.unicodeScalars.allSatisfy(\.properties.isWhitespace) {
            throw ValidationError("--token must not be empty or blank")
        }
    }

    /// The adapters and embeddings, opened.
    func additions(_ input: InputOptions, loras include: Bool = true) throws -> RuntimeAdditions {
        try RuntimeAdditions.open(
            loras: include ? loras : [],
            embeddings: embeddings.enumerated().map { ($1, $0 < tokens.count ? tokens[$0] : nil) },
            options: input.modelInputOptions)
    }
}

extension SchedulerKind: ExpressibleByArgument {}
extension TimestepSpacing: ExpressibleByArgument {}

// MARK: - Progress

/// A one-line step counter on stderr, only when stderr is a terminal; the total comes from the
/// pipeline's `.schedule` event.
final class StepProgress {
    private var total = 0
    private let enabled = isatty(2) != 0
    func observe(_ event: StableDiffusionPipeline.Event) {
        guard enabled else { return }
        switch event {
        case .schedule(let timesteps): total = timesteps.count
        case .step(let index, _, _, _): writeStandardError("\rstep \(index + 1)/\(total)")
        default: break
        }
    }
    func finish() { if enabled, total > 0 { writeStandardError("\n") } }
}
