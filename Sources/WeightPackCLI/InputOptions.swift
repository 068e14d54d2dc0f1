import ArgumentParser
import CheckpointFormats

/// How inputs are opened; shared by every command that reads a model.
struct InputOptions: ParsableArguments {
    @Flag(help: ArgumentHelp(
        "Read a checkpoint whose pickle names dangerous globals (os.system, eval, …).",
        discussion: "Nothing in a pickle is ever executed; without this flag such files are refused (exit 65)."))
    var allowUnsafeGlobals = false

    @Flag(help: "Print the underlying cause of errors.")
    var verbose = false

    var modelInputOptions: ModelInput.Options { ModelInput.Options(allowUnsafeGlobals: allowUnsafeGlobals) }
}
