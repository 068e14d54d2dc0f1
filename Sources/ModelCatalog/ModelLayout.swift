import StrictJSON
import TensorCore

/// A part of a latent diffusion model, named as diffusers names its folder.
public enum Component: String, Sendable, Hashable, CaseIterable, Comparable {
    case unet
    case vae
    case textEncoder = "text_encoder"
    case textEncoder2 = "text_encoder_2"

    /// The prefix of this component's canonical tensor names (`unet.`, `text_encoder_2.`).
    public var canonicalPrefix: String { rawValue + "." }

    /// The weights file diffusers' `save_pretrained` writes for the component.
    public var diffusersWeightsFile: String {
        self == .unet || self == .vae ? "diffusion_pytorch_model.safetensors" : "model.safetensors"
    }

    public var isTextEncoder: Bool { self == .textEncoder || self == .textEncoder2 }

    public static func < (a: Component, b: Component) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// How the tensors of one component are named inside their prefix.
public enum ComponentNaming: String, Sendable, Hashable {
    /// CompVis `openaimodel.UNetModel` (`input_blocks.1.0.in_layers.0.weight`).
    case ldmUNet = "ldm-unet"
    /// CompVis `AutoencoderKL` (`decoder.up.3.block.0.conv1.weight`, 1×1-conv attention).
    case ldmVAE = "ldm-vae"
    /// diffusers `UNet2DConditionModel`.
    case diffusersUNet = "diffusers-unet"
    /// diffusers `AutoencoderKL` (linear attention).
    case diffusersVAE = "diffusers-vae"
    /// transformers `CLIPTextModel` as transformers 4 saves it (`text_model.encoder.layers.0…`).
    case hfCLIP = "hf-clip"
    /// transformers `CLIPTextModel` without the `text_model.` level (transformers 5, and very
    /// old LDM files).
    case hfCLIPFlat = "hf-clip-flat"
    /// OpenCLIP's text tower (`transformer.resblocks.0.attn.in_proj_weight`).
    case openCLIP = "openclip"
}

/// Where one component's tensors live in a layout: a name prefix and a naming.
public struct ComponentLayout: Sendable, Hashable {
    public var component: Component
    public var prefix: String
    public var naming: ComponentNaming

