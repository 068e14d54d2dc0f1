import SafePickle

/// Every global named by every pickle in a file, classified.
public struct PickleScanReport: Sendable {
    /// One global reference.
    public struct Finding: Hashable, Sendable {
        /// The pickle it was found in: a zip member (`archive/data.pkl`, `archive/data.pkl#2` for a
        /// second pickle in the same member) or a legacy pickle (`pickle 4 (object)`).
        public var entry: String
        /// The module the unpickler imports (after Python 2 renames and torch's own mapping).
        public var module: String
        /// The attribute read from it; a dotted path for a protocol 4+ attribute walk.
        public var name: String
        /// `module.name` as written in the pickle (differs from `qualifiedName` when renamed).
        public var written: String
        /// The protocol in force where the global was named.
        public var protocolVersion: Int
        /// For an unresolved finding: why it could not be resolved.
        public var reason: String?
        /// Byte offset of the naming opcode within its entry.
        public var offset: Int
        /// `GLOBAL`, `STACK_GLOBAL`, `INST`, `EXT1`…
        public var opcode: String
        public var safety: GlobalSafety
        /// `false` when operands could not be traced statically (always dangerous).
        public var isResolved: Bool

        /// `module.name`: what the unpickler looks up.
        public var qualifiedName: String { "\(module).\(name)" }

        init(_ g: PickleGlobalReference, entry: String) {
            let target = g.resolved
            self.entry = entry
            module = g.isResolved ? target.module : g.module
            name = g.isResolved ? target.attributes.joined(separator: ".") : g.name
            written = g.qualifiedName
            offset = g.offset
            opcode = g.opcode.name
            safety = g.safety
            isResolved = g.isResolved
            protocolVersion = g.protocolVersion
            reason = g.reason
        }

        /// A finding that is not a global: something about the file makes what it would run
        /// impossible to see (always dangerous).
        init(unresolved reason: String, entry: String, opcode: String) {
            self.entry = entry
            module = "unknown"
            name = "unknown"
            written = "unknown unknown"
            offset = 0
            self.opcode = opcode
            safety = .dangerous
            isResolved = false
            protocolVersion = 0
            self.reason = reason
        }
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
    /// The findings not on the allow-list (dangerous first): what the gate refuses.
    public var refused: [Finding] {
        findings.filter { $0.safety == .dangerous } + findings.filter { $0.safety == .unknown }
    }
    /// Whether anything is dangerous.
    public var isDangerous: Bool { findings.contains { $0.safety == .dangerous } }
    /// The worst class found, `.safe` when there is nothing.
    public var worst: GlobalSafety { findings.map(\.safety).max() ?? .safe }

    mutating func add(_ listing: PickleGlobalListing, entry: String) {
        pickles.append(entry)
        for g in listing.globals {
            findings.append(Finding(g, entry: entry))
        }
        if let error = listing.error {
            problems.append("\(entry): \(error.description)")
        }
    }
}
