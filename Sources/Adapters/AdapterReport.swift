import ModelCatalog
import StrictJSON
import TensorCore

/// The canonical tensors of a family's published model (names and shapes), built from the
/// catalog's hyper-parameters with ModelCatalog's structure rules.
enum FamilyReference {
    static func tensors(of family: ArchitectureCatalog.Family) -> [TensorDescriptor] {
        var out: [(String, Shape)] = []
        let u = family.unet
        let c0 = u.blockOutChannels.first ?? 320
        if var unet = UNetStructure(["unet.conv_in.weight": Shape([c0, 4, 3, 3])]) {
            unet.outChannels = 4
            unet.blockOutChannels = u.blockOutChannels
            unet.layersPerBlock = u.layersPerBlock
            unet.transformerDepth = u.transformerDepth
            unet.upTransformerDepth = Array(u.transformerDepth.reversed())
            unet.midTransformerDepth = max(u.transformerDepth.max() ?? 1, 1)
            unet.contextDim = u.contextDim
            unet.linearProjection = u.linearProjection
            unet.timeEmbedDim = 4 * c0
            unet.additionEmbed = u.additionEmbed
            out += unet.expectedTensors
        }
        for slot in family.textEncoders {
            let m = slot.model
            let key = slot.component.canonicalPrefix + "text_model.embeddings.token_embedding.weight"
            guard var text = TextEncoderStructure(slot.component, [key: Shape([m.vocab, m.hidden])]) else { continue }
            text.layers = m.layers
            text.intermediate = m.intermediate
            text.positions = m.positions
            text.projection = m.projection
            out += text.expectedTensors
        }
        return out.map { TensorDescriptor(name: $0.0, dtype: .f32, shape: $0.1, byteCount: 0) }
    }

    /// The name index of every family of the bundled catalog, built once.
    static let standardIndices: [String: AdapterNameIndex] = {
        var out: [String: AdapterNameIndex] = [:]
        for f in ArchitectureCatalog.standard.families { out[f.id] = AdapterNameIndex(canonical: tensors(of: f), family: f) }
        return out
    }()

    /// The name index of `family`'s published structure.
    static func index(of family: ArchitectureCatalog.Family) -> AdapterNameIndex {
        if let cached = standardIndices[family.id], ArchitectureCatalog.standard.family(family.id) == family { return cached }
        return AdapterNameIndex(canonical: tensors(of: family), family: family)
    }
}

/// What an adapter is, with the evidence: kinds, dialect, base family, ranks and alphas, the
/// components and blocks it touches, keys that match no layer, and kohya's training metadata.
public struct AdapterReport: Sendable {
    /// One module and the base tensor it modifies.
    public struct ModuleEntry: Sendable {
        public var module: AdapterModule
        /// The canonical weight it modifies in the chosen family, `nil` when none.
        public var target: String?
    }

    /// A family considered and why it was kept or rejected.
    public struct FamilyCandidate: Sendable {
        public var family: String
        public var matched: Int
        public var unmatched: Int
        /// Modules whose sizes equal the published model's.
        public var publishedWidths: Int
        public var reasons: [String]
    }

    public var adapter: Adapter
    /// `LoRA`, `LoCon`, `LoHa`, `LoKr`, `LoRA+Tucker`, `LoRA+DoRA`, `full-diff`, `textual-inversion`, with module counts.
    public var kinds: [(kind: String, modules: Int)]
    public var dialects: [AdapterDialect]
    public var family: ArchitectureCatalog.Family?
    /// Families that fit equally well when `family` is `nil`.
    public var candidates: [String]
    public var familyEvidence: [String]
    public var considered: [FamilyCandidate]
    public var modules: [ModuleEntry]
    /// Module keys that match no layer of the family (all families when none was chosen).
    public var unmatched: [String]
    /// Tensors that belong to no module.
    public var unrecognizedTensors: [String]
    /// Base tensors that more than one module changes (often one module in two dialects), with their keys.
    public var duplicates: [(target: String, modules: [String])]
    /// Component → number of modules.
    public var components: [(component: String, modules: Int)]
    /// Block (`down_blocks.1`, `mid_block`, `text_model.encoder.layers.3`) → modules.
    public var blocks: [(block: String, modules: Int)]
    /// Rank → number of modules, alpha → number of modules.
    public var ranks: [(value: Int, modules: Int)]
    public var alphas: [(value: Double, modules: Int)]
    /// kohya's `ss_*` keys (and `modelspec.*`) that say how it was trained, `ss_tag_frequency` summarised.
    public var training: [(key: String, value: String)]

