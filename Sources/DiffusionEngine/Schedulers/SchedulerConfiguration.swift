import Foundation
import StrictJSON

/// What the UNet predicts.
public enum PredictionType: String, Sendable, Hashable, CaseIterable {
    /// The added noise (SD 1.x, SD 2.x base 512, SDXL).
    case epsilon
    /// The velocity `alpha_t * noise - sigma_t * x0` (SD 2.x 768-v).
    case vPrediction = "v_prediction"
    /// The clean sample.
    case sample
}

/// How inference timesteps are spread over the training timesteps (diffusers' `timestep_spacing`).
public enum TimestepSpacing: String, Sendable, Hashable, CaseIterable {
    /// `0, r, 2r, …` plus `steps_offset` (r = train steps / inference steps), DDIM and PNDM's default.
    case leading
    /// Evenly from 0 to `train steps - 1`, Euler and DPM-Solver's default.
    case linspace
    /// `train steps - 1` down in steps of r.
    case trailing
}

/// The samplers the engine runs.
public enum SchedulerKind: String, Sendable, Hashable, CaseIterable {
    case pndm, ddim, euler
    case eulerAncestral = "euler-a"
    case dpmSolverMultistep = "dpmpp-2m"

    /// diffusers' class name.
    public var className: String {
        switch self {
        case .pndm: "PNDMScheduler"
        case .ddim: "DDIMScheduler"
        case .euler: "EulerDiscreteScheduler"
        case .eulerAncestral: "EulerAncestralDiscreteScheduler"
        case .dpmSolverMultistep: "DPMSolverMultistepScheduler"
        }
    }

    /// The kind for a diffusers class name (`_class_name` of a scheduler config).
    public init?(className: String) {
        guard let kind = Self.allCases.first(where: { $0.className == className }) else { return nil }
        self = kind
    }
}

/// A diffusers scheduler configuration: the fields a `scheduler_config.json` (or a family's
/// published configuration) sets. A field left `nil` takes the chosen scheduler class's own
/// diffusers default when the scheduler is made, exactly as `Scheduler.from_config` does.
public struct SchedulerConfiguration: Sendable, Hashable {
    /// `_class_name`, when the configuration names one.
    public var className: String?
    public var trainTimesteps: Int?
    public var betaStart: Double?
    public var betaEnd: Double?
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    public var betaSchedule: String?
    public var trainedBetas: [Double]?
    public var predictionType: PredictionType?
    public var timestepSpacing: TimestepSpacing?
    public var stepsOffset: Int?
    public var setAlphaToOne: Bool?
    public var clipSample: Bool?
    public var clipSampleRange: Double?
    public var skipPRKSteps: Bool?
    public var useKarrasSigmas: Bool?
    /// DPM-Solver: order (2), `lower_order_final` (true), `final_sigmas_type` (`zero`).
    public var solverOrder: Int?
    public var lowerOrderFinal: Bool?
    public var finalSigmasType: String?
    public var algorithmType: String?
    public var solverType: String?

    public init() {}

    /// SD 1.x's published configuration (runwayml/stable-diffusion-v1-5, CompVis v1-4): PNDM,
    /// scaled-linear betas 0.00085 to 0.012 over 1000 steps, `steps_offset` 1.
    public static let sd15: SchedulerConfiguration = {
        var c = SchedulerConfiguration()
        c.className = "PNDMScheduler"
        c.trainTimesteps = 1000
        c.betaStart = 0.00085
        c.betaEnd = 0.012
        c.betaSchedule = "scaled_linear"
        c.stepsOffset = 1
        c.setAlphaToOne = false
        c.clipSample = false
        c.skipPRKSteps = true
        return c
    }()

    /// SD 2.x's published configuration (stabilityai/stable-diffusion-2-1): DDIM with the same
    /// betas, v-prediction (the 768 px models; the 512 px base is epsilon, which a file cannot
    /// reveal, so `--prediction-type` overrides).
    public static let sd21: SchedulerConfiguration = {
        var c = sd15
        c.className = "DDIMScheduler"
        c.predictionType = .vPrediction
        return c
    }()

    /// SDXL base's published configuration: Euler with the same betas and leading spacing.
    public static let sdxl: SchedulerConfiguration = {
        var c = sd15
        c.className = "EulerDiscreteScheduler"
        c.timestepSpacing = .leading
        c.useKarrasSigmas = false
        return c
    }()

