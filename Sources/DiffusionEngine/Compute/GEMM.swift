import COpenBLAS

/// Matrix products through OpenBLAS `cblas_sgemm` (row-major throughout).
enum GEMM {
    /// `C[m, n] = alpha * op(A) * op(B) + beta * C`, row-major, with leading dimensions.
    @inline(__always)
    static func multiply(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool = false,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool = false,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        alpha: Float = 1, beta: Float = 0
    ) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(
            CblasRowMajor,
            transposeA ? CblasTrans : CblasNoTrans,
            transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k),
            alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Runs `body` with OpenBLAS limited to one thread, for code that spreads independent
    /// products over ``Parallel`` workers itself (two levels of threads would oversubscribe the
    /// cores). The previous setting is restored afterwards. With a single worker nothing changes.
    static func withSingleThreadedCalls<R>(_ body: () throws -> R) rethrows -> R {
        let previous = threadCount
        if previous == 1 || Parallel.workerCount == 1 { return try body() }
        threadCount = 1
        defer { threadCount = previous }
        return try body()
    }

    /// Threads OpenBLAS uses.
    static var threadCount: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}

/// The number of threads the engine's BLAS calls use (OpenBLAS's own setting).
public enum ComputeSettings {
    /// Threads used by matrix products; elementwise kernels use every active processor.
    public static var blasThreadCount: Int {
        get { GEMM.threadCount }
        set { GEMM.threadCount = max(1, newValue) }
    }
}
