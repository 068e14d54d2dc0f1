/// The buffers a ``Workspace`` reuses, which its owner may keep from one forward pass to the
/// next (the UNet keeps one per core from step to step): the activation pool, the im2col and
/// Winograd scratch, the attention scores, and conversion scratch for a weight provider that is
/// itself made per pass (``WeightProvider/useScratch(_:)``). A
/// buffer allocated afresh has its pages mapped and zeroed by the kernel on first touch, which
/// was 5.7 % of an SD 1.5 UNet step's time (8.1 % with F16 weights) when every step allocated
/// its own (`clear_page_erms` in `perf`). Not thread-safe: one pass uses it at a time.
final class WorkspaceMemory {
    let pool = TensorPool()
    var columns: FloatTensor?
    var scores: FloatTensor?
    /// Activations quantised for the int8 products (bytes, held as floats).
    var quantized: FloatTensor?
    let weightScratch = WeightScratch()

    /// Floats held by all the buffers.
    var floatsHeld: Int {
        pool.cachedBytes / 4 + (columns?.capacity ?? 0) + (scores?.capacity ?? 0) + (quantized?.capacity ?? 0)
            + weightScratch.tensors.reduce(0) { $0 + $1.capacity }
    }
}

/// The state of one forward pass: the weights, a pool of activation buffers and the scratch
/// buffers of convolution and attention, reused from layer to layer.
///
/// Layer helpers take a module name (`decoder.conv_in`) and read `<name>.weight` and
/// `<name>.bias` through the ``WeightProvider``. Inputs passed to a helper are left intact;
/// the result comes from the pool and the caller recycles it when done.
final class Workspace {
    let weights: WeightProvider
    /// Adapters applied at run time to the layers they name (see ``RuntimeAdapterTable``).
    let adapters: RuntimeAdapterTable?
    /// Records the inputs of every linear and convolution layer when set (calibration).
    let recorder: ActivationRecorder?
    /// The buffers reused from layer to layer (and, when the owner keeps them, from pass to pass).
    let memory: WorkspaceMemory
    var pool: TensorPool { memory.pool }

    /// - Parameter memory: buffers to reuse; by default fresh ones, freed with the workspace.
    init(
        weights: WeightProvider, adapters: RuntimeAdapterTable? = nil, recorder: ActivationRecorder? = nil,
        memory: WorkspaceMemory = WorkspaceMemory()
    ) {
        self.weights = weights
        self.adapters = adapters.flatMap { $0.isEmpty ? nil : $0 }
        self.recorder = recorder
        self.memory = memory
    }

    /// The im2col scratch, for the adapters' own convolutions (used after the layer's).
    func columnScratch(_ count: Int) -> UnsafeMutablePointer<Float> { columnBuffer(count) }

    /// Scratch of at least `count` floats for im2col columns.
    private func columnBuffer(_ count: Int) -> UnsafeMutablePointer<Float> {
        if memory.columns == nil || memory.columns!.capacity < count { memory.columns = FloatTensor(shape: [count]) }
        return memory.columns!.base
    }

    /// Scratch of at least `bytes` bytes for quantised activations.
    private func quantizedBuffer(_ bytes: Int) -> UnsafeMutableRawPointer {
        let count = (bytes + 3) / 4
        if memory.quantized == nil || memory.quantized!.capacity < count { memory.quantized = FloatTensor(shape: [count]) }
        return UnsafeMutableRawPointer(memory.quantized!.base)
    }

    private func scoreBuffer(_ count: Int) -> UnsafeMutablePointer<Float> {
        if memory.scores == nil || memory.scores!.capacity < count { memory.scores = FloatTensor(shape: [count]) }
        return memory.scores!.base
    }

    // MARK: Linear

