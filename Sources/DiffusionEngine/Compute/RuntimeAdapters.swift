import TensorCore

/// Adapters applied while the networks run, never merged into the weights: per weight, a
/// low-rank product (LoRA, LoCon, Tucker folded into its down factor) or a dense change
/// (LoHa, LoKr, full diffs, DoRA) whose effect ``Workspace/linear(_:_:bias:)`` and
/// ``Workspace/conv2d(_:_:stride:padding:)`` add to the layer's output:
///
/// - linear, low rank: `y += scale · (x · downᵀ) · upᵀ`;
/// - convolution, low rank: `down` runs as a convolution with the layer's own kernel, stride
///   and padding, then `up` as a 1×1 convolution, `y += scale · up ∗ (down ∗ x)`;
/// - dense: `y += scale · ΔW x` (ΔW run as the layer itself, stride and padding included);
/// - a bias change: `y += scale · Δb` per output.
///
/// Memory is the factors (and the dense changes) only: the model's own weights are read as
/// they are stored. The table is immutable once built and shared by every worker.
public final class RuntimeAdapterTable: Sendable {
    /// One change to one weight (or bias).
    public struct Entry: Sendable {
        public enum Change: Sendable {
            /// `down` `[rank, in]` or `[rank, in, kh, kw]`, `up` `[out, rank]` (row-major).
            case lowRank(down: [Float], downShape: [Int], up: [Float], upShape: [Int])
            /// A change of the target's own shape and element count.
            case dense([Float])
        }
        public var change: Change
        /// What the product is multiplied by (the user's scale · α/rank for low-rank factors).
        public var scale: Float

        public init(change: Change, scale: Float) {
            self.change = change
            self.scale = scale
        }
    }

    /// Full store name (`unet.…to_q.weight`, `text_encoder.text_model.…q_proj.bias`) → its changes, in order.
    public let entries: [String: [Entry]]

    public init(_ entries: [String: [Entry]]) { self.entries = entries }

    public var isEmpty: Bool { entries.isEmpty }

    func changes(of fullName: String) -> [Entry]? { entries[fullName] }

    /// Whether the engine applies a change to `name` (a tensor of `shape` in the store) at run
    /// time: weights (and biases) of layers read through ``Workspace/linear(_:_:bias:)`` or
    /// ``Workspace/conv2d(_:_:stride:padding:)``. Embedding tables, the SDXL text projection and
    /// normalisation weights are read directly and are not: a change to them has to be merged
    /// (`weightpack merge`).
    ///
    /// - Parameters:
    ///   - weightShape: for a bias, the shape of its layer's weight (`nil` when there is none).
    public static func reason(refusing name: String, shape: [Int], weightShape: [Int]?) -> String? {
        let directlyRead = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "text_projection.weight"]
        if directlyRead.contains(where: { name == $0 || name.hasSuffix("." + $0) }) {
            return "\(name) is an embedding table or projection the engine reads directly; merge this adapter instead (weightpack merge)"
        }
        if name.hasSuffix(".weight") {
            guard shape.count == 2 || shape.count == 4 else {
                return
                    "\(name) \(shape) is not the weight of a linear or convolution layer (a normalisation); merge this adapter instead (weightpack merge)"
            }
            return nil
        }
        if name.hasSuffix(".bias") {
            guard let w = weightShape, w.count == 2 || w.count == 4, shape == [w[0]] else {
                return "\(name) is not the bias of a linear or convolution layer (a normalisation); merge this adapter instead (weightpack merge)"
            }
            return nil
        }
        return "\(name) is neither a weight nor a bias the engine reads"
    }

    /// Checks every entry's factors against the weight it changes, before anything runs.
    ///
    /// - Parameter shape: the stored shape of a full name, `nil` when the store lacks it.
    /// - Throws: ``EngineError/Code/shapeMismatch`` for factors that do not fit,
    ///   ``EngineError/Code/invalidInput`` for a target the engine does not apply changes to.
    public func validate(shape: (String) -> [Int]?) throws(EngineError) {
        for (name, list) in entries.sorted(by: { $0.key < $1.key }) {
            guard let s = shape(name) else {
                throw EngineError(.missingTensor, "a run-time adapter changes a tensor the model does not have", tensorName: name)
            }
            let weightShape = name.hasSuffix(".bias") ? shape(String(name.dropLast(".bias".count)) + ".weight") : nil
            if let why = Self.reason(refusing: name, shape: s, weightShape: weightShape) {
                throw EngineError(.invalidInput, "cannot apply an adapter at run time to " + why, tensorName: name)
            }
            let count = s.reduce(1, *)
            for e in list {
                guard e.scale.isFinite else { throw EngineError(.invalidInput, "adapter scale \(e.scale) is not finite", tensorName: name) }
                switch e.change {
                case .dense(let d):
                    guard d.count == count else {
                        throw EngineError(.shapeMismatch, "a dense change of \(d.count) values does not fit \(s)", tensorName: name)
                    }
                case .lowRank(let down, let ds, let up, let us):
                    guard name.hasSuffix(".weight"), us.count == 2, ds.count == 2 || ds.count == 4,
                        ds.allSatisfy({ $0 > 0 }), us.allSatisfy({ $0 > 0 }),
                        down.count == ds.reduce(1, *), up.count == us.reduce(1, *), us[1] == ds[0], us[0] == s[0], ds[1] == s[1]
                    else {
                        throw EngineError(.shapeMismatch, "low-rank factors down \(ds), up \(us) do not fit \(s)", tensorName: name)
                    }
                    let kernel = ds.count == 4 ? [ds[2], ds[3]] : [1, 1]
                    if s.count == 4, kernel != [s[2], s[3]] {
                        throw EngineError(.shapeMismatch, "down factor \(ds) has another kernel than the convolution \(s)", tensorName: name)
                    }
                    if s.count == 2, kernel != [1, 1] {
                        throw EngineError(.shapeMismatch, "down factor \(ds) is a convolution, the layer \(s) is linear", tensorName: name)
                    }
                }
            }
        }
    }
}

