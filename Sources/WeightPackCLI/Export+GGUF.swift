import ArgumentParser
import CheckpointFormats
import ModelLoading
import Quantization

/// `export --dtype`: the casts of ``DTypeChoice`` and, for GGUF, ggml's block types (upper or lower case).
enum ExportDType: String, ExpressibleByArgument, CaseIterable, Sendable {
    case keep, f32, f16, bf16
    case q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k
    /// Each weight's type chosen against --target-psnr or --max-size (``QualityBudget``), GGUF only.
    case auto

    init?(argument: String) { self.init(rawValue: argument.lowercased()) }

    /// The cast for safetensors and diffusers output (block types are refused before this is asked).
    var plain: DTypeChoice { DTypeChoice(rawValue: rawValue) ?? .keep }

    /// The GGUF dtype (`nil` for bf16, which GGUF export does not cast to).
    var gguf: ModelExport.GGUFDType? { ModelExport.GGUFDType(rawValue: rawValue) }

    /// The block type asked for, `nil` for the casts.
    var blockType: GGMLType? { gguf?.blockType }
}

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case safetensors, gguf
}

extension Export {
    var resolvedFormat: ExportFormat { format ?? (output.lowercased().hasSuffix(".gguf") ? .gguf : .safetensors) }
}
