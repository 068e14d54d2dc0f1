import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore
import TestSupport
import Testing

@testable import WeightPackCLI

/// The SNR every tensor of a type must reach on the tiny fixture: the lowest measured over its
/// 359 weight matrices (`convert --dtype T`, `inspect --json`, debug build, 2026-12-03; k-quants on
/// its one 256-row tensor) less about 2 dB. Its weights are random normal, the hard case for a block
/// quantiser (ggml's Q4_0 of a real text-encoder tensor measured 21.8 dB, issue 13). Measured
/// lowest: Q4_0 20.7, Q4_1 21.7, Q5_0 26.9, Q5_1 28.1, Q8_0 44.7, Q2_K 12.6, Q3_K 18.1, Q4_K 25.2,
/// Q5_K 31.2, Q6_K 37.6 dB.
private let minimumSNR: [String: Double] = [
    "Q4_0": 19, "Q4_1": 20, "Q5_0": 25, "Q5_1": 26, "Q8_0": 42, "Q2_K": 10, "Q3_K": 16, "Q4_K": 23, "Q5_K": 29, "Q6_K": 35,
]

/// `convert --dtype q4_0…q6_k`, `export --format gguf --dtype …`, `--tensor-type` and `inspect` of
/// block tensors, end to end on the tiny fixture with the built binary (issue 13, item 3).
@Suite("ggml block types on the command line")
struct BlockTypeCLITests {
    @Test("convert --dtype q4_k: types follow the rules, an override is honoured, fallbacks are said, values stay close")
    func convertQ4K() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("q4k.wpk").path
        let override = "*attn1.to_q.weight=q8_0"
        let converted = try run(["convert", tinyModel, out, "--dtype", "Q4_K", "--tensor-type", override, "--no-source-hash"])
        #expect(converted.status == 0, "\(converted.stderr)")
        #expect(converted.stderr.contains("fell back from Q4_K to Q5_0: rows of"), "\(converted.stderr)")
        #expect(converted.stderr.contains("bits per weight"))
        #expect(try run(["check", out]).status == 0)

        let file = try WPKFile(path: out)
        #expect(file.version.minor == 2)
        let entries = Dictionary(uniqueKeysWithValues: file.entries.map { ($0.descriptor.name, $0) })
        // 1-D tensors (norms, biases) F32, conv_in and conv_out F16, never blocks.
        for e in file.entries where e.descriptor.shape.rank == 1 && e.descriptor.dtype.isFloatingPoint {
            #expect(e.blocks == nil && e.descriptor.dtype == .f32, "\(e.descriptor.name)")
        }
        for name in ["unet.conv_in.weight", "unet.conv_out.weight"] {
            let e = try #require(entries[name])
            #expect(e.blocks == nil && e.descriptor.dtype == .f16, "\(name)")
        }
        // The override: every attn1.to_q weight is Q8_0, recorded without a fallback.
        let toQ = file.entries.filter { $0.descriptor.name.hasSuffix("attn1.to_q.weight") }
        #expect(!toQ.isEmpty && toQ.allSatisfy { $0.blocks?.type.name == "Q8_0" && $0.blocks?.fallbackFrom == nil })
        // Rows of 256 take Q4_K; rows that do not divide by 256 fall back to Q5_0 and say so.
        let blocks = file.entries.compactMap { e in e.blocks.map { (e, $0) } }
        #expect(blocks.contains { $0.1.type.name == "Q4_K" && $0.1.rowLength % 256 == 0 })
        let fallbacks = blocks.filter { $0.1.fallbackFrom?.name == "Q4_K" }
        #expect(!fallbacks.isEmpty && fallbacks.allSatisfy { $0.1.type.name == "Q5_0" && $0.1.rowLength % 256 != 0 && $0.1.rowLength % 32 == 0 })
        for (e, b) in blocks where b.type.name == "Q4_K" || b.type.name == "Q5_0" {
            // The engine's rows: all but the first dimension.
            #expect(b.rowLength * e.descriptor.shape.dimensions[0] == e.descriptor.elementCount)
        }
        // --keep works with block types as with int8.
        let kept = folder.appendingPathComponent("kept.wpk").path
        #expect(try run(["convert", tinyModel, kept, "--dtype", "q4_0", "--keep", "vae.*", "--no-source-hash"]).status == 0)
        let keptFile = try WPKFile(path: kept)
        #expect(keptFile.entries.filter { $0.descriptor.name.hasPrefix("vae.") }.allSatisfy { $0.blocks == nil })
        #expect(keptFile.entries.contains { $0.blocks?.type.name == "Q4_0" })
        // The header records the target and the overrides.
        let ggml = file.headerMetadata["conversion"]?.objectValue?["ggml"]?.objectValue
        #expect(ggml?["type"]?.stringValue == "Q4_K")
        #expect(ggml?["tensor_types"]?.arrayValue == [.string(override)])

