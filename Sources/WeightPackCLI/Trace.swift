import ArgumentParser
import ModelLoading

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Record the intermediate tensors of one generation in a safetensors file.",
        discussion: """
            Writes tokens.cond, tokens.uncond (I64 [77]), text.cond, text.uncond (F32 [77, D]), \
            latents.initial, then for each loop iteration i (from 0) noise_pred.i (after guidance) \
            and latents.i, and image (F32 [H, W, 3] in [0, 1], before 8-bit rounding). \
            SDXL adds text.pooled.cond and text.pooled.uncond. --lora and --embedding apply \
            adapters and embeddings at run time as for generate, and --compute chooses the \
            UNet's arithmetic as for generate (default auto), so the trace holds what generate \
            computes. Exit codes as for generate.
            """)

    @Argument(help: "The model (ckpt, safetensors, diffusers folder, .wpk).")
    var model: String

    @OptionGroup var generation: GenerationOptions

    @OptionGroup var adapters: RuntimeAdapterOptions

    @Option(name: .shortAndLong, help: "The safetensors file to write.")
    var output: String

    @Flag(help: "Replace the output if it exists.")
    var force = false

    @OptionGroup var computeOptions: ComputeOptions

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        guard generation.latents != nil else { throw ValidationError("trace needs --latents FILE (the initial noise)") }
    }

    func run() throws {
        try computeOptions.checkAvailable()
        try runReporting(verbose: inputOptions.verbose) {
            let engine = try generation.open(model, inputOptions: inputOptions, additions: try adapters.additions(inputOptions))
            var request = try generation.request(for: engine)
            request.computePrecision = computeOptions.precision(for: engine, verbose: inputOptions.verbose)
            let trace = GenerationTrace()
            _ = try engine.pipeline.generate(request, observer: trace.observe)
            try trace.write(to: output, overwrite: force, compute: request.computePrecision)
            print(output)
        }
    }
}
