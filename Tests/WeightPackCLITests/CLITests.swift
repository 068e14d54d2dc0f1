import ArgumentParser
import CheckpointFormats
import Foundation
import StrictJSON
import TestSupport
import Testing

@testable import WeightPackCLI

let tinyModel = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/tiny-sd1.safetensors").path

/// The `weightpack` binary built beside this test bundle.
let weightpackBinary: String = {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
        Bundle.main.bundleURL,
        Bundle.main.bundleURL.deletingLastPathComponent(),
    ].map { $0.appendingPathComponent("weightpack").path }
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
}()

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the built binary with `arguments`.
func run(_ arguments: [String]) throws -> RunResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: weightpackBinary)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return RunResult(
        status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
}

/// Writes a pipeline golden's `init_latents` as `latents.safetensors` in `folder` (a `--latents` file).
func writeInitialLatents(of golden: String, in folder: URL) throws -> String {
    let latents = try SafetensorsFile(path: golden).tensor(named: "init_latents")
    let file = folder.appendingPathComponent("latents.safetensors").path
    let output = OutputTensor(
        name: "latents", dtype: .f32, shape: latents.descriptor.shape, sourceName: "latents", sourceDType: .f32, load: { latents })
    try SafetensorsWriter.write([output], to: file, overwrite: false)
    return file
}

@Suite("command-line parsing and help")
struct ParsingTests {
    @Test("valid command lines parse")
    func parses() throws {
        let inspect = try #require(
            try WeightPackCommand.parseAsRoot(["inspect", "m.safetensors", "--json", "--stats", "--filter", "unet.*"]) as? Inspect)
        #expect(inspect.json && inspect.stats && inspect.filter == "unet.*")
        let convert = try #require(
            try WeightPackCommand.parseAsRoot(["convert", "a", "b.wpk", "--dtype", "bf16", "--compress", "--force"]) as? Convert)
        #expect(convert.dtype == .bf16 && convert.compress && convert.force)
        let export = try #require(try WeightPackCommand.parseAsRoot(["export", "a.wpk", "b.safetensors"]) as? Export)
        #expect(export.dtype == .keep && export.layout == .source)
    }

    @Test(
        "invalid command lines are usage errors",
        arguments: [
            ["convert", "a"], ["convert", "a", "b", "--dtype", "f8"], ["inspect"], ["frobnicate"],
            ["convert", "a", "b", "--compression-level", "40"], ["export", "a", "b", "--layout", "nope"],
        ])
    func refuses(_ arguments: [String]) {
        #expect(throws: (any Error).self) { _ = try WeightPackCommand.parseAsRoot(arguments) }
    }

    @Test(
        "help explains options and exit codes",
        arguments: [
            (Inspect.self as any ParsableCommand.Type, ["--json", "--stats", "--filter", "Exit codes"]),
            (Convert.self, ["--dtype", "--compress", "--force", "Exit codes", "never cast"]),
            (Export.self, ["--layout", "--dtype", "Exit codes"]),
            (Check.self, ["Exit codes", "corruption"]),
        ])
    func help(_ command: any ParsableCommand.Type, _ words: [String]) {
        let text = WeightPackCommand.helpMessage(for: command)
        for word in words { #expect(text.contains(word), "help of \(command) lacks \(word)") }
    }
}

@Suite("command line, end to end on the tiny model")
struct EndToEndTests {
    @Test("the binary is built")
    func binaryExists() {
        #expect(FileManager.default.isExecutableFile(atPath: weightpackBinary), "no binary at \(weightpackBinary)")
    }