    /// Reads a diffusers `scheduler_config.json`; unknown fields are ignored, as diffusers does.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` for values of the wrong type or an
    ///   unknown prediction type or spacing.
    public init(json: JSONValue) throws(EngineError) {
        guard let o = json.objectValue else {
            throw EngineError(.invalidConfiguration, "scheduler configuration is not a JSON object")
        }
        let fields = ConfigurationFields(object: o, subject: "scheduler")
        func present(_ key: String) -> JSONValue? { fields.present(key) }
        func number(_ key: String) throws(EngineError) -> Double? { try fields.number(key) }
        func int(_ key: String) throws(EngineError) -> Int? { try fields.int(key) }
        func bool(_ key: String) throws(EngineError) -> Bool? { try fields.bool(key) }
        func string(_ key: String) throws(EngineError) -> String? { try fields.string(key) }
        self.init()
        className = try string("_class_name")
        trainTimesteps = try int("num_train_timesteps")
        betaStart = try number("beta_start")
        betaEnd = try number("beta_end")
        betaSchedule = try string("beta_schedule")
        if let a = present("trained_betas")?.arrayValue {
            guard a.count <= Self.limits.trainTimesteps.upperBound else {
                throw EngineError(
                    .invalidConfiguration, "scheduler field 'trained_betas' has \(a.count) values, more than \(Self.limits.trainTimesteps.upperBound)"
                )
            }
            let values = a.compactMap(\.doubleValue)
            guard values.count == a.count else {
                throw EngineError(.invalidConfiguration, "scheduler field 'trained_betas' is not a list of numbers")
            }
            trainedBetas = values
        }
        if let p = try string("prediction_type") {
            guard let t = PredictionType(rawValue: p) else { throw EngineError(.invalidConfiguration, "unknown prediction_type '\(p)'") }
            predictionType = t
        }
        if let s = try string("timestep_spacing") {
            guard let t = TimestepSpacing(rawValue: s) else { throw EngineError(.invalidConfiguration, "unknown timestep_spacing '\(s)'") }
            timestepSpacing = t
        }
        stepsOffset = try int("steps_offset")
        setAlphaToOne = try bool("set_alpha_to_one")
        clipSample = try bool("clip_sample")
        clipSampleRange = try number("clip_sample_range")
        skipPRKSteps = try bool("skip_prk_steps")
        useKarrasSigmas = try bool("use_karras_sigmas")
        solverOrder = try int("solver_order")
        lowerOrderFinal = try bool("lower_order_final")
        finalSigmasType = try string("final_sigmas_type")
        algorithmType = try string("algorithm_type")
        solverType = try string("solver_type")
        if try bool("thresholding") == true { throw EngineError(.invalidConfiguration, "dynamic thresholding is not supported") }
        if try bool("rescale_betas_zero_snr") == true { throw EngineError(.invalidConfiguration, "rescale_betas_zero_snr is not supported") }
        if let t = try string("interpolation_type"), t != "linear" {
            throw EngineError(.invalidConfiguration, "interpolation_type '\(t)' is not supported")
        }
        if let t = try string("timestep_type"), t != "discrete" { throw EngineError(.invalidConfiguration, "timestep_type '\(t)' is not supported") }
        try validate()
    }

    /// The bounds a scheduler configuration must keep (Docs/limits.md): every published
    /// configuration trains over 1000 timesteps with betas below 0.03.
    public struct Limits: Sendable {
        public var trainTimesteps = 2...100_000
        public var stepsOffset = 0...100_000
        public var solverOrder = 1...3
        /// `beta_start`, `beta_end` and every trained beta lie in [0, 1].
        public var beta: ClosedRange<Double> = 0...1
        public var clipSampleRange: ClosedRange<Double> = 1e-6...1e6
    }
    public static let limits = Limits()

