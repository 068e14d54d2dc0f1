import ArgumentParser
import CheckpointFormats

/// How inputs are opened; shared by every command that reads a model.
struct InputOptions: ParsableArguments {
    @Flag(
        help: ArgumentHelp(
            "Read a checkpoint whose pickle names dangerous globals (os.system, eval, …).",
            discussion: "Nothing in a pickle is ever executed; without this flag such files are refused (exit 65)."))
    var allowUnsafeGlobals = false

    @Flag(help: "Print the underlying cause of errors.")
    var verbose = false

    @Option(
        help: ArgumentHelp(
            "Largest ratio of a PyTorch checkpoint's tensor bytes to the bytes it stores.",
            discussion:
                "Strided views can make a tiny file claim gigabytes; beyond this ratio (and 64 MiB) the file is refused (exit 65). Docs/torch-checkpoints.md."
        ))
    var maxExpansion: Int = TorchCheckpoint.defaultMaximumExpansion

    func validate() throws {
        guard maxExpansion >= 1 else { throw ValidationError("--max-expansion must be at least 1") }
    }

    var modelInputOptions: ModelInput.Options {
        ModelInput.Options(allowUnsafeGlobals: allowUnsafeGlobals, maximumExpansion: maxExpansion)
    }
}
