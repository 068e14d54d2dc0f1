import CheckpointFormats
import Foundation
import Quantization
import TensorCore
import TestSupport
import Testing

let ggufFixtures = fixturesURL.appendingPathComponent("gguf")

/// The malformed corpus and its expected codes (`Fixtures/generate/make_gguf_malformed.py`).
let malformedGGUF: [(String, String)] = {
    let url = ggufFixtures.appendingPathComponent("malformed/expected.json")
    guard let data = try? Data(contentsOf: url),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: String]
    else { return [] }
    return object.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
}()

@Suite("GGUF reader")
struct GGUFReaderTests {
    @Test("the malformed corpus is there")
    func corpusPresent() {
        #expect(malformedGGUF.count >= 40)
    }

    @Test("every malformed file is refused with its own code", arguments: malformedGGUF)
    func malformed(file: String, code: String) throws {
        let path = ggufFixtures.appendingPathComponent("malformed/\(file)").path
        do {
            _ = try GGUFFile(path: path)
            Issue.record("\(file) was accepted")
        } catch {
            #expect(error.code.description == code, "\(file): \(error)")
            #expect(error.path == path)
            #expect(!error.description.contains("\n"))
        }
    }

    @Test("the small valid files (fuzz seeds) open, and agree with what gguf-py reads in them")
    func validSeeds() throws {
        let folder = fixturesURL.appendingPathComponent("fuzz/gguf")
        let comfy = try GGUFFile(path: folder.appendingPathComponent("valid_comfy.gguf").path)
        #expect(comfy.header.dialect == .comfyUI)
        #expect(comfy.descriptor(named: "model.diffusion_model.w")?.shape == Shape([2, 2, 2, 4]))
        #expect(comfy.entry(named: "model.diffusion_model.w")?.storedShape == Shape([32]))
        #expect(try comfy.tensor(named: "model.diffusion_model.n").floats() == [1, 2, 3])
        let plain = try GGUFFile(path: folder.appendingPathComponent("valid_f32_f16.gguf").path)
        #expect(plain.descriptor(named: "a")?.shape == Shape([2, 4]))
        #expect(try plain.tensor(named: "a").floats() == (0..<8).map(Float.init))
        #expect(try plain.tensor(named: "b").floats() == (0..<8).map(Float.init))
        let aligned = try GGUFFile(path: folder.appendingPathComponent("valid_q4_0_q8_0.gguf").path)
        #expect(aligned.header.alignment == 16)
        #expect(aligned.tensors.count == 2)
        let arrays = try GGUFFile(path: folder.appendingPathComponent("valid_array_metadata.gguf").path)
        #expect(arrays.metadata["tokens"] == "[a, bc]")
        #expect(arrays.metadata["flag"] == "true")
    }

    /// Inputs the fuzz target found (and its seeds), replayed as FuzzGGUF runs them.
    @Test(
        "fuzz inputs return or throw",
        arguments: (try? FileManager.default.contentsOfDirectory(atPath: fixturesURL.appendingPathComponent("fuzz/gguf").path).sorted()) ?? [])
    func fuzzRegressions(name: String) throws {
        let path = fixturesURL.appendingPathComponent("fuzz/gguf/\(name)").path
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let valid = bytes.withUnsafeBytes { raw in (try? GGUFHeader(validating: raw)) != nil }
        guard valid else { return }
        let file = try GGUFFile(path: path)
        for d in file.tensors {
            let values = try file.tensor(named: d.name).floats()
            #expect(values.count == d.elementCount)
        }
    }

    @Test("ModelInput detects a GGUF by its magic and opens it")
    func detection() throws {
        let path = ggufFixtures.appendingPathComponent("tiny-sd1-q8_0.gguf").path
        #expect(try ModelInput.detect(path) == .gguf)
        let store = try ModelInput.open(path)
        #expect(store.formatName == "gguf")
        #expect(store is GGUFFile)
    }

    @Test("stable-diffusion.cpp's dialect: LDM names and the tiny model's shapes")
    func sdcppDialect() throws {
        let file = try GGUFFile(path: ggufFixtures.appendingPathComponent("tiny-sd1-q8_0.gguf").path)
        #expect(file.header.dialect == .stableDiffusionCPP)
        let source = try SafetensorsFile(path: fixturesURL.appendingPathComponent("tiny-sd1/tiny-sd1.safetensors").path)
        var checked = 0
        for d in file.tensors {
            let s = try #require(source.descriptor(named: d.name), "\(d.name) is not an LDM name of the tiny model")
            #expect(s.shape == d.shape, "\(d.name)")
            checked += 1
        }
        #expect(checked > 100)
        #expect(file.tensors.contains { file.entry(named: $0.name)?.type == .q8_0 })
    }

