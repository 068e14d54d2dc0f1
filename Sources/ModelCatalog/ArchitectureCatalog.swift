import Foundation
import StrictJSON

/// The families and variants of latent diffusion models WeightPack knows, read from the bundled
/// copy of `Formats/architectures.json`.
public struct ArchitectureCatalog: Sendable {
    /// A text tower's published hyper-parameters.
    public struct TextModel: Sendable, Hashable {
        public var id: String
        public var name: String
        public var hidden: Int
        public var layers: Int
        public var intermediate: Int
        public var heads: Int
        public var vocab: Int
        public var positions: Int
        public var activation: String
        public var projection: Int?
    }

    /// One text encoder of a family: which tower, under which names.
    public struct TextEncoderSlot: Sendable, Hashable {
        public var component: Component
        public var model: TextModel
        public var ldmPrefix: String
        public var ldmNaming: ComponentNaming
        public var diffusersClass: String
        /// Whether diffusers keeps every layer (`all`) or drops the last (`all-but-last`, SD 2.x).
        public var diffusersDropsLastLayer: Bool
        /// The token its published tokenizer pads with: `<|endoftext|>` (OpenAI CLIP) or `!`
        /// (OpenCLIP, id 0: SD 2.x and SDXL's second encoder).
        public var padToken: String
        /// Whether its pooled, projected output conditions the UNet (SDXL's second encoder).
        public var pooledProjection: Bool

        /// Whether the tokenizer pads with `!` (id 0) instead of its end token.
        public var padsWithZero: Bool { padToken == "!" }
    }

    /// A UNet's published hyper-parameters.
    public struct UNetReference: Sendable, Hashable {
        public var blockOutChannels: [Int]
        public var layersPerBlock: Int
        public var attention: [Bool]
        public var transformerDepth: [Int]
        public var contextDim: Int
        public var linearProjection: Bool
        public var additionEmbed: Int?
        /// Heads per attention layer (SD 1.x: 8 everywhere), or `nil` when `headDim` rules.
        public var heads: Int?
        public var headDim: Int?
    }

    public struct Variant: Sendable, Hashable {
        public var id: String
        public var inChannels: Int
        public var sampleSize: Int?
    }

    public struct Family: Sendable, Hashable {
        public var id: String
        public var name: String
        public var reference: String
        public var pipeline: String
        public var unet: UNetReference
        public var textEncoders: [TextEncoderSlot]
        public var ldmPrefixes: [Component: String]
        public var vaeScalingFactor: Double
        public var defaultPrediction: String?
        public var predictionDecidedByWeights: Bool
        public var predictionNote: String
        /// The scheduler configuration written into exported diffusers folders.
        public var scheduler: JSONObject
        public var variants: [Variant]
        /// The VAE's `sample_size` in pixels (its published configuration).
        public var vaeSampleSize: Int
        /// Pipeline-level settings of `model_index.json` (`force_zeros_for_empty_prompt`, …).
        public var pipelineOptions: JSONObject
        /// How many time ids SDXL-style added conditioning embeds (6, or 5 for the refiner); `nil`
        /// for families without it.
        public var addedTimeIDs: Int?

        /// Whether an empty negative prompt gives zero embeddings (SDXL's `force_zeros_for_empty_prompt`).
        public var forceZerosForEmptyPrompt: Bool { pipelineOptions["force_zeros_for_empty_prompt"]?.boolValue ?? false }
        /// The text encoder whose pooled projection conditions the UNet, if any.
        public var pooledTextEncoder: TextEncoderSlot? { textEncoders.first { $0.pooledProjection } }

        public func variant(inChannels: Int) -> Variant? { variants.first { $0.inChannels == inChannels } }
        public func textEncoder(_ component: Component) -> TextEncoderSlot? { textEncoders.first { $0.component == component } }
    }

    public var families: [Family]
    public var textModels: [String: TextModel]
    public var vaeBlockOutChannels: [Int]
    public var scheduleLeftovers: Set<String>
    public var emaBookkeeping: Set<String>
    public var unusedPrefixes: [String]
    public var unusedSuffixes: [String]

    public func family(_ id: String) -> Family? { families.first { $0.id == id } }

    /// The catalog bundled with the module.
    public static let standard: ArchitectureCatalog = {
        do {
            return try load()
        } catch {
            fatalError("ModelCatalog: bundled architectures.json is unusable: \(error)")  // our own bug
        }
    }()

