/// PNDM as Stable Diffusion runs it: pseudo linear multistep (PLMS) with `skip_prk_steps`, whose
/// second iteration repeats the first timestep to average two noise predictions.
/// Matches diffusers' PNDMScheduler.step_plms, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_pndm.py
final class PNDMScheduler: Scheduler {
    let timesteps: [Float]
    var initialNoiseSigma: Float { 1 }
    private let integerTimesteps: [Int]
    private let alphasCumprod: [Float]
    private let finalAlphaCumprod: Float
    private let stride: Int
    private let prediction: PredictionType
    private var history: [[Float]] = []
    private var firstSample: [Float] = []
    private var counter = 0

    init(_ c: SchedulerConfiguration, schedule: NoiseSchedule, steps: Int) throws(EngineError) {
        let train = schedule.trainTimesteps
        // Ascending timesteps, then PLMS order: all but the last, the second-to-last again, the last; reversed.
        let ascending: [Int]
        switch c.timestepSpacing ?? .leading {
        case .leading: ascending = (0..<steps).map { $0 * (train / steps) + (c.stepsOffset ?? 0) }
        case .linspace: ascending = numpyLinspace(0, Double(train - 1), steps).map { Int(roundHalfEven($0)) }
        case .trailing: ascending = numpyArangeDown(Double(train), 0, -Double(train) / Double(steps)).reversed().map { Int(roundHalfEven($0)) - 1 }
        }
        var plms = Array(ascending.dropLast())
        if ascending.count >= 2 { plms.append(ascending[ascending.count - 2]) }
        plms.append(ascending.last!)
        integerTimesteps = plms.reversed()
        timesteps = integerTimesteps.map(Float.init)
        alphasCumprod = schedule.alphasCumprod
        finalAlphaCumprod = (c.setAlphaToOne ?? false) ? 1 : schedule.alphasCumprod[0]
        stride = train / steps
        prediction = c.predictionType ?? .epsilon
        guard prediction != .sample else { throw EngineError(.invalidConfiguration, "PNDM does not support prediction_type 'sample'") }
        guard integerTimesteps.allSatisfy({ (0..<train).contains($0) }) else {
            throw EngineError(.invalidConfiguration, "timesteps \(integerTimesteps) fall outside the training range")
        }
    }

    func inputScale(at index: Int) -> Float { 1 }

    func step(_ output: [Float], at index: Int, sample: [Float], generator: inout TorchGenerator) -> [Float] {
        var t = integerTimesteps[index]
        var previous = t - stride
        var sample = sample
        if counter != 1 {
            history = Array(history.suffix(3))
            history.append(output)
        } else {
            previous = t
            t += stride
        }
        var combined: [Float]
        let n = output.count
        if history.count == 1 && counter == 0 {
            combined = output
            firstSample = sample
        } else if history.count == 1 && counter == 1 {
            combined = (0..<n).map { (output[$0] + history[0][$0]) / 2 }
            sample = firstSample
            firstSample = []
        } else if history.count == 2 {
            let e = history
            combined = (0..<n).map { (3 * e[1][$0] - e[0][$0]) / 2 }
        } else if history.count == 3 {
            let e = history
            combined = (0..<n).map { (23 * e[2][$0] - 16 * e[1][$0] + 5 * e[0][$0]) / 12 }
        } else {
            let e = history
            combined = (0..<n).map { (55 * e[3][$0] - 59 * e[2][$0] + 37 * e[1][$0] - 9 * e[0][$0]) / 24 }
        }
        counter += 1
        return previousSample(sample, t, previous, combined)
    }

    /// Formula (9) of the PNDM paper.
    private func previousSample(_ sample: [Float], _ t: Int, _ previous: Int, _ output: [Float]) -> [Float] {
        let alpha = alphasCumprod[t]
        let alphaPrevious = previous >= 0 ? alphasCumprod[previous] : finalAlphaCumprod
        let beta = 1 - alpha, betaPrevious = 1 - alphaPrevious
        let sampleCoefficient = (alphaPrevious / alpha).squareRoot()
        let denominator = alpha * betaPrevious.squareRoot() + (alpha * beta * alphaPrevious).squareRoot()
        let sa = alpha.squareRoot(), sb = beta.squareRoot()
        return (0..<sample.count).map { i in
            var m = output[i]
            if prediction == .vPrediction { m = sa * m + sb * sample[i] }
            return sampleCoefficient * sample[i] - (alphaPrevious - alpha) * m / denominator
        }
    }
}
