import CheckpointFormats
import Foundation
import ModelCatalog
import Quantization
import TensorCore
import TestSupport
import Testing

@testable import ModelLoading

/// The library side of `convert --dtype q4_0…q6_k` and `export --format gguf --dtype …`.
@Suite("block-type conversion and GGUF export in the library")
struct BlockTypeConversionTests {
    @Test("Conversion with a ggml type records the target and the overrides; its summary counts what was stored")
    func conversion() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try CanonicalModel.open(tinySD1)
        var options = Conversion.Options()
        options.ggmlType = .q4_0
        options.tensorTypes = [try GGMLTypeRules.Override(parsing: "vae.*=f16")]
        options.recordSourceDigest = false
        let result = try Conversion.write(model, to: folder + "/m.wpk", options: options)
        let file = try WPKFile(path: folder + "/m.wpk")
        let conversion = file.headerMetadata["conversion"]?.objectValue
        #expect(conversion?["dtype"]?.stringValue == "q4_0")
        #expect(conversion?["ggml"]?.objectValue?["tensor_types"]?.arrayValue == [.string("vae.*=f16")])
        // Every VAE tensor is F16 (matrices) or F32 (1-D, overridden tensors stay unquantised).
        let vae = file.entries.filter { $0.descriptor.name.hasPrefix("vae.") }
        #expect(!vae.isEmpty && vae.allSatisfy { $0.blocks == nil && [.f16, .f32].contains($0.descriptor.dtype) })
        #expect(file.entries.contains { $0.blocks?.type == .q4_0 })
        let types = result.types
        #expect(types.items.count == file.entries.count)
        #expect(types.counts.first { $0.type == "Q4_0" }?.count == file.entries.filter { $0.blocks?.type == .q4_0 }.count)
        #expect(types.storedByteCount == file.entries.reduce(0) { $0 + $1.length })
        #expect(types.fallbacks.isEmpty)  // every row of the tiny model divides by 32

        // Options that cannot be honoured throw before anything is written.
        options.ggmlType = .iq4_NL
        #expect(throws: QuantizationError.self) { try Conversion.write(model, to: folder + "/x.wpk", options: options) }
        #expect(!FileManager.default.fileExists(atPath: folder + "/x.wpk"))
    }

    /// LLAMA_FTYPE values from ggml's docs/gguf.md (`general.file_type`) and gguf-py's LlamaFileType.
    @Test("general.file_type is ggml's LLAMA_FTYPE of the type holding the most values")
    func fileType() {
        #expect(ModelExport.fileType([(.q4_0, 900), (.f32, 10_000)]) == 2)
        #expect(ModelExport.fileType([(.q4_K, 100), (.q5_0, 200), (.f16, 50)]) == 8)
        #expect(ModelExport.fileType([(.q4_K, 300), (.q5_0, 200)]) == 14)
        #expect(ModelExport.fileType([(.q8_0, 1)]) == 7)
        #expect(ModelExport.fileType([(.q6_K, 1)]) == 18)
        #expect(ModelExport.fileType([(.q2_K, 1)]) == 10)
        #expect(ModelExport.fileType([(.f16, 10), (.f32, 5)]) == 1)
        #expect(ModelExport.fileType([(.f32, 10), (.f16, 5)]) == 0)
        #expect(ModelExport.fileType([(.bf16, 10)]) == 32)
        #expect(ModelExport.fileType([(.i64, 10)]) == nil)
    }

    @Test("GGUF decisions: overrides by LDM or canonical name, stable-diffusion.cpp's name rules, keep passes stored blocks through where they fit")
    func decisions() throws {
        let rules = GGMLTypeRules(
            target: .q4_0,
            overrides: [try GGMLTypeRules.Override(parsing: "*attn2.to_k.weight=q8_0"), try GGMLTypeRules.Override(parsing: "unet.mid_block.*=f16")],
            rows: .lastDimension, keep: ModelExport.stableDiffusionCppKeepPatterns)
        func recipe(_ name: String, _ shape: [Int]) -> TensorRecipe {
            TensorRecipe(name: name, dtype: .f32, shape: Shape(shape), sources: ["x"], operation: .copy)
        }
        func decide(
            _ name: String, _ shape: [Int], canonical: String? = nil, stored: GGMLType? = nil, dtype: ModelExport.GGUFDType = .q4_0
        ) -> GGMLType? {
            ModelExport.ggufDecision(
                recipe(name, shape), canonicalName: canonical, isInt8: false, storedType: stored, dtype: dtype,
                rules: dtype.blockType == nil ? nil : rules)?.type
        }
        #expect(decide("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", [320, 320]) == .q4_0)
        #expect(decide("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [320, 768]) == .q8_0)
        #expect(
            decide("model.diffusion_model.middle_block.1.proj_in.weight", [640, 640], canonical: "unet.mid_block.attentions.0.proj_in.weight") == .f16
        )
        // stable-diffusion.cpp leaves these unquantised; so do we (matrices F16, 1-D F32).
        #expect(decide("model.diffusion_model.time_embed.0.weight", [1280, 320]) == .f16)
        #expect(decide("model.diffusion_model.label_emb.0.0.weight", [1280, 2816]) == .f16)
        #expect(decide("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", [49408, 768]) == .f16)
        #expect(decide("model.diffusion_model.out.0.bias", [320]) == .f32)
        // Rows of 3 (a 3×3 kernel, GGUF's last dimension) fit no block: F16, recorded as a fallback.
        #expect(decide("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", [320, 320, 3, 3]) == .f16)
        // keep: stored blocks stay when the GGUF row holds them, else the fallback chain or F16/F32.
        #expect(decide("a", [2, 512], stored: .q4_K, dtype: .keep) == .q4_K)
        #expect(decide("a", [64], stored: .q4_1, dtype: .keep) == .q4_1)
        #expect(decide("a", [2, 96], stored: .q4_K, dtype: .keep) == .q5_0)
        #expect(decide("a", [96, 3, 3], stored: .q5_0, dtype: .keep) == .f16)
        #expect(decide("a", [2, 96], dtype: .keep) == .f32)
        #expect(decide("a", [2, 96], dtype: .f16) == .f16)
        #expect(decide("a", [96], dtype: .f16) == .f32)
    }
}
