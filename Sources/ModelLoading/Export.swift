import Adapters
import CheckpointFormats
import DiffusionEngine
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

/// Writes an opened model out in a layout: its source layout, the LDM single file, a diffusers
/// folder, or a GGUF file for stable-diffusion.cpp.
public enum ModelExport {
    /// The tensor naming of the output.
    public enum Layout: String, Sendable, CaseIterable {
        case source, ldm, diffusers
    }

    /// The GGUF element types: `keep` (blocks passed through, plain types as stored), the casts
    /// `f32` and `f16`, and every block type WeightPack writes (``GGMLType/quantizable``).
    public enum GGUFDType: String, Sendable, CaseIterable {
        case keep, f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k

        /// The block type asked for, `nil` for `keep`, `f32` and `f16`.
        public var blockType: GGMLType? {
            guard let t = GGMLType(name: rawValue), t.isBlockQuantized else { return nil }
            return t
        }
    }

    /// What was written.
    public struct Result: Sendable {
        public var tensorCount: Int
        /// The layout written (`nil` for an unrecognised model written with the names it has).
        public var layout: ModelLayout.Kind?
        /// Tensors left out, with the reason.
        public var omitted: [(name: String, reason: String)] = []
        /// Warnings worth a line (an unknown prediction type written as epsilon, …).
        public var warnings: [String] = []
        /// GGUF only: tensors per type, bytes written, and Q8_0 tensors copied from int8 blocks.
        public var ggufTypeCounts: [String: Int] = [:]
        public var byteCount: Int?
        public var repackedCount = 0
        /// GGUF only: block tensors copied unchanged from the source's blocks.
        public var passedThroughCount = 0
        /// GGUF only: tensors the source stores as blocks that were requantised (or widened)
        /// because their GGUF rows (last dimension) do not fit the stored type, or another type was asked for.
        public var requantizedFromBlocks: [(name: String, from: GGMLType, to: GGMLType)] = []
        /// GGUF only: every tensor's stored type, fallbacks, bits per weight.
        public var types: TypeSummary?
    }

    /// Writes `model` as safetensors (or, for `.diffusers` with several components, a folder).
    ///
    /// - Parameters:
    ///   - configurationFolder: for a diffusers folder from a single file, configurations to
    ///     write instead of derived ones (attention head counts a single file does not state).
    ///   - extraMetadata: strings added to a single file's `__metadata__` (a merge's
    ///     `weightpack.adapters`).
    public static func write(
        _ model: CanonicalModel, layout: Layout, dtype: DTypeChoice, to output: String, overwrite: Bool,
        configurationFolder: String? = nil, extraMetadata: [String: String] = [:],
        progress: (any ProgressReporter)? = nil
    ) throws -> Result {
        guard model.isCanonical, let sourceLayout = model.layout else {
            guard layout == .source else {
                throw CatalogError(
                    .unmappable, "no Stable Diffusion layout recognised in \(model.path ?? "the input"); only --layout source can export it")
            }
            // Written with the names it has (a .wpk gives back its source's names).
            // (`store` is the source here, or the source with adapters merged in.)
            var plan = OutputTensor.plan(from: model.store, dtype: dtype)
            for i in plan.indices {
                if let original = model.store.sourceName(of: plan[i].sourceName) { plan[i].name = original }
            }
            try SafetensorsWriter.write(
                plan, metadata: model.source.metadata.merging(extraMetadata) { $1 }, to: output, overwrite: overwrite, progress: progress)
            return Result(tensorCount: plan.count, layout: nil)
        }
        let target = try targetLayout(model, sourceLayout: sourceLayout, layout: layout)
        let (recipes, omitted) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
        var result = Result(tensorCount: 0, layout: target.kind)
        result.omitted = omitted.filter { !$0.name.hasSuffix("position_ids") || target.kind == .ldm }.map { ($0.name, $0.reason) }
        let mapped = RemappedStore(base: model.store, recipes: recipes)
        let plan = OutputTensor.plan(from: mapped, dtype: dtype)
        result.tensorCount = plan.count
        let isFolder = target.kind == .diffusers && target.components.allSatisfy { !$0.prefix.isEmpty }
        if isFolder {
            result.warnings = try writeFolder(
                plan: plan, target: target, model: model, to: output, overwrite: overwrite,
                configurationFolder: configurationFolder, progress: progress)
        } else {
            var metadata = model.source.metadata.filter { !$0.key.hasPrefix("diffusers.") }
            if let strings = model.recorded["strings"]?.objectValue {
                metadata = [:]
                for (k, v) in strings { if let s = v.stringValue { metadata[k] = s } }
            }
            metadata.merge(extraMetadata) { $1 }
            let ordered = target.kind == .diffusers ? SafetensorsWriter.referenceOrder(plan) : plan
            try SafetensorsWriter.write(ordered, metadata: metadata, to: output, overwrite: overwrite, progress: progress)
        }
        return result
    }

