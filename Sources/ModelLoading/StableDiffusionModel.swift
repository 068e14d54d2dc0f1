import CheckpointFormats
import DiffusionEngine
import Foundation
import MappedIO
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

/// A model assembled for the engine: canonical names, configurations (the model's own, a
/// configuration folder's, or the detected family's), tokenizers, and the pipeline.
///
/// ```swift
/// let model = try StableDiffusionModel(path: "v1-5.safetensors")
/// var request = StableDiffusionPipeline.Request(prompt: "a red bicycle")
/// request.width = model.defaultSize
/// request.height = model.defaultSize
/// let image = try model.pipeline.generate(request).image
/// try PNGImage.write(image, to: "bicycle.png")
/// ```
public final class StableDiffusionModel {
    public let canonical: CanonicalModel
    public let pipeline: StableDiffusionPipeline
    /// The training size in pixels (the UNet's sample size times the VAE's downsampling).
    public let defaultSize: Int
    /// The configuration files the pipeline was built from, relative path → document, and
    /// where each came from.
    public let configurations: [String: (value: JSONValue, origin: ConfigurationOrigin)]
    /// The adapters and embeddings the pipeline applies at run time.
    public let additions: RuntimeAdditions

    /// Where one configuration file came from.
    public enum ConfigurationOrigin: String, Sendable {
        /// The model's own (a diffusers folder, or recorded in a `.wpk`).
        case model
        /// The `configurationFolder` given (as diffusers' `from_single_file(config=…)`).
        case configurationFolder = "configuration-folder"
        /// Derived from the detection and the family's published configuration.
        case derived
    }

    /// Opens `path` and assembles its pipeline.
    ///
    /// - Parameter configurationFolder: a diffusers folder (or a copy of its JSON files, and
    ///   optionally its tokenizers) whose configurations replace what a single file lacks:
    ///   attention head counts above all, which no single file states.
    ///   - additions: adapters and embeddings applied at run time (``RuntimeAdditions``).
    public convenience init(
        path: String, options: ModelInput.Options = ModelInput.Options(), configurationFolder: String? = nil,
        additions: RuntimeAdditions = RuntimeAdditions()
    ) throws {
        try self.init(try CanonicalModel.open(path, options: options), configurationFolder: configurationFolder, additions: additions)
    }

