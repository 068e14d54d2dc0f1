import CEngineKernels
import Foundation
import Quantization
import TensorCore

/// Reads a network's weights from any ``TensorStore`` as `Float`, one tensor at a time.
///
/// F32 tensors at 4-byte-aligned addresses are handed out in place (zero copy from a mapping);
/// F16, BF16 and F64 tensors, and unaligned F32 ones, are converted into a scratch buffer that
/// is reused for the next tensor, so the whole model is never expanded at once. Int8 tensors of
/// a ``QuantizedTensorStore`` and ggml block tensors (Q4_0…Q6_K, IQ4_NL, …) of a
/// ``GGMLTensorStore`` are dequantised the same way, tile by tile of rows spread over the
/// processors, straight from the store's (mapped) bytes. Names are looked up as `prefix + name`.
///
/// Weights in a file mapping are handed back to the kernel once a layer is done with them
/// (``releasesPagesAfterUse``): the page cache keeps them, so the next pass maps them again
/// with minor faults, but the process's resident set holds only the layers in use, not the
/// whole model.
///
/// Not thread-safe: a provider belongs to one network and is used from one thread at a time.
public final class WeightProvider {
    /// Where the weights come from.
    public let store: any TensorStore
    /// Prepended to every name (`text_model.`, `first_stage_model.`, or empty).
    public let prefix: String
    /// The store, when it can hold int8 tensors.
    private let quantizedStore: (any QuantizedTensorStore)?
    /// The store, when it can hold ggml block tensors.
    private let blockStore: (any GGMLTensorStore)?

    /// Whether tensors read from a file mapping have their pages dropped from the resident set
    /// after use (tensors of at least ``pageReleaseMinimumBytes``). On by default.
    public var releasesPagesAfterUse = true

    /// Smaller tensors stay resident: a system call per bias is not worth a few pages.
    public static let pageReleaseMinimumBytes = 1 << 20

    /// Conversions shared with the other providers of one batch run on several cores (the UNet's
    /// classifier-free-guidance pair): an F16, BF16 or int8 weight is converted to `Float` once
    /// for all of them instead of once per core. Nil: every conversion is private.
    var sharedConversions: SharedConvertedWeights?

    /// Scratch buffers, one per nesting level of ``withFloats(_:shape:_:)``.
    private var scratch = WeightScratch()
    private var depth = 0

    /// Takes its conversion scratch from `buffers` (a ``WorkspaceMemory``'s, kept by its owner
    /// from pass to pass: the UNet's per-core providers are made per step) instead of its own;
    /// only between uses.
    func useScratch(_ buffers: WeightScratch) {
        precondition(depth == 0, "scratch replaced while in use")
        scratch = buffers
    }

    /// - Parameters:
    ///   - store: any tensor store (safetensors, checkpoint, `.wpk`, an in-memory store).
    ///   - prefix: prepended to each weight name.
    public init(store: any TensorStore, prefix: String = "") {
        self.store = store
        self.prefix = prefix
        quantizedStore = store as? any QuantizedTensorStore
        blockStore = store as? any GGMLTensorStore
    }

    /// The packed form of `full` (int8 or ggml blocks), if the store holds it packed.
    private func packed(_ full: String) throws(EngineError) -> PackedWeight? {
        do {
            if let quantizedStore, let q = try quantizedStore.quantizedTensor(named: full) { return PackedWeight(q) }
            if let blockStore, let b = try blockStore.ggmlTensor(named: full) { return PackedWeight(b) }
            return nil
        } catch let error as EngineError {
            throw error
        } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
    }

    /// Whether `prefix + name` is stored packed: as int8 or in a ggml block type.
    public func isQuantized(_ name: String) -> Bool { ((try? packed(prefix + name)) ?? nil) != nil }

    /// Whether any tensor under this provider's prefix is stored as int8 blocks (ours or ggml's
    /// Q8_0): what ``ComputePrecision/int8`` multiplies in integers (a network without any
    /// computes in float).
    public var hasInt8Weights: Bool {
        store.tensors.contains { d in
            guard d.name.hasPrefix(prefix), let weight = (try? packed(d.name)) ?? nil else { return false }
            switch weight.storage {
            case .int8: return true
            case .blocks(let view, _): return view.type == .q8_0
            }
        }
    }

    /// Whether every matrix weight (two or more dimensions, float) under this provider's prefix
    /// is stored as plain BF16 (`convert --dtype bf16`, a bf16 checkpoint): what
    /// ``ComputePrecision/bf16`` multiplies where it is mapped, rounding only the inputs. False
    /// when there are none, or any is stored otherwise (F32, F16, packed).
    public var hasOnlyBF16MatrixWeights: Bool {
        var any = false
        for d in store.tensors where d.name.hasPrefix(prefix) && d.shape.dimensions.count >= 2 && d.dtype.isConvertibleFloat {
            guard d.dtype == .bf16, ((try? packed(d.name)) ?? nil) == nil else { return false }
            any = true
        }
        return any
    }

    /// The ggml block type `prefix + name` is stored in, if any.
    public func blockType(_ name: String) -> GGMLType? {
        guard case .blocks(let view, _)? = ((try? packed(prefix + name)) ?? nil)?.storage else { return nil }
        return view.type
    }

    /// Whether the store has `prefix + name`.
    public func contains(_ name: String) -> Bool { store.descriptor(named: prefix + name) != nil }

    /// The descriptor of `prefix + name`.
    /// - Throws: ``EngineError/Code/missingTensor``.
    public func descriptor(_ name: String) throws(EngineError) -> TensorDescriptor {
        guard let d = store.descriptor(named: prefix + name) else {
            throw EngineError(.missingTensor, "weight missing from the \(store.formatName) store", tensorName: prefix + name)
        }
        return d
    }

    /// The shape of `prefix + name`.
    public func shape(_ name: String) throws(EngineError) -> [Int] { try descriptor(name).shape.dimensions }

