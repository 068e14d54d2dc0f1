import TensorCore

/// Stable Diffusion's noise-prediction network: a UNet of residual blocks with a timestep
/// embedding and spatial transformers that cross-attend to the text embeddings.
/// Matches diffusers' UNet2DConditionModel, https://github.com/huggingface/diffusers/blob/main/src/diffusers/models/unets/unet_2d_condition.py
///
/// Weights use diffusers' names (`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight`,
/// `time_embedding.linear_1.weight`, `add_embedding.linear_1.weight`) under a prefix (`unet.` for
/// a canonical store, empty for a diffusers `unet/` file). Activations are `[channels, h, w]` per
/// batch element. Not thread-safe: one model serves one thread at a time.
public final class UNet2DConditionModel {
    public let configuration: UNetConfiguration
    public let weights: WeightProvider

    /// Adapters applied at run time to this network's layers (LoRA factors, dense changes);
    /// `nil` runs the weights as stored. Set it before running, checked with
    /// ``RuntimeAdapterTable/validate(shape:)``.
    public var runtimeAdapters: RuntimeAdapterTable?

    /// Records the per-input-channel mean squares of every linear and convolution layer's
    /// inputs while set (calibration, see ``ActivationRecorder``); `nil` records nothing.
    public var activationRecorder: ActivationRecorder?

    /// The arithmetic of this network's matrix products: ``ComputePrecision/f32`` (the
    /// default), ``ComputePrecision/bf16`` where ``ComputeBackend/bf16Products``, or
    /// ``ComputePrecision/int8`` where ``ComputeBackend/int8Products`` (a prediction throws
    /// otherwise).
    public var computePrecision: ComputePrecision = .f32

    /// Throws unless `precision` can run on this processor with the kernels in use.
    public static func checkAvailable(_ precision: ComputePrecision) throws(EngineError) {
        guard ComputeBackend.current.supports(precision) else {
            let needs = precision == .bf16 ? "AVX512_BF16" : "AVX512_VNNI"
            throw EngineError(
                .invalidInput,
                "\(precision.rawValue) compute needs a processor with \(needs) and the AVX-512 kernels (\(ComputeBackend.current.description))")
        }
    }

    /// Floats the copies that a batch run on several cores shares may take at once
    /// (``SharedConvertedWeights``): converted F16, BF16, int8 and ggml block weights, and the
    /// Winograd-transformed weights of every precision. 32 Mi floats, 128 MiB: two blocks of
    /// transformed weights (``Workspace/winogradWeightFloats`` each), so one core can start the
    /// next layer's while the other still reads the last. Every SD 1.5 weight (up to 29.5 M
    /// values, the up blocks' first convolutions) fits whole; a copy that finds no room is made
    /// by each core privately. The cores' own scratch no longer holds transformed weights (up
    /// to 64 MiB each); measured, an SD 1.5 step's peak RSS moved by −8 to +125 MB against the
    /// 16 Mi floats this was before, for 2–4 % less time (Docs/performance.md).
    var sharedConversionBudgetFloats = 32 << 20
    /// The shared copies of the last batch run on several cores (for measurements).
    private(set) var lastSharedConversions: SharedConvertedWeights?
    /// Where those copies live, kept from step to step (its pages are mapped once).
    private var conversionArena: FloatTensor?
    /// Each batch element's activation and scratch buffers (and, on several cores, its weight
    /// conversion scratch), kept from step to step so their pages are mapped and zeroed once,
    /// not every step; ``releaseScratch()`` frees them.
    private var elementMemory: [WorkspaceMemory] = []

    /// Frees the buffers kept from step to step (activations, convolution and attention scratch,
    /// converted-weight copies): call it when the denoising loop is done and the memory is
    /// wanted elsewhere (the pipeline does, before the VAE decode). The next prediction
    /// allocates them again.
    public func releaseScratch() {
        elementMemory = []
        conversionArena = nil
        lastSharedConversions = nil
    }

    /// Floats held from step to step by ``releaseScratch()``'s buffers (for measurements).
    var scratchFloatsHeld: Int {
        elementMemory.reduce(0) { $0 + $1.floatsHeld } + (conversionArena?.capacity ?? 0)
    }

    /// SDXL's extra conditioning: the second text encoder's pooled projection and the six
    /// micro-conditioning numbers (original height, width, crop top, left, target height, width).
    public struct AddedConditions {
        /// `[batch, pooledWidth]` (1280 for SDXL).
        public var textEmbeddings: FloatTensor
        /// `[batch, 6]`.
        public var timeIDs: FloatTensor
        public init(textEmbeddings: FloatTensor, timeIDs: FloatTensor) {
            self.textEmbeddings = textEmbeddings
            self.timeIDs = timeIDs
        }
    }

