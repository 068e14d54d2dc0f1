import CheckpointFormats
import Foundation
import StrictJSON
import TestSupport
import Testing

/// `convert --dtype int8`, `inspect` of its errors, `check` of its checksums, and exports of an
/// int8 model, end to end on the tiny fixture with the built binary (issue 7).
@Suite("int8 conversion end to end")
struct QuantizationCLITests {
    @Test("the int8 file is at most 30% of the f32 file, checks clean and shows its errors")
    func convertInspectCheck() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let f32 = folder.appendingPathComponent("f32.wpk").path, int8 = folder.appendingPathComponent("int8.wpk").path
        #expect(try run(["convert", tinyModel, f32, "--dtype", "f32"]).status == 0)
        let converted = try run(["convert", tinyModel, int8, "--dtype", "int8"])
        #expect(converted.status == 0, "\(converted.stderr)")
        #expect(converted.stderr.contains("int8: "))
        let sizes = try [f32, int8].map { try FileManager.default.attributesOfItem(atPath: $0)[.size] as! Int }
        #expect(Double(sizes[1]) <= 0.30 * Double(sizes[0]), "int8 \(sizes[1]) bytes, f32 \(sizes[0]) bytes")
        #expect(try run(["check", int8]).status == 0)

        let inspected = try run(["inspect", int8, "--json"])
        #expect(inspected.status == 0)
        let root = try Array(inspected.stdout.utf8).withUnsafeBytes { try JSONParser.parse($0) }
        let tensors = root.objectValue?["tensors"]?.arrayValue ?? []
        let conv = tensors.first { $0.objectValue?["name"]?.stringValue == "unet.down_blocks.0.resnets.0.conv1.weight" }?.objectValue
        #expect(conv?["dtype"]?.stringValue == "I8")
        let error = conv?["quantization"]?.objectValue?["error"]?.objectValue
        #expect((error?["snr_db"]?.doubleValue ?? 0) > 40)
        #expect((error?["cosine"]?.doubleValue ?? 0) > 0.9999)
        #expect((error?["max_abs"]?.doubleValue ?? 1) < 1e-3)
        let norm = tensors.first { $0.objectValue?["name"]?.stringValue == "unet.down_blocks.0.resnets.0.norm1.weight" }?.objectValue
        #expect(norm?["dtype"]?.stringValue == "F32" && norm?["quantization"] == nil)
        let table = try run(["inspect", int8, "--filter", "unet.down_blocks.0.resnets.0.conv1.*"])
        #expect(table.stdout.contains("SNR DB") && table.stdout.contains("I8"))

        // A flipped byte in an int8 tensor's scales is found by check.
        let file = try WPKFile(path: int8)
        let entry = try #require(file.entries.first { $0.descriptor.name == "unet.down_blocks.0.resnets.0.conv1.weight" })
        let q = try #require(entry.quantization)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: int8))
        bytes[file.dataOffset + entry.offset + q.layout.scaleOffset + 1] ^= 0x40
        let damaged = folder.appendingPathComponent("damaged.wpk")
        try bytes.write(to: damaged)
        let check = try run(["check", damaged.path])
        #expect(check.status == 1)
        #expect((check.stdout + check.stderr).contains("unet.down_blocks.0.resnets.0.conv1.weight"))
    }

    @Test("--keep keeps matching tensors unquantised; --keep without int8 or with brackets is a usage error; an unmatched pattern is noted")
    func keep() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("k.wpk").path
        #expect(try run(["convert", tinyModel, out, "--dtype", "int8", "--keep", "vae.*", "--keep", "unet.mid_block.*"]).status == 0)
        let file = try WPKFile(path: out)
        let vae = file.entries.filter { $0.descriptor.name.hasPrefix("vae.") || $0.descriptor.name.hasPrefix("unet.mid_block.") }
        #expect(!vae.isEmpty && vae.allSatisfy { $0.quantization == nil })
        #expect(file.entries.contains { $0.quantization != nil })
        #expect(try run(["convert", tinyModel, out, "--keep", "vae.*", "--force"]).status == 64)
        // Brackets are not wildcards here: refused rather than matched literally.
        let bracket = try run(["convert", tinyModel, out, "--dtype", "int8", "--keep", "unet.down_blocks.[01].*", "--force"])
        #expect(bracket.status == 64 && bracket.stderr.contains("only * and ?"), "\(bracket.stderr)")
        // A pattern that matches nothing is said on stderr; the conversion goes on.
        let unmatched = try run(["convert", tinyModel, out, "--dtype", "int8", "--keep", "model.diffusion_model.*", "--force"])
        #expect(unmatched.status == 0 && unmatched.stderr.contains("--keep 'model.diffusion_model.*' matches no tensor"), "\(unmatched.stderr)")
    }

    @Test("verify recognises an int8 model and passes it at the int8 default thresholds (stages 20 dB SNR, image 32 dB PSNR)")
    func verifyInt8() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let int8 = folder.appendingPathComponent("int8.wpk").path
        #expect(try run(["convert", tinyModel, int8, "--dtype", "int8"]).status == 0)
        let verified = try run(["verify", tinyModel, int8, "--steps", "4", "--size", "64"])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("candidate weights int8"), "\(verified.stdout)")
        // The f32 thresholds would refuse it: the defaults really came from the int8 row.
        let strict = try run(["verify", tinyModel, int8, "--steps", "4", "--size", "64", "--min-stage-snr", "80"])
        #expect(strict.status == 1)
    }

    @Test("an int8 model exports to safetensors as dequantised F32")
    func export() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let int8 = folder.appendingPathComponent("int8.wpk").path, back = folder.appendingPathComponent("back.safetensors").path
        #expect(try run(["convert", tinyModel, int8, "--dtype", "int8"]).status == 0)
        let exported = try run(["export", int8, back])
        #expect(exported.status == 0, "\(exported.stderr)")
        let original = try SafetensorsFile(path: tinyModel), copy = try SafetensorsFile(path: back)
        let name = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
        let a = try original.tensor(named: name).floats(), b = try copy.tensor(named: name).floats()
        #expect(copy.descriptor(named: name)?.dtype == .f32)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 1
        #expect(worst > 0 && worst < 1e-3)
    }
}

