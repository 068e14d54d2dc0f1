#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// DPM-Solver++ multistep of order 2 (midpoint), with the first-order final step diffusers takes
/// for fewer than 15 steps, optionally over Karras sigmas.
/// Matches diffusers' DPMSolverMultistepScheduler, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_dpmsolver_multistep.py
final class DPMSolverMultistepScheduler: Scheduler {
    let timesteps: [Float]
    var initialNoiseSigma: Float { 1 }
    let sigmas: [Float]
    private let prediction: PredictionType
    private let order: Int
    private var previousPrediction: [Float]? = nil
    private var lowerOrderCount = 0

    init(_ c: SchedulerConfiguration, schedule: NoiseSchedule, steps: Int) throws(EngineError) {
        let train = schedule.trainTimesteps
        if let a = c.algorithmType, a != "dpmsolver++" {
            throw EngineError(.invalidConfiguration, "DPM-Solver algorithm_type '\(a)' is not supported (only dpmsolver++)")
        }
        if let s = c.solverType, s != "midpoint" {
            throw EngineError(.invalidConfiguration, "DPM-Solver solver_type '\(s)' is not supported (only midpoint)")
        }
        if let f = c.finalSigmasType, f != "zero" { throw EngineError(.invalidConfiguration, "final_sigmas_type '\(f)' is not supported") }
        order = c.solverOrder ?? 2
        guard order == 1 || order == 2 else { throw EngineError(.invalidConfiguration, "DPM-Solver order \(order) is not supported (1 or 2)") }
        var times: [Double]
        switch c.timestepSpacing ?? .linspace {
        case .linspace:
            times = Array(numpyLinspace(0, Double(train - 1), steps + 1).map(roundHalfEven).reversed().dropLast())
        case .leading:
            let ratio = train / (steps + 1)
            times = Array((0...steps).map { Double($0 * ratio) }.reversed().dropLast()).map { $0 + Double(c.stepsOffset ?? 0) }
        case .trailing:
            times = numpyArangeDown(Double(train), 0, -Double(train) / Double(steps)).map { roundHalfEven($0) - 1 }
        }
        let trainSigmas = schedule.sigmas
        var sigmas: [Double]
        if c.useKarrasSigmas == true {
            let logSigmas = trainSigmas.map { Double(Float(log(Double($0)))) }
            sigmas = karrasSigmas(minimum: Double(trainSigmas.first!), maximum: Double(trainSigmas.last!), steps: steps)
            times = sigmas.map { roundHalfEven(sigmaToTimestep($0, logSigmas: logSigmas)) }
        } else {
            sigmas = times.map { interpolate($0, trainSigmas) }
        }
        self.sigmas = sigmas.map { Float($0) } + [0]
        timesteps = times.map { Float($0) }
        prediction = c.predictionType ?? .epsilon
    }

    func inputScale(at index: Int) -> Float { 1 }

    /// `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma alpha_t`, `lambda = log alpha - log sigma`.
    private func coefficients(_ sigma: Float) -> (alpha: Double, sigma: Double, lambda: Double) {
        let s = Double(sigma)
        let alpha = 1 / (s * s + 1).squareRoot()
        let sigmaT = s * alpha
        return (alpha, sigmaT, log(alpha) - log(sigmaT))
    }

    func step(_ output: [Float], at index: Int, sample: [Float], generator: inout TorchGenerator) -> [Float] {
        let count = timesteps.count
        let lastStep = index == count - 1
        let useFirstOrder = order == 1 || lowerOrderCount < 1 || lastStep
        // The last step is first order: diffusers' lower_order_final with final_sigmas_type 'zero'.
        let s0 = coefficients(sigmas[index])
        // The data prediction x0.
        let x0: [Float] = (0..<sample.count).map { i in
            switch prediction {
            case .epsilon: return Float((Double(sample[i]) - s0.sigma * Double(output[i])) / s0.alpha)
            case .vPrediction: return Float(s0.alpha * Double(sample[i]) - s0.sigma * Double(output[i]))
            case .sample: return output[i]
            }
        }
        let t = coefficients(sigmas[index + 1])
        let h = t.lambda - s0.lambda
        let ratio = Double(sigmas[index + 1]) == 0 ? 0 : t.sigma / s0.sigma
        let decay = t.alpha * (exp(-h) - 1)
        var result = [Float](repeating: 0, count: sample.count)
        if useFirstOrder || previousPrediction == nil {
            for i in 0..<sample.count { result[i] = Float(ratio * Double(sample[i]) - decay * Double(x0[i])) }
        } else {
            let previous = previousPrediction!
            let s1 = coefficients(sigmas[index - 1])
            let r0 = (s0.lambda - s1.lambda) / h
            for i in 0..<sample.count {
                let d0 = Double(x0[i]), d1 = (1 / r0) * (Double(x0[i]) - Double(previous[i]))
                result[i] = Float(ratio * Double(sample[i]) - decay * d0 - 0.5 * decay * d1)
            }
        }
        previousPrediction = x0
        if lowerOrderCount < order { lowerOrderCount += 1 }
        return result
    }
}
