import Foundation

let repositoryURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let tinySD1 = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/tiny-sd1.safetensors").path
let tinySDXL = repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/tiny-sdxl.safetensors").path

/// A new empty folder under the system's temporary folder.
func temporaryFolder() throws -> String {
    let path = NSTemporaryDirectory() + "weightpack-loading-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