    public init(component: Component, prefix: String, naming: ComponentNaming) {
        self.component = component
        self.prefix = prefix
        self.naming = naming
    }
}

/// A complete tensor naming: which components sit under which prefixes with which naming.
/// Recorded in `.wpk` headers (`metadata.layout`) so `export --layout source` can restore it.
public struct ModelLayout: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        /// The original CompVis / Stability single-file layout.
        case ldm
        /// diffusers component naming (a folder, or its files).
        case diffusers
    }

    public var kind: Kind
    public var components: [ComponentLayout]

    public init(kind: Kind, components: [ComponentLayout]) {
        self.kind = kind
        self.components = components
    }

    public func layout(of component: Component) -> ComponentLayout? { components.first { $0.component == component } }

    /// The component a source name belongs to and the name inside it (longest prefix wins).
    public func locate(_ name: String) -> (ComponentLayout, String)? {
        var best: ComponentLayout?
        for c in components where name.hasPrefix(c.prefix) {
            if best == nil || c.prefix.count > best!.prefix.count { best = c }
        }
        guard let c = best else { return nil }
        return (c, String(name.dropFirst(c.prefix.count)))
    }

    /// The diffusers layout of the given components (prefix `component.`, transformers-4 text
    /// encoder names, which transformers 4 and 5 both load).
    public static func diffusers(_ components: [Component]) -> ModelLayout {
        ModelLayout(
            kind: .diffusers,
            components: components.sorted().map { c in
                ComponentLayout(component: c, prefix: c.canonicalPrefix, naming: c == .unet ? .diffusersUNet : c == .vae ? .diffusersVAE : .hfCLIP)
            })
    }

    /// The single-file LDM layout of `family` for the given components.
    public static func ldm(_ family: ArchitectureCatalog.Family, components: [Component]) -> ModelLayout {
        var out: [ComponentLayout] = []
        for c in components.sorted() {
            switch c {
            case .unet: out.append(ComponentLayout(component: c, prefix: family.ldmPrefixes[.unet] ?? "model.diffusion_model.", naming: .ldmUNet))
            case .vae: out.append(ComponentLayout(component: c, prefix: family.ldmPrefixes[.vae] ?? "first_stage_model.", naming: .ldmVAE))
            case .textEncoder, .textEncoder2:
                if let slot = family.textEncoder(c) {
                    out.append(ComponentLayout(component: c, prefix: slot.ldmPrefix, naming: slot.ldmNaming))
                } else {
                    out.append(
                        ComponentLayout(
                            component: c, prefix: c == .textEncoder ? "cond_stage_model.transformer." : "conditioner.embedders.1.model.",
                            naming: c == .textEncoder ? .hfCLIP : .openCLIP))
                }
            }
        }
        return ModelLayout(kind: .ldm, components: out)
    }

    // MARK: - Recognition

    private static let ldmProbes: [(String, Component, ComponentNaming)] = [
        ("model.diffusion_model.", .unet, .ldmUNet),
        ("first_stage_model.", .vae, .ldmVAE),
        ("cond_stage_model.transformer.", .textEncoder, .hfCLIP),
        ("cond_stage_model.model.", .textEncoder, .openCLIP),
        ("conditioner.embedders.0.transformer.", .textEncoder, .hfCLIP),
        ("conditioner.embedders.0.model.", .textEncoder2, .openCLIP),
        ("conditioner.embedders.1.model.", .textEncoder2, .openCLIP),
    ]

    private static let diffusersProbes: [(String, Component, ComponentNaming)] = [
        ("unet.", .unet, .diffusersUNet), ("vae.", .vae, .diffusersVAE),
        ("text_encoder.", .textEncoder, .hfCLIP), ("text_encoder_2.", .textEncoder2, .hfCLIP),
    ]

    /// Recognises the layout of a set of tensor names: a full LDM checkpoint, diffusers
    /// component-prefixed names, or a file holding one component with no prefix. `nil` when
    /// no name belongs to a known component.
    public static func recognize(_ names: [String]) -> ModelLayout? {
        func textNaming(_ prefix: String, _ naming: ComponentNaming) -> ComponentNaming {
            guard naming == .hfCLIP else { return naming }
            return names.contains { $0.hasPrefix(prefix + "text_model.") } ? .hfCLIP : .hfCLIPFlat
        }
        var found: [ComponentLayout] = []
        for (prefix, component, naming) in ldmProbes where names.contains(where: { $0.hasPrefix(prefix) }) {
            // A second OpenCLIP tower at embedders.0 belongs to the refiner only when no CLIP sits there.
            if found.contains(where: { $0.component == component }) { continue }
            found.append(ComponentLayout(component: component, prefix: prefix, naming: textNaming(prefix, naming)))
        }
        // An EMA-only checkpoint: its UNet is the model_ema.* copies, read under the LDM names
        // they were flattened from (NameMap.emaOnlyUNet).
        if !found.contains(where: { $0.component == .unet }), NameMap.emaOnlyUNet(names) != nil {
            found.insert(ComponentLayout(component: .unet, prefix: "model.diffusion_model.", naming: .ldmUNet), at: 0)
        }
        if !found.isEmpty { return ModelLayout(kind: .ldm, components: found) }
        for (prefix, component, naming) in diffusersProbes
        where names.contains(where: { $0.hasPrefix(prefix) && isComponentName(String($0.dropFirst(prefix.count)), component) }) {
            found.append(ComponentLayout(component: component, prefix: prefix, naming: textNaming(prefix, naming)))
        }
        if !found.isEmpty { return ModelLayout(kind: .diffusers, components: found) }
        return recognizeSingleComponent(names)
    }

    private static func isComponentName(_ rest: String, _ component: Component) -> Bool {
        switch component {
        case .unet:
            rest.hasPrefix("conv_in.") || rest.hasPrefix("down_blocks.") || rest.hasPrefix("mid_block.") || rest.hasPrefix("up_blocks.")
                || rest.hasPrefix("time_embedding.") || rest.hasPrefix("conv_out.") || rest.hasPrefix("conv_norm_out.")
                || rest.hasPrefix("add_embedding.")
        case .vae: rest.hasPrefix("encoder.") || rest.hasPrefix("decoder.") || rest.hasPrefix("quant_conv.") || rest.hasPrefix("post_quant_conv.")
        case .textEncoder, .textEncoder2:
            rest.hasPrefix("text_model.") || rest.hasPrefix("embeddings.") || rest.hasPrefix("encoder.layers.") || rest.hasPrefix("final_layer_norm.")
                || rest.hasPrefix("text_projection.")
        }
    }

    private static func recognizeSingleComponent(_ names: [String]) -> ModelLayout? {
        func any(_ prefixes: [String]) -> Bool { names.contains { n in prefixes.contains { n.hasPrefix($0) } } }
        if any(["diffusion_model.input_blocks.", "diffusion_model.out."]) {
            return ModelLayout(kind: .ldm, components: [ComponentLayout(component: .unet, prefix: "diffusion_model.", naming: .ldmUNet)])
        }
        if any(["input_blocks.", "middle_block.", "output_blocks."]) {
            return ModelLayout(kind: .ldm, components: [ComponentLayout(component: .unet, prefix: "", naming: .ldmUNet)])
        }
        if any(["conv_in.", "down_blocks.", "up_blocks.", "mid_block."]) {
            return ModelLayout(kind: .diffusers, components: [ComponentLayout(component: .unet, prefix: "", naming: .diffusersUNet)])
        }
        if any(["transformer.resblocks."]), any(["token_embedding.", "positional_embedding"]) {
            return ModelLayout(kind: .ldm, components: [ComponentLayout(component: .textEncoder, prefix: "", naming: .openCLIP)])
        }
        if any(["text_model."]) {
            return ModelLayout(kind: .diffusers, components: [ComponentLayout(component: .textEncoder, prefix: "", naming: .hfCLIP)])
        }
        if any(["embeddings.token_embedding.", "encoder.layers."]) {
            return ModelLayout(kind: .diffusers, components: [ComponentLayout(component: .textEncoder, prefix: "", naming: .hfCLIPFlat)])
        }
        if any(["encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid."]) {
            return ModelLayout(kind: .ldm, components: [ComponentLayout(component: .vae, prefix: "", naming: .ldmVAE)])
        }
        if any(["encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.", "decoder.mid_block."]) {
            return ModelLayout(kind: .diffusers, components: [ComponentLayout(component: .vae, prefix: "", naming: .diffusersVAE)])
        }
        return nil
    }

    // MARK: - JSON (the `.wpk` header's `metadata.layout`)

    public var json: JSONValue {
        [
            "kind": .string(kind.rawValue),
            "components": .array(
                components.map { c in
                    ["component": .string(c.component.rawValue), "prefix": .string(c.prefix), "naming": .string(c.naming.rawValue)]
                }),
        ]
    }

    public init(json: JSONValue) throws(CatalogError) {
        guard let o = json.objectValue, let kind = o["kind"]?.stringValue.flatMap(Kind.init(rawValue:)),
            let list = o["components"]?.arrayValue
        else { throw CatalogError(.unsupportedLayout, "layout record is not an object with a known kind and components") }
        var components: [ComponentLayout] = []
        for item in list {
            guard let c = item.objectValue, let component = c["component"]?.stringValue.flatMap(Component.init(rawValue:)),
                let prefix = c["prefix"]?.stringValue, let naming = c["naming"]?.stringValue.flatMap(ComponentNaming.init(rawValue:))
            else { throw CatalogError(.unsupportedLayout, "layout record has a component entry we do not know: \(item.serialized())") }
            components.append(ComponentLayout(component: component, prefix: prefix, naming: naming))
        }
        self.init(kind: kind, components: components)
    }
}
