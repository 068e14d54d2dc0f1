import Adapters
import CheckpointFormats
import ModelCatalog
import StrictJSON
import TestSupport
import Testing

@Suite("Adapter recognition")
struct RecognitionTests {
    struct Case: Sendable, CustomStringConvertible {
        var file: String
        var kinds: [String]
        var dialect: String
        var family: String?
        var candidates: [String] = []
        var modules: Int
        var description: String { file }
    }

    static let cases: [Case] = [
        Case(file: "sd1-kohya-lora.safetensors", kinds: ["LoRA"], dialect: "kohya", family: "sd1", modules: 13),
        Case(file: "sd1-peft-lora.safetensors", kinds: ["LoRA"], dialect: "diffusers-peft", family: "sd1", modules: 86),
        Case(
            file: "sd1-attn-processor-lora.safetensors", kinds: ["LoRA"], dialect: "diffusers-attn-processor", family: nil,
            candidates: ["sd1", "sd2"], modules: 64),
        Case(file: "sd1-locon.safetensors", kinds: ["LoCon", "LoRA"], dialect: "kohya", family: nil, candidates: ["sd1", "sd2"], modules: 2),
        // One 3×3 convolution of the first down level: every family has it, so the family stays open.
        Case(
            file: "sd1-tucker.safetensors", kinds: ["LoCon+Tucker"], dialect: "kohya", family: nil,
            candidates: ["sd1", "sd2", "sdxl", "sdxl-refiner"], modules: 1),
        Case(file: "sd1-loha.safetensors", kinds: ["LoHa", "LoHa+Tucker"], dialect: "kohya", family: nil, candidates: ["sd1", "sd2"], modules: 3),
        Case(file: "sd1-lokr.safetensors", kinds: ["LoKr"], dialect: "kohya", family: nil, candidates: ["sd1", "sd2"], modules: 3),
        Case(file: "sd1-dora.safetensors", kinds: ["LoRA+DoRA"], dialect: "kohya", family: nil, candidates: ["sd1", "sd2"], modules: 1),
        Case(file: "sd1-full-diff.safetensors", kinds: ["full-diff"], dialect: "kohya", family: nil, candidates: ["sd1", "sd2"], modules: 2),
        Case(file: "sdxl-kohya-lora.safetensors", kinds: ["LoRA"], dialect: "kohya", family: "sdxl", modules: 9),
    ]

    @Test("kind, dialect, family and every module's target", arguments: cases)
    func recognises(_ c: Case) throws {
        let adapter = try openAdapter(c.file).adapter
        let report = AdapterReport(adapter)
        #expect(report.kinds.map(\.kind) == c.kinds)
        #expect(report.dialects.map(\.rawValue) == [c.dialect])
        #expect(report.family?.id == c.family, "\(report.familyEvidence) \(report.considered.map { ($0.family, $0.reasons) })")
        #expect(report.candidates == c.candidates)
        #expect(report.modules.count == c.modules)
        #expect(report.unmatched.isEmpty, "unmatched: \(report.unmatched)")
        #expect(report.unrecognizedTensors.isEmpty)
        #expect(report.modules.allSatisfy { $0.target != nil })
    }

    @Test("ranks, alphas, components, blocks and kohya training metadata of the SD 1.x kohya LoRA")
    func kohyaDetails() throws {
        let report = AdapterReport(try openAdapter("sd1-kohya-lora.safetensors").adapter)
        #expect(report.ranks.map { [$0.value, $0.modules] } == [[2, 3], [4, 10]])
        #expect(report.alphas.map { [$0.value, Double($0.modules)] } == [[1, 3], [2, 10]])
        #expect(report.components.map(\.component) == ["text_encoder", "unet"])
        #expect(report.blocks.map(\.block).contains("unet.mid_block"))
        #expect(report.blocks.map(\.block).contains("text_encoder.layers.2"))
        let training = Dictionary(uniqueKeysWithValues: report.training.map { ($0.key, $0.value) })
        #expect(training["ss_base_model_version"] == "sd_v1")
        #expect(training["ss_network_module"] == "networks.lora")
        // The tag table is summarised (datasets, distinct tags, the most frequent), not dumped.
        #expect(training["ss_tag_frequency"] == "2 datasets, 4 distinct tags; most frequent: tinycat (12), a photo (7), sketch (5), cat (4)")
        #expect(report.familyEvidence.contains { $0.contains("1×1") })
        let target = report.modules.first { $0.module.key == "lora_unet_down_blocks_0_attentions_0_proj_in" }?.target
        #expect(target == "unet.down_blocks.0.attentions.0.proj_in.weight")
    }

