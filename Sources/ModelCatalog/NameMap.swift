import TensorCore

/// Which UNet weights a conversion takes from a checkpoint that carries both.
public enum WeightSelection: String, Sendable, Hashable, CaseIterable {
    /// The trained weights (`model.diffusion_model.*`).
    case main
    /// The exponential moving average copy (`model_ema.*`, names without dots).
    case ema
}

/// A source tensor that is not part of the model's weights: a schedule buffer, EMA
/// bookkeeping, an unselected EMA copy, optimizer state or something unknown.
public struct Leftover: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        case schedule
        case emaBookkeeping = "ema-bookkeeping"
        case ema
        case unused
        case unknown
    }
    public var descriptor: TensorDescriptor
    public var kind: Kind
    public init(descriptor: TensorDescriptor, kind: Kind) {
        self.descriptor = descriptor
        self.kind = kind
    }
}

/// What a checkpoint says about EMA weights.
public struct EMAInfo: Sendable, Hashable {
    /// Number of `model_ema.*` weight tensors (without `decay`/`num_updates`).
    public var tensorCount = 0
    public var byteCount = 0
    /// Whether the conversion took the UNet from them.
    public var selected = false
    /// Whether the checkpoint holds EMA weights only (`model_ema.*` and no
    /// `model.diffusion_model.*`): the UNet is then taken from them whatever was asked.
    public var only = false
    public var isPresent: Bool { tensorCount > 0 }
    public init() {}
}

/// A model's tensors under canonical names, with what was left over.
public struct CanonicalMapping: Sendable {
    /// The layout the source uses; `nil` when nothing was recognised.
    public var layout: ModelLayout?
    /// One recipe per canonical tensor, in source order.
    public var recipes: [TensorRecipe]
    public var leftovers: [Leftover]
    public var ema: EMAInfo

    public var descriptors: [TensorDescriptor] { recipes.map(\.descriptor) }
}

/// Name maps between the LDM layout, canonical names (`Formats/names.md`) and the diffusers
/// layout, both ways.
public enum NameMap {
    /// The prefix of kept leftovers' canonical names: `extra.` + the source name.
    public static let extraPrefix = "extra."

    /// The LDM name of the EMA copy of `name`, as LDM's `LitEma` stores it
    /// (`model.diffusion_model.input_blocks.0.0.weight` → `model_ema.diffusion_modelinput_blocks00weight`).
    public static func emaName(of name: String) -> String {
        "model_ema." + name.split(separator: ".").dropFirst().joined()
    }

    // MARK: - Source → canonical

