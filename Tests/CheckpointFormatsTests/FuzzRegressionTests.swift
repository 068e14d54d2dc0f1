import Foundation
import TensorCore
import TestSupport
import Testing

@testable import CheckpointFormats

/// The files of `Fixtures/fuzz/<target>/`: inputs found by the libFuzzer targets of `Fuzz/`
/// (crashes, minimised, and the corpus entries with the most coverage; Docs/fuzzing.md). Each is
/// replayed through the same entry point as its fuzz target and must return or throw.
struct FuzzInput: CustomTestStringConvertible, Sendable {
    var target: String
    var name: String
    var url: URL { fuzzFixturesURL.appendingPathComponent(target).appendingPathComponent(name) }
    var testDescription: String { "\(target)/\(name)" }

    func bytes() throws -> [UInt8] { Array(try Data(contentsOf: url)) }

    static func all(_ target: String) -> [FuzzInput] {
        let folder = fuzzFixturesURL.appendingPathComponent(target)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted().map { FuzzInput(target: target, name: $0) }
    }
}

let fuzzFixturesURL = fixturesURL.appendingPathComponent("fuzz")

@Suite("fuzz regressions: checkpoint formats")
struct FuzzRegressionTests {
    @Test("every fixture folder has inputs", arguments: ["safetensors", "wpk", "torch"])
    func foldersAreNotEmpty(_ target: String) {
        #expect(!FuzzInput.all(target).isEmpty, "Fixtures/fuzz/\(target) is empty or missing")
    }

    /// FuzzSafetensors: `SafetensorsHeader(validating:)` over the bytes.
    @Test("safetensors inputs return or throw", arguments: FuzzInput.all("safetensors"))
    func safetensors(_ input: FuzzInput) throws {
        let bytes = try input.bytes()
        let outcome = bytes.withUnsafeBytes { raw in Result { () throws(FormatError) in try SafetensorsHeader(validating: raw) } }
        if case .success(let header) = outcome {
            let end = header.entries.last?.dataRange.upperBound ?? 0
            #expect(8 + header.headerLength + end == bytes.count)
        }
        if let expected = Self.expectedCodes[input.testDescription] {
            #expect(outcome.failureCode == expected)
        }
    }

    /// FuzzWPK: `WPKFile.validate(bytes:)`, then (when valid) open the file and read every tensor.
    @Test("wpk inputs return or throw", arguments: FuzzInput.all("wpk"))
    func wpk(_ input: FuzzInput) throws {
        let bytes = try input.bytes()
        let outcome = bytes.withUnsafeBytes { raw in Result { () throws(FormatError) in try WPKFile.validate(bytes: raw) } }
        if let expected = Self.expectedCodes[input.testDescription] {
            #expect(outcome.failureCode == expected)
        }
        guard case .success = outcome else { return }
        let file = try WPKFile(path: input.url.path)
        for descriptor in file.tensors {
            if let view = try? file.tensor(named: descriptor.name) {
                #expect(view.bytes.count == descriptor.byteCount)
            }
        }
        _ = file.verifyChecksums()
    }

    /// FuzzTorch: `TorchCheckpoint.scan(path:)`, then open (unsafe globals allowed; nothing runs)
    /// and read every tensor.
    @Test("torch inputs return or throw", arguments: FuzzInput.all("torch"))
    func torch(_ input: FuzzInput) throws {
        _ = try? TorchCheckpoint.scan(path: input.url.path)
        let outcome = Result { () throws(FormatError) in try TorchCheckpoint(path: input.url.path, allowUnsafeGlobals: true) }
        if let expected = Self.expectedCodes[input.testDescription] {
            #expect(outcome.failureCode == expected)
        }
        guard case .success(let checkpoint) = outcome else { return }
        for descriptor in checkpoint.tensors {
            let view = try checkpoint.tensor(named: descriptor.name)
            #expect(view.bytes.count == descriptor.byteCount)
        }
    }

    /// The error code each crash reproducer must now produce (`nil`: it must be accepted).
    static let expectedCodes: [String: FormatError.Code?] = [
        "torch/review-size1-stride-overflow.pt": nil,
        "torch/review-expanded-view-4tib.pt": .unsupportedTensor,
        "wpk/review-zstd-frame-claims-1tib.wpk": nil,
    ]

    /// A size-1 dimension with a stride of 2^62 made the gather's offset arithmetic overflow (a
    /// trap in `tensor(named:)`); such a stride is never stepped along and the view now reads.
    @Test("a huge stride on a size-1 dimension is gathered, not trapped on")
    func sizeOneStride() throws {
        let url = fuzzFixturesURL.appendingPathComponent("torch/review-size1-stride-overflow.pt")
        let checkpoint = try TorchCheckpoint(path: url.path)
        let view = try checkpoint.tensor(named: "w")
        #expect(view.descriptor.shape == Shape([2, 1]))
        #expect(view.bytes.withUnsafeBytes { Array($0) } == [UInt8](repeating: 0, count: 8))
    }

    /// A 240-byte legacy checkpoint whose stride-0 view claims 2^40 floats made `tensor(named:)`
    /// allocate 4 TiB; expanded views are now capped when the file is opened.
    @Test("an expanded view far larger than its storage is refused on open")
    func expandedView() {
        let url = fuzzFixturesURL.appendingPathComponent("torch/review-expanded-view-4tib.pt")
        do {
            _ = try TorchCheckpoint(path: url.path)
            Issue.record("opened a checkpoint with a 4 TiB expanded view")
        } catch {
            #expect(error.code == .unsupportedTensor)
            #expect(error.tensor == "w")
        }
    }

    /// A 384-byte .wpk whose zstd frame header claims 1 TiB made `tensor(named:)` and
    /// `verifyChecksums()` allocate it; the claim is now checked against zstd's expansion bound.
    @Test("a zstd frame cannot claim more than zstd can expand to")
    func zstdClaim() throws {
        let url = fuzzFixturesURL.appendingPathComponent("wpk/review-zstd-frame-claims-1tib.wpk")
        let file = try WPKFile(path: url.path)
        do {
            _ = try file.tensor(named: "t")
            Issue.record("decoded a 1 TiB tensor from 64 bytes")
        } catch {
            #expect(error.code == .corruptData)
        }
        #expect(file.verifyChecksums().contains { $0.tensor == "t" })
    }

    /// A 1 MiB frame may legitimately expand to 32 GiB, so the bound above lets a header claim
    /// 30 GiB; allocating that trapped the process when memory ran out. The buffers are now
    /// allocated with a check: a refused allocation, like a frame that then fails to decode, is
    /// a `.corruptData` error.
    @Test("a compressed tensor claiming more than memory is an error, not a trap")
    func compressedClaimBeyondMemory() throws {
        let size = 30 << 30
        var frame = [UInt8](repeating: 0, count: 1 << 20)
        frame.replaceSubrange(0..<4, with: [0x28, 0xB5, 0x2F, 0xFD])  // zstd magic
        frame[4] = 0xE0  // single segment, 8-byte content size
        withUnsafeBytes(of: UInt64(size).littleEndian) { frame.replaceSubrange(5..<13, with: $0) }
        do {
            try frame.withUnsafeBytes { raw in _ = try ByteGroupCodec.decode(raw, width: 2, size: size) }
            Issue.record("decoded a 30 GiB tensor from 1 MiB of zeros")
        } catch let error as FormatError {
            #expect(error.code == .corruptData, "\(error)")
        }
    }
}

extension Result where Failure == FormatError {
    /// The error code of a failure, `nil` on success.
    var failureCode: FormatError.Code? {
        if case .failure(let error) = self { return error.code }
        return nil
    }
}
