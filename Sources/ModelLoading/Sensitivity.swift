import DiffusionEngine
import Dispatch
import Foundation
import Quantization
import TensorCore

/// How one tensor may be stored, for the precision ladder of `--dtype auto`.
public enum StorageChoice: Hashable, Sendable, CustomStringConvertible {
    /// A ggml type: `.f16`, `.f32`, or one of the block types WeightPack writes.
    case ggml(GGMLType)
    /// WeightPack's int8 blocks (``Int8BlockLayout``, blocks of
    /// ``Int8BlockLayout/defaultBlockSize`` along each row).
    case int8

    /// `F16`, `Q4_K`, `int8`.
    public var label: String {
        switch self {
        case .ggml(let type): type.name
        case .int8: "int8"
        }
    }

    public var description: String { label }
}

/// The predicted effect of storing each weight in each type: per tensor and storage, the output
/// noise of its layer relative to the output, weighted by the calibration's activation
/// statistics as an importance matrix weights rounding errors.
public enum Sensitivity {
    /// One storage for one tensor.
    public struct Candidate: Sendable, Hashable {
        public var storage: StorageChoice
        /// The exact stored size of the whole tensor in this storage (ggml block bytes, int8
        /// values plus padding plus scales as ``Int8BlockLayout/byteCount``, 2 bytes a value for F16).
        public var bytes: Int
        /// Predicted output noise power over output signal power of the layer:
        /// `Σ_i Σ_j (W_ij − Q(W)_ij)² s_j / Σ_i Σ_j W_ij² s_j` over the sampled rows, with `s_j`
        /// the mean square of input channel `j` (each kernel position of a convolution's
        /// channel gets its channel's), or 1 for every channel when unweighted. 0 when lossless.
        public var relativeError: Double
        /// Plain weight-space SNR in dB on the same rows, `10 log10(Σ W² / Σ (W − Q(W))²)`;
        /// `.infinity` when the rows round exactly.
        public var weightSNR: Double
        /// Predicted output noise power over output signal power of the layer from quantising
        /// its inputs, where this storage makes the layer take the int8 products
        /// (``ComputePrecision/int8``, int8 and Q8_0 weights) and the prediction is for that
        /// arithmetic: `Σ_i Σ_j W_ij² v_j / Σ_i Σ_j W_ij² s_j` with `v_j` the channel's
        /// ``ChannelEnergy/int8InputNoise``. 0 otherwise.
        public var inputError: Double

        public init(storage: StorageChoice, bytes: Int, relativeError: Double, weightSNR: Double, inputError: Double = 0) {
            self.storage = storage
            self.bytes = bytes
            self.relativeError = relativeError
            self.weightSNR = weightSNR
            self.inputError = inputError
        }

        /// The predicted relative error in dB (`10 log10`), `-infinity` when lossless.
        public var relativeErrorDB: Double { relativeError > 0 ? 10 * log10(relativeError) : -.infinity }
    }

    /// The storages one tensor can take, with their cost and predicted error.
    public struct TensorOptions: Sendable {
        public var name: String
        public var shape: [Int]
        /// In the ladder's order, F16 first when the ladder lacks it; only storages whose block
        /// fits the rows (`GGMLTypeRules.rowLength(of:)`).
        public var candidates: [Candidate]
        /// False when the statistics had nothing for this tensor, or only zeros (its layer saw
        /// only zero inputs): every channel weighted 1.
        public var weighted: Bool
        /// What one unit of this layer's relative error adds to the image's noise, relative to
        /// the other layers (``LayerGains``); 1 when not measured.
        public var gain: Double

        public init(name: String, shape: [Int], candidates: [Candidate], weighted: Bool, gain: Double = 1) {
            self.name = name
            self.shape = shape
            self.candidates = candidates
            self.weighted = weighted
            self.gain = gain
        }

        /// A candidate's predicted share of the image's noise: its relative error (the weights'
        /// and, in int8 compute, its inputs') times ``gain``.
        public func noise(_ c: Candidate) -> Double { (c.relativeError + c.inputError) * gain }
    }

