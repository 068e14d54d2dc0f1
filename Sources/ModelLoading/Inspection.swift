import CEngineKernels
import CheckpointFormats
import Dispatch
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

#if canImport(Glibc)
import Glibc
#endif

/// Everything `inspect` says about a model: its tensors as the source stores them (with their
/// canonical names, storage records and, on request, statistics) and the findings about them.
public struct Inspection {
    public struct Row: Sendable {
        public var descriptor: TensorDescriptor
        public var statistics: TensorStatistics?
        public var storedBytes: Int?
        public var sourceDType: DType?
        public var canonical: [String] = []
        /// Set for an int8 tensor of a `.wpk` (its layout and the error it took).
        public var quantization: WPKQuantization?
        /// Set for a tensor stored as ggml blocks (a `.wpk` 1.2 or GGUF block tensor): its type,
        /// row length, the type it fell back from and the error recorded (a `.wpk` records it).
        public var ggml: WPKBlockStorage? = nil
        /// The type asked for when this tensor fell back (a GGUF WeightPack wrote records it for
        /// plain tensors too, as `weightpack.fallback_from.<name>`).
        public var recordedFallbackFrom: GGMLType? = nil
        /// The type this tensor fell back from, if it did.
        public var fallbackFrom: GGMLType? { ggml?.fallbackFrom ?? recordedFallbackFrom }
        /// The dtype stored: I8 for an int8 tensor (whose values read as F32).
        public var storedDType: DType { quantization == nil ? descriptor.dtype : .i8 }
        /// The stored type's name: the ggml type for block tensors (`Q4_K`), else ``storedDType``'s.
        public var storedTypeName: String { ggml?.type.name ?? storedDType.name }
        /// Stored bits per value: the block type's for block tensors, else from the stored bytes.
        public var bitsPerWeight: Double? {
            if let g = ggml { return g.type.bitsPerWeight }
            let bytes = storedBytes ?? descriptor.byteCount
            return descriptor.elementCount > 0 ? Double(bytes) * 8 / Double(descriptor.elementCount) : nil
        }
    }

    public struct Finding: Sendable {
        public enum Severity: String, Sendable, Comparable {
            case error, warning, info

            public static func < (a: Severity, b: Severity) -> Bool {
                let order: [Severity] = [.error, .warning, .info]
                return order.firstIndex(of: a)! < order.firstIndex(of: b)!
            }
        }

        public var severity: Severity
        /// A stable identifier (`position-ids`, `missing-tensors`, `nan`, …).
        public var code: String
        public var message: String
        public var tensor: String?

        public init(severity: Severity, code: String, message: String, tensor: String? = nil) {
            self.severity = severity
            self.code = code
            self.message = message
            self.tensor = tensor
        }
    }

    public let format: String
    public let metadata: [String: String]
    public let rows: [Row]
    public let findings: [Finding]
    public let totalTensorCount: Int
    /// The structured header of a `.wpk`, `nil` for other formats.
    public let recordedHeader: JSONObject?
    /// The recipe and proof of a `--dtype auto` file.
    public let qualityBudget: QualityBudgetRecord?
    public let model: CanonicalModel
    /// When `filter` matched no stored name but matches names of the other naming (a `.wpk`'s
    /// source names, or a source file's canonical names): up to three examples, stored → other.
    public let filterMatchesOtherNames: [(stored: String, other: String)]

