import MappedIO
import Quantization
import TensorCore

/// A tensor to be written: its output name, dtype and shape, and how to fetch its source
/// (lazily, so a writer holds one source tensor at a time).
public struct OutputTensor: Sendable {
    public var name: String
    /// The dtype written. When it differs from the source's, the writer converts.
    public var dtype: DType
    public var shape: Shape
    /// The name and dtype in the source, recorded for `export`.
    public var sourceName: String
    public var sourceDType: DType
    /// Fetches the source tensor.
    public var load: @Sendable () throws -> TensorView
    /// Set to store the tensor as int8 (`.wpk` only): `dtype` is then `I8` and the writer
    /// quantises the source values with this layout and records the error they took.
    public var quantization: Int8BlockLayout? = nil
    /// Set to store the tensor as ggml blocks (`.wpk` only, format 1.2): `dtype` is then `U8`
    /// and the writer copies ``blocks`` when they are of this type or quantises the source
    /// values as stable-diffusion.cpp's `convert` does (ggml's importance-weighted searches, see
    /// ``importance``), recording the error.
    public var ggml: WPKBlockStorage? = nil
    /// For ``ggml`` tensors: the importance of each column of a stored row (`ggml.rowLength`
    /// values, finite and >= 0, e.g. from calibration statistics). nil means ones, which is what
    /// stable-diffusion.cpp's `convert` passes to ggml.
    public var importance: [Float]? = nil
    /// Stored blocks to copy unchanged (from a GGUF or `.wpk` source).
    public var blocks: (@Sendable () throws -> GGMLTensorView?)? = nil

    public init(name: String, dtype: DType, shape: Shape, sourceName: String, sourceDType: DType, load: @escaping @Sendable () throws -> TensorView) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.sourceName = sourceName
        self.sourceDType = sourceDType
        self.load = load
    }

    /// Bytes written for this tensor (before any compression).
    public func byteCount() throws(FormatError) -> Int {
        if let g = ggml {
            guard let n = g.type.byteCount(values: shape.count) else {
                throw FormatError(.invalidArgument, "shape \(shape) does not divide into \(g.type.name) blocks", tensor: name)
            }
            return n
        }
        do { return try shape.byteCount(of: dtype) } catch {
            throw FormatError(.validationOverflow, error.message, tensor: name)
        }
    }
}

/// The dtype a conversion asks for.
public enum DTypeChoice: String, Sendable, CaseIterable {
    case keep, f32, f16, bf16
    /// int8 where ``QuantizationRules`` allow, f16/f32 elsewhere (`.wpk` only; plan with
    /// ``OutputTensor/plan(from:rules:include:)``).
    case int8

    /// The output dtype for a source dtype. Only F16, BF16, F32 and F64 are ever cast;
    /// integers, booleans, fp8 and everything else keep their type.
    public func outputDType(for source: DType) -> DType {
        guard source.isConvertibleFloat else { return source }
        switch self {
        case .keep: return source
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .int8: return .f16  // only where no rules apply; int8 plans go through QuantizationRules
        }
    }
}

extension OutputTensor {
    /// The plan for writing every tensor of `store` (in its order) as `choice` asks.
    public static func plan(
        from store: any TensorStore, dtype choice: DTypeChoice, include: (TensorDescriptor) -> Bool = { _ in true }
    ) -> [OutputTensor] {
        if choice == .int8 { return plan(from: store, rules: QuantizationRules(), include: include) }
        return store.tensors.filter(include).map { d in
            OutputTensor(
                name: d.name, dtype: choice.outputDType(for: d.dtype), shape: d.shape,
                sourceName: d.name, sourceDType: d.dtype,
                load: { try store.tensor(named: d.name) })
        }
    }
}

extension OutputTensor {
    /// The plan for an int8 conversion: tensors the rules pick are quantised, the other
    /// floating-point tensors are stored as ``QuantizationRules/keptDType(for:)`` says.
    public static func plan(
        from store: any TensorStore, rules: QuantizationRules, include: (TensorDescriptor) -> Bool = { _ in true }
    ) -> [OutputTensor] {
        store.tensors.filter(include).map { d in
            var t = OutputTensor(
                name: d.name, dtype: QuantizationRules.keptDType(for: d), shape: d.shape,
                sourceName: d.name, sourceDType: d.dtype,
                load: { try store.tensor(named: d.name) })
            if case .quantize(let layout) = rules.decision(for: d) {
                t.dtype = .i8
                t.quantization = layout
            }
            return t
        }
    }
}

extension OutputTensor {
    /// The plan for a conversion to ggml block types (`.wpk` 1.2): each tensor gets the type
    /// `rules` decide (``GGMLTypeRules/decision(for:)``); block tensors are stored with rows of
    /// `elementCount / firstDimension` values (the engine's rows, whatever `rules.rows` says),
    /// the others in the plain type decided (F16/F32, or their own dtype when not floating point).
    ///
    /// A source tensor already stored as blocks of the decided type (`storedBlocks` gives them)
    /// is copied, never requantised: blocks run over the values in order, so the same blocks
    /// hold any row length that is a whole number of them.
    ///
    /// - Parameters:
    ///   - storedBlocks: for a tensor name, how to fetch the blocks the source stores for it
    ///     (`nil` when it stores none); by default the store's own when it is a ``GGMLTensorStore``.
    public static func plan(
        from store: any TensorStore, ggmlRules rules: GGMLTypeRules,
        storedBlocks: ((String) -> (@Sendable () throws -> GGMLTensorView?)?)? = nil,
        include: (TensorDescriptor) -> Bool = { _ in true }
    ) -> [OutputTensor] {
        var engineRows = rules
        engineRows.rows = .allButFirstDimension
        let blocksOf =
            storedBlocks ?? { name in
                guard let g = store as? any GGMLTensorStore else { return nil }
                return { try g.ggmlTensor(named: name) }
            }
        return store.tensors.filter(include).map { d in
            let decision = engineRows.decision(for: d)
            var t = OutputTensor(
                name: d.name, dtype: d.dtype.isConvertibleFloat ? (decision.type.plainDType ?? .f32) : d.dtype, shape: d.shape,
                sourceName: d.name, sourceDType: d.dtype,
                load: { try store.tensor(named: d.name) })
            if decision.type.isBlockQuantized {
                t.dtype = .u8
                t.ggml = WPKBlockStorage(type: decision.type, rowLength: engineRows.rowLength(of: d.shape), fallbackFrom: decision.fallbackFrom)
                t.blocks = blocksOf(d.name)
            }
            return t
        }
    }