    /// Assembles the pipeline of an opened model.
    ///
    /// - Parameter additions: adapters applied at run time (planned against the model: an
    ///   adapter for another family, a module that matches no layer or a layer the engine does
    ///   not read is refused with an `AdapterError` before anything runs) and embeddings (their
    ///   tokens added to the tokenizers, their vectors to the text encoders).
    public init(_ canonical: CanonicalModel, configurationFolder: String? = nil, additions: RuntimeAdditions = RuntimeAdditions()) throws {
        self.canonical = canonical
        self.additions = additions
        let name = canonical.path ?? "the model"
        guard canonical.isCanonical, let family = canonical.detection.family else {
            throw ModelLoadingError(
                .notAModel, "not a recognised Stable Diffusion model (\(canonical.detection.kind)); the engine needs a UNet, a VAE and text encoders",
                path: canonical.path)
        }
        let store = canonical.store
        var configs: [String: (value: JSONValue, origin: ConfigurationOrigin)] = [:]
        for (file, value) in DiffusersConfigs.files(for: canonical.detection, predictionType: canonical.detection.predictionType) {
            configs[file] = (value, .derived)
        }
        // The model's own files take precedence, and a configuration folder's over those.
        // A malformed one is an error, never a silent fall back to derived values.
        for (file, bytes) in canonical.auxiliaryFiles where file.hasSuffix(".json") {
            do {
                configs[file] = (try bytes.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }, .model)
            } catch {
                throw ModelLoadingError(
                    .missingConfiguration, "\(file) is not valid JSON (\(error)); the model's configuration cannot be read",
                    path: canonical.path, underlying: error)
            }
        }
        if let configurationFolder {
            for (file, value) in try Self.readConfigurationFolder(configurationFolder) { configs[file] = (value, .configurationFolder) }
        }
        configurations = configs
        func config(_ file: String) throws -> JSONValue {
            guard let c = configs[file] else {
                throw ModelLoadingError(.missingConfiguration, "no \(file) for this model and none can be derived", path: canonical.path)
            }
            return c.value
        }
        let unetConfiguration = try UNetConfiguration(json: try config("unet/config.json"))
        let vaeConfiguration = try AutoencoderKLConfiguration(json: try config("vae/config.json"))
        let schedulerConfiguration = try SchedulerConfiguration(json: try config("scheduler/scheduler_config.json"))
        // Tokenizer files: the configuration folder's, the model folder's, those the model records
        // (a `.wpk` converted from a diffusers folder), or the bundled CLIP vocabulary padded as
        // the family's published tokenizer pads. Each comes with where it came from, for errors.
        let folders = [configurationFolder, canonical.source.formatName == "diffusers" ? canonical.path : nil].compactMap { $0 }
        func tokenizer(_ slot: ArchitectureCatalog.TextEncoderSlot) throws -> (CLIPTokenizer, Int?, origin: String) {
            let sub = slot.component == .textEncoder ? "tokenizer" : "tokenizer_2"
            for folder in folders {
                let dir = URL(fileURLWithPath: folder).appendingPathComponent(sub)
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDirectory), isDirectory.boolValue {
                    return (try CLIPTokenizer(directory: dir), nil, "the tokenizer in \(dir.path)")
                }
            }
            var recorded: [String: [UInt8]] = [:]
            for file in canonical.auxiliaryFiles where file.path.hasPrefix(sub + "/") {
                recorded[String(file.path.dropFirst(sub.count + 1))] = file.bytes
            }
            if !recorded.isEmpty {
                return (try CLIPTokenizer(files: recorded, location: "\(name): \(sub)"), nil, "the \(sub) it records")
            }
            return (try CLIPTokenizer.bundled(), slot.padsWithZero ? 0 : nil, "the bundled CLIP tokenizer")
        }
        func textModel(_ component: Component) throws -> CLIPTextModel {
            let anchor = "embeddings.token_embedding.weight"
            guard let d = store.tensors.first(where: { $0.name.hasPrefix(component.rawValue + ".") && $0.name.hasSuffix(anchor) }) else {
                throw ModelLoadingError(.notAModel, "no \(component.rawValue) weights", path: canonical.path)
            }
            let prefix = String(d.name.dropLast(anchor.count))
            return try CLIPTextModel(
                store: store, configuration: try CLIPTextConfiguration(json: try config("\(component.rawValue)/config.json")), prefix: prefix)
        }
        // The first text encoder conditions the UNet through its hidden states; the one whose
        // pooled projection the family uses (SDXL's second) adds that too.
        guard let firstSlot = family.textEncoders.first(where: { !$0.pooledProjection }) ?? family.textEncoders.first else {
            throw ModelLoadingError(.notAModel, "\(family.name) has no text encoder", path: canonical.path)
        }
        // A text encoder whose vocabulary lacks the tokenizer's start or end token (a model with a
        // tokenizer of its own, read without it) would fail at the first prompt: say so now, and how.
        func checkVocabulary(_ tokenizer: CLIPTokenizer, origin source: String, _ model: CLIPTextModel, _ component: Component) throws {
            let rows = model.configuration.vocabularySize
            guard max(tokenizer.startTokenID, tokenizer.endTokenID) >= rows else { return }
            throw ModelLoadingError(
                .missingConfiguration,
                "\(component.rawValue) has a vocabulary of \(rows) tokens, too small for \(source) (start \(tokenizer.startTokenID), end \(tokenizer.endTokenID)); give the model's diffusers folder, with its tokenizer, as the configuration folder (--config)",
                path: canonical.path)
        }
        let (tokenizer1, pad1, origin1) = try tokenizer(firstSlot)
        let text1 = try textModel(firstSlot.component)
        try checkVocabulary(tokenizer1, origin: origin1, text1, firstSlot.component)
        var second: StableDiffusionPipeline.SecondTextEncoder? = nil
        if let pooled = family.pooledTextEncoder, pooled.component != firstSlot.component {
            let (tokenizer2, pad2, origin2) = try tokenizer(pooled)
            let text2 = try textModel(pooled.component)
            try checkVocabulary(tokenizer2, origin: origin2, text2, pooled.component)
            second = .init(
                tokenizer: tokenizer2, model: text2, padTokenID: pad2, projectionName: pooled.component.rawValue + ".text_projection.weight")
        }
        let forceZeros = configs["model_index.json"]?.value.objectValue?["force_zeros_for_empty_prompt"]?.boolValue ?? family.forceZerosForEmptyPrompt
        let unet = try UNet2DConditionModel(store: store, configuration: unetConfiguration, prefix: "unet.")
        let vae = try AutoencoderKL(store: store, configuration: vaeConfiguration, prefix: "vae.")
        // Run-time adapters: one table shared by the networks (names carry each one's prefix).
        let texts = [text1] + (second.map { [$0.model] } ?? [])
        if let table = try RuntimeAdditions.table(
            additions.adapters, store: store, family: family,
            prefixes: [unet.weights.prefix, vae.weights.prefix] + texts.map(\.weights.prefix))
        {
            unet.runtimeAdapters = table
            vae.runtimeAdapters = table
            for t in texts { t.runtimeAdapters = table }
        }
        if !additions.embeddings.isEmpty {
            var encoders: [Component: (CLIPTokenizer, CLIPTextModel)] = [firstSlot.component: (tokenizer1, text1)]
            if let second, let pooled = family.pooledTextEncoder { encoders[pooled.component] = (second.tokenizer, second.model) }
            try RuntimeAdditions.apply(additions.embeddings, to: encoders, family: family.name)
        }
        pipeline = StableDiffusionPipeline(
            tokenizer: tokenizer1, textEncoder: text1, secondTextEncoder: second,
            unet: unet, vae: vae,
            schedulerConfiguration: schedulerConfiguration, padTokenID: pad1, forceZerosForEmptyPrompt: forceZeros)
        defaultSize = unetConfiguration.sampleSize * vaeConfiguration.downsamplingFactor
    }

    /// The dominant element type of the UNet's weights as stored (how the model was converted:
    /// int8 tensors of a `.wpk` count as I8 although they read as F32).
    public var unetDType: DType {
        var bytes: [DType: Int] = [:]
        let store = canonical.store
        for d in store.tensors where d.name.hasPrefix("unet.") {
            bytes[store.storedDType(of: d.name) ?? d.dtype, default: 0] += d.byteCount
        }
        return bytes.max { $0.value < $1.value }?.key ?? .f32
    }

    /// How the UNet's weights are stored: the storage holding most of its parameters (a plain
    /// dtype, WeightPack's int8 blocks, or a ggml block type).
    public var unetStorage: WeightStorage {
        let shares = storageShares(prefix: "unet.")
        return shares.max { $0.value < $1.value || ($0.value == $1.value && $0.key.label > $1.key.label) }?.key ?? .plain(.f32)
    }

    /// The least precise storage of any floating-point weight of the model (UNet, VAE, text
    /// encoders) holding more than `minimumShare` of its component's parameters: what `verify`
    /// picks its thresholds by, since a model whose UNet stays F16 but whose text encoder is Q8_0
    /// loses what Q8_0 loses, and a stable-diffusion.cpp Q4_K file that leaves most rows F32
    /// still has Q4_K tensors.
    public func weakestStorage(minimumShare: Double = 0) -> WeightStorage {
        var candidates: [WeightStorage] = []
        for prefix in ["unet.", "vae.", "text_encoder.", "text_encoder_2."] {
            let shares = storageShares(prefix: prefix)
            let total = shares.values.reduce(0, +)
            guard total > 0 else { continue }
            candidates += shares.filter { $0.value > 0 && Double($0.value) >= minimumShare * Double(total) }.map(\.key)
        }
        let ranked = candidates.map { ($0, Verification.Thresholds.defaults(for: $0)) }
        return ranked.min { ($0.1.stage, $0.1.image, $0.0.label) < ($1.1.stage, $1.1.image, $1.0.label) }?.0 ?? unetStorage
    }

    /// Parameters per storage among the tensors under `prefix`.
    private func storageShares(prefix: String) -> [WeightStorage: Int] {
        var values: [WeightStorage: Int] = [:]
        let store = canonical.store
        let blocks = store as? any GGMLTensorStore
        for d in store.tensors where d.name.hasPrefix(prefix) && d.dtype.isConvertibleFloat {
            let storage: WeightStorage
            if let type = (try? blocks?.ggmlTensor(named: d.name))??.type {
                storage = .blocks(type)
            } else {
                let stored = store.storedDType(of: d.name) ?? d.dtype
                storage = stored == .i8 ? .int8 : .plain(stored)
            }
            values[storage, default: 0] += d.elementCount
        }
        return values
    }

    /// The JSON files of a configuration folder: `model_index.json` and each component's
    /// `config.json` / `scheduler_config.json` that is present.
    static func readConfigurationFolder(_ folder: String) throws -> [(String, JSONValue)] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ModelLoadingError(.missingFile, "no such configuration folder", path: folder)
        }
        let candidates = [
            "model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
            "text_encoder_2/config.json", "scheduler/scheduler_config.json",
        ]
        var out: [(String, JSONValue)] = []
        for file in candidates {
            let path = folder + "/" + file
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let mapped = try MappedFile(path: path)
            guard mapped.size <= 16 << 20, let bytes = mapped.bytes(in: 0..<mapped.size) else {
                throw ModelLoadingError(.missingConfiguration, "larger than 16 MB; not a configuration file", path: path)
            }
            do {
                let value = try bytes.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }
                guard value.objectValue != nil else { throw ModelLoadingError(.missingConfiguration, "not a JSON object", path: path) }
                out.append((file, value))
            } catch let error as JSONError {
                throw ModelLoadingError(.missingConfiguration, "not valid JSON: \(error)", path: path, underlying: error)
            }
        }
        guard !out.isEmpty else {
            throw ModelLoadingError(.missingConfiguration, "holds none of \(candidates.joined(separator: ", "))", path: folder)
        }
        return out
    }
}

