import ArgumentParser
import DiffusionEngine
import Foundation
import ModelLoading
import StrictJSON
import TensorCore

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prove that a converted model still generates what the original did.",
        discussion: """
            Runs the reference and the candidate through the same cascade (prompt, seed, \
            scheduler, size) with WeightPack's engine and compares, stage by stage, single passes \
            on identical inputs: the text embeddings, the UNet's guided noise prediction for the \
            reference's first latent, timestep and embeddings, and the VAE decode of the \
            reference's final latent (signal-to-noise ratio in dB, max abs error); then the \
            end-to-end result: final latent and image (PSNR, SSIM, max abs error). \
            Default thresholds depend on how the candidate's UNet is stored (F32, F16, BF16, int8, \
            or a ggml block type: Q8_0 … Q2_K) and \
            are documented in Docs/verify.md; --min-stage-snr and --min-image-psnr override them.

            The candidate computes as generate would (--compute, default auto: a model with \
            int8 or Q8_0 weights runs those products in integers where the processor has \
            AVX512_VNNI, one with BF16 weights on bfloat16 operands where it has AVX512_BF16), \
            so the proof covers the arithmetic you will generate with; the reference always \
            computes in f32. --compute bf16 is judged at BF16's thresholds.

            Merge proof: --lora FILE[:SCALE] (repeatable) is applied at run time to the reference \
            only, so `verify BASE MERGED --lora X:0.8` checks that MERGED (made by `weightpack \
            merge BASE X:0.8`) generates what BASE with the adapter applied on the fly does; a \
            merge at another scale fails (exit 1). --embedding FILE [--token NAME] is added to \
            both sides (an embedding is never merged into weights).

            Exit codes: 0 within thresholds; 1 a stage fell short (named on stderr); 64 usage \
            error; 65 unsupported or malformed model; 66 missing input; 69 --compute bf16 or int8 \
            on a processor without AVX512_BF16 or AVX512_VNNI.
            """)

    @Argument(help: "The original model.")
    var reference: String

    @Argument(help: "The converted model.")
    var candidate: String

    @OptionGroup var generation: GenerationOptions

    @OptionGroup var adapters: RuntimeAdapterOptions

    @Option(
        help:
            "Minimum SNR in dB of every single-pass stage (text, unet, vae); the final latent may be 5 dB lower (25 dB with --lora, whose run-time products round differently from a merged weight)."
    )
    var minStageSnr: Double?

    @Option(help: "Minimum PSNR in dB of the final image.")
    var minImagePsnr: Double?

    @Option(help: "Write reference.png, candidate.png, difference.png, comparison.png and report.json to this folder.")
    var report: String?

    @Option(help: "Gain of the difference heatmap (default: the largest pixel difference shows white).")
    var amplify: Float?

    @Flag(help: "Print one JSON document on stdout.")
    var json = false

    @OptionGroup var computeOptions: ComputeOptions

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        for (name, value) in [("--min-stage-snr", minStageSnr), ("--min-image-psnr", minImagePsnr)] {
            if let value, !value.isFinite { throw ValidationError("\(name) must be a finite number of dB") }
        }
        if let amplify, !(amplify.isFinite && amplify > 0) { throw ValidationError("--amplify must be a finite number above 0") }
    }

    func run() throws {
        try computeOptions.checkAvailable()
        try runReporting(verbose: inputOptions.verbose) {
            // --lora on the reference side only (the candidate is the merge); embeddings on both.
            let ref = try generation.open(reference, inputOptions: inputOptions, additions: try adapters.additions(inputOptions))
            let cand = try generation.open(candidate, inputOptions: inputOptions, additions: try adapters.additions(inputOptions, loras: false))
            let compute = computeOptions.precision(for: cand, verbose: inputOptions.verbose)
            let defaults = Verification.Thresholds.defaults(for: cand.weakestStorage(), compute: compute)
            let thresholds = Verification.Thresholds(
                stage: minStageSnr ?? defaults.stage, image: minImagePsnr ?? defaults.image, label: defaults.label,
                latentSlack: adapters.loras.isEmpty ? defaults.latentSlack : Verification.Thresholds.runtimeAdapterLatentSlack)
            let request = try generation.request(for: ref)
            let result = try Verification.verify(reference: ref, candidate: cand, request: request, thresholds: thresholds, compute: compute)
            var document = result.json(reference: reference, candidate: candidate)
            if !adapters.loras.isEmpty, case .object(var root) = document {
                root["reference_loras"] = .array(adapters.loras.map { JSONValue($0) })
                document = .object(root)
            }
            if let report {
                try result.writeFolder(report, document: document, amplify: amplify, software: "weightpack \(WeightPackCommand.version) verify")
            }
            if json {
                print(document.serialized(pretty: true))
            } else {
                printTable(result)
                if let report { print("report: \(report)") }
            }
            let failed = result.failedStages
            if let worst = failed.first {
                let unit = worst.judgedOnPSNR ? "PSNR" : "SNR"
                printError(
                    "weightpack: verify failed at stage '\(worst.name)': \(unit) \(Self.format(worst.value)) dB below the \(Self.format(worst.threshold)) dB threshold for \(thresholds.label) candidates"
                        + (failed.count > 1 ? " (also: \(failed.dropFirst().map(\.name).joined(separator: ", ")))" : ""))
                throw ExitCode(1)
            }
        }
    }

    static func format(_ x: Double) -> String {
        if x.isInfinite { return x > 0 ? "inf" : "-inf" }
        return String(format: "%.2f", x)
    }

    private func printTable(_ result: Verification.Report) {
        let request = result.request
        print(
            "verify: candidate weights \(result.thresholds.label)\(result.compute == .f32 || result.thresholds.label.hasSuffix(" compute") ? "" : ", \(result.compute.rawValue) compute"); \(result.scheduler.rawValue), \(request.steps) steps, seed \(request.seed), \(request.width)x\(request.height)"
        )
        print("stage     measure  value (dB)  threshold  max abs       SSIM    result")
        for s in result.stages {
            let measure = s.judgedOnPSNR ? "PSNR" : "SNR"
            let line =
                s.name.padding(toLength: 10, withPad: " ", startingAt: 0)
                + measure.padding(toLength: 9, withPad: " ", startingAt: 0)
                + Self.format(s.value).padding(toLength: 12, withPad: " ", startingAt: 0)
                + Self.format(s.threshold).padding(toLength: 11, withPad: " ", startingAt: 0)
                + String(format: "%.3e", s.metrics.maxAbsoluteError).padding(toLength: 14, withPad: " ", startingAt: 0)
                + (s.ssim.map { String(format: "%.5f", $0) } ?? "-").padding(toLength: 8, withPad: " ", startingAt: 0)
                + (s.passed ? "ok" : "FAIL")
            print(line)
        }
    }
}
