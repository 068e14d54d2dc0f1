import CheckpointFormats
import FuzzSupport
import TensorCore

private let scratch = ScratchFile(tag: "wpk")

/// libFuzzer entry point: one input is a whole `.wpk` file. It is validated as it is and,
/// when different, with its header checksum repaired (so mutations of the header reach the
/// JSON and table checks). A file that validates is then opened from disk and every tensor
/// read, compressed ones decompressed, and every checksum verified.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWPK(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    check(bytes)
    if let repaired = ChecksumRepair.wpk(bytes), !repaired.elementsEqual(bytes) {
        ChecksumRepair.saveIfAsked(repaired)
        repaired.withUnsafeBytes { check($0) }
    }
    return 0
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    do { try WPKFile.validate(bytes: bytes) } catch { return }
    scratch.write(bytes)
    let file: WPKFile
    do { file = try WPKFile(path: scratch.path) } catch {
        preconditionFailure("validate(bytes:) accepted a file that WPKFile(path:) refuses: \(error)")
    }
    var sum: UInt8 = 0
    for descriptor in file.tensors {
        guard let view = try? file.tensor(named: descriptor.name) else { continue }
        view.bytes.withUnsafeBytes { raw in for b in raw { sum &+= b } }
    }
    _ = file.verifyChecksums()
    blackHole(sum)
}

@inline(never)
private func blackHole(_ value: UInt8) { _ = value }

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzWPK_main")
public func fuzzWPKMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzWPK)
}
