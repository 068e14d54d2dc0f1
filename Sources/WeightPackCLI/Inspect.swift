import Adapters
import ArgumentParser
import CheckpointFormats
import ModelCatalog
import ModelLoading
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
            Tensor names are shown as the file stores them, with the canonical name where the \
            layout is recognised. The model is detected from tensor names and shapes (family, \
            variant, prediction type, evidence, rejected candidates, per-component completeness; \
            see Docs/model-knowledge.md). --stats reads every value (min, max, mean, std, NaN, \
            Inf, values beyond the f16 range); without it only headers and CLIP position_ids are read. \
            For a .wpk or .gguf with quantised tensors, each shows its stored type (I8, Q4_K, …), \
            bits per weight, the error recorded at conversion (SNR dB, max abs, cosine; a GGUF \
            records none) and the type it fell back from; the summary gives the count per type \
            and the file's bits per weight (stored tensor bytes · 8 / values).             A file with no model layout that is a LoRA, LyCORIS or textual-inversion embedding is             shown as one: kind, naming dialect, base family with evidence, ranks and alphas, layers             touched, unmatched keys, training metadata (Docs/adapters.md; "adapter" with --json).

            Exit codes: 0 done, 65 malformed input (or an adapter with a bad module), 66 missing input.
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
            let model = try CanonicalModel.open(input, options: inputOptions.modelInputOptions)
            var report = InspectionReport(
                path: input,
                inspection: try Inspection(
                    model, filter: filter, computeStatistics: stats,
                    progress: stats ? TerminalProgress.make("stats") : nil))
            // PEFT keys (`unet.…`, `text_encoder.…`) pass for a diffusers layout of no recognised model.
            if !model.isCanonical || model.detection.family == nil {
                // An adapter with a bad module is still shown, tensors and all, with the reason as a finding.
                do throws(AdapterError) { report.adapter = try AdapterReport.inspect(model.source) } catch { report.adapterProblem = error.message }
            }
            if let filter, report.rows.isEmpty, let example = report.filterMatchesOtherNames.first {
                let (holds, other) =
                    report.recordedHeader?["layout"] != nil ? ("canonical names", "source name") : ("its source's names", "canonical name")
                printError(
                    "note: --filter '\(filter)' matches no tensor of \(input), which stores \(holds); it matches the \(other) '\(example.other)' of '\(example.stored)'"
                )
            }
            if json {
                print(report.json.serialized(pretty: true))
            } else {
                print(report.table(showStatistics: stats))
            }
        }
    }
}

/// `inspect`'s two renderings of an ``Inspection``: the table and the JSON document.
struct InspectionReport {
    let path: String
    let inspection: Inspection
    /// What the file is when it is an adapter (no model layout recognised).
    var adapter: AdapterReport? = nil
    /// Why a file that looks like an adapter cannot be used as one (a bad module, alpha, rank).
    var adapterProblem: String? = nil

    init(path: String, inspection: Inspection) {
        self.path = path
        self.inspection = inspection
    }

    /// The findings, with the adapter problem (if any) as an error finding `bad-adapter`.
    var findings: [Inspection.Finding] {
        inspection.findings
            + (adapterProblem.map {
                [Inspection.Finding(severity: .error, code: "bad-adapter", message: "not usable as an adapter: \($0)", tensor: nil)]
            } ?? [])
    }

    var format: String { inspection.format }
    var metadata: [String: String] { inspection.metadata }
    var rows: [Inspection.Row] { inspection.rows }
    var totalTensorCount: Int { inspection.totalTensorCount }
    var recordedHeader: JSONObject? { inspection.recordedHeader }
    var model: CanonicalModel { inspection.model }
    var parameterCount: Int { inspection.parameterCount }
    var byteCount: Int { inspection.byteCount }
    var storedByteCount: Int? { inspection.storedByteCount }
    var filterMatchesOtherNames: [(stored: String, other: String)] { inspection.filterMatchesOtherNames }

