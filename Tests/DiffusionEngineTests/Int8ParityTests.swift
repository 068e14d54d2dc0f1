import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import Testing

@testable import DiffusionEngine

/// The engine computing with int8 weights (issue 7): the tiny fixture's text encoder and VAE,
/// converted to int8 `.wpk` files, against the f32 goldens of transformers and diffusers.
@Suite("int8 weights")
struct Int8ParityTests {
    /// Writes `store` as an int8 `.wpk` with the default rules and opens it.
    static func int8(_ store: any TensorStore, in folder: URL, name: String) throws -> WPKFile {
        let path = folder.appendingPathComponent(name).path
        try WPKWriter.write(
            OutputTensor.plan(from: store, rules: QuantizationRules()), metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: true)
        return try WPKFile(path: path)
    }

    static func folder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("weightpack-int8-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func textEncoderOnInt8WeightsStaysCloseToTheGolden() throws {
        let folder = try Self.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try Fixture.safetensors("text_encoder/model.safetensors", in: Fixture.diffusers)
        let wpk = try Self.int8(source, in: folder, name: "te.wpk")
        let config = try CLIPTextConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("text_encoder/config.json"), encoding: .utf8))
        let model = try CLIPTextModel(store: wpk, configuration: config)
        // The weights really are int8 (the token table included) and are read as such.
        #expect(model.weights.isQuantized("encoder.layers.0.self_attn.q_proj.weight"))
        #expect(model.weights.isQuantized("embeddings.token_embedding.weight"))
        #expect(!model.weights.isQuantized("embeddings.position_embedding.weight"))
        let golden = try Fixture.safetensors("text_encoder.safetensors")
        for prompt in ModelParityTests.prompts {
            let last = try model.encode([try golden.int64s("\(prompt).input_ids")])
            let m = QuantizationMetrics.compare(reference: try golden.floats("\(prompt).last_hidden_state"), candidate: last.scalars)
            print("int8 text encoder \(prompt): \(m)")
            // Measured 38.5-38.9 dB, cosine 0.99993.
            #expect((m.snrDecibels ?? .infinity) >= 35, "\(prompt): \(m)")
            #expect(m.cosine >= 0.9998)
        }
    }

    @Test func vaeDecodeOnInt8WeightsStaysCloseToTheGolden() throws {
        let folder = try Self.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try Fixture.safetensors("vae/diffusion_pytorch_model.safetensors", in: Fixture.diffusers)
        let wpk = try Self.int8(source, in: folder, name: "vae.wpk")
        #expect(wpk.entries.filter { $0.quantization != nil }.count > 30)
        let config = try AutoencoderKLConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("vae/config.json"), encoding: .utf8))
        let vae = try AutoencoderKL(store: wpk, configuration: config)
        #expect(vae.weights.isQuantized("decoder.up_blocks.0.resnets.0.conv1.weight"))
        let golden = try Fixture.safetensors("vae.safetensors")
        let image = try vae.decode(FloatTensor(shape: [1, 4, 8, 8], values: try golden.floats("decode.latent")))
        let m = QuantizationMetrics.compare(reference: try golden.floats("decode.sample"), candidate: image.scalars)
        print("int8 VAE decode: \(m)")
        // Measured 31.1 dB, cosine 0.99961 (every conv of the VAE but conv_in/conv_out is int8).
        #expect((m.snrDecibels ?? .infinity) >= 28, "\(m)")
        #expect(m.cosine >= 0.999)
    }
}