    /// Inspects `model`.
    ///
    /// - Parameters:
    ///   - filter: a shell pattern over the names as the source stores them.
    ///   - computeStatistics: read every value (min, max, mean, std, NaN, Inf, beyond-f16).
    public init(_ model: CanonicalModel, filter: String? = nil, computeStatistics: Bool = false, progress: (any ProgressReporter)? = nil) throws {
        let store = model.source
        self.model = model
        format = store.formatName
        metadata = store.metadata
        totalTensorCount = store.tensors.count
        let selected = store.tensors.filter { d in filter.map { fnmatch($0, d.name, 0) == 0 } ?? true }
        let records = store.records
        recordedHeader = records.flatMap { $0.headerMetadata.count > 0 ? $0.headerMetadata : nil }
        qualityBudget = QualityBudgetRecord(header: recordedHeader, metadata: store.metadata)
        let blockStore = store as? any GGMLTensorStore
        var rows = try selected.map { d in
            let record = records?.storageRecord(of: d.name)
            var row = Row(
                descriptor: d, statistics: nil, storedBytes: record?.storedByteCount, sourceDType: record?.sourceDType,
                quantization: record?.quantization)
            if record == nil, let from = store.metadata[ModelExport.fallbackKeyPrefix + d.name].flatMap(GGMLType.init(name:)) {
                row.recordedFallbackFrom = from
            }
            if let blocks = record?.blocks {
                row.ggml = blocks
            } else if record == nil, let view = try blockStore?.ggmlTensor(named: d.name) {
                // A GGUF block tensor: no error recorded, its bytes are the blocks'.
                row.ggml = WPKBlockStorage(type: view.type, rowLength: view.rowLength, fallbackFrom: row.recordedFallbackFrom, metrics: view.metrics)
                row.storedBytes = view.bytes.count
            }
            return row
        }
        if computeStatistics {
            let results = try Self.statistics(of: selected, in: store, progress: progress)
            for i in rows.indices { rows[i].statistics = results[i] }
        }
        var findings = Self.findings(rows: rows)
        let canonical = model.canonicalNamesBySource
        for i in rows.indices { rows[i].canonical = canonical[rows[i].descriptor.name] ?? [] }
        findings += try Self.modelFindings(model)
        self.rows = rows
        self.findings = findings
        var other: [(String, String)] = []
        if let filter, selected.isEmpty {
            // A .wpk stores canonical names; a source file stores its own. Try the other naming.
            let pairs: [(String, String)] =
                recordedHeader?["layout"] != nil
                ? store.tensors.compactMap { d in store.sourceName(of: d.name).map { (d.name, $0) } }
                : model.recipes.compactMap { r in r.sources.first.map { ($0, r.name) } }
            for (stored, name) in pairs where stored != name && fnmatch(filter, name, 0) == 0 {
                other.append((stored, name))
                if other.count == 3 { break }
            }
        }
        filterMatchesOtherNames = other
    }

    /// Findings about the model as a whole: position_ids, completeness, leftovers, EMA.
    private static func modelFindings(_ model: CanonicalModel) throws -> [Finding] {
        var out: [Finding] = []
        for (tensor, wrong) in try model.brokenPositionIDs() {
            let source = model.sourceName(of: tensor) ?? tensor
            if wrong.isEmpty {
                out.append(
                    Finding(
                        severity: .warning, code: "position-ids-dtype",
                        message:
                            "position_ids hold the right values but are stored as \(model.store.descriptor(named: tensor)?.dtype.name ?? "?") instead of I64",
                        tensor: source))
            } else {
                let list = wrong.prefix(12).map { "[\($0.index)] = \(Formatting.threeDecimals($0.value))" }.joined(separator: ", ")
                out.append(
                    Finding(
                        severity: .error, code: "position-ids",
                        message:
                            "\(wrong.count) position_ids are not their index: \(list)\(wrong.count > 12 ? ", …" : "") (convert --fix-position-ids repairs them)",
                        tensor: source))
            }
        }
        let d = model.detection
        if model.isCanonical {
            if d.family == nil && d.kind == .pipeline {
                out.append(
                    Finding(
                        severity: .warning, code: "unknown-family",
                        message: d.candidates.isEmpty
                            ? "no known family fits (see architecture.rejected)" : "several families fit: \(d.candidates.joined(separator: ", "))",
                        tensor: nil))
            }
            for c in d.missingComponents {
                out.append(Finding(severity: .warning, code: "missing-component", message: "the model has no \(c.rawValue)", tensor: nil))
            }
            for c in d.components {
                if !c.missing.isEmpty {
                    out.append(
                        Finding(
                            severity: .error, code: "missing-tensors",
                            message:
                                "\(c.component.rawValue) lacks \(c.missing.count) tensors: \(c.missing.prefix(5).joined(separator: ", "))\(c.missing.count > 5 ? ", …" : "")",
                            tensor: nil))
                }
                if !c.unexpected.isEmpty {
                    out.append(
                        Finding(
                            severity: .warning, code: "unexpected-tensors",
                            message:
                                "\(c.component.rawValue) has \(c.unexpected.count) tensors its structure does not explain: \(c.unexpected.prefix(5).joined(separator: ", "))\(c.unexpected.count > 5 ? ", …" : "")",
                            tensor: nil))
                }
                for m in c.shapeMismatches {
                    out.append(
                        Finding(severity: .error, code: "shape-mismatch", message: "shape \(m.actual), expected \(m.expected)", tensor: m.tensor))
                }
            }
        } else {
            out.append(
                Finding(
                    severity: .info, code: "layout-unknown", message: "no Stable Diffusion layout recognised; tensors are shown as stored",
                    tensor: nil))
        }
        if model.ema.only {
            out.append(
                Finding(
                    severity: .info, code: "ema-only",
                    message:
                        "only EMA weights are present (\(model.ema.tensorCount) model_ema.* tensors, \(Formatting.bytes(model.ema.byteCount)), no model.diffusion_model.*): the UNet is read from them, and convert uses them",
                    tensor: nil))
        } else if model.ema.isPresent {
            out.append(
                Finding(
                    severity: .info, code: "ema",
                    message:
                        "EMA weights present: \(model.ema.tensorCount) tensors, \(Formatting.bytes(model.ema.byteCount)) (convert --weights ema selects them)",
                    tensor: nil))
        }
        let grouped = Dictionary(grouping: model.leftovers, by: \.kind)
        for (kind, items) in grouped.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where kind != .ema {
            let bytes = items.reduce(0) { $0 + $1.descriptor.byteCount }
            out.append(
                Finding(
                    severity: kind == .unknown ? .warning : .info, code: "leftover-\(kind.rawValue)",
                    message:
                        "\(items.count) \(kind.rawValue) tensors (\(Formatting.bytes(bytes))) are not model weights and are left out by convert/export unless --keep-extra: \(items.prefix(4).map(\.descriptor.name).joined(separator: ", "))\(items.count > 4 ? ", …" : "")",
                    tensor: nil))
        }
        return out
    }

