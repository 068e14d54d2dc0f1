import ArgumentParser
import CheckpointFormats
import ModelCatalog
import ModelLoading
import StrictJSON

extension DTypeChoice: ExpressibleByArgument {}
extension WeightSelection: ExpressibleByArgument {}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a model into a memory-mapped .wpk file.",
        discussion: """
            Floating-point tensors (F16, BF16, F32, F64) are cast as --dtype asks, rounding to \
            nearest even; integer and boolean tensors are never cast. The output is written to a \
            temporary file beside it and renamed into place only when complete. An output that is \
            the input (the same file, a link to it) is refused, --force or not. The temporary has \
            no name while it is written where the file system allows it (O_TMPFILE); elsewhere it \
            is .NAME.tmp-XXXXXX beside the output, which a killed run can leave behind and which \
            is safe to delete.

            A recognised model is stored under canonical names (Formats/names.md) with its \
            detected architecture and source layout, so export can give the layout back. \
            Schedule buffers, EMA bookkeeping and other leftovers are left out unless --keep-extra. \
            A checkpoint that holds EMA weights only (model_ema.*, no model.diffusion_model.*) is \
            converted from them whatever --weights says, with a note on stderr. An input without \
            any tensor is refused.

            --dtype q4_0 … q6_k stores weights as ggml blocks (.wpk 1.2, mapped zero-copy), rows \
            of all but the first dimension (a convolution's in·kh·kw). \(blockTypeHelp) Blocks the \
            input already stores in the decided type (a GGUF, a block .wpk) are copied, never \
            requantised; with --dtype keep they stay blocks where their rows fit. After the \
            conversion a summary says how many tensors have each type, which fell back and why, \
            and the file's bits per weight (--json prints it as JSON on stdout).

            --dtype auto chooses each weight's type from f16, int8, q8_0, q6_k, q5_k, q5_1, q5_0, \
            q4_k, q4_1, q4_0, q3_k and q2_k by its measured effect: a calibration run of the \
            whole cascade (a few prompts, --calibration-size, --calibration-steps) records every \
            layer's input statistics, each weight's output error in each type is predicted from \
            them, and an allocation meets --target-psnr DB (the smallest file whose image PSNR \
            against the source stays at or above DB) or --max-size SIZE (the best images that \
            fit). Before the file is given its name it is run against the source (verify's \
            staged report, 6 steps, a prompt not used for calibration); a missed target corrects \
            the prediction and tries again (--attempts), and nothing is written if the last \
            attempt misses. The header records the recipe (each tensor's type and predicted \
            error, the calibration, the tool) and what was measured; inspect shows it; --report \
            DIR draws the size-versus-PSNR curve and the bits per layer. Docs/quantization.md.

            Exit codes: 0 done, 1 a --dtype auto budget no type mix meets (predicted or \
            measured), 64 invalid option (a bad --tensor-type, --tensor-type without a \
            block --dtype), 65 malformed input or no tensors, 66 missing input, 73 output exists \
            (without --force), is the input, or cannot be created, 74 I/O error.
            """)

    @Argument(help: "The model to convert: .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, a diffusers folder, or .wpk.")
    var input: String

    @Argument(help: "The .wpk file to write.")
    var output: String

    @Option(
        help: ArgumentHelp(
            "Element type of floating-point tensors: keep, f32, f16, bf16, int8 (weights in int8 blocks, the rest f16/f32), a ggml block type: \(blockTypeList) (upper case too; Docs/quantization.md), or auto (each weight's type chosen against --target-psnr or --max-size).",
            valueName: "dtype"))
    var dtype: ConvertDType = .keep

    @Option(
        name: .customLong("keep"),
        help: ArgumentHelp(
            "With --dtype int8 or a block type: keep tensors matching this pattern unquantised (repeatable; * and ?).", valueName: "GLOB"))
    var keepPatterns: [String] = []

    @Option(
        name: .customLong("tensor-type"),
        help: ArgumentHelp(
            "With a block --dtype: store tensors whose canonical name matches GLOB as TYPE (repeatable, first match wins; e.g. '*attn*=q8_0', '*.proj_in.weight=f16').",
            valueName: "GLOB=TYPE"))
    var tensorTypes: [String] = []

    @Flag(help: "Print the conversion's summary (tensors per type, fallbacks, bits per weight) as JSON on stdout.")
    var json = false

    @Flag(help: "Store floating-point tensors as zstd-compressed byte planes (lossless, smaller, not zero-copy).")
    var compress = false

    @Option(help: "zstd level for --compress (1-19).")
    var compressionLevel: Int32 = 3

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @Option(help: "UNet weights to store: main, or ema (the model_ema.* copies under the main names).")
    var weights: WeightSelection = .main

    @Flag(help: "Keep schedule buffers, unselected EMA copies and other leftovers (as extra.<name>).")
    var keepExtra = false

    @Flag(
        help: ArgumentHelp(
            "Do not record the source file's SHA-256 (saves reading the whole input a second time).",
            discussion: """
                The .wpk then records the source's name, format and size only. The hash runs on \
                another core while the conversion does, but SHA-256 is one sequential stream \
                (about 1.5 GB/s with the SHA extensions), so for a large source in the page cache \
                it, not the conversion, sets the time.
                """))
    var noSourceHash = false

    @Flag(help: "Store CLIP position_ids as the integers 0..n-1 (repairs merge-damaged checkpoints).")
    var fixPositionIds = false

    @Option(help: "For diffusers folders: prefer weight files of this variant (e.g. fp16).")
    var variant: String?

    @Option(
        name: .customLong("config"),
        help: ArgumentHelp(
            "With --dtype auto: a diffusers folder whose configurations the model needs to run (as generate --config).", valueName: "DIR"))
    var configurationFolder: String?

    @OptionGroup(title: "Quality budget (--dtype auto)") var budget: QualityBudgetOptions

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        guard (1...19).contains(compressionLevel) else { throw ValidationError("--compression-level must be between 1 and 19") }
        try budget.validate(auto: dtype == .auto)
        if configurationFolder != nil, dtype != .auto { throw ValidationError("--config applies to --dtype auto") }
        if dtype == .auto, compress { throw ValidationError("--compress does not apply to --dtype auto (block tensors are stored as they are)") }
        if dtype == .auto, !tensorTypes.isEmpty {
            throw ValidationError("--tensor-type does not apply to --dtype auto; use --keep to leave tensors out of the choice")
        }
        guard keepPatterns.isEmpty || dtype == .int8 || dtype == .auto || dtype.blockType != nil else {
            throw ValidationError("--keep applies to --dtype int8 or a block type (\(blockTypeList)) only")
        }
        _ = try parseTensorTypes(tensorTypes, blockType: dtype.blockType)
        for pattern in keepPatterns where pattern.contains(where: { "[]{}".contains($0) }) {
            throw ValidationError("--keep '\(pattern)': only * and ? are wildcards here; brackets and braces would match themselves")
        }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            if dtype == .auto {
                guard weights == .main, !keepExtra, !fixPositionIds, variant == nil else {
                    throw ValidationError("--dtype auto takes none of --weights ema, --keep-extra, --fix-position-ids, --variant")
                }
                try budget.run(
                    input: input, output: output, format: .wpk, inputOptions: inputOptions, configurationFolder: configurationFolder,
                    keep: keepPatterns, force: force, recordSourceDigest: !noSourceHash, json: json)
                return
            }
            var options = inputOptions.modelInputOptions
            options.variant = variant
            let model = try CanonicalModel.open(input, options: options, weights: weights, keepExtra: keepExtra)
            if model.ema.only, weights == .main {
                printError(
                    "note: \(input) holds EMA weights only (model_ema.*, no model.diffusion_model.*); the UNet is converted from them, as --weights ema would"
                )
            }
            var conversion = Conversion.Options(dtype: dtype.plain)
            conversion.keepPatterns = keepPatterns
            conversion.ggmlType = dtype.blockType
            conversion.tensorTypes = try parseTensorTypes(tensorTypes, blockType: dtype.blockType)
            conversion.compress = compress
            conversion.compressionLevel = compressionLevel
            conversion.fixPositionIDs = fixPositionIds
            conversion.recordSourceDigest = !noSourceHash
            conversion.overwrite = force
            conversion.tool = "weightpack \(WeightPackCommand.version)"
            let result = try Conversion.write(model, to: output, options: conversion, progress: TerminalProgress.make("convert"))
            for pattern in result.unmatchedKeepPatterns {
                printError(
                    "note: --keep '\(pattern)' matches no tensor (patterns match the canonical names that weightpack inspect shows for the converted file)"
                )
            }
            for repaired in result.repairedPositionIDs {
                printError("repaired \(repaired.sourceName): position_ids set to 0..\(repaired.count - 1)")
            }
            let stored = result.storedByteCount
            var line = "wrote \(output): \(result.entries.count) tensors, \(formatBytes(stored))"
            if compress, stored > 0 { line += " (compression ratio \(format1(Double(result.logicalByteCount) / Double(stored))))" }
            printError(line)
            if dtype == .int8 { printError(QuantizationSummary(result.entries).line) }
            let types = result.types
            if dtype.blockType != nil || types.items.contains(where: { $0.rowLength != nil }) {
                for line in typeSummaryLines(types) { printError(line) }
            }
            if json {
                var root = types.json.objectValue ?? JSONObject()
                root["output"] = .string(output)
                root["tensor_count"] = JSONValue(result.entries.count)
                root["dtype"] = .string(dtype.rawValue)
                print(JSONValue.object(root).serialized(pretty: true))
            }
            for (name, count) in result.float16Overflows.prefix(10) {
                printError("weightpack: warning: \(name): \(count) values beyond ±65504 became infinite in f16")
            }
            if result.float16Overflows.count > 10 {
                printError("weightpack: warning: \(result.float16Overflows.count - 10) more tensors overflowed f16")
            }
            let dropped = result.dropped
            if !dropped.isEmpty {
                printError(
                    "left out \(dropped.count) leftover tensors (\(Set(dropped.map(\.kind.rawValue)).sorted().joined(separator: ", "))); --keep-extra keeps them"
                )
            }
            if !model.isCanonical { printError("note: no Stable Diffusion layout recognised; tensors keep their names") }
        }
    }
}
