import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// SD 2.x against diffusers on the tiny SD 2.x fixture (`Fixtures/tiny-sd2/diffusers`, fp16 weight
/// files widened to fp32 on both sides): the OpenCLIP-style text encoder (gelu, `!` padding), the
/// UNet with linear projections and per-level head counts, and v-prediction pipelines with five
/// samplers (`Fixtures/golden/sd2/`, made by `make_engine_goldens.py`).
@Suite("SD 2.x parity with diffusers")
struct SD2ParityTests {
    static func tokenizer() throws -> CLIPTokenizer {
        try CLIPTokenizer(directory: Fixture.sd2.appendingPathComponent("tokenizer"))
    }

    static func textModel() throws -> CLIPTextModel {
        try Fixture.textModel(Fixture.sd2, "text_encoder", file: "model.fp16.safetensors")
    }

    static func unet() throws -> UNet2DConditionModel {
        try Fixture.unet(Fixture.sd2, file: "diffusion_pytorch_model.fp16.safetensors")
    }

    static func pipeline() throws -> StableDiffusionPipeline {
        try StableDiffusionPipeline(
            tokenizer: tokenizer(), textEncoder: textModel(), unet: unet(),
            vae: Fixture.vae(Fixture.sd2, file: "diffusion_pytorch_model.fp16.safetensors"),
            schedulerConfiguration: Fixture.schedulerConfiguration(Fixture.sd2))
    }

    static let prompts = [("pipeline_prompt", "a photo of an astronaut riding a horse"), ("empty", ""), ("pad_token_in_prompt", "Hello!!! a cat")]

    @Test("the folder's configurations")
    func configurations() throws {
        let unet = try Self.unet().configuration
        #expect(unet.useLinearProjection)
        #expect(unet.attentionHeads == [2, 2, 4, 4])
        #expect(unet.layersPerBlock == 1)
        #expect(unet.crossAttentionDimension == 32)
        let scheduler = try Fixture.schedulerConfiguration(Fixture.sd2)
        #expect(scheduler.predictionType == .vPrediction)
        #expect(scheduler.kind == .pndm)
        #expect(try Self.tokenizer().padTokenID == 0)
        #expect(try Self.textModel().configuration.layerCount == 3)
    }

    @Test("text encoder: ids with '!' padding, last hidden state (what SD 2.x conditions on)", arguments: 0..<prompts.count)
    func textEncoder(_ index: Int) throws {
        let (name, prompt) = Self.prompts[index]
        let golden = try Fixture.safetensors("sd2/text_encoder.safetensors")
        let ids = try Self.tokenizer().encode(prompt)
        #expect(ids == (try golden.int64s("\(name).input_ids")), "\(name) ids")
        let model = try Self.textModel()
        let last = try model.encode([ids])
        #expect(last.shape == [1, 77, 32])
        let c = expectClose(
            last.scalars, try golden.floats("\(name).last_hidden_state"), shape: last.shape, tolerance: 1e-4, "\(name).last_hidden_state")
        print("SD2 text encoder \(name) last_hidden_state: \(c)")
        guard name == "pipeline_prompt" else { return }
        let penultimate = try model.hiddenState([ids], layers: model.configuration.layerCount - 1, finalLayerNorm: false)
        let p = expectClose(
            penultimate.scalars, try golden.floats("\(name).penultimate_hidden_state"), shape: penultimate.shape, tolerance: 1e-4,
            "\(name).penultimate")
        let pooled = model.pooledOutput(last, tokens: [ids])
        let o = expectClose(pooled.scalars, try golden.floats("\(name).pooler_output"), shape: pooled.shape, tolerance: 1e-4, "\(name).pooler_output")
        print("SD2 text encoder \(name) penultimate: \(p); pooled: \(o)")
    }

    @Test("UNet forward pass, batch of 2 (v prediction)", arguments: ["t999", "t500"])
    func unetForward(_ key: String) throws {
        try expectUNetMatchesGolden(try Self.unet(), try Fixture.safetensors("sd2/unet.safetensors"), key: key, label: "SD2")
    }

    static let cases = sixStepCases

    @Test("six v-prediction steps from given latents", arguments: 0..<cases.count)
    func sixSteps(_ index: Int) throws {
        let c = Self.cases[index]
        let golden = try Fixture.safetensors("sd2/pipelines/\(c.file).safetensors")
        let text = try Fixture.safetensors("sd2/text_encoder.safetensors")
        let pipeline = try Self.pipeline()
        let (output, steps) = try runCollectingSteps(pipeline, try sixStepRequest(golden, kind: c.kind, size: 16))

        #expect(output.conditioning.tokens.conditional == (try golden.int64s("prompt_ids")))
        #expect(output.conditioning.tokens.unconditional == (try golden.int64s("negative_prompt_ids")))
        let embeddings = output.conditioning.embeddings
        expectClose(
            rows(embeddings, 0..<1), try text.floats("empty.last_hidden_state"), shape: [1, 77, 32], tolerance: 1e-4,
            "\(c.file) unconditional embeddings")
        expectClose(
            rows(embeddings, 1..<2), try text.floats("pipeline_prompt.last_hidden_state"), shape: [1, 77, 32], tolerance: 1e-4,
            "\(c.file) conditional embeddings")

        let timesteps = try golden.floats("timesteps")
        #expect(timesteps.count == c.calls)
        #expect(output.timesteps == timesteps, "\(c.file) timesteps \(output.timesteps), diffusers \(timesteps)")
        if golden.descriptor(named: "sigmas") != nil {
            let s = try SchedulerFactory.make(c.kind, configuration: pipeline.schedulerConfiguration, steps: 6)
            expectClose(try #require(SchedulerParityTests.sigmas(s)), try golden.floats("sigmas"), shape: [7], tolerance: 1e-5, "\(c.file) sigmas")
        }
        let worst = try compareSteps(steps, golden: golden, label: "SD2 \(c.file)")
        let image = ParityMetrics(reference: try golden.floats("image"), candidate: output.image.scalars, peak: 1)
        print(
            "SD2 \(c.file): image PSNR \(image.psnr) dB, max abs \(image.maxAbsoluteError); worst step latent max abs \(worst.worstMaxAbsolute), SNR \(worst.worstSNR) dB"
        )
        #expect(output.image.shape == [16, 16, 3])
        #expect(image.psnr >= 40, "SD2 \(c.file) image PSNR \(image.psnr) dB")
    }
}
