import CheckpointFormats
import MappedIO
import ModelCatalog
import StrictJSON
import TensorCore

/// An adapter file with the scale to apply it at.
public struct ScaledAdapter: Sendable {
    public var adapter: Adapter
    public var scale: Double
    /// The file's name as the user gave it.
    public var name: String
    /// SHA-256 of the file, `nil` for inputs that are not one file.
    public var sha256: String?

    public init(adapter: Adapter, scale: Double = 1, name: String, sha256: String? = nil) {
        self.adapter = adapter
        self.scale = scale
        self.name = name
        self.sha256 = sha256
    }

    /// Opens `argument`, spelled `FILE` or `FILE:SCALE` as `merge` and `--lora` take it.
    ///
    /// - Throws: `AdapterError` (`.badScale`, or what ``Adapter/init(store:)`` throws) or the
    ///   reader's `FormatError` for a missing or unreadable file.
    public static func open(_ argument: String, defaultScale: Double = 1, options: ModelInput.Options = ModelInput.Options()) throws -> ScaledAdapter
    {
        let (path, scale) = try parse(argument, defaultScale: defaultScale)
        let store = try ModelInput.open(path, options: options)
        let adapter = try Adapter(store: store)
        return ScaledAdapter(adapter: adapter, scale: scale, name: path, sha256: try? fileSHA256(path))
    }

    /// Splits `FILE[:SCALE]` without opening anything (a command line checks its arguments
    /// with it). A tail after the last colon that is not a number is part of the file name.
    ///
    /// - Throws: `AdapterError` `.badScale` for a scale that is not a finite number (`nan`, `inf`).
    public static func parse(_ argument: String, defaultScale: Double = 1) throws(AdapterError) -> (path: String, scale: Double) {
        guard let colon = argument.lastIndex(of: ":"), colon != argument.startIndex else { return (argument, defaultScale) }
        let tail = argument[argument.index(after: colon)...]
        guard let s = Double(tail) else { return (argument, defaultScale) }
        guard s.isFinite else { throw AdapterError(.badScale, "scale '\(tail)' of '\(argument)' is not a finite number") }
        return (String(argument[..<colon]), s)
    }

    /// The SHA-256 of a regular file, read through its mapping.
    public static func fileSHA256(_ path: String) throws -> String? {
        guard let kind = try? ModelInput.detect(path), kind != .diffusers, kind != .folder, kind != .shardedSafetensors else { return nil }
        let file = try MappedFile(path: path)
        let sha = SHA256Digest()
        file.bytes.withUnsafeBytes { sha.update($0) }
        return sha.finalizeHex()
    }
}

/// Which base tensors a list of adapters changes and how, checked against the base before
/// anything is computed or written: family, names, shapes, duplicates.
public struct AdapterPlan: Sendable {
    /// One module's change to one base tensor.
    public struct Change: Sendable {
        /// Index into ``adapters``.
        public var adapter: Int
        public var module: AdapterModule
        public var shape: DeltaShape
        /// `diff_b` applied to the bias instead of the weight.
        public var isBias: Bool
    }

    public let base: any TensorStore
    public let adapters: [ScaledAdapter]
    /// Canonical base tensor → its changes, in adapter order.
    public let changes: [String: [Change]]
    /// Each adapter's kinds (`LoRA`, `LoHa+Tucker`, …) joined with `+`.
    public let kinds: [String]

