import ArgumentParser

/// The `weightpack` command: its subcommands are the command-line contract of product.md.
public struct WeightPackCommand: ParsableCommand {
    public static let version = "0.1.0"

    public static let configuration = CommandConfiguration(
        commandName: "weightpack",
        abstract: "Convert, inspect and verify Stable Diffusion weights.",
        discussion: """
            Inputs may be .safetensors files (or a *.safetensors.index.json of shards), PyTorch \
            checkpoints (.ckpt, .pt, .pth, .bin; zip or legacy, read without executing their pickle), \
            GGUF files (stable-diffusion.cpp's and ComfyUI-GGUF's), diffusers folders and .wpk files. Everything here is a call into the ModelLoading \
            and Adapters libraries.

            Exit codes: 0 done; 1 a check found a problem; 64 usage error; 65 input malformed, \
            unsupported or refused as unsafe; 66 input missing or unreadable; 69 this processor \
            lacks the vector instructions the build was compiled for (only builds made with \
            WEIGHTPACK_TARGET_CPU; the default build chooses its kernels at run time); 73 output \
            cannot be created (exists without --force, is the input, no space); 74 I/O error \
            while reading or writing.
            """,
        version: version,
        subcommands: [
            Inspect.self, Convert.self, Export.self, Merge.self, Check.self, Scan.self, Diff.self, Tokenize.self, Generate.self, Trace.self,
            Verify.self, Version.self,
        ])

    public init() {}
}
