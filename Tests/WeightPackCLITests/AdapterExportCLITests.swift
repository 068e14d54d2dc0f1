import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

private func bytes(_ store: any TensorStore, _ name: String) throws -> [UInt8] {
    try store.tensor(named: name).bytes.withUnsafeBytes { Array($0) }
}

/// `export ADAPTER --layout kohya|diffusers` and the refusals around it.
@Suite("export of adapters between dialects, end to end")
struct AdapterExportCLITests {
    @Test("export --help explains the adapter dialects and their refusals")
    func help() {
        let text = WeightPackCommand.helpMessage(for: Export.self).split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for word in ["--layout kohya", "lora_adapter_metadata", "lora_A/lora_B", "LoHa", ".wpk", "kohya for a model, ldm for an adapter", "65"] {
            #expect(text.contains(word), "export --help lacks \(word)")
        }
    }

    @Test(
        "kohya → diffusers → kohya through the command gives back every tensor bit for bit; the PEFT file carries the alphas in lora_adapter_metadata"
    )
    func roundTrip() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = adapterFixture("sd1-kohya-lora.safetensors")
        let peft = folder.appendingPathComponent("peft.safetensors").path
        let toPEFT = try run(["export", original, peft, "--layout", "diffusers"])
        #expect(toPEFT.status == 0, "\(toPEFT.stderr)")
        let peftFile = try SafetensorsFile(path: peft)
        #expect(peftFile.tensors.allSatisfy { $0.name.hasSuffix(".lora_A.weight") || $0.name.hasSuffix(".lora_B.weight") })
        let source = try SafetensorsFile(path: original)
        // Every kohya alpha is in the metadata (as the component's lora_alpha or a pattern).
        let metadata = try #require(peftFile.metadata["lora_adapter_metadata"])
        let config = try #require(try Array(metadata.utf8).withUnsafeBytes { try JSONParser.parse($0) }.objectValue)
        let alphas = try source.tensors.filter { $0.name.hasSuffix(".alpha") }.map { try source.tensor(named: $0.name).floats()[0] }
        #expect(!alphas.isEmpty)
        let unetAlpha = try #require(config["unet.lora_alpha"]?.doubleValue)
        #expect(alphas.contains(Float(unetAlpha)))
        // The same factor bytes, up and down, under the new names.
        #expect(peftFile.tensors.count == source.tensors.filter { !$0.name.hasSuffix(".alpha") }.count)
        let kohya = folder.appendingPathComponent("kohya.safetensors").path
        let back = try run(["export", peft, kohya, "--layout", "kohya"])
        #expect(back.status == 0, "\(back.stderr)")
        let again = try SafetensorsFile(path: kohya)
        #expect(Set(again.tensors.map(\.name)) == Set(source.tensors.map(\.name)))
        for d in source.tensors {
            #expect(try bytes(again, d.name) == bytes(source, d.name), "\(d.name)")
            #expect(again.descriptor(named: d.name)?.dtype == d.dtype)
        }
    }

    @Test("a .wpk output holds the converted adapter (names, bytes, alpha metadata), and exports back to kohya bit for bit")
    func wpkOutput() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = adapterFixture("sd1-kohya-lora.safetensors")
        let peft = folder.appendingPathComponent("peft.safetensors").path
        let wpk = folder.appendingPathComponent("peft.wpk").path
        #expect(try run(["export", original, peft, "--layout", "diffusers"]).status == 0)
        let toWPK = try run(["export", original, wpk, "--layout", "diffusers"])
        #expect(toWPK.status == 0, "\(toWPK.stderr)")
        #expect(try run(["check", wpk]).status == 0)
        let file = try WPKFile(path: wpk), reference = try SafetensorsFile(path: peft)
        #expect(Set(file.tensors.map(\.name)) == Set(reference.tensors.map(\.name)))
        for d in reference.tensors { #expect(try bytes(file, d.name) == bytes(reference, d.name), "\(d.name)") }
        #expect(file.metadata["lora_adapter_metadata"] == reference.metadata["lora_adapter_metadata"])
        let inspect = try run(["inspect", wpk])
        #expect(inspect.stdout.contains("adapter: LoRA"), "\(inspect.stdout.prefix(600))")
        let kohya = folder.appendingPathComponent("kohya.safetensors").path
        let back = try run(["export", wpk, kohya, "--layout", "kohya"])
        #expect(back.status == 0, "\(back.stderr)")
        let source = try SafetensorsFile(path: original), again = try SafetensorsFile(path: kohya)
        #expect(Set(again.tensors.map(\.name)) == Set(source.tensors.map(\.name)))
        for d in source.tensors { #expect(try bytes(again, d.name) == bytes(source, d.name), "\(d.name)") }
    }

    @Test("PEFT → kohya merges to diffusers' golden (fuse_lora of the PEFT file) within 1e-6 relative")
    func peftToKohyaGolden() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let kohya = folder.appendingPathComponent("kohya.safetensors").path
        let export = try run(["export", adapterFixture("sd1-peft-lora.safetensors"), kohya, "--layout", "kohya"])
        #expect(export.status == 0, "\(export.stderr)")
        let converted = try SafetensorsFile(path: kohya)
        #expect(converted.tensors.allSatisfy { $0.name.hasPrefix("lora_unet_") || $0.name.hasPrefix("lora_te_") })
        #expect(converted.tensors.contains { $0.name.hasSuffix(".alpha") })
        let golden = try SafetensorsFile(path: adapterFixture("sd1-peft-lora.merged.safetensors"))
        let scale = try #require(golden.metadata["scale"])
        let merged = folder.appendingPathComponent("merged.wpk").path
        let merge = try run(["merge", tinyModel, kohya + ":" + scale, "-o", merged])
        #expect(merge.status == 0, "\(merge.stderr)")
        let file = try WPKFile(path: merged)
        #expect(!golden.tensors.isEmpty)
        for d in golden.tensors {
            let e = relativeDifference(try file.tensor(named: d.name).floats(), try golden.tensor(named: d.name).floats())
            #expect(e <= 1e-6, "\(d.name): relative difference \(e)")
        }
    }

    @Test(
        "refusals: one line, the documented exit code, nothing written",
        arguments: [
            (["sd1-loha.safetensors", "diffusers"], 65 as Int32, "LoHa"),
            (["sd1-dora.safetensors", "diffusers"], 65, "PEFT"),
            (["ti-diffusers.safetensors", "kohya"], 65, "embedding"),
            (["sd1-kohya-lora.safetensors", "ldm"], 65, "adapter"),
            (["MODEL", "kohya"], 65, "--layout kohya"),
        ])
    func refused(_ arguments: [String], _ status: Int32, _ word: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let input = arguments[0] == "MODEL" ? tinyModel : adapterFixture(arguments[0])
        for name in ["out.safetensors", "out.wpk"] {
            let output = folder.appendingPathComponent(name).path
            let result = try run(["export", input, output, "--layout", arguments[1]])
            #expect(result.status == status, "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "not one line: \(result.stderr)")
            #expect(result.stderr.hasPrefix("weightpack: error: "))
            #expect(result.stderr.contains(word), "\(result.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty, "left something behind")
        }
    }

    @Test("inspect names a PEFT LoRA (its unet./text_encoder. keys pass for a diffusers layout of no recognised model)")
    func inspectPEFT() throws {
        let path = adapterFixture("sd1-peft-lora.safetensors")
        let file = try SafetensorsFile(path: path)
        let modules = Set(
            file.tensors.map { $0.name.replacingOccurrences(of: ".lora_A.weight", with: "").replacingOccurrences(of: ".lora_B.weight", with: "") })
        let table = try run(["inspect", path])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("adapter: LoRA (\(modules.count) modules), dialect diffusers-peft"), "\(table.stdout.prefix(600))")
        let json = try run(["inspect", path, "--json"])
        let root = try #require(try Array(json.stdout.utf8).withUnsafeBytes { try JSONParser.parse($0) }.objectValue)
        #expect(root["adapter"]?.objectValue != nil)
    }

    @Test("--layout kohya with --format gguf, and --config with an adapter, are usage errors (64)")
    func kohyaGGUF() throws {
        #expect(throws: (any Error).self) { _ = try WeightPackCommand.parseAsRoot(["export", "a.safetensors", "b.gguf", "--layout", "kohya"]) }
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let result = try run([
            "export", adapterFixture("sd1-kohya-lora.safetensors"), folder.appendingPathComponent("x.gguf").path, "--layout", "kohya",
        ])
        #expect(result.status == 64, "\(result.stderr)")
        // --config (a model's diffusers configurations) with an adapter: usage, one line, nothing written.
        let config = try run([
            "export", adapterFixture("sd1-kohya-lora.safetensors"), folder.appendingPathComponent("x.safetensors").path,
            "--layout", "diffusers", "--config", repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers").path,
        ])
        #expect(config.status == 64 && config.stderr.split(separator: "\n").count == 1, "\(config.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }
}

