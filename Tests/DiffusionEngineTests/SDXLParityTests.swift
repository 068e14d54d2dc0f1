import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// SDXL against diffusers' StableDiffusionXLPipeline on the tiny SDXL fixture
/// (`Fixtures/tiny-sdxl/diffusers`): both encoders' penultimate states side by side, encoder 2's
/// pooled projection, the micro-conditioning time ids, `force_zeros_for_empty_prompt`, the UNet's
/// `text_time` embedding and the 0.13025 VAE scale (`Fixtures/golden/sdxl/`).
@Suite("SDXL parity with diffusers")
struct SDXLParityTests {
    static let prompt = "a photo of an astronaut riding a horse"
    static let negative = "blurry, low quality"

    static func unet() throws -> UNet2DConditionModel {
        try Fixture.unet(Fixture.sdxl, file: "diffusion_pytorch_model.safetensors")
    }

    static func pipeline() throws -> StableDiffusionPipeline {
        let second = StableDiffusionPipeline.SecondTextEncoder(
            tokenizer: try CLIPTokenizer(directory: Fixture.sdxl.appendingPathComponent("tokenizer_2")),
            model: try Fixture.textModel(Fixture.sdxl, "text_encoder_2", file: "model.safetensors"),
            projectionName: "text_projection.weight")
        return try StableDiffusionPipeline(
            tokenizer: CLIPTokenizer(directory: Fixture.sdxl.appendingPathComponent("tokenizer")),
            textEncoder: Fixture.textModel(Fixture.sdxl, "text_encoder", file: "model.safetensors"),
            secondTextEncoder: second, unet: unet(),
            vae: Fixture.vae(Fixture.sdxl, file: "diffusion_pytorch_model.safetensors"),
            schedulerConfiguration: Fixture.schedulerConfiguration(Fixture.sdxl), forceZerosForEmptyPrompt: true)
    }

    @Test("the folder's configurations")
    func configurations() throws {
        let pipeline = try Self.pipeline()
        let unet = pipeline.unet.configuration
        #expect(unet.additionTimeEmbeddingDimension == 8)
        #expect(unet.projectionClassEmbeddingsInputDimension == 80)
        #expect(unet.attentionHeads == [2, 2, 4])
        #expect(unet.transformerLayersPerBlock == [1, 1, 2])
        #expect(unet.upTransformerLayers == [2, 1, 1])
        #expect(unet.downBlockCrossAttention == [false, true, true])
        #expect(pipeline.vae.configuration.scalingFactor == 0.13025)
        #expect(pipeline.schedulerConfiguration.kind == .euler)
        #expect(pipeline.schedulerConfiguration.timestepSpacing == .leading)
        #expect(pipeline.tokenizer.padTokenID == 513)
        #expect(pipeline.secondTextEncoder?.tokenizer.padTokenID == 0)
    }

    @Test("prompt embeddings: penultimate states concatenated, pooled projection, time ids")
    func promptEmbeddings() throws {
        let golden = try Fixture.safetensors("sdxl/text_encoders.safetensors")
        let pipeline = try Self.pipeline()
        let second = try #require(pipeline.secondTextEncoder)
        #expect(second.tokenizer.encode(Self.prompt) == (try golden.int64s("prompt_ids_2")))
        #expect(second.tokenizer.encode(Self.negative) == (try golden.int64s("negative_prompt_ids_2")))
        let c = try pipeline.encode(prompt: Self.prompt, negativePrompt: Self.negative, width: 16, height: 16)
        #expect(c.tokens.conditional == (try golden.int64s("prompt_ids")))
        #expect(c.tokens.unconditional == (try golden.int64s("negative_prompt_ids")))
        #expect(c.embeddings.shape == [2, 77, 64])
        let u = expectClose(
            rows(c.embeddings, 0..<1), try golden.floats("negative_prompt_embeds"), shape: [1, 77, 64], tolerance: 1e-4, "negative_prompt_embeds")
        let p = expectClose(rows(c.embeddings, 1..<2), try golden.floats("prompt_embeds"), shape: [1, 77, 64], tolerance: 1e-4, "prompt_embeds")
        let added = try #require(c.added)
        #expect(added.textEmbeddings.shape == [2, 32])
        let un = expectClose(
            rows(added.textEmbeddings, 0..<1), try golden.floats("negative_pooled_prompt_embeds"), shape: [1, 32], tolerance: 1e-4,
            "negative_pooled_prompt_embeds")
        let po = expectClose(
            rows(added.textEmbeddings, 1..<2), try golden.floats("pooled_prompt_embeds"), shape: [1, 32], tolerance: 1e-4, "pooled_prompt_embeds")
        #expect(added.timeIDs.shape == [2, 6])
        #expect(added.timeIDs.scalars == [16, 16, 0, 0, 16, 16, 16, 16, 0, 0, 16, 16])
        print("SDXL prompt_embeds: \(p); negative: \(u); pooled: \(po); negative pooled: \(un)")
    }

