import CEngineKernels

/// Matrix products through oneDNN's `dnnl_sgemm` (row-major throughout), which picks its
/// kernels from CPUID feature bits (not from the processor's model name, as OpenBLAS does), so an
/// unknown CPU still gets its AVX2 or AVX-512 kernels. See ``ComputeBackend``.
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
        let threads = Parallel.isSerialOnThisThread || wp_single_threaded() != 0 ? 1 : threadCount
        if Parallel.productsInBF16OnThisThread {
            multiplyInBF16(
                m: m, n: n, k: k, a: a, lda: lda, transposeA: transposeA, b: b, ldb: ldb, transposeB: transposeB, c: c, ldc: ldc, alpha: alpha,
                beta: beta, threads: threads)
            return
        }
        multiplyInFloat(
            m: m, n: n, k: k, a: a, lda: lda, transposeA: transposeA, b: b, ldb: ldb, transposeB: transposeB, c: c, ldc: ldc, alpha: alpha,
            beta: beta, threads: threads)
    }

    /// ``multiply(m:n:k:a:lda:transposeA:b:ldb:transposeB:c:ldc:alpha:beta:)`` in float whatever
    /// the thread's ``ComputePrecision``: for products that are part of a transform rather than
    /// of a layer (Winograd's weight transform).
    static func multiplyInFloat(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool = false,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool = false,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        alpha: Float = 1, beta: Float = 0, threads: Int? = nil
    ) {
        if m == 0 || n == 0 { return }
        let threads = threads ?? (Parallel.isSerialOnThisThread || wp_single_threaded() != 0 ? 1 : threadCount)
        if threads == 1, !transposeA, !transposeB, alpha == 1, beta == 0 || beta == 1, f32TilesSuit(m: m, n: n, k: k),
            f16WeightProducts
        {
            let status = wp_gemm_f32_tiles(
                Int64(m), Int64(n), Int64(k), a, Int64(lda), b, Int64(ldb), c, Int64(ldc), beta == 1 ? 1 : 0)
            // The shapes are the engine's own and the family is checked: only memory can run short.
            precondition(status == 0, "float tile product failed with status \(status) for \(m)x\(n)x\(k)")
            return
        }
        let status = wp_sgemm(
            transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha,
            a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc), Int32(threads))
        // Only invalid arguments fail, which the engine's own shapes rule out.
        precondition(status == 0, "dnnl_sgemm failed with status \(status) for \(m)x\(n)x\(k)")
    }

    private static func multiplyInBF16(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        alpha: Float, beta: Float, threads: Int
    ) {
        let status = wp_gemm_bf16(
            transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha,
            a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc), Int32(threads))
        // Availability is checked before a section is entered; allocation is what can fail.
        precondition(status == 0, "dnnl_gemm_bf16bf16f32 failed with status \(status) for \(m)x\(n)x\(k)")
    }

    /// An operand of a product: floats, or values already rounded to bfloat16 (``roundToBF16(_:rows:columns:ld:into:targetLd:)``)
    /// for a thread computing in ``ComputePrecision/bf16``, stored as the floats would be.
    enum Operand {
        case floats(UnsafePointer<Float>)
        case bf16(UnsafePointer<UInt16>)

        /// The floats, when the operand is floats.
        var floats: UnsafePointer<Float>? {
            if case .floats(let p) = self { p } else { nil }
        }

        /// The operand `offset` elements further on.
        @inline(__always)
        func advanced(by offset: Int) -> Operand {
            switch self {
            case .floats(let p): .floats(p + offset)
            case .bf16(let p): .bf16(p + offset)
            }
        }
    }

    /// ``multiply(m:n:k:a:lda:transposeA:b:ldb:transposeB:c:ldc:alpha:beta:)`` with operands
    /// that may be rounded to bfloat16 already (a weight rounded once for several cores), which
    /// the product then reads as they are. A `.bf16` operand needs this thread to compute in
    /// bf16.
    static func multiply(
        m: Int, n: Int, k: Int,
        a: Operand, lda: Int, transposeA: Bool = false,
        b: Operand, ldb: Int, transposeB: Bool = false,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        alpha: Float = 1, beta: Float = 0
    ) {
        if case .floats(let a) = a, case .floats(let b) = b {
            multiply(
                m: m, n: n, k: k, a: a, lda: lda, transposeA: transposeA, b: b, ldb: ldb, transposeB: transposeB, c: c, ldc: ldc,
                alpha: alpha, beta: beta)
            return
        }
        precondition(Parallel.productsInBF16OnThisThread, "a bfloat16 operand outside bf16 compute")
        if m == 0 || n == 0 { return }
        let threads = Parallel.isSerialOnThisThread || wp_single_threaded() != 0 ? 1 : threadCount
        func split(_ o: Operand) -> (UnsafePointer<Float>?, UnsafePointer<UInt16>?) {
            switch o {
            case .floats(let p): (p, nil)
            case .bf16(let p): (nil, p)
            }
        }
        let (af, a16) = split(a), (bf, b16) = split(b)
        let status = wp_gemm_bf16_rounded(
            transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha,
            af, a16, Int64(lda), bf, b16, Int64(ldb), beta, c, Int64(ldc), Int32(threads))
        precondition(status == 0, "dnnl_gemm_bf16bf16f32 failed with status \(status) for \(m)x\(n)x\(k)")
    }

    /// Whether ``multiplyF16Weight(m:n:k:a:lda:b:ldb:c:ldc:)`` can run: the AVX-512 family is
    /// selected. Elsewhere an F16 weight is converted to floats for `sgemm` as before.
    static var f16WeightProducts: Bool { ComputeBackend.current.f16WeightProducts }

    /// `C[m, n] = A[m, k] B[k, n]`, row-major, with A an F16 weight read as stored (widened
    /// exactly; every multiply-add in float, as `sgemm` of the widened weight would do, in its own
    /// order): `CEngineKernels/gemm_f16.c`. Outside single-threaded sections the rows of C are
    /// split over the ``Parallel`` workers, each packing B for itself. Needs
    /// ``f16WeightProducts``; float compute only.
    static func multiplyF16Weight(
        m: Int, n: Int, k: Int, a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let am = SharedPointer(a), bm = SharedPointer(b), cm = SharedPointer(c)
        splittingF16Rows(m) { rows in
            wp_gemm_f16_weight(
                Int64(rows.count), Int64(n), Int64(k), am.pointer + rows.lowerBound * lda, Int64(lda), bm.pointer, Int64(ldb),
                cm.pointer + rows.lowerBound * ldc, Int64(ldc), 0)
        }
    }

    /// Runs `product(rows)` over the `m` rows of an F16 product: whole on this thread in
    /// single-threaded sections, else split over the ``Parallel`` workers in whole tiles of
    /// `tile` rows, at least `grain` tiles each (each worker packs the other operand for itself).
    private static func splittingF16Rows(_ m: Int, tile: Int = 6, grain: Int = 8, _ product: (Range<Int>) -> Int32) {
        if m == 0 { return }
        let threads = Parallel.isSerialOnThisThread || wp_single_threaded() != 0 ? 1 : threadCount
        Parallel.forRanges((m + tile - 1) / tile, grain: threads == 1 ? Int.max : grain) { tiles in
            let status = product((tiles.lowerBound * tile)..<min(m, tiles.upperBound * tile))
            // The caller checks availability; only memory can run short.
            precondition(status == 0, "F16 weight product failed with status \(status) for \(m) rows")
        }
    }

    /// Whether products with an F16 weight run on AMX tiles in split bfloat16
    /// (``multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``): the processor has AMX-BF16
    /// that Linux lets us use, the AVX-512 family is selected and `WEIGHTPACK_AMX` is not `0`.
    static var splitF16Products: Bool { ComputeBackend.current.splitF16Products }

    /// An operand of ``multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``.
    enum SplitOperand {
        /// Row-major floats (A: `m x k`; B: `k x n`).
        case floats(UnsafePointer<Float>)
        /// A as row-major F16 halves, `m x k` (a convolution's weight as stored).
        case halves(UnsafePointer<UInt16>)
        /// B as the transpose of row-major F16 halves, `n x k` (a linear layer's weight as stored).
        case transposedHalves(UnsafePointer<UInt16>)
    }

    /// `C[m, n] (+)= A[m, k] B[k, n]` on AMX tiles in split bfloat16 (`CEngineKernels/gemm_amx.c`):
    /// each value as the sum of two bfloat16 parts, three bfloat16 products summed in float.
    /// Within about 2⁻¹⁶ of `Σ|a||b|` of the exact product, far below the error of the F16 weight
    /// itself (about 2⁻¹²), so it is used only for products with an F16 weight, and only under
    /// float compute: an F32 weight keeps float products. Outside single-threaded sections the
    /// rows of C are split over the ``Parallel`` workers in tiles of 32. Needs ``splitF16Products``.
    static func multiplySplit(
        m: Int, n: Int, k: Int, a: SplitOperand, lda: Int, b: SplitOperand, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
        accumulate: Bool = false
    ) {
        let (aBase, aHalf, aElement): (UnsafeRawPointer, Int32, Int) =
            switch a {
            case .floats(let p): (UnsafeRawPointer(p), 0, 4)
            case .halves(let p): (UnsafeRawPointer(p), 1, 2)
            case .transposedHalves: preconditionFailure("a transposed operand as A")
            }
        let (bBase, bTransposed): (UnsafeRawPointer, Int32) =
            switch b {
            case .floats(let p): (UnsafeRawPointer(p), 0)
            case .transposedHalves(let p): (UnsafeRawPointer(p), 1)
            case .halves: preconditionFailure("untransposed halves as B")
            }
        let am = SharedPointer(aBase.assumingMemoryBound(to: UInt8.self)), bm = SharedPointer(bBase.assumingMemoryBound(to: UInt8.self)),
            cm = SharedPointer(c)
        splittingF16Rows(m, tile: 32, grain: 2) { rows in
            wp_gemm_amx_split(
                Int64(rows.count), Int64(n), Int64(k), am.pointer + rows.lowerBound * lda * aElement, aHalf, Int64(lda), bm.pointer,
                bTransposed, Int64(ldb), cm.pointer + rows.lowerBound * ldc, Int64(ldc), accumulate ? 1 : 0)
        }
    }

    /// Whether a product with an F16 weight of this shape takes ``multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``:
    /// ``splitF16Products``, and at least 16 rows and 16 columns (a 16 x 16 tile is AMX's
    /// smallest; below that the padding costs more than the float products: a 4-channel
    /// convolution output ran 3.7× slower).
    static func splitSuits(m: Int, n: Int) -> Bool {
        m >= 16 && n >= 16 && splitF16Products
    }

    /// A linear layer's product with an F16 weight read as stored: `C[m, n] = X[m, k] W[n, k]ᵀ`
    /// (`CEngineKernels/gemm_f16.c`), split over the workers as
    /// ``multiplyF16Weight(m:n:k:a:lda:b:ldb:c:ldc:)`` is. Needs ``f16WeightProducts``.
    static func multiplyF16Linear(
        m: Int, n: Int, k: Int, x: UnsafePointer<Float>, ldx: Int, w: UnsafePointer<UInt16>, ldw: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let xm = SharedPointer(x), wm = SharedPointer(w), cm = SharedPointer(c)
        splittingF16Rows(m) { rows in
            wp_gemm_f16_weight_linear(
                Int64(rows.count), Int64(n), Int64(k), xm.pointer + rows.lowerBound * ldx, Int64(ldx), wm.pointer, Int64(ldw),
                cm.pointer + rows.lowerBound * ldc, Int64(ldc))
        }
    }

    /// The most rows (tokens, or pixels of a convolution) for which the engine reads an F16
    /// weight through the F16 products rather than converting it for `sgemm`: there the weight
    /// outweighs the data it meets and its conversion cost 1.1 to 1.5 times the F32 product's time
    /// (`Benchmarks/gemm-slabs.sh`); with more rows the conversion is at most a few per cent and
    /// oneDNN's blocking of the larger data does better than ours (`Docs/engine.md`, "F16 weights read as stored").
    static let f16WeightMaximumRows = 256

    /// `false` sends every float product to oneDNN: for tests and benchmarks that compare the two
    /// routes. Set it only while no product runs.
    nonisolated(unsafe) static var f32TilesEnabled = true

    /// Whether a single-threaded float product `C[m, n] (+)= A[m, k] B[k, n]` (no transposes)
    /// runs on our own tiles (`wp_gemm_f32_tiles`, the AVX-512 family) rather than oneDNN's
    /// `sgemm`: where oneDNN 2.6.3 falls well below its rate on the neighbouring shapes, measured
    /// one thread at a time (`Benchmarks/gemm-tiles.sh`): 64 columns with a depth of at most 640
    /// (a Winograd product at 32 x 32: 0.77–0.94× oneDNN's time), and 4096 or more columns with
    /// a depth and a row count of at most 480 (a pointwise convolution of 320 channels at 64 x 64
    /// and up: 0.42–0.97×). With at least 160 rows and a depth of at least 320, as measured;
    /// everywhere else oneDNN does as well or better (within a few per cent; with 640 rows or
    /// more and 4096 columns, 1.01–1.07×) or the shape was not measured.
    static func f32TilesSuit(m: Int, n: Int, k: Int) -> Bool {
        guard f32TilesEnabled, m >= 160, k >= 320, n % 64 == 0 else { return false }
        return (n == 64 && k <= 640) || (n >= 4096 && k <= 480 && m <= 480)
    }

    /// Rounds `rows` rows of `columns` floats (`ld` apart) to bfloat16 as the bf16 products do,
    /// into rows `targetLd` apart. The processor must have ``ComputeBackend/bf16Products``.
    static func roundToBF16(
        _ source: UnsafePointer<Float>, rows: Int, columns: Int, ld: Int, into target: UnsafeMutablePointer<UInt16>, targetLd: Int
    ) {
        let status = wp_round_bf16(source, Int64(rows), Int64(columns), Int64(ld), target, Int64(targetLd))
        precondition(status == 0, "bfloat16 rounding on a processor without AVX512_BF16")
    }

    /// Runs `body` with every matrix product this thread (and the ``Parallel`` workers it
    /// starts) computes in `precision`. The processor must have it
    /// (``ComputeBackend/supports(_:)``); the caller checks.
    static func withPrecision<R>(_ precision: ComputePrecision, _ body: () throws -> R) rethrows -> R {
        precondition(ComputeBackend.current.supports(precision), "\(precision.rawValue) products on a processor without them")
        return try Parallel.withProductPrecision(precision, body)
    }

    /// Runs `body` with every product on one thread, for code that spreads independent
    /// products over ``Parallel`` workers itself (two levels of threads would oversubscribe the
    /// cores). With a single worker nothing changes.
    static func withSingleThreadedCalls<R>(_ body: () throws -> R) rethrows -> R {
        if Parallel.workerCount == 1 { return try body() }
        wp_single_threaded_enter()
        defer { wp_single_threaded_leave() }
        return try body()
    }

    /// Threads one product uses outside single-threaded sections: `WEIGHTPACK_GEMM_THREADS`,
    /// else `OMP_NUM_THREADS`, else `OPENBLAS_NUM_THREADS` (which the benchmark scripts set),
    /// else every ``Parallel`` worker.
    static var threadCount: Int {
        get { Int(wp_gemm_threads(Int32(Parallel.workerCount))) }
        set { wp_set_gemm_threads(Int32(max(1, min(newValue, 256)))) }
    }
}

