import Adapters
import CheckpointFormats
import Foundation
import ModelCatalog
import StrictJSON
import TensorCore
import TestSupport
import Testing

@Suite("Adapter merge against the goldens")
struct MergeTests {
    struct Case: Sendable, CustomStringConvertible {
        var adapter: String
        var base: String
        var description: String { adapter }
    }

    /// Each golden's scale is in its metadata; the oracle is diffusers' fuse_lora for kohya and
    /// PEFT LoRAs, ComfyUI's formulas (numpy, float64) for LyCORIS and full diffs.
    @Test(
        "merged tensors equal the golden within 1e-6 relative; nothing else changes",
        arguments: [
            Case(adapter: "sd1-kohya-lora", base: "sd1"), Case(adapter: "sd1-peft-lora", base: "sd1"),
            Case(adapter: "sd1-locon", base: "sd1"), Case(adapter: "sd1-tucker", base: "sd1"),
            Case(adapter: "sd1-loha", base: "sd1"), Case(adapter: "sd1-lokr", base: "sd1"),
            Case(adapter: "sd1-dora", base: "sd1"), Case(adapter: "sd1-full-diff", base: "sd1"),
            Case(adapter: "sdxl-kohya-lora", base: "sdxl"),
        ])
    func merge(_ c: Case) throws {
        let base = try (c.base == "sd1" ? Base.sd1 : Base.sdxl).get()
        let golden = try SafetensorsFile(path: adapterFixture(c.adapter + ".merged.safetensors"))
        let scale = try #require(golden.metadata["scale"].flatMap(Double.init))
        let adapter = try openAdapter(c.adapter + ".safetensors", scale: scale)
        #expect(adapter.scale == scale)
        let plan = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter])
        let merged = MergedStore(plan: plan, mergedDType: .f32)
        #expect(Set(merged.changedTensors) == Set(golden.tensors.map(\.name)))
        for d in golden.tensors {
            let expected = try golden.tensor(named: d.name).floats()
            let actual = try merged.tensor(named: d.name).floats()
            #expect(actual.count == expected.count, "\(d.name)")
            let e = relativeError(actual, expected)
            #expect(e.relative <= 1e-6, "\(d.name): max abs \(e.maxAbs) (relative \(e.relative)) at \(e.index)")
        }
        // An untouched tensor is the base's own bytes.
        let untouched = try #require(
            base.store.tensors.first { merged.descriptor(named: $0.name) != nil && !merged.changedTensors.contains($0.name) })
        #expect(try merged.tensor(named: untouched.name).floats() == base.store.tensor(named: untouched.name).floats())
    }

    @Test("the merged store keeps the base's dtype unless asked, and records its adapters")
    func provenance() throws {
        let base = try Base.sd1.get()
        let adapter = try openAdapter("sd1-locon.safetensors", scale: 0.5)
        let plan = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter])
        let merged = MergedStore(plan: plan)
        for name in merged.changedTensors { #expect(merged.descriptor(named: name)?.dtype == base.store.descriptor(named: name)?.dtype) }
        let record = try #require(merged.metadata["weightpack.adapters"])
        let parsed = try Array(record.utf8).withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }
        let first = try #require(parsed.arrayValue?.first?.objectValue)
        #expect(first["scale"]?.doubleValue == 0.5)
        #expect(first["modules"]?.intValue == 2)
        let sha = try #require(first["sha256"]?.stringValue)
        #expect(sha.count == 64)
        #expect(sha == (try ScaledAdapter.fileSHA256(adapterFixture("sd1-locon.safetensors"))))
    }

    @Test("two adapters stack; the scale is linear for a LoRA")
    func stacking() throws {
        let base = try Base.sd1.get()
        let name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
        func merged(_ scales: [Double]) throws -> [Float] {
            let adapters = try scales.map { try openAdapter("sd1-locon.safetensors", scale: $0) }
            let plan = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: adapters)
            return try MergedStore(plan: plan, mergedDType: .f32).tensor(named: name).floats()
        }
        let twice = try merged([0.4, 0.4]), once = try merged([0.8])
        #expect(relativeError(twice, once).relative < 1e-6)
        let tenPercentOff = try merged([0.88])
        #expect(relativeError(tenPercentOff, once).maxAbs > 1e-4)
    }

    @Test("run-time factors: base + scale·up·down equals the merge; dense changes for LoHa")
    func runtime() throws {
        let base = try Base.sd1.get()
        for file in ["sd1-kohya-lora.safetensors", "sd1-tucker.safetensors", "sd1-loha.safetensors"] {
            let adapter = try openAdapter(file, scale: 0.8)
            let plan = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [adapter])
            let merged = MergedStore(plan: plan, mergedDType: .f32)
            let layers = try plan.runtimeLayers()
            #expect(layers.count == adapter.adapter.modules.count)
            for layer in layers {
                var w = try base.store.tensor(named: layer.target).floats()
                switch layer.factors {
                case .lowRank(let down, let downShape, let up, let upShape):
                    #expect(file != "sd1-loha.safetensors")
                    let r = upShape[1], out = upShape[0], inner = down.count / r
                    #expect(downShape[0] == r)
                    for o in 0..<out {
                        for j in 0..<inner {
                            var s: Float = 0; for k in 0..<r { s += up[o * r + k] * down[k * inner + j] }; w[o * inner + j] += layer.scale * s
                        }
                    }
                case .dense(let delta):
                    #expect(file == "sd1-loha.safetensors")
                    for i in w.indices { w[i] += layer.scale * delta[i] }
                }
                let e = relativeError(w, try merged.tensor(named: layer.target).floats())
                #expect(e.relative < 1e-6, "\(file) \(layer.target): \(e)")
            }
        }
    }

    @Test("a merged store streams through the safetensors writer and reads back")
    func writes() throws {
        let base = try Base.sd1.get()
        let plan = try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [try openAdapter("sd1-lokr.safetensors", scale: 0.8)])
        let merged = MergedStore(plan: plan, mergedDType: .f32)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("adapters-merge-\(getpid()).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafetensorsWriter.write(OutputTensor.plan(from: merged, dtype: .keep), metadata: merged.metadata, to: path, overwrite: false)
        let back = try SafetensorsFile(path: path)
        #expect(back.tensors.count == merged.tensors.count)
        for name in merged.changedTensors { #expect(try back.tensor(named: name).floats() == merged.tensor(named: name).floats()) }
        #expect(back.metadata["weightpack.adapters"] != nil)
    }
}

