import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

@Suite("EMA-only checkpoints end to end (built binary)", .serialized)
struct EMAOnlyCLITests {
    /// tiny-sd1.safetensors as an "EMA-only" file: every `model.diffusion_model.X` stored as
    /// `model_ema.<X without dots>` (LitEma's naming, as in `ModelKnowledgeCLITests.emaModel`),
    /// no main UNet weights, plus LitEma's `decay` and `num_updates`; VAE, text encoder and
    /// schedule buffers as they are. Written at test time from the committed fixture.
    static func emaOnlyModel(in dir: URL) throws -> String {
        let source = try SafetensorsFile(path: fixturePath("tiny-sd1/tiny-sd1.safetensors"))
        var plan: [OutputTensor] = []
        for t in OutputTensor.plan(from: source, dtype: .keep) {
            guard t.name.hasPrefix("model.diffusion_model.") else { plan.append(t); continue }
            let name = "model_ema." + t.name.split(separator: ".").dropFirst().joined()
            plan.append(OutputTensor(name: name, dtype: t.dtype, shape: t.shape, sourceName: t.sourceName, sourceDType: t.sourceDType, load: t.load))
        }
        for (name, dtype, bytes) in [
            ("model_ema.decay", DType.f32, withUnsafeBytes(of: Float(0.9999).bitPattern.littleEndian) { Array($0) }),
            ("model_ema.num_updates", .i32, withUnsafeBytes(of: Int32(470).littleEndian) { Array($0) }),
        ] {
            plan.append(
                OutputTensor(
                    name: name, dtype: dtype, shape: [], sourceName: name, sourceDType: dtype,
                    load: {
                        TensorView(
                            descriptor: TensorDescriptor(name: name, dtype: dtype, shape: [], byteCount: 4),
                            bytes: bytes.withUnsafeBytes { TensorBytes(copying: $0) })
                    }))
        }
        let path = dir.appendingPathComponent("ema-only.safetensors").path
        try SafetensorsWriter.write(plan, to: path, overwrite: true)
        return path
    }

    @Test("inspect finds the UNet in the EMA copies and says only EMA weights are present")
    func inspect() throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.emaOnlyModel(in: dir)
        #expect(try SafetensorsFile(path: path).tensors.allSatisfy { !$0.name.hasPrefix("model.diffusion_model.") })
        let result = try run(["inspect", path, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let root = try parseJSON(result.stdout)
        let architecture = try #require(root["architecture"]?.objectValue)
        #expect(architecture["family"]?.stringValue == "sd1" && architecture["kind"]?.stringValue == "pipeline")
        let ema = try #require(architecture["ema"]?.objectValue)
        #expect(ema["only"]?.boolValue == true && ema["present"]?.boolValue == true && ema["tensors"]?.intValue == 684)
        let unet = try #require(architecture["components"]?.objectValue?["unet"]?.objectValue)
        #expect(unet["missing"]?.arrayValue?.isEmpty == true, "\(JSONValue.object(unet).serialized())")
        let findings = root["findings"]?.arrayValue?.compactMap(\.objectValue) ?? []
        #expect(
            findings.contains {
                $0["code"]?.stringValue == "ema-only" && $0["message"]?.stringValue?.hasPrefix("only EMA weights are present") == true
            })
        #expect(
            !findings.contains { ["missing-component", "missing-tensors", "ema", "leftover-ema"].contains($0["code"]?.stringValue ?? "") },
            "\(findings.map { JSONValue.object($0).serialized() })")
        let tensors = root["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
        #expect(
            tensors.contains {
                $0["name"]?.stringValue == "model_ema.diffusion_modelinput_blocks00weight" && $0["canonical"]?.stringValue == "unet.conv_in.weight"
            })
        let table = try run(["inspect", path])
        #expect(table.stdout.contains("(EMA only: the UNet is read from them)"), "\(table.stdout.prefix(600))")
    }

    @Test("convert uses the EMA weights with a note; the UNet equals the original's byte for byte", arguments: [[], ["--weights", "ema"]])
    func convert(extra: [String]) throws {
        let dir = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.emaOnlyModel(in: dir)
        let emaWPK = dir.appendingPathComponent("ema.wpk").path, mainWPK = dir.appendingPathComponent("main.wpk").path
        let convert = try run(["convert", path, emaWPK] + extra)
        #expect(convert.status == 0, "\(convert.stderr)")
        let notes = convert.stderr.split(separator: "\n").filter { $0.hasPrefix("note: ") && $0.contains("EMA weights only") }
        #expect(notes.count == (extra.isEmpty ? 1 : 0), "\(convert.stderr)")
        #expect(try run(["convert", fixturePath("tiny-sd1/tiny-sd1.safetensors"), mainWPK]).status == 0)
        let ema = try WPKFile(path: emaWPK), main = try WPKFile(path: mainWPK)
        #expect(ema.tensors.map(\.name) == main.tensors.map(\.name))
        let unet = main.tensors.filter { $0.name.hasPrefix("unet.") }
        #expect(unet.count == 684)
        for d in main.tensors { #expect(sameBytes(try ema.tensor(named: d.name), try main.tensor(named: d.name)), "\(d.name)") }
        #expect(ema.entry(named: "unet.conv_in.weight")?.sourceName == "model_ema.diffusion_modelinput_blocks00weight")
        let conversion = try #require(ema.headerMetadata["conversion"]?.objectValue)
        #expect(conversion["weights"]?.stringValue == "ema" && conversion["ema_only"]?.boolValue == true)
        // Across formats the two are the same model.
        let diff = try run(["diff", path, fixturePath("tiny-sd1/tiny-sd1.safetensors")])
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
        // An LDM export gives the UNet back under its main names.
        let back = dir.appendingPathComponent("back.safetensors").path
        #expect(try run(["export", emaWPK, back, "--layout", "ldm"]).status == 0)
        let original = try SafetensorsFile(path: fixturePath("tiny-sd1/tiny-sd1.safetensors")), restored = try SafetensorsFile(path: back)
        let originalUNet = original.tensors.filter { $0.name.hasPrefix("model.diffusion_model.") }
        #expect(originalUNet.count == 684)
        for d in originalUNet { #expect(sameBytes(try restored.tensor(named: d.name), try original.tensor(named: d.name)), "\(d.name)") }
    }
}
