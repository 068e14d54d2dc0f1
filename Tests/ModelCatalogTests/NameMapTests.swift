import CheckpointFormats
import ModelCatalog
import TensorCore
import TestSupport
import Testing

@Suite("name maps: LDM ↔ canonical ↔ diffusers, bit for bit")
struct NameMapTests {
    static let models = ["sd1", "sd2", "sdxl"]

    @Test("LDM file → canonical → LDM gives every weight back byte for byte, in order", arguments: models)
    func ldmRoundTrip(model: String) throws {
        let (source, mapping, canonicalStore) = try canonical(fixturePath("tiny-\(model)/tiny-\(model).safetensors"))
        let layout = try #require(mapping.layout)
        #expect(layout.kind == .ldm)
        let (recipes, omitted) = try NameMap.export(canonicalStore.tensors, to: layout, family: nil)
        #expect(omitted.isEmpty)
        let back = RemappedStore(base: canonicalStore, recipes: recipes)
        let leftovers = Set(mapping.leftovers.map(\.descriptor.name))
        let expected = source.tensors.map(\.name).filter { !leftovers.contains($0) }
        #expect(back.tensors.map(\.name).sorted() == expected.sorted())
        for name in expected {
            let problem = difference(try back.tensor(named: name), try source.tensor(named: name))
            #expect(problem == nil, "\(problem ?? "")")
        }
    }

    @Test("diffusers folder → canonical → diffusers names give every tensor back", arguments: models)
    func diffusersRoundTrip(model: String) throws {
        let (source, mapping, canonicalStore) = try canonical(fixturePath("tiny-\(model)/diffusers"))
        let layout = try #require(mapping.layout)
        #expect(layout.kind == .diffusers)
        #expect(mapping.leftovers.isEmpty)
        let (recipes, _) = try NameMap.export(canonicalStore.tensors, to: layout, family: nil)
        let back = RemappedStore(base: canonicalStore, recipes: recipes)
        #expect(Set(back.tensors.map(\.name)) == Set(source.tensors.map(\.name)))
        for d in source.tensors {
            let problem = difference(try back.tensor(named: d.name), try source.tensor(named: d.name))
            #expect(problem == nil, "\(problem ?? "")")
        }
    }

    @Test("LDM → canonical equals diffusers → canonical (the reference folder), tensor for tensor", arguments: models)
    func layoutsAgree(model: String) throws {
        let (_, _, fromLDM) = try canonical(fixturePath("tiny-\(model)/tiny-\(model).safetensors"))
        let (_, _, fromDiffusers) = try canonical(fixturePath("tiny-\(model)/diffusers"))
        let ldmNames = Set(fromLDM.tensors.map(\.name)), diffusersNames = Set(fromDiffusers.tensors.map(\.name))
        // What only the LDM file has: CLIP position_ids (a buffer transformers does not save) and,
        // for SD 2.x, the OpenCLIP tower's last layer and projection, which diffusers drops.
        for name in ldmNames.subtracting(diffusersNames) {
            #expect(name.hasSuffix("position_ids") || (model == "sd2" && (name.contains("layers.3.") || name.contains("text_projection"))), "\(name)")
        }
        #expect(diffusersNames.isSubset(of: ldmNames))
        for name in diffusersNames {
            let problem = difference(try fromLDM.tensor(named: name), try fromDiffusers.tensor(named: name))
            #expect(problem == nil, "\(problem ?? "")")
        }
    }