    /// Calls `body` with the tensor's values as `Float`; the pointer must not escape.
    ///
    /// - Parameter shape: when given, the tensor must have exactly this shape.
    /// - Throws: ``EngineError`` for a missing tensor, another shape, or a dtype that is not
    ///   a float type; errors from `body` pass through.
    func withFloats<R>(_ name: String, shape expected: [Int]? = nil, _ body: (UnsafePointer<Float>) throws -> R) throws -> R {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        if let expected, descriptor.shape.dimensions != expected {
            throw EngineError(.shapeMismatch, "weight has shape \(descriptor.shape), expected \(Shape(expected))", tensorName: full)
        }
        guard [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            throw EngineError(
                .unsupportedDType, "weight is \(descriptor.dtype.name); the engine computes with F32, F16, BF16 or F64 weights", tensorName: full)
        }
        if let q = try packed(full) {
            let count = q.rows * q.rowLength
            guard count > 0 else {
                let empty = [Float](repeating: 0, count: 1)
                return try empty.withUnsafeBufferPointer { try body($0.baseAddress!) }
            }
            if let shared = sharedConversions,
                let result = try shared.withConverted(
                    full, count: count, unit: q.rowLength,
                    convert: { range, out throws(EngineError) in
                        try q.dequantize(rows: (range.lowerBound / q.rowLength)..<(range.upperBound / q.rowLength), into: out, name: full)
                    }, { p in try body(p) })
            {
                release(q.bytes)
                return result
            }
            let buffer = takeScratch(count)
            defer { depth -= 1 }
            try q.dequantize(rows: 0..<q.rows, into: buffer.base, name: full)
            release(q.bytes)
            return try body(buffer.base)
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        let count = descriptor.elementCount
        defer { release(view.bytes) }
        return try view.bytes.withUnsafeBytes { raw throws -> R in
            guard let base = raw.baseAddress, count > 0 else {
                let empty = [Float](repeating: 0, count: 1)
                return try empty.withUnsafeBufferPointer { try body($0.baseAddress!) }
            }
            if descriptor.dtype == .f32, Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
                return try body(base.assumingMemoryBound(to: Float.self))
            }
            if let shared = sharedConversions, let width = descriptor.dtype.byteWidth,
                let result = try shared.withConverted(
                    full, count: count, unit: 1,
                    convert: { range, out throws(EngineError) in
                        let bytes = UnsafeRawBufferPointer(rebasing: raw[(range.lowerBound * width)..<(range.upperBound * width)])
                        try Self.widen(bytes, dtype: descriptor.dtype, count: range.count, into: out, name: full)
                    }, { p in try body(p) })
            {
                return result
            }
            let buffer = takeScratch(count)
            defer { depth -= 1 }
            try Self.widen(raw, dtype: descriptor.dtype, count: count, into: buffer.base, name: full)
            return try body(buffer.base)
        }
    }

    /// The rows per block ``withRowBlocks(_:rowsPerBlock:_:)`` should use for `name` so that a
    /// converted block holds at most `scratchFloats` floats: every row when the tensor is F32
    /// (read in place, no scratch), else as many rows as fit (at least one).
    func rowsPerBlock(_ name: String, scratchFloats: Int) throws -> Int {
        let descriptor = try self.descriptor(name)
        let rows = max(1, descriptor.shape.dimensions.first ?? 1)
        if descriptor.dtype == .f32, try packed(prefix + name) == nil { return rows }
        let rowLength = max(1, descriptor.elementCount / rows)
        return max(1, min(rows, scratchFloats / rowLength))
    }

