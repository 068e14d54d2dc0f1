import ArgumentParser
import DiffusionEngine
import Foundation
import StrictJSON
import TensorCore

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prove that a converted model still generates what the original did.",
        discussion: """
            Runs the reference and the candidate through the same cascade (prompt, seed,
            scheduler, size) with WeightPack's engine and compares, stage by stage, single passes
            on identical inputs: the text embeddings, the UNet's guided noise prediction for the
            reference's first latent, timestep and embeddings, and the VAE decode of the
            reference's final latent (signal-to-noise ratio in dB, max abs error); then the
            end-to-end result: final latent and image (PSNR, SSIM, max abs error).
            Default thresholds depend on the candidate's UNet dtype (F32, F16, BF16, int8) and
            are documented in Docs/verify.md; --min-stage-snr and --min-image-psnr override them.
            Exit codes: 0 within thresholds; 1 a stage fell short (named on stderr); 64 usage
            error; 65 unsupported or malformed model; 66 missing input.
            """)

    @Argument(help: "The original model.")
    var reference: String

    @Argument(help: "The converted model.")
    var candidate: String

    @OptionGroup var generation: GenerationOptions

    @Option(help: "Minimum SNR in dB of every single-pass stage (text, unet, vae); the final latent may be 5 dB lower.")
    var minStageSnr: Double?

    @Option(help: "Minimum PSNR in dB of the final image.")
    var minImagePsnr: Double?

    @Option(help: "Write reference.png, candidate.png, difference.png, comparison.png and report.json to this folder.")
    var report: String?

    @Option(help: "Gain of the difference heatmap (default: the largest pixel difference shows white).")
    var amplify: Float?

    @Flag(help: "Print one JSON document on stdout.")
    var json = false

    @OptionGroup var inputOptions: InputOptions

    /// Default thresholds per candidate UNet dtype: (stage SNR, image PSNR) in dB.
    static func thresholds(for dtype: DType) -> (stage: Double, image: Double, label: String) {
        switch dtype {
        case .f32, .f64: (80, 60, "F32")
        case .f16: (40, 45, "F16")
        case .bf16: (20, 32, "BF16")
        default: (20, 32, "int8")
        }
    }

    struct Stage {
        var name: String
        var metrics: ParityMetrics
        var ssim: Double?
        var threshold: Double
        /// SNR for single passes and latents, PSNR for the image.
        var judgedOnPSNR: Bool
        var value: Double { judgedOnPSNR ? metrics.psnr : metrics.snr }
        var passed: Bool { !metrics.nonFinite && value >= threshold }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let ref = try EngineModel(path: reference, inputOptions: inputOptions)
            let cand = try EngineModel(path: candidate, inputOptions: inputOptions)
            let dtype = cand.unetDType
            let defaults = Self.thresholds(for: dtype)
            let stageMinimum = minStageSnr ?? defaults.stage, imageMinimum = minImagePsnr ?? defaults.image
            let request = try generation.request(for: ref)
            _ = try generation.request(for: cand)
            let kind = ref.pipeline.schedulerKind(for: request)
            var stages: [Stage] = []

            // Single passes on identical inputs.
            let refText = try ref.pipeline.encode(prompt: request.prompt, negativePrompt: request.negativePrompt, width: request.width, height: request.height)
            let candText = try cand.pipeline.encode(prompt: request.prompt, negativePrompt: request.negativePrompt, width: request.width, height: request.height)
            guard refText.embeddings.shape == candText.embeddings.shape else {
                throw EngineModelError("the models' text embeddings differ in shape: \(refText.embeddings.shape) vs \(candText.embeddings.shape)")
            }
            stages.append(Stage(name: "text", metrics: ParityMetrics(reference: refText.embeddings.scalars, candidate: candText.embeddings.scalars),
                                threshold: stageMinimum, judgedOnPSNR: false))

            var initial: FloatTensor? = nil
            let refRun = try ref.pipeline.generate(request) { event in
                if case .initialLatents(let l) = event { initial = l }
            }
            let scheduler = try SchedulerFactory.make(kind, configuration: ref.pipeline.schedulerConfiguration, steps: request.steps,
                                                      predictionType: request.predictionType, timestepSpacing: request.timestepSpacing)
            let shape = refRun.latents.shape
            let first = initial!.scalars
            let refNoise = try ref.pipeline.noisePrediction(latents: first, shape: shape, scale: scheduler.inputScale(at: 0),
                                                            timestep: scheduler.timesteps[0], conditioning: refText).scalars
            let candNoise = try cand.pipeline.noisePrediction(latents: first, shape: shape, scale: scheduler.inputScale(at: 0),
                                                              timestep: scheduler.timesteps[0], conditioning: refText).scalars
            stages.append(Stage(name: "unet", metrics: ParityMetrics(reference: refNoise, candidate: candNoise), threshold: stageMinimum, judgedOnPSNR: false))
            let candDecoded = try cand.pipeline.vae.decodeImage(latents: refRun.latents)
            stages.append(Stage(name: "vae", metrics: ParityMetrics(reference: refRun.image.scalars, candidate: candDecoded.scalars, peak: 1),
                                threshold: stageMinimum, judgedOnPSNR: false))

            // End to end.
            let candRun = try cand.pipeline.generate(request)
            // Sampling amplifies small differences: the final latent gets 5 dB of slack.
            stages.append(Stage(name: "latents", metrics: ParityMetrics(reference: refRun.latents.scalars, candidate: candRun.latents.scalars),
                                threshold: stageMinimum - 5, judgedOnPSNR: false))
            stages.append(Stage(name: "image", metrics: ParityMetrics(reference: refRun.image.scalars, candidate: candRun.image.scalars, peak: 1),
                                ssim: ParityMetrics.ssim(reference: refRun.image, candidate: candRun.image),
                                threshold: imageMinimum, judgedOnPSNR: true))

            let failed = stages.filter { !$0.passed }
            let document = Self.document(stages: stages, request: request, scheduler: kind, dtype: defaults.label,
                                         reference: reference, candidate: candidate, passed: failed.isEmpty)
            if let report {
                try writeReport(to: report, reference: refRun.image, candidate: candRun.image, document: document)
            }
            if json {
                print(document.serialized(pretty: true))
            } else {
                printTable(stages, dtype: defaults.label, request: request, scheduler: kind)
                if let report { print("report: \(report)") }
            }
            if let worst = failed.first {
                let unit = worst.judgedOnPSNR ? "PSNR" : "SNR"
                printError("weightpack: verify failed at stage '\(worst.name)': \(unit) \(Self.format(worst.value)) dB below the \(Self.format(worst.threshold)) dB threshold for \(defaults.label) candidates"
                           + (failed.count > 1 ? " (also: \(failed.dropFirst().map(\.name).joined(separator: ", ")))" : ""))
                throw ExitCode(1)
            }
        }
    }

    static func format(_ x: Double) -> String {
        if x.isInfinite { return x > 0 ? "inf" : "-inf" }
        return String(format: "%.2f", x)
    }

    private func printTable(_ stages: [Stage], dtype: String, request: StableDiffusionPipeline.Request, scheduler: SchedulerKind) {
        print("verify: candidate UNet \(dtype); \(scheduler.rawValue), \(request.steps) steps, seed \(request.seed), \(request.width)x\(request.height)")
        print("stage     measure  value (dB)  threshold  max abs       SSIM    result")
        for s in stages {
            let measure = s.judgedOnPSNR ? "PSNR" : "SNR"
            let line = s.name.padding(toLength: 10, withPad: " ", startingAt: 0)
                + measure.padding(toLength: 9, withPad: " ", startingAt: 0)
                + Self.format(s.value).padding(toLength: 12, withPad: " ", startingAt: 0)
                + Self.format(s.threshold).padding(toLength: 11, withPad: " ", startingAt: 0)
                + String(format: "%.3e", s.metrics.maxAbsoluteError).padding(toLength: 14, withPad: " ", startingAt: 0)
                + (s.ssim.map { String(format: "%.5f", $0) } ?? "-").padding(toLength: 8, withPad: " ", startingAt: 0)
                + (s.passed ? "ok" : "FAIL")
            print(line)
        }
    }

    static func number(_ x: Double) -> JSONValue { x.isFinite ? JSONValue(x) : JSONValue(x > 0 ? "inf" : "-inf") }

    static func document(stages: [Stage], request: StableDiffusionPipeline.Request, scheduler: SchedulerKind, dtype: String,
                         reference: String, candidate: String, passed: Bool) -> JSONValue {
        var list: [JSONValue] = []
        for s in stages {
            var o = JSONObject([
                ("stage", JSONValue(s.name)), ("kind", JSONValue(["text", "unet", "vae"].contains(s.name) ? "single-pass" : "end-to-end")),
                ("snr_db", number(s.metrics.snr)), ("psnr_db", number(s.metrics.psnr)),
                ("max_abs_error", number(s.metrics.maxAbsoluteError)), ("mean_abs_error", number(s.metrics.meanAbsoluteError)),
                ("judged_on", JSONValue(s.judgedOnPSNR ? "psnr_db" : "snr_db")), ("threshold_db", number(s.threshold)),
                ("passed", .bool(s.passed)),
            ])
            if let ssim = s.ssim { o["ssim"] = number(ssim) }
            list.append(.object(o))
        }
        let settings = JSONObject([
            ("prompt", JSONValue(request.prompt)), ("negative_prompt", JSONValue(request.negativePrompt)),
            ("steps", JSONValue(request.steps)), ("guidance", JSONValue(Double(request.guidanceScale))), ("seed", JSONValue(Int(request.seed))),
            ("width", JSONValue(request.width)), ("height", JSONValue(request.height)), ("scheduler", JSONValue(scheduler.rawValue)),
        ])
        return .object(JSONObject([
            ("reference", JSONValue(reference)), ("candidate", JSONValue(candidate)), ("candidate_dtype", JSONValue(dtype)),
            ("passed", .bool(passed)), ("failed_stages", .array(stages.filter { !$0.passed }.map { JSONValue($0.name) })),
            ("settings", .object(settings)),
            ("stages", .array(list)),
        ]))
    }

    /// The images side by side and a heatmap of `gain * |reference - candidate|` (mean over channels);
    /// the gain makes the largest difference white unless `--amplify` sets it.
    private func writeReport(to folder: String, reference: FloatTensor, candidate: FloatTensor, document: JSONValue) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let (h, w) = (reference.shape[0], reference.shape[1])
        let r = reference.scalars, c = candidate.scalars
        var heat = [Float](repeating: 0, count: h * w * 3)
        var differences = [Float](repeating: 0, count: h * w)
        for p in 0..<(h * w) {
            var sum: Float = 0
            for ch in 0..<3 { sum += abs(r[3 * p + ch] - c[3 * p + ch]) }
            differences[p] = sum / 3
        }
        // A near-perfect conversion differs by a thousandth: scale so its largest difference shows.
        let largest = differences.max() ?? 0
        let gain = amplify ?? (largest > 0 ? 1 / largest : 1)
        for p in 0..<(h * w) {
            let v = min(1, differences[p] * gain)
            // Black → red → yellow → white.
            heat[3 * p] = min(1, 3 * v)
            heat[3 * p + 1] = min(1, max(0, 3 * v - 1))
            heat[3 * p + 2] = min(1, max(0, 3 * v - 2))
        }
        let gap = 4
        let wide = FloatTensor(shape: [h, 3 * w + 2 * gap, 3])
        wide.withUnsafeMutableBufferPointer { $0.update(repeating: 1) }
        for (k, image) in [r, c, heat].enumerated() {
            wide.withUnsafeMutableBufferPointer { out in
                for y in 0..<h {
                    for x in 0..<w {
                        for ch in 0..<3 { out[(y * (3 * w + 2 * gap) + k * (w + gap) + x) * 3 + ch] = image[(y * w + x) * 3 + ch] }
                    }
                }
            }
        }
        let text = [("Software", "weightpack \(WeightPackCommand.version) verify"),
                    ("Comment", "difference heatmap gain \(gain) (largest mean pixel difference \(largest))")]
        var document = document
        if case .object(var root) = document {
            root["heatmap"] = ["gain": JSONValue(Double(gain)), "largest_pixel_difference": JSONValue(Double(largest))]
            document = .object(root)
        }
        try writeFile(try PNGImage.encode(reference, text: text), to: folder + "/reference.png", overwrite: true)
        try writeFile(try PNGImage.encode(candidate, text: text), to: folder + "/candidate.png", overwrite: true)
        try writeFile(try PNGImage.encode(FloatTensor(shape: [h, w, 3], values: heat), text: text), to: folder + "/difference.png", overwrite: true)
        try writeFile(try PNGImage.encode(wide, text: text), to: folder + "/comparison.png", overwrite: true)
        try writeFile(Array((document.serialized(pretty: true) + "\n").utf8), to: folder + "/report.json", overwrite: true)
    }
}
