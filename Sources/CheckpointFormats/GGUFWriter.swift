import MappedIO
import Quantization
import TensorCore

/// Writes GGUF version 3 files (ggml-org/ggml `docs/gguf.md`) in the form stable-diffusion.cpp
/// reads: dimensions in ggml order (the PyTorch shape reversed), `F32`, `F16`, `BF16`, `Q8_0`
/// or integer tensors, every tensor at a multiple of `general.alignment` (32) from the start of
/// the data section, packed in the order of the tensor table. Written atomically.
public enum GGUFWriter {
    /// ggml tensor types this writer produces (`ggml.h` numbering).
    public enum TensorType: UInt32, Sendable {
        case f32 = 0, f16 = 1, q8_0 = 8, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, bf16 = 30

        /// The type that holds `dtype` unchanged, if there is one.
        public init?(exactly dtype: DType) {
            switch dtype {
            case .f32: self = .f32
            case .f16: self = .f16
            case .bf16: self = .bf16
            case .f64: self = .f64
            case .i8: self = .i8
            case .i16: self = .i16
            case .i32: self = .i32
            case .i64: self = .i64
            default: return nil
            }
        }

        /// Bytes of `count` values (`count` a multiple of 32 for Q8_0).
        func byteCount(_ count: Int) -> Int {
            switch self {
            case .q8_0: Q8_0.byteCount(values: count)
            case .f16, .bf16, .i16: count * 2
            case .f32, .i32: count * 4
            case .i64, .f64: count * 8
            case .i8: count
            }
        }

        var dtype: DType? {
            switch self {
            case .f32: .f32
            case .f16: .f16
            case .bf16: .bf16
            case .f64: .f64
            case .i8: .i8
            case .i16: .i16
            case .i32: .i32
            case .i64: .i64
            case .q8_0: nil
            }
        }
    }

    /// A metadata value (the GGUF value types this writer needs).
    public enum Value: Sendable {
        case uint32(UInt32)
        case string(String)
        case bool(Bool)
    }

    /// One tensor to write.
    public struct Tensor: Sendable {
        public var name: String
        /// In PyTorch order (written reversed).
        public var shape: Shape
        public var type: TensorType
        /// The values (any float dtype, or the integer dtype of `type`).
        public var load: @Sendable () throws -> TensorView
        /// The int8 form, when the source holds one that may be repacked into Q8_0 losslessly.
        public var quantized: (@Sendable () throws -> QuantizedTensorView?)?

        public init(name: String, shape: Shape, type: TensorType, load: @escaping @Sendable () throws -> TensorView, quantized: (@Sendable () throws -> QuantizedTensorView?)? = nil) {
            self.name = name
            self.shape = shape
            self.type = type
            self.load = load
            self.quantized = quantized
        }
    }

    public static let alignment = 32

    /// What was written.
    public struct Summary: Sendable {
        public var tensorCount: Int
        public var byteCount: Int
        /// Q8_0 tensors copied from int8 blocks without requantising.
        public var repackedCount: Int
    }

    /// Writes `tensors` and `metadata` (keys in order; `general.alignment` is added) to `path`.
    ///
    /// - Throws: `FormatError`: a shape GGUF cannot hold (more than 4 dimensions, Q8_0 rows not
    ///   a multiple of 32), a value that cannot be converted, or an I/O error.
    @discardableResult
    public static func write(
        _ tensors: [Tensor], metadata: [(String, Value)], to path: String, overwrite: Bool,
        progress: (any ProgressReporter)? = nil
    ) throws(FormatError) -> Summary {
        var header: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); header.append(contentsOf: s.utf8) }

        let entries = metadata + [("general.alignment", Value.uint32(UInt32(alignment)))]
        header.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(entries.count))
        for (key, value) in entries {
            string(key)
            switch value {
            case .uint32(let v): u32(4); u32(v)
            case .string(let s): u32(8); string(s)
            case .bool(let b): u32(7); header.append(b ? 1 : 0)
            }
        }
        var offset = 0
        var sizes: [Int] = []
        var names = Set<String>()
        for t in tensors {
            guard names.insert(t.name).inserted else { throw FormatError(.duplicateTensor, "tensor '\(t.name)' appears twice", path: path, tensor: t.name) }
            guard t.shape.rank >= 1, t.shape.rank <= 4 else {
                throw FormatError(.invalidArgument, "GGUF holds 1 to 4 dimensions; '\(t.name)' has shape \(t.shape)", path: path, tensor: t.name)
            }
            if t.type == .q8_0, t.shape.dimensions.last! % Q8_0.blockValues != 0 {
                throw FormatError(.invalidArgument, "Q8_0 needs rows of a multiple of 32; '\(t.name)' has shape \(t.shape)", path: path, tensor: t.name)
            }
            string(t.name)
            u32(UInt32(t.shape.rank))
            for d in t.shape.dimensions.reversed() { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            let size = t.type.byteCount(t.shape.count)
            sizes.append(size)
            offset += (size + alignment - 1) / alignment * alignment
        }
        let total = offset
        var repacked = 0
        do {
            let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
            try writer.write(header)
            try writer.pad(toMultipleOf: alignment)
            let dataStart = writer.position
            progress?.begin(total: total)
            for (t, size) in zip(tensors, sizes) {
                try writer.pad(toMultipleOf: alignment)
                let start = writer.position
                if try emit(t, to: writer) { repacked += 1 }
                guard writer.position - start == size else {
                    throw FormatError(.io, "tensor '\(t.name)' wrote \(writer.position - start) bytes, expected \(size)", tensor: t.name)
                }
                progress?.advance(by: size)
            }
            try writer.pad(toMultipleOf: alignment)
            precondition(writer.position - dataStart == total, "GGUF data size disagrees with the table")
            try writer.commit()
            progress?.finish()
        } catch {
            throw FormatError.writing(error, to: path)
        }
        return Summary(tensorCount: tensors.count, byteCount: total, repackedCount: repacked)
    }

    /// Writes one tensor's data; returns whether it was repacked from int8 blocks.
    private static func emit(_ t: Tensor, to writer: AtomicFileWriter) throws -> Bool {
        if t.type == .q8_0, let q = try t.quantized?(), Q8_0.canRepack(q.layout, shape: t.shape) {
            try q.bytes.withUnsafeBytes { raw in
                try writer.withUnsafeOutputBuffer(count: Q8_0.byteCount(values: q.layout.elementCount)) { out in
                    Q8_0.repack(raw, layout: q.layout, into: out.baseAddress!)
                }
            }
            return true
        }
        let view = try t.load()
        guard view.shape.count == t.shape.count else {
            throw FormatError(.tensorInvalidInfo, "tensor '\(t.name)' has \(view.shape.count) values, expected \(t.shape.count)", tensor: t.name)
        }
        let count = t.shape.count
        if t.type == .q8_0 {
            let floats = try view.floats()
            try floats.withUnsafeBufferPointer { p in
                try writer.withUnsafeOutputBuffer(count: Q8_0.byteCount(values: count)) { out in
                    _ = try Q8_0.quantize(p.baseAddress!, count: count, into: out.baseAddress!)
                }
            }
            return false
        }
        var hasher = XXHash64()
        _ = try view.bytes.withUnsafeBytes { (raw) throws(FormatError) in
            try TensorEmitter.emit(source: raw, from: view.dtype, as: t.type.dtype!, count: count, name: t.name, to: writer, hasher: &hasher)
        }
        return false
    }
}