    /// Calls `body` with the tensor as consecutive blocks of at most `rowsPerBlock` rows of its
    /// first dimension (the output channels of a linear or convolution weight), in order, each
    /// as `Float`: F32 in place; F16, BF16 and F64 converted, and int8 and ggml blocks
    /// dequantised, block by block into one scratch of `rowsPerBlock` rows, so a quantised or
    /// half-precision model is never expanded a whole tensor at a time (a block tensor whose
    /// stored rows straddle the first dimension's is the one exception: it is decoded whole).
    /// The pointer must not escape.
    ///
    /// A weight read whole (F32 in place, or a copy converted once for several cores) comes in
    /// blocks of `wholeRowsPerBlock` rows instead: the product's own limit (a Winograd
    /// convolution's transformed weights), not the scratch's, so that an F16 or quantised
    /// weight costs the layer no more products (and im2col lowerings) than an F32 one.
    /// - Throws: as ``withFloats(_:shape:_:)``.
    func withRowBlocks(
        _ name: String, rowsPerBlock requested: Int, wholeRowsPerBlock: Int = .max, _ body: (Range<Int>, UnsafePointer<Float>) throws -> Void
    ) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        let rows = descriptor.shape.dimensions.first ?? 1
        let rowLength = rows == 0 ? 0 : descriptor.elementCount / rows
        guard descriptor.shape.rank >= 1, rows > 0, rowLength > 0, requested < rows else {
            return try withFloats(name) { try body(0..<rows, $0) }
        }
        let per = max(1, requested), whole = max(1, min(rows, wholeRowsPerBlock))
        try withRowSource(name) { (inPlace, decode) throws in
            if let inPlace {
                try Self.forEachBlock(rows: rows, size: whole) { block in try body(block, inPlace + block.lowerBound * rowLength) }
                return
            }
            try convertedRowBlocks(full, rows: rows, rowLength: rowLength, per: per, whole: whole, body, convert: decode)
        }
    }

    /// ``withRowBlocks(_:rowsPerBlock:wholeRowsPerBlock:_:)`` for a weight that needs
    /// converting: `convert(rows, out)` converts those rows into `out`.
    ///
    /// Shared with the other cores' providers when there are any: a tensor within the sharing
    /// budget is converted once whole (or, when the copies held leave no room, privately by
    /// each core); a larger one is shared block by block of `per` rows, each block converted
    /// once for all cores. Which of the two is decided by the tensor's size alone, so every
    /// core makes the same choice. Without sharing, each block is converted into one scratch.
    private func convertedRowBlocks(
        _ full: String, rows: Int, rowLength: Int, per: Int, whole: Int,
        _ body: (Range<Int>, UnsafePointer<Float>) throws -> Void,
        convert: (Range<Int>, UnsafeMutablePointer<Float>) throws(EngineError) -> Void
    ) throws {
        func blocks(of size: Int, _ each: (Range<Int>) throws -> Void) rethrows { try Self.forEachBlock(rows: rows, size: size, each) }
        var scratch: FloatTensor?
        defer { if scratch != nil { depth -= 1 } }
        func privately(_ block: Range<Int>) throws {
            if scratch == nil { scratch = takeScratch(per * rowLength) }
            try convert(block, scratch!.base)
            try body(block, scratch!.base)
        }
        if let shared = sharedConversions {
            let count = rows * rowLength
            if count <= shared.budgetFloats {
                if try shared.withConverted(
                    full, count: count, unit: rowLength,
                    convert: { range, out throws(EngineError) in
                        try convert((range.lowerBound / rowLength)..<(range.upperBound / rowLength), out)
                    }, { floats in try blocks(of: whole) { block in try body(block, floats + block.lowerBound * rowLength) } }) != nil
                {
                    return
                }
            } else {
                try blocks(of: per) { block in
                    if try shared.withConverted(
                        "\(full)#\(block.lowerBound)", count: block.count * rowLength, unit: rowLength,
                        convert: { range, out throws(EngineError) in
                            try convert((block.lowerBound + range.lowerBound / rowLength)..<(block.lowerBound + range.upperBound / rowLength), out)
                        }, { floats in try body(block, floats) }) == nil
                    {
                        try privately(block)
                    }
                }
                return
            }
        }
        try blocks(of: per) { block in try privately(block) }
    }

    /// Calls `body` with the Winograd-transformed weights (``Convolution/transformWeights(_:outChannels:inChannels:into:stride:)``)
    /// of the 3x3 convolution weight `name` (`[outC, inC, 3, 3]`), in consecutive blocks of at
    /// most `rowsPerBlock` output channels: `body(channels, u, stride)` gets the 36 matrices of
    /// those channels `stride` elements apart.
    ///
    /// With ``sharedConversions``, each block is transformed once for all the cores, straight
    /// from the stored weight (F32 in place; F16, BF16, int8 and ggml blocks decoded a few rows
    /// at a time into scratch first), so an F16 or quantised weight is never expanded whole and
    /// no core repeats the transform, which writes four times the weight's floats (40 % of a
    /// 640 -> 640 convolution at 32x32 on one core). A block the shared budget cannot hold is
    /// transformed by each core into its own scratch.
    ///
    /// With `roundedToBF16` (for a thread computing in bf16) a shared block is also rounded to
    /// bfloat16 once, as the products would round it on each core, and `body` gets it as a
    /// ``GEMM/Operand/bf16(_:)`` operand; a private block stays floats.
    /// - Throws: as ``withFloats(_:shape:_:)``.
    /// - Parameter rowsPerChunk: output channels decoded and transformed at a time (a chunk
    ///   is what one core does while the other may do the next); by default 1 MiB of floats.
    func withWinogradWeights(
        _ name: String, outChannels: Int, inChannels: Int, rowsPerBlock: Int, rowsPerChunk: Int? = nil, roundedToBF16: Bool = false,
        _ body: (Range<Int>, GEMM.Operand, Int) throws -> Void
    ) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        let rowLength = inChannels * 9
        guard descriptor.shape.dimensions == [outChannels, inChannels, 3, 3] else {
            throw EngineError(
                .shapeMismatch, "weight has shape \(descriptor.shape), expected \(Shape([outChannels, inChannels, 3, 3]))", tensorName: full)
        }
        guard outChannels > 0, inChannels > 0 else { return }
        let decodeRows = max(1, rowsPerChunk ?? (1 << 18) / rowLength)
        try withRowSource(name) { (inPlace, decode) throws in
            try Self.forEachBlock(rows: outChannels, size: max(1, rowsPerBlock)) { block in
                let stride = Convolution.matrixStride(block.count * inChannels)
                let count = 36 * stride
                // Transforms rows `rows` (of the whole weight) into 36 matrices `stride` apart whose
                // first row is at `target`.
                func transform(_ rows: Range<Int>, into target: UnsafeMutablePointer<Float>, stride: Int) throws(EngineError) {
                    if let inPlace {
                        Convolution.transformWeights(
                            inPlace + rows.lowerBound * rowLength, outChannels: rows.count, inChannels: inChannels, into: target, stride: stride)
                        return
                    }
                    let decoded = takeScratch(rows.count * rowLength)
                    defer { depth -= 1 }
                    try decode(rows, decoded.base)
                    Convolution.transformWeights(decoded.base, outChannels: rows.count, inChannels: inChannels, into: target, stride: stride)
                }
                if let shared = sharedConversions, roundedToBF16 {
                    // The block's 36 matrices as bfloat16, in half as many floats.
                    if try shared.withShared(
                        "\(full)#winograd-bf16#\(block.lowerBound)", count: (count + 1) / 2, units: block.count, unitsPerChunk: decodeRows,
                        produce: { units, base throws(EngineError) in
                            let rows = (block.lowerBound + units.lowerBound)..<(block.lowerBound + units.upperBound)
                            let chunkStride = Convolution.matrixStride(rows.count * inChannels)
                            let floats = takeScratch(36 * chunkStride)
                            defer { depth -= 1 }
                            // Transformed as floats into scratch, then rounded into these rows'
                            // columns of the 36 shared matrices.
                            try transform(rows, into: floats.base, stride: chunkStride)
                            let target = UnsafeMutableRawPointer(base).assumingMemoryBound(to: UInt16.self) + units.lowerBound * inChannels
                            GEMM.roundToBF16(
                                floats.base, rows: 36, columns: rows.count * inChannels, ld: chunkStride, into: target, targetLd: stride)
                        }, { u in try body(block, .bf16(UnsafeRawPointer(u).assumingMemoryBound(to: UInt16.self)), stride) }) != nil
                    {
                        return
                    }
                } else if let shared = sharedConversions,
                    try shared.withShared(
                        "\(full)#winograd#\(block.lowerBound)", count: count, units: block.count, unitsPerChunk: decodeRows,
                        produce: { units, base throws(EngineError) in
                            try transform(
                                (block.lowerBound + units.lowerBound)..<(block.lowerBound + units.upperBound),
                                into: base + units.lowerBound * inChannels,
                                stride: stride)
                        }, { u in try body(block, .floats(u), stride) }) != nil
                {
                    return
                }
                let u = takeScratch(count)
                defer { depth -= 1 }
                try Self.forEachBlock(rows: block.count, size: decodeRows) { rows in
                    try transform(
                        (block.lowerBound + rows.lowerBound)..<(block.lowerBound + rows.upperBound), into: u.base + rows.lowerBound * inChannels,
                        stride: stride)
                }
                try body(block, .floats(u.base), stride)
            }
        }
    }

    /// With ``sharedConversions``: calls `body` with the whole weight `name` rounded to
    /// bfloat16 (nearest even, as the bf16 products round their operands), made once for all
    /// the cores straight from the stored weight (F32 in place; F16, BF16, int8 and ggml rows
    /// decoded a few at a time into scratch first), and returns true. Returns false without
    /// calling anything when it is not shared (no sharing, too small, no room): the caller then
    /// hands the products float weights, which they round themselves on each core. For a
    /// thread computing in bf16 (``GEMM/withPrecision(_:_:)``).
    /// - Throws: as ``withFloats(_:shape:_:)``.
    ///
    /// A weight stored as BF16 (and not packed) needs no copy: `body` reads it where it is
    /// mapped, on every core.
    func withSharedBF16Weight(_ name: String, _ body: (UnsafePointer<UInt16>) throws -> Void) throws -> Bool {
        guard let shared = sharedConversions else { return false }
        let full = prefix + name
        if try withMappedHalves(name, stored: .bf16, body) { return true }
        let descriptor = try self.descriptor(name)
        let rows = descriptor.shape.dimensions.first ?? 1
        let count = descriptor.elementCount
        guard rows > 0, count > 0, count % rows == 0, (count + 1) / 2 >= shared.minimumFloats else { return false }
        let rowLength = count / rows
        let chunkRows = max(1, (1 << 18) / rowLength)
        var made = false
        try withRowSource(name) { (inPlace, decode) throws in
            made =
                try shared.withShared(
                    "\(full)#bf16", count: (count + 1) / 2, units: rows, unitsPerChunk: chunkRows,
                    produce: { units, base throws(EngineError) in
                        let target = UnsafeMutableRawPointer(base).assumingMemoryBound(to: UInt16.self) + units.lowerBound * rowLength
                        if let inPlace {
                            GEMM.roundToBF16(
                                inPlace + units.lowerBound * rowLength, rows: units.count, columns: rowLength, ld: rowLength, into: target,
                                targetLd: rowLength)
                            return
                        }
                        let decoded = takeScratch(units.count * rowLength)
                        defer { depth -= 1 }
                        try decode(units, decoded.base)
                        GEMM.roundToBF16(decoded.base, rows: units.count, columns: rowLength, ld: rowLength, into: target, targetLd: rowLength)
                    }, { p in try body(UnsafeRawPointer(p).assumingMemoryBound(to: UInt16.self)) }) != nil
        }
        return made
    }

    /// Calls `body` with the weight `name` as the IEEE half values it is stored as, where they are
    /// mapped, and returns true; returns false without calling anything when it is stored
    /// otherwise (any other dtype, packed, or not 2-byte aligned). For products that read F16
    /// weights themselves (``GEMM/multiplyF16Weight(m:n:k:a:lda:b:ldb:c:ldc:)``), every core
    /// reading the same mapped bytes instead of a converted copy.
    /// - Throws: as ``withFloats(_:shape:_:)``.
    func withF16Weight(_ name: String, _ body: (UnsafePointer<UInt16>) throws -> Void) throws -> Bool {
        try withMappedHalves(name, stored: .f16, body)
    }

    /// Whether `name` is stored as unpacked F16 values: the weights whose products may run in
    /// split bfloat16 (``GEMM/multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``), decoded
    /// or transformed first where the product needs floats (Winograd).
    func isStoredAsF16(_ name: String) throws -> Bool {
        try descriptor(name).dtype == .f16 && packed(prefix + name) == nil
    }

    /// Calls `body` with the 16-bit values of `name` where they are mapped, and returns true, when
    /// it is stored unpacked as `dtype` (F16 or BF16), whole and 2-byte aligned; returns false
    /// without calling anything otherwise.
    private func withMappedHalves(_ name: String, stored dtype: DType, _ body: (UnsafePointer<UInt16>) throws -> Void) throws -> Bool {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        guard descriptor.dtype == dtype, try packed(full) == nil else { return false }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        defer { release(view.bytes) }
        return try view.bytes.withUnsafeBytes { raw throws -> Bool in
            guard let base = raw.baseAddress, raw.count >= descriptor.elementCount * 2,
                Int(bitPattern: base) % MemoryLayout<UInt16>.alignment == 0
            else { return false }
            try body(base.assumingMemoryBound(to: UInt16.self))
            return true
        }
    }

    /// Calls `body` with the weight `name` as int8 blocks the int8 products read where they are
    /// mapped (``Int8Weight``), and returns true; returns false without calling anything when
    /// it is not stored so: not int8 blocks of 32 (our int8, or ggml's Q8_0 with its rows the
    /// engine's), or rows not a multiple of 32 long. The per-block figures the product needs
    /// (float scales, sums) are made once for all the cores with ``sharedConversions``, else
    /// into scratch. For a thread computing in ``ComputePrecision/int8``.
    func withInt8Weight(_ name: String, _ body: (Int8Weight) throws -> Void) throws -> Bool {
        let full = prefix + name
        guard let packed = try packed(full) else { return false }
        defer { release(packed.bytes) }
        let rows = packed.rows, k = packed.rowLength
        let rowsExpected = try descriptor(name).shape.dimensions.first ?? 1
        guard k % 32 == 0, k > 0, rows == rowsExpected, rows > 0 else { return false }
        let blocks = k / 32
        // Where the values start, bytes per row and per block, and how to make the figures.
        let valueOffset: Int, rowBytes: Int, blockBytes: Int, byteCount: Int
        let figures: (UnsafeRawPointer, Range<Int>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Int32>) -> Int32
        switch packed.storage {
        case .int8(let q):
            let layout = q.layout
            guard layout.blockSize == 32 else { return false }
            (valueOffset, rowBytes, blockBytes, byteCount) = (0, k, 32, layout.byteCount)
            figures = { base, units, scales, corrections in
                wp_q8_weight_aux(
                    base.assumingMemoryBound(to: Int8.self) + units.lowerBound * k,
                    base + layout.scaleOffset + units.lowerBound * layout.blocksPerRow * 2,
                    Int64(units.count), Int64(k), Int64(layout.blocksPerRow), scales, corrections)
            }
        case .blocks(let view, let storedRowsPerRow):
            guard view.type == .q8_0, storedRowsPerRow == 1 else { return false }
            let stride = view.rowBytes
            (valueOffset, rowBytes, blockBytes, byteCount) = (2, stride, 34, rows * stride)
            figures = { base, units, scales, corrections in
                wp_q8_weight_aux_q8_0(base + units.lowerBound * stride, Int64(units.count), Int64(k), Int64(stride), scales, corrections)
            }
        }
        let (count, overflow) = rows.multipliedReportingOverflow(by: 2 * blocks)
        guard !overflow else { return false }
        try packed.bytes.withUnsafeBytes { raw throws in
            guard raw.count >= byteCount, let base = raw.baseAddress else {
                throw EngineError(.unsupportedDType, "int8 weight is shorter than its layout", tensorName: full)
            }
            func aux(_ units: Range<Int>, _ target: UnsafeMutablePointer<Float>) throws(EngineError) {
                let corrections = UnsafeMutableRawPointer(target + rows * blocks).assumingMemoryBound(to: Int32.self)
                let status = figures(base, units, target + units.lowerBound * blocks, corrections + units.lowerBound * blocks)
                guard status == 0 else { throw EngineError(.invalidInput, "int8 products are not available here", tensorName: full) }
            }
            func run(_ made: UnsafePointer<Float>) throws {
                try body(
                    Int8Weight(
                        values: (base + valueOffset).assumingMemoryBound(to: Int8.self), rows: rows, k: k, rowBytes: rowBytes,
                        blockBytes: blockBytes, scales: made,
                        corrections: UnsafeRawPointer(made + rows * blocks).assumingMemoryBound(to: Int32.self)))
            }
            if let shared = sharedConversions,
                try shared.withShared(
                    "\(full)#q8", count: count, units: rows, unitsPerChunk: max(1, (1 << 16) / blocks),
                    produce: { units, base throws(EngineError) in try aux(units, base) }, run) != nil
            {
                return
            }
            let scratch = takeScratch(count)
            defer { depth -= 1 }
            try aux(0..<rows, scratch.base)
            try run(scratch.base)
        }
        return true
    }

    /// Calls `body` with the weight `name` as rows of its first dimension: `inPlace` when it is
    /// F32 at an aligned address in its store, else `decode(rows, out)`, which writes those
    /// rows as `Float` (F16, BF16 and F64 widened, int8 and ggml blocks dequantised, on this
    /// thread's workers). Mapped pages are released afterwards as ``withFloats(_:shape:_:)`` does.
    private func withRowSource(
        _ name: String,
        _ body: (UnsafePointer<Float>?, (Range<Int>, UnsafeMutablePointer<Float>) throws(EngineError) -> Void) throws -> Void
    ) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        guard [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            throw EngineError(
                .unsupportedDType, "weight is \(descriptor.dtype.name); the engine computes with F32, F16, BF16 or F64 weights", tensorName: full)
        }
        let rows = descriptor.shape.dimensions.first ?? 1
        let rowLength = rows == 0 ? 0 : descriptor.elementCount / rows
        if let q = try packed(full) {
            if q.rows == rows, q.rowLength == rowLength {
                try body(nil) { (range, out) throws(EngineError) in try q.dequantize(rows: range, into: out, name: full) }
            } else {
                // Stored rows that are not the weight's: decode it whole once.
                try withFloats(name) { whole in try body(whole, { _, _ throws(EngineError) in }) }
            }
            release(q.bytes)
            return
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        defer { release(view.bytes) }
        try view.bytes.withUnsafeBytes { raw throws in
            guard let base = raw.baseAddress, let width = descriptor.dtype.byteWidth else { return }
            if descriptor.dtype == .f32, Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
                try body(base.assumingMemoryBound(to: Float.self), { _, _ throws(EngineError) in })
                return
            }
            try body(nil) { (range, out) throws(EngineError) in
                let bytes = UnsafeRawBufferPointer(rebasing: raw[(range.lowerBound * rowLength * width)..<(range.upperBound * rowLength * width)])
                try Self.widen(bytes, dtype: descriptor.dtype, count: range.count * rowLength, into: out, name: full)
            }
        }
    }

    /// Calls `each` with `0..<rows` cut into consecutive blocks of `size` rows (the last shorter).
    private static func forEachBlock(rows: Int, size: Int, _ each: (Range<Int>) throws -> Void) rethrows {
        var start = 0
        while start < rows {
            let block = start..<min(rows, start + size)
            try each(block)
            start = block.upperBound
        }
    }

    /// The tensor's values as a new array (for small tensors: biases, norms).
    func floats(_ name: String, shape expected: [Int]? = nil) throws -> [Float] {
        try withFloats(name, shape: expected) { p in
            let n = try descriptor(name).elementCount
            return Array(UnsafeBufferPointer(start: p, count: n))
        }
    }

    /// Copies rows `indices` of a `[rows, columns]` tensor (an embedding table) into `output`,
    /// converting only those rows.
    func gatherRows(_ name: String, indices: [Int], into output: UnsafeMutablePointer<Float>) throws {
        let full = prefix + name
        let descriptor = try self.descriptor(name)
        guard descriptor.shape.rank == 2 else {
            throw EngineError(.shapeMismatch, "embedding table has shape \(descriptor.shape), expected two dimensions", tensorName: full)
        }
        let rows = descriptor.shape[0], columns = descriptor.shape[1]
        if let q = try packed(full) {
            guard q.rows == rows, q.rowLength == columns else {
                // Stored rows that are not the table's rows: decode it whole, then gather.
                return try withFloats(name) { table in
                    for (i, index) in indices.enumerated() {
                        guard index >= 0 && index < rows else {
                            throw EngineError(.invalidInput, "token id \(index) outside the vocabulary of \(rows)", tensorName: full)
                        }
                        (output + i * columns).update(from: table + index * columns, count: columns)
                    }
                }
            }
            for (i, index) in indices.enumerated() {
                guard index >= 0 && index < rows else {
                    throw EngineError(.invalidInput, "token id \(index) outside the vocabulary of \(rows)", tensorName: full)
                }
                try q.dequantize(rows: index..<(index + 1), into: output + i * columns, name: full, parallel: false)
            }
            return
        }
        guard let width = descriptor.dtype.byteWidth, [.f32, .f16, .bf16, .f64].contains(descriptor.dtype) else {
            throw EngineError(.unsupportedDType, "embedding table is \(descriptor.dtype.name)", tensorName: full)
        }
        let view: TensorView
        do { view = try store.tensor(named: full) } catch {
            throw EngineError(.missingTensor, "cannot read weight", tensorName: full, underlying: error)
        }
        try view.bytes.withUnsafeBytes { raw throws in
            for (i, index) in indices.enumerated() {
                guard index >= 0 && index < rows else {
                    throw EngineError(.invalidInput, "token id \(index) outside the vocabulary of \(rows)", tensorName: full)
                }
                let slice = UnsafeRawBufferPointer(rebasing: raw[(index * columns * width)..<((index + 1) * columns * width)])
                try Self.widen(slice, dtype: descriptor.dtype, count: columns, into: output + i * columns, name: full)
            }
        }
    }

    private func release(_ bytes: TensorBytes) {
        if releasesPagesAfterUse && bytes.count >= Self.pageReleaseMinimumBytes { bytes.releasePages() }
    }

    private func takeScratch(_ count: Int) -> FloatTensor {
        if depth == scratch.tensors.count { scratch.tensors.append(FloatTensor(shape: [count])) }
        if scratch.tensors[depth].capacity < count { scratch.tensors[depth] = FloatTensor(shape: [count]) }
        depth += 1
        return scratch.tensors[depth - 1]
    }

    /// Converts in tiles spread over the processors.
    private static func widen(
        _ raw: UnsafeRawBufferPointer, dtype: DType, count: Int, into output: UnsafeMutablePointer<Float>, name: String
    ) throws(EngineError) {
        guard let width = dtype.byteWidth else {
            throw EngineError(.unsupportedDType, "cannot read \(dtype.name)", tensorName: name)
        }
        let out = SharedPointer(output)
        let failed = UnsafeSendableBox(UnsafeMutablePointer<Bool>.allocate(capacity: 1))
        failed.value.initialize(to: false)
        defer { failed.value.deallocate() }
        Parallel.forRanges(count, grain: 65_536) { r in
            let source = UnsafeRawBufferPointer(rebasing: raw[(r.lowerBound * width)..<(r.upperBound * width)])
            switch dtype {
            // The selected kernel family's conversions (F16C where the processor has it).
            case .f16: wp_f16_to_f32(source.baseAddress!, out.pointer + r.lowerBound, r.count)
            case .bf16: wp_bf16_to_f32(source.baseAddress!, out.pointer + r.lowerBound, r.count)
            default:
                let target = UnsafeMutableBufferPointer(start: out.pointer + r.lowerBound, count: r.count)
                do { try ElementConversion.widen(source, dtype: dtype, into: target, count: r.count) } catch { failed.value.pointee = true }
            }
        }
        if failed.value.pointee {
            throw EngineError(.unsupportedDType, "cannot convert \(dtype.name) weights to F32", tensorName: name)
        }
    }
}

