import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

/// Issue 11's proof that `--config` makes a single file with unpublished head counts match
/// diffusers: `Fixtures/tiny-sd1-heads16` (make_tiny_sd1_heads16.py) is a tiny SD 1.x LDM file
/// whose text encoder has 2 heads of 16 (width 32). The file cannot say so; the engine then
/// assumes 64-wide heads (one head of 32). The golden is transformers' CLIPTextModel output for
/// the prompt, computed from the very F16 weights the file holds.
@Suite("--config: 2 heads of 16 in a single file")
struct HeadCountConfigCLITests {
    static let folder = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1-heads16")
    static let model = folder.appendingPathComponent("tiny-sd1-heads16.safetensors").path
    static let config = folder.appendingPathComponent("config").path
    static let golden = folder.appendingPathComponent("golden.safetensors").path
    static let prompt = "a photo of an astronaut riding a horse"

    /// The text embeddings `trace` records for the golden's prompt.
    func textEmbeddings(_ extra: [String], in scratch: URL) throws -> [Float] {
        // Any initial noise of the model's latent shape: only the text encoder is compared.
        let ddim = try SafetensorsFile(path: repositoryURL.appendingPathComponent("Fixtures/golden/pipelines/ddim.safetensors").path)
        let latents = try ddim.tensor(named: "init_latents")
        let latentsFile = scratch.appendingPathComponent("latents.safetensors").path
        if !FileManager.default.fileExists(atPath: latentsFile) {
            try SafetensorsWriter.write(
                [
                    OutputTensor(
                        name: "latents", dtype: .f32, shape: latents.descriptor.shape, sourceName: "latents", sourceDType: .f32, load: { latents })
                ],
                to: latentsFile, overwrite: false)
        }
        let out = scratch.appendingPathComponent("trace-\(extra.count).safetensors").path
        let r = try run(
            ["trace", Self.model, "--prompt", Self.prompt, "--latents", latentsFile, "--steps", "1", "--scheduler", "ddim", "-o", out] + extra)
        #expect(r.status == 0, "\(r.stderr)")
        return try SafetensorsFile(path: out).tensor(named: "text.cond").floats()
    }

    static func maxAbsoluteDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    @Test func configMakesTheTextEncoderMatchTransformers() throws {
        let scratch = try makeTemporaryFolder()
        let golden = try SafetensorsFile(path: Self.golden)
        #expect(golden.metadata["prompt"] == Self.prompt)
        let expected = try golden.tensor(named: "prompt_embeds").floats()
        #expect(expected.count == 77 * 32)

        let configured = try textEmbeddings(["--config", Self.config], in: scratch)
        #expect(configured.count == expected.count)
        #expect(Self.maxAbsoluteDifference(configured, expected) < 1e-4)

        // Without the configuration the one 32-wide head the engine assumes is far off
        // (make_tiny_sd1_heads16.py measured 0.51 in transformers with num_attention_heads=1).
        let assumed = try textEmbeddings([], in: scratch)
        #expect(assumed.count == expected.count)
        #expect(Self.maxAbsoluteDifference(assumed, expected) > 0.1)
    }

    @Test func inspectSaysTheHeadCountsWereAssumed() throws {
        let r = try run(["inspect", Self.model])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("heads:      assumed 64-wide"))
        #expect(r.stdout.contains("text_encoder: width 32, 2 layers"))
    }
}