extension Workspace {
    /// Adds every run-time change of the linear layer `name` to `y[rows, out]` computed from `x[rows, in]`.
    func applyAdapters(linear name: String, x: FloatTensor, y: FloatTensor, rows: Int, inFeatures: Int, outFeatures: Int, bias useBias: Bool) throws {
        guard let adapters else { return }
        let full = weights.prefix + name
        if let list = adapters.changes(of: full + ".weight") {
            for e in list {
                switch e.change {
                case .lowRank(let down, let ds, let up, _):
                    let rank = ds[0]
                    let t = pool.take([rows, rank])
                    down.withUnsafeBufferPointer { d in
                        GEMM.multiply(
                            m: rows, n: rank, k: inFeatures, a: x.base, lda: inFeatures,
                            b: d.baseAddress!, ldb: inFeatures, transposeB: true, c: t.base, ldc: rank)
                    }
                    up.withUnsafeBufferPointer { u in
                        GEMM.multiply(
                            m: rows, n: outFeatures, k: rank, a: t.base, lda: rank,
                            b: u.baseAddress!, ldb: rank, transposeB: true, c: y.base, ldc: outFeatures,
                            alpha: e.scale, beta: 1)
                    }
                    pool.recycle(t)
                case .dense(let delta):
                    delta.withUnsafeBufferPointer { d in
                        GEMM.multiply(
                            m: rows, n: outFeatures, k: inFeatures, a: x.base, lda: inFeatures,
                            b: d.baseAddress!, ldb: inFeatures, transposeB: true, c: y.base, ldc: outFeatures,
                            alpha: e.scale, beta: 1)
                    }
                }
            }
        }
        if let list = adapters.changes(of: full + ".bias") {
            guard useBias else {
                throw EngineError(.invalidInput, "an adapter changes a bias this layer does not use", tensorName: full + ".bias")
            }
            for e in list {
                guard case .dense(let delta) = e.change, delta.count == outFeatures else { continue }
                let scaled = delta.map { $0 * e.scale }
                scaled.withUnsafeBufferPointer { Kernels.addRowBias(y.base, rows: rows, columns: outFeatures, bias: $0.baseAddress!) }
            }
        }
    }

    /// Adds every run-time change of the convolution `name` (geometry `g`) to `y` computed from `x`.
    func applyAdapters(convolution name: String, x: FloatTensor, y: FloatTensor, geometry g: Convolution.Geometry) throws {
        guard let adapters else { return }
        let full = weights.prefix + name
        let plane = g.outHeight * g.outWidth
        if let list = adapters.changes(of: full + ".weight") {
            for e in list {
                switch e.change {
                case .lowRank(let down, let ds, let up, _):
                    // down: the layer's own convolution with `rank` outputs; up: a 1×1 product.
                    var dg = g
                    dg.outChannels = ds[0]
                    let t = pool.take([ds[0], g.outHeight, g.outWidth])
                    let columns = dg.isPointwise ? nil : columnScratch(Convolution.scratchCount(dg))
                    down.withUnsafeBufferPointer { d in
                        Convolution.forward(x.base, geometry: dg, weight: d.baseAddress!, bias: nil, output: t.base, columns: columns)
                    }
                    up.withUnsafeBufferPointer { u in
                        GEMM.multiply(
                            m: g.outChannels, n: plane, k: ds[0], a: u.baseAddress!, lda: ds[0],
                            b: t.base, ldb: plane, c: y.base, ldc: plane, alpha: e.scale, beta: 1)
                    }
                    pool.recycle(t)
                case .dense(let delta):
                    let t = pool.take([g.outChannels, g.outHeight, g.outWidth])
                    let columns = g.isPointwise ? nil : columnScratch(Convolution.scratchCount(g))
                    delta.withUnsafeBufferPointer { d in
                        Convolution.forward(x.base, geometry: g, weight: d.baseAddress!, bias: nil, output: t.base, columns: columns)
                    }
                    if e.scale != 1 { Kernels.scale(t.base, count: t.count, by: e.scale) }
                    Kernels.add(t.base, into: y.base, count: t.count)
                    pool.recycle(t)
                }
            }
        }
        if let list = adapters.changes(of: full + ".bias") {
            for e in list {
                guard case .dense(let delta) = e.change, delta.count == g.outChannels else { continue }
                let scaled = delta.map { $0 * e.scale }
                scaled.withUnsafeBufferPointer { Kernels.addChannelBias(y.base, channels: g.outChannels, plane: plane, bias: $0.baseAddress!) }
            }
        }
    }
}