/// An int8 block weight as the int8 products read it: `rows` rows of `k` values (`k` a multiple
/// of 32) where they are mapped, `rowBytes` apart, block b's 32 values at `b · blockBytes` in a
/// row (32 for our int8 blocks, 34 for ggml's Q8_0, whose scales sit between them), and per
/// block its scale as float and 128 × the sum of its values (`rows · k / 32` each, see
/// `wp_q8_weight_aux`).
struct Int8Weight {
    let values: UnsafePointer<Int8>
    let rows: Int, k: Int
    let rowBytes: Int, blockBytes: Int
    let scales: UnsafePointer<Float>
    let corrections: UnsafePointer<Int32>
}

/// A weight stored packed, as int8 blocks (``QuantizedTensorView``) or ggml blocks
/// (``GGMLTensorView``), seen as the engine's rows: the first dimension (a linear layer's or a
/// convolution's output channels), each `rowLength` values long.
struct PackedWeight: Sendable {
    enum Storage {
        case int8(QuantizedTensorView)
        /// The blocks and the stored (ggml) rows per engine row.
        case blocks(GGMLTensorView, storedRowsPerRow: Int)
    }
    let storage: Storage
    /// Engine rows, and values per engine row. When a block tensor's stored rows do not divide
    /// the engine's (a tensor stored reshaped), these are the stored rows instead, and callers
    /// that need the engine's rows decode the tensor whole.
    let rows: Int, rowLength: Int

