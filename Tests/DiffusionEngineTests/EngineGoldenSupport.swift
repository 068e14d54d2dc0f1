import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// The tiny SD 2.x and SDXL fixtures and the goldens `Fixtures/generate/make_engine_goldens.py`
/// made from them (`Fixtures/README.md`, "Engine goldens").
extension Fixture {
    static let sd2 = root.appendingPathComponent("tiny-sd2/diffusers")
    static let sdxl = root.appendingPathComponent("tiny-sdxl/diffusers")

    static func text(_ relative: String, in base: URL) throws -> String {
        try String(contentsOf: base.appendingPathComponent(relative), encoding: .utf8)
    }

    /// A diffusers text encoder (`CLIPTextModel` or `CLIPTextModelWithProjection`).
    static func textModel(_ folder: URL, _ component: String, file: String) throws -> CLIPTextModel {
        let config = try CLIPTextConfiguration(jsonText: try text("\(component)/config.json", in: folder))
        return try CLIPTextModel(store: try safetensors("\(component)/\(file)", in: folder), configuration: config)
    }

    static func unet(_ folder: URL, file: String) throws -> UNet2DConditionModel {
        let config = try UNetConfiguration(jsonText: try text("unet/config.json", in: folder))
        return try UNet2DConditionModel(store: try safetensors("unet/\(file)", in: folder), configuration: config)
    }

    static func vae(_ folder: URL, file: String) throws -> AutoencoderKL {
        let config = try AutoencoderKLConfiguration(jsonText: try text("vae/config.json", in: folder))
        return try AutoencoderKL(store: try safetensors("vae/\(file)", in: folder), configuration: config)
    }

    static func schedulerConfiguration(_ folder: URL) throws -> SchedulerConfiguration {
        try SchedulerConfiguration(jsonText: try text("scheduler/scheduler_config.json", in: folder))
    }
}

/// What a run's per-step latents look like against the golden ones.
struct StepComparison {
    var worstMaxAbsolute = 0.0
    var worstSNR = Double.infinity
    /// The worst max abs error relative to the golden latents' largest magnitude at that step.
    var worstRelative = 0.0
}

/// Per-step latent tolerances of the engine goldens (`PipelineParityTests` only prints its
/// latents): max abs error at most 1e-3 of the step's largest golden magnitude (at least 1), and
/// an SNR of at least 60 dB. Measured: at most 7.9e-5 of the scale and at least 82.4 dB (SD 2.x
/// PNDM, the worst); the SD 1.x runs of `PipelineParityTests` reach 5.4e-3 absolute on Euler's
/// latents of magnitude about 56 (9.5e-5 relative) and 78.6 dB.
enum StepTolerance {
    static let relative = 1e-3
    static let snr = 60.0
}

/// Compares every `step<i>.latents` of `golden` with `steps`, printing and checking each.
@discardableResult
func compareSteps(
    _ steps: [FloatTensor], golden: SafetensorsFile, label: String,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> StepComparison {
    let stored = golden.tensors.filter { $0.name.hasPrefix("step") && $0.name.hasSuffix(".latents") }.count
    #expect(steps.count == stored, "\(label): \(steps.count) steps, the golden has \(stored)", sourceLocation: sourceLocation)
    var result = StepComparison()
    for (i, latents) in steps.enumerated() where i < stored {
        let reference = try golden.floats("step\(i).latents")
        let m = ParityMetrics(reference: reference, candidate: latents.scalars)
        let scale = max(1, Double(reference.map { abs($0) }.max() ?? 0))
        result.worstMaxAbsolute = max(result.worstMaxAbsolute, m.maxAbsoluteError)
        result.worstSNR = min(result.worstSNR, m.snr)
        result.worstRelative = max(result.worstRelative, m.maxAbsoluteError / scale)
        print("\(label) step \(i): max abs \(m.maxAbsoluteError) (scale \(scale)), SNR \(m.snr) dB")
        #expect(
            m.maxAbsoluteError <= StepTolerance.relative * scale, "\(label) step \(i): max abs \(m.maxAbsoluteError) at scale \(scale)",
            sourceLocation: sourceLocation)
        #expect(m.snr >= StepTolerance.snr, "\(label) step \(i): SNR \(m.snr) dB", sourceLocation: sourceLocation)
    }
    return result
}

/// Runs `request` and collects the latents after every step.
/// The samplers of the 6-step pipeline goldens: file stem, kind, and the UNet calls diffusers
/// makes (PNDM with `skip_prk_steps` makes one more than its steps).
let sixStepCases: [(file: String, kind: SchedulerKind, calls: Int)] = [
    ("pndm", .pndm, 7), ("ddim", .ddim, 6), ("euler", .euler, 6), ("euler_ancestral", .eulerAncestral, 6), ("dpmpp_2m", .dpmSolverMultistep, 6),
]

/// The request the 6-step pipeline goldens were made with: the astronaut prompt, seed 42, the
/// golden's own initial latents (`init_latents`, 1x4x8x8) and a `size`-pixel square image.
func sixStepRequest(_ golden: SafetensorsFile, kind: SchedulerKind, size: Int) throws -> StableDiffusionPipeline.Request {
    var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
    request.steps = 6
    request.width = size
    request.height = size
    request.scheduler = kind
    request.seed = 42
    request.latents = FloatTensor(shape: [1, 4, 8, 8], values: try golden.floats("init_latents"))
    return request
}

func runCollectingSteps(
    _ pipeline: StableDiffusionPipeline, _ request: StableDiffusionPipeline.Request
)
    throws -> (output: StableDiffusionPipeline.Output, steps: [FloatTensor])
{
    var steps: [FloatTensor] = []
    let output = try pipeline.generate(request) { event in
        if case .step(_, _, _, let latents) = event { steps.append(latents) }
    }
    return (output, steps)
}

/// Rows `range` of a `[batch, ...]` tensor's values.
func rows(_ t: FloatTensor, _ range: Range<Int>) -> [Float] {
    let per = t.count / t.shape[0]
    return Array(t.scalars[(range.lowerBound * per)..<(range.upperBound * per)])
}
