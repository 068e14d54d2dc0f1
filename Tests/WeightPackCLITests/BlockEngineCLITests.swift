import CheckpointFormats
import Foundation
import TestSupport
import Testing

/// `generate`, `trace` and `verify` run a Q4_K `.wpk` and a Q4_K `.gguf` directly (issue 13,
/// item 4): the engine computes with the blocks, and `verify` judges them by their type.
@Suite("engine commands on ggml block files")
struct BlockEngineCLITests {
    @Test("generate, trace and verify on Q4_K", arguments: ["q4k.wpk", "q4k.gguf"])
    func commandsRunBlockFiles(name: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = folder.appendingPathComponent(name).path
        let made =
            name.hasSuffix(".gguf")
            ? try run(["export", tinyModel, model, "--format", "gguf", "--dtype", "q4_k"])
            : try run(["convert", tinyModel, model, "--dtype", "q4_k"])
        #expect(made.status == 0, "\(made.stderr)")
        let png = folder.appendingPathComponent("x.png").path
        let g = try run(["generate", model, "--steps", "3", "--size", "64", "-o", png])
        #expect(g.status == 0, "\(g.stderr)")
        #expect(FileManager.default.fileExists(atPath: png))
        let latents = folder.appendingPathComponent("latents.safetensors").path
        let noise = try SafetensorsFile(path: EngineCLITests.golden).tensor(named: "init_latents")
        try SafetensorsWriter.write(
            [OutputTensor(name: "latents", dtype: .f32, shape: noise.descriptor.shape, sourceName: "latents", sourceDType: .f32, load: { noise })],
            to: latents, overwrite: false)
        let traced = folder.appendingPathComponent("t.safetensors").path
        let t = try run(["trace", model, "--steps", "2", "--latents", latents, "-o", traced])
        #expect(t.status == 0, "\(t.stderr)")
        #expect(try SafetensorsFile(path: traced).tensors.count > 2)
        let v = try run(["verify", tinyModel, model, "--steps", "4", "--size", "64"])
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
        // The tiny model's rows fit no 256-value block but one (Docs/quantization.md), so the
        // weakest storage is the one k-block tensor's Q4_K.
        #expect(v.stdout.contains("candidate weights Q4_K"), "\(v.stdout)")
        let strict = try run(["verify", tinyModel, model, "--steps", "4", "--size", "64", "--min-stage-snr", "40"])
        #expect(strict.status == 1, "\(strict.stdout)")
    }
}
