import MappedIO
import Quantization
import TensorCore

/// Writes GGUF version 3 files (ggml-org/ggml `docs/gguf.md`) in the form stable-diffusion.cpp
/// reads: dimensions in ggml order (the PyTorch shape reversed), any plain type or ggml block
/// type WeightPack writes (``GGMLType/quantizable``; quantised with ggml's reference quantisers),
/// every tensor at a multiple of `general.alignment` (32) from the start of the data section,
/// packed in the order of the tensor table. Blocks read from a GGUF or `.wpk` file are passed
/// through unchanged when the type stays the same. Written atomically.
public enum GGUFWriter {
    /// The plain tensor types and Q8_0, as the first version of this writer named them; every
    /// other ggml type is given as a ``GGMLType`` (``Tensor/ggmlType``).
    public enum TensorType: UInt32, Sendable {
        case f32 = 0, f16 = 1, q8_0 = 8, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, bf16 = 30

        /// The type that holds `dtype` unchanged, if there is one.
        public init?(exactly dtype: DType) {
            guard let type = GGMLType(plain: dtype) else { return nil }
            self.init(rawValue: type.rawValue)
        }

        /// The ggml type of the same number.
        public var ggmlType: GGMLType { GGMLType(rawValue: rawValue) }
    }

    /// A metadata value (the GGUF value types this writer needs).
    public enum Value: Sendable {
        case uint32(UInt32)
        case string(String)
        case bool(Bool)
        /// An array of INT32 (as ComfyUI-GGUF writes `comfy.gguf.orig_shape.<name>`).
        case int32Array([Int32])
    }

    /// One tensor to write.
    public struct Tensor: Sendable {
        public var name: String
        /// In PyTorch order (written reversed). For a block type its last dimension must be a
        /// multiple of the type's block.
        public var shape: Shape
        /// The type written.
        public var ggmlType: GGMLType
        /// The values (any float dtype, or the integer dtype of the type).
        public var load: @Sendable () throws -> TensorView
        /// The int8 form, when the source holds one that may be repacked into Q8_0 losslessly.
        public var quantized: (@Sendable () throws -> QuantizedTensorView?)?
        /// Stored ggml blocks, copied unchanged when their type is ``ggmlType``.
        public var blocks: (@Sendable () throws -> GGMLTensorView?)?
        /// When `shape` is a reshaped form, the tensor's real shape, written as ComfyUI-GGUF's
        /// `comfy.gguf.orig_shape.<name>`.
        public var originalShape: Shape?
        /// Importance of each column of a row (`shape`'s last dimension, values finite and >= 0)
        /// for ggml's weighted quantisers; nil quantises with ones, as stable-diffusion.cpp's
        /// `convert` does.
        public var importance: [Float]? = nil

        public init(
            name: String, shape: Shape, type: TensorType, load: @escaping @Sendable () throws -> TensorView,
            quantized: (@Sendable () throws -> QuantizedTensorView?)? = nil
        ) {
            self.init(name: name, shape: shape, ggmlType: type.ggmlType, load: load, quantized: quantized)
        }

        public init(
            name: String, shape: Shape, ggmlType: GGMLType, load: @escaping @Sendable () throws -> TensorView,
            quantized: (@Sendable () throws -> QuantizedTensorView?)? = nil, blocks: (@Sendable () throws -> GGMLTensorView?)? = nil
        ) {
            self.name = name
            self.shape = shape
            self.ggmlType = ggmlType
            self.load = load
            self.quantized = quantized
            self.blocks = blocks
        }

        /// The type as the first version of this writer named it (`F32` for types it did not know).
        public var type: TensorType {
            get { TensorType(rawValue: ggmlType.rawValue) ?? .f32 }
            set { ggmlType = newValue.ggmlType }
        }

        /// The tensor `name` of `store` written as it is stored: block tensors' blocks copied
        /// (in their stored row shape, with the real shape as `comfy.gguf.orig_shape` when the
        /// two differ), plain tensors in their own dtype.
        ///
        /// - Throws: `FormatError.tensorNotFound`, or what the store throws.
        public static func passingThrough(_ name: String, of store: any GGMLTensorStore) throws -> Tensor {
            guard let descriptor = store.descriptor(named: name) else {
                throw FormatError(.tensorNotFound, "no tensor '\(name)'", tensor: name)
            }
            if let view = try store.ggmlTensor(named: name) {
                var tensor = Tensor(
                    name: name, shape: descriptor.shape, ggmlType: view.type, load: { try store.tensor(named: name) },
                    blocks: { try store.ggmlTensor(named: name) })
                if descriptor.shape.dimensions.last != view.rowLength {
                    tensor.shape = Shape([view.rows, view.rowLength])
                    tensor.originalShape = descriptor.shape
                }
                return tensor
            }
            guard let type = GGMLType(plain: descriptor.dtype) else {
                throw FormatError(.unsupportedDType, "GGUF cannot hold \(descriptor.dtype.name) tensor '\(name)'", tensor: name)
            }
            return Tensor(name: name, shape: descriptor.shape, ggmlType: type, load: { try store.tensor(named: name) })
        }
    }