    /// `x[rows, in] -> [rows, out]` with the weight `[out, in]` of `name` and its bias if any.
    func linear(_ x: FloatTensor, _ name: String, bias useBias: Bool = true) throws -> FloatTensor {
        let shape = try weights.shape(name + ".weight")
        guard shape.count == 2, let inFeatures = x.shape.last, shape[1] == inFeatures else {
            throw EngineError(.shapeMismatch, "linear weight \(shape) does not fit input \(x.shape)", tensorName: weights.prefix + name + ".weight")
        }
        let rows = x.count / inFeatures, outFeatures = shape[0]
        if let recorder {
            recorder.record(rows: x.base, rows: rows, channels: inFeatures, weight: weights.prefix + name + ".weight")
            if Int8Products.takes(linearInputs: inFeatures) {
                recorder.recordInt8Noise(rows: x.base, rows: rows, channels: inFeatures, weight: weights.prefix + name + ".weight")
            }
        }
        let y = pool.take(Array(x.shape.dropLast()) + [outFeatures])
        let weight = name + ".weight"
        // In int8 with an int8 block weight: the input quantised, the weight read as stored.
        let inInt8 =
            try Parallel.productsInInt8OnThisThread && Int8Products.takes(linearInputs: inFeatures)
            && weights.withInt8Weight(weight) { w in
                let packed = quantizedBuffer(Int8Products.packedBytes(rows: rows, k: inFeatures))
                Int8Products.quantize(x.base, rows: rows, k: inFeatures, strideRow: inFeatures, strideValue: 1, into: packed)
                Int8Products.multiply(rows: rows, packed: packed, weight: w, c: y.base, ldcRow: outFeatures, ldcColumn: 1)
            }
        // In bf16 on several cores: the weight rounded once for all of them when it can be.
        let sharedBF16 =
            try !inInt8 && sharesBF16Weights
            && weights.withSharedBF16Weight(weight) { w in
                GEMM.multiply(
                    m: rows, n: outFeatures, k: inFeatures, a: .floats(x.base), lda: inFeatures,
                    b: .bf16(w), ldb: inFeatures, transposeB: true, c: y.base, ldc: outFeatures)
            }
        // An F16 weight under float compute on AMX: read as stored by the split bfloat16 products.
        let split =
            try !inInt8 && !sharedBF16 && !Parallel.productsInBF16OnThisThread && GEMM.splitSuits(m: rows, n: outFeatures)
            && weights.withF16Weight(weight) { w in
                GEMM.multiplySplit(
                    m: rows, n: outFeatures, k: inFeatures, a: .floats(x.base), lda: inFeatures, b: .transposedHalves(w), ldb: inFeatures,
                    c: y.base, ldc: outFeatures)
            }
        // An F16 weight meeting few rows, in float: read as stored by the F16 products.
        let asF16 =
            try !inInt8 && !sharedBF16 && !split && !Parallel.productsInBF16OnThisThread && GEMM.f16WeightProducts
            && rows <= GEMM.f16WeightMaximumRows
            && weights.withF16Weight(weight) { w in
                GEMM.multiplyF16Linear(
                    m: rows, n: outFeatures, k: inFeatures, x: x.base, ldx: inFeatures, w: w, ldw: inFeatures, c: y.base, ldc: outFeatures)
            }
        if !inInt8 && !sharedBF16 && !split && !asF16 {
            let per = try weights.rowsPerBlock(weight, scratchFloats: weightBlockFloats)
            try weights.withRowBlocks(weight, rowsPerBlock: per) { outputs, w in
                GEMM.multiply(
                    m: rows, n: outputs.count, k: inFeatures, a: x.base, lda: inFeatures,
                    b: w, ldb: inFeatures, transposeB: true, c: y.base + outputs.lowerBound, ldc: outFeatures)
            }
        }
        if useBias, weights.contains(name + ".bias") {
            try weights.withFloats(name + ".bias", shape: [outFeatures]) { b in
                Kernels.addRowBias(y.base, rows: rows, columns: outFeatures, bias: b)
            }
        }
        try applyAdapters(linear: name, x: x, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures, bias: useBias)
        return y
    }

    /// ``linear(_:_:bias:)`` with its bias, if it has one, left to the caller's next pass over
    /// the result (``geglu(_:bias:)``, ``addToResidual(_:bias:into:)``), which saves a pass
    /// over it: returns the products and the bias's name. A layer that adapters change gets its
    /// bias here, before their changes, as ``linear(_:_:bias:)`` adds them, and no name back.
    func linearLeavingBias(_ x: FloatTensor, _ name: String) throws -> (FloatTensor, bias: String?) {
        let full = weights.prefix + name
        if let adapters, adapters.changes(of: full + ".weight") != nil || adapters.changes(of: full + ".bias") != nil {
            return (try linear(x, name), nil)
        }
        let bias = weights.contains(name + ".bias") ? name + ".bias" : nil
        return (try linear(x, name, bias: false), bias)
    }

