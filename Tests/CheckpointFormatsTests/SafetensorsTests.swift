import CheckpointFormats
import Foundation
import MappedIO
import StrictJSON
import TensorCore
import TestSupport
import Testing

@Suite("safetensors reader: the malformed corpus")
struct SafetensorsCorpusTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var file: String
        var expect: String
        var why: String
        var testDescription: String { "\(file) → \(expect)" }
    }

    static let cases: [Case] = {
        let url = fixturesURL.appendingPathComponent("malformed/safetensors/manifest.json")
        guard let text = try? String(contentsOf: url, encoding: .utf8), case .array(let items) = try? JSONParser.parse(text) else { return [] }
        return items.compactMap { item in
            guard case .object(let o) = item, let file = o["file"]?.stringValue, let expect = o["expect"]?.stringValue else { return nil }
            return Case(file: file, expect: expect, why: o["why"]?.stringValue ?? "")
        }
    }()

    @Test("the corpus is present")
    func corpusPresent() {
        #expect(Self.cases.count > 50)
        #expect(Self.cases.contains { $0.expect == "ok" })
    }

    @Test("each file is accepted or refused with its own code", arguments: cases)
    func refusedWithCode(_ c: Case) throws {
        let path = fixturesURL.appendingPathComponent("malformed/safetensors/\(c.file)").path
        if c.expect == "ok" {
            let file = try SafetensorsFile(path: path)
            for d in file.tensors {
                let view = try file.tensor(named: d.name)
                #expect(view.bytes.count == d.byteCount)
            }
            return
        }
        do {
            _ = try SafetensorsFile(path: path)
            Issue.record("\(c.file) was accepted; expected \(c.expect) (\(c.why))")
        } catch {
            #expect(error.code.description == c.expect, "\(c.file): \(c.why); got \(error.code): \(error.message)")
            #expect(!error.description.contains("\n"), "error message must be one line")
        }
    }

    @Test("valid files carry the bytes the manifest records")
    func validTensorDigests() throws {
        let url = fixturesURL.appendingPathComponent("malformed/safetensors/manifest.json")
        let root = try JSONParser.parse(String(contentsOf: url, encoding: .utf8))
        var checked = 0
        for item in root.arrayValue ?? [] {
            guard let o = item.objectValue, o["expect"]?.stringValue == "ok", let tensors = o["tensors"]?.arrayValue,
                let name = o["file"]?.stringValue
            else { continue }
            let file = try SafetensorsFile(path: fixturesURL.appendingPathComponent("malformed/safetensors/\(name)").path)
            for t in tensors {
                guard let t = t.objectValue, let tensorName = t["name"]?.stringValue else { continue }
                let view = try #require(try? file.tensor(named: tensorName), "\(name): \(tensorName) missing")
                #expect(view.dtype.name == t["dtype"]?.stringValue)
                #expect(view.shape.dimensions == t["shape"]?.arrayValue?.compactMap(\.intValue))
                if let sha = t["sha256"]?.stringValue {
                    #expect(view.bytes.withUnsafeBytes { SHA256Digest.hex(of: $0) } == sha, "\(name): \(tensorName) bytes differ")
                }
                checked += 1
            }
        }
        #expect(checked > 15)
    }
}

