import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

@Suite("merge and adapter inspection, end to end")
struct MergeCLITests {
    @Test("help says what merge does, its arithmetic and its exit codes")
    func help() {
        // Help is wrapped to the terminal's width: compare with line breaks as spaces.
        let text = WeightPackCommand.helpMessage(for: Merge.self).split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for word in ["scale * alpha/rank * up * down", "--dtype", "--force", "Exit codes", "64", "65", ".wpk", ".safetensors", ".gguf"] {
            #expect(text.contains(word), "merge --help lacks \(word)")
        }
    }

    @Test("merge parses FILE:SCALE arguments and -o; bad scales and outputs are usage errors")
    func parsing() throws {
        let merge = try #require(
            try WeightPackCommand.parseAsRoot(["merge", "base.safetensors", "a.safetensors:0.8", "b.safetensors", "-o", "out.wpk", "--dtype", "int8"])
                as? Merge)
        #expect(merge.adapters == ["a.safetensors:0.8", "b.safetensors"] && merge.output == "out.wpk" && merge.dtype == .int8)
        for arguments in [
            ["merge", "base", "a:nan", "-o", "out.wpk"], ["merge", "base", "a:inf", "-o", "out.wpk"], ["merge", "base", "-o", "out.wpk"],
            ["merge", "base", "a", "-o", "out.ckpt"], ["merge", "base", "a", "-o", "out.gguf", "--dtype", "int8"],
            ["merge", "base", "a", "-o", "out.safetensors", "--dtype", "int8"], ["merge", "base", "a"],
        ] {
            #expect(throws: (any Error).self, "\(arguments)") { _ = try WeightPackCommand.parseAsRoot(arguments) }
        }
    }

    @Test("a kohya LoRA at 0.8 merged into .safetensors equals diffusers' fuse_lora within 1e-6 relative")
    func mergeSafetensors() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let output = folder.appendingPathComponent("merged.safetensors").path
        let merge = try run(["merge", tinyModel, adapterFixture("sd1-kohya-lora.safetensors") + ":0.8", "-o", output])
        #expect(merge.status == 0, "\(merge.stderr)")
        // The output keeps the base's (LDM) layout; converting it gives canonical names, the golden's.
        let written = try SafetensorsFile(path: output)
        let record = try #require(written.metadata["weightpack.adapters"])
        #expect(record.contains("sd1-kohya-lora.safetensors") && record.contains("0.8"))
        let wpk = folder.appendingPathComponent("merged.wpk").path
        let convert = try run(["convert", output, wpk])
        #expect(convert.status == 0, "\(convert.stderr)")
        let merged = try WPKFile(path: wpk)
        let golden = try SafetensorsFile(path: adapterFixture("sd1-kohya-lora.merged.safetensors"))
        #expect(golden.tensors.count == 13)
        for d in golden.tensors {
            let expected = try golden.tensor(named: d.name).floats()
            let actual = try merged.tensor(named: d.name).floats()
            #expect(actual.count == expected.count, "\(d.name)")
            let e = relativeDifference(actual, expected)
            #expect(e <= 1e-6, "\(d.name): relative difference \(e)")
        }
        // A tensor no module names is the base's, and a changed one is not.
        let base = try SafetensorsFile(path: tinyModel)
        let untouched = "first_stage_model.decoder.conv_out.weight"
        #expect(try written.tensor(named: untouched).floats() == base.tensor(named: untouched).floats())
        let changed = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
        if written.descriptor(named: changed) != nil {
            #expect(try written.tensor(named: changed).floats() != base.tensor(named: changed).floats())
        }
    }

    @Test("merged into .wpk: check passes and inspect shows the adapters' provenance")
    func mergeWPK() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let output = folder.appendingPathComponent("merged.wpk").path
        let lora = adapterFixture("sd1-kohya-lora.safetensors")
        let merge = try run(["merge", tinyModel, lora + ":0.8", "-o", output, "--dtype", "f16"])
        #expect(merge.status == 0, "\(merge.stderr)")
        let check = try run(["check", output])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        let inspect = try run(["inspect", output, "--json"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        let root = try parseJSON(inspect.stdout)
        let adapters = try #require(root["wpk"]?.objectValue?["adapters"]?.arrayValue)
        #expect(adapters.count == 1)
        let first = try #require(adapters.first?.objectValue)
        #expect(first["file"]?.stringValue == lora)
        #expect(first["scale"]?.doubleValue == 0.8)
        #expect(first["kind"]?.stringValue?.contains("LoRA") == true)
        #expect(first["modules"]?.intValue == 13)
        // The SHA-256 recorded is the adapter file's (cross-checked with the binary's own hashing of the base).
        let sha = try #require(first["sha256"]?.stringValue)
        #expect(sha.count == 64 && sha.allSatisfy(\.isHexDigit))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/sha256sum") {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
            process.arguments = [lora]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(text.hasPrefix(sha + " "), "sha256sum says \(text)")
        }
        let source = try #require(root["wpk"]?.objectValue?["source"]?.objectValue)
        #expect(source["name"]?.stringValue == "tiny-sd1.safetensors")
        #expect(source["sha256"]?.stringValue != sha)
        let table = try run(["inspect", output])
        #expect(table.stdout.contains("merged:     \(lora) at scale 0.8"), "\(table.stdout.prefix(600))")
        // The int8 path quantises the f32 merge.
        // A diffusers folder merged into .safetensors gives one file (the LDM layout), not a folder.
        let fromFolder = folder.appendingPathComponent("from-folder.safetensors").path
        let diffusers = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers").path
        let folderMerge = try run(["merge", diffusers, lora + ":0.8", "-o", fromFolder])
        #expect(folderMerge.status == 0, "\(folderMerge.stderr)")
        var isDirectory: ObjCBool = true
        #expect(FileManager.default.fileExists(atPath: fromFolder, isDirectory: &isDirectory) && !isDirectory.boolValue)
        #expect(try SafetensorsFile(path: fromFolder).descriptor(named: "model.diffusion_model.input_blocks.1.1.proj_in.weight") != nil)
        let int8 = folder.appendingPathComponent("merged-int8.wpk").path
        let quantised = try run(["merge", tinyModel, lora + ":0.8", "-o", int8, "--dtype", "int8"])
        #expect(quantised.status == 0, "\(quantised.stderr)")
        #expect(try run(["check", int8]).status == 0)
        // GGUF for stable-diffusion.cpp, with the same record.
        let gguf = folder.appendingPathComponent("merged.gguf").path
        let ggufMerge = try run(["merge", tinyModel, lora + ":0.8", "-o", gguf, "--dtype", "f16"])
        #expect(ggufMerge.status == 0, "\(ggufMerge.stderr)")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: gguf))
        #expect(bytes.starts(with: Array("GGUF".utf8)))
        #expect(bytes.range(of: Data("weightpack.adapters".utf8)) != nil)
        #expect(bytes.range(of: Data(lora.utf8)) != nil)
    }

    @Test(
        "refused adapters exit 65 with one line and write nothing",
        arguments: [
            ("sdxl-kohya-lora.safetensors:0.8", 65 as Int32, "Stable Diffusion XL"),
            ("bad-alpha-nan.safetensors", 65, "alpha"),
            ("sd1-kohya-lora.safetensors:nan", 64, "nan"),
        ])
    func refused(_ adapter: String, _ status: Int32, _ word: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for name in ["out.wpk", "out.safetensors"] {
            let output = folder.appendingPathComponent(name).path
            let result = try run(["merge", tinyModel, adapterFixture(adapter), "-o", output])
            #expect(result.status == status, "\(adapter): \(result.stderr)")
            if status == 65 {
                #expect(result.stderr.split(separator: "\n").count == 1, "not one line: \(result.stderr)")
                #expect(result.stderr.hasPrefix("weightpack: error: "))
            }
            #expect(result.stderr.lowercased().contains(word.lowercased()), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: output))
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty, "left something behind")
        }
    }

    @Test("inspect names a kohya LoRA and its ranks (from the file's own factor shapes)")
    func inspectLoRA() throws {
        let path = adapterFixture("sd1-kohya-lora.safetensors")
        let file = try SafetensorsFile(path: path)
        let ranks = Set(file.tensors.filter { $0.name.hasSuffix(".lora_down.weight") }.map { $0.shape[0] })
        #expect(!ranks.isEmpty)
        let table = try run(["inspect", path])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("adapter: LoRA"), "\(table.stdout.prefix(800))")
        let rankLine = try #require(table.stdout.split(separator: "\n").first { $0.contains("ranks:") })
        for r in ranks { #expect(rankLine.contains("\(r) ×"), "\(rankLine)") }
        #expect(!table.stdout.contains("model:      not recognised"))
        let json = try run(["inspect", path, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let adapter = try #require(try parseJSON(json.stdout)["adapter"]?.objectValue)
        let kinds = adapter["kinds"]?.arrayValue?.compactMap { $0.objectValue?["kind"]?.stringValue } ?? []
        #expect(kinds.contains("LoRA"), "\(kinds)")
        let reported = Set(adapter["ranks"]?.arrayValue?.compactMap { $0.objectValue?["rank"]?.intValue } ?? [])
        #expect(reported == ranks)
        #expect(adapter["family"]?.stringValue?.isEmpty == false)
    }

    @Test("inspect --json of an embedding shows its vector count and width")
    func inspectEmbedding() throws {
        let path = adapterFixture("ti-diffusers.safetensors")
        let file = try SafetensorsFile(path: path)
        let shape = try #require(file.tensors.first?.shape)
        #expect(shape.rank == 2)
        let json = try run(["inspect", path, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let adapter = try #require(try parseJSON(json.stdout)["adapter"]?.objectValue)
        #expect(adapter["kind"]?.stringValue == "textual-inversion")
        let vectors = try #require(adapter["embedding"]?.objectValue?["vectors"]?.arrayValue?.first?.objectValue)
        #expect(vectors["count"]?.intValue == shape[0])
        #expect(vectors["width"]?.intValue == shape[1])
        let table = try run(["inspect", path])
        #expect(table.stdout.contains("\(shape[0]) vectors × \(shape[1])"), "\(table.stdout.prefix(600))")
    }
}

@Suite("inspect of a bad adapter")
struct BadAdapterInspectionCLITests {
    @Test("a bad adapter is still shown, with the reason as an error finding, exit 0")
    func badAdapter() throws {
        let path = repositoryURL.appendingPathComponent("Fixtures/adapters/bad-alpha-nan.safetensors").path
        let json = try run(["inspect", path, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let root = try #require(try JSONParser.parse(json.stdout).objectValue)
        #expect(root["adapter"] == nil)
        let findings = root["findings"]?.arrayValue?.compactMap(\.objectValue) ?? []
        let bad = try #require(findings.first { $0["code"]?.stringValue == "bad-adapter" })
        #expect(bad["severity"]?.stringValue == "error")
        #expect(bad["message"]?.stringValue?.contains("alpha") == true)
        #expect((root["tensors"]?.arrayValue?.count ?? 0) > 0)
    }
}

@Suite("inspect of plain one-tensor files")
struct PlainTensorInspectionCLITests {
    @Test("a one-tensor file that is no <token> and of no published width is not called an embedding, nor a bad one", arguments: [[2], [300, 40]])
    func plain(_ dimensions: [Int]) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("plain.safetensors").path
        let count = dimensions.reduce(1, *)
        let values = [Float](repeating: 0.5, count: count)
        let descriptor = TensorDescriptor(name: "weights", dtype: .f32, shape: Shape(dimensions), byteCount: count * 4)
        let view = TensorView(descriptor: descriptor, bytes: values.withUnsafeBytes { TensorBytes(copying: $0) })
        try SafetensorsWriter.write(
            [OutputTensor(name: "weights", dtype: .f32, shape: Shape(dimensions), sourceName: "weights", sourceDType: .f32, load: { view })],
            to: path, overwrite: false)
        let json = try run(["inspect", path, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let root = try #require(try JSONParser.parse(json.stdout).objectValue)
        #expect(root["adapter"] == nil)
        #expect(!(root["findings"]?.arrayValue ?? []).contains { $0.objectValue?["code"]?.stringValue == "bad-adapter" })
        // The same tensor under a <token> name is an embedding.
        let token = folder.appendingPathComponent("token.safetensors").path
        try SafetensorsWriter.write(
            [OutputTensor(name: "<thing>", dtype: .f32, shape: Shape(dimensions), sourceName: "<thing>", sourceDType: .f32, load: { view })],
            to: token, overwrite: false)
        let tokenJSON = try run(["inspect", token, "--json"])
        let tokenRoot = try #require(try JSONParser.parse(tokenJSON.stdout).objectValue)
        if dimensions.count == 1 {
            #expect(tokenRoot["adapter"]?.objectValue?["kind"]?.stringValue == "textual-inversion")
        } else {
            // 300 vectors: refused as an embedding, shown with the reason.
            #expect((tokenRoot["findings"]?.arrayValue ?? []).contains { $0.objectValue?["code"]?.stringValue == "bad-adapter" })
        }
    }
}
