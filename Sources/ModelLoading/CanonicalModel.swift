import CheckpointFormats
import ModelCatalog
import StrictJSON
import TensorCore

/// A model opened through the catalog: its source store, the layout it came in, its tensors
/// under canonical names, what was left over, and what it is. Where formats meet the catalog.
///
/// ```swift
/// let model = try CanonicalModel.open("v1-5-pruned-emaonly.safetensors")
/// print(model.detection.familyID, model.store.tensors.count)
/// ```
public struct CanonicalModel: @unchecked Sendable {
    /// The path it was opened from, when it was opened from one.
    public let path: String?
    public let source: any TensorStore
    /// The source layout (for a `.wpk`, the one recorded at conversion).
    public let layout: ModelLayout?
    /// The tensors under canonical names (for a `.wpk` with a layout, the file itself).
    public private(set) var store: any TensorStore
    public let leftovers: [Leftover]
    public let ema: EMAInfo
    public let detection: Detection
    /// Whether the store's names are canonical (false when nothing was recognised).
    public let isCanonical: Bool
    /// Small files a diffusers export can write back (configs, tokenizers), path → bytes.
    public let auxiliaryFiles: [(path: String, bytes: [UInt8])]
    /// The structured header the source recorded (a `.wpk`'s), empty otherwise.
    public let recorded: JSONObject
    /// How each canonical tensor is made from the source (empty when nothing was renamed).
    public let recipes: [TensorRecipe]
    /// Whether leftovers (schedule buffers, unselected EMA copies) were kept as `extra.<name>`.
    public let keptExtra: Bool

    /// Opens `path` (a checkpoint, a safetensors file or shard index, a diffusers folder, a `.wpk`).
    ///
    /// - Parameters:
    ///   - weights: which UNet weights to present (the EMA copies under the main names, or not).
    ///   - keepExtra: keep schedule buffers and other leftovers (as `extra.<name>`).
    public static func open(
        _ path: String, options: ModelInput.Options = ModelInput.Options(), weights: WeightSelection = .main,
        keepExtra: Bool = false
    ) throws -> CanonicalModel {
        try CanonicalModel(try ModelInput.open(path, options: options), path: path, weights: weights, keepExtra: keepExtra)
    }

    public init(_ source: any TensorStore, path: String? = nil, weights: WeightSelection = .main, keepExtra: Bool = false) throws {
        self.path = path
        self.source = source
        keptExtra = keepExtra
        let records = source.records
        recorded = records?.headerMetadata ?? JSONObject()
        auxiliaryFiles = records?.auxiliaryFiles ?? []
        let scheduler = records?.auxiliaryJSON("scheduler/scheduler_config.json")
        if let layoutRecord = recorded["layout"] {
            // A converted model: the file holds canonical names and says what it came from.
            layout = try ModelLayout(json: layoutRecord)
            store = source
            recipes = []
            leftovers = []
            ema = EMAInfo()
            isCanonical = true
            let names = source.tensors.compactMap { source.sourceName(of: $0.name) }
            var detection = Detection.detect(
                source.tensors, layout: layout, sourceNames: names, metadata: source.metadata, schedulerConfig: scheduler)
            // The prediction type decided at conversion (from a scheduler config or marker) stays.
            if let architecture = recorded["architecture"]?.objectValue, detection.predictionType == nil,
                let p = architecture["prediction_type"]?.stringValue.flatMap(Detection.PredictionType.init(spelling:))
            {
                detection.predictionType = p
                detection.predictionSource = architecture["prediction_source"]?.stringValue ?? "recorded at conversion"
            }
            self.detection = detection
            return
        }
        let names = source.tensors.map(\.name)
        layout = ModelLayout.recognize(names)
        if let layout {
            let mapping = try NameMap.canonical(source.tensors, layout: layout, weights: weights, keepExtra: keepExtra)
            store = RemappedStore(base: source, recipes: mapping.recipes)
            recipes = mapping.recipes
            leftovers = mapping.leftovers
            ema = mapping.ema
            isCanonical = true
        } else {
            if weights == .ema { throw CatalogError(.noEMA, "no model layout recognised, so no EMA weights to select") }
            store = source
            recipes = []
            leftovers = []
            ema = EMAInfo()
            isCanonical = false
        }
        detection = Detection.detect(
            isCanonical ? store.tensors : [], layout: layout, sourceNames: names, metadata: source.metadata, schedulerConfig: scheduler)
    }

    /// The same model with `store` in place of its canonical tensors (the same names and
    /// shapes, other values: a base with adapters merged in), for the writers.
    public func replacingStore(_ store: any TensorStore) -> CanonicalModel {
        var copy = self
        copy.store = store
        return copy
    }

    /// The source name a canonical tensor came from (its first source).
    public func sourceName(of canonical: String) -> String? {
        store.sourceName(of: canonical)
    }

    /// The canonical names made from each source tensor (a source tensor may feed several, and
    /// several may make one); empty when the source's names are already canonical or unrecognised.
    public var canonicalNamesBySource: [String: [String]] {
        var out: [String: [String]] = [:]
        for r in recipes { for s in r.sources { out[s, default: []].append(r.name) } }
        return out
    }

    /// Whether the model's attention head counts were read from a configuration (a diffusers
    /// folder's, or one recorded at conversion) or assumed: a single file does not state them, so
    /// they come from the family's published configuration, and for widths that are not the
    /// published ones from a 64-wide head.
    public var headCounts: HeadCountSource {
        if auxiliaryFiles.contains(where: { $0.path == "unet/config.json" || $0.path.hasPrefix("text_encoder") && $0.path.hasSuffix("config.json") })
        {
            return .read
        }
        guard detection.unet != nil || !detection.textEncoders.isEmpty else { return .notApplicable }
        if detection.family != nil, detection.referenceDimensions != false,
            detection.textEncoders.allSatisfy({ t in detection.family?.textEncoder(t.component)?.model.hidden == t.hidden })
        {
            return .publishedFamily
        }
        return .assumedHeadDim64
    }

    /// Where head counts come from.
    public enum HeadCountSource: String, Sendable {
        /// From the model's own configuration files.
        case read
        /// Assumed: the published configuration of the detected family (the widths match it).
        case publishedFamily = "published-family"
        /// Assumed: 64-wide heads (widths that are not the published ones); `--config` gives the real ones.
        case assumedHeadDim64 = "assumed-head-dim-64"
        /// The model has no attention layers WeightPack runs.
        case notApplicable = "not-applicable"
    }

    /// The CLIP `position_ids` tensors whose values are not 0..n-1: name and wrong indices.
    public func brokenPositionIDs() throws -> [(tensor: String, wrong: [(index: Int, value: Double)])] {
        var out: [(String, [(Int, Double)])] = []
        for d in store.tensors where isCanonical && d.name.hasSuffix("text_model.embeddings.position_ids") {
            let values = try store.tensor(named: d.name).floats()
            var wrong: [(Int, Double)] = []
            for (i, v) in values.enumerated() where Double(v) != Double(i) { wrong.append((i, Double(v))) }
            if !wrong.isEmpty || d.dtype != .i64 { out.append((d.name, wrong)) }
        }
        return out
    }
}