    /// Reads the bundled `architectures.json`.
    public static func load() throws(CatalogError) -> ArchitectureCatalog {
        guard
            let url = Bundle.module.url(forResource: "architectures", withExtension: "json", subdirectory: "Data")
                ?? Bundle.module.url(forResource: "architectures", withExtension: "json"),
            let data = FileManager.default.contents(atPath: url.path)
        else { throw CatalogError(.catalogData, "architectures.json is not in the ModelCatalog bundle") }
        return try parse(data)
    }

    /// Parses a catalog document.
    public static func parse(_ data: Data) throws(CatalogError) -> ArchitectureCatalog {
        let root: JSONValue
        do {
            root = try data.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }
        } catch {
            throw CatalogError(.catalogData, "architectures.json: \(error)")
        }
        do {
            return try CatalogDecoder.decode(root)
        } catch let error as CatalogError {
            throw error
        } catch {
            throw CatalogError(.catalogData, "architectures.json: \(error)")
        }
    }
}

/// Reads the catalog document field by field, naming the first bad field.
private enum CatalogDecoder {
    struct Bad: Error { var path: String }

    static func object(_ v: JSONValue?, _ path: String) throws -> JSONObject {
        guard let o = v?.objectValue else { throw CatalogError(.catalogData, "architectures.json: \(path) is not an object") }
        return o
    }
    static func string(_ v: JSONValue?, _ path: String) throws -> String {
        guard let s = v?.stringValue else { throw CatalogError(.catalogData, "architectures.json: \(path) is not a string") }
        return s
    }
    static func int(_ v: JSONValue?, _ path: String) throws -> Int {
        guard let i = v?.intValue else { throw CatalogError(.catalogData, "architectures.json: \(path) is not an integer") }
        return i
    }
    static func optionalInt(_ v: JSONValue?) -> Int? { v?.intValue }
    static func ints(_ v: JSONValue?, _ path: String) throws -> [Int] {
        guard let a = v?.arrayValue else { throw CatalogError(.catalogData, "architectures.json: \(path) is not an array") }
        return try a.enumerated().map { try int($0.element, "\(path)[\($0.offset)]") }
    }
    static func strings(_ v: JSONValue?, _ path: String) throws -> [String] {
        guard let a = v?.arrayValue else { throw CatalogError(.catalogData, "architectures.json: \(path) is not an array") }
        return try a.enumerated().map { try string($0.element, "\(path)[\($0.offset)]") }
    }