/// Initial noise read from a file (diffusers' `latents=`).
extension StableDiffusionModel {
    /// What a user running this model would want to know before trusting its output: tensors of
    /// a `.wpk` whose stored checksums (XXH64 per tensor, as `weightpack check` verifies) no
    /// longer match their bytes. Reads every tensor once (the run reads most of them anyway, and
    /// the pages stay cached for it); empty for other formats, which record no checksums.
    public func integrityWarnings() -> [String] {
        guard let file = canonical.source as? WPKFile else { return [] }
        let damage = file.verifyChecksums()
        guard let first = damage.first else { return [] }
        let more = damage.count > 1 ? " (and \(damage.count - 1) more)" : ""
        return [
            "\(damage.count) tensor\(damage.count == 1 ? "" : "s") of \(canonical.path ?? "the model") fail their checksums: '\(first.tensor)' \(first.reason)\(more); the output may be wrong, and `weightpack check` lists them"
        ]
    }
}

/// How a model's weights are stored, as far as their precision goes.
public enum WeightStorage: Hashable, Sendable {
    /// A plain element type (F32, F16, BF16, …).
    case plain(DType)
    /// WeightPack's int8 blocks (`convert --dtype int8`).
    case int8
    /// One of ggml's block types (Q4_0 … Q6_K, IQ4_NL, …).
    case blocks(GGMLType)

