import CheckpointFormats
import Quantization
import StrictJSON
import TensorCore

/// What a conversion or export to ggml block types stored: tensors per type, the tensors that
/// fell back from the type asked for (and why: their row lengths), and the file's bits per weight
/// (stored tensor bytes · 8 / values, every tensor counted).
public struct TypeSummary: Sendable {
    /// One tensor as stored.
    public struct Item: Sendable {
        /// The stored type's name (`Q4_K`, `F16`, `I8` for an int8 tensor).
        public var type: String
        public var fallbackFrom: GGMLType?
        /// Values per row, for block tensors (the rows that did not fit the type asked for).
        public var rowLength: Int?
        public var storedBytes: Int
        public var values: Int

        public init(type: String, fallbackFrom: GGMLType? = nil, rowLength: Int? = nil, storedBytes: Int, values: Int) {
            self.type = type
            self.fallbackFrom = fallbackFrom
            self.rowLength = rowLength
            self.storedBytes = storedBytes
            self.values = values
        }
    }

    /// Tensors that fell back from one type to another.
    public struct Fallback: Sendable, Hashable {
        public var from: GGMLType
        public var to: String
        public var count: Int
        /// The row lengths that did not fit `from`'s block, ascending.
        public var rowLengths: [Int]
    }

    public let items: [Item]

    public init(_ items: [Item]) { self.items = items }

    /// The summary of the tensors of a `.wpk` just written (or read).
    public init(wpk entries: [WPKTensorEntry]) {
        self.init(
            entries.map { e in
                let type = e.blocks?.type.name ?? (e.quantization != nil ? DType.i8.name : e.descriptor.dtype.name)
                return Item(
                    type: type, fallbackFrom: e.blocks?.fallbackFrom, rowLength: e.blocks?.rowLength, storedBytes: e.length,
                    values: e.descriptor.elementCount)
            })
    }

    /// Tensors per stored type, most first (ties by name).
    public var counts: [(type: String, count: Int)] {
        Dictionary(grouping: items, by: \.type).map { ($0.key, $0.value.count) }.sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
    }

    public var fallbacks: [Fallback] {
        var groups: [String: Fallback] = [:]
        for item in items {
            guard let from = item.fallbackFrom else { continue }
            let key = from.name + ">" + item.type
            var f = groups[key] ?? Fallback(from: from, to: item.type, count: 0, rowLengths: [])
            f.count += 1
            if let n = item.rowLength, !f.rowLengths.contains(n) { f.rowLengths.append(n) }
            groups[key] = f
        }
        return groups.values.map { f in
            var f = f; f.rowLengths.sort(); return f
        }.sorted { ($0.from.rawValue, $0.to) < ($1.from.rawValue, $1.to) }
    }

    public var storedByteCount: Int { items.reduce(0) { $0 + $1.storedBytes } }
    public var valueCount: Int { items.reduce(0) { $0 + $1.values } }

    /// Stored bytes · 8 / values (0 for a file without values).
    public var bitsPerWeight: Double { valueCount == 0 ? 0 : Double(storedByteCount) * 8 / Double(valueCount) }

    /// `180 Q4_K, 30 F16, 400 F32`.
    public var countsText: String { counts.map { "\($0.count) \($0.type)" }.joined(separator: ", ") }

    /// One sentence per fallback: `12 tensors fell back from Q4_K to Q5_0: rows of 2880, 1440`.
    public var fallbackLines: [String] {
        fallbacks.map { f in
            let rows = f.rowLengths.prefix(6).map(String.init).joined(separator: ", ") + (f.rowLengths.count > 6 ? ", …" : "")
            return "\(f.count) tensor\(f.count == 1 ? "" : "s") fell back from \(f.from.name) to \(f.to)" + (rows.isEmpty ? "" : ": rows of \(rows)")
        }
    }

    public var json: JSONValue {
        var types = JSONObject()
        for c in counts { types[c.type] = JSONValue(c.count) }
        return [
            "types": .object(types),
            "fallbacks": .array(
                fallbacks.map { f in
                    [
                        "from": .string(f.from.name), "to": .string(f.to), "count": JSONValue(f.count),
                        "row_lengths": .array(f.rowLengths.map { JSONValue($0) }),
                    ]
                }),
            "stored_bytes": JSONValue(storedByteCount),
            "values": JSONValue(valueCount),
            "bits_per_weight": .double((bitsPerWeight * 1000).rounded() / 1000),
        ]
    }
}
