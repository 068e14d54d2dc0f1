import Adapters
import ArgumentParser
import CheckpointFormats
import ModelLoading
import Quantization
import StrictJSON
import TensorCore

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge LoRA, LyCORIS and full-diff adapters into a model and write the result.",
        discussion: """
            Each adapter changes the base weights it names: W' = W + scale * alpha/rank * up * down \
            for a LoRA or LoCon (LoHa, LoKr, Tucker cores, DoRA and full diffs as ComfyUI and A1111 \
            apply them, alpha/rank once; Docs/adapters.md). The merge is computed in f32 one tensor \
            at a time; --dtype then casts or quantises the merged weights, so quantising comes after \
            the merge, never before: --dtype int8 (.wpk), or a ggml block type q4_0…q6_k (.wpk and \
            .gguf) with the per-tensor rules and --tensor-type overrides convert and export use, \
            and the same summary of types, fallbacks and bits per weight. A base that stores \
            quantised tensors (an int8 or block-type .wpk, a quantised GGUF) is merged from its \
            dequantised values; --dtype keep is then refused (exit 64) rather than writing every \
            tensor unquantised or re-quantising without being asked: choose int8, a block type, \
            f16 or f32. SCALE defaults to 1.0 and must be a finite number.

            Every adapter is checked against the base before anything is written: an adapter for \
            another family (an SDXL LoRA into SD 1.x), a module that matches no tensor of the base, \
            a shape that does not fit, a bad alpha or rank, or two modules for one tensor are refused.

            The output format follows its extension: .wpk (as convert writes it, recording each \
            adapter's file, SHA-256, scale and kind under "adapters" in the header) or .safetensors \
            (the base's own layout, or the LDM single-file layout for a diffusers folder; the same \
            record in __metadata__ as weightpack.adapters) or .gguf (as export --format gguf writes \
            it for stable-diffusion.cpp, --dtype keep, f32, f16 or a block type, the record as \
            weightpack.adapters). It \
            is written to a temporary file beside it and renamed into place only when complete.

            Exit codes: 0 done, 64 usage error (a scale that is not a finite number, an output \
            that is not .wpk, .safetensors or .gguf, a --dtype the output cannot take, a bad \
            --tensor-type, --dtype keep with a quantised base), 65 malformed input or an adapter refused for \
            this base, 66 missing input, 73 output exists (without --force), is the input, or \
            cannot be created, 74 I/O error.
            """)

    @Argument(help: "The base model: .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, a diffusers folder, or .wpk.")
    var base: String

    @Argument(help: ArgumentHelp("Adapters to merge, in order, each with an optional scale (default 1.0).", valueName: "adapter[:scale]"))
    var adapters: [String]

    @Option(name: [.short, .customLong("output")], help: "The file to write: .wpk, .safetensors or .gguf.")
    var output: String

    @Option(
        help: ArgumentHelp(
            "Element type of floating-point tensors: keep, f32, f16, bf16, int8 (.wpk only), or a ggml block type \(blockTypeList) (.wpk and .gguf); keep, f32, f16 or a block type for .gguf. Quantised after the merge.",
            valueName: "dtype"))
    var dtype: ConvertDType = .keep

    @Option(
        name: .customLong("tensor-type"),
        help: ArgumentHelp(
            "With a block --dtype: write tensors whose name matches GLOB as TYPE (repeatable, first match wins; canonical names for .wpk, LDM or canonical for .gguf).",
            valueName: "GLOB=TYPE"))
    var tensorTypes: [String] = []

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    var isWPK: Bool { output.lowercased().hasSuffix(".wpk") }
    var isGGUF: Bool { output.lowercased().hasSuffix(".gguf") }

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("give at least one adapter to merge") }
        for argument in adapters {
            do { _ = try ScaledAdapter.parse(argument) } catch { throw ValidationError(error.message) }
        }
        guard isWPK || isGGUF || output.lowercased().hasSuffix(".safetensors") else {
            throw ValidationError("-o '\(output)': the output must end in .wpk, .safetensors or .gguf")
        }
        guard !isGGUF || dtype != .bf16 && dtype != .int8 else {
            throw ValidationError("a .gguf output takes --dtype keep, f32, f16 or a block type (\(blockTypeList))")
        }
        guard isWPK || isGGUF || dtype.blockType == nil else { throw ValidationError("--dtype \(dtype.rawValue) needs a .wpk or .gguf output") }
        guard isWPK || dtype != .int8 else { throw ValidationError("--dtype int8 needs a .wpk output") }
        _ = try parseTensorTypes(tensorTypes, blockType: dtype.blockType)
    }

    /// How many tensors of `model` are stored quantised (int8 blocks or ggml blocks), and their types.
    static func quantisedTensors(of model: CanonicalModel) throws -> [String: Int] {
        var types: [String: Int] = [:]
        let int8 = model.store as? any QuantizedTensorStore
        let sourceInt8 = model.source as? any QuantizedTensorStore
        for d in model.store.tensors {
            // A .wpk's source holds the canonical names; another source, its own.
            let sourceName = sourceInt8?.descriptor(named: d.name) != nil ? d.name : model.sourceName(of: d.name)
            let q = try int8?.quantizedTensor(named: d.name) ?? sourceName.flatMap { try sourceInt8?.quantizedTensor(named: $0) }
            if q != nil {
                types["int8", default: 0] += 1
            } else if let fetch = model.storedBlocks(of: d.name), let view = try fetch() {
                types[view.type.name, default: 0] += 1
            }
        }
        return types
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let model = try CanonicalModel.open(base, options: inputOptions.modelInputOptions)
            if dtype == .keep {
                // The merge reads a quantised base as its dequantised values: keeping "its dtype"
                // would write every tensor unquantised. The user chooses instead.
                let quantised = try Self.quantisedTensors(of: model)
                if !quantised.isEmpty {
                    let list = quantised.map { "\($0.value) \($0.key)" }.sorted().joined(separator: ", ")
                    printError(
                        shortened(
                            "weightpack: error: \(PrintableText.escaped(base)) stores quantised tensors (\(list)); --dtype keep would write them unquantised: give --dtype int8 (.wpk) or a block type to quantise after the merge, or f16/f32"
                        ))
                    throw ExitCode(ExitStatus.usage.rawValue)
                }
            }
            let merged = try MergedStore.merging(
                adapters, into: model.store, baseFamily: model.detection.family,
                mergedDType: dtype == .keep ? nil : .f32, options: inputOptions.modelInputOptions)
            let mergedModel = model.replacingStore(merged)
            let progress = TerminalProgress.make("merge")
            let count: Int
            var summary: [String] = []
            if isWPK {
                var options = Conversion.Options(dtype: dtype.plain)
                options.ggmlType = dtype.blockType
                options.tensorTypes = try parseTensorTypes(tensorTypes, blockType: dtype.blockType)
                options.overwrite = force
                options.tool = "weightpack \(WeightPackCommand.version)"
                options.adapters = merged.plan.provenance
                let result = try Conversion.write(mergedModel, to: output, options: options, progress: progress)
                count = result.entries.count
                if dtype.blockType != nil { summary = typeSummaryLines(result.types) }
            } else if isGGUF {
                let result = try ModelExport.writeGGUF(
                    mergedModel, dtype: ModelExport.GGUFDType(rawValue: dtype.rawValue) ?? .keep,
                    tensorTypes: try parseTensorTypes(tensorTypes, blockType: dtype.blockType), to: output, overwrite: force,
                    tool: "weightpack \(WeightPackCommand.version)",
                    extraMetadata: ["weightpack.adapters": merged.plan.provenance.serialized()], progress: progress)
                count = result.tensorCount
                if dtype.blockType != nil, let types = result.types { summary = typeSummaryLines(types) }
            } else {
                // One file: a diffusers folder's pipeline is written in the LDM single-file layout.
                let layout: ModelExport.Layout = model.layout?.kind == .diffusers && model.detection.kind.isPipeline ? .ldm : .source
                count = try ModelExport.write(
                    mergedModel, layout: layout, dtype: dtype.plain, to: output, overwrite: force,
                    extraMetadata: ["weightpack.adapters": merged.plan.provenance.serialized()], progress: progress
                ).tensorCount
            }
            printError(
                "wrote \(output): \(count) tensors, \(merged.changedTensors.count) changed by \(adapters.count) adapter\(adapters.count == 1 ? "" : "s") (\(merged.plan.kinds.joined(separator: ", ")))"
            )
            for line in summary { printError(line) }
        }
    }
}