    @Test("SDXL kohya keys with LDM UNet names map to diffusers' canonical names")
    func sdxlNames() throws {
        let report = AdapterReport(try openAdapter("sdxl-kohya-lora.safetensors").adapter)
        let targets = Dictionary(uniqueKeysWithValues: report.modules.map { ($0.module.key, $0.target ?? "") })
        #expect(
            targets["lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_k"]
                == "unet.down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k.weight")
        #expect(targets["lora_unet_output_blocks_4_1_proj_out"] == "unet.up_blocks.1.attentions.1.proj_out.weight")
        #expect(targets["lora_te2_text_model_encoder_layers_0_mlp_fc2"] == "text_encoder_2.text_model.encoder.layers.0.mlp.fc2.weight")
        #expect(
            targets["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight")
        #expect(report.considered.first { $0.family == "sd1" }?.reasons.isEmpty == false)
    }

    @Test("PEFT alpha from diffusers' lora_adapter_metadata, alpha_pattern included")
    func peftAlpha() throws {
        let report = AdapterReport(try openAdapter("sd1-peft-lora.safetensors").adapter)
        let q = report.modules.first { $0.module.key == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" }?.module
        #expect(q?.alpha == 2)
        #expect(q?.alphaSource == "metadata alpha_pattern")
        let v = report.modules.first { $0.module.key == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v" }?.module
        #expect(v?.alpha == 8)
        // transformers 5 keys without text_model. still find their layer.
        let te = report.modules.first { $0.module.key == "text_encoder.encoder.layers.0.self_attn.q_proj" }
        #expect(te?.target == "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight")
    }

    struct EmbeddingCase: Sendable, CustomStringConvertible {
        var file: String
        var dialect: String
        var vectors: [[Int]]
        var token: String?
        var description: String { file }
    }

    @Test(
        "textual-inversion embeddings: dialect, vectors, width, encoders",
        arguments: [
            EmbeddingCase(file: "ti-a1111.pt", dialect: "a1111", vectors: [[2, 32]], token: "tinycat"),
            EmbeddingCase(file: "ti-a1111.safetensors", dialect: "a1111", vectors: [[2, 32]], token: nil),
            EmbeddingCase(file: "ti-diffusers.safetensors", dialect: "diffusers", vectors: [[2, 32]], token: "<tinycat>"),
            EmbeddingCase(file: "ti-sdxl.safetensors", dialect: "sdxl-pair", vectors: [[3, 32], [3, 32]], token: nil),
        ])
    func embeddings(_ c: EmbeddingCase) throws {
        let adapter = try openAdapter(c.file).adapter
        let e = try #require(adapter.embedding)
        #expect(e.dialect.rawValue == c.dialect)
        #expect(e.vectors.map { [$0.count, $0.width] } == c.vectors)
        #expect(e.suggestedToken == c.token)
        #expect(e.vectors.map(\.component) == (c.vectors.count == 2 ? [.textEncoder, .textEncoder2] : [.textEncoder]))
        let report = AdapterReport(adapter)
        #expect(report.kinds.map(\.kind) == ["textual-inversion"])
        if c.dialect == "sdxl-pair" { #expect(report.family?.id == "sdxl") }
        #expect(e.tokens(named: "<x>").count == c.vectors[0][0])
    }

    @Test("the A1111 .pt, A1111 safetensors and diffusers files hold the same vectors")
    func embeddingValues() throws {
        let files = ["ti-a1111.pt", "ti-a1111.safetensors", "ti-diffusers.safetensors"]
        let values = try files.map { f in
            let a = try openAdapter(f).adapter
            return try #require(a.embedding).values(for: .textEncoder, from: a.store)
        }
        #expect(values[0].count == 64)
        #expect(values[0] == values[1])
        #expect(values[0] == values[2])
    }

    @Test("inspect --json: stable fields")
    func json() throws {
        let report = AdapterReport(try openAdapter("sd1-loha.safetensors").adapter)
        let o = try #require(report.json.objectValue)
        #expect(o["kind"]?.stringValue == "network")
        #expect(o["family"]?.stringValue == "unknown")
        #expect(o["candidates"]?.arrayValue?.compactMap(\.stringValue) == ["sd1", "sd2"])
        let modules = try #require(o["modules"]?.arrayValue)
        #expect(modules.count == 3)
        #expect(modules.allSatisfy { $0.objectValue?["target"]?.stringValue?.hasPrefix("unet.") == true })
        #expect(!report.lines.isEmpty)
        #expect(report.lines[0].hasPrefix("adapter: LoHa"))
    }

    @Test("keys that match no layer are listed, not dropped")
    func unmatchedListed() throws {
        let store = ShapeOnlyStore([
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", [4, 320]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", [320, 4]),
            ("lora_unet_no_such_block_to_q.lora_down.weight", [4, 320]),
            ("lora_unet_no_such_block_to_q.lora_up.weight", [320, 4]),
            ("something_else", [3]),
        ])
        let adapter = try Adapter(store: store)
        let report = AdapterReport(adapter)
        #expect(report.unmatched == ["lora_unet_no_such_block_to_q"])
        #expect(report.unrecognizedTensors == ["something_else"])
        #expect(report.family == nil)
    }

    @Test("a file that is neither a network nor an embedding is refused")
    func notAnAdapter() throws {
        let base = try ModelInput.open(fixturePath("tiny-sd1/diffusers"))
        #expect { try Adapter(store: base) } throws: { ($0 as? AdapterError)?.code == .notAnAdapter }
    }
}

@Suite("Adapter names and bounds")
struct AdapterNameTests {
    @Test("kohya keys in LDM UNet naming find the same SD 1.x layers as diffusers naming")
    func ldmKeysOnSD1() throws {
        let base = try Base.sd1.get()
        let index = AdapterNameIndex(canonical: base.store.tensors, family: base.family)
        let store = ShapeOnlyStore([
            ("lora_unet_input_blocks_1_1_proj_in.lora_down.weight", [4, 32, 1, 1]),
            ("lora_unet_input_blocks_1_1_proj_in.lora_up.weight", [32, 4, 1, 1]),
            ("lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_q.lora_down.weight", [4, 32]),
            ("lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_q.lora_up.weight", [32, 4]),
            ("lora_unet_middle_block_0_in_layers_2.lora_down.weight", [4, 64, 3, 3]),
            ("lora_unet_middle_block_0_in_layers_2.lora_up.weight", [64, 4, 1, 1]),
        ])
        let targets = Dictionary(uniqueKeysWithValues: try Adapter(store: store).modules.map { ($0.key, index.target(of: $0)) })
        #expect(targets["lora_unet_input_blocks_1_1_proj_in"] == "unet.down_blocks.0.attentions.0.proj_in.weight")
        #expect(
            targets["lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_q"]
                == "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_q.weight")
        #expect(targets["lora_unet_middle_block_0_in_layers_2"] == "unet.mid_block.resnets.0.conv1.weight")
    }

    @Test("LyCORIS networks made directly on a diffusers UNet (lycoris_ prefix) find their layers")
    func lycorisPrefix() throws {
        let store = ShapeOnlyStore([
            ("lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a", [32, 2]),
            ("lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_b", [2, 32]),
            ("lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w2_a", [32, 2]),
            ("lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w2_b", [2, 32]),
        ])
        let report = AdapterReport(try Adapter(store: store))
        #expect(report.modules.first?.target == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")
        #expect(report.kinds.map(\.kind) == ["LoHa"])
    }

    @Test("an embedding with more vectors than a prompt holds is refused on its shape")
    func hugeEmbedding() throws {
        #expect { try Adapter(store: ShapeOnlyStore([("emb_params", [100_000, 768])])) } throws: { ($0 as? AdapterError)?.code == .tooLarge }
        let ok = try Adapter(store: ShapeOnlyStore([("emb_params", [4, 768])]))
        #expect(ok.embedding?.familyID == "sd1")
        #expect(ok.embedding?.vectors.first?.textModel == "clip-l")
        let sd2 = try Adapter(store: ShapeOnlyStore([("<x>", [1, 1024])]))
        #expect(sd2.embedding?.familyID == "sd2")
    }

    @Test("a module missing a factor, or with a 3-D factor, is malformed")
    func malformedModules() throws {
        #expect { try Adapter(store: ShapeOnlyStore([("lora_unet_x.lora_down.weight", [4, 32])])) } throws: {
            ($0 as? AdapterError)?.code == .malformed
        }
        #expect { try Adapter(store: ShapeOnlyStore([("lora_unet_x.hada_w1_a", [32, 4]), ("lora_unet_x.hada_w1_b", [4, 32])])) } throws: {
            ($0 as? AdapterError)?.code == .malformed
        }
        #expect {
            try Adapter(store: ShapeOnlyStore([("lora_unet_x.lora_down.weight", [4, 32, 3]), ("lora_unet_x.lora_up.weight", [32, 4])]))
        } throws: { ($0 as? AdapterError)?.code == .malformed }
        #expect {
            try Adapter(
                store: ShapeOnlyStore([
                    ("lora_unet_x.hada_w1_a", [32, 4]), ("lora_unet_x.hada_w1_b", [4, 32]), ("lora_unet_x.hada_w2_a", [32, 2]),
                    ("lora_unet_x.hada_w2_b", [4, 32]),
                ]))
        } throws: { ($0 as? AdapterError)?.code == .rankMismatch }
    }
}