    /// The layout to write.
    public static func targetLayout(_ model: CanonicalModel, sourceLayout: ModelLayout, layout: Layout) throws -> ModelLayout {
        let components = Component.allCases.filter { c in model.store.tensors.contains { $0.name.hasPrefix(c.canonicalPrefix) } }
        let wanted: ModelLayout.Kind =
            switch layout {
            case .source: sourceLayout.kind
            case .ldm: .ldm
            case .diffusers: .diffusers
            }
        if wanted == sourceLayout.kind { return sourceLayout }
        let single = !model.detection.kind.isPipeline
        switch wanted {
        case .diffusers:
            if single, let c = components.first {
                return ModelLayout(
                    kind: .diffusers,
                    components: [ComponentLayout(component: c, prefix: "", naming: c == .unet ? .diffusersUNet : c == .vae ? .diffusersVAE : .hfCLIP)]
                )
            }
            return .diffusers(components)
        case .ldm:
            if single, let c = components.first {
                let naming: ComponentNaming =
                    c == .unet ? .ldmUNet : c == .vae ? .ldmVAE : (model.detection.textEncoders.first?.projection != nil ? .openCLIP : .hfCLIP)
                return ModelLayout(kind: .ldm, components: [ComponentLayout(component: c, prefix: "", naming: naming)])
            }
            guard let family = model.detection.family else {
                throw CatalogError(
                    .unmappable, "the model's family is unknown (\(model.detection.candidates.joined(separator: ", "))), so its LDM prefixes are too")
            }
            return .ldm(family, components: components)
        }
    }

    /// Writes a diffusers folder: one safetensors file per component and the configurations
    /// (kept from a diffusers source, read from `configurationFolder`, or made from the detection).
    static func writeFolder(
        plan: [OutputTensor], target: ModelLayout, model: CanonicalModel, to output: String, overwrite: Bool,
        configurationFolder: String?, progress: (any ProgressReporter)?
    ) throws -> [String] {
        var warnings: [String] = []
        var weights: [DiffusersFolderWriter.WeightsFile] = []
        for c in target.components {
            var tensors = plan.filter { $0.name.hasPrefix(c.prefix) }
            for i in tensors.indices { tensors[i].name = String(tensors[i].name.dropFirst(c.prefix.count)) }
            weights.append(DiffusersFolderWriter.WeightsFile(path: c.component.rawValue + "/" + c.component.diffusersWeightsFile, tensors: tensors))
        }
        var files: [(path: String, bytes: [UInt8])] = []
        let sourceFiles = model.auxiliaryFiles
        if !sourceFiles.isEmpty, sourceFiles.contains(where: { $0.path == "model_index.json" }), configurationFolder == nil {
            files = sourceFiles
        } else {
            if model.detection.predictionType == nil, model.detection.unet != nil, configurationFolder == nil {
                warnings.append("the prediction type is unknown (\(model.detection.predictionSource)); scheduler_config.json says epsilon")
            }
            var configs = DiffusersConfigs.files(for: model.detection, predictionType: model.detection.predictionType)
            if let configurationFolder {
                for (path, value) in try StableDiffusionModel.readConfigurationFolder(configurationFolder) {
                    if let i = configs.firstIndex(where: { $0.0 == path }) { configs[i].1 = value } else { configs.append((path, value)) }
                }
            }
            // The weights hold no tokenizer: every SD text encoder uses the CLIP BPE vocabulary,
            // so write the bundled one, padded as the family's published tokenizer pads.
            for t in model.detection.textEncoders {
                let folder = t.component == .textEncoder ? "tokenizer" : "tokenizer_2"
                let padsWithZero = model.detection.family?.textEncoder(t.component)?.padsWithZero ?? (t.projection != nil)
                for file in try CLIPTokenizer.bundledFiles(padToken: padsWithZero ? "!" : "<|endoftext|>") {
                    files.append((folder + "/" + file.name, file.bytes))
                }
                if let i = configs.firstIndex(where: { $0.0 == "model_index.json" }), case .object(var index) = configs[i].1 {
                    index[folder] = ["transformers", "CLIPTokenizer"]
                    configs[i].1 = JSONValue.object(index)
                }
            }
            for (path, value) in configs {
                files.insert((path, Array((value.serialized(pretty: true) + "\n").utf8)), at: path == "model_index.json" ? 0 : files.count)
            }
        }
        try DiffusersFolderWriter.write(weights: weights, files: files, to: output, overwrite: overwrite, progress: progress)
        return warnings
    }

