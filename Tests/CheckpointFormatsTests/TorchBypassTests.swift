import CheckpointFormats
import Foundation
import SafePickle
import Testing

/// One entry of `Fixtures/torch/bypass/manifest.json` (written by make_pickle_bypasses.py).
struct BypassFixture: CustomTestStringConvertible, Sendable {
    var file: String
    var technique: String
    var scan: String
    var resolved: String
    var open: String
    var testDescription: String { "\(file): \(technique)" }
    var path: String { torchFixturesURL.appendingPathComponent("bypass").appendingPathComponent(file).path }

    static let all: [BypassFixture] = {
        let url = torchFixturesURL.appendingPathComponent("bypass/manifest.json")
        guard let data = try? Data(contentsOf: url),
            let items = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]
        else { return [] }
        return items.compactMap { o in
            guard let file = o["file"] as? String, let technique = o["technique"] as? String, let scan = o["scan"] as? String,
                let resolved = o["resolved"] as? String, let open = o["open"] as? String
            else { return nil }
            return BypassFixture(file: file, technique: technique, scan: scan, resolved: resolved, open: open)
        }
    }()

    static var malicious: [BypassFixture] { all.filter { $0.scan == "dangerous" } }
}

@Suite("torch checkpoints: published scanner bypasses are caught")
struct TorchBypassTests {
    @Test("the bypass corpus is present")
    func corpus() {
        #expect(BypassFixture.malicious.count >= 25)
        #expect(BypassFixture.all.count > BypassFixture.malicious.count)
    }

    @Test("scan flags the resolved dangerous global", arguments: BypassFixture.malicious)
    func scanFlags(_ fixture: BypassFixture) throws {
        let report = try TorchCheckpoint.scan(path: fixture.path)
        #expect(report.isDangerous, "\(report.findings.map { "\($0.qualifiedName) \($0.safety)" })")
        if fixture.resolved == "unknown.unknown" {
            #expect(report.dangerous.contains { !$0.isResolved && $0.reason != nil })
        } else {
            #expect(
                report.dangerous.contains { $0.qualifiedName == fixture.resolved },
                "expected \(fixture.resolved) among \(report.dangerous.map(\.qualifiedName))")
        }
    }

    @Test("opening refuses without --allow-unsafe-globals, with one line", arguments: BypassFixture.all)
    func openRefuses(_ fixture: BypassFixture) throws {
        let result = Result { () throws(FormatError) in try TorchCheckpoint(path: fixture.path) }
        switch result {
        case .success:
            #expect(fixture.open == "ok", "\(fixture.file) was accepted")
        case .failure(let error):
            #expect(error.code.description == fixture.open, "\(error)")
            #expect(!error.description.contains("\n"))
            if fixture.open == "unsafeGlobal" {
                // The line names the first refused finding of the scan.
                let first = try #require(try TorchCheckpoint.scan(path: fixture.path).refused.first)
                #expect(error.message.contains(first.isResolved ? first.qualifiedName : first.opcode), "\(error.message)")
            }
        }
    }

    @Test("ModelInput detects and refuses the same files", arguments: BypassFixture.malicious.filter { !$0.file.hasSuffix(".pkl") })
    func modelInputRefuses(_ fixture: BypassFixture) throws {
        let kind = try ModelInput.detect(fixture.path)
        #expect(kind == .torchZip || kind == .torchLegacy)
        #expect(formatErrorCode { _ = try ModelInput.open(fixture.path) } == fixture.open)
    }

    @Test("archive/DATA.PKL is read as data.pkl; case variants side by side are ambiguous")
    func caseVariants() throws {
        let single = try TorchCheckpoint.scan(path: BypassFixture(file: "zip_DATA_PKL.ckpt", technique: "", scan: "", resolved: "", open: "").path)
        #expect(single.pickles == ["archive/DATA.PKL"])
        let both = try TorchCheckpoint.scan(
            path: BypassFixture(file: "zip_case_ambiguous.ckpt", technique: "", scan: "", resolved: "", open: "").path)
        #expect(Set(both.pickles) == ["archive/data.pkl", "archive/Data.pkl"])
        #expect(both.dangerous.contains { $0.opcode == "ZIP" && !$0.isResolved })
        // Even when unsafe globals are allowed, the archive is not read: which member is data.pkl is undefined.
        #expect(
            formatErrorCode {
                _ = try TorchCheckpoint(
                    path: BypassFixture(file: "zip_case_ambiguous.ckpt", technique: "", scan: "", resolved: "", open: "").path,
                    allowUnsafeGlobals: true)
            } == "invalidArchive")
    }
}

