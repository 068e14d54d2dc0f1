import ArgumentParser
import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

/// The command line over the ModelLoading library: --config, the tiny SDXL single file, and the
/// small things a new user trips on.
@Suite("command line over the library")
struct LibrarySeamCLITests {
    static let fixtures = repositoryURL.appendingPathComponent("Fixtures")
    static let ddimGolden = fixtures.appendingPathComponent("golden/pipelines/ddim.safetensors").path

    /// Writes the DDIM golden's initial latents as a --latents file.
    func latentsFile(in folder: URL) throws -> String { try writeInitialLatents(of: Self.ddimGolden, in: folder) }

    static func maxAbsoluteDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    /// The tiny SD 1.x single file has 4 heads of 8 in its text encoder, which no single file
    /// states: without --config the engine assumes 64-wide heads and its text embeddings are
    /// wrong; with the diffusers folder's configurations they match diffusers'.
    @Test func configFolderMakesTheSingleFileMatchDiffusers() throws {
        let folder = try makeTemporaryFolder()
        let latents = try latentsFile(in: folder)
        let expected = try SafetensorsFile(path: Self.ddimGolden).tensor(named: "prompt_embeds").floats()
        func textEmbeddings(_ extra: [String]) throws -> [Float] {
            let out = folder.appendingPathComponent("trace-\(extra.count).safetensors").path
            let r = try run(
                [
                    "trace", tinyModel, "--prompt", "a photo of an astronaut riding a horse", "--latents", latents,
                    "--steps", "1", "--scheduler", "ddim", "-o", out,
                ] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            return try SafetensorsFile(path: out).tensor(named: "text.cond").floats()
        }
        let configured = try textEmbeddings(["--config", Self.fixtures.appendingPathComponent("tiny-sd1/diffusers").path])
        let assumed = try textEmbeddings([])
        #expect(configured.count == expected.count)
        #expect(Self.maxAbsoluteDifference(configured, expected) < 1e-4)
        #expect(Self.maxAbsoluteDifference(assumed, expected) > 1e-2, "the single file alone should not know the head count")
        let inspect = try run(["inspect", tinyModel])
        #expect(inspect.stdout.contains("heads:      assumed 64-wide"))
        let missing = try run(["generate", tinyModel, "-o", folder.appendingPathComponent("x.png").path, "--config", "/nonexistent-config"])
        #expect(missing.status == 66, "\(missing.stderr)")
    }

    @Test func tinySDXLSingleFileGenerates() throws {
        let folder = try makeTemporaryFolder()
        let png = folder.appendingPathComponent("xl.png").path
        // Its text encoders have a 514-token vocabulary: the folder gives the tokenizers (and configurations).
        let r = try run([
            "generate", Self.fixtures.appendingPathComponent("tiny-sdxl/tiny-sdxl.safetensors").path,
            "--config", Self.fixtures.appendingPathComponent("tiny-sdxl/diffusers").path,
            "--prompt", "a red bicycle", "--steps", "2", "--size", "64", "-o", png,
        ])
        #expect(r.status == 0, "\(r.stderr)")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: png))
        #expect(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]))
    }

    /// A model with a tokenizer of its own, opened without it (tiny-sdxl's single file: its text
    /// encoders have 514 tokens, too few for the bundled CLIP tokenizer's start and end ids), is
    /// refused when it is opened, with one line naming the way out, and nothing is written.
    @Test(arguments: ["generate", "verify"])
    func aVocabularyTooSmallForTheTokenizerIsRefusedAtOpen(_ command: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = Self.fixtures.appendingPathComponent("tiny-sdxl/tiny-sdxl.safetensors").path
        let png = folder.appendingPathComponent("x.png").path
        let arguments =
            command == "generate"
            ? ["generate", file, "--steps", "1", "--size", "64", "-o", png] : ["verify", file, file, "--steps", "1", "--size", "64"]
        let r = try run(arguments)
        #expect(r.status == 65, "\(r.stderr)")
        #expect(r.stderr.contains("vocabulary of 514 tokens, too small for the bundled CLIP tokenizer"), "\(r.stderr)")
        #expect(r.stderr.contains("--config"))
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: png))
    }

    /// A `.wpk` converted from a diffusers folder with a tokenizer of its own (tiny-sd2: 514
    /// tokens) carries that tokenizer: `verify FOLDER FILE` and `generate FILE` need no --config.
    @Test func aConvertedFileCarriesItsTokenizer() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = Self.fixtures.appendingPathComponent("tiny-sd2/diffusers").path
        let file = folder.appendingPathComponent("sd2.wpk").path
        let convert = try run(["convert", source, file, "--dtype", "f16"])
        #expect(convert.status == 0, "\(convert.stderr)")
        let verify = try run(["verify", source, file, "--steps", "2"])
        #expect(verify.status == 0, "\(verify.stderr)")
        let png = folder.appendingPathComponent("sd2.png").path
        let generate = try run(["generate", file, "--steps", "1", "-o", png])
        #expect(generate.status == 0, "\(generate.stderr)")
        #expect(FileManager.default.fileExists(atPath: png))
    }

    @Test func inspectOfANonModelSaysItIsNotRecognised() throws {
        let folder = try makeTemporaryFolder()
        let path = folder.appendingPathComponent("plain.safetensors").path
        let values: [Float] = [1, 2]
        let view = TensorView(
            descriptor: TensorDescriptor(name: "weights", dtype: .f32, shape: Shape([2]), byteCount: 8),
            bytes: values.withUnsafeBytes { TensorBytes(copying: $0) })
        try SafetensorsWriter.write(
            [OutputTensor(name: "weights", dtype: .f32, shape: Shape([2]), sourceName: "weights", sourceDType: .f32, load: { view })],
            to: path, overwrite: false)
        let r = try run(["inspect", path])
        #expect(r.status == 0)
        #expect(r.stdout.contains("model:      not recognised"))
        #expect(!r.stdout.contains("prediction:"))
        #expect(!r.stdout.contains("unknown (unknown)"))
    }

    @Test func convertRefusesAnInputWithoutTensors() throws {
        let folder = try makeTemporaryFolder()
        let empty = folder.appendingPathComponent("empty.safetensors").path
        try Data([2, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)).write(to: URL(fileURLWithPath: empty))
        let output = folder.appendingPathComponent("empty.wpk").path
        let r = try run(["convert", empty, output])
        #expect(r.status == 65)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("no tensors"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test func aFilterInTheOtherNamingIsExplained() throws {
        let folder = try makeTemporaryFolder()
        let wpk = folder.appendingPathComponent("m.wpk").path
        #expect(try run(["convert", tinyModel, wpk, "--no-source-hash"]).status == 0)
        let r = try run(["inspect", wpk, "--filter", "first_stage_model.decoder.conv_out.*"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("note: --filter") && r.stderr.contains("vae.decoder.conv_out."), "\(r.stderr)")
        let canonical = try run(["inspect", wpk, "--filter", "vae.decoder.conv_out.*"])
        #expect(canonical.stdout.contains("vae.decoder.conv_out.weight") && canonical.stderr.isEmpty)
    }

    /// Discussions are paragraphs ArgumentParser wraps itself: at a wide terminal each paragraph
    /// is one line (a hard line break would show as a ragged short line).
    @Test(arguments: [
        (WeightPackCommand.self as any ParsableCommand.Type, "Inputs may be", "diffusers folders and .wpk files."),
        (Generate.self, "Runs the text encoder", "torch.Generator().manual_seed(S)."),
        (Convert.self, "Exit codes", "74 I/O error."),
    ])
    func helpParagraphsAreNotBrokenByHand(_ command: any ParsableCommand.Type, _ start: String, _ end: String) {
        let text = WeightPackCommand.helpMessage(for: command, columns: 1000)
        let line = text.split(separator: "\n").first { $0.contains(start) }
        #expect(line?.contains(end) == true, "\(text)")
    }
}
