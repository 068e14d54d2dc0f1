import CheckpointFormats
import DiffusionEngine
import Foundation
import Quantization
import TensorCore
import TestSupport
import Testing

@testable import ModelLoading

/// Issue 14's measured gains: which block each weight is measured in, the store that swaps one
/// block's weights in, the shortcut that measures a VAE decoder block by the decode alone, the
/// allocation that follows the gains, and the prediction they give on the tiny fixture.
@Suite("measured layer gains of the quality budget")
struct LayerGainsTests {
    @Test("weights are measured in blocks: the token embedding, thirds of the text encoder, UNet blocks, VAE decoder blocks; the encoder is not run")
    func groups() {
        let counts = LayerGains.layerCounts([
            "text_encoder.text_model.encoder.layers.11.mlp.fc2.weight", "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight",
            "text_encoder_2.text_model.encoder.layers.31.mlp.fc1.weight", "unet.down_blocks.0.resnets.0.conv1.weight",
        ])
        #expect(counts == ["text_encoder": 12, "text_encoder_2": 32])
        let cases: [(String, String, LayerGains.Stage)] = [
            ("text_encoder.text_model.embeddings.token_embedding.weight", "text_encoder token embedding", .generation),
            ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight", "text_encoder layers 0-3", .generation),
            ("text_encoder.text_model.encoder.layers.7.mlp.fc1.weight", "text_encoder layers 4-7", .generation),
            ("text_encoder.text_model.encoder.layers.11.mlp.fc2.weight", "text_encoder layers 8-11", .generation),
            ("text_encoder_2.text_model.encoder.layers.31.mlp.fc2.weight", "text_encoder_2 layers 22-31", .generation),
            ("text_encoder_2.text_projection.weight", "text_encoder_2 other", .generation),
            ("unet.down_blocks.2.attentions.1.proj_in.weight", "unet down_blocks.2", .generation),
            ("unet.up_blocks.3.resnets.2.conv2.weight", "unet up_blocks.3", .generation),
            ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", "unet mid_block", .generation),
            ("unet.time_embedding.linear_1.weight", "unet other", .generation),
            ("vae.decoder.up_blocks.1.resnets.0.conv1.weight", "vae decoder.up_blocks.1", .decode),
            ("vae.decoder.mid_block.attentions.0.to_q.weight", "vae decoder.mid_block", .decode),
            ("vae.post_quant_conv.weight", "vae decoder other", .decode),
            ("vae.encoder.down_blocks.0.resnets.0.conv1.weight", "vae encoder", .none),
            ("vae.quant_conv.weight", "vae encoder", .none),
            // A hostile name: a layer number past the count, an empty component.
            ("text_encoder.layers.99.", "text_encoder layers 68-99", .generation),
            ("", "", .generation),
        ]
        for (name, group, stage) in cases {
            let g = LayerGains.group(of: name, layerCounts: counts)
            #expect(g.name == group, "\(name)")
            #expect("\(g.stage)" == "\(stage)", "\(name)")
        }
    }

    @Test("a substituted store reads the given values as F32 for its names and the base's tensors for every other")
    func substitutedStore() throws {
        let base = try SafetensorsFile(path: tinySD1)
        let name = try #require(base.tensors.first { $0.shape.rank == 2 && $0.dtype == .f32 }).name
        let other = try #require(base.tensors.first { $0.name != name && $0.dtype == .f32 }).name
        let original = try base.tensor(named: name).floats()
        let swapped = original.map { $0 * 2 + 1 }
        let store = SubstitutedStore(base: base, replacements: [name: swapped])
        #expect(store.tensors.map(\.name) == base.tensors.map(\.name))
        // Compared as one Bool: a failing comparison of whole arrays would make the test library diff them.
        let read = try store.tensor(named: name).floats()
        #expect(read.count == swapped.count)
        #expect(zip(read, swapped).allSatisfy { $0 == $1 })
        #expect(store.descriptor(named: name)?.dtype == .f32)
        #expect(store.descriptor(named: name)?.byteCount == original.count * 4)
        let untouched = try store.tensor(named: other).floats() == (try base.tensor(named: other).floats())
        #expect(untouched)
    }