@Suite("safetensors writer")
struct SafetensorsWriterTests {
    @Test("read → write → read keeps names, dtypes, shapes and bytes for every dtype", arguments: byteDTypes)
    func roundTrip(_ dtype: DType) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = MemoryStore(
            [
                ("x.\(dtype.name)", dtype, [3, 5], sampleBytes(dtype, count: 15)),
                ("scalar", dtype, [], sampleBytes(dtype, count: 1, seed: 9)),
                ("empty", dtype, [2, 0], []),
            ], metadata: ["format": "pt", "note": "héllo"])
        let path = folder.appendingPathComponent("a.safetensors").path
        try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), metadata: store.metadata, to: path, overwrite: false)
        let back = try SafetensorsFile(path: path)
        #expect(back.metadata == store.metadata)
        #expect(back.headerLength % 8 == 0)
        for d in store.tensors {
            let got = try back.tensor(named: d.name)
            #expect(got.dtype == d.dtype)
            #expect(got.shape == d.shape)
            #expect(got.byteArray == (try store.tensor(named: d.name)).byteArray)
        }
    }

    @Test("refuses a tensor named __metadata__ and leaves no file")
    func refusesReservedName() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = MemoryStore([("__metadata__", .f32, [1], sampleBytes(.f32, count: 1))])
        let path = folder.appendingPathComponent("a.safetensors").path
        #expect(throws: FormatError.self) {
            try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), to: path, overwrite: false)
        }
        do {
            try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), to: path, overwrite: false)
        } catch {
            #expect(error.code == .reservedName)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }

    @Test("a failure while writing leaves neither the output nor a temporary file")
    func noPartialOutput() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        struct Boom: Error {}
        let good = OutputTensor(name: "a", dtype: .f32, shape: [4], sourceName: "a", sourceDType: .f32) {
            sampleBytes(.f32, count: 4).withUnsafeBytes {
                TensorView(descriptor: TensorDescriptor(name: "a", dtype: .f32, shape: [4], byteCount: 16), bytes: TensorBytes(copying: $0))
            }
        }
        let bad = OutputTensor(name: "b", dtype: .f32, shape: [4], sourceName: "b", sourceDType: .f32) { throw Boom() }
        let path = folder.appendingPathComponent("a.safetensors").path
        #expect(throws: FormatError.self) { try SafetensorsWriter.write([good, bad], to: path, overwrite: false) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        #expect(throws: FormatError.self) {
            try WPKWriter.write([good, bad], metadata: JSONObject(), to: folder.appendingPathComponent("a.wpk").path, overwrite: false)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }

    @Test("an existing output is refused without overwrite, replaced with it")
    func existingOutput() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("a.safetensors").path
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))
        let store = MemoryStore([("a", .f32, [2], sampleBytes(.f32, count: 2))])
        do {
            try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), to: path, overwrite: false)
            Issue.record("overwrote without permission")
        } catch {
            #expect(error.code == .io)
            #expect(error.description.contains("already exists"))
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
        try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), to: path, overwrite: true)
        #expect(try SafetensorsFile(path: path).tensors.count == 1)
    }
}

@Suite("sharded safetensors")
struct ShardedSafetensorsTests {
    @Test("an index joins its shards")
    func joinsShards() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let a = MemoryStore([("a.weight", .f32, [2, 2], sampleBytes(.f32, count: 4))])
        let b = MemoryStore([("b.weight", .f16, [3], sampleBytes(.f16, count: 3))])
        try SafetensorsWriter.write(
            OutputTensor.plan(from: a, dtype: .keep), to: folder.appendingPathComponent("m-00001-of-00002.safetensors").path, overwrite: false)
        try SafetensorsWriter.write(
            OutputTensor.plan(from: b, dtype: .keep), to: folder.appendingPathComponent("m-00002-of-00002.safetensors").path, overwrite: false)
        let index =
            #"{"metadata": {"total_size": 22}, "weight_map": {"a.weight": "m-00001-of-00002.safetensors", "b.weight": "m-00002-of-00002.safetensors"}}"#
        let indexPath = folder.appendingPathComponent("m.safetensors.index.json").path
        try Data(index.utf8).write(to: URL(fileURLWithPath: indexPath))
        let store = try ModelInput.open(indexPath)
        #expect(store.tensors.map(\.name).sorted() == ["a.weight", "b.weight"])
        #expect(try store.tensor(named: "b.weight").byteArray == (try b.tensor(named: "b.weight")).byteArray)

        let broken = #"{"weight_map": {"a.weight": "m-00002-of-00002.safetensors"}}"#
        try Data(broken.utf8).write(to: URL(fileURLWithPath: indexPath))
        do {
            _ = try ModelInput.open(indexPath)
            Issue.record("an index placing a tensor in the wrong shard was accepted")
        } catch {
            #expect(error.code == .tensorNotFound)
        }
    }
}