    /// For a plan that keeps dtypes (`--dtype keep`): each tensor the source stores as ggml
    /// blocks is kept as those blocks (copied) when its engine rows (`elementCount / firstDimension`)
    /// are a whole number of them; otherwise it stays the dequantised F32 the plan already says.
    public static func keepingStoredBlocks(
        _ plan: [OutputTensor], storedBlocks: (String) -> (@Sendable () throws -> GGMLTensorView?)?
    ) throws -> [OutputTensor] {
        try plan.map { t in
            guard let fetch = storedBlocks(t.name), let view = try fetch(), view.descriptor.elementCount == t.shape.count else { return t }
            let rowLength = GGMLTypeRules(target: view.type, rows: .allButFirstDimension).rowLength(of: t.shape)
            guard rowLength > 0, rowLength % view.type.blockValues == 0 else { return t }
            var kept = t
            kept.dtype = .u8
            kept.ggml = WPKBlockStorage(type: view.type, rowLength: rowLength)
            kept.blocks = fetch
            return kept
        }
    }
}

/// Streams one tensor into a writer: copies or converts chunk by chunk, hashing what it
/// writes, then lets the kernel drop the source pages it read.
enum TensorEmitter {
    /// Elements converted per step: 256 KiB of f32 source, so the overflow count re-reads it from L2.
    static let chunkElements = 1 << 16

    /// What writing one tensor produced.
    struct Emitted {
        /// XXH64 of the bytes written.
        var checksum: UInt64
        /// Finite source values that became infinite in f16 (0 unless writing f16).
        var float16Overflow: Int
    }

    /// Writes `tensor`.
    static func emit(_ tensor: OutputTensor, to writer: AtomicFileWriter) throws(FormatError) -> Emitted {
        let view = try load(tensor)
        var hasher = XXHash64()
        var overflow = 0
        try view.bytes.withUnsafeBytes { (source) throws(FormatError) in
            overflow = try emit(
                source: source, from: tensor.sourceDType, as: tensor.dtype, count: tensor.shape.count, name: tensor.name, to: writer, hasher: &hasher)
            (view.bytes.owner as? MappedFile)?.adviseDone(with: source)
        }
        return Emitted(checksum: hasher.finalize(), float16Overflow: overflow)
    }

    /// Loads the source of `tensor` and checks it against the plan.
    static func load(_ tensor: OutputTensor) throws(FormatError) -> TensorView {
        let view: TensorView
        do { view = try tensor.load() } catch let error as FormatError {
            throw error.inTensor(tensor.sourceName)
        } catch {
            throw FormatError(.io, "while reading tensor '\(tensor.sourceName)': \(error)", tensor: tensor.sourceName)
        }
        guard view.dtype == tensor.sourceDType, view.shape == tensor.shape else {
            throw FormatError(.tensorInvalidInfo, "tensor '\(tensor.sourceName)' changed while converting", tensor: tensor.sourceName)
        }
        return view
    }

    /// Converts (or copies) `count` elements into `writer`, feeding `hasher`; returns how many
    /// finite values became infinite when the output is f16.
    @discardableResult
    static func emit(
        source: UnsafeRawBufferPointer, from: DType, as dtype: DType, count: Int, name: String,
        to writer: AtomicFileWriter, hasher: inout XXHash64
    ) throws(FormatError) -> Int {
        do {
            if from == dtype {
                var offset = 0
                let step = chunkElements * 4
                while offset < source.count {
                    let piece = UnsafeRawBufferPointer(rebasing: source[offset..<min(source.count, offset + step)])
                    try writer.write(piece)
                    hasher.update(piece)
                    offset += piece.count
                }
                return 0
            }
            guard ElementConversion.canConvert(from: from, to: dtype), let inWidth = from.byteWidth, let outWidth = dtype.byteWidth else {
                throw FormatError(.unsupportedConversion, "cannot convert \(from.name) to \(dtype.name)", tensor: name)
            }
            var start = 0
            var overflow = 0
            while start < count {
                let n = min(chunkElements, count - start)
                let piece = UnsafeRawBufferPointer(rebasing: source[(start * inWidth)..<((start + n) * inWidth)])
                var chunkHash = hasher
                try writer.withUnsafeOutputBuffer(count: n * outWidth) { out in
                    try ElementConversion.convert(piece, from: from, into: out, to: dtype, count: n)
                    chunkHash.update(UnsafeRawBufferPointer(out))
                }
                // The source chunk is still in cache: count what f16 could not hold.
                if dtype == .f16 { overflow += ElementConversion.float16OverflowCount(piece, dtype: from, count: n) }
                hasher = chunkHash
                start += n
            }
            return overflow
        } catch let error as FormatError {
            throw error
        } catch let error as IOError {
            throw FormatError(error)
        } catch {
            throw FormatError(.unsupportedConversion, "\(error)", tensor: name)
        }
    }
}
