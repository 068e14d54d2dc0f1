import ArgumentParser
import CheckpointFormats
import ModelLoading

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model out in a layout: its source layout, the LDM single file, or a diffusers folder.",
        discussion: """
            --layout source (the default) gives back the layout the model came in: from a .wpk, \
            the layout recorded at conversion, with the source's names and order (with --dtype \
            keep, bytes exactly as stored). --layout ldm writes the single-file layout A1111, \
            ComfyUI and stable-diffusion.cpp read (.safetensors). --layout diffusers writes a \
            folder (model_index.json, unet/, vae/, text_encoder/…, configs) that diffusers loads; \
            a model of one component is written as that component's .safetensors file. Folders \
            are built beside the target (.NAME.tmp-XXXXXX, which a killed run can leave behind \
            and which is safe to delete) and renamed into place when complete. With --force, an \
            existing diffusers folder (one with model_index.json) gets the files the export \
            writes replaced one by one, as save_pretrained does, and every other file in it is \
            left alone; an existing folder that is not empty and not a diffusers folder is refused, \
            and so is an output that is the input or a folder holding it. \
            --format gguf (the default for a .gguf output) writes the GGUF file stable-diffusion.cpp \
            reads: LDM names, ggml dimension order, --dtype f16 (matrices and kernels F16, 1-D \
            tensors F32), q8_0 (what stable-diffusion.cpp would quantise as Q8_0, int8 blocks of a \
            .wpk copied without requantising, the rest as f16) or keep; see Docs/quantization.md.

            Exit codes: 0 done, 65 malformed input or a layout the model cannot take, 66 missing \
            input, 73 output exists (without --force), is the input, is a folder not of its kind, or \
            cannot be created, 74 I/O error.
            """)

    enum Layout: String, ExpressibleByArgument, CaseIterable {
        case source, ldm, diffusers
        var value: ModelExport.Layout { ModelExport.Layout(rawValue: rawValue)! }
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

    @Option(name: .customLong("config"), help: ArgumentHelp(
        "With --layout diffusers: a diffusers folder (or a copy of its JSON files) whose configurations replace the derived ones.",
        valueName: "DIR"))
    var configurationFolder: String?

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        if resolvedFormat == .gguf {
            guard [.keep, .f16, .q8_0].contains(dtype) else { throw ValidationError("--format gguf takes --dtype f16, q8_0 or keep") }
            guard layout != .diffusers else { throw ValidationError("--format gguf writes the LDM layout; --layout diffusers does not apply") }
        } else if dtype == .q8_0 {
            throw ValidationError("--dtype q8_0 needs --format gguf")
        }
        if configurationFolder != nil, layout != .diffusers || resolvedFormat == .gguf {
            throw ValidationError("--config applies to --layout diffusers only")
        }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let model = try CanonicalModel.open(input, options: inputOptions.modelInputOptions)
            if resolvedFormat == .gguf {
                let ggufDType: ModelExport.GGUFDType = dtype == .q8_0 ? .q8_0 : dtype == .f16 ? .f16 : .keep
                let result = try ModelExport.writeGGUF(model, dtype: ggufDType, to: output, overwrite: force, tool: "weightpack \(WeightPackCommand.version)",
                                                       progress: TerminalProgress.make("export"))
                for o in result.omitted { printError("weightpack: note: left out \(o.name): \(o.reason)") }
                let counts = result.ggufTypeCounts.map { "\($0.value) \($0.key)" }.sorted().joined(separator: ", ")
                var line = "wrote \(output): \(result.tensorCount) tensors (\(counts)), \(formatBytes(result.byteCount ?? 0)), GGUF for stable-diffusion.cpp"
                if result.repackedCount > 0 { line += "; \(result.repackedCount) Q8_0 tensors copied from int8 blocks" }
                printError(line)
                return
            }
            let result = try ModelExport.write(model, layout: layout.value, dtype: dtype.plain, to: output, overwrite: force,
                                               configurationFolder: configurationFolder, progress: TerminalProgress.make("export"))
            for o in result.omitted { printError("weightpack: note: left out \(o.name): \(o.reason)") }
            for w in result.warnings { printError("weightpack: warning: \(w)") }
            if let kind = result.layout {
                printError("wrote \(output): \(result.tensorCount) tensors (\(kind.rawValue) layout)")
            } else {
                printError("wrote \(output): \(result.tensorCount) tensors")
            }
        }
    }
}
