import DiffusionEngine
import Foundation
import MappedIO
import Quantization
import StrictJSON
import TensorCore

/// Proves that a converted model still generates what the original did: the reference and the
/// candidate run through the same cascade (prompt, seed, scheduler, size) and are compared stage
/// by stage on identical inputs (text embeddings, the UNet's noise prediction for the
/// reference's first latent, the VAE decode of the reference's final latent), then end to end
/// (final latent, image). Thresholds are in `Docs/verify.md`.
///
/// ```swift
/// let report = try Verification.verify(reference: original, candidate: converted, request: request)
/// print(report.passed ? "ok" : "failed at \(report.failedStages.map(\.name))")
/// ```
public enum Verification {
    /// Minimum SNR of every single-pass stage and PSNR of the final image, in dB.
    public struct Thresholds: Sendable, Hashable {
        public var stage: Double
        public var image: Double
        /// The candidate dtype the defaults were chosen for (`F32`, `F16`, `BF16`, `int8`).
        public var label: String
        /// How far below `stage` the final latent may be: sampling amplifies small differences.
        public var latentSlack: Double

        public init(stage: Double, image: Double, label: String, latentSlack: Double = 5) {
            self.stage = stage
            self.image = image
            self.label = label
            self.latentSlack = latentSlack
        }

        /// The final latent's slack when the reference applies adapters at run time (`verify
        /// --lora`, a merge proof). The adapter's product is then added after the layer's own
        /// (`RuntimeAdapterTable`), not folded into the weight as the merged file holds it, so the
        /// two sides differ by float reassociation, which sampling amplifies by an amount that
        /// depends on the kernels: the tiny fixture's F32 merge measured 83.9 dB with AVX2
        /// kernels and 72.1 dB with AVX-512 ones (single-pass stages 111 to 113 dB); a merge at
        /// the wrong scale (10 % off) measures 32 dB there and fails every single-pass stage.
        public static let runtimeAdapterLatentSlack: Double = 25

        /// The defaults for a candidate whose UNet is stored as `dtype` (`I8` meaning int8 blocks).
        public static func defaults(for dtype: DType) -> Thresholds {
            defaults(for: dtype == .i8 ? .int8 : .plain(dtype))
        }

        /// The defaults for a candidate whose UNet is stored as `storage` (Docs/verify.md gives
        /// the measurements behind each figure).
        public static func defaults(for storage: WeightStorage) -> Thresholds {
            let label = storage.label
            switch storage {
            case .plain(.f32), .plain(.f64): return Thresholds(stage: 80, image: 60, label: "F32")
            case .plain(.f16): return Thresholds(stage: 40, image: 45, label: "F16")
            case .plain(.bf16): return Thresholds(stage: 20, image: 32, label: "BF16")
            case .plain: return Thresholds(stage: 20, image: 32, label: label)
            case .int8: return Thresholds(stage: 20, image: 32, label: "int8")
            case .blocks(let type):
                let (stage, image) = blockDefaults[type] ?? (stage: 0, image: 4)
                return Thresholds(stage: stage, image: image, label: label)
            }
        }

        /// The defaults for a candidate whose weights are stored as `storage` and whose UNet
        /// computes in `compute`: those of the less precise of the two. Rounding products to
        /// bfloat16 is judged as BF16 weights are; int8 compute only ever multiplies int8 or
        /// Q8_0 weights, whose own thresholds already hold it (Docs/verify.md, "Compute").
        public static func defaults(for storage: WeightStorage, compute: ComputePrecision) -> Thresholds {
            let stored = defaults(for: storage)
            let arithmetic: Thresholds
            switch compute {
            case .f32: return stored
            case .bf16: arithmetic = defaults(for: .plain(.bf16))
            case .int8: arithmetic = defaults(for: .int8)
            }
            guard (arithmetic.stage, arithmetic.image) < (stored.stage, stored.image) else { return stored }
            return Thresholds(stage: arithmetic.stage, image: arithmetic.image, label: "\(stored.label) in \(compute.rawValue) compute")
        }

        /// Stage SNR and image PSNR floors per ggml block type, by bits per weight, a few dB
        /// under the lowest each measured on the tiny fixture and on the full-size random SD 1.5
        /// model (Docs/verify.md, "ggml block types"). 8-bit types share int8's.
        static let blockDefaults: [GGMLType: (stage: Double, image: Double)] = [
            .q8_0: (20, 32),
            .q6_K: (16, 28),
            .q5_0: (11, 20), .q5_1: (11, 20), .q5_K: (11, 20),
            .q4_0: (7, 13), .q4_1: (7, 13), .q4_K: (7, 13), .iq4_NL: (7, 13), .iq4_XS: (7, 13),
            .q3_K: (3, 8),
            .q2_K: (0, 4),
        ]
    }