    /// Creates the UNet over `store` and checks the input and output convolutions and the text width.
    ///
    /// - Parameter prefix: prepended to diffusers' names.
    /// - Throws: ``EngineError`` for an invalid configuration or mis-shaped key weights (others are
    ///   checked as they are used).
    public init(store: any TensorStore, configuration: UNetConfiguration, prefix: String = "") throws(EngineError) {
        try configuration.validate()
        self.configuration = configuration
        weights = WeightProvider(store: store, prefix: prefix)
        let c = configuration
        var expected: [(String, [Int])] = [
            ("conv_in.weight", [c.blockOutChannels[0], c.inChannels, 3, 3]),
            ("conv_out.weight", [c.outChannels, c.blockOutChannels[0], 3, 3]),
            ("time_embedding.linear_1.weight", [c.timeEmbeddingDimension, c.blockOutChannels[0]]),
        ]
        if let level = c.downBlockCrossAttention.firstIndex(of: true) {
            expected.append(
                (
                    "down_blocks.\(level).attentions.0.transformer_blocks.0.attn2.to_k.weight",
                    [c.blockOutChannels[level], c.crossAttentionDimension]
                ))
        }
        if let add = c.projectionClassEmbeddingsInputDimension {
            expected.append(("add_embedding.linear_1.weight", [c.timeEmbeddingDimension, add]))
        }
        for (name, shape) in expected {
            let found = try weights.shape(name)
            guard found == shape else {
                throw EngineError(
                    .shapeMismatch, "weight has shape \(Shape(found)), the configuration expects \(Shape(shape))", tensorName: prefix + name)
            }
        }
    }

    /// diffusers' `unet(sample, timestep, encoder_hidden_states, added_cond_kwargs).sample`.
    ///
    /// - Parameters:
    ///   - sample: `[batch, inChannels, h, w]` (or `[inChannels, h, w]` for one).
    ///   - timestep: the same timestep for every batch element (may be fractional, as Euler's are).
    ///   - encoderHiddenStates: `[batch, tokens, crossAttentionDimension]`.
    ///   - added: SDXL's pooled text embeddings and time ids; required when the model has an
    ///     additional embedding.
    /// - Returns: the noise (or v) prediction, shaped like `sample` with `outChannels` channels.
    /// - Complexity: O(batch · (h · w · Σ channels² + (h · w)² · channels)) per pass.
    public func predict(
        _ sample: FloatTensor, timestep: Float, encoderHiddenStates: FloatTensor,
        added: AddedConditions? = nil
    ) throws(EngineError) -> FloatTensor {
        let c = configuration
        let s = sample.shape
        let batched = s.count == 4
        guard (s.count == 3 || s.count == 4), s[s.count - 3] == c.inChannels, s[s.count - 2] > 0, s[s.count - 1] > 0 else {
            throw EngineError(.invalidInput, "sample has shape \(s), expected [batch, \(c.inChannels), h, w]")
        }
        let batch = batched ? s[0] : 1
        let (h, w) = (s[s.count - 2], s[s.count - 1])
        try Self.checkAvailable(computePrecision)
        let e = encoderHiddenStates.shape
        guard e.count == 3 || e.count == 2, e.last == c.crossAttentionDimension, (e.count == 2 ? 1 : e[0]) == batch else {
            throw EngineError(.invalidInput, "encoder hidden states have shape \(e), expected [\(batch), tokens, \(c.crossAttentionDimension)]")
        }
        let tokens = e[e.count - 2]
        if c.additionTimeEmbeddingDimension != nil {
            guard let added, added.textEmbeddings.shape.first == batch, added.timeIDs.shape == [batch, added.timeIDs.count / max(batch, 1)] else {
                throw EngineError(.invalidInput, "this UNet needs pooled text embeddings and time ids for each of the \(batch) samples")
            }
        }
        let output = FloatTensor(shape: batched ? [batch, c.outChannels, h, w] : [c.outChannels, h, w])
        let one = c.outChannels * h * w
        let onCores = batch >= Parallel.workerCount && Parallel.workerCount > 1 && !Parallel.isSerialOnThisThread
        // One set of buffers per element running at once: every element on several cores, one
        // for elements run in turn.
        while elementMemory.count < (onCores ? batch : 1) { elementMemory.append(WorkspaceMemory()) }
        let memories = elementMemory
        // One batch element through the whole network into its slice of `output`.
        func run(_ b: Int, weights: WeightProvider, memory: WorkspaceMemory) throws {
            let ws = Workspace(weights: weights, adapters: runtimeAdapters, recorder: activationRecorder, memory: memory)
            let x = ws.pool.take([c.inChannels, h, w])
            x.base.update(from: sample.base + b * x.count, count: x.count)
            let context = ws.pool.take([tokens, c.crossAttentionDimension])
            context.base.update(from: encoderHiddenStates.base + b * context.count, count: context.count)
            let embedding = try timeEmbedding(timestep, batchIndex: b, added: added, ws)
            let y = try forward(x, embedding: embedding, context: context, ws)
            (output.base + b * one).update(from: y.base, count: one)
            for t in [y, context, embedding] { ws.pool.recycle(t) }
        }
        do {
            try GEMM.withPrecision(computePrecision) {
                if onCores {
                    // As many elements as cores (classifier-free guidance's pair on two cores): each
                    // element runs on its own core, start to end, with single-threaded matrix products
                    // and its own weight scratch, so the cores never wait for each other.
                    let failures = Locked<[(any Error)?]>(Array(repeating: nil, count: batch))
                    let store = weights.store, prefix = weights.prefix, releases = weights.releasesPagesAfterUse
                    // F16, BF16 and int8 weights are converted once for all elements, not per core.
                    if conversionArena?.capacity != sharedConversionBudgetFloats {
                        conversionArena = FloatTensor(shape: [sharedConversionBudgetFloats])
                    }
                    let shared = SharedConvertedWeights(consumers: batch, budgetFloats: sharedConversionBudgetFloats, arena: conversionArena)
                    lastSharedConversions = shared
                    GEMM.withSingleThreadedCalls {
                        Parallel.forEach(batch) { b in
                            Parallel.serially {
                                let provider = WeightProvider(store: store, prefix: prefix)
                                provider.releasesPagesAfterUse = releases
                                provider.sharedConversions = shared
                                provider.useScratch(memories[b].weightScratch)
                                do { try run(b, weights: provider, memory: memories[b]) } catch { failures.withLock { $0[b] = error } }
                            }
                        }
                    }
                    if let error = failures.withLock({ $0.compactMap { $0 }.first }) { throw error }
                } else {
                    for b in 0..<batch { try run(b, weights: weights, memory: memories[0]) }
                }
            }
        } catch let error as EngineError {
            throw error
        } catch {
            throw EngineError(.invalidInput, "UNet failed", underlying: error)
        }
        return output
    }

