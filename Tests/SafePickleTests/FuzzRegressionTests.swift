import Foundation
import SafePickle
import Testing

/// `Fixtures/fuzz/pickle/`: inputs found by the FuzzPickle libFuzzer target (Docs/fuzzing.md),
/// replayed as the target runs them: every concatenated pickle through the machine (default and
/// tight limits) and through the global scanner. Each must return or throw.
@Suite("fuzz regressions: pickle")
struct PickleFuzzRegressionTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz/pickle")

    static let inputs: [String] = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [])
        .filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted()

    /// The limits FuzzPickle's second machine runs with.
    static let tight = PickleLimits(
        maximumOpcodes: 2_000, maximumStackDepth: 64, maximumMarkDepth: 8, maximumMemoEntries: 32,
        maximumValues: 2_000, maximumNesting: 12, maximumLiteralBytes: 256, maximumIntegerDigits: 40)

    @Test("the fixture folder has inputs")
    func folderIsNotEmpty() {
        #expect(!Self.inputs.isEmpty, "Fixtures/fuzz/pickle is empty or missing")
    }

    @Test("pickle inputs return or throw", arguments: inputs)
    func replay(_ name: String) throws {
        let bytes = Array(try Data(contentsOf: Self.folder.appendingPathComponent(name)))
        var start = 0
        for _ in 0..<4 where start < bytes.count {
            guard let document = try? PickleMachine().load(bytes, from: start) else { break }
            #expect(document.endOffset > start && document.endOffset <= bytes.count)
            start = document.endOffset
        }
        _ = try? PickleMachine(limits: Self.tight).load(bytes)
        start = 0
        for _ in 0..<4 where start < bytes.count {
            let listing = PickleGlobalScanner.scan(bytes, from: start)
            guard let end = listing.endOffset else { break }
            #expect(end > start && end <= bytes.count)
            start = end
        }
        if let expected = Self.expectedCodes[name] {
            var code: PickleError.Code?
            do throws(PickleError) { _ = try PickleMachine().load(bytes) } catch { code = error.code }
            #expect(code == expected)
        }
    }

    /// The error code each crash reproducer must now produce (`nil`: it must load).
    static let expectedCodes: [String: PickleError.Code?] = [:]
}