    /// Recognises `adapter` against every family of `catalog`.
    public init(_ adapter: Adapter, catalog: ArchitectureCatalog = .standard) {
        self.adapter = adapter
        training = Self.trainingSummary(adapter.metadata)
        unrecognizedTensors = adapter.unrecognized.map(\.name)
        if let e = adapter.embedding {
            kinds = [("textual-inversion", 1)]
            dialects = []
            family = e.familyID.flatMap { catalog.family($0) }
            candidates = e.familyID == nil ? catalog.families.filter { $0.textEncoders.count == e.vectors.count }.map(\.id) : []
            familyEvidence = e.vectors.map { v in
                "\(v.tensor): \(v.count) vector\(v.count == 1 ? "" : "s") of width \(v.width) for \(v.component.rawValue)"
                    + (v.textModel.map { " (\($0))" } ?? " (no published text encoder has this width)")
            }
            considered = []
            modules = []
            unmatched = []
            duplicates = []
            components = e.vectors.map { ($0.component.rawValue, 1) }
            blocks = []
            ranks = []
            alphas = []
            return
        }
        let mods = adapter.modules
        var kindCount: [String: Int] = [:]
        for m in mods { kindCount[m.kindName, default: 0] += 1 }
        kinds = kindCount.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        dialects = AdapterDialect.allCases.filter { d in mods.contains { $0.dialect == d } }

        // Every family's published structure, scored by how many modules it explains.
        var scored: [(ArchitectureCatalog.Family, FamilyCandidate, [String?])] = []
        for f in catalog.families {
            let index = FamilyReference.index(of: f)
            var c = FamilyCandidate(family: f.id, matched: 0, unmatched: 0, publishedWidths: 0, reasons: [])
            var targets: [String?] = []
            var convMismatch: [String] = []
            for m in mods {
                let t = index.target(of: m)
                targets.append(t)
                guard let t, let shape = index.shapes[t] else { c.unmatched += 1; continue }
                c.matched += 1
                if let implied = try? DeltaShape.implied(by: m), implied.matches(shape) { c.publishedWidths += 1 }
                if m.algorithm == .lora, let down = m.shapes[.down], (down.rank == 4) != (shape.rank == 4) {
                    convMismatch.append(m.key)
                }
            }
            if c.unmatched > 0 { c.reasons.append("\(c.unmatched) of \(mods.count) modules name no layer of \(f.id)") }
            if !convMismatch.isEmpty {
                c.reasons.append(
                    "\(convMismatch.count) modules factor a \(f.unet.linearProjection ? "convolution" : "linear layer") where \(f.id) has a \(f.unet.linearProjection ? "linear layer" : "1×1 convolution") (e.g. \(convMismatch[0]))"
                )
            }
            // Cross-attention context width against the text encoders' widths.
            let widths = Self.observedWidths(mods, targets)
            if let context = widths.context {
                let encoders = f.textEncoders.map(\.component)
                let seen = encoders.compactMap { widths.text[$0] }
                if seen.count == encoders.count, seen.reduce(0, +) != context {
                    c.reasons.append(
                        "cross-attention takes \(context)-wide context, the text encoders' widths \(seen) do not add up to it as \(f.id) needs")
                }
            }
            scored.append((f, c, targets))
        }
        considered = scored.map(\.1)
        let passing = scored.filter { $0.1.reasons.isEmpty && $0.1.matched > 0 }
        var chosen: (ArchitectureCatalog.Family, FamilyCandidate, [String?])?
        var evidence: [String] = []
        if passing.count == 1 {
            chosen = passing[0]
        } else if passing.count > 1 {
            let exact = passing.filter { $0.1.publishedWidths == $0.1.matched }
            if exact.count == 1 {
                chosen = exact[0]
                evidence.append("only \(exact[0].0.id) has these layer sizes among \(passing.map(\.0.id))")
            }
        }
        if let chosen {
            family = chosen.0
            candidates = []
            let c = chosen.1
            evidence.insert("all \(c.matched) modules name layers of \(chosen.0.name)", at: 0)
            evidence.append(
                c.publishedWidths == c.matched
                    ? "their sizes are those of the published \(chosen.0.name)"
                    : "\(c.matched - c.publishedWidths) of \(c.matched) modules have other sizes than the published \(chosen.0.name): made for a reduced or custom model of its structure"
            )
            modules = zip(mods, chosen.2).map { ModuleEntry(module: $0, target: $1) }
        } else {
            family = nil
            candidates = passing.map(\.0.id)
            if candidates.isEmpty {
                let best = scored.max { $0.1.matched < $1.1.matched }
                evidence.append("no family explains every module" + (best.map { "; \($0.0.id) explains \($0.1.matched) of \(mods.count)" } ?? ""))
                modules = zip(mods, best?.2 ?? mods.map { _ in nil }).map { ModuleEntry(module: $0, target: $1) }
            } else {
                evidence.append("\(candidates.joined(separator: " and ")) fit the names and the sizes do not decide")
                modules = zip(mods, passing[0].2).map { ModuleEntry(module: $0, target: $1) }
            }
        }
        let widths = Self.observedWidths(mods, modules.map(\.target))
        if let c = widths.context { evidence.append("cross-attention to_k/to_v take \(c)-wide context") }
        for (component, w) in widths.text.sorted(by: { $0.key < $1.key }) { evidence.append("\(component.rawValue) layers are \(w) wide") }
        if let convs = Optional(mods.filter { $0.algorithm == .lora && $0.shapes[.down]?.rank == 4 }), !convs.isEmpty {
            let k = Set(convs.compactMap(\.kernel).map { "\($0[0])×\($0[1])" }).sorted()
            evidence.append("\(convs.count) modules factor convolutions (kernels \(k.joined(separator: ", ")))")
        }
        if let base = adapter.metadata["ss_base_model_version"] { evidence.append("training metadata ss_base_model_version = \(base)") }
        familyEvidence = evidence
        unmatched = modules.filter { $0.target == nil }.map(\.module.key)
        var byTarget: [String: [String]] = [:]
        for e in modules { if let t = e.target { byTarget[t, default: []].append(e.module.key) } }
        duplicates = byTarget.filter { $0.value.count > 1 }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }

