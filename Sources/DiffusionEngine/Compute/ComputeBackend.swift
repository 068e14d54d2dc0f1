import CEngineKernels

/// What the engine computes with on this machine: the kernel family chosen at run time from
/// CPUID feature bits (or forced by `WEIGHTPACK_KERNELS`), and the matrix-product library.
///
/// One binary serves every x86-64 machine: the C kernels (`Sources/CEngineKernels`) are
/// compiled once per family and the widest the processor has is used; oneDNN, which computes
/// every matrix product and convolution lowered to one, dispatches the same way (by feature
/// bits, never by the processor's model name). `WEIGHTPACK_KERNELS=avx512|avx2|baseline`
/// narrows the choice, for tests and CI; a family the processor lacks falls back to its widest.
///
/// `weightpack --version --verbose` prints ``description``.
public struct ComputeBackend: Sendable, CustomStringConvertible {
    /// A kernel family, widest last.
    public enum Kernels: String, Sendable, Comparable, CaseIterable {
        case baseline, avx2, avx512

        init(_ value: wp_kernels) {
            switch value {
            case WP_KERNELS_AVX512: self = .avx512
            case WP_KERNELS_AVX2: self = .avx2
            default: self = .baseline
            }
        }

        /// How the family reads in messages.
        public var displayName: String {
            switch self {
            case .baseline: "baseline x86-64"
            case .avx2: "AVX2+FMA"
            case .avx512: "AVX-512"
            }
        }

        public static func < (a: Kernels, b: Kernels) -> Bool { a.order < b.order }
        private var order: Int { self == .baseline ? 0 : self == .avx2 ? 1 : 2 }
    }

    /// The family in use.
    public let kernels: Kernels
    /// The widest family the processor supports.
    public let processorKernels: Kernels
    /// `WEIGHTPACK_KERNELS` as set (nil when unset or empty).
    public let requested: String?
    /// A sentence about `WEIGHTPACK_KERNELS` when it could not be honoured (unknown value, or
    /// a family the processor lacks); nil otherwise. The command line may print it as a warning.
    public let requestProblem: String?
    /// The matrix-product library and its version, e.g. `oneDNN 2.6.3`.
    public let library: String
    /// The instruction set the library dispatches to, e.g. `AVX2`.
    public let libraryInstructionSet: String

    /// Whether ``ComputePrecision/bf16`` products can run: the AVX-512 family is in use and the
    /// processor has AVX512_BF16 (oneDNN's `dnnl_gemm_bf16bf16f32` on its bf16 kernels).
    public let bf16Products: Bool

    /// Whether ``ComputePrecision/int8`` products can run: the AVX-512 family is in use and the
    /// processor has AVX512_VNNI (the engine's own kernels, `CEngineKernels/q8.c`). Without VNNI
    /// the byte products would saturate in 16 bits (`VPMADDUBSW`), so there is no fallback.
    public let int8Products: Bool
    /// Whether products of our own read F16 weights as stored (`CEngineKernels/gemm_f16.c`, the
    /// AVX-512 family) where a weight meets few rows, instead of converting it for `sgemm`
    /// (``GEMM/f16WeightMaximumRows``), and run the float products of the shapes where `sgemm`
    /// is slow on the same tiles (``GEMM/f32TilesSuit(m:n:k:)``).
    public let f16WeightProducts: Bool
    /// Whether products with an F16 weight run on AMX tiles in split bfloat16
    /// (`CEngineKernels/gemm_amx.c`, ``GEMM/multiplySplit(m:n:k:a:lda:b:ldb:c:ldc:accumulate:)``):
    /// the processor has AMX-BF16 that Linux lets this process use, the AVX-512 family is selected,
    /// and `WEIGHTPACK_AMX` is not `0`.
    public let splitF16Products: Bool
    /// Whether the processor has the AMX tiles ``splitF16Products`` needs (whether or not
    /// `WEIGHTPACK_AMX=0` turned them off).
    public let amxTiles: Bool

    /// Whether `precision` can run here.
    public func supports(_ precision: ComputePrecision) -> Bool {
        switch precision {
        case .f32: true
        case .bf16: bf16Products
        case .int8: int8Products
        }
    }

    /// The back end of this process (read once).
    public static let current = ComputeBackend()

    private init() {
        wp_backend_init()
        kernels = Kernels(wp_selected_kernels())
        processorKernels = Kernels(wp_processor_kernels())
        let text = String(cString: wp_request_text())
        requested = text.isEmpty ? nil : text
        switch wp_request() {
        case WP_REQUEST_UNKNOWN:
            requestProblem = "WEIGHTPACK_KERNELS=\(text) is not one of avx512, avx2, baseline; using \(processorKernels.rawValue)"
        case WP_REQUEST_CLAMPED:
            requestProblem = "WEIGHTPACK_KERNELS=\(text) asks for kernels this processor lacks; using \(processorKernels.rawValue)"
        default:
            requestProblem = nil
        }
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        wp_dnnl_version(&major, &minor, &patch)
        library = "oneDNN \(major).\(minor).\(patch)"
        libraryInstructionSet = String(cString: wp_dnnl_isa_name())
        bf16Products = wp_bf16_products() != 0
        int8Products = wp_q8_products() != 0
        f16WeightProducts = wp_f16_weight_products() != 0
        splitF16Products = wp_amx_products() != 0
        amxTiles = wp_amx_processor() != 0
    }

    /// One line, e.g. `kernels avx2 (AVX2+FMA; processor avx2), products oneDNN 2.6.3 (AVX2)`.
    public var description: String {
        var s = "kernels \(kernels.rawValue) (\(kernels.displayName); processor \(processorKernels.rawValue)"
        if let requested, requestProblem == nil { s += "; forced by WEIGHTPACK_KERNELS=\(requested)" }
        s += "), products \(library) (\(libraryInstructionSet)"
        if bf16Products { s += "; bf16 compute available" }
        if int8Products { s += "; int8 compute available" }
        if f16WeightProducts { s += "; F16 weights read as stored; our float tiles where sgemm is slow" }
        if splitF16Products {
            s += "; F16 weights on AMX tiles in split bfloat16"
        } else if amxTiles {
            s += "; AMX tiles off (WEIGHTPACK_AMX=0)"
        }
        s += "), attention \(kernels == .avx512 ? "fused kernels (in blocks of keys that fit in L2)" : "products and softmax")"
        return s
    }
}
