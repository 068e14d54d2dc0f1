#if canImport(Glibc)
import Glibc
#endif

/// The vector instructions the engine's kernels were compiled to use (Package.swift picks the
/// build machine's own unless `WEIGHTPACK_TARGET_CPU` says otherwise), and the check that the
/// processor running the binary has them. This file is compiled for baseline x86-64, so the
/// check itself runs anywhere.
enum ProcessorCheck {
    /// A name for users and the `/proc/cpuinfo` flags the build assumed; `nil` for a baseline
    /// (or custom) build, which is not checked.
    static var engineRequirement: (name: String, flags: [String])? {
        #if WEIGHTPACK_ENGINE_AVX512
        return ("AVX-512", ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2", "fma", "f16c", "bmi2"])
        #elseif WEIGHTPACK_ENGINE_AVX2
        return ("AVX2 and FMA", ["avx2", "fma", "f16c", "bmi2"])
        #else
        return nil
        #endif
    }

    /// The flags of the first processor in `/proc/cpuinfo`, or `nil` where it cannot be read.
    static func processorFlags() -> Set<String>? {
        guard let file = fopen("/proc/cpuinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            guard let line else { break }
            let text = String(cString: line)
            guard text.hasPrefix("flags") else { continue }
            let values = text.split(separator: ":", maxSplits: 1).last ?? ""
            return Set(values.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init))
        }
        return nil
    }

    /// The one-line reason this processor cannot run the engine, or `nil` when it can (or the
    /// flags cannot be read, in which case nothing is assumed).
    static func problem(flags: Set<String>? = processorFlags()) -> String? {
        guard let (name, needed) = engineRequirement, let flags else { return nil }
        let missing = needed.filter { !flags.contains($0) }
        guard !missing.isEmpty else { return nil }
        return "this weightpack was compiled for processors with \(name) (the machine it was built on) "
            + "but this one lacks \(missing.joined(separator: ", ")); rebuild it here, or with "
            + "WEIGHTPACK_TARGET_CPU=x86-64 for a binary that runs on any x86-64 processor"
    }
}

extension WeightPackCommand {
    /// Exits with status 69 and one line on stderr when the processor lacks the instructions
    /// the build assumed, before any of them can run. `main.swift` calls this first.
    public static func checkProcessor() {
        guard let problem = ProcessorCheck.problem() else { return }
        printError("weightpack: error: \(problem)")
        Glibc.exit(ExitStatus.unavailable.rawValue)
    }
}
