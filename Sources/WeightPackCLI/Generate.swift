import ArgumentParser
import Quantization
import CheckpointFormats
import CPNG
import DiffusionEngine
import Foundation
import MappedIO
import ModelCatalog
import StrictJSON
import TensorCore

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate an image with WeightPack's reference engine (CPU, fp32).",
        discussion: """
            Runs the text encoder, the denoising loop with classifier-free guidance and the VAE
            decoder, as diffusers' StableDiffusionPipeline does, and writes an 8-bit RGB PNG with
            the prompt and settings in text chunks. A diffusers folder's scheduler configuration is
            honoured; a single file gets its family's published one. --seed S gives the same
            initial noise as torch.Generator().manual_seed(S).
            Exit codes: 0 done; 64 usage error; 65 unsupported or malformed model; 66 missing
            input; 73 output exists (without --force) or cannot be created.
            """)

    @Argument(help: "The model (ckpt, safetensors, diffusers folder, .wpk).")
    var model: String

    @OptionGroup var generation: GenerationOptions

    @Option(name: .shortAndLong, help: "The PNG to write.")
    var output: String

    @Flag(help: "Replace the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let engine = try EngineModel(path: model, inputOptions: inputOptions)
            let request = try generation.request(for: engine)
            let kind = engine.pipeline.schedulerKind(for: request)
            let progress = StepProgress(total: try SchedulerFactory.make(kind, configuration: engine.pipeline.schedulerConfiguration, steps: request.steps,
                                                                         predictionType: request.predictionType, timestepSpacing: request.timestepSpacing).timesteps.count)
            let result = try engine.pipeline.generate(request) { event in
                if case .step(let index, _, _, _) = event { progress.update(index + 1) }
            }
            progress.finish()
            let png = try PNGImage.encode(result.image, text: generation.textChunks(request, scheduler: kind, model: model))
            try writeFile(png, to: output, overwrite: force)
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

    @Option(help: "Classifier-free guidance scale.")
    var guidance: Float = 7.5

    @Option(help: "Seed of the initial noise (torch.Generator().manual_seed compatible).")
    var seed: UInt64 = 0

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

    enum PredictionChoice: String, ExpressibleByArgument, CaseIterable {
        case epsilon, v
        var value: PredictionType { self == .v ? .vPrediction : .epsilon }
    }

    func validate() throws {
        guard steps > 0 && steps <= 1000 else { throw ValidationError("--steps must be between 1 and 1000") }
        if let size, size <= 0 || size % 8 != 0 { throw ValidationError("--size must be a positive multiple of 8") }
        guard guidance.isFinite else { throw ValidationError("--guidance must be a finite number") }
    }

    /// The request for `engine`, reading `--latents` if given.
    func request(for engine: EngineModel) throws -> StableDiffusionPipeline.Request {
        var r = StableDiffusionPipeline.Request(prompt: prompt)
        r.negativePrompt = negativePrompt
        r.steps = steps
        r.guidanceScale = guidance
        r.seed = seed
        let pixels = size ?? engine.defaultSize
        r.width = pixels
        r.height = pixels
        r.scheduler = scheduler
        r.predictionType = predictionType?.value
        r.timestepSpacing = timestepSpacing
        if let latents {
            guard FileManager.default.fileExists(atPath: latents) else {
                printError("weightpack: error: \(latents): no such latents file")
                throw ExitCode(66)
            }
            let file = try SafetensorsFile(path: latents)
            guard let d = file.descriptor(named: "latents") ?? (file.tensors.count == 1 ? file.tensors[0] : nil) else {
                throw LatentsFileError(path: latents, reason: "no tensor named 'latents'")
            }
            let values = try file.tensor(named: d.name).floats()
            let dims = d.shape.dimensions
            r.latents = FloatTensor(shape: dims, values: values)
            if size == nil, dims.count >= 2 {
                r.height = dims[dims.count - 2] * 8
                r.width = dims[dims.count - 1] * 8
            }
        }
        if karras { engine.enableKarras() }
        return r
    }

    /// The PNG text chunks: the prompt and every setting that decides the image.
    func textChunks(_ r: StableDiffusionPipeline.Request, scheduler: SchedulerKind, model: String) -> [(String, String)] {
        var settings = JSONObject([
            ("steps", JSONValue(r.steps)), ("guidance", JSONValue(Double(r.guidanceScale))), ("seed", JSONValue(Int(r.seed))),
            ("width", JSONValue(r.width)), ("height", JSONValue(r.height)), ("scheduler", JSONValue(scheduler.rawValue)),
            ("model", JSONValue(URL(fileURLWithPath: model).lastPathComponent)),
        ])
        if let p = r.predictionType { settings["prediction_type"] = JSONValue(p.rawValue) }
        if let s = r.timestepSpacing { settings["timestep_spacing"] = JSONValue(s.rawValue) }
        if let latents { settings["latents"] = JSONValue(URL(fileURLWithPath: latents).lastPathComponent) }
        if karras { settings["karras_sigmas"] = true }
        return [("prompt", r.prompt), ("negative_prompt", r.negativePrompt), ("parameters", JSONValue.object(settings).serialized()),
                ("Software", "weightpack \(WeightPackCommand.version)")]
    }
}

