import CheckpointFormats
import Foundation
import MappedIO
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

@Suite("wpk format")
struct WPKTests {
    func write(_ store: any TensorStore, dtype: DTypeChoice = .keep, compress: Bool = false, in folder: URL, name: String = "m.wpk") throws -> String
    {
        let path = folder.appendingPathComponent(name).path
        let strings = JSONObject(store.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) })
        try WPKWriter.write(
            OutputTensor.plan(from: store, dtype: dtype), metadata: JSONObject([("tool", .string("tests")), ("strings", .object(strings))]), to: path,
            overwrite: true,
            options: WPKWriter.Options(compress: compress))
        return path
    }

    @Test("safetensors → wpk → safetensors is bit-exact for every dtype, raw and compressed", arguments: byteDTypes, [false, true])
    func roundTrip(_ dtype: DType, compress: Bool) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = MemoryStore(
            [
                ("layer.weight", dtype, [17, 33], sampleBytes(dtype, count: 17 * 33)),
                ("scalar", dtype, [], sampleBytes(dtype, count: 1, seed: 3)),
                ("empty", dtype, [0, 4], []),
            ], metadata: ["k": "v"])
        let st = folder.appendingPathComponent("src.safetensors").path
        try SafetensorsWriter.write(OutputTensor.plan(from: source, dtype: .keep), metadata: source.metadata, to: st, overwrite: false)
        let wpkPath = try write(SafetensorsFile(path: st), compress: compress, in: folder)
        let wpk = try WPKFile(path: wpkPath)
        #expect(wpk.verifyChecksums().isEmpty)
        for e in wpk.entries { #expect(e.offset % 64 == 0) }
        let back = folder.appendingPathComponent("back.safetensors").path
        try SafetensorsWriter.write(OutputTensor.plan(from: wpk, dtype: .keep), metadata: wpk.metadata, to: back, overwrite: false)
        let original = try SafetensorsFile(path: st), copy = try SafetensorsFile(path: back)
        #expect(copy.tensors.map(\.name) == original.tensors.map(\.name))
        for d in original.tensors {
            let a = try original.tensor(named: d.name), b = try copy.tensor(named: d.name)
            #expect(a.dtype == b.dtype && a.shape == b.shape)
            #expect(a.byteArray == b.byteArray, "\(dtype) \(d.name) differs")
        }
        // The reference writer's file comes back byte for byte.
        #expect(try Data(contentsOf: URL(fileURLWithPath: st)) == Data(contentsOf: URL(fileURLWithPath: back)))
    }

    @Test("f16 and bf16 conversion equal round-to-nearest-even bit for bit")
    func conversionBits() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var values: [Float] = [
            0, -0, 1, -1, 65504, 65519.99, 65520, 1e-8, 5.96e-8, 2.98e-8, .infinity, -.infinity, .nan, 3.14159, 1 + 1.0 / 2048, 1 + 3.0 / 2048,
        ]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<10_000 { values.append(Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))) }
        let bytes = values.withUnsafeBytes { Array($0) }
        let store = MemoryStore([("v", .f32, [values.count], bytes)])
        for (choice, dtype) in [(DTypeChoice.f16, DType.f16), (.bf16, .bf16)] {
            let wpk = try WPKFile(path: write(store, dtype: choice, in: folder, name: "\(dtype).wpk"))
            let got = try wpk.tensor(named: "v").bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            for (i, v) in values.enumerated() {
                let expected = dtype == .f16 ? referenceHalf(v) : referenceBFloat16(v)
                if v.isNaN {
                    #expect(dtype == .f16 ? (got[i] & 0x7C00 == 0x7C00 && got[i] & 0x3FF != 0) : (got[i] & 0x7F80 == 0x7F80 && got[i] & 0x7F != 0))
                } else {
                    #expect(
                        got[i] == expected,
                        "\(dtype) of \(v) (0x\(String(v.bitPattern, radix: 16))): got 0x\(String(got[i], radix: 16)) expected 0x\(String(expected, radix: 16))"
                    )
                }
                if got[i] != expected && !v.isNaN { break }
            }
        }
    }

    /// Swift's own `Float16(Float)` conversion (IEEE round-to-nearest-even) as the oracle.
    func referenceHalf(_ v: Float) -> UInt16 { Float16(v).bitPattern }

    /// bf16 by exact comparison of the two neighbours in Double, ties to even.
    func referenceBFloat16(_ v: Float) -> UInt16 {
        let bits = v.bitPattern
        let down = UInt16(bits >> 16)
        if bits & 0xFFFF == 0 { return down }
        let up = down &+ 1
        let lo = Double(Float(bitPattern: UInt32(down) << 16))
        // Above the largest finite bf16 the next value is infinity: IEEE rounds as if it were 2^128.
        let hi = up & 0x7FFF == 0x7F80 ? (v < 0 ? -0x1p128 : 0x1p128) : Double(Float(bitPattern: UInt32(up) << 16))
        let x = Double(v)
        if abs(x - lo) < abs(hi - x) { return down }
        if abs(x - lo) > abs(hi - x) { return up }
        return down & 1 == 0 ? down : up
    }

    @Test("integer tensors are never cast")
    func integersKept() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let ids = (0..<77).flatMap { i in withUnsafeBytes(of: Int64(i).littleEndian) { Array($0) } }
        let store = MemoryStore([("position_ids", .i64, [1, 77], ids), ("w", .f32, [2], sampleBytes(.f32, count: 2))])
        let wpk = try WPKFile(path: write(store, dtype: .f16, in: folder))
        #expect(wpk.descriptor(named: "position_ids")?.dtype == .i64)
        #expect(try wpk.tensor(named: "position_ids").byteArray == ids)
        #expect(wpk.descriptor(named: "w")?.dtype == .f16)
        #expect(wpk.entry(named: "w")?.sourceDType == .f32)
    }

    @Test("check catches a single flipped byte in any tensor's data")
    func flippedByte() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = MemoryStore([("a", .f32, [64], sampleBytes(.f32, count: 64)), ("b", .f16, [100], sampleBytes(.f16, count: 100))])
        for compress in [false, true] {
            let path = try write(store, compress: compress, in: folder)
            let clean = try WPKFile(path: path)
            for entry in clean.entries {
                for position in [0, entry.length / 2, entry.length - 1] {
                    var data = try Data(contentsOf: URL(fileURLWithPath: path))
                    data[clean.dataOffset + entry.offset + position] ^= 0x01
                    let damaged = folder.appendingPathComponent("damaged.wpk")
                    try data.write(to: damaged)
                    let damage = try WPKFile(path: damaged.path).verifyChecksums()
                    #expect(damage.map(\.tensor) == [entry.descriptor.name])
                }
            }
        }
    }

    @Test("a damaged header is refused on open")
    func damagedHeader() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = try write(MemoryStore([("a", .f32, [4], sampleBytes(.f32, count: 4))]), in: folder)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        func expectCode(_ mutate: (inout Data) -> Void, _ code: FormatError.Code, sourceLocation: SourceLocation = #_sourceLocation) throws {
            var copy = data
            mutate(&copy)
            let p = folder.appendingPathComponent("bad.wpk")
            try copy.write(to: p)
            do {
                _ = try WPKFile(path: p.path)
                Issue.record("accepted; expected \(code)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.code == code, "got \(error.code): \(error.message)", sourceLocation: sourceLocation)
            }
        }
        try expectCode({ $0[0] = 0x88 }, .badMagic)
        try expectCode({ $0[8] = 2 }, .unsupportedVersion)
        try expectCode({ $0[12] = 1 }, .corruptHeader)
        try expectCode({ $0[70] ^= 0x20 }, .checksumMismatch)
        try expectCode({ $0.removeLast() }, .corruptHeader)
        try expectCode({ $0.append(0) }, .corruptHeader)
        try expectCode({ $0 = $0.prefix(40) }, .corruptHeader)
        try expectCode({ $0 = Data() }, .badMagic)
        try expectCode(
            { d in
                d[24] = 0xFF; d[25] = 0xFF; d[26] = 0xFF; d[27] = 0x7F
            }, .corruptHeader)
    }

    @Test(
        "a header that lies about its tensors is refused even with a valid checksum",
        arguments: [
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"F32","shape":[4],"offset":0,"length":15,"checksum":"xxh64:0000000000000000"}]}"#,
                FormatError.Code.corruptHeader
            ),
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"F32","shape":[4],"offset":32,"length":16,"checksum":"xxh64:0000000000000000"}]}"#,
                .corruptHeader
            ),
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"F32","shape":[4],"offset":64,"length":16,"checksum":"xxh64:0000000000000000"}]}"#,
                .corruptHeader
            ),
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"X9","shape":[4],"offset":0,"length":16,"checksum":"xxh64:0000000000000000"}]}"#,
                .corruptHeader
            ),
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"F32","shape":[4],"offset":0,"length":16,"checksum":"xxh64:0000000000000000"},{"name":"a","dtype":"F32","shape":[0],"offset":0,"length":0,"checksum":"xxh64:0000000000000000"}]}"#,
                .duplicateTensor
            ),
            (
                #"{"metadata":{},"tensors":[{"name":"a","dtype":"F32","shape":[4611686018427387904,4],"offset":0,"length":16,"checksum":"xxh64:0000000000000000"}]}"#,
                .corruptHeader
            ),
            (#"{"metadata":{},"metadata":{},"tensors":[]}"#, .corruptHeader),
            (#"{"tensors":[]}"#, .corruptHeader),
        ])
    func lyingHeader(_ header: String, _ code: FormatError.Code) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let bytes = Array(header.utf8)
        var file: [UInt8] = [0x89, 0x57, 0x50, 0x4B, 0x0D, 0x0A, 0x1A, 0x0A]
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { file += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { file += $0 } }
        u16(1); u16(0); file += [0, 0, 0, 0]
        let dataOffset = (64 + bytes.count + 63) / 64 * 64
        u64(64); u64(UInt64(bytes.count)); u64(UInt64(dataOffset)); u64(16)
        u64(bytes.withUnsafeBytes { XXHash64.hash($0) }); u64(0)
        file += bytes
        file += [UInt8](repeating: 0, count: dataOffset - file.count + 16)
        let path = folder.appendingPathComponent("lie.wpk").path
        try Data(file).write(to: URL(fileURLWithPath: path))
        do {
            _ = try WPKFile(path: path)
            Issue.record("accepted a lying header")
        } catch {
            #expect(error.code == code, "got \(error.code): \(error.message)")
        }
    }

    @Test("compression shrinks trained-like weights and records the ratio")
    func compressionShrinks() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        // Gaussian-like weights: a skewed exponent, as trained networks have.
        var values = [Float](repeating: 0, count: 65536)
        var state: UInt64 = 42
        for i in values.indices {
            var sum: Float = 0
            for _ in 0..<4 { state = state &* 6364136223846793005 &+ 1442695040888963407; sum += Float(state >> 40) / Float(1 << 24) }
            values[i] = (sum - 2) * 0.05
        }
        let store = MemoryStore([("w", .f32, [256, 256], values.withUnsafeBytes { Array($0) })])
        let wpk = try WPKFile(path: write(store, compress: true, in: folder))
        let entry = try #require(wpk.entry(named: "w"))
        guard case .zstdByteGroup(let width, let size, _) = entry.encoding else {
            Issue.record("not compressed")
            return
        }
        #expect(width == 4 && size == 262_144)
        #expect(entry.length < size * 9 / 10)
        #expect(try wpk.tensor(named: "w").byteArray == store.tensor(named: "w").byteArray)
    }

    @Test("opening reads the header only: views point into the mapping")
    func zeroCopy() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let wpk = try WPKFile(path: write(MemoryStore([("a", .f32, [16], sampleBytes(.f32, count: 16))]), in: folder))
        let view = try wpk.tensor(named: "a")
        #expect(view.bytes.owner === wpk.file)
        let aligned = view.bytes.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) % 64 == 0 }
        #expect(aligned)
    }
}