    /// Maps a source's tensors to canonical names.
    ///
    /// - Parameters:
    ///   - tensors: the source's descriptors, in its order.
    ///   - layout: the source layout (``ModelLayout/recognize(_:)``); `nil` maps nothing.
    ///   - weights: `.ema` takes the UNet from the `model_ema.*` copies. A checkpoint that has
    ///     only those (``emaOnlyUNet(_:)``) gets its UNet from them either way (`ema.only`).
    ///   - keepExtra: keep leftovers as `extra.<source name>` instead of leaving them out.
    /// - Throws: `.noEMA` when EMA weights are asked for and missing, `.unmappable` when two
    ///   source tensors map to one name.
    public static func canonical(
        _ tensors: [TensorDescriptor], layout: ModelLayout?, weights: WeightSelection = .main, keepExtra: Bool = false,
        catalog: ArchitectureCatalog = .standard
    ) throws(CatalogError) -> CanonicalMapping {
        var ema = EMAInfo()
        for d in tensors where d.name.hasPrefix("model_ema.") && !catalog.emaBookkeeping.contains(d.name) {
            ema.tensorCount += 1
            ema.byteCount += d.byteCount
        }
        // An EMA-only checkpoint is mapped as if its EMA copies had their LDM names; the recipes
        // and leftovers are given back their source names at the end.
        var tensors = tensors
        var sourceName: [String: String] = [:]
        if layout?.layout(of: .unet)?.naming == .ldmUNet, let emaOnly = emaOnlyUNet(tensors.map(\.name)) {
            for i in tensors.indices {
                guard let dotted = emaOnly[tensors[i].name] else { continue }
                sourceName[dotted] = tensors[i].name
                tensors[i].name = dotted
            }
            ema.only = true
            ema.selected = true
        }
        let weights = ema.only ? WeightSelection.main : weights
        var byName: [String: TensorDescriptor] = [:]
        var position: [String: Int] = [:]
        for (i, d) in tensors.enumerated() {
            byName[d.name] = d
            position[d.name] = i
        }
        if weights == .ema {
            guard ema.isPresent else { throw CatalogError(.noEMA, "the model has no EMA weights (no model_ema.* tensors)") }
            guard layout?.layout(of: .unet)?.naming == .ldmUNet else {
                throw CatalogError(.noEMA, "EMA weights are only known in LDM checkpoints with a UNet")
            }
            ema.selected = true
        }
        var recipes: [TensorRecipe] = []
        var recipePositions: [Int] = []
        var leftovers: [Leftover] = []
        var usedAsEMA = Set<String>()
        var seen = Set<String>()
        let structure = layout.map { SourceStructure(tensors: tensors, layout: $0) }

        func add(_ recipe: TensorRecipe, at index: Int) throws(CatalogError) {
            guard seen.insert(recipe.name).inserted else {
                throw CatalogError(.unmappable, "two source tensors map to '\(recipe.name)'", tensor: recipe.name)
            }
            recipes.append(recipe)
            recipePositions.append(index)
        }

        for d in tensors {
            if usedAsEMA.contains(d.name) { continue }
            guard let layout, let structure, let (component, rest) = layout.locate(d.name),
                let mapped = try canonicalRecipes(for: d, rest: rest, in: component, structure: structure)
            else {
                if !(weights == .ema && d.name.hasPrefix("model_ema.")) {
                    leftovers.append(Leftover(descriptor: d, kind: classify(d.name, catalog: catalog)))
                }
                continue
            }
            for var recipe in mapped {
                if weights == .ema, component.component == .unet {
                    let source = emaName(of: d.name)
                    guard let copy = byName[source] else {
                        throw CatalogError(.noEMA, "the EMA copy of '\(d.name)' ('\(source)') is missing", tensor: d.name)
                    }
                    guard copy.dtype == d.dtype, copy.shape.count == d.shape.count else {
                        throw CatalogError(
                            .shapeMismatch, "the EMA copy '\(source)' is \(copy.dtype.name) \(copy.shape), the weight is \(d.dtype.name) \(d.shape)",
                            tensor: source)
                    }
                    recipe.sources = [source]
                    usedAsEMA.insert(source)
                    leftovers.append(Leftover(descriptor: d, kind: .unused))
                }
                try add(recipe, at: position[d.name] ?? 0)
            }
        }
        if weights == .ema {
            // EMA copies not used above are leftovers too.
            for d in tensors where d.name.hasPrefix("model_ema.") && !usedAsEMA.contains(d.name) {
                leftovers.append(Leftover(descriptor: d, kind: classify(d.name, catalog: catalog)))
            }
        }
        if !sourceName.isEmpty {
            for i in recipes.indices { recipes[i].sources = recipes[i].sources.map { sourceName[$0] ?? $0 } }
            for i in leftovers.indices {
                guard let original = sourceName[leftovers[i].descriptor.name] else { continue }
                position[original] = position[leftovers[i].descriptor.name]
                leftovers[i].descriptor.name = original
                leftovers[i].kind = .ema
            }
        }
        if keepExtra {
            for left in leftovers {
                try add(
                    TensorRecipe(
                        name: extraPrefix + left.descriptor.name, dtype: left.descriptor.dtype, shape: left.descriptor.shape,
                        sources: [left.descriptor.name], operation: .copy), at: position[left.descriptor.name] ?? 0)
            }
            // Kept leftovers take their place in source order, so a round trip keeps the order.
            let order = recipePositions.indices.sorted { (recipePositions[$0], $0) < (recipePositions[$1], $1) }
            recipes = order.map { recipes[$0] }
        }
        return CanonicalMapping(layout: layout, recipes: recipes, leftovers: leftovers, ema: ema)
    }

    /// What kind of leftover a name is.
    public static func classify(_ name: String, catalog: ArchitectureCatalog = .standard) -> Leftover.Kind {
        let bare = name.hasPrefix("model.") && !name.hasPrefix("model.diffusion_model.") ? String(name.dropFirst(6)) : name
        if catalog.scheduleLeftovers.contains(bare) { return .schedule }
        if catalog.emaBookkeeping.contains(name) { return .emaBookkeeping }
        if name.hasPrefix("model_ema.") { return .ema }
        if catalog.unusedPrefixes.contains(where: { name.hasPrefix($0) }) || catalog.unusedSuffixes.contains(where: { name.hasSuffix($0) }) {
            return .unused
        }
        return .unknown
    }

