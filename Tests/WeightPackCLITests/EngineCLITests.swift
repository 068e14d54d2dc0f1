import ArgumentParser
import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

/// `generate`, `trace` and `verify` on the tiny SD 1.x fixture, by running the built binary.
@Suite("engine commands: generate, trace, verify")
struct EngineCLITests {
    static let golden = repositoryURL.appendingPathComponent("Fixtures/golden/pipelines/ddim.safetensors").path

    @Test func argumentsParse() throws {
        let g = try #require(
            try WeightPackCommand.parseAsRoot([
                "generate", "m", "--prompt", "p", "-o", "x.png", "--scheduler", "euler-a",
                "--timestep-spacing", "trailing", "--prediction-type", "v", "--size", "64",
            ]) as? Generate)
        #expect(g.generation.scheduler == .eulerAncestral && g.generation.timestepSpacing == .trailing && g.generation.size == 64)
        #expect(throws: (any Error).self) { try WeightPackCommand.parseAsRoot(["generate", "m", "-o", "x.png", "--size", "65"]) }
        #expect(throws: (any Error).self) { try WeightPackCommand.parseAsRoot(["generate", "m", "-o", "x.png", "--scheduler", "lms"]) }
        #expect(throws: (any Error).self) { try WeightPackCommand.parseAsRoot(["trace", "m", "-o", "t.safetensors"]) }
        let v = try #require(try WeightPackCommand.parseAsRoot(["verify", "a", "b", "--json", "--min-stage-snr", "30"]) as? Verify)
        #expect(v.json && v.minStageSnr == 30)
    }

    @Test func helpListsTheCommands() throws {
        let r = try run(["--help"])
        for name in ["generate", "trace", "verify"] { #expect(r.stdout.contains(name)) }
    }

    @Test func generateWritesAPNGWithTextChunks() throws {
        let folder = try makeTemporaryFolder()
        let out = folder.appendingPathComponent("cat.png").path
        let r = try run(["generate", tinyModel, "--prompt", "a cat", "--steps", "4", "--size", "64", "--seed", "3", "-o", out])
        #expect(r.status == 0, "\(r.stderr)")
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
        #expect(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]))
        #expect(String(decoding: bytes, as: UTF8.self).contains("a cat"))
        // Same seed, same image; the output is not overwritten without --force.
        let again = try run(["generate", tinyModel, "--prompt", "a cat", "--steps", "4", "--size", "64", "--seed", "3", "-o", out])
        #expect(again.status == 73)
    }

    /// `--compute bf16` runs where the processor has AVX512_BF16 (and records the choice in the
    /// PNG), and is refused with exit 69 and no output elsewhere (or under
    /// `WEIGHTPACK_KERNELS=avx2`, as CI also runs the suite).
    @Test func generateComputesInBF16OrSaysWhyNot() throws {
        let available = try run(["version", "--verbose"]).stdout.contains("bf16 compute available")
        let folder = try makeTemporaryFolder()
        let out = folder.appendingPathComponent("bf16.png").path
        let r = try run(["generate", tinyModel, "--prompt", "a cat", "--steps", "4", "--size", "64", "--seed", "3", "--compute", "bf16", "-o", out])
        if available {
            #expect(r.status == 0, "\(r.stderr)")
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
            #expect(String(decoding: bytes, as: UTF8.self).contains("\"compute\":\"bf16\""))
        } else {
            #expect(r.status == 69 && r.stderr.contains("AVX512_BF16"), "\(r.status): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
        }
        #expect(try run(["generate", tinyModel, "-o", out, "--compute", "f16"]).status == 64)
    }

    /// `--compute int8` on a model converted with `--dtype int8` runs where the processor has
    /// AVX512_VNNI (and records the choice in the PNG), and is refused with exit 69 and no output
    /// elsewhere (or under `WEIGHTPACK_KERNELS=avx2`).
    @Test func generateComputesInInt8OrSaysWhyNot() throws {
        let available = try run(["version", "--verbose"]).stdout.contains("int8 compute available")
        let folder = try makeTemporaryFolder()
        let model = folder.appendingPathComponent("int8.wpk").path
        #expect(try run(["convert", tinyModel, model, "--dtype", "int8"]).status == 0)
        let out = folder.appendingPathComponent("int8.png").path
        let r = try run(["generate", model, "--prompt", "a cat", "--steps", "4", "--size", "64", "--seed", "3", "--compute", "int8", "-o", out])
        if available {
            #expect(r.status == 0, "\(r.stderr)")
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
            #expect(String(decoding: bytes, as: UTF8.self).contains("\"compute\":\"int8\""))
            #expect(!r.stderr.contains("no int8 or Q8_0 weights"), "\(r.stderr)")
            // A model without int8 weights runs in float, and says so.
            let float = try run([
                "generate", tinyModel, "--prompt", "a cat", "--steps", "2", "--size", "64", "--compute", "int8", "-o", out, "--force",
            ])
            #expect(float.status == 0 && float.stderr.contains("no int8 or Q8_0 weights"), "\(float.status): \(float.stderr)")
        } else {
            #expect(r.status == 69 && r.stderr.contains("AVX512_VNNI"), "\(r.status): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }

    /// Without --compute, generate, trace and verify compute as `auto` says: in the precision the
    /// UNet's weights are stored in (int8 blocks, or all BF16) where the processor has its
    /// products (the image then equals --compute int8's or bf16's, byte for byte), float
    /// otherwise and for float weights; --compute f32 keeps such a model in float.
    @Test(arguments: [("int8", "int8", "int8 compute available"), ("bf16", "BF16", "bf16 compute available")])
    func storedPrecisionIsTheDefaultArithmeticWhereTheProcessorHasIt(dtype: String, label: String, capability: String) throws {
        let available = try run(["version", "--verbose"]).stdout.contains(capability)
        let expected = available ? dtype : "f32"
        let folder = try makeTemporaryFolder()
        let model = folder.appendingPathComponent("\(dtype).wpk").path
        #expect(try run(["convert", tinyModel, model, "--dtype", dtype]).status == 0)
        // --verbose says what auto chose.
        func generate(_ model: String, _ name: String, _ extra: [String] = [], chosen: String? = nil) throws -> String {
            let out = folder.appendingPathComponent(name).path
            let r = try run(["generate", model, "--prompt", "a cat", "--steps", "3", "--size", "64", "--seed", "5", "-o", out, "--verbose"] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            if let chosen { #expect(r.stderr.contains("weightpack: compute: \(chosen)"), "\(r.stderr)") }
            return String(decoding: try Data(contentsOf: URL(fileURLWithPath: out)), as: UTF8.self)
        }
        let automatic = try generate(model, "auto.png", chosen: expected)
        let float = try generate(model, "f32.png", ["--compute", "f32"])
        #expect(!float.contains("\"compute\""))
        #expect(!(try generate(tinyModel, "model.png", chosen: "f32")).contains("\"compute\""))
        if available {
            #expect(automatic.contains("\"compute\":\"\(dtype)\""))
            #expect(automatic == (try generate(model, "\(dtype).png", ["--compute", dtype])))
            #expect(automatic != float)
        } else {
            #expect(automatic == float)
            // Asked for by name where it cannot run: verify and trace refuse with exit 69 and
            // write nothing, as generate does.
            let report = folder.appendingPathComponent("refused-report").path
            let v = try run(["verify", tinyModel, model, "--steps", "2", "--size", "64", "--compute", dtype, "--report", report])
            #expect(v.status == 69 && !FileManager.default.fileExists(atPath: report), "\(v.status): \(v.stderr)")
        }
        // trace records what generate computes, and says in which arithmetic.
        let latents = try writeInitialLatents(of: Self.golden, in: folder)
        let traced = folder.appendingPathComponent("trace.safetensors").path
        let t = try run(["trace", model, "--prompt", "a cat", "--latents", latents, "--steps", "2", "--scheduler", "ddim", "-o", traced])
        #expect(t.status == 0, "\(t.stderr)")
        #expect(try SafetensorsFile(path: traced).metadata["compute"] == expected)
        // verify judges the arithmetic generate uses, at the storage's thresholds.
        let verified = try run(["verify", tinyModel, model, "--steps", "3", "--size", "64", "--json"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        let json = try JSONParser.parse(verified.stdout).objectValue
        #expect(json?["candidate_compute"]?.stringValue == expected)
        #expect(json?["candidate_dtype"]?.stringValue == label)
        let table = try run(["verify", tinyModel, model, "--steps", "3", "--size", "64", "--compute", "f32"])
        #expect(table.status == 0 && table.stdout.contains("candidate weights \(label);"), "\(table.stdout)")
    }

    @Test func traceMatchesDiffusersDDIM() throws {
        let folder = try makeTemporaryFolder()
        // The golden's initial latents as a --latents file.
        let file = try writeInitialLatents(of: Self.golden, in: folder)
        let golden = try SafetensorsFile(path: Self.golden)
        let out = folder.appendingPathComponent("trace.safetensors").path
        let r = try run([
            "trace", tinyModel, "--prompt", "a photo of an astronaut riding a horse", "--latents", file,
            "--steps", "6", "--scheduler", "ddim", "-o", out,
        ])
        #expect(r.status == 0, "\(r.stderr)")
        let trace = try SafetensorsFile(path: out)
        for name in ["tokens.cond", "tokens.uncond", "text.cond", "text.uncond", "latents.initial", "noise_pred.0", "latents.5", "image"] {
            #expect(trace.descriptor(named: name) != nil, "\(name) missing")
        }
        #expect(trace.descriptor(named: "tokens.cond")?.dtype == .i64)
        #expect(trace.descriptor(named: "image")?.shape.dimensions == [64, 64, 3])
        let image = try trace.tensor(named: "image").floats(), expected = try golden.tensor(named: "image").floats()
        var squares = 0.0
        for (a, b) in zip(image, expected) { squares += Double(a - b) * Double(a - b) }
        let psnr = 10 * log10(1 / (squares / Double(image.count)))
        #expect(psnr >= 40, "trace image PSNR \(psnr) dB")
    }

    @Test func verifyPassesAnFP16Conversion() throws {
        let folder = try makeTemporaryFolder()
        let f16 = folder.appendingPathComponent("f16.wpk").path
        #expect(try run(["convert", tinyModel, f16, "--dtype", "f16"]).status == 0)
        let report = folder.appendingPathComponent("report").path
        let r = try run(["verify", tinyModel, f16, "--steps", "6", "--size", "64", "--scheduler", "ddim", "--json", "--report", report])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONParser.parse(r.stdout)
        #expect(json.objectValue?["passed"] == .bool(true))
        #expect(json.objectValue?["candidate_dtype"]?.stringValue == "F16")
        for name in ["reference.png", "candidate.png", "difference.png", "comparison.png", "report.json"] {
            #expect(FileManager.default.fileExists(atPath: report + "/" + name), "\(name) missing")
        }
    }

    @Test func verifyFailsWhenTwoCrossAttentionTensorsAreSwapped() throws {
        let folder = try makeTemporaryFolder()
        let source = try SafetensorsFile(path: tinyModel)
        let a = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        let b = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
        let plan = OutputTensor.plan(from: source, dtype: .keep).map { t -> OutputTensor in
            guard t.name == a || t.name == b else { return t }
            let other = t.name == a ? b : a
            return OutputTensor(
                name: t.name, dtype: t.dtype, shape: t.shape, sourceName: other, sourceDType: t.sourceDType,
                load: { try source.tensor(named: other) })
        }
        let swapped = folder.appendingPathComponent("swapped.safetensors").path
        try SafetensorsWriter.write(plan, metadata: ["format": "pt"], to: swapped, overwrite: false)
        let r = try run(["verify", tinyModel, swapped, "--steps", "6", "--size", "64", "--scheduler", "ddim"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("stage 'unet'"), "\(r.stderr)")
    }

    @Test func missingLatentsFileIsExit66() throws {
        let r = try run(["trace", tinyModel, "--latents", "/nonexistent/latents.safetensors", "-o", "/tmp/never.safetensors"])
        #expect(r.status == 66)
    }
}
