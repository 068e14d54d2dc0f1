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
        let seen = Observed(tensors)
        var evidence = structureEvidence(seen, layout: layout)
        let kind = Self.kind(of: seen.present)

        var rejected: [Rejection] = []
        var passed: [ArchitectureCatalog.Family] = []
        for f in catalog.families {
            let reasons = rejectionReasons(f, seen, layout: layout)
            if reasons.isEmpty { passed.append(f) } else { rejected.append(Rejection(family: f.id, reasons: reasons)) }
        }
        let (family, candidates) = choose(among: passed, seen, evidence: &evidence)
        var referenceDimensions: Bool?
        var variant: String?
        if let family { (referenceDimensions, variant) = Self.variant(of: family, seen, evidence: &evidence) }
        let (prediction, predictionSource) = predictionType(
            schedulerConfig: schedulerConfig, metadata: metadata, sourceNames: Set(sourceNames), family: family)
        if let prediction { evidence.append("prediction type \(prediction.rawValue): \(predictionSource)") }

        var missingComponents: [Component] = []
        if kind == .pipeline, let f = family {
            for c in [Component.unet, .vae] + f.textEncoders.map(\.component) where !seen.present.contains(c) { missingComponents.append(c) }
        }
        return Detection(
            kind: kind, family: family, variant: variant, predictionType: prediction, predictionSource: predictionSource,
            evidence: evidence, rejected: rejected, candidates: candidates, components: componentReports(tensors, seen),
            missingComponents: missingComponents, unet: seen.unet, vae: seen.vae, textEncoders: seen.texts, layout: layout,
            referenceDimensions: referenceDimensions)
    }

    // MARK: - The phases of `detect`

    /// Phase 1: the structures the tensor shapes show, before any family is considered.
    private struct Observed {
        var shapes: [String: Shape] = [:]
        let unet: UNetStructure?
        let vae: VAEStructure?
        let texts: [TextEncoderStructure]
        var present = Set<Component>()

        init(_ tensors: [TensorDescriptor]) {
            for d in tensors { shapes[d.name] = d.shape }
            unet = UNetStructure(shapes)
            vae = VAEStructure(shapes)
            texts = [Component.textEncoder, .textEncoder2].compactMap { [shapes] in TextEncoderStructure($0, shapes) }
            if unet != nil { present.insert(.unet) }
            if vae != nil { present.insert(.vae) }
            for t in texts { present.insert(t.component) }
        }
    }

    /// Phase 2: what the layout and the structures say, in words.
    private static func structureEvidence(_ seen: Observed, layout: ModelLayout?) -> [String] {
        var evidence: [String] = []
        if let layout {
            evidence.append(
                "layout \(layout.kind.rawValue): "
                    + layout.components.map { "\($0.component.rawValue) under '\($0.prefix)' (\($0.naming.rawValue))" }.joined(separator: ", "))
        }
        if let u = seen.unet {
            evidence.append("unet.conv_in.weight \(seen.shapes["unet.conv_in.weight"]!): \(u.inChannels) input channels")
            evidence.append(
                "UNet: \(u.blockOutChannels.count) levels, widths \(u.blockOutChannels), \(u.layersPerBlock) resnets per level, transformer depth \(u.transformerDepth)"
            )
            if let c = u.contextDim { evidence.append("cross-attention attn2.to_k.weight takes \(c)-wide context") }
            if let l = u.linearProjection { evidence.append("proj_in is \(l ? "linear (2-D weight)" : "a 1×1 convolution (4-D weight)")") }
            if let a = u.additionEmbed { evidence.append("add_embedding.linear_1 takes \(a) inputs (SDXL text/time conditioning)") }
        }
        for t in seen.texts {
            evidence.append(
                "\(t.component.rawValue): width \(t.hidden), \(t.layers) layers, vocabulary \(t.vocab)"
                    + (t.projection.map { ", projection to \($0)" } ?? ""))
        }
        if let v = seen.vae { evidence.append("VAE: widths \(v.blockOutChannels), \(v.latentChannels) latent channels") }
        return evidence
    }

    /// Phase 3: a whole model, one component, or nothing.
    private static func kind(of present: Set<Component>) -> Kind {
        if present.contains(.unet) && (present.count > 1) || present.count > 2 { return .pipeline }
        if let only = present.sorted().first, present.count == 1 { return .component(only) }
        return present.isEmpty ? .unknown : .pipeline
    }

    /// Phase 4: why family `f` cannot be these tensors (empty when it can). A VAE alone rejects
    /// no family: every family shares the VAE architecture.
    private static func rejectionReasons(_ f: ArchitectureCatalog.Family, _ seen: Observed, layout: ModelLayout?) -> [String] {
        var reasons: [String] = []
        let texts = seen.texts
        if let u = seen.unet {
            if u.blockOutChannels.count != f.unet.blockOutChannels.count {
                reasons.append("UNet has \(u.blockOutChannels.count) levels, \(f.id) has \(f.unet.blockOutChannels.count)")
            }
            if let l = u.linearProjection, l != f.unet.linearProjection {
                reasons.append(
                    "proj_in is \(l ? "linear" : "a 1×1 conv"), \(f.id) uses \(f.unet.linearProjection ? "linear" : "1×1 conv") projections")
            }
            if (u.additionEmbed != nil) != (f.unet.additionEmbed != nil) {
                reasons.append(
                    u.additionEmbed != nil ? "UNet has an added text/time embedding, \(f.id) has none" : "UNet lacks the added embedding \(f.id) has")
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
                    reasons.append(
                        "\(c.component.rawValue) is stored as \(c.naming == .openCLIP ? "OpenCLIP" : "transformers CLIP"), \(f.id) stores \(slot.ldmNaming == .openCLIP ? "OpenCLIP" : "transformers CLIP")"
                    )
                }
            }
        }
        return reasons
    }

    /// Phase 5: the one family left, or the one whose published widths the tensors have; else
    /// the candidates that fit equally well.
    private static func choose(
        among passed: [ArchitectureCatalog.Family], _ seen: Observed, evidence: inout [String]
    ) -> (family: ArchitectureCatalog.Family?, candidates: [String]) {
        if passed.count == 1 { return (passed[0], []) }
        guard passed.count > 1 else { return (nil, []) }
        let (unet, texts) = (seen.unet, seen.texts)
        let exact = passed.filter { f in
            (unet == nil || unet!.blockOutChannels == f.unet.blockOutChannels)
                && texts.allSatisfy { t in f.textEncoder(t.component)?.model.hidden == t.hidden }
        }
        if exact.count == 1, unet != nil || !texts.isEmpty {
            evidence.append("only \(exact[0].id) has these widths among \(passed.map(\.id))")
            return (exact[0], [])
        }
        let candidates = passed.map(\.id)
        if unet == nil, texts.isEmpty, seen.vae != nil {
            evidence.append("the VAE architecture is shared by \(candidates.joined(separator: ", ")); the weights do not say which")
        }
        return (nil, candidates)
    }

    /// Phase 6: whether the UNet has the family's published widths, and which variant its input
    /// channels make it (both `nil` without a UNet).
    private static func variant(
        of f: ArchitectureCatalog.Family, _ seen: Observed, evidence: inout [String]
    ) -> (referenceDimensions: Bool?, variant: String?) {
        guard let u = seen.unet else { return (nil, nil) }
        let reference = u.blockOutChannels == f.unet.blockOutChannels && u.contextDim == f.unet.contextDim
        if reference {
            evidence.append("widths match the published \(f.name) (\(f.unet.blockOutChannels), context \(f.unet.contextDim))")
        } else {
            evidence.append(
                "widths differ from the published \(f.name) (\(f.unet.blockOutChannels), context \(f.unet.contextDim)): a reduced or custom model of the same structure"
            )
        }
        if let v = f.variant(inChannels: u.inChannels) {
            evidence.append("\(u.inChannels) input channels: \(f.id) \(v.id)")
            return (reference, v.id)
        }
        evidence.append("\(u.inChannels) input channels match no \(f.id) variant")
        return (reference, "custom-\(u.inChannels)ch")
    }

    /// Phase 7: the prediction type and what decided it, strongest source first: the scheduler
    /// configuration, file metadata, a marker tensor, the family's convention.
    private static func predictionType(
        schedulerConfig: JSONObject?, metadata: [String: String], sourceNames names: Set<String>, family: ArchitectureCatalog.Family?
    ) -> (PredictionType?, String) {
        if let p = schedulerConfig?["prediction_type"]?.stringValue {
            let prediction = PredictionType(spelling: p)
            return (
                prediction,
                "scheduler/scheduler_config.json prediction_type" + (prediction == nil ? " '\(p)', which is not one WeightPack knows" : "")
            )
        }
        if let p = metadata["modelspec.prediction_type"] ?? metadata["prediction_type"] {
            let prediction = PredictionType(spelling: p)
            return (prediction, "file metadata" + (prediction == nil ? " '\(p)', which is not one WeightPack knows" : ""))
        }
        if names.contains("edm_vpred.sigma_max") { return (.vPrediction, "marker tensor edm_vpred.sigma_max (EDM v-prediction)") }
        if names.contains("v_pred") { return (.vPrediction, "marker tensor v_pred") }
        guard let f = family else { return (nil, "unknown") }
        if let d = f.defaultPrediction.flatMap(PredictionType.init(spelling:)) {
            return (
                d,
                f.predictionDecidedByWeights
                    ? "no v-prediction marker tensor (\(f.predictionNote))" : "family convention, not decided by the weights (\(f.predictionNote))"
            )
        }
        return (nil, "unknown: \(f.predictionNote)")
    }

    /// Phase 8: per component, the tensors missing, unexpected and of another shape than its
    /// structure implies.
    private static func componentReports(_ tensors: [TensorDescriptor], _ seen: Observed) -> [ComponentReport] {
        func report(_ c: Component, _ expected: [(String, Shape)], summary: String) -> ComponentReport {
            let prefix = c.canonicalPrefix
            let actual = tensors.filter { $0.name.hasPrefix(prefix) }
            var expectedShapes: [String: Shape] = [:]
            for (n, s) in expected { expectedShapes[n] = s }
            let missing = expected.map(\.0).filter { seen.shapes[$0] == nil }
            let optional: Set<String> = [prefix + "text_model.embeddings.position_ids"]
            let unexpected = actual.map(\.name).filter { expectedShapes[$0] == nil && !optional.contains($0) }
            let mismatches = actual.compactMap { d -> ShapeMismatch? in
                guard let e = expectedShapes[d.name], e != d.shape else { return nil }
                return ShapeMismatch(tensor: d.name, expected: e, actual: d.shape)
            }
            return ComponentReport(
                component: c, tensorCount: actual.count, missing: missing, unexpected: unexpected, shapeMismatches: mismatches, summary: summary)
        }
        var reports: [ComponentReport] = []
        if let u = seen.unet {
            reports.append(
                report(
                    .unet, u.expectedTensors,
                    summary:
                        "\(u.blockOutChannels.count) levels \(u.blockOutChannels), in \(u.inChannels), context \(u.contextDim.map(String.init) ?? "-")"
                ))
        }
        if let v = seen.vae {
            reports.append(
                report(
                    .vae, v.expectedTensors,
                    summary: "widths \(v.blockOutChannels), latent \(v.latentChannels)" + (v.hasEncoder ? "" : ", decoder only")))
        }
        for t in seen.texts { reports.append(report(t.component, t.expectedTensors, summary: "width \(t.hidden), \(t.layers) layers")) }
        return reports
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
                "shape_mismatches": .array(
                    c.shapeMismatches.map {
                        [
                            "tensor": .string($0.tensor), "expected": .array($0.expected.dimensions.map { JSONValue($0) }),
                            "actual": .array($0.actual.dimensions.map { JSONValue($0) }),
                        ]
                    }),
            ]
        }
        o["components"] = .object(comps)
        return .object(o)
    }
}
