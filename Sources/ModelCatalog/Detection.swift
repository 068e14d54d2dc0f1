import StrictJSON
import TensorCore

/// Which model a set of canonical tensors is, and why: the family and variant, the prediction
/// type where something decides it, the evidence, the candidates rejected with their reasons,
/// and per component the missing, unexpected and mis-shaped tensors.
public struct Detection: Sendable {
    public struct Rejection: Sendable, Hashable {
        public var family: String
        public var reasons: [String]
    }

    public struct ShapeMismatch: Sendable, Hashable {
        public var tensor: String
        public var expected: Shape
        public var actual: Shape
    }

    public struct ComponentReport: Sendable {
        public var component: Component
        public var tensorCount: Int
        public var missing: [String]
        public var unexpected: [String]
        public var shapeMismatches: [ShapeMismatch]
        public var summary: String
    }

    /// What a set of tensors is: a whole model, one component, or nothing recognised.
    public enum Kind: Sendable, Hashable, CustomStringConvertible {
        case pipeline
        case component(Component)
        case unknown

        /// `pipeline`, the component's name (`vae`, `text_encoder`, …) or `unknown`.
        public var description: String {
            switch self {
            case .pipeline: "pipeline"
            case .component(let c): c.rawValue
            case .unknown: "unknown"
            }
        }

        /// Whether the tensors are a whole model.
        public var isPipeline: Bool { self == .pipeline }
    }

    /// What the UNet is trained to predict, spelled as diffusers' `prediction_type`.
    public enum PredictionType: String, Sendable, Hashable, CaseIterable {
        case epsilon
        case vPrediction = "v_prediction"
        case sample

        /// Reads a configuration's or metadata's spelling (`v` is `v_prediction`).
        public init?(spelling: String) {
            self.init(rawValue: spelling == "v" ? "v_prediction" : spelling)
        }
    }

    /// `pipeline` for a whole model, or the one component a file holds.
    public var kind: Kind
    public var family: ArchitectureCatalog.Family?
    public var variant: String?
    /// What the UNet predicts, or `nil` (unknown).
    public var predictionType: PredictionType?
    public var predictionSource: String
    public var evidence: [String]
    public var rejected: [Rejection]
    /// Families that fit equally well when `family` is `nil`.
    public var candidates: [String]
    public var components: [ComponentReport]
    public var missingComponents: [Component]
    public var unet: UNetStructure?
    public var vae: VAEStructure?
    public var textEncoders: [TextEncoderStructure]
    public var layout: ModelLayout?
    /// Whether the widths are those of the published model of the family.
    public var referenceDimensions: Bool?

    public var familyID: String { family?.id ?? "unknown" }

    /// The pooled projection width of the text encoder whose pooled output conditions the UNet
    /// (SDXL's second encoder), when the weights hold it.
    public var pooledProjectionWidth: Int? {
        let component = family?.pooledTextEncoder?.component ?? .textEncoder2
        return textEncoders.first { $0.component == component }?.projection
    }