    /// Plans applying `adapters` to `base` (a store under canonical names).
    ///
    /// - Parameter baseFamily: the base's detected family; an adapter recognised for another
    ///   family is refused before anything else is looked at.
    /// - Throws: `.wrongFamily`, `.unmatchedModule`, `.shapeMismatch`, `.duplicateModule`,
    ///   `.malformed` (an embedding given as a network).
    public init(base: any TensorStore, baseFamily: ArchitectureCatalog.Family?, adapters: [ScaledAdapter]) throws(AdapterError) {
        self.base = base
        self.adapters = adapters
        let index = AdapterNameIndex(canonical: base.tensors, family: baseFamily)
        var changes: [String: [Change]] = [:]
        var kinds: [String] = []
        for (i, a) in adapters.enumerated() {
            guard a.adapter.embedding == nil else {
                throw AdapterError(.malformed, "'\(a.name)' is a textual-inversion embedding, not a LoRA: it changes no weight (use --embedding)")
            }
            let report = AdapterReport(a.adapter)
            kinds.append(report.kinds.map(\.kind).joined(separator: "+"))
            if let f = report.family, let b = baseFamily, f.id != b.id {
                throw AdapterError(.wrongFamily, "'\(a.name)' is a \(f.name) adapter (\(report.familyEvidence.first ?? "")), the base is \(b.name)")
            }
            if let first = a.adapter.unrecognized.first {
                let n = a.adapter.unrecognized.count
                throw AdapterError(
                    .unmatchedModule,
                    "'\(a.name)': \(n) tensor\(n == 1 ? "" : "s") belong to no module (e.g. '\(first.name)'); merging would silently leave \(n == 1 ? "it" : "them") out",
                    tensor: first.name)
            }
            var unmatched: [String] = []
            var seen: [String: AdapterModule] = [:]
            for m in a.adapter.modules {
                guard let target = index.target(of: m), let baseShape = index.shapes[target] else { unmatched.append(m.key); continue }
                if let other = seen[target] {
                    throw AdapterError(
                        .duplicateModule,
                        "'\(a.name)': modules '\(other.key)' (\(other.dialect.rawValue)) and '\(m.key)' (\(m.dialect.rawValue)) both modify \(target)",
                        tensor: m.key)
                }
                seen[target] = m
                guard let d = base.descriptor(named: target), d.dtype.isConvertibleFloat else {
                    throw AdapterError(
                        .malformed, "base tensor \(target) is not a floating-point tensor; adapters merge into f16/bf16/f32 weights", tensor: target)
                }
                let shape = try DeltaShape.implied(by: m)
                guard shape.matches(baseShape) else {
                    throw AdapterError(
                        .shapeMismatch, "'\(a.name)': module '\(m.key)' makes a \(shape.out)×\(shape.inner) change, \(target) is \(baseShape)",
                        tensor: m.key)
                }
                if m.hasDoRA, let s = m.shapes[.doraScale] {
                    let kernel = baseShape.rank == 4 ? baseShape[2] * baseShape[3] : 1
                    guard s.count == shape.out || s.count == shape.inner / max(kernel, 1) else {
                        throw AdapterError(
                            .shapeMismatch,
                            "'\(a.name)': dora_scale \(s) of '\(m.key)' fits neither the outputs nor the inputs of \(target) \(baseShape)",
                            tensor: m.key)
                    }
                }
                changes[target, default: []].append(Change(adapter: i, module: m, shape: shape, isBias: false))
                if let bias = m.shapes[.diffBias] {
                    let biasName = String(target.dropLast(".weight".count)) + ".bias"
                    guard let b = base.descriptor(named: biasName), b.shape.count == bias.count, b.dtype.isConvertibleFloat else {
                        throw AdapterError(
                            .shapeMismatch, "'\(a.name)': diff_b \(bias) of '\(m.key)' has no matching bias \(biasName) in the base", tensor: m.key)
                    }
                    changes[biasName, default: []].append(Change(adapter: i, module: m, shape: DeltaShape(out: bias.count, inner: 1), isBias: true))
                }
            }
            if !unmatched.isEmpty {
                let total = a.adapter.modules.count
                let hint = report.family.map { " (it is a \($0.name) adapter)" } ?? ""
                throw AdapterError(
                    .unmatchedModule,
                    "'\(a.name)': \(unmatched.count) of \(total) modules match no tensor of the base\(hint), e.g. '\(unmatched[0])'",
                    tensor: unmatched[0])
            }
        }
        self.changes = changes
        self.kinds = kinds
    }