    public static let alignment = 32

    /// What was written.
    public struct Summary: Sendable {
        public var tensorCount: Int
        public var byteCount: Int
        /// Q8_0 tensors copied from int8 blocks without requantising.
        public var repackedCount: Int
        /// Block tensors copied unchanged from stored blocks.
        public var passedThroughCount: Int = 0
        /// The error of every tensor quantised here, by name.
        public var metrics: [String: QuantizationMetrics] = [:]
    }

    /// Writes `tensors` and `metadata` (keys in order; `general.alignment` is added) to `path`.
    ///
    /// - Throws: `FormatError`: a shape GGUF cannot hold (more than 4 dimensions, Q8_0 rows not
    ///   a multiple of 32), a value that cannot be converted, or an I/O error.
    @discardableResult
    public static func write(
        _ tensors: [Tensor], metadata: [(String, Value)], to path: String, overwrite: Bool,
        progress: (any ProgressReporter)? = nil,
        reservedString: (key: String, length: Int)? = nil,
        beforeCommit: ((_ readablePath: String, _ metrics: [String: QuantizationMetrics]) throws -> String?)? = nil
    ) throws(FormatError) -> Summary {
        var header: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); header.append(contentsOf: s.utf8) }

        var entries = metadata
        // A string value of spaces that `beforeCommit` may fill in place (its length is fixed).
        var reservedOffset: Int?
        if let reservedString {
            guard reservedString.length > 0, reservedString.length <= 1 << 20 else {
                throw FormatError(.invalidArgument, "a reserved GGUF string holds 1 byte to 1 MiB", path: path)
            }
            entries.append((reservedString.key, .string(String(repeating: " ", count: reservedString.length))))
        }
        for t in tensors {
            if let original = t.originalShape {
                entries.append(("comfy.gguf.orig_shape." + t.name, .int32Array(original.dimensions.map { Int32(clamping: $0) })))
            }
        }
        entries.append(("general.alignment", Value.uint32(UInt32(alignment))))
        header.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(entries.count))
        for (key, value) in entries {
            string(key)
            switch value {
            case .uint32(let v): u32(4); u32(v)
            case .string(let s):
                u32(8)
                if key == reservedString?.key { reservedOffset = header.count + 8 }
                string(s)
            case .bool(let b): u32(7); header.append(b ? 1 : 0)
            case .int32Array(let values):
                u32(9); u32(5); u64(UInt64(values.count))
                for v in values { u32(UInt32(bitPattern: v)) }
            }
        }
        var offset = 0
        var sizes: [Int] = []
        var names = Set<String>()
        for t in tensors {
            guard names.insert(t.name).inserted else {
                throw FormatError(.duplicateTensor, "tensor '\(t.name)' appears twice", path: path, tensor: t.name)
            }
            guard t.shape.rank >= 1, t.shape.rank <= 4 else {
                throw FormatError(.invalidArgument, "GGUF holds 1 to 4 dimensions; '\(t.name)' has shape \(t.shape)", path: path, tensor: t.name)
            }
            // Types WeightPack does not quantise to (IQ4_NL, IQ4_XS) may still be copied from stored blocks.
            guard t.ggmlType.isKnown,
                t.ggmlType.plainDType != nil || GGMLType.quantizable.contains(t.ggmlType)
                    || (t.blocks != nil && t.ggmlType.isReadable)
            else {
                throw FormatError(.unsupportedDType, "unsupported type \(t.ggmlType.name) for writing '\(t.name)'", path: path, tensor: t.name)
            }
            if t.shape.dimensions.last! % t.ggmlType.blockValues != 0 {
                throw FormatError(
                    .invalidArgument, "\(t.ggmlType.name) needs rows of a multiple of \(t.ggmlType.blockValues); '\(t.name)' has shape \(t.shape)",
                    path: path, tensor: t.name)
            }
            string(t.name)
            u32(UInt32(t.shape.rank))
            for d in t.shape.dimensions.reversed() { u64(UInt64(d)) }
            u32(t.ggmlType.rawValue)
            u64(UInt64(offset))
            guard let size = t.ggmlType.byteCount(values: t.shape.count) else {
                throw FormatError(.validationOverflow, "tensor '\(t.name)' is too large", path: path, tensor: t.name)
            }
            sizes.append(size)
            offset += (size + alignment - 1) / alignment * alignment
        }
        let total = offset
        var repacked = 0, passed = 0
        var metrics: [String: QuantizationMetrics] = [:]
        do {
            let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
            try writer.write(header)
            try writer.pad(toMultipleOf: alignment)
            let dataStart = writer.position
            progress?.begin(total: total)
            for (t, size) in zip(tensors, sizes) {
                try writer.pad(toMultipleOf: alignment)
                let start = writer.position
                switch try emit(t, to: writer) {
                case .repacked: repacked += 1
                case .passedThrough: passed += 1
                case .quantized(let m): metrics[t.name] = m
                case .converted: break
                }
                guard writer.position - start == size else {
                    throw FormatError(.io, "tensor '\(t.name)' wrote \(writer.position - start) bytes, expected \(size)", tensor: t.name)
                }
                progress?.advance(by: size)
            }
            try writer.pad(toMultipleOf: alignment)
            precondition(writer.position - dataStart == total, "GGUF data size disagrees with the table")
            // The file is whole but unnamed: `beforeCommit` may open and check it, and fill the
            // reserved string (padded with spaces to its fixed length).
            if let beforeCommit, let text = try beforeCommit(try writer.readablePath(), metrics) {
                guard let reservedString, let reservedOffset else {
                    throw FormatError(.invalidArgument, "no string was reserved for what is added before commit", path: path)
                }
                var bytes = Array(text.utf8)
                guard bytes.count <= reservedString.length else {
                    throw FormatError(
                        .invalidArgument, "\(reservedString.key) needs \(bytes.count) bytes, \(reservedString.length) were reserved", path: path)
                }
                bytes.append(contentsOf: repeatElement(0x20, count: reservedString.length - bytes.count))
                try bytes.withUnsafeBytes { try writer.overwrite($0, at: reservedOffset) }
            }
            try writer.commit()
            progress?.finish()
        } catch {
            throw FormatError.writing(error, to: path)
        }
        return Summary(tensorCount: tensors.count, byteCount: total, repackedCount: repacked, passedThroughCount: passed, metrics: metrics)
    }

    enum Emitted {
        case repacked, passedThrough, converted
        case quantized(QuantizationMetrics)
    }

    /// Writes one tensor's data.
    private static func emit(_ t: Tensor, to writer: AtomicFileWriter) throws -> Emitted {
        let type = t.ggmlType
        if let view = try t.blocks?(), view.type == type, view.descriptor.elementCount == t.shape.count {
            try view.bytes.withUnsafeBytes { try writer.write($0) }
            return .passedThrough
        }
        if type == .q8_0, let q = try t.quantized?(), Q8_0.canRepack(q.layout, shape: t.shape) {
            try q.bytes.withUnsafeBytes { raw in
                try writer.withUnsafeOutputBuffer(count: Q8_0.byteCount(values: q.layout.elementCount)) { out in
                    Q8_0.repack(raw, layout: q.layout, into: out.baseAddress!)
                }
            }
            return .repacked
        }
        let view = try t.load()
        guard view.shape.count == t.shape.count else {
            throw FormatError(.tensorInvalidInfo, "tensor '\(t.name)' has \(view.shape.count) values, expected \(t.shape.count)", tensor: t.name)
        }
        let count = t.shape.count
        if type.isBlockQuantized {
            let floats = try view.floats()
            var accumulator = ErrorAccumulator()
            try floats.withUnsafeBufferPointer { p in
                try writer.withUnsafeOutputBuffer(count: type.byteCount(values: count)!) { out in
                    do {
                        accumulator = try GGMLBlocks.quantizeAsConvert(
                            p.baseAddress!, count: count, rowLength: t.shape.dimensions.last ?? count, type: type, importance: t.importance,
                            into: out.baseAddress!)
                    } catch {
                        throw FormatError(.unsupportedConversion, "tensor '\(t.name)': \(error)", tensor: t.name)
                    }
                }
            }
            return .quantized(accumulator.metrics)
        }
        var hasher = XXHash64()
        _ = try view.bytes.withUnsafeBytes { (raw) throws(FormatError) in
            try TensorEmitter.emit(source: raw, from: view.dtype, as: type.plainDType!, count: count, name: t.name, to: writer, hasher: &hasher)
        }
        return .converted
    }
}