    /// Writes the model as a GGUF file for stable-diffusion.cpp: LDM names, reversed dimensions,
    /// each tensor in the type ``ggufDecision(_:canonicalName:isInt8:storedType:dtype:rules:)``
    /// gives (block types where `dtype` asks for one and the rules allow), and the metadata it lacks.
    /// Blocks the source stores are passed through unchanged when the type stays the same (they
    /// run over the values in order, so any GGUF row that is a whole number of blocks holds them).
    ///
    /// - Parameters:
    ///   - tensorTypes: `GLOB=TYPE` overrides (`--tensor-type`), matched against the LDM name
    ///     written and the canonical name; only with a block `dtype`.
    ///   - extraMetadata: strings added as GGUF string values (a merge's `weightpack.adapters`).
    public static func writeGGUF(
        _ model: CanonicalModel, dtype: GGUFDType, tensorTypes: [GGMLTypeRules.Override] = [], to output: String, overwrite: Bool, tool: String,
        extraMetadata: [String: String] = [:], progress: (any ProgressReporter)? = nil,
        budget: GGUFBudget? = nil
    ) throws -> Result {
        guard model.isCanonical, let sourceLayout = model.layout else {
            throw CatalogError(
                .unmappable, "no Stable Diffusion layout recognised in \(model.path ?? "the input"); GGUF export writes the LDM layout")
        }
        guard tensorTypes.isEmpty || dtype.blockType != nil else {
            throw QuantizationError(.invalidLayout, "tensor type overrides apply to a block dtype (q4_0 … q6_k), not \(dtype.rawValue)")
        }
        let target = try targetLayout(model, sourceLayout: sourceLayout, layout: .ldm)
        let (recipes, omitted) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
        var result = Result(tensorCount: 0, layout: .ldm)
        result.omitted = omitted.map { ($0.name, $0.reason) }
        let mapped = RemappedStore(base: model.store, recipes: recipes)
        let quantizedStore = model.store as? any QuantizedTensorStore
        let rules = dtype.blockType.map {
            GGMLTypeRules(target: $0, overrides: tensorTypes, rows: .lastDimension, keep: stableDiffusionCppKeepPatterns)
        }
        var tensors: [GGUFWriter.Tensor] = []
        var items: [TypeSummary.Item] = []
        var fallbacks: [(String, GGMLType)] = []
        for r in recipes {
            let isInt8 = r.sources.count == 1 && model.store.storedDType(of: r.sources[0]) == .i8
            let unchanged = r.sources.count == 1 && (r.operation == .copy || r.operation == .reshape)
            let blocks = unchanged ? model.storedBlocks(of: r.sources[0]) : nil
            let storedType = try blocks?()?.type
            let chosen = unchanged ? budget?.storage[r.sources[0]] : nil
            guard
                let decision = chosen.map({ chosenDecision(r, $0) })
                    ?? ggufDecision(
                        r, canonicalName: unchanged ? r.sources[0] : nil, isInt8: isInt8, storedType: storedType, dtype: dtype, rules: rules)
            else {
                result.omitted.append((r.name, "GGUF has no type for \(r.dtype.name)"))
                continue
            }
            let name = r.name
            var tensor = GGUFWriter.Tensor(
                name: name, shape: r.shape, ggmlType: decision.type, load: { try mapped.tensor(named: name) }, blocks: blocks)
            if let chosen, decision.type == chosen, let importance = budget?.importance[r.sources[0]],
                importance.count == r.shape.dimensions.last
            {
                tensor.importance = importance
            }
            if isInt8, unchanged, let quantizedStore {
                let source = r.sources[0]
                tensor.quantized = { try quantizedStore.quantizedTensor(named: source) }
            }
            if let storedType, storedType != decision.type { result.requantizedFromBlocks.append((name, storedType, decision.type)) }
            if let from = decision.fallbackFrom { fallbacks.append((name, from)) }
            tensors.append(tensor)
            let bytes = decision.type.byteCount(values: r.shape.count) ?? 0
            items.append(
                TypeSummary.Item(
                    type: decision.type.name, fallbackFrom: decision.fallbackFrom, rowLength: r.shape.dimensions.last,
                    storedBytes: bytes, values: r.shape.count))
        }
        let inputName = model.path.map { String($0.split(separator: "/").last ?? Substring($0)) } ?? "model"
        var metadata: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string(model.detection.familyID.filter { $0.isLetter || $0.isNumber }.lowercased())),
            ("general.name", .string(inputName)),
        ]
        let fileType = Self.fileType(tensors.map { ($0.ggmlType, $0.shape.count) })
        if tensors.contains(where: { $0.ggmlType.isBlockQuantized }) { metadata.append(("general.quantization_version", .uint32(2))) }
        if let fileType { metadata.append(("general.file_type", .uint32(fileType))) }
        metadata.append(("weightpack.tool", .string(tool)))
        if let variant = model.detection.variant { metadata.append(("weightpack.variant", .string(variant))) }
        metadata.append(("weightpack.prediction_type", .string(model.detection.predictionType?.rawValue ?? "unknown")))
        metadata.append(("weightpack.dtype", .string(dtype.rawValue)))
        if !tensorTypes.isEmpty {
            metadata.append(
                ("weightpack.tensor_types", .string(tensorTypes.map { "\($0.pattern)=\($0.type.name.lowercased())" }.joined(separator: ","))))
        }
        // GGUF has no per-tensor record: the type each fallback was asked for, as ComfyUI-GGUF
        // keys its reshapes, so `inspect` can say it.
        for (name, from) in fallbacks { metadata.append((fallbackKeyPrefix + name, .string(from.name))) }
        for (key, value) in try sourceRecord(model, name: inputName) { metadata.append(("weightpack.source.\(key)", .string(value))) }
        for (key, value) in extraMetadata.sorted(by: { $0.key < $1.key }) { metadata.append((key, .string(value))) }
        if let recipe = budget?.recipe { metadata.append((GGUFBudget.recipeKey, .string(recipe))) }
        let summary = try GGUFWriter.write(
            tensors, metadata: metadata, to: output, overwrite: overwrite, progress: progress,
            reservedString: budget.map { (GGUFBudget.measuredKey, $0.measuredReserve) }, beforeCommit: budget?.beforeCommit)
        result.tensorCount = summary.tensorCount
        result.byteCount = summary.byteCount
        result.repackedCount = summary.repackedCount
        result.passedThroughCount = summary.passedThroughCount
        for (type, list) in Dictionary(grouping: tensors, by: \.ggmlType) { result.ggufTypeCounts[type.name] = list.count }
        result.types = TypeSummary(items)
        return result
    }

    /// `general.file_type` for tensors of these types and value counts: the `LLAMA_FTYPE` value
    /// (ggml `docs/gguf.md`, gguf-py's `LlamaFileType`) of the block type holding the most values
    /// (k-quants as their `_S` mixes, which use the one type throughout), else of F16/BF16/F32
    /// by the same measure; `nil` when no type has a file type.
    static func fileType(_ tensors: [(type: GGMLType, values: Int)]) -> UInt32? {
        func majority(_ candidates: [(type: GGMLType, values: Int)]) -> GGMLType? {
            Dictionary(grouping: candidates, by: \.type).mapValues { $0.reduce(0) { $0 + $1.values } }
                .max { $0.value != $1.value ? $0.value < $1.value : $0.key.rawValue > $1.key.rawValue }?.key
        }
        let blocks = tensors.filter { $0.type.isBlockQuantized }
        if let t = majority(blocks) {
            switch t {
            case .q4_0: return 2
            case .q4_1: return 3
            case .q8_0: return 7
            case .q5_0: return 8
            case .q5_1: return 9
            case .q2_K: return 10
            case .q3_K: return 11  // MOSTLY_Q3_K_S
            case .q4_K: return 14  // MOSTLY_Q4_K_S
            case .q5_K: return 16  // MOSTLY_Q5_K_S
            case .q6_K: return 18
            default: break
            }
        }
        switch majority(tensors.filter { [.f32, .f16, .bf16].contains($0.type) }) {
        case .f32?: return 0
        case .f16?: return 1
        case .bf16?: return 32
        default: return nil
        }
    }

    /// What `--dtype auto` adds to a GGUF export (``QualityBudget``).
    public struct GGUFBudget {
        /// The GGUF metadata key of the recipe (JSON text).
        public static let recipeKey = "weightpack.quality_budget"
        /// The key of what was measured before the file was named (JSON text padded with spaces).
        public static let measuredKey = "weightpack.quality_budget.measured"
        /// The type of each quantised tensor, by canonical name; the others are stored as
        /// `--dtype f16` stores them.
        public var storage: [String: GGMLType]
        /// The importance of each column of a tensor's GGUF rows (its last dimension), by
        /// canonical name (ggml's weighted searches; unit importance for the others).
        public var importance: [String: [Float]] = [:]
        public var recipe: String
        /// Bytes reserved for the measured record.
        public var measuredReserve: Int
        /// Called when the file is whole but not yet named, with a path that opens it and the
        /// quantisers' per-tensor metrics; returns the measured record.
        public var beforeCommit: (_ readablePath: String, _ metrics: [String: QuantizationMetrics]) throws -> String?

        public init(
            storage: [String: GGMLType], recipe: String, measuredReserve: Int,
            beforeCommit: @escaping (_ readablePath: String, _ metrics: [String: QuantizationMetrics]) throws -> String?
        ) {
            self.storage = storage
            self.recipe = recipe
            self.measuredReserve = measuredReserve
            self.beforeCommit = beforeCommit
        }
    }

    /// The decision for a type chosen by a budget: that type where the GGUF row (last dimension)
    /// is a whole number of its blocks, else its fallback chain, else F16.
    static func chosenDecision(_ r: TensorRecipe, _ type: GGMLType) -> GGMLTypeRules.Decision {
        GGMLTypeRules(target: type, rows: .lastDimension, includeDefaults: false).decision(
            for: TensorDescriptor(name: r.name, dtype: .f32, shape: r.shape, byteCount: r.shape.count * 4))
    }

    /// The canonical names of the tensors a GGUF export quantises to a block type: what
    /// stable-diffusion.cpp's name rules and WeightPack's keep patterns leave, with a GGUF row
    /// (the LDM shape's last dimension) of a whole number of 32-value blocks.
    public static func ggufQuantizedTensors(_ model: CanonicalModel) throws -> [String] {
        guard model.isCanonical, let sourceLayout = model.layout else { return [] }
        let target = try targetLayout(model, sourceLayout: sourceLayout, layout: .ldm)
        let (recipes, _) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
        let rules = GGMLTypeRules(target: .q8_0, rows: .lastDimension, keep: stableDiffusionCppKeepPatterns)
        return recipes.compactMap { r in
            guard r.sources.count == 1, r.operation == .copy || r.operation == .reshape, r.dtype.isConvertibleFloat,
                let d = ggufDecision(r, canonicalName: r.sources[0], isInt8: false, storedType: nil, dtype: .q8_0, rules: rules),
                d.type.isBlockQuantized, d.fallbackFrom == nil
            else { return nil }
            return r.sources[0]
        }
    }

    /// The GGUF metadata key prefix of `weightpack.fallback_from.<tensor>` (the type asked for).
    public static let fallbackKeyPrefix = "weightpack.fallback_from."

    /// stable-diffusion.cpp's name rules as keep patterns (``stableDiffusionCppQuantizes(_:)``).
    static let stableDiffusionCppKeepPatterns = ["*.bias", "*.scale", "*time_embed.*", "*label_emb.*", "*embedding*"]

    /// The GGUF type of one output tensor (`nil`: GGUF has none for its dtype).
    ///
    /// - `keep`: blocks the source stores keep their type when the GGUF row (last dimension) is a
    ///   whole number of blocks, else the fallback chain of ``GGMLTypeRules/fallback(for:)``, else
    ///   F16 (F32 for 1-D); int8 tensors become Q8_0 (2-D, rows of 32) or F16; plain types stay.
    /// - `f16`: matrices and kernels F16, 1-D tensors F32. `f32`: every float F32.
    /// - a block type: `rules` (overrides by LDM or canonical name first; stable-diffusion.cpp's
    ///   name rules and WeightPack's keep patterns on either name).
    static func ggufDecision(
        _ r: TensorRecipe, canonicalName: String?, isInt8: Bool, storedType: GGMLType?, dtype: GGUFDType,
        rules: GGMLTypeRules?
    ) -> GGMLTypeRules.Decision? {
        guard r.dtype.isConvertibleFloat || storedType != nil else {
            return GGMLType(plain: r.dtype).map { GGMLTypeRules.Decision(type: $0) }
        }
        let ldm = TensorDescriptor(name: r.name, dtype: .f32, shape: r.shape, byteCount: r.shape.count * 4)
        if let rules {
            var canonical = ldm
            if let canonicalName { canonical.name = canonicalName }
            if rules.overrides.contains(where: { Glob.matches($0.pattern, ldm.name) }) { return rules.decision(for: ldm) }
            if rules.overrides.contains(where: { Glob.matches($0.pattern, canonical.name) }) { return rules.decision(for: canonical) }
            let byCanonical = rules.decision(for: canonical)
            return byCanonical.type.isBlockQuantized ? rules.decision(for: ldm) : byCanonical
        }
        let last = r.shape.dimensions.last ?? 1
        switch dtype {
        case .f32: return GGMLTypeRules.Decision(type: .f32)
        case .f16: return GGMLTypeRules.Decision(type: r.shape.rank <= 1 ? .f32 : .f16)
        default:
            if let stored = storedType {
                var candidate: GGMLType? = stored
                while let t = candidate {
                    if last > 0, last % t.blockValues == 0 { return GGMLTypeRules.Decision(type: t, fallbackFrom: t == stored ? nil : stored) }
                    candidate = GGMLTypeRules.fallback(for: t)
                }
                return GGMLTypeRules.Decision(type: r.shape.rank <= 1 ? .f32 : .f16, fallbackFrom: stored)
            }
            if r.shape.rank <= 1 { return GGMLTypeRules.Decision(type: .f32) }
            if isInt8 {
                let q8able = last % Q8_0.blockValues == 0 && stableDiffusionCppQuantizes(r.name)
                return GGMLTypeRules.Decision(type: q8able && r.shape.rank == 2 ? .q8_0 : .f16)
            }
            return GGMLTypeRules.Decision(type: GGMLType(plain: r.dtype) ?? .f32)
        }
    }

    /// stable-diffusion.cpp's `tensor_should_be_converted` name rules (besides the row length).
    static func stableDiffusionCppQuantizes(_ name: String) -> Bool {
        !(name.hasSuffix(".bias") || name.hasSuffix(".scale") || name.contains("time_embed.") || name.contains("label_emb.")
            || name.contains("embedding"))
    }

    /// The source's name, format and SHA-256: recorded at conversion for a `.wpk`, computed otherwise.
    static func sourceRecord(_ model: CanonicalModel, name: String) throws -> [(String, String)] {
        if let source = model.recorded["source"]?.objectValue {
            var out: [(String, String)] = []
            for key in ["name", "format", "sha256"] { if let v = source[key]?.stringValue { out.append((key, v)) } }
            if let size = source["size"]?.doubleValue { out.append(("size", String(Int(size)))) }
            return out
        }
        var out = [("name", name), ("format", model.source.formatName)]
        if let path = model.path, let digest = try SourceDigest.start(path: path)?.wait() {
            out.append(("sha256", digest.sha256))
            out.append(("size", String(digest.size)))
        }
        return out
    }

    /// The GGUF type's name as stable-diffusion.cpp prints it (`F16`, `Q8_0`).
    public static func ggufName(_ t: GGUFWriter.TensorType) -> String {
        String(describing: t).uppercased()
    }
}

