import Adapters
import CheckpointFormats
import DiffusionEngine
import Foundation
import ModelLoading
import TensorCore
import TestSupport
import Testing

private func adapter(_ name: String) -> String { repositoryURL.appendingPathComponent("Fixtures/adapters/" + name).path }
private let tinySD1Folder = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/diffusers").path
private let tinySDXLFolder = repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/diffusers").path

/// The I64 values of a golden tensor.
private func int64s(_ file: SafetensorsFile, _ name: String) throws -> [Int] {
    let view = try file.tensor(named: name)
    return view.bytes.withUnsafeBytes { raw in
        (0..<(raw.count / 8)).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))) }
    }
}

/// ‖a − reference‖ / ‖reference‖.
private func l2Relative(_ a: [Float], _ reference: [Float]) -> Double {
    var difference = 0.0, norm = 0.0
    for (x, y) in zip(a, reference) {
        difference += (Double(x) - Double(y)) * (Double(x) - Double(y))
        norm += Double(y) * Double(y)
    }
    return norm > 0 ? (difference / norm).squareRoot() : difference.squareRoot()
}

/// Adapters and embeddings applied by the engine at run time (issue 15 items 4 and 5), against
/// diffusers' goldens (Fixtures/generate/make_adapters.py) and against the merged weights.
@Suite("run-time adapters and embeddings")
struct RuntimeAdditionsTests {
    @Test("a 6-step PNDM run with the PEFT LoRA at 0.8 matches diffusers' load_lora_weights run (not fused)")
    func loraPipelineMatchesDiffusers() throws {
        let golden = try SafetensorsFile(path: adapter("sd1-lora-pipeline.safetensors"))
        let additions = try RuntimeAdditions.open(loras: [adapter("sd1-peft-lora.safetensors") + ":0.8"])
        let model = try StableDiffusionModel(path: tinySD1Folder, additions: additions)
        // The call the golden records in its description.
        var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
        request.steps = 6
        request.guidanceScale = 7.5
        request.width = 64
        request.height = 64
        request.scheduler = .pndm
        request.seed = 42
        request.latents = FloatTensor(shape: [1, 4, 8, 8], values: try golden.tensor(named: "init_latents").floats())
        var steps: [FloatTensor] = []
        let output = try model.pipeline.generate(request) { event in
            if case .step(_, _, _, let latents) = event { steps.append(latents) }
        }
        let stored = golden.tensors.filter { $0.name.hasPrefix("step") }.count
        #expect(steps.count == stored)
        for (i, latents) in steps.enumerated() where i < stored {
            let reference = try golden.tensor(named: "step\(i).latents").floats()
            let m = ParityMetrics(reference: reference, candidate: latents.scalars)
            let scale = max(1, Double(reference.map { abs($0) }.max() ?? 0))
            print("LoRA pipeline step \(i): max abs \(m.maxAbsoluteError) (scale \(scale)), SNR \(m.snr) dB")
            #expect(m.maxAbsoluteError <= 1e-3 * scale, "step \(i): max abs \(m.maxAbsoluteError)")
            #expect(m.snr >= 60, "step \(i): SNR \(m.snr) dB")
        }
        let image = ParityMetrics(reference: try golden.tensor(named: "image").floats(), candidate: output.image.scalars, peak: 1)
        print("LoRA pipeline image: PSNR \(image.psnr) dB, max abs \(image.maxAbsoluteError)")
        #expect(image.psnr >= 40)
        // The same run without the LoRA is far from the golden: the adapter is what matched it.
        let plain = try StableDiffusionModel(path: tinySD1Folder).pipeline.generate(request)
        let without = ParityMetrics(reference: try golden.tensor(named: "image").floats(), candidate: plain.image.scalars, peak: 1)
        print("without the LoRA: image PSNR \(without.psnr) dB")
        #expect(without.psnr < image.psnr - 10)
    }

    @Test(
        "a textual-inversion embedding gives diffusers' ids and prompt embeddings",
        arguments: [
            ("ti-diffusers.safetensors", nil as String?), ("ti-a1111.pt", "<tinycat>"), ("ti-a1111.safetensors", "<tinycat>"),
        ])
    func textualInversionMatchesDiffusers(_ file: String, _ token: String?) throws {
        let golden = try SafetensorsFile(path: adapter("ti-prompt.safetensors"))
        let additions = try RuntimeAdditions.open(embeddings: [(adapter(file), token)])
        let model = try StableDiffusionModel(path: tinySD1Folder, additions: additions)
        let prompt = try #require(golden.metadata["prompt"])
        let ids = model.pipeline.tokenizer.encode(prompt)
        let expectedIDs = try int64s(golden, "ids")
        #expect(ids == expectedIDs)
        let added = try int64s(golden, "added_token_ids")
        #expect(added.map { model.pipeline.tokenizer.addedTokens.values.contains($0) } == [true, true])
        #expect(model.pipeline.tokenizer.addedTokens["<tinycat>"] == added[0] && model.pipeline.tokenizer.addedTokens["<tinycat>_1"] == added[1])
        let embeddings = try model.pipeline.textEncoder.encode([ids])
        let reference = try golden.tensor(named: "prompt_embeds").floats()
        let m = ParityMetrics(reference: reference, candidate: embeddings.scalars)
        print("\(file): prompt embeddings max abs \(m.maxAbsoluteError), SNR \(m.snr) dB")
        #expect(m.maxAbsoluteError <= 1e-4)
        // Without the embedding the token is plain text: other ids, other embeddings.
        let plain = try StableDiffusionModel(path: tinySD1Folder)
        #expect(plain.pipeline.tokenizer.encode(prompt) != expectedIDs)
    }

