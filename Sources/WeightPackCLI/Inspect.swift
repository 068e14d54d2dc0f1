import ArgumentParser
import CheckpointFormats
import Dispatch
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a model file holds: tensors, dtypes, shapes, metadata, findings.",
        discussion: """
            Tensor names are shown as the file stores them, with the canonical name where the
            layout is recognised. The model is detected from tensor names and shapes (family,
            variant, prediction type, evidence, rejected candidates, per-component completeness;
            see Docs/model-knowledge.md). --stats reads every value (min, max, mean, std, NaN,
            Inf, values beyond the f16 range); without it only headers and CLIP position_ids are read.
            Exit codes: 0 done, 65 malformed input, 66 missing input.
            """)

    @Argument(help: "A model: .safetensors (or a .safetensors.index.json), .ckpt/.pt/.pth/.bin, a diffusers folder, or .wpk.")
    var input: String

    @Flag(help: "Print one JSON document on stdout instead of a table.")
    var json = false

    @Flag(help: "Compute per-tensor statistics (reads all tensor data).")
    var stats = false

    @Option(help: "Only tensors whose name matches this shell pattern (e.g. 'first_stage_model.*').")
    var filter: String?

    @OptionGroup var inputOptions: InputOptions

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let store = try inputOptions.open(input)
            let model = try CanonicalModel(store)
            let report = try InspectionReport(store: store, path: input, filter: filter, computeStatistics: stats, model: model)
            if json {
                print(report.json.serialized(pretty: true))
            } else {
                print(report.table(showStatistics: stats))
            }
        }
    }
}

/// Everything `inspect` says about a store.
struct InspectionReport {
    struct Row {
        var descriptor: TensorDescriptor
        var statistics: TensorStatistics?
        var storedBytes: Int?
        var sourceDType: DType?
        var canonical: [String] = []
        /// Set for an int8 tensor of a `.wpk` (its layout and the error it took).
        var quantization: WPKQuantization?
        /// The dtype stored: I8 for an int8 tensor (whose values read as F32).
        var storedDType: DType { quantization == nil ? descriptor.dtype : .i8 }
    }

    struct Finding {
        var severity: String
        var code: String
        var message: String
        var tensor: String?
    }

    let path: String
    let format: String
    let metadata: [String: String]
    let rows: [Row]
    let findings: [Finding]
    let totalTensorCount: Int
    let wpkMetadata: JSONObject?
    let model: CanonicalModel?

    init(store: any TensorStore, path: String, filter: String?, computeStatistics: Bool, model: CanonicalModel? = nil) throws {
        self.model = model
        self.path = path
        format = store.formatName
        metadata = store.metadata
        totalTensorCount = store.tensors.count
        let selected = store.tensors.filter { d in filter.map { fnmatch($0, d.name, 0) == 0 } ?? true }
        let wpk = store as? WPKFile
        wpkMetadata = wpk?.headerMetadata
        var rows = selected.map { d in
            let entry = wpk?.entry(named: d.name)
            return Row(descriptor: d, statistics: nil, storedBytes: entry?.length, sourceDType: entry?.sourceDType, quantization: entry?.quantization)
        }
        if computeStatistics {
            let results = try Self.statistics(of: selected, in: store)
            for i in rows.indices { rows[i].statistics = results[i] }
        }
        var findings = Self.findings(rows: rows)
        if let model, let remapped = model.store as? RemappedStore {
            var canonical: [String: [String]] = [:]
            for r in remapped.recipes { for s in r.sources { canonical[s, default: []].append(r.name) } }
            for i in rows.indices { rows[i].canonical = canonical[rows[i].descriptor.name] ?? [] }
        }
        if let model { findings += try Self.modelFindings(model) }
        self.rows = rows
        self.findings = findings
    }

