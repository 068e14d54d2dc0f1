import Adapters
import ArgumentParser
import CheckpointFormats
import ModelLoading
import Quantization
import StrictJSON
import TensorCore

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model out in a layout (its source layout, the LDM single file, a diffusers folder), or a LoRA in another dialect.",
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
            tensors F32), f32, keep (blocks the input stores passed through unchanged where the \
            GGUF row, the last dimension, holds them, else requantised and said so; int8 blocks of \
            a .wpk as Q8_0 where they fit), or a block type, rows being the last dimension as \
            stable-diffusion.cpp reads them, with its name rules (biases, time and label \
            embeddings, embeddings stay unquantised) added to the rules below. \(blockTypeHelp) \
            general.file_type is set to ggml's LLAMA_FTYPE of the type holding the most values. \
            A summary after the export says how many tensors have each type, which fell back, and \
            the bits per weight (--json prints it as JSON on stdout). Block types need --format gguf.

            Adapters: --layout kohya or --layout diffusers with a LoRA or LoCon file (what inspect \
            calls an adapter) rewrites its keys in that dialect and copies every factor's bytes \
            unchanged (with --dtype keep): kohya's lora_unet_…/lora_te…_ modules with lora_down, \
            lora_up and a scalar .alpha each, or diffusers/PEFT's unet.….lora_A/lora_B keys with \
            the alphas in the lora_adapter_metadata JSON diffusers writes (r, lora_alpha, \
            rank_pattern, alpha_pattern per component). The output is .safetensors, or a .wpk \
            when it ends in .wpk. What a dialect cannot express (LoHa, LoKr, Tucker cores, DoRA or \
            full diffs as PEFT keys; an embedding) is refused with one line and nothing is \
            written. --layout kohya of a model and --layout ldm of an adapter are refused (65); \
            adapters take no --format gguf.

            --format gguf --dtype auto chooses each weight's type (f16, q8_0 down to q2_k, on \
            stable-diffusion.cpp's rows) against --target-psnr or --max-size and proves the file \
            against the source before naming it, as convert --dtype auto does (see convert --help).

            Exit codes: 0 done, 1 a --dtype auto budget no type mix meets, 64 invalid option (a block --dtype without --format gguf, a bad \
            --tensor-type, --layout kohya with --format gguf, --config with an adapter), 65 malformed input, a layout the \
            model cannot take (kohya for a model, ldm for an adapter), or an adapter the dialect \
            cannot express, 66 missing \
            input, 73 output exists (without --force), is the input, is a folder not of its kind, or \
            cannot be created, 74 I/O error.
            """)

    enum Layout: String, ExpressibleByArgument, CaseIterable {
        case source, ldm, diffusers, kohya
        /// The model layout (`nil` for kohya, which only adapters take).
        var value: ModelExport.Layout? { ModelExport.Layout(rawValue: rawValue) }
        /// The adapter dialect (`nil` for source and ldm).
        var dialect: AdapterConversion.Target? { AdapterConversion.Target(rawValue: rawValue) }
    }

    @Argument(help: "The model to export: .wpk, .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, or a diffusers folder.")
    var input: String

    @Argument(help: "The .safetensors file (or, for --layout diffusers, the folder) to write.")
    var output: String

    @Option(help: "Tensor naming of the output: source, ldm or diffusers for a model; kohya or diffusers for a LoRA/LoCon.")
    var layout: Layout = .source

    @Option(
        help: ArgumentHelp(
            "Element type of floating-point tensors: keep, f32, f16 or bf16; for --format gguf keep, f32, f16, a ggml block type: \(blockTypeList) (upper case too), or auto (--target-psnr or --max-size).",
            valueName: "dtype"))
    var dtype: ExportDType = .keep

    @Option(
        name: .customLong("tensor-type"),
        help: ArgumentHelp(
            "With --format gguf and a block --dtype: write tensors whose LDM or canonical name matches GLOB as TYPE (repeatable, first match wins).",
            valueName: "GLOB=TYPE"))
    var tensorTypes: [String] = []

    @Flag(help: "With --format gguf: print the export's summary (tensors per type, fallbacks, bits per weight) as JSON on stdout.")
    var json = false

    @Option(help: "File format: safetensors, or gguf (default: gguf when the output ends in .gguf).")
    var format: ExportFormat?

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @Option(
        name: .customLong("config"),
        help: ArgumentHelp(
            "With --layout diffusers: a diffusers folder (or a copy of its JSON files) whose configurations replace the derived ones; with --dtype auto, the configurations the model needs to run.",
            valueName: "DIR"))
    var configurationFolder: String?

    @OptionGroup(title: "Quality budget (--dtype auto)") var budget: QualityBudgetOptions

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        try budget.validate(auto: dtype == .auto)
        if resolvedFormat == .gguf {
            guard dtype.gguf != nil || dtype == .auto else {
                throw ValidationError("--format gguf takes --dtype keep, f32, f16 or a block type (\(blockTypeList))")
            }
            guard layout != .diffusers else { throw ValidationError("--format gguf writes the LDM layout; --layout diffusers does not apply") }
            guard layout != .kohya else {
                throw ValidationError("--format gguf writes models in the LDM layout; --layout kohya (for adapters) does not apply")
            }
            _ = try parseTensorTypes(tensorTypes, blockType: dtype.blockType)
        } else {
            if dtype.blockType != nil || dtype == .auto {
                throw ValidationError("--dtype \(dtype.rawValue) needs --format gguf (a .wpk takes it through convert)")
            }
            if !tensorTypes.isEmpty { throw ValidationError("--tensor-type applies to --format gguf with a block --dtype") }
            if json { throw ValidationError("--json applies to --format gguf") }
        }
        if configurationFolder != nil, layout != .diffusers || resolvedFormat == .gguf, dtype != .auto {
            throw ValidationError("--config applies to --layout diffusers only")
        }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            if dtype == .auto {
                try budget.run(
                    input: input, output: output, format: .gguf, inputOptions: inputOptions, configurationFolder: configurationFolder, keep: [],
                    force: force, recordSourceDigest: true, json: json)
                return
            }
            let model = try CanonicalModel.open(input, options: inputOptions.modelInputOptions)
            if try exportAdapter(model) { return }
            if resolvedFormat == .gguf {
                let ggufDType = dtype.gguf ?? .keep
                let result = try ModelExport.writeGGUF(
                    model, dtype: ggufDType, tensorTypes: try parseTensorTypes(tensorTypes, blockType: dtype.blockType),
                    to: output, overwrite: force, tool: "weightpack \(WeightPackCommand.version)",
                    progress: TerminalProgress.make("export"))
                for o in result.omitted { printError("weightpack: note: left out \(o.name): \(o.reason)") }
                let counts = result.ggufTypeCounts.map { "\($0.value) \($0.key)" }.sorted().joined(separator: ", ")
                var line =
                    "wrote \(output): \(result.tensorCount) tensors (\(counts)), \(formatBytes(result.byteCount ?? 0)), GGUF for stable-diffusion.cpp"
                if result.repackedCount > 0 { line += "; \(result.repackedCount) Q8_0 tensors copied from int8 blocks" }
                if result.passedThroughCount > 0 { line += "; \(result.passedThroughCount) block tensors passed through unchanged" }
                printError(line)
                if let types = result.types, types.items.contains(where: { GGMLType(name: $0.type)?.isBlockQuantized == true }) {
                    for line in typeSummaryLines(types) { printError(line) }
                }
                let requantized = result.requantizedFromBlocks
                if !requantized.isEmpty {
                    let pairs = Dictionary(grouping: requantized, by: { "\($0.from.name) to \($0.to.name)" }).map { "\($0.value.count) \($0.key)" }
                        .sorted()
                    printError(
                        "note: \(requantized.count) tensors stored as blocks were rewritten from their values (\(pairs.joined(separator: ", "))): their GGUF rows do not hold the stored type, or another type was asked for"
                    )
                }
                if json {
                    var root = result.types?.json.objectValue ?? JSONObject()
                    root["output"] = .string(output)
                    root["tensor_count"] = JSONValue(result.tensorCount)
                    root["dtype"] = .string(ggufDType.rawValue)
                    root["passed_through"] = JSONValue(result.passedThroughCount)
                    root["requantized_from_blocks"] = JSONValue(requantized.count)
                    print(JSONValue.object(root).serialized(pretty: true))
                }
                return
            }
            guard let modelLayout = layout.value else { return }  // kohya: handled by exportAdapter
            let result = try ModelExport.write(
                model, layout: modelLayout, dtype: dtype.plain, to: output, overwrite: force,
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

extension Export {
    /// An adapter input (as inspect recognises one: no model layout, adapter keys) with --layout
    /// kohya or diffusers is converted to that dialect; true when done. --layout kohya of a model
    /// and --layout ldm of an adapter are refused (65) before anything is written.
    func exportAdapter(_ model: CanonicalModel) throws -> Bool {
        var isAdapter = false
        // PEFT keys (`unet.…`, `text_encoder.…`) pass for a diffusers layout whose model is not
        // recognised, so the names being canonical does not rule an adapter out.
        if !model.isCanonical || model.detection.family == nil {
            // A damaged adapter is still an adapter: the conversion says what is wrong with it.
            do throws(AdapterError) { isAdapter = try AdapterReport.inspect(model.source) != nil } catch { isAdapter = true }
        }
        guard isAdapter else {
            if layout == .kohya {
                throw AdapterError(
                    .notAnAdapter,
                    "--layout kohya applies to a LoRA or LoCon adapter; \(input) is not one (a model exports as source, ldm or diffusers)")
            }
            return false
        }
        if layout == .ldm {
            throw AdapterError(.inexpressible, "\(input) is an adapter, not a model: it has no LDM layout (use --layout kohya or diffusers)")
        }
        guard let dialect = layout.dialect else { return false }  // --layout source: copied as it is
        if configurationFolder != nil {
            printError("weightpack: error: --config gives a model's diffusers configurations; \(PrintableText.escaped(input)) is an adapter")
            throw ExitCode(ExitStatus.usage.rawValue)
        }
        let result = try ModelExport.writeAdapter(
            model.source, path: input, to: dialect, dtype: dtype.plain, output: output, overwrite: force,
            tool: "weightpack \(WeightPackCommand.version)", progress: TerminalProgress.make("export"))
        printError(
            "wrote \(output): \(result.tensorCount) tensors, \(result.moduleCount) modules in the \(dialect == .kohya ? "kohya" : "diffusers/PEFT") dialect"
        )
        return true
    }
}
