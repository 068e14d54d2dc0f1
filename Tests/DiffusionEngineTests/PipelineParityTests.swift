import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// Full 6-step generations against diffusers' StableDiffusionPipeline on the tiny SD 1.x fixture
/// (`Fixtures/golden/pipelines/<scheduler>.safetensors`).
@Suite("Pipeline parity with diffusers")
struct PipelineParityTests {
    static func pipeline() throws -> StableDiffusionPipeline {
        try StableDiffusionPipeline(
            tokenizer: CLIPTokenizer.bundled(), textEncoder: ModelParityTests.textModel(),
            unet: UNetParityTests.unet(), vae: ModelParityTests.vae(),
            schedulerConfiguration: .sd15)
    }

    static let cases = sixStepCases

    @Test("six steps from given latents", arguments: 0..<cases.count)
    func sixSteps(_ index: Int) throws {
        let c = Self.cases[index]
        let golden = try Fixture.safetensors("pipelines/\(c.file).safetensors")
        let (output, steps) = try runCollectingSteps(try Self.pipeline(), try sixStepRequest(golden, kind: c.kind, size: 64))
        #expect(output.conditioning.tokens.conditional == (try golden.int64s("prompt_ids")))
        let expectedTimesteps = try golden.floats("timesteps")
        #expect(output.timesteps.count == c.calls)
        expectClose(output.timesteps, expectedTimesteps, shape: [c.calls], tolerance: 1e-3, "\(c.file) timesteps")
        if golden.descriptor(named: "sigmas") != nil,
            let s = (try SchedulerFactory.make(c.kind, configuration: .sd15, steps: 6)) as? EulerDiscreteScheduler
        {
            expectClose(s.sigmas, try golden.floats("sigmas"), shape: [7], tolerance: 1e-4, "\(c.file) sigmas")
        }
        #expect(steps.count == c.calls)
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