    /// `residual += y + bias` in one pass over `[rows, columns]` rows (the bias named by
    /// ``linearLeavingBias(_:_:)``, or none).
    func addToResidual(_ y: FloatTensor, bias: String?, into residual: FloatTensor) throws {
        let columns = y.shape.last ?? 0
        guard residual.count == y.count, columns > 0 else {
            throw EngineError(
                .shapeMismatch, "result \(y.shape) does not fit the residual \(residual.shape)", tensorName: bias.map { weights.prefix + $0 })
        }
        let rows = y.count / columns
        guard let bias else {
            Kernels.add(y.base, into: residual.base, count: y.count)
            return
        }
        try weights.withFloats(bias, shape: [columns]) { b in
            Kernels.addRows(y.base, rows: rows, columns: columns, bias: b, into: residual.base)
        }
    }

    /// GEGLU of a `[rows, 2F]` projection into a new `[rows, F]` tensor, adding the
    /// projection's bias (named by ``linearLeavingBias(_:_:)``, or none) on the way.
    func geglu(_ p: FloatTensor, bias: String?) throws -> FloatTensor {
        guard p.shape.count == 2, p.shape[1] % 2 == 0 else {
            throw EngineError(.shapeMismatch, "GEGLU input \(p.shape) is not [rows, 2F]", tensorName: bias.map { weights.prefix + $0 })
        }
        let rows = p.shape[0], features = p.shape[1] / 2
        let g = pool.take([rows, features])
        if let bias {
            try weights.withFloats(bias, shape: [2 * features]) { b in
                Kernels.geglu(p.base, rows: rows, features: features, bias: b, into: g.base)
            }
        } else {
            Kernels.geglu(p.base, rows: rows, features: features, into: g.base)
        }
        return g
    }

    // MARK: Convolution

