import CheckpointFormats
import DiffusionEngine
import Foundation
import ModelLoading
import Quantization
import TensorCore
import Testing

/// The engine running a downloaded-style GGUF through the canonical names (issue 13): the
/// blocks reach the layers through the name map's store, not dequantised whole by the file.
@Suite struct GGUFEngineTests {
    /// A store that serves `base`'s tensors as plain F32 only (block tensors decoded whole by
    /// the GGUF reader), hiding its blocks from the engine.
    final class DecodedStore: TensorStore, @unchecked Sendable {
        let base: any TensorStore
        init(_ base: any TensorStore) { self.base = base }
        var formatName: String { "decoded" }
        var tensors: [TensorDescriptor] { base.tensors }
        var metadata: [String: String] { base.metadata }
        func tensor(named name: String) throws -> TensorView { try base.tensor(named: name) }
    }

    @Test func aComfyUNetComputesWithItsQ4_0Blocks() throws {
        let model = try CanonicalModel.open(repositoryURL.appendingPathComponent("Fixtures/gguf/tiny-sd1-unet-comfy.gguf").path)
        #expect(model.detection.familyID == "sd1")
        let config = try UNetConfiguration(jsonText: String(contentsOf: repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers/unet/config.json"), encoding: .utf8))
        let unet = try UNet2DConditionModel(store: model.store, configuration: config, prefix: "unet.")
        // Blocks reach the engine through the canonical store (a linear weight stored in rows
        // of 256, and a convolution stored reshaped to rows of 256).
        #expect(unet.weights.blockType("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight") == .q4_0)
        #expect(unet.weights.blockType("down_blocks.0.resnets.0.conv1.weight") == .q4_0)
        let reference = try UNet2DConditionModel(store: DecodedStore(model.store), configuration: config, prefix: "unet.")
        #expect(reference.weights.blockType("down_blocks.0.resnets.0.conv1.weight") == nil)

        let golden = try SafetensorsFile(path: repositoryURL.appendingPathComponent("Fixtures/golden/unet.safetensors").path)
        let sample = FloatTensor(shape: [2, 4, 8, 8], values: try golden.tensor(named: "sample").floats())
        let context = FloatTensor(shape: [2, 77, config.crossAttentionDimension], values: try golden.tensor(named: "encoder_hidden_states").floats())
        let out = try unet.predict(sample, timestep: 500, encoderHiddenStates: context)
        let decoded = try reference.predict(sample, timestep: 500, encoderHiddenStates: context)
        // The same values either way: only a BLAS's blocking may reorder sums.
        let scale = decoded.scalars.map { abs($0) }.max() ?? 1
        let worst = zip(out.scalars, decoded.scalars).map { abs($0 - $1) }.max() ?? .infinity
        #expect(worst <= 1e-4 * max(scale, 1), "blocks against decoded: \(worst)")
        // And against diffusers on the f32 weights: Q4_0 costs, but the output is the same signal.
        let m = QuantizationMetrics.compare(reference: try golden.tensor(named: "t500.out").floats(), candidate: out.scalars)
        print("Q4_0 ComfyUI UNet against the f32 golden: \(m)")
        // Measured 15.8 dB, cosine 0.9868 (the tiny fixture amplifies weight error: Docs/verify.md).
        #expect((m.snrDecibels ?? 0) >= 12 && m.cosine >= 0.98, "\(m)")
    }
}