/// `merge` into quantised outputs: block types in .wpk and GGUF, --tensor-type, and a quantised base.
@Suite("merge into block types, end to end")
struct MergeBlockTypeCLITests {
    /// The golden merged tensors (diffusers' fuse_lora of sd1-kohya-lora at its scale), canonical names.
    func golden() throws -> (file: SafetensorsFile, scale: String) {
        let file = try SafetensorsFile(path: adapterFixture("sd1-kohya-lora.merged.safetensors"))
        return (file, try #require(file.metadata["scale"]))
    }

    @Test("merge into q4_k .wpk: merged tensors dequantised are within the stored type's error of the golden")
    func q4kWPK() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (golden, scale) = try golden()
        let output = folder.appendingPathComponent("merged-q4k.wpk").path
        let merge = try run(["merge", tinyModel, adapterFixture("sd1-kohya-lora.safetensors") + ":" + scale, "-o", output, "--dtype", "q4_k"])
        #expect(merge.status == 0, "\(merge.stderr)")
        #expect(merge.stderr.contains("types: "), "no type summary: \(merge.stderr)")
        #expect(try run(["check", output]).status == 0)
        let file = try WPKFile(path: output)
        var blockTensors = 0
        for d in golden.tensors {
            let expected = try golden.tensor(named: d.name).floats()
            let measured = snr(expected, try file.tensor(named: d.name).floats())
            let type = try file.ggmlTensor(named: d.name)?.type.name ?? "plain"
            if type != "plain" { blockTensors += 1 }
            #expect(measured >= mergeMinimumSNR[type] ?? 99, "\(d.name) \(type): \(measured) dB")
        }
        #expect(blockTensors > 0, "no merged tensor was stored as blocks")
    }