    // MARK: Embeddings

    /// `silu(time_embedding(sinusoid(t)) [+ add_embedding(...)])`: what every resnet projects.
    private func timeEmbedding(_ t: Float, batchIndex b: Int, added: AddedConditions?, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        let sinusoid = ws.pool.take([1, c.blockOutChannels[0]])
        Kernels.timestepEmbedding(
            t, dimension: c.blockOutChannels[0], flipSinToCos: c.flipSinToCos,
            frequencyShift: c.frequencyShift, into: sinusoid.base)
        let h = try ws.linear(sinusoid, "time_embedding.linear_1")
        ws.pool.recycle(sinusoid)
        Kernels.apply(.silu, h.base, count: h.count)
        let embedding = try ws.linear(h, "time_embedding.linear_2")
        ws.pool.recycle(h)
        if let dimension = c.additionTimeEmbeddingDimension, let added {
            let pooled = added.textEmbeddings.shape.last!, ids = added.timeIDs.shape.last!
            let input = ws.pool.take([1, pooled + ids * dimension])
            input.base.update(from: added.textEmbeddings.base + b * pooled, count: pooled)
            for i in 0..<ids {
                Kernels.timestepEmbedding(
                    added.timeIDs.base[b * ids + i], dimension: dimension, flipSinToCos: c.flipSinToCos,
                    frequencyShift: c.frequencyShift, into: input.base + pooled + i * dimension)
            }
            let a = try ws.linear(input, "add_embedding.linear_1")
            ws.pool.recycle(input)
            Kernels.apply(.silu, a.base, count: a.count)
            let a2 = try ws.linear(a, "add_embedding.linear_2")
            ws.pool.recycle(a)
            Kernels.add(a2.base, into: embedding.base, count: embedding.count)
            ws.pool.recycle(a2)
        }
        Kernels.apply(.silu, embedding.base, count: embedding.count)
        return embedding
    }

    // MARK: Network

