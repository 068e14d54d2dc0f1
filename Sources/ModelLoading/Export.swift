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

    /// The GGUF element types: the casts of ``DTypeChoice`` and `q8_0`.
    public enum GGUFDType: String, Sendable, CaseIterable {
        case keep, f16, q8_0
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
    }

    /// Writes `model` as safetensors (or, for `.diffusers` with several components, a folder).
    ///
    /// - Parameters:
    ///   - configurationFolder: for a diffusers folder from a single file, configurations to
    ///     write instead of derived ones (attention head counts a single file does not state).
    ///   - extraMetadata: strings added to a single file's `__metadata__` (a merge's
    ///     `weightpack.adapters`).
    public static func write(_ model: CanonicalModel, layout: Layout, dtype: DTypeChoice, to output: String, overwrite: Bool,
                             configurationFolder: String? = nil, extraMetadata: [String: String] = [:],
                             progress: (any ProgressReporter)? = nil) throws -> Result {
        guard model.isCanonical, let sourceLayout = model.layout else {
            guard layout == .source else {
                throw CatalogError(.unmappable, "no Stable Diffusion layout recognised in \(model.path ?? "the input"); only --layout source can export it")
            }
            // Written with the names it has (a .wpk gives back its source's names).
            // (`store` is the source here, or the source with adapters merged in.)
            var plan = OutputTensor.plan(from: model.store, dtype: dtype)
            for i in plan.indices {
                if let original = model.store.sourceName(of: plan[i].sourceName) { plan[i].name = original }
            }
            try SafetensorsWriter.write(plan, metadata: model.source.metadata.merging(extraMetadata) { $1 }, to: output, overwrite: overwrite, progress: progress)
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
            result.warnings = try writeFolder(plan: plan, target: target, model: model, to: output, overwrite: overwrite,
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
        let wanted: ModelLayout.Kind = switch layout {
        case .source: sourceLayout.kind
        case .ldm: .ldm
        case .diffusers: .diffusers
        }
        if wanted == sourceLayout.kind { return sourceLayout }
        let single = !model.detection.kind.isPipeline
        switch wanted {
        case .diffusers:
            if single, let c = components.first {
                return ModelLayout(kind: .diffusers, components: [ComponentLayout(component: c, prefix: "", naming: c == .unet ? .diffusersUNet : c == .vae ? .diffusersVAE : .hfCLIP)])
            }
            return .diffusers(components)
        case .ldm:
            if single, let c = components.first {
                let naming: ComponentNaming = c == .unet ? .ldmUNet : c == .vae ? .ldmVAE : (model.detection.textEncoders.first?.projection != nil ? .openCLIP : .hfCLIP)
                return ModelLayout(kind: .ldm, components: [ComponentLayout(component: c, prefix: "", naming: naming)])
            }
            guard let family = model.detection.family else {
                throw CatalogError(.unmappable, "the model's family is unknown (\(model.detection.candidates.joined(separator: ", "))), so its LDM prefixes are too")
            }
            return .ldm(family, components: components)
        }
    }

    /// Writes a diffusers folder: one safetensors file per component and the configurations
    /// (kept from a diffusers source, read from `configurationFolder`, or made from the detection).
    static func writeFolder(plan: [OutputTensor], target: ModelLayout, model: CanonicalModel, to output: String, overwrite: Bool,
                            configurationFolder: String?, progress: (any ProgressReporter)?) throws -> [String] {
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
    /// Q8_0 blocks where stable-diffusion.cpp quantises, and the metadata it lacks.
    ///
    /// - Parameter extraMetadata: strings added as GGUF string values (a merge's `weightpack.adapters`).
    public static func writeGGUF(_ model: CanonicalModel, dtype: GGUFDType, to output: String, overwrite: Bool, tool: String,
                                 extraMetadata: [String: String] = [:], progress: (any ProgressReporter)? = nil) throws -> Result {
        guard model.isCanonical, let sourceLayout = model.layout else {
            throw CatalogError(.unmappable, "no Stable Diffusion layout recognised in \(model.path ?? "the input"); GGUF export writes the LDM layout")
        }
        let target = try targetLayout(model, sourceLayout: sourceLayout, layout: .ldm)
        let (recipes, omitted) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
        var result = Result(tensorCount: 0, layout: .ldm)
        result.omitted = omitted.map { ($0.name, $0.reason) }
        let mapped = RemappedStore(base: model.store, recipes: recipes)
        let quantizedStore = model.store as? any QuantizedTensorStore
        var tensors: [GGUFWriter.Tensor] = []
        for r in recipes {
            let isInt8 = r.sources.count == 1 && model.store.storedDType(of: r.sources[0]) == .i8
            guard let type = ggufType(r, isInt8: isInt8, dtype: dtype) else {
                result.omitted.append((r.name, "GGUF has no type for \(r.dtype.name)"))
                continue
            }
            let name = r.name
            var tensor = GGUFWriter.Tensor(name: name, shape: r.shape, type: type, load: { try mapped.tensor(named: name) })
            if isInt8, [.copy, .reshape].contains(r.operation), let quantizedStore {
                let source = r.sources[0]
                tensor.quantized = { try quantizedStore.quantizedTensor(named: source) }
            }
            tensors.append(tensor)
        }
        let inputName = model.path.map { String($0.split(separator: "/").last ?? Substring($0)) } ?? "model"
        var metadata: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string(model.detection.familyID.filter { $0.isLetter || $0.isNumber }.lowercased())),
            ("general.name", .string(inputName)),
        ]
        let types = Set(tensors.map(\.type))
        if types.contains(.q8_0) {
            metadata.append(("general.quantization_version", .uint32(2)))
            metadata.append(("general.file_type", .uint32(7)))
        } else if types.contains(.f16) {
            metadata.append(("general.file_type", .uint32(1)))
        }
        metadata.append(("weightpack.tool", .string(tool)))
        if let variant = model.detection.variant { metadata.append(("weightpack.variant", .string(variant))) }
        metadata.append(("weightpack.prediction_type", .string(model.detection.predictionType?.rawValue ?? "unknown")))
        metadata.append(("weightpack.dtype", .string(dtype.rawValue)))
        for (key, value) in try sourceRecord(model, name: inputName) { metadata.append(("weightpack.source.\(key)", .string(value))) }
        for (key, value) in extraMetadata.sorted(by: { $0.key < $1.key }) { metadata.append((key, .string(value))) }
        let summary = try GGUFWriter.write(tensors, metadata: metadata, to: output, overwrite: overwrite, progress: progress)
        result.tensorCount = summary.tensorCount
        result.byteCount = summary.byteCount
        result.repackedCount = summary.repackedCount
        for (type, list) in Dictionary(grouping: tensors, by: \.type) { result.ggufTypeCounts[ggufName(type)] = list.count }
        return result
    }

    /// The GGUF type of one output tensor.
    static func ggufType(_ r: TensorRecipe, isInt8: Bool, dtype: GGUFDType) -> GGUFWriter.TensorType? {
        guard r.dtype.isConvertibleFloat else { return GGUFWriter.TensorType(exactly: r.dtype) }
        if r.shape.rank <= 1 { return .f32 }
        let q8able = r.shape.dimensions.last! % Q8_0.blockValues == 0 && stableDiffusionCppQuantizes(r.name)
        switch dtype {
        case .q8_0: return q8able ? .q8_0 : .f16
        case .keep:
            if isInt8 { return q8able && r.shape.rank == 2 ? .q8_0 : .f16 }
            return GGUFWriter.TensorType(exactly: r.dtype) ?? .f32
        case .f16: return .f16
        }
    }

    /// stable-diffusion.cpp's `tensor_should_be_converted` name rules (besides the row length).
    static func stableDiffusionCppQuantizes(_ name: String) -> Bool {
        !(name.hasSuffix(".bias") || name.hasSuffix(".scale") || name.contains("time_embed.") || name.contains("label_emb.") || name.contains("embedding"))
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
