import ArgumentParser
import CheckpointFormats
import TensorCore

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model back out as a .safetensors file.",
        discussion: """
            From a .wpk file, tensors get back the names they had in the source and come out in
            the source's order; with --dtype keep their bytes are exactly the stored ones
            (compressed tensors are decompressed). File metadata becomes __metadata__.
            Exit codes: 0 done, 65 malformed input, 66 missing input, 73 output exists (without
            --force) or cannot be created, 74 I/O error.
            """)

    enum Layout: String, ExpressibleByArgument, CaseIterable {
        case source
    }

    @Argument(help: "The model to export: .wpk, .safetensors (or an index of shards), .ckpt/.pt/.pth/.bin.")
    var input: String

    @Argument(help: "The .safetensors file to write.")
    var output: String

    @Option(help: "Tensor naming of the output: source (the names the model came with).")
    var layout: Layout = .source

    @Option(help: "Element type of floating-point tensors: keep, f32, f16 or bf16.")
    var dtype: DTypeChoice = .keep

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let store = try inputOptions.open(input)
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
}
