import ArgumentParser
import DiffusionEngine
import ModelLoading

/// `--compute auto|f32|bf16|int8` (generate, trace, verify): the arithmetic of the UNet's matrix
/// products. `auto`, the default, is what ``ComputePrecision/automatic(for:int8Products:bf16Products:)``
/// chooses for the model: int8 for int8 or Q8_0 weights where the processor has AVX512_VNNI,
/// bf16 for BF16 weights where it has AVX512_BF16, f32 otherwise.
struct ComputeOptions: ParsableArguments {
    enum Choice: String, ExpressibleByArgument, CaseIterable {
        case auto, f32, bf16, int8

        var precision: ComputePrecision? {
            switch self {
            case .auto: nil
            case .f32: .f32
            case .bf16: .bf16
            case .int8: .int8
            }
        }
    }

    @Option(
        help: ArgumentHelp(
            "The UNet's matrix-product arithmetic: auto (int8 for a model with int8 or Q8_0 weights where the processor has AVX512_VNNI, bf16 for BF16 weights where it has AVX512_BF16, else f32), f32 (the reference), bf16 (operands rounded to bfloat16, float sums; needs AVX512_BF16) or int8 (int8 weights times inputs quantised 32 values per scale; needs AVX512_VNNI).",
            valueName: "auto|f32|bf16|int8"))
    var compute: Choice = .auto

    /// Exits 69 with one line when an explicitly named precision cannot run on this processor
    /// (`auto` always can).
    func checkAvailable() throws {
        guard let precision = compute.precision, !ComputeBackend.current.supports(precision) else { return }
        let needs = precision == .bf16 ? "AVX512_BF16" : "AVX512_VNNI"
        printError(
            "weightpack: error: --compute \(compute.rawValue) needs a processor with \(needs) and the AVX-512 kernels; this one: \(ComputeBackend.current.description)"
        )
        throw ExitCode(ExitStatus.unavailable.rawValue)
    }

    /// The precision `model`'s UNet computes in. Notes on stderr when `--compute int8` was asked
    /// for a model without int8 weights (it then computes in float anyway), and, with
    /// `verbose`, what `auto` chose.
    func precision(for model: StableDiffusionModel, verbose: Bool) -> ComputePrecision {
        let unet = model.pipeline.unet
        guard let precision = compute.precision else {
            let chosen = ComputePrecision.automatic(for: unet)
            if verbose {
                switch chosen {
                case .int8: printError("weightpack: compute: int8 (the UNet's int8 weights, AVX512_VNNI; --compute f32 for float products)")
                case .bf16: printError("weightpack: compute: bf16 (the UNet's BF16 weights, AVX512_BF16; --compute f32 for float products)")
                case .f32: printError("weightpack: compute: f32")
                }
            }
            return chosen
        }
        if precision == .int8 && !unet.weights.hasInt8Weights {
            printError(
                "weightpack: note: --compute int8: this model's UNet has no int8 or Q8_0 weights (convert it with --dtype int8); computing in float"
            )
        }
        return precision
    }
}
