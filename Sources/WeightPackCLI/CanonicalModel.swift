import CheckpointFormats
import ModelCatalog
import StrictJSON
import TensorCore

/// A model opened through the catalog: its source store, the layout it came in, its tensors
/// under canonical names, what was left over, and what it is. Where formats meet the catalog.
struct CanonicalModel {
    let source: any TensorStore
    /// The source layout (for a `.wpk`, the one recorded at conversion).
    let layout: ModelLayout?
    /// The tensors under canonical names (for a `.wpk` with a layout, the file itself).
    let store: any TensorStore
    let leftovers: [Leftover]
    let ema: EMAInfo
    let detection: Detection
    /// Whether the store's names are canonical (false when nothing was recognised).
    let isCanonical: Bool
    /// Small files a diffusers export can write back (configs, tokenizers), path → bytes.
    let auxiliaryFiles: [(path: String, bytes: [UInt8])]

    init(_ source: any TensorStore, weights: WeightSelection = .main, keepExtra: Bool = false) throws {
        self.source = source
        let wpk = source as? WPKFile
        var scheduler: JSONObject?
        if let wpk, let recorded = wpk.headerMetadata["layout"] {
            layout = try ModelLayout(json: recorded)
            store = wpk
            leftovers = []
            ema = EMAInfo()
            isCanonical = true
            var files: [(String, [UInt8])] = []
            for (path, value) in wpk.headerMetadata["diffusers_files"]?.objectValue ?? JSONObject() {
                if let text = value.stringValue { files.append((path, Array(text.utf8))) }
            }
            auxiliaryFiles = files
            if let text = files.first(where: { $0.0 == "scheduler/scheduler_config.json" })?.1 {
                scheduler = (try? text.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) })?.objectValue
            }
            let names = wpk.entries.compactMap(\.sourceName)
            var detection = Detection.detect(source.tensors, layout: layout, sourceNames: names, metadata: source.metadata, schedulerConfig: scheduler)
            // The prediction type decided at conversion (from a scheduler config or marker) stays.
            if let recordedArchitecture = wpk.headerMetadata["architecture"]?.objectValue,
               let p = recordedArchitecture["prediction_type"]?.stringValue, p != "unknown", detection.predictionType == nil {
                detection.predictionType = p
                detection.predictionSource = recordedArchitecture["prediction_source"]?.stringValue ?? "recorded at conversion"
            }
            self.detection = detection
            return
        }
        let folder = source as? DiffusersFolder
        auxiliaryFiles = folder?.auxiliaryFiles ?? []
        scheduler = folder?.schedulerConfig
        let names = source.tensors.map(\.name)
        layout = ModelLayout.recognize(names)
        if let layout {
            let mapping = try NameMap.canonical(source.tensors, layout: layout, weights: weights, keepExtra: keepExtra)
            store = RemappedStore(base: source, recipes: mapping.recipes)
            leftovers = mapping.leftovers
            ema = mapping.ema
            isCanonical = true
        } else {
            if weights == .ema { throw CatalogError(.noEMA, "no model layout recognised, so no EMA weights to select") }
            store = source
            leftovers = []
            ema = EMAInfo()
            isCanonical = false
        }
        detection = Detection.detect(isCanonical ? store.tensors : [], layout: layout, sourceNames: names, metadata: source.metadata, schedulerConfig: scheduler)
    }

    /// The source name a canonical tensor came from (its first source).
    func sourceName(of canonical: String) -> String? {
        if let remapped = store as? RemappedStore { return remapped.recipe(named: canonical)?.sources.first }
        if let wpk = store as? WPKFile { return wpk.entry(named: canonical)?.sourceName }
        return canonical
    }

    /// The CLIP `position_ids` tensors whose values are not 0..n-1: name and wrong indices.
    func brokenPositionIDs() throws -> [(tensor: String, wrong: [(index: Int, value: Double)])] {
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

extension CatalogError.Code {
    /// The exit status for a catalog error: all are problems with the input.
    var exitStatus: ExitStatus { .dataError }
}
