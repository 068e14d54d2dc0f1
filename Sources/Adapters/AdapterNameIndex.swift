import ModelCatalog
import TensorCore

/// Finds the base tensor an adapter module modifies: every dialect's module key → the
/// canonical name of the weight (`unet.down_blocks.0.attentions.0.proj_in.weight`).
///
/// Built from a list of canonical weight names (a base model's, or a family's published
/// structure): kohya keys are those names (diffusers naming, and for the UNet also the LDM
/// naming that `NameMap.export` gives) with dots turned into underscores, as kohya's
/// sd-scripts and ComfyUI derive them; PEFT keys are the canonical names themselves.
public struct AdapterNameIndex: Sendable {
    /// Flattened kohya key → canonical weight name.
    private var kohya: [String: String] = [:]
    /// Canonical module names (weight name without `.weight`).
    private var modules: Set<String> = []
    /// Canonical weight name → shape.
    public private(set) var shapes: [String: Shape] = [:]

    /// Builds the index of `tensors` (canonical descriptors).
    ///
    /// - Parameter family: decides the kohya text-encoder prefixes (`lora_te_` for one text
    ///   encoder, `lora_te1_`/`lora_te2_` for two) and the LDM UNet names.
    public init(canonical tensors: [TensorDescriptor], family: ArchitectureCatalog.Family?) {
        let weights = tensors.filter { $0.name.hasSuffix(".weight") }
        for d in weights { shapes[d.name] = d.shape }
        let twoEncoders = family.map { $0.textEncoders.count > 1 } ?? weights.contains { $0.name.hasPrefix("text_encoder_2.") }
        for d in weights {
            let module = String(d.name.dropLast(".weight".count))
            modules.insert(module)
            let parts = module.split(separator: ".", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let rest = Self.flatten(String(parts[1]))
            switch parts[0] {
            case "unet": add("lora_unet_" + rest, d.name)
            case "text_encoder":
                add((twoEncoders ? "lora_te1_" : "lora_te_") + rest, d.name)
            case "text_encoder_2": add("lora_te2_" + rest, d.name)
            default: break
            }
        }
        // The LDM names of the UNet (kohya's SDXL files and some SD 1.x files use them).
        let unet = weights.filter { $0.name.hasPrefix("unet.") }
        if !unet.isEmpty, let ldmFamily = family ?? ArchitectureCatalog.standard.family("sd1"),
            let (recipes, _) = try? NameMap.export(unet, to: .ldm(ldmFamily, components: [.unet]), family: ldmFamily)
        {
            let prefix = ModelLayout.ldm(ldmFamily, components: [.unet]).layout(of: .unet)?.prefix ?? "model.diffusion_model."
            for r in recipes where r.name.hasPrefix(prefix) && r.name.hasSuffix(".weight") {
                guard let source = r.sources.first else { continue }
                add("lora_unet_" + Self.flatten(String(r.name.dropFirst(prefix.count).dropLast(".weight".count))), source)
            }
        }
    }

    private mutating func add(_ key: String, _ canonical: String) {
        if kohya[key] == nil { kohya[key] = canonical }
    }

    static func flatten(_ path: String) -> String { path.replacingDots() }

    /// The canonical weight name `module` modifies, or `nil` when no tensor matches.
    public func target(of module: AdapterModule) -> String? {
        let key = module.key
        switch module.dialect {
        case .kohya:
            if let hit = kohya[key] { return hit }
            // LyCORIS networks made directly on a diffusers UNet name it `lycoris_<path>`.
            if key.hasPrefix("lycoris_") { return kohya["lora_unet_" + key.dropFirst("lycoris_".count)] }
            // A one-encoder file read against a two-encoder index and back.
            if key.hasPrefix("lora_te_") { return kohya["lora_te1_" + key.dropFirst("lora_te_".count)] }
            if key.hasPrefix("lora_te1_") { return kohya["lora_te_" + key.dropFirst("lora_te1_".count)] }
            return nil
        case .peft, .diffusersAttnProcessor:
            var candidates = [key]
            for p in ["base_model.model.", "transformer."] where key.hasPrefix(p) { candidates.append("unet." + key.dropFirst(p.count)) }
            if !key.hasPrefix("unet.") && !key.hasPrefix("text_encoder") { candidates.append("unet." + key) }
            for c in candidates {
                if modules.contains(c) { return c + ".weight" }
                // transformers 5 saves CLIP text models without `text_model.`.
                for component in ["text_encoder.", "text_encoder_2."] where c.hasPrefix(component) && !c.hasPrefix(component + "text_model.") {
                    let with = component + "text_model." + c.dropFirst(component.count)
                    if modules.contains(with) { return with + ".weight" }
                }
            }
            return nil
        }
    }

    /// The kohya key of a canonical weight name (diffusers naming for one-encoder families,
    /// LDM naming of the UNet for two-encoder families, as sd-scripts writes them).
    public func kohyaKey(of canonical: String, ldm: Bool) -> String? {
        let matches = kohya.filter { $0.value == canonical }.map(\.key)
        let unetDiffusers = "lora_unet_" + Self.flatten(String(canonical.dropFirst("unet.".count).dropLast(".weight".count)))
        if canonical.hasPrefix("unet.") {
            if ldm, let other = matches.first(where: { $0 != unetDiffusers }) { return other }
            return matches.contains(unetDiffusers) ? unetDiffusers : matches.first
        }
        return matches.sorted().first
    }
}

extension String {
    /// The string with every `.` replaced by `_` (kohya's module keys).
    func replacingDots() -> String { String(map { $0 == "." ? "_" : $0 }) }
}
