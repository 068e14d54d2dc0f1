import ModelCatalog
import StrictJSON
import TensorCore

/// How an adapter file names its modules.
public enum AdapterDialect: String, Sendable, Hashable, CaseIterable {
    /// kohya's sd-scripts, A1111, ComfyUI and LyCORIS: `lora_unet_<path with underscores>.lora_down.weight`,
    /// `lora_te_`/`lora_te1_`/`lora_te2_`, a scalar `.alpha` per module.
    case kohya
    /// diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (optionally `.default`),
    /// alpha in the file's metadata (absent: alpha = rank).
    case peft = "diffusers-peft"
    /// diffusers' old attention processors: `…processor.to_q_lora.down.weight` (scale 1).
    case diffusersAttnProcessor = "diffusers-attn-processor"
}

/// The arithmetic a module's factors stand for.
public enum AdapterAlgorithm: String, Sendable, Hashable {
    /// ΔW = up · down (with an optional Tucker core `lora_mid`).
    case lora
    /// ΔW = (w1a · w1b) ⊙ (w2a · w2b) (LyCORIS LoHa, optionally with Tucker cores).
    case loha
    /// ΔW = w1 ⊗ w2 (LyCORIS LoKr; each side whole or factored).
    case lokr
    /// ΔW = diff (and diff_b on the bias): the difference stored as it is.
    case full = "full-diff"
}

/// A tensor's role inside one adapter module.
public enum AdapterRole: String, Sendable, Hashable, CaseIterable {
    case down, up, mid, alpha, doraScale = "dora_scale"
    case hadaW1A = "hada_w1_a", hadaW1B = "hada_w1_b", hadaW2A = "hada_w2_a", hadaW2B = "hada_w2_b", hadaT1 = "hada_t1", hadaT2 = "hada_t2"
    case lokrW1 = "lokr_w1", lokrW1A = "lokr_w1_a", lokrW1B = "lokr_w1_b", lokrW2 = "lokr_w2", lokrW2A = "lokr_w2_a", lokrW2B = "lokr_w2_b", lokrT2 =
        "lokr_t2"
    case diff, diffBias = "diff_b"
}

/// One adapter module: the tensors that together change one layer of the base model.
public struct AdapterModule: Sendable, Hashable {
    /// The module's key as the file spells it (the tensor names without their role suffix).
    public var key: String
    public var dialect: AdapterDialect
    public var algorithm: AdapterAlgorithm
    /// Role → tensor name in the file.
    public var tensors: [AdapterRole: String]
    /// Role → shape.
    public var shapes: [AdapterRole: Shape]
    /// The alpha: from the `.alpha` tensor (kohya) or the metadata (PEFT); `nil` when the
    /// dialect has none (then the factor α/dim is 1).
    public var alpha: Double?
    /// Where `alpha` came from (`tensor`, `metadata`, `rank (default)`, `none`).
    public var alphaSource: String

    /// The inner size the α/dim factor divides by (ComfyUI's and A1111's `dim`): the rank of a
    /// LoRA, `hada_w1_b`'s rows for LoHa, the factored side's rows for LoKr (`nil`: no factor).
    public var dimension: Int? {
        switch algorithm {
        case .lora: shapes[.down].map { $0[0] }
        case .loha: shapes[.hadaW1B].map { $0[0] }
        case .lokr: shapes[.lokrW2B].map { $0[0] } ?? shapes[.lokrW1B].map { $0[0] }
        case .full: nil
        }
    }

    /// α / dim as ComfyUI and A1111 apply it (once); 1 without an alpha or a dimension.
    public var alphaFactor: Double {
        guard let alpha, let dimension, dimension > 0 else { return 1 }
        return alpha / Double(dimension)
    }