    /// One compared stage.
    public struct Stage: Sendable {
        public var name: String
        public var metrics: ParityMetrics
        public var ssim: Double?
        public var threshold: Double
        /// SNR for single passes and latents, PSNR for the image.
        public var judgedOnPSNR: Bool
        public var value: Double { judgedOnPSNR ? metrics.psnr : metrics.snr }
        public var passed: Bool { !metrics.nonFinite && value >= threshold }
        /// Whether the stage is a single pass on identical inputs (else end to end).
        public var isSinglePass: Bool { ["text", "unet", "vae"].contains(name) }
    }

    /// What `verify` found.
    public struct Report {
        public var stages: [Stage]
        public var request: StableDiffusionPipeline.Request
        public var scheduler: SchedulerKind
        public var thresholds: Thresholds
        /// The arithmetic of the candidate's UNet products (the reference computes in f32).
        public var compute: ComputePrecision = .f32
        /// The two final images, `[H, W, 3]` in [0, 1].
        public var referenceImage: FloatTensor
        public var candidateImage: FloatTensor

        public var failedStages: [Stage] { stages.filter { !$0.passed } }
        public var passed: Bool { failedStages.isEmpty }

        /// The report as one JSON document (what `verify --json` prints and `report.json` holds).
        public func json(reference: String, candidate: String) -> JSONValue {
            func number(_ x: Double) -> JSONValue { x.isFinite ? JSONValue(x) : JSONValue(x > 0 ? "inf" : "-inf") }
            var list: [JSONValue] = []
            for s in stages {
                var o = JSONObject([
                    ("stage", JSONValue(s.name)), ("kind", JSONValue(s.isSinglePass ? "single-pass" : "end-to-end")),
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
                ("steps", JSONValue(request.steps)), ("guidance", JSONValue(Double(request.guidanceScale))), ("seed", .uint(request.seed)),
                ("width", JSONValue(request.width)), ("height", JSONValue(request.height)), ("scheduler", JSONValue(scheduler.rawValue)),
            ])
            return .object(
                JSONObject([
                    ("reference", JSONValue(reference)), ("candidate", JSONValue(candidate)), ("candidate_dtype", JSONValue(thresholds.label)),
                    ("candidate_compute", JSONValue(compute.rawValue)),
                    ("passed", .bool(passed)), ("failed_stages", .array(failedStages.map { JSONValue($0.name) })),
                    ("settings", .object(settings)),
                    ("stages", .array(list)),
                ]))
        }

        /// Writes reference.png, candidate.png, difference.png (a heatmap of `gain * |reference -
        /// candidate|`, mean over channels; the gain makes the largest difference white unless
        /// `amplify` sets it), comparison.png (the three side by side) and report.json.
        ///
        /// The folder is written as every output is (``AtomicFolder``): a new folder appears
        /// whole; an existing report folder (one with report.json) or an empty one gets these
        /// files replaced and keeps every other; anything else (a file, a folder of other
        /// files, a folder holding an input) is refused with an `IOError` (exit 73).
        public func writeFolder(_ folder: String, document: JSONValue, amplify: Float? = nil, software: String) throws {
            let output = try AtomicFolder(path: folder, overwrite: true, marker: "report.json")
            let (h, w) = (referenceImage.shape[0], referenceImage.shape[1])
            let r = referenceImage.scalars, c = candidateImage.scalars
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
            let text = [
                ("Software", software),
                ("Comment", "difference heatmap gain \(gain) (largest mean pixel difference \(largest))"),
            ]
            var document = document
            if case .object(var root) = document {
                root["heatmap"] = ["gain": JSONValue(Double(gain)), "largest_pixel_difference": JSONValue(Double(largest))]
                document = .object(root)
            }
            try output.write("reference.png", bytes: try PNGImage.encode(referenceImage, text: text))
            try output.write("candidate.png", bytes: try PNGImage.encode(candidateImage, text: text))
            try output.write("difference.png", bytes: try PNGImage.encode(FloatTensor(shape: [h, w, 3], values: heat), text: text))
            try output.write("comparison.png", bytes: try PNGImage.encode(wide, text: text))
            try output.write("report.json", bytes: Array((document.serialized(pretty: true) + "\n").utf8))
            try output.commit()
        }
    }

    /// The reference's half of a verification: its text embeddings, its generation and its
    /// noise prediction for the first latent. Computed once, it can be compared with any number
    /// of candidates (``verify(_:candidate:thresholds:)``): the quality budget proves several
    /// files against the same source.
    public struct ReferenceRun {
        public let request: StableDiffusionPipeline.Request
        let text: StableDiffusionPipeline.Conditioning
        let output: StableDiffusionPipeline.Output
        let timestep: Float, inputScale: Float
        let noise: [Float]
        let scheduler: SchedulerKind

