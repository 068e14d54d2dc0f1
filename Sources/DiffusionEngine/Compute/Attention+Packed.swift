import CEngineKernels

/// Attention's two products fused with its softmax (`attention.c`), which a general GEMM handles
/// poorly: `q kᵀ` has an inner dimension of one head (40 floats in SD 1.5's largest attention),
/// so a BLAS kernel stores and reloads every score after 40 multiply-adds, and `p v` is 40 floats
/// wide, so BLAS spends as long packing the scores as multiplying them. Each worker packs a
/// head's keys (transposed) and values (padded to 16 floats) once, then runs blocks of 8 query
/// rows: scores with their maxima, `exp`, and the weighted sum, scaled by 1 / the sum at the
/// end, the 8 rows of scores staying in the core's L2 cache. A head whose keys and values do not
/// fit in L2 is packed a block of keys at a time, each row's softmax carried from block to block.
extension Attention {
    /// Whether ``forward`` uses the fused kernels unless told otherwise: where the AVX-512
    /// family is selected (its 32 vector registers hold the 24 accumulators of a tile).
    static var usesPackedKernels: Bool { wp_attention_fused() != 0 }

    /// Whether the fused kernels pay for a head of `keys` keys and width `d` where they run:
    /// its packed keys and values fit in the core's L2 cache (`wp_attention_fused_fits`).
    static func fusedFits(keys: Int, headDimension d: Int) -> Bool {
        wp_attention_fused_fits(Int64(keys), Int64(d)) != 0
    }

    /// Floats one worker needs for the fused kernels: one head's packed keys and values and
    /// 8 rows of scores.
    static func packedScratchCount(keys: Int, headDimension d: Int) -> Int {
        Int(wp_attention_scratch_floats(Int64(keys), Int64(d)))
    }

    /// Packs one head's keys and values (`keys` rows of `d` floats) into the first floats of
    /// `scratch`.
    static func packHead(
        k: UnsafePointer<Float>, kStride: Int, v: UnsafePointer<Float>, vStride: Int, keys: Int, d: Int,
        into scratch: UnsafeMutablePointer<Float>
    ) {
        wp_attention_pack(k, Int64(kStride), v, Int64(vStride), Int64(keys), Int64(d), scratch)
    }

    /// `out[i] = softmax(scale · q[i] · kᵀ) v` for `rows` query rows against the head packed in
    /// `scratch` by ``packHead(k:kStride:v:vStride:keys:d:into:)``.
    static func fusedRows(
        q: UnsafePointer<Float>, qStride: Int, rows: Int, scratch: UnsafeMutablePointer<Float>, keys: Int, d: Int,
        scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let status = wp_attention_rows(q, Int64(qStride), Int64(rows), scratch, Int64(keys), Int64(d), scale, out, Int64(outStride))
        precondition(status == 0, "fused attention called where the AVX-512 family is not selected")
    }

    /// Keys per block for a head too large for ``fusedFits(keys:headDimension:)``: equal blocks,
    /// in 48s, whose packed keys and values fit in the L2 cache (`keys` when all of them do; 0
    /// where the fused kernels do not run or fewer than 1024 keys would fit).
    static func fusedKeyBlock(keys: Int, headDimension d: Int) -> Int {
        Int(wp_attention_key_block(Int64(keys), Int64(d)))
    }

    /// ``fusedRows(q:qStride:rows:scratch:keys:d:scale:out:outStride:)`` against one block of a
    /// head's keys packed alone: `state` (2 floats per row) carries each row's running maximum and
    /// sum from block to block and `out` the sums so far, normalised after the `last` block.
    static func fusedRowsBlock(
        q: UnsafePointer<Float>, qStride: Int, rows: Int, scratch: UnsafeMutablePointer<Float>, keys: Int, d: Int,
        scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int, state: UnsafeMutablePointer<Float>, first: Bool, last: Bool
    ) {
        let status = wp_attention_rows_block(
            q, Int64(qStride), Int64(rows), scratch, Int64(keys), Int64(d), scale, out, Int64(outStride), state, first ? 1 : 0,
            last ? 1 : 0)
        precondition(status == 0, "fused attention called where the AVX-512 family is not selected")
    }
}