@Suite("Family from published layer sizes")
struct PublishedSizeTests {
    func lora(_ key: String, out: Int, in inputs: Int, conv: Bool = false) -> [(String, [Int])] {
        [(key + ".lora_down.weight", conv ? [8, inputs, 1, 1] : [8, inputs]), (key + ".lora_up.weight", conv ? [out, 8, 1, 1] : [out, 8])]
    }

    @Test("SD 1.x: 768-wide context and CLIP-L text encoder, 1×1-conv proj_in")
    func sd1() throws {
        let store = ShapeOnlyStore(
            lora("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", out: 640, in: 768)
                + lora("lora_unet_down_blocks_1_attentions_0_proj_in", out: 640, in: 640, conv: true)
                + lora("lora_te_text_model_encoder_layers_11_self_attn_q_proj", out: 768, in: 768))
        let report = AdapterReport(try Adapter(store: store))
        #expect(report.family?.id == "sd1")
        #expect(report.familyEvidence.contains { $0.contains("sizes are those of the published") })
        #expect(report.familyEvidence.contains { $0.contains("768-wide context") })
    }

    @Test("SD 2.x: the same names with a 1024-wide context, linear proj_in and 23 text layers")
    func sd2() throws {
        let store = ShapeOnlyStore(
            lora("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", out: 640, in: 1024)
                + lora("lora_unet_down_blocks_1_attentions_0_proj_in", out: 640, in: 640)
                + lora("lora_te_text_model_encoder_layers_22_self_attn_q_proj", out: 1024, in: 1024))
        let report = AdapterReport(try Adapter(store: store))
        #expect(report.family?.id == "sd2")
        let sd1 = try #require(report.considered.first { $0.family == "sd1" })
        #expect(!sd1.reasons.isEmpty)
    }

    @Test("attention-only names at published SD 1.x sizes decide between SD 1.x and 2.x by width")
    func widthsDecide() throws {
        let store = ShapeOnlyStore(lora("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", out: 640, in: 768))
        let report = AdapterReport(try Adapter(store: store))
        #expect(report.family?.id == "sd1")
        #expect(report.familyEvidence.contains { $0.contains("only sd1 has these layer sizes") })
    }
}