    init(_ q: QuantizedTensorView) {
        storage = .int8(q)
        rows = q.layout.rows
        rowLength = q.layout.rowLength
    }

    init(_ view: GGMLTensorView) {
        let count = view.descriptor.elementCount
        let first = view.descriptor.shape.dimensions.first ?? 1
        let engineRowLength = first > 0 ? count / first : 0
        if view.rowLength > 0, engineRowLength > 0, engineRowLength % view.rowLength == 0 {
            storage = .blocks(view, storedRowsPerRow: engineRowLength / view.rowLength)
            rows = first
            rowLength = engineRowLength
        } else {
            storage = .blocks(view, storedRowsPerRow: 1)
            rows = view.rows
            rowLength = view.rowLength
        }
    }

    var bytes: TensorBytes {
        switch storage {
        case .int8(let q): q.bytes
        case .blocks(let b, _): b.bytes
        }
    }

    /// Decodes rows `rows` into `output` (`rows.count · rowLength` floats), in tiles of rows
    /// spread over the processors unless `parallel` is false.
    func dequantize(rows: Range<Int>, into output: UnsafeMutablePointer<Float>, name: String, parallel: Bool = true) throws(EngineError) {
        guard rows.lowerBound >= 0, rows.upperBound <= self.rows else {
            throw EngineError(.unsupportedDType, "rows \(rows) outside the \(self.rows) of the packed weight", tensorName: name)
        }
        let out = SharedPointer(output)
        let rowLength = self.rowLength
        let grain = parallel ? max(1, 65_536 / max(rowLength, 1)) : max(rows.count, 1)
        switch storage {
        case .int8(let q):
            let layout = q.layout
            try q.bytes.withUnsafeBytes { (raw) throws(EngineError) in
                guard raw.count >= layout.byteCount, let base = raw.baseAddress else {
                    throw EngineError(.unsupportedDType, "int8 weight is shorter than its layout", tensorName: name)
                }
                let payload = base.assumingMemoryBound(to: Int8.self), scales = base + layout.scaleOffset
                let shared = UnsafeSendableBox((payload, scales))
                Parallel.forRanges(rows.count, grain: grain) { r in
                    let tile = (rows.lowerBound + r.lowerBound)..<(rows.lowerBound + r.upperBound)
                    wp_dequantize_int8(
                        shared.value.0, shared.value.1, layout.rowLength, layout.blockSize, layout.blocksPerRow,
                        tile.lowerBound, tile.count, out.pointer + r.lowerBound * layout.rowLength)
                }
            }
        case .blocks(let view, let k) where wp_ggml_decodes(Int32(view.type.rawValue)) != 0:
            // The selected kernel family's decoders (CEngineKernels/ggml.c): the same bits as
            // `GGMLTensorView.dequantize`, vectorised.
            let rowBytes = view.rowBytes, blocksPerRow = view.rowLength / view.type.blockValues, code = Int32(view.type.rawValue)
            try view.bytes.withUnsafeBytes { (raw) throws(EngineError) in
                guard let base = raw.baseAddress, raw.count >= view.rows * rowBytes, rows.upperBound * k <= view.rows else {
                    throw EngineError(.unsupportedDType, "\(view.type.name) weight is shorter than its rows", tensorName: name)
                }
                let source = UnsafeSendableBox(base)
                Parallel.forRanges(rows.count, grain: grain) { r in
                    let first = (rows.lowerBound + r.lowerBound) * k, count = r.count * k
                    _ = wp_dequantize_ggml(code, source.value + first * rowBytes, count * blocksPerRow, out.pointer + r.lowerBound * rowLength)
                }
            }
        case .blocks(let view, let k):
            let failure = Locked<QuantizationError?>(nil)
            Parallel.forRanges(rows.count, grain: grain) { r in
                let tile = (rows.lowerBound + r.lowerBound) * k..<(rows.lowerBound + r.upperBound) * k
                do throws(QuantizationError) { try view.dequantize(rows: tile, into: out.pointer + r.lowerBound * rowLength) } catch {
                    failure.withLock { $0 = $0 ?? error }
                }
            }
            if let error = failure.withLock({ $0 }) {
                throw EngineError(.unsupportedDType, "cannot decode \(view.type.name) blocks", tensorName: name, underlying: error)
            }
        }
    }
}

