import CheckpointFormats
import Foundation
import Quantization
import StrictJSON
import TensorCore
import TestSupport
import Testing

/// A `.wpk` file taken apart: preamble version, header, data section. `bytes` puts it back
/// together with the header length, data offset and header checksum recomputed, so a tampered
/// header reaches the rule under test instead of stopping at the checksum.
struct WPKImage {
    var minor: UInt16
    var header: JSONObject
    var data: [UInt8]

    init(path: String) throws {
        let file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func u64(_ at: Int) -> Int { Int(file[at..<(at + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) }
        minor = UInt16(file[10]) | UInt16(file[11]) << 8
        let headerLength = u64(24), dataOffset = u64(32)
        header = try #require(try JSONParser.parse(String(decoding: file[64..<(64 + headerLength)], as: UTF8.self)).objectValue)
        data = Array(file[dataOffset...])
    }

    /// The file, with a consistent preamble (checksum included) for whatever the header now says.
    func bytes(recomputeChecksum: Bool = true) -> [UInt8] {
        let text = Array(JSONValue.object(header).serialized().utf8)
        let dataOffset = (64 + text.count + 63) / 64 * 64
        var out = WPKLayout.magic
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        u16(1); u16(minor); out += [0, 0, 0, 0]
        u64(64); u64(UInt64(text.count)); u64(UInt64(dataOffset)); u64(UInt64(data.count))
        let checksum = text.withUnsafeBytes { XXHash64.hash($0) }
        u64(recomputeChecksum ? checksum : checksum ^ 1); u64(0)
        out += text
        out += [UInt8](repeating: 0, count: dataOffset - out.count)
        return out + data
    }

    /// Applies `change` to the table row of `tensor`.
    mutating func editEntry(_ tensor: String, _ change: (inout JSONObject) -> Void) throws {
        var rows = try #require(header["tensors"]?.arrayValue)
        let i = try #require(rows.firstIndex { $0.objectValue?["name"]?.stringValue == tensor })
        var row = try #require(rows[i].objectValue)
        change(&row)
        rows[i] = .object(row)
        header["tensors"] = .array(rows)
    }
}

/// One way to damage the int8 tensor's table row, and the error it must give.
struct QuantizedHeaderTamper: Sendable, CustomTestStringConvertible {
    let label: String
    let code: FormatError.Code
    /// Text the message must contain (names the rule that refused the file).
    let message: String
    let change: @Sendable (inout JSONObject) -> Void

    var testDescription: String { label }

    /// Changes `key` of the `quantization` object (`nil` removes it).
    static func quantization(_ label: String, _ key: String, _ value: JSONValue?, _ code: FormatError.Code, _ message: String) -> Self {
        Self(label: label, code: code, message: message) { row in
            guard var q = row["quantization"]?.objectValue else { return }
            q[key] = value
            row["quantization"] = .object(q)
        }
    }

    /// Changes `key` of the row itself (`nil` removes it).
    static func row(_ label: String, _ key: String, _ value: JSONValue?, _ code: FormatError.Code, _ message: String) -> Self {
        Self(label: label, code: code, message: message) { row in row[key] = value }
    }
}

/// `conv.weight` [64, 8, 3, 3] as int8 in blocks of 32: 64 rows of 72 values, 3 scales a row,
/// the 4608 values then the 192 scales from offset 4608, 4992 bytes in all.
private let expectedScaleOffset = 4608

@Suite("wpk int8 headers that break the quantisation rules (Formats/wpk.md)")
struct WPKQuantizedHeaderTests {
    /// A valid int8 file from the writer: `conv.weight` quantised, `conv.bias` F32.
    static func validFile(in folder: URL) throws -> String {
        let store = MemoryStore([
            ("conv.weight", .f32, [64, 8, 3, 3], sampleBytes(.f32, count: 64 * 72)),
            ("conv.bias", .f32, [64], sampleBytes(.f32, count: 64, seed: 2)),
        ])
        let plan = OutputTensor.plan(from: store, rules: QuantizationRules())
        let path = folder.appendingPathComponent("valid.wpk").path
        try WPKWriter.write(plan, metadata: JSONObject([("tool", .string("tests"))]), to: path, overwrite: true)
        return path
    }

    static let tampers: [QuantizedHeaderTamper] = [
        // Names a later version may define: refused by name as unsupported.
        .quantization("unknown scheme", "scheme", "int4-block", .unsupportedVersion, "quantisation scheme 'int4-block'"),
        .quantization("unknown scale dtype", "scale_dtype", "BF16", .unsupportedVersion, "scales as 'BF16'"),
        .quantization("unknown dequantised dtype", "dequantized_dtype", "F16", .unsupportedVersion, "dequantises to 'F16'"),
        // Missing or mistyped fields.
        .quantization("no scheme", "scheme", nil, .corruptHeader, "no scheme name"),
        .quantization("scheme not a string", "scheme", 8, .corruptHeader, "no scheme name"),
        .quantization("no scale dtype", "scale_dtype", nil, .corruptHeader, "no scale_dtype name"),
        .quantization("dequantised dtype not a string", "dequantized_dtype", 32, .corruptHeader, "dequantized_dtype is not a name"),
        // The scale region.
        .quantization(
            "scale_offset past the padding", "scale_offset", .int(Int64(expectedScaleOffset + 64)), .corruptHeader, "scale_offset 4672, expected 4608"
        ),
        .quantization(
            "scales overlapping the values", "scale_offset", .int(Int64(expectedScaleOffset - 64)), .corruptHeader, "scale_offset 4544, expected 4608"
        ),
        .quantization("scales at the start", "scale_offset", 0, .corruptHeader, "scale_offset 0, expected 4608"),
        .quantization("scale_offset beyond any file", "scale_offset", .int(Int64.max), .corruptHeader, "expected 4608"),
        .quantization("negative scale_offset", "scale_offset", -64, .corruptHeader, "scale_offset must be a non-negative integer"),
        .quantization("fractional scale_offset", "scale_offset", 4608.5, .corruptHeader, "scale_offset must be a non-negative integer"),
        .quantization("scale_offset above 2^64", "scale_offset", .double(1e30), .corruptHeader, "scale_offset must be a non-negative integer"),
        .quantization("no scale_offset", "scale_offset", nil, .corruptHeader, "scale_offset must be a non-negative integer"),
        // Blocks.
        .quantization("block size 0", "block_size", 0, .corruptHeader, "block_size must be a positive integer"),
        .quantization("negative block size", "block_size", -32, .corruptHeader, "block_size must be a positive integer"),
        .quantization("no block size", "block_size", nil, .corruptHeader, "block_size must be a positive integer"),
        .quantization(
            "block size not matching the scales (smaller)", "block_size", 16, .corruptHeader,
            "stores 4992 bytes but int8 64×72, blocks of 16 needs 5248"),
        .quantization("block size not matching the scales (larger)", "block_size", 72, .corruptHeader, "blocks of 72 needs 4736"),
        // Rows.
        QuantizedHeaderTamper(
            label: "rows not the first dimension (same element count)", code: .corruptHeader,
            message: "int8 layout 72×64 does not fit shape [64, 8, 3, 3]"
        ) { row in
            guard var q = row["quantization"]?.objectValue else { return }
            q["rows"] = 72
            q["row_length"] = 64
            row["quantization"] = .object(q)
        },
        .quantization("row length too short", "row_length", 71, .corruptHeader, "int8 layout 64×71 does not fit shape"),
        .quantization("no rows", "rows", nil, .corruptHeader, "rows and row_length must be non-negative integers"),
        .quantization("rows × row_length overflow", "row_length", .int(Int64.max / 2), .corruptHeader, "overflows"),
        // The error figures.
        .quantization("error not an object", "error", 5, .corruptHeader, "malformed quantization error"),
        .quantization("error without max_abs", "error", ["cosine": 1.0, "snr_db": 40.0], .corruptHeader, "malformed quantization error"),
        .quantization(
            "snr_db not a number", "error", ["cosine": 1.0, "max_abs": 0.1, "snr_db": "high"], .corruptHeader, "malformed quantization error"),
        // The row around the quantisation object.
        .row("int8 tensor without its quantization object", "quantization", nil, .corruptHeader, "stores 4992 bytes but I8 [64, 8, 3, 3] needs 4608"),
        .row("quantization not an object", "quantization", "int8-block", .corruptHeader, "malformed quantization"),
        .row("quantised tensor with dtype F32", "dtype", "F32", .corruptHeader, "must have dtype I8, not F32"),
        .row("quantised tensor with dtype F16", "dtype", "F16", .corruptHeader, "must have dtype I8, not F16"),
        .row(
            "quantised tensor compressed", "encoding",
            ["kind": "zstd-bytegroup", "width": 1, "size": 4608, "raw_checksum": "xxh64:0000000000000000"], .corruptHeader, "must be stored raw"),
        .row("0-rank quantised tensor", "shape", [], .corruptHeader, "0-rank tensor cannot be int8-block quantised"),
        .row("length one byte short", "length", 4991, .corruptHeader, "stores 4991 bytes but int8 64×72, blocks of 32 needs 4992"),
    ]

    @Test("each broken rule is refused with its own error, checksum recomputed", arguments: tampers)
    func refused(_ tamper: QuantizedHeaderTamper) throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var image = try WPKImage(path: Self.validFile(in: folder))
        try image.editEntry("conv.weight", tamper.change)
        let bytes = image.bytes()
        let path = folder.appendingPathComponent("tampered.wpk").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try WPKFile(path: path)
            Issue.record("\(tamper.label): the file was accepted")
        } catch {
            #expect(error.code == tamper.code, "\(tamper.label): got \(error.code): \(error.message)")
            #expect(error.message.contains(tamper.message), "\(tamper.label): message '\(error.message)'")
            #expect(error.tensor == "conv.weight")
            #expect(error.path == path)
            #expect(!error.description.contains("\n"))
        }
        // The in-memory validator (the fuzz target's entry point) reaches the same rule.
        do {
            try bytes.withUnsafeBytes { try WPKFile.validate(bytes: $0) }
            Issue.record("\(tamper.label): validate accepted the bytes")
        } catch let error as FormatError {
            #expect(error.code == tamper.code)
        }
    }

