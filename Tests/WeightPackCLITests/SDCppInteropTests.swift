import Foundation
import StrictJSON
import TestSupport
import Testing

/// GGUF files we write are loaded and run by stable-diffusion.cpp (issue 13, item 5), through
/// `stable-diffusion-cpp-python` 0.4.7 in the fixture venv (`Fixtures/generate/setup_venv.sh`).
/// stable-diffusion.cpp needs the published widths, so this uses the full-size random SD 1.5
/// model (`Fixtures/generate/make_fullsize_sd15.py --out $WEIGHTPACK_BENCH_DIR`, default
/// `/tmp/wpbench`). Runs where both exist (several minutes: three exports of a 4.3 GB model and
/// four stable-diffusion.cpp runs at 256 px); skipped elsewhere, CI included.
@Suite("stable-diffusion.cpp loads and runs our GGUF files")
struct SDCppInteropTests {
    static let venvPython =
        (ProcessInfo.processInfo.environment["WEIGHTPACK_FIXTURE_VENV"]
            ?? NSHomeDirectory() + "/.cache/weightpack/fixture-venv") + "/bin/python"
    static let fullSize = (ProcessInfo.processInfo.environment["WEIGHTPACK_BENCH_DIR"] ?? "/tmp/wpbench") + "/sd15-random.safetensors"
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: venvPython) && FileManager.default.fileExists(atPath: fullSize)
    }

    @Test(.enabled(if: SDCppInteropTests.available, "needs the fixture venv and the full-size model"))
    func ourGGUFsRunInStableDiffusionCpp() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var files: [String] = []
        for dtype in ["q8_0", "q4_0", "q4_k"] {
            let out = folder.appendingPathComponent("sd15-\(dtype).gguf").path
            let r = try run(["export", Self.fullSize, out, "--format", "gguf", "--dtype", dtype])
            #expect(r.status == 0, "\(dtype): \(r.stderr)")
            files.append(out)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.venvPython)
        process.arguments =
            [repositoryURL.appendingPathComponent("Fixtures/generate/check_sdcpp_interop.py").path, Self.fullSize]
            + files + ["--size", "256", "--steps", "2", "--out", folder.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let lines = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
        print(lines.joined(separator: "\n"))
        #expect(process.terminationStatus == 0, "\(lines)")
        let results = try lines.dropFirst().map { try JSONParser.parse($0) }
        #expect(results.count == 3)
        // PSNR against stable-diffusion.cpp's own run of the f32 file, same seed and sampler.
        // Measured: Q8_0 40.6 dB, Q4_0 20.7 dB, Q4_K 23.4 dB (2026-12-03, 256 px, 2 Euler steps).
        let floors = ["sd15-q8_0.gguf": 35.0, "sd15-q4_0.gguf": 15.0, "sd15-q4_k.gguf": 15.0]
        for r in results {
            let name = r.objectValue?["file"]?.stringValue ?? "?"
            #expect(r.objectValue?["ok"] == .bool(true), "\(name)")
            #expect(r.objectValue?["version"]?.stringValue == "SD 1.x", "\(name)")
            let psnr = r.objectValue?["psnr_vs_reference"]?.doubleValue ?? 0
            #expect(psnr >= floors[name] ?? 99, "\(name): \(psnr) dB")
        }
    }
}
