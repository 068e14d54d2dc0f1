import CheckpointFormats
import FuzzSupport

/// libFuzzer entry point: one input is a whole `.safetensors` file held in memory.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let header = try? SafetensorsHeader(validating: bytes) else { return 0 }
    // What the validator accepts, SafetensorsFile serves: every range lies in the file and the
    // tensors tile the data section in order.
    let dataStart = 8 + header.headerLength
    var expected = 0
    for entry in header.entries {
        precondition(entry.dataRange.lowerBound == expected, "accepted a hole or an overlap")
        precondition(entry.descriptor.byteCount == entry.dataRange.count, "accepted a size mismatch")
        expected = entry.dataRange.upperBound
    }
    precondition(dataStart + expected == size, "accepted a data section that does not end the file")
    // The name index the streaming pass builds points at each entry, and at nothing else.
    precondition(header.indexByName.count == header.entries.count, "name index and entries differ in size")
    for (i, entry) in header.entries.enumerated() {
        precondition(header.indexByName[entry.descriptor.name] == i, "name index points at the wrong entry")
    }
    return 0
}

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzSafetensors_main")
public func fuzzSafetensorsMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzSafetensors)
}
