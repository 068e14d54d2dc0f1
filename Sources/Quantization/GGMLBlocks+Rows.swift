import Dispatch
import TensorCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension GGMLBlocks {
    /// Quantises `rows` rows of `rowLength` values with `ggml_quantize_chunk`'s semantics and
    /// measures the error of the result.
    ///
    /// `importance` nil runs ggml's reference quantisers (`quantize_row_*_ref`); otherwise it
    /// holds `rowLength` values, one per column, finite and >= 0, and Q4_0, Q4_1, Q5_0, Q5_1 and
    /// Q2_K…Q6_K run ggml's importance-weighted searches (`quantize_row_*_impl`), as ggml does
    /// when given an importance matrix. stable-diffusion.cpp's `convert` passes a matrix of ones.
    /// Q8_0 and the float types ignore it, as ggml does. Rows are spread over the processors;
    /// the blocks do not depend on how.
    ///
    /// - Throws: ``QuantizationError/Code/unsupportedDType`` for a type WeightPack does not write,
    ///   ``QuantizationError/Code/invalidLayout`` when a row is not a whole number of blocks or
    ///   the sizes overflow, ``QuantizationError/Code/nonFinite`` for NaN or infinite values,
    ///   ``QuantizationError/Code/invalidImportance`` for a negative or non-finite importance.
    /// - Complexity: O(rows · rowLength).
    @discardableResult
    public static func quantize(
        _ values: UnsafePointer<Float>, rows: Int, rowLength: Int, type: GGMLType, importance: UnsafePointer<Float>?,
        into output: UnsafeMutableRawPointer
    ) throws(QuantizationError) -> ErrorAccumulator {
        guard GGMLType.quantizable.contains(type) || type.plainDType?.isConvertibleFloat == true else {
            throw QuantizationError(.unsupportedDType, "unsupported type \(type.name) for writing")
        }
        guard rows >= 0, rowLength >= 0, case let (count, overflow) = rows.multipliedReportingOverflow(by: rowLength), !overflow else {
            throw QuantizationError(.invalidLayout, "\(rows) rows of \(rowLength) values do not describe a tensor")
        }
        guard rows == 0 || (rowLength > 0 && type.byteCount(values: rowLength) != nil), type.byteCount(values: count) != nil else {
            throw QuantizationError(
                .invalidLayout, "rows of \(rowLength) values are not a whole number of \(type.name) blocks of \(type.blockValues)")
        }
        if count == 0 { return ErrorAccumulator() }
        let weighted = importance.flatMap { _ in weightedKernel(type) }
        if let importance, weighted != nil {
            for j in 0..<rowLength where !(importance[j].isFinite && importance[j] >= 0) {
                throw QuantizationError(.invalidImportance, "importance \(j) is \(importance[j]); it must be finite and >= 0")
            }
        }
        // Work units: rows for the weighted searches (they read whole rows), blocks otherwise.
        let unitValues = weighted != nil ? rowLength : type.blockValues
        let units = count / unitValues
        let unitBytes = unitValues / type.blockValues * type.blockBytes
        let parts = Swift.max(1, Swift.min(workerCount, units, count / minimumValuesPerWorker))
        let source = SendableAddress(UnsafeMutableRawPointer(mutating: values))
        let target = SendableAddress(output)
        let weights = importance.map { SendableAddress(UnsafeMutableRawPointer(mutating: $0)) }
        let run = { @Sendable (part: Int) -> Result<ErrorAccumulator, QuantizationError> in
            let range = (units * part / parts)..<(units * (part + 1) / parts)
            let x = source.pointer.assumingMemoryBound(to: Float.self), y = target.pointer
            return Result { () throws(QuantizationError) -> ErrorAccumulator in
                if let kernel = weightedKernel(type), let qw = weights?.pointer.assumingMemoryBound(to: Float.self) {
                    return try quantizeWeightedRows(x, y, rows: range, rowLength: rowLength, rowBytes: unitBytes, type: type, qw, kernel)
                }
                return try quantizeReferenceBlocks(x, y, blocks: range, type: type)
            }
        }
        if parts == 1 {
            return try run(0).get()
        }
        let results = Locked<[Result<ErrorAccumulator, QuantizationError>?]>(Array(repeating: nil, count: parts))
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let r = run(p)
            results.withLock { $0[p] = r }
        }
        var total = ErrorAccumulator()
        for r in results.withLock({ $0 }) {
            if let r { total.merge(try r.get()) }
        }
        return total
    }

    /// Processors used for quantising (at most 8).
    static let workerCount: Int = {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return Swift.max(1, Swift.min(8, Int(online)))
    }()

    /// Below this many values per worker a tensor is quantised on the calling thread.
    static let minimumValuesPerWorker = 1 << 14

    struct SendableAddress: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
        init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
    }

    typealias BlockKernel = (UnsafePointer<Float>, UnsafeMutableRawPointer) -> Void
    typealias DecodeKernel = (UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void

    /// The reference quantiser and the decoder of one block of a block type, chosen once per call.
    static func referenceKernels(_ type: GGMLType) -> (BlockKernel, DecodeKernel)? {
        switch type {
        case .q4_0: (quantizeQ4_0, q4_0)
        case .q4_1: (quantizeQ4_1, q4_1)
        case .q5_0: (quantizeQ5_0, q5_0)
        case .q5_1: (quantizeQ5_1, q5_1)
        case .q8_0: (quantizeQ8_0, q8_0)
        case .q2_K: (quantizeQ2_K, q2_K)
        case .q3_K: (quantizeQ3_K, q3_K)
        case .q4_K: (quantizeQ4_K, q4_K)
        case .q5_K: (quantizeQ5_K, q5_K)
        case .q6_K: (quantizeQ6_K, q6_K)
        default: nil
        }
    }

    /// Throws for the first value of `n` that is NaN or infinite (`offset` numbers it).
    @inline(__always)
    static func checkFinite(_ x: UnsafePointer<Float>, _ n: Int, offset: Int) throws(QuantizationError) {
        var bad = false
        for i in 0..<n { bad = bad || !x[i].isFinite }
        guard bad else { return }
        for i in 0..<n where !x[i].isFinite {
            throw QuantizationError(.nonFinite, "value \(offset + i) is \(x[i]); NaN and infinities cannot be quantised")
        }
    }

    /// Blocks `blocks` through the reference quantisers, with their error.
    static func quantizeReferenceBlocks(
        _ values: UnsafePointer<Float>, _ output: UnsafeMutableRawPointer, blocks: Range<Int>, type: GGMLType
    ) throws(QuantizationError) -> ErrorAccumulator {
        var total = ErrorAccumulator()
        let n = type.blockValues, size = type.blockBytes
        guard let (encode, decode) = referenceKernels(type) else {
            // The float types, one value per "block".
            for b in blocks {
                let x = values + b
                try checkFinite(x, 1, offset: b)
                let y = output + b * size
                switch type {
                case .f32: y.storeBytes(of: x[0].bitPattern.littleEndian, as: UInt32.self)
                case .f16: y.storeBytes(of: x[0].halfBits.littleEndian, as: UInt16.self)
                case .bf16: y.storeBytes(of: x[0].bfloat16Bits.littleEndian, as: UInt16.self)
                case .f64: y.storeBytes(of: Double(x[0]).bitPattern.littleEndian, as: UInt64.self)
                default: preconditionFailure("writable type \(type) without a kernel")
                }
                var back: Float = 0
                try dequantize(UnsafeRawBufferPointer(start: y, count: size), type: type, count: 1, into: &back)
                total.add(x[0], back)
            }
            return total
        }
        try withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { (decoded) throws(QuantizationError) in
            let d = decoded.baseAddress!
            for b in blocks {
                let x = values + b * n, y = output + b * size
                try checkFinite(x, n, offset: b * n)
                encode(x, y)
                decode(UnsafeRawPointer(y), d)
                for i in 0..<n { total.add(x[i], d[i]) }
            }
        }
        return total
    }

    /// Rows `rows` through a weighted row kernel, with their error.
    static func quantizeWeightedRows(
        _ values: UnsafePointer<Float>, _ output: UnsafeMutableRawPointer, rows: Range<Int>, rowLength: Int, rowBytes: Int,
        type: GGMLType, _ qw: UnsafePointer<Float>, _ kernel: WeightedRowKernel
    ) throws(QuantizationError) -> ErrorAccumulator {
        guard let (_, decode) = referenceKernels(type) else { preconditionFailure("weighted type \(type) without a decoder") }
        var total = ErrorAccumulator()
        let scratch = WeightedScratch()
        defer { scratch.deallocate() }
        let n = type.blockValues, size = type.blockBytes
        try withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { (decoded) throws(QuantizationError) in
            let d = decoded.baseAddress!
            for r in rows {
                let x = values + r * rowLength, y = output + r * rowBytes
                try checkFinite(x, rowLength, offset: r * rowLength)
                kernel(x, y, rowLength, qw, scratch)
                for b in 0..<(rowLength / n) {
                    decode(UnsafeRawPointer(y + b * size), d)
                    let xb = x + b * n
                    for i in 0..<n { total.add(xb[i], d[i]) }
                }
            }
        }
        return total
    }
}