/// The arithmetic of the engine's matrix products (convolutions, linear layers, attention).
public enum ComputePrecision: String, Sendable, CaseIterable {
    /// Float operands, float sums: the reference.
    case f32
    /// Both operands rounded to bfloat16 (8 significant bits, nearest even), products summed
    /// in float: AVX512_BF16's dot products, twice the multiply-adds per instruction. Needs
    /// ``ComputeBackend/bf16Products``. Everything else (normalisation, softmax, the Winograd
    /// transforms, activations between layers) stays float.
    case bf16
    /// Products whose weight is stored as int8 blocks (`convert --dtype int8`: 32 values per
    /// scale along the input dimension) take their input quantised the same way, 32 values per
    /// scale, as it arrives, and sum each block's byte products exactly in integers
    /// (AVX512_VNNI), scaled and added in float: ggml's Q8_0 × Q8_0 arithmetic, what
    /// stable-diffusion.cpp runs for q8_0 weights. Such convolutions take im2col rather than
    /// Winograd. Products with other weights, and attention's, stay float. Needs
    /// ``ComputeBackend/int8Products``.
    case int8
}

extension ComputePrecision {
    /// The arithmetic `weightpack generate` and `verify` choose unless told otherwise: the
    /// precision the UNet's weights are stored in, where the processor computes in it.
    ///
    /// - ``int8`` where `unet` holds int8 block weights (``WeightProvider/hasInt8Weights``:
    ///   `convert --dtype int8` or `q8_0`, a q8_0 GGUF) and `int8Products` (by default
    ///   ``ComputeBackend/int8Products`` of this process), as stable-diffusion.cpp runs q8_0;
    /// - ``bf16`` where every matrix weight is stored as BF16
    ///   (``WeightProvider/hasOnlyBF16MatrixWeights``) and `bf16Products`: the weights are used
    ///   as stored, only the products' inputs are rounded;
    /// - ``f32`` otherwise. Float weights are never rounded to bfloat16 unless asked for by name.
    public static func automatic(
        for unet: UNet2DConditionModel, int8Products: Bool = ComputeBackend.current.int8Products,
        bf16Products: Bool = ComputeBackend.current.bf16Products
    ) -> ComputePrecision {
        if int8Products && unet.weights.hasInt8Weights { return .int8 }
        if bf16Products && unet.weights.hasOnlyBF16MatrixWeights { return .bf16 }
        return .f32
    }
}

/// The number of threads the engine's matrix products use.
public enum ComputeSettings {
    /// Threads used by matrix products; elementwise kernels use every active processor.
    /// (The name predates the move from OpenBLAS to oneDNN; kept for the callers.)
    public static var blasThreadCount: Int {
        get { GEMM.threadCount }
        set { GEMM.threadCount = max(1, newValue) }
    }
}
