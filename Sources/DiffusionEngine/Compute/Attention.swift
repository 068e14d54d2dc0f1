/// Scaled dot-product attention with memory bounded by chunking over queries: for each head,
/// at most `chunk` query rows of scores (`chunk * keys` floats) exist at a time, so 4096-token
/// self-attention never holds the full score matrix, let alone one per head.
enum Attention {
    /// Floats the score buffer may hold (16 MiB).
    static let scoreBudget = 4 << 20

    /// The query rows per chunk for `keys` keys under the score budget.
    static func defaultChunk(queries: Int, keys: Int) -> Int {
        max(1, min(queries, scoreBudget / max(keys, 1)))
    }

    /// `out[t, h*D..<(h+1)*D] = softmax(scale * q_h k_h^T + mask) v_h` for every head.
    ///
    /// Inputs are row-major with one row per token and heads side by side in a row (the layout
    /// a linear projection produces); strides are in floats.
    /// - Parameters:
    ///   - causal: query `i` sees keys `0...i` (CLIP's text transformer).
    ///   - scores: scratch of at least `chunk * keys` floats.
    static func forward(
        q: UnsafePointer<Float>, qStride: Int,
        k: UnsafePointer<Float>, kStride: Int,
        v: UnsafePointer<Float>, vStride: Int,
        out: UnsafeMutablePointer<Float>, outStride: Int,
        queries: Int, keys: Int, heads: Int, headDimension d: Int,
        scale: Float, causal: Bool, chunk: Int, scores: UnsafeMutablePointer<Float>
    ) {
        precondition(chunk >= 1)
        for h in 0..<heads {
            var q0 = 0
            while q0 < queries {
                let rows = min(chunk, queries - q0)
                GEMM.multiply(m: rows, n: keys, k: d,
                              a: q + q0 * qStride + h * d, lda: qStride,
                              b: k + h * d, ldb: kStride, transposeB: true,
                              c: scores, ldc: keys, alpha: scale)
                if causal {
                    for i in 0..<rows {
                        let first = q0 + i + 1
                        if first < keys { (scores + i * keys + first).update(repeating: -.infinity, count: keys - first) }
                    }
                }
                Kernels.softmaxRows(scores, rows: rows, columns: keys)
                GEMM.multiply(m: rows, n: d, k: keys,
                              a: scores, lda: keys,
                              b: v + h * d, ldb: vStride,
                              c: out + q0 * outStride + h * d, ldc: outStride)
                q0 += rows
            }
        }
    }
}