extension SchedulerKind: ExpressibleByArgument {}
extension TimestepSpacing: ExpressibleByArgument {}

/// A `--latents` file without a usable tensor (65).
struct LatentsFileError: Error, CustomStringConvertible {
    var path: String
    var reason: String
    var description: String { "\(path): \(reason)" }
}

// MARK: - Loading a model into the engine

/// A model opened for the engine: canonical names, configurations from the folder or the
/// family, and the assembled pipeline.
final class EngineModel {
    let canonical: CanonicalModel
    let pipeline: StableDiffusionPipeline
    let defaultSize: Int
    private var karras = false

    init(path: String, inputOptions: InputOptions) throws {
        let source = try inputOptions.open(path)
        canonical = try CanonicalModel(source)
        guard canonical.isCanonical, let family = canonical.detection.family else {
            throw EngineModelError("\(path): not a recognised Stable Diffusion model (\(canonical.detection.kind)); the engine needs a UNet, a VAE and text encoders")
        }
        let store = canonical.store
        var configs: [String: JSONValue] = [:]
        for (file, value) in DiffusersConfigs.files(for: canonical.detection, predictionType: canonical.detection.predictionType) {
            configs[file] = value
        }
        // A folder's (or a converted folder's) own files take precedence.
        for (file, bytes) in canonical.auxiliaryFiles where file.hasSuffix(".json") {
            if let value = try? bytes.withUnsafeBytes({ (raw) throws(JSONError) in try JSONParser.parse(raw) }) { configs[file] = value }
        }
        func config(_ file: String) throws -> JSONValue {
            guard let c = configs[file] else { throw EngineModelError("\(path): no \(file) for this model and none can be derived") }
            return c
        }
        let unetConfiguration = try UNetConfiguration(json: try config("unet/config.json"))
        let vaeConfiguration = try AutoencoderKLConfiguration(json: try config("vae/config.json"))
        let schedulerConfiguration = try SchedulerConfiguration(json: try config("scheduler/scheduler_config.json"))
        let isXL = family.id.hasPrefix("sdxl")
        let padZero = family.id == "sd2"
        let folder = URL(fileURLWithPath: path)
        func tokenizer(_ sub: String, padZero: Bool) throws -> (CLIPTokenizer, Int?) {
            let dir = folder.appendingPathComponent(sub)
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDirectory), isDirectory.boolValue {
                return (try CLIPTokenizer(directory: dir), nil)
            }
            return (try CLIPTokenizer.bundled(), padZero ? 0 : nil)
        }
        func textModel(_ component: String) throws -> CLIPTextModel {
            let anchor = "embeddings.token_embedding.weight"
            guard let d = store.tensors.first(where: { $0.name.hasPrefix(component + ".") && $0.name.hasSuffix(anchor) }) else {
                throw EngineModelError("\(path): no \(component) weights")
            }
            let prefix = String(d.name.dropLast(anchor.count))
            return try CLIPTextModel(store: store, configuration: try CLIPTextConfiguration(json: try config("\(component)/config.json")), prefix: prefix)
        }
        let (tokenizer1, pad1) = try tokenizer("tokenizer", padZero: padZero)
        let text1 = try textModel("text_encoder")
        var second: StableDiffusionPipeline.SecondTextEncoder? = nil
        if isXL {
            let (tokenizer2, pad2) = try tokenizer("tokenizer_2", padZero: true)
            second = .init(tokenizer: tokenizer2, model: try textModel("text_encoder_2"), padTokenID: pad2,
                           projectionName: "text_encoder_2.text_projection.weight")
        }
        let forceZeros = configs["model_index.json"]?.objectValue?["force_zeros_for_empty_prompt"]?.boolValue ?? isXL
        pipeline = StableDiffusionPipeline(
            tokenizer: tokenizer1, textEncoder: text1, secondTextEncoder: second,
            unet: try UNet2DConditionModel(store: store, configuration: unetConfiguration, prefix: "unet."),
            vae: try AutoencoderKL(store: store, configuration: vaeConfiguration, prefix: "vae."),
            schedulerConfiguration: schedulerConfiguration, padTokenID: pad1, forceZerosForEmptyPrompt: forceZeros)
        defaultSize = unetConfiguration.sampleSize * vaeConfiguration.downsamplingFactor
    }

    /// Switches the scheduler configuration to Karras sigmas.
    func enableKarras() { karras = true; pipeline.schedulerConfiguration.useKarrasSigmas = true }

    /// The dominant floating-point dtype of the UNet's weights (how the model was converted).
    var unetDType: DType {
        var bytes: [DType: Int] = [:]
        // int8 tensors of a .wpk read as dequantised F32: ask the store how they are stored.
        let quantized = canonical.store as? any QuantizedTensorStore
        for d in canonical.store.tensors where d.name.hasPrefix("unet.") {
            let stored = (try? quantized?.quantizedTensor(named: d.name)) != nil ? DType.i8 : d.dtype
            bytes[stored, default: 0] += d.byteCount
        }
        return bytes.max { $0.value < $1.value }?.key ?? .f32
    }
}