    /// Whether the module carries a Tucker core (`lora_mid`, `hada_t1`/`hada_t2`, `lokr_t2`).
    public var hasTucker: Bool { tensors[.mid] != nil || tensors[.hadaT1] != nil || tensors[.lokrT2] != nil }
    /// Whether the module is weight-decomposed (DoRA's `dora_scale`).
    public var hasDoRA: Bool { tensors[.doraScale] != nil }

    /// Whether the module changes a convolution (4-D factors).
    public var isConvolution: Bool {
        shapes.contains { role, shape in role != .alpha && role != .doraScale && role != .diffBias && shape.rank == 4 }
    }

    /// The kernel size of the convolution the module's down factor runs (LoCon: k×k down).
    public var kernel: [Int]? {
        if let d = shapes[.mid], d.rank == 4 { return [d[2], d[3]] }
        if let d = shapes[.down], d.rank == 4 { return [d[2], d[3]] }
        if let w = shapes[.diff], w.rank == 4 { return [w[2], w[3]] }
        return nil
    }

    /// A short name of the module's kind: `LoRA`, `LoCon`, `LoHa`, `LoKr`, `full-diff`, with `+Tucker`/`+DoRA`.
    public var kindName: String {
        var name: String
        switch algorithm {
        case .lora: name = (kernel.map { $0 != [1, 1] } ?? false) ? "LoCon" : "LoRA"
        case .loha: name = "LoHa"
        case .lokr: name = "LoKr"
        case .full: name = "full-diff"
        }
        if hasTucker { name += "+Tucker" }
        if hasDoRA { name += "+DoRA" }
        return name
    }
}

/// A parsed adapter file: its modules or its embedding, its metadata, and the tensors that
/// fitted neither (listed, never dropped).
public struct Adapter: Sendable {
    /// What the file is.
    public enum Content: Sendable {
        /// LoRA / LyCORIS modules.
        case network([AdapterModule])
        /// A textual-inversion embedding.
        case embedding(TextualInversion)
    }

    public let store: any TensorStore
    public let content: Content
    /// Tensors that belong to no module and no embedding.
    public let unrecognized: [TensorDescriptor]
    /// The file's string metadata.
    public var metadata: [String: String] { store.metadata }

    public var modules: [AdapterModule] {
        if case .network(let m) = content { return m }
        return []
    }

    public var embedding: TextualInversion? {
        if case .embedding(let e) = content { return e }
        return nil
    }

    /// Most files hold at most this many modules (SDXL LyCORIS files have ~2,000).
    public static let maximumModules = 100_000
    /// The largest rank (or factor inner size) accepted.
    public static let maximumRank = 65_536

    /// Reads `store` as an adapter.
    ///
    /// - Throws: `.notAnAdapter` when nothing in it is a module or an embedding, `.malformed`,
    ///   `.rankMismatch`, `.badAlpha` for a module that cannot be used.
    public init(store: any TensorStore) throws(AdapterError) {
        self.store = store
        var parser = ModuleParser(metadata: store.metadata)
        var leftovers: [TensorDescriptor] = []
        for d in store.tensors where !parser.add(d) { leftovers.append(d) }
        if parser.modules.isEmpty {
            if let embedding = try TextualInversion(store.tensors, metadata: store.metadata) {
                content = .embedding(embedding)
                unrecognized = store.tensors.filter { d in !embedding.vectors.contains { $0.tensor == d.name } }
                return
            }
            throw AdapterError(
                .notAnAdapter,
                "no tensor is a LoRA/LyCORIS module or a textual-inversion embedding (\(store.tensors.count) tensors, e.g. '\(store.tensors.first?.name ?? "none")')"
            )
        }
        guard parser.modules.count <= Self.maximumModules else {
            throw AdapterError(.tooLarge, "\(parser.modules.count) modules; at most \(Self.maximumModules) are accepted")
        }
        var modules = try parser.finish(store: store)
        modules.sort { $0.key < $1.key }
        content = .network(modules)
        unrecognized = leftovers
    }
}

