import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Parity with the goldens made by transformers and diffusers on the tiny SD 1.x fixture
/// (`Fixtures/golden/*.safetensors`, described in `Fixtures/README.md`).
@Suite("Parity with transformers and diffusers")
struct ModelParityTests {
    static let prompts = ["simple", "empty", "emoji"]

    static func textModel() throws -> CLIPTextModel {
        let config = try CLIPTextConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("text_encoder/config.json"), encoding: .utf8))
        let store = try Fixture.safetensors("text_encoder/model.safetensors", in: Fixture.diffusers)
        return try CLIPTextModel(store: store, configuration: config)
    }

    static func vae() throws -> AutoencoderKL {
        let config = try AutoencoderKLConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("vae/config.json"), encoding: .utf8))
        let store = try Fixture.safetensors("vae/diffusion_pytorch_model.safetensors", in: Fixture.diffusers)
        return try AutoencoderKL(store: store, configuration: config)
    }

    @Test("text encoder last hidden state, penultimate state and pooled output", arguments: prompts)
    func textEncoder(_ prompt: String) throws {
        let golden = try Fixture.safetensors("text_encoder.safetensors")
        let model = try Self.textModel()
        let ids = try golden.int64s("\(prompt).input_ids")
        let last = try model.encode([ids])
        #expect(last.shape == [1, 77, 32])
        let c = expectClose(
            last.scalars, try golden.floats("\(prompt).last_hidden_state"), shape: last.shape, tolerance: 1e-4, "\(prompt).last_hidden_state")
        print("text encoder \(prompt) last_hidden_state: \(c)")
        let penultimate = try model.hiddenState([ids], layers: model.configuration.layerCount - 1, finalLayerNorm: false)
        let p = expectClose(
            penultimate.scalars, try golden.floats("\(prompt).penultimate_hidden_state"), shape: penultimate.shape, tolerance: 1e-4,
            "\(prompt).penultimate")
        let pooled = model.pooledOutput(last, tokens: [ids])
        let o = expectClose(
            pooled.scalars, try golden.floats("\(prompt).pooler_output"), shape: pooled.shape, tolerance: 1e-4, "\(prompt).pooler_output")
        print("text encoder \(prompt) penultimate: \(p); pooled: \(o)")
    }

    @Test func textEncoderTokensFromTokenizerMatchGoldenIDs() throws {
        let golden = try Fixture.safetensors("text_encoder.safetensors")
        let tokenizer = try CLIPTokenizer.bundled()
        #expect(tokenizer.encode("a photo of a cat") == (try golden.int64s("simple.input_ids")))
        #expect(tokenizer.encode("") == (try golden.int64s("empty.input_ids")))
    }

    @Test func textEncoderClipSkipAppliesFinalNormToThePenultimateLayer() throws {
        let golden = try Fixture.safetensors("text_encoder.safetensors")
        let ids = try golden.int64s("simple.input_ids")
        let model = try Self.textModel()
        var config = model.configuration
        config.skippedLayers = 1
        let skipping = try CLIPTextModel(store: model.weights.store, configuration: config)
        let a = try skipping.encode([ids])
        let b = try model.hiddenState([ids], layers: 2, finalLayerNorm: true)
        // Same layers and shapes, but not bit for bit: tests run concurrently, and a product's
        // thread count (hence oneDNN's split of its sums) depends on what else is running.
        expectClose(a.scalars, b.scalars, shape: a.shape, tolerance: 1e-5, "clip skip")
    }

    /// A sequence encodes the same alone as second of a batch. Not bit for bit: the batch's
    /// products have twice the rows, and a BLAS may pick other kernels (other summation
    /// orders) for them. Each of the two layers' products sums at most 4 x 32 = 128 terms of
    /// hidden states normalised to unit scale, so reassociation moves a value by at most about
    /// γ(128) ≈ 7.6e-6 of its terms' magnitudes per product; 1e-4 (absolute and relative) allows
    /// for the few products and norms in sequence, and is ten times the largest difference
    /// measured under OpenBLAS's Prescott, Haswell and Zen kernels and oneDNN's AVX2 and SSE4.1
    /// ones (Docs/engine.md). Mixing up the sequences of a batch moves values by order one.
    @Test func textEncoderBatchEqualsSingleSequences() throws {
        let golden = try Fixture.safetensors("text_encoder.safetensors")
        let model = try Self.textModel()
        let a = try golden.int64s("simple.input_ids"), b = try golden.int64s("emoji.input_ids")
        let batch = try model.encode([a, b])
        #expect(batch.shape == [2, 77, 32])
        let single = try model.encode([b]).scalars
        let second = Array(batch.scalars[(77 * 32)...])
        #expect(second.count == single.count)
        var worst: Float = 0
        for (x, y) in zip(second, single) { worst = max(worst, abs(x - y) / max(1, abs(y))) }
        print("text encoder, batch of two vs alone: largest difference \(worst)")
        #expect(worst <= 1e-4)
        // And the batch is not simply the single sequence twice.
        #expect(Array(batch.scalars[..<(77 * 32)]) != single)
    }

    @Test func vaeDecode() throws {
        let golden = try Fixture.safetensors("vae.safetensors")
        let vae = try Self.vae()
        let latent = FloatTensor(shape: [1, 4, 8, 8], values: try golden.floats("decode.latent"))
        let image = try vae.decode(latent)
        #expect(image.shape == [1, 3, 64, 64])
        let c = expectClose(image.scalars, try golden.floats("decode.sample"), shape: image.shape, tolerance: 1e-3, "decode.sample")
        print("VAE decode: \(c)")
    }

    @Test func vaeEncode() throws {
        let golden = try Fixture.safetensors("vae.safetensors")
        let vae = try Self.vae()
        let image = FloatTensor(shape: [1, 3, 64, 64], values: try golden.floats("encode.image"))
        let latent = try vae.encode(image)
        #expect(latent.mean.shape == [1, 4, 8, 8])
        let m = expectClose(latent.mean.scalars, try golden.floats("encode.mean"), shape: latent.mean.shape, tolerance: 1e-3, "encode.mean")
        let l = expectClose(
            latent.logVariance.scalars, try golden.floats("encode.logvar"), shape: latent.logVariance.shape, tolerance: 1e-3, "encode.logvar")
        print("VAE encode mean: \(m); logvar: \(l)")
    }

    @Test func tiledDecodeOfOneTileEqualsPlainDecode() throws {
        let vae = try Self.vae()
        var random = TestRandom(seed: 3)
        let latent = FloatTensor(shape: [4, 8, 8], values: random.values(256))
        let plain = try vae.decode(latent)
        let tiled = try vae.decode(latent, tiling: vae.defaultTiling)
        // One tile is the plain decode's computation, but not bit for bit: tests run
        // concurrently, and a product's thread count (hence oneDNN's split of its sums) depends
        // on what else is running. Values are of order one; a wrong tile offset moves them by that.
        expectClose(tiled.scalars, plain.scalars, shape: plain.shape, tolerance: 1e-4, "one tile")
    }

    @Test func tiledDecodeCoversTheImage() throws {
        let vae = try Self.vae()
        var random = TestRandom(seed: 4)
        let latent = FloatTensor(shape: [4, 20, 12], values: random.values(4 * 20 * 12))
        let plain = try vae.decode(latent)
        let tiled = try vae.decode(latent, tiling: vae.defaultTiling)
        #expect(tiled.shape == plain.shape)
        // Away from the seams the tiles see the same receptive field only approximately; the
        // two results agree in scale.
        let c = TensorComparison(tiled.scalars, plain.scalars, shape: plain.shape, tolerance: 1)
        #expect(c.maxAbsoluteError.isFinite)
    }

    @Test func decodeImageScalesAndMapsToUnitRange() throws {
        let vae = try Self.vae()
        var random = TestRandom(seed: 5)
        let latent = FloatTensor(shape: [4, 8, 8], values: random.values(256))
        let image = try vae.decodeImage(latents: latent)
        #expect(image.shape == [64, 64, 3])
        #expect(image.scalars.allSatisfy { $0 >= 0 && $0 <= 1 })
        let scaled = latent.copy()
        for i in 0..<scaled.count { scaled.base[i] /= 0.18215 }
        let raw = try vae.decode(scaled)
        #expect(abs(image.scalars[1] - min(max(raw.scalars[64 * 64] / 2 + 0.5, 0), 1)) < 1e-6)
    }

    @Test func halfPrecisionWeightsDecodeCloseToFloatWeights() throws {
        // The same VAE with every weight stored as F16 and as BF16 (converted tile by tile).
        let source = try Fixture.safetensors("vae/diffusion_pytorch_model.safetensors", in: Fixture.diffusers)
        let config = try AutoencoderKLConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("vae/config.json"), encoding: .utf8))
        let golden = try Fixture.safetensors("vae.safetensors")
        let latent = FloatTensor(shape: [4, 8, 8], values: try golden.floats("decode.latent"))
        let reference = try golden.floats("decode.sample")
        for (dtype, tolerance) in [(DType.f16, Float(2e-2)), (.bf16, 1.5e-1)] {
            let store = MemoryStore()
            for d in source.tensors { store.add(d.name, shape: d.shape.dimensions, values: try source.floats(d.name), dtype: dtype) }
            let vae = try AutoencoderKL(store: store, configuration: config)
            let image = try vae.decode(latent)
            let c = expectClose(image.scalars, reference, shape: image.shape, tolerance: tolerance, "\(dtype.name) weights")
            print("VAE decode with \(dtype.name) weights: \(c)")
        }
    }

    @Test func missingWeightIsReportedByName() throws {
        let store = MemoryStore()
        store.add("decoder.conv_in.weight", shape: [64, 4, 3, 3], values: Array(repeating: 0, count: 64 * 4 * 9))
        let config = try AutoencoderKLConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("vae/config.json"), encoding: .utf8))
        let vae = try AutoencoderKL(store: store, configuration: config)
        let error = #expect(throws: EngineError.self) { try vae.decode(FloatTensor.zeros([4, 8, 8])) }
        #expect(error?.code == .missingTensor)
        #expect(error?.tensorName == "post_quant_conv.weight")
    }
}