@Suite("torch checkpoints: the allow-list is the gate")
struct TorchAllowListGateTests {
    /// A pickle file `{'x': module.name}` (PROTO 2, EMPTY_DICT, BINUNICODE, GLOBAL, SETITEM, STOP).
    func pickleFile(naming module: String, _ name: String) throws -> String {
        let pickle: [UInt8] = [0x80, 0x02, 0x7D] + [0x58, 1, 0, 0, 0, 0x78] + Array("c\(module)\n\(name)\n".utf8) + [0x73, 0x2E]
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("weightpack-gate-\(UUID().uuidString).pkl")
        try Data(pickle).write(to: url)
        return url.path
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var module: String
        var name: String
        var refused: Bool
        var testDescription: String { "\(module).\(name) → \(refused ? "refused" : "passes the gate")" }
    }

    static let cases: [Case] = [
        Case(module: "my_project.models", name: "UNet", refused: true),
        Case(module: "__main__", name: "Net", refused: true),
        Case(module: "torch.nn.modules.linear", name: "Linear", refused: true),
        Case(module: "posix", name: "system", refused: true),
        Case(module: "collections", name: "OrderedDict", refused: false),
    ]

    @Test("globals not on the allow-list are refused, dangerous or not", arguments: cases)
    func gate(_ c: Case) throws {
        let path = try pickleFile(naming: c.module, c.name)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = Result { () throws(FormatError) in try TorchCheckpoint(path: path) }
        guard case .failure(let error) = result else {
            Issue.record("a plain pickle was accepted as a checkpoint")
            return
        }
        if c.refused {
            #expect(error.code == .unsafeGlobal, "\(error)")
            #expect(error.message.contains("\(c.module).\(c.name)"))
        } else {
            // Past the gate it is still no checkpoint (no legacy magic).
            #expect(error.code == .invalidArchive, "\(error)")
        }
        // Allowed, the gate opens (the file is then refused for not being a checkpoint).
        #expect(formatErrorCode { _ = try TorchCheckpoint(path: path, allowUnsafeGlobals: true) } == "invalidArchive")
    }
}

@Suite("torch checkpoints: expanded views are bounded")
struct TorchExpansionTests {
    func path(_ file: String) -> String { torchFixturesURL.appendingPathComponent("bypass").appendingPathComponent(file).path }

    @Test("stride-0 and overlapping views beyond the bound are refused on open", arguments: ["expansion_stride0.ckpt", "expansion_overlap.ckpt"])
    func refused(_ file: String) throws {
        let result = Result { () throws(FormatError) in try TorchCheckpoint(path: path(file)) }
        guard case .failure(let error) = result else {
            Issue.record("\(file) was accepted")
            return
        }
        #expect(error.code == .unsupportedTensor)
        #expect(error.message.contains("stored bytes"))
        #expect(formatErrorCode { _ = try ModelInput.open(path(file)) } == "unsupportedTensor")
    }

    @Test("a larger bound opens the same file without reading a tensor")
    func largerBound() throws {
        let checkpoint = try TorchCheckpoint(path: path("expansion_stride0.ckpt"), maximumExpansion: 1 << 30)
        #expect(checkpoint.tensors.count == 3)
        #expect(checkpoint.tensors.allSatisfy { $0.byteCount == 1 << 30 })
        var options = ModelInput.Options()
        options.maximumExpansion = 1 << 30
        #expect(try ModelInput.open(path("expansion_stride0.ckpt"), options: options).tensors.count == 3)
    }

    @Test("a small expanded view stays under the allowance and reads back")
    func small() throws {
        let checkpoint = try TorchCheckpoint(path: path("expansion_small.ckpt"))
        let t = try checkpoint.tensor(named: "w")
        let values = try t.floats()
        #expect(values.count == 1 << 18)
        #expect(values.allSatisfy { $0 == 1.0 })
    }

    @Test("the valid fixtures (shared storages, an expanded buffer) pass the default bound", arguments: TorchFixture.of(kind: "valid"))
    func validPass(_ fixture: TorchFixture) throws {
        _ = try TorchCheckpoint(path: fixture.path)
    }
}
