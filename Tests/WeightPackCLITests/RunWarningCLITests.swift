import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

/// `generate` says what a user would want to know before trusting its output (issue 16, item 7):
/// a `.wpk` whose tensor checksums fail, and `--latents` noise that cannot start a useful run.
@Suite("warnings before a run")
struct RunWarningCLITests {
    @Test func aDamagedWPKIsNamedBeforeItGenerates() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = folder.appendingPathComponent("tiny.wpk").path
        #expect(try run(["convert", tinyModel, wpk]).status == 0)
        let clean = try run(["generate", wpk, "--steps", "1", "--size", "64", "-o", folder.appendingPathComponent("clean.png").path])
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(!clean.stderr.contains("warning"), "\(clean.stderr)")
        // Flip one byte inside a UNet tensor's data (the header and its checksum stay intact).
        let file = try WPKFile(path: wpk)
        let entry = try #require(file.entries.first { $0.descriptor.name.hasPrefix("unet.") && $0.length > 64 })
        let offset = file.dataOffset + entry.offset + entry.length / 2
        var bytes = try Data(contentsOf: URL(fileURLWithPath: wpk))
        bytes[offset] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: wpk))
        let damaged = try run(["generate", wpk, "--steps", "1", "--size", "64", "-o", folder.appendingPathComponent("damaged.png").path])
        #expect(damaged.status == 0, "a warning, not a refusal: \(damaged.stderr)")
        #expect(damaged.stderr.contains("weightpack: warning: 1 tensor of"), "\(damaged.stderr)")
        #expect(damaged.stderr.contains(entry.descriptor.name), "\(damaged.stderr)")
        #expect(damaged.stderr.split(separator: "\n").count == 1, "one line: \(damaged.stderr)")
    }

    @Test("noise that cannot start a useful run is named", arguments: [(Float(0), "all zero"), (Float.nan, "all NaN")])
    func uselessLatentsAreNamed(value: Float, words: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let latents = folder.appendingPathComponent("latents.safetensors").path
        let values = [Float](repeating: value, count: 4 * 8 * 8)
        let view = values.withUnsafeBytes {
            TensorView(
                descriptor: TensorDescriptor(name: "latents", dtype: .f32, shape: [1, 4, 8, 8], byteCount: values.count * 4),
                bytes: TensorBytes(copying: $0))
        }
        try SafetensorsWriter.write(
            [OutputTensor(name: "latents", dtype: .f32, shape: [1, 4, 8, 8], sourceName: "latents", sourceDType: .f32, load: { view })],
            to: latents, overwrite: false)
        let r = try run(["generate", tinyModel, "--steps", "1", "--latents", latents, "-o", folder.appendingPathComponent("x.png").path])
        #expect(r.stderr.contains("weightpack: warning: the --latents noise is \(words)"), "\(r.stderr)")
    }
}
