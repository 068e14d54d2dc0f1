import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// The UNet against diffusers' `UNet2DConditionModel` on the tiny SD 1.x fixture
/// (`Fixtures/golden/unet.safetensors`, described in `Fixtures/README.md`).
@Suite("UNet parity with diffusers")
struct UNetParityTests {
    static func unet() throws -> UNet2DConditionModel {
        let config = try UNetConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("unet/config.json"), encoding: .utf8))
        let store = try Fixture.safetensors("unet/diffusion_pytorch_model.safetensors", in: Fixture.diffusers)
        return try UNet2DConditionModel(store: store, configuration: config)
    }

    @Test("one forward pass, batch of 2", arguments: ["t999", "t500"])
    func forward(_ key: String) throws {
        try expectUNetMatchesGolden(try Self.unet(), try Fixture.safetensors("unet.safetensors"), key: key, label: "SD 1.x")
    }

    /// The buffers the UNet keeps from step to step (``UNet2DConditionModel/releaseScratch()``)
    /// hold what the last pass left in them: a pass must not depend on their contents. Passes at
    /// t = 999, 500, 999, then 999 again after the buffers are freed: the three t = 999 outputs
    /// agree (1e-5 of the largest value: whether a product runs on one thread or two may differ
    /// while other tests run), the buffers do not grow from one pass to the next, and with F32
    /// weights every pass matches diffusers. F16 weights exercise the kept conversion scratch.
    @Test(arguments: [DType.f32, .f16])
    func buffersKeptFromStepToStepDoNotChangeTheResult(_ dtype: DType) throws {
        let golden = try Fixture.safetensors("unet.safetensors")
        let config = try UNetConfiguration(
            jsonText: try String(contentsOf: Fixture.diffusers.appendingPathComponent("unet/config.json"), encoding: .utf8))
        let file = try Fixture.safetensors("unet/diffusion_pytorch_model.safetensors", in: Fixture.diffusers)
        let store = MemoryStore()
        for d in file.tensors { store.add(d.name, shape: d.shape.dimensions, values: try file.tensor(named: d.name).floats(), dtype: dtype) }
        let model = try UNet2DConditionModel(store: store, configuration: config)
        let sample = FloatTensor(shape: [2, config.inChannels, 8, 8], values: try golden.floats("sample"))
        let context = FloatTensor(shape: [2, 77, config.crossAttentionDimension], values: try golden.floats("encoder_hidden_states"))
        func pass(_ key: String) throws -> [Float] {
            let t = try golden.int64s("\(key).timestep")[0]
            let out = try model.predict(sample, timestep: Float(t), encoderHiddenStates: context).scalars
            if dtype == .f32 {
                expectClose(out, try golden.floats("\(key).out"), shape: [2, config.outChannels, 8, 8], tolerance: 1e-3, "\(key) kept buffers")
            }
            return out
        }
        let first = try pass("t999")
        let held = model.scratchFloatsHeld
        #expect(held > 0)
        _ = try pass("t500")
        #expect(model.scratchFloatsHeld == held, "buffers grew from \(held) to \(model.scratchFloatsHeld) floats")
        let again = try pass("t999")
        #expect(model.scratchFloatsHeld == held)
        model.releaseScratch()
        #expect(model.scratchFloatsHeld == 0)
        let fresh = try pass("t999")
        for (label, other) in [("again", again), ("after release", fresh)] {
            let worst = relativeDifference(other, first)
            #expect(worst <= 1e-5, "\(dtype.name) t999 \(label): \(worst) of the largest value")
        }
    }

    @Test func configurationReadsTheFixture() throws {
        let c = try Self.unet().configuration
        #expect(c.blockOutChannels == [32, 32, 32, 64])
        #expect(c.attentionHeads == [8, 8, 8, 8])
        #expect(c.downBlockCrossAttention == [true, true, true, false])
        #expect(c.upBlockCrossAttention == [false, true, true, true])
        #expect(!c.useLinearProjection)
    }

    @Test func presetsValidate() throws {
        for c in [UNetConfiguration.sd15, .sd21, .sdxl] { try c.validate() }
        #expect(UNetConfiguration.sdxl.upTransformerLayers == [10, 2, 1])
    }

    @Test func wrongInputChannelsAreRejected() throws {
        let model = try Self.unet()
        #expect(throws: EngineError.self) {
            _ = try model.predict(FloatTensor.zeros([1, 3, 8, 8]), timestep: 1, encoderHiddenStates: FloatTensor.zeros([1, 77, 32]))
        }
    }
}
