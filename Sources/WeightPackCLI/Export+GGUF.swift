import ArgumentParser
import CheckpointFormats

/// `export --dtype`: the casts of ``DTypeChoice`` and, for GGUF, `q8_0`.
enum ExportDType: String, ExpressibleByArgument, CaseIterable, Sendable {
    case keep, f32, f16, bf16, q8_0

    /// The cast for safetensors and diffusers output (`q8_0` is refused before this is asked).
    var plain: DTypeChoice {
        switch self {
        case .keep, .q8_0: .keep
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        }
    }
}

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case safetensors, gguf
}

extension Export {
    var resolvedFormat: ExportFormat { format ?? (output.lowercased().hasSuffix(".gguf") ? .gguf : .safetensors) }
}
