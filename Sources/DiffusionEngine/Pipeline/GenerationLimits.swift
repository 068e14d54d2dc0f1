/// The bounds of a generation request (Docs/limits.md), checked before anything is allocated:
/// an image side beyond ``maximumSide`` needs more memory than the machines the engine targets
/// have (activations grow with the pixel count; 2048 px already needs several GiB in the VAE).
public enum GenerationLimits {
    /// Pixels per image side, each a multiple of the VAE's downsampling factor (8).
    public static let side = 8...2048
    /// Denoising steps (a scheduler may allow fewer: at most its training timesteps).
    public static let steps = 1...1000
    /// Classifier-free guidance scale: finite, within this range (negative values are allowed,
    /// as diffusers allows them).
    public static let guidance: ClosedRange<Float> = -1000...1000
    /// Seeds `torch.manual_seed` accepts: -2^63 ... 2^64 - 1.
    public static let seedRange = "-9223372036854775808...18446744073709551615"

    /// The generator seed for a seed as `torch.manual_seed` takes it: a non-negative value as
    /// is, a negative one as its two's complement (`-1` gives 2^64 - 1, as torch does), or
    /// `nil` outside -2^63 ... 2^64 - 1 or not an integer.
    public static func torchSeed(_ text: String) -> UInt64? {
        if let value = UInt64(text) { return value }
        if let value = Int64(text) { return UInt64(bitPattern: value) }
        return nil
    }
}

extension StableDiffusionPipeline.Request {
    /// Checks size, steps and guidance against ``GenerationLimits`` (the seed is a `UInt64`,
    /// always valid).
    ///
    /// - Parameter downsamplingFactor: the VAE's factor (8 for every Stable Diffusion VAE).
    /// - Throws: ``EngineError/Code/invalidInput`` naming the first value out of bounds.
    public func validate(downsamplingFactor: Int = 8) throws(EngineError) {
        for (name, value) in [("width", width), ("height", height)] {
            guard GenerationLimits.side.contains(value) else {
                throw EngineError(
                    .invalidInput,
                    "image \(name) \(value) is outside \(GenerationLimits.side.lowerBound)...\(GenerationLimits.side.upperBound) pixels")
            }
            guard downsamplingFactor > 0, value % downsamplingFactor == 0 else {
                throw EngineError(.invalidInput, "image \(name) \(value) is not a multiple of \(downsamplingFactor)")
            }
        }
        guard GenerationLimits.steps.contains(steps) else {
            throw EngineError(.invalidInput, "\(steps) steps is outside \(GenerationLimits.steps.lowerBound)...\(GenerationLimits.steps.upperBound)")
        }
        guard guidanceScale.isFinite, GenerationLimits.guidance.contains(guidanceScale) else {
            throw EngineError(
                .invalidInput,
                "guidance scale \(guidanceScale) is not a finite number in \(GenerationLimits.guidance.lowerBound)...\(GenerationLimits.guidance.upperBound)"
            )
        }
    }
}
