// The library example of README.md, compiled by the test suite so it cannot rot.
// `ReadmeExampleTests` checks that README.md shows exactly the lines between the markers.

// README example begins
import DiffusionEngine
import ModelLoading

/// Converts a checkpoint to a `.wpk` in f16 and proves that the conversion still generates
/// what the original did.
func convertAndVerify(_ checkpoint: String, to output: String) throws -> Verification.Report {
    let original = try CanonicalModel.open(checkpoint)
    let written = try Conversion.write(original, to: output, options: .init(dtype: .f16))
    print("wrote \(written.entries.count) tensors, \(written.storedByteCount) bytes")

    let reference = try StableDiffusionModel(original)
    let candidate = try StableDiffusionModel(path: output)
    var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
    request.steps = 6
    request.width = 64  // pixels; reference.defaultSize is the size the model was trained at
    request.height = 64
    let report = try Verification.verify(reference: reference, candidate: candidate, request: request)
    for stage in report.stages {
        print(stage.name, stage.value, stage.passed ? "ok" : "FAIL")
    }
    return report
}
// README example ends