    /// Detects the model behind `tensors` (canonical descriptors).
    ///
    /// - Parameters:
    ///   - layout: the source layout, whose prefixes are evidence too.
    ///   - sourceNames: the names as the source stores them (for markers such as `v_pred`).
    ///   - metadata: the file's string metadata (`modelspec.*`, `prediction_type`).
    ///   - schedulerConfig: a diffusers `scheduler_config.json`, when the source has one.
    public static func detect(
        _ tensors: [TensorDescriptor], layout: ModelLayout?, sourceNames: [String] = [], metadata: [String: String] = [:],
        schedulerConfig: JSONObject? = nil, catalog: ArchitectureCatalog = .standard
    ) -> Detection {
        var shapes: [String: Shape] = [:]
        for d in tensors { shapes[d.name] = d.shape }
        let unet = UNetStructure(shapes)
        let vae = VAEStructure(shapes)
        let texts = [Component.textEncoder, .textEncoder2].compactMap { TextEncoderStructure($0, shapes) }
        var present = Set<Component>()
        if unet != nil { present.insert(.unet) }
        if vae != nil { present.insert(.vae) }
        for t in texts { present.insert(t.component) }

        var evidence: [String] = []
        if let layout {
            evidence.append("layout \(layout.kind.rawValue): " + layout.components.map { "\($0.component.rawValue) under '\($0.prefix)' (\($0.naming.rawValue))" }.joined(separator: ", "))
        }
        if let u = unet {
            evidence.append("unet.conv_in.weight \(shapes["unet.conv_in.weight"]!): \(u.inChannels) input channels")
            evidence.append("UNet: \(u.blockOutChannels.count) levels, widths \(u.blockOutChannels), \(u.layersPerBlock) resnets per level, transformer depth \(u.transformerDepth)")
            if let c = u.contextDim { evidence.append("cross-attention attn2.to_k.weight takes \(c)-wide context") }
            if let l = u.linearProjection { evidence.append("proj_in is \(l ? "linear (2-D weight)" : "a 1×1 convolution (4-D weight)")") }
            if let a = u.additionEmbed { evidence.append("add_embedding.linear_1 takes \(a) inputs (SDXL text/time conditioning)") }
        }
        for t in texts {
            evidence.append("\(t.component.rawValue): width \(t.hidden), \(t.layers) layers, vocabulary \(t.vocab)" + (t.projection.map { ", projection to \($0)" } ?? ""))
        }
        if let v = vae { evidence.append("VAE: widths \(v.blockOutChannels), \(v.latentChannels) latent channels") }

        let kind: Kind
        if present.contains(.unet) && (present.count > 1) || present.count > 2 {
            kind = .pipeline
        } else if let only = present.sorted().first, present.count == 1 {
            kind = .component(only)
        } else {
            kind = present.isEmpty ? .unknown : .pipeline
        }

        var rejected: [Rejection] = []
        var passed: [ArchitectureCatalog.Family] = []
        for f in catalog.families {
            var reasons: [String] = []
            if let u = unet {
                if u.blockOutChannels.count != f.unet.blockOutChannels.count {
                    reasons.append("UNet has \(u.blockOutChannels.count) levels, \(f.id) has \(f.unet.blockOutChannels.count)")
                }
                if let l = u.linearProjection, l != f.unet.linearProjection {
                    reasons.append("proj_in is \(l ? "linear" : "a 1×1 conv"), \(f.id) uses \(f.unet.linearProjection ? "linear" : "1×1 conv") projections")
                }
                if (u.additionEmbed != nil) != (f.unet.additionEmbed != nil) {
                    reasons.append(u.additionEmbed != nil ? "UNet has an added text/time embedding, \(f.id) has none" : "UNet lacks the added embedding \(f.id) has")
                }
                let attention = u.transformerDepth.map { $0 > 0 }
                if attention.count == f.unet.attention.count, attention != f.unet.attention {
                    reasons.append("attention on levels \(attention), \(f.id) has \(f.unet.attention)")
                }
                if let c = u.contextDim, !texts.isEmpty {
                    let widths = f.textEncoders.compactMap { slot in texts.first { $0.component == slot.component }?.hidden }
                    if widths.count == f.textEncoders.count, widths.reduce(0, +) != c {
                        reasons.append("context width \(c) is not the sum of its text encoders' widths \(widths) as \(f.id) needs")
                    }
                }
            }
            for t in texts where f.textEncoder(t.component) == nil {
                reasons.append("has \(t.component.rawValue), \(f.id) has no such text encoder")
            }
            if let layout, layout.kind == .ldm {
                for c in layout.components where c.component.isTextEncoder {
                    if let slot = f.textEncoder(c.component), (slot.ldmNaming == .openCLIP) != (c.naming == .openCLIP) {
                        reasons.append("\(c.component.rawValue) is stored as \(c.naming == .openCLIP ? "OpenCLIP" : "transformers CLIP"), \(f.id) stores \(slot.ldmNaming == .openCLIP ? "OpenCLIP" : "transformers CLIP")")
                    }
                }
            }
            if unet == nil, texts.isEmpty, vae != nil {
                // Every family shares the VAE architecture: no reason to reject, none to choose.
            }
            if reasons.isEmpty { passed.append(f) } else { rejected.append(Rejection(family: f.id, reasons: reasons)) }
        }

        var family: ArchitectureCatalog.Family?
        var candidates: [String] = []
        if passed.count == 1 {
            family = passed[0]
        } else if passed.count > 1 {
            // Prefer the family whose published widths the tensors match.
            let exact = passed.filter { f in
                (unet == nil || unet!.blockOutChannels == f.unet.blockOutChannels) &&
                    texts.allSatisfy { t in f.textEncoder(t.component)?.model.hidden == t.hidden }
            }
            if exact.count == 1, unet != nil || !texts.isEmpty {
                family = exact[0]
                evidence.append("only \(exact[0].id) has these widths among \(passed.map(\.id))")
            } else {
                candidates = passed.map(\.id)
                if unet == nil, texts.isEmpty, vae != nil {
                    evidence.append("the VAE architecture is shared by \(candidates.joined(separator: ", ")); the weights do not say which")
                }
            }
        }

        var referenceDimensions: Bool?
        var variant: String?
        if let f = family {
            if let u = unet {
                referenceDimensions = u.blockOutChannels == f.unet.blockOutChannels && u.contextDim == f.unet.contextDim
                if referenceDimensions == true {
                    evidence.append("widths match the published \(f.name) (\(f.unet.blockOutChannels), context \(f.unet.contextDim))")
                } else {
                    evidence.append("widths differ from the published \(f.name) (\(f.unet.blockOutChannels), context \(f.unet.contextDim)): a reduced or custom model of the same structure")
                }
                if let v = f.variant(inChannels: u.inChannels) {
                    variant = v.id
                    evidence.append("\(u.inChannels) input channels: \(f.id) \(v.id)")
                } else {
                    variant = "custom-\(u.inChannels)ch"
                    evidence.append("\(u.inChannels) input channels match no \(f.id) variant")
                }
            }
        }

        // Prediction type.
        var prediction: PredictionType?
        var predictionSource = "unknown"
        let names = Set(sourceNames)
        if let p = schedulerConfig?["prediction_type"]?.stringValue {
            prediction = PredictionType(spelling: p)
            predictionSource = "scheduler/scheduler_config.json prediction_type" + (prediction == nil ? " '\(p)', which is not one WeightPack knows" : "")
        } else if let p = metadata["modelspec.prediction_type"] ?? metadata["prediction_type"] {
            prediction = PredictionType(spelling: p)
            predictionSource = "file metadata" + (prediction == nil ? " '\(p)', which is not one WeightPack knows" : "")
        } else if names.contains("edm_vpred.sigma_max") {
            prediction = .vPrediction
            predictionSource = "marker tensor edm_vpred.sigma_max (EDM v-prediction)"
        } else if names.contains("v_pred") {
            prediction = .vPrediction
            predictionSource = "marker tensor v_pred"
        } else if let f = family, let d = f.defaultPrediction.flatMap(PredictionType.init(spelling:)) {
            prediction = d
            predictionSource = f.predictionDecidedByWeights ? "no v-prediction marker tensor (\(f.predictionNote))" : "family convention, not decided by the weights (\(f.predictionNote))"
        } else if let f = family {
            predictionSource = "unknown: \(f.predictionNote)"
        }
        if let prediction { evidence.append("prediction type \(prediction.rawValue): \(predictionSource)") }

        // Per-component completeness.
        var reports: [ComponentReport] = []
        func report(_ c: Component, _ expected: [(String, Shape)], summary: String) {
            let prefix = c.canonicalPrefix
            let actual = tensors.filter { $0.name.hasPrefix(prefix) }
            var expectedShapes: [String: Shape] = [:]
            for (n, s) in expected { expectedShapes[n] = s }
            let missing = expected.map(\.0).filter { shapes[$0] == nil }
            let optional: Set<String> = [prefix + "text_model.embeddings.position_ids"]
            let unexpected = actual.map(\.name).filter { expectedShapes[$0] == nil && !optional.contains($0) }
            let mismatches = actual.compactMap { d -> ShapeMismatch? in
                guard let e = expectedShapes[d.name], e != d.shape else { return nil }
                return ShapeMismatch(tensor: d.name, expected: e, actual: d.shape)
            }
            reports.append(ComponentReport(component: c, tensorCount: actual.count, missing: missing, unexpected: unexpected, shapeMismatches: mismatches, summary: summary))
        }
        if let u = unet { report(.unet, u.expectedTensors, summary: "\(u.blockOutChannels.count) levels \(u.blockOutChannels), in \(u.inChannels), context \(u.contextDim.map(String.init) ?? "-")") }
        if let v = vae { report(.vae, v.expectedTensors, summary: "widths \(v.blockOutChannels), latent \(v.latentChannels)" + (v.hasEncoder ? "" : ", decoder only")) }
        for t in texts { report(t.component, t.expectedTensors, summary: "width \(t.hidden), \(t.layers) layers") }

        var missingComponents: [Component] = []
        if kind == .pipeline, let f = family {
            for c in [Component.unet, .vae] + f.textEncoders.map(\.component) where !present.contains(c) { missingComponents.append(c) }
        }

        return Detection(
            kind: kind, family: family, variant: variant, predictionType: prediction, predictionSource: predictionSource,
            evidence: evidence, rejected: rejected, candidates: candidates, components: reports, missingComponents: missingComponents,
            unet: unet, vae: vae, textEncoders: texts, layout: layout, referenceDimensions: referenceDimensions)
    }