    @Test("convert → inspect → check → export gives back the original file byte for byte")
    func roundTrip() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for compress in [false, true] {
            let wpk = folder.appendingPathComponent("m\(compress).wpk").path
            let back = folder.appendingPathComponent("back\(compress).safetensors").path
            // --keep-extra keeps the schedule buffers, so the whole file comes back.
            let convert = try run(["convert", tinyModel, wpk, "--keep-extra"] + (compress ? ["--compress"] : []))
            #expect(convert.status == 0, "\(convert.stderr)")
            #expect(try run(["check", wpk]).status == 0)
            let export = try run(["export", wpk, back])
            #expect(export.status == 0, "\(export.stderr)")
            #expect(FileManager.default.contentsEqual(atPath: tinyModel, andPath: back))
        }
    }

    @Test("convert --dtype f16 casts floats, keeps integers, and inspect --json reports it")
    func halfConversion() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = folder.appendingPathComponent("m.wpk").path
        #expect(try run(["convert", tinyModel, wpk, "--dtype", "f16", "--keep-extra"]).status == 0)
        let inspect = try run(["inspect", wpk, "--json"])
        #expect(inspect.status == 0)
        let json = try JSONParser.parse(inspect.stdout)
        let root = try #require(json.objectValue)
        #expect(root["format"] == "wpk")
        let tensors = try #require(root["tensors"]?.arrayValue)
        #expect(tensors.count == 993)
        for t in tensors {
            let o = try #require(t.objectValue)
            let name = try #require(o["name"]?.stringValue)
            #expect(o["dtype"] == (name.hasSuffix("position_ids") ? "I64" : "F16"), "\(name)")
        }
        #expect(root["wpk"]?.objectValue?["source"]?.objectValue?["sha256"]?.stringValue?.count == 64)
        #expect(root["architecture"] != nil && root["findings"] != nil && root["metadata"] != nil)
    }

    @Test("inspect --stats --filter selects tensors and computes statistics")
    func statistics() throws {
        let result = try run(["inspect", tinyModel, "--json", "--stats", "--filter", "first_stage_model.decoder.conv_out.*"])
        #expect(result.status == 0)
        let root = try #require(try JSONParser.parse(result.stdout).objectValue)
        let tensors = try #require(root["tensors"]?.arrayValue)
        #expect(tensors.count == 2)
        let stats = try #require(tensors.first?.objectValue?["stats"]?.objectValue)
        #expect(stats["nan"] == 0 && stats["min"]?.doubleValue != nil)
        let table = try run(["inspect", tinyModel])
        #expect(table.stdout.contains("format:     safetensors") && table.stdout.contains("NAME"))
    }

    @Test("check exits 1 naming the tensor whose byte was flipped")
    func corruption() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = folder.appendingPathComponent("m.wpk").path
        #expect(try run(["convert", tinyModel, wpk]).status == 0)
        let file = try WPKFile(path: wpk)
        let victim = try #require(file.entries.first { $0.sourceName?.contains("output_blocks.5") == true })
        var data = try Data(contentsOf: URL(fileURLWithPath: wpk))
        data[file.dataOffset + victim.offset + victim.length / 3] ^= 0x40
        try data.write(to: URL(fileURLWithPath: wpk))
        let check = try run(["check", wpk])
        #expect(check.status == 1)
        #expect(check.stderr.contains(victim.descriptor.name))
    }

    static let errorCases: [([String], Int32)] = [
        (["inspect", "/nonexistent/model.safetensors"], 66),
        (["convert", "/nonexistent/model.safetensors", "OUT"], 66),
        (["convert", "MALFORMED", "OUT"], 65),
        (["inspect", "MALFORMED"], 65),
        (["convert", tinyModel, "/nonexistent-folder/x.wpk"], 73),
        (["check", tinyModel], 65),
        (["convert", tinyModel], 64),
    ]

    @Test("errors give one line and the documented exit code, and leave no output", arguments: errorCases)
    func errors(_ arguments: [String], _ status: Int32) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let malformed = repositoryURL.appendingPathComponent("Fixtures/malformed/safetensors/offset_hole_between_tensors.safetensors").path
        let output = folder.appendingPathComponent("out.wpk").path
        let args = arguments.map { $0 == "OUT" ? output : $0 == "MALFORMED" ? malformed : $0 }
        let result = try run(args)
        #expect(result.status == status, "\(args): \(result.stderr)")
        if status != 64 {
            #expect(result.stderr.split(separator: "\n").count == 1, "not one line: \(result.stderr)")
            #expect(result.stderr.hasPrefix("weightpack: error: "))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }

    @Test("an existing output is refused without --force (73) and replaced with it")
    func existingOutput() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let output = folder.appendingPathComponent("out.wpk").path
        try Data("precious".utf8).write(to: URL(fileURLWithPath: output))
        let refused = try run(["convert", tinyModel, output, "--keep-extra"])
        #expect(refused.status == 73)
        #expect(try String(contentsOfFile: output, encoding: .utf8) == "precious")
        #expect(try run(["convert", tinyModel, output, "--force", "--keep-extra"]).status == 0)
        #expect(try WPKFile(path: output).entries.count == 993)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["out.wpk"])
    }
}

@Suite("command line: PyTorch checkpoints")
struct CheckpointCLITests {
    let tinyCheckpoint = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/tiny-sd1.ckpt").path
    let malicious = repositoryURL.appendingPathComponent("Fixtures/torch/malicious/torch_zip_system.ckpt").path

