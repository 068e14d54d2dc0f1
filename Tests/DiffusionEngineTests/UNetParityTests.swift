import CheckpointFormats
import Foundation
import TensorCore
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