@Suite("One call per command")
struct CommandEntryTests {
    @Test("merge: arguments FILE:SCALE give the golden; inspect: nil for a model")
    func merging() throws {
        let base = try Base.sd1.get()
        let merged = try MergedStore.merging(
            [adapterFixture("sd1-loha.safetensors") + ":0.8"], into: base.store, baseFamily: base.family, mergedDType: .f32)
        let golden = try SafetensorsFile(path: adapterFixture("sd1-loha.merged.safetensors"))
        for d in golden.tensors {
            #expect(relativeError(try merged.tensor(named: d.name).floats(), try golden.tensor(named: d.name).floats()).relative <= 1e-6)
        }
        #expect(try AdapterReport.inspect(base.store) == nil)
        #expect(try AdapterReport.inspect(try ModelInput.open(adapterFixture("sd1-lokr.safetensors")))?.kinds.first?.kind == "LoKr")
        #expect(
            try AdapterPlan.runtimeLayers([adapterFixture("sd1-kohya-lora.safetensors") + ":0.8"], for: base.store, baseFamily: base.family).count
                == 13)
    }

    @Test("merged tensors in f16 are the f32 merge rounded once")
    func halfPrecision() throws {
        let base = try Base.sd1.get()
        let args = [adapterFixture("sd1-locon.safetensors") + ":0.8"]
        let full = try MergedStore.merging(args, into: base.store, baseFamily: base.family, mergedDType: .f32)
        let half = try MergedStore.merging(args, into: base.store, baseFamily: base.family, mergedDType: .f16)
        for name in full.changedTensors {
            #expect(half.descriptor(named: name)?.dtype == .f16)
            let rounded = try full.tensor(named: name).floats().map { Float(Float16($0)) }
            #expect(try half.tensor(named: name).floats() == rounded)
        }
    }

    @Test("--embedding: token, expanded tokens and rows per encoder")
    func embedding() throws {
        let e = try LoadedEmbedding.open(adapterFixture("ti-diffusers.safetensors"))
        #expect(e.token == "<tinycat>")
        #expect(e.tokens == ["<tinycat>", "<tinycat>_1"])
        #expect(e.rows[.textEncoder]?.count == 64)
        let x = try LoadedEmbedding.open(adapterFixture("ti-sdxl.safetensors"), token: "<p>")
        #expect(x.tokens == ["<p>", "<p>_1", "<p>_2"])
        #expect(Set(x.rows.keys) == [.textEncoder, .textEncoder2])
        let a = try LoadedEmbedding.open(adapterFixture("ti-a1111.safetensors"))
        #expect(a.token == "ti-a1111")
        #expect { try LoadedEmbedding.open(adapterFixture("sd1-locon.safetensors")) } throws: { ($0 as? AdapterError)?.code == .malformed }
    }

    @Test("the added token ids diffusers gave match one id per vector after the vocabulary")
    func promptGoldenShape() throws {
        // The tokenizer/text-encoder check itself belongs to the run-time step; here the golden's
        // shape and its relation to the embedding file are checked.
        let golden = try SafetensorsFile(path: adapterFixture("ti-prompt.safetensors"))
        let ids = try golden.tensor(named: "added_token_ids")
        #expect(ids.shape == [2])
        #expect(golden.metadata["token"] == "<tinycat>")
        #expect(golden.metadata["expanded_prompt"]?.contains("<tinycat> <tinycat>_1") == true)
    }
}