    @Test("a clean checkpoint scans clean, converts, and shows its training metadata")
    func cleanCheckpoint() throws {
        #expect(try run(["scan", tinyCheckpoint]).status == 0)
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = folder.appendingPathComponent("m.wpk").path
        let convert = try run(["convert", tinyCheckpoint, wpk, "--keep-extra"])
        #expect(convert.status == 0, "\(convert.stderr)")
        let root = try #require(try JSONParser.parse(run(["inspect", tinyCheckpoint, "--json"]).stdout).objectValue)
        #expect(root["format"] == "ckpt")
        #expect(root["tensors"]?.arrayValue?.count == 993)
        #expect(root["metadata"]?.objectValue?["global_step"] == "470")
        // Half-precision checkpoint → wpk keeps F16 bytes exactly as torch stored them.
        let a = try ModelInput.open(tinyCheckpoint), b = try WPKFile(path: wpk)
        for d in a.tensors.prefix(50) {
            // Stored under canonical names; each entry records its source name.
            let entry = try #require(b.entries.first { $0.sourceName == d.name })
            #expect(
                try a.tensor(named: d.name).bytes.withUnsafeBytes { Array($0) }
                    == b.tensor(named: entry.descriptor.name).bytes.withUnsafeBytes { Array($0) })
        }
    }

    @Test("a malicious checkpoint: scan exits 1 naming the global; convert refuses with 65 and writes nothing")
    func maliciousCheckpoint() throws {
        let scan = try run(["scan", malicious, "--json"])
        #expect(scan.status == 1)
        let root = try #require(try JSONParser.parse(scan.stdout).objectValue)
        #expect(root["verdict"] == "dangerous")
        #expect(root["globals"]?.arrayValue?.contains { $0.objectValue?["name"] == "system" && $0.objectValue?["class"] == "dangerous" } == true)
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let convert = try run(["convert", malicious, folder.appendingPathComponent("x.wpk").path])
        #expect(convert.status == 65)
        #expect(convert.stderr.contains("posix.system"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        let allowed = try run(["inspect", malicious, "--allow-unsafe-globals"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
    }
}

@Suite("command line: tokenize")
struct TokenizeCLITests {
    /// Golden ids from transformers' CLIPTokenizer (Fixtures/golden/tokenizer_cases.json).
    static let cases: [(prompt: String, ids: [Int], pad0: [Int])] = {
        let url = repositoryURL.appendingPathComponent("Fixtures/golden/tokenizer_cases.json")
        guard let text = try? String(contentsOf: url, encoding: .utf8), let root = try? JSONParser.parse(text) else { return [] }
        let items = root.arrayValue ?? root.objectValue?["cases"]?.arrayValue ?? []
        return items.compactMap { item in
            guard let o = item.objectValue, let prompt = o["prompt"]?.stringValue,
                let ids = o["ids"]?.arrayValue?.compactMap(\.intValue)
            else { return nil }
            return (prompt, ids, o["ids_pad0"]?.arrayValue?.compactMap(\.intValue) ?? [])
        }
    }()

    @Test("prints transformers' ids, with the bundled vocabulary and with the model's tokenizer folder")
    func matchesGoldens() throws {
        #expect(Self.cases.count > 20)
        let folder = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers/tokenizer").path
        for c in Self.cases.prefix(8) {
            for extra in [[], ["--tokenizer", folder]] {
                let result = try run(["tokenize", c.prompt, "--json"] + extra)
                #expect(result.status == 0, "\(result.stderr)")
                let ids = try JSONParser.parse(result.stdout).arrayValue?.compactMap(\.intValue)
                #expect(ids == c.ids, "\(c.prompt) \(extra)")
            }
        }
        let plain = try run(["tokenize", "a photo of a cat"])
        #expect(plain.stdout.split(separator: " ").count == 77)
        #expect(try run(["tokenize", "x", "--tokenizer", "/nonexistent"]).status == 66)
        let empty = try run(["tokenize", "x", "--tokenizer", repositoryURL.appendingPathComponent("Fixtures").path])
        #expect(empty.status == 66)
        #expect(empty.stderr.contains("neither vocab.json") && empty.stderr.split(separator: "\n").count == 1, "\(empty.stderr)")
    }
}

@Suite("command line: f16 overflow warning")
struct Float16WarningTests {
    @Test("convert --dtype f16 names the tensors whose values became infinite")
    func warns() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = folder.appendingPathComponent("hot.safetensors").path
        let values: [Float] = [1, 2, 70000, -1e6, 3]
        let header = #"{"vae.hot":{"dtype":"F32","shape":[5],"data_offsets":[0,20]},"vae.cool":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}}"#
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) } + Array(header.utf8)
        bytes += values.withUnsafeBytes { Array($0) } + withUnsafeBytes(of: Float(0.5)) { Array($0) }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let result = try run(["convert", source, folder.appendingPathComponent("hot.wpk").path, "--dtype", "f16"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("vae.hot: 2 values beyond ±65504 became infinite in f16"), "\(result.stderr)")
        #expect(!result.stderr.contains("vae.cool"))
    }
}
