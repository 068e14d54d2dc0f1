import ArgumentParser
import DiffusionEngine
import CheckpointFormats
import ModelCatalog
import StrictJSON
import TensorCore

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model out in a layout: its source layout, the LDM single file, or a diffusers folder.",
        discussion: """
            --layout source (the default) gives back the layout the model came in: from a .wpk,
            the layout recorded at conversion, with the source's names and order (with --dtype
            keep, bytes exactly as stored). --layout ldm writes the single-file layout A1111,
            ComfyUI and stable-diffusion.cpp read (.safetensors). --layout diffusers writes a
            folder (model_index.json, unet/, vae/, text_encoder/…, configs) that diffusers loads;
            a model of one component is written as that component's .safetensors file. Folders
            are built beside the target and renamed into place when complete.
            --format gguf (the default for a .gguf output) writes the GGUF file stable-diffusion.cpp
            reads: LDM names, ggml dimension order, --dtype f16 (matrices and kernels F16, 1-D
            tensors F32), q8_0 (what stable-diffusion.cpp would quantise as Q8_0, int8 blocks of a
            .wpk copied without requantising, the rest as f16) or keep; see Docs/quantization.md.
            Exit codes: 0 done, 65 malformed input or a layout the model cannot take, 66 missing
            input, 73 output exists (without --force) or cannot be created, 74 I/O error.
            """)

    enum Layout: String, ExpressibleByArgument, CaseIterable {
        case source, ldm, diffusers
    }

    @Argument(help: "The model to export: .wpk, .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, or a diffusers folder.")
    var input: String

    @Argument(help: "The .safetensors file (or, for --layout diffusers, the folder) to write.")
    var output: String

    @Option(help: "Tensor naming of the output: source, ldm or diffusers.")
    var layout: Layout = .source

    @Option(help: "Element type of floating-point tensors: keep, f32, f16 or bf16 (and q8_0 for --format gguf).")
    var dtype: ExportDType = .keep

    @Option(help: "File format: safetensors, or gguf (default: gguf when the output ends in .gguf).")
    var format: ExportFormat?

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        if resolvedFormat == .gguf {
            guard [.keep, .f16, .q8_0].contains(dtype) else { throw ValidationError("--format gguf takes --dtype f16, q8_0 or keep") }
            guard layout != .diffusers else { throw ValidationError("--format gguf writes the LDM layout; --layout diffusers does not apply") }
        } else if dtype == .q8_0 {
            throw ValidationError("--dtype q8_0 needs --format gguf")
        }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let source = try inputOptions.open(input)
            let model = try CanonicalModel(source)
            if resolvedFormat == .gguf {
                try writeGGUF(model: model)
                return
            }
            let dtype = self.dtype.plain
            guard model.isCanonical, let sourceLayout = model.layout else {
                guard layout == .source else {
                    throw CatalogError(.unmappable, "no Stable Diffusion layout recognised in \(input); only --layout source can export it")
                }
                try exportUnrecognized(source)
                return
            }
            let target = try targetLayout(model: model, sourceLayout: sourceLayout)
            let (recipes, omitted) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
            for o in omitted where !o.name.hasSuffix("position_ids") || target.kind == .ldm {
                printError("weightpack: note: left out \(o.name): \(o.reason)")
            }
            let mapped = RemappedStore(base: model.store, recipes: recipes)
            let plan = OutputTensor.plan(from: mapped, dtype: dtype)
            let isFolder = target.kind == .diffusers && target.components.allSatisfy { !$0.prefix.isEmpty }
            if isFolder {
                try writeFolder(plan: plan, target: target, model: model)
            } else {
                var metadata = model.source.metadata.filter { !$0.key.hasPrefix("diffusers.") }
                if model.source is WPKFile, let strings = (model.source as? WPKFile)?.headerMetadata["strings"]?.objectValue {
                    metadata = [:]
                    for (k, v) in strings { if let s = v.stringValue { metadata[k] = s } }
                }
                let ordered = target.kind == .diffusers ? SafetensorsWriter.referenceOrder(plan) : plan
                try SafetensorsWriter.write(ordered, metadata: metadata, to: output, overwrite: force, progress: TerminalProgress.make("export"))
            }
            printError("wrote \(output): \(plan.count) tensors (\(target.kind.rawValue) layout)")
        }
    }

    /// The layout to write.
    func targetLayout(model: CanonicalModel, sourceLayout: ModelLayout) throws -> ModelLayout {
        let components = Component.allCases.filter { c in model.store.tensors.contains { $0.name.hasPrefix(c.canonicalPrefix) } }
        let wanted: ModelLayout.Kind = switch layout {
        case .source: sourceLayout.kind
        case .ldm: .ldm
        case .diffusers: .diffusers
        }
        if wanted == sourceLayout.kind { return sourceLayout }
        let single = model.detection.kind != "pipeline"
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

    /// Writes a diffusers folder: one safetensors file per component and the configs (kept
    /// from a diffusers source, or made from the detection).
    func writeFolder(plan: [OutputTensor], target: ModelLayout, model: CanonicalModel) throws {
        var weights: [DiffusersFolderWriter.WeightsFile] = []
        for c in target.components {
            var tensors = plan.filter { $0.name.hasPrefix(c.prefix) }
            for i in tensors.indices { tensors[i].name = String(tensors[i].name.dropFirst(c.prefix.count)) }
            weights.append(DiffusersFolderWriter.WeightsFile(path: c.component.rawValue + "/" + c.component.diffusersWeightsFile, tensors: tensors))
        }
        var files: [(path: String, bytes: [UInt8])] = []
        let sourceFiles = model.auxiliaryFiles
        if !sourceFiles.isEmpty, sourceFiles.contains(where: { $0.path == "model_index.json" }) {
            files = sourceFiles
        } else {
            if model.detection.predictionType == nil, model.detection.unet != nil {
                printError("weightpack: warning: the prediction type is unknown (\(model.detection.predictionSource)); scheduler_config.json says epsilon")
            }
            var configs = DiffusersConfigs.files(for: model.detection, predictionType: model.detection.predictionType)
            // The weights hold no tokenizer: every SD text encoder uses the CLIP BPE vocabulary,
            // so write the bundled one, padded as the family's published tokenizer pads.
            for t in model.detection.textEncoders {
                let folder = t.component == .textEncoder ? "tokenizer" : "tokenizer_2"
                let openCLIP = t.component == .textEncoder2 || model.detection.familyID.hasPrefix("sd2")
                for file in try CLIPTokenizer.bundledFiles(padToken: openCLIP ? "!" : "<|endoftext|>") {
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
        try DiffusersFolderWriter.write(weights: weights, files: files, to: output, overwrite: force, progress: TerminalProgress.make("export"))
    }

    /// An input with no recognised layout: written with the names it has (as before detection).
    func exportUnrecognized(_ store: any TensorStore) throws {
        let dtype = self.dtype.plain
        var plan = OutputTensor.plan(from: store, dtype: dtype)
        if let wpk = store as? WPKFile {
            for i in plan.indices {
                if let original = wpk.entry(named: plan[i].sourceName)?.sourceName { plan[i].name = original }
            }
        }
        try SafetensorsWriter.write(plan, metadata: store.metadata, to: output, overwrite: force, progress: TerminalProgress.make("export"))
        printError("wrote \(output): \(plan.count) tensors")
    }
}
