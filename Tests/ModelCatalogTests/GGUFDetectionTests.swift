import CheckpointFormats
import ModelCatalog
import TensorCore
import TestSupport
import Testing

/// GGUF files go through the same name maps and detection as any file: ComfyUI-GGUF's stripped
/// UNet names come back with the LDM prefix (Formats/gguf.md, "Dialects").
@Suite("GGUF through the name maps and detection")
struct GGUFDetectionTests {
    @Test("a ComfyUI-GGUF UNet maps to the canonical UNet of the tiny SD 1 model")
    func comfyUNet() throws {
        let (store, mapping, canonicalStore) = try canonical(fixturePath("gguf/tiny-sd1-unet-comfy.gguf"))
        #expect(store.formatName == "gguf")
        let unet = canonicalStore.tensors.filter { $0.name.hasPrefix("unet.") }
        #expect(!unet.isEmpty)
        #expect(unet.count == store.tensors.count, "every UNet tensor maps to a canonical name")
        // The same canonical names and shapes as the safetensors file's UNet.
        let (_, _, reference) = try canonical(fixturePath("tiny-sd1/tiny-sd1.safetensors"))
        let expected = Dictionary(uniqueKeysWithValues: reference.tensors.filter { $0.name.hasPrefix("unet.") }.map { ($0.name, $0.shape) })
        for t in unet { #expect(expected[t.name] == t.shape, "\(t.name)") }
        let d = Detection.detect(canonicalStore.tensors, layout: mapping.layout, sourceNames: store.tensors.map(\.name), schedulerConfig: nil)
        #expect(d.familyID == "sd1")
    }
}