    @Test("merge into q8_0 GGUF: merged tensors dequantised are within Q8_0's error of the golden; --tensor-type overrides")
    func q80GGUF() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (golden, scale) = try golden()
        let lora = adapterFixture("sd1-kohya-lora.safetensors") + ":" + scale
        let output = folder.appendingPathComponent("merged-q8.gguf").path
        let merge = try run(["merge", tinyModel, lora, "-o", output, "--dtype", "q8_0"])
        #expect(merge.status == 0, "\(merge.stderr)")
        let gguf = try GGUFFile(path: output)
        #expect(try gguf.tensors.contains { try gguf.ggmlTensor(named: $0.name)?.type.name == "Q8_0" })
        // Back to canonical names, values as stored (dequantised to f32).
        let wpk = folder.appendingPathComponent("back.wpk").path
        let convert = try run(["convert", output, wpk, "--dtype", "f32"])
        #expect(convert.status == 0, "\(convert.stderr)")
        let back = try WPKFile(path: wpk)
        var q8 = 0
        for d in golden.tensors {
            let expected = try golden.tensor(named: d.name).floats()
            let measured = snr(expected, try back.tensor(named: d.name).floats())
            let stored = back.sourceName(of: d.name) ?? d.name
            let type = try gguf.ggmlTensor(named: stored)?.type.name ?? "plain"
            if type == "Q8_0" { q8 += 1 }
            #expect(measured >= mergeMinimumSNR[type] ?? 99, "\(d.name) (\(stored)) \(type): \(measured) dB")
        }
        // An override: every attention projection as Q4_0.
        let override = folder.appendingPathComponent("merged-override.gguf").path
        let second = try run(["merge", tinyModel, lora, "-o", override, "--dtype", "q8_0", "--tensor-type", "*attn*=q4_0"])
        #expect(second.status == 0, "\(second.stderr)")
        let overridden = try GGUFFile(path: override)
        let attention = try overridden.tensors.filter { $0.name.contains("attn") }.compactMap { try overridden.ggmlTensor(named: $0.name)?.type.name }
        #expect(attention.contains("Q4_0") && !attention.contains("Q8_0"), "\(Set(attention))")
        #expect(q8 > 0, "no merged tensor was stored as Q8_0")
    }

    @Test("merge options: block types need .wpk or .gguf, --tensor-type needs a block type, bf16 and int8 are not GGUF types")
    func parsing() throws {
        let ok = try #require(
            try WeightPackCommand.parseAsRoot(["merge", "b", "a", "-o", "o.gguf", "--dtype", "Q4_K", "--tensor-type", "*attn*=q8_0"]) as? Merge)
        #expect(ok.dtype == .q4_k && ok.tensorTypes == ["*attn*=q8_0"])
        for arguments in [
            ["merge", "b", "a", "-o", "o.safetensors", "--dtype", "q4_k"], ["merge", "b", "a", "-o", "o.wpk", "--tensor-type", "*=q8_0"],
            ["merge", "b", "a", "-o", "o.gguf", "--dtype", "bf16"],
            ["merge", "b", "a", "-o", "o.wpk", "--dtype", "q4_k", "--tensor-type", "[a]=q8_0"],
        ] {
            #expect(throws: (any Error).self, "\(arguments)") { _ = try WeightPackCommand.parseAsRoot(arguments) }
        }
    }

    @Test("a quantised base: --dtype keep is refused (64, one line, nothing written); int8 and a block type quantise after the merge")
    func quantisedBase() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (golden, scale) = try golden()
        let lora = adapterFixture("sd1-kohya-lora.safetensors") + ":" + scale
        let int8 = folder.appendingPathComponent("base-int8.wpk").path
        #expect(try run(["convert", tinyModel, int8, "--dtype", "int8"]).status == 0)
        let outputs = folder.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: outputs, withIntermediateDirectories: false)
        for name in ["m.wpk", "m.safetensors", "m.gguf"] {
            let result = try run(["merge", int8, lora, "-o", outputs.appendingPathComponent(name).path])
            #expect(result.status == 64, "\(name): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains("int8"), "\(result.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: outputs.path).isEmpty)
        }
        let merged = outputs.appendingPathComponent("m.wpk").path
        let again = try run(["merge", int8, lora, "-o", merged, "--dtype", "int8"])
        #expect(again.status == 0, "\(again.stderr)")
        let file = try WPKFile(path: merged)
        for d in golden.tensors {
            guard try file.quantizedTensor(named: d.name) != nil else { continue }
            let measured = snr(try golden.tensor(named: d.name).floats(), try file.tensor(named: d.name).floats())
            #expect(measured >= mergeMinimumSNR["int8"]!, "\(d.name): \(measured) dB")
        }
        #expect(try golden.tensors.contains { try file.quantizedTensor(named: $0.name) != nil })
        // A block-type GGUF base too.
        let q4 = folder.appendingPathComponent("base-q4.gguf").path
        #expect(try run(["export", tinyModel, q4, "--dtype", "q4_0"]).status == 0)
        let fromGGUF = try run(["merge", q4, lora, "-o", outputs.appendingPathComponent("g.wpk").path])
        #expect(fromGGUF.status == 64 && fromGGUF.stderr.contains("Q4_0"), "\(fromGGUF.stderr)")
    }
}

/// SNR floors against the golden merged values (diffusers' fuse_lora), per stored type (`plain`:
/// F16/F32 kept by the rules), about 2 dB under the lowest measured on the tiny fixture merged
/// with sd1-kohya-lora at the golden's scale (release build, 2026-12-03): q4_k .wpk: Q4_K 24.7 dB
/// (its one tensor with rows of 256), Q5_0 27.4 (12 fallbacks); q8_0 GGUF: Q8_0 45.3 (11), F16
/// 73.3 (2); int8 .wpk from an int8 base: 42.0 (13). A type not listed fails (measure it first).
private let mergeMinimumSNR: [String: Double] = ["plain": 71, "int8": 40, "Q8_0": 43, "Q4_K": 22.5, "Q5_0": 25]