    @Test("an SDXL embedding pair adds clip_l to the first encoder and clip_g to the second")
    func sdxlPairGoesToBothEncoders() throws {
        let file = adapter("ti-sdxl.safetensors")
        let model = try StableDiffusionModel(path: tinySDXLFolder, additions: try RuntimeAdditions.open(embeddings: [(file, "<pair>")]))
        let pair = try SafetensorsFile(path: file)
        let second = try #require(model.pipeline.secondTextEncoder)
        for (tokenizer, encoder, tensor) in [
            (model.pipeline.tokenizer, model.pipeline.textEncoder, "clip_l"), (second.tokenizer, second.model, "clip_g"),
        ] {
            let values = try pair.tensor(named: tensor).floats()
            let width = encoder.configuration.hiddenSize
            let ids = try #require(["<pair>", "<pair>_1", "<pair>_2"].map { tokenizer.addedTokens[$0] } as? [Int])
            #expect(ids == [ids[0], ids[0] + 1, ids[0] + 2])
            for (k, id) in ids.enumerated() {
                #expect(encoder.addedTokenEmbeddings[id] == Array(values[(k * width)..<((k + 1) * width)]), "\(tensor) row \(k)")
            }
            // The prompt word expands to the three ids.
            #expect(tokenizer.tokenize("a <pair> cat").filter { ids.contains($0) } == ids)
        }
        // The conditioning runs with the added tokens in both encoders.
        let c = try model.pipeline.encode(prompt: "a photo of <pair>", negativePrompt: "", width: 64, height: 64)
        let finite = c.embeddings.scalars.allSatisfy { $0.isFinite }
        #expect(finite)
    }

