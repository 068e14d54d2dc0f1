import ArgumentParser
import CheckpointFormats
import MappedIO
import StrictJSON
import TensorCore
import Dispatch

extension DTypeChoice: ExpressibleByArgument {}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a model into a memory-mapped .wpk file.",
        discussion: """
            Floating-point tensors (F16, BF16, F32, F64) are cast as --dtype asks, rounding to
            nearest even; integer and boolean tensors are never cast. The output is written to a
            temporary file beside it and renamed into place only when complete.
            Exit codes: 0 done, 65 malformed input, 66 missing input, 73 output exists (without
            --force) or cannot be created, 74 I/O error.
            """)

    @Argument(help: "The model to convert: .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin, or .wpk.")
    var input: String

    @Argument(help: "The .wpk file to write.")
    var output: String

    @Option(help: "Element type of floating-point tensors: keep, f32, f16 or bf16.")
    var dtype: DTypeChoice = .keep

    @Flag(help: "Store floating-point tensors as zstd-compressed byte planes (lossless, smaller, not zero-copy).")
    var compress = false

    @Option(help: "zstd level for --compress (1-19).")
    var compressionLevel: Int32 = 3

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        guard (1...19).contains(compressionLevel) else { throw ValidationError("--compression-level must be between 1 and 19") }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let store = try inputOptions.open(input)
            let sourceDigest = SourceDigest.start(path: input)
            let plan = OutputTensor.plan(from: store, dtype: dtype)
            var metadata = JSONObject()
            metadata["tool"] = .string("weightpack \(WeightPackCommand.version)")
            metadata["conversion"] = ["dtype": .string(dtype.rawValue), "compress": .bool(compress)]
            metadata["strings"] = .object(JSONObject(store.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
            // The source digest is computed on the other core while tensors convert; the header
            // is written last, so it can still be recorded.
            let entries = try WPKWriter.write(
                plan, metadata: metadata, to: output, overwrite: force,
                options: WPKWriter.Options(compress: compress, compressionLevel: compressionLevel),
                progress: TerminalProgress.make("convert"),
                finalizeMetadata: { meta in
                    var source = JSONObject()
                    source["name"] = .string(String(input.split(separator: "/").last ?? Substring(input)))
                    source["format"] = .string(store.formatName)
                    if let digest = try sourceDigest?.wait() {
                        source["size"] = JSONValue(digest.size)
                        source["sha256"] = .string(digest.sha256)
                    }
                    meta["source"] = .object(source)
                })
            let stored = entries.reduce(0) { $0 + $1.length }
            let logical = entries.reduce(0) { $0 + $1.descriptor.byteCount }
            var line = "wrote \(output): \(entries.count) tensors, \(formatBytes(stored))"
            if compress, stored > 0 { line += " (compression ratio \(format1(Double(logical) / Double(stored))))" }
            printError(line)
        }
    }
}
