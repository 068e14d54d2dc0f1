import ArgumentParser
import Foundation
import TestSupport
import Testing

@testable import WeightPackCLI

@Suite("options are checked against their documented bounds before anything is read")
struct OptionBoundsCLITests {
    @Test(
        "out-of-bounds or non-finite options are usage errors",
        arguments: [
            ["generate", "m", "-o", "x.png", "--size", "4611686018427387904"],
            ["generate", "m", "-o", "x.png", "--size", "100000"],
            ["generate", "m", "-o", "x.png", "--size", "0"],
            ["generate", "m", "-o", "x.png", "--size", "65"],
            ["generate", "m", "-o", "x.png", "--steps", "0"],
            ["generate", "m", "-o", "x.png", "--steps", "1001"],
            ["generate", "m", "-o", "x.png", "--guidance", "nan"],
            ["generate", "m", "-o", "x.png", "--guidance", "inf"],
            ["generate", "m", "-o", "x.png", "--guidance", "1e9"],
            ["generate", "m", "-o", "x.png", "--seed", "18446744073709551616"],
            ["generate", "m", "-o", "x.png", "--seed", "-9223372036854775809"],
            ["generate", "m", "-o", "x.png", "--seed", "1.5"],
            ["trace", "m", "--latents", "l", "-o", "t.safetensors", "--size", "100000"],
            ["verify", "a", "b", "--min-stage-snr", "nan"],
            ["verify", "a", "b", "--min-image-psnr", "-inf"],
            ["verify", "a", "b", "--amplify", "0"],
            ["convert", "a", "b.wpk", "--max-expansion", "0"],
        ])
    func refused(_ arguments: [String]) {
        #expect(throws: (any Error).self, "\(arguments)") { _ = try WeightPackCommand.parseAsRoot(arguments) }
    }

    @Test("negative numbers are values, and a negative seed means what it means to torch")
    func negativeValues() throws {
        let generate = try #require(
            try WeightPackCommand.parseAsRoot(["generate", "m", "-o", "x.png", "--seed", "-1", "--guidance", "-1"]) as? Generate)
        #expect(generate.generation.generatorSeed == UInt64.max)
        #expect(generate.generation.guidance == -1)
        let big = try #require(try WeightPackCommand.parseAsRoot(["generate", "m", "-o", "x.png", "--seed", "18446744073709551615"]) as? Generate)
        #expect(big.generation.generatorSeed == UInt64.max)
        let plain = try #require(
            try WeightPackCommand.parseAsRoot(["generate", "m", "-o", "x.png", "--size", "2048", "--steps", "1000"]) as? Generate)
        #expect(plain.generation.generatorSeed == 0 && plain.generation.size == 2048)
    }

    @Test("an over-long error line is cut to one screen, saying how much was left out")
    func shortensErrors() {
        let line = "weightpack: error: " + String(repeating: "x", count: 5000)
        let cut = shortened(line)
        #expect(cut.count <= maximumErrorLineLength)
        #expect(cut.contains("more characters"))
        #expect(shortened("short") == "short")
    }

    @Test("version --verbose names the compute back end")
    func version() throws {
        let result = try run(["version", "--verbose"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("weightpack \(WeightPackCommand.version)"))
        #expect(result.stdout.contains("compute: kernels"), "\(result.stdout)")
        // Products reading F16 weights as stored, and our float tiles, come with the AVX-512
        // family, and only with it.
        #expect(result.stdout.contains("F16 weights read as stored") == result.stdout.contains("kernels avx512"), "\(result.stdout)")
        #expect(result.stdout.contains("our float tiles where sgemm is slow") == result.stdout.contains("kernels avx512"), "\(result.stdout)")
        // F16 weights on AMX tiles: with the AVX-512 family on a processor with AMX-BF16 (Linux
        // grants the tile state to any process that asks), unless WEIGHTPACK_AMX=0.
        let amx =
            (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(whereSeparator: \.isWhitespace).contains("amx_bf16") ?? false
        let amxOn = amx && result.stdout.contains("kernels avx512") && ProcessInfo.processInfo.environment["WEIGHTPACK_AMX"] != "0"
        #expect(result.stdout.contains("F16 weights on AMX tiles in split bfloat16") == amxOn, "\(result.stdout)")
    }

    @Test("a negative seed runs from the command line (exit 0), and an out-of-range size is exit 64 with one line")
    func endToEnd() throws {
        let dir = try makeTemporaryFolder().path
        let ok = try run(["generate", tinyModel, "--steps", "1", "--size", "64", "--seed", "-1", "-o", dir + "/x.png"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let verify = try run(["verify", tinyModel, tinyModel, "--steps", "1", "--size", "64", "--seed", "-1", "--json"])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdout.contains("18446744073709551615"), "the seed torch would use is reported")
        let bad = try run(["generate", tinyModel, "--size", "100000", "-o", dir + "/y.png"])
        #expect(bad.status == 64, "\(bad.stderr)")
    }
}