    /// Findings about the model as a whole: position_ids, completeness, leftovers, EMA.
    private static func modelFindings(_ model: CanonicalModel) throws -> [Finding] {
        var out: [Finding] = []
        for (tensor, wrong) in try model.brokenPositionIDs() {
            let source = model.sourceName(of: tensor) ?? tensor
            if wrong.isEmpty {
                out.append(Finding(severity: "warning", code: "position-ids-dtype", message: "position_ids hold the right values but are stored as \(model.store.descriptor(named: tensor)?.dtype.name ?? "?") instead of I64", tensor: source))
            } else {
                let list = wrong.prefix(12).map { "[\($0.index)] = \(format3($0.value))" }.joined(separator: ", ")
                out.append(Finding(severity: "error", code: "position-ids", message: "\(wrong.count) position_ids are not their index: \(list)\(wrong.count > 12 ? ", …" : "") (convert --fix-position-ids repairs them)", tensor: source))
            }
        }
        let d = model.detection
        if model.isCanonical {
            if d.family == nil && d.kind == "pipeline" {
                out.append(Finding(severity: "warning", code: "unknown-family", message: d.candidates.isEmpty ? "no known family fits (see architecture.rejected)" : "several families fit: \(d.candidates.joined(separator: ", "))", tensor: nil))
            }
            for c in d.missingComponents {
                out.append(Finding(severity: "warning", code: "missing-component", message: "the model has no \(c.rawValue)", tensor: nil))
            }
            for c in d.components {
                if !c.missing.isEmpty {
                    out.append(Finding(severity: "error", code: "missing-tensors", message: "\(c.component.rawValue) lacks \(c.missing.count) tensors: \(c.missing.prefix(5).joined(separator: ", "))\(c.missing.count > 5 ? ", …" : "")", tensor: nil))
                }
                if !c.unexpected.isEmpty {
                    out.append(Finding(severity: "warning", code: "unexpected-tensors", message: "\(c.component.rawValue) has \(c.unexpected.count) tensors its structure does not explain: \(c.unexpected.prefix(5).joined(separator: ", "))\(c.unexpected.count > 5 ? ", …" : "")", tensor: nil))
                }
                for m in c.shapeMismatches {
                    out.append(Finding(severity: "error", code: "shape-mismatch", message: "shape \(m.actual), expected \(m.expected)", tensor: m.tensor))
                }
            }
        } else {
            out.append(Finding(severity: "info", code: "layout-unknown", message: "no Stable Diffusion layout recognised; tensors are shown as stored", tensor: nil))
        }
        if model.ema.only {
            out.append(Finding(severity: "info", code: "ema-only", message: "only EMA weights are present (\(model.ema.tensorCount) model_ema.* tensors, \(formatBytes(model.ema.byteCount)), no model.diffusion_model.*): the UNet is read from them, and convert uses them", tensor: nil))
        } else if model.ema.isPresent {
            out.append(Finding(severity: "info", code: "ema", message: "EMA weights present: \(model.ema.tensorCount) tensors, \(formatBytes(model.ema.byteCount)) (convert --weights ema selects them)", tensor: nil))
        }
        let grouped = Dictionary(grouping: model.leftovers, by: \.kind)
        for (kind, items) in grouped.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where kind != .ema {
            let bytes = items.reduce(0) { $0 + $1.descriptor.byteCount }
            out.append(Finding(severity: kind == .unknown ? "warning" : "info", code: "leftover-\(kind.rawValue)", message: "\(items.count) \(kind.rawValue) tensors (\(formatBytes(bytes))) are not model weights and are left out by convert/export unless --keep-extra: \(items.prefix(4).map(\.descriptor.name).joined(separator: ", "))\(items.count > 4 ? ", …" : "")", tensor: nil))
        }
        return out
    }