@Suite("wpk int8 tensors (format 1.1)")
struct WPKInt8Tests {
    @Test("int8 tensors round-trip: payload zero-copy, tensor(named:) dequantised F32, errors read back")
    func roundTrip() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let count = 64 * 8 * 3 * 3
        let store = MemoryStore([
            ("conv.weight", .f32, [64, 8, 3, 3], sampleBytes(.f32, count: count)),
            ("conv.bias", .f32, [64], sampleBytes(.f32, count: 64, seed: 2)),
            ("ids", .i64, [1, 4], sampleBytes(.i64, count: 4)),
        ])
        let path = folder.appendingPathComponent("q.wpk").path
        let plan = OutputTensor.plan(from: store, rules: QuantizationRules())
        #expect(plan.map(\.dtype) == [.i8, .f32, .i64])
        try WPKWriter.write(plan, metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: true)
        let file = try WPKFile(path: path)
        #expect(file.version.major == 1 && file.version.minor == 1)
        #expect(file.verifyChecksums().isEmpty)
        #expect(file.descriptor(named: "conv.weight")?.dtype == .f32)
        let q = try #require(try file.quantizedTensor(named: "conv.weight"))
        #expect(q.layout == (try Int8BlockLayout(shape: [64, 8, 3, 3], blockSize: 32)))
        #expect(try file.quantizedTensor(named: "conv.bias") == nil)
        // The stored bytes are exactly what the quantiser makes of the values.
        let original = try store.tensor(named: "conv.weight").floats()
        let (expected, metrics) = try original.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: q.layout) }
        #expect(q.bytes.withUnsafeBytes { Array($0) } == Array(expected.bytes))
        let stored = try #require(q.metrics)
        #expect(abs(stored.snrDecibels! - metrics.snrDecibels!) < 1e-3 && stored.snrDecibels! > 38)
        let values = try file.tensor(named: "conv.weight")
        #expect(values.dtype == .f32 && values.shape == [64, 8, 3, 3])
        let back = try values.floats()
        #expect(QuantizationMetrics.compare(reference: original, candidate: back).maxAbsoluteError <= stored.maxAbsoluteError * 1.0001)
        #expect(try file.tensor(named: "ids").byteArray == store.tensor(named: "ids").byteArray)
    }

    /// The writer quantises an aligned F32 source in place and widens everything else first
    /// (F16, BF16, and F32 at an address that is not a multiple of 4, as a safetensors file
    /// whose header length is not a multiple of 4 gives); every path must store exactly the
    /// quantiser's bytes, the zero gap between payload and scales included (63·8·3·3 = 4536
    /// values, scales from 4544).
    @Test("int8 from aligned and unaligned F32, F16 and BF16 sources: the quantiser's bytes, gap zeroed")
    func everySourcePathStoresTheQuantizersBytes() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let shape = [63, 8, 3, 3]
        let count = shape.reduce(1, *)
        let f32 = sampleBytes(.f32, count: count, seed: 5)
        // A safetensors file whose data starts 2 bytes past a multiple of 4.
        var header = Array(#"{"w":{"dtype":"F32","shape":[63,8,3,3],"data_offsets":[0,\#(count * 4)]}}"#.utf8)
        while (8 + header.count) % 4 != 2 { header.append(0x20) }
        var file: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { file += $0 }
        file += header + f32
        let unalignedPath = folder.appendingPathComponent("unaligned.safetensors").path
        try Data(file).write(to: URL(fileURLWithPath: unalignedPath))
        let unaligned = try SafetensorsFile(path: unalignedPath)
        let address = try unaligned.tensor(named: "w").bytes.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) }
        #expect(address % 4 == 2)
        let sources: [(String, any TensorStore)] = [
            ("aligned f32", MemoryStore([("w", .f32, shape, f32)])),
            ("unaligned f32", unaligned),
            ("f16", MemoryStore([("w", .f16, shape, sampleBytes(.f16, count: count, seed: 6))])),
            ("bf16", MemoryStore([("w", .bf16, shape, sampleBytes(.bf16, count: count, seed: 7))])),
        ]
        for (label, store) in sources {
            let plan = OutputTensor.plan(from: store, rules: QuantizationRules())
            #expect(plan.map(\.dtype) == [.i8], "\(label)")
            let path = folder.appendingPathComponent("\(label).wpk").path
            try WPKWriter.write(plan, metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: false)
            let written = try WPKFile(path: path)
            #expect(written.verifyChecksums().isEmpty, "\(label)")
            let q = try #require(try written.quantizedTensor(named: "w"))
            #expect(q.layout.scaleOffset - q.layout.elementCount == 8)
            let values = try store.tensor(named: "w").floats()
            let (expected, _) = try values.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: q.layout) }
            #expect(q.bytes.withUnsafeBytes { Array($0) } == Array(expected.bytes), "\(label)")
        }
    }

    @Test("a file without int8 tensors stays version 1.0")
    func plainStaysOldVersion() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = MemoryStore([("w", .f32, [4, 4], sampleBytes(.f32, count: 16))])
        let path = folder.appendingPathComponent("p.wpk").path
        try WPKWriter.write(
            OutputTensor.plan(from: store, dtype: .keep), metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: true)
        #expect(try WPKFile(path: path).version.minor == 0)
    }
}
