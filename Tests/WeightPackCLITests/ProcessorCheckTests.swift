import Testing

@testable import WeightPackCLI

/// The start-up check that the processor has the vector instructions the engine was built for
/// (Package.swift picks them from the build machine unless WEIGHTPACK_TARGET_CPU says otherwise).
@Suite("processor check")
struct ProcessorCheckTests {
    @Test func thisMachineRunsThisBuild() {
        // The suite runs on the machine the tests were built on (or one with its flags).
        #expect(ProcessorCheck.problem() == nil)
        if ProcessorCheck.engineRequirement != nil { #expect(ProcessorCheck.processorFlags() != nil) }
    }

    @Test func aProcessorWithoutTheFlagsIsNamedInOneLine() throws {
        let flags: Set<String> = ["fpu", "sse2", "ssse3", "sse4_2", "popcnt"]
        guard let (name, needed) = ProcessorCheck.engineRequirement else {
            // A baseline build assumes nothing, so nothing is refused.
            #expect(ProcessorCheck.problem(flags: flags) == nil)
            return
        }
        let problem = try #require(ProcessorCheck.problem(flags: flags))
        #expect(problem.contains(name) && problem.contains(needed[0]) && problem.contains("WEIGHTPACK_TARGET_CPU=x86-64"))
        #expect(!problem.contains("\n"))
        // All the flags (and more) pass; one missing is named alone.
        #expect(ProcessorCheck.problem(flags: Set(needed).union(flags)) == nil)
        let oneShort = Set(needed.dropLast())
        #expect(ProcessorCheck.problem(flags: oneShort)?.contains("lacks \(needed.last!);") == true)
        // Unreadable flags: nothing is assumed.
        #expect(ProcessorCheck.problem(flags: nil) == nil)
    }
}