/// Groups tensor names into modules by their role suffixes.
struct ModuleParser {
    let metadata: [String: String]
    var modules: [String: AdapterModule] = [:]
    var order: [String] = []
    /// PEFT metadata: default rank/alpha and per-module patterns, by component prefix.
    let peftAlpha: PEFTAlphaMetadata

    init(metadata: [String: String]) {
        self.metadata = metadata
        peftAlpha = PEFTAlphaMetadata(metadata: metadata)
    }

    private static let kohyaSuffixes: [(String, AdapterRole)] = [
        (".lora_down.weight", .down), (".lora_up.weight", .up), (".lora_mid.weight", .mid), (".alpha", .alpha),
        (".dora_scale", .doraScale),
        (".hada_w1_a", .hadaW1A), (".hada_w1_b", .hadaW1B), (".hada_w2_a", .hadaW2A), (".hada_w2_b", .hadaW2B),
        (".hada_t1", .hadaT1), (".hada_t2", .hadaT2),
        (".lokr_w1_a", .lokrW1A), (".lokr_w1_b", .lokrW1B), (".lokr_w2_a", .lokrW2A), (".lokr_w2_b", .lokrW2B),
        (".lokr_w1", .lokrW1), (".lokr_w2", .lokrW2), (".lokr_t2", .lokrT2),
        (".diff_b", .diffBias), (".diff", .diff),
    ]
    private static let peftSuffixes: [(String, AdapterRole)] = [
        (".lora_A.weight", .down), (".lora_B.weight", .up), (".lora_A.default.weight", .down), (".lora_B.default.weight", .up),
        (".lora.down.weight", .down), (".lora.up.weight", .up),
    ]
    private static let processorSuffixes: [(String, AdapterRole)] = [
        (".lora_linear_layer.down.weight", .down), (".lora_linear_layer.up.weight", .up),
        ("_lora.down.weight", .down), ("_lora.up.weight", .up),
    ]

    /// Files this parser reads whole: keys from kohya and LyCORIS, PEFT, old diffusers.
    mutating func add(_ d: TensorDescriptor) -> Bool {
        let name = d.name
        if name.hasPrefix("lora_") || name.hasPrefix("lycoris_") {
            for (suffix, role) in Self.kohyaSuffixes where name.hasSuffix(suffix) {
                insert(key: String(name.dropLast(suffix.count)), dialect: .kohya, role: role, d)
                return true
            }
            for (suffix, role) in Self.peftSuffixes where name.hasSuffix(suffix) {
                insert(key: String(name.dropLast(suffix.count)), dialect: .kohya, role: role, d)
                return true
            }
            return false
        }
        if name.contains(".processor.") || name.contains(".lora_linear_layer.") {
            for (suffix, role) in Self.processorSuffixes where name.hasSuffix(suffix) {
                var key = String(name.dropLast(suffix.count))
                if suffix.hasPrefix("_lora") {
                    key = key.replacingOccurrences(of: ".processor.", with: ".")
                    key += key.hasSuffix(".to_out") ? ".0" : ""
                }
                insert(key: key, dialect: .diffusersAttnProcessor, role: role, d)
                return true
            }
        }
        for (suffix, role) in Self.peftSuffixes where name.hasSuffix(suffix) {
            insert(key: String(name.dropLast(suffix.count)), dialect: .peft, role: role, d)
            return true
        }
        // diffusers-converted files sometimes keep kohya's alpha next to PEFT keys.
        if name.hasSuffix(".alpha"), d.shape.count == 1 {
            let key = String(name.dropLast(6))
            if modules[key] != nil || name.hasPrefix("unet.") || name.hasPrefix("text_encoder") {
                insert(key: key, dialect: .peft, role: .alpha, d)
                return true
            }
        }
        return false
    }