    @Test("a VAE decoder block measured by the decode of the source's latents gives the image the whole generation gives (to 1e-4)")
    func decodeShortcut() throws {
        let source = try StableDiffusionModel(path: tinySD1)
        var request = QualityBudget.defaultVerification(Calibration.Settings.defaults(for: source))
        request.steps = 3
        let reference = try Verification.ReferenceRun(source, request: request)
        let store = source.canonical.store
        var replacements: [String: [Float]] = [:]
        for d in store.tensors where d.name.hasPrefix("vae.decoder.up_blocks.1.") && d.shape.rank == 4 {
            let values = try store.tensor(named: d.name).floats()
            replacements[d.name] = try Sensitivity.roundTrip(
                values, rowLength: d.elementCount / d.shape[0], storage: .ggml(.q4_0), importance: nil)
        }
        #expect(replacements.count >= 4)
        let candidate = try StableDiffusionModel(source.canonical.replacingStore(SubstitutedStore(base: store, replacements: replacements)))
        let whole = try candidate.pipeline.generate(request).image.scalars
        let decoded = try candidate.pipeline.vae.decodeImage(latents: reference.output.latents).scalars
        // The same image to float reassociation (the engine's parallel splits); the block's own
        // effect is thousands of times larger.
        let maxDifference = zip(whole, decoded).map { abs($0 - $1) }.max() ?? .infinity
        #expect(whole.count == decoded.count)
        #expect(maxDifference < 1e-4)
        // And the block changed the image (the measurement has something to measure).
        #expect(ParityMetrics(reference: reference.output.image.scalars, candidate: decoded, peak: 1).psnr < 80)
    }

    @Test("of two alike weights the one with 100 times the gain gets the finer storage; picks keep the layer's error and count its noise")
    func gainsMoveBits() throws {
        func alike(_ name: String, gain: Double) -> Sensitivity.TensorOptions {
            Sensitivity.TensorOptions(
                name: name, shape: [32, 32],
                candidates: [
                    .init(storage: .ggml(.f16), bytes: 2048, relativeError: 1e-8, weightSNR: 80),
                    .init(storage: .ggml(.q8_0), bytes: 1088, relativeError: 1e-5, weightSNR: 50),
                    .init(storage: .ggml(.q4_0), bytes: 576, relativeError: 1e-3, weightSNR: 30),
                ], weighted: true, gain: gain)
        }
        for (ga, gb) in [(1.0, 100.0), (100.0, 1.0)] {
            let tensors = [alike("a", gain: ga), alike("b", gain: gb)]
            let a = try #require(BudgetAllocator.allocate(tensors, fixedBytes: 0, goal: .bytes(1088 + 576), offset: 0))
            let louder = ga > gb ? "a" : "b"
            for p in a.picks {
                #expect(p.storage == (p.name == louder ? .ggml(.q8_0) : .ggml(.q4_0)), "\(p.name) gains \(ga), \(gb)")
                #expect(p.noise == p.relativeError * (p.name == "a" ? ga : gb))
            }
            #expect(abs(a.noise - (100 * 1e-5 + 1e-3)) < 1e-15)
        }
    }

    @Test(
        "with measured gains the first attempt's predicted image PSNR is within 3 dB of what verify measures in float compute (tiny fixture, two sizes)"
    )
    func predictionHolds() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try StableDiffusionModel(path: tinySD1)
        for goal in [QualityBudget.Goal.bytes(5_600_000), .bytes(3_600_000)] {
            var options = QualityBudget.Options(goal: goal)
            options.maxAttempts = 1
            // Float compute: the layer gains alone (Int8InputNoiseTests covers the int8 proof).
            options.compute = .f32
            let result = try QualityBudget.run(source, to: folder.appendingPathComponent("auto.wpk").path, options: options)
            let gains = try #require(result.gains)
            // Every block the proof runs was measured, and the encoder's were not.
            #expect(gains.groups.count >= 15)
            for g in gains.groups {
                #expect((g.imagePSNR != nil) == (g.name != "vae encoder"), "\(g.name)")
            }
            // The token embedding is measured like a weight in .wpk, and stays F16 in the uniform
            // points of the report, as `--dtype q8_0` keeps it.
            let embedding = try #require(result.tensors.first { $0.name.hasSuffix("token_embedding.weight") })
            let f16 = try #require(embedding.candidates.first { $0.storage == .ggml(.f16) }).bytes
            let q8 = try #require(embedding.candidates.first { $0.storage == .ggml(.q8_0) }).bytes
            let everything = BudgetAllocator.uniform(result.tensors, storage: .ggml(.q8_0), fixedBytes: result.fixedBytes).bytes
            #expect(result.uniform([.ggml(.q8_0)]).first?.bytes == everything + f16 - q8)
            let first = try #require(result.attempts.first)
            #expect(abs(first.predictedPSNR - first.measuredPSNR) < 3, "predicted \(first.predictedPSNR), measured \(first.measuredPSNR)")
            try FileManager.default.removeItem(at: folder.appendingPathComponent("auto.wpk"))
        }
    }
}
