import CheckpointFormats
import Foundation
import SafePickle
import TensorCore
import Testing

/// One entry of `Fixtures/torch/manifest.json` (written by make_torch_fixtures.py).
struct TorchFixture: CustomTestStringConvertible, Sendable {
    var file: String
    var kind: String
    var expect: String
    var why: String
    var golden: String?
    var format: String?
    var metadata: [String: String]
    var marker: String?
    var dangerous: String?
    var testDescription: String { "\(file) → \(expect)" }

    var path: String { torchFixturesURL.appendingPathComponent(file).path }

    static let all: [TorchFixture] = {
        let url = torchFixturesURL.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: url),
            let items = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]
        else { return [] }
        return items.compactMap { o in
            guard let file = o["file"] as? String, let kind = o["kind"] as? String, let expect = o["expect"] as? String else { return nil }
            return TorchFixture(
                file: file, kind: kind, expect: expect, why: o["why"] as? String ?? "", golden: o["golden"] as? String,
                format: o["format"] as? String, metadata: o["metadata"] as? [String: String] ?? [:],
                marker: o["marker"] as? String, dangerous: o["dangerous"] as? String)
        }
    }()

    static func of(kind: String) -> [TorchFixture] { all.filter { $0.kind == kind } }
}

let torchFixturesURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/torch")

/// Compares two tensors byte for byte and describes the first difference.
func torchCompare(_ actual: TensorView, _ expected: TensorView) -> String? {
    if actual.dtype != expected.dtype { return "dtype \(actual.dtype.name) ≠ \(expected.dtype.name)" }
    if actual.shape != expected.shape { return "shape \(actual.shape) ≠ \(expected.shape)" }
    let a = actual.bytes.withUnsafeBytes { Array($0) }
    let b = expected.bytes.withUnsafeBytes { Array($0) }
    if a.count != b.count { return "\(a.count) bytes ≠ \(b.count) bytes" }
    if let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
        let width = max(1, actual.dtype.byteWidth ?? 1)
        var detail = ""
        if let x = try? actual.floats(), let y = try? expected.floats() {
            let maxAbs = zip(x, y).map { abs($0 - $1) }.max() ?? 0
            detail = ", max abs error \(maxAbs)"
        }
        return "first differing element \(i / width)\(detail)"
    }
    return nil
}

func formatErrorCode(_ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch let error as FormatError {
        return error.code.description
    } catch {
        return "non-FormatError \(error)"
    }
}

@Suite("torch checkpoints: valid files are bit-exact against torch.load")
struct TorchValidTests {
    @Test("the fixture corpus is present")
    func corpusPresent() {
        #expect(TorchFixture.of(kind: "valid").count >= 7)
        #expect(TorchFixture.of(kind: "malicious").count >= 15)
        #expect(TorchFixture.of(kind: "malformed").count >= 25)
    }