    private mutating func insert(key: String, dialect: AdapterDialect, role: AdapterRole, _ d: TensorDescriptor) {
        if modules[key] == nil {
            modules[key] = AdapterModule(key: key, dialect: dialect, algorithm: .lora, tensors: [:], shapes: [:], alpha: nil, alphaSource: "none")
            order.append(key)
        }
        modules[key]!.tensors[role] = d.name
        modules[key]!.shapes[role] = d.shape
        // A dialect seen on any of the module's tensors other than alpha decides.
        if role != .alpha { modules[key]!.dialect = dialect }
    }

    /// Checks every module and reads its alpha.
    func finish(store: any TensorStore) throws(AdapterError) -> [AdapterModule] {
        var out: [AdapterModule] = []
        for key in order {
            guard var m = modules[key] else { continue }
            m.algorithm = try Self.algorithm(of: m)
            try Self.checkShapes(m)
            for (role, name) in m.tensors where role != .alpha {
                guard let d = store.descriptor(named: name), d.dtype.isConvertibleFloat else {
                    throw AdapterError(.malformed, "tensor '\(name)' of module '\(key)' is not a floating-point tensor", tensor: name)
                }
            }
            if let name = m.tensors[.alpha] {
                m.alpha = try Self.readAlpha(name, store: store)
                m.alphaSource = "tensor"
            } else if m.dialect == .peft, m.algorithm == .lora, let rank = m.dimension {
                if let a = peftAlpha.alpha(for: key, rank: rank) {
                    m.alpha = a.value
                    m.alphaSource = a.source
                } else {
                    m.alpha = Double(rank)
                    m.alphaSource = "rank (no alpha in the metadata)"
                }
            }
            if let alpha = m.alpha, !alpha.isFinite || alpha == 0 {
                throw AdapterError(
                    .badAlpha, "module '\(key)' has alpha \(alpha); an alpha must be a finite non-zero number", tensor: m.tensors[.alpha] ?? key)
            }
            out.append(m)
        }
        return out
    }

    static func algorithm(of m: AdapterModule) throws(AdapterError) -> AdapterAlgorithm {
        let roles = Set(m.tensors.keys).subtracting([.alpha, .doraScale])
        func need(_ required: [AdapterRole], _ kind: String) throws(AdapterError) {
            for r in required where m.tensors[r] == nil {
                throw AdapterError(.malformed, "\(kind) module '\(m.key)' lacks its \(r.rawValue) tensor", tensor: m.key)
            }
        }
        if roles.contains(where: { $0.rawValue.hasPrefix("hada_") }) {
            try need([.hadaW1A, .hadaW1B, .hadaW2A, .hadaW2B], "LoHa")
            if (m.tensors[.hadaT1] == nil) != (m.tensors[.hadaT2] == nil) {
                throw AdapterError(.malformed, "LoHa module '\(m.key)' has one Tucker core; it needs hada_t1 and hada_t2", tensor: m.key)
            }
            return .loha
        }
        if roles.contains(where: { $0.rawValue.hasPrefix("lokr_") }) {
            if m.tensors[.lokrW1] == nil { try need([.lokrW1A, .lokrW1B], "LoKr") }
            if m.tensors[.lokrW2] == nil { try need([.lokrW2A, .lokrW2B], "LoKr") }
            return .lokr
        }
        if roles.contains(.diff) || roles.contains(.diffBias) {
            try need([.diff], "full-diff")
            return .full
        }
        if roles.isEmpty {
            throw AdapterError(.malformed, "module '\(m.key)' has only an alpha or a dora_scale and no factors", tensor: m.key)
        }
        try need([.down, .up], "LoRA")
        return .lora
    }