// MARK: Adapters

extension ModelExport {
    /// What `export ADAPTER --layout kohya|diffusers` wrote.
    public struct AdapterResult: Sendable {
        public var tensorCount: Int
        /// Modules converted.
        public var moduleCount: Int
    }

    /// Writes the LoRA/LoCon `source` (an opened adapter file) under another dialect's names:
    /// `.wpk` when `output` ends in `.wpk` (the converted names as they are, the adapter's
    /// metadata as the header's `strings`), safetensors otherwise. The factors' bytes are copied as they
    /// are with `dtype` `.keep`; kohya's alphas become scalar `.alpha` tensors, PEFT's the
    /// `lora_adapter_metadata` JSON diffusers writes.
    ///
    /// - Throws: ``AdapterError`` (`.notAnAdapter` for a model, `.inexpressible` for what the
    ///   dialect cannot hold) before anything is written; the writers' errors otherwise.
    public static func writeAdapter(
        _ source: any TensorStore, path: String?, to target: AdapterConversion.Target, dtype: DTypeChoice,
        output: String, overwrite: Bool, tool: String,
        progress: (any ProgressReporter)? = nil
    ) throws -> AdapterResult {
        let adapter = try Adapter(store: source)
        let converted = try AdapterConversion.convert(adapter, to: target)
        let modules = adapter.modules.count
        let plan = OutputTensor.plan(from: converted, dtype: dtype)
        if output.lowercased().hasSuffix(".wpk") {
            // Written as the converted names say: no model layout to recognise, none recorded
            // (PEFT's `unet.`/`text_encoder.` names would otherwise be taken for a diffusers model's).
            var metadata = JSONObject()
            metadata["tool"] = .string(tool)
            metadata["conversion"] = ["dtype": .string(dtype.rawValue), "adapter_dialect": .string(target.rawValue)]
            metadata["strings"] = .object(JSONObject(converted.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
            var sourceRecord = JSONObject()
            if let path { sourceRecord["name"] = .string(String(path.split(separator: "/").last ?? Substring(path))) }
            sourceRecord["format"] = .string(source.formatName)
            if let path, let size = SourceDigest.size(of: path) { sourceRecord["size"] = JSONValue(size) }
            metadata["source"] = .object(sourceRecord)
            let entries = try WPKWriter.write(plan, metadata: metadata, to: output, overwrite: overwrite, progress: progress)
            return AdapterResult(tensorCount: entries.count, moduleCount: modules)
        }
        try SafetensorsWriter.write(plan, metadata: converted.metadata, to: output, overwrite: overwrite, progress: progress)
        return AdapterResult(tensorCount: plan.count, moduleCount: modules)
    }
}
