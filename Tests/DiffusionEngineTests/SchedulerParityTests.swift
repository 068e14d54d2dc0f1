import CheckpointFormats
import Foundation
import TensorCore
import Testing

@testable import DiffusionEngine

/// Scheduler options against diffusers (`Fixtures/golden/schedulers/`, made by
/// `make_engine_goldens.py` from SD 1.x's scheduler configuration): Karras sigmas for Euler and
/// DPM-Solver++ 2M, and the `leading`, `linspace` and `trailing` spacings of every sampler, as
/// timesteps and sigmas for 1, 6, 7, 25 and 50 steps, and as 6-step runs on the tiny SD 1.x model.
@Suite("Scheduler options, parity with diffusers")
struct SchedulerParityTests {
    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var kind: SchedulerKind
        var spacing: TimestepSpacing?
        var karras = false
        var description: String { name }

        var configuration: SchedulerConfiguration {
            var c = SchedulerConfiguration.sd15
            c.timestepSpacing = spacing
            if karras { c.useKarrasSigmas = true }
            return c
        }
    }

    /// The golden's configurations: the class default spacing is `nil` here as in diffusers'
    /// `from_config` (the SD 1.x configuration names no spacing).
    static let table: [Case] = [
        Case(name: "ddim.leading", kind: .ddim, spacing: nil),
        Case(name: "ddim.linspace", kind: .ddim, spacing: .linspace),
        Case(name: "ddim.trailing", kind: .ddim, spacing: .trailing),
        Case(name: "pndm.leading", kind: .pndm, spacing: nil),
        Case(name: "pndm.linspace", kind: .pndm, spacing: .linspace),
        Case(name: "pndm.trailing", kind: .pndm, spacing: .trailing),
        Case(name: "euler.leading", kind: .euler, spacing: .leading),
        Case(name: "euler.linspace", kind: .euler, spacing: nil),
        Case(name: "euler.trailing", kind: .euler, spacing: .trailing),
        Case(name: "euler.karras_leading", kind: .euler, spacing: .leading, karras: true),
        Case(name: "euler.karras_linspace", kind: .euler, spacing: nil, karras: true),
        Case(name: "euler.karras_trailing", kind: .euler, spacing: .trailing, karras: true),
        Case(name: "euler_ancestral.leading", kind: .eulerAncestral, spacing: .leading),
        Case(name: "euler_ancestral.linspace", kind: .eulerAncestral, spacing: nil),
        Case(name: "euler_ancestral.trailing", kind: .eulerAncestral, spacing: .trailing),
        Case(name: "dpmpp_2m.leading", kind: .dpmSolverMultistep, spacing: .leading),
        Case(name: "dpmpp_2m.linspace", kind: .dpmSolverMultistep, spacing: nil),
        Case(name: "dpmpp_2m.trailing", kind: .dpmSolverMultistep, spacing: .trailing),
        Case(name: "dpmpp_2m.karras", kind: .dpmSolverMultistep, spacing: nil, karras: true),
    ]
    static let stepCounts = [1, 6, 7, 25, 50]

    static func sigmas(_ s: any Scheduler) -> [Float]? {
        if let e = s as? EulerDiscreteScheduler { return e.sigmas }
        if let d = s as? DPMSolverMultistepScheduler { return d.sigmas }
        return nil
    }

    @Test("the golden holds exactly the table's cases")
    func tableIsComplete() throws {
        let golden = try Fixture.safetensors("schedulers/timesteps.safetensors")
        var expected = Set<String>()
        for c in Self.table {
            for n in Self.stepCounts {
                expected.insert("\(c.name).s\(n).timesteps")
                expected.insert("\(c.name).s\(n).init_noise_sigma")
                if c.kind != .ddim && c.kind != .pndm { expected.insert("\(c.name).s\(n).sigmas") }
            }
        }
        #expect(Set(golden.tensors.map(\.name)) == expected)
    }

    /// Euler's Karras timesteps are fractional: diffusers interpolates them between the training
    /// log-sigmas, which numpy computes with its own SIMD float32 `log` (on the golden's machine
    /// 189 of the 1000 differ by one ulp from a correctly rounded log, which the engine uses;
    /// diffusers' code fed correctly rounded logs gives the engine's values). Those timesteps may
    /// differ by an ulp or two and are compared within 1e-3; every other timestep exactly.
    static let fractionalTimestepTolerance: Float = 1e-3

    /// Compares timesteps: exactly, or within ``fractionalTimestepTolerance`` for Euler's Karras
    /// schedule. Returns the largest difference.
    @discardableResult
    static func expectTimesteps(
        _ mine: [Float], _ expected: [Float], fractional: Bool, _ label: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Float {
        guard fractional else {
            #expect(mine == expected, "\(label): timesteps \(mine), diffusers \(expected)", sourceLocation: sourceLocation)
            return mine == expected ? 0 : .infinity
        }
        #expect(mine.count == expected.count, "\(label): \(mine.count) timesteps, diffusers \(expected.count)", sourceLocation: sourceLocation)
        let worst = zip(mine, expected).map { abs($0 - $1) }.max() ?? 0
        #expect(worst <= fractionalTimestepTolerance, "\(label): timesteps \(mine), diffusers \(expected)", sourceLocation: sourceLocation)
        return worst
    }

    @Test("timesteps (exact), sigmas and initial noise sigma", arguments: table)
    func timesteps(_ c: Case) throws {
        let golden = try Fixture.safetensors("schedulers/timesteps.safetensors")
        var worstSigma: Float = 0, worstTimestep: Float = 0, differing = 0, total = 0
        for n in Self.stepCounts {
            let key = "\(c.name).s\(n)"
            let s = try SchedulerFactory.make(c.kind, configuration: c.configuration, steps: n)
            let expected = try golden.floats("\(key).timesteps")
            let fractional = c.kind == .euler && c.karras
            worstTimestep = max(worstTimestep, Self.expectTimesteps(s.timesteps, expected, fractional: fractional, key))
            differing += zip(s.timesteps, expected).filter { $0 != $1 }.count
            total += expected.count
            let sigma = try golden.floats("\(key).init_noise_sigma")[0]
            #expect(abs(s.initialNoiseSigma - sigma) <= 1e-6 * max(1, sigma), "\(key): init_noise_sigma \(s.initialNoiseSigma), diffusers \(sigma)")
            if golden.descriptor(named: "\(key).sigmas") != nil {
                let mine = try #require(Self.sigmas(s), "\(key): no sigmas")
                let reference = try golden.floats("\(key).sigmas")
                #expect(mine.count == reference.count, "\(key): \(mine.count) sigmas, diffusers \(reference.count)")
                for (a, b) in zip(mine, reference) {
                    let relative = abs(a - b) / max(b, 1e-3)
                    worstSigma = max(worstSigma, relative)
                    #expect(relative <= 1e-6, "\(key): sigma \(a), diffusers \(b)")
                }
            }
        }
        print(
            "scheduler \(c.name) (\(Self.stepCounts) steps): \(total - differing) of \(total) timesteps bit-exact, largest difference \(worstTimestep); worst sigma relative error \(worstSigma)"
        )
    }

    struct Run: CustomStringConvertible, Sendable {
        var file: String
        var kind: SchedulerKind
        var spacing: TimestepSpacing?
        var karras = false
        var calls = 6
        var description: String { file }
    }

    static let runs: [Run] = [
        Run(file: "dpmpp_2m_karras", kind: .dpmSolverMultistep, spacing: nil, karras: true),
        Run(file: "euler_karras", kind: .euler, spacing: nil, karras: true),
        Run(file: "euler_trailing", kind: .euler, spacing: .trailing),
        Run(file: "ddim_linspace", kind: .ddim, spacing: .linspace),
        Run(file: "ddim_trailing", kind: .ddim, spacing: .trailing),
        Run(file: "pndm_linspace", kind: .pndm, spacing: .linspace, calls: 7),
        Run(file: "pndm_trailing", kind: .pndm, spacing: .trailing, calls: 7),
    ]

    @Test("six steps on the tiny SD 1.x model from given latents", arguments: runs)
    func sixSteps(_ run: Run) throws {
        let golden = try Fixture.safetensors("schedulers/\(run.file).safetensors")
        let pipeline = try PipelineParityTests.pipeline()
        if run.karras { pipeline.schedulerConfiguration.useKarrasSigmas = true }
        var request = try sixStepRequest(golden, kind: run.kind, size: 64)
        request.timestepSpacing = run.spacing
        let (output, steps) = try runCollectingSteps(pipeline, request)
        #expect(output.conditioning.tokens.conditional == (try golden.int64s("prompt_ids")))
        let timesteps = try golden.floats("timesteps")
        #expect(timesteps.count == run.calls)
        Self.expectTimesteps(output.timesteps, timesteps, fractional: run.kind == .euler && run.karras, run.file)
        if golden.descriptor(named: "sigmas") != nil {
            var c = pipeline.schedulerConfiguration
            c.timestepSpacing = run.spacing
            let s = try SchedulerFactory.make(run.kind, configuration: c, steps: 6)
            expectClose(try #require(Self.sigmas(s)), try golden.floats("sigmas"), shape: [7], tolerance: 1e-5, "\(run.file) sigmas")
        }
        let worst = try compareSteps(steps, golden: golden, label: run.file)
        var summary =
            "\(run.file): worst step latent max abs \(worst.worstMaxAbsolute) (\(worst.worstRelative) of the latents' scale), worst SNR \(worst.worstSNR) dB"
        if golden.descriptor(named: "image") != nil {
            let image = ParityMetrics(reference: try golden.floats("image"), candidate: output.image.scalars, peak: 1)
            summary += "; image PSNR \(image.psnr) dB, max abs \(image.maxAbsoluteError)"
            #expect(image.psnr >= 40, "\(run.file) image PSNR \(image.psnr) dB")
        }
        print(summary)
    }
}