        var comp: [String: Int] = [:], block: [String: Int] = [:]
        for e in modules {
            guard let t = e.target else { continue }
            let p = t.split(separator: ".").map(String.init)
            comp[p[0], default: 0] += 1
            block[Self.block(of: p), default: 0] += 1
        }
        components = comp.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        blocks = block.sorted { $0.key.localizedStandardLess($1.key) }.map { ($0.key, $0.value) }
        var r: [Int: Int] = [:], a: [Double: Int] = [:]
        for m in mods {
            if let d = m.dimension { r[d, default: 0] += 1 }
            if let x = m.alpha { a[x, default: 0] += 1 }
        }
        ranks = r.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        alphas = a.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The block a canonical weight belongs to, for the touched-blocks table.
    static func block(of p: [String]) -> String {
        if p.count > 2, p[0] == "unet", p[1] == "down_blocks" || p[1] == "up_blocks" { return "unet.\(p[1]).\(p[2])" }
        if p.count > 1, p[0] == "unet" { return "unet.\(p[1])" }
        if p.count > 4, p[1] == "text_model", p[2] == "encoder" { return "\(p[0]).layers.\(p[4])" }
        return p.prefix(2).joined(separator: ".")
    }

    /// The context width (attn2.to_k/to_v inputs) and the text encoders' widths (q_proj outputs) the modules show.
    static func observedWidths(_ mods: [AdapterModule], _ targets: [String?]) -> (context: Int?, text: [Component: Int]) {
        var context: Int?
        var text: [Component: Int] = [:]
        for (m, t) in zip(mods, targets) {
            guard let t, let implied = try? DeltaShape.implied(by: m) else { continue }
            if t.hasSuffix("attn2.to_k.weight") || t.hasSuffix("attn2.to_v.weight") { context = context ?? implied.inner }
            for c in [Component.textEncoder, .textEncoder2] where t.hasPrefix(c.canonicalPrefix) && t.hasSuffix("self_attn.q_proj.weight") {
                text[c] = text[c] ?? implied.out
            }
        }
        return (context, text)
    }

