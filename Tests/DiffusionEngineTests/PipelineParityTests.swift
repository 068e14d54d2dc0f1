import CheckpointFormats
import Foundation
import Testing
import TensorCore
@testable import DiffusionEngine

/// Full 6-step generations against diffusers' StableDiffusionPipeline on the tiny SD 1.x fixture
/// (`Fixtures/golden/pipelines/<scheduler>.safetensors`).
@Suite("Pipeline parity with diffusers")
struct PipelineParityTests {
    static func pipeline() throws -> StableDiffusionPipeline {
        try StableDiffusionPipeline(tokenizer: CLIPTokenizer.bundled(), textEncoder: ModelParityTests.textModel(),
                                    unet: UNetParityTests.unet(), vae: ModelParityTests.vae(),
                                    schedulerConfiguration: .sd15)
    }

    static let cases: [(file: String, kind: SchedulerKind, steps: Int)] = [
        ("pndm", .pndm, 7), ("ddim", .ddim, 6), ("euler", .euler, 6), ("euler_ancestral", .eulerAncestral, 6), ("dpmpp_2m", .dpmSolverMultistep, 6),
    ]

    @Test("six steps from given latents", arguments: 0..<cases.count)
    func sixSteps(_ index: Int) throws {
        let c = Self.cases[index]
        let golden = try Fixture.safetensors("pipelines/\(c.file).safetensors")
        let pipeline = try Self.pipeline()
        var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
        request.steps = 6
        request.width = 64
        request.height = 64
        request.scheduler = c.kind
        request.seed = 42
        request.latents = FloatTensor(shape: [1, 4, 8, 8], values: try golden.floats("init_latents"))
        var steps: [FloatTensor] = []
        let output = try pipeline.generate(request) { event in
            if case .step(_, _, _, let latents) = event { steps.append(latents) }
        }
        #expect(output.conditioning.tokens.conditional == (try golden.int64s("prompt_ids")))
        let expectedTimesteps = try golden.floats("timesteps")
        #expect(output.timesteps.count == c.steps)
        expectClose(output.timesteps, expectedTimesteps, shape: [c.steps], tolerance: 1e-3, "\(c.file) timesteps")
        if golden.descriptor(named: "sigmas") != nil, let s = (try SchedulerFactory.make(c.kind, configuration: .sd15, steps: 6)) as? EulerDiscreteScheduler {
            expectClose(s.sigmas, try golden.floats("sigmas"), shape: [7], tolerance: 1e-4, "\(c.file) sigmas")
        }
        #expect(steps.count == c.steps)
        var worst = 0.0
        for (i, latents) in steps.enumerated() {
            let m = ParityMetrics(reference: try golden.floats("step\(i).latents"), candidate: latents.scalars)
            worst = max(worst, m.maxAbsoluteError)
            print("\(c.file) step \(i): max abs \(m.maxAbsoluteError), SNR \(m.snr) dB")
        }
        let image = ParityMetrics(reference: try golden.floats("image"), candidate: output.image.scalars, peak: 1)
        print("\(c.file): image PSNR \(image.psnr) dB, max abs \(image.maxAbsoluteError); worst step latent max abs \(worst)")
        #expect(image.psnr >= 40, "\(c.file) image PSNR \(image.psnr) dB")
    }
}