    private func forward(_ input: FloatTensor, embedding: FloatTensor, context: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        let levels = c.blockOutChannels.count
        var x = try ws.conv2d(input, "conv_in", padding: .init(1))
        ws.pool.recycle(input)
        // Every down-path output the up path concatenates back, in order.
        var skips: [FloatTensor] = [x.copy()]
        for level in 0..<levels {
            for l in 0..<c.layersPerBlock {
                x = try resnet(x, "down_blocks.\(level).resnets.\(l)", embedding: embedding, ws)
                if c.downBlockCrossAttention[level] {
                    x = try transformer(
                        x, "down_blocks.\(level).attentions.\(l)", heads: c.attentionHeads[level],
                        depth: c.transformerLayersPerBlock[level], context: context, ws)
                }
                skips.append(x.copy())
            }
            if level < levels - 1 {
                let y = try ws.conv2d(x, "down_blocks.\(level).downsamplers.0.conv", stride: 2, padding: .init(1))
                ws.pool.recycle(x)
                x = y
                skips.append(x.copy())
            }
        }
        if c.hasMiddleBlock {
            x = try resnet(x, "mid_block.resnets.0", embedding: embedding, ws)
            x = try transformer(
                x, "mid_block.attentions.0", heads: c.attentionHeads[levels - 1],
                depth: c.transformerLayersPerBlock[levels - 1], context: context, ws)
            x = try resnet(x, "mid_block.resnets.1", embedding: embedding, ws)
        }
        let upHeads = Array(c.attentionHeads.reversed())
        let upDepth = c.upTransformerLayers
        for level in 0..<levels {
            for l in 0...c.layersPerBlock {
                let skip = skips.removeLast()
                guard skip.shape[1] == x.shape[1], skip.shape[2] == x.shape[2] else {
                    throw EngineError(.invalidInput, "UNet skip connection \(skip.shape) does not match \(x.shape)")
                }
                let joined = ws.pool.take([x.shape[0] + skip.shape[0], x.shape[1], x.shape[2]])
                joined.base.update(from: x.base, count: x.count)
                (joined.base + x.count).update(from: skip.base, count: skip.count)
                ws.pool.recycle(x)
                x = try resnet(joined, "up_blocks.\(level).resnets.\(l)", embedding: embedding, ws)
                if c.upBlockCrossAttention[level] {
                    x = try transformer(
                        x, "up_blocks.\(level).attentions.\(l)", heads: upHeads[level],
                        depth: upDepth[level], context: context, ws)
                }
            }
            if level < levels - 1 {
                // Upsample to the size of the next skip (2x unless a down step rounded up).
                let target = skips.last!
                let up = ws.pool.take([x.shape[0], target.shape[1], target.shape[2]])
                Kernels.resizeNearest(
                    x.base, channels: x.shape[0], height: x.shape[1], width: x.shape[2],
                    outHeight: target.shape[1], outWidth: target.shape[2], into: up.base)
                ws.pool.recycle(x)
                x = try ws.conv2d(up, "up_blocks.\(level).upsamplers.0.conv", padding: .init(1))
                ws.pool.recycle(up)
            }
        }
        let n = try ws.groupNorm(x, "conv_norm_out", groups: c.normGroups, epsilon: c.normEpsilon, silu: true)
        ws.pool.recycle(x)
        let y = try ws.conv2d(n, "conv_out", padding: .init(1))
        ws.pool.recycle(n)
        return y
    }

    /// diffusers' `ResnetBlock2D` with the time embedding added after the first convolution; consumes `x`.
    private func resnet(_ x: FloatTensor, _ name: String, embedding: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        let n1 = try ws.groupNorm(x, name + ".norm1", groups: c.normGroups, epsilon: c.normEpsilon, silu: true)
        let h1 = try ws.conv2d(n1, name + ".conv1", padding: .init(1))
        ws.pool.recycle(n1)
        let t = try ws.linear(embedding, name + ".time_emb_proj")
        guard t.count == h1.shape[0] else {
            throw EngineError(
                .shapeMismatch, "time projection gives \(t.count) channels for \(h1.shape[0])",
                tensorName: weights.prefix + name + ".time_emb_proj.weight")
        }
        Kernels.addChannelBias(h1.base, channels: h1.shape[0], plane: h1.shape[1] * h1.shape[2], bias: t.base)
        ws.pool.recycle(t)
        return try ws.residualTail(input: x, hidden: h1, name, groups: c.normGroups, epsilon: c.normEpsilon)
    }

