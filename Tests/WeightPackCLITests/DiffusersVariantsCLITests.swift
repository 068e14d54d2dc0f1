import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

/// The tiny SD 1.x folder with `.bin` and sharded components (`make_diffusers_variants.py`),
/// end to end through the built binary.
@Suite("diffusers folders with .bin and sharded components (built binary)", .serialized)
struct DiffusersVariantsCLITests {
    @Test("inspect detects SD 1.x, complete, with no findings above info", arguments: ["tiny-sd1/diffusers-bin", "tiny-sd1/diffusers-sharded"])
    func inspect(path: String) throws {
        let result = try run(["inspect", fixturePath(path), "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let root = try parseJSON(result.stdout)
        #expect(root["format"]?.stringValue == "diffusers")
        let architecture = try #require(root["architecture"]?.objectValue)
        #expect(architecture["family"]?.stringValue == "sd1")
        #expect(architecture["variant"]?.stringValue == "base")
        #expect(architecture["prediction_type"]?.stringValue == "epsilon")
        #expect(root["summary"]?.objectValue?["tensor_count"]?.intValue == 684 + 244 + 52)
        let serious = (root["findings"]?.arrayValue ?? []).filter { $0.objectValue?["severity"]?.stringValue != "info" }
        #expect(serious.isEmpty, "\(serious.map { $0.serialized() })")
    }

    @Test(
        "convert to .wpk, then diff against the safetensors folder: identical (exit 0)",
        arguments: ["tiny-sd1/diffusers-bin", "tiny-sd1/diffusers-sharded"])
    func convertAndDiff(path: String) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let wpk = dir.appendingPathComponent("m.wpk").path
        let convert = try run(["convert", fixturePath(path), wpk])
        #expect(convert.status == 0, "\(convert.stderr)")
        let diff = try run(["diff", wpk, fixturePath("tiny-sd1/diffusers"), "--json"])
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
        let summary = try #require(try parseJSON(diff.stdout)["summary"]?.objectValue)
        #expect(summary["dtype_changes"]?.intValue == 0)
        // The .wpk holds the source folder's bytes under canonical names, with the folder's
        // layout and the component files recorded.
        let file = try WPKFile(path: wpk)
        #expect(file.tensors.count == 684 + 244 + 52)
        #expect(file.headerMetadata["layout"]?.objectValue?["kind"]?.stringValue == "diffusers")
        #expect(file.headerMetadata["architecture"]?.objectValue?["family"]?.stringValue == "sd1")
        let reference = try DiffusersFolder(path: fixturePath("tiny-sd1/diffusers"))
        for (canonical, source) in [("vae.decoder.conv_in.weight", "vae.decoder.conv_in.weight"), ("unet.conv_out.bias", "unet.conv_out.bias")] {
            let a = try file.tensor(named: canonical), b = try reference.tensor(named: source)
            #expect(a.dtype == b.dtype && a.shape == b.shape && a.bytes.withUnsafeBytes { x in b.bytes.withUnsafeBytes { y in x.elementsEqual(y) } })
        }
    }

    @Test("a damaged shard index is a one-line error with exit 65, a missing shard exit 66, a tensor placed in the wrong shard exit 65")
    func damagedIndex() throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = dir.appendingPathComponent("m")
        let source = URL(fileURLWithPath: fixturePath("tiny-sd1/diffusers-sharded"))
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for name in ["model_index.json", "scheduler", "tokenizer", "text_encoder", "unet"] {
            try FileManager.default.createSymbolicLink(
                at: folder.appendingPathComponent(name), withDestinationURL: source.appendingPathComponent(name).resolvingSymlinksInPath())
        }
        let vae = folder.appendingPathComponent("vae")
        try FileManager.default.createDirectory(at: vae, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: source.appendingPathComponent("vae").path)
        where name.hasSuffix(".bin") || name == "config.json" {
            try FileManager.default.createSymbolicLink(
                at: vae.appendingPathComponent(name), withDestinationURL: source.appendingPathComponent("vae/" + name))
        }
        let index = vae.appendingPathComponent("diffusion_pytorch_model.bin.index.json")
        try Data(#"{"metadata": {}, "weight_map": {"decoder.conv_in.weight": "../elsewhere.bin"}}"#.utf8).write(to: index)
        let bad = try run(["inspect", folder.path])
        #expect(bad.status == 65, "\(bad.stderr)")
        #expect(bad.stderr.hasPrefix("weightpack: error: ") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
        try Data(#"{"metadata": {}, "weight_map": {"decoder.conv_in.weight": "diffusion_pytorch_model-00009-of-00009.bin"}}"#.utf8).write(to: index)
        let missing = try run(["inspect", folder.path])
        #expect(missing.status == 66, "\(missing.stderr)")
        #expect(missing.stderr.split(separator: "\n").count == 1, "\(missing.stderr)")
        // The real index with one tensor placed in a shard that does not hold it.
        let real = try parseJSON(String(contentsOf: source.appendingPathComponent("vae/diffusion_pytorch_model.bin.index.json"), encoding: .utf8))
        let map = try #require(real["weight_map"]?.objectValue)
        let right = try #require(map["decoder.conv_in.weight"]?.stringValue)
        let wrong = try #require(Set(map.compactMap { $0.value.stringValue }).sorted().first { $0 != right })
        var entries = map.map { "\"\($0.key)\": \"\($0.key == "decoder.conv_in.weight" ? wrong : $0.value.stringValue ?? "")\"" }
        entries.sort()
        try Data("{\"weight_map\": {\(entries.joined(separator: ", "))}}".utf8).write(to: index)
        let misplaced = try run(["inspect", folder.path])
        #expect(misplaced.status == 65, "\(misplaced.stderr)")
        #expect(misplaced.stderr.contains("lacks it") && misplaced.stderr.split(separator: "\n").count == 1, "\(misplaced.stderr)")
    }
}