    /// Predicts every storage of `ladder` for each tensor of `names`, in parallel over tensors.
    ///
    /// Rows are output channels (a convolution's row is `in·kh·kw`); a deterministic sample of
    /// them (every k-th, at least `sampleRows` or all) is quantised and dequantised with the
    /// project's own quantisers (``GGMLBlocks``, ``Int8Quantizer``; F16 by rounding). Whether a
    /// block type fits is decided on the row `rows` names: the last dimension for GGUF, `in·kh·kw`
    /// for `.wpk` (the values quantised are the same row-major values either way).
    ///
    /// - Parameters:
    ///   - names: weights of rank 2 or more (linear and convolution weights, and embedding
    ///     tables, whose rows are the vectors looked up: unweighted, as no layer's input
    ///     statistics describe them).
    ///   - statistics: the calibration's; `nil` (or no entry for a tensor) weights every
    ///     channel equally and marks the tensor unweighted.
    ///   - importanceWeighted: quantise as a conversion that passes each weighted tensor's
    ///     statistics to ggml's searches as its importance (``importance(shape:energy:)``) does;
    ///     otherwise as the default conversion (unit importance, stable-diffusion.cpp's `convert`).
    ///   - int8Inputs: predict for ``ComputePrecision/int8``: int8 and Q8_0 candidates of a
    ///     tensor whose statistics have ``ChannelEnergy/int8InputNoise`` also carry the noise of
    ///     quantising the layer's inputs (``Candidate/inputError``).
    ///   - progress: tensors done and the total, called from worker threads one call at a time.
    /// - Throws: ``ModelLoadingError/Code/invalidCalibration`` for statistics whose length is not
    ///   the weight's input channels; ``QuantizationError`` for a tensor of rank below 2 or with
    ///   NaN or infinite values; the store's errors.
    public static func measure(
        _ store: any TensorStore, names: [String], ladder: [StorageChoice],
        rows: GGMLTypeRules.Rows, statistics: ActivationStatistics?,
        sampleRows: Int = 64, importanceWeighted: Bool = false, int8Inputs: Bool = false,
        progress: ((_ done: Int, _ total: Int) -> Void)? = nil
    ) throws -> [TensorOptions] {
        var choices: [StorageChoice] = ladder.contains(.ggml(.f16)) ? [] : [.ggml(.f16)]
        for c in ladder where !choices.contains(c) { choices.append(c) }
        let ordered = choices
        let rules = GGMLTypeRules(target: .f16, rows: rows)
        let results = Locked<[Result<TensorOptions, any Error>?]>(Array(repeating: nil, count: names.count))
        let report = ProgressBox(progress)
        let done = Locked(0)
        let sample = max(1, sampleRows)
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            let result: Result<TensorOptions, any Error>
            do {
                result = .success(
                    try options(
                        store, name: names[i], choices: ordered, rules: rules, energy: statistics?.channels[names[i]],
                        sampleRows: sample, importanceWeighted: importanceWeighted, int8Inputs: int8Inputs))
            } catch {
                result = .failure(error)
            }
            results.withLock { $0[i] = result }
            done.withLock { n in
                n += 1
                report.call(n, names.count)
            }
        }
        return try results.withLock { $0 }.map { try $0!.get() }
    }

    /// The importance ggml's searches get for each column of a weight's engine row
    /// (`in·kh·kw`): its input channel's mean square at every kernel position; `nil` when the
    /// statistics do not fit or saw only zeros (unit importance then).
    public static func importance(shape: [Int], energy: ChannelEnergy?) -> [Float]? {
        guard let energy, shape.count >= 2, shape[0] > 0, energy.meanSquares.count == shape[1], energy.meanSquares.contains(where: { $0 > 0 })
        else { return nil }
        let rowLength = shape.dropFirst().reduce(1, *)
        let kernel = max(1, rowLength / max(1, shape[1]))
        return (0..<rowLength).map { Float(energy.meanSquares[$0 / kernel]) }
    }

    /// The sampled output rows of a tensor with `rows` rows: every k-th from 0, at least
    /// `sampleRows` of them (all when there are fewer).
    public static func sampledRows(of rows: Int, sampleRows: Int) -> [Int] {
        guard rows > 0 else { return [] }
        let step = max(1, rows / max(1, sampleRows))
        return Array(stride(from: 0, to: rows, by: step))
    }

    private static func options(
        _ store: any TensorStore, name: String, choices: [StorageChoice], rules: GGMLTypeRules,
        energy: ChannelEnergy?, sampleRows: Int, importanceWeighted: Bool, int8Inputs: Bool
    ) throws -> TensorOptions {
        guard let d = store.descriptor(named: name) else {
            throw ModelLoadingError(.invalidCalibration, "no tensor '\(name)' to measure")
        }
        let shape = d.shape.dimensions
        guard shape.count >= 2 else {
            throw QuantizationError(.invalidLayout, "\(name) \(d.shape) is not the weight of a linear or convolution layer")
        }
        let count = d.elementCount
        let outputs = shape[0], inputs = shape[1]
        let rowLength = outputs == 0 ? 0 : count / outputs
        let kernel = inputs == 0 ? 1 : max(1, rowLength / inputs)
        if let energy, energy.meanSquares.count != inputs {
            throw ModelLoadingError(
                .invalidCalibration, "statistics of \(energy.meanSquares.count) channels do not fit \(name) \(d.shape) with \(inputs) input channels")
        }
        // A layer that saw only zeros (a 1×1 feature map normalised to zero at a small calibration
        // size) says nothing about its weights: weighted like one without statistics.
        let energy = energy.flatMap { e in e.meanSquares.contains { $0 > 0 } ? e : nil }
        // Weight per position of a row: the channel's mean square at every kernel position.
        var weight = [Double](repeating: 1, count: rowLength)
        if let energy {
            for j in 0..<rowLength { weight[j] = energy.meanSquares[j / kernel] }
        }
        let importance: [Float]? = importanceWeighted && energy != nil ? weight.map { Float($0) } : nil
        let picked = sampledRows(of: outputs, sampleRows: sampleRows)
        let values = try sampledValues(store, d, rows: picked, rowLength: rowLength)
        let fit = rules.rowLength(of: d.shape)
        // What quantising the layer's inputs adds in int8 compute, for the storages that take it.
        let inputError = int8Inputs ? Self.inputError(values, rowLength: rowLength, kernel: kernel, energy: energy) : 0
        var candidates: [Candidate] = []
        for choice in choices {
            let bytes: Int
            switch choice {
            case .ggml(let type) where type == .f16 || type == .f32 || type == .bf16:
                guard let b = type.byteCount(values: count) else { continue }
                bytes = b
            case .ggml(let type):
                guard GGMLType.quantizable.contains(type), fit > 0, fit % type.blockValues == 0,
                    rowLength % type.blockValues == 0, let b = type.byteCount(values: count)
                else { continue }
                bytes = b
            case .int8:
                bytes = try Int8BlockLayout(shape: d.shape).byteCount
            }
            let decoded = try roundTrip(values, rowLength: rowLength, storage: choice, importance: importance)
            let (relative, snr) = errors(values, decoded, weight: weight, rowLength: rowLength)
            let takesInt8 = choice == .int8 || choice == .ggml(.q8_0)
            candidates.append(
                Candidate(storage: choice, bytes: bytes, relativeError: relative, weightSNR: snr, inputError: takesInt8 ? inputError : 0))
        }
        return TensorOptions(name: name, shape: shape, candidates: candidates, weighted: energy != nil)
    }

    /// `values` (whole rows of `rowLength`) stored in `storage` and read back as the writers
    /// store them: ggml's searches with `importance` (unit importance when `nil`), WeightPack's
    /// int8 blocks, F16/BF16 rounding.
    ///
    /// - Throws: ``QuantizationError`` for a row length the storage's blocks do not divide, or
    ///   NaN or infinite values.
    public static func roundTrip(_ values: [Float], rowLength: Int, storage: StorageChoice, importance: [Float]?) throws -> [Float] {
        guard rowLength > 0, values.count % rowLength == 0 else {
            throw QuantizationError(.invalidLayout, "\(values.count) values are not whole rows of \(rowLength)")
        }
        let rows = values.count / rowLength
        var decoded = [Float](repeating: 0, count: values.count)
        switch storage {
        case .ggml(let type) where type == .f16 || type == .f32 || type == .bf16:
            for k in 0..<values.count {
                switch type {
                case .f16: decoded[k] = Float(halfBits: values[k].halfBits)
                case .bf16: decoded[k] = Float(bfloat16Bits: values[k].bfloat16Bits)
                default: decoded[k] = values[k]
                }
            }
        case .ggml(let type):
            guard let rowBytes = type.byteCount(values: rowLength) else {
                throw QuantizationError(.invalidLayout, "rows of \(rowLength) do not divide into \(type.name) blocks")
            }
            var buffer = [UInt8](repeating: 0, count: rowBytes)
            try values.withUnsafeBufferPointer { v in
                try buffer.withUnsafeMutableBytes { raw in
                    try decoded.withUnsafeMutableBufferPointer { out in
                        for r in 0..<rows {
                            _ = try GGMLBlocks.quantizeAsConvert(
                                v.baseAddress! + r * rowLength, count: rowLength, rowLength: rowLength, type: type,
                                importance: importance, into: raw.baseAddress!)
                            try GGMLBlocks.dequantize(
                                UnsafeRawBufferPointer(raw), type: type, count: rowLength, into: out.baseAddress! + r * rowLength)
                        }
                    }
                }
            }
        case .int8:
            let layout = try Int8BlockLayout(rows: rows, rowLength: rowLength, blockSize: Int8BlockLayout.defaultBlockSize)
            let packed = try values.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
            try decoded.withUnsafeMutableBufferPointer { out in
                try Int8Quantizer.dequantize(packed.buffer.bytes, layout: layout, rows: 0..<layout.rows, into: out.baseAddress!)
            }
        }
        return decoded
    }

    /// `Σ W_j² v_j / Σ W_j² s_j` over the sampled rows `values`, with `v` the input channels'
    /// ``ChannelEnergy/int8InputNoise`` and `s` their mean squares (each kernel position of a
    /// channel gets its channel's): the layer's output noise from its quantised inputs relative
    /// to its output, the inputs' errors taken as independent. 0 without both statistics.
    static func inputError(_ values: [Float], rowLength: Int, kernel: Int, energy: ChannelEnergy?) -> Double {
        guard let energy, let noise = energy.int8InputNoise, noise.count == energy.meanSquares.count, rowLength > 0,
            rowLength == noise.count * kernel
        else { return 0 }
        var added = 0.0, signal = 0.0
        for start in stride(from: 0, to: values.count, by: rowLength) {
            for j in 0..<rowLength {
                let w = Double(values[start + j]), w2 = w * w
                added += w2 * noise[j / kernel]
                signal += w2 * energy.meanSquares[j / kernel]
            }
        }
        return signal > 0 ? added / signal : 0
    }

    /// The weighted relative error and the plain SNR (dB) of `decoded` against `values`.
    static func errors(_ values: [Float], _ decoded: [Float], weight: [Double], rowLength: Int) -> (relative: Double, snr: Double) {
        guard rowLength > 0 else { return (0, .infinity) }
        var noise = 0.0, signal = 0.0, plainNoise = 0.0, plainSignal = 0.0
        for start in stride(from: 0, to: values.count, by: rowLength) {
            for j in 0..<rowLength {
                let w = Double(values[start + j]), e = w - Double(decoded[start + j])
                noise += e * e * weight[j]
                signal += w * w * weight[j]
                plainNoise += e * e
                plainSignal += w * w
            }
        }
        let relative = noise == 0 ? 0 : (signal > 0 ? noise / signal : .infinity)
        let snr = plainNoise == 0 ? Double.infinity : 10 * log10(plainSignal / plainNoise)
        return (relative, snr)
    }

    /// The values of rows `rows` (each `rowLength` long) widened to `Float`, read row by row
    /// where the dtype allows.
    private static func sampledValues(_ store: any TensorStore, _ d: TensorDescriptor, rows: [Int], rowLength: Int) throws -> [Float] {
        let view = try store.tensor(named: d.name)
        let (total, overflow) = rows.count.multipliedReportingOverflow(by: rowLength)
        guard !overflow else { throw QuantizationError(.invalidLayout, "\(d.name) \(d.shape) is too large to sample") }
        var out = [Float](repeating: 0, count: total)
        if let width = view.dtype.byteWidth, view.bytes.count >= d.elementCount * width {
            try view.bytes.withUnsafeBytes { raw in
                try out.withUnsafeMutableBufferPointer { dst in
                    for (k, r) in rows.enumerated() {
                        let source = UnsafeRawBufferPointer(rebasing: raw[(r * rowLength * width)..<((r + 1) * rowLength * width)])
                        try ElementConversion.widen(
                            source, dtype: view.dtype, into: UnsafeMutableBufferPointer(rebasing: dst[(k * rowLength)..<((k + 1) * rowLength)]),
                            count: rowLength)
                    }
                }
            }
        } else {
            let all = try view.floats()
            for (k, r) in rows.enumerated() {
                out.replaceSubrange((k * rowLength)..<((k + 1) * rowLength), with: all[(r * rowLength)..<((r + 1) * rowLength)])
            }
        }
        return out
    }
}

/// Carries the caller's progress closure to the workers; every call is made under a lock.
private struct ProgressBox: @unchecked Sendable {
    let body: ((Int, Int) -> Void)?
    init(_ body: ((Int, Int) -> Void)?) { self.body = body }
    func call(_ done: Int, _ total: Int) { body?(done, total) }
}
