/// Deterministic DDIM (eta 0).
/// Matches diffusers' DDIMScheduler, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_ddim.py
final class DDIMScheduler: Scheduler {
    let timesteps: [Float]
    var initialNoiseSigma: Float { 1 }
    private let integerTimesteps: [Int]
    private let alphasCumprod: [Float]
    private let finalAlphaCumprod: Float
    private let stride: Int
    private let prediction: PredictionType
    private let clipRange: Float?

    init(_ c: SchedulerConfiguration, schedule: NoiseSchedule, steps: Int) throws(EngineError) {
        integerTimesteps = discreteTimesteps(c.timestepSpacing ?? .leading, train: schedule.trainTimesteps, steps: steps, offset: c.stepsOffset ?? 0)
        timesteps = integerTimesteps.map(Float.init)
        alphasCumprod = schedule.alphasCumprod
        finalAlphaCumprod = (c.setAlphaToOne ?? true) ? 1 : schedule.alphasCumprod[0]
        stride = schedule.trainTimesteps / steps
        prediction = c.predictionType ?? .epsilon
        clipRange = (c.clipSample ?? true) ? Float(c.clipSampleRange ?? 1) : nil
        guard integerTimesteps.allSatisfy({ (0..<schedule.trainTimesteps).contains($0) }) else {
            throw EngineError(.invalidConfiguration, "timesteps \(integerTimesteps) fall outside the training range")
        }
    }

    func inputScale(at index: Int) -> Float { 1 }

    func step(_ output: [Float], at index: Int, sample: [Float], generator: inout TorchGenerator) -> [Float] {
        let t = integerTimesteps[index], previous = t - stride
        let alpha = alphasCumprod[t]
        let alphaPrevious = previous >= 0 ? alphasCumprod[previous] : finalAlphaCumprod
        let beta = 1 - alpha
        let sa = alpha.squareRoot(), sb = beta.squareRoot()
        let direction = (1 - alphaPrevious).squareRoot(), sap = alphaPrevious.squareRoot()
        var result = [Float](repeating: 0, count: sample.count)
        for i in 0..<sample.count {
            let x = sample[i], m = output[i]
            var original: Float, epsilon: Float
            switch prediction {
            case .epsilon:
                original = (x - sb * m) / sa
                epsilon = m
            case .sample:
                original = m
                epsilon = (x - sa * original) / sb
            case .vPrediction:
                original = sa * x - sb * m
                epsilon = sa * m + sb * x
            }
            if let clipRange {
                original = min(max(original, -clipRange), clipRange)
                if prediction != .sample { epsilon = (x - sa * original) / sb }
            }
            result[i] = sap * original + direction * epsilon
        }
        return result
    }
}