    /// stable-diffusion.cpp's `convert` is the oracle of quantisation: every Q8_0 / Q4_K tensor of
    /// its files must equal what our quantiser makes of the same f32 source, byte for byte.
    @Test("our quantiser reproduces stable-diffusion.cpp's Q8_0 convert byte for byte")
    func sdcppBytes() throws {
        let file = try GGUFFile(path: ggufFixtures.appendingPathComponent("tiny-sd1-q8_0.gguf").path)
        let source = try SafetensorsFile(path: fixturesURL.appendingPathComponent("tiny-sd1/tiny-sd1.safetensors").path)
        var compared = 0
        for d in file.tensors {
            guard let view = try file.ggmlTensor(named: d.name) else { continue }
            let floats = try source.tensor(named: d.name).floats()
            let size = try #require(view.type.byteCount(values: floats.count))
            var ours = [UInt8](repeating: 0, count: size)
            try floats.withUnsafeBufferPointer { src in
                try ours.withUnsafeMutableBytes { out in
                    _ = try GGMLBlocks.quantize(src.baseAddress!, count: floats.count, type: view.type, into: out.baseAddress!)
                }
            }
            let theirs = view.bytes.withUnsafeBytes { Array($0) }
            let same = ours == theirs
            #expect(same, "\(d.name) (\(view.type.name)) differs at byte \(ours.indices.first { $0 < theirs.count && ours[$0] != theirs[$0] } ?? -1)")
            compared += 1
        }
        #expect(compared > 0)
    }

    /// `sdcpp-q4_k-pair.gguf`: stable-diffusion.cpp's Q4_K of a weight (its convert passes an
    /// all-ones importance matrix, so these are ggml's weighted k-quant search, not the reference
    /// quantiser WeightPack reproduces; Fixtures/README.md). Reading must still equal gguf-py.
    @Test("stable-diffusion.cpp's Q4_K blocks read as gguf-py reads them")
    func sdcppKQuant() throws {
        let file = try GGUFFile(path: ggufFixtures.appendingPathComponent("sdcpp-q4_k-pair.gguf").path)
        let prefix = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
        let blocks = try #require(try file.ggmlTensor(named: prefix + "to_k.weight"))
        #expect(blocks.type == .q4_K)
        #expect(blocks.descriptor.shape == Shape([320, 768]))
        #expect(file.entry(named: prefix + "to_v.weight")?.type == .f16)
        let golden = try GGUFFile(path: ggufFixtures.appendingPathComponent("blocks.gguf").path)
        let expected = try golden.tensor(named: "sdcpp.q4_k.dequantized").floats()
        var ours = [Float](repeating: .nan, count: 16 * 768)
        try ours.withUnsafeMutableBufferPointer { try blocks.dequantize(rows: 0..<16, into: $0.baseAddress!) }
        #expect(ours.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    @Test("ComfyUI-GGUF's dialect: names re-prefixed, orig_shape applied, values as stored")
    func comfyDialect() throws {
        let file = try GGUFFile(path: ggufFixtures.appendingPathComponent("tiny-sd1-unet-comfy.gguf").path)
        #expect(file.header.dialect == .comfyUI)
        #expect(file.metadata["general.architecture"] == "sd1")
        let source = try SafetensorsFile(path: fixturesURL.appendingPathComponent("tiny-sd1/tiny-sd1.safetensors").path)
        let unet = source.tensors.filter { $0.name.hasPrefix("model.diffusion_model.") }
        #expect(file.tensors.count == unet.count)
        var reshaped = 0
        for s in unet {
            let d = try #require(file.descriptor(named: s.name), "\(s.name) missing")
            #expect(d.shape == s.shape, "\(s.name)")
            let entry = try #require(file.entry(named: s.name))
            if entry.storedShape != d.shape { reshaped += 1 }
            if entry.type == .f32 {
                #expect(try file.tensor(named: s.name).floats() == source.tensor(named: s.name).floats())
            }
        }
        #expect(reshaped > 0, "the fixture has no reshaped tensor")
    }

    @Test(
        "a GGUF read and written again has byte-identical tensor data",
        arguments: ["tiny-sd1-q8_0.gguf", "sdcpp-q4_k-pair.gguf", "tiny-sd1-unet-comfy.gguf", "blocks.gguf"])
    func roundTrip(file name: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let input = try GGUFFile(path: ggufFixtures.appendingPathComponent(name).path)
        let output = folder.appendingPathComponent("out.gguf").path
        let tensors = try input.header.entries.map { entry in
            try GGUFWriter.Tensor.passingThrough(entry.descriptor.name, of: input)
        }
        try GGUFWriter.write(tensors, metadata: [], to: output, overwrite: false)
        let again = try GGUFFile(path: output)
        #expect(again.tensors.count == input.tensors.count)
        for entry in input.header.entries {
            let other = try #require(
                again.header.entries.first { $0.storedName == entry.descriptor.name || $0.descriptor.name == entry.descriptor.name })
            #expect(other.type == entry.type)
            // Block tensors keep their stored rows; plain ones are written in their real shape.
            #expect(entry.type.isBlockQuantized ? other.storedShape == entry.storedShape : other.storedShape == entry.descriptor.shape)
            #expect(other.descriptor.shape == entry.descriptor.shape)
            let a = input.file.bytes(in: entry.fileRange)!.withUnsafeBytes { Array($0) }
            let b = again.file.bytes(in: other.fileRange)!.withUnsafeBytes { Array($0) }
            #expect(a == b, "\(entry.descriptor.name)")
        }
    }
}