    private static func canonicalRecipes(
        for d: TensorDescriptor, rest: String, in layout: ComponentLayout, structure: SourceStructure
    ) throws(CatalogError) -> [TensorRecipe]? {
        let prefix = layout.component.canonicalPrefix
        func copy(_ name: String) -> [TensorRecipe] {
            [TensorRecipe(name: prefix + name, dtype: d.dtype, shape: d.shape, sources: [d.name], operation: .copy)]
        }
        switch layout.naming {
        case .diffusersUNet:
            return copy(rest)
        case .ldmUNet:
            return ComponentNames.unetToDiffusers(rest, layersPerBlock: structure.layersPerBlock).map(copy)
        case .diffusersVAE:
            let name = ComponentNames.vaeModernized(rest)
            if name != rest || (d.shape.rank == 4 && d.shape[2] == 1 && d.shape[3] == 1 && name.contains("mid_block.attentions.0.to_")) {
                if d.shape.rank == 4 {
                    return [
                        TensorRecipe(
                            name: prefix + name, dtype: d.dtype, shape: Shape([d.shape[0], d.shape[1]]), sources: [d.name], operation: .reshape)
                    ]
                }
            }
            return copy(name)
        case .ldmVAE:
            guard let (name, reshape) = ComponentNames.vaeToDiffusers(rest, levels: structure.vaeLevels) else { return nil }
            if reshape, d.shape.rank == 4, d.shape[2] == 1, d.shape[3] == 1 {
                return [
                    TensorRecipe(name: prefix + name, dtype: d.dtype, shape: Shape([d.shape[0], d.shape[1]]), sources: [d.name], operation: .reshape)
                ]
            }
            return copy(name)
        case .hfCLIP:
            return rest.hasPrefix("text_model.") || rest.hasPrefix("text_projection.") ? copy(rest) : nil
        case .hfCLIPFlat:
            return copy(rest.hasPrefix("text_projection.") ? rest : "text_model." + rest)
        case .openCLIP:
            switch ComponentNames.openCLIPToCanonical(rest) {
            case .plain(let name)?:
                return copy(name)
            case .projection?:
                guard d.shape.rank == 2 else { throw CatalogError(.shapeMismatch, "'\(d.name)' is \(d.shape), expected 2-D", tensor: d.name) }
                return [
                    TensorRecipe(
                        name: prefix + "text_projection.weight", dtype: d.dtype, shape: Shape([d.shape[1], d.shape[0]]), sources: [d.name],
                        operation: .transpose)
                ]
            case .inProjection(let layer, let kind)?:
                guard d.shape.rank >= 1, d.shape[0] % 3 == 0 else {
                    throw CatalogError(.shapeMismatch, "'\(d.name)' is \(d.shape); its first dimension must hold q, k and v", tensor: d.name)
                }
                let n = d.shape[0] / 3
                var part = d.shape.dimensions
                part[0] = n
                return ["q", "k", "v"].enumerated().map { i, x in
                    TensorRecipe(
                        name: prefix + "text_model.encoder.layers.\(layer).self_attn.\(x)_proj.\(kind)", dtype: d.dtype, shape: Shape(part),
                        sources: [d.name], operation: .rows(start: i * n, count: n))
                }
            case nil:
                return nil
            }
        }
    }

    // MARK: - Canonical → target layout

    /// What an export leaves out, and why.
    public struct Omission: Sendable, Hashable {
        public var name: String
        public var reason: String
    }

