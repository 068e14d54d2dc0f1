import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

/// The tensors of a diffusers folder keyed `component.name`, text encoders in transformers-4 naming.
private func folderTensors(_ path: String) throws -> [String: TensorView] {
    let folder = try DiffusersFolder(path: path)
    var out: [String: TensorView] = [:]
    for d in folder.tensors {
        var name = d.name
        for c in ["text_encoder.", "text_encoder_2."] where name.hasPrefix(c) {
            let rest = name.dropFirst(c.count)
            if !rest.hasPrefix("text_model.") && !rest.hasPrefix("text_projection") { name = c + "text_model." + rest }
        }
        out[name] = try folder.tensor(named: d.name)
    }
    return out
}

@Suite("model knowledge end to end (built binary)", .serialized)
struct ModelKnowledgeCLITests {
    @Test(
        "inspect --json reports family, variant, prediction type, evidence and rejected candidates",
        arguments: [
            ("tiny-sd1/tiny-sd1.safetensors", "sd1", "epsilon"),
            ("tiny-sd2/tiny-sd2.safetensors", "sd2", "unknown"),
            ("tiny-sd2/diffusers", "sd2", "v_prediction"),
            ("tiny-sdxl/diffusers", "sdxl", "epsilon"),
        ])
    func inspectArchitecture(path: String, family: String, prediction: String) throws {
        let result = try run(["inspect", fixturePath(path), "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let root = try parseJSON(result.stdout)
        let architecture = try #require(root["architecture"]?.objectValue)
        #expect(architecture["family"]?.stringValue == family)
        #expect(architecture["variant"]?.stringValue == "base")
        #expect(architecture["prediction_type"]?.stringValue == prediction)
        #expect((architecture["evidence"]?.arrayValue?.count ?? 0) > 3)
        #expect(architecture["rejected"]?.arrayValue?.count == 3)
        #expect(architecture["components"]?.objectValue?["unet"] != nil)
        let tensors = try #require(root["tensors"]?.arrayValue)
        #expect(tensors.contains { $0.objectValue?["canonical"]?.stringValue == "unet.conv_in.weight" })
    }

    @Test(
        "LDM → wpk → diffusers folder equals the reference folder, and diffusers → wpk → LDM the reference file", arguments: ["sd1", "sd2", "sdxl"])
    func crossLayoutRoundTrips(model: String) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let ldmWPK = dir.appendingPathComponent("ldm.wpk").path, diffWPK = dir.appendingPathComponent("diff.wpk").path
        let folderOut = dir.appendingPathComponent("out-diffusers").path, ldmOut = dir.appendingPathComponent("out.safetensors").path
        for args in [
            ["convert", fixturePath("tiny-\(model)/tiny-\(model).safetensors"), ldmWPK],
            ["export", ldmWPK, folderOut, "--layout", "diffusers"],
            ["convert", fixturePath("tiny-\(model)/diffusers"), diffWPK],
            ["export", diffWPK, ldmOut, "--layout", "ldm"],
        ] {
            let r = try run(args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        let reference = try folderTensors(fixturePath("tiny-\(model)/diffusers"))
        let ours = try folderTensors(folderOut)
        #expect(Set(ours.keys) == Set(reference.keys))
        for (name, view) in ours { #expect(reference[name].map { sameBytes(view, $0) } == true, "\(name)") }
        let referenceLDM = try SafetensorsFile(path: fixturePath("tiny-\(model)/tiny-\(model).safetensors"))
        let ldm = try SafetensorsFile(path: ldmOut)
        for d in ldm.tensors {
            #expect(sameBytes(try ldm.tensor(named: d.name), try referenceLDM.tensor(named: d.name)), "\(d.name)")
        }
        #expect(ldm.tensors.count >= referenceLDM.tensors.count - (model == "sd2" ? 26 : 12))
    }

    @Test(
        "export --layout source gives back the source layout, names and bytes",
        arguments: ["tiny-sd1/tiny-sd1.safetensors", "tiny-sdxl/tiny-sdxl.safetensors"])
    func sourceLayout(path: String) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let wpk = dir.appendingPathComponent("m.wpk").path, back = dir.appendingPathComponent("back.safetensors").path
        #expect(try run(["convert", fixturePath(path), wpk, "--keep-extra"]).status == 0)
        #expect(try run(["export", wpk, back]).status == 0)
        let original = try SafetensorsFile(path: fixturePath(path)), restored = try SafetensorsFile(path: back)
        let firstOutOfOrder = zip(restored.tensors.map(\.name), original.tensors.map(\.name)).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(
            restored.tensors.count == original.tensors.count && firstOutOfOrder == nil, "first difference: \(String(describing: firstOutOfOrder))")
        for d in original.tensors { #expect(sameBytes(try restored.tensor(named: d.name), try original.tensor(named: d.name)), "\(d.name)") }
        let header = try WPKFile(path: wpk).headerMetadata
        #expect(header["layout"]?.objectValue?["kind"]?.stringValue == "ldm")
        #expect(header["architecture"]?.objectValue?["family"] != nil)
    }

    @Test("diff: identical across formats and layouts exits 0; different exits 1")
    func diff() throws {
        let same = try run(["diff", fixturePath("tiny-sdxl/tiny-sdxl.safetensors"), fixturePath("tiny-sdxl/diffusers")])
        #expect(same.status == 0, "\(same.stdout)\(same.stderr)")
        let other = try run(["diff", fixturePath("tiny-sd1/tiny-sd1.safetensors"), fixturePath("tiny-sd1/tiny-sd1.ckpt"), "--json"])
        #expect(other.status == 1)
        let summary = try #require(try parseJSON(other.stdout)["summary"]?.objectValue)
        #expect(summary["dtype_changes"]?.intValue == 980)
        #expect((summary["min_cosine"]?.doubleValue ?? 0) > 0.9999)
        let families = try run(["diff", fixturePath("tiny-sd1/diffusers"), fixturePath("tiny-sd2/diffusers")])
        #expect(families.status == 1)
    }

    /// tiny-sd1 with EMA copies (every UNet byte flipped in its lowest bit) and damaged position_ids.
    static func emaModel(in dir: URL) throws -> String {
        let source = try SafetensorsFile(path: fixturePath("tiny-sd1/tiny-sd1.safetensors"))
        var plan = OutputTensor.plan(from: source, dtype: .keep)
        for d in source.tensors where d.name.hasPrefix("model.diffusion_model.") {
            let name = "model_ema." + d.name.split(separator: ".").dropFirst().joined()
            plan.append(
                OutputTensor(
                    name: name, dtype: d.dtype, shape: d.shape, sourceName: d.name, sourceDType: d.dtype,
                    load: {
                        let view = try source.tensor(named: d.name)
                        let flipped = view.bytes.withUnsafeBytes { Array($0).map { $0 ^ 1 } }
                        return TensorView(descriptor: view.descriptor, bytes: flipped.withUnsafeBytes { TensorBytes(copying: $0) })
                    }))
        }
        if let i = plan.firstIndex(where: { $0.name.hasSuffix("position_ids") }) {
            let d = source.descriptor(named: plan[i].name)!
            plan[i] = OutputTensor(
                name: d.name, dtype: .f32, shape: d.shape, sourceName: d.name, sourceDType: .f32,
                load: {
                    var values = (0..<77).map(Float.init)
                    values[76] = 75.9975
                    values[40] = 39.5
                    let bytes = values.withUnsafeBytes { TensorBytes(copying: $0) }
                    return TensorView(descriptor: TensorDescriptor(name: d.name, dtype: .f32, shape: d.shape, byteCount: 77 * 4), bytes: bytes)
                })
        }
        let path = dir.appendingPathComponent("ema.safetensors").path
        try SafetensorsWriter.write(plan, to: path, overwrite: true)
        return path
    }

    @Test("EMA presence, --weights ema, broken position_ids found and fixed")
    func emaAndPositionIDs() throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.emaModel(in: dir)
        let inspect = try run(["inspect", path, "--json"])
        let root = try parseJSON(inspect.stdout)
        let ema = try #require(root["architecture"]?.objectValue?["ema"]?.objectValue)
        #expect(ema["present"]?.boolValue == true && ema["tensors"]?.intValue == 684)
        let findings = root["findings"]?.arrayValue ?? []
        let position = try #require(findings.first { $0.objectValue?["code"]?.stringValue == "position-ids" }?.objectValue)
        #expect(position["message"]?.stringValue?.contains("[76] = 75.998") == true || position["message"]?.stringValue?.contains("[76]") == true)
        #expect(position["message"]?.stringValue?.hasPrefix("2 position_ids") == true)

        let main = dir.appendingPathComponent("main.wpk").path, emaOut = dir.appendingPathComponent("ema.wpk").path
        #expect(try run(["convert", path, main, "--fix-position-ids"]).status == 0)
        #expect(try run(["convert", path, emaOut, "--weights", "ema"]).status == 0)
        let source = try SafetensorsFile(path: path)
        let mainFile = try WPKFile(path: main), emaFile = try WPKFile(path: emaOut)
        let convIn = "unet.conv_in.weight"
        #expect(sameBytes(try mainFile.tensor(named: convIn), try source.tensor(named: "model.diffusion_model.input_blocks.0.0.weight")))
        #expect(sameBytes(try emaFile.tensor(named: convIn), try source.tensor(named: "model_ema.diffusion_modelinput_blocks00weight")))
        #expect(mainFile.descriptor(named: "extra.model_ema.diffusion_modelinput_blocks00weight") == nil)
        let ids = try mainFile.tensor(named: "text_encoder.text_model.embeddings.position_ids")
        let idValues = try ids.floats()
        #expect(ids.dtype == .i64 && idValues == (0..<77).map(Float.init))
        // Without EMA weights, --weights ema is refused as bad input.
        let refused = try run(["convert", fixturePath("tiny-sd1/tiny-sd1.safetensors"), dir.appendingPathComponent("x.wpk").path, "--weights", "ema"])
        #expect(refused.status == 65)
    }

    @Test("a folder written by export is atomic: an existing output is refused without --force")
    func folderExists() throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out").path
        #expect(try run(["export", fixturePath("tiny-sd1/tiny-sd1.safetensors"), out, "--layout", "diffusers"]).status == 0)
        #expect(try run(["export", fixturePath("tiny-sd1/tiny-sd1.safetensors"), out, "--layout", "diffusers"]).status == 73)
        #expect(try run(["export", fixturePath("tiny-sd1/tiny-sd1.safetensors"), out, "--layout", "diffusers", "--force"]).status == 0)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }
        #expect(leftovers.isEmpty)
    }

    static let venvPython = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/weightpack/fixture-venv/bin/python").path

    /// Runs `script` with the fixture venv's Python and `arguments`; its exit status and stdout.
    static func runPython(_ script: String, _ arguments: String...) throws -> (status: Int32, stdout: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: venvPython)
        process.arguments = ["-c", script] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    @Test(
        "diffusers loads exported folders (runs when the fixture venv exists)",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: venvPython),
            "the fixture Python environment ($HOME/.cache/weightpack/fixture-venv) is not installed"),
        arguments: ["sd1", "sd2", "sdxl"])
    func diffusersLoads(model: String) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out").path
        #expect(try run(["export", fixturePath("tiny-\(model)/tiny-\(model).safetensors"), out, "--layout", "diffusers"]).status == 0)
        // The folder is loaded as it is, tokenizer included (written from the bundled CLIP
        // vocabulary, since an LDM file holds none), and its tokenizer must give our ids.
        let script = """
            import os, sys
            os.environ["HF_HUB_OFFLINE"] = "1"
            from diffusers import DiffusionPipeline
            p = DiffusionPipeline.from_pretrained(sys.argv[1])
            print("loaded", type(p).__name__)
            t = p.tokenizer if p.tokenizer is not None else p.tokenizer_2
            print("ids", " ".join(str(i) for i in t("a photo of a cat!", padding="max_length", max_length=77).input_ids))
            """
        let (status, text) = try Self.runPython(script, out, model)
        let theirs = text.split(separator: "\n").first { $0.hasPrefix("ids ") }.map { $0.dropFirst(4).split(separator: " ").compactMap { Int($0) } }
        // Padding comes from the folder's tokenizer_config.json, as for any diffusers folder.
        let ours = try run(["tokenize", "a photo of a cat!", "--tokenizer", out + "/tokenizer"])
        #expect(
            theirs == ours.stdout.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) },
            "\(text) vs \(ours.stdout)")
        #expect(status == 0 && text.contains("loaded"), "\(text)")
    }

    @Test(
        "diffusers loads folders exported from a diffusers source, and their tensors equal the source folder's (runs when the fixture venv exists)",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: venvPython),
            "the fixture Python environment ($HOME/.cache/weightpack/fixture-venv) is not installed"),
        arguments: ["sd1", "sd2", "sdxl"])
    func diffusersLoadsFromDiffusersSource(model: String) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let source = fixturePath("tiny-\(model)/diffusers")
        let wpk = dir.appendingPathComponent("m.wpk").path, out = dir.appendingPathComponent("out").path
        for args in [["convert", source, wpk], ["export", wpk, out, "--layout", "diffusers"]] {
            let r = try run(args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        // Ours: every tensor of the export equals the source folder's, byte for byte.
        let reference = try folderTensors(source)
        let ours = try folderTensors(out)
        #expect(Set(ours.keys) == Set(reference.keys))
        for (name, view) in ours { #expect(reference[name].map { sameBytes(view, $0) } == true, "\(name)") }
        // Theirs: diffusers loads both folders as they are (the SD 2.x source holds the fp16
        // variant) and finds the same tensors, tokenizer ids and scheduler configuration.
        let script = """
            import os, sys
            os.environ["HF_HUB_OFFLINE"] = "1"
            import torch
            from diffusers import DiffusionPipeline
            out, src = sys.argv[1], sys.argv[2]
            variant = "fp16" if any(".fp16." in f for _, _, fs in os.walk(src) for f in fs) else None
            a = DiffusionPipeline.from_pretrained(out)
            b = DiffusionPipeline.from_pretrained(src, variant=variant)
            print("loaded", type(a).__name__, type(b).__name__)
            different, count = [], 0
            for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
                x, y = getattr(a, name, None), getattr(b, name, None)
                if x is None and y is None:
                    continue
                if x is None or y is None:
                    different.append(name)
                    continue
                sx, sy = x.state_dict(), y.state_dict()
                if set(sx) != set(sy):
                    different.append(name + " (names)")
                for k in sy:
                    count += 1
                    if k not in sx or sx[k].dtype != sy[k].dtype or sx[k].shape != sy[k].shape or not torch.equal(sx[k], sy[k]):
                        different.append(name + "." + k)
            print("tensors", count, "different", len(different), " ".join(different[:5]))
            for t in ("tokenizer", "tokenizer_2"):
                x, y = getattr(a, t, None), getattr(b, t, None)
                if x is not None or y is not None:
                    same = x is not None and y is not None and x("a photo of a cat!").input_ids == y("a photo of a cat!").input_ids
                    print(t, "same" if same else "different")
            print("scheduler", type(a.scheduler).__name__, "same" if dict(a.scheduler.config) == dict(b.scheduler.config) else "different")
            """
        let (status, text) = try Self.runPython(script, out, source)
        #expect(status == 0 && text.contains("loaded"), "\(text)")
        let lines = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        func line(_ key: String) -> [String] { lines.first { $0.first == key } ?? [] }
        #expect(line("tensors").count >= 4 && line("tensors")[1] == String(reference.count) && line("tensors")[3] == "0", "\(text)")
        #expect(line("tokenizer").last == "same", "\(text)")
        #expect(line("tokenizer_2").last == (model == "sdxl" ? "same" : nil), "\(text)")
        #expect(line("scheduler").last == "same", "\(text)")
    }
}