    @Test("controls: the re-assembled file opens and decodes as written; without a new checksum the checksum is what fails")
    func controls() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = try WPKFile(path: Self.validFile(in: folder))
        let image = try WPKImage(path: original.path)
        #expect(image.minor == 1)
        let q = try #require(image.header["tensors"]?.arrayValue?.first?.objectValue?["quantization"]?.objectValue)
        #expect(q["scale_offset"]?.intValue == expectedScaleOffset && q["block_size"]?.intValue == 32)
        let path = folder.appendingPathComponent("same.wpk").path
        try Data(image.bytes()).write(to: URL(fileURLWithPath: path))
        let copy = try WPKFile(path: path)
        #expect(copy.entries == original.entries)
        #expect(copy.verifyChecksums().isEmpty)
        #expect(try copy.tensor(named: "conv.weight").floats() == original.tensor(named: "conv.weight").floats())

        // Optional fields may be left out: no dequantized_dtype (F32) and no error figures.
        var lean = image
        try lean.editEntry("conv.weight") { row in
            guard var q = row["quantization"]?.objectValue else { return }
            q["dequantized_dtype"] = nil
            q["error"] = nil
            row["quantization"] = .object(q)
        }
        try Data(lean.bytes()).write(to: URL(fileURLWithPath: path))
        let leanFile = try WPKFile(path: path)
        #expect(leanFile.entry(named: "conv.weight")?.quantization?.metrics == nil)
        #expect(try leanFile.tensor(named: "conv.weight").floats() == original.tensor(named: "conv.weight").floats())