    @Test("an embedding for another model, or a token already in the vocabulary, is refused")
    func embeddingsRefused() throws {
        #expect(throws: AdapterError.self) {
            _ = try StableDiffusionModel(
                path: tinySD1Folder, additions: try RuntimeAdditions.open(embeddings: [(adapter("ti-sdxl.safetensors"), nil)]))
        }
        #expect(throws: AdapterError.self) {
            _ = try StableDiffusionModel(
                path: tinySD1Folder, additions: try RuntimeAdditions.open(embeddings: [(adapter("ti-diffusers.safetensors"), "cat")]))
        }
    }

    /// Base + adapter at run time against the merged model, two ways: MergedStore (checked
    /// against diffusers / ComfyUI arithmetic in AdaptersTests) and the golden merged weights
    /// themselves (`<name>.merged.safetensors`, made by make_adapters.py): text embeddings and
    /// one UNet pass from standard-normal latents. Compared by L2 error relative to the output's
    /// norm. (The tiny random UNet has states that amplify rounding: from latents
    /// `sin(0.37 i)` at t = 500 the Tucker-merged model moves by 1e-3 when the same ΔW is added
    /// as W x + ΔW x instead of (W + ΔW) x; such inputs measure that, not the adapter.)
    @Test(
        "run-time adapters equal the merged model",
        arguments: [
            "sd1-kohya-lora.safetensors", "sd1-peft-lora.safetensors", "sd1-locon.safetensors", "sd1-loha.safetensors",
            "sd1-lokr.safetensors", "sd1-tucker.safetensors", "sd1-dora.safetensors", "sd1-full-diff.safetensors",
        ])
    func runtimeEqualsMerged(_ file: String) throws {
        let goldenWeights = try SafetensorsFile(path: adapter(file.replacingOccurrences(of: ".safetensors", with: ".merged.safetensors")))
        // The scale the golden was merged at (its metadata).
        let scale = try #require(goldenWeights.metadata["scale"])
        let argument = adapter(file) + ":" + scale
        let base = try CanonicalModel.open(tinySD1)
        let runtime = try StableDiffusionModel(base, additions: try RuntimeAdditions.open(loras: [argument]))
        let merged = try StableDiffusionModel(
            base.replacingStore(try MergedStore.merging([argument], into: base.store, baseFamily: base.detection.family, mergedDType: .f32)))
        let golden = try StableDiffusionModel(base.replacingStore(OverlayStore(base: base.store, overlay: goldenWeights)))
        let plain = try StableDiffusionModel(base)
        let prompt = "a photo of an astronaut riding a horse"
        // Standard-normal latents (the pipeline golden's initial noise) at the first of PNDM's timesteps.
        let latents = try SafetensorsFile(path: adapter("sd1-lora-pipeline.safetensors")).tensor(named: "init_latents").floats()
        func run(_ model: StableDiffusionModel) throws -> (text: [Float], noise: [Float]) {
            let text = try model.pipeline.encode(prompt: prompt, negativePrompt: "", width: 64, height: 64)
            let noise = try model.pipeline.noisePrediction(latents: latents, shape: [4, 8, 8], scale: 1, timestep: 801, conditioning: text)
            return (text.embeddings.scalars, noise.scalars)
        }
        let r = try run(runtime), m = try run(merged), g = try run(golden), p = try run(plain)
        let text = l2Relative(r.text, m.text), unet = l2Relative(r.noise, m.noise), unetGolden = l2Relative(r.noise, g.noise)
        let effect = l2Relative(p.noise, m.noise)
        print(
            "\(file): run time vs MergedStore: text \(text), UNet \(unet); vs the golden merged weights: UNet \(unetGolden); MergedStore vs golden \(l2Relative(m.noise, g.noise)); the adapter's effect \(effect) (L2 relative)"
        )
        #expect(text <= 1e-5)
        #expect(unet <= 1e-4)
        #expect(unetGolden <= 1e-4)
        // The adapter changes the output far more than run time and merge differ.
        #expect(effect > 20 * max(unet, 1e-7))
    }

    @Test("an SDXL kohya LoRA (UNet and both text encoders) at run time equals the merge")
    func sdxlRuntimeEqualsMerged() throws {
        let goldenWeights = try SafetensorsFile(path: adapter("sdxl-kohya-lora.merged.safetensors"))
        let argument = adapter("sdxl-kohya-lora.safetensors") + ":" + (try #require(goldenWeights.metadata["scale"]))
        let base = try CanonicalModel.open(tinySDXLFolder)
        let runtime = try StableDiffusionModel(base, additions: try RuntimeAdditions.open(loras: [argument]))
        #expect(runtime.pipeline.secondTextEncoder?.model.runtimeAdapters != nil)
        let golden = try StableDiffusionModel(base.replacingStore(OverlayStore(base: base.store, overlay: goldenWeights)))
        let plain = try StableDiffusionModel(base)
        let latents = try SafetensorsFile(path: adapter("sd1-lora-pipeline.safetensors")).tensor(named: "init_latents").floats()
        func run(_ model: StableDiffusionModel) throws -> (text: [Float], pooled: [Float], noise: [Float]) {
            let text = try model.pipeline.encode(prompt: "a photo of an astronaut riding a horse", negativePrompt: "", width: 64, height: 64)
            let noise = try model.pipeline.noisePrediction(latents: latents, shape: [4, 8, 8], scale: 1, timestep: 801, conditioning: text)
            return (text.embeddings.scalars, text.added?.textEmbeddings.scalars ?? [], noise.scalars)
        }
        let r = try run(runtime), g = try run(golden), p = try run(plain)
        print(
            "SDXL kohya: run time vs golden merged weights: text \(l2Relative(r.text, g.text)), pooled \(l2Relative(r.pooled, g.pooled)), UNet \(l2Relative(r.noise, g.noise)); the adapter's effect: text \(l2Relative(p.text, g.text)), UNet \(l2Relative(p.noise, g.noise)) (L2 relative)"
        )
        #expect(l2Relative(r.text, g.text) <= 1e-5)
        #expect(l2Relative(r.pooled, g.pooled) <= 1e-5)
        #expect(l2Relative(r.noise, g.noise) <= 1e-4)
        #expect(l2Relative(p.text, g.text) > 1e-3 && l2Relative(p.noise, g.noise) > 1e-3)
    }

    @Test("an adapter for another family is refused before anything runs")
    func wrongFamilyRefused() throws {
        #expect {
            _ = try StableDiffusionModel(path: tinySD1, additions: try RuntimeAdditions.open(loras: [adapter("sdxl-kohya-lora.safetensors")]))
        } throws: { error in
            (error as? AdapterError)?.code == .wrongFamily
        }
    }
}

/// `base` with the tensors of `overlay` (same names) in their place.
final class OverlayStore: TensorStore, @unchecked Sendable {
    let base: any TensorStore
    let overlay: SafetensorsFile
    init(base: any TensorStore, overlay: SafetensorsFile) {
        self.base = base
        self.overlay = overlay
    }
    var formatName: String { base.formatName }
    var tensors: [TensorDescriptor] { base.tensors }
    var metadata: [String: String] { base.metadata }
    func descriptor(named name: String) -> TensorDescriptor? { base.descriptor(named: name) }
    func tensor(named name: String) throws -> TensorView {
        if overlay.descriptor(named: name) != nil { return try overlay.tensor(named: name) }
        return try base.tensor(named: name)
    }
}