/// The fixture environment's Python, which has the `gguf` package (Fixtures/generate/requirements.txt).
let fixturePython = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/weightpack/fixture-venv/bin/python").path

@Suite("GGUF export read back by gguf-py")
struct GGUFExportTests {
    /// Runs `Fixtures/generate/check_gguf.py` on `gguf` against `reference`.
    func readBack(_ gguf: String, reference: String) throws -> JSONObject {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: fixturePython)
        process.arguments = [repositoryURL.appendingPathComponent("Fixtures/generate/check_gguf.py").path, gguf, reference]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return try #require(try Array(data).withUnsafeBytes { try JSONParser.parse($0) }.objectValue)
    }

    @Test(
        "every tensor of an int8 model's GGUF reads back with the right name, shape, type and values",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: fixturePython),
            "needs the fixture environment (Fixtures/generate/setup_venv.sh) for the gguf package"))
    func int8ModelReadsBack() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let int8 = folder.appendingPathComponent("int8.wpk").path
        let reference = folder.appendingPathComponent("ref.safetensors").path
        #expect(try run(["convert", tinyModel, int8, "--dtype", "int8"]).status == 0)
        #expect(try run(["export", int8, reference, "--layout", "ldm", "--dtype", "f32"]).status == 0)
        let expectedNames = Set(try SafetensorsFile(path: reference).tensors.map(\.name))
        for dtype in ["q8_0", "f16", "keep"] {
            let gguf = folder.appendingPathComponent("m-\(dtype).gguf").path
            let exported = try run(["export", int8, gguf, "--dtype", dtype])
            #expect(exported.status == 0, "\(exported.stderr)")
            let result = try readBack(gguf, reference: reference)
            let fields = result["fields"]?.objectValue
            #expect(fields?["general.architecture"]?.stringValue == "sd1")
            #expect(fields?["weightpack.source.sha256"]?.stringValue?.count == 64)
            #expect(result["alignment"]?.doubleValue == 32)
            let tensors = result["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
            // Every tensor of the LDM file, under its LDM name, shape restored from ggml order.
            let names = Set(tensors.compactMap { $0["name"]?.stringValue })
            #expect(names.count == tensors.count && names == expectedNames, "\(names.symmetricDifference(expectedNames).sorted().prefix(5))")
            for t in tensors {
                let name = t["name"]?.stringValue ?? "?"
                #expect(t["shape_ok"] == .bool(true), "\(dtype) \(name)")
                let type = t["type"]?.stringValue ?? "?"
                let error = t["max_abs"]?.doubleValue ?? .infinity, scale = t["max_ref"]?.doubleValue ?? 0
                switch type {
                case "Q8_0", "F32", "I64": #expect(error == 0, "\(dtype) \(name) \(type): int8 blocks must be copied exactly")
                case "F16": #expect(error <= scale * 1e-3, "\(dtype) \(name): \(error)")
                default: Issue.record("unexpected type \(type) for \(name)")
                }
                if dtype == "f16" { #expect(type != "Q8_0") }
                if name.hasSuffix(".bias") { #expect(type == "F32") }
            }
            if dtype != "f16" {
                let q8 = tensors.filter { $0["type"]?.stringValue == "Q8_0" }.compactMap { $0["name"]?.stringValue }
                #expect(q8.contains("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"))
                #expect(!q8.contains { $0.contains("embedding") || $0.contains("time_embed.") })
            }
        }
    }

    @Test(
        "a q8_0 GGUF made from the f32 source stays within half a quantisation step",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: fixturePython),
            "needs the fixture environment (Fixtures/generate/setup_venv.sh) for the gguf package"))
    func sourceToQ8() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let gguf = folder.appendingPathComponent("m.gguf").path
        #expect(try run(["export", tinyModel, gguf, "--dtype", "q8_0"]).status == 0)
        let result = try readBack(gguf, reference: tinyModel)
        let tensors = result["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
        #expect(tensors.count > 900)
        for t in tensors { #expect(t["missing"] == nil && t["shape_ok"] == .bool(true), "\(t["name"]?.stringValue ?? "?")") }
        for t in tensors where t["type"]?.stringValue == "Q8_0" {
            let error = t["max_abs"]?.doubleValue ?? .infinity, scale = t["max_ref"]?.doubleValue ?? 0
            // ggml's reference Q8_0 rounds x·(1/d) with d in f32, then stores d as f16: the error
            // is at most 0.5·d + 127·|d − f16(d)| ≤ 0.5625·d (d = max/127).
            #expect(error <= scale / 127 * 0.5625, "\(t["name"]?.stringValue ?? "?"): \(error)")
        }
    }
}