    /// A 2-D convolution of `x[C, H, W]` with the weight `[outC, C, kh, kw]` of `name`.
    func conv2d(_ x: FloatTensor, _ name: String, stride: Int = 1, padding: Convolution.Padding) throws -> FloatTensor {
        let shape = try weights.shape(name + ".weight")
        guard x.shape.count == 3, shape.count == 4, shape[1] == x.shape[0] else {
            throw EngineError(
                .shapeMismatch, "convolution weight \(shape) does not fit input \(x.shape)", tensorName: weights.prefix + name + ".weight")
        }
        let g = Convolution.Geometry(
            inChannels: x.shape[0], height: x.shape[1], width: x.shape[2],
            outChannels: shape[0], kernelHeight: shape[2], kernelWidth: shape[3],
            stride: stride, padding: padding)
        guard g.outHeight > 0, g.outWidth > 0 else {
            throw EngineError(.shapeMismatch, "input \(x.shape) too small for convolution \(shape)", tensorName: weights.prefix + name + ".weight")
        }
        if let recorder {
            recorder.record(planes: x.base, channels: g.inChannels, plane: g.height * g.width, weight: weights.prefix + name + ".weight")
            if Int8Products.takes(g) { recorder.recordInt8Noise(patches: x.base, geometry: g, weight: weights.prefix + name + ".weight") }
        }
        let y = pool.take([g.outChannels, g.outHeight, g.outWidth])
        let weight = name + ".weight"
        // Output channels per block: for Winograd bounded by the transformed weights (36 floats
        // per filter), and for an F16 or quantised weight converted privately also by the
        // scratch it is converted into.
        let product = Convolution.usesWinograd(g) ? max(8, winogradWeightFloats / (36 * g.inChannels)) : Int.max
        let plane = g.outHeight * g.outWidth
        let bias = weights.contains(name + ".bias") ? try weights.floats(name + ".bias", shape: [g.outChannels]) : nil
        // In int8 compute, convolutions that take Winograd stay on it, in float: its 4x fewer
        // multiplications beat the integer products at those sizes, and float is the more
        // accurate arithmetic (Docs/engine.md, "int8 compute").
        if Parallel.productsInInt8OnThisThread, Int8Products.takes(g),
            try int8Convolution(x, weight, geometry: g, bias: bias, output: y)
        {
            try applyAdapters(convolution: name, x: x, y: y, geometry: g)
            return y
        }
        // An F16 weight under float compute on AMX: its products in split bfloat16.
        let splitF16 =
            try !Parallel.productsInBF16OnThisThread && GEMM.splitSuits(m: g.outChannels, n: plane) && weights.isStoredAsF16(weight)
        if Convolution.usesWinograd(g), weights.sharedConversions != nil {
            // Several cores run this layer at once: each block's transformed weights are made
            // once for all of them, straight from the stored weight (in bf16, rounded once too).
            try weights.withWinogradWeights(
                weight, outChannels: g.outChannels, inChannels: g.inChannels, rowsPerBlock: product, roundedToBF16: sharesBF16Weights
            ) {
                outputs, u, stride in
                var block = g
                block.outChannels = outputs.count
                let columns = columnBuffer(Convolution.winogradProductScratchCount(block))
                bias.withOptionalBase { b in
                    Convolution.winogradProducts(
                        x.base, geometry: block, transformed: u, stride: stride, bias: b.map { $0 + outputs.lowerBound }, residual: nil,
                        output: y.base + outputs.lowerBound * plane, scratch: columns, splitProducts: splitF16)
                }
            }
            try applyAdapters(convolution: name, x: x, y: y, geometry: g)
            return y
        }
        // An F16 weight of an im2col or pointwise convolution meeting few pixels, in float: read
        // as stored by the F16 products where the kernel family has them, not converted first.
        func fromF16Weight() throws -> Bool {
            guard !Parallel.productsInBF16OnThisThread, GEMM.f16WeightProducts, plane <= GEMM.f16WeightMaximumRows,
                g.isPointwise || Convolution.lowersInOneBlock(g)
            else { return false }
            return try weights.withF16Weight(weight) { w in
                var columns = UnsafePointer(x.base)
                if !g.isPointwise {
                    let lowered = columnBuffer(g.patchSize * plane)
                    Convolution.im2col(x.base, geometry: g, pixels: 0..<plane, into: lowered)
                    columns = UnsafePointer(lowered)
                }
                GEMM.multiplyF16Weight(
                    m: g.outChannels, n: plane, k: g.patchSize, a: w, lda: g.patchSize, b: columns, ldb: plane, c: y.base, ldc: plane)
                bias.withOptionalBase { b in
                    if let b { Kernels.addChannelBias(y.base, channels: g.outChannels, plane: plane, bias: b) }
                }
            }
        }
        // The same on AMX, for any number of pixels: split bfloat16 products over the F16 weight
        // as stored, the input lowered a block of pixels at a time.
        func splitFromF16Weight() throws -> Bool {
            guard splitF16, !Convolution.usesWinograd(g) else { return false }
            return try weights.withF16Weight(weight) { w in
                if g.isPointwise {
                    GEMM.multiplySplit(
                        m: g.outChannels, n: plane, k: g.patchSize, a: .halves(w), lda: g.patchSize, b: .floats(x.base), ldb: plane,
                        c: y.base, ldc: plane)
                } else {
                    // Every pixel in one product where the lowered input fits twice the column
                    // budget (SD 1.5's 2560 -> 1280 at 16x16, 23.6 MB): each product splits the
                    // whole weight again, so fewer, wider products pay.
                    let whole = Convolution.lowersInOneBlock(g, budget: 2 * Convolution.columnBudget)
                    let block = whole ? plane : Convolution.im2colBlockPixels(g)
                    let columns = columnBuffer(whole ? g.patchSize * plane : Convolution.scratchCount(g))
                    var start = 0
                    while start < plane {
                        let n = min(block, plane - start)
                        Convolution.im2col(x.base, geometry: g, pixels: start..<(start + n), into: columns)
                        GEMM.multiplySplit(
                            m: g.outChannels, n: n, k: g.patchSize, a: .halves(w), lda: g.patchSize, b: .floats(columns), ldb: n,
                            c: y.base + start, ldc: plane)
                        start += n
                    }
                }
                bias.withOptionalBase { b in
                    if let b { Kernels.addChannelBias(y.base, channels: g.outChannels, plane: plane, bias: b) }
                }
            }
        }
        if try splitFromF16Weight() || fromF16Weight() {
            try applyAdapters(convolution: name, x: x, y: y, geometry: g)
            return y
        }
        let per = min(product, try weights.rowsPerBlock(weight, scratchFloats: weightBlockFloats))
        // An im2col convolution whose lowered input fits one column block is lowered once,
        // however many blocks of output channels its weight comes in; when the weight may come
        // in several blocks, up to twice that budget (SD 1.5's 2560 -> 1280 at 16x16, 23.6 MB),
        // rather than lowering the input again for every block.
        let budget = per < g.outChannels ? 2 * Convolution.columnBudget : Convolution.columnBudget
        let lowered = Convolution.lowersInOneBlock(g, budget: budget) ? columnBuffer(g.patchSize * plane) : nil
        if let lowered { Convolution.im2col(x.base, geometry: g, pixels: 0..<plane, into: lowered) }
        // In bf16 on several cores: the weight rounded once for all of them when it can be.
        func fromRoundedWeight(_ w: UnsafePointer<UInt16>) {
            bias.withOptionalBase { b in
                if let lowered {
                    Convolution.lowered(columns: lowered, geometry: g, weight: .bf16(w), bias: b, output: y.base)
                } else {
                    let columns = g.isPointwise ? nil : columnBuffer(Convolution.scratchCount(g))
                    Convolution.loweredForward(x.base, geometry: g, weight: .bf16(w), bias: b, output: y.base, columns: columns)
                }
            }
        }
        if sharesBF16Weights, try weights.withSharedBF16Weight(weight, fromRoundedWeight) {
            try applyAdapters(convolution: name, x: x, y: y, geometry: g)
            return y
        }
        try weights.withRowBlocks(weight, rowsPerBlock: per, wholeRowsPerBlock: product) { outputs, w in
            var block = g
            block.outChannels = outputs.count
            let out = y.base + outputs.lowerBound * plane
            bias.withOptionalBase { b in
                let b = b.map { $0 + outputs.lowerBound }
                if let lowered {
                    Convolution.lowered(columns: lowered, geometry: block, weight: .floats(w), bias: b, output: out)
                } else {
                    let columns = block.isPointwise ? nil : columnBuffer(Convolution.scratchCount(block))
                    Convolution.forward(x.base, geometry: block, weight: w, bias: b, output: out, columns: columns, splitProducts: splitF16)
                }
            }
        }
        try applyAdapters(convolution: name, x: x, y: y, geometry: g)
        return y
    }