        /// Runs `reference` through `request`.
        /// - Parameter observer: the generation's events (its `.schedule` first), for progress.
        public init(
            _ reference: StableDiffusionModel, request: StableDiffusionPipeline.Request,
            observer: ((StableDiffusionPipeline.Event) -> Void)? = nil
        ) throws {
            let ref = reference.pipeline
            self.request = request
            text = try ref.encode(prompt: request.prompt, negativePrompt: request.negativePrompt, width: request.width, height: request.height)
            output = try ref.generate(request, observer: observer)
            let scheduler = try ref.scheduler(for: request)
            timestep = scheduler.timesteps[0]
            inputScale = scheduler.inputScale(at: 0)
            noise = try ref.noisePrediction(
                latents: output.initialLatents.scalars, shape: output.latents.shape, scale: inputScale, timestep: timestep, conditioning: text
            ).scalars
            self.scheduler = ref.schedulerKind(for: request)
        }
    }

    /// Runs both models and compares them.
    ///
    /// - Parameters:
    ///   - request: the generation both run (its size, seed, sampler and every sampler setting).
    ///   - thresholds: `nil` takes the defaults for the candidate's storage and `compute`.
    ///   - compute: the arithmetic of the candidate's UNet products in its noise prediction and
    ///     its generation (the reference's are f32 whatever `request` says); it must be
    ///     available (``UNet2DConditionModel/checkAvailable(_:)``).
    ///   - observer: the reference's generation events (its `.schedule` first), for progress.
    public static func verify(
        reference: StableDiffusionModel, candidate: StableDiffusionModel, request: StableDiffusionPipeline.Request,
        thresholds: Thresholds? = nil, compute: ComputePrecision = .f32,
        observer: ((StableDiffusionPipeline.Event) -> Void)? = nil
    ) throws -> Report {
        try UNet2DConditionModel.checkAvailable(compute)
        var request = request
        request.computePrecision = .f32
        return try verify(
            ReferenceRun(reference, request: request, observer: observer), candidate: candidate, thresholds: thresholds, compute: compute)
    }

    /// Runs `candidate` as `reference` ran and compares them: the single passes on the
    /// reference's inputs (its prompt, first latent and final latent), then end to end.
    /// - Parameters:
    ///   - thresholds: `nil` takes the defaults for the candidate's storage and `compute`.
    ///   - compute: the arithmetic of the candidate's UNet products (see above).
    public static func verify(
        _ reference: ReferenceRun, candidate: StableDiffusionModel, thresholds: Thresholds? = nil, compute: ComputePrecision = .f32
    ) throws -> Report {
        try UNet2DConditionModel.checkAvailable(compute)
        let thresholds = thresholds ?? .defaults(for: candidate.weakestStorage(), compute: compute)
        var request = reference.request
        request.computePrecision = compute
        let cand = candidate.pipeline
        var stages: [Stage] = []

        // Single passes on identical inputs.
        let candText = try cand.encode(prompt: request.prompt, negativePrompt: request.negativePrompt, width: request.width, height: request.height)
        guard reference.text.embeddings.shape == candText.embeddings.shape else {
            throw ModelLoadingError(
                .notAModel, "the models' text embeddings differ in shape: \(reference.text.embeddings.shape) vs \(candText.embeddings.shape)")
        }
        stages.append(
            Stage(
                name: "text", metrics: ParityMetrics(reference: reference.text.embeddings.scalars, candidate: candText.embeddings.scalars),
                threshold: thresholds.stage, judgedOnPSNR: false))

        let refRun = reference.output
        let precision = cand.unet.computePrecision
        cand.unet.computePrecision = compute
        defer { cand.unet.computePrecision = precision }
        let candNoise = try cand.noisePrediction(
            latents: refRun.initialLatents.scalars, shape: refRun.latents.shape, scale: reference.inputScale,
            timestep: reference.timestep, conditioning: reference.text
        ).scalars
        stages.append(
            Stage(
                name: "unet", metrics: ParityMetrics(reference: reference.noise, candidate: candNoise), threshold: thresholds.stage,
                judgedOnPSNR: false))
        let candDecoded = try cand.vae.decodeImage(latents: refRun.latents)
        stages.append(
            Stage(
                name: "vae", metrics: ParityMetrics(reference: refRun.image.scalars, candidate: candDecoded.scalars, peak: 1),
                threshold: thresholds.stage, judgedOnPSNR: false))

        // End to end.
        let candRun = try cand.generate(request)
        // Sampling amplifies small differences: the final latent gets some slack.
        stages.append(
            Stage(
                name: "latents", metrics: ParityMetrics(reference: refRun.latents.scalars, candidate: candRun.latents.scalars),
                threshold: thresholds.stage - thresholds.latentSlack, judgedOnPSNR: false))
        stages.append(
            Stage(
                name: "image", metrics: ParityMetrics(reference: refRun.image.scalars, candidate: candRun.image.scalars, peak: 1),
                ssim: ParityMetrics.ssim(reference: refRun.image, candidate: candRun.image),
                threshold: thresholds.image, judgedOnPSNR: true))
        return Report(
            stages: stages, request: reference.request, scheduler: reference.scheduler, thresholds: thresholds, compute: compute,
            referenceImage: refRun.image, candidateImage: candRun.image)
    }
}