/// `Float` copies of converted weights shared by the providers of one batch run on several
/// cores (see ``WeightProvider/sharedConversions``): the first provider to need a tensor starts
/// converting it whole, in chunks; a provider that arrives while chunks remain converts some of
/// them too (so both cores share the work instead of one waiting), then waits for the rest; all
/// read the same copy, which is freed once each of `consumers` providers has used it. Copies held
/// at once stay within `budgetFloats`; a tensor that would exceed it is converted privately,
/// block by block, as without sharing, and so is it by every provider that comes to it later
/// (a copy made for the late ones would wait for a provider that has already passed, and stay
/// held to the end of the run). Tensors smaller than `minimumFloats` are not shared
/// (converting them is cheaper than coordinating).
///
/// The same machinery (``withShared(_:count:units:unitsPerChunk:produce:_:)``) holds the other
/// copies the cores make once for all of them: Winograd-transformed weights
/// (``WeightProvider/withWinogradWeights(_:outChannels:inChannels:rowsPerBlock:rowsPerChunk:roundedToBF16:_:)``)
/// and, under `--compute bf16`, weights rounded to bfloat16
/// (``WeightProvider/withSharedBF16Weight(_:_:)``), each under a name of its own.
final class SharedConvertedWeights: @unchecked Sendable {
    let consumers: Int
    let budgetFloats: Int
    let minimumFloats: Int
    /// Floats per conversion chunk (rounded down to whole units, at least one unit).
    let chunkFloats: Int