    /// Statistics of every tensor, two tensors at a time (one per core).
    private static func statistics(of tensors: [TensorDescriptor], in store: any TensorStore) throws -> [TensorStatistics?] {
        let progress = TerminalProgress.make("stats")
        progress?.begin(total: tensors.reduce(0) { $0 + $1.byteCount })
        let results = ResultBox<Result<TensorStatistics?, any Error>>(count: tensors.count)
        DispatchQueue.concurrentPerform(iterations: tensors.count) { i in
            let d = tensors[i]
            do {
                let view = try store.tensor(named: d.name)
                let stats = try? view.statistics()  // nil for dtypes without numeric values
                results.set(i, .success(stats))
            } catch {
                results.set(i, .failure(error))
            }
        }
        progress?.advance(by: tensors.reduce(0) { $0 + $1.byteCount })
        progress?.finish()
        return try results.values.map { try $0!.get() }
    }

    private static func findings(rows: [Row]) -> [Finding] {
        var out: [Finding] = []
        for row in rows {
            guard let s = row.statistics else { continue }
            let name = row.descriptor.name
            if s.nanCount > 0 { out.append(Finding(severity: "error", code: "nan", message: "\(s.nanCount) NaN values", tensor: name)) }
            if s.infinityCount > 0 { out.append(Finding(severity: "error", code: "inf", message: "\(s.infinityCount) infinite values", tensor: name)) }
            if s.beyondFloat16Count > 0 {
                out.append(Finding(severity: "warning", code: "beyond-f16-range", message: "\(s.beyondFloat16Count) values beyond ±65504 become infinite in f16", tensor: name))
            }
            if s.count > 1, s.zeroCount == s.count, row.descriptor.dtype.isFloatingPoint {
                out.append(Finding(severity: "warning", code: "all-zero", message: "every value is zero", tensor: name))
            }
        }
        let floatTypes = Set(rows.map(\.descriptor.dtype).filter(\.isFloatingPoint))
        if floatTypes.count > 1 {
            out.append(Finding(severity: "info", code: "mixed-dtypes", message: "floating-point tensors are stored as " + floatTypes.map(\.name).sorted().joined(separator: ", "), tensor: nil))
        }
        return out
    }

    var parameterCount: Int { rows.reduce(0) { $0 + $1.descriptor.elementCount } }
    var byteCount: Int { rows.reduce(0) { $0 + $1.descriptor.byteCount } }
    var storedByteCount: Int? {
        rows.allSatisfy { $0.storedBytes != nil } ? rows.reduce(0) { $0 + $1.storedBytes! } : nil
    }

