/// Scaled dot-product attention with memory bounded by chunking over queries: for each head,
/// at most `chunk` query rows of scores (`chunk * keys` floats) exist at a time per worker, so
/// 4096-token self-attention never holds the full score matrix, let alone one per head.
enum Attention {
    /// Floats the score buffer of one worker may hold (4 MiB, 256 query rows of 4096 keys).
    /// Measured on one core for SD 1.5's 4096-token self-attention (`EngineBench attention`):
    /// chunks of 64, 256 and 1024 rows took 0.64, 0.50 and 0.82 s; small chunks repack the
    /// keys and values for every product, large ones send every pass over the scores to memory.
    static let scoreBudget = 1 << 20

    /// The query rows per chunk for `keys` keys under the score budget.
    static func defaultChunk(queries: Int, keys: Int) -> Int {
        max(1, min(queries, scoreBudget / max(keys, 1)))
    }

    /// The workers ``forward`` spreads the (head, chunk) pieces over on this thread.
    static func lanes(queries: Int, heads: Int, chunk: Int) -> Int {
        let pieces = heads * ((queries + chunk - 1) / max(chunk, 1))
        return Parallel.isSerialOnThisThread ? 1 : max(1, min(Parallel.workerCount, pieces))
    }

    /// Floats of scratch ``forward`` needs (scores, and the packed keys and values of one head
    /// when it uses the packed kernels), for every worker.
    static func scratchCount(
        queries: Int, keys: Int, heads: Int, headDimension d: Int, chunk: Int,
        packed: Bool = usesPackedKernels
    ) -> Int {
        lanes(queries: queries, heads: heads, chunk: chunk) * laneScratchCount(keys: keys, headDimension: d, chunk: chunk, packed: packed)
    }

    /// With the fused kernels, room for them or for the BLAS products, which a causal mask or
    /// bf16 compute still take.
    static func laneScratchCount(keys: Int, headDimension d: Int, chunk: Int, packed: Bool) -> Int {
        let block = packed ? fusedKeyBlock(keys: keys, headDimension: d) : 0
        return block > 0 ? max(packedScratchCount(keys: block, headDimension: d), chunk * keys) : chunk * keys
    }

    /// Floats of the optional scratch ``forward`` rounds the keys and values into under
    /// `--compute bf16`: `keys` rows of each, `kStride` and `vStride` bfloat16 apart.
    static func roundedScratchCount(keys: Int, kStride: Int, vStride: Int) -> Int {
        (keys * (kStride + vStride) + 1) / 2
    }