    @Test("canonical → the other layout equals the reference file of that layout", arguments: models)
    func crossLayouts(model: String) throws {
        let ldmFile = try ModelInput.open(fixturePath("tiny-\(model)/tiny-\(model).safetensors"))
        let folder = try ModelInput.open(fixturePath("tiny-\(model)/diffusers"))
        let (_, ldmMapping, fromLDM) = try canonical(fixturePath("tiny-\(model)/tiny-\(model).safetensors"))
        let (_, diffusersMapping, fromDiffusers) = try canonical(fixturePath("tiny-\(model)/diffusers"))
        let family = ArchitectureCatalog.standard.family(model)
        // diffusers → LDM: every tensor made equals the reference LDM file's.
        let (toLDM, _) = try NameMap.export(fromDiffusers.tensors, to: try #require(ldmMapping.layout), family: family)
        let ldm = RemappedStore(base: fromDiffusers, recipes: toLDM)
        for d in ldm.tensors {
            let problem = difference(try ldm.tensor(named: d.name), try ldmFile.tensor(named: d.name))
            #expect(problem == nil, "\(problem ?? "")")
        }
        // LDM → diffusers: the same names as the reference folder (modulo transformers 5's
        // unprefixed text encoder names) and the same bytes.
        let target = ModelLayout.diffusers(Component.allCases.filter { c in fromLDM.tensors.contains { $0.name.hasPrefix(c.canonicalPrefix) } })
        let (toDiffusers, _) = try NameMap.export(fromLDM.tensors, to: target, family: family)
        let diffusers = RemappedStore(base: fromLDM, recipes: toDiffusers)
        #expect(diffusers.tensors.count == folder.tensors.count)
        let folderLayout = try #require(diffusersMapping.layout)
        for d in diffusers.tensors {
            let (recipes, _) = try NameMap.export([d], to: folderLayout, family: family)
            let referenceName = try #require(recipes.first).name
            let problem = difference(try diffusers.tensor(named: d.name), try folder.tensor(named: referenceName))
            #expect(problem == nil, "\(problem ?? "")")
        }
    }

    @Test("OpenCLIP in_proj splits into q, k, v rows and merges back; text_projection transposes")
    func openCLIPReshapes() throws {
        let (source, _, canonicalStore) = try canonical(fixturePath("tiny-sd2/tiny-sd2.safetensors"))
        let fused = try source.tensor(named: "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")
        let q = try canonicalStore.tensor(named: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight")
        let v = try canonicalStore.tensor(named: "text_encoder.text_model.encoder.layers.0.self_attn.v_proj.weight")
        #expect(fused.shape == [96, 32] && q.shape == [32, 32])
        #expect(bytes(q) == Array(bytes(fused)[0..<(32 * 32 * 2)]))
        #expect(bytes(v) == Array(bytes(fused)[(64 * 32 * 2)...]))
        let projection = try source.tensor(named: "cond_stage_model.model.text_projection")
        let transposed = try canonicalStore.tensor(named: "text_encoder.text_projection.weight")
        let p = try projection.floats(), t = try transposed.floats()
        #expect(projection.shape == [32, 32] && transposed.shape == [32, 32])
        #expect(p[1 * 32 + 5] == t[5 * 32 + 1])
    }

    @Test("VAE mid attention: 1×1 conv in LDM, linear in canonical")
    func vaeAttentionReshape() throws {
        let (source, _, canonicalStore) = try canonical(fixturePath("tiny-sd1/tiny-sd1.safetensors"))
        let conv = try source.tensor(named: "first_stage_model.decoder.mid.attn_1.q.weight")
        let linear = try canonicalStore.tensor(named: "vae.decoder.mid_block.attentions.0.to_q.weight")
        #expect(conv.shape == [64, 64, 1, 1] && linear.shape == [64, 64])
        #expect(bytes(conv) == bytes(linear))
    }

    @Test(
        "single names map as the reference tables say",
        arguments: [
            ("model.diffusion_model.input_blocks.4.0.in_layers.2.weight", "unet.down_blocks.1.resnets.0.conv1.weight"),
            ("model.diffusion_model.input_blocks.3.0.op.weight", "unet.down_blocks.0.downsamplers.0.conv.weight"),
            ("model.diffusion_model.middle_block.1.proj_in.weight", "unet.mid_block.attentions.0.proj_in.weight"),
            ("model.diffusion_model.middle_block.2.out_layers.3.bias", "unet.mid_block.resnets.1.conv2.bias"),
            ("model.diffusion_model.output_blocks.2.1.conv.weight", "unet.up_blocks.0.upsamplers.0.conv.weight"),
            ("model.diffusion_model.output_blocks.5.2.conv.weight", "unet.up_blocks.1.upsamplers.0.conv.weight"),
            ("model.diffusion_model.output_blocks.4.0.skip_connection.weight", "unet.up_blocks.1.resnets.1.conv_shortcut.weight"),
            ("model.diffusion_model.out.2.weight", "unet.conv_out.weight"),
            ("first_stage_model.decoder.up.3.block.0.conv1.weight", "vae.decoder.up_blocks.0.resnets.0.conv1.weight"),
            ("first_stage_model.encoder.down.1.downsample.conv.weight", "vae.encoder.down_blocks.1.downsamplers.0.conv.weight"),
            ("first_stage_model.encoder.norm_out.weight", "vae.encoder.conv_norm_out.weight"),
            ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "text_encoder.text_model.final_layer_norm.weight"),
        ])
    func singleNames(ldm: String, canonical expected: String) throws {
        let (_, mapping, _) = try canonical(fixturePath("tiny-sd1/tiny-sd1.safetensors"))
        let recipe = try #require(mapping.recipes.first { $0.sources == [ldm] })
        #expect(recipe.name == expected)
    }

    @Test("leftovers are classified and dropped unless kept")
    func leftovers() throws {
        let (_, mapping, _) = try canonical(fixturePath("tiny-sd2/tiny-sd2.safetensors"))
        let kinds = Dictionary(grouping: mapping.leftovers, by: \.kind).mapValues(\.count)
        #expect(kinds[.schedule] == 12)
        #expect(kinds[.unused] == 1)  // cond_stage_model.model.logit_scale
        let (_, kept, _) = try canonical(fixturePath("tiny-sd2/tiny-sd2.safetensors"), keepExtra: true)
        #expect(kept.recipes.contains { $0.name == "extra.betas" })
        #expect(NameMap.classify("model_ema.decay") == .emaBookkeeping)
        #expect(NameMap.classify("model_ema.diffusion_modelout2weight") == .ema)
        #expect(NameMap.classify("something_else") == .unknown)
    }

    @Test("EMA name flattening matches LitEma")
    func emaNames() {
        #expect(NameMap.emaName(of: "model.diffusion_model.input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight")
    }
}
