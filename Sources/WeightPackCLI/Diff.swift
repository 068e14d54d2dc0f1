import ArgumentParser
import CheckpointFormats
import ModelCatalog
import ModelLoading
import StrictJSON
import TensorCore

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare two models tensor by tensor through canonical names.",
        discussion: """
            Any two inputs (ckpt, safetensors, diffusers folder, .wpk) are compared under their \
            canonical names, so an LDM file and a diffusers folder of the same weights are \
            identical. Reports missing and extra tensors, dtype and shape changes, and for every \
            common tensor the max absolute difference and cosine similarity (values compared as \
            f32). Leftovers (schedule buffers, EMA) are not compared.

            Exit codes: 0 identical; 1 different; 65 malformed input; 66 missing input.
            """)

    @Argument(help: "The first model.")
    var a: String

    @Argument(help: "The second model.")
    var b: String

    @Flag(help: "Print one JSON document on stdout.")
    var json = false

    @Flag(help: "List every compared tensor, not only those that differ.")
    var all = false

    @OptionGroup var inputOptions: InputOptions

    struct Row {
        var name: String
        var status: String
        var detail: String
        var maxAbs: Double?
        var cosine: Double?
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let left = try CanonicalModel.open(a, options: inputOptions.modelInputOptions)
            let right = try CanonicalModel.open(b, options: inputOptions.modelInputOptions)
            var rows: [Row] = []
            let rightNames = Set(right.store.tensors.map(\.name))
            let leftNames = Set(left.store.tensors.map(\.name))
            var identical = 0
            for d in left.store.tensors {
                guard let e = right.store.descriptor(named: d.name) else {
                    if try impliedPositionIDs(d.name, in: left) { identical += 1; continue }
                    rows.append(Row(name: d.name, status: "missing-in-b", detail: "\(d.dtype.name) \(d.shape)"))
                    continue
                }
                if d.shape.count != e.shape.count {
                    rows.append(Row(name: d.name, status: "shape", detail: "\(d.shape) vs \(e.shape)"))
                    continue
                }
                let x = try left.store.tensor(named: d.name), y = try right.store.tensor(named: d.name)
                let sameBytes =
                    d.dtype == e.dtype && d.shape == e.shape && x.bytes.withUnsafeBytes { p in y.bytes.withUnsafeBytes { q in p.elementsEqual(q) } }
                if sameBytes {
                    identical += 1
                    if all { rows.append(Row(name: d.name, status: "identical", detail: "", maxAbs: 0, cosine: 1)) }
                    continue
                }
                let (maxAbs, cosine) = try compare(x, y)
                var status = "values"
                var detail = ""
                if d.dtype != e.dtype { status = "dtype"; detail = "\(d.dtype.name) vs \(e.dtype.name)" }
                if d.shape != e.shape { status = "shape"; detail = "\(d.shape) vs \(e.shape) (same element count)" }
                rows.append(Row(name: d.name, status: status, detail: detail, maxAbs: maxAbs, cosine: cosine))
            }
            for d in right.store.tensors where !leftNames.contains(d.name) {
                if try impliedPositionIDs(d.name, in: right) { continue }
                rows.append(Row(name: d.name, status: "missing-in-a", detail: "\(d.dtype.name) \(d.shape)"))
            }
            _ = rightNames
            let different = rows.filter { $0.status != "identical" }
            if json {
                var root = JSONObject()
                root["a"] = .string(a)
                root["b"] = .string(b)
                root["identical"] = .bool(different.isEmpty)
                root["summary"] = [
                    "compared": JSONValue(leftNames.intersection(rightNames).count), "identical": JSONValue(identical),
                    "missing_in_a": JSONValue(rows.filter { $0.status == "missing-in-a" }.count),
                    "missing_in_b": JSONValue(rows.filter { $0.status == "missing-in-b" }.count),
                    "dtype_changes": JSONValue(rows.filter { $0.status == "dtype" }.count),
                    "shape_changes": JSONValue(rows.filter { $0.status == "shape" }.count),
                    "value_changes": JSONValue(rows.filter { $0.status == "values" }.count),
                    "max_abs_diff": JSONValue(rows.compactMap(\.maxAbs).max() ?? 0),
                    "min_cosine": JSONValue(rows.compactMap(\.cosine).min() ?? 1),
                ]
                root["tensors"] = .array(
                    rows.map { r in
                        var o = JSONObject()
                        o["name"] = .string(r.name)
                        o["status"] = .string(r.status)
                        if !r.detail.isEmpty { o["detail"] = .string(r.detail) }
                        if let m = r.maxAbs { o["max_abs_diff"] = JSONValue(m) }
                        if let c = r.cosine { o["cosine"] = JSONValue(c) }
                        return .object(o)
                    })
                print(JSONValue.object(root).serialized(pretty: true))
            } else {
                var table: [[String]] = [["TENSOR", "STATUS", "MAX ABS", "COSINE", "DETAIL"]]
                for r in rows {
                    table.append([r.name, r.status, r.maxAbs.map { format6($0) } ?? "-", r.cosine.map { format6($0) } ?? "-", r.detail])
                }
                if rows.count > 0 { print(renderTable(table)) }
                print("compared \(leftNames.intersection(rightNames).count) tensors: \(identical) identical, \(different.count) differences")
            }
            if !different.isEmpty { throw ExitCode(ExitStatus.problemFound.rawValue) }
        }
    }

    /// Whether `name` is a CLIP position_ids buffer holding 0..n-1, which a side without it
    /// implies (transformers does not save the buffer).
    func impliedPositionIDs(_ name: String, in model: CanonicalModel) throws -> Bool {
        guard name.hasSuffix("text_model.embeddings.position_ids") else { return false }
        return try !model.brokenPositionIDs().contains { $0.tensor == name }
    }

    /// Max absolute difference and cosine similarity, in f64 over f32-widened values.
    func compare(_ x: TensorView, _ y: TensorView) throws -> (Double, Double) {
        let p = try x.floats(), q = try y.floats()
        var maxAbs = 0.0, dot = 0.0, nx = 0.0, ny = 0.0
        for i in 0..<min(p.count, q.count) {
            let u = Double(p[i]), v = Double(q[i])
            let d = abs(u - v)
            if d > maxAbs || d.isNaN { maxAbs = d.isNaN ? .nan : d }
            dot += u * v; nx += u * u; ny += v * v
        }
        let cosine = nx == 0 && ny == 0 ? 1 : (nx == 0 || ny == 0 ? 0 : dot / (nx.squareRoot() * ny.squareRoot()))
        return (maxAbs, cosine)
    }
}

/// Six significant decimals.
func format6(_ v: Double) -> String {
    guard v.isFinite else { return v.isNaN ? "nan" : "inf" }
    let scaled = (v * 1_000_000).rounded() / 1_000_000
    return scaled == 0 && v != 0 ? String(v) : String(scaled)
}