    /// The merged f32 values of `name`, or `nil` when no adapter changes it.
    public func mergedValues(of name: String) throws -> [Float]? {
        guard let list = changes[name] else { return nil }
        var w = try base.tensor(named: name).floats()
        let baseShape = base.descriptor(named: name)?.shape ?? Shape([w.count])
        for c in list {
            let a = adapters[c.adapter]
            let s = Float(a.scale)
            if c.isBias {
                let d = try DeltaWeight.factor(c.module, .diffBias, a.adapter.store)
                for i in w.indices { w[i] += s * d[i] }
                continue
            }
            let delta = try DeltaWeight.compute(c.module, store: a.adapter.store, shape: c.shape)
            guard delta.count == w.count else {
                throw AdapterError(.shapeMismatch, "module '\(c.module.key)' changed while merging", tensor: c.module.key)
            }
            if c.module.hasDoRA {
                let magnitude = try DeltaWeight.factor(c.module, .doraScale, a.adapter.store)
                let kernel = baseShape.rank == 4 ? baseShape[2] * baseShape[3] : 1
                try DeltaWeight.decompose(
                    weight: &w, delta: delta, magnitude: magnitude, magnitudeShape: c.module.shapes[.doraScale]!, shape: c.shape, kernel: kernel,
                    scale: s)
            } else {
                for i in w.indices { w[i] += s * delta[i] }
            }
        }
        return w
    }

    /// Each adapter's file, hash, scale and what it changed: the provenance a merged file records.
    public var provenance: JSONValue {
        .array(
            adapters.enumerated().map { i, a in
                let changed = changes.values.reduce(0) { $0 + $1.filter { $0.adapter == i && !$0.isBias }.count }
                return [
                    "file": .string(a.name),
                    "sha256": a.sha256.map { .string($0) } ?? .null,
                    "scale": JSONValue(a.scale),
                    "kind": .string(i < kinds.count ? kinds[i] : ""),
                    "modules": JSONValue(changed),
                ]
            })
    }
}

/// A base store with adapters merged in, one tensor at a time: untouched tensors are the
/// base's own views, changed ones are computed in f32 when asked for (memory bounded by one
/// tensor and its factors). Writers consume it like any store (`OutputTensor.plan(from:)`).
public final class MergedStore: TensorStore, @unchecked Sendable {
    public let plan: AdapterPlan
    public let tensors: [TensorDescriptor]
    public let metadata: [String: String]
    public var formatName: String { plan.base.formatName }
    private let byName: [String: Int]

    /// - Parameter mergedDType: the dtype of changed tensors; `nil` keeps the base's (the
    ///   merged f32 values are rounded to it), `.f32` keeps the merge's precision for a later
    ///   quantisation.
    public init(plan: AdapterPlan, mergedDType: DType? = nil) {
        self.plan = plan
        var list = plan.base.tensors
        for i in list.indices where plan.changes[list[i].name] != nil {
            let dtype = mergedDType ?? list[i].dtype
            list[i].dtype = dtype
            list[i].byteCount = (try? list[i].shape.byteCount(of: dtype)) ?? 0
        }
        tensors = list
        var m = plan.base.metadata
        m["weightpack.adapters"] = plan.provenance.serialized()
        metadata = m
        var index: [String: Int] = [:]
        for (i, d) in list.enumerated() where index[d.name] == nil { index[d.name] = i }
        byName = index
    }

    /// Names of the tensors the adapters change.
    public var changedTensors: [String] { tensors.map(\.name).filter { plan.changes[$0] != nil } }

    public func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    /// The base's source name (a merged `.wpk` records the base's source names, so `export
    /// --layout source` gives its layout back).
    public func sourceName(of name: String) -> String? { byName[name] == nil ? nil : plan.base.sourceName(of: name) }