        // Dequantised values against the source (canonical names from the f32 conversion).
        let f32 = folder.appendingPathComponent("f32.wpk").path
        #expect(try run(["convert", tinyModel, f32, "--dtype", "f32", "--no-source-hash"]).status == 0)
        let reference = try WPKFile(path: f32)
        for (e, b) in blocks {
            let name = e.descriptor.name
            let measured = snr(try reference.tensor(named: name).floats(), try file.tensor(named: name).floats())
            #expect(measured >= minimumSNR[b.type.name] ?? 99, "\(name) \(b.type.name): \(measured) dB")
            // The error recorded at conversion is the one measured here.
            if let recorded = b.metrics?.snrDecibels {
                #expect(abs(recorded - measured) < 0.05, "\(name): recorded \(recorded), measured \(measured)")
            }
        }
    }

    @Test(
        "every block type converts: the summary's bits per weight is the file's, the blocks read back as the values, the recorded error meets the type's floor",
        arguments: ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q5_k", "q6_k"])
    func everyType(dtype: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("m.wpk").path
        let converted = try run(["convert", tinyModel, out, "--dtype", dtype, "--no-source-hash", "--json"])
        #expect(converted.status == 0, "\(converted.stderr)")
        let summary = try parseJSON(converted.stdout)
        let file = try WPKFile(path: out)
        let stored = file.entries.reduce(0) { $0 + $1.length }, values = file.entries.reduce(0) { $0 + $1.descriptor.elementCount }
        let bpw = try #require(summary["bits_per_weight"]?.doubleValue)
        #expect(abs(bpw - Double(stored) * 8 / Double(values)) < 0.001)
        let types = try #require(summary["types"]?.objectValue)
        #expect(types[dtype.uppercased()] != nil || !(summary["fallbacks"]?.arrayValue ?? []).isEmpty, "\(converted.stdout)")
        for e in file.entries {
            guard let b = e.blocks else { continue }
            let measured = snr(
                try file.tensor(named: e.descriptor.name).floats(), try #require(try file.ggmlTensor(named: e.descriptor.name)).dequantized().floats()
            )
            #expect(measured == .infinity)
            #expect(b.metrics?.snrDecibels ?? 0 >= minimumSNR[b.type.name] ?? 99, "\(e.descriptor.name) \(b.type.name)")
        }
    }

    @Test("export --format gguf --dtype q4_0 and q4_k: stable-diffusion.cpp's rules, file type, values, and a byte-identical round trip")
    func exportGGUF() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try SafetensorsFile(path: tinyModel)
        for dtype in ["q4_0", "q4_k"] {
            let out = folder.appendingPathComponent("\(dtype).gguf").path
            let exported = try run(["export", tinyModel, out, "--dtype", dtype, "--json"])
            #expect(exported.status == 0, "\(exported.stderr)")
            let summary = try parseJSON(exported.stdout)
            let file = try GGUFFile(path: out)
            var typeCounts: [String: Int] = [:]
            for entry in file.header.entries {
                let name = entry.descriptor.name, type = entry.type.name
                typeCounts[type, default: 0] += 1
                if name.hasSuffix(".bias") || entry.descriptor.shape.rank == 1 { #expect(!entry.type.isBlockQuantized, "\(name) \(type)") }
                // stable-diffusion.cpp's name rules and ours: time embeddings and conv_in unquantised.
                if name.contains("time_embed.") || name.hasSuffix("input_blocks.0.0.weight") {
                    #expect(!entry.type.isBlockQuantized, "\(name) \(type)")
                }
                if entry.type.isBlockQuantized {
                    #expect(entry.descriptor.shape.dimensions.last! % entry.type.blockValues == 0)
                    let measured = snr(try source.tensor(named: name).floats(), try file.tensor(named: name).floats())
                    #expect(measured >= minimumSNR[type] ?? 99, "\(name) \(type): \(measured) dB")
                }
            }
            #expect(summary["types"]?.objectValue.map { o in o.keys.allSatisfy { typeCounts[$0] == Int(o[$0]?.doubleValue ?? -1) } } == true)
            if dtype == "q4_0" {
                #expect(typeCounts["Q4_0", default: 0] > 100)
                // LLAMA_FTYPE_MOSTLY_Q4_0 (ggml docs/gguf.md).
                #expect(file.header.metadata.first { $0.0 == "general.file_type" }?.1.integer == 2)
            } else {
                // The tiny model's rows of 32…128 do not fit Q4_K's 256: Q5_0, said so.
                #expect(typeCounts["Q5_0", default: 0] > 100)
                #expect(exported.stderr.contains("fell back from Q4_K to Q5_0"))
                // Most values are Q5_0: LLAMA_FTYPE_MOSTLY_Q5_0.
                #expect(file.header.metadata.first { $0.0 == "general.file_type" }?.1.integer == 8)
            }
            // Read and written again with --dtype keep: every tensor's data byte-identical.
            let again = folder.appendingPathComponent("\(dtype)-again.gguf").path
            let roundTrip = try run(["export", out, again])
            #expect(roundTrip.status == 0, "\(roundTrip.stderr)")
            #expect(roundTrip.stderr.contains("block tensors passed through unchanged"))
            let copy = try GGUFFile(path: again)
            #expect(copy.header.entries.count == file.header.entries.count)
            for entry in file.header.entries {
                let other = try #require(copy.entry(named: entry.descriptor.name))
                #expect(other.type == entry.type && other.storedShape == entry.storedShape, "\(entry.descriptor.name)")
                let a = file.file.bytes(in: entry.fileRange)!.withUnsafeBytes { Array($0) }
                let b = copy.file.bytes(in: other.fileRange)!.withUnsafeBytes { Array($0) }
                #expect(a == b, "\(entry.descriptor.name)")
            }
        }
    }

    @Test(
        "stable-diffusion.cpp's GGUFs exported again with --dtype keep have byte-identical tensor data",
        arguments: ["tiny-sd1-q8_0.gguf", "sdcpp-q4_k-pair.gguf"])
    func sdcppRoundTrip(name: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let input = repositoryURL.appendingPathComponent("Fixtures/gguf/\(name)").path, out = folder.appendingPathComponent("out.gguf").path
        let exported = try run(["export", input, out, "--dtype", "keep", "--json"])
        #expect(exported.status == 0, "\(exported.stderr)")
        #expect(try parseJSON(exported.stdout)["requantized_from_blocks"]?.doubleValue == 0)
        let file = try GGUFFile(path: input), copy = try GGUFFile(path: out)
        for entry in file.header.entries {
            guard let other = copy.entry(named: entry.descriptor.name) else {
                // Only schedule buffers (alphas_cumprod, …) are left out, as export always does.
                #expect(!entry.descriptor.name.contains("model") && !entry.type.isBlockQuantized, "\(entry.descriptor.name) missing")
                continue
            }
            #expect(other.type == entry.type, "\(entry.descriptor.name)")
            #expect(
                file.file.bytes(in: entry.fileRange)!.withUnsafeBytes { Array($0) }
                    == copy.file.bytes(in: other.fileRange)!.withUnsafeBytes { Array($0) }, "\(entry.descriptor.name)")
        }
    }

    @Test(
        "a block .wpk exports to GGUF with its blocks passed through where the GGUF row holds them, and a GGUF converts to .wpk without requantising")
    func passThrough() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = folder.appendingPathComponent("m.wpk").path, gguf = folder.appendingPathComponent("m.gguf").path
        #expect(try run(["convert", tinyModel, wpk, "--dtype", "q8_0", "--no-source-hash"]).status == 0)
        let exported = try run(["export", wpk, gguf, "--json"])
        #expect(exported.status == 0, "\(exported.stderr)")
        let summary = try parseJSON(exported.stdout)
        #expect((summary["passed_through"]?.doubleValue ?? 0) > 100)
        let file = try WPKFile(path: wpk), out = try GGUFFile(path: gguf)
        // A 1×1 convolution stored with rows of 32 in the .wpk has GGUF rows of 1: rewritten, and said so.
        #expect((summary["requantized_from_blocks"]?.doubleValue ?? 0) > 0)
        #expect(exported.stderr.contains("rewritten from their values"))
        let q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
        let ldm = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
        let stored = try #require(try file.ggmlTensor(named: q)), written = try #require(try out.ggmlTensor(named: ldm))
        #expect(written.type == stored.type)
        #expect(written.bytes.withUnsafeBytes { Array($0) } == stored.bytes.withUnsafeBytes { Array($0) })

        // Back to .wpk at the same type: the GGUF's blocks are copied, not requantised.
        let back = folder.appendingPathComponent("back.wpk").path
        #expect(try run(["convert", gguf, back, "--dtype", "q8_0", "--no-source-hash"]).status == 0)
        let again = try #require(try WPKFile(path: back).ggmlTensor(named: q))
        #expect(again.bytes.withUnsafeBytes { Array($0) } == stored.bytes.withUnsafeBytes { Array($0) })
        // --dtype keep keeps a GGUF's blocks where the engine's rows hold them.
        let kept = folder.appendingPathComponent("kept.wpk").path
        #expect(try run(["convert", gguf, kept, "--no-source-hash"]).status == 0)
        let keptView = try #require(try WPKFile(path: kept).ggmlTensor(named: q))
        #expect(keptView.bytes.withUnsafeBytes { Array($0) } == stored.bytes.withUnsafeBytes { Array($0) })
    }

    @Test("inspect shows each block tensor's type, bits per weight, error and fallback, and the file's bits per weight")
    func inspect() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("q4k.wpk").path
        #expect(try run(["convert", tinyModel, out, "--dtype", "q4_k", "--no-source-hash"]).status == 0)
        let inspected = try run(["inspect", out, "--json"])
        #expect(inspected.status == 0, "\(inspected.stderr)")
        let root = try parseJSON(inspected.stdout)
        let tensors = root["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
        let conv = try #require(tensors.first { $0["name"]?.stringValue == "unet.down_blocks.0.resnets.0.conv1.weight" })
        #expect(conv["dtype"]?.stringValue == "Q5_0")
        let q = conv["quantization"]?.objectValue
        #expect(q?["fallback_from"]?.stringValue == "Q4_K")
        #expect(q?["bits_per_weight"]?.doubleValue == 5.5)
        #expect((q?["error"]?.objectValue?["snr_db"]?.doubleValue ?? 0) >= minimumSNR["Q5_0"]!)
        let file = try WPKFile(path: out)
        let stored = file.entries.reduce(0) { $0 + $1.length }, values = file.entries.reduce(0) { $0 + $1.descriptor.elementCount }
        let summary = root["summary"]?.objectValue
        #expect(abs((summary?["bits_per_weight"]?.doubleValue ?? 0) - Double(stored) * 8 / Double(values)) < 0.001)
        #expect(summary?["dtypes"]?.objectValue?["Q5_0"]?.doubleValue == Double(file.entries.filter { $0.blocks?.type.name == "Q5_0" }.count))
        let table = try run(["inspect", out, "--filter", "unet.down_blocks.0.resnets.0.conv1.*"])
        #expect(table.stdout.contains("BPW") && table.stdout.contains("fallback from Q4_K") && table.stdout.contains("Q5_0"), "\(table.stdout)")
        #expect(table.stdout.contains("bits per weight"))

        // A GGUF: the stored types and bits per weight (a GGUF records no error).
        let gguf = folder.appendingPathComponent("m.gguf").path
        #expect(try run(["export", tinyModel, gguf, "--dtype", "q4_0"]).status == 0)
        let g = try parseJSON(try run(["inspect", gguf, "--json"]).stdout)
        let rows = g["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
        let toQ = try #require(
            rows.first { $0["name"]?.stringValue == "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" })
        #expect(toQ["dtype"]?.stringValue == "Q4_0" && toQ["bits_per_weight"]?.doubleValue == 4.5)
        #expect(g["summary"]?.objectValue?["bits_per_weight"]?.doubleValue != nil)
        // Our GGUF records what fell back (weightpack.fallback_from.<name>): a Q5_0 matrix and an F16 kernel.
        let k = folder.appendingPathComponent("k.gguf").path
        #expect(try run(["export", tinyModel, k, "--dtype", "q4_k"]).status == 0)
        let kRows = try parseJSON(try run(["inspect", k, "--json"]).stdout)["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? []
        let kToQ = try #require(
            kRows.first { $0["name"]?.stringValue == "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" })
        #expect(kToQ["dtype"]?.stringValue == "Q5_0" && kToQ["quantization"]?.objectValue?["fallback_from"]?.stringValue == "Q4_K")
        let kernel = try #require(kRows.first { $0["name"]?.stringValue == "model.diffusion_model.input_blocks.1.0.in_layers.2.weight" })
        #expect(kernel["dtype"]?.stringValue == "F16" && kernel["fallback_from"]?.stringValue == "Q4_K")
        let kTable = try run(["inspect", k, "--filter", "*input_blocks.1.0.in_layers.2.weight"])
        #expect(kTable.stdout.contains("fallback from Q4_K") && !kTable.stdout.contains("metadata:   weightpack.fallback_from"), "\(kTable.stdout)")
    }

    @Test(
        "bad option combinations are usage errors (64) and write nothing",
        arguments: [
            ["convert", "IN", "OUT.wpk", "--dtype", "q4_k", "--tensor-type", "no-equals"],
            ["convert", "IN", "OUT.wpk", "--dtype", "q4_k", "--tensor-type", "*attn*=q9_9"],
            ["convert", "IN", "OUT.wpk", "--dtype", "q4_k", "--tensor-type", "=q8_0"],
            ["convert", "IN", "OUT.wpk", "--dtype", "q4_k", "--tensor-type", "unet.down_blocks.[01].*=q8_0"],
            ["convert", "IN", "OUT.wpk", "--dtype", "f16", "--tensor-type", "*attn*=q8_0"],
            ["convert", "IN", "OUT.wpk", "--dtype", "q4_z"],
            ["export", "IN", "OUT.safetensors", "--dtype", "q4_k"],
            ["export", "IN", "OUT.gguf", "--dtype", "q4_k", "--tensor-type", "*=iq2_xxs"],
            ["export", "IN", "OUT.gguf", "--dtype", "f16", "--tensor-type", "*attn*=q8_0"],
            ["export", "IN", "OUT.gguf", "--dtype", "bf16"],
        ])
    func usageErrors(arguments: [String]) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent(arguments[2]).path
        let result = try run(arguments.map { $0 == "IN" ? tinyModel : $0 == arguments[2] ? out : $0 })
        #expect(result.status == 64, "\(arguments): \(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    @Test("help explains the block types, the rules and --tensor-type")
    func help() throws {
        for command in ["convert", "export"] {
            let help = try run([command, "--help"])
            for word in ["q4_k", "q6_k", "--tensor-type", "GLOB=TYPE", "falls back", "F16", "bits per weight", "64"] {
                #expect(help.stdout.contains(word), "\(command) --help lacks \(word)")
            }
        }
    }

    /// Whether the fixture environment has gguf-py (its `gguf` and `numpy` packages).
    static let pythonHasGGUF: Bool = {
        guard FileManager.default.isExecutableFile(atPath: fixturePython) else { return false }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: fixturePython)
        p.arguments = ["-c", "import gguf, numpy, safetensors"]
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }()

    @Test(
        "gguf-py reads our q4_0 and q4_k GGUFs: names, shapes, types, and the same values as ours",
        .enabled(if: pythonHasGGUF, "needs gguf-py in the fixture environment (Fixtures/generate/setup_venv.sh)"))
    func ggufPy() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try SafetensorsFile(path: tinyModel)
        for dtype in ["q4_0", "q4_k"] {
            let out = folder.appendingPathComponent("\(dtype).gguf").path
            #expect(try run(["export", tinyModel, out, "--dtype", dtype]).status == 0)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: fixturePython)
            process.arguments = [repositoryURL.appendingPathComponent("Fixtures/generate/check_gguf.py").path, out, tinyModel]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            let result = try #require(try Array(data).withUnsafeBytes { try JSONParser.parse($0) }.objectValue)
            let file = try GGUFFile(path: out)
            for t in result["tensors"]?.arrayValue?.compactMap(\.objectValue) ?? [] {
                let name = try #require(t["name"]?.stringValue)
                #expect(t["shape_ok"] == .bool(true), "\(name)")
                #expect(t["type"]?.stringValue == file.entry(named: name)?.type.name, "\(name)")
                // gguf-py's dequantisation against the source equals ours (bit-exact readers).
                let ours = zip(try source.tensor(named: name).floats(), try file.tensor(named: name).floats()).map { Double(abs($0 - $1)) }.max() ?? 0
                #expect(abs((t["max_abs"]?.doubleValue ?? -1) - ours) <= 1e-6 * max(1, ours), "\(name)")
            }
        }
    }
}
