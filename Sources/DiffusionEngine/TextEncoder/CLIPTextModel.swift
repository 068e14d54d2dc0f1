import TensorCore

/// CLIP's text transformer as Stable Diffusion uses it: token and position embeddings, pre-norm
/// transformer layers with causal self-attention, a final layer norm.
/// Matches transformers' CLIPTextModel, https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py
///
/// Weights use transformers' names (`embeddings.token_embedding.weight`,
/// `encoder.layers.0.self_attn.q_proj.weight`, `final_layer_norm.weight`) under a prefix.
/// Not thread-safe: one model serves one thread at a time.
public final class CLIPTextModel {
    public let configuration: CLIPTextConfiguration
    public let weights: WeightProvider

    /// Adapters applied at run time to this network's layers (LoRA factors, dense changes);
    /// `nil` runs the weights as stored. Set it before running, checked with
    /// ``RuntimeAdapterTable/validate(shape:)``.
    public var runtimeAdapters: RuntimeAdapterTable?

    /// Records the per-input-channel mean squares of every linear and convolution layer's
    /// inputs while set (calibration, see ``ActivationRecorder``); `nil` records nothing.
    public var activationRecorder: ActivationRecorder?

    /// Token-embedding rows added at run time (a textual-inversion embedding's vectors), by
    /// token id; the stored table is never rewritten. See ``addTokenEmbeddings(_:firstID:)``.
    public private(set) var addedTokenEmbeddings: [Int: [Float]] = [:]

    /// Gives ids `firstID`, `firstID + 1`, … the rows of `rows` (`n × hiddenSize` values), as
    /// transformers' `resize_token_embeddings` followed by diffusers' `load_textual_inversion`
    /// setting the new rows does.
    ///
    /// - Throws: ``EngineError/Code/shapeMismatch`` when `rows` is not whole rows of the
    ///   model's width; ``EngineError/Code/invalidInput`` for a negative id, an id already added
    ///   or non-finite values.
    public func addTokenEmbeddings(_ rows: [Float], firstID: Int) throws(EngineError) {
        let d = configuration.hiddenSize
        guard !rows.isEmpty, rows.count % d == 0 else {
            throw EngineError(
                .shapeMismatch, "an embedding of \(rows.count) values is not whole vectors of the text encoder's width \(d)",
                tensorName: weights.prefix + Self.anchorName)
        }
        guard rows.allSatisfy(\.isFinite) else { throw EngineError(.invalidInput, "embedding vectors hold NaN or infinite values") }
        let n = rows.count / d
        let (last, overflow) = firstID.addingReportingOverflow(n)
        guard firstID >= 0, !overflow, last <= Int(Int32.max) else { throw EngineError(.invalidInput, "token id \(firstID) out of range") }
        for k in 0..<n {
            guard addedTokenEmbeddings[firstID + k] == nil else {
                throw EngineError(.invalidInput, "token id \(firstID + k) already has an added embedding")
            }
        }
        for k in 0..<n { addedTokenEmbeddings[firstID + k] = Array(rows[(k * d)..<((k + 1) * d)]) }
    }

    /// The name every weight name ends with, used to find the prefix.
    static let anchorName = "embeddings.token_embedding.weight"

    /// Creates the model over `store` and checks that every weight is there with its shape.
    ///
    /// - Parameters:
    ///   - prefix: prepended to the transformers names. `nil` finds it from the store: the part
    ///     before `embeddings.token_embedding.weight` (`text_model.` as transformers 4 saved
    ///     the weights, empty as transformers 5 saves them, `cond_stage_model.transformer.text_model.`
    ///     in an SD 1.x single file).
    /// - Throws: ``EngineError`` for an invalid configuration or a missing or mis-shaped weight.
    public init(store: any TensorStore, configuration: CLIPTextConfiguration, prefix: String? = nil) throws(EngineError) {
        try configuration.validate()
        self.configuration = configuration
        let resolved: String
        if let prefix {
            resolved = prefix
        } else if store.descriptor(named: "text_model." + Self.anchorName) != nil {
            resolved = "text_model."
        } else if store.descriptor(named: Self.anchorName) != nil {
            resolved = ""
        } else if let hit = store.tensors.first(where: { $0.name.hasSuffix("." + Self.anchorName) }) {
            resolved = String(hit.name.dropLast(Self.anchorName.count))
        } else {
            throw EngineError(.missingTensor, "no CLIP text encoder weights in the \(store.formatName) store", tensorName: Self.anchorName)
        }
        weights = WeightProvider(store: store, prefix: resolved)
        try checkWeights()
    }

