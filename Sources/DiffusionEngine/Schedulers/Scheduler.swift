/// A sampler: the timesteps of a denoising loop and the update from one latent to the next.
///
/// Latents are flat `Float` arrays (one sample, `[4, h, w]` row-major). A scheduler holds the
/// state of one generation (PNDM's and DPM-Solver's history); make a new one per generation.
public protocol Scheduler: AnyObject {
    /// The UNet timestep of each loop iteration (PNDM repeats one, so it has steps + 1).
    var timesteps: [Float] { get }
    /// The initial noise is multiplied by this (1, or the largest sigma for Euler).
    var initialNoiseSigma: Float { get }
    /// diffusers' `scale_model_input` for iteration `index`: the factor the UNet input is multiplied by.
    func inputScale(at index: Int) -> Float
    /// diffusers' `scheduler.step` for iteration `index`: the latents of the next iteration.
    ///
    /// - Parameter generator: drawn from by ancestral samplers only.
    func step(_ modelOutput: [Float], at index: Int, sample: [Float], generator: inout TorchGenerator) -> [Float]
}

/// Makes schedulers from a configuration, as diffusers' `<Class>.from_config(config)` does.
public enum SchedulerFactory {
    /// A scheduler of `kind` for `steps` inference steps.
    ///
    /// - Parameters:
    ///   - configuration: a folder's `scheduler_config.json` or a family's published one; fields it
    ///     leaves out take the class's defaults.
    ///   - predictionType, timestepSpacing: overrides (the command line's `--prediction-type` and
    ///     `--timestep-spacing`).
    /// - Throws: ``EngineError/Code/invalidConfiguration`` for settings the sampler cannot run.
    public static func make(
        _ kind: SchedulerKind, configuration: SchedulerConfiguration, steps: Int,
        predictionType: PredictionType? = nil, timestepSpacing: TimestepSpacing? = nil
    ) throws(EngineError) -> any Scheduler {
        guard steps > 0 else { throw EngineError(.invalidConfiguration, "the number of steps must be positive") }
        var c = configuration
        if let predictionType { c.predictionType = predictionType }
        if let timestepSpacing { c.timestepSpacing = timestepSpacing }
        let schedule = try NoiseSchedule(c)
        guard steps <= schedule.trainTimesteps else {
            throw EngineError(.invalidConfiguration, "\(steps) steps exceed the \(schedule.trainTimesteps) training timesteps")
        }
        switch kind {
        case .pndm: return try PNDMScheduler(c, schedule: schedule, steps: steps)
        case .ddim: return try DDIMScheduler(c, schedule: schedule, steps: steps)
        case .euler: return try EulerDiscreteScheduler(c, schedule: schedule, steps: steps, ancestral: false)
        case .eulerAncestral: return try EulerDiscreteScheduler(c, schedule: schedule, steps: steps, ancestral: true)
        case .dpmSolverMultistep: return try DPMSolverMultistepScheduler(c, schedule: schedule, steps: steps)
        }
    }
}

/// Integer timesteps for DDIM and PNDM-style spacing, highest first.
/// Matches diffusers' DDIMScheduler.set_timesteps, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_ddim.py
func discreteTimesteps(_ spacing: TimestepSpacing, train: Int, steps: Int, offset: Int) -> [Int] {
    switch spacing {
    case .leading:
        let ratio = train / steps
        return (0..<steps).reversed().map { $0 * ratio + offset }
    case .linspace:
        return numpyLinspace(0, Double(train - 1), steps).reversed().map { Int(roundHalfEven($0)) }
    case .trailing:
        return numpyArangeDown(Double(train), 0, -Double(train) / Double(steps)).map { Int(roundHalfEven($0)) - 1 }
    }
}