    /// Statistics of every tensor, two tensors at a time (one per core). A mapped tensor's pages
    /// are handed back once read (the page cache keeps them), so the resident set holds the
    /// tensors in progress, not the whole file.
    private static func statistics(
        of tensors: [TensorDescriptor], in store: any TensorStore,
        progress: (any ProgressReporter)?
    ) throws -> [TensorStatistics?] {
        progress?.begin(total: tensors.reduce(0) { $0 + $1.byteCount })
        let results = Locked<[Result<TensorStatistics?, any Error>?]>(Array(repeating: nil, count: tensors.count))
        DispatchQueue.concurrentPerform(iterations: tensors.count) { i in
            let d = tensors[i]
            let result: Result<TensorStatistics?, any Error>
            do {
                let view = try store.tensor(named: d.name)
                result = .success(try? fastStatistics(view))  // nil for dtypes without numeric values
                view.bytes.releasePages()
            } catch {
                result = .failure(error)
            }
            results.withLock { $0[i] = result }
        }
        progress?.advance(by: tensors.reduce(0) { $0 + $1.byteCount })
        progress?.finish()
        return try results.withLock { $0 }.map { try $0!.get() }
    }

    /// ``TensorView/statistics()``, through the selected kernel family's C code for F32, F16
    /// and BF16 (`CEngineKernels/statistics.c`: the same counts and extremes, sums
    /// reassociated within 4096-value chunks); other dtypes through TensorCore.
    static func fastStatistics(_ view: TensorView) throws -> TensorStatistics {
        let code: Int32
        switch view.dtype {
        case .f32: code = 0
        case .f16: code = 1
        case .bf16: code = 2
        default: return try view.statistics()
        }
        let count = view.descriptor.elementCount
        var c = wp_statistics()
        try view.bytes.withUnsafeBytes { (raw) throws(TensorCoreError) in
            guard let width = view.dtype.byteWidth, raw.count >= count * width else {
                throw TensorCoreError(.unsupportedConversion, "\(view.name): \(raw.count) bytes hold fewer than \(count) values")
            }
            if count > 0 { _ = wp_tensor_statistics(code, raw.baseAddress!, count, &c) }
        }
        var s = TensorStatistics()
        s.count = count
        s.finiteCount = Int(c.finite)
        s.nanCount = Int(c.nan)
        s.infinityCount = count - Int(c.finite) - Int(c.nan)
        s.zeroCount = Int(c.zero)
        s.beyondFloat16Count = Int(c.beyond)
        if c.finite > 0 {
            s.min = Double(c.min)
            s.max = Double(c.max)
            s.mean = c.mean
            s.std = (c.m2 / Double(c.finite)).squareRoot()
        }
        return s
    }