    var json: JSONValue {
        var root = JSONObject()
        root["path"] = .string(path)
        root["format"] = .string(format)
        var architecture = model.detection.json.objectValue ?? JSONObject()
        architecture["ema"] = [
            "present": .bool(model.ema.isPresent), "only": .bool(model.ema.only), "tensors": JSONValue(model.ema.tensorCount),
            "bytes": JSONValue(model.ema.byteCount),
        ]
        architecture["leftovers"] = .array(
            model.leftovers.map {
                ["name": .string($0.descriptor.name), "kind": .string($0.kind.rawValue), "bytes": JSONValue($0.descriptor.byteCount)]
            })
        architecture["head_counts"] = .string(model.headCounts.rawValue)
        root["architecture"] = .object(architecture)
        root["metadata"] = .object(JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
        if let recordedHeader { root["wpk"] = .object(recordedHeader) }
        if let budget = inspection.qualityBudget {
            root["quality_budget"] = ["recipe": .object(budget.recipe), "measured": budget.measured.map { .object($0) } ?? .null]
        }
        if let adapter { root["adapter"] = adapter.json }
        var summary = JSONObject()
        summary["tensor_count"] = JSONValue(rows.count)
        summary["total_tensor_count"] = JSONValue(totalTensorCount)
        summary["parameter_count"] = JSONValue(parameterCount)
        summary["bytes"] = JSONValue(byteCount)
        var dtypes = JSONObject()
        for (dtype, count) in Dictionary(grouping: rows, by: \.storedTypeName).mapValues(\.count).sorted(by: { $0.key < $1.key }) {
            dtypes[dtype] = JSONValue(count)
        }
        summary["dtypes"] = .object(dtypes)
        if inspection.hasQuantizedRows {
            summary["bits_per_weight"] = .double((inspection.bitsPerWeight * 1000).rounded() / 1000)
            var fallbacks = JSONObject()
            for (key, list) in Dictionary(grouping: rows.filter { $0.fallbackFrom != nil }, by: { "\($0.fallbackFrom!.name)>\($0.storedTypeName)" })
                .sorted(by: { $0.key < $1.key })
            {
                fallbacks[key] = JSONValue(list.count)
            }
            summary["fallbacks"] = .object(fallbacks)
        }
        if let stored = storedByteCount {
            summary["stored_bytes"] = JSONValue(stored)
            summary["compression_ratio"] = JSONValue(stored > 0 ? Double(byteCount) / Double(stored) : 1)
        }
        root["summary"] = .object(summary)
        root["tensors"] = .array(
            rows.map { row in
                var t = JSONObject()
                t["name"] = .string(row.descriptor.name)
                t["dtype"] = .string(row.storedTypeName)
                if let q = row.quantization { t["quantization"] = Self.json(q) }
                if let g = row.ggml { t["quantization"] = Self.json(g) }
                if row.ggml == nil, let from = row.recordedFallbackFrom { t["fallback_from"] = .string(from.name) }
                if inspection.hasQuantizedRows, let bpw = row.bitsPerWeight { t["bits_per_weight"] = .double((bpw * 10000).rounded() / 10000) }
                t["shape"] = .array(row.descriptor.shape.dimensions.map { JSONValue($0) })
                if let stored = row.storedBytes, stored != row.descriptor.byteCount { t["stored_bytes"] = JSONValue(stored) }
                if let source = row.sourceDType, source != row.descriptor.dtype { t["source_dtype"] = .string(source.name) }
                if row.canonical.count == 1 {
                    t["canonical"] = .string(row.canonical[0])
                } else if row.canonical.count > 1 {
                    t["canonical"] = .array(row.canonical.map { .string($0) })
                }
                if let s = row.statistics {
                    t["stats"] = [
                        "min": JSONValue(s.min), "max": JSONValue(s.max), "mean": JSONValue(s.mean), "std": JSONValue(s.std),
                        "nan": JSONValue(s.nanCount), "inf": JSONValue(s.infinityCount), "zeros": JSONValue(s.zeroCount),
                        "beyond_f16": JSONValue(s.beyondFloat16Count),
                    ]
                }
                return .object(t)
            })
        root["findings"] = .array(
            findings.map { f in
                var o = JSONObject()
                o["severity"] = .string(f.severity.rawValue)
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
        let dtypes = Dictionary(grouping: rows, by: \.storedTypeName).mapValues(\.count).sorted {
            $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key
        }
        if !dtypes.isEmpty { lines.append("dtypes:     " + dtypes.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) }
        if inspection.hasQuantizedRows {
            let stored = rows.reduce(0) { $0 + ($1.storedBytes ?? $1.descriptor.byteCount) }
            lines.append("stored:     \(formatBytes(stored)), \(format2(inspection.bitsPerWeight)) bits per weight")
            let fallbacks = Dictionary(grouping: rows.filter { $0.fallbackFrom != nil }, by: { "\($0.fallbackFrom!.name) to \($0.storedTypeName)" })
            for (pair, list) in fallbacks.sorted(by: { $0.key < $1.key }) {
                lines.append("fallback:   \(list.count) tensor\(list.count == 1 ? "" : "s") from \(pair) (rows did not fit)")
            }
        } else if let stored = storedByteCount, stored != byteCount {
            lines.append("stored:     \(formatBytes(stored)) (compression ratio \(format1(Double(byteCount) / Double(max(stored, 1)))))")
        }
        if let source = recordedHeader?["source"]?.objectValue {
            var text = source["name"]?.stringValue ?? "?"
            if let f = source["format"]?.stringValue { text += " (\(f))" }
            if let sha = source["sha256"]?.stringValue { text += " sha256 \(sha.prefix(16))…" }
            lines.append("source:     \(text)")
        }
        for a in recordedHeader?["adapters"]?.arrayValue ?? [] {
            guard let o = a.objectValue else { continue }
            var text = "\(o["file"]?.stringValue ?? "?") at scale \(o["scale"]?.doubleValue.map { String($0) } ?? "?")"
            if let kind = o["kind"]?.stringValue, !kind.isEmpty { text += ", \(kind)" }
            if let sha = o["sha256"]?.stringValue { text += ", sha256 \(sha.prefix(16))…" }
            lines.append("merged:     \(text)")
        }
        let d = model.detection
        if let adapter {
            lines += adapter.lines
        } else if !model.isCanonical || d.kind == .unknown {
            lines.append("model:      not recognised: no Stable Diffusion UNet, VAE or text encoder in the tensor names")
        } else {
            var text = d.familyID + (d.variant.map { " \($0)" } ?? "") + " (\(d.kind))"
            if let f = d.family { text += ": \(f.name)" }
            lines.append("model:      \(text)")
            if d.unet != nil || d.predictionType != nil {
                lines.append("prediction: \(d.predictionType?.rawValue ?? "unknown") (\(d.predictionSource))")
            }
            switch model.headCounts {
            case .publishedFamily:
                lines.append("heads:      assumed from the published \(d.family?.name ?? "family") configuration (a single file does not state them)")
            case .assumedHeadDim64:
                lines.append(
                    "heads:      assumed 64-wide (the widths are not the published ones and the file does not state head counts; --config DIR gives them)"
                )
            case .read, .notApplicable: break
            }
            for e in d.evidence { lines.append("evidence:   \(e)") }
            for r in d.rejected { lines.append("rejected:   \(r.family): \(r.reasons.joined(separator: "; "))") }
            for c in d.components {
                lines.append(
                    "component:  \(c.component.rawValue): \(c.tensorCount) tensors, \(c.summary); \(c.missing.count) missing, \(c.unexpected.count) unexpected, \(c.shapeMismatches.count) mis-shaped"
                )
            }
            if model.ema.isPresent {
                lines.append(
                    "ema:        \(model.ema.tensorCount) tensors, \(formatBytes(model.ema.byteCount))"
                        + (model.ema.only ? " (EMA only: the UNet is read from them)" : ""))
            }
        }
        for line in inspection.qualityBudget?.lines ?? [] { lines.append("budget:     \(line)") }
        let shownElsewhere = [ModelExport.GGUFBudget.recipeKey, ModelExport.GGUFBudget.measuredKey]
        for (k, v) in metadata.filter({ !$0.key.hasPrefix(ModelExport.fallbackKeyPrefix) && !shownElsewhere.contains($0.key) })
            .sorted(by: { $0.key < $1.key }).prefix(20)
        {
            lines.append("metadata:   \(k) = \(v.count > 80 ? String(v.prefix(77)) + "..." : v)")
        }
        var header = ["NAME", "DTYPE", "SHAPE"]
        if showStatistics { header += ["MIN", "MAX", "MEAN", "STD", "NAN", "INF"] }
        let showQuantization = inspection.hasQuantizedRows
        let showBlocks = rows.contains { $0.ggml != nil || $0.fallbackFrom != nil }
        if showBlocks { header += ["BPW"] }
        if showQuantization { header += ["SNR DB", "MAX ABS ERR", "COSINE"] }
        let budget = inspection.qualityBudget
        if budget != nil { header += ["PREDICTED DB"] }
        if showBlocks { header += ["NOTE"] }
        var table = [header]
        for row in rows {
            var cells = [row.descriptor.name, row.storedTypeName, row.descriptor.shape.description]
            if showBlocks { cells.append(row.bitsPerWeight.map(format2) ?? "-") }
            if showStatistics {
                if let s = row.statistics {
                    cells += [num(s.min), num(s.max), num(s.mean), num(s.std), String(s.nanCount), String(s.infinityCount)]
                } else {
                    cells += ["-", "-", "-", "-", "-", "-"]
                }
            }
            if showQuantization {
                if let m = row.quantization?.metrics ?? row.ggml?.metrics {
                    cells += [m.snrDecibels.map(format1) ?? "exact", num(m.maxAbsoluteError), cosineText(m.cosine)]
                } else {
                    cells += ["-", "-", "-"]
                }
            }
            if let budget {
                // The predicted output error of the layer (`--dtype auto`), by canonical name.
                let predicted = ([row.descriptor.name] + row.canonical).lazy.compactMap { budget.predictedErrorDB(of: $0) }.first
                cells.append(predicted.map(format1) ?? "-")
            }
            if showBlocks { cells.append(row.fallbackFrom.map { "fallback from \($0.name)" } ?? "") }
            table.append(cells)
        }
        var tableIndex: Int?
        if !rows.isEmpty {
            lines.append("")
            tableIndex = lines.count
            lines.append(renderTable(table))
        }
        if !findings.isEmpty {
            lines.append("")
            lines.append("findings:")
            for f in findings {
                lines.append("  \(f.severity): \(f.tensor.map { "\($0): " } ?? "")\(f.message)")
            }
        }
        // Each line but the (already escaped) table is one logical line: escape it whole.
        return lines.enumerated().map { $0.offset == tableIndex ? $0.element : PrintableText.escaped($0.element) }.joined(separator: "\n")
    }

    /// Cosine similarity with six decimals (what separates 0.99999 from 0.9999).
    private func cosineText(_ v: Double) -> String {
        let scaled = Int((v * 1_000_000).rounded())
        let digits = String(scaled % 1_000_000)
        return "\(scaled / 1_000_000)." + String(repeating: "0", count: 6 - digits.count) + digits
    }

    /// A ggml block tensor's type, rows, fallback and error, for `--json`.
    static func json(_ g: WPKBlockStorage) -> JSONValue {
        var o = JSONObject()
        o["scheme"] = .string(WPKBlockStorage.schemeName)
        o["type"] = .string(g.type.name)
        o["row_length"] = JSONValue(g.rowLength)
        o["bits_per_weight"] = .double(g.type.bitsPerWeight)
        o["dequantized_dtype"] = "F32"
        if let from = g.fallbackFrom { o["fallback_from"] = .string(from.name) }
        if let m = g.metrics {
            o["error"] = [
                "snr_db": m.snrDecibels.map { JSONValue($0) } ?? .null, "max_abs": JSONValue(m.maxAbsoluteError), "cosine": JSONValue(m.cosine),
            ]
        }
        return .object(o)
    }

    /// An int8 tensor's layout and error, for `--json`.
    static func json(_ q: WPKQuantization) -> JSONValue {
        var o = JSONObject()
        o["scheme"] = .string(Int8BlockLayout.schemeName)
        o["block_size"] = JSONValue(q.layout.blockSize)
        o["scale_dtype"] = "F16"
        o["dequantized_dtype"] = "F32"
        if let m = q.metrics {
            o["error"] = [
                "snr_db": m.snrDecibels.map { JSONValue($0) } ?? .null, "max_abs": JSONValue(m.maxAbsoluteError), "cosine": JSONValue(m.cosine),
            ]
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
func format3(_ v: Double) -> String { Formatting.threeDecimals(v) }

/// `1.07 B`, `860 M`, `12.3 K` parameters.
func formatCount(_ n: Int) -> String {
    switch n {
    case 1_000_000_000...: format1(Double(n) / 1e9) + " B"
    case 1_000_000...: format1(Double(n) / 1e6) + " M"
    case 1_000...: format1(Double(n) / 1e3) + " K"
    default: String(n)
    }
}

/// Left-aligned columns separated by two spaces, every cell's control characters escaped (a
/// name from a file cannot break a row or reach the terminal raw).
func renderTable(_ rows: [[String]]) -> String {
    let rows = rows.map { $0.map(PrintableText.escaped) }
    guard let first = rows.first else { return "" }
    var widths = Array(repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}
