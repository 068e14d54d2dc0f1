import Adapters
import CheckpointFormats
import ModelCatalog
import TestSupport
import Testing

@Suite("Bad adapters are refused with one line")
struct BadAdapterTests {
    struct Case: Sendable, CustomStringConvertible {
        var file: String
        var code: String
        var description: String { file }
    }

    @Test(
        "malformed fixtures: the error code, and the message is one line",
        arguments: [
            Case(file: "bad-rank-mismatch.safetensors", code: "rank mismatch"),
            Case(file: "bad-alpha-zero.safetensors", code: "bad alpha"),
            Case(file: "bad-alpha-nan.safetensors", code: "bad alpha"),
            Case(file: "bad-rank-too-large.safetensors", code: "rank mismatch"),
        ])
    func refusedWhenRead(_ c: Case) throws {
        do {
            _ = try openAdapter(c.file)
            Issue.record("\(c.file) was accepted")
        } catch {
            let error = try #require(error as? AdapterError)
            #expect(error.code.description == c.code)
            #expect(!error.message.contains("\n"))
        }
    }

    @Test("one module in two dialects is refused when it is planned against a base")
    func duplicate() throws {
        let base = try Base.sd1.get()
        let adapter = try openAdapter("bad-duplicate-dialects.safetensors")
        #expect { try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter]) } throws: {
            ($0 as? AdapterError)?.code == .duplicateModule
        }
        let report = AdapterReport(adapter.adapter)
        #expect(report.duplicates.map(\.target) == ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
        #expect(report.duplicates.first?.modules.count == 2)
        #expect(report.lines.contains { $0.contains("is changed by 2 modules") })
        #expect { try AdapterConversion.convert(adapter.adapter, to: .kohya, family: base.family) } throws: {
            ($0 as? AdapterError)?.code == .duplicateModule
        }
    }

    @Test("an SDXL LoRA merged into SD 1.x is refused before anything is read")
    func wrongFamily() throws {
        let base = try Base.sd1.get()
        let adapter = try openAdapter("sdxl-kohya-lora.safetensors")
        do {
            _ = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter])
            Issue.record("accepted")
        } catch {
            #expect(error.code == .wrongFamily)
            #expect(error.message.contains("Stable Diffusion XL"))
            #expect(error.message.contains("Stable Diffusion 1.x"))
        }
        // Without a known base family the names still do not match.
        #expect { try AdapterPlan(base: base.store, baseFamily: nil, adapters: [adapter]) } throws: {
            ($0 as? AdapterError)?.code == .unmatchedModule
        }
    }

    @Test("an SD 1.x LoRA whose layer sizes differ from the base is refused on shapes")
    func shapeMismatch() throws {
        let store = ShapeOnlyStore([
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", [4, 320]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", [320, 4]),
        ])
        let base = try Base.sd1.get()
        let adapter = ScaledAdapter(adapter: try Adapter(store: store), name: "published-size")
        #expect { try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter]) } throws: {
            ($0 as? AdapterError)?.code == .shapeMismatch
        }
    }

    @Test(
        "hostile declared shapes are bounded before any value is read or allocated",
        arguments: [
            // A LoKr whose Kronecker product would be 2^31 × 2^31 from four small-looking factors.
            [
                ("lora_unet_x.lokr_w1_a", [65_536, 1]), ("lora_unet_x.lokr_w1_b", [1, 65_536]),
                ("lora_unet_x.lokr_w2_a", [32_768, 1]), ("lora_unet_x.lokr_w2_b", [1, 32_768]),
            ],
            // A rank beyond any layer.
            [("lora_unet_x.lora_down.weight", [1 << 20, 8]), ("lora_unet_x.lora_up.weight", [8, 1 << 20])],
        ])
    func hostile(_ shapes: [(String, [Int])]) throws {
        let base = try Base.sd1.get()
        do {
            let adapter = try Adapter(store: ShapeOnlyStore(shapes))
            _ = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [ScaledAdapter(adapter: adapter, name: "hostile")])
            Issue.record("accepted")
        } catch {
            #expect([.tooLarge, .unmatchedModule, .rankMismatch].contains(error.code), "\(error.code): \(error.message)")
        }
        // The shapes alone say how large the product would be, with overflow checks.
        if let adapter = try? Adapter(store: ShapeOnlyStore(shapes)), let m = adapter.modules.first, m.algorithm == .lokr {
            let implied = try DeltaShape.implied(by: m)
            #expect(implied.out == 65_536 * 32_768)
            #expect(!implied.matches([320, 320]))
        }
    }

    @Test("tensors that belong to no module stop a merge instead of being left out")
    func leftoversStopMerge() throws {
        let base = try Base.sd1.get()
        let store = ShapeOnlyStore([
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", [4, 32]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", [32, 4]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_magnitude_vector", [32]),
        ])
        let adapter = ScaledAdapter(adapter: try Adapter(store: store), name: "peft-dora")
        do {
            _ = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter])
            Issue.record("accepted")
        } catch {
            #expect(error.code == .unmatchedModule)
            #expect(error.message.contains("lora_magnitude_vector"))
        }
    }

    @Test("an embedding is not merged as a network")
    func embeddingNotMerged() throws {
        let base = try Base.sd1.get()
        #expect { try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [try openAdapter("ti-diffusers.safetensors")]) } throws: {
            ($0 as? AdapterError)?.code == .malformed
        }
    }

    @Test("a scale that is not a finite number")
    func badScale() throws {
        #expect { try ScaledAdapter.open(adapterFixture("sd1-locon.safetensors") + ":nan") } throws: { ($0 as? AdapterError)?.code == .badScale }
    }
}
