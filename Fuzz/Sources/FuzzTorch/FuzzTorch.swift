import CheckpointFormats
import FuzzSupport
import TensorCore

private let scratch = ScratchFile(tag: "torch")

/// libFuzzer entry point: one input is a whole PyTorch checkpoint (zip or legacy), written to
/// a scratch file in /dev/shm because the readers map a path. Each input is scanned for
/// globals, then opened with unsafe globals allowed (nothing is ever executed; this only lets
/// the walk go further) and every tensor read, strided ones gathered. Zip inputs run a second
/// time with their CRC-32s repaired, so mutations of `data.pkl` get past the checksum.
/// The gate is checked too: a file that opens without `allowUnsafeGlobals` must scan as safe.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTorch(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    check(bytes)
    if size >= 4, bytes[0] == 0x50, bytes[1] == 0x4B,
        let repaired = ChecksumRepair.zip(bytes), !repaired.elementsEqual(bytes)
    {
        ChecksumRepair.saveIfAsked(repaired)
        repaired.withUnsafeBytes { check($0) }
    }
    return 0
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    scratch.write(bytes)
    let report = try? TorchCheckpoint.scan(path: scratch.path)
    if let gated = try? TorchCheckpoint(path: scratch.path) {
        precondition(report?.worst == .safe, "the gate let through a file whose scan says \(report.map { "\($0.worst)" } ?? "nothing")")
        precondition(gated.allowedUnsafeGlobals.isEmpty, "the gate reports allowed globals without being asked")
    }
    guard let checkpoint = try? TorchCheckpoint(path: scratch.path, allowUnsafeGlobals: true) else { return }
    var sum: UInt8 = 0
    for descriptor in checkpoint.tensors {
        guard let view = try? checkpoint.tensor(named: descriptor.name) else { continue }
        precondition(view.bytes.count == descriptor.byteCount, "tensor '\(descriptor.name)' has the wrong byte count")
        view.bytes.withUnsafeBytes { raw in for b in raw { sum &+= b } }
    }
    blackHole(sum)
}

@inline(never)
private func blackHole(_ value: UInt8) { _ = value }

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzTorch_main")
public func fuzzTorchMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzTorch)
}