    /// The `architecture` object of `inspect --json` and of `.wpk` headers.
    public var json: JSONValue {
        var o = JSONObject()
        o["family"] = .string(familyID)
        if let f = family { o["family_name"] = .string(f.name) }
        o["variant"] = variant.map { .string($0) } ?? "unknown"
        o["kind"] = .string(kind.description)
        o["prediction_type"] = .string(predictionType?.rawValue ?? "unknown")
        o["prediction_source"] = .string(predictionSource)
        if let r = referenceDimensions { o["reference_dimensions"] = .bool(r) }
        if let layout { o["layout"] = .string(layout.kind.rawValue) }
        o["evidence"] = .array(evidence.map { .string($0) })
        o["candidates"] = .array(candidates.map { .string($0) })
        o["rejected"] = .array(rejected.map { ["family": .string($0.family), "reasons": .array($0.reasons.map { .string($0) })] })
        o["missing_components"] = .array(missingComponents.map { .string($0.rawValue) })
        var comps = JSONObject()
        for c in components {
            comps[c.component.rawValue] = [
                "tensors": JSONValue(c.tensorCount),
                "summary": .string(c.summary),
                "missing": .array(c.missing.map { .string($0) }),
                "unexpected": .array(c.unexpected.map { .string($0) }),
                "shape_mismatches": .array(c.shapeMismatches.map {
                    ["tensor": .string($0.tensor), "expected": .array($0.expected.dimensions.map { JSONValue($0) }), "actual": .array($0.actual.dimensions.map { JSONValue($0) })]
                }),
            ]
        }
        o["components"] = .object(comps)
        return .object(o)
    }
}