    /// Maps canonical tensors to `layout`.
    ///
    /// - Parameters:
    ///   - tensors: canonical descriptors, in order.
    ///   - layout: the target naming.
    ///   - family: the detected family; decides what diffusers keeps of an SD 2.x text tower.
    /// - Returns: the recipes (sources are canonical names) and what has no place in the target.
    public static func export(
        _ tensors: [TensorDescriptor], to layout: ModelLayout, family: ArchitectureCatalog.Family?
    ) throws(CatalogError) -> (recipes: [TensorRecipe], omitted: [Omission]) {
        var byName: [String: TensorDescriptor] = [:]
        for d in tensors { byName[d.name] = d }
        let structure = CanonicalStructure(tensors: tensors)
        var recipes: [TensorRecipe] = []
        var omitted: [Omission] = []
        var seen = Set<String>()
        func add(_ r: TensorRecipe) throws(CatalogError) {
            guard seen.insert(r.name).inserted else { throw CatalogError(.unmappable, "two tensors map to '\(r.name)'", tensor: r.name) }
            recipes.append(r)
        }

        // Text towers diffusers keeps without their last layer (SD 2.x) when they still have it.
        var dropLayer: [Component: Int] = [:]
        if layout.kind == .diffusers, let family {
            for slot in family.textEncoders where slot.diffusersDropsLastLayer {
                if byName[slot.component.canonicalPrefix + "text_projection.weight"] != nil,
                    let last = structure.textLayers[slot.component].flatMap({ $0 > 0 ? $0 - 1 : nil })
                {
                    dropLayer[slot.component] = last
                }
            }
        }

        for d in tensors {
            if d.name.hasPrefix(extraPrefix) {
                if layout.kind == .ldm {
                    try add(
                        TensorRecipe(
                            name: String(d.name.dropFirst(extraPrefix.count)), dtype: d.dtype, shape: d.shape, sources: [d.name], operation: .copy))
                } else {
                    omitted.append(Omission(name: d.name, reason: "not part of a diffusers model"))
                }
                continue
            }
            guard let component = Component.allCases.first(where: { d.name.hasPrefix($0.canonicalPrefix) }) else {
                omitted.append(Omission(name: d.name, reason: "not a canonical name"))
                continue
            }
            guard let target = layout.layout(of: component) else {
                omitted.append(Omission(name: d.name, reason: "the target layout has no \(component.rawValue)"))
                continue
            }
            let rest = String(d.name.dropFirst(component.canonicalPrefix.count))
            func copy(_ name: String, _ op: TensorRecipe.Operation = .copy, shape: Shape? = nil) throws(CatalogError) {
                try add(TensorRecipe(name: target.prefix + name, dtype: d.dtype, shape: shape ?? d.shape, sources: [d.name], operation: op))
            }
            switch target.naming {
            case .diffusersUNet:
                try copy(rest)
            case .ldmUNet:
                guard let name = ComponentNames.unetToLDM(rest, layersPerBlock: structure.layersPerBlock, upWithAttention: structure.upWithAttention)
                else {
                    omitted.append(Omission(name: d.name, reason: "no LDM UNet name")); continue
                }
                try copy(name)
            case .diffusersVAE:
                try copy(rest)
            case .ldmVAE:
                guard let (name, reshape) = ComponentNames.vaeToLDM(rest, levels: structure.vaeLevels) else {
                    omitted.append(Omission(name: d.name, reason: "no LDM VAE name")); continue
                }
                if reshape, d.shape.rank == 2 {
                    try copy(name, .reshape, shape: Shape([d.shape[0], d.shape[1], 1, 1]))
                } else {
                    try copy(name)
                }
            case .hfCLIP, .hfCLIPFlat:
                if let last = dropLayer[component], rest.hasPrefix("text_model.encoder.layers.\(last).") || rest.hasPrefix("text_projection.") {
                    omitted.append(
                        Omission(name: d.name, reason: "diffusers' \(family?.name ?? "") text encoder has no last layer and no projection"))
                    continue
                }
                if layout.kind == .diffusers, rest == "text_model.embeddings.position_ids" {
                    omitted.append(Omission(name: d.name, reason: "a non-persistent buffer transformers does not save"))
                    continue
                }
                let name = target.naming == .hfCLIPFlat && rest.hasPrefix("text_model.") ? String(rest.dropFirst("text_model.".count)) : rest
                try copy(name)
                if layout.kind == .ldm, rest == "text_model.embeddings.position_embedding.weight",
                    byName[component.canonicalPrefix + "text_model.embeddings.position_ids"] == nil, d.shape.rank == 2
                {
                    let idName = (target.naming == .hfCLIPFlat ? "" : "text_model.") + "embeddings.position_ids"
                    try add(
                        TensorRecipe(name: target.prefix + idName, dtype: .i64, shape: Shape([1, d.shape[0]]), sources: [], operation: .positionIDs))
                }
            case .openCLIP:
                switch ComponentNames.canonicalToOpenCLIP(rest) {
                case .plain(let name)?:
                    try copy(name)
                case .projection?:
                    guard d.shape.rank == 2 else { throw CatalogError(.shapeMismatch, "'\(d.name)' is \(d.shape), expected 2-D", tensor: d.name) }
                    try copy("text_projection", .transpose, shape: Shape([d.shape[1], d.shape[0]]))
                case .inProjection(let layer, let kind)?:
                    guard rest.contains(".q_proj.") else { continue }  // emitted with q
                    let base = component.canonicalPrefix + "text_model.encoder.layers.\(layer).self_attn."
                    let parts = ["q", "k", "v"].map { base + "\($0)_proj.\(kind)" }
                    let found = parts.compactMap { byName[$0] }
                    guard found.count == 3, found.allSatisfy({ $0.dtype == d.dtype && $0.shape == d.shape }) else {
                        throw CatalogError(
                            .missingTensor, "layer \(layer) of \(component.rawValue) lacks matching q, k and v \(kind)s to fuse", tensor: d.name)
                    }
                    var dims = d.shape.dimensions
                    dims[0] *= 3
                    try add(
                        TensorRecipe(
                            name: target.prefix + "transformer.resblocks.\(layer).attn.in_proj_\(kind)", dtype: d.dtype, shape: Shape(dims),
                            sources: parts, operation: .concatenateRows))
                case nil:
                    omitted.append(
                        Omission(name: d.name, reason: rest.hasSuffix("position_ids") ? "OpenCLIP has no position_ids buffer" : "no OpenCLIP name"))
                }
            }
        }
        return (recipes, omitted)
    }
}

