import CEngineKernels
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
    /// The benchmarks' profiler (`profile.c`): off, nothing is recorded; on, each product shape
    /// and fused-attention shape gets its calls and time; past 1024 distinct shapes the rest are
    /// summed in one record of kind -1 instead of growing the table. One test, so the table is
    /// not shared with another test's profiling (other tests' products may add records).
    @Test func profilerRecordsShapesAndStaysBounded() {
        func product(_ m: Int, _ n: Int, _ k: Int) {
            let a = [Float](repeating: 1, count: m * k), b = [Float](repeating: 1, count: k * n)
            var c = [Float](repeating: 0, count: m * n)
            GEMM.multiply(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
            #expect(c.allSatisfy { $0 == Float(k) })
        }
        func records() -> [wp_profile_record] {
            var all = [wp_profile_record](repeating: wp_profile_record(), count: 4096)
            let count = Int(all.withUnsafeMutableBufferPointer { wp_profile_read($0.baseAddress, Int64($0.count)) })
            return Array(all.prefix(count))
        }
        wp_profile_stop()
        product(13, 11, 7)
        wp_profile_start()
        #expect(records().isEmpty || records().allSatisfy { !($0.m == 13 && $0.n == 11 && $0.k == 7) })
        product(13, 11, 7)
        product(13, 11, 7)
        let mine = records().filter { $0.kind == 0 && $0.m == 13 && $0.n == 11 && $0.k == 7 && $0.flags == 0 }
        #expect(mine.count == 1 && mine.first?.calls == 2 && (mine.first?.seconds ?? 0) > 0)
        for i in 0..<1100 { product(1, 1, 1000 + i) }
        wp_profile_stop()
        let all = records()
        #expect(all.count <= 1025)
        #expect((all.first { $0.kind == -1 }?.calls ?? 0) >= 1100 - 1024)
        product(13, 11, 7)
        #expect(records().first { $0.m == 13 && $0.n == 11 && $0.k == 7 }?.calls == 2, "recorded while off")
    }
}
