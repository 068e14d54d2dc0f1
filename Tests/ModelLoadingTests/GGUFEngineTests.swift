import CheckpointFormats
import DiffusionEngine
import Foundation
import ModelLoading
import Quantization
import TensorCore
import TestSupport
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
        let config = try UNetConfiguration(
            jsonText: String(contentsOf: repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers/unet/config.json"), encoding: .utf8))
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

    /// verify's thresholds follow the least precise storage of any weight: a Q8_0 GGUF whose UNet
    /// convolutions stay F16 is judged as Q8_0, and the defaults pass what each type costs on the
    /// tiny fixture while a far stricter figure fails.
    @Test func verifyJudgesByTheLeastPreciseStorage() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let gguf = folder + "/q8.gguf", wpk = folder + "/q4.wpk"
        _ = try ModelExport.writeGGUF(try CanonicalModel.open(tinySD1), dtype: .q8_0, to: gguf, overwrite: false, tool: "tests")
        var options = Conversion.Options()
        options.ggmlType = .q4_0
        options.recordSourceDigest = false
        _ = try Conversion.write(try CanonicalModel.open(tinySD1), to: wpk, options: options)
        let reference = try StableDiffusionModel(path: tinySD1)
        let q8 = try StableDiffusionModel(path: gguf), q4 = try StableDiffusionModel(path: wpk)
        #expect(q8.unetStorage == .plain(.f16))
        #expect(q8.weakestStorage() == .blocks(.q8_0))
        #expect(q4.weakestStorage() == .blocks(.q4_0))
        #expect(reference.weakestStorage() == .plain(.f32))
        var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
        request.steps = 4
        request.width = 64
        request.height = 64
        for candidate in [q8, q4] {
            let report = try Verification.verify(reference: reference, candidate: candidate, request: request)
            #expect(report.passed, "\(report.thresholds.label): \(report.stages.map { "\($0.name) \($0.value)" })")
            let strict = try Verification.verify(
                reference: reference, candidate: candidate, request: request,
                thresholds: .defaults(for: .plain(.f16)))
            #expect(!strict.passed, "\(report.thresholds.label) judged as F16")
        }
        // The reference's half run once and compared with both candidates (what the quality
        // budget does across attempts) measures what a fresh run for each one does.
        let once = try Verification.ReferenceRun(reference, request: request)
        for candidate in [q8, q4, q8] {
            let shared = try Verification.verify(once, candidate: candidate)
            let fresh = try Verification.verify(reference: reference, candidate: candidate, request: request)
            #expect(shared.stages.map(\.name) == ["text", "unet", "vae", "latents", "image"])
            for (a, b) in zip(shared.stages, fresh.stages) {
                // The same arithmetic on the same inputs; a BLAS's threading may reorder sums.
                #expect(abs(a.value - b.value) <= 1e-3 * max(1, abs(b.value)) || a.value == b.value, "\(a.name): \(a.value) vs \(b.value)")
            }
        }
    }
}

/// A configuration the model ships that is not valid JSON is an error, never a silent fall back
/// to derived values (issue 16).
@Suite struct ShippedConfigurationTests {
    @Test func aMalformedShippedConfigurationIsRefused() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let copy = folder + "/diffusers"
        try FileManager.default.copyItem(atPath: repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers").path, toPath: copy)
        _ = try StableDiffusionModel(path: copy)
        try Data("{\"_class_name\": \"PNDMScheduler\", ".utf8).write(to: URL(fileURLWithPath: copy + "/scheduler/scheduler_config.json"))
        #expect {
            _ = try StableDiffusionModel(path: copy)
        } throws: { error in
            (error as? ModelLoadingError)?.code == .missingConfiguration && "\(error)".contains("scheduler/scheduler_config.json")
        }
    }
}
