import CheckpointFormats
import FuzzSupport
import Quantization
import TensorCore

private let scratch = ScratchFile(tag: "gguf")
private let copy = ScratchFile(tag: "gguf-copy")

/// libFuzzer entry point: one input is a whole `.gguf` file. It is validated in memory; a file
/// that validates is opened from disk, every tensor read (block tensors dequantised, whole and
/// by rows), and written again with every tensor passed through, and the copy read back.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    do { _ = try GGUFHeader(validating: bytes) } catch { return 0 }
    scratch.write(bytes)
    let file: GGUFFile
    do { file = try GGUFFile(path: scratch.path) } catch {
        preconditionFailure("GGUFHeader(validating:) accepted a file that GGUFFile(path:) refuses: \(error)")
    }
    var sum: Float = 0
    for descriptor in file.tensors {
        guard let view = try? file.tensor(named: descriptor.name), let values = try? view.floats() else { continue }
        for v in values { sum += v }
        if let blocks = try? file.ggmlTensor(named: descriptor.name), blocks.rows > 0 {
            var row = [Float](repeating: 0, count: blocks.rowLength)
            row.withUnsafeMutableBufferPointer { try? blocks.dequantize(rows: (blocks.rows - 1)..<blocks.rows, into: $0.baseAddress!) }
            sum += row.first ?? 0
        }
    }
    let tensors = file.tensors.compactMap { try? GGUFWriter.Tensor.passingThrough($0.name, of: file) }
    if (try? GGUFWriter.write(tensors, metadata: [], to: copy.path, overwrite: true)) != nil {
        do {
            let again = try GGUFFile(path: copy.path)
            precondition(again.tensors.count == tensors.count, "the copy lost tensors")
        } catch {
            preconditionFailure("a GGUF we wrote is refused: \(error)")
        }
    }
    blackHole(sum)
    return 0
}

@inline(never)
private func blackHole(_ value: Float) { _ = value }

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzGGUF_main")
public func fuzzGGUFMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzGGUF)
}