        // A tampered header whose checksum was not recomputed stops at the checksum.
        var stale = image
        try stale.editEntry("conv.weight") { row in
            guard var q = row["quantization"]?.objectValue else { return }
            q["scheme"] = "int4-block"
            row["quantization"] = .object(q)
        }
        try Data(stale.bytes(recomputeChecksum: false)).write(to: URL(fileURLWithPath: path))
        do {
            _ = try WPKFile(path: path)
            Issue.record("a header with a stale checksum was accepted")
        } catch {
            #expect(error.code == .checksumMismatch)
        }
    }

    @Test("an int8 tensor in a file whose preamble says 1.0 is a corrupt header")
    func versionOneZero() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var image = try WPKImage(path: Self.validFile(in: folder))
        image.minor = 0
        let path = folder.appendingPathComponent("v10.wpk").path
        try Data(image.bytes()).write(to: URL(fileURLWithPath: path))
        do {
            _ = try WPKFile(path: path)
            Issue.record("a 1.0 file with an int8 tensor was accepted")
        } catch {
            #expect(error.code == .corruptHeader)
            #expect(error.message.contains("version 1.0") && error.tensor == "conv.weight", "\(error.message)")
        }
        // The same file without int8 tensors is a valid 1.0 file.
        try image.editEntry("conv.weight") { row in row["quantization"] = nil }
        image.header["tensors"] = .array((image.header["tensors"]?.arrayValue ?? []).filter { $0.objectValue?["name"]?.stringValue != "conv.weight" })
        try Data(image.bytes()).write(to: URL(fileURLWithPath: path))
        let plain = try WPKFile(path: path)
        #expect(plain.version.minor == 0 && plain.tensors.map(\.name) == ["conv.bias"])
    }
}