    private final class Entry {
        /// Where the copy lives in the arena.
        let offset: Int
        let count: Int, units: Int, unitsPerChunk: Int, chunks: Int
        var nextChunk = 0, finishedChunks = 0
        var failed = false
        var remaining: Int
        var ready: Bool { finishedChunks == chunks }
        init(offset: Int, count: Int, units: Int, unitsPerChunk: Int, consumers: Int) {
            self.offset = offset
            self.count = count
            self.units = units
            self.unitsPerChunk = max(1, unitsPerChunk)
            chunks = (units + self.unitsPerChunk - 1) / self.unitsPerChunk
            remaining = consumers
        }
    }

    private let condition = NSCondition()
    private var entries: [String: Entry] = [:]
    /// Tensors some provider converted privately for want of budget, with how many did.
    private var declined: [String: Int] = [:]
    private var heldFloats = 0, peakHeldFloats = 0
    /// Every copy lives in one buffer of `budgetFloats`, placed first-fit between the copies
    /// held (`placed`, by offset). A buffer per copy would have the kernel map and zero every
    /// page again for each tensor (a UNet pass converts about 3.4 GB of SD 1.5 weights); the
    /// arena's pages are touched once, and the UNet keeps its arena from step to step.
    let arena: FloatTensor
    private var placed: [(offset: Int, count: Int)] = []
    private var arenaHighWater = 0

