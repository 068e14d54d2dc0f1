import ModelCatalog
import StrictJSON
import TensorCore

/// Rewrites a LoRA/LoCon between kohya's and diffusers/PEFT's naming without touching a
/// factor's bytes: `lora_down` ↔ `lora_A`, `lora_up` ↔ `lora_B`, kohya's per-module `.alpha`
/// tensors ↔ the `lora_adapter_metadata` JSON diffusers writes (`<component>.r`,
/// `.lora_alpha`, `.rank_pattern`, `.alpha_pattern`).
public enum AdapterConversion {
    /// Target naming.
    public enum Target: String, Sendable, CaseIterable {
        case kohya
        case diffusers
    }

    /// The converted adapter as a store (renamed views of the source's tensors, plus scalar
    /// alpha tensors for kohya) with the metadata to write; any writer takes it.
    ///
    /// - Parameters:
    ///   - family: the base family, for kohya's names (SDXL: LDM UNet names and
    ///     `lora_te1_`/`lora_te2_`); `nil` uses the family the adapter is recognised as.
    /// - Throws: `.inexpressible` for what the target cannot hold (LoHa, LoKr, Tucker cores,
    ///   DoRA, full diffs in PEFT form), `.unmatchedModule` for modules naming no layer,
    ///   `.duplicateModule`.
    public static func convert(
        _ adapter: Adapter, to target: Target, family: ArchitectureCatalog.Family? = nil, catalog: ArchitectureCatalog = .standard
    ) throws(AdapterError) -> ConvertedAdapterStore {
        guard adapter.embedding == nil else {
            throw AdapterError(.inexpressible, "a textual-inversion embedding has no LoRA dialect to convert to")
        }
        let report = AdapterReport(adapter, catalog: catalog)
        guard let family = family ?? report.family ?? report.candidates.first.flatMap({ catalog.family($0) }) else {
            throw AdapterError(.unmatchedModule, "the adapter's modules name no layer of any known family, so they have no name in the other dialect")
        }
        let index = FamilyReference.index(of: family)
        let twoEncoders = family.textEncoders.count > 1
        var entries: [ConvertedAdapterStore.Entry] = []
        var seen: [String: String] = [:]
        // PEFT metadata: per component the most common rank and alpha, patterns for the rest.
        var peft: [String: [(module: String, rank: Int, alpha: Double)]] = [:]
        for m in adapter.modules {
            if target == .diffusers {
                if m.algorithm != .lora {
                    throw AdapterError(
                        .inexpressible, "module '\(m.key)' is \(m.kindName); diffusers/PEFT LoRA keys hold only lora_A/lora_B pairs", tensor: m.key)
                }
                if m.tensors[.mid] != nil || m.hasDoRA {
                    throw AdapterError(
                        .inexpressible, "module '\(m.key)' is \(m.kindName); PEFT's LoRA keys have no Tucker core or kohya-style dora_scale",
                        tensor: m.key)
                }
            }
            guard let canonical = index.target(of: m) else {
                throw AdapterError(.unmatchedModule, "module '\(m.key)' names no layer of \(family.name)", tensor: m.key)
            }
            if let other = seen[canonical] {
                throw AdapterError(.duplicateModule, "modules '\(other)' and '\(m.key)' both modify \(canonical)", tensor: m.key)
            }
            seen[canonical] = m.key
            let module = String(canonical.dropLast(".weight".count))
            switch target {
            case .diffusers:
                // The keys diffusers' save_lora_weights writes: the component, then the module path
                // as the loaded model names it (transformers 5's CLIP text models have no
                // `text_model.` level, and PEFT matches target modules by those paths).
                let component = String(module.prefix { $0 != "." })
                var path = String(module.dropFirst(component.count + 1))
                if component.hasPrefix("text_encoder"), path.hasPrefix("text_model.") { path = String(path.dropFirst("text_model.".count)) }
                let key = component + "." + path
                entries.append(.init(name: key + ".lora_A.weight", source: m.tensors[.down]!, shape: m.shapes[.down]!))
                entries.append(.init(name: key + ".lora_B.weight", source: m.tensors[.up]!, shape: m.shapes[.up]!))
                let rank = m.dimension ?? 1
                peft[component, default: []].append((path, rank, m.alpha ?? Double(rank)))
            case .kohya:
                guard let key = index.kohyaKey(of: canonical, ldm: twoEncoders) else {
                    throw AdapterError(.unmatchedModule, "module '\(m.key)' has no kohya name in \(family.name)", tensor: m.key)
                }
                for (role, name) in m.tensors.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where role != .alpha {
                    let suffix: String
                    switch role {
                    case .down: suffix = ".lora_down.weight"
                    case .up: suffix = ".lora_up.weight"
                    case .mid: suffix = ".lora_mid.weight"
                    default: suffix = "." + role.rawValue
                    }
                    entries.append(.init(name: key + suffix, source: name, shape: m.shapes[role]!))
                }
                if let alpha = m.alpha {
                    entries.append(.init(name: key + ".alpha", alpha: Float(alpha)))
                }
            }
        }
        var metadata: [String: String] = [:]
        for (k, v) in adapter.metadata where k.hasPrefix("ss_") || k.hasPrefix("modelspec.") { metadata[k] = v }
        if target == .diffusers {
            var o = JSONObject()
            for (component, list) in peft.sorted(by: { $0.key < $1.key }) {
                let rank = mostCommon(list.map(\.rank))
                let alpha = mostCommon(list.map(\.alpha))
                o[component + ".r"] = JSONValue(rank)
                o[component + ".lora_alpha"] = JSONValue(alpha)
                o[component + ".rank_pattern"] = .object(JSONObject(list.filter { $0.rank != rank }.map { ($0.module, JSONValue($0.rank)) }))
                o[component + ".alpha_pattern"] = .object(JSONObject(list.filter { $0.alpha != alpha }.map { ($0.module, JSONValue($0.alpha)) }))
                o[component + ".target_modules"] = .array(list.map { .string($0.module) })
            }
            metadata[PEFTAlphaMetadata.key] = JSONValue.object(o).serialized()
            metadata["format"] = "pt"
        }
        return ConvertedAdapterStore(source: adapter.store, entries: entries, metadata: metadata)
    }

