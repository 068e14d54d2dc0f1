import ArgumentParser
import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

/// `--lora`, `--embedding` and `--token` of generate, trace and verify, and the merge proof
/// (`verify BASE MERGED --lora X:SCALE`), by running the built binary on the tiny SD 1.x fixture.
@Suite("run-time adapters on the command line")
struct RuntimeAdapterCLITests {
    @Test("generate, trace and verify parse --lora, --embedding and --token; bad ones are usage errors")
    func parsing() throws {
        let g = try #require(
            try WeightPackCommand.parseAsRoot([
                "generate", "m", "-o", "x.png", "--lora", "a.safetensors:0.8", "--lora", "b.safetensors",
                "--embedding", "e.pt", "--token", "<e>",
            ]) as? Generate)
        #expect(g.adapters.loras == ["a.safetensors:0.8", "b.safetensors"] && g.adapters.embeddings == ["e.pt"] && g.adapters.tokens == ["<e>"])
        let v = try #require(try WeightPackCommand.parseAsRoot(["verify", "a", "b", "--lora", "x.safetensors:0.8"]) as? Verify)
        #expect(v.adapters.loras == ["x.safetensors:0.8"])
        #expect(try WeightPackCommand.parseAsRoot(["trace", "m", "-o", "t.safetensors", "--latents", "l", "--lora", "x"]) is Trace)
        for arguments in [
            ["generate", "m", "-o", "x.png", "--token", "<t>"], ["generate", "m", "-o", "x.png", "--lora", "a:nan"],
            ["trace", "m", "-o", "t", "--latents", "l", "--embedding", "e", "--token", ""],
        ] {
            #expect(throws: (any Error).self, "\(arguments)") { _ = try WeightPackCommand.parseAsRoot(arguments) }
        }
        let usage = try run(["generate", tinyModel, "-o", "/nonexistent/x.png", "--token", "<t>"])
        #expect(usage.status == 64)
    }

    @Test("help documents the options and the verify proof form")
    func help() {
        func flat(_ text: String) -> String { text.split(whereSeparator: \.isWhitespace).joined(separator: " ") }
        for command in [Generate.self, Trace.self, Verify.self] as [any ParsableCommand.Type] {
            let text = flat(WeightPackCommand.helpMessage(for: command))
            for word in ["--lora", "--embedding", "--token"] { #expect(text.contains(word), "\(command) --help lacks \(word)") }
        }
        #expect(flat(WeightPackCommand.helpMessage(for: Verify.self)).contains("to the reference only"))
    }

    @Test("merge proof: verify BASE MERGED --lora X:0.8 passes; a merge at 0.8 checked against 0.88 fails with exit 1")
    func verifyProof() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let merged = folder.appendingPathComponent("merged.safetensors").path
        let lora = adapterFixture("sd1-kohya-lora.safetensors")
        let merge = try run(["merge", tinyModel, lora + ":0.8", "-o", merged])
        #expect(merge.status == 0, "\(merge.stderr)")
        let pass = try run(["verify", tinyModel, merged, "--lora", lora + ":0.8", "--steps", "3", "--size", "64", "--scheduler", "ddim", "--json"])
        #expect(pass.status == 0, "\(pass.stdout)\n\(pass.stderr)")
        #expect(pass.stdout.contains("\"reference_loras\""))
        // The final latent is judged 25 dB under the F32 stage threshold: run-time products round
        // differently from the merged weight, and sampling amplifies that by kernel-dependent amounts.
        #expect(pass.stdout.contains("\"threshold_db\": 55.0"), "\(pass.stdout)")
        let off = try run(["verify", tinyModel, merged, "--lora", lora + ":0.88", "--steps", "3", "--size", "64", "--scheduler", "ddim"])
        #expect(off.status == 1, "\(off.stdout)\n\(off.stderr)")
        #expect(off.stderr.contains("verify failed at stage"))
        // Without the adapter on the reference side the merged model is not the base either.
        let bare = try run(["verify", tinyModel, merged, "--steps", "3", "--size", "64", "--scheduler", "ddim"])
        #expect(bare.status == 1)
    }

    @Test("trace with --lora records the UNet output of the merged model")
    func traceEqualsMerged() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let lora = adapterFixture("sd1-locon.safetensors") + ":0.8"
        let merged = folder.appendingPathComponent("merged.safetensors").path
        #expect(try run(["merge", tinyModel, lora, "-o", merged, "--dtype", "f32"]).status == 0)
        // Standard-normal initial noise (the LoRA pipeline golden's) as a --latents file.
        let latents = try SafetensorsFile(path: adapterFixture("sd1-lora-pipeline.safetensors")).tensor(named: "init_latents")
        let noise = folder.appendingPathComponent("latents.safetensors").path
        try SafetensorsWriter.write(
            [
                OutputTensor(
                    name: "latents", dtype: .f32, shape: latents.descriptor.shape, sourceName: "latents", sourceDType: .f32, load: { latents })
            ],
            to: noise, overwrite: false)
        func trace(_ model: String, _ extra: [String], _ name: String) throws -> SafetensorsFile {
            let out = folder.appendingPathComponent(name).path
            let r = try run(["trace", model, "--latents", noise, "--steps", "2", "--scheduler", "ddim", "-o", out] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            return try SafetensorsFile(path: out)
        }
        let runtime = try trace(tinyModel, ["--lora", lora], "trace-runtime.safetensors")
        let mergedTrace = try trace(merged, [], "trace-merged.safetensors")
        let base = try trace(tinyModel, [], "trace-base.safetensors")
        for name in ["text.cond", "noise_pred.0", "noise_pred.1"] {
            let a = try runtime.tensor(named: name).floats(), b = try mergedTrace.tensor(named: name).floats(),
                c = try base.tensor(named: name).floats()
            // L2 error relative to the merged trace's norm. noise_pred is after guidance, u + 7.5 (c - u):
            // rounding in c and u is multiplied by 7.5 |c| / |c - u| (measured 3e-4 here; the raw
            // UNet passes agree to 2e-6 in RuntimeAdditionsTests).
            func l2(_ x: [Float], _ y: [Float]) -> Double {
                let d = zip(x, y).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
                let n = y.reduce(0.0) { $0 + Double($1) * Double($1) }
                return (d / max(n, 1e-30)).squareRoot()
            }
            let gap = l2(a, b), effect = l2(c, b)
            print("\(name): runtime vs merged \(gap), the adapter's effect \(effect) (L2 relative)")
            #expect(gap <= 1e-3)
            if name != "text.cond" { #expect(effect > 100 * max(gap, 1e-7)) }
        }
    }

    @Test("an adapter or embedding for another family is refused with 65 and one line")
    func refused() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("x.png").path
        for extra in [
            ["--lora", adapterFixture("sdxl-kohya-lora.safetensors")], ["--embedding", adapterFixture("ti-sdxl.safetensors")],
            ["--lora", adapterFixture("bad-alpha-nan.safetensors")], ["--lora", adapterFixture("ti-diffusers.safetensors")],
            ["--embedding", adapterFixture("sd1-kohya-lora.safetensors")],
        ] {
            let r = try run(["generate", tinyModel, "--steps", "1", "--size", "64", "-o", out] + extra)
            #expect(r.status == 65, "\(extra): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(extra): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
        }
        let missing = try run([
            "generate", tinyModel, "--steps", "1", "--size", "64", "-o", out, "--lora", folder.appendingPathComponent("none.safetensors").path,
        ])
        #expect(missing.status == 66, "\(missing.stderr)")
    }

    @Test("generate with an embedding uses its token and records the adapters in the PNG")
    func generateWithAdditions() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("cat.png").path
        let r = try run([
            "generate", tinyModel, "--prompt", "a <tinycat>", "--steps", "2", "--size", "64", "-o", out,
            "--embedding", adapterFixture("ti-a1111.pt"), "--token", "<tinycat>", "--lora", adapterFixture("sd1-loha.safetensors") + ":0.5",
        ])
        #expect(r.status == 0, "\(r.stderr)")
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: out)), as: UTF8.self)
        #expect(text.contains("sd1-loha.safetensors:0.5") && text.contains("ti-a1111.pt"))
    }
}