extension GGMLBlocks {
    /// Quantises `count` values as stable-diffusion.cpp's `convert` does: rows of `rowLength`
    /// through `ggml_quantize_chunk` with an importance matrix, `importance` or (nil) ones. The
    /// writers' entry point.
    ///
    /// - Throws: as ``quantize(_:rows:rowLength:type:importance:into:)``, and
    ///   ``QuantizationError/Code/invalidImportance`` when `importance` does not hold `rowLength` values.
    public static func quantizeAsConvert(
        _ values: UnsafePointer<Float>, count: Int, rowLength: Int, type: GGMLType, importance: [Float]?,
        into output: UnsafeMutableRawPointer
    ) throws(QuantizationError) -> ErrorAccumulator {
        if count == 0 { return ErrorAccumulator() }
        guard rowLength > 0, count % rowLength == 0 else {
            throw QuantizationError(.invalidLayout, "\(count) values are not whole rows of \(rowLength)")
        }
        if let importance, importance.count != rowLength {
            throw QuantizationError(.invalidImportance, "importance has \(importance.count) values for rows of \(rowLength)")
        }
        let weights = importance ?? [Float](repeating: 1, count: rowLength)
        return try weights.withUnsafeBufferPointer { (qw) throws(QuantizationError) in
            try quantize(values, rows: count / rowLength, rowLength: rowLength, type: type, importance: qw.baseAddress!, into: output)
        }
    }
}