    public func tensor(named name: String) throws -> TensorView {
        guard let i = byName[name] else { throw AdapterError(.malformed, "no tensor '\(name)'", tensor: name) }
        guard let values = try plan.mergedValues(of: name) else { return try plan.base.tensor(named: name) }
        let d = tensors[i]
        let buffer = OwnedBuffer(byteCount: d.byteCount)
        try values.withUnsafeBytes { raw in
            try ElementConversion.convert(raw, from: .f32, into: buffer.mutableBytes, to: d.dtype, count: values.count)
        }
        return TensorView(descriptor: d, bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
    }
}

/// What the engine needs to apply an adapter at run time, per layer: low-rank factors whose
/// product is added to the layer's output (LoRA, LoCon, Tucker folded into down), or a dense
/// change for kinds that have no low-rank form (LoHa, LoKr, full diffs, DoRA).
public struct RuntimeLayerAdapter: Sendable {
    public enum Factors: Sendable {
        /// `down` is `[rank, in]` or `[rank, in, kh, kw]` (run as the layer's own convolution with
        /// its stride and padding), `up` is `[out, rank]` (a 1×1 convolution for convolutions).
        case lowRank(down: [Float], downShape: Shape, up: [Float], upShape: Shape)
        /// A change of the weight's own shape (`out × inner` values).
        case dense([Float])
    }
    /// The canonical weight (`unet.….to_q.weight`) or bias the change applies to.
    public var target: String
    public var factors: Factors
    /// The factor the product is multiplied by: the user's scale times α/dim (1 for dense
    /// changes, which include both already).
    public var scale: Float
}

extension AdapterPlan {
    /// The run-time form of every change, in target order.
    public func runtimeLayers() throws -> [RuntimeLayerAdapter] {
        var out: [RuntimeLayerAdapter] = []
        for target in changes.keys.sorted() {
            for c in changes[target]! {
                let a = adapters[c.adapter]
                let m = c.module
                if m.algorithm == .lora, !m.hasDoRA, !c.isBias {
                    let up = try DeltaWeight.factor(m, .up, a.adapter.store)
                    let upShape = m.shapes[.up]!
                    var down = try DeltaWeight.factor(m, .down, a.adapter.store)
                    var downShape = m.shapes[.down]!
                    if m.tensors[.mid] != nil {
                        // Tucker: the core folded into the down factor, which becomes the k×k convolution.
                        var plain = m
                        plain.alpha = nil
                        let mid = m.shapes[.mid]!
                        let folded = try DeltaWeight.compute(
                            plain, store: IdentityUpStore(base: a.adapter.store, upName: m.tensors[.up]!, rank: upShape[1]),
                            shape: DeltaShape(out: upShape[1], inner: c.shape.inner))
                        down = folded
                        downShape = Shape([upShape[1], m.shapes[.down]![1], mid[2], mid[3]])
                    }
                    out.append(
                        RuntimeLayerAdapter(
                            target: target, factors: .lowRank(down: down, downShape: downShape, up: up, upShape: Shape([upShape[0], upShape[1]])),
                            scale: Float(a.scale * m.alphaFactor)))
                    continue
                }
                // Dense: the merged change relative to the base, for this adapter alone.
                let single = try AdapterPlan(
                    uncheckedBase: base, adapters: [a], changes: [target: [Change(adapter: 0, module: m, shape: c.shape, isBias: c.isBias)]])
                let merged = try single.mergedValues(of: target)!
                let w = try base.tensor(named: target).floats()
                out.append(RuntimeLayerAdapter(target: target, factors: .dense(zip(merged, w).map { $0 - $1 }), scale: 1))
            }
        }
        return out
    }

    init(uncheckedBase base: any TensorStore, adapters: [ScaledAdapter], changes: [String: [Change]]) throws {
        self.base = base
        self.adapters = adapters
        self.changes = changes
        kinds = adapters.map { _ in "" }
    }
}

/// An adapter store whose `lora_up` of one module reads as the identity, so that
/// ``DeltaWeight/compute`` gives the Tucker-folded down factor.
private final class IdentityUpStore: TensorStore, @unchecked Sendable {
    let base: any TensorStore
    let upName: String
    let rank: Int
    init(base: any TensorStore, upName: String, rank: Int) {
        self.base = base
        self.upName = upName
        self.rank = rank
    }
    var formatName: String { base.formatName }
    var tensors: [TensorDescriptor] { base.tensors }
    var metadata: [String: String] { base.metadata }
    func tensor(named name: String) throws -> TensorView {
        guard name == upName else { return try base.tensor(named: name) }
        var eye = [Float](repeating: 0, count: rank * rank)
        for i in 0..<rank { eye[i * rank + i] = 1 }
        let d = TensorDescriptor(name: name, dtype: .f32, shape: Shape([rank, rank]), byteCount: rank * rank * 4)
        return eye.withUnsafeBytes { TensorView(descriptor: d, bytes: TensorBytes(copying: $0)) }
    }
}
