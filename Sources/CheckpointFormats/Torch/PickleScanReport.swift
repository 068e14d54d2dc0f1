import SafePickle

/// Every global named by every pickle in a file, classified.
public struct PickleScanReport: Sendable {
    /// One global reference.
    public struct Finding: Hashable, Sendable {
        /// The pickle it was found in: a zip member (`archive/data.pkl`, `archive/data.pkl#2` for a
        /// second pickle in the same member) or a legacy pickle (`pickle 4 (object)`).
        public var entry: String
        public var module: String
        public var name: String
        /// Byte offset of the naming opcode within its entry.
        public var offset: Int
        /// `GLOBAL`, `STACK_GLOBAL`, `INST`, `EXT1`…
        public var opcode: String
        public var safety: GlobalSafety
        /// `false` when operands could not be traced statically (always dangerous).
        public var isResolved: Bool

        /// `module.name`.
        public var qualifiedName: String { "\(module).\(name)" }
    }

    /// `ckpt`, `ckpt-legacy` or `pickle`.
    public var format: String
    /// The pickles that were walked, in order.
    public var pickles: [String] = []
    public var findings: [Finding] = []
    /// Walks that stopped before `STOP` (malformed or truncated pickles), one line each.
    public var problems: [String] = []

    public init(format: String) {
        self.format = format
    }

    /// The findings classed dangerous.
    public var dangerous: [Finding] { findings.filter { $0.safety == .dangerous } }
    /// Whether anything is dangerous.
    public var isDangerous: Bool { findings.contains { $0.safety == .dangerous } }
    /// The worst class found, `.safe` when there is nothing.
    public var worst: GlobalSafety { findings.map(\.safety).max() ?? .safe }

    mutating func add(_ listing: PickleGlobalListing, entry: String) {
        pickles.append(entry)
        for g in listing.globals {
            findings.append(Finding(
                entry: entry, module: g.module, name: g.name, offset: g.offset, opcode: g.opcode.name,
                safety: g.safety, isResolved: g.isResolved))
        }
        if let error = listing.error {
            problems.append("\(entry): \(error.description)")
        }
    }
}
