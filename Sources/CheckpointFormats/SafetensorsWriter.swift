import MappedIO
import StrictJSON
import TensorCore

/// Writes `.safetensors` files as the reference writer does: a header padded with spaces to a
/// multiple of 8 bytes, then the tensors back to back. Written atomically.
public enum SafetensorsWriter {
    /// The order the reference writer uses: larger elements first, then by name, which keeps
    /// every tensor naturally aligned in the file.
    public static func referenceOrder(_ tensors: [OutputTensor]) -> [OutputTensor] {
        tensors.sorted { a, b in
            a.dtype.bitWidth != b.dtype.bitWidth ? a.dtype.bitWidth > b.dtype.bitWidth : a.name < b.name
        }
    }

    /// Writes `tensors` in the given order to `path`.
    ///
    /// - Throws: `.reservedName` for a tensor called `__metadata__`, `.duplicateTensor`,
    ///   conversion errors, or `.io` (`exists` when `path` exists and `overwrite` is false).
    public static func write(
        _ tensors: [OutputTensor], metadata: [String: String] = [:], to path: String, overwrite: Bool,
        progress: (any ProgressReporter)? = nil
    ) throws(FormatError) {
        var seen = Set<String>()
        var header = JSONObject()
        if !metadata.isEmpty {
            header["__metadata__"] = .object(JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
        }
        var offset = 0
        for tensor in tensors {
            guard tensor.name != "__metadata__" else {
                throw FormatError(.reservedName, "a tensor may not be called __metadata__ in safetensors", path: path, tensor: tensor.name)
            }
            guard seen.insert(tensor.name).inserted else {
                throw FormatError(.duplicateTensor, "tensor '\(tensor.name)' appears twice", path: path, tensor: tensor.name)
            }
            let size = try tensor.byteCount()
            header[tensor.name] = [
                "dtype": .string(tensor.dtype.name),
                "shape": .array(tensor.shape.dimensions.map { JSONValue($0) }),
                "data_offsets": [JSONValue(offset), JSONValue(offset + size)],
            ]
            offset += size
        }
        var text = Array(JSONValue.object(header).serialized().utf8)
        while text.count % 8 != 0 { text.append(0x20) }
        do {
            let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
            var length = UInt64(text.count).littleEndian
            try withUnsafeBytes(of: &length) { try writer.write($0) }
            try writer.write(text)
            progress?.begin(total: offset)
            for tensor in tensors {
                _ = try TensorEmitter.emit(tensor, to: writer)
                progress?.advance(by: (try? tensor.byteCount()) ?? 0)
            }
            try writer.commit()
            progress?.finish()
        } catch {
            throw FormatError.writing(error, to: path)
        }
    }
}

/// Receives progress of long work (bytes done out of a total). The CLI draws a bar with it.
public protocol ProgressReporter: AnyObject {
    func begin(total: Int)
    func advance(by amount: Int)
    func finish()
}