    /// Checks every number set against ``limits``; fields left `nil` are the scheduler's defaults.
    ///
    /// - Throws: ``EngineError/Code/invalidConfiguration`` naming the first field out of bounds.
    public func validate() throws(EngineError) {
        let l = Self.limits
        func check<T: Comparable>(_ value: T?, _ range: ClosedRange<T>, _ field: String) throws(EngineError) {
            try ConfigurationFields.check(value, range, field, in: "scheduler")
        }
        try check(trainTimesteps, l.trainTimesteps, "num_train_timesteps")
        try check(stepsOffset, l.stepsOffset, "steps_offset")
        try check(solverOrder, l.solverOrder, "solver_order")
        try check(betaStart, l.beta, "beta_start")
        try check(betaEnd, l.beta, "beta_end")
        try check(clipSampleRange, l.clipSampleRange, "clip_sample_range")
        if let trainedBetas {
            guard trainedBetas.count <= l.trainTimesteps.upperBound else {
                throw EngineError(
                    .invalidConfiguration, "scheduler trained_betas has \(trainedBetas.count) values, more than \(l.trainTimesteps.upperBound)")
            }
            for beta in trainedBetas where !(beta.isFinite && l.beta.contains(beta)) {
                throw EngineError(.invalidConfiguration, "scheduler trained_betas holds \(beta), outside 0...1")
            }
        }
    }

    /// Reads a `scheduler_config.json` from its text.
    public init(jsonText: String) throws(EngineError) {
        try self.init(json: try ConfigurationFields.parse(jsonText, name: "scheduler"))
    }

    /// The kind named by `className`, if it is one the engine runs.
    public var kind: SchedulerKind? { className.flatMap(SchedulerKind.init(className:)) }
}

/// The noise schedule every sampler shares: betas, alphas and their cumulative product in float32
/// as torch computes them.
/// Matches diffusers' scheduler `__init__` betas, https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_ddim.py
struct NoiseSchedule {
    let trainTimesteps: Int
    let alphasCumprod: [Float]

    init(_ c: SchedulerConfiguration) throws(EngineError) {
        // A configuration built in code may not have been read from JSON: check it here too.
        try c.validate()
        let n = c.trainTimesteps ?? 1000
        guard n > 1 else { throw EngineError(.invalidConfiguration, "num_train_timesteps must be at least 2") }
        let start = c.betaStart ?? 0.0001, end = c.betaEnd ?? 0.02
        var betas: [Float]
        if let trained = c.trainedBetas {
            guard trained.count == n else { throw EngineError(.invalidConfiguration, "trained_betas has \(trained.count) values for \(n) timesteps") }
            betas = trained.map { Float($0) }
        } else {
            switch c.betaSchedule ?? "linear" {
            case "linear":
                betas = Self.linspace(Float(start), Float(end), n)
            case "scaled_linear":
                betas = Self.linspace(Float(start.squareRoot()), Float(end.squareRoot()), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                func alphaBar(_ t: Double) -> Double { let v = cos((t + 0.008) / 1.008 * Double.pi / 2); return v * v }
                betas = (0..<n).map { i in Float(min(1 - alphaBar(Double(i + 1) / Double(n)) / alphaBar(Double(i) / Double(n)), 0.999)) }
            case let other:
                throw EngineError(.invalidConfiguration, "beta_schedule '\(other)' is not supported")
            }
        }
        // torch.cumprod on the CPU accumulates a float32 tensor in double (at::acc_type) and rounds
        // each running product to float32; a float32 running product drifts from it by a few ulp
        // after a few dozen steps (3e-6 relative in the sigmas, 2e-4 in Karras timesteps).
        var product: Double = 1
        alphasCumprod = betas.map { beta in
            product *= Double(1 - beta); return Float(product)
        }
        trainTimesteps = n
    }

    /// `torch.linspace(a, b, n, dtype=float32)`: float arithmetic, the second half counted back from `b`.
    static func linspace(_ a: Float, _ b: Float, _ n: Int) -> [Float] {
        let step = (b - a) / Float(n - 1)
        return (0..<n).map { i in i < n / 2 ? a + step * Float(i) : b - step * Float(n - i - 1) }
    }

    /// `((1 - a) / a) ** 0.5` for every training timestep, in float32.
    var sigmas: [Float] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }
}

/// numpy's `round` (half to even).
@inline(__always)
func roundHalfEven(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

/// numpy's `linspace(a, b, n)` in double precision.
func numpyLinspace(_ a: Double, _ b: Double, _ n: Int) -> [Double] {
    guard n > 1 else { return n == 1 ? [a] : [] }
    let step = (b - a) / Double(n - 1)
    return (0..<n).map { i in i == n - 1 ? b : Double(i) * step + a }
}

/// numpy's `arange(start, stop, step)` for a negative step.
func numpyArangeDown(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
    let count = Int(((stop - start) / step).rounded(.up))
    return (0..<max(count, 0)).map { start + Double($0) * step }
}
