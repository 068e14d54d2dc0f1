import CheckpointFormats
import Foundation
import MappedIO
import StrictJSON
import TensorCore
import Testing

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// Issue 16: inputs that are not regular files, symbolic-link loops, oversized side files,
/// recorded paths that escape their folder, and names with NUL bytes.
@Suite("hostile inputs", .serialized)
struct HostileInputTests {
    /// Makes a FIFO at `path` and opens it read-write, so that if a reader regressed and opened
    /// it, the open would not block (the test fails instead of hanging). Returns the descriptor.
    static func makeFIFO(_ path: String) throws -> Int32 {
        try #require(mkfifo(path, 0o600) == 0, "mkfifo failed")
        let fd = open(path, O_RDWR | O_NONBLOCK)
        try #require(fd >= 0)
        return fd
    }

    static func ioCode(_ error: FormatError) -> IOError.Code? {
        (error.underlying as? IOError)?.code
    }

    static func copyFixtureFolder(to folder: URL) throws -> URL {
        let target = folder.appendingPathComponent("model")
        try FileManager.default.copyItem(at: fixturesURL.appendingPathComponent("tiny-sd1/diffusers"), to: target)
        return target
    }

    @Test("a FIFO as the input is refused before it is opened: detect, open and each reader")
    func fifoInput() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for name in ["model.safetensors", "model.ckpt", "model.wpk", "model.safetensors.index.json", "model"] {
            let path = folder.appendingPathComponent(name).path
            let fd = try Self.makeFIFO(path)
            defer { close(fd) }
            #expect(throws: FormatError.self) { try ModelInput.detect(path) }
            do {
                _ = try ModelInput.open(path)
                Issue.record("\(name): opened a FIFO")
            } catch {
                #expect(error.code == .io)
                #expect(Self.ioCode(error) == .notRegularFile, "\(name): \(error)")
            }
        }
        let path = folder.appendingPathComponent("model.safetensors").path
        for open in [
            { _ = try SafetensorsFile(path: path) }, { _ = try WPKFile(path: path) },
            { _ = try ShardedSafetensors(indexPath: path) },
        ] as [() throws -> Void] {
            do {
                try open()
                Issue.record("opened a FIFO")
            } catch let error as FormatError {
                #expect(Self.ioCode(error) == .notRegularFile, "\(error)")
            }
        }
        #expect(throws: IOError.self) { try FileCheck.requireRegularFile("/dev/null") }
        #expect(throws: IOError.self) { _ = try FileCheck.openRegularFileForReading(path) }
        #expect(try FileCheck.kind(of: path) == .other)
    }

    @Test(
        "a FIFO as a diffusers component's weights, config or shard is refused",
        arguments: [
            "unet/diffusion_pytorch_model.safetensors", "unet/config.json", "model_index.json", "tokenizer/vocab.json",
        ])
    func fifoInFolder(_ relative: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try Self.copyFixtureFolder(to: folder)
        let target = model.appendingPathComponent(relative).path
        try FileManager.default.removeItem(atPath: target)
        let fd = try Self.makeFIFO(target)
        defer { close(fd) }
        do {
            _ = try DiffusersFolder(path: model.path)
            Issue.record("opened a folder whose \(relative) is a FIFO")
        } catch {
            #expect(Self.ioCode(error) == .notRegularFile, "\(error)")
        }
    }

    @Test("a FIFO among the shards of an index is refused")
    func fifoShard() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let index = folder.appendingPathComponent("model.safetensors.index.json")
        try Data(#"{"metadata": {}, "weight_map": {"a": "shard-1.safetensors"}}"#.utf8).write(to: index)
        let fd = try Self.makeFIFO(folder.appendingPathComponent("shard-1.safetensors").path)
        defer { close(fd) }
        do {
            _ = try ShardedSafetensors(indexPath: index.path)
            Issue.record("opened a FIFO shard")
        } catch {
            #expect(Self.ioCode(error) == .notRegularFile, "\(error)")
        }
    }

    @Test("a symbolic-link loop is unreadable input (symlinkLoop), not an I/O error")
    func symlinkLoop() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let a = folder.appendingPathComponent("a.safetensors").path
        let b = folder.appendingPathComponent("b.safetensors").path
        try FileManager.default.createSymbolicLink(atPath: a, withDestinationPath: b)
        try FileManager.default.createSymbolicLink(atPath: b, withDestinationPath: a)
        do {
            _ = try ModelInput.open(a)
            Issue.record("opened a symlink loop")
        } catch {
            #expect(Self.ioCode(error) == .symlinkLoop, "\(error)")
            #expect(error.description.contains("symbolic links"))
        }
        do {
            _ = try SafetensorsFile(path: a)
            Issue.record("opened a symlink loop")
        } catch {
            #expect(Self.ioCode(error) == .symlinkLoop, "\(error)")
        }
        #expect(throws: IOError.self) { _ = try FileCheck.kind(of: folder.appendingPathComponent("a.safetensors/x").path) }
    }

    @Test("a diffusers config.json too large to read is an error, not silently skipped")
    func oversizedConfig() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try Self.copyFixtureFolder(to: folder)
        let config = model.appendingPathComponent("unet/config.json")
        let handle = try FileHandle(forWritingTo: config)
        try handle.truncate(atOffset: UInt64(DiffusersFolder.maximumAuxiliarySize + 1))
        try handle.close()
        do {
            _ = try DiffusersFolder(path: model.path)
            Issue.record("accepted an oversized config")
        } catch {
            #expect(error.code == .tooLarge, "\(error)")
        }
    }

    static let unsafePaths = [
        "../evil.json", "/etc/passwd", "unet/../../x", "a//b", "./config.json", "unet/", "", "a\nb",
        "a\u{1B}[31m", "..", "unet\\..\\x", "x\u{0}y", String(repeating: "a", count: 1100),
    ]

    @Test("a .wpk whose diffusers_files names a path outside its folder is refused at open", arguments: unsafePaths)
    func unsafeAuxiliaryPath(_ relative: String) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("m.wpk").path
        let store = MemoryStore([("a", .f32, [1], sampleBytes(.f32, count: 1))])
        let files = JSONObject([("unet/config.json", "{}"), (relative, "{}")])
        try WPKWriter.write(
            OutputTensor.plan(from: store, dtype: .keep), metadata: JSONObject([("diffusers_files", .object(files))]),
            to: path, overwrite: true)
        do {
            _ = try WPKFile(path: path)
            Issue.record("accepted diffusers_files path \(relative.debugDescription)")
        } catch {
            #expect(error.code == .unsafePath, "\(error)")
        }
    }

    @Test("plain relative paths are safe", arguments: ["unet/config.json", "model_index.json", "tokenizer_2/vocab.json", "a b/c.json", "é/ü.json"])
    func safePaths(_ relative: String) {
        #expect(RelativePath.isSafe(relative))
    }

    @Test("names with NUL bytes are kept whole through safetensors and .wpk and never merge")
    func nulNamesRoundTrip() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let names = ["a\u{0}x", "a", "x\u{0}hidden", "\u{0}"]
        let store = MemoryStore(
            names.enumerated().map { ($1, .f32, [1], sampleBytes(.f32, count: 1, seed: UInt64($0 + 1))) },
            metadata: ["k\u{0}a": "1", "k": "2"])
        let st = folder.appendingPathComponent("n.safetensors").path
        try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), metadata: store.metadata, to: st, overwrite: false)
        let file = try SafetensorsFile(path: st)
        #expect(Set(file.tensors.map(\.name)) == Set(names))
        #expect(file.metadata == store.metadata)
        for name in names {
            #expect(
                try file.tensor(named: name).bytes.withUnsafeBytes { Array($0) }
                    == (try store.tensor(named: name)).bytes.withUnsafeBytes { Array($0) })
        }
        let wpkPath = folder.appendingPathComponent("n.wpk").path
        try WPKWriter.write(OutputTensor.plan(from: file, dtype: .keep), metadata: JSONObject([("tool", "tests")]), to: wpkPath, overwrite: false)
        let wpk = try WPKFile(path: wpkPath)
        #expect(Set(wpk.tensors.map(\.name)) == Set(names))
        #expect(file.descriptor(named: "x") == nil)
    }

    @Test("a header of nested arrays is refused at its first unexpected token")
    func nestedArrayHeader() throws {
        // 4 MB of nested arrays where a tensor entry should be: refused without building a tree.
        let nested = String(repeating: "[[],", count: 1_000_000) + "[]" + String(repeating: "]", count: 1_000_000)
        for header in ["{\"a\":" + nested + "}", "{\"__metadata__\":" + nested + "}", nested] {
            var bytes = [UInt8]()
            let h = Array(header.utf8)
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { bytes += $0 }
            bytes += h
            let outcome = bytes.withUnsafeBytes { raw in Result { () throws(FormatError) in try SafetensorsHeader(validating: raw) } }
            guard case .failure(let error) = outcome else { Issue.record("accepted"); continue }
            #expect([FormatError.Code.invalidTensorEntry, .invalidMetadata, .invalidHeaderJSON, .headerNotObject].contains(error.code), "\(error)")
        }
    }

    @Test("a valid header of 200,000 tensors is read in linear time")
    func manyTensors() throws {
        let count = 200_000
        var header = "{"
        for i in 0..<count {
            if i > 0 { header += "," }
            header += "\"t\(i)\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[\(i),\(i + 1)]}"
        }
        header += "}"
        var bytes = [UInt8]()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        bytes += [UInt8](repeating: 7, count: count)
        let clock = ContinuousClock()
        let start = clock.now
        let parsed = try bytes.withUnsafeBytes { raw throws(FormatError) in try SafetensorsHeader(validating: raw) }
        #expect(parsed.entries.count == count)
        #expect(clock.now - start < .seconds(60))
    }
}
