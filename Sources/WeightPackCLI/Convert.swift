import ArgumentParser
import CheckpointFormats
import MappedIO
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore
import Dispatch

extension DTypeChoice: ExpressibleByArgument {}
extension WeightSelection: ExpressibleByArgument {}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a model into a memory-mapped .wpk file.",
        discussion: """
            Floating-point tensors (F16, BF16, F32, F64) are cast as --dtype asks, rounding to
            nearest even; integer and boolean tensors are never cast. The output is written to a
            temporary file beside it and renamed into place only when complete.
            Exit codes: 0 done, 65 malformed input, 66 missing input, 73 output exists (without
            --force) or cannot be created, 74 I/O error.
            A recognised model is stored under canonical names (Formats/names.md) with its
            detected architecture and source layout, so export can give the layout back.
            Schedule buffers, EMA bookkeeping and other leftovers are left out unless --keep-extra.
            A checkpoint that holds EMA weights only (model_ema.*, no model.diffusion_model.*) is
            converted from them whatever --weights says, with a note on stderr.
            """)

    @Argument(help: "The model to convert: .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, a diffusers folder, or .wpk.")
    var input: String

    @Argument(help: "The .wpk file to write.")
    var output: String

    @Option(help: "Element type of floating-point tensors: keep, f32, f16, bf16, or int8 (weights in int8 blocks, the rest f16/f32; Docs/quantization.md).")
    var dtype: DTypeChoice = .keep

    @Option(name: .customLong("keep"), help: ArgumentHelp("With --dtype int8: keep tensors matching this pattern unquantised (repeatable; * and ?).", valueName: "GLOB"))
    var keepPatterns: [String] = []

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

    @Flag(help: ArgumentHelp(
        "Do not record the source file's SHA-256 (saves reading the whole input a second time).",
        discussion: "The .wpk then records the source's name, format and size only."))
    var noSourceHash = false

    @Flag(help: "Store CLIP position_ids as the integers 0..n-1 (repairs merge-damaged checkpoints).")
    var fixPositionIds = false

    @Option(help: "For diffusers folders: prefer weight files of this variant (e.g. fp16).")
    var variant: String?

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        guard (1...19).contains(compressionLevel) else { throw ValidationError("--compression-level must be between 1 and 19") }
        guard keepPatterns.isEmpty || dtype == .int8 else { throw ValidationError("--keep applies to --dtype int8 only") }
        for pattern in keepPatterns where pattern.contains(where: { "[]{}".contains($0) }) {
            throw ValidationError("--keep '\(pattern)': only * and ? are wildcards here; brackets and braces would match themselves")
        }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            var options = inputOptions.modelInputOptions
            options.variant = variant
            let source = try ModelInput.open(input, options: options)
            let model = try CanonicalModel(source, weights: weights, keepExtra: keepExtra)
            if model.ema.only, weights == .main {
                printError("note: \(input) holds EMA weights only (model_ema.*, no model.diffusion_model.*); the UNet is converted from them, as --weights ema would")
            }
            let store = model.store
            let sourceDigest = noSourceHash ? nil : SourceDigest.start(path: input)
            for pattern in keepPatterns where !store.tensors.contains(where: { Glob.matches(pattern, $0.name) }) {
                printError("note: --keep '\(pattern)' matches no tensor (patterns match the canonical names that weightpack inspect shows for the converted file)")
            }
            var plan = dtype == .int8
                ? OutputTensor.plan(from: store, rules: QuantizationRules(keep: keepPatterns))
                : OutputTensor.plan(from: store, dtype: dtype)
            for i in plan.indices {
                if let name = model.sourceName(of: plan[i].name) { plan[i].sourceName = name }
            }
            if fixPositionIds {
                let broken = Set(try model.brokenPositionIDs().map(\.tensor))
                for i in plan.indices where broken.contains(plan[i].name) {
                    let recipe = TensorRecipe(name: plan[i].name, dtype: .i64, shape: plan[i].shape, sources: [], operation: .positionIDs)
                    plan[i] = OutputTensor(name: plan[i].name, dtype: .i64, shape: plan[i].shape, sourceName: plan[i].sourceName, sourceDType: .i64, load: { try recipe.materialize(from: store) })
                    printError("repaired \(plan[i].sourceName): position_ids set to 0..\(plan[i].shape.count - 1)")
                }
            }
            let overflows = Float16Overflows()
            var metadata = JSONObject()
            metadata["tool"] = .string("weightpack \(WeightPackCommand.version)")
            var conversion = JSONObject([
                ("dtype", .string(dtype.rawValue)), ("compress", .bool(compress)), ("weights", .string(model.ema.selected ? "ema" : "main")),
                ("keep_extra", .bool(keepExtra)), ("fix_position_ids", .bool(fixPositionIds)),
            ])
            if model.ema.only { conversion["ema_only"] = true }
            metadata["conversion"] = .object(conversion)
            if model.isCanonical, let layout = model.layout {
                metadata["architecture"] = model.detection.json
                metadata["layout"] = layout.json
                if !model.leftovers.isEmpty {
                    metadata["leftovers"] = .array(model.leftovers.map { ["name": .string($0.descriptor.name), "kind": .string($0.kind.rawValue), "kept": .bool(keepExtra)] })
                }
                var files = JSONObject()
                for file in model.auxiliaryFiles {
                    if let text = String(validating: file.bytes, as: UTF8.self) { files[file.path] = .string(text) }
                }
                if files.count > 0 { metadata["diffusers_files"] = .object(files) }
            }
            let dropped = keepExtra || !model.isCanonical ? [] : model.leftovers
            metadata["strings"] = .object(JSONObject(store.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
            // The source digest is computed on the other core while tensors convert; the header
            // is written last, so it can still be recorded.
            let entries = try WPKWriter.write(
                plan, metadata: metadata, to: output, overwrite: force,
                options: WPKWriter.Options(compress: compress, compressionLevel: compressionLevel, float16Overflow: overflows.add),
                progress: TerminalProgress.make("convert"),
                finalizeMetadata: { meta in
                    var source = JSONObject()
                    source["name"] = .string(String(input.split(separator: "/").last ?? Substring(input)))
                    source["format"] = .string(store.formatName)
                    if let digest = try sourceDigest?.wait() {
                        source["size"] = JSONValue(digest.size)
                        source["sha256"] = .string(digest.sha256)
                    } else if let size = SourceDigest.size(of: input) {
                        source["size"] = JSONValue(size)
                    }
                    meta["source"] = .object(source)
                })
            let stored = entries.reduce(0) { $0 + $1.length }
            let logical = entries.reduce(0) { $0 + $1.descriptor.byteCount }
            var line = "wrote \(output): \(entries.count) tensors, \(formatBytes(stored))"
            if compress, stored > 0 { line += " (compression ratio \(format1(Double(logical) / Double(stored))))" }
            printError(line)
            if dtype == .int8 { printError(QuantizationSummary(entries).line) }
            overflows.report()
            if !dropped.isEmpty {
                printError("left out \(dropped.count) leftover tensors (\(Set(dropped.map(\.kind.rawValue)).sorted().joined(separator: ", "))); --keep-extra keeps them")
            }
            if !model.isCanonical { printError("note: no Stable Diffusion layout recognised; tensors keep their names") }
        }
    }
}

/// Tensors whose finite values became infinite in f16 (the classic black-image VAE), collected
/// while converting: the check costs no extra pass over the model.
final class Float16Overflows: @unchecked Sendable {
    private var hits: [(String, Int)] = []

    func add(_ tensor: String, _ count: Int) { hits.append((tensor, count)) }

    /// One warning line per tensor (at most ten) on stderr.
    func report() {
        for (name, count) in hits.prefix(10) {
            printError("weightpack: warning: \(name): \(count) values beyond ±65504 became infinite in f16")
        }
        if hits.count > 10 { printError("weightpack: warning: \(hits.count - 10) more tensors overflowed f16") }
    }
}
