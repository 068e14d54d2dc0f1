import ArgumentParser
import CheckpointFormats
import ModelLoading
import Quantization
import StrictJSON

/// `convert --dtype`: the casts, int8, and ggml's block types (upper or lower case).
enum ConvertDType: String, ExpressibleByArgument, CaseIterable, Sendable {
    case keep, f32, f16, bf16, int8
    case q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k
    /// Each weight's type chosen against --target-psnr or --max-size (``QualityBudget``).
    case auto

    init?(argument: String) { self.init(rawValue: argument.lowercased()) }

    /// The block type asked for, `nil` for the casts and int8.
    var blockType: GGMLType? {
        guard let t = GGMLType(name: rawValue), t.isBlockQuantized else { return nil }
        return t
    }

    /// The cast or int8 (`keep` for a block type, which ``Conversion/Options/ggmlType`` carries).
    var plain: DTypeChoice { DTypeChoice(rawValue: rawValue) ?? .keep }
}

/// The block types, for help texts.
let blockTypeList = GGMLType.quantizable.map { $0.name.lowercased() }.joined(separator: "|")

/// Parses `--tensor-type GLOB=TYPE` values; a malformed one is a usage error (exit 64).
func parseTensorTypes(_ values: [String], blockType: GGMLType?) throws -> [GGMLTypeRules.Override] {
    guard !values.isEmpty else { return [] }
    guard blockType != nil else {
        throw ValidationError("--tensor-type applies to a block --dtype (\(blockTypeList)) only")
    }
    return try values.map { text in
        let override: GGMLTypeRules.Override
        do throws(QuantizationError) { override = try GGMLTypeRules.Override(parsing: text) } catch {
            throw ValidationError("--tensor-type \(error.message)")
        }
        if override.pattern.contains(where: { "[]{}".contains($0) }) {
            throw ValidationError("--tensor-type '\(text)': only * and ? are wildcards here; brackets and braces would match themselves")
        }
        return override
    }
}

/// Help shared by convert and export for the block types and their rules.
let blockTypeHelp = """
    Block types (ggml's, bit-exact with its reference quantiser): q4_0, q4_1, q5_0, q5_1, q8_0 \
    (blocks of 32 values; 4.5, 5, 5.5, 6 and 8.5 bits per weight) and the k-quants q2_k, q3_k, \
    q4_k, q5_k, q6_k (blocks of 256; 2.625, 3.4375, 4.5, 5.5, 6.5625 bits per weight). Rules: 1-D \
    tensors (biases, norms) stay F32; norms, embeddings, the time and class embeddings, \
    conv_in/conv_out and tensors under 1024 values stay F16; a tensor whose rows do not divide \
    into the type's block falls back to a type whose block fits (q2_k/q3_k to q4_0, q4_k to q5_0, \
    q5_k to q5_1, q6_k to q8_0), and to F16 only when none fits; every fallback is reported. \
    --tensor-type GLOB=TYPE (repeatable, first match wins, * and ?) overrides the rules for \
    matching names, as stable-diffusion.cpp's --tensor-type-rules does (TYPE: f32, f16, bf16 or a \
    block type). See Docs/quantization.md.
    """

/// The summary lines printed after a conversion or export to block types.
func typeSummaryLines(_ types: TypeSummary) -> [String] {
    ["types: \(types.countsText); \(String(format2(types.bitsPerWeight))) bits per weight"] + types.fallbackLines
}

/// Two decimal places.
func format2(_ v: Double) -> String { Formatting.decimals(v, 2) }
