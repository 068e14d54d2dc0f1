import CheckpointFormats
import ModelCatalog
import TensorCore
import TestSupport
import Testing

/// "EMA-only" LDM checkpoints: `model_ema.<UNet name without dots>` and no `model.diffusion_model.*`.
@Suite("EMA-only checkpoints")
struct EMAOnlyTests {
    /// The tiny LDM files of every family (SD 1.x; SD 2.x with linear projections and one resnet
    /// per level; SDXL with `label_emb.0.0` and transformer depth 2).
    static let ldmFixtures = ["tiny-sd1/tiny-sd1.safetensors", "tiny-sd2/tiny-sd2.safetensors", "tiny-sdxl/tiny-sdxl.safetensors"]

    @Test("every UNet name of the LDM fixtures comes back from its flat EMA name", arguments: ldmFixtures)
    func unflattenFixtures(path: String) throws {
        let names = try SafetensorsFile(path: fixturePath(path)).tensors.map(\.name).filter { $0.hasPrefix("model.diffusion_model.") }
        #expect(names.count > 300)
        for name in names {
            #expect(NameMap.unflattenedEMAName(NameMap.emaName(of: name)) == name)
        }
    }

    @Test(
        "names of full-size models, where digit runs are ambiguous",
        arguments: [
            "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.bias",
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            "model.diffusion_model.output_blocks.10.1.proj_out.weight",
            "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_out.0.weight",
            "model.diffusion_model.middle_block.1.transformer_blocks.0.norm3.bias",
            "model.diffusion_model.label_emb.0.2.weight",
            "model.diffusion_model.time_embed.0.bias",
            "model.diffusion_model.out.2.weight",
            "model.diffusion_model.input_blocks.3.0.op.weight",
        ])
    func unflattenFullSize(name: String) {
        #expect(NameMap.unflattenedEMAName(NameMap.emaName(of: name)) == name)
    }

    @Test(
        "flat names that are not UNet weights are not read as such",
        arguments: [
            "model_ema.decay", "model_ema.num_updates", "model_ema.diffusion_model", "model_ema.diffusion_modelinput_blocks",
            "model_ema.diffusion_modelinput_blocks0weight", "model_ema.diffusion_modelfoo0weight",
            "model_ema.diffusion_modelinput_blocks00", "model.diffusion_model.input_blocks.0.0.weight",
            "model_ema.first_stage_modelencoderconv_inweight",
        ])
    func notUNetNames(name: String) {
        #expect(NameMap.unflattenedEMAName(name) == nil)
    }

    /// The tensors of tiny-sd1.safetensors with the UNet replaced by its flat EMA copies.
    static func emaOnlyDescriptors() throws -> (source: [TensorDescriptor], emaOnly: [TensorDescriptor]) {
        let source = try SafetensorsFile(path: fixturePath("tiny-sd1/tiny-sd1.safetensors")).tensors
        var emaOnly = source.map { d in
            var e = d
            if d.name.hasPrefix("model.diffusion_model.") { e.name = NameMap.emaName(of: d.name) }
            return e
        }
        emaOnly.append(TensorDescriptor(name: "model_ema.decay", dtype: .f32, shape: [], byteCount: 4))
        emaOnly.append(TensorDescriptor(name: "model_ema.num_updates", dtype: .i32, shape: [], byteCount: 4))
        return (source, emaOnly)
    }

    @Test("detection finds the UNet in the EMA copies; the map reads them under the main names")
    func detectionAndMap() throws {
        let (source, emaOnly) = try Self.emaOnlyDescriptors()
        let layout = try #require(ModelLayout.recognize(emaOnly.map(\.name)))
        #expect(layout.kind == .ldm && layout.layout(of: .unet)?.naming == .ldmUNet)
        let mapping = try NameMap.canonical(emaOnly, layout: layout)
        #expect(mapping.ema.only && mapping.ema.selected && mapping.ema.tensorCount == 684)
        let reference = try NameMap.canonical(source, layout: ModelLayout.recognize(source.map(\.name)))
        #expect(mapping.recipes.map(\.name) == reference.recipes.map(\.name))
        for (a, b) in zip(mapping.recipes, reference.recipes) {
            #expect(a.sources == b.sources.map { $0.hasPrefix("model.diffusion_model.") ? NameMap.emaName(of: $0) : $0 })
            #expect(a.shape == b.shape && a.dtype == b.dtype)
        }
        #expect(
            Set(mapping.leftovers.map(\.descriptor.name))
                == Set(reference.leftovers.map(\.descriptor.name) + ["model_ema.decay", "model_ema.num_updates"]))
        let d = Detection.detect(mapping.descriptors, layout: layout, sourceNames: emaOnly.map(\.name))
        #expect(d.familyID == "sd1" && d.kind == .pipeline)
        let unet = try #require(d.components.first { $0.component == .unet })
        #expect(unet.missing.isEmpty && unet.unexpected.isEmpty && unet.shapeMismatches.isEmpty && unet.tensorCount == 684)
        // Asking for EMA explicitly gives the same map.
        let explicit = try NameMap.canonical(emaOnly, layout: layout, weights: .ema)
        #expect(explicit.recipes.map(\.sources) == mapping.recipes.map(\.sources))
    }

    @Test("--keep-extra keeps leftovers under their source names; a lone EMA UNet is a UNet")
    func leftoversAndLoneUNet() throws {
        let (_, emaOnly) = try Self.emaOnlyDescriptors()
        let mapping = try NameMap.canonical(emaOnly, layout: ModelLayout.recognize(emaOnly.map(\.name)), keepExtra: true)
        #expect(mapping.recipes.contains { $0.name == "extra.model_ema.decay" && $0.sources == ["model_ema.decay"] })
        #expect(!mapping.recipes.contains { $0.sources.contains { $0.hasPrefix("model.diffusion_model.") } })

        let unetOnly = emaOnly.filter { $0.name.hasPrefix("model_ema.") }
        let layout = try #require(ModelLayout.recognize(unetOnly.map(\.name)))
        #expect(layout.components.map(\.component) == [.unet])
        let lone = try NameMap.canonical(unetOnly, layout: layout)
        #expect(lone.recipes.count == 684 && lone.ema.only)
    }

    @Test("a file with main weights is not EMA-only, with or without EMA copies")
    func notEMAOnly() throws {
        let (source, emaOnly) = try Self.emaOnlyDescriptors()
        #expect(NameMap.emaOnlyUNet(source.map(\.name)) == nil)
        #expect(NameMap.emaOnlyUNet((source + emaOnly.filter { $0.name.hasPrefix("model_ema.") }).map(\.name)) == nil)
        let both = source + emaOnly.filter { $0.name.hasPrefix("model_ema.") }
        let mapping = try NameMap.canonical(both, layout: ModelLayout.recognize(both.map(\.name)))
        #expect(!mapping.ema.only && !mapping.ema.selected && mapping.ema.tensorCount == 684)
    }
}
