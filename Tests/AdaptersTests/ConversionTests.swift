import Adapters
import CheckpointFormats
import Foundation
import ModelCatalog
import TensorCore
import Testing

@Suite("Dialect conversion kohya ↔ diffusers/PEFT")
struct ConversionTests {
    func bytes(_ store: any TensorStore, _ name: String) throws -> [UInt8] {
        try store.tensor(named: name).bytes.withUnsafeBytes { Array($0) }
    }

    func write(_ store: any TensorStore, _ tag: String) throws -> SafetensorsFile {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("adapters-\(tag)-\(getpid()).safetensors").path
        try? FileManager.default.removeItem(atPath: path)
        try SafetensorsWriter.write(OutputTensor.plan(from: store, dtype: .keep), metadata: store.metadata, to: path, overwrite: false)
        let file = try SafetensorsFile(path: path)
        try? FileManager.default.removeItem(atPath: path)  // the mapping stays valid
        return file
    }

    @Test("kohya → diffusers → kohya gives back every tensor byte for byte, alphas through the metadata")
    func roundTrip() throws {
        let original = try openAdapter("sd1-kohya-lora.safetensors").adapter
        let family = ArchitectureCatalog.standard.family("sd1")
        let converted = try AdapterConversion.convert(original, to: .diffusers, family: family)
        let peft = try write(converted, "peft")
        // WEIGHTPACK_KEEP_CONVERTED=DIR keeps a copy for checking with diffusers by hand (Docs/adapters.md).
        if let dir = ProcessInfo.processInfo.environment["WEIGHTPACK_KEEP_CONVERTED"] {
            try SafetensorsWriter.write(
                OutputTensor.plan(from: converted, dtype: .keep), metadata: converted.metadata, to: dir + "/sd1-kohya-as-diffusers.safetensors",
                overwrite: true)
        }
        let asPEFT = try Adapter(store: peft)
        #expect(asPEFT.modules.allSatisfy { $0.dialect == .peft })
        #expect(peft.tensors.allSatisfy { $0.name.hasSuffix(".lora_A.weight") || $0.name.hasSuffix(".lora_B.weight") })
        #expect(peft.tensors.contains { $0.name == "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight" })
        let back = try write(try AdapterConversion.convert(asPEFT, to: .kohya, family: family), "kohya")
        #expect(Set(back.tensors.map(\.name)) == Set(original.store.tensors.map(\.name)))
        for d in original.store.tensors {
            #expect(try bytes(back, d.name) == bytes(original.store, d.name), "\(d.name)")
            #expect(back.descriptor(named: d.name)?.dtype == d.dtype)
        }
        #expect(back.metadata["ss_base_model_version"] == "sd_v1")
    }

    @Test("the converted PEFT file merges to the same weights as the kohya file")
    func sameMerge() throws {
        let base = try Base.sd1.get()
        let kohya = try openAdapter("sd1-kohya-lora.safetensors", scale: 0.8)
        let peft = try write(try AdapterConversion.convert(kohya.adapter, to: .diffusers, family: base.family), "peft-merge")
        let a = MergedStore(plan: try AdapterPlan(base: base.store, baseFamily: base.family, adapters: [kohya]), mergedDType: .f32)
        let b = MergedStore(
            plan: try AdapterPlan(
                base: base.store, baseFamily: base.family, adapters: [ScaledAdapter(adapter: try Adapter(store: peft), scale: 0.8, name: "peft")]),
            mergedDType: .f32)
        #expect(a.changedTensors.sorted() == b.changedTensors.sorted())
        for name in a.changedTensors { #expect(try a.tensor(named: name).floats() == b.tensor(named: name).floats()) }
    }

    @Test("SDXL kohya names come back as LDM UNet names and lora_te1_/lora_te2_")
    func sdxlRoundTrip() throws {
        let original = try openAdapter("sdxl-kohya-lora.safetensors").adapter
        let peft = try write(try AdapterConversion.convert(original, to: .diffusers), "sdxl-peft")
        #expect(peft.tensors.contains { $0.name.hasPrefix("text_encoder_2.encoder.layers.1.self_attn.k_proj.lora_A") })
        let back = try write(try AdapterConversion.convert(try Adapter(store: peft), to: .kohya), "sdxl-kohya")
        #expect(Set(back.tensors.map(\.name)) == Set(original.store.tensors.map(\.name)))
    }

    @Test(
        "what PEFT keys cannot express is refused with a reason",
        arguments: ["sd1-loha.safetensors", "sd1-lokr.safetensors", "sd1-tucker.safetensors", "sd1-dora.safetensors", "sd1-full-diff.safetensors"])
    func inexpressible(_ file: String) throws {
        let adapter = try openAdapter(file).adapter
        do {
            _ = try AdapterConversion.convert(adapter, to: .diffusers, family: ArchitectureCatalog.standard.family("sd1"))
            Issue.record("converted")
        } catch {
            #expect(error.code == .inexpressible)
            #expect(error.message.contains("diffusers") || error.message.contains("PEFT"))
        }
    }

    @Test("LoCon (k×k down, 1×1 up) converts both ways")
    func locon() throws {
        let original = try openAdapter("sd1-locon.safetensors").adapter
        let family = ArchitectureCatalog.standard.family("sd1")
        let peft = try write(try AdapterConversion.convert(original, to: .diffusers, family: family), "locon")
        #expect(peft.descriptor(named: "unet.down_blocks.0.resnets.0.conv1.lora_A.weight")?.shape == [4, 32, 3, 3])
        let back = try write(try AdapterConversion.convert(try Adapter(store: peft), to: .kohya, family: family), "locon-back")
        for d in original.store.tensors { #expect(try bytes(back, d.name) == bytes(original.store, d.name), "\(d.name)") }
    }
}
