import ArgumentParser

public struct WeightPackCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "weightpack",
        abstract: "Convert, inspect and verify Stable Diffusion weights.")
    public init() {}
}
