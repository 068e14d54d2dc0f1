import Foundation
import Testing

@testable import DiffusionEngine

/// The compute back end chosen at run time (issue 12): a family the processor has, honouring
/// `WEIGHTPACK_KERNELS`, described in one line.
@Suite("compute back end")
struct ComputeBackendTests {
    @Test func selectsAFamilyTheProcessorHas() {
        let backend = ComputeBackend.current
        print("compute back end: \(backend)")
        #expect(backend.kernels <= backend.processorKernels)
        #expect(backend.description.contains(backend.kernels.rawValue))
        #expect(backend.description.contains("oneDNN"))
        let requested = ProcessInfo.processInfo.environment["WEIGHTPACK_KERNELS"] ?? ""
        if let wanted = ComputeBackend.Kernels(rawValue: requested) {
            // A forced family is used when the processor has it, else the processor's widest.
            #expect(backend.kernels == min(wanted, backend.processorKernels))
            #expect((backend.requestProblem != nil) == (wanted > backend.processorKernels))
        } else if requested.isEmpty {
            #expect(backend.kernels == backend.processorKernels && backend.requestProblem == nil)
        } else {
            #expect(backend.requestProblem != nil && backend.kernels == backend.processorKernels)
        }
    }

    /// The processor's family as /proc/cpuinfo lists it (Linux), independently of CPUID code.
    @Test func processorFamilyMatchesCPUInfo() throws {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return }
        let flags = Set(line.split(separator: " ").map(String.init))
        let expected: ComputeBackend.Kernels =
            flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"])
            ? .avx512
            : flags.isSuperset(of: ["avx2", "fma", "f16c"]) ? .avx2 : .baseline
        #expect(ComputeBackend.current.processorKernels == expected)
    }
}