/// Counts which tensors a store hands out.
final class CountingStore: TensorStore, @unchecked Sendable {
    let base: any TensorStore
    private(set) var reads: [String] = []
    init(_ base: any TensorStore) { self.base = base }
    var formatName: String { base.formatName }
    var tensors: [TensorDescriptor] { base.tensors }
    var metadata: [String: String] { base.metadata }
    func descriptor(named name: String) -> TensorDescriptor? { base.descriptor(named: name) }
    func tensor(named name: String) throws -> TensorView {
        reads.append(name)
        return try base.tensor(named: name)
    }
}

@Suite("Streaming merge")
struct StreamingTests {
    @Test("writing a merged model reads each base tensor once and each factor only for its own tensor")
    func oneTensorAtATime() throws {
        let base = try Base.sd1.get()
        let counting = CountingStore(base.store)
        let adapterStore = CountingStore(try ModelInput.open(adapterFixture("sd1-loha.safetensors")))
        let adapter = ScaledAdapter(adapter: try Adapter(store: adapterStore), scale: 0.8, name: "loha")
        let parseReads = adapterStore.reads.count  // the alphas, read when the file is parsed
        let merged = MergedStore(plan: try AdapterPlan(base: counting, baseFamily: base.family, adapters: [adapter]))
        #expect(counting.reads.isEmpty, "planning read base values")
        #expect(adapterStore.reads.count == parseReads, "planning read factor values")
        var factorReads: [String: Int] = [:]
        for t in OutputTensor.plan(from: merged, dtype: .keep) {
            let before = adapterStore.reads.count
            _ = try t.load()
            let factors = adapterStore.reads[before...]
            factorReads[t.name] = factors.count
            // Only the module that changes this tensor is read, and only its own factors.
            if merged.changedTensors.contains(t.name) {
                let module = try #require(
                    adapter.adapter.modules.first { m in merged.plan.changes[t.name]?.contains { $0.module.key == m.key } == true })
                #expect(factors.allSatisfy { $0.hasPrefix(module.key + ".") })
            }
        }
        #expect(counting.reads == base.store.tensors.map(\.name))
        #expect(factorReads.filter { $0.value > 0 }.count == merged.changedTensors.count)
    }
}