    /// The shape rules of each kind, checked before any value is read.
    static func checkShapes(_ m: AdapterModule) throws(AdapterError) {
        func shape(_ r: AdapterRole) -> Shape? { m.shapes[r] }
        func fail(_ text: String) -> AdapterError { AdapterError(.malformed, "module '\(m.key)': \(text)", tensor: m.key) }
        func rankFail(_ text: String) -> AdapterError { AdapterError(.rankMismatch, "module '\(m.key)': \(text)", tensor: m.key) }
        func bounded(_ n: Int, _ what: String) throws(AdapterError) {
            guard n >= 1, n <= Adapter.maximumRank else {
                throw AdapterError(
                    .tooLarge, "module '\(m.key)': \(what) is \(n); ranks from 1 to \(Adapter.maximumRank) are accepted", tensor: m.key)
            }
        }
        for (role, s) in m.shapes where role != .alpha && role != .doraScale {
            guard s.rank == 1 || s.rank == 2 || s.rank == 4 || (role == .diff && s.rank == 3) else {
                throw fail("\(role.rawValue) is \(s.rank)-D; factors are 2-D or 4-D")
            }
        }
        switch m.algorithm {
        case .lora:
            guard let down = shape(.down), let up = shape(.up), down.rank >= 2, up.rank >= 2 else { throw fail("down and up must be at least 2-D") }
            let r = down[0]
            try bounded(r, "the rank (lora_down rows)")
            if let mid = shape(.mid) {
                guard mid.rank == 4, up[1] == mid[0], mid[1] == r else {
                    throw rankFail("lora_mid \(mid) does not join lora_down \(down) and lora_up \(up)")
                }
            } else if up[1] != r {
                throw rankFail("lora_up \(up) has \(up[1]) columns, lora_down \(down) has rank \(r)")
            }
            if up.rank == 4, up[2] != 1 || up[3] != 1 { throw fail("lora_up \(up) must be a 1×1 convolution") }
            let inner = down.dimensions.dropFirst().reduce(1) { $0 &* $1 }
            if shape(.mid) == nil, r > min(up[0], inner) {
                throw rankFail("rank \(r) is larger than the layer's dimensions (\(up[0]) out, \(inner) in)")
            }
        case .loha:
            guard let w1a = shape(.hadaW1A), let w1b = shape(.hadaW1B), let w2a = shape(.hadaW2A), let w2b = shape(.hadaW2B),
                w1a.rank == 2, w1b.rank == 2, w2a.rank == 2, w2b.rank == 2
            else { throw fail("LoHa factors must be 2-D") }
            try bounded(w1b[0], "hada_w1_b's rank")
            if m.hasTucker {
                guard let t1 = shape(.hadaT1), let t2 = shape(.hadaT2), t1.rank == 4, t2.rank == 4,
                    t1[0] == w1a[0], t1[1] == w1b[0], t2[0] == w2a[0], t2[1] == w2b[0], t1[2] == t2[2], t1[3] == t2[3],
                    w1a[1] == w2a[1], w1b[1] == w2b[1]
                else { throw rankFail("the Tucker cores do not join the LoHa factors") }
            } else {
                guard w1a[1] == w1b[0], w2a[1] == w2b[0] else {
                    throw rankFail("hada_w1_a \(w1a) × hada_w1_b \(w1b) or hada_w2_a \(w2a) × hada_w2_b \(w2b) do not multiply")
                }
                guard w1a[0] == w2a[0], w1b[1] == w2b[1] else {
                    throw rankFail("the two Hadamard factors have different shapes (\(w1a[0])×\(w1b[1]) and \(w2a[0])×\(w2b[1]))")
                }
            }
        case .lokr:
            if let a = shape(.lokrW1A), let b = shape(.lokrW1B) {
                guard a.rank == 2, b.rank == 2, a[1] == b[0] else { throw rankFail("lokr_w1_a \(a) × lokr_w1_b \(b) do not multiply") }
                try bounded(b[0], "lokr_w1_b's rank")
            } else if let w1 = shape(.lokrW1), w1.rank != 2 {
                throw fail("lokr_w1 \(w1) must be 2-D")
            }
            if let a = shape(.lokrW2A), let b = shape(.lokrW2B) {
                try bounded(b[0], "lokr_w2_b's rank")
                if let t = shape(.lokrT2) {
                    guard t.rank == 4, a.rank == 2, b.rank == 2, t[0] == a[0], t[1] == b[0] else {
                        throw rankFail("lokr_t2 \(t) does not join lokr_w2_a \(a) and lokr_w2_b \(b)")
                    }
                } else {
                    guard a.rank == 2, b.rank == 2, a[1] == b[0] else { throw rankFail("lokr_w2_a \(a) × lokr_w2_b \(b) do not multiply") }
                }
            }
        case .full:
            break
        }
        if let s = shape(.alpha), s.count != 1 {
            throw AdapterError(.badAlpha, "module '\(m.key)': alpha has \(s.count) values; it must be one number", tensor: m.tensors[.alpha])
        }
    }