    /// Training metadata worth showing: base model, network module and arguments, dim/alpha,
    /// resolution, and `ss_tag_frequency` reduced to its datasets and tag counts.
    static func trainingSummary(_ metadata: [String: String]) -> [(key: String, value: String)] {
        let keys = [
            "ss_base_model_version", "ss_sd_model_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
            "ss_resolution", "ss_num_train_images", "ss_num_epochs", "ss_learning_rate", "ss_training_comment", "ss_v2",
            "modelspec.architecture", "modelspec.title", "modelspec.prediction_type",
        ]
        var out: [(String, String)] = []
        for k in keys { if let v = metadata[k] { out.append((k, String(v.prefix(300)))) } }
        if let tags = metadata["ss_tag_frequency"] {
            out.append(("ss_tag_frequency", summariseTags(tags)))
        }
        return out
    }

    static func summariseTags(_ text: String) -> String {
        guard text.utf8.count < 50_000_000,
            let root = (try? Array(text.utf8).withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) })?.objectValue
        else { return "not JSON (\(text.utf8.count) bytes)" }
        var total: [String: Int] = [:]
        for (_, tags) in root {
            for (tag, n) in tags.objectValue ?? JSONObject() { total[tag.trimmingSpaces(), default: 0] += n.intValue ?? 0 }
        }
        let top = total.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(5)
        return "\(root.count) dataset\(root.count == 1 ? "" : "s"), \(total.count) distinct tags; most frequent: "
            + top.map { "\($0.key) (\($0.value))" }.joined(separator: ", ")
    }

    // MARK: - JSON

    /// The `adapter` object of `inspect --json`.
    public var json: JSONValue {
        var o = JSONObject()
        o["kind"] = .string(adapter.embedding == nil ? "network" : "textual-inversion")
        o["kinds"] = .array(kinds.map { ["kind": .string($0.kind), "modules": JSONValue($0.modules)] })
        o["dialects"] = .array(dialects.map { .string($0.rawValue) })
        o["family"] = .string(family?.id ?? "unknown")
        if let f = family { o["family_name"] = .string(f.name) }
        o["candidates"] = .array(candidates.map { .string($0) })
        o["evidence"] = .array(familyEvidence.map { .string($0) })
        o["considered"] = .array(
            considered.map {
                [
                    "family": .string($0.family), "matched": JSONValue($0.matched), "unmatched": JSONValue($0.unmatched),
                    "published_sizes": JSONValue($0.publishedWidths), "reasons": .array($0.reasons.map { .string($0) }),
                ]
            })
        if let e = adapter.embedding {
            o["embedding"] = [
                "dialect": .string(e.dialect.rawValue),
                "suggested_token": e.suggestedToken.map { .string($0) } ?? .null,
                "vectors": .array(
                    e.vectors.map {
                        [
                            "tensor": .string($0.tensor), "count": JSONValue($0.count), "width": JSONValue($0.width),
                            "text_encoder": .string($0.component.rawValue), "text_model": $0.textModel.map { .string($0) } ?? .null,
                        ]
                    }),
            ]
        }
        o["modules"] = .array(
            modules.map { e in
                let m = e.module
                var x = JSONObject()
                x["key"] = .string(m.key)
                x["kind"] = .string(m.kindName)
                x["dialect"] = .string(m.dialect.rawValue)
                x["target"] = e.target.map { .string($0) } ?? .null
                x["rank"] = m.dimension.map { JSONValue($0) } ?? .null
                x["alpha"] = m.alpha.map { JSONValue($0) } ?? .null
                x["alpha_source"] = .string(m.alphaSource)
                x["tensors"] = .object(
                    JSONObject(m.tensors.sorted { $0.key.rawValue < $1.key.rawValue }.map { ($0.key.rawValue, JSONValue.string($0.value)) }))
                return .object(x)
            })
        o["unmatched"] = .array(unmatched.map { .string($0) })
        o["unrecognized_tensors"] = .array(unrecognizedTensors.map { .string($0) })
        o["duplicates"] = .array(duplicates.map { ["target": .string($0.target), "modules": .array($0.modules.map { .string($0) })] })
        o["components"] = .object(JSONObject(components.map { ($0.component, JSONValue($0.modules)) }))
        o["blocks"] = .object(JSONObject(blocks.map { ($0.block, JSONValue($0.modules)) }))
        o["ranks"] = .array(ranks.map { ["rank": JSONValue($0.value), "modules": JSONValue($0.modules)] })
        o["alphas"] = .array(alphas.map { ["alpha": JSONValue($0.value), "modules": JSONValue($0.modules)] })
        o["training"] = .object(JSONObject(training.map { ($0.key, JSONValue.string($0.value)) }))
        return .object(o)
    }

    /// Human-readable lines for `inspect`.
    public var lines: [String] {
        var out: [String] = []
        if let e = adapter.embedding {
            out.append("adapter: textual-inversion embedding (\(e.dialect.rawValue))")
            for v in e.vectors {
                out.append(
                    "  \(v.component.rawValue): \(v.count) vector\(v.count == 1 ? "" : "s") × \(v.width) (\(v.textModel ?? "width of no published encoder"))"
                )
            }
            if let t = e.suggestedToken { out.append("  suggested token: \(t)") }
        } else {
            out.append(
                "adapter: " + kinds.map { "\($0.kind) (\($0.modules) modules)" }.joined(separator: ", ") + ", dialect "
                    + dialects.map(\.rawValue).joined(separator: "+"))
            out.append(
                "  ranks: " + ranks.map { "\($0.value) ×\($0.modules)" }.joined(separator: ", ")
                    + (alphas.isEmpty ? "" : "; alphas: " + alphas.map { "\(Self.number($0.value)) ×\($0.modules)" }.joined(separator: ", ")))
            out.append("  components: " + components.map { "\($0.component) (\($0.modules))" }.joined(separator: ", "))
            out.append("  blocks: " + blocks.map { "\($0.block) (\($0.modules))" }.joined(separator: ", "))
        }
        out.append(
            "  base family: "
                + (family.map { "\($0.id) (\($0.name))" } ?? (candidates.isEmpty ? "unknown" : "one of \(candidates.joined(separator: ", "))")))
        for e in familyEvidence { out.append("    - \(e)") }
        if !unmatched.isEmpty {
            out.append("  \(unmatched.count) module\(unmatched.count == 1 ? "" : "s") match no layer:")
            for k in unmatched { out.append("    \(k)") }
        }
        for d in duplicates { out.append("  \(d.target) is changed by \(d.modules.count) modules: \(d.modules.joined(separator: ", "))") }
        if !unrecognizedTensors.isEmpty {
            out.append("  \(unrecognizedTensors.count) tensor\(unrecognizedTensors.count == 1 ? "" : "s") belong to no module:")
            for k in unrecognizedTensors { out.append("    \(k)") }
        }
        if !training.isEmpty {
            out.append("  training metadata:")
            for (k, v) in training { out.append("    \(k): \(v)") }
        }
        return out
    }

    static func number(_ x: Double) -> String { x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : String(x) }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }

    /// Orders `down_blocks.10` after `down_blocks.9`.
    func localizedStandardLess(_ other: String) -> Bool {
        let a = split(separator: "."), b = other.split(separator: ".")
        for (x, y) in zip(a, b) where x != y {
            if let i = Int(x), let j = Int(y) { return i < j }
            return x < y
        }
        return a.count < b.count
    }
}
