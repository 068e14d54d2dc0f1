import CheckpointFormats
import Foundation
import StrictJSON
import TestSupport
import Testing

/// `convert --dtype auto` and `export --format gguf --dtype auto` on the tiny fixture (issue 14):
/// the budget is met as measured by an independent `verify`, the recipe is in the file and
/// `inspect` shows it, the report renders, and budgets no mix meets write nothing.
@Suite("quality budget (--dtype auto) end to end", .serialized)
struct QualityBudgetCLITests {
    /// The proof's generation (QualityBudget.defaultVerification) as verify options.
    static let proof = ["--prompt", "a lighthouse on a rocky coast under a stormy sky", "--steps", "6", "--size", "256", "--seed", "0"]

    @Test("--help explains --dtype auto and its options")
    func help() throws {
        let r = try run(["convert", "--help"])
        for text in ["--dtype auto", "--target-psnr", "--max-size", "--report", "--calibration-size", "--attempts", "--uniform-gains"] {
            #expect(r.stdout.contains(text), "\(text)")
        }
        let e = try run(["export", "--help"])
        #expect(e.stdout.contains("--dtype auto"))
    }

    @Test(
        "option mistakes are usage errors (64) before anything runs",
        arguments: [
            ["--dtype", "auto"],
            ["--dtype", "auto", "--target-psnr", "30", "--max-size", "5MB"],
            ["--dtype", "q4_k", "--target-psnr", "30"],
            ["--dtype", "q4_k", "--uniform-gains"],
            ["--dtype", "auto", "--max-size", "lots"],
            ["--dtype", "auto", "--max-size=-5MB"],
            ["--dtype", "auto", "--target-psnr", "nan"],
            ["--dtype", "auto", "--target-psnr", "30", "--attempts", "9"],
            ["--dtype", "auto", "--target-psnr", "30", "--calibration-size", "100"],
            ["--dtype", "auto", "--target-psnr", "30", "--compress"],
            ["--dtype", "auto", "--target-psnr", "30", "--tensor-type", "*=q8_0"],
            // A report folder that could not be written at the end: refused before the model is.
            ["--dtype", "auto", "--target-psnr", "30", "--report", "/dev/null"],
            ["--dtype", "auto", "--target-psnr", "30", "--report", "/dev/null/report"],
        ])
    func usageErrors(_ options: [String]) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("x.wpk").path
        let r = try run(["convert", tinyModel, out] + options)
        #expect(r.status == 64, "\(options): \(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count <= 3, "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out))
        let s = try run(["export", tinyModel, folder.appendingPathComponent("x.safetensors").path, "--dtype", "auto", "--target-psnr", "30"])
        #expect(s.status == 64, "\(s.stderr)")
    }

    @Test("--target-psnr: the file meets the target as verify measures it, records its recipe, and is smaller than F16")
    func targetPSNR() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("auto.wpk").path
        let report = folder.appendingPathComponent("report").path
        let target = 35.0
        let r = try run(["convert", tinyModel, out, "--dtype", "auto", "--target-psnr", String(target), "--report", report, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let printed = try parseJSON(r.stdout)
        let measured = try #require(printed["measured"]?.objectValue?["measured_image_psnr"]?.doubleValue)
        #expect(measured >= target)
        #expect(r.stderr.contains("measured"))

        // An independent verify of the named file with the proof's settings measures the same.
        let v = try run(["verify", tinyModel, out, "--json"] + Self.proof)
        let stages = try #require(try parseJSON(v.stdout)["stages"]?.arrayValue)
        let image = try #require(stages.compactMap(\.objectValue).first { $0["stage"]?.stringValue == "image" })
        let psnr = try #require(image["psnr_db"]?.doubleValue)
        #expect(abs(psnr - measured) < 1e-6, "verify \(psnr) vs recorded \(measured)")
        #expect(psnr >= target)
        // In the same arithmetic: the proof computes as verify and generate do by default.
        let compute = try parseJSON(v.stdout)["candidate_compute"]?.stringValue
        #expect(compute != nil && printed["measured"]?.objectValue?["compute"]?.stringValue == compute)

        // Smaller than the same model in F16.
        let f16 = folder.appendingPathComponent("f16.wpk").path
        #expect(try run(["convert", tinyModel, f16, "--dtype", "f16"]).status == 0)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: out)[.size] as? Int)
        let f16Size = try #require(try FileManager.default.attributesOfItem(atPath: f16)[.size] as? Int)
        #expect(size < f16Size * 3 / 4, "\(size) vs F16 \(f16Size)")

        // The recipe: every chosen tensor's type is the type stored, with a predicted error.
        let inspected = try run(["inspect", out, "--json"])
        #expect(inspected.status == 0)
        let root = try parseJSON(inspected.stdout)
        let budget = try #require(root["quality_budget"]?.objectValue)
        let recipe = try #require(budget["recipe"]?.objectValue)
        #expect(recipe["goal"]?.objectValue?["target_psnr"]?.doubleValue == target)
        #expect(recipe["calibration"]?.objectValue?["prompts"]?.arrayValue?.count == 3)
        #expect(recipe["tool"]?.stringValue?.hasPrefix("weightpack") == true)
        let tensors = try #require(recipe["tensors"]?.objectValue)
        #expect(tensors.count > 300)
        // .wpk puts the token embedding on the ladder; every block the proof runs has a measured gain.
        #expect(tensors.keys.contains { $0.hasSuffix("token_embedding.weight") })
        let gains = try #require(recipe["gains"]?.arrayValue).compactMap(\.objectValue)
        #expect(gains.count >= 15)
        #expect(gains.filter { $0["image_psnr"]?.doubleValue != nil && $0["gain_db"]?.doubleValue != nil }.count >= 14)
        let stored = Dictionary(
            uniqueKeysWithValues: (root["tensors"]?.arrayValue ?? []).compactMap(\.objectValue).compactMap { t -> (String, String)? in
                guard let name = t["name"]?.stringValue else { return nil }
                // inspect names int8 storage I8; the recipe says int8.
                let dtype = t["dtype"]?.stringValue ?? "?"
                return (name, dtype == "I8" ? "int8" : dtype)
            })
        var checked = 0
        for (name, value) in tensors {
            let o = try #require(value.objectValue)
            #expect(o["predicted_error_db"]?.doubleValue != nil, "\(name)")
            #expect(stored[name] == o["type"]?.stringValue, "\(name): stored \(stored[name] ?? "none"), recipe \(o["type"]?.stringValue ?? "none")")
            checked += 1
        }
        #expect(checked == tensors.count)
        #expect(budget["measured"]?.objectValue?["passed"]?.boolValue == true)
        let text = try run(["inspect", out])
        #expect(text.stdout.contains("budget:     target image PSNR 35.00 dB"), "\(text.stdout)")
        #expect(text.stdout.contains("PREDICTED DB"))
        #expect(text.stdout.contains("gains measured for "), "\(text.stdout)")

        // The report: two PNGs and the JSON behind them.
        for name in ["size-vs-psnr.png", "bits-per-layer.png"] {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: report).appendingPathComponent(name))
            #expect(Array(bytes.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "\(name)")
        }
        let document = try parseJSON(
            String(decoding: try Data(contentsOf: URL(fileURLWithPath: report).appendingPathComponent("report.json")), as: UTF8.self))
        #expect((document["uniform"]?.arrayValue?.count ?? 0) >= 10)
        #expect((document["mixes"]?.arrayValue?.count ?? 0) >= 5)

        // A second run into the same report folder without --force is refused before it runs.
        let again = try run([
            "convert", tinyModel, folder.appendingPathComponent("b.wpk").path, "--dtype", "auto", "--target-psnr", "30", "--report", report,
        ])
        #expect(again.status == 64, "\(again.stderr)")
    }

    @Test("export --format gguf --dtype auto --max-size: within the size, recipe in the GGUF metadata")
    func ggufMaxSize() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("auto.gguf").path
        let limit = 9_000_000
        let r = try run(["export", tinyModel, out, "--dtype", "auto", "--max-size", "9MB"])
        #expect(r.status == 0, "\(r.stderr)")
        let size = try #require(try FileManager.default.attributesOfItem(atPath: out)[.size] as? Int)
        #expect(size <= limit)
        let inspected = try run(["inspect", out])
        #expect(inspected.stdout.contains("budget:     at most 9000000 bytes"), "\(inspected.stdout)")
        #expect(inspected.stdout.contains("measured"))
        // GGUF keeps the embeddings out of the ladder (stable-diffusion.cpp does not quantise them).
        let root = try parseJSON(try run(["inspect", out, "--json"]).stdout)
        let tensors = try #require(root["quality_budget"]?.objectValue?["recipe"]?.objectValue?["tensors"]?.objectValue)
        #expect(tensors.count > 100)
        #expect(!tensors.keys.contains { $0.contains("embedding") })
    }

    @Test("a diffusers folder with a tokenizer of its own is proved with the tokenizer the written file records, no --config needed")
    func diffusersSourceProvesWithTheRecordedTokenizer() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("sd2.wpk").path
        // tiny-sd2's vocabulary is 514 tokens: the bundled CLIP tokenizer's ids do not fit it.
        let r = try run(["convert", fixturePath("tiny-sd2/diffusers"), out, "--dtype", "auto", "--max-size", "2500000", "--attempts", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: out))
    }

    @Test("a budget no mix meets exits 1 with one line and writes nothing", arguments: [["--target-psnr", "150"], ["--max-size", "1MB"]])
    func unreachable(_ goal: [String]) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("x.wpk").path
        let r = try run(["convert", tinyModel, out, "--dtype", "auto"] + goal)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("weightpack: error:"), "\(r.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        if goal[0] == "--max-size" {
            // Refused once the sizes are known, before the source's run and the gains.
            #expect(r.stderr.contains("the smallest mix of the ladder needs about"), "\(r.stderr)")
            #expect(!r.stderr.contains("reference:") && !r.stderr.contains("gains:"), "\(r.stderr)")
        }
    }
}