    static func decode(_ root: JSONValue) throws -> ArchitectureCatalog {
        let top = try object(root, "document")
        guard top["format"]?.stringValue == "weightpack-architectures", top["version"]?.intValue == 1 else {
            throw CatalogError(.catalogData, "architectures.json: not a version 1 weightpack-architectures document")
        }
        var models: [String: ArchitectureCatalog.TextModel] = [:]
        for (id, value) in try object(top["text_encoders"], "text_encoders") {
            let o = try object(value, "text_encoders.\(id)")
            models[id] = ArchitectureCatalog.TextModel(
                id: id, name: try string(o["name"], "\(id).name"), hidden: try int(o["hidden"], "\(id).hidden"),
                layers: try int(o["layers"], "\(id).layers"), intermediate: try int(o["intermediate"], "\(id).intermediate"),
                heads: try int(o["heads"], "\(id).heads"), vocab: try int(o["vocab"], "\(id).vocab"),
                positions: try int(o["positions"], "\(id).positions"), activation: try string(o["activation"], "\(id).activation"),
                projection: optionalInt(o["projection"]))
        }
        let vae = try object(top["vae"], "vae")
        var families: [ArchitectureCatalog.Family] = []
        for (i, value) in (top["families"]?.arrayValue ?? []).enumerated() {
            let f = try object(value, "families[\(i)]")
            let id = try string(f["id"], "families[\(i)].id")
            let u = try object(f["unet"], "\(id).unet")
            let unet = ArchitectureCatalog.UNetReference(
                blockOutChannels: try ints(u["block_out_channels"], "\(id).unet.block_out_channels"),
                layersPerBlock: try int(u["layers_per_block"], "\(id).unet.layers_per_block"),
                attention: (u["attention"]?.arrayValue ?? []).map { $0.boolValue ?? false },
                transformerDepth: try ints(u["transformer_depth"], "\(id).unet.transformer_depth"),
                contextDim: try int(u["context_dim"], "\(id).unet.context_dim"),
                linearProjection: u["linear_projection"]?.boolValue ?? false,
                additionEmbed: optionalInt(u["addition_embed"]), heads: optionalInt(u["heads"]), headDim: optionalInt(u["head_dim"]))
            var slots: [ArchitectureCatalog.TextEncoderSlot] = []
            for (j, t) in (f["text_encoders"]?.arrayValue ?? []).enumerated() {
                let o = try object(t, "\(id).text_encoders[\(j)]")
                let modelID = try string(o["model"], "\(id).text_encoders[\(j)].model")
                guard let model = models[modelID] else { throw CatalogError(.catalogData, "architectures.json: unknown text model \(modelID)") }
                guard let component = Component(rawValue: try string(o["component"], "component")),
                    let naming = ComponentNaming(rawValue: try string(o["ldm_naming"], "ldm_naming"))
                else { throw CatalogError(.catalogData, "architectures.json: bad text encoder entry in \(id)") }
                slots.append(
                    ArchitectureCatalog.TextEncoderSlot(
                        component: component, model: model, ldmPrefix: try string(o["ldm_prefix"], "ldm_prefix"), ldmNaming: naming,
                        diffusersClass: try string(o["diffusers_class"], "diffusers_class"),
                        diffusersDropsLastLayer: o["diffusers_layers"]?.stringValue == "all-but-last",
                        padToken: try string(o["pad_token"], "\(id).text_encoders[\(j)].pad_token"),
                        pooledProjection: o["pooled_projection"]?.boolValue ?? false))
            }
            var prefixes: [Component: String] = [:]
            for (k, v) in try object(f["ldm_prefixes"], "\(id).ldm_prefixes") {
                guard let c = Component(rawValue: k) else { throw CatalogError(.catalogData, "architectures.json: unknown component \(k)") }
                prefixes[c] = try string(v, "\(id).ldm_prefixes.\(k)")
            }
            let prediction = try object(f["prediction"], "\(id).prediction")
            var variants: [ArchitectureCatalog.Variant] = []
            for (j, v) in (f["variants"]?.arrayValue ?? []).enumerated() {
                let o = try object(v, "\(id).variants[\(j)]")
                variants.append(
                    ArchitectureCatalog.Variant(
                        id: try string(o["id"], "\(id).variants[\(j)].id"), inChannels: try int(o["in_channels"], "in_channels"),
                        sampleSize: optionalInt(o["sample_size"])))
            }
            families.append(
                ArchitectureCatalog.Family(
                    id: id, name: try string(f["name"], "\(id).name"), reference: try string(f["reference"], "\(id).reference"),
                    pipeline: try string(f["pipeline"], "\(id).pipeline"), unet: unet, textEncoders: slots, ldmPrefixes: prefixes,
                    vaeScalingFactor: f["vae_scaling_factor"]?.doubleValue ?? 0.18215,
                    defaultPrediction: prediction["default"]?.stringValue,
                    predictionDecidedByWeights: prediction["decided_by_weights"]?.boolValue ?? false,
                    predictionNote: prediction["note"]?.stringValue ?? "",
                    scheduler: try object(f["scheduler"], "\(id).scheduler"), variants: variants,
                    vaeSampleSize: try int(f["vae_sample_size"], "\(id).vae_sample_size"),
                    pipelineOptions: try object(f["pipeline_options"], "\(id).pipeline_options"),
                    addedTimeIDs: optionalInt(f["added_time_ids"])))
        }
        let leftovers = try object(top["leftovers"], "leftovers")
        return ArchitectureCatalog(
            families: families, textModels: models, vaeBlockOutChannels: try ints(vae["block_out_channels"], "vae.block_out_channels"),
            scheduleLeftovers: Set(try strings(leftovers["schedule"], "leftovers.schedule")),
            emaBookkeeping: Set(try strings(leftovers["ema_bookkeeping"], "leftovers.ema_bookkeeping")),
            unusedPrefixes: try strings(leftovers["unused_prefixes"], "leftovers.unused_prefixes"),
            unusedSuffixes: try strings(leftovers["unused_suffixes"], "leftovers.unused_suffixes"))
    }
}