    /// `F32`, `F16`, `int8`, `Q4_K`, ….
    public var label: String {
        switch self {
        case .plain(let dtype): dtype.name
        case .int8: "int8"
        case .blocks(let type): type.name
        }
    }
}

public enum InitialNoise {
    /// A warning for noise that cannot start a useful run: all NaN or infinite, or all zero
    /// (the sampler would produce a flat or NaN image without saying why); nil otherwise.
    public static func warning(for noise: FloatTensor) -> String? {
        let values = noise.scalars
        guard !values.isEmpty else { return nil }
        if values.allSatisfy({ !$0.isFinite }) { return "the --latents noise is all NaN or infinite; the image will be NaN (black)" }
        if values.allSatisfy({ $0 == 0 }) { return "the --latents noise is all zero; the sampler starts from no noise and the image will be flat" }
        let bad = values.lazy.filter { !$0.isFinite }.count
        if bad > 0 { return "\(bad) of \(values.count) --latents values are NaN or infinite; the image will have NaN pixels" }
        return nil
    }

    /// Reads a safetensors file with one tensor `latents` (`[4, h, w]` or `[1, 4, h, w]`), unscaled standard normal.
    public static func read(_ path: String) throws -> FloatTensor {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ModelLoadingError(.missingFile, "no such latents file", path: path)
        }
        let file = try SafetensorsFile(path: path)
        guard let d = file.descriptor(named: "latents") ?? (file.tensors.count == 1 ? file.tensors[0] : nil) else {
            throw ModelLoadingError(.invalidLatents, "no tensor named 'latents'", path: path)
        }
        return FloatTensor(shape: d.shape.dimensions, values: try file.tensor(named: d.name).floats())
    }
}