    var json: JSONValue {
        var root = JSONObject()
        root["path"] = .string(path)
        root["format"] = .string(format)
        if let model {
            var architecture = model.detection.json.objectValue ?? JSONObject()
            architecture["ema"] = ["present": .bool(model.ema.isPresent), "only": .bool(model.ema.only), "tensors": JSONValue(model.ema.tensorCount), "bytes": JSONValue(model.ema.byteCount)]
            architecture["leftovers"] = .array(model.leftovers.map { ["name": .string($0.descriptor.name), "kind": .string($0.kind.rawValue), "bytes": JSONValue($0.descriptor.byteCount)] })
            root["architecture"] = .object(architecture)
        } else {
            root["architecture"] = ["family": "unknown", "evidence": [], "note": "model detection was not run"]
        }
        root["metadata"] = .object(JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
        if let wpkMetadata { root["wpk"] = .object(wpkMetadata) }
        var summary = JSONObject()
        summary["tensor_count"] = JSONValue(rows.count)
        summary["total_tensor_count"] = JSONValue(totalTensorCount)
        summary["parameter_count"] = JSONValue(parameterCount)
        summary["bytes"] = JSONValue(byteCount)
        var dtypes = JSONObject()
        for (dtype, count) in Dictionary(grouping: rows, by: \.storedDType).mapValues(\.count).sorted(by: { $0.key.name < $1.key.name }) {
            dtypes[dtype.name] = JSONValue(count)
        }
        summary["dtypes"] = .object(dtypes)
        if let stored = storedByteCount {
            summary["stored_bytes"] = JSONValue(stored)
            summary["compression_ratio"] = JSONValue(stored > 0 ? Double(byteCount) / Double(stored) : 1)
        }
        root["summary"] = .object(summary)
        root["tensors"] = .array(rows.map { row in
            var t = JSONObject()
            t["name"] = .string(row.descriptor.name)
            t["dtype"] = .string(row.storedDType.name)
            if let q = row.quantization { t["quantization"] = Self.json(q) }
            t["shape"] = .array(row.descriptor.shape.dimensions.map { JSONValue($0) })
            if let stored = row.storedBytes, stored != row.descriptor.byteCount { t["stored_bytes"] = JSONValue(stored) }
            if let source = row.sourceDType, source != row.descriptor.dtype { t["source_dtype"] = .string(source.name) }
            if row.canonical.count == 1 { t["canonical"] = .string(row.canonical[0]) } else if row.canonical.count > 1 { t["canonical"] = .array(row.canonical.map { .string($0) }) }
            if let s = row.statistics {
                t["stats"] = [
                    "min": JSONValue(s.min), "max": JSONValue(s.max), "mean": JSONValue(s.mean), "std": JSONValue(s.std),
                    "nan": JSONValue(s.nanCount), "inf": JSONValue(s.infinityCount), "zeros": JSONValue(s.zeroCount),
                    "beyond_f16": JSONValue(s.beyondFloat16Count),
                ]
            }
            return .object(t)
        })
        root["findings"] = .array(findings.map { f in
            var o = JSONObject()
            o["severity"] = .string(f.severity)
            o["code"] = .string(f.code)
            o["message"] = .string(f.message)
            if let tensor = f.tensor { o["tensor"] = .string(tensor) }
            return .object(o)
        })
        return .object(root)
    }

    func table(showStatistics: Bool) -> String {
        var lines: [String] = []
        lines.append("file:       \(path)")
        lines.append("format:     \(format)")
        var counts = "\(rows.count)"
        if rows.count != totalTensorCount { counts += " of \(totalTensorCount) (filtered)" }
        lines.append("tensors:    \(counts), \(formatCount(parameterCount)) parameters, \(formatBytes(byteCount))")
        let dtypes = Dictionary(grouping: rows, by: \.storedDType).mapValues(\.count).sorted { $0.value > $1.value }
        lines.append("dtypes:     " + dtypes.map { "\($0.key.name) \($0.value)" }.joined(separator: ", "))
        if let stored = storedByteCount, stored != byteCount {
            lines.append("stored:     \(formatBytes(stored)) (compression ratio \(format1(Double(byteCount) / Double(max(stored, 1)))))")
        }
        if let source = wpkMetadata?["source"]?.objectValue {
            var text = source["name"]?.stringValue ?? "?"
            if let f = source["format"]?.stringValue { text += " (\(f))" }
            if let sha = source["sha256"]?.stringValue { text += " sha256 \(sha.prefix(16))…" }
            lines.append("source:     \(text)")
        }
        if let d = model?.detection {
            var text = d.familyID + (d.variant.map { " \($0)" } ?? "") + " (\(d.kind))"
            if let f = d.family { text += ": \(f.name)" }
            lines.append("model:      \(text)")
            lines.append("prediction: \(d.predictionType ?? "unknown") (\(d.predictionSource))")
            for e in d.evidence { lines.append("evidence:   \(e)") }
            for r in d.rejected { lines.append("rejected:   \(r.family): \(r.reasons.joined(separator: "; "))") }
            for c in d.components {
                lines.append("component:  \(c.component.rawValue): \(c.tensorCount) tensors, \(c.summary); \(c.missing.count) missing, \(c.unexpected.count) unexpected, \(c.shapeMismatches.count) mis-shaped")
            }
            if let m = model, m.ema.isPresent {
                lines.append("ema:        \(m.ema.tensorCount) tensors, \(formatBytes(m.ema.byteCount))" + (m.ema.only ? " (EMA only: the UNet is read from them)" : ""))
            }
        }
        for (k, v) in metadata.sorted(by: { $0.key < $1.key }).prefix(20) {
            lines.append("metadata:   \(k) = \(v.count > 80 ? String(v.prefix(77)) + "..." : v)")
        }
        lines.append("")
        var header = ["NAME", "DTYPE", "SHAPE"]
        if showStatistics { header += ["MIN", "MAX", "MEAN", "STD", "NAN", "INF"] }
        let showQuantization = rows.contains { $0.quantization != nil }
        if showQuantization { header += ["SNR DB", "MAX ABS ERR", "COSINE"] }
        var table = [header]
        for row in rows {
            var cells = [row.descriptor.name, row.storedDType.name, row.descriptor.shape.description]
            if showStatistics {
                if let s = row.statistics {
                    cells += [num(s.min), num(s.max), num(s.mean), num(s.std), String(s.nanCount), String(s.infinityCount)]
                } else {
                    cells += ["-", "-", "-", "-", "-", "-"]
                }
            }
            if showQuantization {
                if let m = row.quantization?.metrics {
                    cells += [m.snrDecibels.map(format1) ?? "exact", num(m.maxAbsoluteError), cosineText(m.cosine)]
                } else {
                    cells += ["-", "-", "-"]
                }
            }
            table.append(cells)
        }
        lines.append(renderTable(table))
        if !findings.isEmpty {
            lines.append("")
            lines.append("findings:")
            for f in findings {
                lines.append("  \(f.severity): \(f.tensor.map { "\($0): " } ?? "")\(f.message)")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// Cosine similarity with six decimals (what separates 0.99999 from 0.9999).
    private func cosineText(_ v: Double) -> String {
        let scaled = Int((v * 1_000_000).rounded())
        let digits = String(scaled % 1_000_000)
        return "\(scaled / 1_000_000)." + String(repeating: "0", count: 6 - digits.count) + digits
    }

    /// An int8 tensor's layout and error, for `--json`.
    static func json(_ q: WPKQuantization) -> JSONValue {
        var o = JSONObject()
        o["scheme"] = .string(Int8BlockLayout.schemeName)
        o["block_size"] = JSONValue(q.layout.blockSize)
        o["scale_dtype"] = "F16"
        o["dequantized_dtype"] = "F32"
        if let m = q.metrics {
            o["error"] = ["snr_db": m.snrDecibels.map { JSONValue($0) } ?? .null, "max_abs": JSONValue(m.maxAbsoluteError), "cosine": JSONValue(m.cosine)]
        }
        return .object(o)
    }

    private func num(_ v: Double) -> String {
        guard v.isFinite else { return v.isNaN ? "nan" : (v > 0 ? "inf" : "-inf") }
        let a = abs(v)
        if a != 0 && (a < 1e-3 || a >= 1e5) {
            // Scientific with 3 significant digits.
            let exponent = Int(log10(a).rounded(.down))
            let mantissa = v / pow(10, Double(exponent))
            return "\(String(format3(mantissa)))e\(exponent)"
        }
        return format3(v)
    }
}

/// Three decimal places.
func format3(_ v: Double) -> String {
    let scaled = (v * 1000).rounded() / 1000
    var text = String(scaled)
    if let dot = text.firstIndex(of: ".") {
        let decimals = text.distance(from: dot, to: text.endIndex) - 1
        if decimals < 3 { text += String(repeating: "0", count: 3 - decimals) }
    }
    return text
}

/// `1.07 B`, `860 M`, `12.3 K` parameters.
func formatCount(_ n: Int) -> String {
    switch n {
    case 1_000_000_000...: format1(Double(n) / 1e9) + " B"
    case 1_000_000...: format1(Double(n) / 1e6) + " M"
    case 1_000...: format1(Double(n) / 1e3) + " K"
    default: String(n)
    }
}

/// Left-aligned columns separated by two spaces.
func renderTable(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = Array(repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// Results written from concurrent workers, one slot each.
final class ResultBox<T>: @unchecked Sendable {
    private(set) var values: [T?]
    private let lock = NSLockLike()
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ value: T) { lock.withLock { values[i] = value } }
}

/// A pthread mutex.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
