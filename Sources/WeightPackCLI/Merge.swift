import Adapters
import ArgumentParser
import CheckpointFormats
import ModelLoading

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge LoRA, LyCORIS and full-diff adapters into a model and write the result.",
        discussion: """
            Each adapter changes the base weights it names: W' = W + scale * alpha/rank * up * down \
            for a LoRA or LoCon (LoHa, LoKr, Tucker cores, DoRA and full diffs as ComfyUI and A1111 \
            apply them, alpha/rank once; Docs/adapters.md). The merge is computed in f32 one tensor \
            at a time; --dtype then casts or quantises the merged weights, so quantising comes after \
            the merge, never before. SCALE defaults to 1.0 and must be a finite number.

            Every adapter is checked against the base before anything is written: an adapter for \
            another family (an SDXL LoRA into SD 1.x), a module that matches no tensor of the base, \
            a shape that does not fit, a bad alpha or rank, or two modules for one tensor are refused.

            The output format follows its extension: .wpk (as convert writes it, recording each \
            adapter's file, SHA-256, scale and kind under "adapters" in the header) or .safetensors \
            (the base's own layout, or the LDM single-file layout for a diffusers folder; the same \
            record in __metadata__ as weightpack.adapters) or .gguf (as export --format gguf writes \
            it for stable-diffusion.cpp, --dtype keep or f16, the record as weightpack.adapters). It \
            is written to a temporary file beside it and renamed into place only when complete.

            Exit codes: 0 done, 64 usage error (a scale that is not a finite number, an output \
            that is not .wpk, .safetensors or .gguf), 65 malformed input or an adapter refused for \
            this base, 66 missing input, 73 output exists (without --force), is the input, or \
            cannot be created, 74 I/O error.
            """)

    @Argument(help: "The base model: .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, a diffusers folder, or .wpk.")
    var base: String

    @Argument(help: ArgumentHelp("Adapters to merge, in order, each with an optional scale (default 1.0).", valueName: "adapter[:scale]"))
    var adapters: [String]

    @Option(name: [.short, .customLong("output")], help: "The file to write: .wpk, .safetensors or .gguf.")
    var output: String

    @Option(help: "Element type of floating-point tensors: keep, f32, f16, bf16, or int8 (.wpk only; quantised after the merge); keep or f16 for .gguf.")
    var dtype: DTypeChoice = .keep

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
        guard !isGGUF || [.keep, .f16].contains(dtype) else { throw ValidationError("a .gguf output takes --dtype keep or f16") }
        guard isWPK || dtype != .int8 else { throw ValidationError("--dtype int8 needs a .wpk output") }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let model = try CanonicalModel.open(base, options: inputOptions.modelInputOptions)
            let merged = try MergedStore.merging(adapters, into: model.store, baseFamily: model.detection.family,
                                                 mergedDType: dtype == .keep ? nil : .f32, options: inputOptions.modelInputOptions)
            let mergedModel = model.replacingStore(merged)
            let progress = TerminalProgress.make("merge")
            let count: Int
            if isWPK {
                var options = Conversion.Options(dtype: dtype)
                options.overwrite = force
                options.tool = "weightpack \(WeightPackCommand.version)"
                options.adapters = merged.plan.provenance
                count = try Conversion.write(mergedModel, to: output, options: options, progress: progress).entries.count
            } else if isGGUF {
                count = try ModelExport.writeGGUF(mergedModel, dtype: dtype == .f16 ? .f16 : .keep, to: output, overwrite: force,
                                                  tool: "weightpack \(WeightPackCommand.version)",
                                                  extraMetadata: ["weightpack.adapters": merged.plan.provenance.serialized()], progress: progress).tensorCount
            } else {
                // One file: a diffusers folder's pipeline is written in the LDM single-file layout.
                let layout: ModelExport.Layout = model.layout?.kind == .diffusers && model.detection.kind.isPipeline ? .ldm : .source
                count = try ModelExport.write(mergedModel, layout: layout, dtype: dtype, to: output, overwrite: force,
                                              extraMetadata: ["weightpack.adapters": merged.plan.provenance.serialized()], progress: progress).tensorCount
            }
            printError("wrote \(output): \(count) tensors, \(merged.changedTensors.count) changed by \(adapters.count) adapter\(adapters.count == 1 ? "" : "s") (\(merged.plan.kinds.joined(separator: ", ")))")
        }
    }
}