    private static func findings(rows: [Row]) -> [Finding] {
        var out: [Finding] = []
        for row in rows {
            guard let s = row.statistics else { continue }
            let name = row.descriptor.name
            if s.nanCount > 0 { out.append(Finding(severity: .error, code: "nan", message: "\(s.nanCount) NaN values", tensor: name)) }
            if s.infinityCount > 0 { out.append(Finding(severity: .error, code: "inf", message: "\(s.infinityCount) infinite values", tensor: name)) }
            if s.beyondFloat16Count > 0 {
                out.append(
                    Finding(
                        severity: .warning, code: "beyond-f16-range", message: "\(s.beyondFloat16Count) values beyond ±65504 become infinite in f16",
                        tensor: name))
            }
            if s.count > 1, s.zeroCount == s.count, row.descriptor.dtype.isFloatingPoint {
                out.append(Finding(severity: .warning, code: "all-zero", message: "every value is zero", tensor: name))
            }
        }
        let floatTypes = Set(rows.map(\.descriptor.dtype).filter(\.isFloatingPoint))
        if floatTypes.count > 1 {
            out.append(
                Finding(
                    severity: .info, code: "mixed-dtypes",
                    message: "floating-point tensors are stored as " + floatTypes.map(\.name).sorted().joined(separator: ", "), tensor: nil))
        }
        return out
    }

    public var parameterCount: Int { rows.reduce(0) { $0 + $1.descriptor.elementCount } }
    public var byteCount: Int { rows.reduce(0) { $0 + $1.descriptor.byteCount } }
    public var storedByteCount: Int? {
        rows.allSatisfy { $0.storedBytes != nil } ? rows.reduce(0) { $0 + $1.storedBytes! } : nil
    }

    /// Whether any tensor shown is quantised (int8 or ggml blocks) or fell back from a block type.
    public var hasQuantizedRows: Bool { rows.contains { $0.ggml != nil || $0.quantization != nil || $0.recordedFallbackFrom != nil } }

    /// Bits per weight of the tensors shown: stored bytes · 8 / values (a tensor with no stored
    /// size recorded counts its logical bytes).
    public var bitsPerWeight: Double {
        let values = parameterCount
        guard values > 0 else { return 0 }
        return Double(rows.reduce(0) { $0 + ($1.storedBytes ?? $1.descriptor.byteCount) }) * 8 / Double(values)
    }
}

/// How numbers are written in reports and messages.
public enum Formatting {
    /// `1.2 GB`, `340 MB`, `12 KB`, `5 B` (decimal units).
    public static func bytes(_ n: Int) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var value = Double(n)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        if unit == 0 { return "\(n) B" }
        return (value >= 100 ? String(Int(value.rounded())) : oneDecimal(value)) + " " + units[unit]
    }

    /// One decimal place.
    public static func oneDecimal(_ v: Double) -> String {
        String((v * 10).rounded() / 10)
    }

    /// Three decimal places, always written out (`0.500`).
    public static func threeDecimals(_ v: Double) -> String { decimals(v, 3) }

    /// `places` decimal places (1 to 6), always written out (`2.50` for 2.5 at two places).
    public static func decimals(_ v: Double, _ places: Int) -> String {
        let places = min(max(places, 1), 6)
        var factor = 1.0
        for _ in 0..<places { factor *= 10 }
        var text = String((v * factor).rounded() / factor)
        if let dot = text.firstIndex(of: ".") {
            let written = text.distance(from: dot, to: text.endIndex) - 1
            if written < places { text += String(repeating: "0", count: places - written) }
        }
        return text
    }
}
