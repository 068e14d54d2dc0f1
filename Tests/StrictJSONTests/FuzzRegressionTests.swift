import Foundation
import StrictJSON
import Testing

/// `Fixtures/fuzz/json/`: inputs found by the FuzzJSON libFuzzer target (Docs/fuzzing.md),
/// replayed as the target runs them: parsed, and when they parse, written out and parsed again.
/// Each must return or throw.
@Suite("fuzz regressions: strict JSON")
struct JSONFuzzRegressionTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz/json")

    static let inputs: [String] = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [])
        .filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted()

    @Test("the fixture folder has inputs")
    func folderIsNotEmpty() {
        #expect(!Self.inputs.isEmpty, "Fixtures/fuzz/json is empty or missing")
    }

    @Test("JSON inputs return or throw", arguments: inputs)
    func replay(_ name: String) throws {
        let bytes = Array(try Data(contentsOf: Self.folder.appendingPathComponent(name)))
        let outcome = bytes.withUnsafeBytes { raw in Result { () throws(JSONError) in try JSONParser.parse(raw) } }
        if case .success(let value) = outcome {
            _ = try? JSONParser.parse(value.serialized())
        }
        if let expected = Self.expectedCodes[name] {
            var code: JSONError.Code?
            if case .failure(let error) = outcome { code = error.code }
            #expect(code == expected)
        }
    }

    /// The error code each crash reproducer must now produce (`nil`: it must parse).
    static let expectedCodes: [String: JSONError.Code?] = [:]
}