/// A model the engine cannot run (exit 65).
struct EngineModelError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Progress

/// A one-line step counter on stderr, only when stderr is a terminal.
final class StepProgress {
    let total: Int
    private let enabled = isatty(2) != 0
    init(total: Int) { self.total = total }
    func update(_ done: Int) { if enabled { writeStandardError("\rstep \(done)/\(total)") } }
    func finish() { if enabled { writeStandardError("\n") } }
}

// MARK: - Files

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
func writeFile(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
    let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
    try writer.write(bytes)
    try writer.commit()
}

// MARK: - PNG

/// 8-bit RGB PNG encoding with libpng's simplified API, plus UTF-8 text chunks (iTXt).
enum PNGImage {
    struct EncodingError: Error, CustomStringConvertible {
        var description: String
    }

    /// Encodes an `[H, W, 3]` image in [0, 1] (rounded as `(x * 255).round()`, diffusers' `numpy_to_pil`
    /// truncates instead; the difference is at most one level).
    static func encode(_ image: FloatTensor, text: [(String, String)] = []) throws -> [UInt8] {
        let s = image.shape
        precondition(s.count == 3 && s[2] == 3, "PNG encoding needs [H, W, 3]")
        let pixels = image.scalars.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
        return try encode(rgb: pixels, width: s[1], height: s[0], text: text)
    }

    static func encode(rgb: [UInt8], width: Int, height: Int, text: [(String, String)] = []) throws -> [UInt8] {
        var descriptor = png_image()
        descriptor.version = png_uint_32(PNG_IMAGE_VERSION)
        descriptor.width = png_uint_32(width)
        descriptor.height = png_uint_32(height)
        descriptor.format = png_uint_32(PNG_FORMAT_RGB)
        var size: png_alloc_size_t = 0
        let stride = png_int_32(width * 3)
        guard rgb.withUnsafeBytes({ png_image_write_to_memory(&descriptor, nil, &size, 0, $0.baseAddress, stride, nil) }) != 0, size > 0 else {
            throw EncodingError(description: "libpng could not size the PNG: \(message(descriptor))")
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let ok = bytes.withUnsafeMutableBytes { out in
            rgb.withUnsafeBytes { png_image_write_to_memory(&descriptor, out.baseAddress, &size, 0, $0.baseAddress, stride, nil) }
        }
        guard ok != 0 else { throw EncodingError(description: "libpng failed: \(message(descriptor))") }
        bytes.removeSubrange(Int(size)...)
        // Insert the text chunks after IHDR (8-byte signature + 25-byte IHDR chunk).
        var chunks: [UInt8] = []
        for (key, value) in text { chunks += chunk("iTXt", Array(key.utf8) + [0, 0, 0, 0, 0] + Array(value.utf8)) }
        bytes.insert(contentsOf: chunks, at: 33)
        return bytes
    }

    private static func message(_ image: png_image) -> String {
        withUnsafeBytes(of: image.message) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    }

    private static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typeBytes = Array(type.utf8)
        var out: [UInt8] = []
        let n = UInt32(data.count)
        out += [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        out += typeBytes + data
        let crc = crc32(typeBytes + data)
        out += [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)]
        return out
    }

    private static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    private static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