    /// Tensors whose conversion a provider started, and tensors a provider used without
    /// starting it (for tests; read when no provider is using the cache).
    private(set) var conversions = 0, reuses = 0
    /// Floats held by converted copies now.
    var floatsHeld: Int { condition.lock(); defer { condition.unlock() }; return heldFloats }
    /// The most floats held by converted copies at once.
    var peakFloatsHeld: Int { condition.lock(); defer { condition.unlock() }; return peakHeldFloats }
    /// Floats of the arena ever used (its highest end): the memory the copies cost.
    var floatsAllocated: Int { condition.lock(); defer { condition.unlock() }; return arenaHighWater }

    /// The first offset with `count` free floats in the arena, placed; nil when none has.
    /// Called with the lock held.
    private func place(_ count: Int) -> Int? {
        var start = 0
        for (i, range) in placed.enumerated() {
            if range.offset - start >= count {
                placed.insert((start, count), at: i)
                arenaHighWater = max(arenaHighWater, start + count)
                return start
            }
            start = range.offset + range.count
        }
        guard budgetFloats - start >= count else { return nil }
        placed.append((start, count))
        arenaHighWater = max(arenaHighWater, start + count)
        return start
    }

    private func unplace(_ offset: Int) {
        placed.removeAll { $0.offset == offset }
    }

    /// - Parameters:
    ///   - arena: a buffer of at least `budgetFloats` to place the copies in (one the caller
    ///     keeps from run to run); nil allocates one (its pages are touched only as used).
    init(
        consumers: Int, budgetFloats: Int = 64 << 20, minimumFloats: Int = 1 << 16, chunkFloats: Int = 1 << 19, arena: FloatTensor? = nil
    ) {
        self.consumers = consumers
        self.chunkFloats = max(1, chunkFloats)
        self.budgetFloats = max(0, min(budgetFloats, arena?.capacity ?? budgetFloats))
        self.minimumFloats = minimumFloats
        self.arena = arena ?? FloatTensor(shape: [max(0, budgetFloats)])
    }

    /// Calls `body` with `name` converted to `count` floats, or returns nil without calling
    /// anything when the tensor is not shared (too small, over budget, or its conversion failed
    /// in another provider). `convert(range, out)` converts elements `range` (whole `unit`s: an
    /// int8 tensor's rows) into `out`, which points at element `range.lowerBound`.
    func withConverted<R>(
        _ name: String, count: Int, unit: Int,
        convert: (Range<Int>, UnsafeMutablePointer<Float>) throws(EngineError) -> Void,
        _ body: (UnsafePointer<Float>) throws -> R
    ) throws -> R? {
        let unit = max(1, unit)
        return try withShared(
            name, count: count, units: (count + unit - 1) / unit, unitsPerChunk: chunkFloats / unit,
            produce: { units, base throws(EngineError) in
                let range = (units.lowerBound * unit)..<min(count, units.upperBound * unit)
                try convert(range, base + range.lowerBound)
            }, body)
    }

    /// Calls `body` with `count` floats made once for all the consumers, or returns nil without
    /// calling anything when they are not shared (as ``withConverted(_:count:unit:convert:_:)``).
    /// The work is `units` independent pieces, made `unitsPerChunk` at a time by whichever
    /// providers are there: `produce(units, base)` makes those units somewhere in the `count`
    /// floats at `base` (the start of the copy), never touching another chunk's floats.
    func withShared<R>(
        _ name: String, count: Int, units: Int, unitsPerChunk: Int,
        produce: (Range<Int>, UnsafeMutablePointer<Float>) throws(EngineError) -> Void,
        _ body: (UnsafePointer<Float>) throws -> R
    ) throws -> R? {
        guard consumers > 1, count >= minimumFloats, units > 0 else { return nil }
        condition.lock()
        let entry: Entry
        if let existing = entries[name], existing.count == count {
            entry = existing
            reuses += 1
        } else {
            guard entries[name] == nil, declined[name] == nil, let offset = place(count) else {
                // Private for this provider, and for the others when they come to it.
                let passed = (declined[name] ?? 0) + 1
                declined[name] = passed < consumers ? passed : nil
                condition.unlock()
                return nil
            }
            entry = Entry(offset: offset, count: count, units: units, unitsPerChunk: unitsPerChunk, consumers: consumers)
            entries[name] = entry
            heldFloats += count
            peakHeldFloats = max(peakHeldFloats, heldFloats)
            conversions += 1
        }
        // Make chunks while any are left, then wait for the others' chunks.
        var thrown: EngineError?
        while !entry.failed && entry.nextChunk < entry.chunks {
            let index = entry.nextChunk
            entry.nextChunk += 1
            condition.unlock()
            let range = (index * entry.unitsPerChunk)..<min(entry.units, (index + 1) * entry.unitsPerChunk)
            do { try produce(range, arena.base + entry.offset) } catch { thrown = error }
            condition.lock()
            if thrown != nil { entry.failed = true }
            entry.finishedChunks += 1
            condition.broadcast()
            if thrown != nil { break }
        }
        while !entry.failed && !entry.ready { condition.wait() }
        if entry.failed {
            entry.remaining -= 1
            if entries[name] === entry {
                // Its place stays taken: another provider may still be converting a chunk into it.
                entries[name] = nil
                heldFloats -= count
            }
            condition.unlock()
            if let thrown { throw thrown }
            return nil
        }
        condition.unlock()
        defer {
            // Done with the copy only once `body` has returned: its place is freed when the
            // last consumer is done, not before another one has finished reading it.
            condition.lock()
            entry.remaining -= 1
            if entry.remaining == 0, entries[name] === entry {
                entries[name] = nil
                heldFloats -= count
                unplace(entry.offset)
            }
            condition.unlock()
        }
        return try body(UnsafePointer(arena.base + entry.offset))
    }
}

/// A stack of conversion buffers, one per nesting level of a ``WeightProvider``'s reads, that a
/// ``WorkspaceMemory`` can keep for a provider made per pass.
final class WeightScratch {
    var tensors: [FloatTensor] = []
}
