#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Euler (Karras et al. algorithm 2 without churn) and Euler ancestral, over sigmas interpolated
/// from the training schedule.
/// Matches diffusers' EulerDiscreteScheduler, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_euler_discrete.py
/// and EulerAncestralDiscreteScheduler, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_euler_ancestral_discrete.py
final class EulerDiscreteScheduler: Scheduler {
    let timesteps: [Float]
    let initialNoiseSigma: Float
    /// `steps + 1` sigmas, the last 0.
    let sigmas: [Float]
    private let prediction: PredictionType
    private let ancestral: Bool

    init(_ c: SchedulerConfiguration, schedule: NoiseSchedule, steps: Int, ancestral: Bool) throws(EngineError) {
        let train = schedule.trainTimesteps
        let spacing = c.timestepSpacing ?? .linspace
        var times: [Double]
        switch spacing {
        case .linspace:
            // Euler builds the float32 linspace; Euler ancestral a float64 one.
            times = numpyLinspace(0, Double(train - 1), steps).reversed().map { ancestral ? $0 : Double(Float($0)) }
        case .leading:
            let ratio = train / steps
            times = (0..<steps).reversed().map { Double($0 * ratio + (c.stepsOffset ?? 0)) }
        case .trailing:
            times = numpyArangeDown(Double(train), 0, -Double(train) / Double(steps)).map { roundHalfEven($0) - 1 }
        }
        let trainSigmas = schedule.sigmas
        var sigmas = times.map { interpolate($0, trainSigmas) }
        if c.useKarrasSigmas == true && !ancestral {
            sigmas = karrasSigmas(minimum: sigmas.last!, maximum: sigmas.first!, steps: steps)
            let logSigmas = trainSigmas.map { Double(Float(log(Double($0)))) }
            times = sigmas.map { sigmaToTimestep($0, logSigmas: logSigmas) }
        }
        self.sigmas = sigmas.map { Float($0) } + [0]
        timesteps = times.map { Float($0) }
        let largest = self.sigmas.max() ?? 1
        initialNoiseSigma = (spacing == .linspace || spacing == .trailing) ? largest : (largest * largest + 1).squareRoot()
        prediction = c.predictionType ?? .epsilon
        self.ancestral = ancestral
        if let f = c.finalSigmasType, f != "zero" { throw EngineError(.invalidConfiguration, "final_sigmas_type '\(f)' is not supported by Euler") }
    }

    func inputScale(at index: Int) -> Float {
        let s = sigmas[index]
        return 1 / (s * s + 1).squareRoot()
    }

    func step(_ output: [Float], at index: Int, sample: [Float], generator: inout TorchGenerator) -> [Float] {
        let sigma = sigmas[index], next = sigmas[index + 1]
        var target = next, up: Float = 0
        if ancestral {
            up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).squareRoot()
            target = (next * next - up * up).squareRoot()
        }
        let dt = target - sigma
        let vScale = -sigma / (sigma * sigma + 1).squareRoot(), vSample = 1 / (sigma * sigma + 1)
        var result = [Float](repeating: 0, count: sample.count)
        for i in 0..<sample.count {
            let x = sample[i], m = output[i]
            let original: Float
            switch prediction {
            case .epsilon: original = x - sigma * m
            case .vPrediction: original = m * vScale + x * vSample
            case .sample: original = m
            }
            let derivative = (x - original) / sigma
            result[i] = x + derivative * dt
        }
        if ancestral {
            let noise = generator.normalFloats(sample.count)
            for i in 0..<result.count { result[i] += noise[i] * up }
        }
        return result
    }
}

/// numpy's `interp(x, arange(n), values)`.
func interpolate(_ x: Double, _ values: [Float]) -> Double {
    if x <= 0 { return Double(values[0]) }
    let last = values.count - 1
    if x >= Double(last) { return Double(values[last]) }
    let j = Int(x.rounded(.down))
    let a = Double(values[j]), b = Double(values[j + 1])
    return (b - a) * (x - Double(j)) + a
}

/// Karras et al.'s schedule: `(max^(1/7) + ramp (min^(1/7) - max^(1/7)))^7` over `steps` points.
/// Matches diffusers' _convert_to_karras, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_euler_discrete.py
func karrasSigmas(minimum: Double, maximum: Double, steps: Int) -> [Double] {
    let rho = 7.0
    let minInverse = pow(minimum, 1 / rho), maxInverse = pow(maximum, 1 / rho)
    return numpyLinspace(0, 1, steps).map { pow(maxInverse + $0 * (minInverse - maxInverse), rho) }
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma brackets `sigma`.
func sigmaToTimestep(_ sigma: Double, logSigmas: [Double]) -> Double {
    let logSigma = log(max(sigma, 1e-10))
    // The last index whose log-sigma is at most logSigma, clipped to leave a successor.
    var low = 0
    for (i, l) in logSigmas.enumerated() where logSigma - l >= 0 { low = i }
    low = min(low, logSigmas.count - 2)
    let lo = logSigmas[low], hi = logSigmas[low + 1]
    let w = min(max((lo - logSigma) / (lo - hi), 0), 1)
    return (1 - w) * Double(low) + w * Double(low + 1)
}
