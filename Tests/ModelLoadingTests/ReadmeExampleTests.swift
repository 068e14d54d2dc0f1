import Foundation
import TestSupport
import Testing

@Suite struct ReadmeExampleTests {
    /// The lines between the markers of a file.
    static func example(in text: String) -> [Substring] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0.contains("// README example begins") }),
            let end = lines.firstIndex(where: { $0.contains("// README example ends") }), start < end
        else { return [] }
        return Array(lines[(start + 1)..<end])
    }

    @Test func readmeShowsTheCompiledExample() throws {
        let source = try String(contentsOf: repositoryURL.appendingPathComponent("Tests/ModelLoadingTests/ReadmeExample.swift"), encoding: .utf8)
        let readme = try String(contentsOf: repositoryURL.appendingPathComponent("README.md"), encoding: .utf8)
        let compiled = Self.example(in: source)
        #expect(compiled.count > 10)
        // README.md holds the same lines in a ```swift block.
        let blocks = readme.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
        let shown = blocks.map { $0.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map { $0 } }
        #expect(shown.contains { $0 == compiled }, "README.md's Swift example differs from Tests/ModelLoadingTests/ReadmeExample.swift")
    }

    @Test func exampleConvertsAndVerifiesTheTinyModel() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let report = try convertAndVerify(tinySD1, to: folder + "/tiny-f16.wpk")
        #expect(report.passed)
        #expect(report.thresholds.label == "F16")
        #expect(report.stages.map(\.name) == ["text", "unet", "vae", "latents", "image"])
        #expect(FileManager.default.fileExists(atPath: folder + "/tiny-f16.wpk"))
    }
}