    private func checkWeights() throws(EngineError) {
        let c = configuration
        let d = c.hiddenSize
        var expected: [(String, [Int])] = [
            ("embeddings.token_embedding.weight", [c.vocabularySize, d]),
            ("embeddings.position_embedding.weight", [c.maximumPositions, d]),
            ("final_layer_norm.weight", [d]), ("final_layer_norm.bias", [d]),
        ]
        for i in 0..<c.layerCount {
            let p = "encoder.layers.\(i)."
            for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"] {
                expected.append((p + name + ".weight", [d, d]))
                expected.append((p + name + ".bias", [d]))
            }
            for name in ["layer_norm1", "layer_norm2"] {
                expected.append((p + name + ".weight", [d]))
                expected.append((p + name + ".bias", [d]))
            }
            expected.append((p + "mlp.fc1.weight", [c.intermediateSize, d]))
            expected.append((p + "mlp.fc1.bias", [c.intermediateSize]))
            expected.append((p + "mlp.fc2.weight", [d, c.intermediateSize]))
            expected.append((p + "mlp.fc2.bias", [d]))
        }
        for (name, shape) in expected {
            let found = try weights.shape(name)
            guard found == shape else {
                throw EngineError(
                    .shapeMismatch, "weight has shape \(Shape(found)), the configuration expects \(Shape(shape))", tensorName: weights.prefix + name)
            }
        }
    }

    /// The prompt embeddings Stable Diffusion conditions on: the output of layer
    /// `layerCount - skippedLayers`, then the final layer norm.
    ///
    /// - Parameter tokens: one or more sequences of equal length (77 from ``CLIPTokenizer``).
    /// - Returns: `[batch, tokens, hiddenSize]`.
    /// - Complexity: O(batch · layers · (tokens · hidden² + tokens² · hidden)).
    public func encode(_ tokens: [[Int]]) throws(EngineError) -> FloatTensor {
        try hiddenState(tokens, layers: configuration.layerCount - configuration.skippedLayers, finalLayerNorm: true)
    }

    /// The hidden state after the first `layers` transformer layers, with or without the final
    /// layer norm. `layers == layerCount` with the norm is transformers' `last_hidden_state`;
    /// `layerCount - 1` without it is `hidden_states[-2]`.
    public func hiddenState(_ tokens: [[Int]], layers: Int, finalLayerNorm: Bool) throws(EngineError) -> FloatTensor {
        let c = configuration
        guard let length = tokens.first?.count, length > 0, tokens.allSatisfy({ $0.count == length }) else {
            throw EngineError(.invalidInput, "token sequences must be non-empty and of equal length")
        }
        guard length <= c.maximumPositions else {
            throw EngineError(.invalidInput, "\(length) tokens exceed the \(c.maximumPositions) positions of the text encoder")
        }
        guard (0...c.layerCount).contains(layers) else {
            throw EngineError(.invalidInput, "cannot stop after layer \(layers) of \(c.layerCount)")
        }
        do {
            return try forward(tokens, length: length, layers: layers, finalLayerNorm: finalLayerNorm)
        } catch let error as EngineError {
            throw error
        } catch {
            throw EngineError(.invalidInput, "text encoder failed", underlying: error)
        }
    }

    /// transformers' `pooler_output`: the final hidden state at each sequence's first end token,
    /// except for configurations that still say `eos_token_id: 2` (written before transformers'
    /// PR 24773; SDXL base's published `text_encoder_2/config.json` is one), where transformers
    /// takes the first largest id (`input_ids.argmax(-1)`), which is the end token of a CLIP
    /// tokenizer's output. Without an end token the first position is taken, as `argmax` does.
    /// Matches CLIPTextTransformer.forward, https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py
    ///
    /// - Parameter hidden: the `[batch, tokens, hiddenSize]` result of ``encode(_:)``.
    public func pooledOutput(_ hidden: FloatTensor, tokens: [[Int]]) -> FloatTensor {
        let d = configuration.hiddenSize, endTokenID = configuration.endTokenID
        let out = FloatTensor(shape: [tokens.count, d])
        for (b, sequence) in tokens.enumerated() {
            let position: Int
            if endTokenID == 2 {
                let largest = sequence.max() ?? 0
                position = sequence.firstIndex(of: largest) ?? 0
            } else {
                position = sequence.firstIndex(of: endTokenID) ?? 0
            }
            (out.base + b * d).update(from: hidden.base + (b * sequence.count + position) * d, count: d)
        }
        return out
    }

    private func forward(_ tokens: [[Int]], length: Int, layers: Int, finalLayerNorm: Bool) throws -> FloatTensor {
        let c = configuration
        let d = c.hiddenSize, batch = tokens.count
        let ws = Workspace(weights: weights, adapters: runtimeAdapters, recorder: activationRecorder)
        let pool = ws.pool

        // Embeddings: the token rows (converted row by row) plus the positions 0..<length.
        let x = pool.take([batch * length, d])
        let ids = tokens.flatMap { $0 }
        if addedTokenEmbeddings.isEmpty {
            try weights.gatherRows("embeddings.token_embedding.weight", indices: ids, into: x.base)
        } else {
            // Added tokens (textual inversion) read their rows from the run-time table; row 0
            // stands in for them in the stored table and is overwritten.
            try weights.gatherRows("embeddings.token_embedding.weight", indices: ids.map { addedTokenEmbeddings[$0] == nil ? $0 : 0 }, into: x.base)
            for (i, id) in ids.enumerated() {
                if let row = addedTokenEmbeddings[id] { (x.base + i * d).update(from: row, count: d) }
            }
        }
        try weights.withFloats("embeddings.position_embedding.weight") { positions in
            for b in 0..<batch { Kernels.add(positions, into: x.base + b * length * d, count: length * d) }
        }

        let attended = pool.take([batch * length, d])
        for i in 0..<layers {
            let p = "encoder.layers.\(i)."
            // Self-attention block.
            let h = try ws.layerNorm(x, p + "layer_norm1", epsilon: c.layerNormEpsilon)
            let q = try ws.linear(h, p + "self_attn.q_proj")
            let k = try ws.linear(h, p + "self_attn.k_proj")
            let v = try ws.linear(h, p + "self_attn.v_proj")
            pool.recycle(h)
            for b in 0..<batch {
                let offset = b * length * d
                Attention.forward(
                    q: q.base + offset, qStride: d, k: k.base + offset, kStride: d, v: v.base + offset, vStride: d,
                    out: attended.base + offset, outStride: d, queries: length, keys: length,
                    heads: c.headCount, headDimension: d / c.headCount,
                    scale: 1 / Float(d / c.headCount).squareRoot(), causal: true,
                    chunk: length,
                    scores: scoreScratch(
                        Attention.scratchCount(queries: length, keys: length, heads: c.headCount, headDimension: d / c.headCount, chunk: length)))
            }
            pool.recycle(q); pool.recycle(k); pool.recycle(v)
            let o = try ws.linear(attended, p + "self_attn.out_proj")
            Kernels.add(o.base, into: x.base, count: x.count)
            pool.recycle(o)
            // Feed-forward block.
            let h2 = try ws.layerNorm(x, p + "layer_norm2", epsilon: c.layerNormEpsilon)
            let f = try ws.linear(h2, p + "mlp.fc1")
            pool.recycle(h2)
            Kernels.apply(c.activation == .gelu ? .gelu : .quickGELU, f.base, count: f.count)
            let g = try ws.linear(f, p + "mlp.fc2")
            pool.recycle(f)
            Kernels.add(g.base, into: x.base, count: x.count)
            pool.recycle(g)
        }
        let result: FloatTensor
        if finalLayerNorm {
            let normed = try ws.layerNorm(x, "final_layer_norm", epsilon: c.layerNormEpsilon)
            result = normed.copy()
        } else {
            result = x.copy()
        }
        result.reshape([batch, length, d])
        return result
    }

    private var scores: FloatTensor?
    private func scoreScratch(_ count: Int) -> UnsafeMutablePointer<Float> {
        if scores == nil || scores!.capacity < count { scores = FloatTensor(shape: [count]) }
        return scores!.base
    }
}