    static func mostCommon<T: Hashable & Comparable>(_ values: [T]) -> T {
        var count: [T: Int] = [:]
        for v in values { count[v, default: 0] += 1 }
        return count.max { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }!.key
    }
}

/// An adapter under new names: the source's factor tensors as they are, scalar alphas made here.
public final class ConvertedAdapterStore: TensorStore, @unchecked Sendable {
    struct Entry {
        var name: String
        var source: String?
        var shape: Shape
        var alpha: Float = 0
        init(name: String, source: String, shape: Shape) {
            self.name = name
            self.source = source
            self.shape = shape
        }
        init(name: String, alpha: Float) {
            self.name = name
            source = nil
            shape = Shape([])
            self.alpha = alpha
        }
    }

    let source: any TensorStore
    let entries: [Entry]
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    private let byName: [String: Int]
    public var formatName: String { "safetensors" }

    init(source: any TensorStore, entries: [Entry], metadata: [String: String]) {
        self.source = source
        self.entries = entries
        self.metadata = metadata
        tensors = entries.map { e in
            if let s = e.source, let d = source.descriptor(named: s) {
                return TensorDescriptor(name: e.name, dtype: d.dtype, shape: d.shape, byteCount: d.byteCount)
            }
            return TensorDescriptor(name: e.name, dtype: .f32, shape: Shape([]), byteCount: 4)
        }
        var index: [String: Int] = [:]
        for (i, e) in entries.enumerated() { index[e.name] = i }
        byName = index
    }

    public func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    public func tensor(named name: String) throws -> TensorView {
        guard let i = byName[name] else { throw AdapterError(.malformed, "no tensor '\(name)'", tensor: name) }
        let e = entries[i]
        if let s = e.source {
            let view = try source.tensor(named: s)
            return TensorView(descriptor: tensors[i], bytes: view.bytes)
        }
        var a = e.alpha
        return withUnsafeBytes(of: &a) { TensorView(descriptor: tensors[i], bytes: TensorBytes(copying: $0)) }
    }
}