    @Test("every tensor equals the golden", arguments: TorchFixture.of(kind: "valid"))
    func tensorsMatchGolden(_ fixture: TorchFixture) throws {
        let checkpoint = try TorchCheckpoint(path: fixture.path)
        let golden = try SafetensorsFile(path: torchFixturesURL.appendingPathComponent(try #require(fixture.golden)).path)
        #expect(checkpoint.formatName == fixture.format)
        #expect(Set(checkpoint.tensors.map(\.name)) == Set(golden.tensors.map(\.name)))
        for descriptor in golden.tensors {
            let expected = try golden.tensor(named: descriptor.name)
            let actual = try checkpoint.tensor(named: descriptor.name)
            let difference = torchCompare(actual, expected)
            #expect(difference == nil, "\(descriptor.name): \(difference ?? "")")
            #expect(checkpoint.descriptor(named: descriptor.name) == actual.descriptor)
        }
    }

    @Test("metadata holds the non-tensor entries", arguments: TorchFixture.of(kind: "valid").filter { !$0.metadata.isEmpty })
    func metadata(_ fixture: TorchFixture) throws {
        let checkpoint = try TorchCheckpoint(path: fixture.path)
        for (key, value) in fixture.metadata {
            #expect(checkpoint.metadata[key] == value, "metadata[\(key)]")
        }
        #expect(!checkpoint.metadata.keys.contains { $0.hasPrefix("state_dict") })
    }

    @Test("contiguous tensors are served from the mapping; strided ones are gathered")
    func sharedAndStrided() throws {
        let checkpoint = try TorchCheckpoint(path: torchFixturesURL.appendingPathComponent("valid/dtypes.ckpt").path)
        #expect(checkpoint.storageKey(of: "shared.a") == checkpoint.storageKey(of: "shared.b"))
        #expect(checkpoint.storageKey(of: "shared.a") != checkpoint.storageKey(of: "f32.weight"))
        let t = try checkpoint.tensor(named: "noncontiguous.weight")
        #expect(t.shape == [5, 3])
        let expanded = try checkpoint.tensor(named: "expanded").floats()
        #expect(expanded == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
        let ids = try checkpoint.tensor(named: "position_ids")
        #expect(ids.dtype == .i64 && ids.shape == [1, 77])
        // A zero-copy view keeps its owner (the mapping) alive after the checkpoint goes.
        let view = try checkpoint.tensor(named: "f32.weight")
        #expect(view.bytes.owner !== nil)
    }

    @Test("tiny-sd1.ckpt (torch.save of an LDM wrapper) equals tiny-sd1.safetensors")
    func tinySD1() throws {
        let base = torchFixturesURL.deletingLastPathComponent().appendingPathComponent("tiny-sd1")
        let ckptPath = base.appendingPathComponent("tiny-sd1.ckpt").path
        let stPath = base.appendingPathComponent("tiny-sd1.safetensors").path
        guard FileManager.default.fileExists(atPath: ckptPath), FileManager.default.fileExists(atPath: stPath) else { return }
        let checkpoint = try TorchCheckpoint(path: ckptPath)
        let reference = try SafetensorsFile(path: stPath)
        #expect(checkpoint.formatName == "ckpt")
        #expect(checkpoint.tensors.count == reference.tensors.count)
        #expect(checkpoint.metadata["global_step"] != nil)
        // The checkpoint may be the "pruned fp16" form of the F32 safetensors: compare after the
        // same rounding torch's .half() does.
        for descriptor in reference.tensors {
            let actual = try checkpoint.tensor(named: descriptor.name)
            var expected = try reference.tensor(named: descriptor.name)
            if actual.dtype != expected.dtype, ElementConversion.canConvert(from: expected.dtype, to: actual.dtype) {
                let target = actual.descriptor
                let source = expected
                let buffer = OwnedBuffer(byteCount: target.byteCount)
                try source.bytes.withUnsafeBytes { raw in
                    try ElementConversion.convert(raw, from: source.dtype, into: buffer.mutableBytes, to: target.dtype, count: target.elementCount)
                }
                expected = TensorView(
                    descriptor: TensorDescriptor(name: target.name, dtype: target.dtype, shape: source.shape, byteCount: target.byteCount),
                    bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
            }
            let difference = torchCompare(actual, expected)
            #expect(difference == nil, "\(descriptor.name): \(difference ?? "")")
        }
    }

    @Test("an unknown tensor name is tensorNotFound")
    func missingTensor() throws {
        let checkpoint = try TorchCheckpoint(path: torchFixturesURL.appendingPathComponent("valid/dtypes.ckpt").path)
        #expect(formatErrorCode { _ = try checkpoint.tensor(named: "nope") } == "tensorNotFound")
    }

    @Test("scan of a benign checkpoint is clean", arguments: TorchFixture.of(kind: "valid"))
    func scanBenign(_ fixture: TorchFixture) throws {
        let report = try TorchCheckpoint.scan(path: fixture.path)
        #expect(!report.isDangerous)
        #expect(report.problems.isEmpty)
        #expect(report.findings.contains { $0.qualifiedName == "torch._utils._rebuild_tensor_v2" && $0.safety == .safe })
    }
}

@Suite("torch checkpoints: malicious files are flagged and refused, and never run")
struct TorchMaliciousTests {
    static let flagged = TorchFixture.of(kind: "malicious").filter { $0.expect == "unsafeGlobal" }

    @Test("scan flags a dangerous global", arguments: flagged)
    func scanFlags(_ fixture: TorchFixture) throws {
        let report = try TorchCheckpoint.scan(path: fixture.path)
        #expect(report.isDangerous)
        if let name = fixture.dangerous {
            // The manifest names the global as written; the report names what it resolves to.
            #expect(
                report.dangerous.contains { $0.qualifiedName == name || $0.written == name },
                "expected \(name) among \(report.dangerous.map(\.qualifiedName))")
        }
        #expect(report.findings.allSatisfy { !$0.entry.isEmpty })
        try assertNotExecuted(fixture)
    }

    @Test("opening refuses with unsafeGlobal naming the global", arguments: flagged)
    func openRefuses(_ fixture: TorchFixture) throws {
        let result = Result { () throws(FormatError) in try TorchCheckpoint(path: fixture.path) }
        if case .failure(let error) = result {
            #expect(error.code == .unsafeGlobal, "\(error)")
            if let name = fixture.dangerous, name != "unknown.unknown" {
                #expect(error.message.contains(name), "\(error.message)")
            }
        } else {
            Issue.record("\(fixture.file) was accepted")
        }
        try assertNotExecuted(fixture)
    }

    @Test("allowing unsafe globals still executes nothing", arguments: flagged)
    func allowedStillInert(_ fixture: TorchFixture) throws {
        // The file may still be refused for other reasons; it must never run.
        _ = try? TorchCheckpoint(path: fixture.path, allowUnsafeGlobals: true)
        try assertNotExecuted(fixture)
    }

    @Test("the real torch zip with posix.system reads its tensor when allowed")
    func allowedReadsTensors() throws {
        let path = torchFixturesURL.appendingPathComponent("malicious/torch_zip_system.ckpt").path
        let checkpoint = try TorchCheckpoint(path: path, allowUnsafeGlobals: true)
        #expect(try checkpoint.tensor(named: "w").floats() == [1, 1])
        #expect(checkpoint.allowedUnsafeGlobals.contains { $0.qualifiedName == "posix.system" })
        #expect(checkpoint.metadata["x"]?.contains("posix.system") == true)
    }

    @Test("other malicious inputs fail with their code", arguments: TorchFixture.of(kind: "malicious").filter { $0.expect != "unsafeGlobal" })
    func otherMalicious(_ fixture: TorchFixture) throws {
        #expect(formatErrorCode { _ = try TorchCheckpoint(path: fixture.path) } == fixture.expect)
        try assertNotExecuted(fixture)
    }

    func assertNotExecuted(_ fixture: TorchFixture) throws {
        let marker = try #require(fixture.marker)
        #expect(!FileManager.default.fileExists(atPath: marker), "payload of \(fixture.file) ran: \(marker) exists")
    }
}

@Suite("torch checkpoints: malformed archives get the right error code")
struct TorchMalformedTests {
    @Test("each malformed file fails with its code", arguments: TorchFixture.of(kind: "malformed"))
    func malformed(_ fixture: TorchFixture) {
        #expect(formatErrorCode { _ = try TorchCheckpoint(path: fixture.path) } == fixture.expect, "\(fixture.why)")
    }

    @Test("errors name the file")
    func errorsNameTheFile() throws {
        let path = torchFixturesURL.appendingPathComponent("malformed/short_record.ckpt").path
        let result = Result { () throws(FormatError) in try TorchCheckpoint(path: path) }
        guard case .failure(let error) = result else {
            Issue.record("accepted")
            return
        }
        #expect(error.path == path)
        #expect(error.description.contains(path))
    }

    @Test("a missing file is an io error")
    func missingFile() {
        #expect(formatErrorCode { _ = try TorchCheckpoint(path: "/nonexistent/weightpack.ckpt") } == "io")
    }

    @Test("scan refuses archives it cannot read, and walks broken pickles without throwing")
    func scanMalformed() throws {
        let bomb = torchFixturesURL.appendingPathComponent("malformed/zip_bomb.ckpt").path
        #expect(formatErrorCode { _ = try TorchCheckpoint.scan(path: bomb) } == "invalidArchive")
        let truncated = torchFixturesURL.appendingPathComponent("malformed/truncated_pickle.ckpt").path
        let report = try TorchCheckpoint.scan(path: truncated)
        #expect(report.problems.count == 1)
    }
}