    /// SDXL base's published `text_encoder_2/config.json` says `eos_token_id: 2`, for which
    /// transformers pools at `input_ids.argmax(-1)` (the first end token of CLIP ids), not at token 2.
    @Test("pooled projection with a legacy eos_token_id 2 configuration")
    func legacyEndTokenConfiguration() throws {
        let golden = try Fixture.safetensors("sdxl/text_encoders.safetensors")
        var config = try CLIPTextConfiguration(jsonText: try Fixture.text("text_encoder_2/config.json", in: Fixture.sdxl))
        #expect(config.endTokenID == 513)
        config.endTokenID = 2
        let legacy = try CLIPTextModel(store: try Fixture.safetensors("text_encoder_2/model.safetensors", in: Fixture.sdxl), configuration: config)
        let reference = try Self.pipeline()
        let second = StableDiffusionPipeline.SecondTextEncoder(
            tokenizer: try #require(reference.secondTextEncoder).tokenizer, model: legacy,
            projectionName: "text_projection.weight")
        let pipeline = StableDiffusionPipeline(
            tokenizer: reference.tokenizer, textEncoder: reference.textEncoder, secondTextEncoder: second,
            unet: reference.unet, vae: reference.vae, schedulerConfiguration: reference.schedulerConfiguration,
            forceZerosForEmptyPrompt: true)
        let c = try pipeline.encode(prompt: Self.prompt, negativePrompt: Self.negative, width: 16, height: 16)
        let added = try #require(c.added)
        let u = expectClose(
            rows(added.textEmbeddings, 0..<1), try golden.floats("negative_pooled_prompt_embeds"), shape: [1, 32], tolerance: 1e-4,
            "legacy negative pooled")
        let p = expectClose(
            rows(added.textEmbeddings, 1..<2), try golden.floats("pooled_prompt_embeds"), shape: [1, 32], tolerance: 1e-4, "legacy pooled")
        print("SDXL pooled with eos_token_id 2: \(p); negative: \(u)")
    }

    @Test("force_zeros_for_empty_prompt: an empty negative prompt gives zero embeddings")
    func emptyNegativePromptIsZero() throws {
        let golden = try Fixture.safetensors("sdxl/text_encoders.safetensors")
        let pipeline = try Self.pipeline()
        let c = try pipeline.encode(prompt: Self.prompt, negativePrompt: "", width: 16, height: 16)
        #expect(rows(c.embeddings, 0..<1).allSatisfy { $0 == 0 })
        let added = try #require(c.added)
        #expect(rows(added.textEmbeddings, 0..<1).allSatisfy { $0 == 0 })
        expectClose(rows(c.embeddings, 1..<2), try golden.floats("prompt_embeds"), shape: [1, 77, 64], tolerance: 1e-4, "prompt_embeds")
        expectClose(
            rows(added.textEmbeddings, 1..<2), try golden.floats("pooled_prompt_embeds"), shape: [1, 32], tolerance: 1e-4, "pooled_prompt_embeds")
        // Without the flag the empty prompt is encoded like any other.
        pipeline.forceZerosForEmptyPrompt = false
        let encoded = try pipeline.encode(prompt: Self.prompt, negativePrompt: "", width: 16, height: 16)
        #expect(rows(encoded.embeddings, 0..<1).contains { $0 != 0 })
    }

    @Test("UNet forward pass with text_time added conditions, batch of 2", arguments: ["t999", "t500"])
    func unetForward(_ key: String) throws {
        try expectUNetMatchesGolden(try Self.unet(), try Fixture.safetensors("sdxl/unet.safetensors"), key: key, label: "SDXL")
    }

    @Test("six Euler steps from given latents, no negative prompt")
    func sixEulerSteps() throws {
        let golden = try Fixture.safetensors("sdxl/pipelines/euler.safetensors")
        let text = try Fixture.safetensors("sdxl/text_encoders.safetensors")
        let pipeline = try Self.pipeline()
        var request = StableDiffusionPipeline.Request(prompt: Self.prompt)
        request.steps = 6
        request.width = 16
        request.height = 16
        request.seed = 42
        request.latents = FloatTensor(shape: [1, 4, 8, 8], values: try golden.floats("init_latents"))
        #expect(pipeline.schedulerKind(for: request) == .euler)
        let (output, steps) = try runCollectingSteps(pipeline, request)

        // The UNet's inputs of the first call: zeroed unconditional half, pooled projection, time ids.
        let c = output.conditioning
        #expect(rows(c.embeddings, 0..<1).allSatisfy { $0 == 0 })
        expectClose(rows(c.embeddings, 1..<2), try text.floats("prompt_embeds"), shape: [1, 77, 64], tolerance: 1e-4, "conditional embeddings")
        let added = try #require(c.added)
        expectClose(
            added.textEmbeddings.scalars, try golden.floats("unet_input.text_embeds"), shape: [2, 32], tolerance: 1e-4, "unet_input.text_embeds")
        #expect(added.timeIDs.scalars == (try golden.floats("unet_input.time_ids")))
        let scheduler = try SchedulerFactory.make(.euler, configuration: pipeline.schedulerConfiguration, steps: 6)
        let scale = scheduler.inputScale(at: 0)
        let firstInput = output.initialLatents.scalars.map { $0 * scale }
        let goldenInput = try golden.floats("unet_input.sample")
        expectClose(firstInput + firstInput, goldenInput, shape: [2, 4, 8, 8], tolerance: 1e-5, "unet_input.sample")

        let timesteps = try golden.floats("timesteps")
        #expect(output.timesteps == timesteps, "timesteps \(output.timesteps), diffusers \(timesteps)")
        let euler = try #require(scheduler as? EulerDiscreteScheduler)
        expectClose(euler.sigmas, try golden.floats("sigmas"), shape: [7], tolerance: 1e-5, "sigmas")
        let worst = try compareSteps(steps, golden: golden, label: "SDXL euler")
        let image = ParityMetrics(reference: try golden.floats("image"), candidate: output.image.scalars, peak: 1)
        print(
            "SDXL euler: image PSNR \(image.psnr) dB, max abs \(image.maxAbsoluteError); worst step latent max abs \(worst.worstMaxAbsolute), SNR \(worst.worstSNR) dB"
        )
        #expect(output.image.shape == [16, 16, 3])
        #expect(image.psnr >= 40, "SDXL euler image PSNR \(image.psnr) dB")
    }
}
