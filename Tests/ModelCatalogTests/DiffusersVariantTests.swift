import CheckpointFormats
import ModelCatalog
import TensorCore
import TestSupport
import Testing

/// The tiny SD 1.x folder in the other forms diffusers writes (`make_diffusers_variants.py`):
/// `.bin` components and sharded components (safetensors and `.bin` shards, each with an index).
@Suite("diffusers folders with .bin and sharded components")
struct DiffusersVariantTests {
    /// Each folder, with the weights file (or index) every component must be read from, so a
    /// reader that silently fell back to another file would fail.
    static let folders: [(String, [String: String])] = [
        (
            "tiny-sd1/diffusers-bin",
            [
                "unet": "unet/diffusion_pytorch_model.safetensors",
                "vae": "vae/diffusion_pytorch_model.bin",
                "text_encoder": "text_encoder/model.safetensors",
            ]
        ),
        (
            "tiny-sd1/diffusers-sharded",
            [
                "unet": "unet/diffusion_pytorch_model.safetensors.index.json",
                "vae": "vae/diffusion_pytorch_model.bin.index.json",
                "text_encoder": "text_encoder/model.safetensors",
            ]
        ),
    ]

    @Test("components are read from the expected files, through the expected stores", arguments: folders)
    func files(path: String, expected: [String: String]) throws {
        let folder = try DiffusersFolder(path: fixturePath(path))
        #expect(Dictionary(uniqueKeysWithValues: folder.components.map { ($0.component, $0.file) }) == expected)
        for c in folder.components {
            switch c.file {
            case let f where f.hasSuffix(".safetensors.index.json"):
                let shards = try #require(c.store as? ShardedSafetensors)
                #expect(shards.shards.count == 4, "\(c.file): \(shards.shards.count) shards")
            case let f where f.hasSuffix(".bin.index.json"):
                let shards = try #require(c.store as? ShardedTorchCheckpoint)
                #expect(shards.shards.count == 5, "\(c.file): \(shards.shards.count) shards")
            case let f where f.hasSuffix(".bin"):
                #expect(c.store is TorchCheckpoint)
            default:
                #expect(c.store is SafetensorsFile)
            }
        }
    }

    @Test("every tensor is bit-identical to the safetensors folder's", arguments: folders.map(\.0))
    func sameTensors(path: String) throws {
        let folder = try DiffusersFolder(path: fixturePath(path))
        let reference = try DiffusersFolder(path: fixturePath("tiny-sd1/diffusers"))
        #expect(folder.tensors.count == reference.tensors.count)
        #expect(Set(folder.tensors.map(\.name)) == Set(reference.tensors.map(\.name)))
        var compared = 0
        for d in reference.tensors {
            let theirs = try reference.tensor(named: d.name)
            let ours = try folder.tensor(named: d.name)
            #expect(difference(ours, theirs) == nil, "\(difference(ours, theirs) ?? "")")
            #expect(folder.descriptor(named: d.name) == d)
            compared += 1
        }
        #expect(compared == 684 + 244 + 52)
    }

    @Test("detection: SD 1.x, complete, from the canonical names of each folder", arguments: folders.map(\.0))
    func detection(path: String) throws {
        let (store, mapping, canonicalStore) = try canonical(fixturePath(path))
        let d = Detection.detect(
            canonicalStore.tensors, layout: mapping.layout, sourceNames: store.tensors.map(\.name),
            schedulerConfig: (store as? DiffusersFolder)?.schedulerConfig)
        #expect(d.familyID == "sd1" && d.variant == "base" && d.kind == .pipeline)
        #expect(d.predictionType == .epsilon)
        #expect(Set(d.components.map(\.component)) == [.unet, .vae, .textEncoder])
        for c in d.components {
            #expect(
                c.missing.isEmpty && c.unexpected.isEmpty && c.shapeMismatches.isEmpty,
                "\(c.component): \(c.missing.prefix(3)) \(c.unexpected.prefix(3))")
        }
        #expect(mapping.leftovers.isEmpty)
    }
}