    static func readAlpha(_ name: String, store: any TensorStore) throws(AdapterError) -> Double {
        do {
            let view = try store.tensor(named: name)
            guard view.shape.count == 1 else { throw AdapterError(.badAlpha, "alpha '\(name)' has \(view.shape.count) values", tensor: name) }
            if view.dtype.isConvertibleFloat { return Double(try view.floats()[0]) }
            switch view.dtype {
            case .i64: return Double(view.bytes.withUnsafeBytes { $0.loadUnaligned(as: Int64.self) })
            case .i32: return Double(view.bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) })
            default: throw AdapterError(.badAlpha, "alpha '\(name)' is \(view.dtype.name), not a number", tensor: name)
            }
        } catch let error as AdapterError {
            throw error
        } catch {
            throw AdapterError(.malformed, "cannot read alpha '\(name)': \(error)", tensor: name, underlying: error)
        }
    }
}

/// The alpha of PEFT files, as diffusers carries it in the safetensors metadata
/// (`lora_adapter_metadata`: the LoRA config of each component under `unet.`, `text_encoder.` …).
struct PEFTAlphaMetadata: Sendable {
    struct Config: Sendable {
        var rank: Int?
        var alpha: Double?
        var rankPattern: [String: Int] = [:]
        var alphaPattern: [String: Double] = [:]
    }
    /// Component prefix (`unet`, `text_encoder`, `text_encoder_2`) → its config.
    var configs: [String: Config] = [:]

    /// The metadata key diffusers writes.
    static let key = "lora_adapter_metadata"

    init(metadata: [String: String]) {
        guard let text = metadata[Self.key], text.utf8.count < 10_000_000,
            let root = (try? Array(text.utf8).withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) })?.objectValue
        else { return }
        for (key, value) in root {
            guard let dot = key.lastIndex(of: ".") else { continue }
            let component = String(key[..<dot]), field = String(key[key.index(after: dot)...])
            var c = configs[component] ?? Config()
            switch field {
            case "r": c.rank = value.intValue
            case "lora_alpha": c.alpha = value.doubleValue
            case "rank_pattern":
                for (k, v) in value.objectValue ?? JSONObject() { if let i = v.intValue { c.rankPattern[k] = i } }
            case "alpha_pattern":
                for (k, v) in value.objectValue ?? JSONObject() { if let d = v.doubleValue { c.alphaPattern[k] = d } }
            default: break
            }
            configs[component] = c
        }
    }

    /// The alpha of module `key` (`unet.down_blocks…to_q`) and where it came from.
    func alpha(for key: String, rank: Int) -> (value: Double, source: String)? {
        for component in configs.keys.sorted(by: { $0.count > $1.count }) where key.hasPrefix(component + ".") {
            let config = configs[component]!
            let path = String(key.dropFirst(component.count + 1))
            // PEFT matches pattern keys as suffixes of the module path.
            if let hit = config.alphaPattern.keys.sorted(by: { $0.count > $1.count }).first(where: { path == $0 || path.hasSuffix("." + $0) }) {
                return (config.alphaPattern[hit]!, "metadata alpha_pattern")
            }
            if let a = config.alpha { return (a, "metadata lora_alpha") }
        }
        return nil
    }
}