    /// `out[t, h*D..<(h+1)*D] = softmax(scale * q_h k_h^T + mask) v_h` for every head.
    ///
    /// Inputs are row-major with one row per token and heads side by side in a row (the layout
    /// a linear projection produces); strides are in floats. The pieces (one head, one chunk of
    /// queries) are independent: with several workers each takes every `lanes`-th piece and
    /// runs its products on one BLAS thread, so the cores never wait for each other between
    /// the products and the softmax.
    /// - Parameters:
    ///   - causal: query `i` sees keys `0...i` (CLIP's text transformer).
    ///   - scores: scratch of at least ``scratchCount(queries:keys:heads:headDimension:chunk:packed:)``
    ///     floats for the same `packed`.
    ///   - packed: the fused kernels (``usesPackedKernels``; not for a causal mask or bf16
    ///     compute, which take the BLAS products) or BLAS for the products.
    ///   - rounded: on a thread computing in bf16 with the BLAS products, optional scratch of
    ///     ``roundedScratchCount(keys:kStride:vStride:)`` floats: the keys and values are then
    ///     rounded to bfloat16 once for every head and chunk instead of in each product. In bf16
    ///     the softmax writes its probabilities already rounded (``Kernels/softmaxRowBF16(_:count:)``)
    ///     either way. The results are those of rounding in the products.
    static func forward(
        q: UnsafePointer<Float>, qStride: Int,
        k: UnsafePointer<Float>, kStride: Int,
        v: UnsafePointer<Float>, vStride: Int,
        out: UnsafeMutablePointer<Float>, outStride: Int,
        queries: Int, keys: Int, heads: Int, headDimension d: Int,
        scale: Float, causal: Bool, chunk: Int, scores: UnsafeMutablePointer<Float>,
        packed: Bool = usesPackedKernels, rounded: UnsafeMutablePointer<Float>? = nil, keyBlockLimit: Int = .max
    ) {
        precondition(chunk >= 1)
        let bf16 = Parallel.productsInBF16OnThisThread
        // The fused kernels take neither a mask nor bfloat16 operands and scale after the row
        // maximum (which a negative scale would turn into the minimum). They pay only while the
        // keys and values they read stay in the core's L2 cache: a larger head goes through them
        // one block of keys at a time (`keyBlock` < `keys`), each row's softmax carried from block
        // to block (`keyBlockLimit`, for tests, makes the blocks smaller).
        let fusable = packed && !causal && !bf16 && scale > 0
        let keyBlock = fusable ? min(fusedKeyBlock(keys: keys, headDimension: d), max(48, keyBlockLimit / 48 * 48)) : 0
        let fused = keyBlock > 0 && keyBlock >= keys
        let blocked = keyBlock > 0 && keyBlock < keys
        // Keys and values as product operands: floats, or rounded once here.
        var kOperand = GEMM.Operand.floats(k), vOperand = GEMM.Operand.floats(v)
        if bf16, let rounded {
            let k16 = UnsafeMutableRawPointer(rounded).assumingMemoryBound(to: UInt16.self), v16 = k16 + keys * kStride
            GEMM.roundToBF16(k, rows: keys, columns: heads * d, ld: kStride, into: k16, targetLd: kStride)
            GEMM.roundToBF16(v, rows: keys, columns: heads * d, ld: vStride, into: v16, targetLd: vStride)
            kOperand = .bf16(k16)
            vOperand = .bf16(v16)
        }
        let operands = UnsafeSendableBox((kOperand, vOperand))
        let chunks = (queries + chunk - 1) / chunk
        let pieces = heads * chunks
        let lanes = lanes(queries: queries, heads: heads, chunk: chunk)
        let qs = SharedPointer(q), ks = SharedPointer(k), vs = SharedPointer(v)
        let outs = SharedPointer(out), scoreBase = SharedPointer(scores)
        let laneFloats = laneScratchCount(keys: keys, headDimension: d, chunk: chunk, packed: packed)
        func run(lane: Int) {
            let scores = scoreBase.pointer + lane * laneFloats
            if blocked {
                runBlocked(lane: lane, scratch: scores)
                return
            }
            var packedHead = -1
            var piece = lane
            while piece < pieces {
                let h = piece / chunks, q0 = (piece % chunks) * chunk
                let rows = min(chunk, queries - q0)
                if fused {
                    if packedHead != h {
                        packHead(
                            k: ks.pointer + h * d, kStride: kStride, v: vs.pointer + h * d, vStride: vStride,
                            keys: keys, d: d, into: scores)
                        packedHead = h
                    }
                    fusedRows(
                        q: qs.pointer + q0 * qStride + h * d, qStride: qStride, rows: rows, scratch: scores,
                        keys: keys, d: d, scale: scale, out: outs.pointer + q0 * outStride + h * d, outStride: outStride)
                    piece += lanes
                    continue
                }
                GEMM.multiply(
                    m: rows, n: keys, k: d,
                    a: .floats(qs.pointer + q0 * qStride + h * d), lda: qStride,
                    b: operands.value.0.advanced(by: h * d), ldb: kStride, transposeB: true,
                    c: scores, ldc: keys, alpha: scale)
                if causal {
                    for i in 0..<rows {
                        let first = q0 + i + 1
                        if first < keys { (scores + i * keys + first).update(repeating: -.infinity, count: keys - first) }
                    }
                }
                if bf16 {
                    // Row i's probabilities as bfloat16 where its scores began: 2·keys apart.
                    for i in 0..<rows { Kernels.softmaxRowBF16(scores + i * keys, count: keys) }
                    GEMM.multiply(
                        m: rows, n: d, k: keys,
                        a: .bf16(UnsafeRawPointer(scores).assumingMemoryBound(to: UInt16.self)), lda: 2 * keys,
                        b: operands.value.1.advanced(by: h * d), ldb: vStride,
                        c: outs.pointer + q0 * outStride + h * d, ldc: outStride)
                    piece += lanes
                    continue
                }
                for i in 0..<rows { Kernels.softmaxRow(scores + i * keys, count: keys) }
                GEMM.multiply(
                    m: rows, n: d, k: keys,
                    a: scores, lda: keys,
                    b: vs.pointer + h * d, ldb: vStride,
                    c: outs.pointer + q0 * outStride + h * d, ldc: outStride)
                piece += lanes
            }
        }
        // The lane's pieces head by head: each block of the head's keys packed once, then every
        // piece of rows against it, with each row's running maximum and sum in `state`.
        func runBlocked(lane: Int, scratch: UnsafeMutablePointer<Float>) {
            var state = [Float](repeating: 0, count: 2 * queries)
            state.withUnsafeMutableBufferPointer { state in
                var piece = lane
                while piece < pieces {
                    let h = piece / chunks
                    let mine = Array(stride(from: piece, to: (h + 1) * chunks, by: lanes))
                    for b0 in stride(from: 0, to: keys, by: keyBlock) {
                        let blockKeys = min(keyBlock, keys - b0)
                        packHead(
                            k: ks.pointer + b0 * kStride + h * d, kStride: kStride, v: vs.pointer + b0 * vStride + h * d, vStride: vStride,
                            keys: blockKeys, d: d, into: scratch)
                        for p in mine {
                            let q0 = (p % chunks) * chunk
                            fusedRowsBlock(
                                q: qs.pointer + q0 * qStride + h * d, qStride: qStride, rows: min(chunk, queries - q0), scratch: scratch,
                                keys: blockKeys, d: d, scale: scale, out: outs.pointer + q0 * outStride + h * d, outStride: outStride,
                                state: state.baseAddress! + 2 * q0, first: b0 == 0, last: b0 + blockKeys == keys)
                        }
                    }
                    piece = mine.last! + lanes
                }
            }
        }
        if lanes == 1 {
            run(lane: 0)
        } else {
            GEMM.withSingleThreadedCalls { Parallel.forEach(lanes) { run(lane: $0) } }
        }
    }
}