    /// The convolution in ``ComputePrecision/int8`` when `weight` is stored as int8 blocks (any
    /// geometry Winograd does not take, through im2col): the input lowered and quantised in one
    /// pass a block of output pixels at a time (no float columns), the weight read as stored.
    /// Returns false, with nothing written, for any other weight.
    private func int8Convolution(
        _ x: FloatTensor, _ weight: String, geometry g: Convolution.Geometry, bias: [Float]?, output y: FloatTensor
    ) throws -> Bool {
        let plane = g.outHeight * g.outWidth
        return try weights.withInt8Weight(weight) { w in
            // Pixels per block: whole tiles of 32 (so a tile's 16-pixel halves stay within one
            // output row where the width is a multiple of 16), the quantised rows within 16 MiB.
            let tile = Int8Products.tileRows
            let block = min(plane, max(tile, (4 * Convolution.columnBudget / max(g.patchSize, 1)) / tile * tile))
            let packed = quantizedBuffer(Int8Products.packedBytes(rows: min(block, plane), k: g.patchSize))
            var start = 0
            while start < plane {
                let n = min(block, plane - start)
                if g.isPointwise {
                    // The input is already the columns: channel c of pixel p at c * plane + p.
                    Int8Products.quantize(x.base + start, rows: n, k: g.patchSize, strideRow: 1, strideValue: plane, into: packed)
                } else {
                    // Lowered and quantised in one pass, straight from the input.
                    Int8Products.quantizePatches(x.base, geometry: g, pixels: start..<(start + n), into: packed)
                }
                Int8Products.multiply(rows: n, packed: packed, weight: w, c: y.base + start, ldcRow: 1, ldcColumn: plane)
                start += n
            }
            bias.withOptionalBase { b in
                if let b { Kernels.addChannelBias(y.base, channels: g.outChannels, plane: plane, bias: b) }
            }
        }
    }

    /// Whether this pass's products are bf16 and its weights shared with other cores: then
    /// each weight is rounded to bfloat16 once for all of them
    /// (``WeightProvider/withSharedBF16Weight(_:_:)``) instead of by each core's products.
    private var sharesBF16Weights: Bool { Parallel.productsInBF16OnThisThread && weights.sharedConversions != nil }

    /// Floats of one block of an F16, BF16 or int8 weight converted for a product (default
    /// 16 MiB); F32 weights are read in place whatever their size.
    var weightBlockFloats = 4 << 20

    /// Floats of Winograd-transformed weights per convolution block (default 64 MiB): the
    /// largest SD 1.5 layer on that path (1920 -> 640 at 32x32) would otherwise need 177 MB
    /// per worker.
    var winogradWeightFloats = 16 << 20

