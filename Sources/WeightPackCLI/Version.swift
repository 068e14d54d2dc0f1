import ArgumentParser
import DiffusionEngine

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the version and, with --verbose, the compute back end this machine gets.",
        discussion: """
            --verbose names the kernel family chosen from the processor's CPUID feature bits \
            (avx512, avx2 or baseline; WEIGHTPACK_KERNELS can force a narrower one) and the \
            library doing the matrix products, so a slow machine can be told from a slow model, \
            says "bf16 compute available" and "int8 compute available" where generate \
            --compute bf16 and --compute int8 can run, whether F16 weights are read as stored \
            (AVX-512 family) or converted for the library's products, whether the float products \
            of the shapes where the library is slow run on our own tiles (AVX-512 family, "our \
            float tiles where sgemm is slow"), and how attention runs: fused kernels \
            (AVX-512 family, for heads whose keys and values fit in the L2 cache) or the \
            library's products around a softmax.
            """)

    @Flag(help: "Also print the compute back end (kernel family, matrix-product library).")
    var verbose = false

    func run() throws {
        print("weightpack \(WeightPackCommand.version)")
        guard verbose else { return }
        let backend = ComputeBackend.current
        print("compute: \(backend.description)")
        if let problem = backend.requestProblem { printError("weightpack: warning: \(problem)") }
    }
}