    /// diffusers' `Transformer2DModel`: group norm, `proj_in`, `depth` basic transformer blocks,
    /// `proj_out`, residual; consumes `x`.
    private func transformer(_ x: FloatTensor, _ name: String, heads: Int, depth: Int, context: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        let (ch, h, w) = (x.shape[0], x.shape[1], x.shape[2])
        let n = try ws.groupNorm(x, name + ".norm", groups: c.normGroups, epsilon: 1e-6)
        var tokens: FloatTensor
        let linearProjection = try weights.shape(name + ".proj_in.weight").count == 2
        if linearProjection {
            let t = ws.pool.take([h * w, ch])
            Kernels.transpose(n.base, rows: ch, columns: h * w, into: t.base)
            ws.pool.recycle(n)
            tokens = try ws.linear(t, name + ".proj_in")
            ws.pool.recycle(t)
        } else {
            let p = try ws.conv2d(n, name + ".proj_in", padding: .init(0))
            ws.pool.recycle(n)
            tokens = ws.pool.take([h * w, p.shape[0]])
            Kernels.transpose(p.base, rows: p.shape[0], columns: h * w, into: tokens.base)
            ws.pool.recycle(p)
        }
        for d in 0..<depth {
            tokens = try transformerBlock(tokens, name + ".transformer_blocks.\(d)", heads: heads, context: context, ws)
        }
        let back: FloatTensor
        if linearProjection {
            let o = try ws.linear(tokens, name + ".proj_out")
            ws.pool.recycle(tokens)
            back = ws.pool.take([o.shape[1], h, w])
            Kernels.transpose(o.base, rows: h * w, columns: o.shape[1], into: back.base)
            ws.pool.recycle(o)
        } else {
            let inner = tokens.shape[1]
            let planes = ws.pool.take([inner, h, w])
            Kernels.transpose(tokens.base, rows: h * w, columns: inner, into: planes.base)
            ws.pool.recycle(tokens)
            back = try ws.conv2d(planes, name + ".proj_out", padding: .init(0))
            ws.pool.recycle(planes)
        }
        guard back.count == x.count else {
            throw EngineError(
                .shapeMismatch, "proj_out gives \(back.shape), expected \(x.shape)", tensorName: weights.prefix + name + ".proj_out.weight")
        }
        Kernels.add(back.base, into: x.base, count: x.count)
        ws.pool.recycle(back)
        return x
    }

    /// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward,
    /// each pre-norm with a residual; consumes `x` (`[tokens, inner]`).
    private func transformerBlock(_ x: FloatTensor, _ name: String, heads: Int, context: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        // Each output projection's bias is added in the pass after it (the residual's or GEGLU's).
        // Self-attention.
        let n1 = try ws.layerNorm(x, name + ".norm1", epsilon: 1e-5)
        let (a1, b1) = try attention(n1, name + ".attn1", heads: heads, context: n1, ws)
        ws.pool.recycle(n1)
        try ws.addToResidual(a1, bias: b1, into: x)
        ws.pool.recycle(a1)
        // Cross-attention to the text.
        let n2 = try ws.layerNorm(x, name + ".norm2", epsilon: 1e-5)
        let (a2, b2) = try attention(n2, name + ".attn2", heads: heads, context: context, ws)
        ws.pool.recycle(n2)
        try ws.addToResidual(a2, bias: b2, into: x)
        ws.pool.recycle(a2)
        // Feed-forward.
        let n3 = try ws.layerNorm(x, name + ".norm3", epsilon: 1e-5)
        let (p, pb) = try ws.linearLeavingBias(n3, name + ".ff.net.0.proj")
        ws.pool.recycle(n3)
        let g = try ws.geglu(p, bias: pb)
        ws.pool.recycle(p)
        let (f, fb) = try ws.linearLeavingBias(g, name + ".ff.net.2")
        ws.pool.recycle(g)
        try ws.addToResidual(f, bias: fb, into: x)
        ws.pool.recycle(f)
        return x
    }

    /// The attention's output projection without its bias, and the bias's name
    /// (``Workspace/linearLeavingBias(_:_:)``).
    private func attention(
        _ x: FloatTensor, _ name: String, heads: Int, context: FloatTensor, _ ws: Workspace
    ) throws -> (FloatTensor, bias: String?) {
        let q = try ws.linear(x, name + ".to_q")
        let k = try ws.linear(context, name + ".to_k")
        let v = try ws.linear(context, name + ".to_v")
        guard q.shape[1] == k.shape[1], k.shape == v.shape, q.shape[1] % heads == 0 else {
            throw EngineError(
                .shapeMismatch, "attention projections \(q.shape), \(k.shape), \(v.shape) do not fit \(heads) heads",
                tensorName: weights.prefix + name + ".to_k.weight")
        }
        let a = ws.attention(q: q, k: k, v: v, heads: heads, causal: false)
        ws.pool.recycle(q); ws.pool.recycle(k); ws.pool.recycle(v)
        let o = try ws.linearLeavingBias(a, name + ".to_out.0")
        ws.pool.recycle(a)
        return o
    }
}