    // MARK: Normalisation

    /// Group norm of `x[C, H, W]` (or `[C, N]`) into a new tensor, optionally fused with SiLU.
    /// The second half of diffusers' `ResnetBlock2D`: `norm2` + SiLU, `conv2`, then the residual
    /// (`conv_shortcut` of the input where the block changes channels). Consumes `input` and
    /// `hidden`.
    func residualTail(input x: FloatTensor, hidden h1: FloatTensor, _ name: String, groups: Int, epsilon: Float) throws -> FloatTensor {
        let n2 = try groupNorm(h1, name + ".norm2", groups: groups, epsilon: epsilon, silu: true)
        pool.recycle(h1)
        let h2 = try conv2d(n2, name + ".conv2", padding: .init(1))
        pool.recycle(n2)
        if weights.contains(name + ".conv_shortcut.weight") {
            let s = try conv2d(x, name + ".conv_shortcut", padding: .init(0))
            Kernels.add(s.base, into: h2.base, count: h2.count)
            pool.recycle(s)
        } else {
            guard x.shape == h2.shape else {
                throw EngineError(
                    .missingTensor, "residual block changes channels but has no shortcut", tensorName: weights.prefix + name + ".conv_shortcut.weight"
                )
            }
            Kernels.add(x.base, into: h2.base, count: h2.count)
        }
        pool.recycle(x)
        return h2
    }

    func groupNorm(_ x: FloatTensor, _ name: String, groups: Int, epsilon: Float, silu: Bool = false) throws -> FloatTensor {
        let channels = x.shape[0], plane = x.count / max(channels, 1)
        guard groups > 0, channels % groups == 0 else {
            throw EngineError(
                .shapeMismatch, "\(channels) channels do not split into \(groups) groups", tensorName: weights.prefix + name + ".weight")
        }
        let y = pool.take(x.shape)
        try weights.withFloats(name + ".weight", shape: [channels]) { w in
            try weights.withFloats(name + ".bias", shape: [channels]) { b in
                Kernels.groupNorm(
                    x.base, into: y.base, channels: channels, plane: plane, groups: groups,
                    epsilon: epsilon, weight: w, bias: b, silu: silu)
            }
        }
        return y
    }

    /// Layer norm over the last dimension of `x` into a new tensor.
    func layerNorm(_ x: FloatTensor, _ name: String, epsilon: Float) throws -> FloatTensor {
        let features = x.shape.last ?? 0
        let y = pool.take(x.shape)
        try weights.withFloats(name + ".weight", shape: [features]) { w in
            try weights.withFloats(name + ".bias", shape: [features]) { b in
                Kernels.layerNorm(
                    x.base, into: y.base, rows: x.count / max(features, 1), features: features,
                    epsilon: epsilon, weight: w, bias: b)
            }
        }
        return y
    }

    // MARK: Attention

    /// Multi-head attention over `[tokens, heads * headDim]` projections of one sequence.
    func attention(q: FloatTensor, k: FloatTensor, v: FloatTensor, heads: Int, causal: Bool, chunk: Int? = nil) -> FloatTensor {
        let width = q.shape.last!, queries = q.count / width, keys = k.count / width
        let d = width / heads
        let out = pool.take(q.shape)
        let chunk = chunk ?? Attention.defaultChunk(queries: queries, keys: keys)
        let scoreCount = Attention.scratchCount(queries: queries, keys: keys, heads: heads, headDimension: d, chunk: chunk)
        // Under bf16 compute, room to round the keys and values once for every head and chunk.
        let rounding = Parallel.productsInBF16OnThisThread ? Attention.roundedScratchCount(keys: keys, kStride: width, vStride: width) : 0
        let scratch = scoreBuffer(scoreCount + rounding)
        Attention.forward(
            q: q.base, qStride: width, k: k.base, kStride: width, v: v.base, vStride: width,
            out: out.base, outStride: width, queries: queries, keys: keys, heads: heads,
            headDimension: d, scale: 1 / Float(d).squareRoot(), causal: causal,
            chunk: chunk, scores: scratch, rounded: rounding > 0 ? scratch + scoreCount : nil)
        return out
    }
}

extension Optional where Wrapped == [Float] {
    /// Calls `body` with the array's base address, or with `nil` when there is no array.
    fileprivate func withOptionalBase<R>(_ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
        guard let array = self else { return try body(nil) }
        return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
    }
}