/// Structure a source map needs: UNet resnets per level and VAE levels, read from source names.
struct SourceStructure {
    var layersPerBlock = 2
    var vaeLevels = 4

    init(tensors: [TensorDescriptor], layout: ModelLayout) {
        var downsampleIndices: [Int] = []
        var maxInput = 0
        var vaeLevelSet = Set<Int>()
        for d in tensors {
            guard let (c, rest) = layout.locate(d.name) else { continue }
            let p = rest.split(separator: ".")
            switch c.naming {
            case .ldmUNet where p.count > 3 && p[0] == "input_blocks":
                if let i = Int(p[1]) {
                    maxInput = max(maxInput, i)
                    if p[2] == "0", p[3] == "op" { downsampleIndices.append(i) }
                }
            case .diffusersUNet where p.count > 3 && p[0] == "down_blocks" && p[1] == "0" && p[2] == "resnets":
                if let l = Int(p[3]) { maxInput = max(maxInput, l + 1) }
            case .ldmVAE where p.count > 2 && (p[1] == "down" || p[1] == "up"):
                if let k = Int(p[2]) { vaeLevelSet.insert(k) }
            default: break
            }
        }
        if let first = downsampleIndices.min() { layersPerBlock = first - 1 } else if maxInput > 0 { layersPerBlock = maxInput }
        if let top = vaeLevelSet.max() { vaeLevels = top + 1 }
    }
}

/// Structure an export needs, read from canonical names.
struct CanonicalStructure {
    var layersPerBlock = 2
    var upWithAttention = Set<Int>()
    var vaeLevels = 4
    var textLayers: [Component: Int] = [:]

    init(tensors: [TensorDescriptor]) {
        var resnets = Set<Int>()
        var vae = Set<Int>()
        for d in tensors {
            let p = d.name.split(separator: ".")
            guard p.count > 4 else { continue }
            if p[0] == "unet", p[1] == "down_blocks", p[2] == "0", p[3] == "resnets", let l = Int(p[4]) { resnets.insert(l) }
            if p[0] == "unet", p[1] == "up_blocks", p[3] == "attentions", let b = Int(p[2]) { upWithAttention.insert(b) }
            if p[0] == "vae", p[1] == "encoder" || p[1] == "decoder", p[2] == "down_blocks" || p[2] == "up_blocks", let k = Int(p[3]) {
                vae.insert(k)
            }
            if let c = Component(rawValue: String(p[0])), c.isTextEncoder, p.count > 5, p[1] == "text_model", p[2] == "encoder", p[3] == "layers",
                let n = Int(p[4])
            {
                textLayers[c] = max(textLayers[c] ?? 0, n + 1)
            }
        }
        if let top = resnets.max() { layersPerBlock = top + 1 }
        if let top = vae.max() { vaeLevels = top + 1 }
    }
}
