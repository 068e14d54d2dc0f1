import CheckpointFormats
import ModelCatalog
import TensorCore
import TestSupport
import Testing

@Suite("detection from names and shapes")
struct DetectionTests {
    @Test(
        "every fixture is detected with its evidence",
        arguments: [
            ("tiny-sd1/tiny-sd1.safetensors", "sd1", "base", "epsilon"),
            ("tiny-sd1/tiny-sd1.ckpt", "sd1", "base", "epsilon"),
            ("tiny-sd1/diffusers", "sd1", "base", "epsilon"),
            ("tiny-sd2/tiny-sd2.safetensors", "sd2", "base", "unknown"),
            ("tiny-sd2/diffusers", "sd2", "base", "v_prediction"),
            ("tiny-sdxl/tiny-sdxl.safetensors", "sdxl", "base", "epsilon"),
            ("tiny-sdxl/diffusers", "sdxl", "base", "epsilon"),
        ])
    func fixtures(path: String, family: String, variant: String, prediction: String) throws {
        let store = try ModelInput.open(fixturePath(path))
        let (_, mapping, canonicalStore) = try canonical(fixturePath(path))
        let scheduler = (store as? DiffusersFolder)?.schedulerConfig
        let d = Detection.detect(canonicalStore.tensors, layout: mapping.layout, sourceNames: store.tensors.map(\.name), schedulerConfig: scheduler)
        #expect(d.familyID == family)
        #expect(d.variant == variant)
        #expect((d.predictionType?.rawValue ?? "unknown") == prediction)
        #expect(d.kind == .pipeline)
        #expect(d.rejected.count == 3)
        #expect(d.referenceDimensions == false)
        for c in d.components {
            #expect(
                c.missing.isEmpty && c.unexpected.isEmpty && c.shapeMismatches.isEmpty,
                "\(c.component): \(c.missing.prefix(3)) \(c.unexpected.prefix(3)) \(c.shapeMismatches.prefix(3))")
        }
        #expect(!d.evidence.isEmpty)
    }

    /// A full-size model built from the catalog's published hyper-parameters.
    static func published(_ familyID: String, inChannels: Int) -> [(String, Shape)] {
        let f = ArchitectureCatalog.standard.family(familyID)!
        var shapes: [String: Shape] = ["unet.conv_in.weight": Shape([f.unet.blockOutChannels[0], inChannels, 3, 3])]
        var u = UNetStructure(shapes)!
        u.blockOutChannels = f.unet.blockOutChannels
        u.layersPerBlock = f.unet.layersPerBlock
        u.transformerDepth = f.unet.transformerDepth
        u.upTransformerDepth = f.unet.transformerDepth.reversed()
        u.midTransformerDepth = f.unet.transformerDepth.max()!
        u.contextDim = f.unet.contextDim
        u.linearProjection = f.unet.linearProjection
        u.outChannels = 4
        u.timeEmbedDim = 4 * f.unet.blockOutChannels[0]
        u.additionEmbed = f.unet.additionEmbed
        var out = u.expectedTensors
        for slot in f.textEncoders {
            let m = slot.model
            shapes = [slot.component.canonicalPrefix + "text_model.embeddings.token_embedding.weight": Shape([m.vocab, m.hidden])]
            var t = TextEncoderStructure(slot.component, shapes)!
            t.layers = m.layers; t.intermediate = m.intermediate; t.positions = m.positions
            t.projection = slot.component == .textEncoder2 ? m.projection : nil
            out += t.expectedTensors
        }
        return out
    }

    @Test(
        "published-size models and their variants are told apart",
        arguments: [
            ("sd1", 4, "base"), ("sd1", 9, "inpainting"), ("sd1", 8, "instruct-pix2pix"),
            ("sd2", 4, "base"), ("sd2", 9, "inpainting"), ("sd2", 5, "depth"),
            ("sdxl", 4, "base"), ("sdxl", 9, "inpainting"), ("sdxl-refiner", 4, "base"),
        ])
    func publishedSizes(family: String, inChannels: Int, variant: String) {
        let shapes = Self.published(family, inChannels: inChannels)
        let store = ShapeStore(shapes)
        let d = Detection.detect(store.tensors, layout: nil)
        #expect(d.familyID == family)
        #expect(d.variant == variant)
        #expect(d.referenceDimensions == true)
        #expect(d.components.allSatisfy { $0.missing.isEmpty && $0.shapeMismatches.isEmpty })
    }

    @Test("a missing tensor and a wrong shape are reported per component")
    func damage() {
        var shapes = Self.published("sd1", inChannels: 4)
        shapes.removeAll { $0.0 == "unet.down_blocks.1.resnets.0.conv2.weight" }
        if let i = shapes.firstIndex(where: { $0.0 == "unet.mid_block.resnets.0.conv1.bias" }) { shapes[i].1 = [7] }
        let d = Detection.detect(ShapeStore(shapes).tensors, layout: nil)
        let unet = d.components.first { $0.component == .unet }!
        #expect(unet.missing == ["unet.down_blocks.1.resnets.0.conv2.weight"])
        #expect(unet.shapeMismatches.map(\.tensor) == ["unet.mid_block.resnets.0.conv1.bias"])
    }

    @Test("a VAE alone: component file, family undecided with candidates")
    func vaeOnly() throws {
        let (_, mapping, canonicalStore) = try canonical(fixturePath("tiny-sd1/diffusers/vae/diffusion_pytorch_model.safetensors"))
        let d = Detection.detect(canonicalStore.tensors, layout: mapping.layout)
        #expect(d.kind == .component(.vae))
        #expect(d.family == nil)
        #expect(d.candidates.count == 4)
    }

    @Test("a marker tensor decides SDXL v-prediction")
    func vPredictionMarker() {
        let store = ShapeStore(Self.published("sdxl", inChannels: 4))
        let d = Detection.detect(store.tensors, layout: nil, sourceNames: ["v_pred"])
        #expect(d.predictionType == .vPrediction)
    }

    @Test(
        "layouts are recognised from names",
        arguments: [
            (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"], "ldm"),
            (["unet.conv_in.weight", "text_encoder.embeddings.token_embedding.weight"], "diffusers"),
            (["encoder.down.0.block.0.conv1.weight"], "ldm"),
            (["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"], "diffusers"),
        ])
    func layouts(names: [String], kind: String) throws {
        #expect(try #require(ModelLayout.recognize(names)).kind.rawValue == kind)
    }

    @Test("the bundled catalog equals Formats/architectures.json")
    func bundledCopy() throws {
        let formats = try String(contentsOfFile: repositoryURL.appendingPathComponent("Formats/architectures.json").path, encoding: .utf8)
        let bundled = try String(
            contentsOfFile: repositoryURL.appendingPathComponent("Sources/ModelCatalog/Data/architectures.json").path, encoding: .utf8)
        #expect(formats == bundled)
        #expect(ArchitectureCatalog.standard.families.map(\.id) == ["sd1", "sd2", "sdxl", "sdxl-refiner"])
    }
}
